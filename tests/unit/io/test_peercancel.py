"""The cancel forwarder between instances: lookups of the slot a cancel key names (proxy/io/peercancel.py)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.io import peercancel


def test_cancels_naming_an_unused_slot_cost_one_registry_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 8b F1: anyone can send CancelRequests naming a slot no instance holds; each opened a registry
    connection (a SCRAM login) and ~130 a second stalled the event loop. Lookups are one at a time and a slot found
    empty stays so for MISSING_FOR seconds."""
    sender = peercancel.PeerCancelSender("host=registry", b"s" * 32)
    lookups: list[int] = []

    async def query(slot: int) -> tuple[str, int] | None:
        lookups.append(slot)
        await asyncio.sleep(0.01)
        return None if slot == 7 else ("10.0.0.2", 6433)

    monkeypatch.setattr(sender, "_query", query)

    async def scenario() -> None:
        answers = await asyncio.gather(*(sender.send(7, 7 | (i << 5), b"abcd") for i in range(200)))
        assert answers == [False] * 200
        assert lookups == [7]
        assert await sender._find(3) == ("10.0.0.2", 6433) and await sender._find(3) == ("10.0.0.2", 6433)
        assert lookups == [7, 3]
        now = peercancel._clock()
        monkeypatch.setattr(peercancel, "_clock", lambda: now + peercancel.MISSING_FOR + 1)
        assert await sender._find(7) is None and lookups == [7, 3, 7]  # looked up again once the answer aged

    asyncio.run(asyncio.wait_for(scenario(), 30))
