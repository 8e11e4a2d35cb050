"""ClientSession, scripted: a client that leaves its results unread holds no server for ever (red team 9s6 F1-F3).
The watchdog's cancel not acted on within limits.cancel_grace closes the server and ends the session (57014 FATAL);
whatever the limits, a client that takes none of its pending output for pool.client_write_timeout (on a replica's
server at most [routing] max_replica_lag) ends the session, its server closed; a client that reads is never ended."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.actions import AcquireServer, CancelQuery, CloseClient, LimitReached, ReleaseServer
from proxy.auth.throttle import AuthThrottle
from proxy.policy import TenantPolicy
from proxy.policy.cache import DecisionCache
from proxy.protocol import messages as m
from proxy.reasons import CloseReason
from proxy.session import ClientSession
from tests.support.sessions import login, make_config, server_for
from tests.unit.test_limits import Clock, session

POLICY = TenantPolicy(tenant="acme", strategy="database")
QUERY = "SELECT repeat('x', 1000) FROM generate_series(1, 1000000)"


def _ended(out: list, reason: CloseReason) -> CloseClient:
    """The session's answer ended it: its server given back not reusable (closed, not drained), then the close."""
    assert [type(a) for a in out] == [ReleaseServer, CloseClient], out
    release, close = out
    assert isinstance(release, ReleaseServer) and not release.reusable and not release.busy
    assert release.reason is reason
    assert isinstance(close, CloseClient) and close.reason is reason and close.unread
    return close


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_cancel_not_acted_on_within_the_grace_closes_the_server(tmp_path: Path, pool_mode: str) -> None:
    clock = Clock()
    s, _ = session(tmp_path, {"statement_timeout": 2.0}, clock, pool_mode=pool_mode)
    out = s.client_data(m.Query(QUERY).encode())
    if pool_mode == "transaction":
        assert any(isinstance(a, AcquireServer) for a in out), out
        s.server_attached(server_for(s))
    s.server_data(m.frame(b"T", b"\x00\x00") + b"".join(m.frame(b"D", b"\x00\x00") for _ in range(3)))
    clock.now += 2.5
    assert s.limits_tick() == [LimitReached("acme", "alice", "statement_timeout", 2.0), CancelQuery()]
    assert s.cancel_done() == []  # the cancel reached PostgreSQL, which is blocked writing: nothing follows
    clock.now += 1.0
    assert s.limits_tick() == []  # within limits.cancel_grace (2 s)
    clock.now += 1.5
    close = _ended(s.limits_tick(), CloseReason.STATEMENT_TIMEOUT)
    error = close.error
    assert error is not None and (error.severity, error.sqlstate) == ("FATAL", "57014")
    assert "pgtenant statement_timeout is 2 s" in error.message and "within 2 s of its cancel" in error.message


def test_a_replica_statement_timeout_unheeded_names_its_limit(tmp_path: Path) -> None:
    clock = Clock()
    s, _ = session(tmp_path, {"replica_statement_timeout": 1.0}, clock)
    assert s.server is not None
    s.server.replica = "r1"
    s.client_data(m.Query(QUERY).encode())
    clock.now += 1.5
    assert s.limits_tick() == [LimitReached("acme", "alice", "replica_statement_timeout", 1.0), CancelQuery()]
    clock.now += 2.5  # (the cancel connection itself has not even closed: the grace is from the cancel sent)
    close = _ended(s.limits_tick(), CloseReason.STATEMENT_TIMEOUT)
    assert close.error is not None and "pgtenant replica_statement_timeout is 1 s" in close.error.message


def test_a_cancel_acted_on_within_the_grace_ends_nothing(tmp_path: Path) -> None:
    clock = Clock()
    s, _ = session(tmp_path, {"statement_timeout": 2.0}, clock)
    s.client_data(m.Query(QUERY).encode())
    clock.now += 2.5
    assert s.limits_tick()[-1] == CancelQuery()
    s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "57014", "M": "canceling statement due to user "
                                               "request"}) + m.ready_for_query(b"I"))
    s.cancel_done()
    clock.now += 10.0
    assert s.limits_tick() == []
    assert s.server is not None


def test_a_batch_waiting_for_its_sync_is_not_cut_by_the_grace(tmp_path: Path) -> None:
    """An open batch (no Sync) canceled: the server waits for the client, the idle timeout's case, not the grace's."""
    clock = Clock()
    s, _ = session(tmp_path, {"statement_timeout": 2.0}, clock)
    s.client_data(m.frame(b"P", b"\x00" + QUERY.encode() + b"\x00\x00\x00") + m.frame(b"B", b"\x00\x00" + b"\x00" * 6)
                  + m.frame(b"E", b"\x00\x00\x00\x00\x00"))
    clock.now += 2.5
    assert s.limits_tick()[-1] == CancelQuery()
    s.cancel_done()
    clock.now += 5.0
    assert s.limits_tick() == []


