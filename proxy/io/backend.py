"""The socket side of one server connection (ServerLink): runs the server state machine's actions."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING

from proxy.actions import Action, SendServer, ServerFailed, ServerReady, StartServerTls
from proxy.auth.scram import tls_server_end_point
from proxy.io.tls import backend_ssl_context
from proxy.protocol import messages as m
from proxy.relay import write_chunks
from proxy.server import ServerConnection

if TYPE_CHECKING:
    from proxy.io.client import ClientConnection

WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024


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
