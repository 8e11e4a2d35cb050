"""proxy.io.backend: a pooled server link's socket reads, held by a client's relay or read by the link itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.io.backend import FAIR_READ, ServerLink
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


class Session:
    def __init__(self, guarded: bool) -> None:
        self._guarded = guarded

    def guarded(self) -> bool:
        return self._guarded


class GuardedRelay(Relay):
    def __init__(self, guarded: bool) -> None:
        super().__init__()
        self.session = Session(guarded)


def _held_link(tmp_path: Path, guarded: bool) -> tuple[ServerLink, Transport]:
    server = ServerConnection(make_config(tmp_path).backends["main"], "saas", {})
    server.state = ServerState.QUERYING
    link = ServerLink(Pool(), server)  # type: ignore[arg-type]
    transport = link.transport = Transport()  # type: ignore[assignment]
    link.relay = GuardedRelay(guarded)  # type: ignore[assignment]
    return link, transport


_ROWS = m.frame(b"D", b"\x00\x01\x00\x00\x00\x04pg_9") * (FAIR_READ // 14 + 1)


def test_a_large_read_into_a_guarded_session_yields_the_loop_to_other_sockets(tmp_path: Path) -> None:
    """Red team 9a7 H1 residual: each result message of a guarded session holding "pg_9" costs a Python call, and
    libuv reads a hot socket up to 32 times per readiness, so one session's rows held every other tenant's query for
    seconds. A large guarded read pauses the link's reading until the loop's next turn; small reads and unguarded
    sessions' reads touch nothing (their hot path stays as it was)."""

    async def run() -> None:
        link, transport = _held_link(tmp_path, guarded=True)
        link.data_received(_ROWS)
        assert transport.calls == ["pause"]  # (libuv's read loop stops here: other sockets are polled)
        link.data_received(_ROWS)  # (a read already in hand while paused: no second pause, one resume)
        await asyncio.sleep(0)
        assert transport.calls == ["pause", "resume"]
        await asyncio.sleep(0)
        assert transport.calls == ["pause", "resume"]

        small, small_transport = _held_link(tmp_path, guarded=True)
        small.data_received(_ROWS[:FAIR_READ - 1])
        plain, plain_transport = _held_link(tmp_path, guarded=False)
        plain.data_received(_ROWS)
        await asyncio.sleep(0)
        assert small_transport.calls == [] and plain_transport.calls == []

    asyncio.run(run())


def test_a_turn_yielded_never_undoes_a_backpressure_pause(tmp_path: Path) -> None:
    """The yield resumes only the pause it made: if the client's socket fills meanwhile (or was full), the link stays
    paused until the client drains; a drain during the yield resumes at the turn, not before."""

    async def run() -> None:
        link, transport = _held_link(tmp_path, guarded=True)
        link.data_received(_ROWS)
        link.hold_reading()  # (the relayed rows filled the client's socket)
        await asyncio.sleep(0)
        assert transport.calls == ["pause", "pause"]  # no resume: backpressure holds
        link.release_reading()
        assert transport.calls == ["pause", "pause", "resume"]

        full, full_transport = _held_link(tmp_path, guarded=True)
        full.hold_reading()  # (paused for backpressure before the read already in hand)
        full.data_received(_ROWS)
        await asyncio.sleep(0)
        assert full_transport.calls == ["pause"]

        drained, drained_transport = _held_link(tmp_path, guarded=True)
        drained.hold_reading()
        drained.release_reading()
        drained.data_received(_ROWS)
        drained.hold_reading()
        drained.release_reading()  # (drained within the yield's turn: reading resumes at the turn, once)
        assert drained_transport.calls == ["pause", "resume", "pause", "pause"]
        await asyncio.sleep(0)
        assert drained_transport.calls == ["pause", "resume", "pause", "pause", "resume"]

    asyncio.run(run())
