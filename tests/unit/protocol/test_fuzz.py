"""Bounded, seeded fuzzing of the codec, the framing and the client session (tests/support/fuzzing.py): a few
seconds each in the suite; benchmarks/fuzz.py runs the same targets for millions of inputs."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.support import fuzzing as fz

RUN = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Inputs: raw bytes, or a valid message (sequence) mutated by the seeded mutator.
_seeds = st.lists(st.sampled_from(fz.SEEDS), min_size=1, max_size=6).map(b"".join)
_mutated = st.tuples(_seeds, st.integers(0, 2**32 - 1)).map(lambda t: fz.mutate(random.Random(t[1]), t[0]))
wire = st.one_of(st.binary(max_size=300), _seeds, _mutated)


@seed(17)
@RUN
@given(wire)
def test_codec_refuses_only_with_decode_error(data: bytes) -> None:
    fz.codec(data)


@seed(17)
@RUN
@given(wire, st.integers(0, 2**32 - 1))
def test_framing_returns_exactly_what_it_was_fed(data: bytes, split: int) -> None:
    fz.framing(data, fz.chunks(random.Random(split), data))


@seed(17)
@RUN
@given(wire, st.integers(0, 2**32 - 1), st.binary(max_size=64))
def test_session_after_login_never_raises(data: bytes, split: int, backend: bytes) -> None:
    fz.session(data, fz.chunks(random.Random(split), data), ready=True, backend=backend)


_startup = st.tuples(st.sampled_from(fz.STARTUP_SEEDS), st.integers(0, 2**32 - 1)).map(
    lambda t: fz.mutate(random.Random(t[1]), t[0]))


@seed(17)
@RUN
@given(st.one_of(st.binary(max_size=100), _startup), st.integers(0, 2**32 - 1))
def test_session_before_login_never_raises(data: bytes, split: int) -> None:
    fz.session(data, fz.chunks(random.Random(split), data), ready=False)
