"""Streamable HTTP for `pgtenant mcp --http`: every request carries an agent's bearer token, or gets a 401."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from proxy.mcp.tokens import TokenBook

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

AGENT_KEY = "pgtenant.agent"  # the ASGI scope key that carries the authenticated agent's name to the tools
GONE_KEY = "pgtenant.gone"  # ... and the asyncio.Event set when the request's client went away before its answer
REALM = "pgtenant-mcp"


class BearerAuth:
    """ASGI middleware in front of the whole MCP app: an HTTP request without a token of the book is answered 401
    before anything else sees it; an accepted one carries its agent's name in the scope, and an event set when its
    client disconnects before the answer was sent (the tools then drop or cancel its call). Tokens are never
    logged."""

    def __init__(self, app: ASGIApp, book: TokenBook, on_refused: Callable[[str, str], None] | None = None) -> None:
        self.app, self.book, self.on_refused = app, book, on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: not served
            await send({"type": "websocket.close", "code": 1008})
            return
        token = _bearer(scope)
        agent = self.book.agent_for(token) if token else None
        if agent is None:
            reason = "invalid_token" if token else "missing_token"
            if self.on_refused is not None:
                client = scope.get("client") or ("?", 0)
                self.on_refused(reason, str(client[0]))
            await _refuse(send, reason)
            return
        scope[AGENT_KEY] = agent.name
        watched = _Watched(receive, send)
        scope[GONE_KEY] = watched.gone
        try:
            await self.app(scope, watched.receive, watched.send)
        finally:
            watched.stop()


def agent_of(scope: Scope) -> str | None:
    """The agent an accepted request authenticated as."""
    return scope.get(AGENT_KEY)


def gone_of(scope: Scope) -> asyncio.Event | None:
    """The event set once an accepted request's client went away without its answer."""
    return scope.get(GONE_KEY)


class _Watched:
    """One request's ASGI receive and send: once its body is read, the server's next `http.disconnect` (the client
    closed the connection, e.g. its HTTP timeout) before the answer's last byte was sent sets `gone`. The MCP
    specification has a client cancel with notifications/cancelled, but a stateless request stands alone: its
    connection is the call's only link to a client, and an answer nobody can receive is not worth running."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.gone = asyncio.Event()
        self._answered = False
        self._after: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if self._after is not None:  # the body was read: only a disconnect can come (the watcher waits for it)
            await asyncio.shield(self._after)
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone.set()
        elif not message.get("more_body", False):
            self._after = asyncio.ensure_future(self._watch())
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._answered = True
        await self._send(message)

    async def _watch(self) -> None:
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self._answered:
            self.gone.set()

    def stop(self) -> None:
        if self._after is not None:
            self._after.cancel()
            self._after.add_done_callback(_retrieved)


def _retrieved(task: asyncio.Task[None]) -> None:
    """A finished watcher's outcome, taken so that asyncio does not report it as never retrieved."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return (token.strip() or None) if scheme.lower() == "bearer" else None
    return None


async def _refuse(send: Send, reason: str) -> None:
    description = {
        "missing_token": "this MCP server needs an agent token: Authorization: Bearer <token>",
        "invalid_token": "the bearer token is not one of this server's agent tokens",
    }[reason]
    body = json.dumps({"error": reason, "error_description": description}).encode()
    challenge = f'Bearer realm="{REALM}"' + (f', error="{reason}"' if reason == "invalid_token" else "")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"www-authenticate", challenge.encode())]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
