"""Follows a session's context (temporary relations, search_path, and what it holds on its server connection: WITH
HOLD cursors, SQL prepared statements, LISTEN, advisory locks, settings) through its transactions; pure, no I/O.

Decisions are made on what the session *believes*: the context the backend has confirmed, plus every change of
a statement sent to run (a Query, an Execute) but not yet answered, plus what a Parse not yet run adds (so a
pipelined Parse CREATE TEMP, Parse INSERT, Sync works; a removal or a search_path change counts once run). The
backend's answers correct it: a statement's CommandComplete confirms its changes, an ErrorResponse voids the
changes of that statement and of the rest of its request, a transaction that ends in a rollback (ROLLBACK, a
failed COMMIT, an error outside a transaction block, ROLLBACK TO SAVEPOINT) takes back what it did, and a commit
ends SET LOCAL and drops ON COMMIT DROP tables. What PostgreSQL does not take back with a transaction stays: SQL
prepared statements, session advisory locks (also when their own statement fails), a CLOSE of a WITH HOLD cursor.

Nothing here is relied on for isolation: the policy engine names every temporary relation it writes, reads
instead of a filtered table, or drops `pg_temp.<name>`, and filters PostgreSQL's search_path itself, so a wrong
belief costs an error ("relation does not exist", a refused write), never another tenant's rows.

Statements are matched with the backend's answers by position within their request (a simple Query, or the
extended-protocol messages up to Sync): the k-th CommandComplete answers the k-th statement of a Query, or the
k-th Execute's portal (an Execute is answered by one CommandComplete, EmptyQueryResponse or PortalSuspended; a Bind
never executed by none).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields, replace

from proxy.policy.context import refusal
from proxy.policy.model import (
    ADVISORY_LOCK,
    ADVISORY_UNLOCK,
    CLOSE_CURSOR,
    COMMIT,
    DEALLOCATE,
    DISCARD_ALL,
    EMPTY_CONTEXT,
    EXPORT_SNAPSHOT,
    HOLD_CURSOR,
    KEPT_ON_ERROR,
    LISTEN,
    RELEASE,
    ROLLBACK,
    ROLLBACK_TO,
    SAVEPOINT,
    SQL_PREPARE,
    TEMP_TABLE,
    TEMP_VIEW,
    TRANSACTION_OPS,
    UNLISTEN,
    Change,
    Deny,
    SessionContext,
)
from proxy.policy.settings import client_path

# Prepared statements remembered with their changes: by default [pool] max_session_statements' default + the unnamed
# one (the session sets `max_statements` from its config: PostgreSQL never holds more than the statement maps let it).
_MAX_STATEMENTS = 1001
_MAX_LOST = 4096  # names past `max_statements` held unrecorded; past it every unrecorded name's Bind is refused
_LIMITED = frozenset({TEMP_TABLE, TEMP_VIEW, EXPORT_SNAPSHOT})  # checked again at each Bind (context.refusal)
_LOCK_OPS = frozenset({ADVISORY_LOCK, ADVISORY_UNLOCK})
_ENDS = frozenset({COMMIT, ROLLBACK, ROLLBACK_TO})  # what may take back temporary relations and a search_path
_ADDITIONS = frozenset({SQL_PREPARE, HOLD_CURSOR, LISTEN, EXPORT_SNAPSHOT})  # counted from their Parse (_speculate)
_SET_OPS = frozenset({HOLD_CURSOR, CLOSE_CURSOR, LISTEN, UNLISTEN})  # what changes only `cursors` / `listening`
# What the proxy asks a server before it goes back when lock_activity is set: one row while it holds any session
# advisory lock (transaction-level ones are gone at ReadyForQuery 'I').
HELD_LOCKS_QUERY = ("SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_catalog.pg_backend_pid() LIMIT 1")


@dataclass(frozen=True, slots=True)
class _Deallocating(Change):
    """A DEALLOCATE / DEALLOCATE ALL / DISCARD ALL as sent: what its answer frees (red team 22p G1, G2)."""

    fence: int = 0  # records made after it was sent (a Parse behind it in the same write) are not its to free
    frees: bool = True  # a single name reaches the client's protocol statement of that name (not under statement maps)


_CHANGE_FIELDS = tuple(f.name for f in fields(Change))


@dataclass(slots=True)
class _Request:
    """The changes of one request's statements, by the statement's position in the request."""

    request: object  # the tracker's request (identity only)
    changes: list[tuple[int, Change]] = field(default_factory=list)
    failed: bool = False


_NO_REQUESTS = ()


class SessionState:
    """What one session has changed, as the backend confirmed it and as the next decision must assume it."""

    def __init__(self) -> None:
        self.committed = EMPTY_CONTEXT  # at the start of the open transaction (or now, outside one)
        self._current = EMPTY_CONTEXT  # as the backend has confirmed it (`current`)
        # WITH HOLD cursor and LISTEN changes confirmed and not yet applied to `_current`: applied at once when it is
        # next read (a string of 1,000 DECLAREs confirmed one by one copied the session's cursors 1,000 times: red
        # team 9s8 F4)
        self._sets_confirmed: list[Change] = []
        self.belief = EMPTY_CONTEXT  # what decisions assume: current + changes not yet answered
        self.savepoints: list[tuple[str, SessionContext]] = []
        self.requests: deque[_Request] = _NO_REQUESTS  # type: ignore[assignment]  # (a deque once one is recorded)
        self.statements: dict[str, tuple[Change, ...]] = {}  # prepared statement -> its changes
        # How many statements' changes are remembered ([pool] max_session_statements + the unnamed one). A record is
        # never dropped to make room (red team 21p F3: an evicted set_config statement ran unfollowed): a Parse past
        # it leaves its name in `lost`, whose Binds are refused (`lost_bind`) until it is Parsed again or closed.
        self.max_statements = _MAX_STATEMENTS
        self.lost: set[str] = set()
        self.lost_overflow = False  # more names lost than _MAX_LOST: a Bind of any name not recorded is refused
        # When each record or lost name was made (a count of them): a DEALLOCATE's answer frees only those made before
        # it was sent — a Parse sent behind it in the same write runs after it (red team 22p G1).
        self._made: dict[str, int] = {}
        self._made_count = 0
        self._overflow_at = -1  # when lost_overflow was last set
        # The client's protocol statements are renamed on the server (statement maps): a SQL DEALLOCATE PostgreSQL
        # runs reaches its SQL statement of that name, never the client's protocol one, unless the maps sent it
        # in its place (`maps_deallocate`, red team 22p G2).
        self.renamed = False
        self.max_temp_relations = 1 << 62  # config limits.max_temp_relations (a Bind past it is refused)
        # A statement calling a session advisory lock function was sent since the server was last asked which
        # advisory locks it holds: the count in the context may be wrong (a call run once per row, or not at all,
        # or again through EXECUTE, a cursor, a view), so the server's word is asked before it goes back.
        self.lock_activity = False
        self.locks_kept = False  # the server said it holds session advisory locks: a pin until it says none
        # The belief is no longer `current` with the changes in flight applied in order (a speculative Parse, a
        # failure, a rollback, a transaction's end that changed the context): `ready` works it out again. Otherwise
        # it is left as it is (working it out at every ReadyForQuery cost O(requests in flight) each, quadratic in a
        # pipeline: red team 9s7 S1, 2,000 pipelined SETs took 30 s of the event loop).
        self._stale = False

    @property
    def current(self) -> SessionContext:
        """The context as the backend has confirmed it."""
        if self._sets_confirmed:
            pending = tuple(self._sets_confirmed)
            self._sets_confirmed = []
            # (one change: SessionContext.apply copies a set once, a run's set() and frozenset() twice)
            self._current = (self._current.apply(pending[0]) if len(pending) == 1
                             else _apply_sets(self._current, pending, 0)[1])
        return self._current

    @current.setter
    def current(self, context: SessionContext) -> None:
        self._sets_confirmed = []  # (read before, through the getter, by whatever made `context`)
        self._current = context

    @property
    def idle(self) -> bool:
        """Nothing to follow: default context, no change in flight, no prepared statement that changes state."""
        return (
            self.belief is EMPTY_CONTEXT
            and self.current is EMPTY_CONTEXT
            and self.committed is EMPTY_CONTEXT
            and not self.requests
            and not self.savepoints
            and not self.lost
            and not any(_stateful(c) for c in self.statements.values())
        )

    # --- the client's side: decisions -------------------------------------------------------------

    def query(self, request: object, first: int, changes: tuple[Change, ...]) -> None:
        """A Query's decision: statement i of its text is statement `first + i` of its request."""
        if self.idle and not any(_stateful((c,)) for c in changes):
            return  # a transaction boundary while there is nothing to take back
        self._record(request, [(first + c.at, c) for c in changes])

    def parse(self, name: str, changes: tuple[Change, ...]) -> None:
        """A Parse's decision: the changes happen when its portal is Executed (`execute`). Only what adds to the
        context counts from now on, speculatively (a pipelined Parse CREATE TEMP t, Parse INSERT INTO t): more
        context is the stricter direction. A removal (DROP of a temporary relation, DISCARD), a search_path or
        other setting change counts once it runs, never for a Parse not executed (red team 9a9 R3)."""
        if changes:
            if name not in self.statements and len(self.statements) >= self.max_statements:
                self._lose(name)  # (no record is dropped for it: PostgreSQL may hold that statement)
            else:
                self.statements[name] = changes
                self._made_count += 1
                self._made[name] = self._made_count
                if self.lost:
                    self.lost.discard(name)
            self.belief = _canonical(_speculate(self.belief, changes))
            self._stale = True
        else:
            self.statements.pop(name, None)
            self._made.pop(name, None)
            if self.lost:
                self.lost.discard(name)

    def lose(self, name: str) -> None:
        """A Close of lost statement `name` that PostgreSQL skipped: the statement is still there, unrecorded, so its
        Binds stay refused (red team 21v F1: a second skipped Close ran it unfollowed)."""
        self._lose(name)

    def _lose(self, name: str) -> None:
        """Statement `name`'s changes cannot be remembered: its Binds are refused until it is Parsed again."""
        self.statements.pop(name, None)
        self._made_count += 1
        if len(self.lost) >= _MAX_LOST:
            self.lost_overflow = True
            self._overflow_at = self._made_count
            self._made.pop(name, None)
        else:
            self.lost.add(name)
            self._made[name] = self._made_count

    def unparsed(self, name: str) -> None:
        """A Parse of `name` recorded by `parse` made nothing on the server (refused before it, as the statement
        maps refuse one past [pool] max_session_statements): it records nothing (red team 21p F3: it took a
        record's place)."""
        self.statements.pop(name, None)
        self._made.pop(name, None)
        if self.lost:
            self.lost.discard(name)

    def lost_bind(self, name: str) -> bool:
        """Whether a Bind of `name` must be refused: its changes are not remembered (a Parse past `max_statements`),
        so running it would go unfollowed."""
        if name in self.lost:
            return True
        return self.lost_overflow and name not in self.statements

    def bind(self, name: str) -> Deny | None:
        """A Bind of prepared statement `name`: the denial to answer instead when running it would take the session
        past `max_temp_relations` (its Parse was decided once, a prepared CREATE TEMP and DROP can run again and
        again in one transaction)."""
        changes = self.statements.get(name)
        if not changes or not any(c.op in _LIMITED for c in changes):
            return None
        return refusal(self._recorded(), changes, self.max_temp_relations)[1]

    def execute(self, request: object, position: int, changes: tuple[Change, ...]) -> None:
        """An Execute of a portal whose statement had `changes` when it was bound (`statements` then), statement
        `position` of its request (the k-th Execute of a request is answered by its k-th CommandComplete, a Bind
        never executed by none)."""
        if changes and (not self.idle or any(_stateful((c,)) for c in changes)):
            self._record(request, [(position, c) for c in changes])

    def _recorded(self) -> SessionContext:
        """The context once every recorded statement has run (the belief without Parses not bound yet)."""
        context = self.current
        for request in self.requests:
            context = _apply(context, tuple(c for _, c in request.changes))
        return context

    def close(self, name: str) -> None:
        self.statements.pop(name, None)
        self._made.pop(name, None)
        if self.lost:
            self.lost.discard(name)

    def maps_deallocate(self, request: object, name: str) -> None:
        """The statement maps sent their own DEALLOCATE in place of `request`'s SQL DEALLOCATE of the client's
        protocol statement `name`: its answer frees that statement's record (`renamed`) — only where the policy's
        parse (PostgreSQL's grammar) names the same statement (red team 22v V1: the maps' pattern read `x` in
        `DEALLOCATE x<no-break space>`)."""
        for entry in self.requests:
            if entry.request is request:
                entry.changes = [(pos, replace(c, frees=True) if isinstance(c, _Deallocating) and c.op == DEALLOCATE
                                  and c.name == name else c) for pos, c in entry.changes]

    def _deallocated(self, change: _Deallocating) -> None:
        """PostgreSQL ran a DEALLOCATE of prepared statement `change.name` ("": DEALLOCATE ALL, DISCARD ALL — every
        named one; the unnamed statement's record stays): the records and lost names it deallocated go (review 21
        F2: kept, they filled the records and refused every later statement with changes, past 4,096 every Bind) —
        only those made before it was sent (red team 22p G1: a Parse behind it in the same write made a statement
        PostgreSQL holds), and a single name only where it reaches the client's protocol statement (G2)."""
        fence, made = change.fence, self._made
        name = change.name if change.op == DEALLOCATE else ""
        if name:
            if change.frees and made.get(name, fence) < fence:
                self.statements.pop(name, None)
                self.lost.discard(name)
                del made[name]
            return
        for gone in [n for n, at in made.items() if at < fence and n]:
            self.statements.pop(gone, None)
            self.lost.discard(gone)
            del made[gone]
        if self._overflow_at < fence:
            self.lost_overflow = False

    def rollback_targets(self) -> list[SessionContext]:
        """The contexts a rollback in flight may take the session back to: the transaction's start, each savepoint's,
        confirmed or sent (a savepoint sent in the same write is followed from what was confirmed)."""
        targets = [self.committed, *(context for _, context in self.savepoints)]
        context = self.current
        for request in self.requests:
            for _, change in request.changes:
                if change.op == SAVEPOINT:
                    targets.append(context)
                context = _apply(context, (change,))
        return targets

    def ending(self) -> bool:
        """Whether a transaction's end or a ROLLBACK TO is sent and not yet answered: until it is, what PostgreSQL
        resolves a prepared statement's names in may be the context at the transaction's start (a rollback, a
        COMMIT of a failed transaction), not the belief (rt9a10 A2)."""
        return any(c.op in _ENDS for request in self.requests for _, c in request.changes)

    def _record(self, request: object, changes: list[tuple[int, Change]]) -> None:
        if not changes:
            return
        if any(c.op in (DEALLOCATE, DISCARD_ALL) for _, c in changes):
            changes = [(pos, self._deallocating(c) if c.op in (DEALLOCATE, DISCARD_ALL) else c) for pos, c in changes]
        if not self.requests or self.requests[-1].request is not request:
            self._fifo().append(_Request(request))
        self.requests[-1].changes += changes
        if not self.lock_activity:
            self.lock_activity = any(c.op in _LOCK_OPS or (c.op == DISCARD_ALL and self.locks_kept) for _, c in changes)
        self.belief = _apply(self.belief, tuple(c for _, c in changes))

    def _deallocating(self, change: Change) -> _Deallocating:
        """`change` (a DEALLOCATE / DISCARD ALL) as it is sent now."""
        return _Deallocating(**{k: getattr(change, k) for k in _CHANGE_FIELDS}, fence=self._made_count + 1,
                             frees=not self.renamed)

    def _fifo(self) -> deque[_Request]:
        """The requests with changes in flight, a deque from the first (a session that never has one holds none:
        an empty deque is 600 bytes)."""
        if self.requests is _NO_REQUESTS:
            self.requests = deque()
        return self.requests

    # --- the backend's side: answers --------------------------------------------------------------

    def _head(self, request: object) -> _Request | None:
        head = self.requests[0] if self.requests else None
        return head if head is not None and head.request is request else None

    def completed(self, request: object, done: int, tag: bytes) -> None:
        """The `done`-th CommandComplete of `request` (the head of the pipeline) arrived, with `tag`."""
        head = self._head(request)
        if head is None:
            return
        while head.changes and head.changes[0][0] < done:
            _, change = head.changes.pop(0)
            self._confirm(change, tag)

    def failed(self, request: object, done: int) -> None:
        """An ErrorResponse after `done` CommandCompletes of `request`: that statement and the rest failed."""
        head = self._head(request)
        if head is not None:
            for pos, change in head.changes:
                if pos == done and change.op in KEPT_ON_ERROR:  # e.g. a lock taken before the statement's error
                    self._confirm(change, b"")
            head.changes = [(pos, c) for pos, c in head.changes if pos < done]
            head.failed = True
        else:
            self._fifo().appendleft(_Request(request, failed=True))
        self._stale = True

    def skipped(self, request: object) -> None:
        """`request` never ran (the backend skipped it after an error earlier in its batch, red team 9a3 J8): its
        changes go."""
        kept = [entry for entry in self.requests if entry.request is not request]
        if len(kept) == len(self.requests):
            return
        self.requests = deque(kept) if kept else _NO_REQUESTS  # type: ignore[assignment]
        belief = self.current
        for later in self.requests:
            belief = _apply(belief, tuple(c for _, c in later.changes))
        self.belief = _canonical(belief)

    def joined(self, request: object, head: object, offset: int) -> None:
        """`request` became part of `head` (its statements from position `offset` on: a COPY IN swallowed the Sync
        between them, red team 9a4 K3): its changes become the head's."""
        found = next((entry for entry in self.requests if entry.request is request), None)
        if found is None:
            return
        found.request = head
        found.changes = [(pos + offset, c) for pos, c in found.changes]
        self._stale = True
        first = next(entry for entry in self.requests if entry.request is head)
        if first is not found:
            first.changes.extend(found.changes)
            self.requests = deque(entry for entry in self.requests if entry is not found)

    def ready(self, request: object, status: bytes) -> None:
        """ReadyForQuery `status` (I, T or E) ended `request`."""
        head = self._head(request)
        failed = False
        if head is not None:
            self.requests.popleft()
            failed = head.failed
            for _, change in head.changes:  # answered without a CommandComplete of their own (never in practice)
                self._confirm(change, b"")
        if status == b"I":  # no transaction block open: the request's transaction committed or rolled back
            if failed:
                self.current = _rolled_back(self.committed, self.current)
            else:
                ended = self.current.end_of_transaction()
                if ended is not self.current:
                    self._stale = True
                self.current = ended
                self.committed = self.current
            self.savepoints.clear()
        if failed or self._stale:
            self._stale = False
            belief = self.current
            for later in self.requests:
                belief = _apply(belief, tuple(c for _, c in later.changes))
            self.belief = _canonical(belief)
        self.current = _canonical(self.current)
        self.committed = _canonical(self.committed)

    def _confirm(self, change: Change, tag: bytes) -> None:
        op = change.op
        if isinstance(change, _Deallocating):
            self._deallocated(change)
        if op in _SET_OPS:
            self._sets_confirmed.append(change)
        elif op not in TRANSACTION_OPS:
            self.current = self.current.apply(change)
        elif op == COMMIT and not tag.startswith(b"ROLLBACK"):  # COMMIT of a failed transaction rolls back
            self.current = self.current.end_of_transaction()
            self.committed = self.current
            self.savepoints.clear()
        elif op in (COMMIT, ROLLBACK):
            self.current = _rolled_back(self.committed, self.current)
            self.savepoints.clear()
            self._stale = True
        elif op == SAVEPOINT:
            self.savepoints.append((change.name, self.current))
        else:
            at = next((i for i in range(len(self.savepoints) - 1, -1, -1) if self.savepoints[i][0] == change.name),
                      None)
            if op == RELEASE:
                if at is not None:
                    del self.savepoints[at:]
            elif op == ROLLBACK_TO:
                self._stale = True
                # A savepoint set while there was nothing to follow was set in the empty context.
                self.current = _rolled_back(self.savepoints[at][1] if at is not None else EMPTY_CONTEXT,
                                            self.current)
                if at is not None:
                    del self.savepoints[at + 1 :]

    def start(self, context: SessionContext) -> None:
        """Before its first statement: the session starts in `context` (a startup setting the client is shown as it
        asked for it, policy/timeouts.py startup_context)."""
        self.committed = self.current = self.belief = _canonical(context)

    def settle_settings(self, settings: tuple[tuple[str, str], ...]) -> None:
        """Between transactions, with nothing in flight: the session's settings are now `settings` (what the proxy
        has just made of them, see ClientSession._sync_settings)."""
        self.committed = _canonical(replace(self.committed, settings=settings))
        self.current = _canonical(replace(self.current, settings=settings))
        self.belief = _canonical(replace(self.belief, settings=settings))

    @staticmethod
    def parameter_status(value: str) -> str:
        """What the client is told search_path is when PostgreSQL reports `value` (PostgreSQL 18 reports it): the
        client's own value where the proxy sent PostgreSQL another one (carried in `value`, settings.client_path)."""
        return client_path(value)


