"""Read replicas across a reload (issue 18): a replica a reload leaves as it was stays in (no re-check period on the
primary); one a reload changes is checked again and put back once it passes; a replica killed and restarted is put
back. Both pool modes, a real streaming replica."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.integration.test_read_replicas import LONG, _proxy, on_replica, port_of
from tests.support.pgcluster import PgCluster, StandbyCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess


@pytest.fixture(scope="module", params=["transaction", "session"])
def proxy(request: pytest.FixtureRequest, replicated: tuple[PgCluster, StandbyCluster],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """route = "auto" for ivan (a long lag allowed), "replica" for rhea (a session pooled one lives there)."""
    p = _proxy(replicated, tmp_path_factory.mktemp("replicas-reload"), request.param, user_keys={
        "ivan": {"max_replica_lag": LONG}, "rhea": {"route": "replica", "max_replica_lag": LONG}})
    yield p
    p.stop()


def _reader(p: ProxyProcess) -> str:
    """The user whose plain reads go to the replica in this pool mode (session pooling keeps "auto" on the primary)."""
    return "rhea" if p.pool.get("pool_mode") == "session" else "ivan"


def _health_events(p: ProxyProcess) -> list[dict]:
    return [e for e in p.log_events() if e.get("event") == "replica_health"]


def test_a_reload_keeps_an_unchanged_replica_in_and_checks_a_changed_one_again(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """A reload changing nothing the replica's start-up checks read keeps its health: it is checked again beside
    the polls and serves meanwhile; before, every reload took
    it out until the checks passed again, and a session pooled login meanwhile lived on the primary. A reload that
    changes it (here its connect_timeout) still takes it out until it passes (fail closed), and a session that
    logged in then reads there once it does; a replica killed and restarted is checked again and put back, and is
    kept in by the next unchanged reload."""
    primary, standby = replicated
    user = _reader(proxy)
    until(lambda: _fresh_session_port(proxy, user) == standby.port, 20, 0.05, "a session on the replica")
    until(lambda: _health_events(proxy)[-1]["health"] == "healthy", 20, 0.05, "its health logged")
    _reloads_keep_it_in(proxy, standby, user)

    checked = proxy.count_events("replica_preflight_passed")
    proxy.replicas[0]["connect_timeout"] = 7
    proxy.write_config()
    proxy.reload("reloaded")
    until(lambda: _down_since_reload(proxy), 20, 0.01, "the replica down for its checks")
    conn = psycopg.connect(proxy.dsn(user), autocommit=True)
    try:
        assert port_of(conn) in (primary.port, standby.port)
        until(lambda: proxy.count_events("replica_preflight_passed") > checked, 20, 0.02, "its checks passed")
        if proxy.pool.get("pool_mode") == "session":  # (a session lives on its login's server)
            conn.close()
            conn = psycopg.connect(proxy.dsn(user), autocommit=True)
        on_replica(conn, standby)
    finally:
        conn.close()

    standby.crash()
    try:
        until(lambda: _fresh_session_port(proxy, user) == primary.port, 20, 0.05, "the replica taken out")
    finally:
        standby.resume()
    standby.wait_streaming()
    until(lambda: _fresh_session_port(proxy, user) == standby.port, 20, 0.05, "the replica put back")
    until(lambda: _health_events(proxy)[-1]["health"] == "healthy", 20, 0.05, "its health logged")
    _reloads_keep_it_in(proxy, standby, user)


def _reloads_keep_it_in(proxy: ProxyProcess, standby: StandbyCluster, user: str) -> None:
    """Three reloads of an unchanged file: every session opened while the replica is checked again (and one after)
    reads there, and its health does not change."""
    for _ in range(3):
        seen = len(_health_events(proxy))
        checked = proxy.count_events("replica_preflight_passed")
        proxy.reload("reloaded")
        sessions: list[int] = []

        def session_until_checked(checked: int = checked, sessions: list[int] = sessions) -> bool:
            sessions.append(_fresh_session_port(proxy, user))  # (in the re-check period, and once after it)
            return proxy.count_events("replica_preflight_passed") > checked and len(sessions) > 1

        until(session_until_checked, 20, 0.01, "the replica checked again")
        assert set(sessions) == {standby.port}, sessions
        assert _health_events(proxy)[seen:] == []


def _fresh_session_port(p: ProxyProcess, user: str) -> int:
    with psycopg.connect(p.dsn(user), autocommit=True) as conn:
        return port_of(conn)


def _down_since_reload(p: ProxyProcess) -> bool:
    events = p.log_events()
    last = max(i for i, e in enumerate(events) if e.get("event") == "reloaded")
    return any(e.get("event") == "replica_health" and e.get("health") == "down" for e in events[last:])
