"""proxy.httpd: the operations endpoint answers /metrics, /healthz and /readyz over a loopback socket, refuses
other methods and paths, and asks for basic auth when it is configured."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from proxy.config import MetricsConfig
from proxy.httpd import OpsServer
from proxy.metrics import Metrics


async def _exchange(server: OpsServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()  # the server closes after one response
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def _serve(requests: list[bytes], *, ready: bool = True, **config: object) -> list[tuple[int, dict, bytes]]:
    async def check() -> tuple[bool, dict[str, object]]:
        return ready, {"backends": {"main": ready}}

    async def main() -> list[tuple[int, dict, bytes]]:
        server = OpsServer(MetricsConfig(port=0, **config), Metrics(), check)  # type: ignore[arg-type]
        await server.start()
        try:
            return [await _exchange(server, r) for r in requests]
        finally:
            await server.close()

    return asyncio.run(main())


def _get(path: str, *headers: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{''.join(h + chr(13) + chr(10) for h in headers)}\r\n".encode()


def test_health_metrics_and_readiness() -> None:
    (hs, _, hbody), (ms, mh, mbody), (rs, rh, rbody), (qs, _, _) = _serve(
        [_get("/healthz"), _get("/metrics"), _get("/readyz"), _get("/healthz?verbose=1")])
    assert (hs, hbody) == (200, b"ok\n") and qs == 200
    assert ms == 200 and mh["content-type"].startswith("text/plain") and b"# TYPE pgtenant_" in mbody
    assert int(mh["content-length"]) == len(mbody)
    assert rs == 200 and rh["content-type"] == "application/json"
    assert json.loads(rbody) == {"ready": True, "backends": {"main": True}}


def test_not_ready_is_503_with_the_detail() -> None:
    [(status, _, body)] = _serve([_get("/readyz")], ready=False)
    assert status == 503 and json.loads(body) == {"ready": False, "backends": {"main": False}}


def test_head_has_no_body_and_other_methods_paths_and_garbage_are_refused() -> None:
    oversized = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"
    (h, hh, hbody), (p, _, _), (n, _, _), (g, _, _), (o, _, _) = _serve(
        [_get("/healthz", method="HEAD"), _get("/healthz", method="POST"), _get("/nope"), b"NONSENSE\r\n\r\n",
         oversized])
    assert (h, hbody, hh["content-length"]) == (200, b"", "0")
    assert (p, n, g, o) == (405, 404, 400, 400)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Basic " + base64.b64encode(b"prometheus:s3cret").decode(), 200),
        ("basic " + base64.b64encode(b"prometheus:s3cret").decode(), 200),
        ("Basic " + base64.b64encode(b"prometheus:wrong").decode(), 401),
        ("Basic " + base64.b64encode(b"other:s3cret").decode(), 401),
        ("Basic not-base64!", 401),
        ("Bearer " + base64.b64encode(b"prometheus:s3cret").decode(), 401),
    ],
)
def test_basic_auth_when_configured(authorization: str | None, status: int) -> None:
    headers = [f"Authorization: {authorization}"] if authorization else []
    [(got, h, _)] = _serve([_get("/metrics", *headers)], basic_auth_user="prometheus",
                           basic_auth_password="s3cret")
    assert got == status
    assert ("www-authenticate" in h) == (status == 401)


def test_an_awaitable_exposition_is_awaited() -> None:
    """The supervisor of worker processes gathers its workers' metrics before it can answer /metrics."""

    class Gathered:
        async def exposition(self) -> tuple[str, bytes]:
            await asyncio.sleep(0)
            return "text/plain; version=0.0.4", b"pgtenant_gathered 1.0\n"

    async def check() -> tuple[bool, dict[str, object]]:
        return True, {}

    async def main() -> tuple[int, dict[str, str], bytes]:
        server = OpsServer(MetricsConfig(port=0), Gathered(), check)
        await server.start()
        try:
            return await _exchange(server, _get("/metrics"))
        finally:
            await server.close()

    status, headers, body = asyncio.run(main())
    assert (status, body) == (200, b"pgtenant_gathered 1.0\n")
    assert headers["content-type"] == "text/plain; version=0.0.4"