def _rolled_back(to: SessionContext, now: SessionContext) -> SessionContext:
    """The context after a rollback to `to` from `now`: what ignores transactions stays as it is now (SQL prepared
    statements and which of them EXPLAIN EXECUTE may show, session advisory locks, the pins the proxy cannot
    follow), and a WITH HOLD cursor closed since stays closed (PostgreSQL drops a portal at once; one created since
    is gone with its transaction)."""
    cursors = to.cursors & now.cursors if to.cursors else to.cursors
    if (to.prepared == now.prepared and to.explainable == now.explainable and to.locks == now.locks
            and to.pins == now.pins and cursors == to.cursors and to.reprepare == now.reprepare
            and to.steady == now.steady):
        return to
    # Names resolve again as at `to`: a statement SQL PREPAREd since (a PREPARE is not taken back) was prepared
    # where they resolved otherwise, and is to be prepared again (`SessionContext.reprepare`).
    since = now.prepared - to.prepared
    reprepare = to.reprepare
    if since and now.reprepare != to.reprepare:
        reprepare = (to.prepared if to.reprepare is None else to.reprepare) - since
    return replace(to, prepared=now.prepared, explainable=now.explainable, locks=now.locks, pins=now.pins,
                   cursors=cursors, reprepare=reprepare, steady=now.steady)


