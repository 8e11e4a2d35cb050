"""The pool manager, conversation by conversation on a fake clock: sizes, budget, fairness, timers, cancels."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from proxy import errors
from proxy.config import Config, ReplicaConfig, parse_config
from proxy.limits import server_request as limits_request
from proxy.pooling import (
    KEEP_FOR_TENANT,
    Check,
    Close,
    Closing,
    Connect,
    Drain,
    Grant,
    PoolAction,
    PoolManager,
    Refuse,
    Reset,
    TakeBack,
    replica_key,
    server_request,
    with_parameters,
)
from proxy.reasons import CloseReason

VERIFIER = (
    "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$zMqJ8k8FpC7CY8Io6qVbZrdP1k1b9QQ9mF7d4sW7b3E="
    ":Vfhh0k0K0Sx6LDOa3ySdBBTy9HzPJvdnM9rDTrqF8gU="
)


def config(tmp_path: Path, pool: dict | None = None, **tenants: dict) -> Config:
    """Tenants a, b, c (shared strategy, one database) with their own pool values."""
    raw_tenants = {}
    for name in ("a", "b", "c"):
        raw_tenants[name] = {"strategy": "shared", "database": "saas", "tenant_id": name, **tenants.get(name, {})}
    raw_tenants["d"] = {"strategy": "database", "database": "other"}
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{VERIFIER}"\n')
    raw = {
        "secrets_file": "s.toml",
        "backends": {"main": {"host": "db"}},
        "tenants": raw_tenants,
        "users": {"alice": {"tenant": "a"}},
        "pool": pool or {},
    }
    return parse_config(raw, base=tmp_path)


class Script:
    """A manager, a clock and helpers that play the I/O layer's part."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pm = PoolManager(cfg)
        self.now = 0.0
        self.requests = {t: server_request(cfg, t) for t in cfg.tenants}

    def request(self, client: str, tenant: str | None = None) -> list[PoolAction]:
        return self.pm.request(client, self.requests[tenant or client[0]], self.now)

    def connect_all(self, actions: list[PoolAction]) -> list[PoolAction]:
        """Answer every Connect with `connected` (and every Reset/Check with success), until none is left."""
        out: list[PoolAction] = []
        todo = list(actions)
        while todo:
            action = todo.pop(0)
            out.append(action)
            if isinstance(action, Connect):
                todo += self.pm.connected(action.server, self.now)
            elif isinstance(action, Reset):
                todo += self.pm.reset_done(action.server, True, self.now)
            elif isinstance(action, Check):
                todo += self.pm.checked(action.server, True, self.now)
        return out

    def hold(self, client: str, tenant: str | None = None) -> int:
        """`client` asks and gets a server (connected as needed); its id."""
        out = self.connect_all(self.request(client, tenant))
        granted = [a for a in out if isinstance(a, Grant) and a.client == client]
        assert granted, out
        return granted[0].server

    def release(self, client: str, *, reusable: bool = True, reset: bool = False,
                busy: bool = False) -> list[PoolAction]:
        server = self.pm.holding(client)
        assert server is not None
        return self.pm.released(server, reusable=reusable, reset=reset, now=self.now, busy=busy)


def grants(actions: list[PoolAction]) -> list[str]:
    return [str(a.client) for a in actions if isinstance(a, Grant)]


def kinds(actions: list[PoolAction]) -> list[str]:
    return [type(a).__name__ for a in actions]


# --- keys and requests ----------------------------------------------------------------------------


def test_a_server_request_carries_only_the_tenant_context(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    a, b, d = (server_request(cfg, t) for t in ("a", "b", "d"))
    assert a.parameters["pgtenant.tenant_id"] == "a" and a.parameters["client_encoding"] == "UTF8"
    assert a.parameters["idle_in_transaction_session_timeout"] == "300000ms"
    assert a.key != b.key and a.key.budget == b.key.budget == ("main", "saas")
    assert dict(a.key.context) == a.parameters and "application_name" not in a.parameters
    assert d.key.budget == ("main", "other")


# --- pool_size, reuse ------------------------------------------------------------------------------


def test_an_idle_server_is_granted_synchronously_and_reused(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    first = s.request("a1")
    assert kinds(first) == ["Connect"]  # nothing idle: a new server, the client waits
    assert s.pm.is_waiting("a1")
    assert grants(s.pm.connected(first[0].server, s.now)) == ["a1"]
    assert s.release("a1") == []
    again = s.request("a2")
    assert again == [Grant("a2", first[0].server, 0.0)]


def test_pool_size_caps_the_servers_of_a_pool_and_the_rest_wait(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 2}))
    held = [s.hold("a1"), s.hold("a2")]
    assert s.request("a3") == []  # no third server: it waits
    s.now = 3.0
    out = s.release("a1")
    assert out == [Grant("a3", held[0], 3.0)]  # the released server goes to the waiter, who waited 3 s
    assert [r.sv_active for r in s.pm.rows(s.now)] == [2]


