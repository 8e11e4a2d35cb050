"""Follows each client request (simple Query, or extended batch up to Sync) to its ReadyForQuery; pure."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from proxy.policy.model import Decision
from proxy.stmtkind import statement_kind

_MAX_STATEMENTS = 10_000
_MAX_PENDING = 10_000  # requests in flight; beyond this the oldest are dropped (their attribution is lost)


class Request:
    """One request in flight: what it was, what the policy said, how it ended (made by `new_request`)."""

    __slots__ = ("closed_by_sync", "decision", "end", "extra", "kind", "outcome", "rows", "sql", "sqlstate", "start")
    start: float
    end: float
    kind: str
    sql: str
    decision: Decision | None
    outcome: str
    sqlstate: str | None
    rows: int
    extra: list[tuple[str, Decision | None]] | None
    closed_by_sync: bool

    @property
    def duration(self) -> float:
        return self.end - self.start

    def more(self, sql: str, decision: Decision | None) -> None:
        """Another statement of the same batch."""
        if self.extra is None:
            self.extra = []
        self.extra.append((sql, decision))


def new_request(start: float, kind: str = "other", sql: str = "", decision: Decision | None = None) -> Request:
    """A request that began at `start` (a plain function, so the compiled build skips Python's call protocol)."""
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
    req.closed_by_sync = False
    return req


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


class RequestTracker:
    """Responses come back in request order, so a FIFO matches them; nothing here parses SQL deeply."""

    def __init__(self, clock: Callable[[], float], on_done: Callable[[Request], None] | None = None) -> None:
        self.clock = clock
        self.on_done = on_done
        self.pending: deque[Request] = deque()
        self._batch: Request | None = None
        self._statements: dict[str, tuple[str, str]] = {}
        self.copy_in = False  # the backend is in COPY IN: it ignores Sync and Flush until CopyDone/CopyFail
        self._swallowed_syncs = 0  # Syncs the backend swallowed in COPY IN (libpq sends another after it)
        self.dropped = 0

    def _push(self, req: Request) -> None:
        if len(self.pending) >= _MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append(req)

    def _batch_request(self) -> Request:
        if self._batch is None:
            self._batch = new_request(self.clock())
            self._push(self._batch)
        return self._batch

    def on_query(self, sql: str, decision: Decision | None) -> None:
        if self._batch is not None and not self.copy_in:
            # Extended messages without a Sync, then a Query: PostgreSQL answers both with one ReadyForQuery.
            batch, self._batch = self._batch, None
            if not batch.sql:
                batch.sql, batch.kind, batch.decision = sql, statement_kind(sql), decision
            else:
                batch.more(sql, decision)
            return
        self._batch = None
        self._push(new_request(self.clock(), statement_kind(sql), sql, decision))

    def on_function_call(self, decision: Decision | None) -> None:
        self._batch = None
        self._push(new_request(self.clock(), "other", "", decision))

    def on_parse(self, name: str, sql: str, decision: Decision | None, kind: str | None = None) -> None:
        req = self._batch_request()
        if kind is None:
            kind = statement_kind(sql)
        if not req.sql:
            req.sql, req.kind, req.decision = sql, kind, decision
        else:
            req.more(sql, decision)
        if name:
            if len(self._statements) >= _MAX_STATEMENTS:
                self._statements.pop(next(iter(self._statements)))
            self._statements[name] = (kind, sql)

    def on_bind(self, statement: str) -> None:
        req = self._batch
        if req is None:
            req = self._batch_request()
        if not req.sql:
            found = self._statements.get(statement)
            if found is not None:
                req.kind, req.sql = found

    def on_close_statement(self, name: str) -> None:
        self._statements.pop(name, None)

    def on_sync(self) -> None:
        if self.copy_in:
            return  # ignored by the backend during COPY IN
        if self._swallowed_syncs and self._batch is None:
            self._swallowed_syncs -= 1  # the Sync that replaces the one COPY IN swallowed
            return
        req = self._batch
        if req is None:
            req = self._batch_request()
        req.closed_by_sync = True
        self._batch = None

    def on_copy_in(self) -> None:
        """The backend entered COPY IN for the head request."""
        self.copy_in = True
        if self.pending and self.pending[0].closed_by_sync:
            # Its Sync was already sent (libpq pipelines it) and the backend swallowed it in COPY IN; the
            # ReadyForQuery comes only after the Sync that follows CopyDone, which must not count again.
            self._swallowed_syncs += 1

    def on_copy_end(self) -> None:
        """CopyDone or CopyFail from the client."""
        self.copy_in = False

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
        if not self.pending:
            return None  # e.g. the ReadyForQuery that ends startup
        req = self.pending.popleft()
        if req is self._batch:
            self._batch = None
        req.end = self.clock()
        if self.on_done is not None:
            self.on_done(req)
        return req
