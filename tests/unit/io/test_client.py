"""proxy.io.client: when the client's socket is read while its session asks the pool for a server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from proxy.io.client import ClientConnection


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


@pytest.mark.parametrize("answer", ["granted", "later"])
def test_the_client_is_paused_only_while_it_really_waits_for_a_server(answer: str) -> None:
    """An idle server is granted inside Pool.request: no pause and resume around it (two epoll_ctl calls per
    transaction in transaction pooling); a request left waiting pauses the client until it is answered."""
    conn = ClientConnection(SimpleNamespace())  # type: ignore[arg-type]
    transport = conn.transport = Transport()  # type: ignore[assignment]

    def request(client: ClientConnection, request: object, route: object) -> None:
        if answer == "granted":  # what server_granted does first
            client._waiting_server = False
            client._update_reading()

    conn.proxy = SimpleNamespace(pool=SimpleNamespace(request=request))  # type: ignore[assignment]
    conn._request_server(object())  # type: ignore[arg-type]
    if answer == "granted":
        assert transport.calls == []
    else:
        assert transport.calls == ["pause"] and conn._waiting_server


class KeptSession:
    """A session with a server kept for it (sticky), its next request needing a turn (max_concurrent_queries)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def may_resume(self) -> bool:
        return True

    def read_kept(self, data: bytes) -> tuple[bytes, bool]:
        return data, True  # (a whole first message: see test_session_sticky for one begun)

    def resume_turn(self) -> tuple[str, int]:
        return ("acme", 1)

    def resume_route(self, data: bytes) -> object:
        self.events.append(f"judged {data!r}")
        return "routed"

    def server_resumed(self) -> list:
        self.events.append("resumed")
        return []

    def server_taken(self) -> list:
        self.events.append("taken")
        return []


@pytest.mark.parametrize("turn_free", [True, False])
def test_a_kept_server_is_resumed_only_when_the_turn_is_free_at_once(turn_free: bool) -> None:
    """A request that needs a turn first resumes the server kept for it only when `acquire` would give the turn now
    (it then does, synchronously); else the kept server goes back before the request waits for its turn: a server
    is never held while its request waits for a turn. The pool hears what the request would ask (its route)."""
    from proxy.limits import QuerySlots

    conn = ClientConnection(SimpleNamespace())  # type: ignore[arg-type]
    session, slots, asked = KeptSession(), QuerySlots(), []
    if not turn_free:
        slots.acquire("acme", 1, "another session")
    link = SimpleNamespace(owner=None, relay=None, transport=None)
    pool = SimpleNamespace(reuse=lambda link, client, routed: asked.append(("reuse", routed)) or True,
                           take_back=lambda link, client: asked.append(("take_back", None)))
    conn.proxy = SimpleNamespace(slots=slots, pool=pool)  # type: ignore[assignment]
    conn.session, conn.link, conn._kept = session, link, True  # type: ignore[assignment]
    conn.relay = SimpleNamespace(kept=True, server=object())  # type: ignore[assignment]
    conn.resume_kept(b"Q...")
    if turn_free:
        assert asked == [("reuse", "routed")] and session.events == ["judged b'Q...'", "resumed"]
        assert conn.link is link and link.owner is conn
    else:
        assert asked == [("take_back", None)] and session.events == ["taken"] and conn.link is None
    assert not conn._kept and not conn.relay.kept  # type: ignore[union-attr]
