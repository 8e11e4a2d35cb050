"""Failed-login budgets: refusal beyond the budget, parallel logins, per user and per address, known addresses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.auth.throttle import AuthThrottle, Refusal

A = "198.51.100.7"
B = "203.0.113.9"


def fail(t: AuthThrottle, address: str, user: str, times: int, now: float) -> None:
    for _ in range(times):
        assert t.admit(address, user, now) is None
        t.failed(address, user, now)


def test_attempts_beyond_the_budget_are_refused_not_delayed() -> None:
    t = AuthThrottle(max_failures=3, window=60.0)
    fail(t, A, "uma", 3, 10.0)
    refusal = t.admit(A, "uma", 20.0)
    assert refusal == Refusal("address_user", 50.0)  # the first failure leaves the window at 70
    assert t.admit(A, "uma", 70.5) is None  # a slot freed up


def test_parallel_attempts_cannot_outrun_the_budget() -> None:
    # 300 logins started at once all pass the first check; their proofs arrive one by one, each checked again
    # before it is looked at: only the budget's worth of guesses get an answer.
    t = AuthThrottle(max_failures=5)
    assert all(t.admit(A, "uma", 0.0) is None for _ in range(300))
    answered = 0
    for _ in range(300):
        if t.admit(A, "uma", 0.1) is None:
            answered += 1
            t.failed(A, "uma", 0.1)
    assert answered == 5


def test_parallel_logins_with_the_right_password_are_not_held_back() -> None:
    t = AuthThrottle(max_failures=5)
    assert all(t.admit(A, "ivan", 0.0) is None for _ in range(50))  # a pool filling up
    for _ in range(50):
        assert t.admit(A, "ivan", 0.1) is None
        t.succeeded(A, "ivan", 0.1)


def test_another_users_success_does_not_clear_failures() -> None:
    t = AuthThrottle(max_failures=4)
    tried = 0
    for _ in range(10):  # 40 guesses against uma with a correct alice login every 4th
        for _ in range(3):
            if t.admit(A, "uma", 1.0) is None:
                t.failed(A, "uma", 1.0)
                tried += 1
        assert t.admit(A, "alice", 1.0) is None
        t.succeeded(A, "alice", 1.0)
    assert tried == 4  # only the budget's worth were even tried
    assert t.admit(A, "uma", 1.0) is not None


def test_own_success_clears_own_failures_only() -> None:
    t = AuthThrottle(max_failures=3)
    fail(t, A, "alice", 2, 0.0)
    fail(t, A, "uma", 2, 0.0)
    assert t.admit(A, "alice", 0.0) is None
    t.succeeded(A, "alice", 0.0)
    assert t.failures(A, "alice", 0.0) == 0 and t.failures(A, "uma", 0.0) == 2


def test_one_tenants_failures_never_refuse_another_user_behind_the_same_address() -> None:
    # A Tableau Server / NAT: uma's guesses and a spray of junk names spend their own budgets; alice, who has
    # not failed there, logs in — whether she logged in from there before or not (a restart forgets that).
    t = AuthThrottle(max_failures=5, max_address_failures=10)
    fail(t, A, "uma", 5, 1.0)
    for i in range(5):
        fail(t, A, f"spray{i}", 1, 1.0)  # the address budget (10) is now spent too
    assert t.admit(A, "uma", 2.0).limit == "address_user"  # type: ignore[union-attr]
    assert t.admit(A, "spray0", 2.0).limit == "address"  # type: ignore[union-attr]  # failed here: refused
    assert t.admit(A, "alice", 2.0) is None  # never failed here: no budget of others applies
    assert t.admit(A, "bob", 2.0) is None
    t.failed(A, "newcomer", 2.0)  # beyond the address budget a new name gets one guess per window, no more
    assert t.admit(A, "newcomer", 2.0).limit == "address"  # type: ignore[union-attr]


def test_a_spray_from_one_address_gets_one_guess_per_name_once_the_budget_is_spent() -> None:
    t = AuthThrottle(max_failures=5, max_address_failures=100)
    answered = 0
    for round_ in range(5):  # five passwords tried against 1,000 names
        for i in range(1000):
            if t.admit(A, f"u{i}", float(round_)) is None:
                answered += 1
                t.failed(A, f"u{i}", float(round_))
    assert answered == 100 + (1000 - 100)  # the budget, then one guess for each name not yet tried


def test_a_distributed_guess_at_one_user_is_bounded_and_never_locks_it_out() -> None:
    t = AuthThrottle(max_failures=5, max_user_failures=8)
    for i in range(8):
        fail(t, f"10.0.0.{i}", "alice", 1, 0.0)
    assert t.admit("10.0.0.1", "alice", 1.0) == Refusal("user", 59.0)  # an address that failed for alice
    assert t.admit("10.9.9.9", "alice", 1.0) is None  # one guess from a new address, then refused there
    t.failed("10.9.9.9", "alice", 1.0)
    assert t.admit("10.9.9.9", "alice", 1.0) == Refusal("user", 59.0)
    assert t.admit(B, "alice", 1.0) is None  # where alice works (not failed, known or not) she logs in
    v6 = AuthThrottle(max_failures=5, max_user_failures=1)
    fail(v6, "2001:db8::1", "alice", 1, 0.0)
    assert v6.admit("2001:db8::2", "alice", 0.0) == Refusal("user", 60.0)  # a /64 is one address


def test_another_users_successes_never_evict_a_users_known_address() -> None:
    t = AuthThrottle(max_failures=1, max_user_failures=1, max_tracked=100)
    t.succeeded(A, "alice", 0.0)
    for i in range(10_001):  # one valid login from 10,001 addresses
        t.succeeded(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "mallory", 1.0)
    assert t.known(A, "alice", 2.0)
    assert len(t._known["mallory"]) == t.max_known_addresses  # each user's list is small and bounded
    t2 = AuthThrottle(max_failures=2, max_user_failures=1)
    t2.succeeded(A, "alice", 0.0)
    fail(t2, B, "alice", 1, 1.0)
    t2.failed(A, "alice", 1.0)
    assert t2.admit(A, "alice", 1.0) is None  # known at A: the user budget spent at B does not apply


def test_others_wrong_passwords_from_a_users_own_address_do_not_lock_it_out_there() -> None:
    # red team 7 F11: behind one NAT, five wrong passwords under uma's name refused uma for a minute
    t = AuthThrottle(max_failures=5, max_user_failures=20)
    t.succeeded(A, "uma", 0.0)
    fail(t, A, "uma", 6, 1.0)  # someone else at A: past the (address, user) budget of a user not known there
    assert t.admit(A, "uma", 2.0) is None  # uma logs in where she works
    fail(t, A, "uma", 14, 2.0)
    assert t.admit(A, "uma", 3.0) == Refusal("address_user", 58.0)  # guesses there stay bounded: 20 per window
    stranger = AuthThrottle(max_failures=5, max_user_failures=20)
    fail(stranger, A, "uma", 5, 1.0)
    assert stranger.admit(A, "uma", 2.0) == Refusal("address_user", 59.0)  # not known at A: five as before


def test_unlock_forgets_a_users_failures_only() -> None:
    t = AuthThrottle(max_failures=2, max_user_failures=3)
    fail(t, A, "alice", 2, 0.0)
    fail(t, B, "alice", 1, 0.0)
    fail(t, A, "uma", 2, 0.0)
    assert t.admit(A, "alice", 0.0) is not None
    assert t.unlock("alice") == 3
    assert t.admit(A, "alice", 0.0) is None and t.admit(B, "alice", 0.0) is None
    assert t.admit(A, "uma", 0.0) is not None and t.unlock("nobody") == 0


def test_unknown_and_known_users_are_counted_alike() -> None:
    t = AuthThrottle(max_failures=2)
    fail(t, A, "alice", 2, 0.0)
    fail(t, A, "no_such_user", 2, 0.0)
    assert t.admit(A, "alice", 0.0) == t.admit(A, "no_such_user", 0.0)


def test_failures_expire_and_memory_is_bounded() -> None:
    t = AuthThrottle(max_failures=3, window=10.0, max_tracked=3)
    for i in range(100):
        fail(t, f"10.0.0.{i}", f"u{i}", 1, float(i) / 100)
    assert len(t._pairs.entries) <= 3 and len(t._users.entries) <= 3 and len(t._addresses.entries) <= 3
    t.failed(A, "x", 100.0)
    assert len(t) == 3  # everything else expired: only the new failure, once in each budget
    big = AuthThrottle(max_failures=2)
    for _ in range(1000):
        big.admit(A, "alice", 0.0)
        big.failed(A, "alice", 0.0)
    assert len(big._pairs.entries[(A, "alice")]) <= 20  # history kept no longer than it matters (a known user: 20)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_failures": 0}, {"window": 0.0}, {"max_user_failures": 0}, {"max_address_failures": 0},
     {"max_tracked": 0}, {"remember_success": 0.0}, {"max_known_addresses": 0}],
)
def test_invalid_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AuthThrottle(**kwargs)  # type: ignore[arg-type]


@given(
    events=st.lists(
        st.tuples(st.sampled_from(["fail", "ok", "leave"]), st.sampled_from(["a", "b"]),
                  st.sampled_from(["u", "v", "w"]), st.floats(0, 5)),
        max_size=80,
    )
)
def test_never_more_tried_than_the_budget_in_any_window(events: list[tuple[str, str, str, float]]) -> None:
    t = AuthThrottle(max_failures=2, window=10.0, max_user_failures=3, max_address_failures=4, max_tracked=50)
    now = 0.0
    tried: list[tuple[float, str, str]] = []  # failed attempts
    known: set[tuple[str, str]] = set()
    for kind, address, user, step in events:
        now += step
        if t.admit(address, user, now) is not None:
            continue
        if kind == "fail" and t.admit(address, user, now) is None:  # checked again when the proof arrives
            t.failed(address, user, now)
            tried.append((now, address, user))
        elif kind == "ok":
            t.succeeded(address, user, now)
            tried = [x for x in tried if (x[1], x[2]) != (address, user)]
        if kind == "ok":
            known.add((address, user))
        recent = [x for x in tried if x[0] > now - 10.0]
        for a in ("a", "b"):
            for u in ("u", "v", "w"):  # a user known at an address: the per-user budget's size there
                assert sum(1 for x in recent if x[1:] == (a, u)) <= (3 if (a, u) in known else 2)
