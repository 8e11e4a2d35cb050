"""The owner's-rights check where PostgreSQL honours a column-level grant (red team 22d R1, R7), a definer body whose
owner reads a foreign table with stored credentials (R2), and a view calling a function whose body pgtenant cannot
read (R4: a preflight warning; a function made in pg_catalog after initdb is one the proxy's allow-list counts)."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.test_owner_rights import _BARE, _lab, _refusal
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import BACKEND_ROLE

OWNER = "pgt_df_r22"


def _owner(pg: PgCluster, db: str) -> None:
    pg.execute(f"DROP ROLE IF EXISTS {OWNER}; CREATE ROLE {OWNER} NOLOGIN")
    pg.execute(f"GRANT CREATE ON SCHEMA public TO {OWNER}", dbname=db)


def _drop(pg: PgCluster, db: str) -> None:
    pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    pg.execute(f"DROP ROLE IF EXISTS {OWNER}")


def test_an_owner_reading_a_leaking_view_by_a_column_grant_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 22d R1: a SECURITY DEFINER function whose owner may read a superuser's view by `GRANT SELECT (col)`
    passed (the table-level privilege function said no); its body reads every tenant's rows."""
    db, p = _lab(pg, tmp_path_factory, "dfcol")
    try:
        _owner(pg, db)
        pg.execute(_BARE + "CREATE VIEW public.df_vcol AS SELECT id, tenant_id AS who FROM public.orders; "
                   f"GRANT SELECT (who) ON public.df_vcol TO {OWNER}; SET ROLE {OWNER}; "
                   "CREATE FUNCTION public.df_getcol() RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER "
                   "AS 'SELECT who FROM public.df_vcol'; RESET ROLE", dbname=db)
        # PostgreSQL's semantics: the column grant reads the view, and the view every tenant's rows
        assert sorted(pg.execute(f"SET ROLE {OWNER}; SELECT public.df_getcol()", dbname=db)) == [
            ("acme",), ("bigco",), ("bigco",)]
        log = _refusal(p)
        assert f"tenants.dfa: function public.df_getcol() runs with its owner's rights (SECURITY DEFINER) and its " \
               f"owner '{OWNER}' is not bound by row security (its body may: it reads public.df_vcol" in log, log
        pg.execute(f"REVOKE SELECT (who) ON public.df_vcol FROM {OWNER}", dbname=db)
        p.start(provision=False)
        p.stop()
    finally:
        _drop(pg, db)


