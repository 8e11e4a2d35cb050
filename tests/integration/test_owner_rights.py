"""Code that runs with its owner's rights (issue 18/14): a SECURITY DEFINER function or a view (no security_invoker)
whose owner row security does not bind reads every tenant's rows whatever the proxy rewrites; the preflight refuses
the start naming each one, provision reports it, and each fix lets the proxy start."""

from __future__ import annotations

import re

import psycopg
import pytest

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import BACKEND_PASSWORD, BACKEND_ROLE, ProxyProcess, prepare_backend, provision_output

OBJECTS = """
CREATE TABLE public.notes (id int, body text);
CREATE FUNCTION public.df_all() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER AS
  'SELECT string_agg(DISTINCT tenant_id, '','' ORDER BY tenant_id) FROM public.orders';
CREATE FUNCTION public.df_atomic_orders() RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER
  BEGIN ATOMIC SELECT count(*) FROM public.orders; END;
CREATE FUNCTION public.df_atomic_notes() RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER
  BEGIN ATOMIC SELECT count(*) FROM public.notes; END;
CREATE VIEW public.df_view AS SELECT string_agg(DISTINCT tenant_id, ',' ORDER BY tenant_id) AS who FROM public.orders;
CREATE VIEW public.df_fview AS SELECT public.df_all() AS who;
CREATE MATERIALIZED VIEW public.df_mview AS SELECT count(*) AS n FROM public.orders;
GRANT SELECT ON public.df_view, public.df_fview, public.df_mview TO PUBLIC;
"""


def _refusal(p: ProxyProcess) -> str:
    """The problems of a start the preflight refuses (this start's only: the log goes on from earlier ones)."""
    seen = len(p.log_events())
    try:
        p.start(provision=False)
    except RuntimeError as exc:
        assert "pgtenant exited with 3" in str(exc)
    else:  # (a start that should have been refused: stop the proxy it left, then fail)
        p.stop()
        pytest.fail("the preflight let the proxy start")
    return "\n".join(str(e.get("problem")) for e in p.log_events()[seen:] if e.get("event") == "preflight_failed")


def _lab(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, prefix: str) -> tuple[str, ProxyProcess]:
    prepare_backend(pg)
    db = pg.fresh_database(prefix)
    pg.execute("CREATE TABLE public.orders (id int, tenant_id text); "
               "INSERT INTO public.orders VALUES (1, 'acme'), (2, 'bigco'), (3, 'bigco')", dbname=db)
    p = ProxyProcess(pg, tmp_path_factory.mktemp(prefix), backend_sslmode="disable",
                     extra_tenants={"dfa": {"strategy": "shared", "database": db, "tenant_id": "acme"}},
                     extra_users={"dfa_alice": ("dfa", "dfa-alice-pw")})
    p.provision()  # roles; forced RLS and pgtenant's policy on public.orders
    pg.execute(OBJECTS, dbname=db)
    return db, p


