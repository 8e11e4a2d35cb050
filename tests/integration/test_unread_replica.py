"""A replica-routed read whose client does not read its result stalls no standby's replay (red team 9s6 F3): blocked
writing to the proxy, the standby backend acted on no cancel, so the startup process waited on its conflict for as
long as the client's socket stayed open, replay stopped for every tenant and `route = "replica"` users got 57P03. No
limit configured: the write bound on a replica's server is at most [routing] max_replica_lag (here 2 s; its
client_write_timeout is the default 60 s). Transaction pooling, a primary and a streaming standby of their own."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster, StandbyCluster
from tests.support.polling import until
from tests.support.proxyproc import TENANT_ROLES, ProxyProcess

UNREAD = ("SELECT repeat('x', 1000) FROM public.unread_conflict, generate_series(1, 1000000) AS g "
          "/* unread_probe */")


@pytest.fixture(scope="module")
def proxy(replicated: tuple[PgCluster, StandbyCluster],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """iris (initech) reads only from the replica (and tolerates a long lag: her reads stay there)."""
    primary, standby = replicated
    role = TENANT_ROLES["initech"][0]
    p = ProxyProcess(
        primary, tmp_path_factory.mktemp("unread-replica"), pool={"pool_mode": "transaction"},
        replicas=[{"name": "r1", "host": standby.host, "port": standby.port}],
        extra_users={"iris": ("initech", "iris-pw")},
        routing={"route": "auto", "poll_interval": 0.1, "max_replica_lag": 2.0},
        user_keys={"iris": {"route": "replica", "replica_fallback": "refuse", "max_replica_lag": 300.0}},
    )
    p.provision()
    primary.execute("CREATE TABLE IF NOT EXISTS public.unread_conflict (id int); INSERT INTO public.unread_conflict "
                    f'VALUES (1); ALTER TABLE public.unread_conflict OWNER TO "{role}"', dbname="initech")
    standby.wait_replayed()
    p.start(provision=False)
    yield p
    p.stop()


def _standby_backends(standby: StandbyCluster) -> list[tuple]:
    return standby.execute("SELECT wait_event FROM pg_stat_activity WHERE query LIKE '%unread_probe%' "
                           "AND pid <> pg_backend_pid()", dbname="initech")


def test_an_unread_replica_result_does_not_stall_replay(proxy: ProxyProcess,
                                                         replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """iris's unread query on the standby blocks writing (ClientWrite); a superuser's ACCESS EXCLUSIVE lock of its
    table on the primary (a migration) then conflicts with it on the standby. Before: replay waited for as long as
    iris's socket stayed open. Now: the proxy closes her replica server once she has taken none of her output for
    max_replica_lag, the backend on the standby is gone and replay passes the lock's WAL."""
    primary, standby = replicated
    def logged_in() -> socket.socket | None:  # (refused 57P03 until the poller has found the replica healthy)
        sock, msgs = wire.login(proxy.port, {"user": "iris", "database": "initech"}, "iris-pw", timeout=60)
        if msgs[-1][0] == b"Z":
            return sock
        sock.close()
        return None

    sock = until(logged_in, timeout=30, interval=0.2, what="iris logged in on the replica")
    try:
        sock.settimeout(60)
        sock.sendall(m.query_message("SELECT inet_server_port()"))
        got = wire.read_until(sock, b"Z")
        assert got[1][1].endswith(str(standby.port).encode()), got  # (her reads run on the standby)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(m.query_message(UNREAD))
        until(lambda: [w for (w,) in _standby_backends(standby) if w == "ClientWrite"], timeout=30, interval=0.05,
              what="the standby backend blocked writing")
        with psycopg.connect(primary.dsn(dbname="initech")) as conn:
            conn.execute("LOCK TABLE public.unread_conflict IN ACCESS EXCLUSIVE MODE")
            conn.commit()
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
        # (the standby's max_standby_streaming_delay is PostgreSQL's 30 s: the bound here is below it)
        until(lambda: standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0], timeout=25,
              interval=0.1, what="replay past the conflicting lock")
        assert not _standby_backends(standby)
    finally:
        sock.close()
    assert [e for e in proxy.log_events() if e.get("event") == "session_error"
            and e.get("reason") == "client_write_timeout"]
