"""Per-tenant and per-user limits: the values a session runs under, connection counts, result cut-offs; pure."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from proxy import errors
from proxy.config import Config
from proxy.errors import PgError
from proxy.policy.settings import setting_milliseconds
from proxy.pooling import ServerRequest, with_parameters
from proxy.protocol import messages as m

# The limit names (the `limit` label of pgtenant_limit_refusals_total, the audit log's `limit` field).
MAX_CLIENT_CONNECTIONS = "max_client_connections"
MAX_CONCURRENT_QUERIES = "max_concurrent_queries"
STATEMENT_TIMEOUT = "statement_timeout"
REPLICA_STATEMENT_TIMEOUT = "replica_statement_timeout"
IDLE_IN_TRANSACTION_TIMEOUT = "idle_in_transaction_timeout"
MAX_RESULT_ROWS = "max_result_rows"
MAX_RESULT_BYTES = "max_result_bytes"
LIMITS = (MAX_CLIENT_CONNECTIONS, MAX_CONCURRENT_QUERIES, STATEMENT_TIMEOUT, REPLICA_STATEMENT_TIMEOUT,
          IDLE_IN_TRANSACTION_TIMEOUT, MAX_RESULT_ROWS, MAX_RESULT_BYTES)

_TICK_MIN = 0.05  # the watchdog's period (a tenth of the shortest timeout) stays within these bounds (seconds)
_TICK_MAX = 1.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one session runs under (None: no limit): the user's values over the tenant's."""

    tenant: str
    user: str
    max_client_connections: int | None = None  # the tenant's
    user_max_client_connections: int | None = None  # the user's own
    max_concurrent_queries: int | None = None
    query_wait_timeout: float = 120.0
    statement_timeout: float | None = None
    idle_in_transaction_timeout: float | None = None
    max_result_rows: int | None = None
    max_result_bytes: int | None = None
    agent_statement_timeout: float | None = None  # the agent profile's own (agent.statement_timeout), when an agent
    replica_statement_timeout: float | None = None  # a request running on a replica (the watchdog's only)

    @property
    def any(self) -> bool:
        """Some limit applies (else the session runs as if none were configured)."""
        return (self.cuts_results or self.watched or self.max_client_connections is not None
                or self.user_max_client_connections is not None or self.max_concurrent_queries is not None)

    @property
    def relayed(self) -> bool:
        """The relay needs the limits' handlers (results, timeouts, turns), not just the login's count."""
        return self.cuts_results or self.watched or self.max_concurrent_queries is not None

    @property
    def cuts_results(self) -> bool:
        """Rows or bytes of results are counted (only then: the relay's hot path stays as it is otherwise)."""
        return self.max_result_rows is not None or self.max_result_bytes is not None

    @property
    def watched(self) -> bool:
        """The session needs the watchdog (a statement or idle-in-transaction timeout)."""
        return (self.watchdog_timeout is not None or self.idle_in_transaction_timeout is not None
                or self.replica_statement_timeout is not None)

    @property
    def watchdog_timeout(self) -> float | None:
        """How long a request may run before the watchdog cancels it: the statement_timeout limit, or the agent
        profile's own when lower (the proxy enforces it too, not only the server's setting)."""
        own, agent = self.statement_timeout, self.agent_statement_timeout
        if agent is None:
            return own
        return agent if own is None else min(own, agent)

    def timeout_on(self, replica: bool) -> tuple[float | None, str]:
        """How long a request on a server may run before the watchdog cancels it, and whose limit that is
        (STATEMENT_TIMEOUT, "agent", REPLICA_STATEMENT_TIMEOUT): on a replica replica_statement_timeout when lower."""
        timeout = self.watchdog_timeout
        which = "agent" if self.agent_timed else STATEMENT_TIMEOUT
        own = self.replica_statement_timeout
        if replica and own is not None and (timeout is None or own < timeout):
            return own, REPLICA_STATEMENT_TIMEOUT
        return timeout, which

    @property
    def agent_timed(self) -> bool:
        """The watchdog's timeout is the agent profile's (lower than any statement_timeout limit)."""
        agent = self.agent_statement_timeout
        return agent is not None and (self.statement_timeout is None or agent < self.statement_timeout)

    @property
    def tick(self) -> float:
        """How often the watchdog looks (a tenth of the shortest timeout, within 50 ms..1 s)."""
        shortest = min(t for t in (self.watchdog_timeout, self.idle_in_transaction_timeout,
                                   self.replica_statement_timeout) if t is not None)
        return min(_TICK_MAX, max(_TICK_MIN, shortest / 10))


def _set(value: float | int | None) -> float | int | None:
    """A configured value as a limit: 0 means none."""
    return value or None


