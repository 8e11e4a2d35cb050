"""The socket side of one client session (ClientConnection): feeds the session bytes and runs its actions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy import admin as admin_console
from proxy import errors
from proxy.actions import (
    AcquireServer,
    AcquireSlot,
    Action,
    AdminLogin,
    AdminQuery,
    AgentAdmission,
    AnswerWithheld,
    AwaitAdmission,
    BatchWithoutSync,
    CancelQuery,
    CloseClient,
    ConnectBackend,
    CopyInHeld,
    ForwardCancel,
    KeepServer,
    LastLineGuarded,
    LimitReached,
    Login,
    LoginStarted,
    RelayToClient,
    RelayToServer,
    ReleaseServer,
    ReleaseSlot,
    RunDecision,
    SendClient,
    ServerRequest,
    SessionPinned,
    SessionUnpinned,
    StartClientTls,
    StartRelay,
    TerminateBackend,
    WatchLimits,
)
from proxy.audit import AuditLog
from proxy.config import Config
from proxy.dbcheck import BackendCheckError
from proxy.errors import PgError
from proxy.io.backend import WRITE_HIGH_WATER, WRITE_LOW_WATER, ServerLink
from proxy.logs import get_logger
from proxy.ops import AdminView
from proxy.policy.cache import Pending
from proxy.policy.model import Decision, Deny, Rewrite
from proxy.protocol import messages as m
from proxy.protocol.proxyheader import starts_like
from proxy.reasons import CloseReason
from proxy.registry import Tenant
from proxy.relay import ClientRelay, write_chunks
from proxy.replicas import Route
from proxy.session import ClientSession, SessionRow

if TYPE_CHECKING:
    from proxy.io.listener import Proxy

log = get_logger("pgtenant.driver")


class ClientConnection(asyncio.Protocol):
    """The socket side of one client session."""

    __slots__ = (
        "_admitting", "_backpressure", "_bytes_in", "_bytes_out", "_bytes_reported", "_client_full", "_connect",
        "_copy_timer",
        "_decision", "_gauge", "_kept", "_limits_timer", "_out_mark", "_pin_timer", "_pinned_at", "_reading_paused",
        "_relaying",
        "_slot_wait", "_spoke", "_timer", "_tls_pending", "_unsynced_timer", "_waiting_server", "address", "admin",
        "authenticated", "closed", "link", "login", "proxy", "relay", "session", "session_id", "started", "tenant",
        "transport", "via",
    )

    def __init__(self, proxy: Proxy, address: str = "", via: str | None = None) -> None:
        self.proxy = proxy
        self.via = via  # the trusted load balancer that relayed the connection (its PROXY header gave `address`)
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
        self._client_full = False  # the client's write buffer is full (the server link is not read meanwhile)
        self._out_mark = -1  # its size at the last tick while full (-1: not full then): did the client take any?
        self._decision: object | None = None  # the decision worker task the session waits for (RunDecision)
        self._admitting = False  # the session holds an agent's statement for its admission (AwaitAdmission)
        self.session_id = ""  # set with the session (connection_made)
        self.address = address  # the client's: its socket peer's, unless a trusted balancer's header said (doorway.py)
        self.login: Login | None = None  # who logged in (AdminLogin / ConnectBackend)
        self.admin = False
        self.tenant: Tenant | None = None  # the tenant identity (ConnectBackend)
        self._connect: ConnectBackend | None = None  # where the session's server connection goes
        self._waiting_server = False  # the pool was asked for a server (the client is not read meanwhile)
        self._kept = False  # `link` is idle in the pool but kept for this session (KeepServer: docs/pinning.md)
        self._relaying = False  # the session's startup was answered: the client transport reads into the relay
        self._pinned_at: float | None = None  # since when the session is pinned to its server (transaction pooling)
        self._pin_timer: asyncio.TimerHandle | None = None
        self._limits_timer: asyncio.TimerHandle | None = None  # the session's limits watchdog (WatchLimits)
        self._slot_wait: tuple[AcquireSlot, asyncio.TimerHandle] | None = None  # waiting for a turn (QuerySlots)
        self._unsynced_timer: asyncio.TimerHandle | None = None  # the server is held by a batch without its Sync
        self._copy_timer: asyncio.TimerHandle | None = None  # ... by a COPY FROM STDIN waiting for the client's data

    def _channel_binding(self) -> bytes | None:
        """The proxy's channel binding data now (a reload may change it); a method: a lambda per client costs more."""
        return self.proxy.channel_binding

    # --- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio subclasses
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        address = self.address or peer_address(transport)
        sid = self.session_id = os.urandom(6).hex()
        cfg = self.proxy.config
        self.session = ClientSession(
            cfg,
            session_id=sid,
            client_address=address,
            throttle=self.proxy.throttle,
            clock=time.monotonic,
            tls_available=self.proxy.client_ssl is not None,
            channel_binding=self._channel_binding,
            on_decision=self._on_decision,
            report_rewrites=log.is_enabled_for(logging.DEBUG),
            connections=self.proxy.connections,
        )
        self.address = address
        self.proxy.clients.add(self)
        self._gauge: tuple[str, str] | None = self.proxy.metrics.client_moved(None, ("_none", "authenticating"))
        if len(self.proxy.clients) > cfg.limits.max_client_connections:
            self.run([CloseClient(errors.too_many_clients(cfg.limits.max_client_connections),
                                  CloseReason.TOO_MANY_CLIENTS)])
            return
        victims, refused = self.proxy.prelogin.admit(self, address)  # a waiting one not logging in makes room
        if refused is not None:  # every place is held by a login in its SCRAM exchange: this one waits outside
            self.run([CloseClient(errors.too_many_logging_in(refused), CloseReason.prelogin_cap(refused, True))])
            return
        for victim, limit in victims:
            assert isinstance(victim, ClientConnection)
            victim.close(errors.too_many_waiting(limit), CloseReason.prelogin_cap(limit, False))
        silent = min(cfg.limits.first_message_timeout, cfg.limits.startup_timeout)
        self._timer = asyncio.get_running_loop().call_later(silent, self._on_timeout)
        self.prelog("info", "connection_accepted", **({"via": self.via} if self.via else {}))

    @property
    def log(self) -> Any:
        """The connection's logger, bound to what is known of it: bound when a line is logged, so that an idle
        client holds no bound logger (each holds its own context and output object: ~1.6 KB)."""
        if not self.session_id:
            return log
        login = self.login
        if login is None:
            return log.bind(session_id=self.session_id, client_addr=self.address)
        if self.admin:
            return log.bind(session_id=self.session_id, client_addr=self.address, user=login.user, admin=True,
                            application_name=login.application_name)
        return log.bind(session_id=self.session_id, client_addr=self.address, user=login.user,
                        tenant=self.tenant.name if self.tenant is not None else None,
                        application_name=login.application_name)

    def row(self) -> SessionRow | None:
        """The session as plain data (None before it exists)."""
        return self.session.row() if self.session is not None else None

    def reconfigure(self, config: Config) -> None:
        """A reload installed `config`: the session hears of it."""
        if self.session is not None:
            self.session.reconfigure(config)

    def revoke(self, error: PgError) -> None:
        """A reload revoked this session's user: the session ends with `error` (now, or at its next step while it
        logs in or waits for a server); a backend process with its requests on it is terminated."""
        if self.session is not None and not self.closed:
            self.run(self.session.revoke(error))

    def data_received(self, data: bytes) -> None:
        self._bytes_in += len(data)
        session = self.session
        assert session is not None
        if not self._spoke:
            if starts_like(data):  # a PROXY protocol header from a sender nobody trusts: never believed
                self._untrusted_header()
                return
            self._first_data()
        try:
            self.run(session.client_data(data))
        except Exception:
            self.internal_error()

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

    def _untrusted_header(self) -> None:
        if self.via is not None:  # the balancer's header was read: this one is its client's (red team 9b3 F8)
            self.proxy.metrics.proxy_header_refused("second_header")
            self.prelog("warning", "proxy_header_refused", via=self.via,
                        reason="a second PROXY header, from the client behind the balancer")
        else:
            self.proxy.metrics.proxy_header_refused("untrusted")
            self.prelog("warning", "proxy_header_refused", reason="sender not in server.proxy_protocol_from"
                        if self.proxy.proxy_senders is not None else "server.proxy_protocol is off")
        self.close(None, CloseReason.PROXY_HEADER)

    def prelog(self, level: str, event: str, **fields: object) -> None:
        """Log a line of a connection not logged in: rate-limited, since anyone can cause any number of them."""
        if not self.authenticated:
            dropped = self.proxy.prelogin_log.allow(time.monotonic())
            if dropped is None:
                self.proxy.metrics.log_line_suppressed()
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
        self._let_go(CloseReason.CLIENT_GONE)
        self._finish(reason=CloseReason.CLIENT_DISCONNECTED)

    def _let_go(self, reason: CloseReason) -> None:
        """The connection ends: the session gives its server back (or the pool forgets its request)."""
        if self.session is not None:
            self.run([a for a in self.session.close() if isinstance(a, ReleaseServer | ReleaseSlot)])
        if self.link is not None:  # (the session did not hold it yet: not reusable as far as it knows)
            self._release(ReleaseServer(reusable=False, reset=True, reason=reason))
        if self._waiting_server:
            self._waiting_server = False
            self.proxy.pool.withdraw(self)
        if self._slot_wait is not None:
            action, timer = self._slot_wait
            self._slot_wait = None
            timer.cancel()
            self.proxy.slots.withdraw(action.tenant, self)
        self._unpinned()
        self._batch_without_sync(False)
        self._copy_in_held(False)

    def pause_writing(self) -> None:
        self._client_full = True
        if self.link is not None and self.link.transport is not None and not self._kept:
            with contextlib.suppress(Exception):
                self.link.hold_reading()

    def resume_writing(self) -> None:
        self._client_full = False
        if self.link is not None and self.link.transport is not None and not self.link.closed and not self._kept:
            with contextlib.suppress(Exception):
                self.link.release_reading()

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
        paused = (self._backpressure or self._decision is not None or self._waiting_server
                  or self._slot_wait is not None or self._admitting)
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
        self.close(errors.internal_error(), CloseReason.INTERNAL_ERROR)

    # --- from the server link -----------------------------------------------------------

    def start_relay(self, link: ServerLink) -> None:
        """The session relays from now on through `link` (both transports read into the compiled hot path,
        proxy.relay): as `server_granted` and StartRelay do it."""
        self._install(link)
        self._relay_client()

    def _install(self, link: ServerLink) -> None:
        """A server is lent to the session: its socket reads into the client's relay (made at the first one)."""
        session, proxy, tenant = self.session, self.proxy, self.tenant
        assert session is not None and self.transport is not None and link.transport is not None
        assert tenant is not None
        relay = self.relay
        if relay is None:
            relay = self.relay = ClientRelay(
                self, session, self.transport, None,
                recorder=proxy.metrics.query_recorder(tenant.label),
                stats=proxy.ops.tenant_stats(tenant.name),
                metrics_enabled=proxy.metrics_enabled,
                audit=proxy.audit,
                audit_prefix=self._audit_fields() if proxy.audit is not None else "",
                end_user=self._connect.end_user if self._connect is not None else None,
            )
            session.report_requests(relay.request_done)
        self.link = link
        relay.server = link.transport
        link.relay = relay  # its reads go to the relay until Pool.release detaches it
        if self._client_full:  # the client's socket is still full: the new server waits too
            link.hold_reading()

    def _relay_client(self) -> None:
        """The client's startup is answered: its transport reads into the relay."""
        assert self.transport is not None and self.relay is not None
        self._relaying = True
        self.transport.set_protocol(self.relay)

    def server_granted(self, link: ServerLink) -> None:
        """The pool lends the session `link` (READY, idle), maybe inside `Pool.request` itself."""
        self._waiting_server = False
        session = self.session
        if self.closed or session is None:
            self.proxy.pool.release(link, reusable=True, reset=False, reason=CloseReason.CLIENT_GONE)
            return
        self._install(link)
        server = link.server
        notices, server.notices = server.notices, []  # a new server's startup notices go to its first client
        try:
            self.run(session.server_attached(server, notices))
        except Exception:
            self.internal_error()
            return
        self._update_reading()

    def _start_relay(self) -> None:
        """The client's startup is answered: its cancel key names this connection (a cancel goes to the server it
        holds then, if any), the session relays."""
        link, tenant, connect = self.link, self.tenant, self._connect
        assert link is not None and tenant is not None and connect is not None
        self.proxy.cancels.register(*connect.cancel_key, self)
        connect_s = time.monotonic() - link.connected_at
        self.log.info(
            "backend_connected",
            backend=link.server.backend.name,
            database=link.server.database,
            tls=link.server.tls,
            connect_ms=round(connect_s * 1000, 2),
            server=link.server.id,
            pid=link.server.process_id,
        )
        self._set_gauge(tenant.label, "active")
        if not self.closed:
            self._relay_client()

    def server_refused(self, error: PgError, reason: CloseReason) -> None:
        """The pool has no server for the session (its wait timed out, the backend cannot be reached)."""
        self._waiting_server = False
        if self.session is None or self.closed:
            return
        self.run(self.session.server_refused(error, reason))
        self._update_reading()

    def server_lost(self, link: ServerLink, exc: Exception | None, error: PgError | None = None) -> None:
        if self.link is not link or self.closed:
            return
        assert self.session is not None
        self.link = None
        if self.relay is not None:
            self.relay.server = None
        self.log.warning("server_lost", backend=link.server.backend.describe(), server=link.server.id,
                         reason=f"connection closed{f': {exc}' if exc else ''}")
        self.run(self.session.server_closed(error))

    def _request_server(self, request: ServerRequest, route: Route | None = None) -> None:
        """Ask the pool for a server (answered by server_granted or server_refused, maybe at once). The client is not
        read while it waits; an idle server is granted inside `request`, so the pause comes after it, if at all
        (transaction pooling asks once per transaction: a pause and resume cost uvloop two epoll_ctl calls)."""
        self._waiting_server = True
        self.proxy.pool.request(self, request, route)
        if self._waiting_server:
            self._update_reading()

    def _release(self, action: ReleaseServer) -> None:
        """Give the server back to the pool; the client's relay stops reading it."""
        self._batch_without_sync(False)
        self._copy_in_held(False)
        link, self.link = self.link, None
        if link is None:
            return
        kept = self._unkeep()
        if self.relay is not None:
            self.relay.server = None
        self._backpressure = False
        self.proxy.pool.release(link, reusable=action.reusable, reset=action.reset, reason=action.reason,
                                busy=action.busy, kept_for=self if kept else None)
        self._update_reading()

    # --- sticky servers: the released server stays installed while nobody needs it (docs/pinning.md) ----------

    def _keep(self) -> None:
        """KeepServer: the server goes back to the pool but stays installed here until the pool takes it back
        (`taken_back`) or the next request reuses it (`resume_kept`); if the pool wants it now, it is released."""
        link = self.link
        if link is None:
            return
        self._batch_without_sync(False)
        self._copy_in_held(False)
        if not self.proxy.pool.keep(link, self):
            self.run(self.session.server_taken())  # type: ignore[union-attr]  # (what the release records, first)
            self._release(ReleaseServer(reusable=True, reset=False))
            return
        self._kept = True
        self.relay.kept = True  # type: ignore[union-attr]  # (its next read asks resume_kept first)
        if self._client_full and link.transport is not None and not link.closed:
            link.release_reading()  # (an idle link reads its own socket)

    def _unkeep(self) -> bool:
        """The session's server is no longer kept for it; whether it was."""
        if not self._kept:
            return False
        self._kept = False
        if self.relay is not None:
            self.relay.kept = False
        return True

    def resume_kept(self, data: bytes) -> bytes | None:
        """Client bytes while the session's server is kept for it (before the session reads them): once a whole first
        message is in (till then the session keeps them: None), it holds the server again if the pool lets it — for a
        routed session, if the router could choose that server for the request the bytes begin; with
        max_concurrent_queries, if a turn is free now (the session then takes it at once, synchronously: it never
        holds a server while its request waits for a turn) — else lets go of it first (the session then asks the pool
        anew, in fair order, after its turn); the bytes for the session to read then."""
        session = self.session
        assert session is not None
        early = session.read_kept(data)
        if early is None:
            return None
        data, resume = early
        self._unkeep()
        link = self.link
        assert link is not None
        turn = session.resume_turn()
        if resume and session.may_resume() and (turn is None or self.proxy.slots.free(*turn)) and self.proxy.pool.reuse(
                link, self, session.resume_route(data)):
            link.owner, link.relay = self, self.relay
            if self._client_full and link.transport is not None:
                link.hold_reading()
            self.run(session.server_resumed())
            return data
        self._let_go_kept(link)
        self.proxy.pool.take_back(link, self)
        return data

    def message_tick(self, now: float) -> None:
        """The pool's clock, while the connection waits for or holds a server: a message begun too long ago, or an
        idle wait for the client, ends the session (ClientSession.message_tick; not idle while the socket is not
        read: the server link is full, say)."""
        if self.link is not None and not self._kept:
            paused, unread = self._reading_paused, self._unread()
            self._run_session(lambda s: s.message_tick(now, paused, unread))

    def _unread(self) -> bool:
        """The client's write buffer is full and not a byte of it was written since the last tick (the client took
        none of its output: its socket's buffers are full too); the session times it (client_write_timeout)."""
        if not self._client_full or self.transport is None:
            self._out_mark = -1
            return False
        size = self.transport.get_write_buffer_size()
        mark, self._out_mark = self._out_mark, size
        return 0 <= mark <= size

    def taken_back(self, link: ServerLink) -> None:
        """The pool takes back the server kept for this session (it needs it now, before it does anything with it)."""
        if self.link is link and self._unkeep():
            self._let_go_kept(link)

    def _let_go_kept(self, link: ServerLink) -> None:
        self.link = None
        if self.relay is not None:
            self.relay.server = None
        self._backpressure = False
        if self.session is not None:
            self.run(self.session.server_taken())

    def _pinned(self, reason: str) -> None:
        """The session is pinned to its server for `reason` (counted); a pin held past max_pin_time is logged once."""
        assert self.tenant is not None
        self.proxy.metrics.session_pinned(self.tenant.label, reason)
        if self._pinned_at is None:
            self._pinned_at = time.monotonic()
            if self.link is not None:
                self.proxy.pool.pinned(self.link, True)
            limit = self.proxy.config.pool.max_pin_time
            self._pin_timer = asyncio.get_running_loop().call_later(limit, self._pinned_long, limit)

    def _pinned_long(self, limit: float) -> None:
        self._pin_timer = None
        if not self.closed and self._pinned_at is not None:
            self.log.warning("session_pinned_long", seconds=round(time.monotonic() - self._pinned_at, 1),
                             max_pin_time=limit)

    def _batch_without_sync(self, held: bool) -> None:
        """Transaction pooling: the session's server is held by a batch waiting for its Sync (counted while it
        lasts; past max_pin_time logged once, `server_held_without_sync`), or no longer."""
        self._unsynced_timer = self._held_waiting(self._unsynced_timer, held, "sync")

    def _copy_in_held(self, held: bool) -> None:
        """Transaction pooling: the session's server is held by a COPY FROM STDIN (counted and logged the same way,
        waiting="copy_in"), or no longer."""
        self._copy_timer = self._held_waiting(self._copy_timer, held, "copy_in")

    def _held_waiting(self, timer: asyncio.TimerHandle | None, held: bool,
                      waiting: str) -> asyncio.TimerHandle | None:
        """A wait for the client that holds the server begins (`held`: counted, a timer for max_pin_time) or ends
        (no longer counted, the timer canceled); the timer that follows."""
        if held == (timer is not None) or self.tenant is None:
            return timer
        self.proxy.metrics.server_held_without_sync(self.tenant.label, held, waiting)
        if held:
            limit = self.proxy.config.pool.max_pin_time
            return asyncio.get_running_loop().call_later(limit, self._held_long, limit, time.monotonic(), waiting)
        assert timer is not None
        timer.cancel()
        return None

    def _held_long(self, limit: float, since: float, waiting: str) -> None:
        if not self.closed:
            self.log.warning("server_held_without_sync", seconds=round(time.monotonic() - since, 1),
                             max_pin_time=limit, waiting=waiting)

    def _unpinned(self) -> None:
        """The session holds nothing on its server any more (or ends): how long it was pinned."""
        if self._pin_timer is not None:
            self._pin_timer.cancel()
            self._pin_timer = None
        if self._pinned_at is not None and self.tenant is not None:
            self.proxy.metrics.session_unpinned(self.tenant.label, time.monotonic() - self._pinned_at)
            if self.link is not None:
                self.proxy.pool.pinned(self.link, False)
        self._pinned_at = None

    # --- action execution ----------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.closed and data:
            self._bytes_out += len(data)
            self.transport.write(data)

    def run(self, actions: list[Action]) -> None:
        for i, action in enumerate(actions):
            if isinstance(action, RelayToServer):
                if self.link is not None:
                    self.link.writelines(action.chunks)
            elif isinstance(action, RelayToClient):
                if self.transport is not None and not self.closed:
                    self._bytes_out += write_chunks(self.transport, action.chunks)
            elif isinstance(action, ReleaseServer):  # (these two come once per transaction in transaction pooling)
                self._release(action)
            elif isinstance(action, KeepServer):
                self._keep()
            elif isinstance(action, AcquireServer):
                self._request_server(action.request, action.route)
            elif isinstance(action, SendClient):
                self.write(action.data)
            elif isinstance(action, StartClientTls):
                assert self.transport is not None
                self.transport.pause_reading()
                self._tls_pending = True
                asyncio.get_running_loop().create_task(self._start_tls())
            elif isinstance(action, StartRelay):
                self._start_relay()
            elif isinstance(action, LoginStarted):
                if not self.authenticated:
                    self.proxy.prelogin.exchanging(self)  # a real login under way: never closed to make room
            elif isinstance(action, AdminLogin):
                self._admin_login(action.login)
            elif isinstance(action, ConnectBackend):
                self._connect_backend(action)
            elif isinstance(action, AdminQuery):
                self._admin_query(action.sql)
            elif isinstance(action, RunDecision):
                self._run_decision(action.pending)
            elif isinstance(action, ForwardCancel):
                # What follows (closing this cancel connection) waits until the backend acted on the cancel, as
                # PostgreSQL's own cancel connection does: libpq's cancel returns at that close, and the client's
                # next query must never be the one cancelled.
                task = asyncio.get_running_loop().create_task(self.proxy.forward_cancel(action, self.address))
                if rest := actions[i + 1:]:
                    task.add_done_callback(lambda _task, rest=rest: self.run(rest))
                return
            elif isinstance(action, SessionPinned):
                self._pinned(action.reason)
            elif isinstance(action, AgentAdmission):
                self._agent_admission(action)
            elif isinstance(action, AwaitAdmission):
                self._admitting = True
                self._update_reading()
            elif isinstance(action, SessionUnpinned):
                self._unpinned()
            elif isinstance(action, LimitReached):
                self._limit_reached(action)
            elif isinstance(action, AnswerWithheld):
                label = self.tenant.label if self.tenant is not None else self.proxy.metrics.tenant(None)
                self.proxy.metrics.answer_withheld(label, action.message)
                self.log.warning("answer_withheld", message=action.message)
            elif isinstance(action, LastLineGuarded):
                self.log.info("last_line_guarded")
            elif isinstance(action, CancelQuery):
                asyncio.get_running_loop().create_task(self._cancel_query())
            elif isinstance(action, AcquireSlot):
                self._acquire_slot(action)
            elif isinstance(action, ReleaseSlot):
                waiting = self.proxy.slots.release(action.tenant, action.limit)
                if waiting is not None:
                    waiting.slot_granted()  # type: ignore[attr-defined]
            elif isinstance(action, WatchLimits):
                self._limits_timer = asyncio.get_running_loop().call_later(action.period, self._limits_tick,
                                                                           action.period)
            elif isinstance(action, BatchWithoutSync):
                self._batch_without_sync(action.open)
            elif isinstance(action, CopyInHeld):
                self._copy_in_held(action.open)
            elif isinstance(action, TerminateBackend):
                self.proxy.terminate_backend(action)
            elif isinstance(action, CloseClient):
                self.close(action.error, action.reason, unread=action.unread)
                return
            else:  # pragma: no cover
                raise AssertionError(f"unexpected client action {action!r}")

    # --- per-tenant limits (proxy/limits.py) -------------------------------------------------

    def _limit_reached(self, action: LimitReached) -> None:
        """A limit refused or ended something: counted per tenant and limit, logged, audited."""
        self.proxy.metrics.limit_refused(action.tenant, action.limit)
        self.log.info("limit_reached", limit=action.limit, value=action.value)
        if self.proxy.audit is not None:
            prefix = AuditLog.fields(session_id=self.session_id, tenant=action.tenant, user=action.user,
                                     client_addr=self.address)
            self.proxy.audit.event("limit_reached", prefix, limit=action.limit, value=action.value)

    def _acquire_slot(self, action: AcquireSlot) -> None:
        """A turn among the tenant's max_concurrent_queries: now, or once another session's request ends."""
        if self.proxy.slots.acquire(action.tenant, action.limit, self):
            self._run_session(lambda s: s.slot_granted())
            return
        timer = asyncio.get_running_loop().call_later(action.timeout, self._slot_timeout)
        self._slot_wait = (action, timer)
        self._update_reading()

    def slot_granted(self) -> None:
        """QuerySlots: this connection's turn came (another session's request ended)."""
        if self._slot_wait is not None:
            self._slot_wait[1].cancel()
            self._slot_wait = None
        self._run_session(lambda s: s.slot_granted())
        self._update_reading()

    def _slot_timeout(self) -> None:
        if self._slot_wait is None:
            return
        action, _ = self._slot_wait
        self._slot_wait = None
        self.proxy.slots.withdraw(action.tenant, self)
        self._run_session(lambda s: s.slot_refused())
        self._update_reading()

    def _run_session(self, event: Callable[[ClientSession], list[Action]]) -> None:
        """Run a session event's actions (a bug of ours in it closes the connection with XX000)."""
        if self.closed or self.session is None:
            return
        try:
            self.run(event(self.session))
        except Exception:
            self.internal_error()

    async def _cancel_query(self) -> None:
        """CancelQuery: the session's own cancel key, as a client's CancelRequest; then the session hears of it."""
        connect = self._connect
        try:
            if connect is not None:  # (the proxy's own: not limited as a client's CancelRequests are)
                await self.proxy.cancel_session(self, own=True)
        finally:
            self._run_session(lambda s: s.cancel_done())

    def cancel_check(self, now: float) -> str | None:
        """A client's CancelRequest for this session, which holds a server: None to forward it, else why it is
        dropped (the session decides: ClientSession.cancel_requested)."""
        session = self.session
        return session.cancel_requested(now) if session is not None else None

    def _limits_tick(self, period: float) -> None:
        self._limits_timer = None
        if self.closed or self.session is None:
            return
        self._run_session(lambda s: s.limits_tick())
        if not self.closed:
            self._limits_timer = asyncio.get_running_loop().call_later(period, self._limits_tick, period)
    def _agent_admission(self, action: AgentAdmission) -> None:
        """An agent's statement admitted or refused by its estimate: metrics, a debug log line, an audit line."""
        self._admitting = False
        self._update_reading()
        label = self.tenant.label if self.tenant is not None else self.proxy.metrics.tenant(None)
        self.proxy.metrics.agent_admission(label, action.outcome, action.seconds)
        self.log.debug("agent_admission", outcome=action.outcome, cost=action.cost, rows=action.rows)
        if self.proxy.audit is not None:
            self.proxy.audit.admission(self._audit_fields(), action.sql, action.outcome, action.cost, action.rows,
                                       action.max_rows, action.seconds)

    def _run_decision(self, pending: Pending) -> None:
        """A decision worker decides what the session holds; the client's socket is not read meanwhile."""
        self.proxy.metrics.decision_offloaded(pending.gate.tenant.label)
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
            self._finish(reason=CloseReason.TLS_FAILED)
            return
        if new is None:
            return
        self.transport = new
        self._tls_pending = False
        self.run(self.session.tls_done())

    def _set_gauge(self, tenant: str, state: str) -> None:
        self._gauge = self.proxy.metrics.client_moved(self._gauge, (tenant, state))

    def _admin_login(self, login: Login) -> None:
        """An admin logged in to the console: no startup deadline any more; logged, counted and audited."""
        self.login, self.admin = login, True
        self._logged_in()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.log.info("auth_ok", tls=login.tls)
        self.proxy.metrics.auth_succeeded()
        if self.proxy.audit is not None:
            self.proxy.audit.event("admin_login", self._audit_fields(), tls=login.tls)

    def _admin_query(self, sql: str) -> None:
        if self.proxy.peers is not None:  # worker processes: the answer covers all of them (asked over sockets)
            self.proxy.admin_later(self.session_id, sql, lambda out, outcome: self._admin_answer(sql, out, outcome))
            return
        try:
            out = admin_console.execute(sql, AdminView(self.proxy.ops))
            outcome = "ok"
        except PgError as exc:
            out = exc.encode()
            outcome = exc.sqlstate
        self._admin_answer(sql, out, outcome)

    def _admin_answer(self, sql: str, out: bytes, outcome: str) -> None:
        if self.closed:
            return
        command = " ".join(sql.split())[:64]
        self.log.info("admin_command", command=command, outcome=outcome)
        if self.proxy.audit is not None:
            self.proxy.audit.event("admin_command", self._audit_fields(), command=command, outcome=outcome)
        self.write(out + m.ready_for_query(b"I"))

    def _on_decision(self, kind: str, sql: str, decision: Decision) -> None:
        if isinstance(decision, Deny):
            self.log.info("statement_denied", kind=kind, rule=decision.rule, sqlstate=decision.sqlstate)
            label = self.tenant.label if self.tenant is not None else self.proxy.metrics.tenant(None)
            self.proxy.metrics.statement_denied(label, decision.rule)
        elif isinstance(decision, Rewrite):
            self.log.debug("statement_rewritten", kind=kind, rules=list(decision.rules))

    def count_backend_error(self, sqlstate: str) -> None:
        """A request ended in a backend error: counted per tenant and SQLSTATE class."""
        assert self.tenant is not None
        self.proxy.metrics.backend_error(self.tenant.label, sqlstate)

    def _audit_fields(self) -> str:
        """The session's own audit fields, encoded once for all its lines."""
        login = self.login
        assert login is not None
        return AuditLog.fields(session_id=self.session_id, tenant=self.tenant.name if self.tenant else None,
                               user=login.user, application_name=login.application_name, client_addr=self.address)

    def _connect_backend(self, connect: ConnectBackend) -> None:
        self._connect, self.login = connect, connect.login
        self.tenant = tenant = self.proxy.tenant(connect.tenant)
        self._logged_in()
        self.log.info("auth_ok", tls=connect.login.tls)
        self.proxy.metrics.auth_succeeded()
        self._set_gauge(tenant.label, "connecting")
        asyncio.get_running_loop().create_task(self._attach_policy_and_connect(connect))

    async def _attach_policy_and_connect(self, connect: ConnectBackend) -> None:
        session = self.session
        assert session is not None
        if not self.proxy.holds_instance_slot():  # its cancel key would name a slot another instance holds
            self.run([CloseClient(errors.instance_slot_lost(), CloseReason.INSTANCE_SLOT_LOST)])
            return
        name, backend = connect.tenant, connect.backend
        if name not in self.proxy.policies:  # its backend was down at startup: prepare it now
            try:
                problems = await asyncio.get_running_loop().run_in_executor(None, self.proxy.prepare_tenant, name)
            except BackendCheckError as exc:
                self.log.warning("backend_failed", backend=backend.describe(), reason=str(exc))
                self.run(session.server_refused(errors.backend_unreachable(backend.name, "its check failed"),
                                                CloseReason.BACKEND))
                return
            if problems or name not in self.proxy.policies:  # fail closed: no policy, no session
                self.run([CloseClient(errors.tenant_unavailable(name), CloseReason.PREFLIGHT_FAILED)])
                return
        if self.closed:
            return
        gate = self.proxy.decider(name, connect.agent, connect.statement_timeout_ms)
        # a Parse memo holds while the gate's policy (and the session's context) stays
        session.enable_policy(gate, gate.current, gate.with_context)
        if self._timer is not None:  # logged in: from now on the pool's query_wait_timeout bounds the wait
            self._timer.cancel()
            self._timer = None
        self.run([AcquireServer(connect.request, connect.route)])

    def _logged_in(self) -> None:
        """Authentication succeeded: the connection leaves the pre-login caps and its log lines are all kept."""
        self.authenticated = True
        self.proxy.prelogin.done(self)

    def _on_timeout(self) -> None:
        self._timer = None
        if not self._spoke:
            self.close(errors.startup_timeout(), CloseReason.FIRST_MESSAGE_TIMEOUT)
        elif self.session is not None:
            self.run(self.session.timeout())

    def close(self, error: PgError | None, reason: CloseReason, *, unread: bool = False) -> None:
        """End the connection (the error first, if any); `unread` (CloseClient): a client whose write buffer is full
        is cut at once (abort), not kept open until a flush that may never come."""
        if self.closed:
            return
        self.proxy.metrics.session_closed(reason, self.proxy.config.metrics.auth_failure_detail)
        if unread:
            self.proxy.metrics.unread_closed(self.tenant.label if self.tenant is not None else None, reason)
            self.log.warning("unread_results_closed", reason=reason, client_full=self._client_full)
        if self.admin and reason is CloseReason.CLIENT_TERMINATE:
            self.log.info("admin_logout")
        if error is not None:
            if not self._tls_pending:  # never plaintext into a TLS handshake: that connection is just cut
                self.write(error.encode())
            level = "info" if reason in (CloseReason.CLIENT_TERMINATE, CloseReason.CANCEL_REQUEST) else "warning"
            self.prelog(level, "session_error", reason=reason, sqlstate=error.sqlstate, message=error.message)
        self.closed = True
        self._drop_decision()
        self._let_go(reason)
        if self.transport is not None:
            if self._tls_pending or (unread and self._client_full):
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
        if self.tenant is None or not self.proxy.metrics_enabled:
            return
        sent, received = self.bytes_out - self._bytes_reported[0], self.bytes_in - self._bytes_reported[1]
        self.proxy.metrics.client_bytes(self.tenant.label, sent, received)
        self._bytes_reported = (self.bytes_out, self.bytes_in)

    def _finish(self, reason: CloseReason | None = None) -> None:
        self.proxy.prelogin.done(self)
        self.flush_bytes()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._limits_timer is not None:
            self._limits_timer.cancel()
            self._limits_timer = None
        if self._gauge is not None:
            self._gauge = self.proxy.metrics.client_moved(self._gauge, None)
        if self in self.proxy.clients:
            self.proxy.clients.discard(self)
            if self.session is not None:
                if self._connect is not None:
                    self.proxy.cancels.unregister(*self._connect.cancel_key)
                if reason is not CloseReason.CANCEL_REQUEST:  # (a CancelRequest comes before any user)
                    self.prelog(
                        "info",
                        "connection_closed",
                        reason=reason,
                        duration_s=round(time.monotonic() - self.started, 3),
                        bytes_in=self.bytes_in,
                        bytes_out=self.bytes_out,
                    )
        self.proxy.client_finished()


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The IP address of a connection's socket peer ("local" for a Unix-domain socket)."""
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) else str(peer or "local")
