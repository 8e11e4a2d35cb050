"""The operations HTTP endpoint (I/O layer): /metrics, /healthz, /readyz, with optional basic auth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Protocol

from proxy.config import MetricsConfig
from proxy.logs import get_logger
from proxy.metrics import Metrics

log = get_logger("pgtenant.http")

ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]


class Exposition(Protocol):
    """What /metrics shows: `exposition()` -> (content type, body), or an awaitable of it (the supervisor's, which
    asks its worker processes)."""

    def exposition(self) -> tuple[str, bytes] | Awaitable[tuple[str, bytes]]: ...

_MAX_REQUEST = 8192


class OpsServer:
    """A deliberately tiny HTTP/1.1 server: GET only, one request per connection."""

    def __init__(self, config: MetricsConfig, metrics: Metrics | Exposition, ready: ReadyCheck) -> None:
        self.config = config
        self.metrics = metrics
        self.ready = ready
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.config.host, self.config.port, reuse_address=True)
        log.info("http_listening", address=self.address)

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def _authorized(self, headers: dict[str, str]) -> bool:
        user, password = self.config.basic_auth_user, self.config.basic_auth_password
        if not user:
            return True
        value = headers.get("authorization", "")
        if not value.lower().startswith("basic "):
            return False
        try:
            given = base64.b64decode(value[6:].strip(), validate=True)
        except ValueError:
            return False
        expected = f"{user}:{password}".encode()
        return hmac.compare_digest(given, expected)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        status, ctype, body, extra = 400, "text/plain; charset=utf-8", b"bad request\n", ""
        try:
            if len(head) > _MAX_REQUEST:
                raise ValueError("request too large")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body = 405, b"method not allowed\n"
            elif not self._authorized(headers):
                status, body, extra = 401, b"unauthorized\n", 'WWW-Authenticate: Basic realm="pgtenant"\r\n'
            elif path == "/metrics":
                status = 200
                shown = self.metrics.exposition()
                ctype, body = (await shown) if inspect.isawaitable(shown) else shown
            elif path == "/healthz":
                status, body = 200, b"ok\n"
            elif path == "/readyz":
                ok, detail = await self.ready()
                status, ctype = (200 if ok else 503), "application/json"
                body = json.dumps({"ready": ok, **detail}).encode() + b"\n"
            else:
                status, body = 404, b"not found\n"
            if method == "HEAD":
                body = b""
        except ValueError:
            pass
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n".encode() + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
