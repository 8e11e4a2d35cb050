"""RegistryWatch's reloads (red team 8b F5/F7): every (re)connect reloads, a reload that could not read the registry
is tried again with backoff and keeps the proxy not current, a rejected one waits for the next change."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import structlog

from proxy.io import registrywatch
from proxy.io.registrywatch import RegistryWatch
from proxy.ops import ReloadStatus


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
        gate = asyncio.Event()
        inner = watch.reload

        async def slow() -> tuple[ReloadStatus, str]:
            await gate.wait()
            return await inner()

        watch.reload = slow
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
