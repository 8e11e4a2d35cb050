"""What the sans-I/O core asks the driver to do: small action records executed in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.errors import PgError
from proxy.reasons import CloseReason


@dataclass(frozen=True, slots=True)
class SendClient:
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class SendServer:
    data: bytes | memoryview


class Relay:
    """Runs of raw bytes to forward as they are (hot path: built for every read, compiled with actions.pxd)."""

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
class AdminLogin:
    """An admin user logged in to the console: no startup deadline from now on; log, count and audit it."""


@dataclass(frozen=True, slots=True)
class ConnectBackend:
    """Authentication succeeded: obtain a server connection for this session from the pool."""


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
class CloseClient:
    """Send the error (if any) and close the client connection."""

    error: PgError | None
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class CloseServer:
    """Terminate the server connection (1:1 for now; a pool would release it instead)."""

    reason: CloseReason | None = None


@dataclass(frozen=True, slots=True)
class ServerReady:
    """The backend finished startup: parameter statuses and its key."""

    parameters: dict[str, str]
    process_id: int
    secret_key: bytes
    notices: list[bytes]


@dataclass(frozen=True, slots=True)
class ServerFailed:
    """The backend could not be connected, negotiated or authenticated."""

    reason: str
    error: PgError | None = None


Action = (
    SendClient | SendServer | RelayToServer | RelayToClient | StartClientTls | StartServerTls | AdminLogin
    | ConnectBackend | AdminQuery | RunDecision | ForwardCancel | CloseClient | CloseServer | ServerReady | ServerFailed
)