def resolve(config: Config, user: str) -> Limits:
    """The limits of `user`'s sessions: each of the user's own values over its tenant's (0 lifts the tenant's); an
    agent-profile user's also its agent.statement_timeout, which the watchdog enforces as the limit's."""
    u = config.users[user]
    t = config.tenants[u.tenant]
    agent = config.agent_limits(user)

    def pick(key: str) -> float | int | None:
        own = getattr(u, key)
        return _set(getattr(t, key) if own is None else own)

    return Limits(
        tenant=t.name, user=user,
        max_client_connections=_set(t.max_client_connections),  # type: ignore[arg-type]
        user_max_client_connections=_set(u.max_client_connections),  # type: ignore[arg-type]
        max_concurrent_queries=_set(t.max_concurrent_queries),  # type: ignore[arg-type]
        query_wait_timeout=t.query_wait_timeout or config.pool.query_wait_timeout,
        statement_timeout=pick("statement_timeout"),
        replica_statement_timeout=pick("replica_statement_timeout"),
        idle_in_transaction_timeout=pick("idle_in_transaction_timeout"),
        max_result_rows=pick("max_result_rows"),  # type: ignore[arg-type]
        max_result_bytes=pick("max_result_bytes"),  # type: ignore[arg-type]
        agent_statement_timeout=agent.statement_timeout if agent is not None else None,
    )


def seconds(value: float) -> str:
    """A limit in seconds as messages show it (30, 0.5)."""
    return f"{value:g}"


def milliseconds(seconds: float) -> int:
    """A timeout in seconds as PostgreSQL's setting (whole milliseconds, at least 1)."""
    return max(1, round(seconds * 1000))


def clamped_timeout(client_value: str | None, limit: float) -> str:
    """The statement_timeout a server is started with for a client that asked for `client_value` (a startup
    parameter, in PostgreSQL's units: a number of ms, or with a unit) under a `limit` in seconds: the client's when
    it is below the limit, else the limit."""
    ms = milliseconds(limit)
    asked = setting_milliseconds(client_value) if client_value is not None else None
    if asked is not None and 0 < asked <= ms:
        return client_value  # type: ignore[return-value]
    return f"{ms}ms"


def server_request(request: ServerRequest, limit: float) -> ServerRequest:
    """The pool request of a session under a statement_timeout `limit` (seconds): its servers start with
    statement_timeout at most the limit (an agent's own lower one stays), so that RESET, SET ... TO DEFAULT, RESET
    ALL and DISCARD ALL return to it on the server itself; a SET above it reaches PostgreSQL as the limit
    (policy/timeouts.py). Its own pool: the value is part of the key."""
    ms = milliseconds(limit)
    own = setting_milliseconds(request.parameters.get(STATEMENT_TIMEOUT, "0"))
    if own is not None and 0 < own <= ms:
        return request
    return with_parameters(request, {STATEMENT_TIMEOUT: f"{ms}ms"})


class ConnectionCounts:
    """Client connections per tenant and per user, across the process (the listener's; a session counts itself at
    login and uncounts itself when it ends)."""

    def __init__(self) -> None:
        self.tenants: Counter[str] = Counter()
        self.users: Counter[str] = Counter()
        self.statement_bytes = TenantStatementBytes()  # the statement text the proxy keeps, per tenant

    def admit(self, limits: Limits) -> tuple[PgError, int] | None:
        """Count one more session of `limits`' user, or the error refusing it and the limit (nothing counted then)."""
        cap = limits.max_client_connections
        if cap is not None and self.tenants[limits.tenant] >= cap:
            return errors.limit_connections("tenant", limits.tenant, cap, f"tenants.{limits.tenant}"), cap
        cap = limits.user_max_client_connections
        if cap is not None and self.users[limits.user] >= cap:
            return errors.limit_connections("user", limits.user, cap, f"users.{limits.user}"), cap
        self.tenants[limits.tenant] += 1
        self.users[limits.user] += 1
        return None

    def release(self, limits: Limits) -> None:
        """One session admitted for `limits` ended."""
        for counts, key in ((self.tenants, limits.tenant), (self.users, limits.user)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]


class ResultMeter:
    """Counts one result's rows and bytes (DataRow, CopyData) against max_result_rows / max_result_bytes."""

    __slots__ = ("bytes", "max_bytes", "max_rows", "rows")

    def __init__(self, max_rows: int | None, max_bytes: int | None) -> None:
        self.max_rows = max_rows if max_rows is not None else -1
        self.max_bytes = max_bytes if max_bytes is not None else -1
        self.rows = 0
        self.bytes = 0

    def add(self, size: int) -> str | None:
        """One more row of `size` bytes (its whole message): the limit it passes, if any."""
        self.rows += 1
        self.bytes += size
        if self.rows > self.max_rows >= 0:
            return MAX_RESULT_ROWS
        if self.bytes > self.max_bytes >= 0:
            return MAX_RESULT_BYTES
        return None

    def left(self) -> int:
        """Bytes the result may still take (max_result_bytes), -1 when not limited."""
        return max(0, self.max_bytes - self.bytes) if self.max_bytes >= 0 else -1

    def reset(self) -> None:
        """The result ended (CommandComplete, an error): the next one starts from zero."""
        self.rows = 0
        self.bytes = 0


