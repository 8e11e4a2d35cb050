"""Stateless replicas' cancel keys (the instance slot in the process id) and the forwarded-cancel frame."""

from __future__ import annotations

import pytest

from proxy import instancekey
from proxy.instancekey import FRAME_LEN, MAX_SKEW_MS, InstanceSpace, Verifier, encode

SHARED = b"s" * 32


@pytest.mark.parametrize(("slot", "bits", "shift"), [(0, 1, 0), (1, 1, 0), (5, 3, 0), (31, 5, 0), (6, 5, 2)])
def test_process_ids_carry_the_slot(slot: int, bits: int, shift: int) -> None:
    space = InstanceSpace(slot, bits, shift)
    ids = {space.new_process_id() for _ in range(200)}
    assert all(0 < pid < 1 << 31 for pid in ids) and len(ids) > 190
    assert {space.slot_of(pid) for pid in ids} == {slot}
    assert {space.elsewhere(pid) for pid in ids} == {None}
    other = InstanceSpace((slot + 1) % (1 << bits), bits, shift)
    assert {other.elsewhere(pid) for pid in ids} == {slot}  # another instance routes it here
    if shift:  # the bits below (a worker's index) stay random
        assert len({pid & ((1 << shift) - 1) for pid in ids}) > 1


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


def test_a_good_frame_passes_once() -> None:
    v = Verifier(SHARED)
    frame = encode(SHARED, 1234, b"abcd", 1_000_000)
    assert len(frame) == FRAME_LEN
    assert v.check(frame, 1_000_500) == (1234, b"abcd")
    assert v.check(frame, 1_000_600) == "replayed"


@pytest.mark.parametrize(("frame", "reason"), [
    (encode(b"x" * 32, 1, b"abcd", 1_000_000), "bad_mac"),
    (encode(SHARED, 1, b"abcd", 1_000_000 - MAX_SKEW_MS - 1), "stale"),
    (encode(SHARED, 1, b"abcd", 1_000_000)[:-1], "bad_length"),
    (encode(SHARED, 1, b"abcd", 1_000_000)[:-1] + b"\0", "bad_mac"),
])
def test_bad_frames_are_refused(frame: bytes, reason: str) -> None:
    assert Verifier(SHARED).check(frame, 1_000_000) == reason


def test_the_nonce_memory_is_bounded() -> None:
    v = Verifier(SHARED, remember=3)
    frames = [encode(SHARED, 1, b"abcd", 1_000_000) for _ in range(5)]
    assert all(v.check(f, 1_000_000) == (1, b"abcd") for f in frames)
    assert len(v._seen) == 3
