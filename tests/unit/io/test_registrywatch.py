"""RegistryWatch's reloads (red team 8b F5/F7): every (re)connect reloads, a reload that could not read the registry
is tried again with backoff and keeps the proxy not current, a rejected one waits for the next change."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

import pytest
import structlog
from psycopg.conninfo import conninfo_to_dict

from proxy.io import registrywatch
from proxy.io.registrywatch import RegistryWatch
from proxy.ops import ReloadStatus
from proxy.registrydb import TCP_TIMEOUTS, with_tcp_timeouts


@pytest.fixture(autouse=True)
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registrywatch, "RETRY_FIRST", 0.001)
    monkeypatch.setattr(registrywatch, "RETRY_MAX", 0.004)


@pytest.fixture
def logged() -> Iterator[list[dict]]:
    with structlog.testing.capture_logs() as events:
        yield events


async def _until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


def _watch(outcomes: list[ReloadStatus]) -> tuple[RegistryWatch, list[ReloadStatus]]:
    """A watch whose reloads answer `outcomes` in turn (then `applied`); the list of answers given."""
    given: list[ReloadStatus] = []

    async def reload() -> tuple[ReloadStatus, str]:
        status = outcomes.pop(0) if outcomes else "applied"
        given.append(status)
        return status, f"reload {len(given)}: {status}"

    return RegistryWatch("dbname=unused", 1.0, reload), given


def _gated(watch: RegistryWatch) -> asyncio.Event:
    """Make the watch's reloads wait until the returned event is set (a slow reload, or one waiting on a lock)."""
    gate = asyncio.Event()
    inner = watch.reload

    async def gated() -> tuple[ReloadStatus, str]:
        await gate.wait()
        return await inner()

    watch.reload = gated
    return gate


def test_a_reload_that_cannot_read_the_registry_is_tried_again_until_it_applies(logged: list[dict]) -> None:
    async def run() -> None:
        watch, given = _watch(["unreachable", "unreachable", "unreachable"])
        watch.connected = True
        task = asyncio.get_running_loop().create_task(watch._apply())
        try:
            watch._ask()  # a notification
            await _until(lambda: "unreachable" in given, "the first reload")
            assert not watch.current  # a change is known to be unapplied: /readyz says not ready
            await _until(lambda: given[-1:] == ["applied"], "the retry that applies")
            await _until(lambda: watch.current, "current again")
            assert given == ["unreachable"] * 3 + ["applied"]
        finally:
            task.cancel()

    asyncio.run(run())
    events = [e["event"] for e in logged]
    warned = [e for e in logged if e["event"] == "registry_behind" and e["log_level"] == "warning"]
    assert len(warned) == 1, logged  # once, not per retry (those are at debug level)
    assert events.count("registry_caught_up") == 1 and events.count("registry_applied") == 1


def test_a_rejected_reload_waits_for_the_next_change(logged: list[dict]) -> None:
    async def run() -> None:
        watch, given = _watch(["rejected"])
        watch.connected = True
        task = asyncio.get_running_loop().create_task(watch._apply())
        try:
            watch._ask()
            await _until(lambda: given == ["rejected"], "the rejected reload")
            await asyncio.sleep(0.05)  # many retry delays: nothing is tried again
            assert given == ["rejected"] and watch.current  # the old config serves on, as documented
            watch._ask()  # the row changed
            await _until(lambda: given == ["rejected", "applied"], "the next change's reload")
        finally:
            task.cancel()

    asyncio.run(run())
    assert [e["event"] for e in logged].count("registry_rejected") == 1


def test_a_reconnect_is_behind_until_its_reload_has_run() -> None:
    """Whatever the change numbers say (a lower one can commit after a higher one was applied), a (re)connect asks
    for a reload, and the proxy is not current until it ran."""
    async def run() -> None:
        watch, given = _watch([])
        gate = _gated(watch)
        task = asyncio.get_running_loop().create_task(watch._apply())
        try:
            watch._resync = watch._ask()  # what _listen does on every (re)connect
            watch.connected = True
            await asyncio.sleep(0.01)
            assert not watch.current and given == []
            gate.set()
            await _until(lambda: watch.current, "current after the reconnect's reload")
            assert given == ["applied"]
        finally:
            task.cancel()

    asyncio.run(run())


