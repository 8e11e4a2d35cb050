"""proxy.io.peers: a worker's unix socket answers one request per connection; a missing or silent peer is None."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

from proxy.io.peers import Peers, PeerServer, WorkerIdentity, ask, socket_path


def test_a_request_gets_its_handlers_answer_and_unknown_ops_an_error(tmp_path: Path) -> None:
    async def echo(request: dict[str, Any]) -> dict[str, Any]:
        return {"got": request["value"]}

    async def main() -> None:
        server = PeerServer(socket_path(tmp_path, 1), {"echo": echo})
        await server.start()
        try:
            assert stat.S_IMODE(socket_path(tmp_path, 1).stat().st_mode) & 0o077 == 0  # the owner's only
            assert await ask(socket_path(tmp_path, 1), {"op": "echo", "value": [1, "x"]}) == {"got": [1, "x"]}
            assert await ask(socket_path(tmp_path, 1), {"op": "nope"}) == {"error": "unknown op"}
            peers = Peers(tmp_path, 0, 3)  # worker 0 of 3: worker 1 answers, worker 2 is not there
            assert await peers.ask_others({"op": "echo", "value": 7}, timeout=2) == [(1, {"got": 7})]
        finally:
            await server.close()
        assert not socket_path(tmp_path, 1).exists()
        assert await ask(socket_path(tmp_path, 1), {"op": "echo", "value": 1}, timeout=1) is None

    asyncio.run(main())


def test_a_silent_peer_times_out(tmp_path: Path) -> None:
    async def stall(_: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {}

    async def main() -> None:
        server = PeerServer(socket_path(tmp_path, 0), {"stall": stall})
        await server.start()
        try:
            assert await ask(socket_path(tmp_path, 0), {"op": "stall"}, timeout=0.2) is None
        finally:
            await server.close()

    asyncio.run(main())


def test_the_identity_round_trips_through_the_environment(tmp_path: Path) -> None:
    me = WorkerIdentity(2, 4, tmp_path, 6432)
    assert WorkerIdentity.from_env(me.environ()) == me
    assert WorkerIdentity.from_env({}) is None


def test_a_failing_handler_closes_only_its_connection(tmp_path: Path) -> None:
    async def broken(request: dict[str, Any]) -> dict[str, Any]:
        return {"value": request["missing"]}

    async def fine(_: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    async def main() -> None:
        server = PeerServer(socket_path(tmp_path, 0), {"broken": broken, "fine": fine})
        await server.start()
        try:
            assert await ask(socket_path(tmp_path, 0), {"op": "broken"}, timeout=2) is None
            assert await ask(socket_path(tmp_path, 0), {"op": "fine"}, timeout=2) == {"ok": True}
        finally:
            await server.close()

    asyncio.run(main())
