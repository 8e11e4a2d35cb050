"""ClientSession with sticky servers (transaction pooling, `[pool] sticky_servers`), scripted: at ReadyForQuery 'I'
it keeps its server (KeepServer) instead of giving it back, its next request runs there with no acquire, and when the
pool takes the server back it does what the release would have done."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from proxy.actions import (
    AcquireServer,
    AcquireSlot,
    KeepServer,
    RelayToServer,
    ReleaseServer,
    ReleaseSlot,
    SendClient,
    SessionPinned,
    StartRelay,
)
from proxy.auth.throttle import AuthThrottle
from proxy.protocol import messages as m
from proxy.replicas import Route
from proxy.server import ServerConnection
from proxy.session import ClientSession, State
from tests.support.sessions import frames, make_config, server_for
from tests.unit.test_limits import session as limits_session
from tests.unit.test_session_pooling import _log_in, done, kinds, query, relayed
from tests.unit.test_session_routing import Clock, routed_config
from tests.unit.test_session_routing import session as routed_session


def _session(tmp_path: Path, **pool: object) -> ClientSession:
    cfg = make_config(tmp_path, pool={"pool_mode": "transaction", "sticky_servers": True, **pool})
    return ClientSession(cfg, session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                         clock=lambda: 0.0, tls_available=False)


@pytest.fixture
def kept(tmp_path: Path) -> tuple[ClientSession, ServerConnection]:
    """A sticky session, logged in: its first server is kept (not given back) after the startup answer."""
    s = _session(tmp_path)
    _log_in(s)
    server = server_for(s, {"application_name": ""})
    actions = s.server_attached(server)
    assert [type(a) for a in actions] == [SendClient, StartRelay, KeepServer]
    assert s.state is State.READY and s.server is server
    assert s.row().state == "idle"  # (SHOW CLIENTS: between requests, its server idle in the pool)
    return s, server


def test_the_next_request_runs_on_the_kept_server_with_no_acquire(kept: tuple[ClientSession, ServerConnection]) -> None:
    s, server = kept
    assert s.may_resume()
    assert s.server_resumed() == []
    out = s.client_data(query("SELECT 1"))
    assert [type(a) for a in out] == [RelayToServer] and relayed(out) == query("SELECT 1")
    assert kinds(s.server_data(done("SELECT 1"))) == [KeepServer]
    assert s.server is server and s.state is State.READY


def test_a_take_back_is_the_release_that_ready_for_query_skipped(kept: tuple[ClientSession, ServerConnection]) -> None:
    """What the release does for the next client happens at the take-back: the settings the session left on the
    server are recorded (the next client's replay diff), the session holds nothing and asks the pool anew."""
    s, server = kept
    s.server_resumed()
    s.client_data(query("SET DateStyle = German"))
    assert kinds(s.server_data(m.parameter_status("DateStyle", "German, DMY") + done("SET"))) == [KeepServer]
    assert server.settings == {}  # (not yet: it is still the session's)
    assert s.server_taken() == []
    assert s.state is State.IDLE and s.server is None
    assert server.settings == {"datestyle": "SET DateStyle = German"}
    assert not s.may_resume() and s.server_taken() == []  # (once only)
    assert s.client_data(query("SELECT 1")) == [AcquireServer(s.request)]
    other = server_for(s)
    [replay] = s.server_attached(other)  # another server: the session's setting first
    assert frames(relayed([replay])) == [(b"Q", b"SET DateStyle = German\x00"), (b"Q", b"SELECT 1\x00")]


def test_a_pinned_session_holds_its_server_and_keeps_nothing(kept: tuple[ClientSession, ServerConnection]) -> None:
    s, _ = kept
    s.server_resumed()
    s.client_data(query("CREATE TEMP TABLE t (x int)"))
    assert kinds(s.server_data(done("CREATE TABLE"))) == [SessionPinned]
    assert not s.may_resume()  # (pinned: held, not kept; the pool never takes it back)


def test_a_reset_of_a_startup_setting_is_recorded_on_the_kept_server_at_its_take_back(tmp_path: Path) -> None:
    """The proxy sets the startup value itself at the RESET: nothing is due at the release, the server is kept, and
    its take-back records the startup value for the next client's diff."""
    s = _session(tmp_path)
    _log_in(s, application_name="psql")
    server = server_for(s, {"application_name": ""})
    s.server_attached(server)
    assert kinds(s.server_data(m.parameter_status("application_name", "psql") + done("SELECT 1")))[-1] is KeepServer
    s.server_resumed()
    s.client_data(query("SET application_name = 'mine'"))
    s.server_data(m.parameter_status("application_name", "mine") + done("SET"))
    s.server_resumed()
    s.client_data(query("RESET application_name"))
    out = s.server_data(m.command_complete("SET") + m.parameter_status("application_name", "psql")
                        + m.ready_for_query(b"I"))
    assert kinds(out) == [KeepServer]
    s.server_taken()
    assert server.settings == {"application_name": "SELECT pg_catalog.set_config('application_name', 'psql', false)"}


def test_sticky_servers_off_gives_the_server_back_at_each_ready_for_query(tmp_path: Path) -> None:
    s = _session(tmp_path, sticky_servers=False)
    _log_in(s)
    assert [type(a) for a in s.server_attached(server_for(s))] == [SendClient, StartRelay, ReleaseServer]


def test_a_session_that_needs_a_turn_per_request_keeps_its_server_and_gives_the_turn_back(tmp_path: Path) -> None:
    """max_concurrent_queries: the turn goes back at each ReadyForQuery 'I' whether the server is kept or not; the
    next request needs a turn first (`resume_turn`: the I/O layer resumes the kept server only when one is free at
    once, so a server is never held while its request waits for a turn a turn holder's server would need)."""
    s, _ = limits_session(tmp_path, {"max_concurrent_queries": 1, "query_wait_timeout": 3}, pool_mode="transaction",
                          sticky=True)
    assert s.may_resume() and s.resume_turn() == ("acme", 1)  # (its login's server kept)
    s.server_resumed()
    assert s.client_data(query("SELECT 1")) == [AcquireSlot("acme", 1, 3.0)]  # (held: no turn yet)
    out = s.slot_granted()
    assert relayed(out) == query("SELECT 1") and s.resume_turn() is None
    out = s.server_data(done("SELECT 1"))
    assert ReleaseSlot("acme", 1) in out and kinds(out)[-1] is KeepServer
    assert s.may_resume() and s.resume_turn() == ("acme", 1)
    s.server_taken()  # no turn free: the kept server goes back, the request waits for its turn holding nothing
    assert s.state is State.IDLE and s.client_data(query("SELECT 2")) == [AcquireSlot("acme", 1, 3.0)]
    assert s.slot_granted() == [AcquireServer(s.request)]


def _routed(tmp_path: Path, clock: Clock, **routing: object) -> ClientSession:
    """A routed session (route = "auto", replica r1), sticky servers on, logged in: its login's server (the primary)
    is kept."""
    cfg = routed_config(tmp_path)
    cfg = replace(cfg, pool=replace(cfg.pool, sticky_servers=True), routing=replace(cfg.routing, **routing))
    s, _ = routed_session(cfg, clock)
    assert kinds(s.server_attached(server_for(s)))[-1] is KeepServer
    return s


def _on(s: ClientSession, sql: str, replica: str | None) -> ServerConnection:
    """The kept server is not the request's: taken back; the session asks the pool and gets a server of `replica`
    (None: the primary), keeps it at the end."""
    s.server_taken()
    assert s.state is State.IDLE
    [acquire] = s.client_data(query(sql))
    assert isinstance(acquire, AcquireServer) and acquire.route is not None
    assert acquire.route.read_only is (replica is not None)
    server = server_for(s)
    server.replica = replica
    s.server_attached(server)
    assert kinds(s.server_data(done("SELECT 1")))[-1] is KeepServer and s.server is server
    return server


def _route(s: ClientSession, sql: str) -> Route:
    """The Route a routed session with a server kept for it would ask the pool for `sql` with (`resume_route`)."""
    ask = s.resume_route(query(sql))
    assert isinstance(ask, AcquireServer) and ask.request is s.request and ask.route is not None
    return ask.route


def test_a_routed_session_keeps_its_replica_server_and_its_next_read_runs_there(tmp_path: Path) -> None:
    """Read replicas: a routed session keeps its server as any other; its next request is judged before it is
    read (`resume_route`), the pool reuses the kept server when the router could choose it for that Route."""
    clock = Clock()
    s = _routed(tmp_path, clock)
    auto = s.routing.routing  # type: ignore[union-attr]
    assert _route(s, "SELECT 1") == Route(auto, True, None)  # (a read: not for the kept primary)
    replica = _on(s, "SELECT 1", "r1")
    for n in range(2, 4):
        assert _route(s, f"SELECT {n}") == Route(auto, True, None)
        assert s.server_resumed() == []
        assert relayed(s.client_data(query(f"SELECT {n}"))) == query(f"SELECT {n}")
        assert kinds(s.server_data(done("SELECT 1")))[-1] is KeepServer and s.server is replica
    assert s.routing is not None and not s.routing.watching  # (a replica: nothing to watch for writes)


def test_a_routed_sessions_resume_ask_is_its_current_request_and_route(tmp_path: Path) -> None:
    """`resume_route` keeps its AcquireServer while the Route is the same object (a read before any write) and the
    session's request the same; a new request (a reload's limits) or Route (a write, then reads bound by it) makes a
    new one."""
    clock = Clock()
    s = _routed(tmp_path, clock)
    first = s.resume_route(query("SELECT 1"))
    assert first is not None and s.resume_route(query("SELECT 2")) is first
    assert s.request is not None
    s.request = replace(s.request, weight=s.request.weight * 2)
    ask = s.resume_route(query("SELECT 3"))
    assert ask is not None and ask.request is s.request and ask.route is first.route
    write = s.resume_route(query("INSERT INTO t VALUES (1)"))
    assert write is not None and write.route is not None and not write.route.read_only
    assert _route(s, "SELECT 4") == first.route


def test_a_routed_sessions_serializable_default_sends_its_resumed_reads_to_the_primary(tmp_path: Path) -> None:
    """A session SET of default_transaction_isolation to SERIALIZABLE (settled at its ReadyForQuery 'I') sends its
    reads to the primary at a resume of its kept server too (a standby refuses SERIALIZABLE transactions); its RESET
    lets them go to a replica again."""
    s = _routed(tmp_path, Clock())
    assert _route(s, "SELECT 1").read_only
    for sql, tag, read_only in [("SET default_transaction_isolation = serializable", "SET", False),
                                ("RESET default_transaction_isolation", "RESET", True)]:
        _route(s, sql)
        s.server_resumed()
        assert relayed(s.client_data(query(sql))) == query(sql)
        assert kinds(s.server_data(done(tag)))[-1] is KeepServer
        assert _route(s, "SELECT 1").read_only is read_only, sql


def test_a_write_after_a_kept_replica_server_goes_to_the_primary_and_is_read_back_there(tmp_path: Path) -> None:
    """The write is judged for the pool (not read-only: the kept replica server is taken back unused); the write's
    end on the kept primary server marks read-your-writes at once (at the keep, not at a later take-back)."""
    clock = Clock()
    s = _routed(tmp_path, clock)
    auto = s.routing.routing  # type: ignore[union-attr]
    _on(s, "SELECT 1", "r1")
    assert _route(s, "INSERT INTO t VALUES (1)") == Route(auto, False, None)
    clock.now = 101.0
    primary = _on(s, "INSERT INTO t VALUES (1)", None)
    assert s.routing is not None and s.routing.wrote_at == 101.0  # (marked at the keep)
    clock.now = 102.0
    assert _route(s, "SELECT 2") == Route(auto, True, 101.0)  # read-your-writes: the router decides
    s.server_resumed()  # (the router chose the primary: no replica holds the write yet)
    assert s.routing.watching  # a primary: what the session sends it is watched for writes
    relayed(s.client_data(query("SELECT 2")))
    assert kinds(s.server_data(done("SELECT 1")))[-1] is KeepServer and s.server is primary
    assert s.routing.wrote_at == 101.0  # (a read: no new write)


def test_a_request_judged_for_a_kept_server_it_does_not_get_marks_no_write(tmp_path: Path) -> None:
    """`resume_route` of a write, the kept primary server then taken back (someone waits): the take-back is the
    release the ReadyForQuery skipped, not the end of that write (which has not run yet)."""
    s = _routed(tmp_path, Clock())
    assert not _route(s, "INSERT INTO t VALUES (1)").read_only
    s.server_taken()
    assert s.routing is not None and s.routing.wrote_at is None


def test_an_agent_session_keeps_its_server_and_is_admitted_on_it(tmp_path: Path) -> None:
    """The agent profile: its servers are a pool of their own (read-only context); a kept one serves its next query,
    the proxy's EXPLAIN of it included."""
    from tests.unit.test_session_agent import agent_session, explain_answer, forwarded

    s = agent_session(tmp_path, pool_mode="transaction")
    assert s.may_resume() and s.resume_route(query("SELECT * FROM t")) is None  # (kept at login; not routed)
    server = s.server
    s.server_resumed()
    out = s.client_data(query("SELECT * FROM t"))
    assert forwarded(out) == m.SYNC_MESSAGE + query("EXPLAIN (FORMAT JSON) SELECT * FROM t LIMIT 5")
    assert forwarded(s.server_data(m.ready_for_query(b"I") + explain_answer(rows=4.0))) == query(
        "SELECT * FROM t LIMIT 5")
    assert kinds(s.server_data(done("SELECT 4")))[-1] is KeepServer and s.server is server


def test_a_request_held_behind_the_proxys_own_sync_is_not_sent_to_a_kept_server(
    kept: tuple[ClientSession, ServerConnection]
) -> None:
    """asyncpg's prepare() (Parse/Describe/Flush) answered in full is ended by the proxy's own Sync (red team 9r F7);
    a request the client sends before that Sync's ReadyForQuery is held and judged after it. The session must not keep
    the server then: it was written to while the pool counted it idle (`unexpected data from backend in state
    ready`, the server closed, asyncpg hung: found at the merge of sticky servers and that Sync)."""
    from tests.unit.test_session_routing import PREPARE, PREPARED, _sent

    s, _server = kept
    s.server_resumed()
    s.client_data(PREPARE)
    assert _sent(s.server_data(PREPARED)) == m.SYNC_MESSAGE
    assert s.client_data(query("SELECT 2")) == []  # (held while the proxy's Sync is answered)
    out = s.server_data(m.ready_for_query(b"I"))
    assert not any(isinstance(a, KeepServer) for a in out), out
    assert any(isinstance(a, ReleaseServer) for a in out) and any(isinstance(a, AcquireServer) for a in out)
    assert _sent(out) == b""


# --- a message begun takes no server, the kept one neither (red team 9s F2) --------------------------------------


def test_a_message_begun_resumes_the_kept_server_only_once_it_is_whole(kept: tuple[ClientSession, ServerConnection]
                                                                       ) -> None:
    s, _ = kept
    q = m.Query("SELECT 1").encode()
    assert s.read_kept(q[:3]) is None  # kept by the session: the I/O layer resumes nothing
    assert s.read_kept(q[3:7]) is None
    assert s.read_kept(q[7:] + q[:2]) == (q + q[:2], True)  # whole: resumed, all of it read from there
    assert s.read_kept(b"z") == (b"z", False)  # a refused type: read without the server (the session ends)
