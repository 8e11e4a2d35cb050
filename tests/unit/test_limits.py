"""Per-tenant limits (proxy/limits.py): resolution per user, validation, connection counts, result meters, turns; and
the session under them, scripted: a result cut off (cancel, held ReadyForQuery, a finished transaction block failed),
the statement watchdog, the idle-in-transaction end, the login refusal, a request waiting for its turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy import errors
from proxy.actions import (
    AcquireSlot,
    BatchWithoutSync,
    CancelQuery,
    CloseClient,
    ConnectBackend,
    LimitReached,
    RelayToClient,
    RelayToServer,
    ReleaseServer,
    ReleaseSlot,
    WatchLimits,
)
from proxy.auth.scram import make_verifier
from proxy.auth.throttle import AuthThrottle
from proxy.config import Config, ConfigError, parse_config
from proxy.limits import (
    CUT_MARK,
    ConnectionCounts,
    QuerySlots,
    ResultMeter,
    StatementBytesClaim,
    TenantStatementBytes,
    bounded_message,
    clamped_timeout,
    resolve,
    setting_milliseconds,
)
from proxy.protocol import messages as m
from proxy.reasons import CloseReason
from proxy.session import ClientSession, State
from tests.support.sessions import login, server_for


def config(tmp_path: Path, tenant: dict[str, Any] | None = None, user: dict[str, Any] | None = None,
           pool_mode: str = "session", sticky: bool = False) -> Config:
    """(Transaction pooling without sticky servers unless `sticky`: the scripted conversations give the server back
    at each ReadyForQuery 'I'; test_session_sticky.py keeps it.)"""
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw")}"\n')
    return parse_config({
        "secrets_file": "s.toml", "backends": {"main": {}},
        "pool": {"pool_mode": pool_mode, "sticky_servers": sticky},
        "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme", **(tenant or {})}},
        "users": {"alice": {"tenant": "acme", **(user or {})}},
    }, base=tmp_path)


# --- configuration and resolution ------------------------------------------------------------------


def test_no_limit_by_default(tmp_path: Path) -> None:
    limits = resolve(config(tmp_path), "alice")
    assert not limits.any and limits.query_wait_timeout == 120.0


def test_the_users_values_override_the_tenants_and_zero_lifts_them(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"statement_timeout": 30, "max_result_rows": 1000, "max_client_connections": 5,
                            "max_concurrent_queries": 2, "query_wait_timeout": 5},
                 {"statement_timeout": 10.0, "max_result_rows": 0, "max_client_connections": 1})
    limits = resolve(cfg, "alice")
    assert limits.statement_timeout == 10.0 and limits.max_result_rows is None
    assert (limits.max_client_connections, limits.user_max_client_connections) == (5, 1)
    assert (limits.max_concurrent_queries, limits.query_wait_timeout) == (2, 5.0)
    assert limits.watched and not limits.cuts_results and limits.tick == 1.0


@pytest.mark.parametrize(("tenant", "user", "message"), [
    ({"max_result_rows": -1}, {}, "tenants.acme.max_result_rows: must be 0 (no limit) or more, got -1"),
    ({"statement_timeout": 0.0001}, {}, "tenants.acme.statement_timeout: must be at least 0.001 seconds"),
    ({"query_wait_timeout": 0}, {}, "tenants.acme.query_wait_timeout: must be positive"),
    ({"max_result_bytes": 1.5}, {}, "tenants.acme.max_result_bytes: expected int, got float"),
    ({}, {"idle_in_transaction_timeout": -2}, "users.alice.idle_in_transaction_timeout: must be 0 (no limit)"),
    ({}, {"max_concurrent_queries": 1}, "users.alice.max_concurrent_queries: unknown key"),
])
def test_bad_values_name_the_key(tmp_path: Path, tenant: dict, user: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(tmp_path, tenant, user)


@pytest.mark.parametrize(("asked", "limit", "out"), [
    (None, 30.0, "30000ms"), ("0", 30.0, "30000ms"), ("1h", 30.0, "30000ms"), ("5s", 30.0, "5s"),
    ("200", 30.0, "200"), ("nonsense", 1.0, "1000ms"),
])
def test_a_startup_statement_timeout_is_clamped(asked: str | None, limit: float, out: str) -> None:
    assert clamped_timeout(asked, limit) == out


@pytest.mark.parametrize(("tenant", "agent", "expected_ms", "param"), [
    ({}, False, 0, None),
    ({"statement_timeout": 2.5}, False, 2500, "2500ms"),
    ({"statement_timeout": 60.0}, True, 60000, "30000ms"),  # the agent's own 30 s is lower: its server keeps it
    ({"statement_timeout": 10.0}, True, 10000, "10000ms"),  # the limit is lower than the agent's 30 s
])
def test_a_statement_timeout_limit_is_the_servers_startup_value_and_the_policys(
        tmp_path: Path, tenant: dict, agent: bool, expected_ms: int, param: str | None) -> None:
    """The session's servers start with the limit (RESET returns there, their own pool) and its gate is the one of
    its limit (a SET above it reaches PostgreSQL as the limit: policy/timeouts.py)."""
    s = ClientSession(config(tmp_path, tenant, {"profile": "agent"} if agent else None), session_id="s1",
                      client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2), clock=Clock(),
                      tls_available=False)
    connect = login(s)[-1]
    assert isinstance(connect, ConnectBackend)
    assert connect.statement_timeout_ms == expected_ms
    assert connect.request.parameters.get("statement_timeout") == param
    assert dict(connect.request.key.context) == connect.request.parameters


def test_setting_milliseconds_reads_postgresql_units() -> None:
    assert [setting_milliseconds(t) for t in ("250", "2s", "1.5 min", "'3h'", "7 parsecs")] == [
        250, 2000, 90_000, 10_800_000, None]
    # PostgreSQL rounds to whole ms, half to even: these are 0 there, i.e. no timeout (red team 6 F1)
    assert [setting_milliseconds(t) for t in ("0.4", "100us", "0.0001", "1e-9", "0.5", "1.5", "500us")] == [
        0, 0, 0, 0, 0, 2, 0]
    # a fraction of a unit is first rounded to a whole number of the next smaller unit (guc.c convert_to_base_unit):
    # 0 s, 0 min, 0 h, i.e. no timeout (red team 9r F3); and up past a limit that is not a whole second
    assert [setting_milliseconds(t) for t in ("0.00001 min", "0.000001h", "0.00000001d", "0.0005 h",
                                              "0.0584 min", "0.0006ms")] == [0, 0, 0, 0, 4000, 0]
    # strtol's reading (octal, hex); units are case-sensitive; a hex float PostgreSQL reads is refused here
    assert [setting_milliseconds(t) for t in ("010", "0x10", "08", "5MIN", "0x1.8")] == [8, 16, None, None, None]


def test_connection_counts_per_tenant_and_user(tmp_path: Path) -> None:
    limits = resolve(config(tmp_path, {"max_client_connections": 2}, {"max_client_connections": 1}), "alice")
    counts = ConnectionCounts()
    assert counts.admit(limits) is None
    refused = counts.admit(limits)
    assert refused is not None and refused[1] == 1 and refused[0].sqlstate == "53300"
    assert 'user "alice"' in refused[0].message and counts.tenants["acme"] == 1
    counts.release(limits)
    assert counts.tenants == {} and counts.users == {}


def test_result_meter_rows_then_bytes() -> None:
    meter = ResultMeter(2, None)
    assert [meter.add(10) for _ in range(3)] == [None, None, "max_result_rows"]
    meter = ResultMeter(None, 25)
    assert [meter.add(10) for _ in range(3)] == [None, None, "max_result_bytes"]
    meter.reset()
    assert meter.add(10) is None


def test_query_slots_first_come_first_served_per_tenant() -> None:
    slots = QuerySlots()
    assert slots.acquire("a", 1, "c1") is True
    assert slots.acquire("a", 1, "c2") is False and slots.acquire("a", 1, "c3") is False
    assert slots.acquire("b", 1, "d1") is True  # another tenant's turns are its own
    slots.withdraw("a", "c2")
    assert slots.release("a", 1) == "c3"
    assert slots.release("a", 1) is None and slots.running == {"b": 1} and slots.waiting == {}


def test_a_free_turn_is_one_acquire_would_give_now() -> None:
    """(A session's kept server is resumed only when its turn is free now: then its acquire is granted at once.)"""
    slots = QuerySlots()
    assert slots.free("a", 1) and slots.running == {}  # (asking takes nothing)
    slots.acquire("a", 1, "c1")
    assert not slots.free("a", 1) and slots.free("a", 2)
    slots.acquire("a", 2, "c2")
    assert slots.acquire("a", 2, "c3") is False  # (waits)
    assert not slots.free("a", 3)  # a turn below 3, but c3 waits first
    assert slots.release("a", 2) == "c3" and slots.free("a", 3)


# --- the session under limits ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def session(tmp_path: Path, tenant: dict[str, Any], clock: Clock | None = None, pool_mode: str = "session",
            connections: ConnectionCounts | None = None, user: dict[str, Any] | None = None, sticky: bool = False,
            **params: str) -> tuple[ClientSession, list]:
    """A logged-in session of alice (her `user` keys) under the tenant's `tenant` limits, holding a server, its
    startup answered."""
    s = ClientSession(config(tmp_path, tenant, user, pool_mode=pool_mode, sticky=sticky), session_id="s1",
                      client_address="10.0.0.1",
                      throttle=AuthThrottle(max_failures=2), clock=clock or Clock(), tls_available=False,
                      connections=connections)
    actions = login(s, **params)
    if s.state is State.CLOSED:
        return s, actions
    assert isinstance(actions[-1], ConnectBackend)
    s.enable_policy(lambda _kind, _sql: _allow())
    attached = s.server_attached(server_for(s))
    replay = b"".join(bytes(c) for a in attached if type(a) is RelayToServer for c in a.chunks)
    if replay:  # the startup settings (statement_timeout): answered
        s.server_data(m.frame(b"C", b"SELECT 1\x00") + m.ready_for_query(b"I"))
    return s, actions


