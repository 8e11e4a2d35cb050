"""The pool manager: server connections per PoolKey under pool and database budgets, handed out fairly; pure."""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field, replace

from proxy import errors
from proxy.config import BackendConfig, Config, PoolMode, TenantConfig
from proxy.errors import PgError
from proxy.reasons import CloseReason
from proxy.tenancy import backend_context

IDLE_IN_TRANSACTION = "idle_in_transaction_session_timeout"
# PostgreSQL checks every second whether the proxy closed a server's socket while a statement runs (PostgreSQL 14+), and
# ends the statement: a client that leaves with requests pipelined behind a running one leaves nothing running once
# its drained server is closed (red team 8a F7: the drain's cancel ends only the statement running then).
CONNECTION_CHECK = "client_connection_check_interval"
# On a full database budget, an idle server of a tenant holding no more than its weighted share of the budget is
# kept for that tenant this long after its last use (not closed to make room for another tenant): a tenant between
# two queries does not pay a new server for each while a neighbour floods the budget (the noisy neighbour).
KEEP_FOR_TENANT = 10.0
# What a session's limits or agent profile add to its tenant's server context (proxy/limits.py, proxy/agent.py): a
# pool with them is the tenant's too, kept by a reload that leaves the tenant's context as it was.
SESSION_PARAMETERS = frozenset({"statement_timeout", "default_transaction_read_only"})


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What a server connection may serve: backend, database, backend role and its startup context (sorted)."""

    backend: str
    database: str
    role: str
    context: tuple[tuple[str, str], ...]

    @property
    def budget(self) -> tuple[str, str]:
        """The (backend, database) whose max_db_connections this pool counts in."""
        return self.backend, self.database


@dataclass(frozen=True, slots=True)
class ServerRequest:
    """A session asks for a server: its tenant, the pool key, mode and fair-queue weight, how to start one."""

    tenant: str
    key: PoolKey
    mode: PoolMode
    weight: float
    backend: BackendConfig
    parameters: dict[str, str]  # the key's context as a dict: what a new server is started with
    replica: str | None = None  # a request routed to this replica of the backend (proxy/replicas.py)


def replica_key(key: PoolKey, replica: str) -> PoolKey:
    """The pool key of `key`'s servers on `replica` of its backend (a pool of its own, a budget of its own)."""
    return PoolKey(f"{key.backend}/{replica}", key.database, key.role, key.context)


def server_context(tenant: TenantConfig, config: Config) -> dict[str, str]:
    """The startup parameters every server of a tenant starts with (and nothing of a client's): its tenant context,
    client_encoding UTF8 and the idle-in-transaction default."""
    params = dict(backend_context(tenant))
    params.setdefault("client_encoding", "UTF8")
    params.setdefault(IDLE_IN_TRANSACTION, f"{round(config.limits.idle_in_transaction_timeout * 1000)}ms")
    params.setdefault(CONNECTION_CHECK, "1s")
    return params


def with_parameters(request: ServerRequest, extra: dict[str, str]) -> ServerRequest:
    """`request` for servers that also start with `extra` (their own pool: the context is part of the key)."""
    params = {**request.parameters, **extra}
    return replace(request, key=replace(request.key, context=tuple(sorted(params.items()))), parameters=params)


def server_request(config: Config, tenant: str) -> ServerRequest:
    """The request of a session of `tenant` under `config`: one object per tenant and config, shared by its sessions
    (immutable; 400 bytes each an idle session would hold)."""
    cached = _requests.get(tenant) if _requests_of[0] is config else None
    if cached is None:
        if _requests_of[0] is not config:
            _requests_of[0] = config
            _requests.clear()
        cached = _requests[tenant] = _server_request(config, tenant)
    return cached


_requests_of: list[Config | None] = [None]  # the config the cached requests were made under (a reload: another)
_requests: dict[str, ServerRequest] = {}


def _server_request(config: Config, tenant: str) -> ServerRequest:
    t = config.tenants[tenant]
    backend = config.backend_for(t)
    params = server_context(t, config)
    key = PoolKey(backend.name, t.database, backend.user, tuple(sorted(params.items())))
    settings = config.tenant_pool(tenant)
    return ServerRequest(tenant, key, settings.mode, settings.weight, backend, params)


# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a new server for `request`'s pool (server `server`); answered with `connected` or `connect_failed`."""

    server: int
    request: ServerRequest


@dataclass(frozen=True, slots=True)
class Grant:
    """Hand server `server` (idle, ReadyForQuery 'I') to `client`, who waited `waited` seconds."""

    client: Hashable
    server: int
    waited: float


@dataclass(frozen=True, slots=True)
class Refuse:
    """No server for `client`: it gets `error`."""

    client: Hashable
    error: PgError
    reason: CloseReason
    waited: float = 0.0


@dataclass(frozen=True, slots=True)
class Close:
    """Close server `server` (the pool has forgotten it)."""

    server: int
    reason: str


