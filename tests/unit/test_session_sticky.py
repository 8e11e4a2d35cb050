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
from proxy.server import ServerConnection
from proxy.session import ClientSession, State
from tests.support.sessions import frames, make_config, server_for
from tests.unit.test_limits import session as limits_session
from tests.unit.test_session_pooling import _log_in, done, kinds, query, relayed
from tests.unit.test_session_routing import Clock, routed_config
from tests.unit.test_session_routing import request as routed_request
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


def test_a_session_that_needs_a_turn_per_request_gives_its_server_back(tmp_path: Path) -> None:
    """max_concurrent_queries: a server kept while the next request waits for a turn could be the server a turn
    holder waits for; the turn is per request, so such a session gives its server back (and never resumes one)."""
    s, _ = limits_session(tmp_path, {"max_concurrent_queries": 1, "query_wait_timeout": 3}, pool_mode="transaction")
    assert s.state is State.IDLE  # (its first server went back at once)
    assert s.client_data(query("SELECT 1")) == [AcquireSlot("acme", 1, 3.0)]
    s.slot_granted()
    s.server_attached(server_for(s))
    out = s.server_data(done("SELECT 1"))
    assert ReleaseSlot("acme", 1) in out and kinds(out)[-1] is ReleaseServer and not s.may_resume()


def test_a_routed_session_gives_its_server_back_at_each_ready_for_query(tmp_path: Path) -> None:
    """Read replicas: the route is decided from each request's text; a kept replica server could get a write."""
    cfg = routed_config(tmp_path)
    cfg = replace(cfg, pool=replace(cfg.pool, sticky_servers=True))
    s, _ = routed_session(cfg, Clock())
    assert kinds(s.server_attached(server_for(s)))[-1] is ReleaseServer  # the login's server: given back at once
    routed_request(s, "SELECT 1", "r1")  # (it asserts the ReleaseServer and the idle session)
    assert not s.may_resume()


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
