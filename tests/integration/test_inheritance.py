"""Inheritance (red team 21d F3): `SELECT … FROM parent` without ONLY reads every child's rows under the PARENT's
row security. A parent with no tenant column over a child with the tenant column (in any schema) holds every
tenant's rows: provision grants a database tenant sharing the database none of it, the proxy refuses its reference,
and the preflight refuses a backend role that can read it and a definer view over it. A partitioned table, a parent
with the tenant column and a parent of unscoped children are unaffected. A schema tenant sharing schema public gets
no relation there with the tenant column that no forced RLS filters (red team 21w W4).
Both pool modes where the proxy serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.test_owner_rights import _refusal
from tests.support.pgcluster import SUPERUSER, SUPERUSER_PASSWORD, PgCluster
from tests.support.proxyproc import BACKEND_ROLE, ProxyProcess, prepare_backend, provision_output, provisioned_per_mode

MODES = ("transaction", "session")
DAN_ROLE, DAN_ROLE_PW, DAN, ALICE = "pgt_inh_dan", "inh-dan-role-pw", "inh_dan", "inh_alice"
GINA_ROLE, GINA = "pgt_inh_gina", "inh_gina"  # a schema tenant that shares schema public (read only)
SCHEMA = """
CREATE TABLE public.notes_base (id int, body text);
CREATE TABLE public.tenant_notes (tenant_id text NOT NULL) INHERITS (public.notes_base);
INSERT INTO public.notes_base VALUES (0, 'base note');
INSERT INTO public.tenant_notes VALUES (1, 'acme note', 'acme'), (2, 'BIGCO-SECRET-NOTE', 'bigco');
CREATE TABLE public.keyed_base (id int, tenant_id text NOT NULL);
CREATE TABLE public.keyed_child (extra text) INHERITS (public.keyed_base);
INSERT INTO public.keyed_child VALUES (1, 'acme', 'x'), (2, 'bigco', 'y');
CREATE TABLE public.events (id int, tenant_id text NOT NULL) PARTITION BY LIST (tenant_id);
CREATE TABLE public.events_acme PARTITION OF public.events FOR VALUES IN ('acme');
CREATE TABLE public.events_other PARTITION OF public.events DEFAULT;
INSERT INTO public.events VALUES (1, 'acme'), (2, 'bigco'), (3, 'bigco');
CREATE TABLE public.plain_base (id int);
CREATE TABLE public.plain_child (note text) INHERITS (public.plain_base);
INSERT INTO public.plain_base VALUES (1); INSERT INTO public.plain_child VALUES (2, 'b');
CREATE SCHEMA arch;
CREATE TABLE public.arch_base (id int, body text);
CREATE TABLE arch.old_notes (tenant_id text NOT NULL) INHERITS (public.arch_base);
INSERT INTO arch.old_notes VALUES (1, 'acme old', 'acme'), (2, 'BIGCO-SECRET-ARCH', 'bigco');
CREATE MATERIALIZED VIEW public.notes_mv AS SELECT id, body, tenant_id FROM public.tenant_notes;
""" + f"""
CREATE EXTENSION postgres_fdw;
DO $$ BEGIN EXECUTE pg_catalog.format('CREATE SERVER inh_loop FOREIGN DATA WRAPPER postgres_fdw OPTIONS '
  '(host %L, port %L, dbname %L)', '127.0.0.1', pg_catalog.current_setting('port'), pg_catalog.current_database());
END $$;
CREATE USER MAPPING FOR PUBLIC SERVER inh_loop OPTIONS (user '{SUPERUSER}', password '{SUPERUSER_PASSWORD}');
CREATE SCHEMA rpt;
CREATE TABLE public.refs (id int, body text);
INSERT INTO public.refs VALUES (0, 'ref row');
CREATE FOREIGN TABLE rpt.ft_refs_child () INHERITS (public.refs) SERVER inh_loop
  OPTIONS (schema_name 'public', table_name 'tenant_notes');