def _allow() -> Any:
    from proxy.policy.model import Allow
    return Allow()


def rows(n: int, size: int = 3) -> bytes:
    return m.frame(b"D", b"\x00\x01" + (size).to_bytes(4, "big") + b"x" * size) * n


def done(status: bytes = b"I", n: int = 0) -> bytes:
    return m.frame(b"C", f"SELECT {n}".encode() + b"\x00") + m.ready_for_query(status)


def to_client(actions: list) -> bytes:
    return b"".join(bytes(c) for a in actions if type(a) is RelayToClient for c in a.chunks)


def types(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        out.append(data[pos:pos + 1])
        pos += 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
    return out


def test_a_result_past_max_result_rows_is_cut_and_its_query_canceled(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_result_rows": 2})
    s.client_data(m.Query("SELECT g FROM big").encode())
    out = s.server_data(m.frame(b"T", b"\x00\x00") + rows(3))
    assert types(to_client(out)) == [b"T", b"D", b"D", b"E"] and b"C54000\x00" in to_client(out)
    assert [type(a) for a in out if type(a) is not RelayToClient] == [LimitReached, CancelQuery]
    assert out[1] == LimitReached("acme", "alice", "max_result_rows", 2)
    # the rest and the cancel's error are swallowed; the ReadyForQuery waits for the cancel to be acted on
    more = s.server_data(rows(5) + m.encode_error_fields(b"E", {"S": "ERROR", "C": "57014", "M": "canceled"})
                         + m.ready_for_query(b"I"))
    assert to_client(more) == b""
    assert to_client(s.cancel_done()) == m.ready_for_query(b"I")
    s.client_data(m.Query("SELECT 1").encode())  # usable, counted from zero
    assert types(to_client(s.server_data(rows(2) + done()))) == [b"D", b"D", b"C", b"Z"]


def test_a_cut_result_the_server_finished_in_a_transaction_block_fails_it_there_too(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_result_bytes": 20})
    s.client_data(m.Query("SELECT g FROM t").encode())
    out = s.server_data(rows(3, 5) + done(b"T", 3))  # all of it before any cancel: the server's block is live
    assert types(to_client(out)) == [b"D", b"E"] and CancelQuery() in out
    out = s.cancel_done()  # ReadyForQuery 'T' swallowed: a failing statement goes instead
    assert to_client(out) == b""
    assert [bytes(c) for a in out if type(a) is RelayToServer for c in a.chunks] == [
        m.Query("pgtenant_result_cut_off").encode()]
    answer = s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601", "M": "syntax"})
                           + m.ready_for_query(b"E"))
    assert to_client(answer) == m.ready_for_query(b"E")  # the client's transaction failed, as the server's


def test_a_cut_result_with_requests_pipelined_behind_it_runs_to_its_end_uncanceled(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_result_rows": 1})
    s.client_data(m.Query("SELECT 1").encode() + m.Query("SELECT 2").encode())
    out = s.server_data(rows(2) + done(b"I", 2))
    assert CancelQuery() not in out  # a cancel could reach the next request
    assert types(to_client(out)) == [b"D", b"E", b"Z"]
    assert types(to_client(s.server_data(rows(1) + done(b"I", 1)))) == [b"D", b"C", b"Z"]


def test_the_watchdog_cancels_past_statement_timeout_and_names_the_limit(tmp_path: Path) -> None:
    clock = Clock()
    s, actions = session(tmp_path, {"statement_timeout": 2.0}, clock)
    assert WatchLimits(0.2) in actions
    s.client_data(m.Query("SET statement_timeout = 0; SELECT pg_sleep(60)").encode())
    clock.now += 1.0
    assert s.limits_tick() == []
    clock.now += 1.5
    assert s.limits_tick() == [LimitReached("acme", "alice", "statement_timeout", 2.0), CancelQuery()]
    assert s.limits_tick() == []  # once
    out = s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "57014", "M": "canceling statement due to "
                                                     "user request"}) + m.ready_for_query(b"I"))
    data = to_client(out)  # the cancel's 57014 in our words; the ReadyForQuery held until the cancel is done
    assert types(data) == [b"E"] and b"pgtenant statement_timeout is 2 s" in data and b"C57014\x00" in data
    assert to_client(s.cancel_done()) == m.ready_for_query(b"I")


