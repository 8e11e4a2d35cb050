"""The proxy refuses to start when PostgreSQL does not enforce the tenant boundary (unless overridden)."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import BACKEND_ROLE, ProxyProcess, prepare_backend, provision_output


def _start_expecting_failure(p: ProxyProcess) -> str:
    with pytest.raises(RuntimeError) as exc:
        p.start(provision=False)
    assert "pgtenant exited with 3" in str(exc.value)
    return str(exc.value)


def test_refuses_to_start_without_rls_and_runs_when_overridden(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    prepare_backend(pg)
    ProxyProcess(pg, tmp_path_factory.mktemp("prov")).provision()  # the backend role exists from here on
    db = pg.fresh_database("nrls")
    pg.execute(
        f"CREATE TABLE public.orders (id int, tenant_id text); GRANT CONNECT ON DATABASE {db} TO {BACKEND_ROLE};"
        f"GRANT SELECT ON public.orders TO {BACKEND_ROLE}; INSERT INTO public.orders VALUES (1, 'acme'), (2, 'b')",
        dbname=db,
    )
    tenant = {"strategy": "shared", "database": db, "tenant_id": "acme"}
    workdir = tmp_path_factory.mktemp("norls")
    p = ProxyProcess(pg, workdir, extra_tenants={"nrls": tenant}, extra_users={"nina": ("nrls", "nina-pw")})
    p.provision()  # provisions the default tenants only: the new database stays without RLS
    pg.execute("ALTER TABLE public.orders DISABLE ROW LEVEL SECURITY; DROP POLICY IF EXISTS pgtenant_isolation "
               "ON public.orders", dbname=db)
    log = _start_expecting_failure(p)
    assert "tenants.nrls: row-level security is not enabled on public.orders" in log
    assert "preflight.enforce = false" in log
    # Explicitly overridden: it starts, fences its rewrites, and the rewrite alone still isolates.
    p.preflight_enforce = False
    p.start(provision=False)
    try:
        assert any(e.get("event") == "rewrite_fenced" and e.get("tenant") == "nrls" for e in p.log_events())
        with psycopg.connect(p.dsn("nina")) as c:
            assert c.execute("SELECT id, tenant_id FROM orders").fetchall() == [(1, "acme")]
    finally:
        p.stop()


def test_refuses_a_permissive_policy_that_ignores_the_tenant(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Policies OR together: one more permissive policy that cannot depend on the tenant (a leftover
    USING (true)) opens every tenant's rows, so startup is refused; a restrictive one, or one for another role,
    is fine; one the preflight cannot read (a helper function) is not counted on: that table's filters are
    fenced, with a warning."""
    prepare_backend(pg)
    ProxyProcess(pg, tmp_path_factory.mktemp("prov2")).provision()
    db = pg.fresh_database("openpol")
    pg.execute(
        f"CREATE TABLE public.orders (id int, tenant_id text); GRANT CONNECT ON DATABASE {db} TO {BACKEND_ROLE};"
        "INSERT INTO public.orders VALUES (1, 'acme'), (2, 'b');"
        "CREATE FUNCTION public.cur_tenant() RETURNS text LANGUAGE sql STABLE "
        "AS $$ SELECT current_setting('pgtenant.tenant_id', true) $$",
        dbname=db,
    )
    tenant = {"strategy": "shared", "database": db, "tenant_id": "acme"}
    p = ProxyProcess(pg, tmp_path_factory.mktemp("openpol"), extra_tenants={"opn": tenant},
                     extra_users={"olga": ("opn", "olga-pw")})
    p.provision()  # RLS forced with the tenant policy
    pg.execute("CREATE ROLE pgt_auditor NOLOGIN; CREATE POLICY for_auditors ON public.orders TO pgt_auditor "
               "USING (true); CREATE POLICY only_small ON public.orders AS RESTRICTIVE USING (id < 100)", dbname=db)
    p.start(provision=False)  # neither of those opens the table to the backend role
    try:
        assert not any(e.get("event") == "rewrite_fenced" and e.get("tenant") == "opn" for e in p.log_events())
    finally:
        p.stop()
    pg.execute("CREATE POLICY by_helper ON public.orders USING (tenant_id = public.cur_tenant())", dbname=db)
    p.start(provision=False)
    try:
        events = p.log_events()
        assert any(e.get("event") == "rewrite_fenced" and e.get("tenant") == "opn" for e in events)
        assert any("policy 'by_helper' on public.orders is not of the form" in str(e.get("problem"))
                   for e in events if e.get("event") == "preflight_warning")
        with psycopg.connect(p.dsn("olga")) as c:
            assert c.execute("SELECT id, tenant_id FROM orders").fetchall() == [(1, "acme")]
    finally:
        p.stop()
    pg.execute("CREATE POLICY leftover ON public.orders USING (true)", dbname=db)
    log = _start_expecting_failure(p)
    assert "tenants.opn: policy 'leftover' on public.orders admits rows whatever the tenant (true)" in log