CREATE TABLE public.ref_parts (id int, body text) PARTITION BY RANGE (id);
CREATE FOREIGN TABLE rpt.ft_part PARTITION OF public.ref_parts FOR VALUES FROM (0) TO (100) SERVER inh_loop
  OPTIONS (schema_name 'public', table_name 'tenant_notes');
"""


def _proxy(pg: PgCluster, workdir: Path, db: str, mode: str = "transaction") -> ProxyProcess:
    return ProxyProcess(
        pg, workdir, backend_sslmode="disable", pool={"pool_mode": mode},
        extra_tenants={"inha": {"strategy": "shared", "database": db, "tenant_id": "acme"},
                       "inhd": {"strategy": "database", "database": db, "backend_user": DAN_ROLE},
                       "inhg": {"strategy": "schema", "database": db, "schema": "inh_gina_s",
                                "backend_user": GINA_ROLE, "shared_schemas": ["public"]}},
        extra_users={ALICE: ("inha", "inh-alice-pw"), DAN: ("inhd", "inh-dan-pw"), GINA: ("inhg", "inh-gina-pw")},
        extra_roles={DAN_ROLE: DAN_ROLE_PW, GINA_ROLE: "inh-gina-role-pw"})


@pytest.fixture(scope="module")
def lab(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, ProxyProcess]]]:
    prepare_backend(pg)
    yield from provisioned_per_mode(
        pg, "inh", SCHEMA, lambda db, mode: _proxy(pg, tmp_path_factory.mktemp(f"inh-{mode}"), db, mode), MODES)


def _rows(p: ProxyProcess, user: str, db: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(p.dsn(user, dbname=db), autocommit=True) as c:
        return c.execute(sql).fetchall()


def test_provision_grants_the_database_tenant_no_parent_of_their_tables(
    pg: PgCluster, lab: tuple[str, dict[str, ProxyProcess]]
) -> None:
    """`GRANT SELECT ON ALL TABLES IN SCHEMA public` covered the parent: dan read bigco's note from PostgreSQL."""
    db, _ = lab
    granted = pg.execute(
        f"SELECT has_table_privilege('{DAN_ROLE}', 'public.notes_base', 'SELECT'), "
        f"has_table_privilege('{DAN_ROLE}', 'public.plain_base', 'SELECT'), "
        f"has_table_privilege('{BACKEND_ROLE}', 'public.notes_base', 'SELECT'), "
        f"has_table_privilege('{GINA_ROLE}', 'public.notes_base', 'SELECT'), "
        f"has_table_privilege('{GINA_ROLE}', 'public.plain_base', 'SELECT')", dbname=db)
    assert granted == [(False, True, False, False, True)]  # a parent of unscoped children stays readable


@pytest.mark.parametrize("mode", MODES)
def test_the_schema_tenant_sharing_the_schema_cannot_read_the_parent(
    lab: tuple[str, dict[str, ProxyProcess]], mode: str
) -> None:
    """Provision's `GRANT SELECT ON ALL TABLES IN SCHEMA public` to gina covered the parent: she read bigco's note."""
    db, proxies = lab
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _rows(proxies[mode], GINA, db, "SELECT body FROM public.notes_base")
    assert _rows(proxies[mode], GINA, db, "SELECT id FROM public.plain_base ORDER BY 1") == [(1,), (2,)]


# Every way but ONLY of naming the parent, and ONLY where no rows are read or changed (LOCK, TRUNCATE, COPY)
WITHOUT_ONLY = ("SELECT body FROM public.notes_base ORDER BY 1", "SELECT body FROM notes_base",
                "SELECT body FROM public.notes_base*", "TABLE notes_base",
                "SELECT o.id FROM ONLY notes_base o JOIN notes_base a ON a.id = o.id",
                "SELECT id FROM ONLY notes_base WHERE id IN (SELECT id FROM notes_base)",
                "UPDATE public.notes_base SET body = body", "DELETE FROM notes_base WHERE id = -1",
                "INSERT INTO public.notes_base VALUES (-1, 'x')", "TRUNCATE ONLY public.notes_base",
                "LOCK TABLE ONLY public.notes_base IN ACCESS SHARE MODE", "COPY public.notes_base TO STDOUT")


