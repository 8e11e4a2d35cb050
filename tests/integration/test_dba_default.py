"""A DBA's lower statement_timeout default is not replaced by a tenant's, user's or agent's limit (issue 18 point 2):
the pool learns the server's own default for its role and database and starts the limited pool's servers with the
lower of the two; SHOW and RESET read as PostgreSQL gives them; a reload learns an ALTER ROLE ... SET since."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import psycopg
import pytest

from proxy.config import load_config
from proxy.io.pool import Pool
from proxy.limits import server_request as limited
from proxy.pooling import ServerRequest, server_request
from tests.support.pgcluster import PgCluster, free_port
from tests.support.polling import until
from tests.support.proxyproc import BACKEND_ROLE, ProxyProcess, prepare_backend

DATABASE = "dbadefault"  # a database of its own: the role's default set here reaches no other test
LIMITED = {"dbalong": {"statement_timeout": 300.0}, "dbashort": {"statement_timeout": 1.0}}
AGENT = {"dbaagent": ("dbaagent", "dbaagent-pw")}  # an agent (agent.statement_timeout 300 s), no tenant limit


def _set_default(pg: PgCluster, value: str | None) -> None:
    """The DBA's default for the proxy's backend role in the database (None: none)."""
    action = "RESET statement_timeout" if value is None else f"SET statement_timeout = '{value}'"
    pg.execute(f"ALTER ROLE {BACKEND_ROLE} IN DATABASE {DATABASE} {action}")


@pytest.fixture(scope="module", params=["session", "transaction"])
def proxy(request: pytest.FixtureRequest, pg: PgCluster,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    if not pg.execute(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"):
        pg.execute(f"CREATE DATABASE {DATABASE}")
        pg.execute("CREATE TABLE public.orders (id int PRIMARY KEY, tenant_id text NOT NULL, amount numeric NOT NULL);"
                   "INSERT INTO public.orders SELECT g, 'acme', g FROM generate_series(1, 10) g", dbname=DATABASE)
    tenants = {name: {"strategy": "shared", "database": DATABASE, "tenant_id": "acme", **keys}
               for name, keys in LIMITED.items()}
    tenants["dbaagent"] = {"strategy": "shared", "database": DATABASE, "tenant_id": "acme"}
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant-dbadefault"), backend_sslmode="disable",
                     pool={"pool_mode": request.param}, extra_tenants=tenants,
                     extra_users={**{f"{name}_user": (name, f"{name}-pw") for name in LIMITED}, **AGENT},
                     agent={"statement_timeout": 300.0}, user_keys={"dbaagent": {"profile": "agent"}})
    p.start()  # (provisions the backend role; no server of the limited pools is opened before a login)
    _set_default(pg, "1s")
    try:
        yield p
    finally:
        p.stop()
        _set_default(pg, None)


def _show(proxy: ProxyProcess, user: str) -> str:
    with psycopg.connect(proxy.dsn(user), autocommit=True) as conn:
        return conn.execute("SHOW statement_timeout").fetchone()[0]  # type: ignore[index]


def _reload_learning(proxy: ProxyProcess, pg: PgCluster, value: str) -> None:
    """ALTER ROLE ... SET, then a reload: the proxy learns it again (its log says so)."""
    _set_default(pg, value)
    before = proxy.count_events("statement_timeout_default_learnt")
    proxy.reload("reloaded")
    until(lambda: proxy.count_events("statement_timeout_default_learnt") > before, 20,
          what="the default learnt again after the reload")


def test_a_dba_default_lower_than_the_limit_binds(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("dbalong_user"), autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)  # not the limit's 5min
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            conn.execute("SELECT pg_sleep(2)")
        assert info.value.sqlstate == "57014"
        conn.execute("SET statement_timeout = '10s'")  # within the limit: the client's own, as on PostgreSQL
        assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
        conn.execute("RESET statement_timeout")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)  # the lower, not the limit
        conn.execute("SET statement_timeout = 0")  # above the limit: PostgreSQL gets the limit, the client reads 0
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
        for reset in ("RESET statement_timeout", "SET statement_timeout TO DEFAULT", "RESET ALL", "DISCARD ALL"):
            conn.execute("SET statement_timeout = '1h'")
            conn.execute(reset)
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",), reset
            assert conn.execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'").fetchone() == (
                "1000",), reset
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # A client's own startup value outranks the DBA's default, as PostgreSQL ranks them (within the limit).
    with psycopg.connect(proxy.dsn("dbalong_user"), autocommit=True, options="-c statement_timeout=10s") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
        conn.execute("RESET statement_timeout")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
    assert _show(proxy, "dbalong_user") == "1s"  # and leaves nothing of its own on the pool's servers


def test_an_agent_timeout_above_the_dba_default_does_not_replace_it(proxy: ProxyProcess) -> None:
    assert _show(proxy, "dbaagent") == "1s"


def test_a_reload_learns_the_dbas_new_default(proxy: ProxyProcess, pg: PgCluster) -> None:
    assert _show(proxy, "dbalong_user") == "1s"  # (a server of the pool started with 1s, idle now)
    try:
        _reload_learning(proxy, pg, "10min")
        assert _show(proxy, "dbashort_user") == "1s"  # the limit is lower: it binds
        assert _show(proxy, "dbalong_user") == "5min"  # (the idle 1s server is not handed out again)
        assert _show(proxy, "dbaagent") == "5min"
        _reload_learning(proxy, pg, "2s")
        assert _show(proxy, "dbalong_user") == "2s"
        assert _show(proxy, "dbashort_user") == "1s"
        with psycopg.connect(proxy.dsn("dbalong_user"), autocommit=True) as conn:
            conn.execute("SET statement_timeout = '1h'")
            conn.execute("RESET statement_timeout")
            assert conn.execute("SHOW statement_timeout").fetchone() == ("2s",)
    finally:
        _reload_learning(proxy, pg, "1s")


def _first_start(proxy: ProxyProcess, port: int | None = None) -> tuple[dict[str, str], list[object]]:
    """In this process, the I/O pool of the proxy's config asked for a server of dbalong's limited pool (its backend
    on `port` for the probe, when given): the parameters the server is opened with, and the refusals its client
    got. The server's opening itself is not run (only what it would start with is read)."""
    config = load_config(proxy.config_path)
    request: ServerRequest = limited(server_request(config, "dbalong"), 300.0)
    if port is not None:
        request = replace(request, backend=replace(request.backend, port=port))

    async def main() -> tuple[dict[str, str], list[object]]:
        metrics = SimpleNamespace(tenant=lambda name: name or "", pool_server_opened=lambda label: None)
        pool = Pool(SimpleNamespace(config=config, metrics=metrics))  # type: ignore[arg-type]
        opened: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

        async def open_(link: object) -> None:
            opened.set_result(dict(link.server.parameters))  # type: ignore[attr-defined]

        pool._open = open_  # type: ignore[method-assign]
        refused: list[object] = []
        client = SimpleNamespace(tenant=None, server_refused=lambda error, reason: refused.append(error),
                                 server_granted=lambda link: None)
        pool.request(client, request)  # type: ignore[arg-type]
        return await asyncio.wait_for(opened, 30), refused

    return asyncio.run(main())


def test_the_probe_reads_the_servers_own_default_and_a_failed_one_leaves_the_limit(
        proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=7s")  # (the proxy's environment is not the server's)
    parameters, refused = _first_start(proxy)
    assert (parameters["statement_timeout"], refused) == ("1000ms", [])
    parameters, refused = _first_start(proxy, port=free_port())  # nothing listens there: the probe fails
    assert (parameters["statement_timeout"], refused) == ("300000ms", [])  # today's behaviour, no client refused
