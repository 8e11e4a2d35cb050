"""The bound on the portals and cursors a session holds open at once ([pool] max_session_portals): counted; pure."""

from __future__ import annotations

from collections.abc import Iterable, Set

from proxy.policy.model import CLOSE_CURSOR, COMMIT, DECLARE_CURSOR, DISCARD_ALL, HOLD_CURSOR, ROLLBACK, Deny
from proxy.policy.rules import deny

# The ops that open a portal, and those that may close some.
OPENING = frozenset({DECLARE_CURSOR, HOLD_CURSOR})
_CLOSING = frozenset({CLOSE_CURSOR, COMMIT, ROLLBACK, DISCARD_ALL})


class OpenPortals:
    """The portals of a session's transaction that PostgreSQL keeps open until they are closed or the transaction
    ends: named protocol portals (bound) and SQL cursors not WITH HOLD, in one namespace as PostgreSQL's (a Close of
    a portal closes a cursor of that name and CLOSE a portal). The unnamed portal is not counted and never refused:
    there is one at most (each unnamed Bind replaces it), the `1 +` of the sizing, and a session at the bound runs
    its FETCH and CLOSE in it. WITH HOLD cursors are the session's `held` (followed by the session context) and count
    beside them. Each portal keeps its executor state on the server (red team 20s M0: ~24 KB; a sort up to work_mem,
    M1), so their number is bounded. A portal counts from its Bind or DECLARE (one PostgreSQL then skips counts until
    the transaction ends); a close frees its count at once but stays `freed` until a ReadyForQuery with nothing
    after it says no error came (a close PostgreSQL skipped after an error, then `ROLLBACK TO` a savepoint that
    keeps the portal, would otherwise free a portal still open): at 'E' every unconfirmed close counts again."""

    __slots__ = ("freed", "names", "refused")

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.freed: set[str] = set()
        self.refused: tuple[int, str] | None = None  # the session's: (its Syncs, the marker) of a Bind refused

    def bind(self, name: str, held: Set[str], limit: int) -> Deny | None:
        """A Bind of portal `name`: its denial past `limit`, else it counts from now on (a name open already is
        replaced, not added; the unnamed portal, "", is never counted)."""
        if not name or name in self.names:
            return None
        if len(self.names) + len(held) >= limit:
            return _refused(f'portal "{name}"', len(self.names) + len(held) + 1, limit)
        self.names.add(name)
        return None

    def close(self, name: str) -> None:
        """A Close of portal `name` (freed until it is confirmed, see the class)."""
        if name in self.names:
            self.names.discard(name)
            self.freed.add(name)

    def changes(self, changes: Iterable[tuple[str, str]], held: Set[str], limit: int,
                frees: bool = True) -> Deny | None:
        """A string (or, `frees` False, a Parse: what it closes is not run yet) with `changes` (op, name), in
        order: its denial when a DECLARE in it would take the session past `limit` open portals and cursors
        (counting the WITH HOLD cursors `held`, their additions in it counted by the session's own bound); else
        its cursors count from now on and its CLOSE, COMMIT and ROLLBACK free theirs."""
        names = self.names
        opened: set[str] = set()  # what this string DECLAREs (counted from now on, closed later in it or not)
        closed: set[str] = set()  # what this string closes, of `names` and of `opened`: freed until confirmed
        count = len(names) + len(held)
        holding: set[str] = set()  # the WITH HOLD cursors this string DECLAREs (a COMMIT in it keeps them)
        for op, name in changes:
            if op in OPENING:
                if name in held or name in holding or ((name in names or name in opened) and name not in closed):
                    continue  # (PostgreSQL refuses a name open already: nothing opens)
                if count >= limit:
                    return _refused(f'cursor "{name}"', count + 1, limit)
                count += 1
                closed.discard(name)
                if op == DECLARE_CURSOR:
                    opened.add(name)
                else:
                    holding.add(name)
            elif op not in _CLOSING or not frees:
                continue
            elif op == CLOSE_CURSOR and name:
                if (name in opened or name in names) and name not in closed:
                    closed.add(name)
                    count -= 1
            else:  # CLOSE ALL, DISCARD ALL, the end of the transaction: no portal but WITH HOLD cursors stays
                closed = names | opened
                count = len(held) + len(holding)  # (the string's own WITH HOLD cursors still count: review 20 F9)
        # A close in the string may not run (an error before it, then ROLLBACK TO a savepoint that keeps the cursors
        # DECLAREd before it: red team 20b F1, 1,980 cursors open at a bound of 100): the cursors it opened count,
        # and what it closes is freed only until a ReadyForQuery confirms it (`ready`).
        names |= opened
        if closed:
            names -= closed
            self.freed |= closed
        return None

    def ready(self, status: bytes, last: bool) -> None:
        """A ReadyForQuery of transaction status `status`; `last`: no request of the session's is in flight after
        it. 'I' ends every portal and cursor but WITH HOLD; 'E' (an error: what was closed since may have been
        skipped) counts the unconfirmed closes again; 'T' with nothing after it confirms them."""
        if status == b"E":
            if self.freed:
                self.names |= self.freed
                self.freed = set()
        elif last:
            if status == b"I" and self.names:
                self.names = set()
            if self.freed:
                self.freed = set()


def _refused(what: str, count: int, limit: int) -> Deny:
    return deny("session_portals_limit", f"{what} would take this session past [pool] max_session_portals = {limit} "
                f"(it would hold {count} open portals and cursors)")
