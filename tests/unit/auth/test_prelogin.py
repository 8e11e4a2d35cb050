"""Pre-login caps: per address (IPv6 per /64) and in total; silent ones make room first, SCRAM exchanges only for
the total cap, from the most crowded network (fair eviction)."""

from __future__ import annotations

import pytest

from proxy.auth.prelogin import PreloginLimiter, address_key, prefix_key


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


def test_a_login_in_its_scram_exchange_is_not_closed_for_its_own_address_the_newcomer_is_refused() -> None:
    lim = PreloginLimiter(per_address=2, total=3)
    for name in ("a", "b"):
        lim.admit(name, "x")
        lim.spoke(name)
        lim.exchanging(name)
    assert lim.admit("c", "x") == ([], "address")  # refused, nothing closed
    assert lim.count("x") == 2 and len(lim) == 2
    lim.admit("d", "y")
    lim.exchanging("d")
    lim.done("a")
    assert lim.admit("e", "z") == ([], None)


def _parked(lim: PreloginLimiter, name: str, address: str) -> list:
    """A connection that reaches the SCRAM exchange and stays there (red team round 4 F5: slow.py)."""
    victims = lim.admit(name, address)[0]
    lim.spoke(name)
    lim.exchanging(name)
    return victims


def test_logins_parked_in_scram_by_a_few_addresses_never_lock_out_another_network() -> None:
    # Red team round 4 F5: 10 addresses x 100 logins parked in the SCRAM exchange held the whole table (1,000), and
    # every other login was refused. Now the newcomer gets a place, and the attacker's own churn.
    lim = PreloginLimiter(per_address=100, total=1000)
    for a in range(2, 12):
        for n in range(100):
            assert _parked(lim, f"atk{a}_{n}", f"127.0.0.{a}") == []
    assert len(lim) == 1000
    assert lim.admit("uma", "10.9.8.7") == ([("atk2_0", "total")], None)  # the oldest of the most crowded
    lim.spoke("uma")
    lim.exchanging("uma")
    evicted = []
    for i in range(5000):  # (or refused: an address holding its 100 places in SCRAM exchanges)
        victims, refused = lim.admit(f"more{i}", f"127.0.0.{2 + i % 10}")
        evicted += victims
        if refused is None:
            lim.exchanging(f"more{i}")
    assert len(evicted) >= 1000 and ("uma", "total") not in evicted  # the flood only pushes out itself
    assert lim.count("10.9.8.7") == 1 and len(lim) == 1000


def test_a_login_in_the_attackers_own_network_gets_a_place_too() -> None:
    lim = PreloginLimiter(per_address=100, total=1000)
    for a in range(2, 12):
        for n in range(100):
            _parked(lim, f"atk{a}_{n}", f"127.0.0.{a}")
    assert lim.admit("gina", "127.0.0.1") == ([("atk2_0", "total")], None)  # same /24: its busiest address pays
    lim.exchanging("gina")
    evicted = [c for i in range(3000) for c, _ in _parked(lim, f"more{i}", f"127.0.0.{2 + i % 10}")]
    assert "gina" not in evicted


def test_the_most_crowded_network_pays_first() -> None:
    lim = PreloginLimiter(per_address=10, total=10)
    for n in range(4):
        _parked(lim, f"a{n}", "192.0.2.1")
    for n in range(6):
        _parked(lim, f"b{n}", f"198.51.100.{n}")  # six addresses of one /24, one place each
    assert _parked(lim, "c", "203.0.113.9") == [("b0", "total")]  # 198.51.100.0/24 holds 6 of 10
    assert _parked(lim, "d", "203.0.113.10") == [("b1", "total")]
    assert _parked(lim, "e", "203.0.113.11") == [("a0", "total")]  # 4 each now: the first network to come
    # IPv6: per /48, so the 256 /64s of a /56 (or the /64s of a /48) are one network
    lim6 = PreloginLimiter(per_address=2, total=4)
    for n in range(4):
        _parked(lim6, f"v{n}", f"2001:db8:1:{n}::1")
    assert _parked(lim6, "w", "2001:db8:2::1") == [("v0", "total")]
    assert prefix_key(address_key("2001:db8:1:ff::7")) == "2001:db8:1::/48"
    assert prefix_key("10.1.2.3") == "10.1.2.0/24" and prefix_key("local") == "local"


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
