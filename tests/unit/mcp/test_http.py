"""proxy/mcp/http.py: no request reaches the MCP app without a valid agent token."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from proxy.mcp import tokens
from proxy.mcp.http import BearerAuth, agent_of, gone_of

TOKEN, HASH = tokens.mint()
BOOK = tokens.TokenBook((tokens.Agent("bot", bytes.fromhex(HASH), "user=bot"),))


class App:
    """A stand-in for the MCP app: records what reached it."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def _request(headers: list[tuple[bytes, bytes]], kind: str = "http") -> tuple[App, list[dict[str, Any]],
                                                                              list[tuple[str, str]]]:
    app, sent, refused = App(), [], []
    guard = BearerAuth(app, BOOK, on_refused=lambda reason, peer: refused.append((reason, peer)))
    scope = {"type": kind, "path": "/mcp", "headers": headers, "client": ("10.0.0.7", 5555)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return app, sent, refused


@pytest.mark.parametrize(("headers", "reason"), [
    ([], "missing_token"),
    ([(b"authorization", b"Bearer " + TOKEN.encode() + b"x")], "invalid_token"),
    ([(b"authorization", b"Bearer " + HASH.encode())], "invalid_token"),
    ([(b"authorization", b"Basic " + TOKEN.encode())], "missing_token"),
    ([(b"authorization", b"Bearer ")], "missing_token"),
])
def test_without_a_valid_token_the_app_is_never_called(headers: list[tuple[bytes, bytes]], reason: str) -> None:
    app, sent, refused = _request(headers)
    assert app.scopes == []
    start, body = sent
    assert start["status"] == 401
    challenge = dict(start["headers"])[b"www-authenticate"].decode()
    assert challenge.startswith('Bearer realm="pgtenant-mcp"')
    assert ('error="invalid_token"' in challenge) == (reason == "invalid_token")
    assert json.loads(body["body"])["error"] == reason
    assert refused == [(reason, "10.0.0.7")]  # the address: each connection has a new port
    assert TOKEN not in repr(sent) + repr(refused)  # the refusal never echoes a token


@pytest.mark.parametrize("header", [b"authorization", b"Authorization"])
def test_a_valid_token_passes_with_its_agent_in_the_scope(header: bytes) -> None:
    app, sent, refused = _request([(header, b"bearer  " + TOKEN.encode() + b" ")])
    (scope,) = app.scopes
    assert agent_of(scope) == "bot" and sent[0]["status"] == 200 and refused == []


def test_lifespan_reaches_the_app_and_websockets_are_closed() -> None:
    app, sent, _ = _request([], kind="lifespan")
    assert [s["type"] for s in app.scopes] == ["lifespan"] and sent == []
    app, sent, _ = _request([(b"authorization", b"Bearer " + TOKEN.encode())], kind="websocket")
    assert app.scopes == [] and sent == [{"type": "websocket.close", "code": 1008}]


def test_a_forged_scope_key_is_not_an_agent() -> None:
    assert agent_of({"type": "http"}) is None


def _watched(after_body: list[dict[str, Any]], answer: bool) -> asyncio.Event:
    """A request through BearerAuth whose app reads the body and, when `answer`, answers before the client's next
    message (from `after_body`) arrives; the request's gone event as the app saw it."""
    seen: list[asyncio.Event] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(gone_of(scope))
        assert (await receive())["type"] == "http.request"
        if answer:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        release.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    release = asyncio.Event()
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await release.wait()
        return after_body.pop(0) if after_body else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    guard = BearerAuth(app, BOOK)
    scope = {"type": "http", "path": "/mcp", "headers": [(b"authorization", b"Bearer " + TOKEN.encode())]}
    asyncio.run(guard(scope, receive, send))
    return seen[0]


def test_a_client_gone_before_the_answer_sets_the_requests_gone_event() -> None:
    assert _watched([{"type": "http.disconnect"}], answer=False).is_set()


def test_the_disconnect_after_the_answer_is_not_a_client_gone() -> None:
    assert not _watched([{"type": "http.disconnect"}], answer=True).is_set()