@pytest.mark.parametrize("mode", MODES)
def test_the_database_tenant_cannot_read_the_parent(lab: tuple[str, dict[str, ProxyProcess]], mode: str) -> None:
    db, proxies = lab
    for sql in WITHOUT_ONLY:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            _rows(proxies[mode], DAN, db, sql)
        assert "\"notes_base\" holds other tenants' rows" in str(info.value), (sql, info.value)  # the proxy's
    # ONLY: the proxy lets it through, PostgreSQL refuses it (provision granted dan none of the parent)
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        _rows(proxies[mode], DAN, db, "SELECT body FROM ONLY public.notes_base")
    assert "permission denied for table notes_base" in str(info.value), info.value
    assert _rows(proxies[mode], DAN, db, "SELECT id FROM public.plain_base ORDER BY 1") == [(1,), (2,)]


@pytest.mark.parametrize("mode", MODES)
def test_the_database_tenant_reads_only_the_parents_own_rows_where_granted(
    pg: PgCluster, lab: tuple[str, dict[str, ProxyProcess]], mode: str
) -> None:
    """wp-def21b: the proxy refused `FROM ONLY parent` (others_table) though it reads the parent's own rows only,
    planned from the parent's own statistics. Granted SELECT on the parent after the start (the preflight refuses
    that grant at a start or reload: PostgreSQL would then return the children's rows without ONLY), dan reads its
    own rows with ONLY, and every other way of naming it stays the proxy's refusal. UPDATE / DELETE ONLY: as for a
    table without the tenant column (dan is read only here: `read_only`, not `others_table`)."""
    db, proxies = lab
    p = proxies[mode]
    pg.execute(f"GRANT SELECT ON public.notes_base TO {DAN_ROLE}", dbname=db)
    try:
        assert _rows(p, DAN, db, "SELECT id, body FROM ONLY public.notes_base ORDER BY 1") == [(0, "base note")]
        assert _rows(p, DAN, db, "SELECT id, body FROM ONLY (notes_base) ORDER BY 1") == [(0, "base note")]
        assert _rows(p, DAN, db, "TABLE ONLY notes_base") == [(0, "base note")]
        for sql in WITHOUT_ONLY:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                _rows(p, DAN, db, sql)
            assert "\"notes_base\" holds other tenants' rows" in str(info.value), (sql, info.value)
        for sql, plain in (("UPDATE ONLY public.notes_base SET body = body", "UPDATE public.plain_base SET id = id"),
                           ("DELETE FROM ONLY notes_base WHERE id = -1", "DELETE FROM plain_base WHERE id = -1")):
            for stmt in (sql, plain):
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as ro:
                    _rows(p, DAN, db, stmt)
                assert "not allowed for this read-only role" in str(ro.value), (stmt, ro.value)
    finally:
        pg.execute(f"REVOKE SELECT ON public.notes_base FROM {DAN_ROLE}", dbname=db)


@pytest.mark.parametrize("mode", MODES)
def test_partitions_and_keyed_parents_keep_working(lab: tuple[str, dict[str, ProxyProcess]], mode: str) -> None:
    db, proxies = lab
    p = proxies[mode]
    assert _rows(p, ALICE, db, "SELECT id, tenant_id FROM public.events ORDER BY 1") == [(1, "acme")]
    assert _rows(p, ALICE, db, "SELECT id, tenant_id FROM public.keyed_base ORDER BY 1") == [(1, "acme")]
    assert _rows(p, ALICE, db, "SELECT id, body FROM public.tenant_notes ORDER BY 1") == [(1, "acme note")]


