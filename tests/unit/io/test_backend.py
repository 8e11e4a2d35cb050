"""proxy.io.backend: a pooled server link's socket reads, held by a client's relay or read by the link itself."""

from __future__ import annotations

from pathlib import Path

from proxy.io.backend import ServerLink
from proxy.protocol import messages as m
from proxy.server import ServerConnection, ServerState
from tests.support.sessions import make_config


class Transport:
    """Records what the link does to its transport."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.out: list[bytes] = []

    def set_protocol(self, protocol: object) -> None:
        self.calls.append("set_protocol")

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def close(self) -> None:
        self.calls.append("close")


class Pool:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def link_failed(self, link: ServerLink, reason: str, refusal: object = None) -> None:
        self.failed.append(reason)


class Relay:
    def __init__(self) -> None:
        self.reads: list[bytes] = []

    def from_server(self, data: bytes) -> None:
        self.reads.append(data)


def test_a_held_link_reads_into_the_relay_and_never_swaps_its_protocol(tmp_path: Path) -> None:
    """The link stays its transport's protocol: uvloop's set_protocol stops and restarts reading (two epoll_ctl
    calls), which transaction pooling would pay at every grant and release."""
    pool = Pool()
    server = ServerConnection(make_config(tmp_path).backends["main"], "saas", {})
    server.state = ServerState.READY
    link = ServerLink(pool, server)  # type: ignore[arg-type]
    transport = link.transport = Transport()  # type: ignore[assignment]
    relay = Relay()
    answer = m.frame(b"C", b"SELECT 1\x00") + m.ready_for_query(b"I")
    link.relay = relay  # type: ignore[assignment]  # as ClientConnection._install lends it
    link.data_received(answer)
    assert relay.reads == [answer] and pool.failed == []
    link.detach()
    assert link.relay is None and transport.calls == ["resume"]  # (a pause for a full client socket ends)
    link.data_received(answer)  # idle: the link reads its own socket, and an answer nobody asked for closes it
    assert relay.reads == [answer] and len(pool.failed) == 1 and "close" in transport.calls
    assert "set_protocol" not in transport.calls
