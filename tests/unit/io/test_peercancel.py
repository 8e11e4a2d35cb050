"""The cancel forwarder between instances: lookups of the slot a cancel key names (proxy/io/peercancel.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy import instancekey
from proxy.config import RegistryConfig
from proxy.io import peercancel

SHARED = b"s" * 32
SECRET_KEY = b"\x9f\x13\x77\xe4"


def test_cancels_naming_an_unused_slot_cost_one_registry_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 8b F1: anyone can send CancelRequests naming a slot no instance holds; each opened a registry
    connection (a SCRAM login) and ~130 a second stalled the event loop. Lookups are one at a time and a slot found
    empty stays so for MISSING_FOR seconds."""
    sender = peercancel.PeerCancelSender("host=registry", b"s" * 32)
    lookups: list[int] = []

    async def query(slot: int) -> tuple[str, int] | None:
        lookups.append(slot)
        await asyncio.sleep(0.01)
        return None if slot == 7 else ("10.0.0.2", 6433, 1)

    monkeypatch.setattr(sender, "_query", query)

    async def scenario() -> None:
        answers = await asyncio.gather(*(sender.send(7, 7 | (i << 5), b"abcd") for i in range(200)))
        assert answers == [None] * 200 and sender.missing(7)
        assert lookups == [7]
        assert await sender.find(3) == ("10.0.0.2", 6433, 1) and await sender.find(3) == ("10.0.0.2", 6433, 1)
        assert lookups == [7, 3]
        now = peercancel._clock()
        monkeypatch.setattr(peercancel, "_clock", lambda: now + peercancel.MISSING_FOR + 1)
        assert await sender.find(7) is None and lookups == [7, 3, 7]  # looked up again once the answer aged

    asyncio.run(asyncio.wait_for(scenario(), 30))


class Instance:
    """A receiving instance's peer port (slot 1, `claim`), recording the cancels it was passed."""

    def __init__(self, claim: int, limits: RegistryConfig = peercancel.DEFAULTS) -> None:
        self.claim = claim
        self.cancels: list[tuple[int, bytes]] = []
        self.refused: list[str] = []
        self.server = peercancel.PeerCancelServer("127.0.0.1", 0, SHARED, self.cancel, lambda: (1, self.claim),
                                                  self.refused.append, limits)

    async def cancel(self, process_id: int, proof: bytes) -> bool:
        self.cancels.append((process_id, proof))
        return proof == instancekey.key_proof(SHARED, process_id, SECRET_KEY)

    @property
    def where(self) -> tuple[str, int, int]:
        return "127.0.0.1", self.server.port, self.claim


class Impostor:
    """Whoever took a dead instance's address: answers `K` to anything and keeps what it received."""

    def __init__(self) -> None:
        self.received = b""
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(instancekey.hello())  # it even speaks the opening
        self.received += await reader.read(4096)
        writer.write(b"K" * instancekey.ANSWER_LEN)
        await writer.drain()
        writer.close()


def _sender(monkeypatch: pytest.MonkeyPatch, registry: list[tuple[str, int, int]]) -> peercancel.PeerCancelSender:
    """A sender whose registry lookups answer what `registry` holds now, on a clock that moves by RELOOK_AFTER at
    every look at it (a slot is looked up again at most that often)."""
    sender = peercancel.PeerCancelSender("host=registry", SHARED)
    now = [1000.0]

    def clock() -> float:
        now[0] += peercancel.RELOOK_AFTER
        return now[0]

    monkeypatch.setattr(peercancel, "_clock", clock)

    async def query(slot: int) -> tuple[str, int, int] | None:
        return registry[-1] if registry else None

    monkeypatch.setattr(sender, "_query", query)
    return sender