class _SilentRegistry:
    """A loopback server speaking just enough of the protocol for the watch's LISTEN connection (trust login, every
    query answered), until `freeze`: from then on it reads and never answers, nor closes (a silent partition)."""

    def __init__(self) -> None:
        self.frozen = False
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    @staticmethod
    def _message(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("!I", len(body) + 4) + body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        frozen_here = False
        try:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            await reader.readexactly(length - 4)  # the startup packet
            reply = self._message(b"R", struct.pack("!I", 0))
            for name, value in (("server_version", "18.0"), ("client_encoding", "UTF8"),
                                ("standard_conforming_strings", "on"), ("integer_datetimes", "on")):
                reply += self._message(b"S", name.encode() + b"\0" + value.encode() + b"\0")
            reply += self._message(b"K", struct.pack("!I", 42) + b"abcd") + self._message(b"Z", b"I")
            writer.write(reply)
            while True:
                kind = await reader.readexactly(1)
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                body = await reader.readexactly(length - 4)
                if kind == b"X":
                    return
                if self.frozen or frozen_here:
                    frozen_here = True  # this connection stays silent
                    continue
                tag = body.split(b" ")[0].rstrip(b"\0").upper()
                writer.write(self._message(b"C", tag + b"\0") + self._message(b"Z", b"I"))
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def test_a_round_trip_without_answer_is_a_lost_connection(monkeypatch: pytest.MonkeyPatch,
                                                          logged: list[dict]) -> None:
    """Red team 9b N2: the registry path goes silent (no reset, no answer); the overdue ping ends the connection
    (not current meanwhile), the watch reconnects and reloads."""
    monkeypatch.setattr(registrywatch, "PING_INTERVAL", 0.02)
    monkeypatch.setattr(registrywatch, "PING_TIMEOUT", 0.2)

    async def run() -> None:
        registry = _SilentRegistry()
        port = await registry.start()
        reloads: list[int] = []

        async def reload() -> tuple[ReloadStatus, str]:
            reloads.append(registry.connections)
            return "applied", "ok"

        watch = RegistryWatch(f"host=127.0.0.1 port={port} user=u dbname=d sslmode=disable", 0.01, reload)
        watch.start()
        try:
            await _until(lambda: watch.current and registry.connections == 1, "listening and current")
            registry.frozen = True
            await _until(lambda: not watch.current, "not current once the ping is overdue")
            registry.frozen = False
            await _until(lambda: watch.current and registry.connections >= 2, "reconnected and current again")
            assert reloads[0] == 1 and reloads[-1] >= 2  # the reconnect reloaded what may have been missed
        finally:
            await watch.close()
            assert registry.server is not None
            registry.server.close()

    asyncio.run(run())
    lost = [e for e in logged if e["event"] == "registry_connection_lost"]
    assert lost and "no answer to a round trip" in lost[0]["problem"], logged


def test_registry_connections_get_tcp_timeouts_unless_the_dsn_sets_its_own() -> None:
    dsn = conninfo_to_dict(with_tcp_timeouts("host=db dbname=reg keepalives_idle=30"))
    assert dsn["tcp_user_timeout"] == TCP_TIMEOUTS["tcp_user_timeout"] and dsn["keepalives"] == "1"
    assert dsn["keepalives_idle"] == "30" and dsn["host"] == "db"
    uri = conninfo_to_dict(with_tcp_timeouts("postgresql://u@db:6543/reg"))
    assert uri["port"] == "6543" and uri["keepalives_count"] == TCP_TIMEOUTS["keepalives_count"]
    assert RegistryWatch("host=db", 1.0, lambda: None).dsn.count("tcp_user_timeout") == 1  # type: ignore[arg-type]


class _SlotRegistry:
    """A registry connection for `_claim`: TRY_SLOT answers whether the slot is free, CLAIM_SLOT a new claim id."""

    def __init__(self) -> None:
        self.free = True
        self.claims = 0

    async def execute(self, sql: str, params: tuple[object, ...]) -> _SlotRegistry:
        if "pg_try_advisory_lock" in sql:
            self.row: tuple[object, ...] = (self.free,)
        else:
            self.claims += 1
            self.row = (1_000 * self.claims,)
        return self

    async def fetchone(self) -> tuple[object, ...]:
        return self.row


def test_a_lost_slot_drops_the_claim_until_it_is_held_again(logged: list[dict]) -> None:
    """Red team 9b N3: after `instance_slot_lost` the instance kept answering its old claim (a genuine `U`) and
    serving new sessions under the slot. Now the claim is dropped (its peer port answers STALE), holds_slot is false
    (logins refused, /readyz 503) until the slot is free again."""
    async def run() -> None:
        watch, _ = _watch([])
        watch.peer = ("127.0.0.1", 6433, 5)
        conn = _SlotRegistry()
        await watch._claim(conn)  # type: ignore[arg-type]
        assert (watch.slot, watch.claim, watch.holds_slot) == (0, 1_000, True)
        conn.free = False  # reconnected after another instance took slot 0
        await watch._claim(conn)  # type: ignore[arg-type]
        assert (watch.slot, watch.claim, watch.holds_slot) == (0, None, False)
        await watch._claim(conn)  # type: ignore[arg-type]  # tried again after a round trip: still another's
        conn.free = True
        await watch._claim(conn)  # type: ignore[arg-type]
        assert (watch.slot, watch.claim, watch.holds_slot) == (0, 2_000, True)

    asyncio.run(run())
    assert [e["event"] for e in logged].count("instance_slot_lost") == 1


def test_a_stale_claim_is_answered_stale_by_the_peer_port() -> None:
    from proxy import instancekey
    shared = b"s" * 32
    challenge = instancekey.challenge_of(instancekey.hello()) or b""
    frame = instancekey.request(shared, challenge, 0, 1_000, 4321, b"abcd")
    checked = instancekey.check_request(shared, challenge, frame, 0, None)  # the claim dropped: (slot, None)
    assert not isinstance(checked, str) and not checked.mine


def test_an_unreachable_registry_is_warned_about_once_per_interval_not_per_attempt(
    logged: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(registrywatch, "_clock", lambda: now[0])
    watch, _ = _watch([])
    for _ in range(50):  # one failed attempt per reconnect_delay
        watch._lost("connection refused")
        now[0] += 1.0
    warned = [e for e in logged if e["event"] == "registry_unreachable" and e["log_level"] == "warning"]
    assert [e["attempts"] for e in warned] == [1]  # the first; the next warning is due after 60 s
    for _ in range(20):
        watch._lost("connection refused")
        now[0] += 1.0
    warned = [e for e in logged if e["event"] == "registry_unreachable" and e["log_level"] == "warning"]
    assert [e["attempts"] for e in warned] == [1, 60]  # the attempts since the last warning
    assert sum(e["event"] == "registry_unreachable" for e in logged) == 70  # the others at debug level
    watch.connected = True  # connected, then lost: said at once, and the next outage warns at its first attempt
    watch._lost("server closed the connection")
    watch._lost("connection refused")
    events = [(e["event"], e["log_level"]) for e in logged[-2:]]
    assert events == [("registry_connection_lost", "warning"), ("registry_unreachable", "warning")]


def test_the_supervisors_slot_only_watch_logs_no_line_per_change(logged: list[dict]) -> None:
    from proxy.io.instanceport import _nothing_to_reload

    async def run() -> None:
        watch = RegistryWatch("dbname=unused", 1.0, _nothing_to_reload)
        watch.connected = True
        task = asyncio.get_running_loop().create_task(watch._apply())
        try:
            for _ in range(3):
                watch._ask()
                await _until(lambda: watch._done == watch._asked, "the no-op reload")
        finally:
            task.cancel()

    asyncio.run(run())
    assert not [e for e in logged if e["event"].startswith("registry_")], logged


def test_a_reload_outstanding_too_long_is_not_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 9b2 P3: a reload whose registry read waited on a lock (an ALTER TABLE queued behind an idle reader)
    kept `current` true for as long as the lock lasted, so /readyz stayed green while a removed user logged in. A
    reload asked for more than RELOAD_DUE seconds ago and not finished makes the config not current."""
    now = [1000.0]
    monkeypatch.setattr(registrywatch, "_clock", lambda: now[0])

    async def run() -> None:
        watch, given = _watch([])
        gate = _gated(watch)
        watch.connected = True
        task = asyncio.get_running_loop().create_task(watch._apply())
        try:
            watch._ask()  # a notification: its reload waits on the lock
            await asyncio.sleep(0.01)
            assert watch.current  # (not overdue yet)
            now[0] += registrywatch.RELOAD_DUE + 1
            assert not watch.current
            watch._ask()  # another change meanwhile: still behind
            gate.set()
            await _until(lambda: len(given) == 2, "both reloads")
            assert watch.current
            now[0] += registrywatch.RELOAD_DUE + 1  # nothing asked since: an old reload is no reason
            assert watch.current
        finally:
            task.cancel()

    asyncio.run(run())