def test_reset_runs_before_anyone_else_gets_the_server(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.request("a2")
    out = s.release("a1", reset=True)
    assert out == [Reset(server)]  # not granted while resetting
    assert s.pm.reset_done(server, True, s.now) == [Grant("a2", server, 0.0)]


def test_a_failed_reset_or_unreusable_release_closes_and_the_waiter_gets_a_new_server(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.request("a2")
    s.release("a1", reset=True)
    out = s.pm.reset_done(server, False, s.now)
    assert out[0] == Close(server, Closing.RESET_FAILED) and isinstance(out[1], Connect)
    assert grants(s.pm.connected(out[1].server, s.now)) == ["a2"]
    out = s.release("a2", reusable=False)
    assert out == [Close(out[0].server, Closing.NOT_REUSABLE)]


def test_a_client_cannot_wait_twice(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    s.request("a1")
    with pytest.raises(ValueError):
        s.request("a1")


def test_withdraw_leaves_the_queue_and_its_server_goes_idle(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    connect = s.request("a1")[0]
    assert s.pm.withdraw("a1", s.now) == []
    assert not s.pm.is_waiting("a1")
    assert s.pm.connected(connect.server, s.now) == []  # nobody waits: it stays idle
    assert [r.sv_idle for r in s.pm.rows(s.now)] == [1]
    assert s.pm.withdraw("nobody", s.now) == []


# --- reserve_pool ------------------------------------------------------------------------------------


def test_reserve_servers_open_only_for_a_client_that_waited_reserve_pool_timeout(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1, "reserve_pool": 1, "reserve_pool_timeout": 5.0}))
    s.hold("a1")
    assert s.request("a2") == []
    s.now = 4.9
    assert s.pm.tick(s.now) == []
    s.now = 5.0
    out = s.pm.tick(s.now)
    assert kinds(out) == ["Connect"]
    assert grants(s.pm.connected(out[0].server, s.now)) == ["a2"]
    s.request("a3")
    s.now = 20.0
    assert s.pm.tick(s.now) == []  # size + reserve reached


# --- the database budget ---------------------------------------------------------------------------------


def test_the_database_budget_closes_another_pools_idle_server_lru_first(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"max_db_connections": 2}))
    b1 = s.hold("b1")
    s.now = 1.0
    c1 = s.hold("c1")
    s.now = 2.0
    s.release("b1")  # b's server is less recently used than c's
    s.now = 3.0
    s.release("c1")
    s.now = 4.0
    out = s.request("a1")
    assert out[0] == Close(b1, Closing.BUDGET)  # released first: least recently used
    assert isinstance(out[1], Connect) and c1 in s.pm.servers
    s.connect_all(out)
    assert s.request("a2") == []  # a's own server is busy; c's idle one is kept for c a while (its share: 1)
    s.now = 3.0 + KEEP_FOR_TENANT
    out = s.pm.tick(s.now)  # then it makes room
    assert out[0] == Close(c1, Closing.BUDGET) and grants(s.connect_all(out)) == ["a2"]


def test_the_budget_is_per_database_and_overridden_per_backend(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"max_db_connections": 1}))
    s.hold("a1")
    s.hold("d1")  # another database: its own budget
    assert s.request("b1") == []  # saas is full and nothing there is idle: b waits
    assert [r.cl_waiting for r in s.pm.rows(s.now) if r.tenant == "b"] == [1]


