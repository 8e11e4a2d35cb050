"""`pgtenant provision` never widens what a role other than pgtenant's backend roles can read, says what it would
break, prints its SQL with --dry-run, and the preflight finds what it refuses (real PostgreSQL, the real CLI)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import BACKEND_PASSWORD, BACKEND_ROLE, ProxyProcess, prepare_backend

TENANTS = ("acme", "globex")
ROWS = {"acme": 3, "globex": 5}
SETTINGS = ("pgtenant.tenant_id", "app.tenant_id")


class Db:
    """A fresh database with tenant tables, direct-login roles and a config for `pgtenant provision`."""

    def __init__(self, pg: PgCluster, workdir: Path) -> None:
        self.pg, self.workdir = pg, workdir
        self.name = pg.fresh_database("prov")
        tag = uuid.uuid4().hex[:8]
        self.analyst, self.reporting, self.app = f"analyst_{tag}", f"reporting_{tag}", f"app_{tag}"
        for role in (self.analyst, self.reporting, self.app):
            pg.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'direct-pw'").format(sql.Identifier(role)))
        rows = ", ".join(f"({i}, '{t}')" for t in TENANTS for i in range(ROWS[t]))
        self.run(f"""
            CREATE TABLE public.orders (id int, tenant_id text NOT NULL);
            INSERT INTO public.orders VALUES {rows};
            CREATE TABLE public.customers (id int, tenant_id text NOT NULL);
            INSERT INTO public.customers VALUES {rows};
            GRANT SELECT ON public.orders TO PUBLIC;
            GRANT SELECT ON public.customers TO {self.analyst}, {self.app};
        """)

    def run(self, text: str) -> list[tuple[Any, ...]]:
        return self.pg.execute(text, dbname=self.name)

    def write_config(self, *, setting: str = "pgtenant.tenant_id", extra: str = "") -> Path:
        lines = [
            'secrets_file = "secrets.toml"',
            "[backends.main]", f'host = "{self.pg.host}"', f"port = {self.pg.port}", f'user = "{BACKEND_ROLE}"',
        ]
        for t in TENANTS:
            lines += [f"[tenants.{t}]", 'strategy = "shared"', f'database = "{self.name}"', f'tenant_id = "{t}"',
                      f'tenant_setting = "{setting}"']
        path = self.workdir / "pgtenant.toml"
        path.write_text("\n".join(lines) + "\n" + extra)
        (self.workdir / "secrets.toml").write_text(f'[backends]\nmain = "{BACKEND_PASSWORD}"\n')
        return path

    def provision(self, *args: str, setting: str = "pgtenant.tenant_id") -> subprocess.CompletedProcess[str]:
        config = self.write_config(setting=setting)
        return subprocess.run(
            [sys.executable, "-m", "proxy", "provision", "--config", str(config), "--admin-dsn", self.pg.dsn(), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )

    def visible(self, role: str, table: str = "orders") -> set[tuple[str, str | None, str | None]]:
        """Every (tenant_id, pgtenant.tenant_id, app.tenant_id) a direct login as `role` can read, whatever it SETs."""
        seen: set[tuple[str, str | None, str | None]] = set()
        with psycopg.connect(self.pg.dsn(role, "direct-pw", self.name, host="127.0.0.1"), autocommit=True) as c:
            for values in itertools.product((None, *TENANTS), repeat=2):
                for name, value in zip(SETTINGS, values, strict=True):
                    c.execute("SELECT set_config(%s, %s, false)", (name, value or ""))
                try:
                    rows = c.execute(f"SELECT DISTINCT tenant_id FROM public.{table}").fetchall()
                except psycopg.errors.InsufficientPrivilege:
                    rows = []
                seen |= {(r[0], *values) for r in rows}
        return seen

    def backend_sees(self, setting: str, tenant: str) -> list[tuple[str, int]]:
        """What pgtenant's backend role reads with `setting` pinned to `tenant` (as the proxy connects)."""
        dsn = self.pg.dsn(BACKEND_ROLE, BACKEND_PASSWORD, self.name, host="127.0.0.1", options=f"-c {setting}={tenant}")
        with psycopg.connect(dsn) as c:
            return c.execute("SELECT tenant_id, count(*)::int FROM public.orders GROUP BY 1").fetchall()

    def catalogs(self) -> list[Any]:
        """Everything provision may change, to compare before and after."""
        return [
            self.run("SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, c.relacl::text FROM pg_class c "
                     "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' ORDER BY 1"),
            self.run("SELECT polrelid::regclass::text, polname, polroles::regrole[]::text, "
                     "pg_get_expr(polqual, polrelid), oid FROM pg_policy ORDER BY 1, 2"),
            self.run("SELECT nspname, nspacl::text FROM pg_namespace ORDER BY 1"),
            self.run("SELECT defaclrole, defaclnamespace, defaclacl::text FROM pg_default_acl ORDER BY 1, 2"),
            self.pg.execute("SELECT rolname, rolsuper, rolbypassrls, rolcanlogin, rolpassword FROM pg_authid "
                            "ORDER BY 1"),
            self.pg.execute("SELECT datname, datacl::text FROM pg_database ORDER BY 1"),
        ]

    def direct_roles(self) -> tuple[str, ...]:
        return (self.analyst, self.reporting, self.app)