@pytest.fixture
def refusing(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ProxyProcess]]:
    """A provisioned database of SCHEMA and a proxy (not started) for a refused start."""
    prepare_backend(pg)
    db = pg.fresh_database("inhpf")
    try:
        pg.execute(SCHEMA, dbname=db)
        p = _proxy(pg, tmp_path_factory.mktemp("inhpf"), db)
        p.provision()
        yield db, p
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_a_definer_view_over_the_parent_is_refused(pg: PgCluster, refusing: tuple[str, ProxyProcess]) -> None:
    """Its owner (the superuser) reads the child's rows of every tenant through the parent: alice and dan read
    bigco's note from it (pg_depend names the parent only, which was not scoped)."""
    db, p = refusing
    pg.execute("CREATE VIEW public.all_notes AS SELECT id, body FROM public.notes_base; "
               "GRANT SELECT ON public.all_notes TO PUBLIC", dbname=db)
    log = _refusal(p)
    assert "tenants.inha: view public.all_notes reads its tables with its owner's rights" in log, log
    assert "tenants.inhd: view public.all_notes reads its tables with its owner's rights" in log, log
    code, out = provision_output(p)
    assert code != 0 and "view public.all_notes reads its tables" in out, out
    pg.execute("ALTER VIEW public.all_notes SET (security_invoker = true)", dbname=db)
    p.start(provision=False)
    p.stop()


def test_a_definer_view_over_only_the_parent_is_let_start(pg: PgCluster, refusing: tuple[str, ProxyProcess]) -> None:
    """Red team 21w W10: a definer view (and a materialized view) reading `ONLY parent` reads the parent's own rows
    only (its stored query's range table entry is `:inh false`), none of a child's: it refused the start."""
    db, p = refusing
    pg.execute("CREATE VIEW public.own_notes AS SELECT id, body FROM ONLY public.notes_base; "
               "CREATE VIEW public.own_arch AS SELECT id FROM ONLY (public.arch_base) WHERE id IN "
               "(SELECT id FROM ONLY public.notes_base); "
               "CREATE MATERIALIZED VIEW public.own_notes_mv AS SELECT id, body FROM ONLY public.notes_base; "
               # joins, set operations, subqueries and CTEs put other range table entries (no relation) beside it
               "CREATE VIEW public.own_mixed AS WITH b AS (SELECT id FROM ONLY public.notes_base) "
               "SELECT n.id, p.id AS plain FROM ONLY public.notes_base n JOIN b USING (id) "
               "LEFT JOIN public.plain_base p ON p.id = n.id UNION ALL "
               "SELECT s.id, NULL FROM (SELECT id FROM ONLY public.arch_base) s; "
               "GRANT SELECT ON public.own_notes, public.own_arch, public.own_notes_mv, public.own_mixed TO PUBLIC",
               dbname=db)
    p.start(provision=False)
    try:
        for user in (ALICE, DAN):
            assert _rows(p, user, db, "SELECT id, body FROM public.own_notes") == [(0, "base note")]
            assert _rows(p, user, db, "SELECT id, body FROM public.own_notes_mv") == [(0, "base note")]
            assert _rows(p, user, db, "SELECT id FROM public.own_arch") == []
            assert _rows(p, user, db, "SELECT id, plain FROM public.own_mixed") == [(0, None)]
    finally:
        p.stop()
    code, out = provision_output(p)
    assert code == 0, out