AGENT = {"profile": "agent", "agent": {"statement_timeout": 2.0}}


@pytest.mark.parametrize("tenant", [{}, {"statement_timeout": 5.0}], ids=["no-limit", "a-higher-limit"])
def test_the_watchdog_cancels_an_agent_past_its_own_statement_timeout(tmp_path: Path, tenant: dict) -> None:
    """The agent profile's statement_timeout is the proxy's to enforce too, not only the server's setting: past it
    the request is canceled and the agent's limit named (with or without a tenant limit, a lower one of its own)."""
    clock = Clock()
    s, actions = session(tmp_path, tenant, clock, user=AGENT)
    assert WatchLimits(0.2) in actions
    s.client_data(m.Query("SELECT count(*) FROM orders a, orders b").encode())
    clock.now += 1.5
    assert s.limits_tick() == []
    clock.now += 1.0
    assert s.limits_tick() == [LimitReached("acme", "alice", "statement_timeout", 2.0), CancelQuery()]
    out = s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "57014", "M": "canceling statement due to "
                                                     "user request"}) + m.ready_for_query(b"I"))
    data = to_client(out)
    assert types(data) == [b"E"] and b"pgtenant agent statement_timeout is 2 s" in data and b"agent.statement_timeout" \
        in data


def test_a_lower_tenant_limit_than_the_agents_is_the_watchdogs(tmp_path: Path) -> None:
    limits = resolve(config(tmp_path, {"statement_timeout": 1.0}, AGENT), "alice")
    assert (limits.watchdog_timeout, limits.agent_timed) == (1.0, False)
    limits = resolve(config(tmp_path, {}, AGENT), "alice")
    assert (limits.statement_timeout, limits.watchdog_timeout, limits.agent_timed) == (None, 2.0, True)
    assert limits.watched and limits.any