@pytest.fixture
def db(pg: PgCluster, tmp_path: Path) -> Db:
    prepare_backend(pg)
    return Db(pg, tmp_path)


def _others(seen: set[tuple[str, str | None, str | None]], role_tenant: str | None = None) -> set[str]:
    return {row[0] for row in seen if row[0] != role_tenant}


def test_public_and_analyst_without_rls_refused_then_forced(db: Db) -> None:
    """Tables readable by PUBLIC and an analyst, no RLS: provision refuses (they would lose their rows) and
    changes nothing; --dry-run prints the SQL and changes nothing; --force proceeds loudly, and afterwards no
    direct login reads any row whatever it SETs, while the backend role reads exactly its tenant. Twice is once."""
    before = {role: db.visible(role) for role in db.direct_roles()}
    assert _others(before[db.reporting]) == set(TENANTS)  # the database was open to every login already
    catalogs = db.catalogs()

    dry = db.provision("--dry-run")
    assert dry.returncode == 3, dry.stderr
    assert "CREATE POLICY \"pgtenant_isolation\" ON \"public\".\"orders\" AS PERMISSIVE FOR ALL TO " \
           f"\"{BACKEND_ROLE}\"" in dry.stdout
    assert f"\\connect \"{db.name}\"" in dry.stdout and "PUBLIC" not in dry.stdout.split("\\connect")[-1]
    refused = db.provision()
    assert refused.returncode == 3
    assert "PROBLEM: public.orders: PUBLIC (every role) reads it today (no row-level security)" in refused.stderr
    assert f"PROBLEM: public.customers: role {db.analyst} reads it today" in refused.stderr
    assert "nothing was changed" in refused.stderr
    assert db.catalogs() == catalogs

    forced = db.provision("--force")
    assert forced.returncode == 0, forced.stderr
    assert "WARNING (--force): public.orders: PUBLIC (every role) reads it today" in forced.stderr
    assert "PROCEEDING DESPITE 3 PROBLEM(S)" in forced.stderr  # PUBLIC on orders; analyst and app on customers
    for role in db.direct_roles():
        assert db.visible(role) == set()
        assert db.visible(role, "customers") == set()
    for tenant in TENANTS:
        assert db.backend_sees("pgtenant.tenant_id", tenant) == [(tenant, ROWS[tenant])]
    provisioned = db.catalogs()
    dry = db.provision("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "ENABLE ROW LEVEL SECURITY" in dry.stdout and "CREATE POLICY" not in dry.stdout  # the policy is current
    assert db.catalogs() == provisioned
    again = db.provision()  # nobody reads without a policy any more: nothing to refuse, nothing to change
    assert again.returncode == 0, again.stderr
    assert "PROBLEM" not in again.stderr and "role pgtenant_backend: unchanged" in again.stdout
    assert db.catalogs() == provisioned


def test_old_policy_to_public_is_replaced(db: Db) -> None:
    """What an earlier provision made (pgtenant_isolation TO PUBLIC) let any login choose its tenant: the preflight
    refuses to start on it, and provision replaces it with one for pgtenant's roles, saying it closed a hole."""
    db.run("ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY; ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;"
           "CREATE POLICY pgtenant_isolation ON public.orders TO PUBLIC "
           "USING (tenant_id::text = current_setting('pgtenant.tenant_id', true));"
           "REVOKE SELECT ON public.customers FROM " + db.analyst + ", " + db.app)
    assert _others(db.visible(db.reporting)) == set(TENANTS)
    log = _preflight_refuses(db)
    assert "policy 'pgtenant_isolation' on public.orders applies to PUBLIC besides pgtenant's backend roles" in log
    res = db.provision()
    assert res.returncode == 0, res.stderr
    assert "note: public.orders: closes what an earlier pgtenant provision opened: PUBLIC (every role)" in res.stderr
    for role in db.direct_roles():
        assert db.visible(role) == set()
    assert db.backend_sees("pgtenant.tenant_id", "globex") == [("globex", ROWS["globex"])]


def test_existing_app_policy(db: Db) -> None:
    """A SaaS's own policy keyed on app.tenant_id TO PUBLIC: any login can already SET app.tenant_id. Provision
    refuses, says how to reuse the setting and when that is safe; --force proceeds without widening anything.
    Once the policy is for the application's role only (--trust it), provision runs without --force with
    tenant_setting = app.tenant_id, and no direct login reads another tenant through either setting."""
    db.run("ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY; ALTER TABLE public.customers ENABLE ROW LEVEL "
           "SECURITY; CREATE POLICY tenant_isolation ON public.orders USING (tenant_id = current_setting("
           "'app.tenant_id', true)); CREATE POLICY tenant_isolation ON public.customers USING (tenant_id = "
           "current_setting('app.tenant_id', true))")
    before = {role: db.visible(role) for role in db.direct_roles()}
    before_customers = {role: db.visible(role, "customers") for role in db.direct_roles()}
    assert _others(before[db.analyst]) == set(TENANTS)
    res = db.provision()
    assert res.returncode == 3
    assert ("PROBLEM: public.orders: PUBLIC (every role) can read other tenants' rows directly, without a tenant "
            "check it cannot forge (policy 'tenant_isolation' reads app.tenant_id, which any login can SET)"
            ) in res.stderr
    assert 'set tenant_setting = "app.tenant_id" on the shared tenants of this database. That is safe when' \
           in res.stderr
    forced = db.provision("--force")
    assert forced.returncode == 0, forced.stderr
    for role in db.direct_roles():  # nothing gained through pgtenant's setting; the database's own hole remains
        assert db.visible(role) <= before[role]
        assert db.visible(role, "customers") <= before_customers[role]
    log = _preflight_warns(db)
    assert "PUBLIC (every role) can read other tenants' rows of public.orders directly" in log

    # The fix: the application's policy for the application's role only; pgtenant reuses app.tenant_id.
    db.run(f"ALTER POLICY tenant_isolation ON public.orders TO {db.app};"
           f"ALTER POLICY tenant_isolation ON public.customers TO {db.app}")
    res = db.provision(setting="app.tenant_id")
    assert res.returncode == 3 and f"role {db.app} can read other tenants' rows directly" in res.stderr
    res = db.provision("--trust", db.app, setting="app.tenant_id")
    assert res.returncode == 0, res.stderr
    assert f"note: public.orders: role {db.app} (--trust) reads other tenants' rows directly" in res.stderr
    for role in (db.analyst, db.reporting):
        assert db.visible(role) == set() and db.visible(role, "customers") == set()
    assert _others(db.visible(db.app)) == set(TENANTS)  # the application still works as before
    for tenant in TENANTS:
        assert db.backend_sees("app.tenant_id", tenant) == [(tenant, ROWS[tenant])]
        assert db.backend_sees("pgtenant.tenant_id", tenant) == []


def test_member_of_backend_role_is_refused_even_with_force(db: Db) -> None:
    """A role that is a member of pgtenant's backend role would get pgtenant's policy and choose its tenant: never
    provisioned over, even with --force, and the preflight refuses to start."""
    proxy = _preflight(db)  # the default tenants provisioned before the membership exists
    db.pg.execute(f"GRANT {BACKEND_ROLE} TO {db.analyst}")
    try:
        db.run(f"REVOKE SELECT ON public.orders FROM PUBLIC; REVOKE SELECT ON public.customers FROM {db.analyst}, "
               f"{db.app}")
        catalogs = db.catalogs()
        res = db.provision("--force")
        assert res.returncode == 3
        assert f"REFUSED: role {db.analyst} is a member of pgtenant's backend role {BACKEND_ROLE}" in res.stderr
        assert db.catalogs() == catalogs
        db.run("ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY; CREATE POLICY pgtenant_isolation ON "
               f"public.orders TO {BACKEND_ROLE} USING (tenant_id = current_setting('pgtenant.tenant_id', true))")
        log = _preflight_refuses(db, proxy)
        assert f"role '{db.analyst}' is a member of the backend role '{BACKEND_ROLE}'" in log
    finally:
        db.pg.execute(f"REVOKE {BACKEND_ROLE} FROM {db.analyst}")


def test_database_tenant_schemas(pg: PgCluster, tmp_path: Path) -> None:
    """A database tenant whose data is in `sales` gets USAGE and SELECT there (writes with allow_writes), not on
    public; the dry run changes nothing."""
    prepare_backend(pg)
    dbname = pg.fresh_database("provdb")
    pg.execute("CREATE SCHEMA sales; CREATE TABLE sales.orders (id int); CREATE TABLE public.notes (id int)",
               dbname=dbname)
    role = f"pgt_role_{uuid.uuid4().hex[:8]}"
    (tmp_path / "pgtenant.toml").write_text(
        f'secrets_file = "secrets.toml"\n[backends.main]\nhost = "{pg.host}"\nport = {pg.port}\n'
        f'[tenants.dbt]\nstrategy = "database"\ndatabase = "{dbname}"\nschemas = ["sales"]\nallow_writes = true\n'
        f'backend_user = "{role}"\n'
    )
    (tmp_path / "secrets.toml").write_text(f'[backends]\nmain = "x"\n[roles]\n{role} = "role-pw"\n')
    argv = [sys.executable, "-m", "proxy", "provision", "--config", str(tmp_path / "pgtenant.toml"),
            "--admin-dsn", pg.dsn()]
    dry = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, timeout=120, check=False)
    assert dry.returncode == 0, dry.stderr
    assert f'GRANT USAGE ON SCHEMA "sales" TO "{role}"' in dry.stdout and "PASSWORD '…'" in dry.stdout
    assert "role-pw" not in dry.stdout and not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert f"tenant dbt: {role} may read and write schema sales" in res.stdout
    privileges = pg.execute(
        "SELECT has_schema_privilege(%s, 'sales', 'USAGE'), has_table_privilege(%s, 'sales.orders', 'SELECT'), "
        "has_table_privilege(%s, 'sales.orders', 'INSERT'), has_table_privilege(%s, 'public.notes', 'SELECT')",
        (role,) * 4, dbname=dbname,
    )
    assert privileges == [(True, True, True, False)]
    # provision makes a missing schema of the key (empty); the preflight says when one is gone again
    proxy = ProxyProcess(pg, tmp_path / "proxy", extra_roles={role: "role-pw"}, extra_tenants={"dbt": {
        "strategy": "database", "database": dbname, "schemas": ["sales", "nosuch"], "backend_user": role}})
    proxy.provision()
    pg.execute("DROP SCHEMA nosuch", dbname=dbname)
    proxy.start(provision=False)
    try:
        warnings = [str(e.get("problem")) for e in proxy.log_events() if e.get("event") == "preflight_warning"]
    finally:
        proxy.stop()
    assert f"tenants.dbt.schemas: schema 'nosuch' does not exist in '{dbname}'" in warnings


