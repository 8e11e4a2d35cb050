"""proxy.cancel: the keys pgtenant hands to clients map to the sessions they were given to, and only the exact
secret finds one."""

from __future__ import annotations

import pytest

from proxy.cancel import (
    CANCEL_BURST,
    CANCEL_RATE,
    CANCEL_REPEAT_AFTER,
    CancelRegistry,
    ForwardLimiter,
    KeySpace,
    SessionCancels,
    client_key,
    new_cancel_key,
    source_of,
    use_key_space,
)
from proxy.instancekey import key_proof


class Session:
    """A session the registry points at (the I/O layer's ClientConnection)."""


def test_the_registered_key_finds_its_session() -> None:
    reg = CancelRegistry()
    target = Session()
    reg.register(7, b"cli1", target)
    assert 7 in reg and 8 not in reg
    assert reg.lookup(7, b"cli1") is target


def test_a_wrong_or_partial_secret_or_unknown_process_finds_nothing() -> None:
    reg = CancelRegistry()
    reg.register(7, b"cli1", Session())
    assert reg.lookup(7, b"cli2") is None
    assert reg.lookup(7, b"cli") is None and reg.lookup(7, b"cli1\x00") is None
    assert reg.lookup(8, b"cli1") is None


def test_registering_again_replaces_and_unregistering_forgets() -> None:
    reg = CancelRegistry()
    reg.register(7, b"new!", Session())
    newer = Session()
    reg.register(7, b"new!", newer)  # the same key given anew
    assert reg.lookup(7, b"new!") is newer
    reg.unregister(7, b"new!")
    assert 7 not in reg and reg.lookup(7, b"new!") is None
    reg.unregister(7, b"new!")  # unregistering twice is harmless
    assert 7 not in reg


def test_two_sessions_sharing_a_process_id_keep_their_own_cancels() -> None:
    """Red team 9b N4: keys were registered by process id alone (25-26 random bits): a second session drawing the
    same one overwrote the first's entry, and the first's end unregistered the second's."""
    shared = b"s" * 32
    reg = CancelRegistry()
    x, y = Session(), Session()
    reg.register(7, b"xxxx", x)
    reg.register(7, b"yyyy", y)
    assert reg.lookup(7, b"xxxx") is x and reg.lookup(7, b"yyyy") is y
    assert reg.lookup_proof(7, key_proof(shared, 7, b"xxxx"), shared) is x
    reg.unregister(7, b"xxxx")  # x ends
    assert reg.lookup(7, b"xxxx") is None and reg.lookup(7, b"yyyy") is y and 7 in reg
    assert reg.lookup_proof(7, key_proof(shared, 7, b"yyyy"), shared) is y
    reg.unregister(7, b"yyyy")
    assert 7 not in reg


# --- keys that name a worker process (proxy/io/supervise.py) ---------------------------------------------------------


def test_one_process_keeps_every_process_id_bit_random() -> None:
    space = KeySpace()
    assert space.bits == 0
    ids = {space.new_process_id() for _ in range(200)}
    assert all(0 < pid < 1 << 31 for pid in ids) and len(ids) == 200
    assert {space.worker_of(pid) for pid in ids} == {0}


