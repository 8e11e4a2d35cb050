"""Functions reached without a call (red team 9s8 F1, F2): attribute notation, an operator, a cast and an overloaded
built-in name of the app's functions are refused by the allow-list, and a transaction reading a view over a writing
function holds the session's reads on the primary until a replica replays it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.test_read_replicas import LONG, _proxy, on_replica
from tests.support.pgcluster import PgCluster, StandbyCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess

WRITE = "INSERT INTO public.orders SELECT coalesce(max(id), 0) + 1, 1 FROM public.orders WHERE id >= 60000 RETURNING 1"
SETUP_INITECH = f"""
CREATE FUNCTION public.rt_w() RETURNS int LANGUAGE sql VOLATILE AS '{WRITE}';
CREATE FUNCTION public.rt_w(o public.orders) RETURNS int LANGUAGE sql VOLATILE AS '{WRITE}';
CREATE FUNCTION public.rt_slowop(a int, b int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 8 FROM pg_sleep(2)';
CREATE OPERATOR public.#%# (LEFTARG = int, RIGHTARG = int, FUNCTION = public.rt_slowop);
CREATE FUNCTION public.lower(t public.orders) RETURNS text LANGUAGE sql VOLATILE AS 'SELECT ''user lower''';
CREATE VIEW public.rt_v AS SELECT public.rt_w() AS w;
CREATE FUNCTION public.amount(n numeric) RETURNS numeric LANGUAGE sql AS 'SELECT n * 100';
CREATE VIEW public.rt_v2 AS SELECT w FROM public.rt_v;
INSERT INTO public.orders VALUES (60000, 0);
"""
SETUP_SAAS = """
CREATE FUNCTION public.rt_tenants_sd(o public.orders) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER AS
  'SELECT string_agg(DISTINCT tenant_id, '','') || '' / '' || count(*) FROM public.orders';
CREATE FUNCTION public.rt_op_sd(a int, b int) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER AS
  'SELECT string_agg(DISTINCT tenant_id, '','') || '' / '' || count(*) FROM public.orders';
CREATE OPERATOR public.#@# (LEFTARG = int, RIGHTARG = int, FUNCTION = public.rt_op_sd);
CREATE CAST (public.orders AS text) WITH FUNCTION public.rt_tenants_sd(public.orders);
CREATE FUNCTION public.lower(o public.orders) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER AS
  'SELECT string_agg(DISTINCT tenant_id, '','') FROM public.orders';
"""
# alice (shared tenant acme of saas): every way to reach the SECURITY DEFINER functions, which read every tenant's rows
SHARED = {
    "direct": "SELECT rt_tenants_sd(o) FROM orders o LIMIT 1",
    "attribute": "SELECT o.rt_tenants_sd FROM orders o LIMIT 1",
    "attribute_paren": "SELECT (o).rt_tenants_sd FROM orders o LIMIT 1",
    "operator": "SELECT 1 #@# 2",
    "operator_qualified": "SELECT 1 OPERATOR(public.#@#) 2",
    "cast": "SELECT o::text FROM orders o LIMIT 1",
    "overload": "SELECT lower(o) FROM orders o LIMIT 1",
}
# what an ordinary client sends in the same database stays as it was
PLAIN = {
    "SELECT count(*), string_agg(DISTINCT tenant_id, ',') FROM orders": [(200, "acme")],
    "SELECT o.id, o.tenant_id FROM orders o WHERE o.id = 1": [(1, "acme")],
    "SELECT upper(tenant_id), 1 + 2, o.id::int8 FROM orders o WHERE id = 1": [("ACME", 3, 1)],
}


@pytest.fixture(scope="module", params=["transaction", "session"])
def lab(request: pytest.FixtureRequest, replicated: tuple[PgCluster, StandbyCluster],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The app's functions created before the proxy starts (it reads them then); ivan reads on the replica
    (route = auto, a long lag allowed), abe is an agent-profile login of initech."""
    primary, standby = replicated
    if not primary.execute("SELECT 1 FROM pg_proc WHERE proname = 'rt_w'", dbname="initech"):
        primary.execute(SETUP_INITECH, dbname="initech")
        primary.execute(SETUP_SAAS, dbname="saas")
    standby.wait_replayed()
    # The proxy's lock alone: the SECURITY DEFINER functions of SETUP_SAAS read every tenant's rows, which the
    # preflight refuses and provision reports (proxy/definers.py, issue 18/14), so this lab runs with [preflight]
    # enforce = false and provisions with --force.
    p = _proxy(replicated, tmp_path_factory.mktemp("reached"), request.param, preflight_enforce=False,
               provision_args=("--force",),
               user_keys={"ivan": {"max_replica_lag": LONG}, "abe": {"profile": "agent"}})
    yield p
    p.stop()


def _run(conn: psycopg.Connection, sql: str) -> Any:
    try:
        return conn.execute(sql).fetchall()
    except psycopg.Error as e:
        return (e.sqlstate, str(e).splitlines()[0])


def test_shared_tenant_reaches_no_function_outside_the_allow_list(lab: ProxyProcess) -> None:
    with psycopg.connect(lab.dsn("alice"), autocommit=True) as conn:
        for sql, rows in PLAIN.items():
            assert conn.execute(sql).fetchall() == rows, sql
        for shape, sql in SHARED.items():
            got = _run(conn, sql)
            assert isinstance(got, tuple) and got[0] == "42501" and "function_not_allowed" in got[1], (shape, got)
            if shape != "direct":
                assert "extra_allowed_functions" in got[1], (shape, got)


def test_agent_reaches_no_user_function(lab: ProxyProcess) -> None:
    with psycopg.connect(lab.dsn("abe"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE id < 10").fetchall() == [(7,)]
        for sql in ("SELECT o.rt_w FROM orders o WHERE o.id = 1", "SELECT 1 #%# 2", "SELECT lower(o) FROM orders o"):
            got = _run(conn, sql)
            assert isinstance(got, tuple) and got[0] == "42501", (sql, got)


def test_database_tenant_overload_and_attribute_refused(lab: ProxyProcess) -> None:
    with psycopg.connect(lab.dsn("ivan"), autocommit=True) as conn:
        for sql in ("SELECT o.rt_w FROM orders o WHERE o.id = 1", "SELECT (o).rt_w FROM orders o WHERE o.id = 1",
                    "SELECT 1 #%# 2", "SELECT lower(o) FROM orders o WHERE o.id = 1"):
            got = _run(conn, sql)
            assert isinstance(got, tuple) and got[0] == "42501" and "function_not_allowed" in got[1], (sql, got)
        # a function of a scalar named like a column: `o.amount` is the column; `(o.amount).amount` runs it
        assert conn.execute("SELECT upper('x'), o.amount FROM orders o WHERE o.id = 1").fetchall() == [("X", 1)]
        got = _run(conn, "SELECT (o.amount).amount FROM orders o WHERE o.id = 1")
        assert isinstance(got, tuple) and got[0] == "42501" and "public.amount()" in got[1], got
        # schema.table.column, as SQLAlchemy writes a schema'd Table's column: a column, never amount(column)
        assert conn.execute("SELECT public.orders.amount FROM public.orders WHERE public.orders.id = 1"
                            ).fetchall() == [(1,)]
        # schema.table.f with no column f runs f(row): still refused
        got = _run(conn, "SELECT public.orders.rt_w FROM public.orders WHERE id = 1")
        assert isinstance(got, tuple) and got[0] == "42501" and "public.rt_w()" in got[1], got


COUNT = "SELECT count(*), inet_server_port() FROM orders WHERE id > 60000"


@pytest.mark.parametrize("view", ["rt_v", "rt_v2"])
def test_a_view_over_a_writing_function_keeps_reads_on_the_primary(
        lab: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster], view: str) -> None:
    """route = auto, read-your-writes: `BEGIN; SELECT w FROM <view>; COMMIT` wrote (the view's function inserts), so
    the session's next reads go to the primary until the replica has replayed it (red team 9s8 F2)."""
    if "session" in lab.pool.get("pool_mode", ""):
        pytest.skip("session pooling keeps a route = auto session on the primary (docs/reporting.md)")
    primary, standby = replicated
    with psycopg.connect(lab.dsn("ivan"), autocommit=True) as conn:
        on_replica(conn, standby)
        standby.wait_replayed()
        # alone, the text writes: it goes to the primary (it failed 25006 on the replica)
        assert conn.execute(f"SELECT w, inet_server_port() FROM {view}").fetchall() == [(1, primary.port)]
        standby.wait_replayed()
        on_replica(conn, standby)
        before = primary.execute("SELECT count(*) FROM orders WHERE id > 60000", dbname="initech")[0][0]
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            until(lambda: standby.execute("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused", 10)
            conn.execute(f"BEGIN; SELECT w FROM {view}; COMMIT")
            assert primary.execute("SELECT count(*) FROM orders WHERE id > 60000",
                                   dbname="initech")[0][0] == before + 1
            reads = [conn.execute(COUNT).fetchone() for _ in range(3)]
            assert reads == [(before + 1, primary.port)] * 3, (reads, primary.port, standby.port)
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


SETTER = """CREATE OR REPLACE FUNCTION public.rt_setter(o public.orders) RETURNS text LANGUAGE sql VOLATILE AS
  $$ SELECT set_config('myapp.marker', 'left by rt_setter', false) $$"""
# (reset, a placeholder that was set reads '' on PG 15, NULL on PG 18)
MARKER = ("BEGIN; SELECT coalesce(nullif(current_setting('myapp.marker', true), ''), '<unset>'), pg_backend_pid(); "
          "COMMIT")


def _markers(lab: ProxyProcess, user: str, n: int = 6) -> list[str]:
    seen = []
    for _ in range(n):
        with psycopg.connect(lab.dsn(user), autocommit=True) as c:
            cur = c.cursor()
            cur.execute(MARKER)
            cur.nextset()
            seen.append(cur.fetchall()[0][0])
    return seen


def test_an_allowed_function_reached_without_a_call_pins(
        lab: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """extra_allowed_functions admits public.rt_setter, which sets a GUC: `o.rt_setter` (no call) pins ivan's
    session as `rt_setter(o)` does, so another session of the tenant (iris) never gets the server it left the
    setting on (review 19b F5: in transaction pooling it did)."""
    primary, standby = replicated
    primary.execute(SETTER, dbname="initech")
    standby.wait_replayed()
    text = lab.config_path.read_text()
    if "rt_setter" not in text:
        lab.config_path.write_text(text.replace(
            "[tenants.initech]\n", '[tenants.initech]\nextra_allowed_functions = ["public.rt_setter"]\n', 1))
    lab.reload("reloaded")
    assert _markers(lab, "iris") == ["<unset>"] * 6
    with psycopg.connect(lab.dsn("ivan"), autocommit=True) as conn:
        assert conn.execute("SELECT o.rt_setter FROM orders o WHERE o.id = 1").fetchall() == [("left by rt_setter",)]
        assert _markers(lab, "iris") == ["<unset>"] * 6
    assert _markers(lab, "iris") == ["<unset>"] * 6