def test_refuses_a_superuser_backend_role(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    pg.execute("DROP ROLE IF EXISTS pgt_super; CREATE ROLE pgt_super LOGIN SUPERUSER PASSWORD 'super-pw'")
    p = ProxyProcess(
        pg, tmp_path_factory.mktemp("super"),
        extra_tenants={"sup": {"strategy": "database", "database": "initech", "backend_user": "pgt_super"}},
        extra_users={"sam": ("sup", "sam-pw")}, extra_roles={"pgt_super": "super-pw"},
    )
    p.provision()
    pg.execute("ALTER ROLE pgt_super SUPERUSER")  # provision made it NOSUPERUSER; an operator undid that
    log = _start_expecting_failure(p)
    assert "backend role 'pgt_super' is a superuser" in log


def test_metrics_basic_auth(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    workdir: Path = tmp_path_factory.mktemp("basic")
    p = ProxyProcess(pg, workdir)
    p.write_config()
    p.config_path.write_text(p.config_path.read_text().replace("[metrics]\n", '[metrics]\nbasic_auth_user = "prom"\n'))
    secrets = workdir / "secrets.toml"
    secrets.write_text('metrics_password = "scrape-pw"\n' + secrets.read_text())
    original_write = p.write_config
    p.write_config = lambda: None  # type: ignore[method-assign]  # keep the edited files
    try:
        p.start(provision=True)
    finally:
        p.write_config = original_write  # type: ignore[method-assign]
    try:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(p.metrics_url + "/metrics", timeout=5)
        assert exc.value.code == 401
        req = urllib.request.Request(p.metrics_url + "/metrics")
        req.add_header("Authorization", "Basic " + base64.b64encode(b"prom:scrape-pw").decode())
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and b"pgtenant_query_duration_seconds" in r.read()
        bad = urllib.request.Request(p.metrics_url + "/metrics")
        bad.add_header("Authorization", "Basic " + base64.b64encode(b"prom:wrong").decode())
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(bad, timeout=5)
    finally:
        p.stop()


def test_warns_when_the_backend_role_has_no_temp_file_limit(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Without temp_file_limit one tenant's statement can fill the server's disk with temporary files for every
    tenant (red team 7 F4): the preflight says so (provision sets it; the operator may have reset it)."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("tfl"))
    p.provision()
    pg.execute(f"ALTER ROLE {BACKEND_ROLE} RESET temp_file_limit")
    try:
        p.start(provision=False)
        try:
            problems = [str(e.get("problem")) for e in p.log_events() if e.get("event") == "preflight_warning"]
        finally:
            p.stop()
        assert any(f"backend role '{BACKEND_ROLE}' has no temp_file_limit" in w for w in problems), problems
    finally:
        p.provision()
    seen = len(p.log_events())  # (the log goes on from the first start)
    p.start(provision=False)
    try:
        problems = [str(e.get("problem")) for e in p.log_events()[seen:] if e.get("event") == "preflight_warning"]
    finally:
        p.stop()
    assert not any("temp_file_limit" in w for w in problems), problems


# Issue 14 (wp-dbshare): a database tenant whose database the shared tenant `dsa` (and the schema tenant `dsg`)
# share. Its statements are not rewritten: grants, roles and RLS are its only lock on their rows and schema.
DAN_ROLE, DAN_ROLE_PW = "pgt_dsh_dan", "dsh-dan-role-pw"
DAN = "dsh_dan"


def _sharing_proxy(pg: PgCluster, workdir: Path, db: str, *, schema_tenant: bool = False) -> ProxyProcess:
    tenants: dict[str, dict[str, object]] = {
        "dsa": {"strategy": "shared", "database": db, "tenant_id": "acme"},
        "dsd": {"strategy": "database", "database": db, "backend_user": DAN_ROLE},
    }
    users = {"dsh_alice": ("dsa", "dsh-alice-pw"), DAN: ("dsd", "dsh-dan-pw")}
    roles = {DAN_ROLE: DAN_ROLE_PW}
    if schema_tenant:
        tenants["dsg"] = {"strategy": "schema", "database": db, "schema": "dsg_s", "backend_user": "pgt_dsh_g"}
        roles["pgt_dsh_g"] = "dsh-g-pw"
    return ProxyProcess(pg, workdir, backend_sslmode="disable", extra_tenants=tenants, extra_users=users,
                        extra_roles=roles)


def _orders_db(pg: PgCluster, prefix: str) -> str:
    db = pg.fresh_database(prefix)
    pg.execute("CREATE TABLE public.orders (id int, tenant_id text); "
               "INSERT INTO public.orders VALUES (1, 'acme'), (2, 'bigco'), (3, 'bigco')", dbname=db)
    return db


def _refusals(p: ProxyProcess) -> list[str]:
    """The problems of a start the preflight refuses (this start's only: the log goes on from earlier ones)."""
    seen = len(p.log_events())
    _start_expecting_failure(p)
    return [str(e.get("problem")) for e in p.log_events()[seen:] if e.get("event") == "preflight_failed"]


def _count(p: ProxyProcess, user: str, db: str, sql: str) -> int:
    with psycopg.connect(p.dsn(user, dbname=db)) as c:
        row = c.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def _dan_reads(pg: PgCluster, p: ProxyProcess, db: str, sql: str) -> int:
    """What dan's backend role reads of a shared tenant's relation straight from PostgreSQL (the database's lock);
    through the proxy the relation is refused (`others_table`, red team 9a7 H3: the proxy's lock)."""
    with psycopg.connect(pg.dsn(user=DAN_ROLE, password=DAN_ROLE_PW, dbname=db)) as c:
        row = c.execute(sql).fetchone()
    assert row is not None
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="others_table"):
        _count(p, DAN, db, sql)
    return int(row[0])


def test_refuses_a_database_tenant_that_owns_or_reads_a_view_of_the_shared_tenants_rows(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The shared tenant's table is owned by a role dan's backend role is a member of (RLS enabled, not forced), and
    a view of it is readable by PUBLIC. The shared tenant's own preflight only warns (its rewrite filters both), but
    dan's backend role reads bigco's rows through both straight from PostgreSQL (the proxy refuses both relations to
    dan: `others_table`). Enforced, the start is refused naming each relation and the fix; once fixed, it starts and
    dan's role reads none of them."""
    prepare_backend(pg)
    db = _orders_db(pg, "dshown")
    p = _sharing_proxy(pg, tmp_path_factory.mktemp("dshown"), db)
    p.provision()  # roles; forced RLS and pgtenant's policy on public.orders
    pg.execute("DROP ROLE IF EXISTS pgt_dsh_owner; CREATE ROLE pgt_dsh_owner NOLOGIN", dbname=db)
    pg.execute(f"ALTER TABLE public.orders OWNER TO pgt_dsh_owner; ALTER TABLE public.orders NO FORCE ROW LEVEL "
               f"SECURITY; GRANT pgt_dsh_owner TO {DAN_ROLE}; CREATE VIEW public.orders_v AS SELECT * FROM "
               "public.orders; GRANT SELECT ON public.orders_v TO PUBLIC", dbname=db)
    try:
        p.preflight_enforce = False  # what the proxy did before: dan reads the shared tenants' rows
        p.start(provision=False)
        try:
            assert _dan_reads(pg, p, db, "SELECT count(*) FROM public.orders WHERE tenant_id = 'bigco'") == 2
            assert _dan_reads(pg, p, db, "SELECT count(*) FROM public.orders_v WHERE tenant_id = 'bigco'") == 2
        finally:
            p.stop()
        p.preflight_enforce = True
        refused = _refusals(p)
        assert (f"tenants.dsd: its backend role '{DAN_ROLE}' can read other tenants' rows of public.orders (tenant "
                "dsa: owner; row-level security not forced)") in refused[0], refused
        assert ("can read other tenants' rows of public.orders_v (tenant dsa: a view, which row-level security "
                "does not filter for it)") in refused[1], refused
        assert "REVOKE SELECT ON public.orders_v FROM PUBLIC" in refused[1], refused
        pg.execute(f"REVOKE pgt_dsh_owner FROM {DAN_ROLE}", dbname=db)
        assert [r for r in _refusals(p) if "public.orders " in r] == []
        pg.execute("REVOKE SELECT ON public.orders_v FROM PUBLIC", dbname=db)
        p.start(provision=False)
        try:
            assert _dan_reads(pg, p, db, "SELECT count(*) FROM public.orders") == 0
            assert _count(p, "dsh_alice", db, "SELECT count(*) FROM orders") == 1  # the shared tenant: its row
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                _count(p, DAN, db, "SELECT count(*) FROM public.orders_v")
        finally:
            p.stop()
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        pg.execute("DROP ROLE IF EXISTS pgt_dsh_owner")


def test_refuses_a_database_tenant_under_an_open_policy_or_with_a_schema_tenants_schema(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Policies for dan's backend role that do not check the tenant (the shared tenant's own preflight only warns
    of them: the proxy rewrites its statements): one keyed on a setting dan may SET (`app.tenant_id`, for PUBLIC:
    an application's own policy), one that ignores the tenant; and USAGE for PUBLIC on the schema tenant's
    schema. With the preflight not enforced dan reads bigco's rows, and his role reads the schema tenant's table.
    Enforced, each is refused by name; once fixed, it starts and dan reads none."""
    prepare_backend(pg)
    db = _orders_db(pg, "dshpol")
    p = _sharing_proxy(pg, tmp_path_factory.mktemp("dshpol"), db, schema_tenant=True)
    p.provision()
    pg.execute("CREATE POLICY app_pol ON public.orders USING (tenant_id = current_setting('app.tenant_id', true)); "
               "CREATE TABLE dsg_s.items (n int); INSERT INTO dsg_s.items VALUES (1); "
               "GRANT USAGE ON SCHEMA dsg_s TO PUBLIC; GRANT SELECT ON dsg_s.items TO PUBLIC", dbname=db)
    direct = pg.dsn(user=DAN_ROLE, password=DAN_ROLE_PW, dbname=db)
    bigco = "SELECT count(*) FROM public.orders WHERE tenant_id = 'bigco'"
    try:
        p.preflight_enforce = False
        p.start(provision=False)
        try:
            assert _dan_reads(pg, p, db, bigco) == 0
            with psycopg.connect(direct, autocommit=True) as c:  # any login may SET the policy's setting
                c.execute("SET app.tenant_id = 'bigco'")
                assert c.execute(bigco).fetchone() == (2,)
            pg.execute(f"CREATE POLICY dan_all ON public.orders TO {DAN_ROLE} USING (true)", dbname=db)
            assert _dan_reads(pg, p, db, bigco) == 2
        finally:
            p.stop()
        with psycopg.connect(direct) as c:  # the proxy hides the schema's name; PostgreSQL lets the role in
            assert c.execute("SELECT count(*) FROM dsg_s.items").fetchone() == (1,)
        p.preflight_enforce = True
        refused = _refusals(p)
        rows_of = (f"tenants.dsd: its backend role '{DAN_ROLE}' can read other tenants' rows of public.orders "
                   "(tenant dsa: ")
        assert any(rows_of + "policy 'dan_all' (true) ignores the tenant)" in r and "DROP that policy" in r
                   for r in refused), refused
        assert any(f"tenants.dsd: its backend role '{DAN_ROLE}' may use schema 'dsg_s' of tenant 'dsg'" in r
                   and "REVOKE USAGE ON SCHEMA dsg_s" in r for r in refused), refused
        pg.execute("DROP POLICY dan_all ON public.orders; REVOKE USAGE ON SCHEMA dsg_s FROM PUBLIC", dbname=db)
        refused = _refusals(p)  # (one reason per relation: the policy that opens it widest)
        assert len(refused) == 1 and rows_of + "policy 'app_pol' reads app.tenant_id, which any login can SET)" in (
            refused[0]), refused
        pg.execute("DROP POLICY app_pol ON public.orders", dbname=db)
        p.start(provision=False)
        try:
            assert _dan_reads(pg, p, db, "SELECT count(*) FROM public.orders") == 0
        finally:
            p.stop()
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")



def test_provision_gives_a_database_tenant_none_of_the_other_tenants_of_its_database(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Provision granted a database tenant every table of its `schemas` (default public) and the default privileges
    there, the shared tenants' view of their rows included (RLS does not filter a view), granted a schema tenant's
    schema listed in `schemas`, and made pgtenant's policy for a backend role the database tenant shares with a
    shared tenant (so its role reads what theirs reads). Now: the latter two are refused, the view is left out
    (and a view made later is not granted by default); a reload preflights it again."""
    prepare_backend(pg)
    db = _orders_db(pg, "dshprov")
    pg.execute("CREATE VIEW public.orders_v AS SELECT * FROM public.orders", dbname=db)
    workdir = tmp_path_factory.mktemp("dshprov")
    try:
        p = _sharing_proxy(pg, workdir / "schemas", db, schema_tenant=True)
        p.extra_tenants["dsd"]["schemas"] = ["public", "dsg_s"]
        code, out = provision_output(p)
        assert code == 3 and ("REFUSED: tenant dsd: schemas lists dsg_s, the schema of tenant dsg (schema strategy) "
                              "in the same database") in out, out
        p = _sharing_proxy(pg, workdir / "role", db)
        del p.extra_tenants["dsd"]["backend_user"]  # the backend's own role: the shared tenant's
        code, out = provision_output(p)
        assert code == 3 and (f"REFUSED: tenant dsd (database strategy) and tenant dsa (shared strategy) share "
                              f"database {db} and backend role {BACKEND_ROLE}") in out, out
        p = _sharing_proxy(pg, workdir / "ok", db)
        code, out = provision_output(p, "--dry-run")
        assert code == 0, out
        assert f'REVOKE ALL ON "public"."orders_v" FROM "{DAN_ROLE}";' in out
        assert f'ALTER DEFAULT PRIVILEGES IN SCHEMA "public" REVOKE ALL ON TABLES FROM "{DAN_ROLE}";' in out
        assert f'ALTER DEFAULT PRIVILEGES IN SCHEMA "public" GRANT SELECT ON TABLES TO "{DAN_ROLE}"' not in out
        assert provision_output(p)[0] == 0
        pg.execute("CREATE VIEW public.later_v AS SELECT * FROM public.orders", dbname=db)
        assert pg.execute("SELECT has_table_privilege(%s, 'public.orders', 'SELECT'), "
                          "has_table_privilege(%s, 'public.orders_v', 'SELECT'), "
                          "has_table_privilege(%s, 'public.later_v', 'SELECT')", (DAN_ROLE,) * 3,
                          dbname=db) == [(True, False, False)]
        p.start(provision=False)
        try:
            assert _dan_reads(pg, p, db, "SELECT count(*) FROM public.orders") == 0
            # a reload checks again: the later view opened to PUBLIC rejects it, the old config stays in force
            pg.execute("GRANT SELECT ON public.later_v TO PUBLIC", dbname=db)
            rejected = p.reload(expect="reload_rejected")
            assert ("tenants.dsd: its backend role 'pgt_dsh_dan' can read other tenants' rows of public.later_v "
                    "(tenant dsa: a view") in str(rejected.get("problem")), rejected
            assert _dan_reads(pg, p, db, "SELECT count(*) FROM public.orders") == 0
            pg.execute("REVOKE SELECT ON public.later_v FROM PUBLIC", dbname=db)
            p.reload(expect="reloaded")
        finally:
            p.stop()
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