def test_a_definer_view_over_only_a_foreign_parent_is_refused(
    pg: PgCluster, refusing: tuple[str, ProxyProcess]
) -> None:
    """Review 22 F2: a foreign table can be an inheritance parent; its own rows are its remote ones, read with the
    user mapping's stored credentials — a definer view over `ONLY` it was dropped from the view's reads and passed."""
    db, p = refusing
    pg.execute("CREATE FOREIGN TABLE public.ft_parent (id int, body text) SERVER inh_loop "
               "OPTIONS (schema_name 'public', table_name 'tenant_notes'); "
               "CREATE TABLE public.ft_kid (tenant_id text) INHERITS (public.ft_parent); "
               "CREATE VIEW public.own_ft AS SELECT id, body FROM ONLY public.ft_parent; "
               "GRANT SELECT ON public.own_ft TO PUBLIC", dbname=db)
    log = _refusal(p)
    assert "view public.own_ft" in log, log


@pytest.mark.parametrize("shape", [
    "SELECT id, body FROM ONLY public.notes_base UNION ALL SELECT id, body FROM public.notes_base",
    "SELECT id, body FROM ONLY public.notes_base WHERE EXISTS (SELECT FROM public.notes_base* WHERE id = 2)",
    'WITH ":inh" AS (SELECT id FROM public.notes_base) SELECT o.id, o.body FROM ONLY public.notes_base AS o '
    'JOIN ":inh" AS ":relid" ON true',
])
def test_a_definer_view_over_the_parent_with_and_without_only_is_refused(
    pg: PgCluster, refusing: tuple[str, ProxyProcess], shape: str
) -> None:
    """ONLY in one place does not hide the parent read with its children in another (names that look like the
    stored tree's field names included)."""
    db, p = refusing
    pg.execute(f"CREATE VIEW public.some_notes AS {shape}; GRANT SELECT ON public.some_notes TO PUBLIC", dbname=db)
    log = _refusal(p)
    assert "tenants.inha: view public.some_notes reads its tables with its owner's rights" in log, log


def test_a_database_tenant_role_granted_the_parent_is_refused(
    pg: PgCluster, refusing: tuple[str, ProxyProcess]
) -> None:
    db, p = refusing
    pg.execute(f"GRANT SELECT ON public.notes_base TO {DAN_ROLE}", dbname=db)
    log = _refusal(p)
    assert (f"tenants.inhd: its backend role '{DAN_ROLE}' can read other tenants' rows of public.notes_base "
            "(tenant inha: an inheritance parent of public.tenant_notes with no tenant column") in log, log
    assert f"REVOKE SELECT ON public.notes_base FROM {DAN_ROLE}" in log
    pg.execute(f"REVOKE SELECT ON public.notes_base FROM {DAN_ROLE}", dbname=db)
    p.start(provision=False)
    p.stop()


def test_a_shared_or_schema_tenant_role_granted_the_parent_is_refused_unless_its_rls_binds(
    pg: PgCluster, refusing: tuple[str, ProxyProcess]
) -> None:
    """The proxy adds no tenant filter to a table without the tenant column: alice read bigco's note from it."""
    db, p = refusing
    pg.execute(f"GRANT SELECT ON public.notes_base TO {BACKEND_ROLE}", dbname=db)
    log = _refusal(p)
    assert (f"tenants.inha: its backend role '{BACKEND_ROLE}' can read public.notes_base, an inheritance parent "
            "of the tenant-scoped public.tenant_notes with no tenant column") in log, log
    assert "tenants.inhd" not in log and "tenants.inhg" not in log, log
    pg.execute(f"GRANT SELECT ON public.notes_base TO {GINA_ROLE}", dbname=db)
    log = _refusal(p)
    assert (f"tenants.inhg: its backend role '{GINA_ROLE}' can read public.notes_base, an inheritance parent") in log
    pg.execute(f"REVOKE SELECT ON public.notes_base FROM {GINA_ROLE}", dbname=db)
    # the parent's own row security binds the role (forced, no policy for it): it holds for the child's rows too
    pg.execute("ALTER TABLE public.notes_base ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY", dbname=db)
    p.start(provision=False)
    try:
        assert _rows(p, ALICE, db, "SELECT id, body FROM public.notes_base") == []
    finally:
        p.stop()


