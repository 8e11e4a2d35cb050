"""What a session tells its client of a reported setting (ParameterStatus) that a RESET sends back to a default."""

from __future__ import annotations


def reset_to_default(name: str, changes: tuple[tuple[str, str], ...]) -> bool:
    """Whether the session's setting changes since its last settle (name in lower case -> the statement replaying
    it, "" for RESET; "*" for RESET ALL / DISCARD ALL) leave `name` at the session's default. On a direct
    connection that default is the client's startup value; a pooled server never had it (servers start with the
    pool's context only): PostgreSQL reports its own default, which the session replaces by the startup value the
    client was told, and restores on the server when it settles."""
    for setting, text in reversed(changes):
        if setting == name:
            return not text
        if setting == "*":
            return True
    return False
