"""The one layer that does I/O: asyncio protocols for client and server sockets, TLS, cancel, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import time

from proxy import _accel, allocator, dbcheck, errors, memory
from proxy import admin as admin_console
from proxy.actions import (
    Action,
    AdminLogin,
    AdminQuery,
    CloseClient,
    CloseServer,
    ConnectBackend,
    ForwardCancel,
    RelayToClient,
    RelayToServer,
    RunDecision,
    SendClient,
    SendServer,
    ServerFailed,
    ServerReady,
    StartClientTls,
    StartServerTls,
)
from proxy.audit import AuditLog
from proxy.auth.prelogin import PreloginLimiter
from proxy.auth.scram import tls_server_end_point
from proxy.auth.throttle import AuthThrottle
from proxy.cancel import CancelRegistry, CancelTarget
from proxy.config import BackendConfig, Config, LimitsConfig
from proxy.dbcheck import BackendCheckError
from proxy.errors import PgError
from proxy.httpd import OpsServer
from proxy.logs import LogLimiter, get_logger
from proxy.metrics import DEFAULT_BUCKETS, Metrics
from proxy.mocksecret import with_mock_secret
from proxy.ops import AdminView, Ops
from proxy.policy.cache import DecisionCache, Gate, Pending
from proxy.policy.engine import Limits
from proxy.policy.model import Decision, Deny, Rewrite, TenantPolicy
from proxy.protocol import messages as m
from proxy.relay import ClientRelay, ServerRelay, write_chunks
from proxy.server import ServerConnection
from proxy.session import ClientSession, State
from proxy.tenancy import backend_context, other_tenants_schemas, parsing_violation, tenant_policy
from proxy.workers import DecisionWorkers

log = get_logger("pgtenant.driver")
SCRAM_STATES = (State.SASL_INITIAL, State.SASL_CONTINUE)  # a login in its SCRAM exchange

WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
# TLS 1.2 suites clients may use (TLS 1.3's own suites are all AEAD): forward-secret ECDHE with AES-GCM or
# ChaCha20-Poly1305 only, as Mozilla's "intermediate" profile; no CBC, RSA key exchange, SHA-1 MACs.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384"


def client_ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.tls.enabled:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    assert config.tls.cert_file and config.tls.key_file
    ctx.load_cert_chain(str(config.tls.cert_file), str(config.tls.key_file))
    return ctx


def own_channel_binding(config: Config) -> bytes | None:
    """tls-server-end-point data for the proxy's own certificate (first cert in the file)."""
    if not (config.tls.enabled and config.tls.channel_binding):
        return None
    assert config.tls.cert_file
    pem = config.tls.cert_file.read_text()
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return tls_server_end_point(ssl.PEM_cert_to_DER_cert(pem[start:end]))


