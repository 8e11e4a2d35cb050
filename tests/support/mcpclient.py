"""Drives `pgtenant mcp` with the MCP SDK's own client: over stdio (a subprocess per session) and over HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import CallToolResult

from proxy.mcp import tokens
from tests.support.pgcluster import free_port
from tests.support.polling import until

ROOT = Path(__file__).resolve().parents[2]
Call = tuple[str, dict[str, Any]]


def text(result: CallToolResult) -> str:
    """A tool result's text (the JSON of a success, the message of a tool error)."""
    return "\n".join(getattr(block, "text", "") for block in result.content)


def stdio_calls(dsn: str, calls: Sequence[Call], *options: str) -> list[CallToolResult]:
    """Start `pgtenant mcp --dsn <dsn> <options>` over stdio and make `calls` in one session, in order."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "proxy", "mcp", "--dsn", dsn, *options],
                                   cwd=str(ROOT), env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def go() -> list[CallToolResult]:
        async with Client(params) as client:
            return [await client.call_tool(name, args) for name, args in calls]

    return asyncio.run(go())


def http_calls(url: str, token: str | None, calls: Sequence[Call]) -> list[CallToolResult]:
    """Make `calls` over streamable HTTP with `Authorization: Bearer <token>` (none when token is None)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}

    async def go() -> list[CallToolResult]:
        transport = streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
        async with Client(transport) as client:
            return [await client.call_tool(name, args) for name, args in calls]

    return asyncio.run(go())


@dataclass
class HttpServer:
    """A running `pgtenant mcp --http`: its URL, each agent's token, its log (stderr)."""

    url: str
    tokens: dict[str, str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def http_server(workdir: Path, agents: dict[str, str], *options: str) -> Iterator[HttpServer]:
    """`pgtenant mcp --http 127.0.0.1:<free port> --tokens <file>` for `agents` (name -> DSN), tokens minted with
    `pgtenant mcp-token` as the docs say; stopped at exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    minted, stanzas = {}, []
    for name, dsn in agents.items():
        res = subprocess.run([sys.executable, "-m", "proxy", "mcp-token", name, "--dsn", dsn], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True)
        minted[name] = res.stderr.strip().splitlines()[-1]
        assert minted[name].startswith(tokens.PREFIX)
        stanzas.append(res.stdout)
    book = workdir / "tokens.toml"
    book.write_text("\n".join(stanzas))
    book.chmod(0o600)
    port = free_port()
    log_path = workdir / "mcp.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "mcp", "--http", f"127.0.0.1:{port}", "--tokens", str(book), *options],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = HttpServer(f"http://127.0.0.1:{port}/mcp", minted, log_path)
    try:
        def listening() -> bool:
            assert proc.poll() is None, server.log()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        until(listening, 30, interval=0.05, what=f"pgtenant mcp listening on {port}")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
