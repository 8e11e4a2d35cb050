"""Sticky servers for routed sessions against a real streaming replica: a transaction-pooled session of route = "auto"
keeps its server (replica or primary) between requests; its next request runs there with no handoff only when the
router would send it there (the same replica, healthy, within its lag and holding the session's writes; or the
primary), else the kept server goes back and the request goes where the router says."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from tests.integration.test_read_replicas import LONG, _ids, _proxy, admin_rows, metric, metrics, on_replica
from tests.support.pgcluster import PgCluster, StandbyCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess

WHO = "SELECT pg_backend_pid(), inet_server_port()"  # which server connection answered


@pytest.fixture(scope="module")
def proxy(replicated: tuple[PgCluster, StandbyCluster],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """Transaction pooling (sticky servers by default), route = "auto"; ivan tolerates a long lag (read-your-writes
    is then the only reason its reads leave the replica); alice 1 s; abe an agent."""
    p = _proxy(replicated, tmp_path_factory.mktemp("replicas-sticky"), "transaction", user_keys={
        "ivan": {"max_replica_lag": LONG}, "abe": {"profile": "agent", "max_replica_lag": LONG}})
    yield p
    p.stop()


def grants(p: ProxyProcess) -> int:
    """How many servers the pool handed out, every tenant (pgtenant_pool_wait_seconds_count): a reuse of a kept
    server is none."""
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(int(float(ln.split()[-1])) for ln in lines if ln.startswith("pgtenant_pool_wait_seconds_count{"))


def routed_to(p: ProxyProcess, server: str) -> float:
    return metric(metrics(p), "pgtenant_replica_routed_total", backend="main", server=server) or 0.0


def test_a_kept_replica_server_serves_the_next_reads_with_no_handoff(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    _, standby = replicated
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        on_replica(conn, standby)  # (its last read ran on the replica: that server is kept)
        before, routed = grants(proxy), routed_to(proxy, "r1")
        seen = {conn.execute(WHO).fetchone() for _ in range(5)}
        assert len(seen) == 1 and next(iter(seen))[1] == standby.port  # one replica server throughout
        assert grants(proxy) == before  # no handoff: the kept server each time
        assert routed_to(proxy, "r1") == routed + 5  # (each read still counted as routed to the replica)


def test_a_write_after_a_kept_replica_server_goes_to_the_primary_and_is_read_there_while_replay_is_paused(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """The write is not for the kept replica server (given back unused); read-your-writes: while the replica has
    not replayed the write its reads stay on the primary, on the primary server kept since the write."""
    primary, standby = replicated
    new = next(_ids)
    count = f"SELECT count(*), inet_server_port(), pg_backend_pid() FROM orders WHERE id = {new}"
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        on_replica(conn, standby)
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            until(lambda: standby.execute("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused", 10)
            row = conn.execute(f"INSERT INTO orders VALUES ({new}, 1) RETURNING inet_server_port()").fetchone()
            assert row == (primary.port,)
            before = grants(proxy)
            seen = {conn.execute(count).fetchone() for _ in range(4)}
            assert len(seen) == 1 and next(iter(seen))[:2] == (1, primary.port)  # its own write, on the primary
            assert grants(proxy) == before  # the primary server kept since the write
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        until(lambda: conn.execute(count).fetchone()[:2] == (1, standby.port), 20, 0.05,  # type: ignore[index]
              "the write read on the replica once replayed")


def test_a_kept_replica_server_is_not_reused_once_the_replica_lags(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """alice's max_replica_lag is 1 s: with replay paused and the primary writing, the replica lags and the router
    takes it out; the server kept there is not reused, the reads go to the primary."""
    primary, standby = replicated
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
        on_replica(conn, standby)
        before = grants(proxy)
        kept = conn.execute(WHO).fetchone()
        assert kept[1] == standby.port and grants(proxy) == before  # type: ignore[index]  # (kept there)
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            primary.execute("CREATE TABLE IF NOT EXISTS lag_tick (at timestamptz); INSERT INTO lag_tick VALUES (now())")
            until(lambda: metric(metrics(proxy), "pgtenant_replica_health", backend="main", replica="r1",
                                 state="lagging") == 1.0, 20, 0.05, "the replica lagging")
            assert conn.execute(WHO).fetchone()[1] == primary.port  # type: ignore[index]
            assert conn.execute(WHO).fetchone()[1] == primary.port  # type: ignore[index]
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        on_replica(conn, standby)


def test_an_agent_keeps_its_replica_server_admission_included(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """The agent profile: each query admitted by the proxy's EXPLAIN on the server it runs on, the kept one."""
    _, standby = replicated
    with psycopg.connect(proxy.dsn("abe"), autocommit=True) as conn:
        on_replica(conn, standby)
        before = grants(proxy)
        for _ in range(3):
            count, port = conn.execute("SELECT count(*), inet_server_port() FROM orders").fetchone()  # type: ignore[misc]
            assert port == standby.port and count >= 7
        assert grants(proxy) == before


def test_a_replica_killed_while_a_server_is_kept_there_sends_the_next_read_to_the_primary(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """The kept server dies with its replica (its connection closed, forgotten by the pool like the replica's other
    servers); once the replica is marked down the next read goes to the primary, no error; back on the replica when
    it is back."""
    primary, standby = replicated
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        on_replica(conn, standby)
        before = grants(proxy)
        assert conn.execute(WHO).fetchone()[1] == standby.port  # type: ignore[index]
        assert grants(proxy) == before  # (kept there)
        standby.pause()
        try:
            until(lambda: metric(metrics(proxy), "pgtenant_replica_health", backend="main", replica="r1",
                                 state="down") == 1.0, 20, 0.05, "the replica marked down")
            until(lambda: not [s for s in admin_rows(proxy, "SHOW SERVERS") if s["server_role"] == "replica"], 20,
                  0.05, "the replica's servers gone from the pool")
            assert conn.execute(WHO).fetchone()[1] == primary.port  # type: ignore[index]
            assert conn.execute(WHO).fetchone()[1] == primary.port  # type: ignore[index]
        finally:
            standby.resume()
        standby.wait_streaming()
        on_replica(conn, standby)
