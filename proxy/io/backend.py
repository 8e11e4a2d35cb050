"""The socket side of one server connection (ServerLink): runs the server state machine's actions."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.actions import Action, SendServer, ServerFailed, ServerQueryDone, ServerReady, StartServerTls
from proxy.auth.scram import tls_server_end_point
from proxy.io.tls import backend_ssl_context
from proxy.protocol import messages as m
from proxy.relay import write_chunks
from proxy.server import ServerConnection, ServerState

if TYPE_CHECKING:
    from proxy.io.client import ClientConnection
    from proxy.io.pool import Pool
    from proxy.relay import ClientRelay

WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
# A read at least this large into a guarded session yields the event loop before the link reads again (data_received).
FAIR_READ = 64 * 1024


class ServerLink(asyncio.Protocol):
    """The socket side of one pooled server connection. While idle (no `owner`) it reads its own socket: only the
    answers to the pool's reset and health check may arrive, anything else (or EOF) closes it. While a client holds
    it, its reads go to that client's relay (`relay`, set by ClientConnection._install) until it is released. The link
    stays its transport's protocol throughout: uvloop's set_protocol restarts reading (two epoll_ctl calls), which
    transaction pooling would pay twice per transaction."""

    def __init__(self, pool: Pool, server: ServerConnection) -> None:
        self.pool = pool
        self.server = server
        self.owner: ClientConnection | None = None
        self.transport: asyncio.Transport | None = None
        self.relay: ClientRelay | None = None  # the holding client's relay, which the socket's reads go to
        self.closed = False
        self.connected_at = time.monotonic()
        self.on_query: Callable[[ServerQueryDone], None] | None = None  # who waits for the answer of `query`
        self.grants = 0  # how many times the pool handed it to a client
        # Started with a DBA's lower statement_timeout default instead of its pool's limit: (target, the pool's
        # parameters) (proxy/dbadefault.py); `stale` once that default changed (a reload): not handed out again.
        self.dba_default: tuple[tuple[str, str, str], dict[str, str]] | None = None
        self.stale = False
        # A routed session's last resume of it (Pool.reuse): (its ask, kept_until's (replica set, generation, until),
        # kept's Choice, the count of it replica_routed adds to)
        self.routed: tuple[Any, Any, int, float, Any, list[int]] | None = None
        self.held = False  # reading paused for backpressure: its holder's socket is full (hold_reading)
        self._yielding = False  # reading paused by data_received until the loop's next turn (_turn_over)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio subclasses
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self._run(self.server.initiate())

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:  # held by a relaying client: its session reads the answers
            relay.from_server(data)
            if len(data) >= FAIR_READ and relay.session.guarded():
                self._yield_turn()
        else:
            self._run(self.server.data(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.link_lost(self, exc)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_reading()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_reading()

    def hold_reading(self) -> None:
        """Backpressure: the holder's socket is full; the link reads no more until `release_reading`."""
        self.held = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def release_reading(self) -> None:
        """The holder's socket drained (or the link is kept idle for it): the link reads again, unless it yields."""
        self.held = False
        if self.transport is not None and not self.closed and not self._yielding:
            self.transport.resume_reading()

    def _yield_turn(self) -> None:
        """A costly read (a guarded session's: a Python call per result message holding "pg_9"): reading pauses
        until the loop's next turn, so other sockets are served between this one's reads (libuv reads a ready
        socket up to 32 times in a row; red team 9a7 H1: another tenant's query waited seconds). Only this pause is
        undone by `_turn_over`, never a backpressure one (`held`)."""
        transport = self.transport
        if self._yielding or self.held or transport is None or self.closed:
            return
        self._yielding = True
        transport.pause_reading()
        asyncio.get_running_loop().call_soon(self._turn_over)

    def _turn_over(self) -> None:
        if not self._yielding:
            return
        self._yielding = False
        if not self.held and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, chunks: list[bytes | memoryview]) -> None:
        if self.transport is not None and not self.closed:
            write_chunks(self.transport, chunks)

    def query(self, actions: list[Action], on_done: Callable[[ServerQueryDone], None]) -> None:
        """Run one of the server's own queries (`server.reset()`, `check()`, `apply(...)`): `on_done` gets the
        answer, unless the link fails first."""
        self.on_query = on_done
        self._run(actions)

    def detach(self) -> None:
        """The holder let go: this link reads its own socket again (no longer paused for the holder's full socket)."""
        self.owner = None
        self.held = False  # (a pause of `_yield_turn` is undone at the next turn, unless a new holder's is `held`)
        if self.relay is not None:
            self.relay = None
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def terminate(self) -> None:
        if self.transport is not None and not self.closed:
            if self.server.state in (ServerState.READY, ServerState.QUERYING):
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
                self.pool.link_ready(self, action)
            elif isinstance(action, ServerQueryDone):
                done, self.on_query = self.on_query, None
                if done is not None:
                    done(action)
            elif isinstance(action, ServerFailed):
                self.terminate()
                self.pool.link_failed(self, action.reason, action.error)
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
            self.terminate()
            self.pool.link_failed(self, f"TLS handshake failed: {exc}")
            return

        def binding() -> bytes | None:
            sslobj = self.transport.get_extra_info("ssl_object") if self.transport else None
            der = sslobj.getpeercert(binary_form=True) if sslobj else None
            return tls_server_end_point(der) if der else None

        self.server.channel_binding = binding
        self._run(self.server.tls_done())