@pytest.mark.parametrize("replica", [None, "r1"], ids=["primary", "replica"])
def test_replica_statement_timeout_cancels_a_request_running_on_a_replica_only(tmp_path: Path,
                                                                               replica: str | None) -> None:
    """replica_statement_timeout bounds a request while the session's server is a replica (a long read there holds
    back replay for every tenant); on the primary the tenant's statement_timeout holds."""
    clock = Clock()
    s, actions = session(tmp_path, {"statement_timeout": 5.0, "replica_statement_timeout": 1.0}, clock)
    assert WatchLimits(0.1) in actions
    assert s.server is not None
    s.server.replica = replica
    s.client_data(m.Query("SELECT count(*) FROM orders a, orders b").encode())
    clock.now += 1.5
    if replica is None:
        assert s.limits_tick() == []
        clock.now += 4.0
        assert s.limits_tick() == [LimitReached("acme", "alice", "statement_timeout", 5.0), CancelQuery()]
        return
    assert s.limits_tick() == [LimitReached("acme", "alice", "replica_statement_timeout", 1.0), CancelQuery()]
    out = s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "57014", "M": "canceling statement due to "
                                                     "user request"}) + m.ready_for_query(b"I"))
    assert b"pgtenant replica_statement_timeout is 1 s" in to_client(out)