def test_provision_grants_no_parent_of_a_child_outside_the_tenant_schemas(
    pg: PgCluster, lab: tuple[str, dict[str, ProxyProcess]]
) -> None:
    """Red team 21w W6: arch.old_notes (tenant column, schema arch no tenant uses) under public.arch_base: the walk
    started from scoped relations only, so provision granted dan and gina the parent and they read bigco's row."""
    db, _ = lab
    granted = pg.execute(
        f"SELECT has_table_privilege('{DAN_ROLE}', 'public.arch_base', 'SELECT'), "
        f"has_table_privilege('{GINA_ROLE}', 'public.arch_base', 'SELECT')", dbname=db)
    assert granted == [(False, False)]


@pytest.mark.parametrize("mode", MODES)
def test_no_tenant_reads_a_parent_of_a_child_outside_the_tenant_schemas(
    lab: tuple[str, dict[str, ProxyProcess]], mode: str
) -> None:
    db, proxies = lab
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        _rows(proxies[mode], DAN, db, "SELECT body FROM public.arch_base ORDER BY 1")
    assert "\"arch_base\" holds other tenants' rows" in str(info.value), info.value  # the proxy's refusal
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _rows(proxies[mode], GINA, db, "SELECT body FROM public.arch_base ORDER BY 1")


def test_provision_grants_the_schema_tenant_no_unfiltered_relation_of_the_shared_schema(
    pg: PgCluster, lab: tuple[str, dict[str, ProxyProcess]]
) -> None:
    """Red team 21w W4: the read-only grant on shared schema public covered the materialized view with the tenant
    column (no row security): gina read bigco's rows from it. Its tables with forced RLS stay granted (the policy
    gives her none)."""
    db, _ = lab
    granted = pg.execute(
        f"SELECT has_table_privilege('{GINA_ROLE}', 'public.notes_mv', 'SELECT'), "
        f"has_table_privilege('{GINA_ROLE}', 'public.tenant_notes', 'SELECT')", dbname=db)
    assert granted == [(False, True)]


@pytest.mark.parametrize("mode", MODES)
def test_the_schema_tenant_cannot_read_their_materialized_view(
    lab: tuple[str, dict[str, ProxyProcess]], mode: str
) -> None:
    db, proxies = lab
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _rows(proxies[mode], GINA, db, "SELECT body FROM public.notes_mv ORDER BY 1")
    assert _rows(proxies[mode], GINA, db, "SELECT body FROM public.tenant_notes") == []  # forced RLS: none of theirs
    assert _rows(proxies[mode], GINA, db, "SELECT id FROM public.plain_base ORDER BY 1") == [(1,), (2,)]


def test_a_role_granted_a_parent_of_a_child_outside_the_tenant_schemas_is_refused(
    pg: PgCluster, refusing: tuple[str, ProxyProcess]
) -> None:
    db, p = refusing
    pg.execute(f"GRANT SELECT ON public.arch_base TO {DAN_ROLE}, {GINA_ROLE}", dbname=db)
    log = _refusal(p)
    assert (f"tenants.inhd: its backend role '{DAN_ROLE}' can read other tenants' rows of public.arch_base "
            "(tenant inha: an inheritance parent of arch.old_notes with no tenant column") in log, log
    assert (f"tenants.inhg: its backend role '{GINA_ROLE}' can read public.arch_base, an inheritance parent of the "
            "tenant-scoped arch.old_notes") in log, log
    pg.execute(f"REVOKE SELECT ON public.arch_base FROM {DAN_ROLE}, {GINA_ROLE}", dbname=db)
    p.start(provision=False)
    p.stop()


