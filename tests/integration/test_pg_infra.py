"""Prove the real-PostgreSQL test infrastructure works against bare clusters (no proxy involved)."""

from __future__ import annotations

import asyncio
import os
import ssl as ssl_mod
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.support.certs import make_certs
from tests.support.jdbc import JdbcError, require_jdbc, run_jdbc
from tests.support.pgcluster import (
    PgCluster,
    PgClusterError,
    default_installation,
    find_installations,
    select_installations,
)
from tests.support.psql import find_psql, run_psql

# ----------------------------------------------------------------------------- discovery


def test_installations_are_found_and_deduplicated() -> None:
    found = find_installations()
    assert found, "no PostgreSQL installation found"
    majors = [i.major for i in found]
    assert len(majors) == len(set(majors))
    for inst in found:
        assert (inst.bindir / "initdb").is_file() and (inst.bindir / "postgres").is_file()
        assert inst.version.startswith(str(inst.major))
    assert select_installations("first") == found[:1]
    assert select_installations("all") == found
    assert select_installations(str(found[0].major)) == [found[0]]
    assert all(i.ssl for i in select_installations("all", require_ssl=True))


def test_selecting_a_missing_version_fails_loudly() -> None:
    with pytest.raises(PgClusterError, match="not found"):
        select_installations("9")
    with pytest.raises(PgClusterError, match="bad"):
        select_installations("latest")


# ----------------------------------------------------------------------------- cluster basics


def test_scram_over_tcp(pg: PgCluster) -> None:
    with psycopg.connect(pg.dsn(sslmode="disable")) as conn:
        addr, port, version = conn.execute(
            "SELECT host(inet_server_addr()), inet_server_port(), current_setting('server_version_num')::int"
        ).fetchone()  # type: ignore[misc]
        assert (addr, port) == ("127.0.0.1", pg.port)
        assert version // 10000 == pg.major
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        (secret,) = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").fetchone()  # type: ignore[misc]
        assert secret.startswith("SCRAM-SHA-256$")
        methods = {r[0] for r in conn.execute("SELECT auth_method FROM pg_hba_file_rules")}
        assert methods == {"scram-sha-256"}
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn(password="wrong", sslmode="disable"))


def test_fast_settings_and_capacity(pg: PgCluster) -> None:
    rows = dict(pg.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('fsync', 'synchronous_commit', 'full_page_writes', 'max_connections', 'server_encoding', 'ssl')"
    ))
    assert rows["fsync"] == "off" and rows["synchronous_commit"] == "off" and rows["full_page_writes"] == "off"
    assert int(rows["max_connections"]) >= 200
    assert rows["server_encoding"] == "UTF8"
    assert rows["ssl"] == ("on" if pg.ssl_enabled else "off")
    assert (pg.socket_dir / f".s.PGSQL.{pg.port}").exists()


def test_server_runs_unprivileged(pg: PgCluster) -> None:
    assert pg.pid is not None
    uid = int(next(ln.split()[1] for ln in Path(f"/proc/{pg.pid}/status").read_text().splitlines()
                   if ln.startswith("Uid:")))
    if os.geteuid() == 0:
        assert uid != 0
        assert os.stat(pg.data_dir).st_uid == uid
    else:
        assert uid == os.geteuid()


def test_roles_databases_and_execute(pg: PgCluster) -> None:
    db = pg.fresh_database("infra")
    role = f"r_{db}"
    pg.create_role(role, "s3cret pw'x")
    pg.execute(f'GRANT ALL ON DATABASE "{db}" TO "{role}"')
    pg.execute("CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 5)", dbname=db)
    assert pg.execute("SELECT sum(x) FROM t", dbname=db) == [(15,)]
    with psycopg.connect(pg.dsn(role, "s3cret pw'x", db, sslmode="disable")) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (role, db)


def test_cluster_lifecycle_is_clean() -> None:
    inst = default_installation()
    with PgCluster(inst, ssl=False, max_connections=210) as cluster:
        base, pid = cluster.base_dir, cluster.pid
        assert base is not None and base.is_dir() and pid is not None
        assert cluster.execute("SHOW max_connections") == [("210",)]
        assert cluster.execute("SHOW ssl") == [("off",)]
    assert not base.exists()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_two_clusters_get_distinct_ports() -> None:
    inst = default_installation()
    with PgCluster(inst, ssl=False) as a, PgCluster(inst, ssl=False) as b:
        assert a.port != b.port
        a.execute("CREATE TABLE only_in_a(x int)")
        assert b.execute("SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'") == [(0,)]


# ----------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_verify_full(pg_tls: PgCluster, host: str) -> None:
    with psycopg.connect(pg_tls.dsn(host=host, sslmode="verify-full")) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row is not None and row[0] is True and row[1].startswith("TLS")
        assert conn.pgconn.ssl_in_use


def test_tls_rejects_untrusted_ca(pg_tls: PgCluster, tmp_path: Path) -> None:
    other_ca = make_certs(tmp_path).ca_file
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(pg_tls.dsn(host="localhost", sslmode="verify-full", sslrootcert=str(other_ca)))


def test_tls_certs_fixture_serves_a_handshake(tls_certs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server_ctx = ssl_mod.create_default_context(ssl_mod.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls_certs.cert_file, tls_certs.key_file)
    client_ctx = ssl_mod.create_default_context(cafile=str(tls_certs.ca_file))
    assert oct(tls_certs.key_file.stat().st_mode & 0o777) == "0o600"
    assert tls_certs.clients["alice"].cert_file.is_file()

    async def handshake() -> bytes:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                           server_hostname="localhost")
            writer.write(b"ping")
            data = await reader.readexactly(4)
            writer.close()
            return data

    assert asyncio.run(handshake()) == b"ping"


