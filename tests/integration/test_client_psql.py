"""The real ``psql`` binary through pgtenant: backslash commands, \\copy, FETCH_COUNT cursors, TLS, Ctrl-C.

psql exercises paths drivers rarely do: catalog queries behind ``\\dt``/``\\d``, COPY TO STDOUT /
FROM STDIN driven by ``\\copy``, ``DECLARE _psql_cursor`` + ``FETCH FORWARD`` under FETCH_COUNT, and
a plaintext CancelRequest (PQcancel) on SIGINT.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.support.certs import TlsFiles
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.psql import PsqlResult, find_psql, interrupt_psql, run_psql


@pytest.fixture(scope="module")
def psql_exe() -> str:
    """The psql binary; skip without one (fail under env CI)."""
    exe = find_psql()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("psql is required in CI but was not found (install postgresql-client or set PSQL)")
        pytest.skip("psql not found (install postgresql-client or set PSQL)")
    return exe


def _psql(proxy: ProxyProcess, user: str, script: str, *args: str, **params: str | int) -> PsqlResult:
    """Run ``script`` with psql as ``user`` through the proxy (unaligned, tuples only); must succeed."""
    return run_psql(proxy.dsn(user, **params), script, password=proxy.password(user),
                    args=("-A", "-t", "-F", "|", *args), check=True)


def _lines(res: PsqlResult) -> list[str]:
    return [ln for ln in res.stdout.splitlines() if ln.strip()]


# --- backslash commands -----------------------------------------------------------------------


def _owner(pg: PgCluster, dbname: str, schema: str, table: str) -> str:
    rows = pg.execute("SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = %s", (schema, table),
                      dbname=dbname)
    return rows[0][0]


def test_dt_lists_the_tenants_tables(proxy: ProxyProcess, pg: PgCluster, psql_exe: str) -> None:
    res = _psql(proxy, "ivan", "\\dt\n")
    assert _lines(res) == [f"public|orders|table|{_owner(pg, 'initech', 'public', 'orders')}"]
    # Schema tenant: the pinned search_path makes \dt show the tenant's schema.
    res = _psql(proxy, "gina", "\\dt\n")
    assert _lines(res) == [f"globex|orders|table|{_owner(pg, 'saas', 'globex', 'orders')}"]


def test_d_describes_a_table(proxy: ProxyProcess, psql_exe: str) -> None:
    res = run_psql(proxy.dsn("ivan"), "\\d orders\n", password=proxy.password("ivan"), args=("-A",), check=True)
    assert [ln.strip() for ln in res.stdout.splitlines() if ln.strip()] == [
        'Table "public.orders"',
        "Column|Type|Collation|Nullable|Default",
        "id|integer||not null|",
        "amount|numeric||not null|",
        "Indexes:",
        '"orders_pkey" PRIMARY KEY, btree (id)',
    ]
    res = run_psql(proxy.dsn("gina"), "\\d orders\n", password=proxy.password("gina"), args=("-A",), check=True)
    assert res.stdout.lstrip().startswith('Table "globex.orders"'), res.stdout


# --- \copy ------------------------------------------------------------------------------------


def test_copy_to_stdout(proxy: ProxyProcess, psql_exe: str) -> None:
    res = _psql(proxy, "ivan", "\\copy orders TO STDOUT\n")
    assert _lines(res) == [f"{i}\t{i}" for i in range(1, 8)]
    res = _psql(proxy, "gina", "\\copy (SELECT id FROM orders ORDER BY id) TO STDOUT WITH (FORMAT csv)\n")
    assert _lines(res) == [str(i) for i in range(1, 41)]


def test_copy_from_file_into_temp_table(proxy: ProxyProcess, psql_exe: str, tmp_path: Path) -> None:
    data = tmp_path / "rows.tsv"
    data.write_text("".join(f"{i}\tname {i}\n" for i in range(1, 2501)))
    script = (
        "CREATE TEMP TABLE tmp_import (id int, name text);\n"
        f"\\copy tmp_import FROM '{data}'\n"
        "SELECT count(*), sum(id), max(name) FROM tmp_import;\n"
        "\\copy tmp_import FROM STDIN\n"
        "9001\tinline\n"
        "\\.\n"
        "SELECT name FROM tmp_import WHERE id = 9001;\n"
    )
    res = _psql(proxy, "ivan", script)
    assert _lines(res) == ["CREATE TABLE", "COPY 2500", "2500|3126250|name 999", "COPY 1", "inline"]


def test_copy_from_bad_data_then_session_usable(proxy: ProxyProcess, psql_exe: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\n2\nnot-a-number\n")
    script = (
        "\\set ON_ERROR_STOP 0\n"
        "CREATE TEMP TABLE tmp_bad (id int);\n"
        f"\\copy tmp_bad FROM '{bad}'\n"
        "SELECT 'still alive', count(*) FROM tmp_bad;\n"
    )
    res = _psql(proxy, "ivan", script)
    assert 'invalid input syntax for type integer: "not-a-number"' in res.stderr
    assert _lines(res) == ["CREATE TABLE", "still alive|0"]


# --- FETCH_COUNT: DECLARE _psql_cursor / FETCH FORWARD ---------------------------------------


def test_fetch_count_uses_a_cursor(proxy: ProxyProcess, psql_exe: str) -> None:
    # The sub-select runs while psql's cursor is open, so each row names it.
    script = (
        "\\set FETCH_COUNT 10\n"
        "SELECT g, (SELECT string_agg(name, ',') FROM pg_cursors) FROM generate_series(1, 95) g;\n"
        "\\unset FETCH_COUNT\n"
        "SELECT count(*) FROM pg_cursors;\n"
    )
    lines = _lines(_psql(proxy, "ivan", script))
    assert len(lines) == 96
    assert lines[:95] == [f"{i}|_psql_cursor" for i in range(1, 96)]
    assert lines[95] == "0"  # closed again, transaction committed


def test_fetch_count_on_schema_tenant(proxy: ProxyProcess, psql_exe: str) -> None:
    script = "\\set FETCH_COUNT 7\nSELECT id FROM orders ORDER BY id;\n"
    assert _lines(_psql(proxy, "gina", script)) == [str(i) for i in range(1, 41)]


# --- TLS --------------------------------------------------------------------------------------


def test_psql_over_tls_verify_full(proxy: ProxyProcess, psql_exe: str, tls_certs: TlsFiles) -> None:
    res = _psql(proxy, "ivan", "\\conninfo\nSELECT count(*) FROM orders;\n",
                sslmode="verify-full", sslrootcert=str(tls_certs.ca_file))
    lines = _lines(res)
    assert lines[0].startswith('You are connected to database "initech" as user "ivan" on host "127.0.0.1"'), lines
    assert lines[1].startswith("SSL connection (protocol: TLSv1."), lines
    assert lines[2:] == ["7"]


def test_psql_over_tls_with_channel_binding(proxy: ProxyProcess, psql_exe: str, tls_certs: TlsFiles) -> None:
    res = _psql(proxy, "alice", "SELECT current_setting('pgtenant.tenant_id');\n",
                sslmode="verify-full", sslrootcert=str(tls_certs.ca_file), channel_binding="require")
    assert _lines(res) == ["acme"]


# --- errors -----------------------------------------------------------------------------------


def test_wrong_password(proxy: ProxyProcess, psql_exe: str) -> None:
    res = run_psql(proxy.dsn("ivan", password="wrong"), "SELECT 1;\n")
    assert res.returncode == 2
    assert 'password authentication failed for user "ivan"' in res.stderr


# --- Ctrl-C -----------------------------------------------------------------------------------


def _active_sleep_pids(pg: PgCluster, application_name: str) -> list[int]:
    # application_name is forwarded to the backend; the unique value identifies the proxied session.
    rows = pg.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
        "AND query = 'SELECT pg_sleep(30)' AND datname = 'initech'",
        (application_name,),
    )
    return [r[0] for r in rows]


def test_ctrl_c_cancels_the_running_query(proxy: ProxyProcess, pg: PgCluster, psql_exe: str) -> None:
    app = f"psql-cancel-{uuid.uuid4().hex[:8]}"
    res = interrupt_psql(psql_exe, proxy.dsn("ivan"), proxy.password("ivan"), "SELECT pg_sleep(30)", app,
                         lambda: bool(_active_sleep_pids(pg, app)))
    assert "canceling statement due to user request" in res.stderr, res
    assert res.returncode == 1
    assert not _active_sleep_pids(pg, app)