def _stateful(changes: tuple[Change, ...]) -> bool:
    """True if some change is not a transaction boundary (those only matter once there is state to take back)."""
    return any(c.op not in TRANSACTION_OPS for c in changes)


def _speculate(context: SessionContext, changes: tuple[Change, ...]) -> SessionContext:
    """`context` with the additions among `changes` (a temporary relation of a name it does not have, a prepared
    statement, a WITH HOLD cursor, a LISTEN, an exported snapshot); everything else left for its Execute."""
    for change in changes:
        op = change.op
        if op in (TEMP_TABLE, TEMP_VIEW):
            if change.name not in context.temp_tables and change.name not in context.temp_views:
                context = context.apply(change)
        elif op == SQL_PREPARE:  # held on the server from its Parse on (a pin), but no EXECUTE of it allowed for it
            applied = context.apply(change)  # until it runs (review 18b F1: `reprepare`, `explainable`)
            context = replace(applied, reprepare=context.reprepare,
                              explainable=applied.explainable & context.explainable,
                              steady=applied.steady & context.steady)
        elif change.name in (context.cursors if op == HOLD_CURSOR else context.listening if op == LISTEN else ()):
            continue  # held already: no copy of the set (review 19b F3: a copy per Parse, quadratic without a Sync)
        elif op in _ADDITIONS:
            context = context.apply(change)
    return context


