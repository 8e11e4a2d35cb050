"""What the sans-I/O core asks the driver to do: small action records executed in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config import AgentConfig, BackendConfig
from proxy.errors import PgError
from proxy.pooling import ServerRequest
from proxy.reasons import CloseReason
from proxy.replicas import Route


@dataclass(frozen=True, slots=True)
class SendClient:
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class SendServer:
    data: bytes | memoryview


class Relay:
    """Runs of raw bytes to forward as they are (hot path: built for every read)."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: list) -> None:
        self.chunks = chunks

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.chunks!r})"


class RelayToServer(Relay):
    """Runs of raw frontend bytes for the backend."""

    __slots__ = ()


class RelayToClient(Relay):
    """Runs of raw backend bytes for the client."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StartClientTls:
    """Answer 'S' has been queued; upgrade the client socket to TLS as the server side."""


@dataclass(frozen=True, slots=True)
class StartServerTls:
    """The backend said 'S'; upgrade the backend socket to TLS as the client side."""


@dataclass(frozen=True, slots=True)
class Login:
    """Who logged in, for the I/O layer's logs, metrics and audit lines."""

    user: str
    application_name: str | None
    tls: bool


@dataclass(frozen=True, slots=True)
class LoginStarted:
    """The client's StartupMessage was accepted and the SCRAM exchange offered: a real login is under way (the
    pre-login caps never close it to make room)."""


@dataclass(frozen=True, slots=True)
class AdminLogin:
    """An admin user logged in to the console: no startup deadline from now on; log, count and audit it."""

    login: Login


@dataclass(frozen=True, slots=True)
class ConnectBackend:
    """Authentication succeeded: attach the tenant's policy (`session.enable_policy`), then run
    AcquireServer(`request`) (answered with `session.server_attached` or `session.server_refused`). `cancel_key`
    is the key the client was given (its CancelRequests name it)."""

    login: Login
    tenant: str
    backend: BackendConfig
    database: str
    request: ServerRequest
    cancel_key: tuple[int, bytes]
    end_user: str | None = None
    agent: AgentConfig | None = None  # the agent profile's limits: the session decides under its agent policy
    statement_timeout_ms: int = 0  # the user's statement_timeout limit: its policy never sends a larger SET
    route: Route | None = None  # where its first server comes from (a routed session: AcquireServer.route)


@dataclass(frozen=True, slots=True)
class AcquireServer:
    """Ask the pool for a server connection; answered with `session.server_attached` or `session.server_refused`.
    Meanwhile the client's socket is not read (what it sent is held by the session)."""

    request: ServerRequest
    route: Route | None = None  # a routed session's request (proxy/replicas.py): the pool may send it to a replica


@dataclass(frozen=True, slots=True)
class ReleaseServer:
    """Give the server connection back to the pool. `reusable`: it is at ReadyForQuery 'I' with nothing in flight
    (else the pool closes it); `reset`: the session left state on it, the pool runs DISCARD ALL before anyone else
    gets it. The client's relay stops reading it."""

    reusable: bool
    reset: bool
    reason: CloseReason | None = None
    busy: bool = False  # a statement still runs on it (the session ends mid-statement): cancelled before it closes


@dataclass(frozen=True, slots=True)
class KeepServer:
    """Transaction pooling at ReadyForQuery 'I' (nothing in flight, no pin): the server goes back to the pool (idle,
    anyone may have it) but stays with the session while nobody needs it; the session's next request reuses it, or
    the session hears `server_taken` (then it asks the pool as after a ReleaseServer)."""


@dataclass(frozen=True, slots=True)
class AwaitAdmission:
    """An agent's statement is held for its admission (the proxy's EXPLAIN of it): the client is not read until its
    `AgentAdmission` (what it sends meanwhile would only be held)."""


@dataclass(frozen=True, slots=True)
class AgentAdmission:
    """An agent's statement was admitted by the planner's estimate, refused, or its EXPLAIN failed (`outcome`
    admitted | refused | failed): audit line, log line and metrics. `seconds`: the EXPLAIN round trip."""

    sql: str
    outcome: str
    cost: float | None
    rows: float | None
    max_rows: int  # the LIMIT the agent profile applies
    seconds: float


@dataclass(frozen=True, slots=True)
class SessionPinned:
    """The session keeps its server connection for `reason` from now on (metrics: pins by reason)."""

    reason: str


@dataclass(frozen=True, slots=True)
class BatchWithoutSync:
    """Transaction pooling: the client flushed an extended-protocol batch and has sent no Sync yet (`open`), so its
    server stays held until that Sync; or the Sync came (`open` False)."""

    open: bool


