"""Where sessions get their server connections (ServerLink): one fresh connection per request for now."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy import errors
from proxy.actions import ServerRequest
from proxy.io.backend import ServerLink
from proxy.reasons import CloseReason
from proxy.server import ServerConnection

if TYPE_CHECKING:
    from proxy.io.client import ClientConnection
    from proxy.io.listener import Proxy


class Pool:
    """Hands server connections to client sessions: one fresh connection per request for now, closed when given
    back (the contract's API: `request` answered by `client.server_granted` / `client.server_refused`,
    `withdraw`, `release`; proxy/pooling.py's manager replaces this)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.links: set[ServerLink] = set()

    def request(self, client: ClientConnection, request: ServerRequest) -> None:
        """Connect a server for `client`; its startup ends in client.server_ready (granted) or server_failed."""
        asyncio.get_running_loop().create_task(self._connect(client, request))

    async def _connect(self, client: ClientConnection, request: ServerRequest) -> None:
        loop = asyncio.get_running_loop()
        backend = request.backend
        server = ServerConnection(backend, request.key.database, dict(request.parameters))
        try:
            _, link = await asyncio.wait_for(
                loop.create_connection(lambda: ServerLink(client, server), backend.host, backend.port),
                backend.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            reason = "connection timed out" if timed_out else (exc.strerror or str(exc))
            client.log.warning("backend_failed", backend=backend.describe(), reason=reason)
            shown = reason if timed_out or exc.strerror else "connection failed"  # str(exc) may name the address
            client.server_refused(errors.backend_unreachable(backend.name, shown), CloseReason.BACKEND)
            return
        self.links.add(link)

    def withdraw(self, client: ClientConnection) -> None:
        """The client left while waiting: a server connecting for it is given back when it is ready."""

    def release(self, link: ServerLink, *, reusable: bool = False, reset: bool = False,
                reason: CloseReason | None = None) -> None:
        if link in self.links and link.gauge_label is not None:
            self.proxy.metrics.backend_released(link.gauge_label)
            link.gauge_label = None
        self.links.discard(link)
        link.terminate()
