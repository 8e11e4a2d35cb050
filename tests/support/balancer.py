"""TCP forwarders for tests: a plain one (another address of a server), and a load balancer in miniature that speaks
PROXY protocol v2 (every connection it relays begins with a header naming the client, as HAProxy's
`send-proxy-v2` does)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from proxy.protocol.proxyheader import encode


class Forwarder:
    """Relays connections on `port` (127.0.0.1) to `target` on 127.0.0.1, connecting from `source`; with `then`, every
    connection after the first goes there (a client's cancel connection landing on another instance, which a real
    balancer produces at random). While `frozen` it moves no byte and closes nothing: a silent partition (a
    blackholed route, a dead NAT entry) as the proxy sees it."""

    def __init__(self, target: int, source: str = "127.0.0.1", then: int | None = None) -> None:
        self.target, self.source, self.then = target, source, then
        self.frozen = False
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def header(self, client_port: int) -> bytes:
        """What the forwarder sends before the client's bytes."""
        return b""

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            target = self.target if self.then is None or not self.accepted else self.then
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", target), source_address=(self.source, 0))
            upstream.sendall(self.header(peer[1]))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.frozen:
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class ProxyBalancer(Forwarder):
    """A Forwarder whose every connection begins with a v2 header saying the client is `client` (None: the LOCAL
    command, the balancer's own health check)."""

    def __init__(self, target: int, client: str | None, source: str = "127.0.0.1", then: int | None = None) -> None:
        self.client = client
        super().__init__(target, source, then)

    def header(self, client_port: int) -> bytes:
        source = None if self.client is None else (self.client, client_port)
        return encode(source, ("127.0.0.1", self.target))