def test_a_tenant_within_its_share_keeps_its_idle_server_while_a_neighbour_floods_the_budget(tmp_path: Path) -> None:
    """The noisy neighbour: a floods a budget of 4, b runs one query now and then. b's server, idle between its
    queries, is not closed to make room for a's waiters (b holds 1, its share is 2), so b's next query gets it at
    once instead of paying a new server each time; a's released server, a being over its share, makes room for b."""
    s = Script(config(tmp_path, pool={"max_db_connections": 4}))
    flood(s, "a", 20)
    assert s.request("b1") == []
    out = s.connect_all(s.release("a0"))
    assert isinstance(out[0], Close) and grants(out) == ["b1"]  # a held 4 of 4: over its share
    b_server = s.pm.holding("b1")
    s.now = 1.0
    out = s.connect_all(s.release("b1"))  # a waits: b's server is kept, a's waiter gets none
    assert out == [] and s.pm.servers[b_server].state.value == "idle"
    for client in list(s.pm._held):  # a's servers cycle among its own waiters
        assert not any(isinstance(a, Close) for a in s.connect_all(s.release(client)))
    s.now = 2.0
    out = s.request("b2")
    assert [type(a) for a in out] == [Grant] and out[0].server == b_server  # at once, no new server


def test_a_budget_full_of_busy_servers_makes_clients_wait_not_fail(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"max_db_connections": 1}))
    a1 = s.hold("a1")
    assert s.request("b1") == []
    out = s.release("a1")
    assert out[0] == Close(a1, Closing.BUDGET)  # a's server made room for b
    assert grants(s.connect_all(out)) == ["b1"]


# --- fairness ------------------------------------------------------------------------------------------


def flood(s: Script, tenant: str, n: int) -> list[str]:
    clients = [f"{tenant}{i}" for i in range(n)]
    for c in clients:
        s.connect_all(s.request(c, tenant))
    return clients


def serve_rounds(s: Script, rounds: int) -> Counter[str]:
    """Every round the holders release (and ask again at the back of their queue); who got the servers."""
    got: Counter[str] = Counter()
    for _ in range(rounds):
        holders = [client for client in list(s.pm._held)]
        for client in holders:
            out = s.connect_all(s.release(client))
            for g in grants(out):
                got[s.pm._held[g].pool.tenant] += 1
            s.connect_all(s.request(client + "'", client[0]))
    return got


def test_a_flooding_tenant_cannot_starve_another_on_a_shared_budget(tmp_path: Path) -> None:
    """a fills the database budget and queues 20 more; b arrives later with one client. A plain FIFO gives every
    server a releases to a's older waiters (b waits until a's flood is over); the fair queue gives b the next one."""
    s = Script(config(tmp_path, pool={"max_db_connections": 4}))
    flood(s, "a", 24)
    assert s.request("b1") == []
    held = s.pm.holding("a0")
    out = s.connect_all(s.release("a0"))
    assert out[0] == Close(held, Closing.BUDGET)  # a's released server makes room for b
    assert grants(out) == ["b1"]


def test_weights_share_a_contended_budget(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"max_db_connections": 4}, a={"weight": 3}))
    flood(s, "a", 40)
    flood(s, "b", 40)
    got = serve_rounds(s, 10)
    assert got["a"] == pytest.approx(3 * got["b"], rel=0.2), got


def test_equal_weights_alternate_inside_one_pool_budget(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"max_db_connections": 2}))
    flood(s, "a", 10)
    flood(s, "b", 10)
    got = serve_rounds(s, 8)
    assert abs(got["a"] - got["b"]) <= 1, got


def test_inside_a_tenant_waiters_are_served_first_come_first_served(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    s.hold("a0")
    for c in ("a1", "a2", "a3"):
        s.request(c)
    order = []
    for holder in ("a0", "a1", "a2"):
        order += grants(s.release(holder))
    assert order == ["a1", "a2", "a3"]


def test_a_tenant_that_was_idle_banks_no_credit(tmp_path: Path) -> None:
    """b used nothing for a long time while a alone used the budget: b gets its fair share from then on, not every
    server until it has caught up."""
    s = Script(config(tmp_path, pool={"max_db_connections": 2}))
    flood(s, "a", 4)
    serve_rounds(s, 20)  # a alone: nobody competes
    flood(s, "b", 6)
    got = serve_rounds(s, 6)
    assert got["a"] >= got["b"] - 2 and got["a"] > 0, got


# --- waiting ------------------------------------------------------------------------------------------


def test_query_wait_timeout_refuses_with_the_error_naming_the_limit(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1, "query_wait_timeout": 30}, a={"pool_size": 1}))
    s.hold("a1")
    s.request("a2")
    s.now = 29.0
    assert s.pm.tick(s.now) == []
    s.now = 30.0
    out = s.pm.tick(s.now)
    assert out == [Refuse("a2", errors.pool_wait_timeout("a", "30", 1), CloseReason.POOL_WAIT_TIMEOUT, 30.0)]
    error = out[0].error
    assert error.sqlstate == "53300"
    assert error.message == 'pgtenant: no server connection for tenant "a" within query_wait_timeout (30 s); ' \
        "its pool_size is 1"
    assert "tenants.a.pool_size" in (error.hint or "")
    assert not s.pm.is_waiting("a2")


