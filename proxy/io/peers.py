"""Worker processes' local sockets (I/O layer): each worker answers requests (a forwarded cancel, its metrics, its
console rows, its readiness) on a unix socket in the supervisor's private directory; any worker or the supervisor
asks one. One request per connection: a length-prefixed JSON object each way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.logs import get_logger

log = get_logger("pgtenant.peers")

_LENGTH = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024  # a worker's metrics or console rows; anything larger is refused
ASK_TIMEOUT = 10.0  # seconds a peer has to answer (a forwarded cancel waits for the backend: connect_timeout)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(directory: Path, index: int) -> Path:
    return directory / f"worker-{index}.sock"


async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    value = json.loads(await reader.readexactly(length))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def _frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(body)) + body


class PeerServer:
    """A worker's end: the unix socket it answers on, `handlers[op](request)` per request."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a crashed predecessor's
        old = os.umask(0o077)
        try:
            self.server = await asyncio.start_unix_server(self._handle, str(self.path))
        finally:
            os.umask(old)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read(reader), ASK_TIMEOUT)
            handler = self.handlers.get(str(request.get("op")))
            reply = {"error": "unknown op"} if handler is None else await handler(request)
            writer.write(_frame(reply))
            await writer.drain()
        except Exception as exc:  # a bad request or a failing handler: logged, this connection closed, nothing else
            log.warning("peer_request_failed", error=str(exc) or type(exc).__name__)
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


async def ask(path: Path, message: dict[str, Any], timeout: float = ASK_TIMEOUT) -> dict[str, Any] | None:
    """One request to the worker listening at `path`; None if it is not there or did not answer in time."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(_frame(message))
            await writer.drain()
            return await _read(reader)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.close()


class Peers:
    """The other workers of this proxy, as seen from worker `index` of `count`."""

    def __init__(self, directory: Path, index: int, count: int) -> None:
        self.directory = directory
        self.index = index
        self.count = count

    def path(self, index: int) -> Path:
        return socket_path(self.directory, index)

    async def ask(self, index: int, message: dict[str, Any], timeout: float = ASK_TIMEOUT) -> dict[str, Any] | None:
        return await ask(self.path(index), message, timeout)

    async def ask_others(self, message: dict[str, Any],
                         timeout: float = ASK_TIMEOUT) -> list[tuple[int, dict[str, Any]]]:
        """Every other worker's answer (a worker that is down or silent is left out)."""
        others = [i for i in range(self.count) if i != self.index]
        answers = await asyncio.gather(*(self.ask(i, message, timeout) for i in others))
        return [(i, a) for i, a in zip(others, answers, strict=True) if a is not None]


# How the supervisor tells a worker process who it is (environment of `pgtenant run`).
ENV_INDEX, ENV_COUNT, ENV_DIR, ENV_PORT = "PGTENANT_WORKER_INDEX", "PGTENANT_WORKERS", "PGTENANT_PEER_DIR", \
    "PGTENANT_LISTEN_PORT"
ENV_SLOT = "PGTENANT_INSTANCE_SLOT"  # the instance slot the supervisor holds (stateless replicas' peer port)
MOCK_SECRET_FILE = "auth-mock-secret"  # in the private directory: the secret every worker's fake salts come from


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """This process is worker `index` of `count`, its peers' sockets in `directory`, listening on `port`; `slot`:
    the instance slot its supervisor claimed in the registry (its cancel keys carry it), if any."""

    index: int
    count: int
    directory: Path
    port: int
    slot: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerIdentity | None:
        if ENV_INDEX not in environ:
            return None
        slot = int(environ[ENV_SLOT]) if environ.get(ENV_SLOT) else None
        return cls(int(environ[ENV_INDEX]), int(environ[ENV_COUNT]), Path(environ[ENV_DIR]), int(environ[ENV_PORT]),
                   slot)

    def environ(self) -> dict[str, str]:
        return {ENV_INDEX: str(self.index), ENV_COUNT: str(self.count), ENV_DIR: str(self.directory),
                ENV_PORT: str(self.port), ENV_SLOT: "" if self.slot is None else str(self.slot)}

    def mock_secret(self) -> bytes:
        return (self.directory / MOCK_SECRET_FILE).read_bytes()