def test_a_schema_tenant_role_granted_their_materialized_view_is_refused(
    pg: PgCluster, refusing: tuple[str, ProxyProcess]
) -> None:
    db, p = refusing
    pg.execute(f"GRANT SELECT ON public.notes_mv TO {GINA_ROLE}", dbname=db)
    log = _refusal(p)
    assert (f"tenants.inhg: its backend role '{GINA_ROLE}' can read public.notes_mv in its shared_schemas") in log, log
    assert "tenants.inha" not in log and "tenants.inhd" not in log, log
    pg.execute(f"REVOKE SELECT ON public.notes_mv FROM {GINA_ROLE}", dbname=db)
    p.start(provision=False)
    p.stop()


def test_a_definer_view_over_a_parent_of_a_child_outside_the_tenant_schemas_is_refused(
    pg: PgCluster, refusing: tuple[str, ProxyProcess]
) -> None:
    """Its owner (the superuser) reads arch.old_notes' rows of every tenant through public.arch_base."""
    db, p = refusing
    pg.execute("CREATE VIEW public.all_arch AS SELECT id, body FROM public.arch_base; "
               "GRANT SELECT ON public.all_arch TO PUBLIC", dbname=db)
    log = _refusal(p)
    assert "tenants.inha: view public.all_arch reads its tables with its owner's rights" in log, log
    assert "tenants.inhd: view public.all_arch reads its tables with its owner's rights" in log, log
    code, out = provision_output(p)
    assert code != 0 and "view public.all_arch reads its tables" in out, out


# Red team 22d R3: a foreign table (no tenant column) inheriting from public.refs, or a partition of public.ref_parts,
# reads public.tenant_notes remotely with the user mapping FOR PUBLIC (the superuser's credentials); PostgreSQL
# checks only the parent's privilege and scans the child with the reader's mapping.
FOREIGN_PARENTS = ("public.refs", "public.ref_parts")


def test_provision_grants_no_parent_of_a_foreign_table(pg: PgCluster, lab: tuple[str, dict[str, ProxyProcess]]) -> None:
    """Provision's schema-wide grants covered public.refs for dan and gina: both read bigco's note through it."""
    db, _ = lab
    for parent in FOREIGN_PARENTS:
        granted = pg.execute(f"SELECT has_table_privilege('{DAN_ROLE}', '{parent}', 'SELECT'), "
                             f"has_table_privilege('{GINA_ROLE}', '{parent}', 'SELECT')", dbname=db)
        assert granted == [(False, False)], parent
    # the superuser (the mapping's user) does read every tenant's rows through it: the shape is real
    assert ("BIGCO-SECRET-NOTE",) in pg.execute("SELECT body FROM public.refs", dbname=db)
    assert ("BIGCO-SECRET-NOTE",) in pg.execute("SELECT body FROM public.ref_parts", dbname=db)


@pytest.mark.parametrize("mode", MODES)
def test_no_tenant_reads_a_parent_of_a_foreign_table(lab: tuple[str, dict[str, ProxyProcess]], mode: str) -> None:
    db, proxies = lab
    for parent in FOREIGN_PARENTS:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:  # the proxy's refusal (others_table)
            _rows(proxies[mode], DAN, db, f"SELECT id, body FROM {parent}")
        assert "holds other tenants' rows" in str(info.value), info.value
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:  # ONLY: PostgreSQL's (wp-only's rule)
            _rows(proxies[mode], DAN, db, f"SELECT id, body FROM ONLY {parent}")
        assert f"permission denied for table {parent.split('.')[1]}" in str(info.value), info.value
        for user in (GINA, ALICE):  # PostgreSQL's: provision granted them nothing there
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                _rows(proxies[mode], user, db, f"SELECT id, body FROM {parent}")
            assert "permission denied" in str(info.value), info.value