def test_max_wait_and_waiting_counts_in_rows(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    s.hold("a1")
    s.request("a2")
    s.now = 7.5
    s.request("a3")
    row = s.pm.rows(s.now)[0]
    assert (row.cl_active, row.cl_waiting, row.maxwait, row.sv_active) == (1, 2, 7.5, 1)
    assert s.pm.wait_seconds(s.now) == {"a": 7.5}


# --- connect failures ------------------------------------------------------------------------------


def test_a_failed_connect_refuses_the_waiter_it_was_opened_for(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    connect = s.request("a1")[0]
    error = errors.backend_unreachable("main", "connection refused")
    out = s.pm.connect_failed(connect.server, error, CloseReason.BACKEND, s.now)
    assert out == [Refuse("a1", error, CloseReason.BACKEND)]
    assert s.pm.servers == {}


def test_a_server_whose_startup_takes_longer_than_startup_timeout_is_given_up(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    connect = s.request("a1")[0]
    s.now = 14.0
    assert s.pm.tick(s.now) == []
    s.now = 15.0
    out = s.pm.tick(s.now)
    assert out[0] == Close(connect.server, Closing.TIMEOUT)
    assert isinstance(out[1], Refuse) and out[1].client == "a1" and out[1].error.sqlstate == "08001"
    assert s.pm.connected(connect.server, s.now) == []  # too late: forgotten


# --- timers ----------------------------------------------------------------------------------------


def test_idle_servers_close_after_server_idle_timeout_but_min_pool_size_stays(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"server_idle_timeout": 60, "min_pool_size": 1, "server_check_delay": 1000}))
    s.hold("a1")
    s.hold("a2")
    s.release("a1")
    s.now = 10.0
    s.release("a2")
    s.now = 60.0
    out = s.pm.tick(s.now)
    assert kinds(out) == ["Close"] and out[0].reason == Closing.IDLE_TIMEOUT
    s.now = 500.0
    assert s.pm.tick(s.now) == []  # the last one is min_pool_size


def test_min_pool_size_is_warmed_for_a_pool_with_traffic(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"min_pool_size": 2}))
    s.hold("a1")
    out = s.pm.tick(s.now)
    assert kinds(out) == ["Connect"]
    s.connect_all(out)
    assert [r.sv_idle + r.sv_active for r in s.pm.rows(s.now)] == [2]


def test_server_lifetime_closes_at_release_and_when_idle(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"server_lifetime": 100, "server_check_delay": 1000}))
    first = s.hold("a1")
    s.now = 60.0
    second = s.hold("a2")  # opened at 60
    s.now = 100.0
    assert s.release("a1") == [Close(first, Closing.LIFETIME)]
    assert s.release("a2") == []  # 40 s old: idle
    s.now = 159.0
    assert s.pm.tick(s.now) == []
    s.now = 160.0
    assert s.pm.tick(s.now) == [Close(second, Closing.LIFETIME)]


def test_a_server_idle_past_server_check_delay_is_checked_before_it_is_granted(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"server_check_delay": 30}))
    server = s.hold("a1")
    s.release("a1")
    s.now = 29.0
    assert s.request("a2") == [Grant("a2", server, 0.0)]  # not idle long enough
    s.release("a2")
    s.now = 60.0
    assert s.request("a3") == [Check(server)]
    assert s.pm.checked(server, True, s.now) == [Grant("a3", server, 0.0)]


def test_a_failed_check_closes_the_server_and_the_client_gets_another(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"server_check_delay": 30}))
    server = s.hold("a1")
    s.release("a1")
    s.now = 60.0
    s.request("a2")
    out = s.pm.checked(server, False, s.now)
    assert out[0] == Close(server, Closing.CHECK_FAILED) and isinstance(out[1], Connect)
    assert grants(s.connect_all(out)) == ["a2"]


