"""Where sessions get their server connections: runs the pool manager (proxy/pooling.py) on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import psycopg

from proxy import dbadefault, dbcheck, errors
from proxy.actions import AcquireServer, ServerQueryDone, ServerReady
from proxy.config import Config
from proxy.dbadefault import LearntDefaults, Probe, Start
from proxy.errors import PgError
from proxy.io.backend import ServerLink
from proxy.io.keepalive import keepalive
from proxy.io.replicas import ReplicaPoller
from proxy.logs import get_logger
from proxy.policy.settings import setting_milliseconds
from proxy.pooling import (
    Check,
    Close,
    Closing,
    Connect,
    Drain,
    Grant,
    PoolAction,
    PoolManager,
    PoolRow,
    Refuse,
    Reset,
    ServerRequest,
    State,
    TakeBack,
    replica_key,
)
from proxy.reasons import CloseReason
from proxy.replicas import Route, Router, kept, kept_until
from proxy.server import ServerConnection, ServerState

if TYPE_CHECKING:
    from proxy.io.client import ClientConnection
    from proxy.io.listener import Proxy

log = get_logger("pgtenant.pool")
TICK = 1.0  # seconds between the pool's timer events (wait timeouts, idle timeouts, min_pool_size)


class Pool:
    """Hands server connections (ServerLink) to client sessions, by the contract of issue 16:

    `request(client, request)`: the pool calls exactly one of `client.server_granted(link)` (synchronously, inside
    this call, when an idle server is there) or `client.server_refused(error, reason)`; `withdraw(client)` when the
    client leaves while waiting; `release(link, reusable=..., reset=..., reason=...)` when it gives the server back.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.manager = PoolManager(proxy.config)
        self.links: dict[int, ServerLink] = {}
        self._clients: dict[int, ClientConnection] = {}  # id(client) -> client, while it waits or holds a server
        self._timer: asyncio.TimerHandle | None = None
        self.clock = time.monotonic
        self.router = Router(proxy.config)  # read replicas: their health (fed by io/replicas.py), the routing choice
        self._replica_requests: dict[tuple[int, str], tuple[ServerRequest, ServerRequest]] = {}
        self._fallback: dict[int, ServerRequest] = {}  # id(client) -> its primary request, while it waits on a replica
        self.poller = ReplicaPoller(self)
        self.defaults = LearntDefaults()  # a DBA's statement_timeout default under a limit (proxy/dbadefault.py)
        self._probes: set[asyncio.Task[None]] = set()

    # --- the sessions' API -------------------------------------------------------------------

    def request(self, client: ClientConnection, request: ServerRequest, route: Route | None = None) -> None:
        if route is not None:  # a routed session (proxy/replicas.py): a replica's pool, the primary's, or a refusal
            choice = self.router.choose(request.backend.name, route, self.clock(), request.tenant)
            self.proxy.metrics.replica_routed(request.tenant, request.backend.name, choice.server)
            if choice.refusal is not None:
                client.server_refused(choice.refusal, CloseReason.BACKEND)
                return
            if choice.replica is not None:
                if route.routing.route == "auto" or route.routing.replica_fallback == "primary":
                    self._fallback[id(client)] = request  # (a replica whose server cannot be opened: the primary)
                request = self._replica_request(request, choice.replica)
        self._clients[id(client)] = client
        self._run(self.manager.request(id(client), request, self.clock()))

    def _replica_request(self, request: ServerRequest, replica: str) -> ServerRequest:
        """`request` toward `replica` of its backend: a pool of its own (the same role and tenant context)."""
        cache_key = (id(request), replica)
        cached = self._replica_requests.get(cache_key)
        if cached is None or cached[0] is not request:
            if len(self._replica_requests) > 10_000:  # (requests are per tenant and config: a reload makes new ones)
                self._replica_requests.clear()
            config = self.proxy.config
            spec = next(r for r in config.backends[request.backend.name].replicas if r.name == replica)
            backend = config.replica_backend(request.backend, spec)
            cached = self._replica_requests[cache_key] = (request, replace(
                request, key=replica_key(request.key, replica), backend=backend, replica=replica))
        return cached[1]

    def withdraw(self, client: ClientConnection) -> None:
        self._fallback.pop(id(client), None)
        if self.manager.is_waiting(id(client)):
            self._clients.pop(id(client), None)
            self._run(self.manager.withdraw(id(client), self.clock()))

    def release(self, link: ServerLink, *, reusable: bool, reset: bool, reason: CloseReason | None = None,
                busy: bool = False, kept_for: ClientConnection | None = None) -> None:
        if kept_for is not None:  # the server was kept for its client, who leaves: it holds it again to release it
            if not self.manager.reclaim(id(kept_for), link.server.id, self.clock()):
                self._clients.pop(id(kept_for), None)
                return  # (taken back meanwhile, or gone: nothing of the client's is on it)
            link.owner = kept_for
        owner = link.owner
        if owner is not None:
            self._clients.pop(id(owner), None)
        link.detach()
        if link.closed:
            reusable = busy = False
        elif link.stale:  # its statement_timeout default changed (a reload): closed, not handed out again
            reusable = False
        self._run(self.manager.released(link.server.id, reusable=reusable, reset=reset, now=self.clock(),
                                        busy=busy))

    # --- sticky servers (docs/pinning.md) -------------------------------------------------------

    def keep(self, link: ServerLink, client: ClientConnection) -> bool:
        """`client` releases `link` at ReadyForQuery 'I' and would keep it (KeepServer): idle in the pool, its socket
        read by the link itself as an idle link's, while it stays installed in the client until it is reused or
        taken back (TakeBack); False (nothing done) if the pool wants it now."""
        if link.stale or not self.manager.keep(link.server.id, id(client), self.clock()):
            return False
        link.owner = None
        link.relay = None  # (an idle link reads its socket itself: anything unasked for closes it)
        return True

    def reuse(self, link: ServerLink, client: ClientConnection, routed: AcquireServer | None = None) -> bool:
        """`client`'s next request: it holds the server kept for it again, if the pool lets it (else `take_back`).
        A routed session's request (`routed`: what it would ask the pool for) runs there only if the router could
        choose that server's replica (or the primary) for it now: healthy, within its lag and read-your-writes bound
        (docs/pinning.md)."""
        now = self.clock()
        if link.closed or link.stale:
            return False
        hit = None
        if routed is not None and routed.route is not None:
            hit = link.routed  # (kept's last answer for this ask, while its replica set and fit stand: kept_until)
            if hit is None or hit[0] is not routed or now > hit[3] or hit[1].generation != hit[2]:
                request, route = routed.request, routed.route
                backend = request.backend.name
                choice = kept(self.router, backend, route, now, link.server.replica)
                if choice is None:
                    return False
                hit = link.routed = (routed, *kept_until(self.router, backend, route), choice,
                                     self.proxy.metrics.replica_routed_count(request.tenant, backend, choice.server))
        if not self.manager.reuse(id(client), link.server.id, now):
            return False
        if hit is not None:  # (counted as replica_routed)
            hit[5][0] += 1
        link.owner = client
        link.server.last_used = now
        return True

    def take_back(self, link: ServerLink, client: ClientConnection) -> None:
        """`client` lets go of the server kept for it (its session has recorded what it left on it)."""
        self._clients.pop(id(client), None)
        self.manager.take_back(link.server.id, id(client))
        self._close_stale()
        self._run(self.manager.dispatch(self.clock()))

    def pinned(self, link: ServerLink, pinned: bool) -> None:
        """The session holding `link` is pinned to it, or no longer (SHOW POOLS / SERVERS)."""
        self.manager.pinned(link.server.id, pinned)

    def holding(self, client: ClientConnection) -> ServerLink | None:
        """The server link `client` holds, if any."""
        server = self.manager.holding(id(client))
        return self.links.get(server) if server is not None else None

    # --- cancel --------------------------------------------------------------------------------

    def cancel_waiting(self, client: ClientConnection) -> bool:
        """A cancel for `client` while its requests wait for a server: the wait ends and they are answered as
        cancelled (nothing ran; PgBouncer ignores such a cancel and the client hangs until a server frees up).
        False if it does not wait."""
        if not self.manager.is_waiting(id(client)):
            return False
        self.withdraw(client)
        client.server_refused(errors.query_canceled(), CloseReason.CANCEL_REQUEST)
        return True

    def cancel_started(self, link: ServerLink) -> None:
        """A cancel connection to `link`'s backend process opens: the link goes to nobody else until it closed
        (and a round trip of its own proved no cancel is left on it)."""
        self.manager.cancel_started(link.server.id)

    def cancel_done(self, link: ServerLink, *, delivered: bool) -> None:
        """The cancel connection closed; `delivered`: PostgreSQL closed it, so it acted on the cancel."""
        self._run(self.manager.cancel_done(link.server.id, self.clock(), delivered=delivered))

    # --- the proxy's life ---------------------------------------------------------------------

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(TICK, self._tick)
        self.poller.start()

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(TICK, self._tick)
        try:
            now = self.clock()
            self._run(self.manager.tick(now))
            self._close_stale()
            # A message begun while a server is held (client_message_timeout), and, whatever that is, a batch
            # waiting for its Sync or a COPY FROM STDIN waiting for the client's data (idle_in_transaction_timeout).
            for client in list(self._clients.values()):
                client.message_tick(now)
        except Exception:  # pragma: no cover - a bug of ours must not stop the timer
            log.exception("pool_tick_failed")

    def reconfigure(self, config: Config) -> None:
        """A reload: sizes follow; a pool whose tenant context changed is retired."""
        self.router.reconfigure(config)
        self._replica_requests.clear()
        self._run(self.manager.reconfigure(config))
        self._starts(self.defaults.reload())  # (a DBA's ALTER ROLE ... SET since the last is seen now)

    def shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        asyncio.get_running_loop().create_task(self.poller.stop())
        self._run(self.manager.shutdown())

    def rows(self) -> list[PoolRow]:
        return self.manager.rows(self.clock())

    # --- the links' events ----------------------------------------------------------------------

    def link_ready(self, link: ServerLink, ready: ServerReady) -> None:
        """A new server finished its startup."""
        seconds = time.monotonic() - link.connected_at
        self.proxy.metrics.backend_connected(self._label(link), seconds)
        self._run(self.manager.connected(link.server.id, self.clock()))

    def link_failed(self, link: ServerLink, reason: str, refusal: PgError | None = None) -> None:
        """A link failed: while connecting, its waiter is refused; later (an idle server sent something, or the
        answer to the pool's own query was not readable) it is closed."""
        if self.links.get(link.server.id) is not link:
            return
        if not self._connecting(link):
            log.info("server_closed", server=link.server.id, reason=reason)
            self._lost(link)
            return
        backend = link.server.backend
        log.warning("backend_failed", backend=backend.describe(), reason=reason,
                    sqlstate=refusal.sqlstate if refusal else None)
        if refusal is not None:
            self.proxy.metrics.backend_error(self._tenant(link), refusal.sqlstate)
        # the client hears the backend's name, never its address
        error = (errors.backend_refused(backend.name, refusal) if refusal is not None
                 else errors.backend_unreachable(backend.name, "see the proxy log"))
        self._forget(link, Closing.CONNECT_FAILED)
        link.terminate()
        self._replica_failed(link, reason)
        self._run(self.manager.connect_failed(link.server.id, error, CloseReason.BACKEND, self.clock()))

    def link_lost(self, link: ServerLink, exc: Exception | None) -> None:
        """The link's connection closed (by the backend, or by us)."""
        owner = link.owner
        if owner is not None:
            owner.server_lost(link, exc)
        if self.links.get(link.server.id) is not link:
            return
        if self._connecting(link):
            self.link_failed(link, f"connection closed during startup{f': {exc}' if exc else ''}")
        else:
            self._lost(link)

    def replica_down(self, backend: str, replica: str) -> None:
        """A probe of `replica` of `backend` timed out (a hung or partitioned server answers nothing, red team 9r
        F5): its servers are closed, idle or not; a session's request running on one
        ends with a retryable error (replica_down), one waiting for a new connection to it goes to the primary
        (as when that connection fails), or is refused for route = "replica" with replica_fallback = "refuse"."""
        name = f"{backend}/{replica}"
        for link in [x for x in self.links.values() if x.server.replica == replica and x.server.backend.name == name]:
            if self._connecting(link):
                self.link_failed(link, "the replica is down (its probe timed out)")
                continue
            owner = link.owner
            if owner is not None:
                log.warning("replica_down_request_ended", backend=backend, replica=replica, server=link.server.id)
                owner.server_lost(link, None, errors.replica_down(replica=replica, backend=backend))
            self._lost(link)

    def _replica_failed(self, link: ServerLink, reason: str) -> None:
        """A server of a replica could not be opened: the replica is out until its next good probe."""
        server = link.server
        s = self.router.sets.get(server.backend.name.rpartition("/")[0]) if server.replica else None
        if s is not None and server.replica in s.replicas:
            s.replica_failed(server.replica, f"a server connection failed: {reason}")

    def _connecting(self, link: ServerLink) -> bool:
        entry = self.manager.servers.get(link.server.id)
        return entry is not None and entry.state is State.CONNECTING

    def _tenant(self, link: ServerLink) -> str | None:
        entry = self.manager.servers.get(link.server.id)
        return entry.pool.tenant if entry is not None else None

    def _lost(self, link: ServerLink) -> None:
        if self.links.get(link.server.id) is not link:
            return
        owner = link.owner
        if owner is not None:
            self._clients.pop(id(owner), None)
        self._forget(link, Closing.LOST)
        link.terminate()
        self._run(self.manager.closed(link.server.id, self.clock()))

    def _forget(self, link: ServerLink, reason: Closing) -> None:
        if self.links.pop(link.server.id, None) is not None:
            self.proxy.metrics.pool_server_closed(reason)

    # --- running the manager's actions -------------------------------------------------------------

    def _run(self, actions: list[PoolAction]) -> None:
        for action in actions:
            if isinstance(action, Grant):
                self._grant(action)
            elif isinstance(action, Connect):
                self._connect(action)
            elif isinstance(action, Refuse):
                primary = self._fallback.pop(action.client, None)  # type: ignore[call-overload]
                if primary is not None and action.reason is CloseReason.BACKEND and action.client in self._clients:
                    log.info("replica_fallback", tenant=primary.tenant, reason=action.error.message)
                    self._run(self.manager.request(action.client, primary, self.clock()))  # the replica is out now
                    continue
                client = self._clients.pop(action.client, None)  # type: ignore[call-overload]
                if client is not None:
                    if action.waited and client.tenant is not None:  # a wait that timed out counts as one too
                        self.proxy.metrics.pool_waited(client.tenant.label, action.waited)
                    client.server_refused(action.error, action.reason)
            elif isinstance(action, Close):
                link = self.links.get(action.server)
                if link is not None:
                    self._forget(link, Closing(action.reason))
                    link.terminate()
            elif isinstance(action, Drain):
                self._drain(action.server)
            elif isinstance(action, TakeBack):  # (always before the action that needs the server)
                client = self._clients.pop(action.client, None)  # type: ignore[call-overload]
                link = self.links.get(action.server)
                if client is not None and link is not None:
                    client.taken_back(link)
            elif isinstance(action, Reset):
                self._own_query(action.server, "reset")
            elif isinstance(action, Check):
                self._own_query(action.server, "check")
            else:  # pragma: no cover
                raise AssertionError(f"unexpected pool action {action!r}")

    def _grant(self, grant: Grant) -> None:
        self._fallback.pop(grant.client, None)  # type: ignore[call-overload]
        client = self._clients.get(grant.client)  # type: ignore[call-overload]
        link = self.links[grant.server]
        assert client is not None
        link.owner = client
        link.grants += 1
        link.server.last_used = self.clock()
        if client.tenant is not None:
            self.proxy.metrics.pool_waited(client.tenant.label, grant.waited)
        client.server_granted(link)

    def _connect(self, connect: Connect) -> None:
        request = connect.request
        server = ServerConnection(request.backend, request.key.database, dict(request.parameters))
        server.id = connect.server
        server.replica = request.replica
        server.created = server.last_used = self.clock()
        link = ServerLink(self, server)
        self.links[server.id] = link
        self.proxy.metrics.pool_server_opened(self.proxy.metrics.tenant(request.tenant))
        self._starts(self.defaults.connect(connect, self.clock()))

    # --- a DBA's statement_timeout default under a limit (proxy/dbadefault.py) --------------------

    def _starts(self, actions: list[Probe | Start]) -> None:
        """Run what the learnt defaults answer: a probe, or a server's start with its parameters (a server closed
        while it waited for a probe is not opened)."""
        for action in actions:
            if isinstance(action, Probe):
                self._probes.add(task := asyncio.get_running_loop().create_task(self._probe(action)))
                task.add_done_callback(self._probes.discard)
                continue
            link = self.links.get(action.connect.server)
            if link is None or link.closed:
                continue
            request = action.connect.request
            mark = dbadefault.target(request)
            if mark is not None:  # (started with the limit or a lower default: either may be outdated by a reload)
                link.server.parameters = dict(action.parameters)
                link.dba_default = mark, request.parameters
            link.connected_at = time.monotonic()
            asyncio.get_running_loop().create_task(self._open(link))

    async def _probe(self, probe: Probe) -> None:
        """One connection of the proxy's own as the pool's role to its database, without statement_timeout:
        `SHOW statement_timeout` is the server's own default (postgresql.conf, ALTER SYSTEM, ALTER DATABASE/ROLE
        ... SET). A failure is logged and the servers start with the limit, as before."""
        backend, database = probe.request.backend, probe.request.key.database
        timeout = backend.connect_timeout
        value: int | None = None
        try:
            kwargs = dbcheck.connect_kwargs(backend, database, timeout, "pgtenant-default")
            kwargs["options"] = ""  # (not PGOPTIONS of the proxy's environment: the server's own default only)
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(autocommit=True, **kwargs), timeout)  # type: ignore[arg-type]
            try:
                cur = await asyncio.wait_for(conn.execute("SHOW statement_timeout"), timeout)
                row = await cur.fetchone()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
            shown = str(row[0]) if row else ""
            value = setting_milliseconds(shown)
            if value is None:
                log.warning("statement_timeout_default_unread", backend=backend.name, database=database,
                            role=probe.request.key.role, value=shown)
            else:
                log.info("statement_timeout_default_learnt", backend=backend.name, database=database,
                         role=probe.request.key.role, value=shown)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.warning("statement_timeout_default_probe_failed", backend=backend.name, database=database,
                        role=probe.request.key.role, error=str(exc) or type(exc).__name__)
        self._starts(self.defaults.learnt(probe.target, probe.generation, value, self.clock()))  # type: ignore[arg-type]
        self._retire_outdated(probe.target)

    def _retire_outdated(self, target: object) -> None:
        """After a default was learnt again (a reload): the servers of `target` started with another value are not
        handed out again: an idle one closes now, one in use when it is released (or at the pool's next tick)."""
        for link in list(self.links.values()):
            mark = link.dba_default
            if mark is None or mark[0] != target or link.stale:
                continue
            if self.defaults.outdated(mark[0], mark[1], link.server.parameters):
                link.stale = True
        self._close_stale()

    def _close_stale(self) -> None:
        for link in [x for x in self.links.values() if x.stale]:
            entry = self.manager.servers.get(link.server.id)
            if entry is not None and entry.state is State.IDLE and entry.cancels == 0 and entry.sticky is None:
                log.info("server_outdated", server=link.server.id, reason="statement_timeout default changed")
                self._forget(link, Closing.RETIRED)
                link.terminate()
                self._run(self.manager.closed(link.server.id, self.clock()))

    async def _open(self, link: ServerLink) -> None:
        loop = asyncio.get_running_loop()
        backend = link.server.backend
        try:
            await asyncio.wait_for(loop.create_connection(lambda: link, backend.host, backend.port),
                                   backend.connect_timeout)
        except (TimeoutError, OSError) as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            reason = "connection timed out" if timed_out else (exc.strerror or str(exc))
            shown = reason if timed_out or exc.strerror else "connection failed"  # str(exc) may name the address
            log.warning("backend_failed", backend=backend.describe(), reason=reason)
            if self.links.get(link.server.id) is not link:
                return
            self._forget(link, Closing.CONNECT_FAILED)
            self._replica_failed(link, reason)
            error = errors.backend_unreachable(backend.name, shown)
            self._run(self.manager.connect_failed(link.server.id, error, CloseReason.BACKEND, self.clock()))
            return
        if self.links.get(link.server.id) is not link:  # closed meanwhile (shutdown, a reload)
            link.terminate()
        elif link.transport is not None:
            keepalive(link.transport.get_extra_info("socket"), self.proxy.config.pool.server_tcp_timeout)

    def _drain(self, server_id: int) -> None:
        link = self.links.get(server_id)
        if link is None:
            self._run(self.manager.drained(server_id, self.clock()))
            return
        asyncio.get_running_loop().create_task(self._cancel_then_close(link))

    async def _cancel_then_close(self, link: ServerLink) -> None:
        """Drain: the statement a left client's server runs is cancelled (PostgreSQL has acted when the cancel
        connection closes), then the server is closed; it stays counted in its pool until then."""
        server = link.server
        try:
            if not link.closed:
                await self.proxy.cancel_backend(server.backend, server.process_id, server.secret_key)
        finally:
            if self.links.get(server.id) is link:
                self._forget(link, Closing.DRAINED)
                link.terminate()
            self._run(self.manager.drained(server.id, self.clock()))

    def _own_query(self, server_id: int, what: str) -> None:
        """Run the reset or the health check on a server; the manager hears how it went."""
        link = self.links.get(server_id)
        if link is None:
            return
        server = link.server
        event = self.manager.reset_done if what == "reset" else self.manager.checked
        failure = Closing.RESET_FAILED if what == "reset" else Closing.CHECK_FAILED

        def done(answer: ServerQueryDone) -> None:
            if answer.ok and link.stale:  # (its statement_timeout default changed meanwhile: closed)
                log.info("server_outdated", server=server_id, reason="statement_timeout default changed")
                self._forget(link, Closing.RETIRED)
                link.terminate()
                self._run(event(server_id, False, self.clock()))
                return
            if answer.ok:
                server.last_used = self.clock()
            elif answer.temp_schema:  # (reset as asked, but the backend keeps its temporary schema: not reused)
                log.info("server_not_reusable", server=server_id, reason="temporary_schema")
                self._forget(link, Closing.NOT_REUSABLE)
                link.terminate()
            else:
                log.info(f"server_{what}_failed", server=server_id,
                         sqlstate=answer.error.sqlstate if answer.error else None)
                self._forget(link, failure)
                link.terminate()
            self._run(event(server_id, answer.ok, self.clock()))

        if link.closed or server.state is not ServerState.READY:
            done(ServerQueryDone(False))
            return
        link.query(server.reset() if what == "reset" else server.check(), done)

    def _label(self, link: ServerLink) -> str:
        return self.proxy.metrics.tenant(self._tenant(link))
