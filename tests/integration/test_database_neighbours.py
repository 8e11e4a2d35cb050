"""A database tenant sharing its database with a shared tenant (issue 14, review 17 F4): it reaches none of the shared
tenant's sequences, at either lock (the proxy's refusal, PostgreSQL's privileges), while its own are its own; an
unqualified name reaches its own relation where PostgreSQL would find that one first. Both pool modes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, prepare_backend, provision_output, provisioned_per_mode

MODES = ("transaction", "session")
DAN_ROLE, DAN_ROLE_PW, DAN = "pgt_dsq_dan", "dsq-dan-role-pw", "dsq_dan"
# The shared tenant's: the identity sequence of public.orders, the serial one of public.items, a sequence of its schema
# no table of dan's uses. Dan's: the serial sequence of his public.dan_notes (no tenant column: not scoped), and his
# dan_s.orders and its sequence, of the same names as theirs.
SCHEMA = """
CREATE TABLE public.orders (id int GENERATED ALWAYS AS IDENTITY, tenant_id text NOT NULL);
CREATE TABLE public.items (id serial, tenant_id text NOT NULL);
CREATE SEQUENCE public.counter_seq;
CREATE TABLE public.dan_notes (id serial, body text);
CREATE SCHEMA dan_s;
CREATE TABLE dan_s.orders (id serial, note text);
CREATE SEQUENCE public.zz_invoice_number_sequence_for_the_acme_tenant_xxxxxxxxx_id_seq;
CREATE SEQUENCE public."zz_Élan_id_seq";
INSERT INTO public.orders (tenant_id) VALUES ('acme'), ('bigco'), ('bigco');
INSERT INTO public.items (tenant_id) SELECT 'bigco' FROM generate_series(1, 5);
SELECT nextval('public.counter_seq') FROM generate_series(1, 7);
INSERT INTO public.dan_notes (body) VALUES ('a');
INSERT INTO dan_s.orders (note) VALUES ('x'), ('y');
"""
THEIR_SEQUENCES = ("public.orders_id_seq", "public.items_id_seq", "public.counter_seq")
LONG = "zz_invoice_number_sequence_for_the_acme_tenant_xxxxxxxxx_id_seq"  # theirs too (63 bytes), as zz_Élan_id_seq
DAN_SEQUENCES = ("public.dan_notes_id_seq", "dan_s.orders_id_seq")


def _proxy(pg: PgCluster, workdir: Path, db: str, mode: str = "transaction") -> ProxyProcess:
    return ProxyProcess(
        pg, workdir, backend_sslmode="disable", pool={"pool_mode": mode},
        extra_tenants={"dsqa": {"strategy": "shared", "database": db, "tenant_id": "acme"},
                       "dsqd": {"strategy": "database", "database": db, "backend_user": DAN_ROLE,
                                "schemas": ["public", "dan_s"], "allow_writes": True}},
        extra_users={"dsq_alice": ("dsqa", "dsq-alice-pw"), DAN: ("dsqd", "dsq-dan-pw")},
        extra_roles={DAN_ROLE: DAN_ROLE_PW})


@pytest.fixture(scope="module")
def neighbours(pg: PgCluster,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, ProxyProcess]]]:
    prepare_backend(pg)
    yield from provisioned_per_mode(
        pg, "dsq", SCHEMA, lambda db, mode: _proxy(pg, tmp_path_factory.mktemp(f"dsq-{mode}"), db, mode), MODES)


def _dan(proxy: ProxyProcess, db: str) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(DAN, dbname=db), autocommit=True)


def _refused(conn: psycopg.Connection[Any], sql: str, rule: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute(sql)
    assert rule in str(info.value), (sql, info.value)


@pytest.mark.parametrize("mode", MODES)
def test_a_database_tenant_reads_none_of_the_shared_tenants_sequences(
        pg: PgCluster, neighbours: tuple[str, dict[str, ProxyProcess]], mode: str) -> None:
    """Review 17 F4: provision granted dan SELECT on every sequence of public, and the proxy refused only the shared
    tenant's tables: `SELECT last_value FROM public.orders_id_seq` (or currval/pg_sequence_last_value/pg_sequences)
    gave their insert counts. Now provision grants him none of theirs, and the proxy refuses them (others_sequence);
    his own sequences, in the same schema and under the same names elsewhere, stay his."""
    db, proxies = neighbours
    with _dan(proxies[mode], db) as conn:
        for seq in THEIR_SEQUENCES:
            _refused(conn, f"SELECT last_value FROM {seq}", "others_sequence")
            _refused(conn, f"SELECT pg_sequence_last_value('{seq}'::regclass)", "others_sequence")
            _refused(conn, f"SELECT currval('{seq}')", "others_sequence")
            _refused(conn, f"SELECT nextval('{seq}')", "others_sequence")
        _refused(conn, "SELECT last_value FROM items_id_seq", "others_sequence")  # unqualified: public's
        _refused(conn, "SELECT * FROM pg_catalog.pg_sequence_last_value('public.orders_id_seq')", "others_sequence")
        seen = conn.execute("SELECT schemaname, sequencename, last_value FROM pg_catalog.pg_sequences "
                            "ORDER BY 1, 2").fetchall()
        assert seen == [("dan_s", "orders_id_seq", 2), ("public", "dan_notes_id_seq", 1)], seen
        assert conn.execute("SELECT last_value FROM public.dan_notes_id_seq").fetchall() == [(1,)]
        assert conn.execute("SELECT last_value FROM dan_s.orders_id_seq").fetchall() == [(2,)]
        assert conn.execute("SELECT pg_sequence_last_value('dan_s.orders_id_seq')").fetchall() == [(2,)]
    privileges = pg.execute(  # the second lock: PostgreSQL's
        "SELECT s, pg_catalog.has_sequence_privilege(%s, s, 'SELECT, USAGE, UPDATE') "
        "FROM unnest(%s::text[]) s", (DAN_ROLE, [*THEIR_SEQUENCES, *DAN_SEQUENCES]), dbname=db)
    assert privileges == [(s, s in DAN_SEQUENCES) for s in (*THEIR_SEQUENCES, *DAN_SEQUENCES)]
    # the shared tenant's own through the proxy is unchanged (its statements are rewritten, not refused)
    with psycopg.connect(proxies[mode].dsn("dsq_alice", dbname=db)) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchall() == [(1,)]


@pytest.mark.parametrize("mode", MODES)
def test_an_unqualified_name_reaches_what_postgresql_finds_first(
        neighbours: tuple[str, dict[str, ProxyProcess]], mode: str) -> None:
    """wp-9a7b's over-refusal: `orders` was refused for dan whenever public (which holds the shared tenant's orders)
    was on his search_path, even behind his own dan_s.orders. Now the first schema of the path holding the name
    decides, as in PostgreSQL: his table (and sequence) where dan_s comes first, theirs (refused) where public does."""
    db, proxies = neighbours
    with _dan(proxies[mode], db) as conn:
        conn.execute("SET search_path TO dan_s, public")
        assert conn.execute("SELECT count(*) FROM orders").fetchall() == [(2,)]
        assert conn.execute("SELECT last_value FROM orders_id_seq").fetchall() == [(2,)]
        assert conn.execute("SELECT pg_sequence_last_value('orders_id_seq')").fetchall() == [(2,)]
        conn.execute("SET search_path TO public, dan_s")
        _refused(conn, "SELECT count(*) FROM orders", "others_table")
        _refused(conn, "SELECT last_value FROM orders_id_seq", "others_sequence")
        _refused(conn, "SELECT currval('orders_id_seq')", "others_sequence")
        assert conn.execute("SELECT count(*) FROM dan_s.orders").fetchall() == [(2,)]


STATIO_SEQUENCES = ("pg_statio_all_sequences", "pg_statio_user_sequences", "pg_statio_sys_sequences")


def _counters(conn: psycopg.Connection[Any], view: str) -> dict[str, tuple[Any, Any]]:
    rows = conn.execute(f"SELECT schemaname || '.' || relname, blks_read, blks_hit FROM pg_catalog.{view}").fetchall()
    return {name: (read, hit) for name, read, hit in rows}


def _advance(pg: PgCluster, db: str, sql: str) -> None:
    """Run `sql` as the superuser (standing in for the shared tenant's inserts), its statistics flushed when it
    returns (pg_stat_force_next_flush: before the idle backend's next ReadyForQuery)."""
    with pg.connect(dbname=db) as conn:
        conn.execute(sql)
        conn.execute("SELECT pg_catalog.pg_stat_force_next_flush()")
        conn.execute("SELECT 1")


@pytest.mark.parametrize("mode", MODES)
def test_a_database_tenant_reads_no_block_counters_of_the_shared_tenants_sequences(
        pg: PgCluster, neighbours: tuple[str, dict[str, ProxyProcess]], mode: str) -> None:
    """Red team 9a10 B1: pg_statio_*_sequences.blks_hit of the shared tenant's serial sequence is 2 + its nextval()s,
    the number of their inserts that others_sequence keeps from dan. Their sequences' counters are NULL for him, as
    their tables' are; his own sequences' still count."""
    db, proxies = neighbours
    _advance(pg, db, "INSERT INTO public.items (tenant_id) SELECT 'acme' FROM generate_series(1, 25); "
                     "SELECT nextval('public.counter_seq') FROM generate_series(1, 4)")
    theirs = {*THEIR_SEQUENCES, f"public.{LONG}", "public.zz_Élan_id_seq"}
    with pg.connect(dbname=db) as su:
        server = _counters(su, "pg_statio_all_sequences")
    assert all(server[s][1] is not None for s in THEIR_SEQUENCES), server  # (the channel: PostgreSQL counts them)
    with _dan(proxies[mode], db) as conn:
        for view in STATIO_SEQUENCES:
            seen = _counters(conn, view)
            assert all(seen.get(s, (None, None)) == (None, None) for s in theirs), (view, seen)
        tables = conn.execute("SELECT heap_blks_hit FROM pg_catalog.pg_statio_all_tables "
                              "WHERE relid = 'public.items'::pg_catalog.regclass").fetchall()
        assert tables == [(None,)], tables
        before = _counters(conn, "pg_statio_user_sequences")
        assert set(before) >= set(DAN_SEQUENCES) and all(before[s][1] is not None for s in DAN_SEQUENCES), before
        _advance(pg, db, "SELECT nextval('dan_s.orders_id_seq') FROM generate_series(1, 3); "
                         "SELECT setval('dan_s.orders_id_seq', 2)")  # (its position as the other tests expect)
        after = _counters(conn, "pg_statio_user_sequences")
        assert sum(after["dan_s.orders_id_seq"]) >= sum(before["dan_s.orders_id_seq"]) + 3, (before, after)
        _refused(conn, "SELECT pg_catalog.pg_stat_get_blocks_hit('public.items_id_seq'::pg_catalog.regclass)",
                 "function_not_allowed")
    # a row-secured table created after the proxy started (not in others_sequences until a reload): the sequence it
    # owns counts its inserts alike
    try:
        _advance(pg, db, "CREATE TABLE public.late (id serial, tenant_id text); ALTER TABLE public.late ENABLE ROW "
                         "LEVEL SECURITY; INSERT INTO public.late (tenant_id) SELECT 'acme' FROM generate_series(1, 5)")
        with _dan(proxies[mode], db) as conn:
            late = _counters(conn, "pg_statio_all_sequences")
        assert late["public.late_id_seq"] == (None, None), late
    finally:
        pg.execute("DROP TABLE IF EXISTS public.late", dbname=db)


@pytest.mark.parametrize("mode", MODES)
def test_a_sequence_name_postgresql_folds_or_truncates_to_theirs_is_refused(
        neighbours: tuple[str, dict[str, ProxyProcess]], mode: str) -> None:
    """Red team 9a10 B2: the literal's name is read as PostgreSQL reads it, ASCII letters downcased only and cut to
    63 bytes: `<63 bytes>EXTRA` and the unquoted `zz_Élan_id_seq` reach their sequences and are refused."""
    db, proxies = neighbours
    with _dan(proxies[mode], db) as conn:
        for literal in (f"public.{LONG}EXTRA", f"public.{LONG}", "public.zz_Élan_id_seq", 'public."zz_Élan_id_seq"',
                        "PUBLIC.ZZ_Élan_ID_SEQ"):
            _refused(conn, f"SELECT pg_sequence_last_value('{literal}')", "others_sequence")
            _refused(conn, f"SELECT currval('{literal}'::regclass)", "others_sequence")
        with pytest.raises(psycopg.errors.UndefinedTable):  # PostgreSQL keeps `é`: not theirs, not there
            conn.execute("SELECT pg_sequence_last_value('public.zz_élan_id_seq')")


def test_provision_and_the_preflight_keep_the_shared_tenants_sequences_from_a_database_tenant(
        pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Provision revokes dan's role's privileges on the shared tenant's sequences after its schema-wide grant; the
    preflight refuses a start (and a reload) where his role can read one (a grant to PUBLIC, ownership)."""
    prepare_backend(pg)
    db = pg.fresh_database("dsqp")
    pg.execute(SCHEMA, dbname=db)
    p = _proxy(pg, tmp_path_factory.mktemp("dsqp"), db)
    try:
        code, out = provision_output(p, "--dry-run")
        assert code == 0, out
        for seq in THEIR_SEQUENCES:
            schema, name = seq.split(".")
            assert f'REVOKE ALL ON SEQUENCE "{schema}"."{name}" FROM "{DAN_ROLE}";' in out, out
        for seq in DAN_SEQUENCES:
            schema, name = seq.split(".")
            assert f'"{schema}"."{name}" FROM' not in out, out
        p.provision()
        pg.execute("GRANT SELECT ON SEQUENCE public.orders_id_seq TO PUBLIC; "
                   "DROP ROLE IF EXISTS pgt_dsq_owner; CREATE ROLE pgt_dsq_owner NOLOGIN; "
                   f"ALTER SEQUENCE public.counter_seq OWNER TO pgt_dsq_owner; GRANT pgt_dsq_owner TO {DAN_ROLE}",
                   dbname=db)
        seen = len(p.log_events())
        with pytest.raises(RuntimeError, match="pgtenant exited with 3"):
            p.start(provision=False)
        refused = [str(e.get("problem")) for e in p.log_events()[seen:] if e.get("event") == "preflight_failed"]
        assert any(f"tenants.dsqd: its backend role '{DAN_ROLE}' can read the position of public.orders_id_seq, a "
                   "sequence of tenant dsqa (granted to PUBLIC; its last value counts their inserts)" in r
                   and "REVOKE ALL ON SEQUENCE public.orders_id_seq FROM PUBLIC" in r for r in refused), refused
        assert any("can read the position of public.counter_seq, a sequence of tenant dsqa (owner;" in r
                   and f"REVOKE pgt_dsq_owner FROM {DAN_ROLE}" in r for r in refused), refused
        assert len(refused) == 2, refused  # dan's own sequences are not reported
        pg.execute(f"REVOKE SELECT ON SEQUENCE public.orders_id_seq FROM PUBLIC; REVOKE pgt_dsq_owner FROM {DAN_ROLE}",
                   dbname=db)
        p.start(provision=False)
        try:
            pg.execute("GRANT USAGE ON SEQUENCE public.items_id_seq TO PUBLIC", dbname=db)
            rejected = p.reload(expect="reload_rejected")
            assert "can read the position of public.items_id_seq" in str(rejected.get("problem")), rejected
        finally:
            p.stop()
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        pg.execute("DROP ROLE IF EXISTS pgt_dsq_owner")