def _apply(context: SessionContext, changes: tuple[Change, ...]) -> SessionContext:
    count = len(changes)
    i = 0
    while i < count:
        change = changes[i]
        if change.op in _SET_OPS and i + 1 < count and changes[i + 1].op in _SET_OPS:
            i, context = _apply_sets(context, changes, i)
            continue
        if change.op not in TRANSACTION_OPS or change.op in _ENDS:  # (a rollback: `reprepare`, SessionContext.apply)
            context = context.apply(change)
        i += 1
    return _canonical(context)


def _apply_sets(context: SessionContext, changes: tuple[Change, ...], i: int) -> tuple[int, SessionContext]:
    """A run of WITH HOLD cursor and LISTEN changes from `changes[i]` applied at once, as `SessionContext.apply`
    applies each (the sets copied once for the run, not once per change: red team 9s8 F4, a string of 1,000
    DECLAREs copied a session's 30,000 cursors 1,000 times); the index after the run and the context."""
    cursors: set[str] | None = None  # (each set copied once the run changes it)
    listening: set[str] | None = None
    count = len(changes)
    while i < count and changes[i].op in _SET_OPS:
        op, name = changes[i].op, changes[i].name
        if op in (HOLD_CURSOR, CLOSE_CURSOR):
            if cursors is None:
                cursors = set(context.cursors)
            if op == HOLD_CURSOR:
                cursors.add(name)
            elif name:
                cursors.discard(name)
            else:
                cursors.clear()
        else:
            if listening is None:
                listening = set(context.listening)
            if op == LISTEN:
                listening.add(name)
            elif name == "*":  # UNLISTEN
                listening.clear()
            else:
                listening.discard(name)
        i += 1
    return i, replace(context, cursors=context.cursors if cursors is None else frozenset(cursors),
                      listening=context.listening if listening is None else frozenset(listening))


def _canonical(context: SessionContext) -> SessionContext:
    """The empty context as the one EMPTY_CONTEXT object (compared by identity on the hot path)."""
    return EMPTY_CONTEXT if context == EMPTY_CONTEXT else context
