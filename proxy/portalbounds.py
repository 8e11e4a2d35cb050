"""The bound on the portals and cursors a session holds open at once ([pool] max_session_portals): counted; pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set

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
    M1), so their number is bounded. A portal counts from its Bind or DECLARE (a Bind of a prepared DECLARE; a Parse
    opens nothing: review 20 F3); one PostgreSQL then skips counts until the transaction ends, or until a confirmed
    `ROLLBACK TO` drops the subtransaction it was counted in (`levels`, `rolled_back`: review 20 F2). A close (a Close
    of a portal; a CLOSE, CLOSE ALL, COMMIT or ROLLBACK in a string or at the Execute of a portal of a prepared one,
    `closers`: review 20 F1) frees its count at once but stays `freed` until a ReadyForQuery with nothing after it
    says no error came (a close PostgreSQL skipped after an error, then `ROLLBACK TO` a savepoint that keeps the
    portal, would otherwise free a portal still open): at 'E' every unconfirmed close counts again."""

    __slots__ = ("closers", "followed", "freed", "levels", "names", "refused")

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.freed: set[str] = set()
        self.refused: tuple[int, str] | None = None  # the session's: (its Syncs, the marker) of a Bind refused
        # name (of `names` or `freed`) -> the savepoint level (subxacts.py) it was counted in; 0: the transaction's
        # own, or unknown (a name counted again in another level: kept until the transaction ends, fail closed)
        self.levels: dict[str, int] = {}
        self.closers: dict[str, tuple[tuple[str, str], ...]] = {}  # portal -> what its Execute closes (F1)
        # False once a prepared savepoint statement may run unfollowed (the session forgot it): the levels may then
        # not be PostgreSQL's, and no ROLLBACK TO frees anything for the rest of the session (fail closed)
        self.followed = True

    def bind(self, name: str, held: Set[str], limit: int, level: int = 0) -> Deny | None:
        """A Bind of portal `name` in savepoint level `level`: its denial past `limit`, else it counts from now on
        (a name open already is replaced, not added; the unnamed portal, "", is never counted)."""
        if not name:
            return None
        if name in self.names:
            self._stamp(name, level)  # (PostgreSQL refuses it, or a ROLLBACK TO not yet answered dropped it)
            return None
        if len(self.names) + len(held) >= limit:
            return _refused(f'portal "{name}"', len(self.names) + len(held) + 1, limit)
        self.names.add(name)
        self._stamp(name, level)
        return None

    def bound(self, portal: str, changes: Iterable[tuple[str, str]] | None) -> None:
        """Portal `portal` was bound to a statement of `changes`: what its Execute closes, if any (review 20 F1)."""
        closing = tuple(c for c in changes or () if c[0] in _CLOSING)
        if closing:
            self.closers[portal] = closing
        elif self.closers:
            self.closers.pop(portal, None)

    def executed(self, portal: str, held: Set[str], limit: int) -> None:
        """An Execute of `portal`: what its prepared CLOSE / CLOSE ALL / COMMIT / ROLLBACK closes is freed, until
        confirmed (as a Close; once: a portal run again closes nothing more here, fail closed)."""
        closing = self.closers.pop(portal, None)
        if closing:
            self.changes(closing, held, limit)

    def close(self, name: str) -> None:
        """A Close of portal `name` (freed until it is confirmed, see the class)."""
        if self.closers:
            self.closers.pop(name, None)
        if name in self.names:
            self.names.discard(name)
            self.freed.add(name)

    def rolled_back(self, dropped: Callable[[int], bool]) -> None:
        """A `ROLLBACK TO` PostgreSQL confirmed (its CommandComplete): the portals and cursors counted in a level it
        aborted (`dropped(level)`) are gone (PostgreSQL's AtSubCleanup_Portals); those counted before its savepoint
        stay (red team 20b F1)."""
        if not self.followed:
            return
        gone = [name for name, level in self.levels.items() if level and dropped(level)]
        for name in gone:
            del self.levels[name]
            self.names.discard(name)
            self.freed.discard(name)

    def _stamp(self, name: str, level: int) -> None:
        old = self.levels.get(name)
        self.levels[name] = level if old is None or old == level else 0

    def changes(self, changes: Iterable[tuple[str, str]], held: Set[str], limit: int,
                frees: bool = True, level: int = 0) -> Deny | None:
        """A string (or, `frees` False, a Bind of a prepared statement: what it closes is not run yet, `executed`)
        with `changes` (op, name), in order, sent in savepoint level `level`: its denial when a DECLARE in it would
        take the session past `limit` open portals and cursors (counting the WITH HOLD cursors `held`, their
        additions in it counted by the session's own bound); else its cursors count from now on and its CLOSE,
        COMMIT and ROLLBACK free theirs."""
        names = self.names
        opened: set[str] = set()  # what this string DECLAREs (counted from now on, closed later in it or not)
        closed: set[str] = set()  # what this string closes, of `names` and of `opened`: freed until confirmed
        count = len(names) + len(held)
        holding: set[str] = set()  # the WITH HOLD cursors this string DECLAREs (a COMMIT in it keeps them)
        for op, name in changes:
            if op in OPENING:
                if name in held or name in holding or ((name in names or name in opened) and name not in closed):
                    if op == DECLARE_CURSOR and name in self.levels:
                        self._stamp(name, level)  # (refused, or dropped by a ROLLBACK TO not yet answered)
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
        for name in opened:
            self._stamp(name, level)
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
            if self.closers:  # (a Bind failed or skipped: its portal's Execute, after a ROLLBACK TO, is another's)
                self.closers = {}
        elif last:
            if status == b"I":
                if self.names:
                    self.names = set()
                if self.levels:
                    self.levels = {}
                if self.closers:
                    self.closers = {}
            if self.freed:
                for name in self.freed:
                    if name not in self.names:
                        self.levels.pop(name, None)
                self.freed = set()


def _refused(what: str, count: int, limit: int) -> Deny:
    return deny("session_portals_limit", f"{what} would take this session past [pool] max_session_portals = {limit} "
                f"(it would hold {count} open portals and cursors)")
