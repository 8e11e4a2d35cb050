"""Pre-login caps: per address and in total, the oldest waiting connection (silent first) makes room."""

from __future__ import annotations

import pytest

from proxy.auth.prelogin import PreloginLimiter


def test_an_idle_flood_from_one_address_holds_only_its_cap_and_a_newcomer_gets_in() -> None:
    lim = PreloginLimiter(per_address=3, total=10)
    evicted = []
    for i in range(10_000):
        evicted += lim.admit(f"idle{i}", "127.0.0.1")
    assert lim.count("127.0.0.1") == 3 and len(evicted) == 10_000 - 3
    assert all(limit == "address" for _, limit in evicted)
    assert lim.admit("real", "127.0.0.1") == [("idle9997", "address")]  # the oldest silent one goes
    lim.spoke("real")
    for i in range(5):  # the flood goes on: silent ones go first, the client logging in stays
        assert lim.admit(f"more{i}", "127.0.0.1")[0][0] != "real"
    lim.done("real")  # logged in: no longer counted
    assert lim.count("127.0.0.1") == 2


def test_when_all_have_spoken_the_oldest_goes() -> None:
    lim = PreloginLimiter(per_address=2, total=10)
    for name in ("a", "b"):
        lim.admit(name, "x")
        lim.spoke(name)
    assert lim.admit("c", "x") == [("a", "address")]


def test_the_total_cap_takes_from_the_address_holding_most() -> None:
    lim = PreloginLimiter(per_address=5, total=6)
    for i in range(5):
        lim.admit(f"flood{i}", "10.0.0.1")
    lim.admit("other", "10.0.0.2")
    assert lim.admit("third", "10.0.0.3") == [("flood0", "total")]
    assert len(lim) == 6 and lim.count("10.0.0.2") == 1


def test_done_is_idempotent_and_unknown_connections_are_ignored() -> None:
    lim = PreloginLimiter(per_address=1, total=1)
    lim.admit("a", "x")
    lim.done("a")
    lim.done("a")
    lim.spoke("zzz")
    assert len(lim) == 0 and lim.count("x") == 0


def test_invalid_caps() -> None:
    with pytest.raises(ValueError):
        PreloginLimiter(per_address=0, total=5)
    with pytest.raises(ValueError):
        PreloginLimiter(per_address=6, total=5)