@pytest.mark.parametrize("parent,child", [("public.refs", "rpt.ft_refs_child"), ("public.ref_parts", "rpt.ft_part")])
def test_a_role_granted_a_parent_of_a_foreign_table_is_refused(
    pg: PgCluster, refusing: tuple[str, ProxyProcess], parent: str, child: str
) -> None:
    """An ordinary grant of the parent (alice's shape in red team 22d R3) let the proxy start: alice, dan and gina
    read every tenant's notes through it."""
    db, p = refusing
    pg.execute(f"GRANT SELECT ON {parent} TO {BACKEND_ROLE}, {DAN_ROLE}, {GINA_ROLE}", dbname=db)
    log = _refusal(p)
    assert (f"tenants.inha: its backend role '{BACKEND_ROLE}' can read {parent}, an inheritance parent of the "
            f"foreign table {child} with no tenant column") in log, log
    assert (f"tenants.inhg: its backend role '{GINA_ROLE}' can read {parent}, an inheritance parent of the "
            f"foreign table {child} with no tenant column") in log, log
    assert (f"tenants.inhd: its backend role '{DAN_ROLE}' can read other tenants' rows of {parent} "
            f"(tenant inha: an inheritance parent of the foreign table {child} with no tenant column") in log, log
    _, out = provision_output(p, "--dry-run")
    quoted = '"{}"."{}"'.format(*parent.split("."))
    assert f'REVOKE ALL ON {quoted} FROM "{GINA_ROLE}"' in out and f'REVOKE ALL ON {quoted} FROM "{DAN_ROLE}"' in out
    pg.execute(f"REVOKE SELECT ON {parent} FROM {BACKEND_ROLE}, {DAN_ROLE}, {GINA_ROLE}", dbname=db)
    p.start(provision=False)
    p.stop()


def test_a_relation_made_later_in_a_shared_schema_waits_for_provision(
    pg: PgCluster, refusing: tuple[str, ProxyProcess]
) -> None:
    """Red team 22d R6: provision set default privileges in gina's shared schema public, so a scoped materialized
    view or an inheritance parent made there later was readable by her at once (and after the reload refusing it)."""
    db, p = refusing
    pg.execute("CREATE MATERIALIZED VIEW public.later_mv AS SELECT id, body, tenant_id FROM public.tenant_notes; "
               "CREATE TABLE public.later_base (id int, body text); "
               "ALTER TABLE public.tenant_notes INHERIT public.later_base; "
               "CREATE TABLE public.later_plain (id int)", dbname=db)
    later = ("public.later_mv", "public.later_base", "public.later_plain")
    query = ", ".join(f"has_table_privilege('{GINA_ROLE}', '{rel}', 'SELECT')" for rel in later)
    assert pg.execute(f"SELECT {query}", dbname=db) == [(False, False, False)]
    assert pg.execute(f"SELECT count(*) FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace "
                      f"WHERE n.nspname = 'public' AND d.defaclacl::text LIKE '%{GINA_ROLE}=%'", dbname=db) == [(0,)]
    code, out = provision_output(p)  # the next run grants what is hers to read, and only that
    assert code == 0, out
    assert pg.execute(f"SELECT {query}", dbname=db) == [(False, False, True)]


def test_a_foreign_child_made_after_the_start_is_refused_at_the_reload(
    pg: PgCluster, refusing: tuple[str, ProxyProcess]
) -> None:
    """Red team 22d R3 (made after the start, judged by a reload): the reload passed (there dan read every tenant's rows
    through a plain table granted to him)."""
    db, p = refusing
    pg.execute(f"CREATE TABLE public.late_refs (id int, body text); GRANT SELECT ON public.late_refs TO {DAN_ROLE}",
               dbname=db)
    p.start(provision=False)
    try:
        pg.execute("CREATE FOREIGN TABLE rpt.ft_late () INHERITS (public.late_refs) SERVER inh_loop "
                   "OPTIONS (schema_name 'public', table_name 'tenant_notes')", dbname=db)
        rejected = p.reload(expect="reload_rejected")
        assert ("an inheritance parent of the foreign table rpt.ft_late with no tenant column"
                in str(rejected.get("problem"))), rejected
    finally:
        p.stop()
