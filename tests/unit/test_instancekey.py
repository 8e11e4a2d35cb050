"""Stateless replicas' cancel keys (the instance slot in the process id) and the forwarded-cancel exchange."""

from __future__ import annotations

import pytest

from proxy import instancekey
from proxy.cancel import KeySpace
from proxy.instancekey import (
    Ask,
    InstanceSpace,
    answer,
    challenge_of,
    check_answer,
    check_request,
    hello,
    key_proof,
    request,
)

SHARED = b"s" * 32


@pytest.mark.parametrize(("slot", "bits"), [(0, 1), (1, 1), (5, 3), (31, 5), (6, 5), (1023, 10)])
def test_process_ids_carry_the_slot(slot: int, bits: int) -> None:
    space = InstanceSpace(slot, bits)
    ids = {space.new_process_id() for _ in range(200)}
    assert all(0 < pid < 1 << 31 for pid in ids) and len(ids) > 190
    assert {space.slot_of(pid) for pid in ids} == {slot}
    assert {space.elsewhere(pid) for pid in ids} == {None}
    other = InstanceSpace((slot + 1) % (1 << bits), bits)
    assert {other.elsewhere(pid) for pid in ids} == {slot}  # another instance routes it here
    assert len({pid & 0b111 for pid in ids}) > 1  # the low bits (a worker's index) stay random


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_instances_of_any_worker_count_read_each_others_slots(workers: int) -> None:
    """The slot sits in the top bits: an instance of one worker reads a key of an instance of N workers (the worker
    index below it) alike. With the slot above the worker bits, a single-process instance read a 2-worker
    instance's key as its own and ignored the cancel."""
    mine, single = InstanceSpace(2, 5), InstanceSpace(1, 5)
    for index in range(workers):
        pids = [mine.carry(KeySpace(index, workers).new_process_id()) for _ in range(50)]
        assert {single.elsewhere(pid) for pid in pids} == {2} and {mine.elsewhere(pid) for pid in pids} == {None}
        assert {KeySpace(0, workers).worker_of(pid) for pid in pids} == {index}


def test_without_instances_nothing_is_routed() -> None:
    space = InstanceSpace()
    pid = space.new_process_id()
    assert space.slot_of(pid) is None and space.elsewhere(pid) is None
    assert InstanceSpace(0, 3).slot_of(0) is None and InstanceSpace(0, 3).slot_of(1 << 31) is None


def test_use_space_checks_its_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        instancekey.use_space(InstanceSpace(4, 2))
    try:
        instancekey.use_space(InstanceSpace(3, 2))
        assert instancekey.space().slot_of(instancekey.new_process_id()) == 3
    finally:
        instancekey.use_space(InstanceSpace())


CHALLENGE = b"c" * instancekey.CHALLENGE_LEN
SECRET_KEY = b"\x9f\x13\x77\xe4"


def test_an_exchange_for_this_claim_names_the_session_without_its_key() -> None:
    frame = request(SHARED, CHALLENGE, 3, 1_700_000_000_000_000, 1234, SECRET_KEY)
    assert len(frame) == instancekey.REQUEST_LEN
    assert SECRET_KEY not in frame  # red team 8b F8: the key travelled in clear to whoever held the address
    ask = check_request(SHARED, CHALLENGE, frame, 3, 1_700_000_000_000_000)
    assert isinstance(ask, Ask) and ask.mine and ask.process_id == 1234
    assert ask.proof == key_proof(SHARED, 1234, SECRET_KEY) != key_proof(SHARED, 1234, b"\0\0\0\0")
    for status in (instancekey.FOUND, instancekey.UNKNOWN, instancekey.STALE):
        assert check_answer(SHARED, CHALLENGE, frame, answer(SHARED, CHALLENGE, frame, status)) == status


@pytest.mark.parametrize(("slot", "claim"), [(4, 1_700_000_000_000_000), (3, 1_700_000_000_000_001), (None, None)])
def test_a_request_for_another_slot_or_claim_is_not_this_instances(slot: int | None, claim: int | None) -> None:
    """A cached address an instance of another claim now holds: it answers STALE, the sender looks up again."""
    frame = request(SHARED, CHALLENGE, 3, 1_700_000_000_000_000, 1234, SECRET_KEY)
    ask = check_request(SHARED, CHALLENGE, frame, slot, claim)
    assert isinstance(ask, Ask) and not ask.mine


def test_a_captured_request_is_worth_nothing_on_another_connection() -> None:
    """Red team 8b F6: replay protection was a memory of 4,096 nonces anyone could flush; a request is now bound to
    the receiver's fresh challenge, so there is nothing to remember."""
    frame = request(SHARED, CHALLENGE, 3, 7, 1234, SECRET_KEY)
    assert check_request(SHARED, b"d" * instancekey.CHALLENGE_LEN, frame, 3, 7) == "bad_mac"


def test_only_the_shared_secret_makes_a_genuine_answer() -> None:
    """Red team 8b F8: any `K` counted as the cancel done, so whoever held an old address swallowed cancels."""
    frame = request(SHARED, CHALLENGE, 3, 7, 1234, SECRET_KEY)
    other = request(SHARED, CHALLENGE, 3, 7, 1234, SECRET_KEY)  # the same cancel again (a fresh sender nonce)
    good = answer(SHARED, CHALLENGE, frame, instancekey.FOUND)
    assert check_answer(SHARED, CHALLENGE, other, good) is None  # an answer seen before does not fit another request
    for forged in (b"K", b"K" * instancekey.ANSWER_LEN, answer(b"x" * 32, CHALLENGE, frame, instancekey.FOUND),
                   b"X" + good[1:], good[:-1]):
        assert check_answer(SHARED, CHALLENGE, frame, forged) is None


def _flipped(frame: bytes) -> bytes:
    """`frame` with one bit of its MAC changed (a fixed last byte left it unchanged 1 time in 256)."""
    return frame[:-1] + bytes([frame[-1] ^ 1])


@pytest.mark.parametrize(("frame", "reason"), [
    (request(b"x" * 32, CHALLENGE, 3, 7, 1, b"abcd"), "bad_mac"),
    (request(SHARED, CHALLENGE, 3, 7, 1, b"abcd")[:-1], "bad_length"),
    (_flipped(request(SHARED, CHALLENGE, 3, 7, 1, b"abcd")), "bad_mac"),
])
def test_bad_requests_are_refused(frame: bytes, reason: str) -> None:
    assert check_request(SHARED, CHALLENGE, frame, 3, 7) == reason


def test_the_opening_carries_the_challenge() -> None:
    opening = hello()
    assert len(opening) == instancekey.HELLO_LEN and challenge_of(opening) == opening[4:] != challenge_of(hello())
    assert challenge_of(b"PGTC" + CHALLENGE) is None and challenge_of(opening[:-1]) is None
