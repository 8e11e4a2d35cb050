"""Runs the MCP server: over stdio as the one `--dsn` login, or over streamable HTTP as each token's login."""

from __future__ import annotations

import asyncio
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings

from proxy import logs
from proxy.mcp.door import Door
from proxy.mcp.http import BearerAuth, agent_of
from proxy.mcp.refusals import RefusedRequests
from proxy.mcp.tokens import TokenBook
from proxy.mcp.tools import Limits, build_server

MCP_PATH = "/mcp"


def run_stdio(dsn: str, limits: Limits) -> None:
    """Serve one MCP client on stdin/stdout (stdout carries the protocol: logs go to stderr)."""
    door = Door(dsn, _timeout_ms(limits))
    server = build_server(lambda _ctx: door, limits)
    logs.get_logger("pgtenant.mcp").info("mcp_started", transport="stdio", max_rows=limits.max_rows)

    async def main() -> None:
        try:
            await server.run_stdio_async()
        finally:
            await door.close()

    asyncio.run(main())


def run_http(book: TokenBook, limits: Limits, host: str, port: int) -> None:
    """Serve streamable HTTP on host:port at /mcp until interrupted; each request runs as its token's agent."""
    import uvicorn

    log = logs.get_logger("pgtenant.mcp")
    doors = {agent.name: Door(agent.dsn, _timeout_ms(limits), max_waiting=limits.max_waiting)
             for agent in book.agents}

    def door_for(ctx: Context) -> Door:
        request: Any = ctx.request_context.request
        name = agent_of(request.scope) if request is not None else None
        if name is None:  # unreachable behind BearerAuth; refuse rather than guess a login
            raise PermissionError("no authenticated agent for this request")
        return doors[name]

    server = build_server(door_for, limits)
    # Stateless: every request stands alone (its own token, its own agent); no session to hand to another token.
    # The SDK's Host/Origin check (against DNS rebinding) is off: it guards servers a browser can reach without a
    # credential, while here every request needs a bearer token no web page has; left on for 127.0.0.1 it refuses
    # the Host a TLS-terminating reverse proxy forwards (421).
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, json_response=True, host=host,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    refusals = RefusedRequests(log.warning)
    guarded = BearerAuth(app, book, on_refused=refusals.refused)
    config = uvicorn.Config(guarded, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    log.info("mcp_started", transport="http", host=host, port=port, path=MCP_PATH,
             agents=sorted(doors), max_rows=limits.max_rows, max_waiting=limits.max_waiting)

    class Server(uvicorn.Server):
        """uvicorn's, writing the last refusal counts at shutdown (on SIGTERM/SIGINT uvicorn raises the signal again
        once serve() is done: code after it does not run)."""

        async def shutdown(self, sockets: Any = None) -> None:
            await super().shutdown(sockets)
            refusals.flush()

    async def main() -> None:
        sweeping = asyncio.ensure_future(_sweep(refusals))
        try:
            await Server(config).serve()
        finally:
            sweeping.cancel()
            for door in doors.values():
                await door.close()

    asyncio.run(main())


async def _sweep(refusals: RefusedRequests) -> None:
    """A flood that stops gets its summary within an interval, not only at the next refusal."""
    while True:
        await asyncio.sleep(refusals.interval)
        refusals.sweep()


def _timeout_ms(limits: Limits) -> int:
    return round(limits.statement_timeout * 1000)