def test_a_definer_trigger_on_a_table_writable_by_a_column_grant_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 22d R7: `GRANT UPDATE (v)` to the backend role fires a SECURITY DEFINER trigger (EXECUTE revoked
    from PUBLIC: a trigger's function runs without that check) that stamps every tenant's rows into the row; the
    trigger lookup asked for a table-level privilege only. The fix it prints (a table-level REVOKE, which revokes the
    column privileges too) lets the proxy start."""
    db, p = _lab(pg, tmp_path_factory, "dftrg")
    try:
        pg.execute(_BARE + "CREATE TABLE public.df_kv (k text, v text); INSERT INTO public.df_kv VALUES ('n', ''); "
                   f"GRANT SELECT, UPDATE (v) ON public.df_kv TO {BACKEND_ROLE}; "
                   "CREATE FUNCTION public.df_stamp() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS "
                   "$$BEGIN NEW.v := (SELECT string_agg(tenant_id, ',' ORDER BY tenant_id) FROM public.orders); "
                   "RETURN NEW; END$$; REVOKE EXECUTE ON FUNCTION public.df_stamp() FROM PUBLIC; "
                   "CREATE TRIGGER df_stamp BEFORE UPDATE ON public.df_kv FOR EACH ROW "
                   "EXECUTE FUNCTION public.df_stamp()", dbname=db)
        # PostgreSQL's semantics: the backend role's column UPDATE fires it
        assert pg.execute(f"SET ROLE {BACKEND_ROLE}; UPDATE public.df_kv SET v = 'x' RETURNING v",
                          dbname=db) == [("acme,bigco,bigco",)]
        log = _refusal(p)
        assert "tenants.dfa: function public.df_stamp() runs with its owner's rights" in log, log
        assert "(a trigger of public.df_kv, which it may write;" in log, log
        fix = f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.df_kv FROM {BACKEND_ROLE}"
        assert fix in log, log
        pg.execute(fix, dbname=db)
        p.start(provision=False)
        p.stop()
    finally:
        _drop(pg, db)


def test_a_definer_body_whose_owner_reads_a_foreign_table_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 22d R2: a plpgsql SECURITY DEFINER function whose owner may read a foreign table (its own user
    mapping: stored credentials) passed; the backend role could not read the foreign table itself, so nothing
    reported it."""
    db, p = _lab(pg, tmp_path_factory, "dffdw")
    su = pg.execute("SELECT current_user")[0][0]
    try:
        _owner(pg, db)
        pg.execute(_BARE + "CREATE EXTENSION postgres_fdw; "
                   f"CREATE SERVER df_loop2 FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname '{db}'); "
                   f"CREATE USER MAPPING FOR {OWNER} SERVER df_loop2 OPTIONS (user '{su}'); "
                   "CREATE FOREIGN TABLE public.df_ft2 (who text OPTIONS (column_name 'tenant_id')) SERVER df_loop2 "
                   "OPTIONS (schema_name 'public', table_name 'orders'); "
                   f"GRANT SELECT ON public.df_ft2 TO {OWNER}; SET ROLE {OWNER}; "
                   "CREATE FUNCTION public.df_getft() RETURNS SETOF text LANGUAGE plpgsql STABLE SECURITY DEFINER "
                   "AS $$BEGIN RETURN QUERY SELECT who FROM public.df_ft2; END$$; RESET ROLE", dbname=db)
        log = _refusal(p)
        assert f"tenants.dfa: function public.df_getft() runs with its owner's rights (SECURITY DEFINER) and its " \
               f"owner '{OWNER}' is not bound by row security (it may read public.df_ft2, which reads with stored " \
               "credentials" in log, log
        assert f"REVOKE SELECT ON public.df_ft2 FROM {OWNER}" in log, log
        pg.execute(f"REVOKE SELECT ON public.df_ft2 FROM {OWNER}", dbname=db)
        p.start(provision=False)
        p.stop()
    finally:
        _drop(pg, db)


_OPAQUE = """
CREATE MATERIALIZED VIEW public.df_mv AS SELECT id, tenant_id FROM public.orders;
CREATE FUNCTION public.df_inv() RETURNS SETOF text LANGUAGE sql STABLE AS 'SELECT tenant_id FROM public.df_mv';
CREATE VIEW public.df_via WITH (security_invoker = true) AS SELECT w AS who FROM public.df_inv() AS w;
CREATE FUNCTION pg_catalog.df_rinv() RETURNS SETOF text LANGUAGE sql STABLE AS 'SELECT tenant_id FROM public.df_mv';
CREATE VIEW public.df_via_pgc WITH (security_invoker = true) AS SELECT w AS who FROM pg_catalog.df_rinv() AS w;
"""


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_view_calling_an_opaque_function_is_warned_and_refused_by_the_proxy(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, mode: str
) -> None:
    """Red team 22d R4: a security_invoker view over a plain (not BEGIN ATOMIC) function reading the scoped
    materialized view showed every tenant's rows once the function was admitted, and the preflight said nothing: now
    a warning names it. (b) the same function made in pg_catalog after initdb was outside the proxy's reached list:
    the shared tenant read every tenant's rows through the view with no allow-list entry; now refused."""
    db, p = _lab(pg, tmp_path_factory, f"dfopq{mode[0]}")
    p.pool = {"pool_mode": mode}
    try:
        pg.execute(_BARE + _OPAQUE + "GRANT SELECT ON public.df_mv, public.df_via, public.df_via_pgc "
                   f"TO {BACKEND_ROLE}", dbname=db)
        # PostgreSQL's semantics: the function, run as the backend role, reads the materialized view unfiltered
        assert pg.execute(f"SET ROLE {BACKEND_ROLE}; SET pgtenant.tenant_id = 'acme'; "
                          "SELECT count(*) FROM public.df_via_pgc", dbname=db) == [(3,)]
        seen = len(p.log_events())
        p.start(provision=False)
        try:
            with psycopg.connect(p.dsn("dfa_alice"), autocommit=True) as c:
                assert c.execute("SELECT count(*) FROM df_mv").fetchall() == [(1,)]  # (the proxy filters it)
                for view, fn in (("df_via", "public.df_inv"), ("df_via_pgc", "pg_catalog.df_rinv")):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege) as got:
                        c.execute(f"SELECT who FROM public.{view}").fetchall()
                    assert f"function {fn}() is not allowed (reached by view public.{view};" in str(got.value)
                    assert "but the proxy does not filter what its body reads" in str(got.value)
        finally:
            p.stop()
        warnings = "\n".join(str(e.get("problem")) for e in p.log_events()[seen:]
                             if e.get("event") == "preflight_warning")
        for view, fn in (("df_via", "public.df_inv()"), ("df_via_pgc", "pg_catalog.df_rinv()")):
            assert (f"tenants.dfa: view public.{view} calls {fn}, whose body pgtenant cannot read") in warnings, \
                warnings
            assert "and public.df_mv, a tenant-scoped relation no row security filters" in warnings, warnings
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