def test_a_reset_or_check_that_never_answers_is_closed_after_the_connect_timeout(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    server = s.hold("a1")
    s.release("a1", reset=True)
    s.now = 4.9
    assert s.pm.tick(s.now) == []
    s.now = 5.0
    assert s.pm.tick(s.now) == [Close(server, Closing.TIMEOUT)]


def test_a_server_left_mid_statement_counts_against_its_pool_until_its_statement_is_cancelled(tmp_path: Path) -> None:
    """Red team 7 F6: a client that leaves while its statement runs must not free its pool's place (nor the
    database budget's) before the statement is cancelled: else each such client adds a backend no limit counts."""
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    out = s.release("a1", reusable=False, reset=True, busy=True)
    assert out == [Drain(server)]
    assert s.request("a2") == []  # the draining server still fills the pool: a2 waits, no new server
    assert [r.sv_idle for r in s.pm.rows(s.now)] == [0]
    s.now = 1.0
    out = s.pm.drained(server, s.now)
    assert out[0] == Close(server, Closing.DRAINED) and isinstance(out[1], Connect)  # now its place is free
    assert grants(s.pm.connected(out[1].server, s.now)) == ["a2"]
    assert s.pm.drained(server, s.now) == []  # answered once


def test_a_drain_that_never_ends_is_closed_after_three_connect_timeouts(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    server = s.hold("a1")
    s.release("a1", reusable=False, reset=True, busy=True)
    s.now = 14.9
    assert s.pm.tick(s.now) == []
    s.now = 15.0
    assert s.pm.tick(s.now) == [Close(server, Closing.TIMEOUT)]


def test_a_server_that_closes_by_itself_is_forgotten(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.request("a2")
    out = s.pm.closed(server, s.now)
    assert kinds(out) == ["Connect"]  # its place goes to the waiter
    assert s.pm.holding("a1") is None


# --- cancel -----------------------------------------------------------------------------------------


def test_a_server_with_a_cancel_in_flight_is_granted_to_nobody_until_the_cancel_closed(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.pm.cancel_started(server)
    s.request("a2")
    assert s.release("a1") == []  # released, but the cancel may still reach it
    assert s.pm.cancel_done(server, s.now) == [Check(server)]  # closed: a round trip of its own proves it clean
    assert s.pm.checked(server, True, s.now) == [Grant("a2", server, 0.0)]


def test_a_cancelled_server_released_with_reset_waits_for_both(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.pm.cancel_started(server)
    s.request("a2")
    assert s.release("a1", reset=True) == [Reset(server)]
    assert s.pm.reset_done(server, True, s.now) == []  # begun while the cancel was in flight: it proves nothing
    assert s.pm.cancel_done(server, s.now) == [Check(server)]
    assert grants(s.pm.checked(server, True, s.now)) == ["a2"]


def test_a_reset_begun_after_the_cancel_closed_is_the_proof(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.pm.cancel_started(server)
    assert s.pm.cancel_done(server, s.now) == []  # still held by a1 (its own cancel)
    s.request("a2")
    assert s.release("a1", reset=True) == [Reset(server)]
    assert grants(s.pm.reset_done(server, True, s.now)) == ["a2"]


def test_a_cancel_released_without_reset_is_checked_once_then_the_server_is_like_any_other(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.pm.cancel_started(server)
    assert s.pm.cancel_done(server, s.now) == []
    assert s.release("a1") == [Check(server)]
    assert s.pm.checked(server, True, s.now) == []
    assert s.hold("a2") == server
    assert s.release("a2") == []  # clean now: no further check


def test_a_failed_check_after_a_cancel_closes_the_server(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.pm.cancel_started(server)
    s.release("a1")
    s.pm.cancel_done(server, s.now)
    s.request("a2")
    assert kinds(s.pm.checked(server, False, s.now)) == ["Close", "Connect"]


def test_a_cancel_started_during_the_check_needs_another(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.pm.cancel_started(server)
    s.pm.cancel_done(server, s.now)
    assert s.release("a1") == [Check(server)]
    s.pm.cancel_started(server)  # (a late CancelRequest of a1, arriving while the check runs)
    assert s.pm.checked(server, True, s.now) == []
    assert s.pm.cancel_done(server, s.now) == [Check(server)]


@pytest.mark.parametrize("release_first", [True, False])
def test_a_server_whose_cancel_was_not_confirmed_is_closed_not_reused(tmp_path: Path, release_first: bool) -> None:
    """The cancel connection failed or timed out: PostgreSQL may act on it at any later time."""
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    server = s.hold("a1")
    s.pm.cancel_started(server)
    s.request("a2")
    if release_first:
        assert s.release("a1") == []
        out = s.pm.cancel_done(server, s.now, delivered=False)
    else:
        assert s.pm.cancel_done(server, s.now, delivered=False) == []  # a1 keeps it: its own cancel
        out = s.release("a1")
    assert out[0] == Close(server, Closing.CANCEL_UNCONFIRMED)
    assert kinds(out) == ["Close", "Connect"]  # a new server for a2


# --- pinning, reload, shutdown ---------------------------------------------------------------------


def test_pinned_servers_are_counted_apart(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    server = s.hold("a1")
    s.hold("a2")
    s.pm.pinned(server, True)
    row = s.pm.rows(s.now)[0]
    assert (row.sv_active, row.sv_pinned) == (1, 1)
    assert {r.state for r in s.pm.server_rows(s.now)} == {"active", "pinned"}
    s.release("a1")
    assert s.pm.rows(s.now)[0].sv_pinned == 0


def test_a_reload_that_changes_the_context_retires_the_pool(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    busy = s.hold("a1")
    idle = s.hold("a2")
    s.release("a2")
    s.hold("b1")
    (tmp_path / "x").mkdir()
    out = s.pm.reconfigure(config(tmp_path / "x", a={"tenant_id": "a2"}))
    assert out == [Close(idle, Closing.RETIRED)]
    assert s.release("a1") == [Close(busy, Closing.RETIRED)]
    assert s.pm.rows(s.now)[0].tenant == "b"  # the old pool is gone, b's stays


def test_a_reload_keeps_a_limited_or_agent_pool_whose_tenant_context_is_unchanged(tmp_path: Path) -> None:
    """A pool whose sessions add a statement_timeout limit or the agent profile's parameters to the tenant's context
    is kept by a reload that leaves that context alone (its idle servers stay, its waiters wait), and retired with
    it otherwise."""
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    limited = limits_request(s.requests["a"], 300.0)
    agent = with_parameters(s.requests["b"], {"default_transaction_read_only": "on", "statement_timeout": "30000ms"})
    s.requests["a"], s.requests["b"] = limited, agent
    s.hold("a1")
    s.request("a2")
    idle = s.hold("b1")
    s.release("b1")
    (tmp_path / "x").mkdir()
    assert s.pm.reconfigure(config(tmp_path / "x", pool={"pool_size": 1})) == []
    (tmp_path / "y").mkdir()
    out = s.pm.reconfigure(config(tmp_path / "y", pool={"pool_size": 1}, a={"tenant_id": "a2"}, b={"tenant_id": "b2"}))
    assert [(type(a).__name__, getattr(a, "client", getattr(a, "server", None))) for a in out] == [
        ("Refuse", "a2"), ("Close", idle)]


def test_a_reload_refuses_the_waiters_of_a_retired_pool(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    s.hold("a1")
    s.request("a2")
    (tmp_path / "x").mkdir()
    out = s.pm.reconfigure(config(tmp_path / "x", pool={"pool_size": 1}, a={"tenant_id": "other"}))
    assert [(type(a).__name__, getattr(a, "client", None)) for a in out] == [("Refuse", "a2")]
    assert out[0].error.sqlstate == "57P01"


def test_a_reload_resizes_pools_in_place(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    s.hold("a1")
    s.request("a2")
    (tmp_path / "x").mkdir()
    assert s.pm.reconfigure(config(tmp_path / "x", pool={"pool_size": 2})) == []
    assert kinds(s.pm.tick(s.now)) == ["Connect"]


def test_shutdown_closes_the_idle_servers(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    s.hold("a1")
    idle = s.hold("a2")
    s.release("a2")
    assert s.pm.shutdown() == [Close(idle, Closing.SHUTDOWN)]


def test_a_tenant_cannot_take_the_last_budget_places_while_another_waits(tmp_path: Path) -> None:
    """Red team pool round 1 F2: a tenant whose sessions hold their servers (pinned) took the whole budget; one
    that asks for another server while others wait gets at most the budget less one per waiting tenant."""
    s = Script(config(tmp_path, pool={"max_db_connections": 3}, a={"weight": 10}))
    s.hold("c0")
    s.release("c0", reusable=False)  # c was served before: a (weight 10) is ahead of it in the fair queue
    s.hold("a1")
    s.hold("a2")
    s.hold("b1")
    assert s.request("c1") == []  # the budget is full of busy servers: c waits
    assert s.request("a3") == []
    out = s.connect_all(s.release("b1", reusable=False))  # a place frees up: c's, not a's (a holds 2 of 3 - 1)
    assert grants(out) == ["c1"]
    out = s.connect_all(s.release("c1", reusable=False))
    assert grants(out) == ["a3"]  # nobody else waits: a may use the whole budget


def test_tenants_waiting_on_a_budget_of_one_do_not_lock_each_other_out(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"max_db_connections": 1}))
    s.hold("a1")
    assert s.request("a2") == [] and s.request("b1") == []
    out = s.connect_all(s.release("a1"))  # b holds none: it may open the one place (a's idle server is closed)
    assert grants(out) == ["b1"]
    out = s.connect_all(s.release("b1"))
    assert grants(out) == ["a2"]


def test_a_replica_pool_is_a_pool_of_its_own_kept_by_a_reload_and_retired_with_its_replica(tmp_path: Path) -> None:
    """Read replicas: a request routed to replica r1 (the I/O pool's `replica_key`) has its own pool and budget; a
    reload keeps it while r1 is configured, and retires it once r1 is gone."""
    def cfg(where: Path, replicas: list) -> Config:
        where.mkdir(exist_ok=True)
        c = config(where)
        return replace(c, backends={"main": replace(c.backends["main"], replicas=tuple(replicas))})

    with_r1 = cfg(tmp_path / "one", [ReplicaConfig("r1", "replica-host")])
    s = Script(with_r1)
    primary = s.requests["a"]
    s.requests["r"] = replace(primary, key=replica_key(primary.key, "r1"), replica="r1")
    s.hold("a1")
    on_replica = s.hold("r1", "r")
    s.release("r1")
    assert {r.backend for r in s.pm.rows(s.now)} == {"main", "main/r1"}
    assert s.pm.reconfigure(with_r1) == []
    assert s.pm.reconfigure(cfg(tmp_path / "none", [])) == [Close(on_replica, Closing.RETIRED)]


def test_a_reload_retiring_pools_with_only_idle_servers(tmp_path: Path) -> None:
    """A retired pool left with no server is removed while the reload goes over the pools (it raised
    "dictionary changed size during iteration" before)."""
    s = Script(config(tmp_path))
    idle = s.hold("a1")
    s.release("a1")
    other = s.hold("b1")
    s.release("b1")
    (tmp_path / "x").mkdir()
    out = s.pm.reconfigure(config(tmp_path / "x", a={"tenant_id": "a2"}, b={"tenant_id": "b2"}))
    assert out == [Close(idle, Closing.RETIRED), Close(other, Closing.RETIRED)]
    assert s.pm.rows(s.now) == []


# --- sticky servers: a released server kept for its client until anyone needs it ---------------------------------


def keep(s: Script, client: str) -> int:
    """`client` releases its server at ReadyForQuery 'I' asking to keep it (KeepServer); the server's id."""
    server = s.pm.holding(client)
    assert server is not None and s.pm.keep(server, client, s.now)
    return server


def test_a_kept_server_counts_as_idle_and_its_client_reuses_it_with_no_grant(tmp_path: Path) -> None:
    s = Script(config(tmp_path))
    server = keep(s, "a1") if s.hold("a1") else 0
    [row] = s.pm.rows(s.now)
    assert (row.cl_active, row.sv_active, row.sv_idle) == (0, 0, 1)  # SHOW POOLS: idle, nobody holds it
    assert s.pm.holding("a1") is None  # a cancel of a1 now reaches nothing
    s.now = 1.0
    assert s.pm.reuse("a1", server, s.now) and s.pm.holding("a1") == server
    assert (s.pm.rows(s.now)[0].sv_active, s.pm.rows(s.now)[0].sv_idle) == (1, 0)
    assert not s.pm.reuse("a1", server, s.now)  # (held: not kept any more)


def test_another_client_of_the_pool_takes_a_kept_server_at_once_after_its_take_back(tmp_path: Path) -> None:
    """A waiter of the same pool is never kept waiting by a sticky server: the take-back comes first, in the same
    list of actions as the grant (no await between them in the I/O layer)."""
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    s.hold("a1")
    server = keep(s, "a1")
    assert s.request("a2") == [TakeBack("a1", server), Grant("a2", server, 0.0)]
    assert not s.pm.reuse("a1", server, s.now)  # a1's next request asks the pool as anyone does
    s.pm.take_back(server, "a1")
    assert s.request("a1") == [] and s.pm.is_waiting("a1")
    assert s.release("a2") == [Grant("a1", server, 0.0)]


def test_a_server_is_not_kept_while_anyone_waits_or_when_it_must_not_be_reused_as_is(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1, "server_lifetime": 100}))
    server = s.hold("a1")
    s.request("a2")
    assert not s.pm.keep(server, "a1", s.now)  # a2 waits: released as usual, and a2 gets it
    assert s.release("a1") == [Grant("a2", server, 0.0)]
    assert not s.pm.keep(server, "a1", s.now)  # not a1's
    s.pm.cancel_started(server)
    assert not s.pm.keep(server, "a2", s.now)  # a cancel in flight: released, then checked (existing rules)
    s.pm.cancel_done(server, s.now)
    s.release("a2")
    s.connect_all([Check(server)])
    s.hold("a3")
    s.now = 100.0
    assert not s.pm.keep(server, "a3", s.now)  # past its lifetime: closed at its release
    assert s.release("a3") == [Close(server, Closing.LIFETIME)]


def test_a_kept_server_is_not_reused_while_another_tenant_waits_on_the_budget(tmp_path: Path) -> None:
    """Fairness across tenants: while anyone waits, the sticky client asks in the fair queue like everyone."""
    s = Script(config(tmp_path, pool={"max_db_connections": 2}))
    s.hold("a1")
    a_server = keep(s, "a1")
    s.hold("b1")
    assert s.request("b2") == []  # the budget is full; a's kept server is kept for a (within its share, recent)
    assert not s.pm.reuse("a1", a_server, s.now)  # b2 waits: a1 asks in the fair queue
    s.pm.take_back(a_server, "a1")
    out = s.connect_all(s.request("a1"))
    assert grants(out) == ["a1"] and out[-1].server == a_server  # (a's own idle server, in fair order)


def test_the_budget_closes_a_kept_server_for_another_tenant_after_taking_it_back(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"max_db_connections": 1}))
    s.hold("a1")
    server = keep(s, "a1")
    s.now = KEEP_FOR_TENANT
    out = s.request("b1")
    assert kinds(out) == ["TakeBack", "Close", "Connect"] and out[0] == TakeBack("a1", server)
    assert out[1] == Close(server, Closing.BUDGET)


def test_timers_a_reload_and_shutdown_take_a_kept_server_back_before_closing_it(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"server_idle_timeout": 60, "server_check_delay": 30}))
    s.hold("a1")
    server = keep(s, "a1")
    s.now = 30.0
    assert not s.pm.reuse("a1", server, s.now)  # idle for server_check_delay: asked anew, the pool checks it
    s.pm.take_back(server, "a1")
    assert s.request("a1") == [Check(server)]
    assert s.pm.checked(server, True, s.now) == [Grant("a1", server, 0.0)]
    keep(s, "a1")
    s.now = 90.0
    assert s.pm.tick(s.now) == [TakeBack("a1", server), Close(server, Closing.IDLE_TIMEOUT)]
    s.hold("a2")
    second = keep(s, "a2")
    (tmp_path / "x").mkdir()
    assert s.pm.reconfigure(config(tmp_path / "x", a={"tenant_id": "a2"})) == [
        TakeBack("a2", second), Close(second, Closing.RETIRED)]
    s.hold("b1")
    third = keep(s, "b1")
    assert s.pm.shutdown() == [TakeBack("b1", third), Close(third, Closing.SHUTDOWN)]


def test_a_kept_server_whose_client_leaves_is_reclaimed_for_its_release(tmp_path: Path) -> None:
    s = Script(config(tmp_path, pool={"pool_size": 1}))
    s.hold("a1")
    server = keep(s, "a1")
    assert s.pm.reclaim("a1", server, s.now)
    assert s.release("a1", reset=True) == [Reset(server)]
    s.pm.reset_done(server, True, s.now)
    s.hold("a2")
    keep(s, "a2")
    s.request("a3")  # takes it back for a3
    assert not s.pm.reclaim("a2", server, s.now)  # not a2's any more: its leaving does nothing to it
