"""The owner's-rights check's small rules (red team 21d): schema USAGE counts only where a name is looked up (F4),
trusted_definers names an object as PostgreSQL resolves the name (F6), a LEAKPROOF function is refused (F9), objects
made in pg_catalog / information_schema after initdb are checked (F10), security_invoker as parse_bool reads it
(F11)."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.test_owner_rights import _BARE, _lab, _refusal, _refused_until_revoked
from tests.integration.test_preflight import _orders_db, _sharing_proxy
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import BACKEND_ROLE, prepare_backend

BI = "pgt_df_bi"


def test_an_owner_without_schema_usage_still_reads_through_a_view_refresh_or_atomic_body(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21d F4: USAGE on the schema revoked from the owner after it made a view, a materialized view and a
    BEGIN ATOMIC body over the schema tenant's table: PostgreSQL checks USAGE at name lookup only, so each still
    reads the table (the shared tenant read all of globex's rows), and the check passed them. A non-atomic body
    looks the name up when it runs: it reads nothing, and is not reported."""
    prepare_backend(pg)
    db = _orders_db(pg, "dfuse")
    p = _sharing_proxy(pg, tmp_path_factory.mktemp("dfuse"), db, schema_tenant=True)
    p.provision()
    pg.execute(f"DROP ROLE IF EXISTS {BI}; CREATE ROLE {BI} NOLOGIN")
    try:
        pg.execute(
            "CREATE TABLE dsg_s.secrets (v int); INSERT INTO dsg_s.secrets VALUES (41), (1779); "
            f"GRANT USAGE ON SCHEMA dsg_s TO {BI}; GRANT SELECT ON dsg_s.secrets TO {BI}; "
            f"GRANT CREATE ON SCHEMA public TO {BI}; SET ROLE {BI}; "
            "CREATE VIEW public.df_bi AS SELECT v FROM dsg_s.secrets; "
            "CREATE MATERIALIZED VIEW public.df_bim AS SELECT sum(v) AS total FROM dsg_s.secrets WITH NO DATA; "
            "CREATE FUNCTION public.df_bia() RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER "
            "BEGIN ATOMIC SELECT sum(v) FROM dsg_s.secrets; END; "
            "CREATE FUNCTION public.df_bip() RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER "
            "AS 'SELECT sum(v) FROM dsg_s.secrets'; "
            "GRANT SELECT ON public.df_bi, public.df_bim TO PUBLIC; RESET ROLE; "
            f"REVOKE USAGE ON SCHEMA dsg_s FROM {BI}; REFRESH MATERIALIZED VIEW public.df_bim", dbname=db)
        # PostgreSQL's semantics (as the owner, no USAGE): the stored queries and the atomic body read the table, a
        # REFRESH (above) did; a lookup fails
        assert pg.execute(f"SET ROLE {BI}; SELECT (SELECT sum(v) FROM public.df_bi), "
                          "(SELECT total FROM public.df_bim), public.df_bia()", dbname=db) == [(1820, 1820, 1820)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            pg.execute(f"SET ROLE {BI}; SELECT public.df_bip()", dbname=db)
        log = _refusal(p)
        for text in ("view public.df_bi reads its tables", "materialized view public.df_bim holds STORED rows",
                     "function public.df_bia() runs with its owner's rights"):
            assert f"tenants.dsa: {text}" in log, (text, log)
            assert f"its owner '{BI}' is not bound by row security (dsg_s.secrets: no row-level security)" in log
        # (df_bip looks dsg_s.secrets up when it runs: not reported for it; its body may read the owner's own
        # materialized view df_bim, whose stored rows leak: reported for that, review 21 F4's rule)
        bip = [line for line in log.splitlines() if "df_bip" in line]
        assert all("it reads public.df_bim" in line and "dsg_s.secrets" not in line for line in bip), bip
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {db}")
        pg.execute(f"DROP ROLE IF EXISTS {BI}")


_OVERLOADS = """
CREATE FUNCTION public.is_member(org text) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER AS 'SELECT true';
CREATE FUNCTION public.is_member(n int) RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER
  AS 'SELECT tenant_id FROM public.orders';
CREATE FUNCTION public."IS_MEMBER"(n int) RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER
  AS 'SELECT tenant_id FROM public.orders';
CREATE VIEW public."Is_Member" AS SELECT tenant_id AS who FROM public.orders;
GRANT SELECT ON public."Is_Member" TO PUBLIC;
"""


def test_trusted_definers_name_objects_as_postgresql_resolves_the_name(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21d F6: `trusted_definers = ["public.is_member"]` matched lower-cased schema.name, so it vouched for
    every overload, a function "IS_MEMBER" and a view "Is_Member" (a shared tenant read every tenant's rows from
    it). Now an entry names exactly that name (every overload of it, or the one its argument list gives)."""
    db, p = _lab(pg, tmp_path_factory, "dftrust")
    pg.execute(_BARE + _OVERLOADS, dbname=db)
    p.trusted_definers = ("public.is_member",)
    log = _refusal(p)
    assert "function public.IS_MEMBER(n integer) runs with its owner's rights" in log, log
    assert "view public.Is_Member reads its tables" in log, log
    assert "function public.is_member(" not in log, log
    p.trusted_definers = ("public.is_member(text)",)
    log = _refusal(p)
    assert "function public.is_member(n integer) runs with its owner's rights" in log, log
    assert "function public.is_member(org text)" not in log, log
    p.trusted_definers = ("public.is_member(text)", "public.is_member(integer)", 'Public."IS_MEMBER"',
                          'public."Is_Member"')
    p.start(provision=False)
    p.stop()
    warnings = [str(e.get("problem")) for e in p.log_events()
                if e.get("event") == "preflight_warning"]
    assert any("view public.Is_Member reads its tables" in w and "vouched for by [preflight] trusted_definers" in w
               for w in warnings), warnings


def test_a_leakproof_function_the_backend_role_may_run_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21d F9: PostgreSQL runs a LEAKPROOF function before row security's quals, so its NOTICE showed a
    shared tenant another tenant's values."""
    _refused_until_revoked(
        pg, tmp_path_factory, "dfleak",
        "CREATE FUNCTION public.df_peek(text) RETURNS boolean LANGUAGE plpgsql LEAKPROOF COST 0.0001 AS "
        "$$BEGIN RAISE NOTICE 'peek %', $1; RETURN true; END$$",
        ("function public.df_peek(text) is marked LEAKPROOF", "Fix: ALTER FUNCTION public.df_peek(text) NOT LEAKPROOF",
         "REVOKE EXECUTE ON FUNCTION public.df_peek(text) FROM PUBLIC"),
        "ALTER FUNCTION public.df_peek(text) NOT LEAKPROOF")


def test_objects_made_in_the_system_schemas_after_initdb_are_checked(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21d F10: a superuser's view in information_schema (and a SECURITY DEFINER function in pg_catalog)
    was outside the check. Only what initdb made there (oids below 16384) is PostgreSQL's own."""
    db, p = _lab(pg, tmp_path_factory, "dfsys")
    own = ("SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
           "        WHERE n.nspname IN ('pg_catalog', 'information_schema') AND c.oid >= 16384), "
           "       (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
           "        WHERE n.nspname IN ('pg_catalog', 'information_schema') AND p.oid >= 16384)")
    assert pg.execute(own, dbname=db) == [(0, 0)]  # initdb made every one of them (information_schema's views too)
    pg.execute(_BARE + "CREATE VIEW information_schema.df_list AS SELECT tenant_id AS who FROM public.orders; "
               "GRANT SELECT ON information_schema.df_list TO PUBLIC; "
               "CREATE FUNCTION pg_catalog.df_all() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER "
               "AS 'SELECT string_agg(tenant_id, '','') FROM public.orders'; "
               # (review 21 F3: a materialized view reaching the table through an invoker function made there)
               "CREATE FUNCTION pg_catalog.df_inv() RETURNS text LANGUAGE sql STABLE "
               "AS 'SELECT string_agg(tenant_id, '','') FROM public.orders'; "
               "CREATE MATERIALIZED VIEW public.df_sysmv AS SELECT pg_catalog.df_inv() AS who; "
               "GRANT SELECT ON public.df_sysmv TO PUBLIC", dbname=db)
    log = _refusal(p)
    assert "view information_schema.df_list reads its tables" in log, log
    assert "function pg_catalog.df_all() runs with its owner's rights" in log, log
    assert "materialized view public.df_sysmv holds STORED rows" in log, log
    pg.execute("DROP VIEW information_schema.df_list; DROP FUNCTION pg_catalog.df_all(); "
               "DROP MATERIALIZED VIEW public.df_sysmv; DROP FUNCTION pg_catalog.df_inv()", dbname=db)
    p.start(provision=False)
    p.stop()


def test_security_invoker_is_read_as_postgresql_reads_a_boolean(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21d F11: `security_invoker = 't'` (PostgreSQL's parse_bool: true) was refused as a definer view; a
    value parse_bool reads as false still is."""
    db, p = _lab(pg, tmp_path_factory, "dfbool")
    views = {"df_t": "t", "df_ye": "ye", "df_on": "ON", "df_1": "1", "df_of": "of"}
    pg.execute(_BARE + "".join(f"CREATE VIEW public.{v} WITH (security_invoker = '{b}') AS SELECT tenant_id AS who "
                               f"FROM public.orders; GRANT SELECT ON public.{v} TO PUBLIC; " for v, b in views.items()),
               dbname=db)
    log = _refusal(p)
    assert "view public.df_of reads its tables" in log, log
    assert not any(f"view public.{v} " in log for v in ("df_t", "df_ye", "df_on", "df_1")), log
    pg.execute("DROP VIEW public.df_of", dbname=db)
    p.start(provision=False)
    p.stop()


_UNFILTERED = """
CREATE MATERIALIZED VIEW public.df_mv_orders AS SELECT id, tenant_id FROM public.orders;
CREATE VIEW public.df_v_orders AS SELECT id, tenant_id FROM public.orders;
CREATE VIEW public.df_over_mv WITH (security_invoker = true) AS SELECT id FROM public.df_mv_orders;
CREATE VIEW public.df_over_v WITH (security_invoker = true) AS SELECT id FROM public.df_v_orders;
CREATE VIEW public.df_over_table WITH (security_invoker = true) AS SELECT id FROM public.orders;
"""


def test_a_view_over_a_scoped_relation_row_security_does_not_filter_is_refused(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Red team 21w W1: a security_invoker view over a tenant-scoped materialized view (or view: the tenant column
    makes each the proxy's to filter, row security never does) showed a shared tenant every tenant's rows: the proxy
    filters only the relations a statement names. The scoped ones themselves, and an invoker view over the forced-RLS
    table, pass."""
    db, p = _lab(pg, tmp_path_factory, "dfunf")
    pg.execute(_BARE + _UNFILTERED + "GRANT SELECT ON public.df_mv_orders, public.df_v_orders, public.df_over_mv, "
               f"public.df_over_v, public.df_over_table TO {BACKEND_ROLE}", dbname=db)
    # PostgreSQL's semantics: as the backend role with the shared tenant's setting, row security filters the
    # table and the invoker view over it, not the views over the scoped materialized view and view
    got = pg.execute(f"SET ROLE {BACKEND_ROLE}; SET pgtenant.tenant_id = 'acme'; "
                     "SELECT (SELECT count(*) FROM public.orders), (SELECT count(*) FROM public.df_over_table), "
                     "(SELECT count(*) FROM public.df_over_mv), (SELECT count(*) FROM public.df_over_v)", dbname=db)
    assert got == [(1, 1, 3, 3)], got
    log = _refusal(p)
    for name, what, inner in (("df_over_mv", "materialized view", "df_mv_orders"),
                              ("df_over_v", "view", "df_v_orders")):
        assert (f"tenants.dfa: view public.{name} is not tenant-scoped and its query reads a relation only the "
                f"proxy's rewrite filters (it reads public.{inner}, a tenant-scoped {what} no row security filters)"
                ) in log, (name, log)
        assert f"REVOKE SELECT ON public.{name} FROM {BACKEND_ROLE}" in log, log
    assert "df_over_table" not in log and "view public.df_mv_orders" not in log, log
    assert "view public.df_v_orders " not in log, log
    pg.execute(f"REVOKE SELECT ON public.df_over_mv, public.df_over_v FROM {BACKEND_ROLE}", dbname=db)
    p.start(provision=False)
    p.stop()
