"""Why a client connection closed: one enum whose members carry the metric labels they are counted under."""

from __future__ import annotations

import enum

# pgtenant_auth_attempts_total{reason} of a failure the client sees as one 28P01, unless
# metrics.auth_failure_detail asks for the exact reason.
INVALID_CREDENTIALS = "invalid_credentials"


class CloseReason(enum.StrEnum):
    """The value is what the logs say (`session_error`, `connection_closed`). `auth` is the (outcome, reason) of
    pgtenant_auth_attempts_total a close counts in, `limit` the label of pgtenant_auth_throttled_total (a throttled
    login) or of pgtenant_prelogin_closed_total (a pre-login cap), `private` marks the auth reasons reported as
    `invalid_credentials` unless asked."""

    auth: tuple[str, str] | None
    limit: str | None
    prelogin: bool
    private: bool

    def __new__(cls, value: str, auth: tuple[str, str] | None = None, limit: str | None = None,
                prelogin: bool = False, private: bool = False) -> CloseReason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.auth = auth
        member.limit = limit
        member.prelogin = prelogin
        member.private = private
        return member

    # the client ends it
    CLIENT_TERMINATE = "client_terminate"
    CLIENT_DISCONNECTED = "client_disconnected"
    CLIENT_GONE = "client_gone"  # a server connection whose client left
    CANCEL_REQUEST = "cancel_request"
    # the protocol
    TLS_FAILED = "tls_failed"
    SSL_INJECTION = "ssl_injection"
    SSL_TWICE = "ssl_twice"
    FRAMING = "framing"
    PROXY_HEADER = "proxy_header"  # a PROXY protocol header nobody trusted (server.proxy_protocol_from)
    DECODE = "decode"
    UNEXPECTED_DATA = "unexpected_data"
    AUTH_EXTRA = "auth_extra"
    AUTH_UNEXPECTED = "auth_unexpected"
    ADMIN_EXTENDED = "admin_extended"
    PROTOCOL_VERSION = "protocol_version"
    # an event a client transition table has no row for (login.LoginEvent and session.Event values)
    UNEXPECTED_SSL_REQUEST = "unexpected_ssl_request"
    UNEXPECTED_GSSENC_REQUEST = "unexpected_gssenc_request"
    UNEXPECTED_CANCEL_REQUEST = "unexpected_cancel_request"
    UNEXPECTED_STARTUP_MESSAGE = "unexpected_startup_message"
    UNEXPECTED_TLS_DONE = "unexpected_tls_done"
    UNEXPECTED_SASL_RESPONSE = "unexpected_sasl_response"
    UNEXPECTED_AUTH_OK = "unexpected_auth_ok"
    UNEXPECTED_ADMIN_OK = "unexpected_admin_ok"
    UNEXPECTED_SERVER_ATTACHED = "unexpected_server_attached"
    UNEXPECTED_SERVER_REFUSED = "unexpected_server_refused"
    UNEXPECTED_SERVER_RELEASED = "unexpected_server_released"
    UNEXPECTED_REQUEST = "unexpected_request"
    UNEXPECTED_CLOSE = "unexpected_close"
    UNEXPECTED_TIMEOUT = "unexpected_timeout"
    # login refused
    NO_USER = "no_user"
    TLS_REQUIRED = "tls_required", ("refused", "tls_required")
    DATABASE_NOT_ALLOWED = "database_not_allowed", ("refused", "database_not_allowed")
    STARTUP_PARAMETER = "startup_parameter", ("refused", "startup_parameter")
    STARTUP_TIMEOUT = "startup_timeout", ("refused", "startup_timeout")
    TOO_MANY_CLIENTS = "too_many_clients", ("refused", "too_many_clients")
    USER_REMOVED = "user_removed"
    # pre-login caps (proxy/auth/prelogin.py)
    FIRST_MESSAGE_TIMEOUT = "first_message_timeout", None, "first_message_timeout", True
    PRELOGIN_ADDRESS_LIMIT = "prelogin_address_limit", None, "address", True
    PRELOGIN_TOTAL_LIMIT = "prelogin_total_limit", None, "total", True
    PRELOGIN_ADDRESS_REFUSED = "prelogin_address_refused", None, "address_refused", True
    PRELOGIN_TOTAL_REFUSED = "prelogin_total_refused", None, "total_refused", True
    # failed logins (AuthFailed.reason) and spent failed-login budgets (proxy/auth/throttle.py LIMITS)
    AUTH_FAILED_UNKNOWN_USER = "auth_failed:unknown_user", ("failure", "unknown_user"), None, False, True
    AUTH_FAILED_BAD_PROOF = "auth_failed:bad_proof", ("failure", "bad_proof"), None, False, True
    AUTH_FAILED_MALFORMED = "auth_failed:malformed", ("failure", "malformed")
    AUTH_FAILED_BAD_MECHANISM = "auth_failed:bad_mechanism", ("failure", "bad_mechanism")
    AUTH_FAILED_CHANNEL_BINDING = "auth_failed:channel_binding", ("failure", "channel_binding")
    AUTH_THROTTLED_ADDRESS_USER = "auth_throttled:address_user", ("refused", "throttled"), "address_user"
    AUTH_THROTTLED_USER = "auth_throttled:user", ("refused", "throttled"), "user"
    AUTH_THROTTLED_ADDRESS = "auth_throttled:address", ("refused", "throttled"), "address"
    # the backend
    BACKEND = "backend"
    BACKEND_FRAMING = "backend_framing"
    PARSING_MISMATCH = "parsing_mismatch"
    SERVER_FATAL = "server_fatal"
    SERVER_CLOSED = "server_closed"
    SETTINGS_REPLAY = "settings_replay"  # a server refused the client's settings (transaction pooling's replay)
    PREFLIGHT_FAILED = "preflight_failed"
    # the pool
    POOL_WAIT_TIMEOUT = "pool_wait_timeout"
    CLIENT_MESSAGE_TIMEOUT = "client_message_timeout"  # a message begun, not complete in time, a server held for it
    CLIENT_WRITE_TIMEOUT = "client_write_timeout"  # the client read none of its pending output in time, a server held
    POOL_RETIRED = "pool_retired"
    # pgtenant
    INTERNAL_ERROR = "internal_error"
    SHUTDOWN = "shutdown"
    INSTANCE_SLOT_LOST = "instance_slot_lost"  # stateless replicas: this instance's slot is another's (red team 9b N3)
    KILLED_BY_ADMIN = "killed_by_admin"
    # per-tenant limits (proxy/limits.py)
    MAX_CLIENT_CONNECTIONS = "max_client_connections", ("refused", "max_client_connections")
    IDLE_IN_TRANSACTION_TIMEOUT = "idle_in_transaction_timeout"
    STATEMENT_TIMEOUT = "statement_timeout"  # the watchdog's cancel not acted on within limits.cancel_grace
    MAX_CONCURRENT_QUERIES = "max_concurrent_queries"  # a batch without its Sync waited past query_wait_timeout
    ANSWER_WITHHELD = "answer_withheld"  # the last line found a reserved name in a message already begun for the client
    RESULT_CUT = "result_cut"  # a cut result could not be left in PostgreSQL's after-error state
    REQUESTS_IN_FLIGHT = "requests_in_flight"  # more requests sent unanswered than the session follows (rt21p F1)

    @classmethod
    def auth_failed(cls, reason: str) -> CloseReason:
        """The close of a failed login, by AuthFailed.reason."""
        return cls(f"auth_failed:{reason}")

    @classmethod
    def auth_throttled(cls, limit: str) -> CloseReason:
        """The close of a login refused by a spent budget (throttle LIMITS)."""
        return cls(f"auth_throttled:{limit}")

    @classmethod
    def prelogin_cap(cls, limit: str, refused: bool) -> CloseReason:
        """The close of a connection for a pre-login cap ("address" or "total"): evicted, or refused outright."""
        return cls(f"prelogin_{limit}_{'refused' if refused else 'limit'}")

    @classmethod
    def unexpected(cls, event: str) -> CloseReason:
        """An event (login.LoginEvent or session.Event value) the state the client is in has no transition for."""
        return cls(f"unexpected_{event}")

    def auth_labels(self, detail: bool) -> tuple[str, str] | None:
        """(outcome, reason) of pgtenant_auth_attempts_total, with the exact reason of a failed login if `detail`."""
        if self.auth is not None and self.private and not detail:
            return self.auth[0], INVALID_CREDENTIALS
        return self.auth