def test_a_cached_address_someone_else_took_neither_swallows_the_cancel_nor_learns_the_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 8b F8: slot 1's old address was cached; its instance died, another process took the address and
    answered `K` (the cancel counted as done, it was lost) after reading the key in clear (it could then cancel
    that session's queries at will). Now the answer must be genuine: the sender looks the slot up again and reaches
    the instance that holds it; the impostor got a proof of the key, not the key."""

    async def scenario() -> None:
        impostor, instance = Impostor(), Instance(claim=2_000)
        await impostor.start()
        await instance.server.start()
        registry = [("127.0.0.1", impostor.port, 1_000)]
        sender = _sender(monkeypatch, registry)
        assert await sender.find(1) == ("127.0.0.1", impostor.port, 1_000)  # cached from an earlier cancel
        registry.append(instance.where)  # the slot's new claim
        assert await sender.send(1, 4321, SECRET_KEY) == instancekey.FOUND
        assert instance.cancels == [(4321, instancekey.key_proof(SHARED, 4321, SECRET_KEY))]
        assert impostor.received and SECRET_KEY not in impostor.received
        assert await sender.find(1) == instance.where  # the cache follows
        await instance.server.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_an_instance_of_another_claim_at_the_cached_address_sends_the_sender_to_the_registry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The address is right but the claim is not (the instance re-claimed its slot after a registry reconnect, or
    another instance took slot and address): answered STALE, looked up again, passed on under the new claim."""

    async def scenario() -> None:
        instance = Instance(claim=2_000)
        await instance.server.start()
        registry = [("127.0.0.1", instance.server.port, 1_000)]
        sender = _sender(monkeypatch, registry)
        await sender.find(1)
        registry.append(instance.where)
        assert await sender.send(1, 4321, SECRET_KEY) == instancekey.FOUND
        assert await sender.send(1, 4321, b"nope") == instancekey.UNKNOWN  # genuine (looked up again: the same claim)
        assert [pid for pid, _ in instance.cancels] == [4321, 4321]
        registry.clear()  # the slot is free now: nobody to pass it to
        instance.claim = 3_000
        assert await sender.send(1, 4321, SECRET_KEY) == instancekey.STALE and sender.missing(1)
        await instance.server.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_captured_request_replays_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 8b F6: anonymous cancels made an instance sign frames that flushed the receiver's nonce memory, and a
    captured frame replayed. A request is now bound to the connection's challenge: there is no memory to flush."""

    async def scenario() -> None:
        instance = Instance(claim=2_000)
        await instance.server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", instance.server.port)
        challenge = instancekey.challenge_of(await reader.readexactly(instancekey.HELLO_LEN))
        assert challenge is not None
        frame = instancekey.request(SHARED, challenge, 1, 2_000, 4321, SECRET_KEY)
        writer.write(frame)
        reply = await reader.read(instancekey.ANSWER_LEN)
        assert instancekey.check_answer(SHARED, challenge, frame, reply) == instancekey.FOUND
        writer.close()
        for _ in range(3):  # the captured request, again: on every new connection a new challenge
            reader, writer = await asyncio.open_connection("127.0.0.1", instance.server.port)
            await reader.readexactly(instancekey.HELLO_LEN)
            writer.write(frame)
            assert await reader.read(instancekey.ANSWER_LEN) == b""  # closed without an answer
            writer.close()
        assert len(instance.cancels) == 1 and instance.refused == ["bad_mac"] * 3
        await instance.server.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_silent_instance_is_looked_up_again_at_most_once_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone can send CancelRequests naming a slot: when its cached address does not answer genuinely, the slot is
    looked up again (a registry login) at most every RELOOK_AFTER seconds, not once per cancel."""

    async def scenario() -> None:
        impostor = Impostor()
        await impostor.start()
        sender = peercancel.PeerCancelSender("host=registry", SHARED)
        lookups: list[int] = []

        async def query(slot: int) -> tuple[str, int, int]:
            lookups.append(slot)
            return "127.0.0.1", impostor.port, 1_000

        monkeypatch.setattr(sender, "_query", query)
        monkeypatch.setattr(peercancel, "_clock", lambda: 1000.0)
        assert [await sender.send(1, 4321, SECRET_KEY) for _ in range(5)] == [None] * 5
        assert lookups == [1]
        monkeypatch.setattr(peercancel, "_clock", lambda: 1000.0 + peercancel.RELOOK_AFTER)
        assert await sender.send(1, 4321, SECRET_KEY) is None and lookups == [1, 1]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_cancels_naming_a_free_slot_do_not_spend_a_client_addresss_forward_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 9b N1: ~100 anonymous CancelRequests a second naming a slot nobody holds emptied the forward budget of
    their address (behind a balancer that hides client addresses: everyone's), so a victim's cancel from that address
    was dropped. The negative cache answers those: they are not charged, and the victim's cancel still reaches the
    instance serving its session (a real loopback peer port)."""
    from proxy.actions import ForwardCancel
    from proxy.io import listener
    from tests.support.sessions import make_config

    monkeypatch.setattr(instancekey, "_space", instancekey.InstanceSpace(0, 5))

    async def scenario() -> None:
        instance = Instance(claim=1)
        await instance.server.start()
        proxy = listener.Proxy(make_config(tmp_path))
        proxy.peer_sender = peercancel.PeerCancelSender("host=registry", SHARED)
        outcomes: list[str] = []
        monkeypatch.setattr(proxy.metrics, "instance_cancel", outcomes.append)

        async def query(slot: int) -> tuple[str, int, int] | None:
            return instance.where if slot == 1 else None

        monkeypatch.setattr(proxy.peer_sender, "_query", query)
        for i in range(500):  # the flood: free slot 9, from the balancer's address
            await proxy.forward_cancel(ForwardCancel((9 << 26) | (i + 1), b"abcd"), "10.0.0.1")
        victim = (1 << 26) | 12345
        await proxy.forward_cancel(ForwardCancel(victim, SECRET_KEY), "10.0.0.1")
        assert outcomes == ["no_instance"] * 500 + ["found"]
        assert instance.cancels == [(victim, instancekey.key_proof(SHARED, victim, SECRET_KEY))]
        await instance.server.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_cancels_waiting_for_a_registry_lookup_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 9b N5: with instance_bits 10 (~1000 free slots), anonymous cancels naming a different free slot each
    queued without bound behind the one lookup at a time (held 29 s to minutes, RSS 72 -> 270 MB). At most
    LOOKUP_QUEUE wait besides the lookup under way; the others are dropped at once (LookupBusy), and a cancel for a
    slot already known is never held."""
    sender = peercancel.PeerCancelSender("host=registry", SHARED)
    release = asyncio.Event()
    lookups: list[int] = []

    async def query(slot: int) -> tuple[str, int, int] | None:
        lookups.append(slot)
        await release.wait()
        return ("10.0.0.2", 6433, 1) if slot == 1 else None

    monkeypatch.setattr(sender, "_query", query)

    async def find(slot: int) -> object:
        try:
            return await sender.find(slot)
        except peercancel.LookupBusy:
            return "busy"

    async def scenario() -> None:
        release.set()
        assert await sender.find(1) == ("10.0.0.2", 6433, 1)  # known from now on
        release.clear()
        flood = [asyncio.ensure_future(find(slot)) for slot in range(100, 400)]
        await asyncio.sleep(0.05)
        done = [task.result() for task in flood if task.done()]
        assert done == ["busy"] * (300 - 1 - peercancel.LOOKUP_QUEUE)  # dropped at once, nothing held for them
        assert await asyncio.wait_for(sender.find(1), 1) == ("10.0.0.2", 6433, 1)  # not queued behind the flood
        release.set()
        assert [await task for task in flood[:1 + peercancel.LOOKUP_QUEUE]] == [None] * (1 + peercancel.LOOKUP_QUEUE)
        assert lookups == [1, *range(100, 101 + peercancel.LOOKUP_QUEUE)]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_genuine_unknown_from_a_cached_claim_sends_the_sender_to_the_registry_once_a_while(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 9b N3: the cached instance lost the slot without knowing it yet (its registry connection down) and
    answers its old claim genuinely `U`; the session is the slot's new owner's. The slot is looked up again (at
    most every RELOOK_AFTER) and the cancel reaches the new owner."""

    async def scenario() -> None:
        loser, owner = Instance(claim=1_000), Instance(claim=2_000)

        async def no_such_session(process_id: int, proof: bytes) -> bool:
            return False

        loser.server.cancel_here = no_such_session  # the session is the new owner's
        await loser.server.start()
        await owner.server.start()
        sender = peercancel.PeerCancelSender("host=registry", SHARED)
        registry = [loser.where]
        lookups: list[int] = []

        async def query(slot: int) -> tuple[str, int, int]:
            lookups.append(slot)
            return registry[-1]

        monkeypatch.setattr(sender, "_query", query)
        monkeypatch.setattr(peercancel, "_clock", lambda: 1000.0)
        assert await sender.find(1) == loser.where  # cached from an earlier cancel
        registry.append(owner.where)  # the new owner's claim
        assert await sender.send(1, 4321, b"nope") == instancekey.UNKNOWN  # (the loser's own answer)
        assert lookups == [1]  # not looked up again within RELOOK_AFTER
        monkeypatch.setattr(peercancel, "_clock", lambda: 1000.0 + peercancel.RELOOK_AFTER)
        assert await sender.send(1, 4321, SECRET_KEY) == instancekey.FOUND
        assert lookups == [1, 1] and [pid for pid, _ in owner.cancels] == [4321]
        assert await sender.find(1) == owner.where
        await loser.server.close()
        await owner.server.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_genuine_unknown_does_not_drop_a_live_slots_address_while_lookups_are_busy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 9b2 P1: an anonymous client kept the one registry lookup busy with CancelRequests naming free slots
    and made the victim's instance answer `U` (a random key): the sender dropped the cached address before looking it
    up again, the lookup was LookupBusy, and every later cancel for that slot was dropped `busy`. A `U` now keeps the
    address (it is replaced only by the registry's answer), so the victim's cancel goes straight through."""

    async def scenario() -> None:
        instance = Instance(claim=2_000)
        await instance.server.start()
        sender = peercancel.PeerCancelSender("host=registry", SHARED)
        release = asyncio.Event()
        release.set()
        lookups: list[int] = []

        async def query(slot: int) -> tuple[str, int, int] | None:
            lookups.append(slot)
            await release.wait()
            return instance.where if slot == 1 else None

        monkeypatch.setattr(sender, "_query", query)
        now = [1000.0]
        monkeypatch.setattr(peercancel, "_clock", lambda: now[0])
        assert await sender.find(1) == instance.where  # cached from an earlier cancel
        release.clear()
        flood = [asyncio.ensure_future(sender.find(slot)) for slot in range(2, 2 + 1 + peercancel.LOOKUP_QUEUE)]
        await asyncio.sleep(0.01)
        with pytest.raises(peercancel.LookupBusy):  # the lookup queue is full of free slots
            await sender.find(100)
        now[0] += peercancel.RELOOK_AFTER
        attacker = asyncio.ensure_future(sender.send(1, 4321, b"rand"))  # genuine U: waits for its relook
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(sender.find(1), 1) == instance.where  # still cached
        assert await asyncio.wait_for(sender.send(1, 4322, SECRET_KEY), 5) == instancekey.FOUND  # the victim's
        release.set()
        assert await attacker == instancekey.UNKNOWN
        assert await asyncio.gather(*flood) == [None] * (1 + peercancel.LOOKUP_QUEUE)
        assert lookups[:3] == [1, 2, 1]  # the live slot's relook went before the free slots waiting
        assert await sender.find(1) == instance.where
        await instance.server.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_failed_lookup_keeps_the_cached_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 9b2 P1: a relook that fails (the registry unreachable, or too slow) says nothing about the slot: the
    previous address stays cached; only the registry answering that no instance holds it drops it."""

    async def scenario() -> None:
        sender = peercancel.PeerCancelSender("host=registry", SHARED)
        answers: list[object] = [("127.0.0.1", 1, 1_000)]

        async def query(slot: int) -> tuple[str, int, int] | None:
            answer = answers[-1]
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[return-value]

        monkeypatch.setattr(sender, "_query", query)
        where = await sender.find(1)
        answers.append(peercancel.LookupFailed(1))
        assert await sender.find(1, stale=where) == where and await sender.find(1) == where
        answers.append(None)
        assert await sender.find(1, stale=where) is None and sender.missing(1)
        assert not sender._live(1)  # a slot found free again has no priority

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_lookup_turns_go_to_live_slots_first() -> None:
    """LookupTurns: one holder at a time; waiters marked first are served before the others, in order; a waiter
    cancelled while handed the turn passes it on."""
    turns = peercancel.LookupTurns()
    order: list[str] = []

    async def take(name: str, first: bool, hold: asyncio.Event | None = None) -> None:
        async with turns.turn(first):
            order.append(name)
            if hold is not None:
                await hold.wait()

    async def scenario() -> None:
        hold = asyncio.Event()
        holder = asyncio.ensure_future(take("holder", False, hold))
        await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(take(name, name.startswith("live"))) for name in
                   ("free1", "live1", "free2", "gone", "live2")]
        await asyncio.sleep(0)
        waiting[3].cancel()
        hold.set()
        await asyncio.gather(holder, *waiting, return_exceptions=True)
        assert order == ["holder", "live1", "live2", "free1", "free2"]
        await asyncio.wait_for(take("after", False), 1)  # the turn is free again
        assert order[-1] == "after"

    asyncio.run(asyncio.wait_for(scenario(), 30))


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


def test_half_open_connections_to_the_peer_port_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Residue of issue 19: anyone could open connections to the peer port and never send a frame, each holding a
    descriptor for the frame timeout, without bound (a flood exhausted the process's descriptors: with one process
    the clients' too). Now at most peer_max_connections wait for their frame, peer_max_connections_per_address per
    address: the oldest waiting one (of the newcomer's address first) is closed to make room, so a genuine sender,
    whose frame follows the opening at once, still gets through."""
    limits = RegistryConfig(peer_max_connections=8, peer_max_connections_per_address=4, peer_frame_timeout=60.0)

    async def scenario() -> None:
        instance = Instance(claim=2_000, limits=limits)
        await instance.server.start()
        opened: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {"127.0.0.2": [], "127.0.0.1": []}
        for source, count in (("127.0.0.2", 6), ("127.0.0.1", 10)):
            for _ in range(count):
                reader, writer = await asyncio.open_connection("127.0.0.1", instance.server.port,
                                                               local_addr=(source, 0))
                await reader.readexactly(instancekey.HELLO_LEN)  # (admitted: the opening follows admission)
                opened[source].append((reader, writer))
        assert len(instance.server) == 8
        for source, keep in (("127.0.0.2", 4), ("127.0.0.1", 4)):
            for reader, _ in opened[source][:-keep]:  # each address's oldest made room for its newer ones
                assert await _closed(reader)
        assert instance.refused.count("evicted") == 8
        sender = _sender(monkeypatch, [instance.where])
        assert await sender.send(1, 4321, SECRET_KEY) == instancekey.FOUND  # a genuine sender still gets through
        assert await _closed(opened["127.0.0.1"][-4][0])  # (it made room: the oldest waiting one of its address)
        while len(instance.server) != 7:  # (its own connection closes once it answered)
            await asyncio.sleep(0.01)
        for connections in opened.values():
            for _, writer in connections:
                writer.close()
        await instance.server.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_connection_that_sends_no_frame_in_time_is_closed() -> None:
    """peer_frame_timeout: a connection whose authenticated frame has not arrived in full by then is closed."""

    async def scenario() -> None:
        instance = Instance(claim=2_000, limits=RegistryConfig(peer_frame_timeout=0.1))
        await instance.server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", instance.server.port)
        await reader.readexactly(instancekey.HELLO_LEN)
        writer.write(b"x" * (instancekey.REQUEST_LEN - 1))  # all but its last byte
        assert await _closed(reader)
        assert instance.refused == ["TimeoutError"] and len(instance.server) == 0
        writer.close()
        await instance.server.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_new_instances_slot_is_learned_by_any_lookup_during_a_free_slot_flood(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 9b3 F5 (instance_bits = 10): a flood of cancels naming free slots kept the lookup queue full, and
    every cancel for a new instance's slot, not looked up yet, was dropped as `busy` (6 of 6). A lookup reads every
    held slot at once: the flood's next lookup makes the new slot live, and its cancels are passed on."""
    sender = peercancel.PeerCancelSender("host=registry", SHARED)
    registry: dict[int, tuple[str, int, int]] = {0: ("10.0.0.1", 6433, 1)}
    step = asyncio.Event()
    reads: list[int] = []

    async def held_slots(slot: int) -> dict[int, tuple[str, int, int]]:
        reads.append(slot)
        await step.wait()
        step.clear()
        return dict(registry)

    monkeypatch.setattr(sender, "_held_slots", held_slots)

    async def find(slot: int) -> object:
        try:
            return await sender.find(slot)
        except peercancel.LookupBusy:
            return "busy"

    async def scenario() -> None:
        flood = [asyncio.ensure_future(find(slot)) for slot in range(100, 100 + 1 + peercancel.LOOKUP_QUEUE)]
        await asyncio.sleep(0.01)
        assert await find(2) == "busy"  # slot 2 is free still, and the queue full
        registry[2] = ("10.0.0.3", 6433, 7)  # instance c claims slot 2
        step.set()  # the lookup under way (a free slot's) ends, and the next one of the flood starts
        await asyncio.sleep(0.01)
        assert await asyncio.wait_for(find(2), 1) == ("10.0.0.3", 6433, 7)  # live: no lookup of its own
        assert 2 not in reads
        for _ in flood:
            step.set()
            await asyncio.sleep(0.01)
        assert [await task for task in flood] == [None] * len(flood)

    asyncio.run(asyncio.wait_for(scenario(), 30))