def _held(tmp_path: Path, mode: str, now: list[float], timeout: float, replica: str | None = None,
          lag: float = 5.0) -> ClientSession:
    """A session of `mode` holding a server for a running query (no limits), client_write_timeout `timeout`."""
    config = make_config(tmp_path, pool={"pool_mode": mode, "client_write_timeout": timeout})
    if lag != 5.0:
        from dataclasses import replace
        config = replace(config, routing=replace(config.routing, max_replica_lag=lag))
    s = ClientSession(config, session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                      clock=lambda: now[0], tls_available=False)
    login(s)
    cache = DecisionCache()
    s.enable_policy(lambda _kind, sql: cache.get_or_decide(POLICY, sql))
    s.server_attached(server_for(s, {"application_name": ""}))
    out = s.client_data(m.Query(QUERY).encode())
    if mode == "transaction":
        assert out == [AcquireServer(s.request)]
        s.server_attached(server_for(s))
    assert s.server is not None
    s.server.replica = replica
    return s


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_client_taking_none_of_its_output_ends_the_session(tmp_path: Path, mode: str) -> None:
    now = [0.0]
    s = _held(tmp_path, mode, now, 10.0)
    assert s.message_tick(now[0], False, True) == []  # the clock starts
    now[0] = 9.5
    assert s.message_tick(now[0], False, True) == []
    now[0] = 10.0
    close = _ended(s.message_tick(now[0], False, True), CloseReason.CLIENT_WRITE_TIMEOUT)
    error = close.error
    assert error is not None and (error.severity, error.sqlstate) == ("FATAL", "08006")
    assert "client_write_timeout" in error.message and "10 s" in error.message


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_slow_reader_is_never_ended(tmp_path: Path, mode: str) -> None:
    """A tick at which the client took some of its output starts the clock again: a steady reader, however slow."""
    now = [0.0]
    s = _held(tmp_path, mode, now, 10.0)
    for tick in range(1, 100):
        now[0] = float(tick)
        assert s.message_tick(now[0], False, tick % 9 != 0) == []
    assert s.server is not None


def test_on_a_replica_the_bound_is_at_most_max_replica_lag(tmp_path: Path) -> None:
    now = [0.0]
    s = _held(tmp_path, "transaction", now, 60.0, replica="r1", lag=3.0)
    assert s.message_tick(now[0], False, True) == []
    now[0] = 2.5
    assert s.message_tick(now[0], False, True) == []
    now[0] = 3.0
    close = _ended(s.message_tick(now[0], False, True), CloseReason.CLIENT_WRITE_TIMEOUT)
    assert close.error is not None and "3 s" in close.error.message


def test_zero_is_no_write_bound(tmp_path: Path) -> None:
    now = [0.0]
    s = _held(tmp_path, "session", now, 0.0)
    for tick in range(1000):
        now[0] = float(tick)
        assert s.message_tick(now[0], False, True) == []


def test_an_agents_statement_timeout_unheeded_names_the_agents_limit(tmp_path: Path) -> None:
    clock = Clock()
    s, _ = session(tmp_path, {}, clock, user={"profile": "agent", "agent": {"statement_timeout": 2.0}})
    s.client_data(m.Query("SELECT count(*) FROM orders a, orders b").encode())
    clock.now += 2.5
    assert s.limits_tick()[-1] == CancelQuery()
    s.cancel_done()
    clock.now += 2.5
    close = _ended(s.limits_tick(), CloseReason.STATEMENT_TIMEOUT)
    assert close.error is not None and "pgtenant agent statement_timeout is 2 s" in close.error.message


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_message_after_the_sync_does_not_stop_the_grace(tmp_path: Path, pool_mode: str) -> None:
    """Review 17 F2: the grace was skipped whenever a batch waited for its Sync, so one Parse sent after the timed-out
    Query (a new request, its batch open) and a client reading a row now and then (no write bound: bytes move) kept
    the backend running unbounded. The head request is whole on the server: the grace ends it."""
    clock = Clock()
    s, _ = session(tmp_path, {"statement_timeout": 2.0}, clock, pool_mode=pool_mode)
    out = s.client_data(m.Query(QUERY).encode() + m.Parse("", "SELECT 1", b"\x00\x00").encode())
    if pool_mode == "transaction":
        assert any(isinstance(a, AcquireServer) for a in out), out
        s.server_attached(server_for(s))
    s.server_data(m.frame(b"T", b"\x00\x00") + b"".join(m.frame(b"D", b"\x00\x00") for _ in range(3)))
    clock.now += 2.5
    assert s.limits_tick()[-1] == CancelQuery()
    s.cancel_done()
    got: list = []
    for _ in range(60):  # a minute; the client reads a trickle: a row now and then
        clock.now += 1.0
        s.server_data(m.frame(b"D", b"\x00\x00"))
        got += s.limits_tick() + s.message_tick(clock.now, False, False)
        if any(isinstance(a, CloseClient) for a in got):
            break
    assert any(isinstance(a, CloseClient) for a in got), got