@pytest.mark.parametrize(("count", "bits"), [(2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (128, 7)])
def test_process_ids_name_their_worker_in_the_low_bits(count: int, bits: int) -> None:
    for index in (0, count - 1):
        space = KeySpace(index, count)
        assert space.bits == bits
        for _ in range(50):
            pid = space.new_process_id()
            assert 0 < pid < 1 << 31
            assert pid & ((1 << bits) - 1) == index
            assert KeySpace(0, count).worker_of(pid) == index  # any worker reads it alike


def test_a_process_id_no_worker_gave_names_none() -> None:
    space = KeySpace(0, 3)  # two bits: index 3 is no worker's
    assert space.worker_of(0b111) is None
    assert space.worker_of(0) is None and space.worker_of(-4) is None and space.worker_of(1 << 31) is None
    assert space.worker_of(0b110) == 2


def test_the_secret_stays_random_bytes_under_workers() -> None:
    try:
        use_key_space(KeySpace(1, 2))
        keys = [new_cancel_key() for _ in range(100)]
    finally:
        use_key_space(KeySpace())
    assert all(pid & 1 == 1 and len(secret) == 32 for pid, secret in keys)
    assert len({client_key(key, 0)[1] for key in keys}) > 90  # (32 random bits each: a repeat in 100 is ~1e-6)
    with pytest.raises(ValueError, match="out of"):
        use_key_space(KeySpace(2, 2))


def test_another_instances_proof_finds_the_session_and_nothing_else() -> None:
    """Between instances the key travels as a proof under the peer secret (red team 8b F8), never in clear."""
    shared = b"s" * 32
    reg = CancelRegistry()
    target = Session()
    reg.register(7, b"cli1", target)
    assert reg.lookup_proof(7, key_proof(shared, 7, b"cli1"), shared) is target
    assert reg.lookup_proof(7, key_proof(shared, 7, b"cli2"), shared) is None
    assert reg.lookup_proof(7, key_proof(b"t" * 32, 7, b"cli1"), shared) is None
    assert reg.lookup_proof(8, key_proof(shared, 8, b"cli1"), shared) is None


def test_cancels_passed_to_other_instances_are_limited_per_client_address() -> None:
    """Anyone can send CancelRequests naming another instance: each costs an exchange with it (red team 8b F4/F6)."""
    limit = ForwardLimiter(rate=2.0, burst=3.0, addresses=2)
    assert [limit.allow("10.0.0.1", 100.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow("10.0.0.2", 100.0)  # another address has its own budget
    assert limit.allow("10.0.0.1", 100.5) and not limit.allow("10.0.0.1", 100.5)  # 2 a second refill
    limit.allow("10.0.0.3", 100.5)
    assert len(limit._buckets) == 2  # bounded: the least recently seen address is forgotten


def test_the_per_address_forward_budget_counts_an_ipv6_client_per_64() -> None:
    """Red team 9b3 F7: the bucket was keyed per /128, so a client picking a new address in its /64 per connection
    (one PROXY header each) got 577 of 600 cancels passed on instead of its own 20 a second. Keyed per /64 as the
    login limits count IPv6; another /64 keeps its own budget."""
    limit = ForwardLimiter(rate=2.0, burst=3.0, total_rate=1000.0, total_burst=1000.0)
    passed = [limit.allow(f"2001:db8:1:2::{i:x}", 100.0) for i in range(1, 7)]
    assert passed == [True, True, True, False, False, False]
    assert limit.allow("2001:db8:1:3::1", 100.0)  # the next /64: a budget of its own
    assert limit.allow("10.0.0.1", 100.0) and limit.allow("::ffff:10.0.0.2", 100.0)  # IPv4 (mapped too): per address


def test_cancels_passed_on_are_limited_in_all_and_per_destination() -> None:
    """Red team 9b N1: many addresses together stay under one rate, and one instance gets a bounded number of
    exchanges at a time."""
    limit = ForwardLimiter(rate=100.0, burst=100.0, total_rate=2.0, total_burst=3.0, in_flight=2)
    assert [limit.allow(f"10.0.{i}.1", 100.0) for i in range(4)] == [True, True, True, False]
    assert limit.allow("10.0.9.1", 100.5) and not limit.allow("10.0.8.1", 100.5)  # the total refills 2 a second
    assert [limit.begin(1), limit.begin(1), limit.begin(1), limit.begin(2)] == [True, True, False, True]
    limit.end(1)
    assert limit.begin(1) and not limit.begin(1)
    for slot in (1, 1, 2):
        limit.end(slot)
    assert limit._flying == {}


def test_the_overall_forward_budget_is_shared_fairly_among_sources() -> None:
    """Red team 9b2 P2: thousands of addresses, each under its own 20/s, drained the overall 200/s, and every other
    client's cross-instance cancel was dropped. While the overall budget is short, a source (/24, /64) gets one
    cancel a second: a flood from fewer sources than the overall rate leaves room for a victim's one cancel."""
    limit = ForwardLimiter()
    flood = victims = 0
    for tick in range(200):  # 10 s: 50 /24s, a fresh address per packet, 1000 packets a second in all
        now = 100.0 + tick * 0.05
        for i in range(50):
            flood += limit.allow(f"198.18.{i}.{tick % 250 + 1}", now)
        if tick % 20 == 10:  # a victim's one cancel a second, each from another network
            victims += limit.allow(f"203.0.{tick}.7", now)
    assert victims == 10  # every victim's cancel passed on
    assert flood <= 400 + 200 * 10  # (the overall rate still holds)


@pytest.mark.parametrize(("address", "source"), [
    ("10.1.2.3", "10.1.2.0/24"), ("::ffff:10.1.2.3", "10.1.2.0/24"), ("2001:db8:1:2:3::4", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"), ("/tmp/.s.PGSQL.6432", "/tmp/.s.PGSQL.6432"),
])
def test_forward_sources_are_address_blocks(address: str, source: str) -> None:
    assert source_of(address) == source


def test_a_protocol_3_2_client_gets_the_whole_secret_and_a_3_0_client_four_bytes() -> None:
    """Issue 19: keep the unguessable part as large as the protocol allows (PostgreSQL 18 gives 3.2 clients 32
    bytes)."""
    pid, secret = new_cancel_key()
    assert client_key((pid, secret), 2) == (pid, secret) and len(secret) == 32
    assert client_key((pid, secret), 0) == (pid, secret[:4])


def test_a_flood_from_more_sources_than_the_overall_rate_leaves_room_for_a_victim() -> None:
    """Red team 9b2 P2's residue: more than ~200 sources each sending every second emptied the overall budget (each
    source was due once a second). A source whose cancels the owning instance answered "no session has that key"
    (a flood's guessed keys) now waits a minute while the budget is short: once each of 1,000 /24s sending every
    second has had one cancel passed on (5 s: the budget's burst, then its rate), a victim's one cancel a second
    passes."""
    limit = ForwardLimiter()
    victims = 0
    for tick in range(300):  # 15 s: 1,000 /24s, each sending once a second (a fresh address per packet)
        now = 100.0 + tick * 0.05
        for i in range(tick % 20, 1000, 20):
            address = f"10.{i // 250}.{i % 250}.{tick % 250 + 1}"
            if limit.allow(address, now):
                limit.wrong(address, now)  # (a random key: the owning instance has no such session)
        if tick >= 100 and tick % 20 == 10:  # from 5 s: a victim's one cancel a second, each from another network
            victims += limit.allow(f"203.0.{tick % 250}.7", now)
    assert victims == 10


# --- a session's own CancelRequests (red team 9s6 F4) ----------------------------------------------------------------


def test_session_cancels_one_per_running_request_then_again_after_the_repeat_interval() -> None:
    gate, running = SessionCancels(), object()
    assert gate.check(running, 100.0) is None
    assert [gate.check(running, 100.0 + i / 1000) for i in range(99)] == ["repeat"] * 99
    assert gate.check(running, 100.0 + CANCEL_REPEAT_AFTER) is None  # (a cancel PostgreSQL dropped: the next goes)
    assert gate.check(object(), 100.0 + CANCEL_REPEAT_AFTER) is None  # the next request: forwarded at once


def test_session_cancels_none_while_nothing_runs() -> None:
    gate = SessionCancels()
    assert [gate.check(None, 5.0) for _ in range(3)] == ["no_request"] * 3
    assert gate.check(object(), 5.0) is None  # (a dropped one spends nothing)


def test_session_cancels_are_rate_limited_over_requests() -> None:
    gate = SessionCancels()
    burst = [gate.check(object(), 10.0) for _ in range(int(CANCEL_BURST) + 5)]
    assert burst.count(None) == CANCEL_BURST and burst[-5:] == ["throttled"] * 5
    assert gate.check(object(), 10.0 + 1.5 / CANCEL_RATE) is None  # one more token 1/rate later
    assert gate.check(object(), 10.0 + 1.5 / CANCEL_RATE) == "throttled"
