"""The state diagrams in docs/architecture.md, generated from the transition tables: `python -m proxy.diagrams`."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

from proxy import login, pooling, server, session
from proxy.auth import backend


def mermaid(transitions: Mapping[tuple[enum.Enum, enum.Enum], enum.Enum],
            initial: Sequence[tuple[enum.Enum, str]], final: Sequence[enum.Enum]) -> str:
    """A Mermaid stateDiagram of a transition table: one arrow per row, labelled with its event."""
    lines = ["stateDiagram-v2"]
    for state, why in initial:
        lines.append(f"    [*] --> {state.name}" + (f": {why}" if why else ""))
    for (state, event), nxt in transitions.items():
        lines.append(f"    {state.name} --> {nxt.name}: {event.value}")
    lines += [f"    {state.name} --> [*]" for state in final]
    return "\n".join(lines)


def diagrams() -> dict[str, str]:
    """Each state machine's diagram, by the class it belongs to."""
    return {
        "ClientLogin (a session's startup and authentication, then the admin console)": mermaid(
            login.TRANSITIONS, [(login.LoginState.STARTUP, "")],
            [login.LoginState.AUTHENTICATED, login.LoginState.CLOSED],
        ),
        "ClientSession": mermaid(session.TRANSITIONS, [(session.State.LOGIN, "")], [session.State.CLOSED]),
        "ServerConnection": mermaid(
            server.TRANSITIONS,
            [(server.ServerState.SSL_NEGOTIATION, "sslmode is not disable"),
             (server.ServerState.STARTUP, "sslmode = disable")],
            [server.ServerState.READY, server.ServerState.FAILED],
        ),
        "pooling.Server (a pooled server; it may close in any state)": mermaid(
            pooling.TRANSITIONS, [(pooling.State.CONNECTING, "")], [],
        ),
        "auth.backend.BackendAuthenticator (the proxy's login to a backend; any other request fails it)": mermaid(
            backend.TRANSITIONS, [(backend._State.START, "")], [backend._State.DONE],
        ),
    }


def markdown() -> str:
    """The diagrams as the Markdown blocks docs/architecture.md holds."""
    return "\n\n".join(f"`{name}`:\n\n```mermaid\n{text}\n```" for name, text in diagrams().items())


if __name__ == "__main__":
    print(markdown())
