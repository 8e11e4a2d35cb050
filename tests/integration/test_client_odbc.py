"""psqlODBC (Debian's odbc-postgresql, via pyodbc + unixODBC) through pgtenant.

Uses Tableau's long-standing psqlODBC settings: ``UseDeclareFetch=1;Fetch=2048``, under which the
driver sends ``BEGIN;declare "SQL_CUR…" cursor with hold for …;fetch 2048 in "SQL_CUR…"`` as one
simple Query and pages with ``fetch`` afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.support.certs import TlsFiles
from tests.support.odbc import connection_string, require_odbc
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import USERS, ProxyProcess

TABLEAU_OPTIONS: dict[str, str | int] = {"UseDeclareFetch": 1, "Fetch": 2048}


@pytest.fixture(autouse=True)
def _require_odbc() -> None:
    require_odbc()


def _pyodbc() -> Any:
    """pyodbc, imported only after require_odbc() so a missing module skips instead of erroring."""
    import pyodbc as mod

    return mod


def _connstr(proxy: ProxyProcess, user: str, *, database: str | None = None, password: str | None = None,
             **options: str | int) -> str:
    return connection_string(
        port=proxy.port, database=database or USERS[user][0], user=user,
        password=proxy.password(user) if password is None else password,
        options={**TABLEAU_OPTIONS, **options},
    )


def _connect(connstr: str, *, autocommit: bool = True) -> Any:
    return _pyodbc().connect(connstr, autocommit=autocommit, timeout=10)


@pytest.fixture
def ivan(proxy: ProxyProcess) -> Iterator[Any]:
    conn = _connect(_connstr(proxy, "ivan"))
    yield conn
    conn.close()


def _auth_ok(proxy: ProxyProcess, application_name: str) -> list[dict[str, Any]]:
    return [e for e in proxy.log_events()
            if e.get("event") == "auth_ok" and e.get("application_name") == application_name]


# --- queries ------------------------------------------------------------------------------------


def test_count_per_tenant(proxy: ProxyProcess, ivan: Any) -> None:
    row = ivan.cursor().execute("SELECT count(*), current_database() FROM orders").fetchone()
    assert tuple(row) == (7, "initech")
    gina = _connect(_connstr(proxy, "gina"))
    try:
        row = gina.cursor().execute("SELECT count(*), current_schema() FROM orders").fetchone()
        assert tuple(row) == (40, "globex")
    finally:
        gina.close()
    alice = _connect(_connstr(proxy, "alice"))
    try:
        row = alice.cursor().execute("SELECT current_database(), current_setting('pgtenant.tenant_id')").fetchone()
        assert tuple(row) == ("saas", "acme")
    finally:
        alice.close()


def test_parameterized_query(ivan: Any) -> None:
    cur = ivan.cursor()
    rows = cur.execute("SELECT id, amount FROM orders WHERE id > ? ORDER BY id", 4).fetchall()
    assert [tuple(r) for r in rows] == [(5, Decimal("5")), (6, Decimal("6")), (7, Decimal("7"))]
    row = cur.execute("SELECT ?::int8 * 2, ? || '!', ?::numeric + 1, coalesce(?, 'was null')",
                      21, "héllo", Decimal("1.25"), None).fetchone()
    assert tuple(row) == (42, "héllo!", Decimal("2.25"), "was null")
    for n in range(1, 4):  # re-executing the same statement with new parameters
        assert cur.execute("SELECT count(*) FROM orders WHERE id <= ?", n).fetchone()[0] == n


def test_declare_fetch_reads_5000_rows_through_a_cursor(ivan: Any) -> None:
    cur = ivan.cursor()
    cur.execute(
        "SELECT g, md5(g::text), (SELECT string_agg(name || '|' || is_holdable::text || '|' || statement, ',')"
        " FROM pg_cursors) FROM generate_series(1, 5000) g"
    )
    rows = cur.fetchall()
    assert len(rows) == 5000
    assert [r[0] for r in rows] == list(range(1, 5001))
    assert all(len(r[1]) == 32 for r in rows)
    name, holdable, statement = rows[0][2].split("|", 2)
    assert name.startswith("SQL_CUR") and holdable == "true", rows[0][2]
    assert f'declare "{name}" cursor with hold for SELECT g' in statement
    assert f'fetch 2048 in "{name}"' in statement
    assert {r[2] for r in rows} == {rows[0][2]}  # one cursor served all three fetches
    # The next statement on the handle closes that cursor and declares the handle's cursor name anew.
    again = cur.execute("SELECT string_agg(name || '|' || (statement LIKE '%SELECT string_agg(name%')::text, ',')"
                        " FROM pg_cursors").fetchone()[0]
    assert again == f"{name}|true"


def test_declare_fetch_in_a_transaction(proxy: ProxyProcess) -> None:
    conn = _connect(_connstr(proxy, "gina"), autocommit=False)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TEMP TABLE big AS SELECT g AS id FROM generate_series(1, 5000) g")
        cur.execute("SELECT b.id, o.amount FROM big b LEFT JOIN orders o USING (id) ORDER BY b.id")
        n = 0
        total = Decimal(0)
        while batch := cur.fetchmany(700):
            n += len(batch)
            total += sum((r[1] for r in batch if r[1] is not None), Decimal(0))
        assert (n, total) == (5000, Decimal(sum(range(1, 41))))
        conn.rollback()
        with pytest.raises(_pyodbc().Error, match='relation "big" does not exist'):
            cur.execute("SELECT count(*) FROM big")
        conn.rollback()
    finally:
        conn.close()


# --- cancel (SQLCancel -> PQcancel, a plaintext CancelRequest) ---------------------------------


def test_sqlcancel_interrupts_a_running_query(proxy: ProxyProcess, pg: PgCluster) -> None:
    app = f"odbc-cancel-{uuid.uuid4().hex[:8]}"
    conn = _connect(_connstr(proxy, "ivan", pqopt=f"application_name={app}"))
    cur = conn.cursor()
    cancelled_at: list[float] = []
    problems: list[str] = []

    def cancel_when_active() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            # UseDeclareFetch wraps it: BEGIN;declare "SQL_CUR…" cursor with hold for SELECT pg_sleep(30);fetch…
            rows = pg.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
                "AND query LIKE '%%SELECT pg_sleep(30)%%' AND datname = 'initech'", (app,))
            if rows:
                cancelled_at.append(time.monotonic())
                cur.cancel()
                return
            time.sleep(0.05)  # poll interval, bounded by the deadline
        problems.append("the query never became active on the backend")

    canceller = threading.Thread(target=cancel_when_active)
    try:
        canceller.start()
        with pytest.raises(_pyodbc().Error) as info:
            cur.execute("SELECT pg_sleep(30)")
        done = time.monotonic()
        canceller.join()
        assert not problems, problems
        assert info.value.args[0] == "57014", info.value.args
        assert "canceling statement due to user request" in str(info.value)
        assert done - cancelled_at[0] < 5
        assert cur.execute("SELECT count(*) FROM orders").fetchone()[0] == 7
    finally:
        canceller.join()
        conn.close()


# --- TLS ----------------------------------------------------------------------------------------


def test_tls_verify_full(proxy: ProxyProcess, tls_certs: TlsFiles) -> None:
    app = f"odbc-tls-{uuid.uuid4().hex[:8]}"
    connstr = _connstr(proxy, "ivan", SSLmode="verify-full",
                       pqopt=f"sslrootcert={tls_certs.ca_file} application_name={app}")
    conn = _connect(connstr)
    try:
        assert conn.cursor().execute("SELECT count(*) FROM orders").fetchone()[0] == 7
    finally:
        conn.close()
    [event] = _auth_ok(proxy, app)
    assert (event["tls"], event["user"], event["tenant"]) == (True, "ivan", "initech")


def test_tls_require(proxy: ProxyProcess) -> None:
    conn = _connect(_connstr(proxy, "alice", SSLmode="require"))
    try:
        assert conn.cursor().execute("SELECT current_setting('pgtenant.tenant_id')").fetchone()[0] == "acme"
    finally:
        conn.close()


# --- startup errors -----------------------------------------------------------------------------


def test_wrong_password_is_refused(proxy: ProxyProcess) -> None:
    with pytest.raises(_pyodbc().Error) as info:
        _connect(_connstr(proxy, "ivan", password="not-the-password"))
    assert info.value.args[0] == "08001"  # psqlODBC reports every failed connect as 08001
    assert 'password authentication failed for user "ivan"' in str(info.value)


def test_other_tenants_database_is_refused(proxy: ProxyProcess) -> None:
    with pytest.raises(_pyodbc().Error) as info:
        _connect(_connstr(proxy, "ivan", database="saas"))
    assert 'database "saas" does not exist' in str(info.value)
