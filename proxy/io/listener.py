"""The listener and what sessions share (Proxy): listening, tenant preparation, reload, cancel, shutdown, run."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import psycopg

from proxy import _accel, allocator, dbcheck, errors, hangups, instancekey, memory, registrystore
from proxy import admin as admin_console
from proxy.actions import ForwardCancel, TerminateBackend
from proxy.agent import timeout_ms as agent_timeout_ms
from proxy.audit import AuditLog
from proxy.auth.prelogin import PreloginLimiter
from proxy.auth.throttle import AuthThrottle
from proxy.cancel import CancelRegistry, ForwardLimiter, KeySpace, key_space, use_key_space
from proxy.clusterview import merge_rows
from proxy.config import AgentConfig, BackendConfig, Config
from proxy.dbcheck import BackendCheckError
from proxy.httpd import OpsServer
from proxy.io.client import ClientConnection
from proxy.io.doorway import accept
from proxy.io.instanceport import SLOT_LOST_FILE
from proxy.io.peercancel import LookupBusy, PeerCancelSender, PeerCancelServer, advertised_host, no_slot_problem
from proxy.io.peers import Peers, PeerServer, WorkerIdentity
from proxy.io.pool import Pool
from proxy.io.registrywatch import RegistryWatch
from proxy.io.tls import backend_ssl_context, client_ssl_context, own_channel_binding
from proxy.limits import ConnectionCounts, QuerySlots
from proxy.logs import LogLimiter, get_logger
from proxy.metrics import DEFAULT_BUCKETS, Metrics
from proxy.mocksecret import with_mock_secret
from proxy.ops import AdminView, ClientRow, Ops, Running, ServerRow, Snapshot
from proxy.policy.agent import AgentPolicies
from proxy.policy.cache import DecisionCache, Gate
from proxy.policy.engine import Limits
from proxy.policy.model import TenantPolicy
from proxy.protocol import messages as m
from proxy.protocol.proxyheader import Network, networks
from proxy.reasons import CloseReason
from proxy.registry import SessionRef, Tenant, TenantRegistry
from proxy.session import SessionRow
from proxy.workers import DecisionWorkers

log = get_logger("pgtenant.driver")


class Proxy:
    """The listener and everything shared between sessions."""

    def __init__(self, config: Config, worker: WorkerIdentity | None = None) -> None:
        self.worker = worker  # None: the only process; else one of several worker processes (proxy/io/supervise.py)
        self.peers = None if worker is None else Peers(worker.directory, worker.index, worker.count)
        self.peer_server: PeerServer | None = None
        self._admin_chains: dict[str, asyncio.Task[None]] = {}  # console connection -> its command being answered
        if worker is not None:
            use_key_space(KeySpace(worker.index, worker.count))
        config = with_mock_secret(self.as_worker(config))
        self.registry = TenantRegistry(config, dbcheck.discover, dbcheck.preflight)
        self.client_ssl = client_ssl_context(config)
        self.channel_binding = own_channel_binding(config)
        lim = config.limits
        self.throttle = AuthThrottle(
            max_failures=lim.max_auth_failures, window=lim.auth_failure_window,
            max_user_failures=lim.max_auth_failures_per_user, max_address_failures=lim.max_auth_failures_per_address,
        )
        self.prelogin = PreloginLimiter(lim.max_prelogin_connections_per_address, lim.max_prelogin_connections)
        self.prelogin_log = LogLimiter()
        self.proxy_senders = proxy_senders(config)
        self.cancels = CancelRegistry()
        self.connections = ConnectionCounts()  # client connections per tenant and user (proxy/limits.py)
        self.slots = QuerySlots()  # max_concurrent_queries: requests running and waiting per tenant
        self.clients: set[ClientConnection] = set()
        self.finished_since_trim = 0  # sessions ended since the allocator was last trimmed (_trim_memory)
        self.pool = Pool(self)
        self.server: asyncio.AbstractServer | None = None
        limits = config.limits
        self.decisions = DecisionCache(limits.decision_cache_entries, limits.decision_cache_bytes)
        self.decision_limits = Limits(limits.max_statements_per_query, limits.max_parse_tree_nodes,
                                      limits.max_temp_relations)
        self._deciders: dict[tuple[str, tuple[int, int] | None, int], Gate] = {}
        self._tenants: dict[str, Tenant] = {}
        self.metrics = Metrics(
            max_tenants=config.metrics.max_tenants, buckets=config.metrics.buckets or DEFAULT_BUCKETS
        )
        self.metrics.tenant.preload(sorted(config.tenants))
        self.metrics_enabled = config.metrics.enabled
        self.metrics.watch_cache(lambda: (
            self.decisions.hits, self.decisions.misses, self.decisions.entries, self.decisions.held
        ))
        self.metrics.watch_pools(lambda: [
            (r.tenant, r.cl_waiting, r.sv_active, r.sv_idle, r.sv_pinned, r.sv_used, r.sv_connecting)
            for r in self.pool.rows()
        ])
        self.metrics.watch_replicas(lambda: [
            (backend, replica, str(health), lag)
            for backend, replica, health, lag, _ in self.pool.router.rows(self.pool.clock())
        ])
        self.workers = DecisionWorkers(
            limits.decision_workers, limits.decision_timeout,
            on_restart=self.metrics.worker_restarted,
        )
        self.audit = AuditLog(config.audit.file, config.audit.redact) if config.audit.enabled else None
        loader = registrystore.Loader(config.source) if config.source is not None else None
        self.ops = Ops(Running(
            config=lambda: self.config, snapshot=self.snapshot, prepare_tenant=self.prepare_tenant,
            apply_config=self.apply_config, kill=self.kill, unlock=self.throttle.unlock, metrics=self.metrics,
            load=loader,
            registry_rejected=(lambda: loader.rejected) if loader is not None and config.registry.enabled else None,
            loaded_applied=loader.applied if loader is not None else None,
            apply_changes=lambda new: self.apply_config(new, keep_unchanged=True),
            registry_connected=(lambda: self.registry_watch is not None and self.registry_watch.connected)
            if config.registry.enabled else None,
            registry_current=(lambda: self.registry_watch is not None and self.registry_watch.current)
            if config.registry.enabled else None,
            instance_slot=self.holds_instance_slot if config.registry.peer_port is not None else None,
        ))
        self.registry_watch: RegistryWatch | None = None
        self.instance_server: PeerCancelServer | None = None  # stateless replicas: other instances' forwarded cancels
        self.peer_sender: PeerCancelSender | None = None
        self.forward_limit = ForwardLimiter()  # CancelRequests passed to other instances, per client address
        self._revoke_tasks: set[asyncio.Task[None]] = set()  # terminations of revoked users' backend processes
        self.ops_server: OpsServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.stopping = False

    @property
    def config(self) -> Config:
        """The config in force (the registry's: a reload replaces it)."""
        return self.registry.config

    @property
    def policies(self) -> dict[str, TenantPolicy]:
        """Every prepared tenant's current policy (the registry's: a reload replaces the dict)."""
        return self.registry.policies

    def decider(self, tenant: str, agent: AgentConfig | None = None, timeout_ms: int = 0) -> Gate:
        """The policy gate of one tenant's sessions (one per tenant, shared by its sessions; its agent-profile
        users' have their own per agent limits, users under a statement_timeout limit theirs per limit): the shared
        decision cache, under the tenant's current policy (a reload may replace it), with decision times observed
        on cache misses."""
        key = (tenant, None if agent is None else (agent.max_rows, agent_timeout_ms(agent)), timeout_ms)
        found = self._deciders.get(key)
        if found is None:
            found = self._deciders[key] = self._new_decider(tenant, agent, timeout_ms)
        return found

    def _new_decider(self, tenant: str, agent: AgentConfig | None = None, timeout_ms: int = 0) -> Gate:
        policies = self.registry.policy if agent is None and not timeout_ms else AgentPolicies(
            self.registry.policy, None if agent is None else agent.max_rows,
            0 if agent is None else agent_timeout_ms(agent), timeout_ms)
        return Gate(self.decisions, policies, self.tenant(tenant), self.metrics.decision_timed,
                    self.decision_limits)

    def tenant(self, name: str) -> Tenant:
        """A tenant's identity for its sessions, with its metrics label (computed once per tenant and config)."""
        found = self._tenants.get(name)
        if found is None:
            found = self._tenants[name] = Tenant(name, self.config.tenants[name].strategy, self.metrics.tenant(name))
        return found

    def as_worker(self, config: Config) -> Config:
        """`config` as this process runs it: `server.workers` is the count of processes actually running (their
        shares of the database budgets follow it; a changed count applies at the next start)."""
        count = 1 if self.worker is None else self.worker.count
        if config.server.workers == count:
            return config
        return replace(config, server=replace(config.server, workers=count))

    def apply_config(self, new: Config, *, keep_unchanged: bool = False) -> list[str]:
        """Blocking half of a reload (discovery and preflight under the new config; `keep_unchanged`: only of the
        tenants it changes); the switch itself is scheduled on the loop. Returns the problems that reject it."""
        new = self.as_worker(new)
        policies, problems = self.prepare_config(new, keep_unchanged=keep_unchanged)
        if problems:
            return problems
        loop = self._loop
        assert loop is not None
        done = asyncio.run_coroutine_threadsafe(self._install(new, policies), loop)
        done.result(30)
        return []

    async def _install(self, new: Config, policies: dict[str, TenantPolicy]) -> None:
        self.install_config(new, policies)

    def prepare(self) -> None:
        """Blocking startup work for every tenant: discovery, isolation preflight, policy.

        A tenant whose backend is unreachable is prepared later, when its first client arrives; a
        reachable database that does not enforce the boundary stops the start (unless overridden).
        """
        problems: list[str] = []
        for tenant in self.config.tenants.values():
            try:
                problems += self.prepare_tenant(tenant.name, publish=False)
            except BackendCheckError as exc:
                log.warning("tenant_pending", tenant=tenant.name, reason=str(exc))
        self.registry.publish()  # once for the batch (at each tenant it was quadratic in the tenants)
        if problems:
            raise StartupError(
                "the database does not enforce the tenant boundary: " + "; ".join(problems)
                + " (fix it, e.g. with `pgtenant provision`, or set preflight.enforce = false)"
            )

    def prepare_tenant(self, name: str, publish: bool = True) -> list[str]:
        """Blocking: prepare one tenant of the current config; return the blocking preflight problems."""
        problems = self.registry.prepare_tenant(name, publish)
        ready = self.registry.policy(name) is not None
        self.metrics.preflight(name, ready)
        return problems

    def prepare_config(self, new: Config, *,
                       keep_unchanged: bool = False) -> tuple[dict[str, TenantPolicy], list[str]]:
        """Blocking: build every tenant's policy under a new config (for reload); tenants whose backend
        is down are left to be prepared later."""
        return self.registry.prepare_config(new, BackendCheckError, keep_unchanged=keep_unchanged)

    def install_config(self, new: Config, policies: dict[str, TenantPolicy]) -> None:
        """On the event loop: switch to a new config; sessions of removed or moved users end at their
        next statement, everyone else keeps going under the new policy."""
        new = with_mock_secret(new, self.config)
        limits = new.limits
        self.decisions.clear()
        self.decisions.maxsize, self.decisions.max_bytes = limits.decision_cache_entries, limits.decision_cache_bytes
        self.decision_limits = Limits(limits.max_statements_per_query, limits.max_parse_tree_nodes,
                                      limits.max_temp_relations)
        for gate in self._deciders.values():  # sessions keep their gate: it decides under the new limits too
            gate.limits = self.decision_limits
        self._deciders.clear()
        self._tenants.clear()
        self.workers.count, self.workers.timeout = limits.decision_workers, limits.decision_timeout
        self.client_ssl = client_ssl_context(new)
        self.channel_binding = own_channel_binding(new)
        lim = new.limits
        self.throttle.max_failures = lim.max_auth_failures
        self.throttle.max_user_failures = lim.max_auth_failures_per_user
        self.throttle.max_address_failures = lim.max_auth_failures_per_address
        self.throttle.window = lim.auth_failure_window
        self.prelogin.per_address = lim.max_prelogin_connections_per_address
        self.prelogin.total = lim.max_prelogin_connections
        self.proxy_senders = proxy_senders(new)
        self.metrics.tenant.preload(sorted(new.tenants))
        by_id = {client.session_id: client for client in self.clients}
        sessions = [SessionRef(row.session_id, row.user, row.admin)
                    for row in self.session_rows() if row.user is not None]
        revoked = self.registry.install(new, policies, sessions)
        for ref in sessions:  # logged-in and logging-in users' sessions decide under the new config
            if not ref.admin:
                by_id[ref.session_id].reconfigure(new)
        for revocation in revoked:  # each ends now; what it sent its server does not run (red team 9b3 F1, F3)
            by_id[revocation.session_id].revoke(revocation.error)
        self.pool.reconfigure(self.config)  # sizes follow; a tenant whose context changed gets a new pool

    def session_rows(self) -> list[SessionRow]:
        """Every connection's session, as plain data (for reload and the admin console)."""
        return [row for row in (client.row() for client in list(self.clients)) if row is not None]

    def snapshot(self) -> Snapshot:
        """The running proxy as plain data (the admin console's and readiness' only view of it)."""
        now = time.monotonic()
        clients = []
        for c in list(self.clients):
            row = c.row()
            if row is not None:
                clients.append(ClientRow(row, now - c.started, c.bytes_in, c.bytes_out, c.via))
        servers = []
        lags = {(b, r): lag for b, r, _, lag, _ in self.pool.router.rows(self.pool.clock())}
        for row in self.pool.manager.server_rows(self.pool.clock()):
            link = self.pool.links.get(row.id)
            if link is None:
                continue
            s = link.server
            owner = link.owner.session_id if link.owner is not None else None
            lag = lags.get((s.backend.name.rpartition("/")[0], s.replica)) if s.replica else None
            servers.append(ServerRow(s.backend.name, s.backend.user, s.database, s.process_id, s.tls, row.state,
                                     owner or None, row.age, row.tenant, s.replica, lag))
        return Snapshot(self.server is not None and not self.stopping, self.registry.pending(), clients, servers,
                        self.pool.rows())

    def kill(self, session_id: str) -> bool:
        """End one session (the console's KILL_CLIENT); False if there is none of that id."""
        for c in list(self.clients):
            if c.session_id == session_id and c.session is not None:
                c.close(errors.admin_shutdown(), CloseReason.KILLED_BY_ADMIN)
                return True
        return False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self.config.metrics.enabled and self.worker is None:  # (workers: the supervisor serves it for all)
            self.ops_server = OpsServer(self.config.metrics, self.metrics, self.ops.ready)
            try:
                await self.ops_server.start()
            except OSError as exc:
                m_cfg = self.config.metrics
                raise StartupError(f"metrics: cannot listen on {m_cfg.host}:{m_cfg.port}: {exc.strerror}") from exc
        await self._start_registry()
        try:
            self.server = await loop.create_server(
                lambda: accept(self),
                self.config.listen.host,
                self.config.listen.port if self.worker is None else self.worker.port,
                reuse_address=True,
                reuse_port=self.worker is not None,  # every worker accepts on the port; the kernel spreads clients
                backlog=1024,
            )
        except OSError as exc:
            listen = self.config.listen
            raise StartupError(f"listen: cannot listen on {listen.host}:{listen.port}: {exc.strerror}") from exc
        if self.worker is not None:
            assert self.peers is not None
            self.peer_server = PeerServer(self.peers.path(self.worker.index), self._peer_handlers())
            await self.peer_server.start()
        log.info("listening", address=self.addresses(), compiled_hot_path=_accel.status())
        loop.call_later(memory.TRIM_INTERVAL, self._trim_memory)
        self.pool.start()

    async def _start_registry(self) -> None:
        """The registry (read at start by the cli) kept current from now on; with a peer port, this instance's slot
        claimed before any client gets a cancel key (docs/operations.md "Tenant registry", "Stateless replicas")."""
        registry = self.config.registry
        if not registry.dsn:
            return
        peer = None
        if registry.peer_port is not None:
            assert registry.peer_secret is not None
            shared = registry.peer_secret.encode()
            self.peer_sender = PeerCancelSender(registry.dsn, shared)
        if registry.peer_port is not None and self.worker is None:  # (workers: the supervisor's, io/instanceport.py)
            self.instance_server = PeerCancelServer(registry.peer_host, registry.peer_port, shared,
                                                    self._cancel_here_proof, self._instance_claim, self._peer_refused,
                                                    registry)
            try:
                await self.instance_server.start()
            except OSError as exc:
                raise StartupError(f"registry.peer_port: cannot listen on {registry.peer_host}:{registry.peer_port}: "
                                   f"{exc.strerror}") from exc
            peer = (advertised_host(registry.advertise_host, registry.peer_host), self.instance_server.port,
                    registry.instance_bits)
        self.registry_watch = RegistryWatch(registry.dsn, registry.reconnect_delay, self.ops.reload_changes, peer)
        self.registry_watch.start()
        slot = None if self.worker is None else self.worker.slot
        if peer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.registry_watch.claimed.wait(), 30)
            slot = self.registry_watch.slot
            if slot is None:
                raise StartupError(no_slot_problem(registry.instance_bits))
        if slot is not None:
            instancekey.use_space(instancekey.InstanceSpace(slot, registry.instance_bits))

    def holds_instance_slot(self) -> bool:
        """Whether the instance slot this process's cancel keys carry is still this instance's (red team 9b N3: not
        after `instance_slot_lost`); with workers the supervisor holds it and says so in their directory."""
        if self.worker is not None:
            return self.worker.slot is None or not (self.worker.directory / SLOT_LOST_FILE).exists()
        return self.registry_watch is None or self.registry_watch.holds_slot

    def _instance_claim(self) -> tuple[int | None, int | None]:
        watch = self.registry_watch
        return (None, None) if watch is None else (watch.slot, watch.claim)

    def _peer_refused(self, reason: str) -> None:
        self.metrics.peer_refused(reason)
        self._prelogin_line("warning", "peer_cancel_refused", reason=reason)

    def _prelogin_line(self, level: str, event: str, **fields: object) -> None:
        """A log line anyone can cause (a CancelRequest, a connection to the peer port): through the pre-login log
        limiter, a dropped one counted."""
        dropped = self.prelogin_log.allow(time.monotonic())
        if dropped is None:
            self.metrics.log_line_suppressed()
            return
        getattr(log, level)(event, **fields, **({"suppressed_before": dropped} if dropped else {}))

    def _trim_memory(self) -> None:
        """Every TRIM_INTERVAL while sessions come and go: what connections freed goes back to the system (RSS
        grew ~2 KB per connection without it, in freed heap pages glibc kept)."""
        if self.finished_since_trim:
            self.finished_since_trim = 0
            memory.trim()
        if self.server is not None:
            asyncio.get_running_loop().call_later(memory.TRIM_INTERVAL, self._trim_memory)

    def addresses(self) -> list[str]:
        if self.server is None:
            return []
        return [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self.server.sockets]

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def client_finished(self) -> None:
        self.finished_since_trim += 1
        if not self.clients:
            self._idle.set()

    async def forward_cancel(self, action: ForwardCancel, address: str = "") -> None:
        """A CancelRequest: forwarded only while its session holds a server, to that server's backend process; the
        client's cancel connection is closed once this returns, i.e. once PostgreSQL has acted (as PostgreSQL's own
        cancel connection closes), so a client's next query is never hit by its own earlier cancel. A session that
        holds no server has nothing running: nothing is forwarded (requests waiting for a server are answered as
        cancelled). The server goes to nobody else until the cancel connection has closed and a round trip proved
        it clean, so a cancel racing the release of the server never reaches the next client's query (PgBouncer
        1.19+ also waits for the close); a cancel whose connection failed may still arrive: its server is closed
        instead of reused. A key another instance gave is passed on to it (stateless replicas), a key another worker
        process gave to that worker."""
        if await self._cancel_elsewhere(action, address):
            return
        if self.peers is not None:
            owner = key_space().worker_of(action.process_id)
            if owner is not None and owner != self.peers.index:  # another worker's session: that worker forwards it
                answer = await self.peers.ask(owner, {"op": "cancel", "pid": action.process_id,
                                                      "secret": action.secret_key.hex()})
                # (debug: anyone can send these; the owner counts and logs an unknown key as cancel_ignored)
                log.debug("cancel_passed_to_worker", worker=owner, answered=answer is not None)
                return
        await self._cancel_here(action)

    async def _cancel_elsewhere(self, action: ForwardCancel, address: str) -> bool:
        """Stateless replicas: a key naming another instance's slot goes to that instance (such cancels limited per
        client address, in all and per destination: proxy.cancel.ForwardLimiter); whether it was another's."""
        if self.peer_sender is None:
            return False
        slot = instancekey.space().elsewhere(action.process_id)
        if slot is None:
            return False
        outcome = await self._pass_to_instance(slot, action, address)
        self.metrics.instance_cancel(outcome)
        self._prelogin_line("info", "cancel_passed_to_instance", slot=slot, outcome=outcome)  # (anyone can send one)
        return True

    async def _pass_to_instance(self, slot: int, action: ForwardCancel, address: str) -> str:
        """Pass a cancel on to the instance of `slot`, within the limits: its outcome."""
        assert self.peer_sender is not None
        try:
            where = await self.peer_sender.find(slot)
        except LookupBusy:  # too many cancels already wait for a registry lookup (red team 9b N5)
            return "busy"
        if where is None:  # no instance holds it: answered by the negative cache after one lookup, never charged
            return "no_instance"  # (red team 9b N1)
        limit = self.forward_limit
        if not limit.allow(address, time.monotonic()) or not limit.begin(slot):
            return "throttled"
        try:
            status = await self.peer_sender.send(slot, action.process_id, action.secret_key)
        finally:
            limit.end(slot)
        if status == instancekey.UNKNOWN:  # a guessed key (or a session just gone): its source waits longer
            limit.wrong(address, time.monotonic())
        return {instancekey.FOUND: "found", instancekey.UNKNOWN: "unknown", instancekey.STALE: "stale",
                None: "no_instance" if self.peer_sender.missing(slot) else "failed"}[status]

    async def _cancel_here_proof(self, process_id: int, proof: bytes) -> bool:
        """A cancel another instance passed on (its key's proof, not the key): whether a session here has that key."""
        assert self.peer_sender is not None
        client = self.cancels.lookup_proof(process_id, proof, self.peer_sender.shared)
        if client is None:
            self.metrics.cancel_ignored()
            return False
        await self._cancel_session(client)
        return True

    async def _cancel_here(self, action: ForwardCancel) -> None:
        """A CancelRequest for a session of this process (see forward_cancel)."""
        client = self.cancels.lookup(action.process_id, action.secret_key)
        if client is None:  # anyone can send these: counted, and logged through the pre-login limiter
            self.metrics.cancel_ignored()
            self._prelogin_line("info", "cancel_ignored", reason="unknown_key")
            return
        await self._cancel_session(client)

    async def cancel_session(self, client: ClientConnection, own: bool = False) -> None:
        """Cancel what `client`'s session runs: a client's CancelRequest, or with `own` the proxy's (its watchdog:
        not limited as a client's are)."""
        await self._cancel_session(client, own)

    async def _cancel_session(self, client: object, own: bool = False) -> None:
        link = self.pool.holding(client)  # type: ignore[arg-type]
        if link is None or link.closed:
            if self.pool.cancel_waiting(client):  # type: ignore[arg-type]
                log.info("cancel_answered", reason="waiting_for_server")
            else:
                log.info("cancel_ignored", reason="no_server_held")
            return
        if not own:  # one per running request, at a bounded rate (red team 9s6 F4: each is a PostgreSQL fork)
            dropped = client.cancel_check(time.monotonic())  # type: ignore[attr-defined]
            if dropped is not None:
                self.metrics.cancel_dropped(dropped)
                log.debug("cancel_dropped", reason=dropped)
                return
        self.pool.cancel_started(link)
        delivered = False
        try:
            delivered = await self._send_cancel(link.server.backend, link.server.process_id, link.server.secret_key)
        finally:
            self.pool.cancel_done(link, delivered=delivered)

    def terminate_backend(self, action: TerminateBackend) -> None:
        """A revoked session's backend process ends (TerminateBackend): a task of its own, the reload goes on."""
        self._revoke_tasks.add(task := asyncio.get_running_loop().create_task(self._terminate_backend(action)))
        task.add_done_callback(self._revoke_tasks.discard)

    async def _terminate_backend(self, action: TerminateBackend) -> None:
        """pg_terminate_backend(pid) from a short connection as the backend's own role (it may end its own role's
        processes): the requests the revoked user pipelined on it never run. If that fails, the CancelRequest at
        least stops the running statement (logged: what follows it may run)."""
        backend, timeout = action.backend, action.backend.connect_timeout
        try:
            kwargs = dbcheck.connect_kwargs(backend, action.database, timeout, "pgtenant-revoke")
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(autocommit=True, **kwargs), timeout)  # type: ignore[arg-type]
            try:
                cur = await asyncio.wait_for(
                    conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (action.process_id,)), timeout)
                row = await cur.fetchone()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
            log.info("backend_terminated", backend=backend.name, process_id=action.process_id,
                     terminated=bool(row and row[0]))
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.warning("backend_terminate_failed", backend=backend.name, process_id=action.process_id,
                        error=str(exc) or type(exc).__name__)
            await self._send_cancel(backend, action.process_id, action.secret_key)

    async def cancel_backend(self, backend: BackendConfig, process_id: int, secret_key: bytes) -> bool:
        """Cancel what a backend process runs for the proxy itself (a left client's statement): whether PostgreSQL
        acted on it."""
        return await self._send_cancel(backend, process_id, secret_key)

    async def _send_cancel(self, backend: BackendConfig, process_id: int, secret_key: bytes) -> bool:
        """Send one CancelRequest and wait until the backend closed that connection (it has acted on it then):
        whether it did (False: the cancel failed, or may still arrive)."""
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.port), backend.connect_timeout
            )
            if backend.sslmode != "disable":
                writer.write(m.encode_ssl_request())
                answer = await asyncio.wait_for(reader.readexactly(1), backend.connect_timeout)
                if answer == m.SSL_ACCEPTED:
                    await writer.start_tls(backend_ssl_context(backend), server_hostname=backend.host)
                elif backend.sslmode != "prefer":
                    raise ConnectionError("backend refused TLS for the cancel request")
            writer.write(m.encode_cancel_request(process_id, secret_key))
            await writer.drain()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await asyncio.wait_for(reader.read(), backend.connect_timeout)  # EOF: the cancel was processed
            log.info("cancel_forwarded", backend=backend.name)
            return True
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.warning("cancel_failed", backend=backend.name, error=str(exc) or type(exc).__name__)
            return False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def shutdown(self) -> None:
        """Stop accepting, let sessions finish until the deadline, then end the rest with 57P01."""
        if self.stopping:
            return
        self.stopping = True
        if self.server is not None:
            self.server.close()
        deadline = self.config.limits.shutdown_timeout
        log.info("shutdown_started", sessions=len(self.clients), deadline_s=deadline)
        if self.clients:
            self._idle.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), deadline)
        for client in list(self.clients):
            client.close(errors.admin_shutdown(), CloseReason.SHUTDOWN)
        self.pool.shutdown()  # the idle servers (closed sessions' servers were reset or closed on release)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
        if self.ops_server is not None:
            await self.ops_server.close()
        if self.registry_watch is not None:
            await self.registry_watch.close()
        if self.peer_server is not None:
            await self.peer_server.close()
        if self.instance_server is not None:
            await self.instance_server.close()
        self.workers.close()
        if self.audit is not None:
            self.audit.close()
        log.info("shutdown_complete")

    # --- worker processes: what peers ask of this one, and the console's view over all of them -------------------

    def _peer_handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        ops, view = self.ops, AdminView(self.ops)

        async def ping(_: dict[str, Any]) -> dict[str, Any]:
            return {"pid": os.getpid(), "listening": self.server is not None and not self.stopping}

        async def cancel(request: dict[str, Any]) -> dict[str, Any]:
            if "proof" in request:  # another instance's, through the supervisor's peer port
                proof = bytes.fromhex(str(request["proof"]))
                return {"found": await self._cancel_here_proof(int(request["pid"]), proof)}
            await self._cancel_here(ForwardCancel(int(request["pid"]), bytes.fromhex(str(request["secret"]))))
            return {}

        async def metrics(_: dict[str, Any]) -> dict[str, Any]:
            return {"pid": os.getpid(), "text": self.metrics.exposition()[1].decode()}

        async def ready(_: dict[str, Any]) -> dict[str, Any]:
            ok, detail = await ops.ready()
            return {"ok": ok, "detail": detail}

        async def show(request: dict[str, Any]) -> dict[str, Any]:
            name = str(request["view"])
            if name not in CLUSTER_VIEWS:
                return {"error": "unknown view"}
            columns, rows = getattr(view, name)()
            return {"columns": list(columns), "rows": [list(r) for r in rows]}

        async def kill(request: dict[str, Any]) -> dict[str, Any]:
            return {"found": self.kill(str(request["id"]))}

        async def unlock(request: dict[str, Any]) -> dict[str, Any]:
            return {"count": self.throttle.unlock(str(request["user"]))}

        async def reload(_: dict[str, Any]) -> dict[str, Any]:
            return {"message": ops.reload_now()}

        return {"ping": ping, "cancel": cancel, "metrics": metrics, "ready": ready, "show": show, "kill": kill,
                "unlock": unlock, "reload": reload}

    def admin_later(self, key: str, sql: str, answer: Callable[[bytes, str], None]) -> None:
        """Answer a console command of the connection `key` over every worker, after its previous ones:
        `answer(response, outcome)` (outcome "ok" or the error's SQLSTATE)."""
        previous = self._admin_chains.get(key)
        task = asyncio.get_running_loop().create_task(self._admin_after(previous, sql, answer))
        self._admin_chains[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._admin_chains.get(key) is done:
                del self._admin_chains[key]

        task.add_done_callback(forget)

    async def _admin_after(self, previous: asyncio.Task[None] | None, sql: str,
                           answer: Callable[[bytes, str], None]) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            out, outcome = await self.admin_execute(sql), "ok"
        except errors.PgError as exc:
            out, outcome = exc.encode(), exc.sqlstate
        answer(out, outcome)

    async def admin_execute(self, sql: str) -> bytes:
        """The console's answer to `sql`; with worker processes, over all of them (this one asks its peers)."""
        view = AdminView(self.ops)
        if self.peers is None:
            return admin_console.execute(sql, view)
        command, text = admin_console.normalized(sql)
        name = next((n for n in CLUSTER_VIEWS if command == f"SHOW {n.upper()}"), None)
        if name is not None:
            here = (self.peers.index, *getattr(view, name)())
            there = [(i, a["columns"], [tuple(r) for r in a["rows"]])
                     for i, a in await self.peers.ask_others({"op": "show", "view": name}) if "rows" in a]
            merged = merge_rows(name, [here, *there])
            setattr(view, name, lambda: merged)
        elif m := admin_console.KILL_PATTERN.match(text):
            found = self.kill(m.group(1).lower()) or any(
                a.get("found") for _, a in await self.peers.ask_others({"op": "kill", "id": m.group(1).lower()}))
            view.kill_client = lambda _id: found
        elif m := admin_console.UNLOCK_PATTERN.match(text):
            user = m.group(1) or m.group(2)
            count = self.throttle.unlock(user) + sum(
                int(a.get("count", 0)) for _, a in await self.peers.ask_others({"op": "unlock", "user": user}))
            view.unlock = lambda _user: count
        elif command == "RELOAD":
            await self.peers.ask_others({"op": "reload"})
        elif command == "SHOW CONFIG":
            columns, rows = view.config_rows()
            rows = [*rows, ("server.workers", self.peers.count), ("server.worker", self.peers.index)]
            view.config_rows = lambda: (columns, rows)
        return admin_console.execute(sql, view)


# The console views merged over worker processes (proxy.clusterview), by their AdminView methods' names.
CLUSTER_VIEWS = ("clients", "servers", "pools", "stats", "tenants")


def proxy_senders(config: Config) -> tuple[Network, ...] | None:
    """The balancers whose PROXY protocol v2 header is believed (None: `[server] proxy_protocol = "off"`)."""
    server = config.server
    return networks(server.proxy_protocol_from) if server.proxy_protocol == "v2" else None


class StartupError(RuntimeError):
    """The proxy cannot start safely; the message says why."""


def freeze_heap() -> int:
    """Move everything made until now (modules, parsers, policies: it lives as long as the process) out of the
    cyclic garbage collector's reach; returns how many objects that is. A full collection walked all of it
    (~20 ms for ~90k objects here), stalling every session at once; objects made later are collected as usual."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("heap_frozen", objects=frozen)
    return frozen


async def serve(config: Config, *, ready: asyncio.Event | None = None, worker: WorkerIdentity | None = None) -> None:
    """Run the proxy (or one worker process of it) until SIGTERM/SIGINT."""
    allocator.return_large_blocks()  # RSS returns after big messages (glibc keeps them otherwise)
    loop = asyncio.get_running_loop()
    # A SIGHUP before the proxy serves (its default action ends the process: a reload sent while it prepares, or
    # as soon as its port accepts, killed it silently) is kept and run as a reload once serving: the file may have
    # changed after prepare read it.
    early = hangups.received  # (`pgtenant run` keeps those that came before this loop: proxy/hangups.py)
    loop.add_signal_handler(signal.SIGHUP, lambda: early.append(signal.SIGHUP))
    proxy = Proxy(config, worker)
    await loop.run_in_executor(None, proxy.prepare)
    freeze_heap()  # before listening: the log line precedes readiness
    await proxy.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def on_hup() -> None:
        task = loop.create_task(proxy.ops.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if early:
        log.info("reload_deferred", signals=len(early))
        early.clear()
        on_hup()
    if ready is not None:
        ready.set()
    await stop.wait()
    await proxy.shutdown()


def run(config: Config, worker: WorkerIdentity | None = None) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(config, worker=worker))
        return
    uvloop.run(serve(config, worker=worker))
