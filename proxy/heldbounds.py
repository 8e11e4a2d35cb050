"""The bounds on the WITH HOLD cursors, LISTEN channels and savepoints a session holds ([pool] max_session_cursors,
max_session_listens, max_session_savepoints): the denial of a statement that would take it past them; pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set

from proxy.policy.model import (
    CLOSE_CURSOR,
    COMMIT,
    DISCARD_ALL,
    HOLD_CURSOR,
    LISTEN,
    RELEASE,
    ROLLBACK,
    ROLLBACK_TO,
    SAVEPOINT,
    UNLISTEN,
    Deny,
)
from proxy.policy.rules import deny

# The ops that may take a session past one of these bounds (a statement without one is never looked at).
ADDING = frozenset({HOLD_CURSOR, LISTEN, SAVEPOINT})


def refusal(cursors: Set[str], listening: Set[str], savepoints: Sequence[tuple[str, object]],
            changes: Iterable[tuple[str, str]], max_cursors: int, max_listens: int,
            max_savepoints: int) -> Deny | None:
    """The denial of a statement (or string of statements) whose changes (op, name), in order, would take a session
    holding `cursors` (WITH HOLD), `listening` (LISTEN channels) and the savepoint stack `savepoints` (innermost
    last, (name, ...)) past `max_cursors`, `max_listens` or `max_savepoints` at some point; None when they do not.
    Only a DECLARE ... WITH HOLD, LISTEN or SAVEPOINT is refused (one naming what is held already only where the
    session is past the bound: a lowered bound, a Parse counted in advance); a statement that closes, unlistens or
    releases never is. The cost is that of the changes (and of a RELEASE / ROLLBACK TO looking for its savepoint),
    not of what the session holds."""
    cursors_held = _Held(cursors)
    channels = _Held(listening)
    below = len(savepoints)  # the levels of `savepoints` still standing
    levels: list[str] = []  # the levels this statement set above them
    for op, name in changes:
        if op == HOLD_CURSOR:
            cursors_held.add(name)  # (one held already, a Parse's counted in advance among them: counted once)
            if cursors_held.count > max_cursors:
                return deny("session_cursors_limit", f'cursor "{name}" would take this session past [pool] '
                            f"max_session_cursors = {max_cursors} (it would hold {cursors_held.count} WITH HOLD "
                            "cursors)")
        elif op == CLOSE_CURSOR:
            if name:
                cursors_held.remove(name)
            else:
                cursors_held.clear()
        elif op == LISTEN:
            channels.add(name)
            if channels.count > max_listens:
                return deny("session_listens_limit", f'LISTEN "{name}" would take this session past [pool] '
                            f"max_session_listens = {max_listens} (it would listen on {channels.count} channels)")
        elif op == UNLISTEN:
            if name == "*":
                channels.clear()
            else:
                channels.remove(name)
        elif op == DISCARD_ALL:
            cursors_held.clear()
            channels.clear()
        elif op == SAVEPOINT:
            levels.append(name)
            depth = below + len(levels)
            if depth > max_savepoints:
                return deny("session_savepoints_limit", f'SAVEPOINT "{name}" would take this transaction past '
                            f"[pool] max_session_savepoints = {max_savepoints} (it would have {depth} savepoints)")
        elif op in (RELEASE, ROLLBACK_TO):
            keep = 1 if op == ROLLBACK_TO else 0  # (ROLLBACK TO keeps the savepoint itself)
            at = _innermost(levels, len(levels), name)
            if at is not None:
                del levels[at + keep:]
                continue
            at = _innermost(savepoints, below, name)
            if at is not None:  # (PostgreSQL fails a name it has not: nothing changes)
                levels.clear()
                below = at + keep
        elif op in (COMMIT, ROLLBACK):
            below, levels = 0, []
    return None


class _Held:
    """A set of names as changed by one statement: the session's (`base`, not copied) less what it removed, plus
    what it added; each change costs O(1)."""

    __slots__ = ("added", "base", "count", "removed")

    def __init__(self, base: Set[str]) -> None:
        self.base = base
        self.added: set[str] = set()
        self.removed: set[str] = set()
        self.count = len(base)

    def _has(self, name: str) -> bool:
        return name in self.added or (name in self.base and name not in self.removed)

    def add(self, name: str) -> None:
        """Adds `name` (nothing when it is there already)."""
        if self._has(name):
            return
        if name in self.base:
            self.removed.discard(name)
        else:
            self.added.add(name)
        self.count += 1

    def remove(self, name: str) -> None:
        if not self._has(name):
            return
        if name in self.added:
            self.added.discard(name)
        else:
            self.removed.add(name)
        self.count -= 1

    def clear(self) -> None:
        self.base, self.added, self.removed, self.count = frozenset(), set(), set(), 0


def _innermost(stack: Sequence[tuple[str, object]] | list[str], depth: int, name: str) -> int | None:
    """The index, below `depth`, of the innermost savepoint called `name` in `stack` (PostgreSQL's choice)."""
    for i in range(depth - 1, -1, -1):
        entry = stack[i]
        if (entry if isinstance(entry, str) else entry[0]) == name:
            return i
    return None