def _preflight(db: Db) -> ProxyProcess:
    ProxyProcess(db.pg, db.workdir / "defaults").provision()  # the default tenants' roles and grants
    tenant = {"strategy": "shared", "database": db.name, "tenant_id": "acme"}
    return ProxyProcess(db.pg, db.workdir / "proxy", extra_tenants={"pv": tenant})


def _preflight_refuses(db: Db, proxy: ProxyProcess | None = None) -> str:
    with pytest.raises(RuntimeError) as exc:
        (proxy or _preflight(db)).start(provision=False)
    assert "pgtenant exited with 3" in str(exc.value)
    return str(exc.value)


def _preflight_warns(db: Db) -> str:
    p = _preflight(db).start(provision=False)
    try:
        return "\n".join(str(e.get("problem")) for e in p.log_events() if e.get("event") == "preflight_warning")
    finally:
        p.stop()


def test_backend_roles_get_a_temp_file_limit_they_cannot_lift(db: Db) -> None:
    """limits.temp_file_limit (default 5GB, red team 7 F4): provision sets it on every backend role (a superuser-only
    setting: the role's sessions cannot change it), once; a statement past it fails on the server."""
    db.pg.execute(sql.SQL("ALTER ROLE {} RESET temp_file_limit").format(sql.Identifier(BACKEND_ROLE)))
    forced = db.provision("--force")
    assert forced.returncode == 0, forced.stderr
    assert f"role {BACKEND_ROLE}: temp_file_limit = 5GB" in forced.stdout
    dsn = db.pg.dsn(BACKEND_ROLE, BACKEND_PASSWORD, db.name, host="127.0.0.1")
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("SHOW temp_file_limit").fetchone() == ("5GB",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SET temp_file_limit = -1")
    again = db.provision()
    assert again.returncode == 0, again.stderr
    assert f"role {BACKEND_ROLE}: temp_file_limit unchanged (5GB)" in again.stdout