def backend_ssl_context(backend: BackendConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if backend.sslmode in ("verify-ca", "verify-full"):
        assert backend.sslrootcert
        ctx.load_verify_locations(str(backend.sslrootcert))
        ctx.check_hostname = backend.sslmode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# Ends a session whose transaction stays idle past limits.idle_in_transaction_timeout, unless its client set one.
IDLE_IN_TRANSACTION = "idle_in_transaction_session_timeout"


def _decision_limits(limits: LimitsConfig) -> Limits:
    """What the policy engine is given of the `[limits]` table."""
    return Limits(limits.max_statements_per_query, limits.max_parse_tree_nodes, limits.max_temp_relations)


class ServerLink(asyncio.Protocol):
    """The socket side of one server connection; relays to its client once ready."""

    def __init__(self, client: ClientConnection, server: ServerConnection) -> None:
        self.client = client
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.relaying = False
        self.closed = False
        self.connected_at = time.monotonic()
        self.gauge_label: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio subclasses
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self._run(self.server.initiate())

    def data_received(self, data: bytes) -> None:
        if not self.relaying:  # once relaying, a ServerRelay reads this socket (ClientConnection.start_relay)
            self._run(self.server.data(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.server_lost(self, exc)

    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, chunks: list[bytes | memoryview]) -> None:
        if self.transport is not None and not self.closed:
            write_chunks(self.transport, chunks)

    def terminate(self) -> None:
        if self.transport is not None and not self.closed:
            if self.relaying:
                self.transport.write(m.TERMINATE_MESSAGE)
            self.closed = True
            self.transport.close()

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendServer):
                self.write(action.data)
            elif isinstance(action, StartServerTls):
                asyncio.get_running_loop().create_task(self._start_tls())
            elif isinstance(action, ServerReady):
                self.relaying = True
                self.client.server_ready(self, action)
            elif isinstance(action, ServerFailed):
                self.client.server_failed(self, action.reason, action.error)
                self.terminate()
            else:  # pragma: no cover - the server machine emits only the above
                raise AssertionError(f"unexpected server action {action!r}")

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        backend = self.server.backend
        assert self.transport is not None
        try:
            self.transport = await loop.start_tls(
                self.transport,
                self,
                backend_ssl_context(backend),
                server_hostname=backend.host,
                ssl_handshake_timeout=backend.connect_timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            self.client.server_failed(self, f"TLS handshake failed: {exc}")
            self.terminate()
            return

        def binding() -> bytes | None:
            sslobj = self.transport.get_extra_info("ssl_object") if self.transport else None
            der = sslobj.getpeercert(binary_form=True) if sslobj else None
            return tls_server_end_point(der) if der else None

        self.server.channel_binding = binding
        self._run(self.server.tls_done())


class ClientConnection(asyncio.Protocol):
    """The socket side of one client session."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.session: ClientSession | None = None
        self.link: ServerLink | None = None
        self.closed = False
        self._bytes_in = 0
        self._bytes_out = 0
        self.relay: ClientRelay | None = None  # the transports' protocol once relaying (start_relay)
        self.started = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._spoke = False  # the client has sent something (until then first_message_timeout applies)
        self._tls_pending = False  # between SSLRequest's answer and the end of the TLS handshake
        self.authenticated = False  # logged in: no longer counted, timed or logged as a pre-login connection
        self._bytes_reported = (0, 0)
        self._reading_paused = False
        self._backpressure = False  # the server link's write buffer is full
        self._decision: object | None = None  # the decision worker task the session waits for (RunDecision)
        self.log = log

    # --- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio subclasses
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else str(peer or "local")
        sid = os.urandom(6).hex()
        cfg = self.proxy.config
        self.session = ClientSession(
            cfg,
            session_id=sid,
            client_address=address,
            throttle=self.proxy.throttle,
            clock=time.monotonic,
            tls_available=self.proxy.client_ssl is not None,
            channel_binding=lambda: self.proxy.channel_binding,
            on_decision=self._on_decision,
        )
        self.log = log.bind(session_id=sid, client_addr=address)
        self.session.report_rewrites = self.log.is_enabled_for(logging.DEBUG)
        self.proxy.clients.add(self)
        self.proxy.metrics.clients.labels("_none", "authenticating").inc()
        self._gauge: tuple[str, str] | None = ("_none", "authenticating")
        if len(self.proxy.clients) > cfg.limits.max_client_connections:
            self.run([CloseClient(errors.too_many_clients(cfg.limits.max_client_connections), "too_many_clients")])
            return
        victims, refused = self.proxy.prelogin.admit(self, address)  # a waiting one not logging in makes room
        if refused is not None:  # every place is held by a login in its SCRAM exchange: this one waits outside
            self.proxy.metrics.prelogin_closed.labels(f"{refused}_refused").inc()
            self.run([CloseClient(errors.too_many_logging_in(refused), f"prelogin_{refused}_refused")])
            return
        for victim, limit in victims:
            assert isinstance(victim, ClientConnection)
            self.proxy.metrics.prelogin_closed.labels(limit).inc()
            victim.close(errors.too_many_waiting(limit), f"prelogin_{limit}_limit")
        silent = min(cfg.limits.first_message_timeout, cfg.limits.startup_timeout)
        self._timer = asyncio.get_running_loop().call_later(silent, self._on_timeout)
        self.prelog("info", "connection_accepted")

    def data_received(self, data: bytes) -> None:
        self._bytes_in += len(data)
        session = self.session
        assert session is not None
        if not self._spoke:
            self._first_data()
        try:
            self.run(session.client_data(data))
        except Exception:
            self.internal_error()
            return
        if session.state in SCRAM_STATES and not self.authenticated:
            self.proxy.prelogin.exchanging(self)  # a real login under way: never closed to make room

    def eof_received(self) -> bool | None:
        return None

    def _first_data(self) -> None:
        """The client spoke: from now on the whole startup_timeout applies, and it is evicted after silent ones."""
        self._spoke = True
        self.proxy.prelogin.spoke(self)
        if self._timer is not None and not self.closed:
            self._timer.cancel()
            remaining = self.proxy.config.limits.startup_timeout - (time.monotonic() - self.started)
            self._timer = asyncio.get_running_loop().call_later(max(0.0, remaining), self._on_timeout)

    def prelog(self, level: str, event: str, **fields: object) -> None:
        """Log a line of a connection not logged in: rate-limited, since anyone can cause any number of them."""
        if not self.authenticated:
            dropped = self.proxy.prelogin_log.allow(time.monotonic())
            if dropped is None:
                self.proxy.metrics.log_suppressed.inc()
                return
            if dropped:
                fields["suppressed_before"] = dropped
        getattr(self.log, level)(event, **fields)

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop_decision()
        if self.closed:
            self._finish()
            return
        self.closed = True
        if self.session is not None:
            self.session.close()
        if self.link is not None:
            self.proxy.pool.release(self.link, reason="client_gone")
        self._finish(reason="client_disconnected")

    def pause_writing(self) -> None:
        if self.link is not None and self.link.transport is not None:
            with contextlib.suppress(Exception):
                self.link.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.link is not None and self.link.transport is not None and not self.link.closed:
            with contextlib.suppress(Exception):
                self.link.transport.resume_reading()

    def pause_reading(self) -> None:
        """Backpressure: the server link cannot take more for now."""
        self._backpressure = True
        self._update_reading()

    def resume_reading(self) -> None:
        self._backpressure = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Read the client's socket unless the server link is full or the session waits for a decision."""
        if self.transport is None or self.closed:
            return
        paused = self._backpressure or self._decision is not None
        if paused != self._reading_paused:
            self._reading_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    @property
    def bytes_in(self) -> int:
        return self._bytes_in + (self.relay.bytes_in if self.relay is not None else 0)

    @property
    def bytes_out(self) -> int:
        return self._bytes_out + (self.relay.bytes_out if self.relay is not None else 0)

    def internal_error(self) -> None:
        """A bug of ours while handling input (called inside the `except`): logged with its traceback, the
        client gets XX000 without it."""
        self.log.exception("internal_error")
        self.close(errors.internal_error(), "internal_error")

    # --- from the server link -----------------------------------------------------------

    def start_relay(self, link: ServerLink) -> None:
        """The session relays from now on: both transports read into the compiled hot path (proxy.relay)."""
        session, proxy = self.session, self.proxy
        assert session is not None and self.transport is not None and link.transport is not None
        tenant = session.info.tenant or "_none"
        relay = self.relay = ClientRelay(
            self, session, self.transport, link.transport,
            recorder=proxy.metrics.query_recorder(proxy.metrics.tenant(tenant)),
            stats=proxy.ops.tenant_stats(tenant),
            metrics_enabled=proxy.metrics_enabled,
            audit=proxy.audit,
            audit_prefix=self._audit_fields() if proxy.audit is not None else "",
        )
        session.tracker.on_done = relay.request_done
        self.transport.set_protocol(relay)
        link.transport.set_protocol(ServerRelay(link, relay))

    def server_ready(self, link: ServerLink, ready: ServerReady) -> None:
        assert self.session is not None
        if self.closed:
            self.proxy.pool.release(link, reason="client_gone")
            return
        for name, value in ready.parameters.items():
            problem = parsing_violation(name, value)
            if problem is not None:  # fail closed: the backend would read SQL differently from the engine
                self.log.error("backend_parsing_mismatch", problem=problem)
                self.proxy.pool.release(link, reason="parsing_mismatch")
                self.link = None
                self.run(self.session.server_failed(errors.backend_settings_unsafe(problem), "parsing_mismatch"))
                return
        self.proxy.cancels.register(
            self.session.process_id,
            self.session.secret_key,
            CancelTarget(link.server.backend, ready.process_id, ready.secret_key),
        )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        connect_s = time.monotonic() - link.connected_at
        self.log.info(
            "backend_connected",
            backend=link.server.backend.name,
            database=link.server.database,
            tls=link.server.tls,
            connect_ms=round(connect_s * 1000, 2),
        )
        label = self.proxy.metrics.tenant(self.session.info.tenant)
        self.proxy.metrics.backend_connect_duration.labels(label).observe(connect_s)
        self.proxy.metrics.servers.labels(label, "active").inc()
        link.gauge_label = label
        self._set_gauge(label, "active")
        for notice in ready.notices:
            self.write(notice)
        self.run(self.session.server_ready(ready.parameters))
        if self.session.state is State.READY and not self.closed:
            self.start_relay(link)

    def server_failed(self, link: ServerLink, reason: str, refusal: PgError | None = None) -> None:
        """The backend connection failed; `refusal` is the backend's own ErrorResponse, if it sent one."""
        assert self.session is not None
        backend = link.server.backend
        self.log.warning("backend_failed", backend=backend.describe(), reason=reason,
                         sqlstate=refusal.sqlstate if refusal else None)
        if refusal is not None:
            metrics = self.proxy.metrics
            metrics.backend_errors.labels(metrics.tenant(self.session.info.tenant), refusal.sqlstate[:2]).inc()
        if self.session.state is State.CONNECTING:  # the client is told the backend's name, never its address
            error = (errors.backend_refused(backend.name, refusal) if refusal is not None
                     else errors.backend_unreachable(backend.name, "see the proxy log"))
            self.run(self.session.server_failed(error, "backend"))

    def server_lost(self, link: ServerLink, exc: Exception | None) -> None:
        if self.link is not link or self.closed:
            return
        assert self.session is not None
        if self.session.state is State.READY:  # after the backend's own FATAL, PostgreSQL's word is the last
            if self.session.backend_fatal:
                self.run([CloseClient(None, "server_fatal")])
            else:
                self.run([CloseClient(errors.server_closed(), "server_closed")])
        elif self.session.state is State.CONNECTING:
            self.server_failed(link, f"connection closed during startup{f': {exc}' if exc else ''}")

    # --- action execution ----------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.closed and data:
            self._bytes_out += len(data)
            self.transport.write(data)

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, RelayToServer):
                if self.link is not None:
                    self.link.writelines(action.chunks)
            elif isinstance(action, RelayToClient):
                if self.transport is not None and not self.closed:
                    self._bytes_out += write_chunks(self.transport, action.chunks)
            elif isinstance(action, SendClient):
                self.write(action.data)
            elif isinstance(action, StartClientTls):
                assert self.transport is not None
                self.transport.pause_reading()
                self._tls_pending = True
                asyncio.get_running_loop().create_task(self._start_tls())
            elif isinstance(action, AdminLogin):
                self._admin_login()
            elif isinstance(action, ConnectBackend):
                self._connect_backend()
            elif isinstance(action, AdminQuery):
                self._admin_query(action.sql)
            elif isinstance(action, RunDecision):
                self._run_decision(action.pending)
            elif isinstance(action, ForwardCancel):
                asyncio.get_running_loop().create_task(self.proxy.forward_cancel(action))
            elif isinstance(action, CloseServer):
                if self.link is not None:
                    self.proxy.pool.release(self.link, reason=action.reason)
                    self.link = None
            elif isinstance(action, CloseClient):
                self.close(action.error, action.reason)
                return
            else:  # pragma: no cover
                raise AssertionError(f"unexpected client action {action!r}")

    def _run_decision(self, pending: Pending) -> None:
        """A decision worker decides what the session holds; the client's socket is not read meanwhile."""
        metrics = self.proxy.metrics
        metrics.offloaded.labels(metrics.tenant(pending.tenant)).inc()
        self._decision = self.proxy.workers.submit(
            pending, lambda decision, stages: self._decided(pending, decision, stages)
        )
        self._update_reading()

    def _decided(self, pending: Pending, decision: Decision, stages: dict[str, float]) -> None:
        self._decision = None
        pending.finish(decision, stages)
        if self.closed or self.session is None:
            return
        try:
            self.run(self.session.decision_ready(decision))
        except Exception:
            self.internal_error()
            return
        self._update_reading()

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None and self.proxy.client_ssl is not None and self.session is not None
        try:
            new = await loop.start_tls(
                self.transport,
                self,
                self.proxy.client_ssl,
                server_side=True,
                ssl_handshake_timeout=self.proxy.config.limits.startup_timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            self.prelog("info", "tls_handshake_failed", error=str(exc))
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self._finish(reason="tls_failed")
            return
        if new is None:
            return
        self.transport = new
        self._tls_pending = False
        self.run(self.session.tls_done())

    def _set_gauge(self, tenant: str, state: str) -> None:
        gauge = self.proxy.metrics.clients
        if self._gauge is not None:
            gauge.labels(*self._gauge).dec()
        self._gauge = (tenant, state)
        gauge.labels(tenant, state).inc()

    def _admin_login(self) -> None:
        """An admin logged in to the console: no startup deadline any more; logged, counted and audited."""
        session = self.session
        assert session is not None
        self._logged_in()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.log = self.log.bind(user=session.info.user, admin=True, application_name=session.info.application_name)
        self.log.info("auth_ok", tls=session.info.tls)
        self.proxy.metrics.auth.labels("success", "ok").inc()
        if self.proxy.audit is not None:
            self.proxy.audit.event("admin_login", self._audit_fields(), tls=session.info.tls)

    def _admin_query(self, sql: str) -> None:
        try:
            out = admin_console.execute(sql, AdminView(self.proxy.ops))
            outcome = "ok"
        except PgError as exc:
            out = exc.encode()
            outcome = exc.sqlstate
        command = " ".join(sql.split())[:64]
        self.log.info("admin_command", command=command, outcome=outcome)
        if self.proxy.audit is not None:
            self.proxy.audit.event("admin_command", self._audit_fields(), command=command, outcome=outcome)
        self.write(out + m.ready_for_query(b"I"))

    def _on_decision(self, kind: str, sql: str, decision: Decision) -> None:
        if isinstance(decision, Deny):
            self.log.info("statement_denied", kind=kind, rule=decision.rule, sqlstate=decision.sqlstate)
            tenant = self.session.info.tenant if self.session else None
            self.proxy.metrics.denied.labels(self.proxy.metrics.tenant(tenant), decision.rule).inc()
        elif isinstance(decision, Rewrite):
            self.log.debug("statement_rewritten", kind=kind, rules=list(decision.rules))

    def count_backend_error(self, sqlstate: str) -> None:
        """A request ended in a backend error: counted per tenant and SQLSTATE class."""
        metrics = self.proxy.metrics
        assert self.session is not None
        metrics.backend_errors.labels(metrics.tenant(self.session.info.tenant), sqlstate[:2]).inc()

    def _audit_fields(self) -> str:
        """The session's own audit fields, encoded once for all its lines."""
        info = self.session.info  # type: ignore[union-attr]
        return AuditLog.fields(session_id=info.session_id, tenant=info.tenant, user=info.user,
                               application_name=info.application_name, client_addr=info.client_address)

    def _connect_backend(self) -> None:
        session = self.session
        assert session is not None and session.backend is not None and session.tenant is not None
        self.log = self.log.bind(
            user=session.info.user, tenant=session.tenant.name, application_name=session.info.application_name
        )
        self._logged_in()
        self.log.info("auth_ok", tls=session.info.tls)
        self.proxy.metrics.auth.labels("success", "ok").inc()
        self._set_gauge(self.proxy.metrics.tenant(session.tenant.name), "connecting")
        asyncio.get_running_loop().create_task(self._attach_policy_and_connect())

    async def _attach_policy_and_connect(self) -> None:
        session = self.session
        assert session is not None and session.backend is not None and session.tenant is not None
        name = session.tenant.name
        if name not in self.proxy.policies:  # its backend was down at startup: prepare it now
            try:
                problems = await asyncio.get_running_loop().run_in_executor(None, self.proxy.prepare_tenant, name)
            except BackendCheckError as exc:
                self.log.warning("backend_failed", backend=session.backend.describe(), reason=str(exc))
                self.run(session.server_failed(errors.backend_unreachable(session.backend.name, "its check failed"),
                                                "backend"))
                return
            if problems or name not in self.proxy.policies:  # fail closed: no policy, no session
                self.run([CloseClient(errors.tenant_unavailable(name), "preflight_failed")])
                return
        if self.closed:
            return
        gate = self.proxy.decider(name)
        # a Parse memo holds while the gate's policy (and the session's context) stays
        session.enable_policy(gate, gate.current, gate.with_context)
        await self._acquire()

    async def _acquire(self) -> None:
        session = self.session
        assert session is not None and session.backend is not None and session.tenant is not None
        try:
            link = await self.proxy.pool.acquire(self, session.backend, session.tenant.database,
                                                 self.proxy.server_parameters(session))
        except (TimeoutError, OSError) as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            reason = "connection timed out" if timed_out else (exc.strerror or str(exc))
            self.log.warning("backend_failed", backend=session.backend.describe(), reason=reason)
            shown = reason if timed_out or exc.strerror else "connection failed"  # str(exc) may name the address
            self.run(session.server_failed(errors.backend_unreachable(session.backend.name, shown), "backend"))
            return
        if self.closed:
            self.proxy.pool.release(link, reason="client_gone")
            return
        self.link = link

    def _logged_in(self) -> None:
        """Authentication succeeded: the connection leaves the pre-login caps and its log lines are all kept."""
        self.authenticated = True
        self.proxy.prelogin.done(self)

    def _on_timeout(self) -> None:
        self._timer = None
        if not self._spoke:
            self.proxy.metrics.prelogin_closed.labels("first_message_timeout").inc()
            self.close(errors.startup_timeout(), "first_message_timeout")
        elif self.session is not None:
            self.run(self.session.timeout())

    def close(self, error: PgError | None, reason: str) -> None:
        if self.closed:
            return
        kind, _, detail = reason.partition(":")
        if kind == "auth_failed":
            if detail in ("unknown_user", "bad_proof") and not self.proxy.config.metrics.auth_failure_detail:
                detail = "invalid_credentials"  # one reason for both, as the client sees one 28P01
            self.proxy.metrics.auth.labels("failure", detail or "unknown").inc()
        elif kind == "auth_throttled":
            self.proxy.metrics.auth.labels("refused", "throttled").inc()
            self.proxy.metrics.auth_throttled.labels(detail).inc()
        elif reason in ("tls_required", "database_not_allowed", "startup_parameter", "startup_timeout",
                        "too_many_clients"):
            self.proxy.metrics.auth.labels("refused", reason).inc()
        if self.session is not None and self.session.is_admin and reason == "client_terminate":
            self.log.info("admin_logout")
        if error is not None:
            if not self._tls_pending:  # never plaintext into a TLS handshake: that connection is just cut
                self.write(error.encode())
            level = "info" if reason in ("client_terminate", "cancel_request") else "warning"
            self.prelog(level, "session_error", reason=reason, sqlstate=error.sqlstate, message=error.message)
        self.closed = True
        self._drop_decision()
        if self.session is not None:
            self.session.close()
        if self.link is not None:
            self.proxy.pool.release(self.link, reason=reason)
            self.link = None
        if self.transport is not None:
            if self._tls_pending:
                self.transport.abort()
            else:
                self.transport.close()
        self._finish(reason=reason)

    def _drop_decision(self) -> None:
        """The client is gone: nobody waits for its decision any more."""
        if self._decision is not None:
            self.proxy.workers.cancel(self._decision)  # type: ignore[arg-type]
            self._decision = None

    def flush_bytes(self) -> None:
        session = self.session
        if session is None or session.info.tenant is None or not self.proxy.metrics_enabled:
            return
        sent_c, received_c = self.proxy.metrics.traffic_children(self.proxy.metrics.tenant(session.info.tenant))
        sent_c.inc(self.bytes_out - self._bytes_reported[0])
        received_c.inc(self.bytes_in - self._bytes_reported[1])
        self._bytes_reported = (self.bytes_out, self.bytes_in)

    def _finish(self, reason: str = "") -> None:
        self.proxy.prelogin.done(self)
        self.flush_bytes()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._gauge is not None:
            self.proxy.metrics.clients.labels(*self._gauge).dec()
            self._gauge = None
        if self in self.proxy.clients:
            self.proxy.clients.discard(self)
            if self.session is not None:
                self.proxy.cancels.unregister(self.session.process_id)
                if self.session.info.user is not None or reason not in ("cancel_request",):
                    self.prelog(
                        "info",
                        "connection_closed",
                        reason=reason,
                        duration_s=round(time.monotonic() - self.started, 3),
                        bytes_in=self.bytes_in,
                        bytes_out=self.bytes_out,
                    )
        self.proxy.client_finished()


class Pool:
    """Hands server connections to client sessions: one fresh connection per session for now.

    Later, pooling will keep connections per (backend, database, tenant parameters) and re-use them,
    re-applying the tenant context and pinning session state; sessions only see acquire/release.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.links: set[ServerLink] = set()

    async def acquire(
        self, client: ClientConnection, backend: BackendConfig, database: str, parameters: dict[str, str]
    ) -> ServerLink:
        loop = asyncio.get_running_loop()
        server = ServerConnection(backend, database, parameters)
        _, link = await asyncio.wait_for(
            loop.create_connection(lambda: ServerLink(client, server), backend.host, backend.port),
            backend.connect_timeout,
        )
        self.links.add(link)
        return link

    def release(self, link: ServerLink, *, reason: str = "") -> None:
        if link in self.links and link.gauge_label is not None:
            self.proxy.metrics.servers.labels(link.gauge_label, "active").dec()
            link.gauge_label = None
        self.links.discard(link)
        link.terminate()


class Proxy:
    """The listener and everything shared between sessions."""

    def __init__(self, config: Config) -> None:
        self.config = config = with_mock_secret(config)
        self.client_ssl = client_ssl_context(config)
        self.channel_binding = own_channel_binding(config)
        lim = config.limits
        self.throttle = AuthThrottle(
            max_failures=lim.max_auth_failures, window=lim.auth_failure_window,
            max_user_failures=lim.max_auth_failures_per_user, max_address_failures=lim.max_auth_failures_per_address,
        )
        self.prelogin = PreloginLimiter(lim.max_prelogin_connections_per_address, lim.max_prelogin_connections)
        self.prelogin_log = LogLimiter()
        self.cancels = CancelRegistry()
        self.clients: set[ClientConnection] = set()
        self.finished_since_trim = 0  # sessions ended since the allocator was last trimmed (_trim_memory)
        self.pool = Pool(self)
        self.server: asyncio.AbstractServer | None = None
        self.policies: dict[str, TenantPolicy] = {}
        limits = config.limits
        self.decisions = DecisionCache(limits.decision_cache_entries, limits.decision_cache_bytes)
        self.decision_limits = _decision_limits(limits)
        self._deciders: dict[str, Gate] = {}
        self.metrics = Metrics(
            max_tenants=config.metrics.max_tenants, buckets=config.metrics.buckets or DEFAULT_BUCKETS
        )
        self.metrics.tenant.preload(sorted(config.tenants))
        self.metrics_enabled = config.metrics.enabled
        self.metrics.watch_cache(lambda: (
            self.decisions.hits, self.decisions.misses, self.decisions.entries, self.decisions.held
        ))
        self.workers = DecisionWorkers(
            limits.decision_workers, limits.decision_timeout,
            on_restart=lambda reason: self.metrics.worker_restarts.labels(reason).inc(),
        )
        self.audit = AuditLog(config.audit.file, config.audit.redact) if config.audit.enabled else None
        self.ops = Ops(self)
        self.ops_server: OpsServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.stopping = False

    def decider(self, tenant: str) -> Gate:
        """The policy gate of one tenant's sessions (one per tenant, shared by its sessions): the shared decision
        cache, under the tenant's current policy (a reload may replace it), with decision times observed on
        cache misses."""
        found = self._deciders.get(tenant)
        if found is None:
            found = self._deciders[tenant] = self._new_decider(tenant)
        return found

    def _new_decider(self, tenant: str) -> Gate:
        decision_time = {st: self.metrics.decision_duration.labels(st) for st in ("total", "gate", "rewrite", "verify")}
        return Gate(self.decisions, self, tenant, lambda stage, seconds: decision_time[stage].observe(seconds),
                    self.decision_limits)

    def server_parameters(self, session: ClientSession) -> dict[str, str]:
        """Startup parameters for the backend: the client's allowed ones, then the tenant context over them."""
        assert session.tenant is not None
        params = {**session.backend_parameters, **backend_context(session.tenant)}
        if not any(k.lower() == "client_encoding" for k in params):
            params["client_encoding"] = "UTF8"  # never the server's default: it could be a client-only encoding
        if not any(k.lower() == IDLE_IN_TRANSACTION for k in params):  # an idle open transaction's locks queue
            params[IDLE_IN_TRANSACTION] = f"{round(self.config.limits.idle_in_transaction_timeout * 1000)}ms"
        return params

    def apply_config(self, new: Config) -> list[str]:
        """Blocking half of a reload (discovery and preflight under the new config); the switch itself
        is scheduled on the loop. Returns the problems that reject the reload."""
        policies, problems = self.prepare_config(new)
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
                problems += self.prepare_tenant(tenant.name)
            except BackendCheckError as exc:
                log.warning("tenant_pending", tenant=tenant.name, reason=str(exc))
        if problems:
            raise StartupError(
                "the database does not enforce the tenant boundary: " + "; ".join(problems)
                + " (fix it, e.g. with `pgtenant provision`, or set preflight.enforce = false)"
            )

    def build_tenant(self, config: Config, name: str) -> tuple[TenantPolicy | None, list[str]]:
        """Blocking: discover, check and build one tenant's policy under `config`; (policy, problems)."""
        tenant = config.tenants[name]
        scoped = dbcheck.discover(config, tenant) if tenant.strategy == "shared" else {}
        if tenant.strategy == "shared":
            log.info("tenant_tables", tenant=name, tables=sorted(f"{s}.{t}" for s, t in scoped))
        report = dbcheck.preflight(config, tenant, scoped)
        for w in report.warnings:
            log.warning("preflight_warning", tenant=name, problem=w)
        for e in report.errors:
            log.error("preflight_failed", tenant=name, problem=e)
        if report.errors and config.preflight.enforce:
            return None, report.errors
        if tenant.strategy == "shared" and not report.rls_complete:
            log.warning("rewrite_fenced", tenant=name,
                        reason="row-level security does not cover every scoped table; filters become fences")
        try:
            return tenant_policy(
                tenant, scoped, fence=not report.rls_complete, rls_tables=report.rls_tables,
                hidden_schemas=other_tenants_schemas(config, tenant), catalog_columns=report.catalog_columns,
            ), []
        except ValueError as exc:
            return None, [f"tenants.{name}: {exc}"]

    def prepare_tenant(self, name: str) -> list[str]:
        """Blocking: prepare one tenant of the current config; return the blocking preflight problems."""
        policy, problems = self.build_tenant(self.config, name)
        if policy is not None:
            self.policies[name] = policy
        self.metrics.preflight_ok.labels(self.metrics.tenant(name)).set(1 if policy is not None else 0)
        return problems

    def prepare_config(self, new: Config) -> tuple[dict[str, TenantPolicy], list[str]]:
        """Blocking: build every tenant's policy under a new config (for reload); tenants whose backend
        is down are left to be prepared later."""
        policies: dict[str, TenantPolicy] = {}
        problems: list[str] = []
        for name in new.tenants:
            try:
                policy, found = self.build_tenant(new, name)
            except BackendCheckError as exc:
                log.warning("tenant_pending", tenant=name, reason=str(exc))
                continue
            problems += found
            if policy is not None:
                policies[name] = policy
        return policies, problems

    def install_config(self, new: Config, policies: dict[str, TenantPolicy]) -> None:
        """On the event loop: switch to a new config; sessions of removed or moved users end at their
        next statement, everyone else keeps going under the new policy."""
        old = self.config
        self.config = new = with_mock_secret(new, old)
        self.policies = policies
        limits = new.limits
        self.decisions.clear()
        self.decisions.maxsize, self.decisions.max_bytes = limits.decision_cache_entries, limits.decision_cache_bytes
        self.decision_limits = _decision_limits(limits)
        for gate in self._deciders.values():  # sessions keep their gate: it decides under the new limits too
            gate.limits = self.decision_limits
        self._deciders.clear()
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
        self.metrics.tenant.preload(sorted(new.tenants))
        for client in list(self.clients):
            s = client.session
            if s is None or s.info.user is None:
                continue
            if s.is_admin:
                if s.info.user not in new.admin.users:
                    s.revoked = errors.user_removed(s.info.user)
                continue
            before = old.users.get(s.info.user)
            after = new.users.get(s.info.user)
            # A removed user, a user moved to another tenant, or a tenant whose placement or rules
            # changed: the session ends at its next statement (its backend connection is the old one).
            if after is None or before is None or after.tenant != before.tenant or (
                new.tenants[after.tenant] != old.tenants.get(after.tenant)
                or new.backend_for(new.tenants[after.tenant]) != old.backend_for(old.tenants[after.tenant])
            ):
                s.revoked = errors.user_removed(s.info.user)
            s.config = new

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self.config.metrics.enabled:
            self.ops_server = OpsServer(self.config.metrics, self.metrics, self.ops.ready)
            try:
                await self.ops_server.start()
            except OSError as exc:
                m_cfg = self.config.metrics
                raise StartupError(f"metrics: cannot listen on {m_cfg.host}:{m_cfg.port}: {exc.strerror}") from exc
        try:
            self.server = await loop.create_server(
                lambda: ClientConnection(self),
                self.config.listen.host,
                self.config.listen.port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            listen = self.config.listen
            raise StartupError(f"listen: cannot listen on {listen.host}:{listen.port}: {exc.strerror}") from exc
        log.info("listening", address=self.addresses(), compiled_hot_path=_accel.status())
        loop.call_later(memory.TRIM_INTERVAL, self._trim_memory)

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

    async def forward_cancel(self, action: ForwardCancel) -> None:
        target = self.cancels.lookup(action.process_id, action.secret_key)
        if target is None:  # anyone can send these: counted, and logged through the pre-login limiter
            self.metrics.cancel_ignored.inc()
            dropped = self.prelogin_log.allow(time.monotonic())
            if dropped is None:
                self.metrics.log_suppressed.inc()
            else:
                log.info("cancel_ignored", reason="unknown_key", **({"suppressed_before": dropped} if dropped else {}))
            return
        backend = target.backend
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.port), backend.connect_timeout
            )
            if backend.sslmode != "disable":
                writer.write(m.encode_ssl_request())
                answer = await asyncio.wait_for(reader.readexactly(1), backend.connect_timeout)
                if answer == b"S":
                    await writer.start_tls(backend_ssl_context(backend), server_hostname=backend.host)
                elif backend.sslmode != "prefer":
                    raise ConnectionError("backend refused TLS for the cancel request")
            writer.write(m.encode_cancel_request(target.process_id, target.secret_key))
            await writer.drain()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            log.info("cancel_forwarded", backend=backend.name)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.warning("cancel_failed", backend=backend.name, error=str(exc))

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
            client.close(errors.admin_shutdown(), "shutdown")
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
        if self.ops_server is not None:
            await self.ops_server.close()
        self.workers.close()
        if self.audit is not None:
            self.audit.close()
        log.info("shutdown_complete")


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


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run the proxy until SIGTERM/SIGINT."""
    allocator.return_large_blocks()  # RSS returns after big messages (glibc keeps them otherwise)
    proxy = Proxy(config)
    loop = asyncio.get_running_loop()
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
    if ready is not None:
        ready.set()
    await stop.wait()
    await proxy.shutdown()


def run(config: Config) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(config))
        return
    uvloop.run(serve(config))

