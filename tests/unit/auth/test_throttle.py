"""Failed-login throttle: free attempts, exponential delay, sliding window, success reset, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.auth.throttle import AuthThrottle

A = "198.51.100.7"
B = "203.0.113.9"


def fail(throttle: AuthThrottle, address: str, times: int, now: float) -> None:
    for _ in range(times):
        throttle.record_failure(address, now)


def test_no_delay_under_the_limit() -> None:
    t = AuthThrottle(max_failures=5)
    assert t.delay_for(A, 0.0) == 0.0
    fail(t, A, 4, 0.0)
    assert t.delay_for(A, 1.0) == 0.0
    assert t.failures(A, 1.0) == 4


def test_exponential_delay_after_the_limit_then_capped() -> None:
    t = AuthThrottle(max_failures=5, window=60.0, base_delay=0.5, max_delay=10.0)
    delays = []
    for i in range(10):
        t.record_failure(A, float(i))
        delays.append(t.delay_for(A, float(i)))
    assert delays == [0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]


def test_addresses_are_independent() -> None:
    t = AuthThrottle(max_failures=2)
    fail(t, A, 3, 0.0)
    assert t.delay_for(A, 0.0) > 0
    assert t.delay_for(B, 0.0) == 0.0


def test_failures_expire_with_the_sliding_window() -> None:
    t = AuthThrottle(max_failures=3, window=60.0, base_delay=1.0, max_delay=30.0)
    t.record_failure(A, 0.0)
    t.record_failure(A, 30.0)
    t.record_failure(A, 50.0)
    t.record_failure(A, 55.0)
    assert t.delay_for(A, 55.0) == 2.0  # 4 failures in (-5, 55]
    assert t.delay_for(A, 60.0) == 1.0  # the one at t=0 left the window
    assert t.delay_for(A, 90.0) == 0.0  # only 50 and 55 remain
    assert t.delay_for(A, 115.0) == 0.0
    assert len(t) == 0  # fully expired entries are dropped


def test_success_clears_the_address() -> None:
    t = AuthThrottle(max_failures=1)
    fail(t, A, 5, 0.0)
    assert t.delay_for(A, 1.0) > 0
    t.record_success(A, 1.0)
    assert t.delay_for(A, 1.0) == 0.0
    assert len(t) == 0
    t.record_success(B, 1.0)  # unknown address: no-op


def test_memory_is_bounded_and_oldest_evicted_first() -> None:
    t = AuthThrottle(max_failures=1, window=1000.0, max_tracked=3)
    for i, address in enumerate(["a", "b", "c", "d"]):
        t.record_failure(address, float(i))
    assert len(t) == 3
    assert t.failures("a", 4.0) == 0  # evicted: least recently failed
    assert t.failures("d", 4.0) == 1
    t.record_failure("b", 5.0)  # b becomes the most recent
    t.record_failure("e", 6.0)
    assert t.failures("c", 6.0) == 0 and t.failures("b", 6.0) == 2


def test_expired_addresses_are_pruned_on_new_failures() -> None:
    t = AuthThrottle(window=10.0)
    for i in range(100):
        t.record_failure(f"10.0.0.{i}", 0.0)
    assert len(t) == 100
    t.record_failure(A, 11.0)
    assert len(t) == 1


def test_per_address_history_is_bounded() -> None:
    t = AuthThrottle(max_failures=5, base_delay=0.5, max_delay=10.0)
    fail(t, A, 10_000, 0.0)
    assert t.failures(A, 0.0) <= 5 + 5 + 1
    assert t.delay_for(A, 0.0) == 10.0


def test_huge_exponents_do_not_overflow() -> None:
    for base, cap in ((1e-300, 1e300), (2.0, 1e308)):
        t = AuthThrottle(max_failures=1, base_delay=base, max_delay=cap)
        fail(t, A, 3000, 0.0)
        assert 0 < t.delay_for(A, 0.0) <= cap
    assert t.delay_for(A, 0.0) == 1e308  # 2.0 * 2**1023 overflows to inf, then the cap applies


def test_default_clock_is_used_when_now_is_omitted() -> None:
    t = AuthThrottle(max_failures=1)
    t.record_failure(A)
    assert t.delay_for(A) == 0.5
    assert t.failures(A) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_failures": 0},
        {"window": 0.0},
        {"base_delay": -1.0},
        {"base_delay": 5.0, "max_delay": 1.0},
        {"max_tracked": 0},
    ],
)
def test_invalid_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AuthThrottle(**kwargs)  # type: ignore[arg-type]


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["fail", "ok", "ask"]), st.sampled_from(["a", "b", "c", "d"]), st.floats(0, 5)
        ),
        max_size=60,
    )
)
def test_delay_always_within_bounds(events: list[tuple[str, str, float]]) -> None:
    t = AuthThrottle(max_failures=2, window=10.0, base_delay=0.25, max_delay=3.0, max_tracked=3)
    now = 0.0
    for kind, address, step in events:
        now += step
        if kind == "fail":
            t.record_failure(address, now)
        elif kind == "ok":
            t.record_success(address, now)
        delay = t.delay_for(address, now)
        assert delay == 0.0 or 0.25 <= delay <= 3.0
        assert len(t) <= 3