@dataclass(frozen=True, slots=True)
class Drain:
    """Server `server`'s client left while a statement ran on it: cancel that statement, then close the server;
    answered with `drained`. Until then it counts against its pool and the database budget (red team 7 F6: a
    backend still running a statement no pool counts escapes pool_size, max_db_connections and every limit)."""

    server: int


@dataclass(frozen=True, slots=True)
class TakeBack:
    """Server `server` was kept for `client` after its release (sticky, idle in the pool): the pool takes it back
    now, before any other use of it in the actions that follow (the client's session lets go of it)."""

    client: Hashable
    server: int


@dataclass(frozen=True, slots=True)
class Check:
    """Run the health check (an empty query) on server `server`; answered with `checked`."""

    server: int


@dataclass(frozen=True, slots=True)
class Reset:
    """Run the reset (DISCARD ALL) on server `server`; answered with `reset_done`."""

    server: int


PoolAction = Connect | Grant | Refuse | Close | Drain | Check | Reset | TakeBack


class Closing(enum.StrEnum):
    """Why the pool closed a server (the label of pgtenant_pool_servers_closed_total)."""

    IDLE_TIMEOUT = "idle_timeout"
    LIFETIME = "lifetime"
    BUDGET = "budget"  # an idle server closed to make room for another pool of its database
    NOT_REUSABLE = "not_reusable"
    DRAINED = "drained"  # its client left mid-statement: the statement was cancelled first
    RESET_FAILED = "reset_failed"
    CHECK_FAILED = "check_failed"
    TIMEOUT = "timeout"  # its reset or check took longer than the backend's connect_timeout
    RETIRED = "retired"  # its pool's tenant context changed (reload)
    LOST = "lost"  # the connection closed by itself
    CANCEL_UNCONFIRMED = "cancel_unconfirmed"  # a cancel to it may still arrive (its connection failed or timed out)
    CONNECT_FAILED = "connect_failed"
    SHUTDOWN = "shutdown"


class State(enum.StrEnum):
    """A pooled server's state (closed servers are forgotten)."""

    CONNECTING = "connecting"
    IDLE = "idle"
    ACTIVE = "active"
    RESET = "reset"
    CHECKING = "checking"
    DRAINING = "draining"  # its client left mid-statement: the statement is being cancelled, then it closes


class Event(enum.Enum):
    CONNECTED = "connected"
    GRANT = "grant"
    RELEASE = "release"
    RESET = "reset"
    RESET_DONE = "reset_done"
    CHECK = "check"
    CHECK_DONE = "check_done"
    DRAIN = "drain"


# A pooled server's life as data: (state, event) -> next state; it may be closed in any state.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.CONNECTING, Event.CONNECTED): State.IDLE,
    (State.CONNECTING, Event.GRANT): State.ACTIVE,  # opened for a waiter, who gets it at once
    (State.IDLE, Event.GRANT): State.ACTIVE,
    (State.IDLE, Event.CHECK): State.CHECKING,
    (State.CHECKING, Event.CHECK_DONE): State.IDLE,
    (State.ACTIVE, Event.RELEASE): State.IDLE,
    (State.ACTIVE, Event.RESET): State.RESET,
    (State.RESET, Event.RESET_DONE): State.IDLE,
    (State.ACTIVE, Event.DRAIN): State.DRAINING,
}


# --- the records ----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Server:
    id: int
    pool: Pool
    request: ServerRequest
    state: State
    created: float
    last_used: float
    since: float  # when the current state began (reset and check deadlines)
    owner: Hashable | None = None
    cancels: int = 0  # cancel connections in flight to it: not handed out until they closed
    cancelled: bool = False  # a cancel reached it since its last proving round trip: checked before reuse
    proving: bool = False  # its reset/check began with no cancel in flight (a success proves it clean)
    cancel_lost: bool = False  # a cancel's connection failed: PostgreSQL may still act on it, so it is closed
    pinned: bool = False
    opened_for: str = ""  # the tenant whose waiter made it be opened (a failed connect refuses that one)
    sticky: Hashable | None = None  # idle, but kept for this client (its last holder) until anyone needs it


@dataclass(slots=True, eq=False)
class Pool:
    key: PoolKey
    tenant: str
    mode: PoolMode
    size: int
    min_size: int
    reserve: int
    request: ServerRequest  # the last request for it (how min_pool_size servers are opened)
    servers: dict[int, Server] = field(default_factory=dict)
    idle: dict[int, Server] = field(default_factory=dict)  # insertion order: least recently used first
    waiting: int = 0
    active: int = 0  # clients holding a server
    connecting: int = 0
    retired: bool = False

    def limit(self, reserve_allowed: bool) -> int:
        return self.size + (self.reserve if reserve_allowed else 0)

    def coming(self) -> int:
        """Servers that will be idle soon: connecting, resetting or being checked."""
        return sum(1 for s in self.servers.values() if s.state in _COMING)