def test_replica_statement_timeout_resolves_per_user(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"replica_statement_timeout": 10.0}, {"replica_statement_timeout": 2.0})
    limits = resolve(cfg, "alice")
    assert (limits.replica_statement_timeout, limits.watched, limits.tick) == (2.0, True, 0.2)
    assert limits.timeout_on(True) == (2.0, "replica_statement_timeout") and limits.timeout_on(False)[0] is None
    with pytest.raises(ConfigError, match=r"tenants\.acme\.replica_statement_timeout: must be 0"):
        config(tmp_path, {"replica_statement_timeout": -1})


def test_the_startup_statement_timeout_is_the_limit_unless_lower(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"statement_timeout": 2.0}, options="-c statement_timeout=0")
    assert "'2000ms'" in s._startup_settings["statement_timeout"]
    s, _ = session(tmp_path, {"statement_timeout": 2.0}, statement_timeout="500")
    assert "'500'" in s._startup_settings["statement_timeout"]


def test_idle_in_transaction_ends_the_session(tmp_path: Path) -> None:
    clock = Clock()
    s, _ = session(tmp_path, {"idle_in_transaction_timeout": 5.0}, clock)
    s.client_data(m.Query("BEGIN").encode())
    s.server_data(m.frame(b"C", b"BEGIN\x00") + m.ready_for_query(b"T"))
    clock.now += 4.0
    assert s.limits_tick() == []
    clock.now += 2.0
    out = s.limits_tick()
    assert out[0] == LimitReached("acme", "alice", "idle_in_transaction_timeout", 5.0)
    assert out[1] == ReleaseServer(reusable=False, reset=True, reason=CloseReason.IDLE_IN_TRANSACTION_TIMEOUT)
    assert isinstance(out[2], CloseClient) and out[2].error is not None
    assert (out[2].error.sqlstate, out[2].error.severity) == ("25P03", "FATAL") and s.state is State.CLOSED


def test_idle_outside_a_transaction_is_not_ended(tmp_path: Path) -> None:
    clock = Clock()
    s, _ = session(tmp_path, {"idle_in_transaction_timeout": 5.0}, clock)
    clock.now += 60
    assert s.limits_tick() == []


def test_max_client_connections_refuses_the_login_before_any_backend(tmp_path: Path) -> None:
    counts = ConnectionCounts()
    first, _ = session(tmp_path, {"max_client_connections": 1}, connections=counts)
    second, actions = session(tmp_path, {"max_client_connections": 1}, connections=counts)
    assert second.state is State.CLOSED and not any(isinstance(a, ConnectBackend) for a in actions)
    assert actions[-2] == LimitReached("acme", "alice", "max_client_connections", 1)
    assert actions[-1].error.sqlstate == "53300" and "max_client_connections is 1" in actions[-1].error.message
    first.close()
    third, actions = session(tmp_path, {"max_client_connections": 1}, connections=counts)
    assert third.state is State.READY


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_request_waits_for_its_turn_and_gives_it_back_at_idle(tmp_path: Path, pool_mode: str) -> None:
    s, _ = session(tmp_path, {"max_concurrent_queries": 1, "query_wait_timeout": 3}, pool_mode=pool_mode)
    assert s.client_data(m.Query("SELECT 1").encode()) == [AcquireSlot("acme", 1, 3.0)]
    assert s.client_data(m.Query("SELECT 2").encode()) == []  # (kept with the first)
    granted = s.slot_granted()
    if pool_mode == "transaction":
        granted = s.server_attached(server_for(s))
    sent = b"".join(bytes(c) for a in granted if type(a) is RelayToServer for c in a.chunks)
    assert sent.endswith(m.Query("SELECT 1").encode() + m.Query("SELECT 2").encode())
    assert ReleaseSlot("acme", 1) not in s.server_data(done())  # SELECT 2 still in flight
    assert ReleaseSlot("acme", 1) in s.server_data(done())


