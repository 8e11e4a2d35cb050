"""Pre-login caps: per address (IPv6 per /64) and in total; silent ones make room first, SCRAM exchanges never."""

from __future__ import annotations

import pytest

from proxy.auth.prelogin import PreloginLimiter, address_key


def test_an_idle_flood_from_one_address_holds_only_its_cap_and_a_newcomer_gets_in() -> None:
    lim = PreloginLimiter(per_address=3, total=10)
    evicted = []
    for i in range(10_000):
        evicted += lim.admit(f"idle{i}", "127.0.0.1")[0]
    assert lim.count("127.0.0.1") == 3 and len(evicted) == 10_000 - 3
    assert all(limit == "address" for _, limit in evicted)
    assert lim.admit("real", "127.0.0.1") == ([("idle9997", "address")], None)  # the oldest silent one goes
    lim.spoke("real")
    for i in range(5):  # the flood goes on: silent ones go first, the client logging in stays
        assert lim.admit(f"more{i}", "127.0.0.1")[0][0][0] != "real"
    lim.done("real")  # logged in: no longer counted
    assert lim.count("127.0.0.1") == 2


def test_when_all_have_spoken_the_oldest_goes() -> None:
    lim = PreloginLimiter(per_address=2, total=10)
    for name in ("a", "b"):
        lim.admit(name, "x")
        lim.spoke(name)
    assert lim.admit("c", "x") == ([("a", "address")], None)


def test_the_total_cap_closes_a_silent_one_of_any_address_before_one_that_has_spoken() -> None:
    # Two silent sockets on each of many addresses: a client that has spoken, at an address holding one, stays.
    lim = PreloginLimiter(per_address=5, total=6)
    lim.admit("client", "10.0.0.9")
    lim.spoke("client")
    for i in range(5):
        lim.admit(f"idle{i}", f"10.0.1.{i // 2}")
    evicted = [v for i in range(100) for v in lim.admit(f"more{i}", f"10.0.2.{i // 2}")[0]]
    assert len(evicted) == 100 and all(limit == "total" for _, limit in evicted)
    assert "client" not in [c for c, _ in evicted] and lim.count("10.0.0.9") == 1
    assert evicted[:5] == [(f"idle{i}", "total") for i in range(5)]  # oldest silent first


def test_when_none_is_silent_the_oldest_that_has_spoken_goes_in_all() -> None:
    lim = PreloginLimiter(per_address=2, total=3)
    for name, address in (("a", "x"), ("b", "y"), ("c", "z")):
        lim.admit(name, address)
        lim.spoke(name)
    assert lim.admit("d", "w") == ([("a", "total")], None)


def test_a_login_in_its_scram_exchange_is_never_closed_the_newcomer_is_refused() -> None:
    lim = PreloginLimiter(per_address=2, total=3)
    for name in ("a", "b"):
        lim.admit(name, "x")
        lim.spoke(name)
        lim.exchanging(name)
    assert lim.admit("c", "x") == ([], "address")  # refused, nothing closed
    assert lim.count("x") == 2 and len(lim) == 2
    lim.admit("d", "y")
    lim.exchanging("d")
    assert lim.admit("e", "z") == ([], "total")
    lim.done("a")
    assert lim.admit("e", "z") == ([], None)


def test_ipv6_addresses_count_per_64() -> None:
    lim = PreloginLimiter(per_address=2, total=100)
    for i in range(2):
        lim.admit(f"v6-{i}", f"2001:db8:1:2::{i + 1}")
    assert lim.admit("other-host", "2001:db8:1:2:ffff::1") == ([("v6-0", "address")], None)
    assert lim.admit("other-prefix", "2001:db8:1:3::1") == ([], None)
    assert lim.count("2001:db8:1:2::77") == 2
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3" and address_key("10.1.2.3") == "10.1.2.3"
    assert address_key("fe80::1%eth0") == "fe80::/64" and address_key("local") == "local"


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