@dataclass(frozen=True, slots=True)
class CopyInHeld:
    """Transaction pooling: the server answered a COPY FROM STDIN and waits for the client's CopyData, CopyDone or
    CopyFail (`open`), so the server stays held until it ends; or it ended, or the server went (`open` False)."""

    open: bool


@dataclass(frozen=True, slots=True)
class SessionUnpinned:
    """The session no longer holds state on its server connection; `reasons` were its pins (metrics: durations)."""

    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StartRelay:
    """The session is ready (ReadyForQuery sent): relay from now on."""


@dataclass(frozen=True, slots=True)
class AdminQuery:
    """A simple query on the admin console, answered by the proxy."""

    sql: str


@dataclass(frozen=True, slots=True)
class RunDecision:
    """A cache miss to decide off the event loop: `pending` (a `proxy.policy.cache.Pending`) goes to a decision
    worker. The session holds that message and every byte after it until `session.decision_ready(decision)`;
    meanwhile the client's socket is not read."""

    pending: Any


@dataclass(frozen=True, slots=True)
class ForwardCancel:
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class LimitReached:
    """A per-tenant limit refused or ended something (proxy/limits.py): counted per tenant and limit, audited."""

    tenant: str
    user: str
    limit: str
    value: float


@dataclass(frozen=True, slots=True)
class AnswerWithheld:
    """The last line (hidden schemas) withheld a server's message holding a reserved name the session sent
    (`message`: its type, e.g. data_row, error_response, parameter_status): counted per tenant, logged."""

    message: str


@dataclass(frozen=True, slots=True)
class LastLineGuarded:
    """The session first named a schema the tenant cannot see (a hidden one, sent renamed, or a missing one, sent as
    written: alike, red team 9a6 G3): the last line guards its results from now on. Logged (last_line_guarded)."""


@dataclass(frozen=True, slots=True)
class CancelQuery:
    """Cancel what the server the session holds is running (a CancelRequest with the session's own key); the
    session hears `cancel_done()` once the backend has acted on it."""


@dataclass(frozen=True, slots=True)
class AcquireSlot:
    """max_concurrent_queries: a turn for the session's request among its tenant's (`QuerySlots`); answered with
    `slot_granted()`, or `slot_refused(error)` after `timeout` seconds."""

    tenant: str
    limit: int
    timeout: float


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """The session's request (or transaction) ended: its turn goes to the next waiting session of the tenant."""

    tenant: str
    limit: int


@dataclass(frozen=True, slots=True)
class WatchLimits:
    """Call the session's `limits_tick()` every `period` seconds while it lives (statement and idle timeouts)."""

    period: float


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Send the error (if any) and close the client connection; `unread`: the client may have stopped reading, so a
    connection whose write buffer is full is aborted, not left open until a flush that may never come."""

    error: PgError | None
    reason: CloseReason
    unread: bool = False


@dataclass(frozen=True, slots=True)
class TerminateBackend:
    """End the backend process `process_id` of `backend` (database `database`) with pg_terminate_backend, from a
    short connection of the proxy's own as that backend's role: what a revoked user pipelined on it must not run (a
    CancelRequest stops only the running statement; red team 9b3 F1). `secret_key`: its cancel key, the fallback
    when that connection fails."""

    backend: BackendConfig
    database: str
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class ServerReady:
    """The backend finished startup: parameter statuses and its key."""

    parameters: dict[str, str]
    process_id: int
    secret_key: bytes
    notices: list[bytes]


@dataclass(frozen=True, slots=True)
class ServerQueryDone:
    """The proxy's own query on a server (reset, health check, settings) was answered: `ok` when the answer was
    exactly the one expected, ending in ReadyForQuery 'I'; `error` is the backend's, if it sent one."""

    ok: bool
    error: PgError | None = None
    # The reset was answered as expected but for its last value: the backend has a temporary schema (a session made
    # a temporary table or view on it), which DISCARD ALL leaves, empty: not like a new server, so not reused.
    temp_schema: bool = False


@dataclass(frozen=True, slots=True)
class ServerFailed:
    """The backend could not be connected, negotiated or authenticated."""

    reason: str
    error: PgError | None = None


Action = (
    SendClient | SendServer | RelayToServer | RelayToClient | StartClientTls | StartServerTls | AdminLogin
    | ConnectBackend | AcquireServer | ReleaseServer | KeepServer | StartRelay | LoginStarted
    | AdminQuery | RunDecision | ForwardCancel | CloseClient | ServerReady | ServerQueryDone | ServerFailed
    | SessionPinned | SessionUnpinned | LimitReached | CancelQuery | WatchLimits
    | AcquireSlot | ReleaseSlot | BatchWithoutSync | CopyInHeld | AwaitAdmission | AgentAdmission | TerminateBackend
)
