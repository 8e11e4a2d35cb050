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


class SharedStatus(dict):
    """ParameterStatus values as told to clients at their startup: one dict for every session told the same values
    (400-600 bytes each otherwise); a session copies it before it tells its client anything else."""

    __slots__ = ()

    def __setitem__(self, key: str, value: str) -> None:  # (a shared one is never changed in place)
        raise TypeError("a SharedStatus is shared: copy it first")


_SHARED: dict[frozenset[tuple[str, str]], SharedStatus] = {}
_MAX_SHARED = 256  # sets of values kept (tenants x client settings); past it the oldest go


def shared_status(values: dict[str, str]) -> SharedStatus:
    """The shared dict of these values."""
    key = frozenset(values.items())
    found = _SHARED.get(key)
    if found is None:
        if len(_SHARED) >= _MAX_SHARED:
            del _SHARED[next(iter(_SHARED))]
        found = _SHARED[key] = SharedStatus(values)
    return found
