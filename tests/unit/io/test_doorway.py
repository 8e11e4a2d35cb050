"""proxy.io.doorway: whose PROXY v2 header is read, which address the session gets, and what a bad header costs."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.io import doorway
from proxy.protocol.proxyheader import encode, networks

STARTUP = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # an SSLRequest


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (the doorway's timer needs one)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


class Transport:
    def __init__(self, peer: str) -> None:
        self.peer, self.protocol, self.closed = peer, None, False

    def get_extra_info(self, name: str) -> Any:
        return (self.peer, 40000) if name == "peername" else None

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def close(self) -> None:
        self.closed = True


class Client:
    """Stands in for ClientConnection: records its address and what it was given."""

    def __init__(self, proxy: object, address: str = "", via: str | None = None) -> None:
        self.address, self.via, self.data, self.closed = address, via, b"", False

    def connection_made(self, transport: object) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.setattr(doorway, "ClientConnection", Client)
    refused: list[str] = []
    lines: list[tuple[str, dict]] = []
    return SimpleNamespace(
        proxy_senders=networks(("10.0.0.0/24",)), refused=refused, lines=lines,
        config=SimpleNamespace(limits=SimpleNamespace(first_message_timeout=5.0)),
        metrics=SimpleNamespace(proxy_header_refused=refused.append),
        _prelogin_line=lambda level, event, **fields: lines.append((event, fields)),
    )


async def _open(proxy: SimpleNamespace, peer: str) -> tuple[asyncio.Protocol, Transport]:
    door = doorway.accept(proxy)  # type: ignore[arg-type]
    transport = Transport(peer)
    door.connection_made(transport)  # type: ignore[arg-type]
    return door, transport


@in_loop
async def test_an_untrusted_peer_is_a_client_at_once(proxy: SimpleNamespace) -> None:
    _, transport = await _open(proxy, "192.0.2.50")
    assert isinstance(transport.protocol, Client) and transport.protocol.address == ""  # its socket's own


@in_loop
async def test_a_trusted_balancers_header_names_the_client_in_pieces(proxy: SimpleNamespace) -> None:
    door, transport = await _open(proxy, "::ffff:10.0.0.9")  # a dual-stack listener's view of 10.0.0.9
    header = encode(("203.0.113.4", 5555), ("10.0.0.1", 6432))
    for i in range(len(header) - 1):
        door.data_received(header[i:i + 1])
        assert transport.protocol is None
    door.data_received(header[-1:] + STARTUP)
    client = transport.protocol
    assert isinstance(client, Client)
    assert (client.address, client.via, client.data) == ("203.0.113.4", "::ffff:10.0.0.9", STARTUP)


@in_loop
async def test_local_keeps_the_balancers_address(proxy: SimpleNamespace) -> None:
    door, transport = await _open(proxy, "10.0.0.9")
    door.data_received(encode(None))
    assert isinstance(transport.protocol, Client) and transport.protocol.address == "10.0.0.9"


@in_loop
async def test_a_trusted_sender_without_a_header_is_closed_and_logged(proxy: SimpleNamespace) -> None:
    door, transport = await _open(proxy, "10.0.0.9")
    door.data_received(STARTUP)
    assert transport.closed and transport.protocol is None
    assert proxy.refused == ["bad_header"]
    assert proxy.lines == [("proxy_header_refused", {"sender": "10.0.0.9", "reason": "no PROXY protocol v2 signature"})]
    door.data_received(STARTUP)  # nothing more happens
    assert proxy.refused == ["bad_header"]


@in_loop
async def test_a_silent_trusted_sender_is_closed_after_the_first_message_timeout(proxy: SimpleNamespace) -> None:
    proxy.config.limits.first_message_timeout = 0.0
    _, transport = await _open(proxy, "10.0.0.9")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.closed and proxy.lines[0][1]["reason"] == "no header in time"


@in_loop
async def test_proxy_protocol_off_reads_no_header(proxy: SimpleNamespace) -> None:
    proxy.proxy_senders = None
    assert isinstance(doorway.accept(proxy), Client)  # type: ignore[arg-type]
