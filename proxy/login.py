"""A client's startup and authentication (SSL/GSSENC negotiation, CancelRequest, StartupMessage, SCRAM), and the
admin console's reads, as a state machine of its own; it hands a tenant's user over to the session; no I/O."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from proxy import agent, errors
from proxy.actions import (
    Action,
    AdminLogin,
    AdminQuery,
    CloseClient,
    ForwardCancel,
    Login,
    LoginStarted,
    SendClient,
    StartClientTls,
)
from proxy.admin import ADMIN_DATABASE
from proxy.auth.scram import AuthFailed, ScramServerExchange
from proxy.auth.throttle import AuthThrottle
from proxy.cancel import client_key
from proxy.config import AgentConfig, BackendConfig, Config, TenantConfig, UserConfig
from proxy.errors import PgError
from proxy.protocol import messages as m
from proxy.protocol.stream import ALL_TYPES, FramingError, Message, MessageStream
from proxy.reasons import CloseReason
from proxy.startup import backend_parameters, end_user_claim

_MAX_LOGIN_MESSAGE = 65535  # PostgreSQL's own limit for messages before authentication completes
E = TypeVar("E", bound=enum.Enum)  # a machine's states
V = TypeVar("V", bound=enum.Enum)  # ... and its events


class SessionError(Exception):
    """Raised inside a client state machine (the login's, the session's); carries the client-facing error."""

    def __init__(self, error: PgError, reason: CloseReason) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


def next_state(table: Mapping[tuple[E, V], E], state: E, event: V) -> E:
    """A client machine's next state (the login's, the session's); an event its state has no row for is a protocol
    violation."""
    nxt = table.get((state, event))
    if nxt is None:
        raise SessionError(errors.protocol_violation(f"unexpected {event.value} in state {state.value}"),
                           CloseReason.unexpected(event.value))
    return nxt


def unreadable(exc: SessionError | FramingError | m.DecodeError, cap: int) -> SessionError:
    """What the client sent cannot be read (`cap`: the stream's message size limit): the error PostgreSQL would
    send, and why."""
    if isinstance(exc, SessionError):
        return exc
    if isinstance(exc, FramingError):
        err = errors.message_too_large(exc.length, cap) if exc.too_large else errors.protocol_violation(str(exc))
        return SessionError(err, CloseReason.FRAMING)
    return SessionError(errors.protocol_violation(str(exc)), CloseReason.DECODE)


@dataclass(slots=True)
class SessionInfo:
    """What is known about the client, for logs, metrics and the admin console."""

    session_id: str
    client_address: str
    tls: bool = False
    user: str | None = None
    tenant: str | None = None
    application_name: str | None = None
    database: str | None = None
    tx_status: bytes = b"I"
    startup_parameters: dict[str, str] = field(default_factory=dict)
    protocol_minor: int = 0  # the protocol version agreed on: 3.0, or 3.2 (a longer cancel key)


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """A tenant's user authenticated, its database and startup parameters accepted: what the session starts from."""

    user_config: UserConfig
    tenant: TenantConfig
    backend: BackendConfig
    parameters: dict[str, str]  # the startup parameters the backend may see (proxy/startup.py)
    agent: AgentConfig | None  # the agent profile's limits (an agent user)
    end_user: str | None  # a claim from the startup packet (pgtenant.end_user), for the audit


class LoginState(enum.Enum):
    STARTUP = "startup"  # waiting for SSLRequest / GSSENCRequest / CancelRequest / StartupMessage
    TLS_HANDSHAKE = "tls_handshake"  # 'S' sent; the driver runs the TLS handshake
    SASL_INITIAL = "sasl_initial"  # AuthenticationSASL sent; waiting for SASLInitialResponse
    SASL_CONTINUE = "sasl_continue"  # AuthenticationSASLContinue sent; waiting for SASLResponse
    AUTHENTICATED = "authenticated"  # a tenant's user logged in: handed over to the session (`logged_in`)
    ADMIN = "admin"  # the admin console: simple queries answered by the proxy itself
    CLOSED = "closed"


class LoginEvent(enum.Enum):
    SSL_REQUEST = "ssl_request"
    GSSENC_REQUEST = "gssenc_request"
    CANCEL_REQUEST = "cancel_request"
    STARTUP_MESSAGE = "startup_message"
    TLS_DONE = "tls_done"
    SASL_RESPONSE = "sasl_response"
    AUTH_OK = "auth_ok"
    ADMIN_OK = "admin_ok"
    TIMEOUT = "timeout"
    CLOSE = "close"


# The login as data: (state, event) -> next state. Anything else is a protocol violation.
TRANSITIONS: dict[tuple[LoginState, LoginEvent], LoginState] = {
    (LoginState.STARTUP, LoginEvent.SSL_REQUEST): LoginState.TLS_HANDSHAKE,
    (LoginState.STARTUP, LoginEvent.GSSENC_REQUEST): LoginState.STARTUP,
    (LoginState.STARTUP, LoginEvent.CANCEL_REQUEST): LoginState.CLOSED,
    (LoginState.STARTUP, LoginEvent.STARTUP_MESSAGE): LoginState.SASL_INITIAL,
    (LoginState.TLS_HANDSHAKE, LoginEvent.TLS_DONE): LoginState.STARTUP,
    (LoginState.SASL_INITIAL, LoginEvent.SASL_RESPONSE): LoginState.SASL_CONTINUE,
    (LoginState.SASL_CONTINUE, LoginEvent.AUTH_OK): LoginState.AUTHENTICATED,
    (LoginState.SASL_CONTINUE, LoginEvent.ADMIN_OK): LoginState.ADMIN,
}
for _s in (LoginState.STARTUP, LoginState.TLS_HANDSHAKE, LoginState.SASL_INITIAL, LoginState.SASL_CONTINUE):
    TRANSITIONS[(_s, LoginEvent.TIMEOUT)] = LoginState.CLOSED  # the startup/authentication deadline
for _s in LoginState:
    TRANSITIONS[(_s, LoginEvent.CLOSE)] = LoginState.CLOSED


class ClientLogin:
    """One client's way in. Feed it bytes and events; it returns actions. Once `state` is AUTHENTICATED,
    `logged_in` says who; in ADMIN it goes on reading the admin console's queries; CLOSED, the client is refused."""

    __slots__ = ("_auth_pending", "_buf", "_challenged", "channel_binding", "clock", "config", "info", "is_admin",
                 "key", "logged_in", "scram", "state", "stream", "throttle", "tls_available")

    def __init__(self, config: Config, info: SessionInfo, *, key: tuple[int, bytes], throttle: AuthThrottle,
                 clock: Callable[[], float], tls_available: bool,
                 channel_binding: Callable[[], bytes | None] = lambda: None) -> None:
        self.config = config  # (replaced by the session's `reconfigure`: a reload during a login counts)
        self.info = info  # the session's own: the login fills it in
        self.key = key  # the session's cancel key (the admin console's BackendKeyData)
        self.state = LoginState.STARTUP
        self.throttle = throttle
        self.clock = clock
        self.tls_available = tls_available
        self.channel_binding = channel_binding
        self.scram: ScramServerExchange | None = None
        self.is_admin = False
        self.logged_in: LoggedIn | None = None
        self._buf = b""  # a startup packet's first bytes
        self._auth_pending = False  # admitted by the throttle, not yet settled (success or failure)
        self._challenged = False  # the client has had the SCRAM server-first
        self.stream = MessageStream(intercept=ALL_TYPES,
                                    max_length=min(_MAX_LOGIN_MESSAGE, config.limits.max_message_length))

    # --- state machine plumbing ------------------------------------------------------------

    def _transition(self, event: LoginEvent) -> None:
        self.state = next_state(TRANSITIONS, self.state, event)

    def _fail(self, exc: SessionError) -> list[Action]:
        self._transition(LoginEvent.CLOSE)
        return [CloseClient(exc.error, exc.reason)]

    # --- inputs ----------------------------------------------------------------------------

    def data(self, data: bytes) -> list[Action]:
        """Bytes from the client socket."""
        try:
            handler = _ON_DATA.get(self.state)
            if handler is None:  # TLS_HANDSHAKE: the client must wait for our answer
                raise SessionError(
                    errors.protocol_violation(f"unexpected data from client during {self.state.value}"),
                    CloseReason.UNEXPECTED_DATA,
                )
            return handler(self, data)
        except (SessionError, FramingError, m.DecodeError) as exc:
            return self._fail(unreadable(exc, self.stream.max_length))

    def tls_done(self) -> list[Action]:
        """Event: the client's TLS handshake completed."""
        try:
            self._transition(LoginEvent.TLS_DONE)
        except SessionError as exc:
            return self._fail(exc)
        self.info.tls = True
        return []

    def timeout(self) -> list[Action]:
        """The startup/authentication deadline passed."""
        if (self.state, LoginEvent.TIMEOUT) not in TRANSITIONS:  # logged in (or gone): no deadline
            return []
        self._transition(LoginEvent.TIMEOUT)
        return [CloseClient(errors.startup_timeout(), CloseReason.STARTUP_TIMEOUT)]

    def close(self) -> None:
        """Event: the client connection is gone."""
        if self._challenged:  # a client leaving after our challenge was probing (psql leaves before it: not counted)
            self._settle_auth()
        self._auth_pending = False
        self._transition(LoginEvent.CLOSE)

    def _ignore(self, _data: bytes) -> list[Action]:
        """A read after the login ended (refused, or handed over): nothing to do."""
        return []

    # --- startup ---------------------------------------------------------------------------

    def _startup_data(self, data: bytes) -> list[Action]:
        buf = self._buf + data
        if len(buf) < 4:
            self._buf = buf
            return []
        length = m.startup_packet_length(buf)
        if len(buf) < length:
            self._buf = buf
            return []
        packet, rest = buf[:length], buf[length:]
        self._buf = b""
        decoded = m.decode_startup_packet(packet)
        actions = self._startup_packet(decoded)
        if rest:
            if self.state is LoginState.TLS_HANDSHAKE:
                # Bytes after SSLRequest before our 'S' could be injected plaintext (CVE-2021-23222).
                raise SessionError(errors.unencrypted_data_after("SSL request"), CloseReason.SSL_INJECTION)
            if isinstance(decoded, (m.SSLRequest, m.GSSENCRequest)):  # answered 'N': PostgreSQL refuses them too
                what = "SSL request" if isinstance(decoded, m.SSLRequest) else "GSSAPI encryption request"
                refused = SessionError(errors.unencrypted_data_after(what), CloseReason.SSL_INJECTION)
                return [*actions, *self._fail(refused)]
            if self.state is LoginState.CLOSED:
                return actions
            actions += self.data(rest)
        return actions

    def _startup_packet(self, packet: m.StartupPacket) -> list[Action]:
        if isinstance(packet, m.SSLRequest):
            if self.info.tls:
                raise SessionError(errors.protocol_violation("SSL request on an encrypted connection"),
                                   CloseReason.SSL_TWICE)
            if not self.tls_available:
                return [SendClient(m.SSL_REFUSED)]
            self._transition(LoginEvent.SSL_REQUEST)
            return [SendClient(m.SSL_ACCEPTED), StartClientTls()]
        if isinstance(packet, m.GSSENCRequest):
            self._transition(LoginEvent.GSSENC_REQUEST)
            return [SendClient(m.SSL_REFUSED)]
        if isinstance(packet, m.CancelRequest):
            self._transition(LoginEvent.CANCEL_REQUEST)
            return [ForwardCancel(packet.process_id, packet.secret_key),
                    CloseClient(None, CloseReason.CANCEL_REQUEST)]
        return self._startup_message(packet)

    def _startup_message(self, msg: m.StartupMessage) -> list[Action]:
        if msg.major != 3:
            raise SessionError(errors.unsupported_protocol(msg.major, msg.minor), CloseReason.PROTOCOL_VERSION)
        self._transition(LoginEvent.STARTUP_MESSAGE)
        if self.config.tls.require and not self.info.tls:
            raise SessionError(errors.tls_required(), CloseReason.TLS_REQUIRED)
        params = msg.parameters
        self.info.startup_parameters = dict(params)
        user = params.get("user", "")
        if not user:
            raise SessionError(errors.no_user(), CloseReason.NO_USER)
        self.info.user = user
        self.info.application_name = params.get("application_name")
        self.info.database = params.get("database") or user
        actions: list[Action] = []
        # 3.2 when asked for 3.2 or later (as PostgreSQL 18), else 3.0 (3.1 was never defined); a version or
        # `_pq_.` options not taken as asked are named in a NegotiateProtocolVersion.
        self.info.protocol_minor = 2 if msg.minor >= 2 else 0
        if msg.minor != self.info.protocol_minor or msg.protocol_options:
            version = m.PROTOCOL_3_2 if self.info.protocol_minor == 2 else m.PROTOCOL_3_0
            actions.append(SendClient(m.negotiate_protocol_version(version, sorted(msg.protocol_options))))
        # The same work, in the same order, whether the user exists or not (the tenant is resolved only once
        # the proof is accepted): nothing in the timing of any reply tells the two apart.
        config = self.config
        refusal = self.throttle.admit(self.info.client_address, user, self.clock())
        if refusal is not None:
            raise SessionError(errors.auth_throttled(user, refusal.retry_after),
                               CloseReason.auth_throttled(refusal.limit))
        self._auth_pending = True
        self.is_admin = user in config.admin.users
        cb = self.channel_binding() if self.info.tls else None
        self.scram = ScramServerExchange(
            config.verifiers.get(user), username=user, mock_secret=config.auth_mock_secret, channel_binding=cb,
            mock_iterations=config.iteration_profile,
        )
        actions.append(SendClient(m.authentication_sasl(self.scram.mechanisms())))
        actions.append(LoginStarted())
        return actions

    # --- authentication ---------------------------------------------------------------------

    def _auth_data(self, data: bytes) -> list[Action]:
        actions: list[Action] = []
        for item in self.stream.feed(data):
            assert isinstance(item, Message)
            if self.state not in (LoginState.SASL_INITIAL, LoginState.SASL_CONTINUE):
                raise SessionError(errors.protocol_violation("unexpected message during authentication"),
                                   CloseReason.AUTH_EXTRA)
            if item.type != m.PASSWORD:
                raise SessionError(
                    errors.protocol_violation(f"expected SASL response, got message type {item.type}"),
                    CloseReason.AUTH_UNEXPECTED,
                )
            actions += self._sasl_message(item.body)
        return actions

    def _sasl_message(self, body: bytes) -> list[Action]:
        assert self.scram is not None and self.info.user is not None
        user = self.info.user
        try:
            if self.state is LoginState.SASL_INITIAL:
                init = m.SASLInitialResponse.decode(body)
                server_first = self.scram.client_first(init.mechanism, init.data)
                self._transition(LoginEvent.SASL_RESPONSE)
                self._challenged = True
                return [SendClient(m.authentication(m.AUTH_SASL_CONTINUE, server_first))]
            # Checked again before the proof is looked at: the budget may have been spent by logins that started
            # alongside this one. Then the guess gets no answer.
            refusal = self.throttle.admit(self.info.client_address, user, self.clock())
            if refusal is not None:
                self._auth_pending = False
                raise SessionError(errors.auth_throttled(user, refusal.retry_after),
                                   CloseReason.auth_throttled(refusal.limit))
            server_final = self.scram.client_final(body)
        except (AuthFailed, m.DecodeError) as exc:
            reason = exc.reason if isinstance(exc, AuthFailed) else "malformed"
            self._settle_auth()
            raise SessionError(errors.auth_failed(user), CloseReason.auth_failed(reason)) from exc
        self._auth_pending = False
        self.scram = None  # (done with: an idle session holds no login state)
        self.throttle.succeeded(self.info.client_address, user, self.clock())
        db = self.info.database or user
        actions: list[Action] = [
            SendClient(m.authentication(m.AUTH_SASL_FINAL, server_final) + m.authentication(m.AUTH_OK))
        ]
        if self.is_admin:
            if db != ADMIN_DATABASE:
                raise SessionError(errors.database_not_allowed(db), CloseReason.DATABASE_NOT_ALLOWED)
            self._transition(LoginEvent.ADMIN_OK)
            self.info.tenant = None
            status = m.parameter_status("server_version", "15.0 (pgtenant admin)") + m.parameter_status(
                "client_encoding", "UTF8"
            ) + m.parameter_status("standard_conforming_strings", "on")
            key = m.backend_key_data(*client_key(self.key, self.info.protocol_minor))
            return [*actions, SendClient(status + key + m.ready_for_query(b"I")),
                    AdminLogin(self.login())]
        found = self.config.user_tenant(user)
        if found is None:  # a reload removed the user during its login
            raise SessionError(errors.user_removed(user), CloseReason.USER_REMOVED)
        user_config, tenant, backend = found
        self.info.tenant = tenant.name
        if db not in tenant.client_database_names and db != user:
            raise SessionError(errors.database_not_allowed(db), CloseReason.DATABASE_NOT_ALLOWED)
        params, err = backend_parameters(self.info.startup_parameters, self.config.allowed_parameters)
        if err is not None:
            raise SessionError(err, CloseReason.STARTUP_PARAMETER)
        agent_limits = self.config.agent_limits(user)
        if agent_limits is not None and (err := agent.startup_refusal(params)) is not None:
            raise SessionError(err, CloseReason.STARTUP_PARAMETER)
        for given in (self.info.startup_parameters, params):  # (the packet's own, and what `options` set)
            if (err := agent.door_refusal(user, given, agent_limits)) is not None:
                raise SessionError(err, CloseReason.STARTUP_PARAMETER)
        self._transition(LoginEvent.AUTH_OK)
        self.logged_in = LoggedIn(user_config, tenant, backend, params, agent_limits,
                                  end_user_claim(self.info.startup_parameters))
        return actions

    def login(self) -> Login:
        """Who logged in, for the I/O layer's logs, metrics and audit."""
        assert self.info.user is not None
        return Login(self.info.user, self.info.application_name, self.info.tls)

    def _settle_auth(self) -> None:
        """An admitted login failed: it counts in the failed-login budgets (once)."""
        if self._auth_pending:
            self._auth_pending = False
            assert self.info.user is not None
            self.throttle.failed(self.info.client_address, self.info.user, self.clock())

    # --- the admin console ------------------------------------------------------------------

    def _admin_data(self, data: bytes) -> list[Action]:
        actions: list[Action] = []
        for item in self.stream.feed(data):
            assert isinstance(item, Message)
            if item.type == m.TERMINATE:
                self._transition(LoginEvent.CLOSE)
                return [*actions, CloseClient(None, CloseReason.CLIENT_TERMINATE)]
            if item.type != m.QUERY:
                raise SessionError(
                    errors.protocol_violation("the pgtenant admin console supports only the simple query protocol"),
                    CloseReason.ADMIN_EXTENDED,
                )
            actions.append(AdminQuery(m.Query.decode(item.body).sql))
        return actions


# What a read from the client does, per state (a state without a handler expects no data: 08P01).
_ON_DATA: dict[LoginState, Callable[[ClientLogin, bytes], list[Action]]] = {
    LoginState.STARTUP: ClientLogin._startup_data,
    LoginState.SASL_INITIAL: ClientLogin._auth_data,
    LoginState.SASL_CONTINUE: ClientLogin._auth_data,
    LoginState.ADMIN: ClientLogin._admin_data,
    LoginState.CLOSED: ClientLogin._ignore,
}