def test_a_request_without_a_turn_in_time_gets_53300_and_the_session_goes_on(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_concurrent_queries": 2, "query_wait_timeout": 3})
    s.client_data(m.Query("SELECT 1").encode())
    out = s.slot_refused()
    assert out[0] == LimitReached("acme", "alice", "max_concurrent_queries", 2)
    data = to_client(out)
    assert types(data) == [b"E", b"Z"] and b"C53300\x00" in data and b"max_concurrent_queries = 2" in data
    assert s.client_data(m.Query("SELECT 1").encode()) == [AcquireSlot("acme", 2, 3.0)]  # asks again


def test_a_batch_without_its_sync_that_gets_no_turn_ends_the_session(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_concurrent_queries": 1})
    s.client_data(m.Parse("", "SELECT 1", b"\x00\x00").encode())
    out = s.slot_refused()
    assert isinstance(out[-1], CloseClient) and out[-1].reason is CloseReason.MAX_CONCURRENT_QUERIES


def test_errors_name_their_limit() -> None:
    assert "max_result_rows = 10" in errors.limit_result("max_result_rows", 10).message
    assert errors.limit_concurrency("acme", 2, "5").sqlstate == "53300"


def bind(portal: str, statement: str = "") -> bytes:
    return m.frame(b"B", portal.encode() + b"\x00" + statement.encode() + b"\x00" + b"\x00\x00\x00\x00\x00\x00")


def execute(portal: str, max_rows: int = 0) -> bytes:
    return m.frame(b"E", portal.encode() + b"\x00" + max_rows.to_bytes(4, "big"))


SYNC, FLUSH = m.frame(b"S", b""), m.frame(b"H", b"")
SUSPENDED = m.frame(b"s", b"")


def test_the_watchdog_cancels_an_open_batch_again_once_the_client_sends_more_of_it(tmp_path: Path) -> None:
    clock = Clock()
    s, _ = session(tmp_path, {"statement_timeout": 2.0}, clock)
    s.client_data(m.Parse("", "SELECT 1", b"\x00\x00").encode() + bind("") + execute("") + FLUSH)
    s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + rows(1) + m.command_complete("SELECT 1"))
    clock.now += 2.5  # the server waits for the batch's next message: this cancel does nothing there
    assert s.limits_tick() == [LimitReached("acme", "alice", "statement_timeout", 2.0), CancelQuery()]
    s.cancel_done()
    clock.now += 1.0
    assert s.limits_tick() == []  # nothing more sent: nothing to cancel
    s.client_data(m.Parse("", "SELECT pg_sleep(60)", b"\x00\x00").encode() + bind("") + execute("") + SYNC)
    assert s.limits_tick() == [CancelQuery()]  # the limit counted once per request
    out = s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + m.encode_error_fields(
        b"E", {"S": "ERROR", "C": "57014", "M": "canceling statement due to user request"}) + m.ready_for_query(b"I"))
    assert b"pgtenant statement_timeout is 2 s" in to_client(out)