@dataclass(slots=True, eq=False)
class Waiter:
    client: Hashable
    request: ServerRequest
    pool: Pool
    since: float


@dataclass(slots=True, eq=False)
class Tenant:
    """One tenant's waiting clients (FIFO) and its place in the fair queue (stride scheduling)."""

    name: str
    weight: float
    waiters: deque[Waiter] = field(default_factory=deque)
    passed: float = 0.0  # its virtual time: every server it got advanced it by 1 / weight
    promised: int = 0  # servers opened for its waiters, paid for already
    seq: int = 0  # ties broken by who started waiting first


@dataclass(frozen=True, slots=True)
class PoolRow:
    """One pool as plain data (SHOW POOLS, the gauges)."""

    tenant: str
    backend: str
    database: str
    role: str
    mode: str
    cl_active: int
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_pinned: int
    sv_used: int  # resetting or being checked
    sv_connecting: int
    maxwait: float
    size: int


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One server as the pool sees it (SHOW SERVERS)."""

    id: int
    tenant: str
    database: str
    role: str
    state: str
    age: float
    owner: Hashable | None


class PoolManager:
    """Every pool of the proxy. Fed events with the time, it answers PoolActions; it never touches a socket.

    Rules: a pool holds at most `size` servers (`size + reserve` once its oldest waiter waited
    reserve_pool_timeout); the pools of one (backend, database) hold at most its max_db_connections together,
    idle servers of other pools being closed least recently used first to make room. Waiting clients are served
    FIFO within a tenant and by stride scheduling across tenants (each server a tenant gets advances its virtual
    time by 1 / weight; the tenant furthest behind goes first), so that one tenant's flood cannot take every
    server of a contended database from another.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pools: dict[PoolKey, Pool] = {}
        self.servers: dict[int, Server] = {}
        self._next_id = 0
        self._tenants: dict[str, Tenant] = {}
        self._active: dict[str, Tenant] = {}  # tenants with waiters
        self._waiting: dict[Hashable, Waiter] = {}
        self._held: dict[Hashable, Server] = {}
        self._budget_count: dict[tuple[str, str], int] = {}
        self._budget_idle: dict[tuple[str, str], dict[int, Server]] = {}  # idle servers, LRU first
        self._vtime = 0.0
        self._seq = 0

    # --- events -------------------------------------------------------------------------------

    def request(self, client: Hashable, request: ServerRequest, now: float) -> list[PoolAction]:
        """`client` wants a server of `request.key`."""
        if client in self._waiting or client in self._held:
            raise ValueError("this client already waits for or holds a server")
        pool = self._pool(request)
        if not self._active:  # nobody waits: an idle server is handed out at once
            out: list[PoolAction] = []
            server = self._take_idle(pool, now, out)
            if server is not None:
                self._give(server, client, now)
                out.append(Grant(client, server.id, 0.0))
                return out
            return [*out, *self._enqueue(client, request, pool, now)]
        return self._enqueue(client, request, pool, now)

    def withdraw(self, client: Hashable, now: float) -> list[PoolAction]:
        """`client` left while waiting (nothing if it was not waiting)."""
        waiter = self._waiting.pop(client, None)
        if waiter is None:
            return []
        tenant = self._tenants[waiter.request.tenant]
        tenant.waiters.remove(waiter)
        waiter.pool.waiting -= 1
        self._settle(tenant)
        return self._dispatch(now)

    def released(self, server_id: int, *, reusable: bool, reset: bool, now: float,
                 busy: bool = False) -> list[PoolAction]:
        """The client holding the server gave it back: at ReadyForQuery 'I' with nothing in flight if `reusable`;
        `reset` asks for DISCARD ALL before anyone else gets it; `busy`: a statement still runs on it (its client
        left): it is cancelled and the server closed, counted until then."""
        server = self.servers.get(server_id)
        if server is None or server.state is not State.ACTIVE:
            return []
        self._held.pop(server.owner, None)
        server.owner = None
        server.pinned = False
        server.pool.active -= 1
        server.last_used = now
        out: list[PoolAction] = []
        if not reusable and busy:
            _transition(server, Event.DRAIN, now)
            out.append(Drain(server.id))
        elif not reusable:
            self._close(server, Closing.NOT_REUSABLE, out)
        elif server.pool.retired:
            self._close(server, Closing.RETIRED, out)
        elif now - server.created >= self.config.pool.server_lifetime:
            self._close(server, Closing.LIFETIME, out)
        elif server.cancel_lost:
            self._close(server, Closing.CANCEL_UNCONFIRMED, out)
        elif reset:
            self._begin(server, Event.RESET, now)
            out.append(Reset(server.id))
        else:
            self._make_idle(server, Event.RELEASE, now, out)
        return out + self._dispatch(now)

    # --- sticky servers: a released server stays with its client until anyone needs it -------------------------

    def keep(self, server_id: int, client: Hashable, now: float) -> bool:
        """The client holding the server releases it at ReadyForQuery 'I' with nothing in flight and no reset due,
        asking to keep it: it is idle from now on (counted so, in the idle lists for anyone: a waiter, the budget's
        LRU close, the timers, a reload or a drain take it back first with TakeBack) but kept for `client` (sticky).
        Only while nobody waits and it would go straight back to the idle list; False (nothing done) if not: the
        client releases it (`released`)."""
        server = self.servers.get(server_id)
        if (server is None or server.state is not State.ACTIVE or server.owner != client or self._active
                or server.pool.retired or server.cancels or server.cancelled or server.cancel_lost
                or now - server.created >= self.config.pool.server_lifetime):
            return False
        del self._held[client]
        server.owner = None
        server.pinned = False
        server.pool.active -= 1
        _transition(server, Event.RELEASE, now)
        server.last_used = now
        self._index_idle(server)
        server.sticky = client
        return True

    def reuse(self, client: Hashable, server_id: int, now: float) -> bool:
        """`client` has a request for the server kept for it: it holds it again at once, with no wait, if it is
        still kept for it, nobody waits for any server (else the client asks again as everyone does, in fair
        order) and it needs no health check; False if not (then the caller takes it back: `take_back`)."""
        server = self.servers.get(server_id)
        if (server is None or server.sticky != client or self._active or server.pool.retired or server.cancels
                or server.cancelled or now - server.last_used >= self.config.pool.server_check_delay):
            return False
        server.sticky = None
        self._give(server, client, now)
        return True

    def take_back(self, server_id: int, client: Hashable) -> None:
        """The client the server is kept for lets go of it (its request asks the pool anew): plain idle."""
        server = self.servers.get(server_id)
        if server is not None and server.sticky == client:
            server.sticky = None

    def dispatch(self, now: float) -> list[PoolAction]:
        """Serve whoever waits, if anything can be done (after a server kept for a client was taken back)."""
        return self._dispatch(now) if self._active else []

    def reclaim(self, client: Hashable, server_id: int, now: float) -> bool:
        """The client the server is kept for leaves: it holds it again, whoever waits, for its `released` (its
        reset or close) to follow; False if it is not kept for it any more."""
        server = self.servers.get(server_id)
        if server is None or server.sticky != client or server.state is not State.IDLE:
            return False
        server.sticky = None
        self._give(server, client, now)
        return True

    def connected(self, server_id: int, now: float) -> list[PoolAction]:
        """A new server finished its startup (ReadyForQuery 'I')."""
        server = self.servers.get(server_id)
        if server is None or server.state is not State.CONNECTING:
            return []
        server.pool.connecting -= 1
        server.created = now
        tenant = self._tenants.get(server.opened_for)
        waiter = next((w for w in tenant.waiters if w.pool is server.pool), None) if tenant is not None else None
        if waiter is not None:  # opened for this tenant (who paid for it then): its waiter gets it
            tenant.promised = max(0, tenant.promised - 1)
            self._unqueue(waiter)
            self._give(server, waiter.client, now)
            return [Grant(waiter.client, server.id, now - waiter.since), *self._dispatch(now)]
        out: list[PoolAction] = []
        self._make_idle(server, Event.CONNECTED, now, out)
        return out + self._dispatch(now)

    def connect_failed(self, server_id: int, error: PgError, reason: CloseReason, now: float) -> list[PoolAction]:
        """A new server could not be opened: the waiter it was opened for gets `error`."""
        server = self.servers.get(server_id)
        if server is None or server.state is not State.CONNECTING:
            return []
        return self._connect_failed(server, error, reason) + self._dispatch(now)

    def reset_done(self, server_id: int, ok: bool, now: float) -> list[PoolAction]:
        """The reset answered (ok: exactly its own answer, ReadyForQuery 'I')."""
        return self._answered(server_id, Event.RESET_DONE, ok, Closing.RESET_FAILED, now)

    def checked(self, server_id: int, ok: bool, now: float) -> list[PoolAction]:
        """The health check answered (ok: exactly its own answer, ReadyForQuery 'I')."""
        return self._answered(server_id, Event.CHECK_DONE, ok, Closing.CHECK_FAILED, now)

    def closed(self, server_id: int, now: float) -> list[PoolAction]:
        """A server's connection closed by itself (the I/O layer tells its client, if it had one)."""
        server = self.servers.get(server_id)
        if server is None:
            return []
        if server.state is State.CONNECTING:
            return self.connect_failed(server_id, errors.server_closed(), CloseReason.BACKEND, now)
        if server.owner is not None:
            self._held.pop(server.owner, None)
            server.pool.active -= 1
        self._forget(server)
        return self._dispatch(now)

    def drained(self, server_id: int, now: float) -> list[PoolAction]:
        """The statement a left client's server ran was cancelled (or the cancel failed): the server is closed."""
        server = self.servers.get(server_id)
        if server is None or server.state is not State.DRAINING:
            return []
        out: list[PoolAction] = []
        self._close(server, Closing.DRAINED, out)
        return out + self._dispatch(now)

    def cancel_started(self, server_id: int) -> None:
        """A cancel connection to the server opened: it is handed to nobody until `cancel_done`, and then only
        after a round trip of its own (a reset or a check begun after that) has proven no cancel is left on it."""
        server = self.servers.get(server_id)
        if server is not None:
            server.cancels += 1
            server.cancelled = True
            server.proving = False
            self._not_idle(server)

    def cancel_done(self, server_id: int, now: float, *, delivered: bool = True) -> list[PoolAction]:
        """A cancel connection to the server closed: PostgreSQL acted on it if `delivered`; if not (it failed or
        timed out) the cancel may still arrive at any time, so the server serves no one else again."""
        server = self.servers.get(server_id)
        if server is None:
            return []
        server.cancels -= 1
        server.cancel_lost |= not delivered
        out: list[PoolAction] = []
        if server.cancels == 0 and server.state is State.IDLE:
            self._settle_idle(server, now, out)
        return out + self._dispatch(now)

    def pinned(self, server_id: int, pinned: bool) -> None:
        """The session holding the server is pinned to it (or no longer): SHOW POOLS/SERVERS say so."""
        server = self.servers.get(server_id)
        if server is not None and server.owner is not None:
            server.pinned = pinned

    def tick(self, now: float) -> list[PoolAction]:
        """The clock: wait timeouts, idle timeouts and lifetimes, stuck resets/checks, min_pool_size, reserves."""
        out: list[PoolAction] = []
        cfg = self.config.pool
        for waiter in [w for w in self._waiting.values() if now - w.since >= cfg.query_wait_timeout]:
            self._unqueue(waiter)
            error = errors.pool_wait_timeout(waiter.request.tenant, _seconds(cfg.query_wait_timeout),
                                             waiter.pool.size)
            out.append(Refuse(waiter.client, error, CloseReason.POOL_WAIT_TIMEOUT, now - waiter.since))
        for server in list(self.servers.values()):
            pool = server.pool
            if server.state is State.IDLE and server.cancels == 0:
                if pool.retired:
                    self._close(server, Closing.RETIRED, out)
                elif now - server.created >= cfg.server_lifetime:
                    self._close(server, Closing.LIFETIME, out)
                elif now - server.last_used >= cfg.server_idle_timeout and len(pool.servers) > pool.min_size:
                    self._close(server, Closing.IDLE_TIMEOUT, out)
            elif (server.state in (State.RESET, State.CHECKING, State.DRAINING)
                  and now - server.since >= server.request.backend.connect_timeout * _WAITS[server.state]):
                self._close(server, Closing.TIMEOUT, out)
            elif server.state is State.CONNECTING and now - server.since >= self.config.limits.startup_timeout:
                out.append(Close(server.id, Closing.TIMEOUT))
                error = errors.backend_unreachable(server.request.backend.name, "its startup timed out")
                out += self._connect_failed(server, error, CloseReason.BACKEND)
        for pool in list(self.pools.values()):
            while not pool.retired and len(pool.servers) < pool.min_size and self._has_room(pool.key.budget):
                self._connect(pool, pool.request, "", now, out)
        return out + self._dispatch(now)

    def reconfigure(self, config: Config) -> list[PoolAction]:
        """A reload: pool sizes follow the new config; a pool whose tenant's context changed is retired (its idle
        servers close now, the others at release; its clients' next request names the new key)."""
        self.config = config
        out: list[PoolAction] = []
        for pool in list(self.pools.values()):  # (a retired pool with no server left is removed)
            if pool.tenant not in config.tenants:
                self._retire(pool, out)
                continue
            current = server_request(config, pool.tenant)
            own = {k: v for k, v in pool.key.context if k in SESSION_PARAMETERS and k not in current.parameters}
            if own:  # (a limited or agent pool: the tenant's context and its sessions' own parameters)
                current = with_parameters(current, own)
            replica = pool.request.replica
            replicas = {r.name for r in config.backends[current.backend.name].replicas}
            expected = current.key if replica is None else replica_key(current.key, replica)
            if expected != pool.key or (replica is not None and replica not in replicas):
                self._retire(pool, out)
                continue
            settings = config.tenant_pool(pool.tenant)
            pool.mode, pool.size, pool.min_size, pool.reserve = (
                settings.mode, settings.size, settings.min_size, settings.reserve)
        for tenant in self._tenants.values():
            if tenant.name in config.tenants:
                tenant.weight = config.tenant_pool(tenant.name).weight
        return out

    def shutdown(self) -> list[PoolAction]:
        """The proxy stops: every idle server closes."""
        out: list[PoolAction] = []
        for server in list(self.servers.values()):
            if server.state is State.IDLE:
                self._close(server, Closing.SHUTDOWN, out)
        return out

    # --- views --------------------------------------------------------------------------------

    def holding(self, client: Hashable) -> int | None:
        """The server `client` holds, if any."""
        server = self._held.get(client)
        return server.id if server is not None else None

    def is_waiting(self, client: Hashable) -> bool:
        return client in self._waiting

    def rows(self, now: float) -> list[PoolRow]:
        """Every pool as plain data."""
        oldest: dict[PoolKey, float] = {}
        for w in self._waiting.values():
            oldest[w.pool.key] = max(oldest.get(w.pool.key, 0.0), now - w.since)
        out = []
        for pool in self.pools.values():
            counts = Counter(s.state for s in pool.servers.values())
            pinned = sum(s.pinned for s in pool.servers.values())
            k = pool.key
            out.append(PoolRow(
                pool.tenant, k.backend, k.database, k.role, pool.mode, pool.active, pool.waiting,
                counts[State.ACTIVE] - pinned, counts[State.IDLE], pinned, counts[State.RESET] + counts[State.CHECKING],
                counts[State.CONNECTING], oldest.get(k, 0.0), pool.size,
            ))
        return out

    def server_rows(self, now: float) -> Iterator[ServerRow]:
        for s in self.servers.values():
            state = "pinned" if s.pinned else s.state.value
            k = s.pool.key
            yield ServerRow(s.id, s.pool.tenant, k.database, k.role, state, now - s.created, s.owner)

    def wait_seconds(self, now: float) -> dict[str, float]:
        """The longest current wait per tenant."""
        out: dict[str, float] = {}
        for w in self._waiting.values():
            out[w.request.tenant] = max(out.get(w.request.tenant, 0.0), now - w.since)
        return out

    # --- internals ----------------------------------------------------------------------------

    def _pool(self, request: ServerRequest) -> Pool:
        pool = self.pools.get(request.key)
        if pool is None:
            settings = self.config.tenant_pool(request.tenant) if request.tenant in self.config.tenants else None
            cfg = self.config.pool
            pool = self.pools[request.key] = Pool(
                request.key, request.tenant, request.mode,
                settings.size if settings else cfg.pool_size,
                settings.min_size if settings else cfg.min_pool_size,
                settings.reserve if settings else cfg.reserve_pool,
                request,
            )
        pool.request = request
        return pool

    def _enqueue(self, client: Hashable, request: ServerRequest, pool: Pool, now: float) -> list[PoolAction]:
        tenant = self._tenants.get(request.tenant)
        if tenant is None:
            tenant = self._tenants[request.tenant] = Tenant(request.tenant, request.weight)
        if not tenant.waiters:  # it starts competing: never behind the others (no credit banked while idle)
            tenant.passed = max(tenant.passed, self._vtime)
            self._seq += 1
            tenant.seq = self._seq
            self._active[tenant.name] = tenant
        waiter = Waiter(client, request, pool, now)
        tenant.waiters.append(waiter)
        self._waiting[client] = waiter
        pool.waiting += 1
        return self._dispatch(now)

    def _unqueue(self, waiter: Waiter) -> None:
        del self._waiting[waiter.client]
        tenant = self._tenants[waiter.request.tenant]
        tenant.waiters.remove(waiter)
        waiter.pool.waiting -= 1
        self._settle(tenant)

    def _settle(self, tenant: Tenant) -> None:
        """After a waiter left the queue: promised servers beyond the waiters are given back, an empty tenant
        leaves the fair queue."""
        extra = tenant.promised - len(tenant.waiters)
        if extra > 0:
            tenant.promised -= extra
            tenant.passed -= extra / tenant.weight
        if not tenant.waiters:
            self._active.pop(tenant.name, None)

    def _dispatch(self, now: float) -> list[PoolAction]:
        """Serve waiters while anything can be done: in fair order, each tenant's oldest waiter gets an idle server
        of its pool, or a new one is opened for it (if its pool and the database budget have room, closing another
        pool's idle server if need be). A tenant blocked on a budget blocks the tenants after it on that budget:
        what frees up there goes to it first."""
        out: list[PoolAction] = []
        while self._active:
            blocked: set[tuple[str, str]] = set()
            for tenant in sorted(self._active.values(), key=_fair_order):
                waiter = tenant.waiters[0]
                server = self._take_idle(waiter.pool, now, out)
                if server is not None:
                    self._unqueue_head(tenant, waiter)
                    if tenant.promised:
                        tenant.promised -= 1
                    else:
                        self._charge(tenant)
                    self._give(server, waiter.client, now)
                    out.append(Grant(waiter.client, server.id, now - waiter.since))
                    break
                if tenant.promised >= len(tenant.waiters):
                    continue  # a server is on its way for each of its waiters
                opened = self._open_for(tenant, now, blocked, out)
                if opened:
                    break
            else:
                return out
        return out

    def _open_for(self, tenant: Tenant, now: float, blocked: set[tuple[str, str]], out: list[PoolAction]) -> bool:
        """Open a server for the tenant's first waiter without one on its way, if its pool and budget allow."""
        waiter = tenant.waiters[min(tenant.promised, len(tenant.waiters) - 1)]
        pool = waiter.pool
        if pool.retired or pool.coming() >= pool.waiting:
            return False
        reserve = now - tenant.waiters[0].since >= self.config.pool.reserve_pool_timeout
        if len(pool.servers) >= pool.limit(reserve):
            return False
        budget = pool.key.budget
        if budget in blocked or not self._within_share(tenant.name, budget):
            return False
        if not self._has_room(budget) and not self._make_room(pool, out, now):
            blocked.add(budget)
            return False
        self._charge(tenant)
        tenant.promised += 1
        self._connect(pool, waiter.request, tenant.name, now, out)
        return True

    def _charge(self, tenant: Tenant) -> None:
        self._vtime = max(self._vtime, tenant.passed)
        tenant.passed += 1.0 / tenant.weight

    def _unqueue_head(self, tenant: Tenant, waiter: Waiter) -> None:
        tenant.waiters.popleft()
        del self._waiting[waiter.client]
        waiter.pool.waiting -= 1
        if not tenant.waiters:
            self._active.pop(tenant.name, None)

    def _take_idle(self, pool: Pool, now: float, out: list[PoolAction]) -> Server | None:
        """The most recently used idle server of the pool; one idle for server_check_delay is checked first."""
        check_delay = self.config.pool.server_check_delay
        while pool.idle:
            server = pool.idle[next(reversed(pool.idle))]
            self._not_idle(server)
            self._unstick(server, out)
            if now - server.last_used >= check_delay:
                self._begin(server, Event.CHECK, now)
                out.append(Check(server.id))
                continue
            return server
        return None

    def _give(self, server: Server, client: Hashable, now: float) -> None:
        self._not_idle(server)
        _transition(server, Event.GRANT, now)
        server.owner, server.last_used = client, now
        server.pool.active += 1
        self._held[client] = server

    def _make_idle(self, server: Server, event: Event, now: float, out: list[PoolAction]) -> None:
        _transition(server, event, now)
        server.last_used = now
        self._settle_idle(server, now, out)

    def _begin(self, server: Server, event: Event, now: float) -> None:
        """A reset or check starts: its success proves the server clean of cancels if none is in flight now."""
        _transition(server, event, now)
        server.proving = server.cancels == 0

    def _settle_idle(self, server: Server, now: float, out: list[PoolAction]) -> None:
        """An idle server: listed for the next client, unless a cancel is in flight to it (it waits for
        `cancel_done`), a cancel may still arrive (closed), or a cancel reached it since its last proving round
        trip (checked first: PostgreSQL drops a cancel that finds its backend idle when it reads the next command,
        and the check is that command)."""
        if server.cancels:
            return
        if server.cancel_lost:
            self._close(server, Closing.CANCEL_UNCONFIRMED, out)
        elif server.cancelled:
            self._begin(server, Event.CHECK, now)
            out.append(Check(server.id))
        else:
            self._index_idle(server)

    def _index_idle(self, server: Server) -> None:
        """An idle server can be handed out."""
        server.pool.idle[server.id] = server
        self._budget_idle.setdefault(server.pool.key.budget, {})[server.id] = server

    def _not_idle(self, server: Server) -> None:
        server.pool.idle.pop(server.id, None)
        idle = self._budget_idle.get(server.pool.key.budget)
        if idle is not None:
            idle.pop(server.id, None)

    def _answered(self, server_id: int, event: Event, ok: bool, failure: Closing, now: float) -> list[PoolAction]:
        server = self.servers.get(server_id)
        if server is None or (server.state, event) not in TRANSITIONS:
            return []
        out: list[PoolAction] = []
        if ok:
            if server.proving:
                server.cancelled = False
            self._make_idle(server, event, now, out)
        else:
            self._close(server, failure, out)
        return out + self._dispatch(now)

    def _connect_failed(self, server: Server, error: PgError, reason: CloseReason) -> list[PoolAction]:
        """Forget a server that could not be opened; the waiter it was opened for gets `error`."""
        self._forget(server)
        tenant = self._tenants.get(server.opened_for)
        if tenant is None:
            return []
        tenant.promised = max(0, tenant.promised - 1)
        waiter = next((w for w in tenant.waiters if w.pool is server.pool), None)
        if waiter is None:
            return []
        self._unqueue(waiter)
        return [Refuse(waiter.client, error, reason)]

    def _has_room(self, budget: tuple[str, str]) -> bool:
        limit = self.config.db_budget(budget[0])
        return limit <= 0 or self._budget_count.get(budget, 0) < limit

    def _within_share(self, tenant: str, budget: tuple[str, str]) -> bool:
        """A tenant may open another server of a limited budget only while it would hold at most the budget less
        one server per other tenant waiting on it (at least one): a tenant holding servers (pinned, or mid-request)
        cannot take the last free places while another waits (red team pool round 1 F2)."""
        limit = self.config.db_budget(budget[0])
        if limit <= 0:
            return True
        others = sum(1 for t in self._active.values()
                     if t.name != tenant and any(w.pool.key.budget == budget for w in t.waiters))
        if not others:
            return True
        held = sum(len(p.servers) for p in self.pools.values() if p.tenant == tenant and p.key.budget == budget)
        return held + 1 <= max(1, limit - others)  # (a tenant holding none may always open one: no deadlock)

    def _make_room(self, pool: Pool, out: list[PoolAction], now: float) -> bool:
        """Close the least recently used idle server of another pool of the same database, except one its tenant
        used less than KEEP_FOR_TENANT ago while holding no more than its share of the budget."""
        budget = pool.key.budget
        shares: dict[str, float] | None = None
        for server in (self._budget_idle.get(budget) or {}).values():
            if server.pool is pool:
                continue
            other = server.pool.tenant
            if now - server.last_used < KEEP_FOR_TENANT and other != pool.tenant:
                if shares is None:
                    shares = self._shares(budget, pool)
                if shares[other] <= 0:
                    continue  # kept for its tenant
            self._close(server, Closing.BUDGET, out)
            return True
        return False

    def _shares(self, budget: tuple[str, str], pool: Pool) -> dict[str, float]:
        """Per tenant holding servers of the budget or waiting on it (`pool`'s included): the servers it holds
        beyond its share of the budget (weighted)."""
        held: Counter[str] = Counter()
        weights: dict[str, float] = {pool.tenant: pool.request.weight}
        for p in self.pools.values():
            if p.key.budget == budget and p.servers:
                held[p.tenant] += len(p.servers)
                weights.setdefault(p.tenant, p.request.weight)
        for tenant in self._active.values():
            if any(w.pool.key.budget == budget for w in tenant.waiters):
                weights.setdefault(tenant.name, tenant.weight)
        total = sum(weights.values())
        limit = self.config.db_budget(budget[0])
        return {t: held[t] - limit * w / total for t, w in weights.items()}

    def _connect(self, pool: Pool, request: ServerRequest, tenant: str, now: float, out: list[PoolAction]) -> None:
        self._next_id += 1
        server = Server(self._next_id, pool, request, State.CONNECTING, now, now, now, opened_for=tenant)
        self.servers[server.id] = pool.servers[server.id] = server
        pool.connecting += 1
        budget = pool.key.budget
        self._budget_count[budget] = self._budget_count.get(budget, 0) + 1
        out.append(Connect(server.id, request))

    def _close(self, server: Server, reason: Closing, out: list[PoolAction]) -> None:
        self._unstick(server, out)
        self._forget(server)
        out.append(Close(server.id, reason))

    def _unstick(self, server: Server, out: list[PoolAction]) -> None:
        """The pool needs a server kept for a client (sticky): taken back first, before anything else is done."""
        if server.sticky is not None:
            out.append(TakeBack(server.sticky, server.id))
            server.sticky = None

    def _forget(self, server: Server) -> None:
        if self.servers.pop(server.id, None) is None:
            return
        pool = server.pool
        pool.servers.pop(server.id, None)
        self._not_idle(server)
        if server.state is State.CONNECTING:
            pool.connecting -= 1
        budget = pool.key.budget
        self._budget_count[budget] -= 1
        if pool.retired and not pool.servers and not pool.waiting:
            self.pools.pop(pool.key, None)

    def _retire(self, pool: Pool, out: list[PoolAction]) -> None:
        """No server of the pool serves anyone new: its idle ones close, its waiters are refused (they asked for
        the old context)."""
        pool.retired = True
        for server in list(pool.servers.values()):
            if server.state is State.IDLE and server.cancels == 0:
                self._close(server, Closing.RETIRED, out)
        for waiter in [w for w in self._waiting.values() if w.pool is pool]:
            self._unqueue(waiter)
            out.append(Refuse(waiter.client, errors.tenant_reconfigured(pool.tenant), CloseReason.POOL_RETIRED))
        if not pool.servers and not pool.waiting:
            self.pools.pop(pool.key, None)


def _transition(server: Server, event: Event, now: float) -> None:
    nxt = TRANSITIONS.get((server.state, event))
    if nxt is None:
        raise ValueError(f"pool: unexpected {event.value} of a server in state {server.state.value}")
    server.state, server.since = nxt, now


# How many connect_timeouts a server may stay in a state of the proxy's own before it is closed (a drain's cancel
# waits for its connection and then for PostgreSQL's answer, each bounded by connect_timeout).
_WAITS = {State.RESET: 1, State.CHECKING: 1, State.DRAINING: 3}

_COMING = frozenset({State.CONNECTING, State.RESET, State.CHECKING})


def _fair_order(tenant: Tenant) -> tuple[float, int]:
    return tenant.passed, tenant.seq


def _seconds(value: float) -> str:
    return f"{value:g}"
