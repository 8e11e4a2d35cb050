"""Functions reached without a call through a type (review 19b F1, F2, F4): a domain whose CHECK or DEFAULT calls an
app function, a JSON-writing built-in running an app type's cast to json, a view whose query calls an app function.
The shared tenant (alice, acme of saas) and the database tenant (ivan, initech) are refused unless they allow it."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import pq

from tests.integration.test_reached_functions import WRITE, _run, lab  # noqa: F401  (the replicated lab, both modes)
from tests.support.pgcluster import PgCluster, StandbyCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess

# SECURITY DEFINER code counting every tenant's rows (the app owner's rights): a validator domain, an enum whose JSON
# form a function gives, a view over a function; and a view over built-ins only, granted like the other one
SETUP = r"""
CREATE FUNCTION public.sd_chk(t text) RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER AS
  $$BEGIN RAISE EXCEPTION 'sd_chk saw: % rows', (SELECT count(*) FROM public.orders); END$$;
CREATE DOMAIN public.sd_dom AS text CHECK (public.sd_chk(VALUE));
CREATE DOMAIN public.sd_dom2 AS public.sd_dom;
CREATE TYPE public.sd_st AS ENUM ('a', 'b');
CREATE FUNCTION public.sd_st_json(s public.sd_st) RETURNS json LANGUAGE sql STABLE SECURITY DEFINER AS
  $$SELECT to_json((SELECT count(*) || ' rows' FROM public.orders))$$;
CREATE CAST (public.sd_st AS json) WITH FUNCTION public.sd_st_json(public.sd_st);
CREATE FUNCTION public.sd_tenants() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER AS
  $$SELECT count(*) || ' rows' FROM public.orders$$;