def test_a_prepare_ended_by_a_flush_gives_its_turn_back_and_is_not_timed_in_session_pooling(tmp_path: Path) -> None:
    """Red team 9r F9 in session pooling too (transaction pooling: tests/unit/test_session_pooling.py): asyncpg's
    prepare() (Parse/Describe/Flush, no Sync) answered in full is ended by the proxy's own Sync (its ReadyForQuery
    not relayed, the server kept): the turn goes back, the watchdog has no request to time, and the client's next
    request asks for a turn again."""
    clock = Clock()
    s, _ = session(tmp_path, {"max_concurrent_queries": 1, "statement_timeout": 2.0}, clock)
    prepare = m.Parse("s1", "SELECT 1", b"\x00\x00").encode() + m.frame(b"D", b"Ss1\x00") + FLUSH
    assert s.client_data(prepare) == [AcquireSlot("acme", 1, 120.0)]
    assert b"".join(bytes(c) for a in s.slot_granted() if type(a) is RelayToServer for c in a.chunks) == prepare
    out = s.server_data(m.frame(b"1", b"") + m.frame(b"t", b"\x00\x00") + m.frame(b"n", b""))
    assert types(to_client(out)) == [b"1", b"t", b"n"]
    assert [bytes(c) for a in out if type(a) is RelayToServer for c in a.chunks] == [SYNC]  # the proxy's own
    assert not [a for a in out if isinstance(a, BatchWithoutSync)]  # (a transaction pooling gauge)
    out = s.server_data(m.ready_for_query(b"I"))
    assert to_client(out) == b"" and ReleaseSlot("acme", 1) in out and ReleaseServer not in map(type, out)
    clock.now += 5.0
    assert s.limits_tick() == []  # nothing in flight: nothing timed
    assert s.client_data(bind("", "s1") + execute("") + SYNC) == [AcquireSlot("acme", 1, 120.0)]


def test_a_batch_ended_by_a_flush_that_ran_a_statement_stays_timed_in_session_pooling(tmp_path: Path) -> None:
    """... but not one whose statement ran on the primary (its implicit transaction ends at the client's Sync)."""
    clock = Clock()
    s, _ = session(tmp_path, {"statement_timeout": 2.0}, clock)
    s.client_data(m.Parse("", "SELECT 1", b"\x00\x00").encode() + bind("") + execute("") + FLUSH)
    out = s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + rows(1) + m.command_complete("SELECT 1"))
    assert not [a for a in out if type(a) is RelayToServer]
    clock.now += 2.5
    assert CancelQuery() in s.limits_tick()


def test_a_ready_for_query_held_for_a_cancel_holds_the_pipelined_answers_behind_it(tmp_path: Path) -> None:
    clock = Clock()
    s, _ = session(tmp_path, {"statement_timeout": 2.0, "max_result_rows": 1}, clock)
    s.client_data(m.Query("SELECT slow").encode() + m.Query("SELECT 2").encode())
    out = s.server_data(rows(2))  # cut (a request behind it: no cancel for the cut)
    assert CancelQuery() not in out
    clock.now += 2.5
    assert CancelQuery() in s.limits_tick()  # past statement_timeout while being cut: canceled all the same
    more = s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "57014", "M": "canceled"})
                         + m.ready_for_query(b"I") + rows(1) + done(b"I", 1))
    assert to_client(more) == b""  # the second request's answers wait behind the held ReadyForQuery
    assert types(to_client(s.cancel_done())) == [b"Z", b"D", b"C", b"Z"]


