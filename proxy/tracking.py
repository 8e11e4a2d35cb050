"""Follows each client request (simple Query, or extended batch up to Sync) to its ReadyForQuery; pure."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from proxy._accel import speedups
from proxy.policy.model import Decision, Rewrite
from proxy.stmtkind import statement_kind

_MAX_STATEMENTS = 10_000
_MAX_PENDING = 10_000  # requests in flight; beyond this the oldest are dropped (their attribution is lost, not their
# ReadyForQuerys: `owed_dropped` counts them, so that `pending` never empties while one is owed: review 19a F1b)
# A dropped request's shape (one byte each, `RequestTracker._shapes`): what PostgreSQL may skip when it fails.
_ENDED_BY_QUERY, _CLOSED_BY_SYNC, _JOINED = 1, 2, 4  # (_JOINED: skipped with an earlier one, no ReadyForQuery)
_MAX_EXTRA = 1000  # further statements of one request kept with their text; more are only counted
_MAX_COPY_ENDS = 64  # CopyDone/CopyFails kept that the backend may not have read in a COPY yet (the oldest go)
# The SQL texts a session's tracker holds (requests in flight, their further statements, named prepared statements)
# for the audit log: a text is held up to MAX_TEXT characters, then "... [N characters]"; once the texts held come
# to MAX_HELD characters, new ones are held up to SHORT_TEXT characters, and the oldest named statements go.
MAX_TEXT = 64 * 1024
SHORT_TEXT = 256
MAX_HELD = 1 << 20


class Request:
    """One request in flight: what it was, what the policy said, how it ended (made by `new_request`)."""

    __slots__ = (
        "closed_by_sync", "decision", "end", "ended_by_query", "extra", "extra_dropped", "held", "kind", "outcome",
        "rows", "sql", "sqlstate", "start",
    )
    start: float
    end: float
    kind: str
    sql: str
    decision: Decision | None
    outcome: str
    sqlstate: str | None
    rows: int
    extra: list[tuple[str, Decision | None]] | None
    extra_dropped: int
    held: int
    closed_by_sync: bool
    ended_by_query: bool  # extended messages ended by a Query (no Sync): its ReadyForQuery, unless they failed

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def statements(self) -> int:
        """How many statements the request had (the first, the further ones kept, the further ones counted)."""
        return 1 + (len(self.extra) if self.extra is not None else 0) + self.extra_dropped

    def more(self, sql: str, decision: Decision | None) -> None:
        """Another statement of the same batch."""
        if self.extra is None:
            self.extra = []
        if len(self.extra) < _MAX_EXTRA:
            self.extra.append((sql, decision))
        else:
            self.extra_dropped += 1


def new_request(start: float, kind: str = "other", sql: str = "", decision: Decision | None = None) -> Request:
    """A request that began at `start` (cheaper than a constructor with keyword defaults)."""
    req = Request.__new__(Request)
    req.start = start
    req.kind = kind
    req.sql = sql
    req.decision = decision
    req.outcome = "ok"  # ok | error | denied
    req.sqlstate = None
    req.rows = 0
    req.end = 0.0
    req.extra = None  # further statements of a batch: list[tuple[str, Decision | None]]
    req.extra_dropped = 0
    req.held = 0  # characters of SQL text it holds (its own, its further statements' and their rewrites')
    req.closed_by_sync = False
    req.ended_by_query = False
    return req


def _index(pending: deque[Request], req: Request) -> int:
    """Where `req` is among the requests in flight (-1: answered or dropped by now)."""
    for i, r in enumerate(pending):
        if r is req:
            return i
    return -1


def clip(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters followed by how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text)} characters]"


def tag_rows(tag: bytes) -> int:
    """The row count a CommandComplete tag ends with ("SELECT 5", "INSERT 0 5"); 0 when it has none."""
    end = len(tag)
    while end and tag[end - 1] == 0:
        end -= 1
    start = end
    while start and 48 <= tag[start - 1] <= 57:
        start -= 1
    if start == end or (start and tag[start - 1] != 32):
        return 0
    if end - start > 18:  # past what a C long long holds in every build: let Python's int read it
        return int(tag[start:end])
    n = 0
    for i in range(start, end):
        n = n * 10 + (tag[i] - 48)
    return n


_NONE_PENDING = ()  # RequestTracker.pending with nothing in flight


class RequestTracker:
    """Responses come back in request order, so a FIFO matches them; nothing here parses SQL deeply."""

    def __init__(self, clock: Callable[[], float], on_done: Callable[[Request], None] | None = None) -> None:
        self.clock = clock
        self.on_done = on_done
        # The requests in flight: a deque while there are any, else the shared empty tuple (a deque is 600 bytes,
        # and an idle client has none in flight).
        self.pending: deque[Request] = _NONE_PENDING  # type: ignore[assignment]
        self._batch: Request | None = None
        self._skipping = False  # the open batch failed: the backend skips every message up to its Sync, a Query too
        self._statements: dict[str, tuple[str, str]] = {}
        self.copy_in = False  # what the client sends now is in a COPY IN: the backend ignores its Syncs and Flushes
        # Where the client ended a COPY IN (CopyDone/CopyFail) before the backend said it began one: the newest
        # request then, and whether it was the open batch (None while there are none; see `on_copy_in`).
        self._copy_ends: deque[tuple[Request, bool]] | None = None
        self.dropped = 0
        self.owed_dropped = 0  # the ReadyForQuerys the dropped requests are still owed (uncapped; they come first)
        self._shapes: bytearray | None = None  # the dropped requests' shapes, from `_shape_at` (see `_skipped_dropped`)
        self._shape_at = 0
        self.held = 0  # characters of SQL text held, by requests in flight and by named statements

    def _push(self, req: Request) -> None:
        if not self.pending:
            self.pending = deque()
        elif len(self.pending) >= _MAX_PENDING:
            old = self.pending.popleft()
            self.held -= old.held
            self.dropped += 1
            self.owed_dropped += 1
            if self._shapes is None:
                self._shapes = bytearray()
            self._shapes.append(_ENDED_BY_QUERY * old.ended_by_query | _CLOSED_BY_SYNC * old.closed_by_sync)
        self.pending.append(req)

    def _keep(self, req: Request, sql: str, decision: Decision | None) -> tuple[str, Decision | None]:
        """The text and decision `req` keeps for a statement (clipped: see MAX_TEXT), counted as held."""
        limit = MAX_TEXT if self.held < MAX_HELD else SHORT_TEXT
        if len(sql) > limit:
            sql = clip(sql, limit)
        size = len(sql)
        if type(decision) is Rewrite:
            rewritten: str = decision.sql  # type: ignore[union-attr]
            if len(rewritten) > limit:
                decision = Rewrite(clip(rewritten, limit), decision.rules, decision.effects)  # type: ignore[union-attr]
                rewritten = decision.sql
            size += len(rewritten)
        req.held += size
        self.held += size
        return sql, decision

    def _name(self, name: str, kind: str, sql: str) -> None:
        """Remember a named prepared statement's kind and text (for the Binds that name it)."""
        old = self._statements.pop(name, None)
        if old is not None:
            self.held -= len(old[1])
        if len(sql) > MAX_TEXT:
            sql = clip(sql, MAX_TEXT)
        statements = self._statements
        while statements and (len(statements) >= _MAX_STATEMENTS or self.held + len(sql) > MAX_HELD):
            self.held -= len(statements.pop(next(iter(statements)))[1])
        if len(sql) > SHORT_TEXT and self.held + len(sql) > MAX_HELD:  # the requests in flight hold the rest
            sql = clip(sql, SHORT_TEXT)
        statements[name] = (kind, sql)
        self.held += len(sql)

    def _batch_request(self) -> Request:
        if self._batch is None:
            self._batch = new_request(self.clock())
            self._push(self._batch)
        return self._batch

    def on_query(self, sql: str, decision: Decision | None) -> None:
        if self._batch is not None and not self.copy_in:
            batch = self._batch
            if self._skipping:  # skipped by the backend (no answer): part of the failed batch, up to its Sync
                if not batch.sql:
                    batch.sql, batch.decision = self._keep(batch, sql, decision)
                else:
                    self._more(batch, sql, decision)
                return
            # Extended messages without a Sync, then a Query: PostgreSQL answers both with one ReadyForQuery (unless
            # the extended messages fail: then it skips the Query too, up to the next Sync, see `on_skipped`).
            self._batch = None
            batch.ended_by_query = True
            if not batch.sql:
                kind = statement_kind(sql)
                batch.sql, batch.decision = self._keep(batch, sql, decision)
                batch.kind = kind
            else:
                self._more(batch, sql, decision)
            return
        self._batch = None
        req = new_request(self.clock(), statement_kind(sql))
        req.sql, req.decision = self._keep(req, sql, decision)
        self._push(req)

    def _more(self, req: Request, sql: str, decision: Decision | None) -> None:
        if req.extra is not None and len(req.extra) >= _MAX_EXTRA:
            req.extra_dropped += 1
            return
        sql, decision = self._keep(req, sql, decision)
        req.more(sql, decision)

    def on_function_call(self, decision: Decision | None) -> None:
        batch = self._batch
        if batch is not None and not self.copy_in:  # answered as a Query in an open batch is (see `on_query`)
            if not self._skipping:
                self._batch = None
                batch.ended_by_query = True
            if batch.decision is None:
                batch.decision = decision
            return
        self._batch = None
        self._push(new_request(self.clock(), "other", "", decision))

    def on_parse(self, name: str, sql: str, decision: Decision | None, kind: str | None = None) -> None:
        req = self._batch_request()
        if kind is None:
            kind = statement_kind(sql)
        if name:
            self._name(name, kind, sql)
        if not req.sql:
            req.sql, req.decision = self._keep(req, sql, decision)
            req.kind = kind
        else:
            self._more(req, sql, decision)

    def on_bind(self, statement: str) -> None:
        req = self._batch
        if req is None:
            req = self._batch_request()
        if not req.sql:
            found = self._statements.get(statement)
            if found is not None:
                req.kind, req.sql = found  # shared with the statement map: held once

    def on_close_statement(self, name: str) -> tuple[str, str] | None:
        old = self._statements.pop(name, None)
        if old is not None:
            self.held -= len(old[1])
        return old

    def on_close_undone(self, name: str, old: tuple[str, str]) -> None:
        """A Close PostgreSQL skipped: the statement's kind and text it took (`on_close_statement`) are its again."""
        self._name(name, old[0], old[1])

    def on_sync(self) -> None:
        if self.copy_in:
            return  # ignored by the backend during COPY IN
        req = self._batch
        if req is None:
            req = self._batch_request()
        req.closed_by_sync = True
        self._batch = None
        self._skipping = False

    def on_skipped(self) -> list[Request]:
        """The head request's extended messages failed (an ErrorResponse to one of them): the backend skips every
        message up to the next Sync, a Query and a FunctionCall too (red team 9a3 J8). A head ended by a Query then
        has no ReadyForQuery of its own: the requests sent after it up to that Sync are part of it (their texts
        joined to its own), and are returned (never answered, the caller drops their records); with no Sync sent yet
        it is the open batch again."""
        if self.owed_dropped:  # the error is the oldest dropped request's
            return self._skipped_dropped()
        pending = self.pending
        if not pending:
            return []
        head = pending[0]
        if head is self._batch:  # still open: what comes up to its Sync is skipped
            self._skipping = True
            return []
        if not head.ended_by_query:
            return []
        head.ended_by_query = False
        joined: list[Request] = []
        while len(pending) > 1:
            req = pending[1]
            del pending[1]
            joined.append(req)
            self.held -= req.held
            if not head.sql:
                head.kind = req.kind
                head.sql, head.decision = self._keep(head, req.sql, req.decision)
            elif req.sql:
                self._more(head, req.sql, req.decision)
            for sql, decision in req.extra or ():
                self._more(head, sql, decision)
            head.extra_dropped += req.extra_dropped
            if req.closed_by_sync:
                head.closed_by_sync = True
                return joined
        self._batch = head  # no Sync sent yet (the open batch, if any, joined)
        self._skipping = True
        return joined

    def _dropped_head(self) -> int:
        """Where the oldest dropped request still owed a ReadyForQuery is in `_shapes` (owed_dropped > 0)."""
        shapes, at = self._shapes, self._shape_at
        assert shapes is not None
        while shapes[at] & _JOINED:
            at += 1
        self._shape_at = at
        return at

    def _skipped_dropped(self) -> list[Request]:
        """`on_skipped` when the failed request is a dropped one (review 19a F1b, wp-sk2): one ended by a Query
        makes PostgreSQL skip everything up to the next Sync. The ReadyForQuery at that Sync is the one of the last
        request skipped (the one the Sync closed, or the open batch, or a new one if none is open yet), the others
        up to it, the head too, are joined (owe none): the dropped ones marked, the kept ones returned as
        `on_skipped` returns them. So the ReadyForQuerys owed stay exact and `pending` never empties while one is."""
        shapes = self._shapes
        assert shapes is not None
        at = self._dropped_head()
        if not shapes[at] & _ENDED_BY_QUERY:
            return []
        shapes[at] = _JOINED
        self.owed_dropped -= 1
        for i in range(at + 1, len(shapes)):
            shape = shapes[i]
            if not shape & _JOINED:
                if shape & _CLOSED_BY_SYNC:  # this one's ReadyForQuery comes: the skipped stretch's
                    return []
                shapes[i] = _JOINED
                self.owed_dropped -= 1
        pending = self.pending
        joined: list[Request] = []
        while pending and pending[0] is not self._batch and not pending[0].closed_by_sync:
            req = pending.popleft()
            self.held -= req.held
            joined.append(req)
        if not pending:  # no Sync sent yet: what comes up to it is skipped, answered at it
            self._batch = None
            self._batch_request()
            self._skipping = True
        elif pending[0] is self._batch:
            self._skipping = True
        if not self.owed_dropped:
            self._shapes, self._shape_at = None, 0
        return joined

    def on_copy_in(self) -> list[Request]:
        """The backend entered COPY IN for the head request. It ignores the Syncs the client sent after the head's
        COPY and before its CopyDone/CopyFail (libpq pipelines one; red team 9a4 K3), which the client may have sent
        before this answer came: the requests those Syncs closed or opened are joined to the head, as is what the
        client sent after the COPY ended when the head's own Sync was one of them (the rest of its batch). Returns the
        requests joined (their records go, or become the head's)."""
        pending = self.pending
        if not pending:
            self.copy_in = True
            return []
        head: Request = pending[0]
        last = -1  # where the client ended this COPY (-1: not yet, it is still in it)
        batch_open = False
        ends = self._copy_ends
        while ends:
            req, batch_open = ends.popleft()
            last = _index(pending, req)
            if last >= 0:
                break
        joined: list[Request] = []
        if last < 0:
            self.copy_in = True
            last = len(pending) - 1
            if last and pending[last] is self._batch:
                last -= 1  # a batch a Flush opened in the COPY: see below
        elif batch_open:
            if not last:
                return joined  # the head's Sync (if any) came after the COPY ended
            # The batch open where the COPY ended was opened in it, after a Sync the COPY swallows, by a Flush (the
            # backend ignores it too; any other message ends the session): it goes on the head's batch when the
            # head's own Sync was swallowed, and is the next batch after a Query's COPY (red team 9a5 F11).
            last -= 1
        for _ in range(last):  # Syncs in the COPY: swallowed
            joined.append(self._join(head, 1))
        if head.closed_by_sync:  # its Sync was in the COPY too: the head's batch goes on
            head.closed_by_sync = False
            if len(pending) > 1:
                req = self._join(head, 1)
                joined.append(req)
                if req is self._batch:
                    self._batch = head
                elif req.closed_by_sync:
                    head.closed_by_sync = True
                else:
                    head.ended_by_query = True
            else:
                self._batch = head
        return joined

    def _join(self, head: Request, i: int) -> Request:
        """Request `i` of those in flight, taken out and its texts joined to `head`'s."""
        pending = self.pending
        req: Request = pending[i]
        del pending[i]
        self.held -= req.held
        if req.sql:
            if not head.sql:
                head.kind = req.kind
                head.sql, head.decision = self._keep(head, req.sql, req.decision)
            else:
                self._more(head, req.sql, req.decision)
        for sql, decision in req.extra or ():
            self._more(head, sql, decision)
        head.extra_dropped += req.extra_dropped
        return req

    def on_copy_end(self) -> None:
        """CopyDone or CopyFail from the client."""
        if self.copy_in:
            self.copy_in = False
        elif self.pending:  # the backend may not have begun this COPY yet: where the client ended it
            ends = self._copy_ends
            if ends is None:
                ends = self._copy_ends = deque(maxlen=_MAX_COPY_ENDS)
            ends.append((self.pending[-1], self._batch is not None))

    def on_error(self, sqlstate: str | None, denied: bool = False) -> None:
        if self.pending:
            head = self.pending[0]
            if head.outcome == "ok":
                head.outcome = "denied" if denied else "error"
                head.sqlstate = sqlstate

    def on_command_complete(self, tag: bytes) -> None:
        if self.pending:
            rows = tag_rows(tag)
            if rows:
                head = self.pending[0]
                head.rows += rows

    def on_ready(self) -> Request | None:
        if self.owed_dropped:  # a dropped request's (the oldest): those kept stay in flight
            self._dropped_head()
            self._shape_at += 1
            self.owed_dropped -= 1
            if not self.owed_dropped:
                self._shapes, self._shape_at = None, 0
            elif self._shape_at >= 4096 and 2 * self._shape_at >= len(self._shapes):  # type: ignore[arg-type]
                del self._shapes[:self._shape_at]  # type: ignore[index]
                self._shape_at = 0
            return None
        if not self.pending:
            return None  # e.g. the ReadyForQuery that ends startup
        req = self.pending.popleft()
        if not self.pending:
            self.pending = _NONE_PENDING  # type: ignore[assignment]
            self._copy_ends = None
        self.held -= req.held
        if req is self._batch:
            self._batch = None
            self._skipping = False
        req.end = self.clock()
        if self.on_done is not None:
            self.on_done(req)
        return req


if speedups is not None:  # the compiled build of these names (proxy/_speedups.pyx, proxy/_accel.py)
    Request = speedups.Request
    new_request = speedups.new_request
    tag_rows = speedups.tag_rows
    RequestTracker = speedups.RequestTracker
