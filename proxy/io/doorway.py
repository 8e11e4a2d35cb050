"""A connection from a trusted load balancer: its PROXY protocol v2 header read, then the client's session begins."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.io.client import ClientConnection, peer_address
from proxy.logs import get_logger
from proxy.protocol.proxyheader import ProxyHeaderError, decode, trusted

if TYPE_CHECKING:
    from proxy.io.listener import Proxy

log = get_logger("pgtenant.driver")


def accept(proxy: Proxy) -> asyncio.Protocol:
    """The protocol for a new connection: a client's session, or (`[server] proxy_protocol = "v2"`) a doorway that
    reads a trusted balancer's header first."""
    return ClientConnection(proxy) if proxy.proxy_senders is None else Doorway(proxy)


class Doorway(asyncio.Protocol):
    """Until the header is read: a sender in `proxy_protocol_from` must begin with a PROXY v2 header (missing or bad:
    closed, with a log line); anyone else is a client speaking PostgreSQL (its header refused: ClientConnection)."""

    __slots__ = ("_buffer", "_timer", "proxy", "sender", "transport")

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.sender = ""
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sender = peer_address(transport)
        senders = self.proxy.proxy_senders
        if senders is None or not trusted(self.sender, senders):  # a client of its own: no header believed
            self._hand_over(transport, ClientConnection(self.proxy), b"")  # type: ignore[arg-type]
            return
        self.transport = transport  # type: ignore[assignment]
        wait = self.proxy.config.limits.first_message_timeout
        self._timer = asyncio.get_running_loop().call_later(wait, self._refuse, "no header in time")

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._buffer += data
        try:
            header = decode(self._buffer)
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        if header is None:
            return
        address = header.source[0] if header.source is not None else self.sender  # LOCAL: the balancer's own
        rest = bytes(self._buffer[header.length:])
        transport, self.transport = self.transport, None
        self._stop_timer()
        self._hand_over(transport, ClientConnection(self.proxy, address, via=self.sender), rest)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.transport = None

    @staticmethod
    def _hand_over(transport: asyncio.Transport, client: ClientConnection, rest: bytes) -> None:
        transport.set_protocol(client)
        client.connection_made(transport)
        if rest and not client.closed:
            client.data_received(rest)

    def _refuse(self, reason: str) -> None:
        """A trusted sender without a valid header: closed (nothing of PostgreSQL's is answered: no header, no
        client known), with a log line through the pre-login limiter."""
        self._timer = None
        transport, self.transport = self.transport, None
        if transport is None:
            return
        transport.close()
        self.proxy.metrics.proxy_header_refused("bad_header")
        self.proxy._prelogin_line("warning", "proxy_header_refused", sender=self.sender, reason=reason)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