def test_a_portal_is_counted_over_its_executes_whatever_completes_between_them(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_result_rows": 5})
    s.client_data(m.Query("BEGIN").encode())
    s.server_data(m.frame(b"C", b"BEGIN\x00") + m.ready_for_query(b"T"))
    s.client_data(bind("a") + bind("b") + execute("a", 3) + execute("b", 4) + SYNC)
    out = s.server_data(m.frame(b"2", b"") * 2 + rows(3) + SUSPENDED + rows(4) + SUSPENDED + m.ready_for_query(b"T"))
    assert types(to_client(out)).count(b"D") == 7  # each portal its own count
    s.client_data(bind("") + execute("") + SYNC)  # another statement completes in between
    s.server_data(m.frame(b"2", b"") + rows(1) + m.command_complete("SELECT 1") + m.ready_for_query(b"T"))
    s.client_data(execute("a", 3) + SYNC)  # a: 3 + 3 > 5
    out = s.server_data(rows(3))
    assert types(to_client(out)) == [b"D", b"D", b"E"] and b"C54000\x00" in to_client(out)


def test_a_cut_result_whose_request_then_completed_another_statement_ends_the_session(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_result_rows": 1})
    s.client_data(m.Query("SELECT g FROM t; INSERT INTO t VALUES (1)").encode())
    out = s.server_data(rows(2) + m.command_complete("SELECT 2") + m.command_complete("INSERT 0 1"))
    assert CancelQuery() in out  # too late: the INSERT ran
    out = s.server_data(m.ready_for_query(b"I"))
    assert to_client(out) == b""
    out = s.cancel_done()
    closing = [a for a in out if isinstance(a, CloseClient)]
    assert closing and closing[0].error is not None and closing[0].error.severity == "FATAL"
    assert "ran on the server" in closing[0].error.message and s.state is State.CLOSED
    assert ReleaseServer(reusable=False, reset=True, reason=CloseReason.RESULT_CUT) in out


def test_a_tenants_statement_bytes_are_bounded_over_its_sessions_and_given_back() -> None:
    ledger = TenantStatementBytes()
    assert ledger.claim("acme", 0, 600, 1000) and ledger.claim("acme", 0, 400, 1000)
    assert not ledger.claim("acme", 0, 1, 1000)  # past the bound: refused, nothing counted
    assert ledger.claim("globex", 0, 1000, 1000)  # each tenant its own
    assert ledger.claim("acme", 600, 100, 1000)  # a session holding less: always
    assert ledger.held == {"acme": 500, "globex": 1000}
    claim = StatementBytesClaim(ledger, "acme", lambda: 1000)
    assert claim("s", 500) is None and claim("s", 501) is not None
    error = claim("s", 600)
    assert error is not None and error.sqlstate == "53200" and "max_tenant_statement_bytes = 1000" in error.message
    claim.release()
    assert ledger.held["acme"] == 500 and claim.reported == 0


# --- max_result_bytes counts errors and notices (red team 7 F9) ------------------------------------------------


def test_an_error_longer_than_the_result_bytes_left_is_cut_to_them(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_result_bytes": 200})
    s.client_data(m.Query("SELECT (SELECT string_agg(email, ',') FROM customers)::int").encode())
    secret = "x@example.com," * 1000  # PostgreSQL copies a failing cast's whole input into the message
    out = to_client(s.server_data(m.encode_error_fields(b"E", {
        "S": "ERROR", "V": "ERROR", "C": "22P02", "M": f'invalid input syntax for type integer: "{secret}"',
        "F": "numutils.c", "L": "617", "R": "pg_strtoint32_safe"}) + m.ready_for_query(b"I")))
    assert types(out) == [b"E", b"Z"]
    size = 1 + int.from_bytes(out[1:5], "big")
    error = m.decode_error_fields(out[5:size])
    assert error["C"] == "22P02" and error["M"].startswith("invalid input syntax") and error["M"].endswith(CUT_MARK)
    assert size <= 200 + len(CUT_MARK) and error["R"] == "pg_strtoint32_safe"


def test_an_error_within_the_bytes_left_is_relayed_as_is(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_result_bytes": 2000})
    s.client_data(m.Query("SELECT 1/0").encode())
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "22012", "M": "division by zero"})
    assert to_client(s.server_data(error + m.ready_for_query(b"I"))) == error + m.ready_for_query(b"I")


def test_notices_count_towards_the_result_and_are_cut_past_it(tmp_path: Path) -> None:
    s, _ = session(tmp_path, {"max_result_bytes": 100})
    s.client_data(m.Query("SELECT g FROM t").encode())
    notice = m.encode_error_fields(b"N", {"S": "NOTICE", "C": "00000", "M": "n" * 60})
    first = to_client(s.server_data(notice))
    assert first == notice  # 71 bytes: within the 100
    second = to_client(s.server_data(notice))
    fields = m.decode_error_fields(second[5:])
    assert fields["M"].endswith(CUT_MARK) and len(fields["M"]) < 60
    assert types(to_client(s.server_data(rows(1)))) == [b"E"]  # the notices took the result's bytes


def test_bounded_message_keeps_the_servers_fields_and_fits_a_small_budget() -> None:
    body = m.encode_error_fields(b"E", {"S": "ERROR", "C": "XX000", "M": "m" * 500, "D": "d" * 500,
                                        "H": "h" * 500, "W": "w" * 500})[5:]
    cut = bounded_message(b"E", body, 0)
    assert cut is not None
    fields = m.decode_error_fields(cut[5:])
    assert fields == {"S": "ERROR", "C": "XX000", **{k: CUT_MARK for k in "MDHW"}}
    assert bounded_message(b"E", body, len(body) + 5) is None