# ErrorResponse/NoticeResponse fields that carry text a statement chose: the message (a cast's whole input), detail,
# hint, context, internal query and object names. The others (severity, SQLSTATE, positions, the server's source
# location) are short and the server's.
_TEXT_FIELDS = frozenset("MDHWqstcdn")
CUT_MARK = " [cut: max_result_bytes]"


def bounded_message(type_byte: bytes, body: bytes, budget: int) -> bytes | None:
    """An ErrorResponse/NoticeResponse (`body`) whose whole message is longer than `budget` bytes (what is left of
    max_result_bytes, red team 7 F9): re-encoded with its text fields cut to an equal share of the budget, each
    marked with CUT_MARK; None when it fits (or is not readable, then the server's message is relayed as is)."""
    if len(body) + 5 <= budget:
        return None
    try:
        fields = m.decode_error_fields(body)
    except m.DecodeError:
        return None
    texts = [k for k in fields if k in _TEXT_FIELDS]
    fixed = 6 + sum(2 + len(v.encode()) for k, v in fields.items() if k not in _TEXT_FIELDS)
    share = max(0, (budget - fixed) // max(1, len(texts)) - 2 - len(CUT_MARK))
    for k in texts:
        raw = fields[k].encode()
        if len(raw) > share:
            fields[k] = raw[:share].decode("utf-8", "ignore") + CUT_MARK
    return m.encode_error_fields(type_byte, fields)


class QuerySlots:
    """max_concurrent_queries: per tenant, the sessions running a request (a statement, or a transaction from its
    first statement to its end) and those waiting for a turn, first come first served. A tenant's slots are its
    own: one tenant's queue never delays another's (servers shared across tenants are the pool's fair queue)."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.waiting: dict[str, deque[Hashable]] = {}

    def acquire(self, tenant: str, limit: int, client: Hashable) -> bool:
        """A turn for `client` now (True), or it waits in its tenant's queue (False)."""
        if self.free(tenant, limit):
            self.running[tenant] += 1
            return True
        self.waiting.setdefault(tenant, deque()).append(client)
        return False

    def free(self, tenant: str, limit: int) -> bool:
        """Whether `acquire` would give a turn now (nobody of the tenant waits and one is free)."""
        return self.running[tenant] < limit and not self.waiting.get(tenant)

    def release(self, tenant: str, limit: int) -> Hashable | None:
        """A turn ends: the next waiting client of the tenant, which has it now (None: nobody waits)."""
        self.running[tenant] -= 1
        queue = self.waiting.get(tenant)
        if queue and self.running[tenant] < limit:
            self.running[tenant] += 1
            client = queue.popleft()
            if not queue:
                del self.waiting[tenant]
            return client
        if self.running[tenant] <= 0:
            del self.running[tenant]
        return None

    def withdraw(self, tenant: str, client: Hashable) -> None:
        """A waiting client gave up (its wait timed out, it left)."""
        queue = self.waiting.get(tenant)
        if queue is not None and client in queue:
            queue.remove(client)
            if not queue:
                del self.waiting[tenant]


class TenantStatementBytes:
    """The bytes of named prepared statement text the proxy keeps for each tenant, over all its sessions ([pool]
    max_tenant_statement_bytes): each session's per-session bound multiplied by a tenant's connections was not a
    bound on the proxy's memory (red team 7 F10). A session reports what it holds whenever it would hold more (a
    named Parse) and 0 when it ends; in between it stays counted at what it last reported (a Close does not
    report: the count only ever errs high, towards refusing)."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()

    def claim(self, tenant: str, before: int, after: int, limit: int) -> bool:
        """A session of `tenant` that reported `before` bytes now holds `after`: False (nothing changes) when that is
        more than before and takes the tenant past `limit`."""
        total = self.held[tenant] - before + after
        if after > before and total > limit:
            return False
        if total > 0:
            self.held[tenant] = total
        else:
            del self.held[tenant]
        return True


class StatementBytesClaim:
    """One session's part of its tenant's TenantStatementBytes: `claim(name, held)` before a named Parse that would
    make the session hold `held` bytes (its error, or None), `release()` when the session ends."""

    __slots__ = ("ledger", "limit", "reported", "tenant")

    def __init__(self, ledger: TenantStatementBytes, tenant: str, limit: Callable[[], int]) -> None:
        self.ledger = ledger
        self.tenant = tenant
        self.limit = limit  # [pool] max_tenant_statement_bytes, read at each claim (a reload may change it)
        self.reported = 0

    def __call__(self, name: str, held: int) -> PgError | None:
        limit = self.limit()
        if not self.ledger.claim(self.tenant, self.reported, held, limit):
            return errors.tenant_statements_limit(name=name, tenant=self.tenant, limit=limit)
        self.reported = held
        return None

    def release(self) -> None:
        self.ledger.claim(self.tenant, self.reported, 0, 0)
        self.reported = 0