CREATE VIEW public.sd_v AS SELECT public.sd_tenants() AS who;
CREATE VIEW public.sd_plain_v AS SELECT upper('x') AS u, 1 + 2 AS n;
GRANT SELECT ON public.sd_v, public.sd_plain_v TO PUBLIC;
CREATE TABLE public.sd_items (id int, d public.sd_dom);
CREATE VIEW public.sd_dv AS SELECT 'x'::public.sd_dom AS d;
CREATE VIEW public.sd_jv AS SELECT to_json(x) AS j FROM (SELECT 1 AS n) x;
CREATE VIEW public.sd_jav AS SELECT json_agg(x) AS j FROM (SELECT 1 AS n) x;
GRANT SELECT ON public.sd_items, public.sd_dv, public.sd_jv, public.sd_jav TO PUBLIC;
CREATE TYPE public.sd_rng AS RANGE (subtype = int4);
"""
TEARDOWN = """
DROP VIEW IF EXISTS public.sd_v, public.sd_plain_v, public.sd_dv, public.sd_jv, public.sd_jav;
DROP TABLE IF EXISTS public.sd_items;
DROP FUNCTION IF EXISTS public.sd_tenants();
DROP CAST IF EXISTS (public.sd_st AS json);
DROP FUNCTION IF EXISTS public.sd_st_json(public.sd_st);
DROP TYPE IF EXISTS public.sd_st;
DROP DOMAIN IF EXISTS public.sd_dom2, public.sd_dom;
DROP TYPE IF EXISTS public.sd_rng;
DROP FUNCTION IF EXISTS public.sd_chk(text);
"""
DOMAIN = {  # every way a value is read as the domain
    "cast": "SELECT 'x'::sd_dom",
    "cast_syntax": "SELECT CAST('x' AS public.sd_dom)",
    "domain_over_it": "SELECT 'x'::sd_dom2",
    "array": "SELECT '{x}'::sd_dom[]",
    "column_definition": """SELECT * FROM json_to_record('{"a": "x"}') AS r(a sd_dom)""",
    "prepare": "PREPARE sd_p(sd_dom) AS SELECT $1",
    "temp_table": "CREATE TEMP TABLE sd_t (c sd_dom DEFAULT 'x')",
}
JSON = {  # every JSON-writing built-in runs the enum's cast to json
    "to_json": "SELECT to_json('a'::sd_st)",
    "to_jsonb": "SELECT to_jsonb('a'::sd_st)",
    "json_build_object": "SELECT json_build_object('s', 'a'::sd_st)",
    "json_agg": "SELECT json_agg(x) FROM (SELECT 'a'::sd_st AS s) x",
    "row_to_json": "SELECT row_to_json(x) FROM (SELECT 'a'::sd_st AS s) x",
    "array_to_json": "SELECT array_to_json(ARRAY['a'::sd_st])",
    "jsonb_object_agg": "SELECT jsonb_object_agg('k', 'a'::sd_st)",
}


@pytest.fixture(scope="module")
def objects(lab: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> Iterator[ProxyProcess]:  # noqa: F811
    """The objects in saas and initech, read by a reload (the snapshot), dropped at the end (the JSON cast would
    refuse every to_json of these databases in other modules)."""
    primary, standby = replicated
    for db in ("saas", "initech"):
        primary.execute(TEARDOWN + SETUP, dbname=db)
    standby.wait_replayed()
    lab.reload("reloaded")
    yield lab
    for db in ("saas", "initech"):
        primary.execute(TEARDOWN, dbname=db)


def _refused(got: object, function: str) -> bool:
    return (isinstance(got, tuple) and got[0] == "42501" and "function_not_allowed" in got[1]
            and f"{function}()" in got[1])


@pytest.mark.parametrize("user", ["alice", "ivan"])
def test_a_domain_constraint_function_is_reached(objects: ProxyProcess, user: str) -> None:
    """Review 19b F1: a value read as the domain runs its CHECK (SECURITY DEFINER: other tenants' rows)."""
    with psycopg.connect(objects.dsn(user), autocommit=True) as conn:
        for shape, sql in DOMAIN.items():
            got = _run(conn, sql)
            assert _refused(got, "public.sd_chk"), (shape, got)
            assert "sd_dom" in got[1] and "extra_allowed_functions" in got[1], (shape, got)
        # a Parse declaring the domain's OID as a parameter type (its value read by domain_in at Bind): refused
        oid = conn.execute("SELECT 'public.sd_dom'::regtype::oid").fetchone()[0]
        res = conn.pgconn.prepare(b"sd_q", b"SELECT $1", [oid])
        assert res.status == pq.ExecStatus.FATAL_ERROR, res.status
        assert b"sd_chk saw" not in (res.error_message or b""), res.error_message
        assert conn.execute("SELECT 'x'::varchar, count(*) > 0 FROM orders").fetchone() == ("x", True)


@pytest.mark.parametrize("user", ["alice", "ivan"])
def test_json_built_ins_reach_a_cast_to_json(objects: ProxyProcess, user: str) -> None:
    """Review 19b F2: json_categorize_type writes an app type's value through its cast to json, if any."""
    with psycopg.connect(objects.dsn(user), autocommit=True) as conn:
        for shape, sql in JSON.items():
            got = _run(conn, sql)
            assert _refused(got, "public.sd_st_json"), (shape, got)
            assert "json" in got[1], (shape, got)
        got = _run(conn, "SELECT 'a'::sd_st::json")
        assert _refused(got, "public.sd_st_json"), got
        # over-refusal check: the enum itself and other types run neither function
        assert conn.execute("SELECT 'b'::sd_st, 'x'::varchar, '{1}'::int[]").fetchall() == [("b", "x", [1])]


@pytest.mark.parametrize("user", ["alice", "ivan"])
def test_a_range_types_own_constructors_are_not_app_functions(objects: ProxyProcess, user: str) -> None:
    """Session 20's note: PostgreSQL makes a range type's constructors and its multirange's (built-in C code,
    `range_constructor2`, `multirange_constructor1`, ...) in the type's schema, and casts the range to its multirange
    with one; they were counted as app functions and such a cast refused."""
    with psycopg.connect(objects.dsn(user), autocommit=True) as conn:
        row = conn.execute("SELECT '[1,3)'::sd_rng::sd_rng_multirange, "
                           "CAST('[2,4)'::public.sd_rng AS public.sd_rng_multirange)").fetchone()
        assert row == ("{[1,3)}", "{[2,4)}"), row


def test_a_view_over_a_function_not_allowed_is_refused(objects: ProxyProcess) -> None:
    """Review 19b F4: a shared tenant reading an app view granted to it runs the view's functions."""
    with psycopg.connect(objects.dsn("alice"), autocommit=True) as conn:
        for sql in ("SELECT who FROM sd_v", "SELECT who FROM public.sd_v",
                    "SELECT * FROM (SELECT who FROM sd_v) s", "SELECT count(*) FROM orders o, sd_v"):
            got = _run(conn, sql)
            assert _refused(got, "public.sd_tenants") and "view" in got[1] and "sd_v" in got[1], (sql, got)
        # a view over built-ins only stays readable
        assert conn.execute("SELECT u, n FROM sd_plain_v").fetchall() == [("X", 3)]


def test_a_new_table_made_from_a_relation_of_a_checked_domain_is_refused(objects: ProxyProcess) -> None:
    """rt20b F2: a temp table made from a table whose row type carries the domain (CREATE TABLE AS, SELECT INTO,
    LIKE) runs the domain's CHECK at each later INSERT / UPDATE / COPY of it: refused, naming the function."""
    with psycopg.connect(objects.dsn("ivan"), autocommit=True) as conn:
        for sql in ("CREATE TEMP TABLE sd_t1 AS SELECT d FROM sd_items", "SELECT * INTO TEMP sd_t2 FROM sd_items",
                    "CREATE TEMP TABLE sd_t3 (LIKE public.sd_items)",
                    "CREATE TEMP TABLE sd_t4 AS SELECT * FROM (SELECT d FROM sd_items) s"):
            got = _run(conn, sql)
            assert _refused(got, "public.sd_chk") and "sd_items" in got[1], (sql, got)
        # over-refusal check: a table with no checked domain, a view over built-ins
        conn.execute("CREATE TEMP TABLE sd_ok AS SELECT id FROM orders LIMIT 1")
        conn.execute("CREATE TEMP TABLE sd_ok2 (LIKE orders)")
        assert conn.execute("SELECT count(*) FROM sd_ok").fetchone() == (1,)


def test_a_view_casting_to_a_domain_or_writing_json_is_refused(objects: ProxyProcess) -> None:
    """Review 20 F5: a view whose query reads a value as the domain runs its CHECK; one calling a JSON-writing
    built-in runs every cast to json (the enum's here)."""
    with psycopg.connect(objects.dsn("alice"), autocommit=True) as conn:
        got = _run(conn, "SELECT d FROM sd_dv")
        assert _refused(got, "public.sd_chk") and "view" in got[1] and "sd_dv" in got[1], got
        for view in ("sd_jv", "sd_jav"):
            got = _run(conn, f"SELECT j FROM {view}")
            assert _refused(got, "public.sd_st_json") and "view" in got[1] and view in got[1], (view, got)
        assert conn.execute("SELECT u, n FROM sd_plain_v").fetchall() == [("X", 3)]


EQUAL = r"""
CREATE TYPE public.sd_money2 AS (v numeric);
CREATE FUNCTION public.sd_m_eq(a public.sd_money2, b public.sd_money2) RETURNS boolean LANGUAGE plpgsql STABLE
  SECURITY DEFINER AS $$BEGIN RAISE EXCEPTION 'sd_m_eq saw: % rows', (SELECT count(*) FROM public.orders); END$$;
CREATE OPERATOR public.= (LEFTARG = public.sd_money2, RIGHTARG = public.sd_money2, FUNCTION = public.sd_m_eq);
"""
EQUAL_TEARDOWN = """
DROP OPERATOR IF EXISTS public.= (public.sd_money2, public.sd_money2);
DROP FUNCTION IF EXISTS public.sd_m_eq(public.sd_money2, public.sd_money2);
DROP TYPE IF EXISTS public.sd_money2;
"""
M = "(SELECT ROW(1)::sd_money2 AS m)"
EQUAL_BY_NAME = {  # PostgreSQL applies the `=` of the operand type by name, with no `=` written
    "case_when": f"SELECT CASE w.m WHEN ROW(1)::sd_money2 THEN 'one' END FROM {M} w",
    "join_using": f"SELECT 1 FROM {M} a JOIN {M} b USING (m)",
    "natural_join": f"SELECT 1 FROM {M} a NATURAL JOIN {M} b",
    "in_list": f"SELECT 1 FROM {M} w WHERE w.m IN (ROW(1)::sd_money2, ROW(2)::sd_money2)",
    "nullif": f"SELECT NULLIF(w.m, ROW(1)::sd_money2) FROM {M} w",
}


def test_an_apps_equality_applied_by_name_is_reached(
        objects: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """Review 19b F9: an app's SECURITY DEFINER `=` (every `=` of the database is then refused) run by a simple
    CASE, JOIN ... USING / NATURAL JOIN, IN (list), NULLIF. Created and dropped here: it refuses every `=`."""
    primary, standby = replicated
    try:
        for db in ("saas", "initech"):
            primary.execute(EQUAL_TEARDOWN + EQUAL, dbname=db)
        standby.wait_replayed()
        objects.reload("reloaded")
        for user in ("alice", "ivan"):
            with psycopg.connect(objects.dsn(user), autocommit=True) as conn:
                for shape, sql in EQUAL_BY_NAME.items():
                    got = _run(conn, sql)
                    assert _refused(got, "public.sd_m_eq") and "operator =" in got[1], (user, shape, got)
    finally:
        for db in ("saas", "initech"):
            primary.execute(EQUAL_TEARDOWN, dbname=db)
        standby.wait_replayed()
        objects.reload("reloaded")


WRITING = f"""
CREATE FUNCTION public.sd_wchk(t text) RETURNS int LANGUAGE sql VOLATILE AS '{WRITE}';
CREATE DOMAIN public.sd_wdom AS text CHECK (public.sd_wchk(VALUE) IS NOT NULL);
CREATE TYPE public.sd_wst AS ENUM ('a');
CREATE FUNCTION public.sd_wst_json(s public.sd_wst) RETURNS json LANGUAGE sql VOLATILE AS
  $$WITH x(w) AS ({WRITE}) SELECT to_json(w) FROM x$$;
CREATE CAST (public.sd_wst AS json) WITH FUNCTION public.sd_wst_json(public.sd_wst);
"""


def test_a_domain_or_json_cast_over_a_writing_function_is_not_read_only(
        objects: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """route = auto: ivan (initech) allows two writing functions, run by a domain's CHECK and by to_json's cast to
    json (and sd_st_json: to_json reaches every cast to json); the statements reaching them go to the primary (on
    the replica they failed 25006). Last of the module: the config keeps the extras."""
    if "session" in objects.pool.get("pool_mode", ""):
        pytest.skip("session pooling keeps a route = auto session on the primary (docs/reporting.md)")
    primary, standby = replicated
    if not primary.execute("SELECT 1 FROM pg_proc WHERE proname = 'sd_wchk'", dbname="initech"):
        primary.execute(WRITING, dbname="initech")
    standby.wait_replayed()
    text = objects.config_path.read_text()
    if "sd_wchk" not in text:
        objects.config_path.write_text(text.replace(
            "[tenants.initech]\n",
            '[tenants.initech]\nextra_allowed_functions = '
            '["public.sd_wchk", "public.sd_wst_json", "public.sd_st_json"]\n', 1))
    objects.reload("reloaded")
    for sql in ("SELECT 'x'::sd_wdom::varchar, inet_server_port()",
                "SELECT to_json('a'::sd_wst)::varchar, inet_server_port()"):
        with _on_replica(objects, standby) as conn:  # a plain read of this session lands on the replica
            got = _run(conn, sql)
            assert isinstance(got, list) and got[0][1] == primary.port, (sql, got, primary.port, standby.port)
        standby.wait_replayed()


def _on_replica(proxy: ProxyProcess, standby: StandbyCluster) -> psycopg.Connection:
    """A new session of ivan whose plain reads go to the replica (after a reload the replica is probed again; a
    session that started meanwhile may stay on the primary)."""
    def attempt() -> psycopg.Connection | None:
        conn = psycopg.connect(proxy.dsn("ivan"), autocommit=True)
        if conn.execute("SELECT inet_server_port()").fetchone()[0] == standby.port:
            return conn
        conn.close()
        return None
    return until(attempt, 30, 0.2, "a session reading on the replica")


TEXT_CAST = r"""
CREATE TYPE public.sd_cst AS ENUM ('a', 'b');
CREATE DOMAIN public.sd_cdom AS public.sd_cst;
CREATE DOMAIN public.sd_label AS text;
CREATE TYPE public.sd_pair AS (t text);
CREATE FUNCTION public.sd_cst_text(s public.sd_cst) RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER AS
  $$BEGIN RAISE EXCEPTION 'sd_cst_text saw: % rows', (SELECT count(*) FROM public.orders); END$$;
CREATE CAST (public.sd_cst AS text) WITH FUNCTION public.sd_cst_text(public.sd_cst);
"""
TEXT_CAST_TEARDOWN = """
DROP CAST IF EXISTS (public.sd_cst AS text);
DROP FUNCTION IF EXISTS public.sd_cst_text(public.sd_cst);
DROP DOMAIN IF EXISTS public.sd_cdom, public.sd_label;
DROP TYPE IF EXISTS public.sd_pair;
DROP TYPE IF EXISTS public.sd_cst;
"""
TEXT_CAST_RUNS = {  # the value is of the enum (or a domain over it, an array of it): PostgreSQL runs sd_cst_text
    "enum": "SELECT 'a'::sd_cst::text",
    "cast_syntax": "SELECT CAST(CAST('a' AS public.sd_cst) AS text)",
    "domain_over_the_enum": "SELECT 'a'::sd_cdom::text",
    "to_a_domain_over_text": "SELECT 'a'::sd_cst::sd_label",
    "arrays": "SELECT '{a}'::sd_cst[]::text[]",
    "column": "SELECT s::text FROM (SELECT 'b'::sd_cst AS s) x",  # (saas: also the lab's cast of orders to text)
}


def test_a_text_cast_of_an_app_type_refuses_only_its_own_values(
        objects: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """wp-cast (session 21's note): an app's CREATE CAST (app type AS text) WITH FUNCTION refused every `::text` of
    the database's tenants; a `::text` of a value provably of another type (a literal, NULL, a constant, a built-in
    cast, count(*), a parameter) now passes, a value that may be of the app type is still refused. Created and
    dropped here (it refuses a `::text` of a column)."""
    primary, standby = replicated
    try:
        for db in ("saas", "initech"):
            primary.execute(TEXT_CAST_TEARDOWN + TEXT_CAST, dbname=db)
        standby.wait_replayed()
        objects.reload("reloaded")
        wrong = []  # (every shape of both tenants checked, then all that went wrong shown)
        for user in ("alice", "ivan"):
            with psycopg.connect(objects.dsn(user), autocommit=True) as conn:
                got = _run(conn, "SELECT 'x'::text, NULL::text, 7::text, 1.5::text, true::text, '8'::int::text, "
                           "count(*)::text, current_date::text = current_date::varchar, 'a'::sd_cst::varchar, "
                           "'x'::sd_label FROM orders WHERE id = 1")
                if got != [("x", None, "7", "1.5", "true", "8", "1", True, "a", "x")]:
                    wrong.append((user, "provably other types", got))
                # extended protocol: a parameter psycopg sends untyped (str) or as a built-in type (int)
                try:
                    got = conn.execute("SELECT %s::text, %s::text", ["y", 9]).fetchall()
                except psycopg.Error as e:
                    got = (e.sqlstate, str(e).splitlines()[0])
                if got != [("y", "9")]:
                    wrong.append((user, "parameters", got))
                for shape, sql in TEXT_CAST_RUNS.items():
                    got = _run(conn, sql)
                    function = "public.sd_cst_text" if shape != "column" or user == "ivan" else "public.rt_tenants_sd"
                    if not (_refused(got, function) and "a cast to type" in got[1]):
                        wrong.append((user, shape, got))
                # red team 22c F1 / 22x X1: a row cast field by field, and a temporary table standing for int4
                got = _run(conn, "SELECT (ROW('a'::sd_cst)::sd_pair).t")
                if not (isinstance(got, tuple) and got[0] == "42501" and "(field by field)" in got[1]):
                    wrong.append((user, "row cast", got))
                got = _run(conn, "CREATE TEMP TABLE int4 (t text)")
                if not (isinstance(got, tuple) and got[0] == "42501" and "ddl_not_allowed" in got[1]):
                    wrong.append((user, "temp int4", got))
        assert not wrong, wrong
    finally:
        for db in ("saas", "initech"):
            primary.execute(TEXT_CAST_TEARDOWN, dbname=db)
        standby.wait_replayed()
        objects.reload("reloaded")
