"""The server connection state machine: TLS negotiation, startup and auth toward PostgreSQL; no I/O."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from typing import Any

from proxy import errors
from proxy.actions import Action, SendServer, ServerFailed, ServerQueryDone, ServerReady, StartServerTls
from proxy.auth.backend import BackendAuthenticator, BackendAuthError
from proxy.config import BackendConfig
from proxy.protocol import messages as m
from proxy.protocol.stream import ALL_TYPES, FramingError, Message, MessageStream


class ServerState(enum.Enum):
    SSL_NEGOTIATION = "ssl_negotiation"  # SSLRequest sent; waiting for 'S' or 'N'
    TLS_HANDSHAKE = "tls_handshake"
    STARTUP = "startup"  # StartupMessage sent; authentication and parameter statuses
    READY = "ready"  # idle in the pool (nothing may arrive), or held by a session (its relay reads the socket)
    QUERYING = "querying"  # the proxy's own query (reset, check, settings) sent; its answer is read here
    FAILED = "failed"


class ServerEvent(enum.Enum):
    SSL_ACCEPTED = "ssl_accepted"
    SSL_REFUSED = "ssl_refused"
    TLS_DONE = "tls_done"
    READY_FOR_QUERY = "ready_for_query"
    QUERY = "query"
    FAIL = "fail"


TRANSITIONS: dict[tuple[ServerState, ServerEvent], ServerState] = {
    (ServerState.SSL_NEGOTIATION, ServerEvent.SSL_ACCEPTED): ServerState.TLS_HANDSHAKE,
    (ServerState.SSL_NEGOTIATION, ServerEvent.SSL_REFUSED): ServerState.STARTUP,
    (ServerState.TLS_HANDSHAKE, ServerEvent.TLS_DONE): ServerState.STARTUP,
    (ServerState.STARTUP, ServerEvent.READY_FOR_QUERY): ServerState.READY,
    (ServerState.READY, ServerEvent.QUERY): ServerState.QUERYING,
    (ServerState.QUERYING, ServerEvent.READY_FOR_QUERY): ServerState.READY,
}
for _s in ServerState:
    TRANSITIONS[(_s, ServerEvent.FAIL)] = ServerState.FAILED


class ServerProtocolError(Exception):
    pass


# What the proxy's own queries answer: (message type, body) in order; a body of None matches any.
Transcript = list[tuple[int, bytes | None]]
_READY_IDLE = (m.READY_FOR_QUERY, b"I")


def _matches(answer: Transcript, expect: Transcript) -> bool:
    """Whether `answer` is exactly `expect` (a None body in `expect`: any body of that type)."""
    return len(answer) == len(expect) and all(
        t == et and (eb is None or b == eb) for (t, b), (et, eb) in zip(answer, expect, strict=True))
CHECK_QUERY = ";"
_CHECK_ANSWER: Transcript = [(m.EMPTY_QUERY_RESPONSE, b""), _READY_IDLE]
RESET_QUERY = "DISCARD ALL"


class ServerConnection:
    """One connection from the proxy to a PostgreSQL backend, up to ReadyForQuery."""

    def __init__(
        self,
        backend: BackendConfig,
        database: str,
        parameters: dict[str, str],
        *,
        channel_binding: Callable[[], bytes | None] = lambda: None,
    ) -> None:
        self.backend = backend
        self.database = database
        self.parameters = parameters
        self.channel_binding = channel_binding
        # The first state: TLS negotiation first unless sslmode is disable (initiate sends what it asks for).
        self.state = ServerState.STARTUP if backend.sslmode == "disable" else ServerState.SSL_NEGOTIATION
        self.status: dict[str, str] = {}  # the server's ParameterStatus values as last reported
        # Session settings some client applied on it beyond its startup parameters: name -> the exact statement
        # that was sent ({} after DISCARD ALL / RESET ALL); kept up to date by the session holding it.
        self.settings: dict[str, str] = {}
        self.prepared: dict[str, object] = {}  # statements the proxy prepared on it (proxy/statements.py)
        self.process_id = 0
        self.secret_key = b""
        self.notices: list[bytes] = []
        self.tls = False
        # Plain data of a pooled server, read and updated by the sessions that hold it (issue 16's contract).
        self.id = 0  # the pool's number for it
        self.created = 0.0
        self.last_used = 0.0
        self.settings: dict[str, str] = {}  # session settings a client applied: name -> the SET text sent
        self.prepared: dict[str, Any] = {}  # statements prepared on it by the proxy (proxy/statements.py)
        # The mark (proxy/sequences.py Mark) of the session whose writes or reads may have left sequence state on it
        # (a column default's or a view's nextval(): what currval()/lastval() read), None when there is none
        self.sequences: object = None
        self.replica: str | None = None  # a replica's server: its name (the pool sets it; None: the primary)
        self._expect: Transcript = []  # the answer the proxy's own query must get
        self._answer: Transcript = []
        # (index, body) of the reset's DATA_ROW from a backend that has a temporary schema (`reset`), else None
        self._temp_schema: tuple[int, bytes] | None = None
        self._error: errors.PgError | None = None
        self._auth: BackendAuthenticator | None = None
        self._stream = MessageStream(intercept=ALL_TYPES, max_length=1 << 24)
        # What a read from the backend does, per state (a state without a handler expects no data).
        self._on_data: dict[ServerState, Callable[[bytes], list[Action]]] = {
            ServerState.SSL_NEGOTIATION: self._ssl_answer,
            ServerState.STARTUP: self._startup_data,
            ServerState.QUERYING: self._query_data,
        }
        # What each backend message does during startup, by type (any other type is a protocol error).
        self._on_message: dict[int, Callable[[Message], list[Action]]] = {
            m.AUTHENTICATION: self._on_authentication,
            m.PARAMETER_STATUS: self._on_parameter_status,
            m.BACKEND_KEY_DATA: self._on_backend_key_data,
            m.NOTICE_RESPONSE: self._on_notice,
            m.NEGOTIATE_PROTOCOL_VERSION: self._on_negotiate_protocol_version,
            m.ERROR_RESPONSE: self._on_error_response,
            m.READY_FOR_QUERY: self._on_ready_for_query,
        }

    def row(self) -> tuple[str, str, str, int, bool, str]:
        """The connection as plain data: backend name, role, database, backend pid, TLS, state."""
        return (self.backend.name, self.backend.user, self.database, self.process_id, self.tls, self.state.value)

    def _transition(self, event: ServerEvent) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise ServerProtocolError(f"unexpected {event.value} from backend in state {self.state.value}")
        self.state = nxt

    def initiate(self) -> list[Action]:
        """The socket is connected: the SSLRequest, or the StartupMessage when sslmode is disable."""
        if self.state is ServerState.STARTUP:
            return [SendServer(self._startup())]
        return [SendServer(m.encode_ssl_request())]

    def _startup(self) -> bytes:
        params = {"user": self.backend.user, "database": self.database, **self.parameters}
        self._auth = BackendAuthenticator(self.backend.user, self.backend.password, channel_binding=None)
        return m.encode_startup_message(params)

    def tls_done(self) -> list[Action]:
        self._transition(ServerEvent.TLS_DONE)
        self.tls = True
        params = {"user": self.backend.user, "database": self.database, **self.parameters}
        self._auth = BackendAuthenticator(
            self.backend.user, self.backend.password, channel_binding=self.channel_binding()
        )
        return [SendServer(m.encode_startup_message(params))]

    def data(self, data: bytes) -> list[Action]:
        try:
            return self._data(data)
        except (ServerProtocolError, BackendAuthError, m.DecodeError, FramingError, ValueError) as exc:
            self._transition(ServerEvent.FAIL)
            return [ServerFailed(str(exc))]

    def _data(self, data: bytes) -> list[Action]:
        handler = self._on_data.get(self.state)
        if handler is None:
            raise ServerProtocolError(f"unexpected data from backend in state {self.state.value}")
        return handler(data)

    # --- the proxy's own queries on a pooled server ------------------------------------------------

    def reset(self) -> list[Action]:
        """DISCARD ALL, then a query of a random value: only the server's own answer to both, first on the wire,
        proves that nothing of the last client is still on its way (a tail of its results could mimic the first).
        The same query asks for the session's temporary schema: once a backend has one it keeps it (empty) after
        DISCARD ALL, and `current_schemas(true)` and `pg_my_temp_schema()` show it; such a server is not like a new
        one, so it is closed: told apart from a failed reset (`ServerQueryDone.temp_schema`), it is not one."""
        nonce = secrets.token_hex(16)
        expect: Transcript = [
            (m.COMMAND_COMPLETE, b"DISCARD ALL\x00"), _READY_IDLE,
            (m.ROW_DESCRIPTION, None), (m.DATA_ROW, m.data_row([nonce.encode(), b"f"])[5:]),
            (m.COMMAND_COMPLETE, b"SELECT 1\x00"), _READY_IDLE,
        ]
        self.settings.clear()
        self.prepared.clear()
        self.sequences = None
        actions = self._query([RESET_QUERY, f"SELECT '{nonce}', pg_catalog.pg_my_temp_schema() <> 0"], expect)
        self._temp_schema = (3, m.data_row([nonce.encode(), b"t"])[5:])  # the answer of a backend that has one
        return actions

    def check(self) -> list[Action]:
        """The health check of a server that was idle long: an empty query."""
        return self._query([CHECK_QUERY], list(_CHECK_ANSWER))

    def apply(self, statements: list[str]) -> list[Action]:
        """Session settings (SET statements, one query) applied for a client; each must answer SET."""
        return self._query(["; ".join(statements)], [*[(m.COMMAND_COMPLETE, b"SET\x00")] * len(statements),
                                                      _READY_IDLE])

    def _query(self, queries: list[str], expect: Transcript) -> list[Action]:
        self._transition(ServerEvent.QUERY)
        self._expect, self._answer, self._error, self._temp_schema = expect, [], None, None
        return [SendServer(b"".join(m.query_message(q) for q in queries))]

    def _query_data(self, data: bytes) -> list[Action]:
        items = self._stream.feed(data)
        for i, item in enumerate(items):
            assert isinstance(item, Message)
            if item.type == m.PARAMETER_STATUS:
                self._on_parameter_status(item)
            elif item.type == m.ERROR_RESPONSE:
                fields = m.decode_error_fields(item.body)
                if self._error is None:
                    self._error = errors.backend_error(fields)
                self._answer.append((item.type, None))
            elif item.type != m.NOTICE_RESPONSE:
                self._answer.append((item.type, bytes(item.body)))
            if item.type != m.READY_FOR_QUERY:
                continue
            if sum(1 for t, _ in self._answer if t == m.READY_FOR_QUERY) < sum(
                    1 for t, _ in self._expect if t == m.READY_FOR_QUERY):
                continue
            if self._stream.pending or i + 1 < len(items):
                raise ServerProtocolError("backend sent data after the answer to pgtenant's query")
            self._transition(ServerEvent.READY_FOR_QUERY)
            ok = _matches(self._answer, self._expect)
            if not ok and self._temp_schema is not None:
                at, row = self._temp_schema
                kept = [*self._expect[:at], (m.DATA_ROW, row), *self._expect[at + 1:]]
                if _matches(self._answer, kept):
                    return [ServerQueryDone(False, None, temp_schema=True)]
            return [ServerQueryDone(ok, self._error)]
        return []

    def _ssl_answer(self, data: bytes) -> list[Action]:
        answer, rest = data[:1], data[1:]
        if rest:
            raise ServerProtocolError("received unencrypted data after SSL request")
        if answer == m.SSL_ACCEPTED:
            self._transition(ServerEvent.SSL_ACCEPTED)
            return [StartServerTls()]
        if answer == m.SSL_REFUSED:
            if self.backend.sslmode != "prefer":
                raise ServerProtocolError(f"server does not support TLS (sslmode={self.backend.sslmode})")
            self._transition(ServerEvent.SSL_REFUSED)
            return [SendServer(self._startup())]
        if answer == m.SSL_ERROR:
            raise ServerProtocolError("server rejected the SSL request")
        raise ServerProtocolError(f"unexpected answer {answer!r} to SSL request")

    def _startup_data(self, data: bytes) -> list[Action]:
        actions: list[Action] = []
        for item in self._stream.feed(data):
            assert isinstance(item, Message)
            actions += self._message(item)
            if self.state is ServerState.READY:
                if self._stream.pending:
                    raise ServerProtocolError("backend sent data after ReadyForQuery during startup")
                break
        return actions

    def _message(self, msg: Message) -> list[Action]:
        handler = self._on_message.get(msg.type)
        if handler is None:
            raise ServerProtocolError(f"unexpected message type {chr(msg.type)!r} from backend during startup")
        return handler(msg)

    def _on_authentication(self, msg: Message) -> list[Action]:
        assert self._auth is not None
        reply = self._auth.on_auth_request(msg.body)
        return [SendServer(reply)] if reply else []

    def _on_parameter_status(self, msg: Message) -> list[Action]:
        name, value = m.decode_parameter_status(msg.body)
        self.status[name] = value
        return []

    def _on_backend_key_data(self, msg: Message) -> list[Action]:
        self.process_id, self.secret_key = m.decode_backend_key_data(msg.body)
        return []

    def _on_notice(self, msg: Message) -> list[Action]:
        self.notices.append(msg.raw())
        return []

    def _on_negotiate_protocol_version(self, _msg: Message) -> list[Action]:
        return []

    def _on_error_response(self, msg: Message) -> list[Action]:
        fields = m.decode_error_fields(msg.body)
        self._transition(ServerEvent.FAIL)
        error = errors.backend_error(fields)  # its SQLSTATE reaches the client
        return [ServerFailed(f"{fields.get('C', '')} {fields.get('M', 'error')}".strip(), error)]

    def _on_ready_for_query(self, _msg: Message) -> list[Action]:
        self._transition(ServerEvent.READY_FOR_QUERY)
        return [ServerReady(dict(self.status), self.process_id, self.secret_key, self.notices)]
