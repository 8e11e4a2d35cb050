"""The sockets' hot path once a session relays: each read goes through the session and is written on directly."""

from __future__ import annotations

from typing import Any

from proxy.actions import RelayToClient, RelayToServer
from proxy.audit import AuditLog
from proxy.metrics import QueryRecorder, TenantStats
from proxy.session import ClientSession
from proxy.tracking import Request

_BYTES_FLUSH = 64 * 1024  # the byte counters are updated once this much traffic has accumulated (and at close)


def write_chunks(transport: Any, chunks: list) -> int:
    """Write a run of chunks with one call (the driver's runner uses it too); the bytes written."""
    if len(chunks) == 1:
        chunk = chunks[0]
        transport.write(chunk)
        return len(chunk)
    n = 0
    for chunk in chunks:
        n += len(chunk)
    if n:
        transport.writelines(chunks)
    return n


class _SocketEvents:
    """What the client relay protocol leaves to its owner (the ClientConnection): EOF, loss, flow control."""

    __slots__ = ("owner",)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()


class ClientRelay(_SocketEvents):
    """The client transport's protocol while its session relays (installed by the driver with set_protocol).

    A read that the session answers with a plain relay is written to the server transport here; any other
    answer (a Terminate, a revoked user, a framing error) goes to the connection's general action runner.
    The socket events it does not handle itself go to the connection as before. Each answered request is
    reported here too (`request_done`): the tenant's latency/rows recorder and admin stats, the audit log.
    """

    __slots__ = (
        "audit", "audit_prefix", "bytes_flushed", "bytes_in", "bytes_out", "client", "end_user", "kept",
        "metrics_enabled", "recorder", "server", "session", "stats",
    )

    def __init__(
        self, conn: Any, session: ClientSession, client: Any, server: Any, *,
        recorder: QueryRecorder, stats: TenantStats, metrics_enabled: bool, audit: AuditLog | None,
        audit_prefix: str = "",
        end_user: str | None = None,
    ) -> None:
        self.owner = conn  # the ClientConnection: everything but the plain relay
        self.session = session
        self.client = client  # the client transport
        self.server = server  # the server transport
        self.bytes_in = 0
        self.bytes_out = 0  # bytes relayed to the client (the connection counts what it writes itself)
        self.bytes_flushed = 0
        self.recorder = recorder  # the tenant's latency/rows recorder (metrics)
        self.stats = stats  # the tenant's TenantStats (admin console)
        self.metrics_enabled = metrics_enabled
        self.audit = audit  # the audit log, if on: a line per request, with the session's fields `audit_prefix`
        self.audit_prefix = audit_prefix
        self.end_user = end_user  # the startup packet's end-user claim (else the SQL's, per request)
        self.kept = False  # the session's server is kept for it (sticky): its next read asks the pool first

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            if self.kept:  # (a message begun resumes nothing: the session keeps it until it is whole)
                data = self.owner.resume_kept(data)
                if data is None:
                    return
            actions = self.session.client_data(data)
        except Exception:
            self.owner.internal_error()
            return
        self._forward(actions, RelayToServer, self.server)

    def from_server(self, data: bytes) -> None:
        """A read from the server transport (ServerLink.data_received, while the session holds the link)."""
        try:
            actions = self.session.server_data(data)
        except Exception:
            self.owner.internal_error()
            return
        self.bytes_out += self._forward(actions, RelayToClient, self.client)

    def _forward(self, actions: list, kind: type, transport: Any) -> int:
        """Write a plain relay (one action of `kind`) to `transport` unless it is closing; anything more goes to
        the connection's action runner. The bytes written here."""
        if len(actions) == 1 and type(actions[0]) is kind:
            relay = actions[0]
            return 0 if transport.is_closing() else write_chunks(transport, relay.chunks)
        self.owner.run(actions)
        return 0

    def request_done(self, req: Request) -> None:
        """One request answered (the session's tracker calls this); never raw SQL in a metric label."""
        duration = req.end - req.start
        outcome = req.outcome
        if self.metrics_enabled:
            self.recorder.record(req.kind, outcome, duration, req.rows)
            if outcome == "error" and req.sqlstate:
                self.owner.count_backend_error(req.sqlstate)
            total = self.bytes_in + self.bytes_out
            if total - self.bytes_flushed >= _BYTES_FLUSH:
                self.bytes_flushed = total
                self.owner.flush_bytes()
        stats = self.stats
        stats.queries += 1
        stats.rows += req.rows
        stats.add_latency(duration)
        if outcome == "error":
            stats.errors += 1
        elif outcome == "denied":
            stats.denied += 1
        audit = self.audit
        if audit is not None:
            audit.request(self.audit_prefix, self.end_user, req)
