"""The floor for a proxy written in Python: a byte relay on uvloop protocols that frames nothing and decides
nothing (one read, one write per direction). pgbench_compare.py runs it as the `pyrelay` target.

Usage: python benchmarks/pyrelay.py LISTEN_PORT BACKEND_PORT   (both on 127.0.0.1)
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _Backend(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.backend: _Backend | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, backend = await loop.create_connection(lambda: _Backend(self), "127.0.0.1", self.backend_port)
        except OSError:
            self.transport.close()
            return
        self.backend = backend
        for data in self.early:
            backend.transport.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.backend is None:
            self.early.append(data)
        else:
            self.backend.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None:
            self.backend.transport.close()


async def _serve(port: int, backend_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: _Client(backend_port), "127.0.0.1", port)
    await server.serve_forever()


def main(argv: list[str]) -> int:
    port, backend_port = int(argv[0]), int(argv[1])
    uvloop.run(_serve(port, backend_port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