# ----------------------------------------------------------------------------- other clients


def test_asyncpg_connects(pg: PgCluster) -> None:
    async def go() -> tuple[int, str]:
        conn = await asyncpg.connect(pg.url(), ssl=False)
        try:
            value = await conn.fetchval("SELECT $1::int8 * 2", 21)
            user = await conn.fetchval("SELECT current_user")
            return value, user
        finally:
            await conn.close()

    assert asyncio.run(go()) == (42, "postgres")


def test_asyncpg_tls(pg_tls: PgCluster) -> None:
    ctx = ssl_mod.create_default_context(cafile=str(pg_tls.ca_file))

    async def go() -> bool:
        conn = await asyncpg.connect(pg_tls.url(host="localhost"), ssl=ctx)
        try:
            return bool(await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
        finally:
            await conn.close()

    assert asyncio.run(go()) is True


def test_psql_dt_lists_tables(pg: PgCluster) -> None:
    assert find_psql() is not None
    db = pg.fresh_database("psql")
    pg.execute("CREATE TABLE widgets(id int); CREATE TABLE gadgets(id int)", dbname=db)
    res = run_psql(pg.dsn(dbname=db, sslmode="disable"), "\\dt\n", password=pg.password, check=True)
    assert "widgets" in res.stdout and "gadgets" in res.stdout
    bad = run_psql(pg.dsn(dbname=db, sslmode="disable"), "SELECT 1/0;\nSELECT 'unreached';\n",
                   password=pg.password)
    assert bad.returncode != 0 and "division by zero" in bad.stderr and "unreached" not in bad.stdout
    denied = run_psql(pg.dsn(password="nope", sslmode="disable"), "SELECT 1;\n")
    assert denied.returncode != 0 and "password authentication failed" in denied.stderr


# ----------------------------------------------------------------------------- JDBC


@pytest.fixture(scope="module")
def jdbc_db(pg: PgCluster) -> str:
    """A database with two tables for the metadata scenario."""
    require_jdbc()
    db = pg.fresh_database("jdbc")
    pg.execute("CREATE TABLE accounts(id int8 PRIMARY KEY, name text NOT NULL, balance numeric(12,2));"
               "CREATE TABLE orders(id int8, account_id int8 REFERENCES accounts)", dbname=db)
    return db


def test_jdbc_metadata(pg: PgCluster, jdbc_db: str) -> None:
    out = run_jdbc(pg.jdbc_url(jdbc_db, sslmode="disable"), "postgres", pg.password, "metadata", "accounts")
    assert out["product"] == "PostgreSQL" and out["product_version"].startswith(str(pg.major))
    assert sorted(out["tables"]) == ["accounts", "orders"]
    assert [(c["name"], c["type"], c["nullable"]) for c in out["columns"]] == [
        ("id", "int8", "NO"), ("name", "text", "NO"), ("balance", "numeric", "YES")]


def test_jdbc_prepared_switches_to_server_statements(pg: PgCluster, jdbc_db: str) -> None:
    out = run_jdbc(pg.jdbc_url(jdbc_db, sslmode="disable"), "postgres", pg.password, "prepared")
    rows = out["rows"]
    assert [r["sum"] for r in rows] == [i * 1000 + 1 for i in range(1, 11)]
    assert [r["product"] for r in rows] == [f"{2 * i}.50" for i in range(1, 11)]
    threshold = out["prepare_threshold"]
    assert [r["server_prepared"] for r in rows] == [i >= threshold for i in range(1, 11)]
    assert any(name.startswith("S_") for name in out["prepared_statements"])


def test_jdbc_fetchsize_uses_named_portal(pg: PgCluster, jdbc_db: str) -> None:
    out = run_jdbc(pg.jdbc_url(jdbc_db, sslmode="disable"), "postgres", pg.password, "fetchsize", 1000, 100)
    assert out["count"] == 1000 and out["sum"] == 500500
    assert any(p.startswith("C_") for p in out["portals"])


def test_jdbc_cancel(pg: PgCluster, jdbc_db: str) -> None:
    out = run_jdbc(pg.jdbc_url(jdbc_db, sslmode="disable"), "postgres", pg.password, "cancel", 1000, 30)
    assert out["sqlstate"] == "57014", out
    assert "canceling statement due to user request" in out["message"]  # pg_sleep(30) cancelled, not timed out
    assert out["cancel_error"] is None
    assert out["usable_after"] is True


def test_jdbc_wrong_password_reports_sqlstate(pg: PgCluster, jdbc_db: str) -> None:
    with pytest.raises(JdbcError) as info:
        run_jdbc(pg.jdbc_url(jdbc_db, sslmode="disable"), "postgres", "wrong", "query", "SELECT 1")
    assert info.value.sqlstate == "28P01"


def test_jdbc_ssl_verify_full(pg_tls: PgCluster, tmp_path: Path) -> None:
    require_jdbc()
    url = pg_tls.jdbc_url(host="localhost", sslmode="verify-full", sslrootcert=str(pg_tls.ca_file))
    out = run_jdbc(url, "postgres", pg_tls.password, "ssl")
    assert out["select1"] == 1 and out["ssl"] is True and out["tls_version"].startswith("TLS")
    other_ca = make_certs(tmp_path).ca_file
    bad = pg_tls.jdbc_url(host="localhost", sslmode="verify-full", sslrootcert=str(other_ca))
    with pytest.raises(JdbcError) as info:
        run_jdbc(bad, "postgres", pg_tls.password, "ssl")
    assert info.value.sqlstate == "08006"