def test_preflight_refuses_owner_rights_code_and_each_fix_passes(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db, p = _lab(pg, tmp_path_factory, "dfpre")
    log = _refusal(p)
    sup = pg.execute("SELECT current_user")[0][0]
    assert (f"tenants.dfa: function public.df_all() runs with its owner's rights (SECURITY DEFINER) and its owner "
            f"'{sup}' is not bound by row security (a superuser") in log, log
    assert f"the backend role '{BACKEND_ROLE}' may run it (EXECUTE through PUBLIC, the default)" in log
    assert "REVOKE EXECUTE ON FUNCTION public.df_all() FROM PUBLIC" in log
    assert "function public.df_atomic_orders() runs with its owner's rights" in log
    assert "df_atomic_notes" not in log  # a BEGIN ATOMIC body that reads no scoped table
    assert (f"view public.df_view reads its tables with its owner's rights (no security_invoker) and its owner "
            f"'{sup}' is not bound") in log
    assert "ALTER VIEW public.df_view SET (security_invoker = true)" in log
    assert "view public.df_fview reads its tables" in log and "it calls public.df_all()" in log
    assert "materialized view public.df_mview holds STORED rows" in log
    # The proxy's lock alone (enforce = false): the view shows every tenant's rows to the shared tenant acme
    p.preflight_enforce = False
    p.start(provision=False)
    try:
        with psycopg.connect(p.dsn("dfa_alice")) as c:
            assert c.execute("SELECT who FROM df_view").fetchall() == [("acme,bigco",)]
            assert c.execute("SELECT count(*) FROM orders").fetchall() == [(1,)]
    finally:
        p.stop()
    p.preflight_enforce = True
    # Each fix: revoke (the view over df_all() then fails for the backend role: it runs df_all() as the reader),
    # SECURITY INVOKER, security_invoker, revoke the materialized view
    pg.execute("REVOKE EXECUTE ON FUNCTION public.df_all() FROM PUBLIC; "
               "ALTER FUNCTION public.df_atomic_orders() SECURITY INVOKER; "
               "ALTER VIEW public.df_view SET (security_invoker = true)", dbname=db)
    log = _refusal(p)
    assert "materialized view public.df_mview holds STORED rows" in log
    assert "df_all" not in log and "df_atomic_orders" not in log and "view public.df_view " not in log, log
    pg.execute("REVOKE SELECT ON public.df_mview FROM PUBLIC", dbname=db)
    p.start(provision=False)
    try:
        with psycopg.connect(p.dsn("dfa_alice")) as c:  # security_invoker: RLS of the backend role applies
            assert c.execute("SELECT who FROM df_view").fetchall() == [("acme",)]
        with (psycopg.connect(pg.dsn(user=BACKEND_ROLE, password=BACKEND_PASSWORD, dbname=db)) as c,
              pytest.raises(psycopg.errors.InsufficientPrivilege)):
            c.execute("SELECT who FROM public.df_fview")
    finally:
        p.stop()


def test_an_owner_bound_by_forced_rls_passes_and_not_forced_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The table's owner under FORCEd RLS: pgtenant's policy is TO its backend roles only, so the owner's code sees
    no row; without FORCE it sees every tenant's."""
    db, p = _lab(pg, tmp_path_factory, "dfown")
    pg.execute("DROP VIEW public.df_fview; DROP VIEW public.df_view; DROP FUNCTION public.df_atomic_orders();"
               "DROP MATERIALIZED VIEW public.df_mview;"
               "DROP ROLE IF EXISTS pgt_df_app; CREATE ROLE pgt_df_app NOLOGIN;"
               "ALTER TABLE public.orders OWNER TO pgt_df_app; ALTER FUNCTION public.df_all() OWNER TO pgt_df_app",
               dbname=db)
    try:
        p.start(provision=False)
        try:
            with psycopg.connect(pg.dsn(user=BACKEND_ROLE, password=BACKEND_PASSWORD, dbname=db)) as c:
                assert c.execute("SELECT public.df_all()").fetchall() == [(None,)]  # bound: no row
        finally:
            p.stop()
        pg.execute("ALTER TABLE public.orders NO FORCE ROW LEVEL SECURITY", dbname=db)
        log = _refusal(p)
        assert ("function public.df_all() runs with its owner's rights (SECURITY DEFINER) and its owner 'pgt_df_app' "
                "is not bound by row security (public.orders: owner; row-level security not forced)") in log, log
    finally:
        pg.execute("DROP DATABASE IF EXISTS " + db)
        pg.execute("DROP ROLE IF EXISTS pgt_df_app")


def test_a_trigger_and_an_aggregate_run_a_function_without_its_execute(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """EXECUTE revoked from PUBLIC: a trigger of a table the backend role may write still runs the function (no
    EXECUTE check at fire time), and so does an aggregate it may run (checked as the aggregate's owner)."""
    db, p = _lab(pg, tmp_path_factory, "dftrig")
    pg.execute("DROP VIEW public.df_fview; DROP VIEW public.df_view; DROP MATERIALIZED VIEW public.df_mview; "
               "DROP FUNCTION public.df_atomic_orders(); REVOKE EXECUTE ON FUNCTION public.df_all() FROM PUBLIC; "
               "CREATE TABLE public.df_inbox (v text); GRANT INSERT ON public.df_inbox TO PUBLIC; "
               "CREATE FUNCTION public.df_trg() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS "
               "$$ BEGIN NEW.v := (SELECT string_agg(DISTINCT tenant_id, ',') FROM public.orders); RETURN NEW; END $$; "
               "REVOKE EXECUTE ON FUNCTION public.df_trg() FROM PUBLIC; "
               "CREATE TRIGGER df_t BEFORE INSERT ON public.df_inbox FOR EACH ROW EXECUTE FUNCTION public.df_trg()",
               dbname=db)
    with psycopg.connect(pg.dsn(user=BACKEND_ROLE, password=BACKEND_PASSWORD, dbname=db)) as c:
        c.execute("INSERT INTO public.df_inbox VALUES ('x')")  # PostgreSQL's semantics: it runs, reading all
        pg.execute("GRANT SELECT ON public.df_inbox TO PUBLIC", dbname=db)
        assert c.execute("SELECT v FROM public.df_inbox").fetchall() == [("acme,bigco",)]
    log = _refusal(p)
    assert "function public.df_trg() runs with its owner's rights" in log, log
    assert "a trigger of public.df_inbox, which it may write" in log
    assert "df_all" not in log
    pg.execute("REVOKE INSERT ON public.df_inbox FROM PUBLIC; "
               "CREATE FUNCTION public.df_sf(bigint, int) RETURNS bigint LANGUAGE sql SECURITY DEFINER AS "
               "'SELECT count(*) FROM public.orders'; "
               "REVOKE EXECUTE ON FUNCTION public.df_sf(bigint, int) FROM PUBLIC; "
               "CREATE AGGREGATE public.df_agg(int) (SFUNC = public.df_sf, STYPE = bigint)", dbname=db)
    log = _refusal(p)
    assert "df_trg" not in log, log
    assert "function public.df_sf(bigint, integer) runs" in log, log
    assert "the aggregate public.df_agg(integer) calls it" in log, log
    pg.execute("REVOKE EXECUTE ON FUNCTION public.df_agg(int) FROM PUBLIC", dbname=db)
    p.start(provision=False)
    p.stop()


def test_provision_reports_owner_rights_code_and_never_changes_it(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db, p = _lab(pg, tmp_path_factory, "dfprov")
    code, out = provision_output(p)
    assert code == 3, out
    assert f"PROBLEM: database {db}: function public.df_all() runs with its owner's rights" in out
    assert f"PROBLEM: database {db}: view public.df_view reads its tables" in out
    code, out = provision_output(p, "--force")
    assert code == 0, out
    assert f"WARNING (--force): database {db}: function public.df_all() runs with its owner's rights" in out
    assert "PROCEEDING DESPITE" in out
    assert pg.execute("SELECT prosecdef, has_function_privilege('public', 'public.df_all()', 'EXECUTE') "
                      "FROM pg_proc WHERE proname = 'df_all'", dbname=db) == [(True, True)]
    assert pg.execute("SELECT has_table_privilege('public', 'public.df_view', 'SELECT')", dbname=db) == [(True,)]


def test_schema_and_database_tenants_of_a_shared_database(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every tenant of the database counts: a function reading the shared tenant's rows refuses the schema tenant's
    and the database tenant's backend roles too; one reading the schema tenant's schema refuses the shared tenant's
    and the database tenant's, not the schema tenant's own."""
    from tests.integration.test_preflight import DAN_ROLE, _orders_db, _sharing_proxy

    prepare_backend(pg)
    db = _orders_db(pg, "dfsch")
    p = _sharing_proxy(pg, tmp_path_factory.mktemp("dfsch"), db, schema_tenant=True)
    p.provision()
    pg.execute("CREATE TABLE dsg_s.secrets (v text); "
               "CREATE FUNCTION public.df_orders() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
               "AS 'SELECT count(*) FROM public.orders'; "
               "REVOKE EXECUTE ON FUNCTION public.df_orders() FROM PUBLIC; "
               "GRANT EXECUTE ON FUNCTION public.df_orders() TO pgt_dsh_g, " + DAN_ROLE, dbname=db)
    log = _refusal(p)
    assert "tenants.dsg: function public.df_orders() runs with its owner's rights" in log, log
    assert "the backend role 'pgt_dsh_g' may run it (EXECUTE granted to it or to a role it is a member of)" in log
    assert "REVOKE EXECUTE ON FUNCTION public.df_orders() FROM pgt_dsh_g (or the role it has it through)" in log
    assert "tenants.dsd: function public.df_orders() runs with its owner's rights" in log, log
    assert "tenants.dsa:" not in log  # the shared tenant's role may not run it
    pg.execute("DROP FUNCTION public.df_orders(); "
               "CREATE FUNCTION public.df_secrets() RETURNS bigint LANGUAGE sql SECURITY DEFINER BEGIN ATOMIC "
               "SELECT count(*) FROM dsg_s.secrets; END", dbname=db)
    log = _refusal(p)
    assert "tenants.dsa: function public.df_secrets() runs" in log, log
    assert "tenants.dsd: function public.df_secrets() runs" in log, log
    assert "tenants.dsg:" not in log, log
    pg.execute("DROP FUNCTION public.df_secrets()", dbname=db)
    p.start(provision=False)
    p.stop()


_BARE = ("DROP VIEW public.df_fview, public.df_view; DROP MATERIALIZED VIEW public.df_mview; "
         "DROP FUNCTION public.df_all(), public.df_atomic_orders(), public.df_atomic_notes(); ")


def _refused_until_revoked(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, prefix: str, objects: str,
                           expected: tuple[str, ...], revoke: str) -> None:
    """A lab with `objects` alone (and the scoped orders): the start is refused naming each of `expected`, and
    passes once `revoke` ran."""
    db, p = _lab(pg, tmp_path_factory, prefix)
    pg.execute(_BARE + objects, dbname=db)
    log = _refusal(p)
    for text in expected:
        assert text in log, (text, log)
    pg.execute(revoke, dbname=db)
    p.start(provision=False)
    p.stop()


def test_a_materialized_view_over_invoker_code_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Review 20 F0: a materialized view's query ran as its owner at REFRESH, through a security_invoker view (the
    docs' own fix for a view) or a plain function: the preflight passed it and a shared tenant read every tenant's
    rows from it. (A materialized view with the tenant column is a scoped relation the proxy filters: renamed here.)"""
    _refused_until_revoked(
        pg, tmp_path_factory, "dfmat",
        "CREATE VIEW public.df_inv WITH (security_invoker = true) AS SELECT tenant_id FROM public.orders; "
        "CREATE MATERIALIZED VIEW public.df_mv_inv AS SELECT tenant_id AS who, count(*) AS n FROM public.df_inv "
        "GROUP BY 1; "
        "CREATE FUNCTION public.df_tenants() RETURNS SETOF text LANGUAGE sql STABLE AS "
        "'SELECT DISTINCT tenant_id FROM public.orders'; "
        "CREATE MATERIALIZED VIEW public.df_mv_fn AS SELECT t FROM public.df_tenants() AS t; "
        "GRANT SELECT ON public.df_mv_inv, public.df_mv_fn TO PUBLIC",
        ("materialized view public.df_mv_inv holds STORED rows", "materialized view public.df_mv_fn holds STORED rows"),
        "REVOKE SELECT ON public.df_mv_inv, public.df_mv_fn FROM PUBLIC")


def test_a_view_over_the_statistics_catalog_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 20b F3: a superuser's view over pg_statistic matching the table by name (pg_depend records no system
    catalog) passed the preflight, and a shared tenant read other tenants' values in its histograms."""
    _refused_until_revoked(
        pg, tmp_path_factory, "dfstat",
        "ANALYZE public.orders; "
        "CREATE VIEW public.df_stat AS SELECT s.stavalues1::text AS v FROM pg_catalog.pg_statistic s "
        "JOIN pg_catalog.pg_class c ON c.oid = s.starelid WHERE c.relname = 'orders'; "
        "GRANT SELECT ON public.df_stat TO PUBLIC",
        ("view public.df_stat reads its tables",), "REVOKE SELECT ON public.df_stat FROM PUBLIC")


_APP = "pgt_dfm_app"  # an application role row security binds (no superuser, no BYPASSRLS, no policy of its own)


def test_a_materialized_view_holds_stored_rows_whatever_its_owner(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21d F1, F2: a materialized view's rows are stored, read without row security. Its owner is bound
    now, yet it holds what was read before RLS was on (F2), or through a SECURITY DEFINER function only its owner may
    run, directly or through an invoker wrapper (F1): the preflight passed both and tenants read every tenant's
    rows. Now an error whatever the owner, each fix (revoke) passes."""
    db, p = _lab(pg, tmp_path_factory, "dfstore")
    try:
        pg.execute(
            _BARE + f"DROP ROLE IF EXISTS {_APP}; CREATE ROLE {_APP} NOLOGIN; "
            f"GRANT USAGE, CREATE ON SCHEMA public TO {_APP}; GRANT SELECT ON public.orders TO {_APP}; "
            "ALTER TABLE public.orders DISABLE ROW LEVEL SECURITY; "  # (before provision forced it)
            f"SET ROLE {_APP}; CREATE MATERIALIZED VIEW public.df_totals AS "
            "SELECT tenant_id AS who, count(*) AS n FROM public.orders GROUP BY 1; RESET ROLE; "
            "ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY; "
            "CREATE FUNCTION public.df_secret() RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER AS "
            "'SELECT tenant_id FROM public.orders'; "
            f"REVOKE EXECUTE ON FUNCTION public.df_secret() FROM PUBLIC; "
            f"GRANT EXECUTE ON FUNCTION public.df_secret() TO {_APP}; "
            "CREATE FUNCTION public.df_wrap() RETURNS SETOF text LANGUAGE sql STABLE AS "
            "'SELECT * FROM public.df_secret()'; "
            f"SET ROLE {_APP}; "
            "CREATE MATERIALIZED VIEW public.df_mv_def AS SELECT t AS who FROM public.df_secret() AS t; "
            "CREATE MATERIALIZED VIEW public.df_mv_wrap AS SELECT t AS who FROM public.df_wrap() AS t; "
            "GRANT SELECT ON public.df_totals, public.df_mv_def, public.df_mv_wrap TO PUBLIC; RESET ROLE", dbname=db)
        with psycopg.connect(pg.dsn(user=BACKEND_ROLE, password=BACKEND_PASSWORD, dbname=db)) as c:
            # PostgreSQL's semantics: the backend role (forced RLS on orders binds it) reads bigco's rows
            assert ("bigco",) in c.execute("SELECT who FROM public.df_totals").fetchall()
            assert ("bigco",) in c.execute("SELECT who FROM public.df_mv_def").fetchall()
            assert ("bigco",) in c.execute("SELECT who FROM public.df_mv_wrap").fetchall()
        log = _refusal(p)
        assert ("tenants.dfa: materialized view public.df_totals holds STORED rows: what its owner read at its "
                "last REFRESH") in log, log
        assert "row security never applies when it is read (it reads public.orders, a tenant-scoped relation)" in log
        assert "Fix: add the tenant column to it" in log and "REVOKE SELECT ON public.df_totals FROM PUBLIC" in log
        assert ("materialized view public.df_mv_def holds STORED rows" in log
                and "it calls public.df_secret(), whose body may read any table" in log), log
        assert "materialized view public.df_mv_wrap holds STORED rows" in log and "public.df_wrap()" in log, log
        code, out = provision_output(p)  # provision judges it the same way (its owner is bound: it passed before)
        assert code == 3, out
        assert f"PROBLEM: database {db}: materialized view public.df_totals holds STORED rows" in out, out
        pg.execute("REVOKE SELECT ON public.df_totals, public.df_mv_def, public.df_mv_wrap FROM PUBLIC", dbname=db)
        p.start(provision=False)
        p.stop()
    finally:
        pg.execute("DROP DATABASE IF EXISTS " + db)
        pg.execute(f"DROP ROLE IF EXISTS {_APP}")


def test_a_scoped_materialized_view_and_one_over_reference_tables_pass(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The guard against over-refusal (F1/F2's fix): a materialized view with the tenant column is the proxy's to
    filter, and one over an unscoped reference table calling built-ins only reads no tenant's rows: both start."""
    db, p = _lab(pg, tmp_path_factory, "dfmref")
    pg.execute(_BARE + "CREATE MATERIALIZED VIEW public.df_mv_scoped AS "
               "SELECT tenant_id, count(*) AS n FROM public.orders GROUP BY 1; "
               "CREATE TABLE public.df_ref (code text); INSERT INTO public.df_ref VALUES ('eur'), ('usd'); "
               "CREATE MATERIALIZED VIEW public.df_mv_ref AS SELECT upper(code) AS code FROM public.df_ref; "
               "GRANT SELECT ON public.df_mv_scoped, public.df_mv_ref, public.df_ref TO PUBLIC", dbname=db)
    p.start(provision=False)
    try:
        with psycopg.connect(p.dsn("dfa_alice")) as c:
            assert c.execute("SELECT tenant_id, n FROM df_mv_scoped").fetchall() == [("acme", 1)]
            assert c.execute("SELECT code FROM df_mv_ref ORDER BY 1").fetchall() == [("EUR",), ("USD",)]
    finally:
        p.stop()


def test_sql_text_run_by_a_built_in_reads_anything(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21d F5: relations named in SQL text given to a built-in (ts_stat) leave no pg_depend row: a
    superuser's materialized view, definer view and BEGIN ATOMIC definer function over it passed the preflight."""
    text = "ts_stat('SELECT to_tsvector(''simple'', tenant_id) FROM public.orders')"
    _refused_until_revoked(
        pg, tmp_path_factory, "dfsqlt",
        f"CREATE MATERIALIZED VIEW public.df_words AS SELECT word FROM {text}; "
        f"CREATE VIEW public.df_words_v AS SELECT word FROM {text}; "
        "CREATE FUNCTION public.df_words_fn() RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER "
        f"BEGIN ATOMIC SELECT word FROM {text}; END; "
        # (red team 21w W3: through an operator whose function is the built-in, stored as :opfuncid)
        "CREATE OPERATOR public.@@@ (FUNCTION = pg_catalog.ts_stat, RIGHTARG = text); "
        "CREATE MATERIALIZED VIEW public.df_words_op AS SELECT (t.r).word FROM "
        "(SELECT (@@@ 'SELECT to_tsvector(''simple'', tenant_id) FROM public.orders') AS r) t; "
        "GRANT SELECT ON public.df_words, public.df_words_v, public.df_words_op TO PUBLIC",
        ("materialized view public.df_words holds STORED rows",
         "it calls a built-in that runs SQL text given to it",
         "view public.df_words_v reads its tables with its owner's rights",
         "function public.df_words_fn() runs with its owner's rights",
         "materialized view public.df_words_op holds STORED rows"),
        "REVOKE SELECT ON public.df_words, public.df_words_v, public.df_words_op FROM PUBLIC; "
        "REVOKE EXECUTE ON FUNCTION public.df_words_fn() FROM PUBLIC")


# The fix the preflight's dblink error gives (red team 21w W7): revoke its functions from PUBLIC
_DBLINK_FIX = re.compile(r"REVOKE EXECUTE ON FUNCTION public\.dblink[^;]*? FROM PUBLIC")


def test_stored_credentials_foreign_tables_and_dblink(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21d F7: a foreign table reads with its user mapping's stored credentials and dblink with its
    connection string's: not objects of the check, tenants read every tenant's rows through them; and the check was
    skipped for a database tenant alone in its database (initech), whose dblink view reached saas's rows."""
    db, p = _lab(pg, tmp_path_factory, "dfcred")
    su = pg.execute("SELECT current_user")[0][0]
    conninfo = f"dbname={db} user={su}"
    try:
        pg.execute(
            _BARE + "CREATE EXTENSION postgres_fdw; CREATE EXTENSION dblink; "
            f"CREATE SERVER df_loop FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname '{db}'); "
            f"CREATE USER MAPPING FOR PUBLIC SERVER df_loop OPTIONS (user '{su}'); "
            "CREATE FOREIGN TABLE public.df_ft (who text) SERVER df_loop "
            "OPTIONS (schema_name 'public', table_name 'orders'); "
            "CREATE VIEW public.df_dbl WITH (security_invoker = true) AS SELECT * FROM "
            f"dblink('{conninfo}', 'SELECT tenant_id FROM public.orders') AS t(who text); "
            "CREATE FUNCTION public.df_dbl_fn() RETURNS SETOF text LANGUAGE sql STABLE BEGIN ATOMIC "
            f"SELECT who FROM dblink('{conninfo}', 'SELECT tenant_id FROM public.orders') AS t(who text); END; "
            "GRANT SELECT ON public.df_ft, public.df_dbl TO PUBLIC", dbname=db)
        pg.execute("CREATE EXTENSION IF NOT EXISTS dblink; CREATE VIEW public.df_saas AS SELECT * FROM "
                   f"dblink('{conninfo}', 'SELECT tenant_id FROM public.orders') AS t(who text); "
                   "GRANT SELECT ON public.df_saas TO PUBLIC", dbname="initech")
        log = _refusal(p)
        assert ("tenants.dfa: foreign table public.df_ft reads with stored credentials, not its reader's rights nor "
                "row security of this database") in log, log
        assert "REVOKE SELECT ON public.df_ft FROM PUBLIC" in log
        assert ("tenants.dfa: view public.df_dbl reads with stored credentials" in log
                and "(extension dblink), which reads with its connection's stored credentials" in log), log
        assert "tenants.dfa: function public.df_dbl_fn() reads with stored credentials" in log, log
        assert "tenants.initech: view public.df_saas reads with stored credentials" in log, log
        pg.execute("REVOKE SELECT ON public.df_ft, public.df_dbl FROM PUBLIC; "
                   "REVOKE EXECUTE ON FUNCTION public.df_dbl_fn() FROM PUBLIC", dbname=db)
        pg.execute("DROP VIEW public.df_saas", dbname="initech")
        log = _refusal(p)  # (red team 21w W7: dblink itself, executable by PUBLIC)
        assert "tenants.dfa: the backend role" in log and "tenants.initech: the backend role" in log, log
        pg.execute(_DBLINK_FIX.findall(log)[0], dbname=db)
        pg.execute("DROP EXTENSION dblink", dbname="initech")
        p.start(provision=False)
        p.stop()
    finally:
        pg.execute("DROP VIEW IF EXISTS public.df_saas; DROP EXTENSION IF EXISTS dblink", dbname="initech")


def test_a_definer_function_reading_through_another_owners_leaking_view_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Review 21 F4: a SECURITY DEFINER function whose owner may read no scoped table itself, but reads a
    superuser's definer view granted to it alone (so that view is not reported for the backend role), returned every
    tenant's rows to any caller: the check measured the function's owner by its direct reads only."""
    pg.execute("DO $$BEGIN CREATE ROLE pgt_df_fnown NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    _refused_until_revoked(
        pg, tmp_path_factory, "dffnv",
        "CREATE SCHEMA df_fns AUTHORIZATION pgt_df_fnown; GRANT USAGE ON SCHEMA df_fns TO PUBLIC; "
        "CREATE VIEW public.df_vall AS SELECT tenant_id AS who FROM public.orders; "
        "REVOKE ALL ON public.df_vall FROM PUBLIC; GRANT SELECT ON public.df_vall TO pgt_df_fnown; "
        "SET ROLE pgt_df_fnown; "
        "CREATE FUNCTION df_fns.df_get() RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER "
        "AS 'SELECT who FROM public.df_vall'; RESET ROLE",
        ("function df_fns.df_get() runs with its owner's rights", "reads public.df_vall"),
        "REVOKE EXECUTE ON FUNCTION df_fns.df_get() FROM PUBLIC")


def test_dblink_a_backend_role_may_execute_is_refused_in_every_database(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21w W7: a plain function (not BEGIN ATOMIC, run as its caller) calling dblink with a connection
    string that carries a password, called by a view the backend roles may read, let the database tenant read every
    tenant's rows: pgtenant cannot see inside such a body (nor plpgsql's dynamic SQL). dblink's script grants its
    functions to PUBLIC: a backend role that may execute one is an error in every database (initech, alone in its
    database, too), and so is a SECURITY DEFINER function it may run whose owner may; the message's REVOKE is the
    fix."""
    db, p = _lab(pg, tmp_path_factory, "dfdbl")
    su = pg.execute("SELECT current_user")[0][0]
    conninfo = f"dbname={db} user={su} password=not-checked"
    pg.execute("DO $$BEGIN CREATE ROLE pgt_df_dblown NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    try:
        pg.execute(
            _BARE + "CREATE EXTENSION dblink; "
            "CREATE FUNCTION public.df_remote() RETURNS SETOF text LANGUAGE sql STABLE AS $$ SELECT who FROM "
            f"dblink('{conninfo}', 'SELECT tenant_id FROM public.orders') AS t(who text) $$; "
            "CREATE VIEW public.df_remote_v AS SELECT w AS who FROM public.df_remote() AS w; "
            "GRANT SELECT ON public.df_remote_v TO PUBLIC; "
            "CREATE FUNCTION public.df_remote_def() RETURNS SETOF text LANGUAGE plpgsql STABLE SECURITY DEFINER AS "
            "$$ BEGIN RETURN QUERY EXECUTE 'SELECT who FROM dblink(' || quote_literal(current_setting('x.c', true)) "
            "|| ', ''SELECT 1'') AS t(who text)'; END $$; "
            "ALTER FUNCTION public.df_remote_def() OWNER TO pgt_df_dblown", dbname=db)
        pg.execute("CREATE EXTENSION IF NOT EXISTS dblink", dbname="initech")
        log = _refusal(p)
        for tenant, role in (("dfa", BACKEND_ROLE), ("initech", "pgt_role_2")):
            assert (f"tenants.{tenant}: the backend role '{role}' may execute the functions of extension dblink "
                    "(EXECUTE through PUBLIC, the default of dblink's script:") in log, log
        assert ("function public.df_remote_def() runs with its owner's rights (SECURITY DEFINER) and its owner "
                "'pgt_df_dblown' is not bound by row security (it may execute the functions of extension "
                "dblink") in log, log
        assert "dblink_connect_u" not in log  # (dblink's script revokes it from PUBLIC)
        fixes = set(_DBLINK_FIX.findall(log))
        assert len(fixes) == 1, log
        pg.execute(fixes.pop() + "; GRANT EXECUTE ON FUNCTION public.dblink(text, text) TO pgt_df_dblown", dbname=db)
        log = _refusal(p)
        assert "function public.df_remote_def() runs with its owner's rights" in log, log
        assert "tenants.dfa: the backend role" not in log, log
        assert "tenants.initech: the backend role 'pgt_role_2' may execute the functions of extension dblink" in log
        assert "df_remote_v" not in log  # (the view runs df_remote() as its reader, who may not run dblink now)
        pg.execute("REVOKE EXECUTE ON FUNCTION public.df_remote_def() FROM PUBLIC", dbname=db)
        pg.execute("DROP EXTENSION dblink", dbname="initech")
        p.start(provision=False)
        p.stop()
        with (psycopg.connect(pg.dsn(user=BACKEND_ROLE, password=BACKEND_PASSWORD, dbname=db)) as c,
              pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function dblink")):
            c.execute("SELECT who FROM public.df_remote_v")
    finally:
        pg.execute("DROP EXTENSION IF EXISTS dblink", dbname="initech")


def test_provision_reports_dblink_a_backend_role_may_execute(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21w W7 at provision: a PROBLEM (exit 3), a WARNING with --force; dblink's grants stay as they were."""
    db, p = _lab(pg, tmp_path_factory, "dfdblp")
    pg.execute(_BARE + "CREATE EXTENSION dblink", dbname=db)
    code, out = provision_output(p)
    assert code == 3, out
    assert (f"PROBLEM: database {db}: the backend role '{BACKEND_ROLE}' may execute the functions of extension "
            "dblink") in out, out
    code, out = provision_output(p, "--force")
    assert code == 0, out
    assert f"WARNING (--force): database {db}: the backend role '{BACKEND_ROLE}' may execute" in out, out
    assert pg.execute("SELECT has_function_privilege('public', 'public.dblink(text, text)', 'EXECUTE')",
                      dbname=db) == [(True,)]


_REVOKE_DBLINK = ("DO $$DECLARE f regprocedure; BEGIN FOR f IN SELECT d.objid::regprocedure FROM pg_depend d JOIN "
                  "pg_extension e ON e.oid = d.refobjid WHERE e.extname = 'dblink' AND d.deptype = 'e' AND "
                  "d.classid = 'pg_proc'::regclass LOOP EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', "
                  "f); END LOOP; END$$")


def test_dblink_functions_out_of_their_extension_are_still_dblink(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 22v V2: `ALTER EXTENSION dblink DROP FUNCTION dblink(text, text)` (and a grant to PUBLIC) took the
    function out of what the check looked for (the extension's members): the database tenant read every tenant's
    rows through a view over a plain function calling it. dblink's functions are those of its C library too."""
    db, p = _lab(pg, tmp_path_factory, "dfdblx")
    pg.execute(_BARE + "CREATE EXTENSION dblink; " + _REVOKE_DBLINK, dbname=db)
    p.start(provision=False)  # (every member revoked from PUBLIC: passes)
    p.stop()
    pg.execute("ALTER EXTENSION dblink DROP FUNCTION public.dblink(text, text); "
               "GRANT EXECUTE ON FUNCTION public.dblink(text, text) TO PUBLIC", dbname=db)
    log = _refusal(p)
    assert f"tenants.dfa: the backend role '{BACKEND_ROLE}' may execute the functions of extension dblink" in log, log
    assert "public.dblink(text, text)" in log, log


def test_a_backend_role_that_may_switch_to_another_role_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 22v V3: the backend role granted a dblink-capable role WITH INHERIT FALSE, SET TRUE passed (the
    privilege checks count inherited rights only); a plain function with `SET role = …` a view calls switched to it
    and the database tenant read every tenant's rows over dblink. A membership whose rights are not inherited, or in
    a SUPERUSER / BYPASSRLS role (attributes never are), is an error now: code the backend role runs may switch."""
    db, p = _lab(pg, tmp_path_factory, "dfswitch")
    pg.execute(_BARE, dbname=db)
    pg.execute("DO $$BEGIN CREATE ROLE pgt_df_bypass NOLOGIN BYPASSRLS; "
               "EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    pg.execute("DO $$BEGIN CREATE ROLE pgt_df_noinherit NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    major = int(pg.execute("SHOW server_version_num")[0][0]) // 10000
    try:
        pg.execute(f"GRANT pgt_df_bypass TO {BACKEND_ROLE}")
        log = _refusal(p)
        assert (f"backend role '{BACKEND_ROLE}' is a member of role 'pgt_df_bypass', which has BYPASSRLS: code it "
                "runs may switch to that role") in log, log
        pg.execute(f"REVOKE pgt_df_bypass FROM {BACKEND_ROLE}")
        if major >= 16:
            pg.execute(f"GRANT pgt_df_noinherit TO {BACKEND_ROLE} WITH INHERIT FALSE")
            log = _refusal(p)
            assert "is a member of role 'pgt_df_noinherit', which it does not inherit the rights of" in log, log
            pg.execute(f"REVOKE pgt_df_noinherit FROM {BACKEND_ROLE}")
            pg.execute(f"GRANT pgt_df_noinherit TO {BACKEND_ROLE} WITH INHERIT FALSE, SET FALSE")  # (no switch)
            p.start(provision=False)
            p.stop()
            pg.execute(f"REVOKE pgt_df_noinherit FROM {BACKEND_ROLE}")
            pg.execute(f"GRANT pgt_df_noinherit TO {BACKEND_ROLE} WITH INHERIT TRUE")  # (its rights are counted)
        p.start(provision=False)
        p.stop()
    finally:
        pg.execute(f"REVOKE pgt_df_bypass FROM {BACKEND_ROLE}; REVOKE pgt_df_noinherit FROM {BACKEND_ROLE}")
