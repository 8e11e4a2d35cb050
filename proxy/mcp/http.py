"""Streamable HTTP for `pgtenant mcp --http`: every request carries an agent's bearer token, or gets a 401."""

from __future__ import annotations

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
REALM = "pgtenant-mcp"


class BearerAuth:
    """ASGI middleware in front of the whole MCP app: an HTTP request without a token of the book is answered 401
    before anything else sees it; an accepted one carries its agent's name in the scope. Tokens are never logged."""

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
                self.on_refused(reason, f"{client[0]}:{client[1]}")
            await _refuse(send, reason)
            return
        scope[AGENT_KEY] = agent.name
        await self.app(scope, receive, send)


def agent_of(scope: Scope) -> str | None:
    """The agent an accepted request authenticated as."""
    return scope.get(AGENT_KEY)


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
