"""Where sessions get their server connections (ServerLink): one fresh connection per session for now."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.config import BackendConfig
from proxy.io.backend import ServerLink
from proxy.reasons import CloseReason
from proxy.server import ServerConnection

if TYPE_CHECKING:
    from proxy.io.client import ClientConnection
    from proxy.io.listener import Proxy


class Pool:
    """Hands server connections to client sessions: one fresh connection per session for now.

    Later, pooling will keep connections per (backend, database, tenant parameters) and re-use them,
    re-applying the tenant context and pinning session state; sessions only see acquire/release.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.links: set[ServerLink] = set()

    async def acquire(
        self, client: ClientConnection, backend: BackendConfig, database: str, parameters: dict[str, str]
    ) -> ServerLink:
        loop = asyncio.get_running_loop()
        server = ServerConnection(backend, database, parameters)
        _, link = await asyncio.wait_for(
            loop.create_connection(lambda: ServerLink(client, server), backend.host, backend.port),
            backend.connect_timeout,
        )
        self.links.add(link)
        return link

    def release(self, link: ServerLink, *, reason: CloseReason | None = None) -> None:
        if link in self.links and link.gauge_label is not None:
            self.proxy.metrics.backend_released(link.gauge_label)
            link.gauge_label = None
        self.links.discard(link)
        link.terminate()
