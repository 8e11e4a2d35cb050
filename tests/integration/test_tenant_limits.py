"""Per-tenant limits with real clients (issue 18 point 2): results cut at max_result_rows / max_result_bytes through
psycopg, asyncpg and pgJDBC (each left usable, transaction states as PostgreSQL's after an error), statement_timeout
not raisable, idle_in_transaction_timeout, max_client_connections; refusals on /metrics and in the audit log."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from proxy.policy.settings import setting_milliseconds
from tests.support.jdbc import require_jdbc, run_jdbc
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend

# Tenants of their own (the shared strategy on acme's rows, 200 of them), one limit each.
LIMITED = {
    "rows": {"max_result_rows": 50},
    "bytes": {"max_result_bytes": 2000},
    "slow": {"statement_timeout": 1.0},
    "slowrows": {"statement_timeout": 1.0, "max_result_rows": 5},
    "slowidle": {"statement_timeout": 1.0, "idle_in_transaction_timeout": 1.0},
    "idle": {"idle_in_transaction_timeout": 1.0},
    "conns": {"max_client_connections": 2},
    "conc": {"max_concurrent_queries": 1, "query_wait_timeout": 1.0},
    "queue": {"max_concurrent_queries": 1, "query_wait_timeout": 30.0},
}
BIG = "SELECT g, repeat('x', 10) FROM generate_series(1, 100000) g"  # far past both result limits


class _LabelledProxy(ProxyProcess):
    """Every tenant keeps its own metrics label (the default test config labels only three)."""

    def write_config(self) -> None:
        super().write_config()
        self.config_path.write_text(self.config_path.read_text().replace("max_tenants = 3", "max_tenants = 20"))


@pytest.fixture(scope="module")
def proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    workdir = tmp_path_factory.mktemp("pgtenant-limits")
    p = _LabelledProxy(
        pg, workdir, backend_sslmode="disable",
        extra_tenants={name: {"strategy": "shared", "database": "saas", "tenant_id": "acme", **keys}
                       for name, keys in LIMITED.items()},
        extra_users={f"{name}_user": (name, f"{name}-pw") for name in LIMITED},
        audit={"enabled": True, "file": str(workdir / "audit.jsonl")},
    )
    p.start()
    yield p
    p.stop()


def _refusals(p: ProxyProcess) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("pgtenant_limit_refusals_total{"):
            labels, value = line.rsplit(" ", 1)
            fields = dict(part.split("=", 1) for part in labels[labels.index("{") + 1:-1].split(","))
            out[(fields["tenant"].strip('"'), fields["limit"].strip('"'))] = float(value)
    return out


def _audit(p: ProxyProcess) -> list[dict]:
    path = Path(p.workdir) / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- max_result_rows / max_result_bytes ------------------------------------------------------------


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_psycopg_result_cut_at_max_result_rows(proxy: ProxyProcess, prepare: bool) -> None:
    with psycopg.connect(proxy.dsn("rows_user"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_result_rows = 50"):
            conn.execute(BIG, prepare=prepare).fetchall()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # at the limit: all rows; the session usable
        assert len(conn.execute("SELECT g FROM generate_series(1, 50) g", prepare=prepare).fetchall()) == 50
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (200,)


def test_psycopg_cut_inside_a_transaction_fails_it(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("rows_user")) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute(BIG).fetchall()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_small_result_finished_by_the_server_still_fails_the_transaction(proxy: ProxyProcess) -> None:
    """A result just past the limit (the server has sent it all before any cancel): the server's transaction is
    failed too, as the client's, so a COMMIT rolls back and nothing is left half done."""
    with psycopg.connect(proxy.dsn("rows_user")) as conn:
        conn.execute("CREATE TEMP TABLE cut_t (id int)")
        conn.commit()
        conn.execute("INSERT INTO cut_t VALUES (1)")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute("SELECT g FROM generate_series(1, 51) g").fetchall()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM cut_t").fetchone() == (0,)


def test_psycopg_copy_to_stdout_cut(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("rows_user"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded), conn.cursor().copy(
                "COPY (SELECT g FROM generate_series(1, 100000) g) TO STDOUT") as copy:
            for _ in copy:
                pass
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_psycopg_fetch_from_cursor_cut(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("rows_user")) as conn:
        conn.execute(f"DECLARE c CURSOR FOR {BIG}")
        assert len(conn.execute("FETCH 50 FROM c").fetchall()) == 50  # one FETCH's result is one result
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute("FETCH 51 FROM c").fetchall()
        conn.rollback()
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_psycopg_result_cut_at_max_result_bytes(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("bytes_user"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_result_bytes = 2000"):
            conn.execute("SELECT repeat('y', 100) FROM generate_series(1, 100)").fetchall()
        assert len(conn.execute("SELECT repeat('y', 100) FROM generate_series(1, 10)").fetchall()) == 10


def test_an_error_carrying_a_whole_column_is_cut_at_max_result_bytes(proxy: ProxyProcess) -> None:
    """PostgreSQL copies a failing cast's input into its message whole: 200 rows of text left as one ErrorResponse
    past max_result_bytes (red team 7 F9); the message is cut to the limit and says so, the session goes on."""
    with psycopg.connect(proxy.dsn("bytes_user"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as exc:
            conn.execute("SELECT (SELECT string_agg(repeat('z', 50) || id::text, ',') FROM orders)::int")
        message = exc.value.diag.message_primary or ""
        assert message.startswith("invalid input syntax for type integer") and message.endswith(
            "[cut: max_result_bytes]")
        assert len(message.encode()) < 2000
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("protocol", ["simple", "pipeline"])
def test_cut_with_later_statements_run_by_the_server_ends_the_session(proxy: ProxyProcess, protocol: str) -> None:
    """A small result cut off (the server finished it before any cancel) with statements after it in the same
    request: the server ran them (the INSERT committed), so the client is not told the request failed as a whole;
    the session ends with FATAL 54000 saying so (red team 5 F1: the INSERT ran behind a reported failure)."""
    with psycopg.connect(proxy.dsn("rows_user"), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t(x int)")
        if protocol == "simple":
            with pytest.raises(psycopg.errors.ProgramLimitExceeded):  # (libpq keeps the first error: the cut)
                conn.execute("SELECT generate_series(1, 60); INSERT INTO t VALUES (4); SELECT 1")
            with pytest.raises(psycopg.OperationalError):  # then the FATAL that followed it closed the connection
                conn.execute("SELECT 1")
        else:
            said: list[str] = []
            out = _pipeline(conn, [("query", "SELECT generate_series(1, 60)"), ("query", "INSERT INTO t VALUES (1)"),
                                   ("sync", None)], said)
            assert out == [("FATAL_ERROR", "54000"), ("PIPELINE_ABORTED", None), ("FATAL_ERROR", "54000"),
                           ("CLOSED", None)]
            assert "after it in the same request ran" in said[-1] and "cut off and the statement failed" in said[0]
        assert conn.closed or conn.pgconn.status == psycopg.pq.ConnStatus.BAD
    with psycopg.connect(proxy.dsn("rows_user"), autocommit=True) as conn:  # a cut alone: the session goes on
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute("SELECT generate_series(1, 60)")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_asyncpg_result_cut_and_portal_suspended(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("rows_user"), ssl=False)
        try:
            with pytest.raises(asyncpg.exceptions.ProgramLimitExceededError):
                await conn.fetch(BIG)
            assert await conn.fetchval("SELECT 7") == 7
            # an Execute with a row limit: the portal's rows count over its suspended Executes
            async with conn.transaction():
                cur = await conn.cursor(BIG)
                assert len(await cur.fetch(30)) == 30
                with pytest.raises(asyncpg.exceptions.ProgramLimitExceededError):
                    await cur.fetch(30)
            assert conn.is_in_transaction() is False
            assert await conn.fetchval("SELECT count(*) FROM orders") == 200
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_portal_counted_until_it_ends_whatever_runs_between(proxy: ProxyProcess) -> None:
    """max_result_rows counts per portal over its suspended Executes: another statement completing between them
    does not start it again (red team 5 F4: 20-row fetches with a SELECT 1 between read 100000 rows under 50),
    and two portals read alternately each have their own count."""
    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("rows_user"), ssl=False)
        try:
            async with conn.transaction():
                cur = await conn.cursor(BIG)
                other = await conn.cursor("SELECT g FROM generate_series(1, 1000) g")
                assert len(await cur.fetch(20)) == 20
                assert await conn.fetchval("SELECT 1") == 1
                assert len(await other.fetch(30)) == 30  # its own count
                assert len(await cur.fetch(20)) == 20
                assert await conn.fetchval("SELECT 2") == 2
                assert len(await other.fetch(20)) == 20  # 50: the limit, not past it
                assert len(await cur.fetch(10)) == 10  # 50
                with pytest.raises(asyncpg.exceptions.ProgramLimitExceededError):
                    await cur.fetch(1)
            assert await conn.fetchval("SELECT 3") == 3
        finally:
            await conn.close()

    asyncio.run(main())


def test_jdbc_result_cut(proxy: ProxyProcess) -> None:
    require_jdbc()
    steps = run_jdbc(proxy.jdbc_url("rows_user"), "rows_user", proxy.password("rows_user"), "script",
                     BIG, "SELECT count(*) FROM orders", "autocommit=off", "SELECT 1", BIG, "SELECT 2", "rollback",
                     "SELECT 3")
    assert steps[0]["sqlstate"] == "54000" and "max_result_rows" in steps[0]["error"]
    assert steps[1]["results"][0]["rows"] == [["200"]]
    assert steps[4]["sqlstate"] == "54000"
    assert steps[5]["sqlstate"] == "25P02"  # the transaction failed, as after any error
    assert steps[7]["results"][0]["rows"] == [["3"]]


def test_result_cuts_counted_and_audited(proxy: ProxyProcess) -> None:
    before = _refusals(proxy).get(("rows", "max_result_rows"), 0)
    with psycopg.connect(proxy.dsn("rows_user"), autocommit=True) as conn, pytest.raises(psycopg.Error):
        conn.execute(BIG).fetchall()
    until(lambda: _refusals(proxy).get(("rows", "max_result_rows"), 0) == before + 1, timeout=10)
    until(lambda: any(e.get("event") == "limit_reached" and e.get("limit") == "max_result_rows"
                      and e.get("tenant") == "rows" for e in _audit(proxy)), timeout=10)


# --- statement_timeout ----------------------------------------------------------------------------


@pytest.mark.parametrize("raise_it", ["SET statement_timeout = 0", "SET statement_timeout = '1h'",
                                      "SELECT set_config('statement_timeout', '0', false)"])
def test_statement_timeout_not_raisable(proxy: ProxyProcess, raise_it: str) -> None:
    with psycopg.connect(proxy.dsn("slow_user"), autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)  # the tenant's, as the server's
        conn.execute(raise_it)
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute("SELECT pg_sleep(5)")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_statement_timeout_in_a_transaction_and_startup_option(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("slow_user"), options="-c statement_timeout=0") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)  # what it asked for; clamped at startup
        conn.execute("SET LOCAL statement_timeout = 0")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        conn.execute("SET statement_timeout = '1h'")
        conn.execute("RESET statement_timeout")  # back to its startup value, as it asked for it
        assert conn.execute("SELECT current_setting('statement_timeout')").fetchone() == ("0",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        conn.rollback()
    with psycopg.connect(proxy.dsn("slow_user"), options="-c statement_timeout=200") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("200ms",)  # lower: the client's own
    for zero in ("0.00001min", "0.0005h"):  # 0 s / 0 min on PostgreSQL (red team 9r F3): the limit holds
        with psycopg.connect(proxy.dsn("slow_user"), options=f"-c statement_timeout={zero}") as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("0",), zero  # what it asked for, as 0
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(5)")


RAISES = {"SET statement_timeout = 0": "0", "SET SESSION statement_timeout TO '1h'": "1h",
          "SET statement_timeout = '0.4'": "0",
          # PostgreSQL rounds a fraction of a unit to the next smaller unit first: 0 s / 0 min / 0 h, i.e. no
          # timeout (red team 9r F3)
          "SET statement_timeout = '0.00001 min'": "0", "SET statement_timeout = '0.000001h'": "0",
          "SELECT set_config('statement_timeout', '0.00000001d', false)": "0",
          "SELECT pg_catalog.set_config('statement_timeout', '2min', false)": "2min"}


def _shown(conn: psycopg.Connection) -> tuple[str, ...]:
    """statement_timeout as the client reads it: SHOW, current_setting(), pg_settings (ms), SHOW ALL."""
    show = conn.execute("SHOW statement_timeout").fetchone()[0]  # type: ignore[index]
    current = conn.execute("SELECT current_setting('statement_timeout')").fetchone()[0]  # type: ignore[index]
    settings = conn.execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'").fetchone()[0]  # type: ignore[index]
    show_all = dict(r[:2] for r in conn.execute("SHOW ALL").fetchall())["statement_timeout"]
    return show, current, settings, show_all


def _canceled_at_the_limit(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
        conn.execute("SELECT pg_sleep(3)")


@pytest.mark.parametrize("raise_it", list(RAISES))
def test_statement_timeout_raised_reaches_the_server_as_the_limit(proxy: ProxyProcess, raise_it: str) -> None:
    """The server itself holds the limit (not only the proxy's watchdog): a raise reaches PostgreSQL as the limit,
    on every server the session gets afterwards (transaction pooling replays it), while the client reads back what
    it set, as on a direct connection (SHOW, current_setting, pg_settings, SHOW ALL, set_config's result); RESET,
    SET ... TO DEFAULT, RESET ALL and DISCARD ALL return to the limit, the servers' own startup value (and what
    the client reads); SET LOCAL ends with its transaction, a SET rolled back is undone."""
    shown = RAISES[raise_it]
    ms = {"0": "0", "1h": "3600000", "2min": "120000"}[shown]
    local = ("SET LOCAL " + raise_it[4:].replace("SESSION ", "") if raise_it.startswith("SET ")
             else raise_it.replace("false", "true"))
    with psycopg.connect(proxy.dsn("slow_user"), autocommit=True) as conn:
        assert _shown(conn) == ("1s", "1s", "1000", "1s")
        cur = conn.execute(raise_it)
        if raise_it.startswith("SELECT"):
            assert cur.fetchone() == (shown,)  # set_config() returns the value as set
        for _ in range(2):  # (each its own transaction: another server in transaction pooling)
            assert _shown(conn) == (shown, shown, ms, shown)
            _canceled_at_the_limit(conn)
        conn.execute("SET statement_timeout = 300")  # lower: the client's own, on the server
        assert _shown(conn) == ("300ms", "300ms", "300", "300ms")
        for reset in ("RESET statement_timeout", "SET statement_timeout TO DEFAULT", "RESET ALL", "DISCARD ALL"):
            conn.execute(raise_it)
            conn.execute(reset)
            assert _shown(conn) == ("1s", "1s", "1000", "1s"), reset
        with conn.transaction():  # SET LOCAL, and a RESET inside a transaction block
            conn.execute(local)
            assert _shown(conn)[:2] == (shown, shown)
            conn.execute("RESET statement_timeout")
            assert _shown(conn)[:2] == ("1s", "1s")
            conn.execute(local)
        assert _shown(conn) == ("1s", "1s", "1000", "1s")  # SET LOCAL: gone at the commit
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute(raise_it)
            assert _shown(conn)[:2] == (shown, shown)
            conn.execute("SELECT 1/0")
        assert _shown(conn) == ("1s", "1s", "1000", "1s")  # rolled back
        _canceled_at_the_limit(conn)


def test_statement_timeout_shown_through_the_extended_protocol_and_pipelines(proxy: ProxyProcess) -> None:
    """psycopg's server-side binds (extended protocol), in a pipeline with the SET: the reads decided after the SET
    in the same batch show it."""
    with psycopg.connect(proxy.dsn("slow_user"), autocommit=True) as conn:
        with conn.pipeline():
            conn.execute("SET statement_timeout = '1h'")
            cur = conn.execute("SELECT current_setting('statement_timeout'), %s::int", (1,))
        assert cur.fetchone() == ("1h", 1)
        assert conn.execute("SELECT current_setting('statement_timeout'), %s::text", ("x",)).fetchone() == (
            "1h", "x")
        # (a name known only at run time reads PostgreSQL's value: the rewrite needs the name written)
        assert conn.execute("SELECT current_setting(%s)", ("statement_timeout",)).fetchone() == ("1s",)
        _canceled_at_the_limit(conn)


_NUMBERS = ("1", "0.4", "0.5", "1.5", "2.5", "0.0004", "0.0005", "0.0006", "0.00001", "0.000001", "0.00000001",
            "0.0083", "0.0084", "0.0583333333333333", "0.0584", "1e-3", "2e-5", ".5", "010", "0x10", "08", "5_000")
_SHOWN_UNITS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNITS = ("", "us", "ms", " s", "min", " h", "d", "MIN", "sec")


def test_setting_milliseconds_is_what_postgresql_holds(pg: PgCluster) -> None:
    """The proxy's reading of a statement_timeout value (policy/settings.setting_milliseconds) is the value the
    server itself holds, over a table of numbers x units (PostgreSQL rounds a fraction of a unit to the next smaller
    unit first: '0.00001 min' is 0 s, i.e. no timeout: red team 9r F3); None exactly where PostgreSQL refuses it."""
    wrong = []
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for number in _NUMBERS:
            for unit in _UNITS:
                value = number + unit
                try:  # (local to the statement's own transaction: a 1 ms timeout would cancel the next one)
                    row = conn.execute("SELECT set_config('statement_timeout', %s, true)", [value]).fetchone()
                    shown = re.fullmatch(r"(\d+)(ms|s|min|h|d)?", row[0])  # type: ignore[index]
                    assert shown is not None, row
                    held = int(shown[1]) * _SHOWN_UNITS[shown[2] or "ms"]
                except psycopg.errors.Error:
                    held = None
                if setting_milliseconds(value) != held:
                    wrong.append((value, setting_milliseconds(value), held))
    assert wrong == []


def test_statement_timeout_unreadable_value_refused(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("slow_user"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="statement_timeout_limit"):
            conn.execute("SELECT set_config('statement_timeout', (60 * 1000)::text, false)")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)


def test_asyncpg_statement_timeout_raised_reaches_the_server_as_the_limit(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("slow_user"), ssl=False,
                                     server_settings={"statement_timeout": "0"})
        try:
            assert await conn.fetchval("SHOW statement_timeout") == "0"  # as it asked (the server has the limit)
            await conn.execute("SET statement_timeout = '10min'")
            assert await conn.fetchval("SELECT current_setting('statement_timeout')") == "10min"  # the client's own
            with pytest.raises(asyncpg.exceptions.InvalidParameterValueError, match="statement_timeout_limit"):
                await conn.fetchval("SELECT set_config('statement_timeout', $1, false)", "0")  # unknown value
            assert await conn.fetchval("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'") == "600000"
            with pytest.raises(asyncpg.exceptions.QueryCanceledError):
                await conn.execute("SELECT pg_sleep(5)")
        finally:
            await conn.close()

    asyncio.run(main())


def test_jdbc_statement_timeout_raised_reaches_the_server_as_the_limit(proxy: ProxyProcess) -> None:
    require_jdbc()
    steps = run_jdbc(proxy.jdbc_url("slow_user"), "slow_user", proxy.password("slow_user"), "script",
                     "SET statement_timeout = 0", "SHOW statement_timeout", "SELECT pg_sleep(5)", "SELECT 3")
    assert steps[1]["results"][0]["rows"] == [["0"]]  # what the client set; the server has the limit
    assert steps[2]["sqlstate"] == "57014"
    assert steps[3]["results"][0]["rows"] == [["3"]]


def _pipeline(conn: psycopg.Connection, steps: list[tuple[str, object]],
              messages: list[str] | None = None) -> list[tuple[str, str | None]]:
    """Run libpq pipeline steps (("query", sql), ("flush", None), ("sync", None), ("sleep", seconds)) and read
    every result up to the last Sync: (status name, SQLSTATE); ("CLOSED", None) ends them when the server closes
    the connection. `messages` gets the errors' primary messages."""
    pg = conn.pgconn
    pg.enter_pipeline_mode()
    syncs = 0
    for step, arg in steps:
        if step == "query":
            pg.send_query_params(str(arg).encode(), None)
        elif step == "flush":
            pg.send_flush_request()
        elif step == "sync":
            pg.pipeline_sync()
            syncs += 1
        else:
            pg.flush()
            time.sleep(float(arg))  # type: ignore[arg-type]
    pg.flush()
    out: list[tuple[str, str | None]] = []
    while syncs:
        try:
            while pg.is_busy():
                pg.consume_input()
                time.sleep(0.01)
        except psycopg.OperationalError:
            out.append(("CLOSED", None))
            return out
        r = pg.get_result()
        if r is None:
            continue
        status = psycopg.pq.ExecStatus(r.status).name
        sqlstate = r.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
        out.append((status, sqlstate and sqlstate.decode()))
        if messages is not None and sqlstate:
            messages.append((r.error_field(psycopg.pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode())
        syncs -= status == "PIPELINE_SYNC"
    pg.exit_pipeline_mode()
    return out


def test_statement_timeout_after_an_idle_gap_of_an_open_batch(proxy: ProxyProcess) -> None:
    """The watchdog's first cancel reaches a server waiting for the batch's next message (ignored there): the
    statement the client sends later in the same batch is canceled too (red team 5 F7: it ran unbounded)."""
    with psycopg.connect(proxy.dsn("slow_user"), autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        out = _pipeline(conn, [("query", "SELECT 1"), ("flush", None), ("sleep", 1.6),
                               ("query", "SELECT pg_sleep(10)"), ("sync", None)])
        assert out == [("TUPLES_OK", None), ("FATAL_ERROR", "57014"), ("PIPELINE_SYNC", None)]
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_idle_in_transaction_timeout_of_a_batch_left_open(proxy: ProxyProcess) -> None:
    """A batch left open without its Sync inside a transaction, the server waiting for it: once statement_timeout's
    cancel found nothing to stop, idle_in_transaction_timeout ends the session (red team 5 F8: 12 s idle in BEGIN
    under a 5 s limit, neither ended nor canceled)."""
    with psycopg.connect(proxy.dsn("slowidle_user"), autocommit=True) as conn:
        said: list[str] = []
        out = _pipeline(conn, [("query", "BEGIN"), ("query", "SELECT count(*) FROM orders"), ("flush", None),
                               ("sleep", 4.0), ("query", "SELECT 1"), ("sync", None)], said)
        assert out[:2] == [("COMMAND_OK", None), ("TUPLES_OK", None)]
        assert ("FATAL_ERROR", "25P03") in out and out[-1] == ("CLOSED", None)
        assert any("idle_in_transaction_timeout is 1 s" in text for text in said)


def test_statement_timeout_while_a_result_is_cut_with_a_request_behind(proxy: ProxyProcess) -> None:
    """A result cut with another request pipelined behind it (no cancel for the cut) is still canceled at
    statement_timeout (red team 5 F2: 40 rows of 1 s each ran to their end)."""
    before = _refusals(proxy).get(("slowrows", "statement_timeout"), 0)
    slow = ("SELECT g, repeat('x', 3000), pg_sleep(CASE WHEN g > 8 THEN 1 ELSE 0 END) "
            "FROM generate_series(1, 40) g")
    with psycopg.connect(proxy.dsn("slowrows_user"), autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        out = _pipeline(conn, [("query", slow), ("sync", None), ("query", "SELECT 1"), ("sync", None)])
        assert out == [("FATAL_ERROR", "54000"), ("PIPELINE_SYNC", None), ("TUPLES_OK", None),
                       ("PIPELINE_SYNC", None)]
        assert conn.execute("SELECT 2").fetchone() == (2,)
    until(lambda: _refusals(proxy).get(("slowrows", "statement_timeout"), 0) == before + 1, timeout=10)


# --- idle_in_transaction_timeout, max_client_connections --------------------------------------------


def test_idle_in_transaction_timeout_ends_the_session(proxy: ProxyProcess) -> None:
    conn = psycopg.connect(proxy.dsn("idle_user"))
    try:
        conn.execute("SELECT 1")
        time.sleep(2.5)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout, match="idle_in_transaction_timeout is 1 s"):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    with psycopg.connect(proxy.dsn("idle_user"), autocommit=True) as fresh:  # idle outside a transaction: kept
        time.sleep(1.5)
        assert fresh.execute("SELECT 1").fetchone() == (1,)
    until(lambda: _refusals(proxy).get(("idle", "idle_in_transaction_timeout"), 0) >= 1, timeout=10)


def test_max_client_connections(proxy: ProxyProcess) -> None:
    first = psycopg.connect(proxy.dsn("conns_user"))
    second = psycopg.connect(proxy.dsn("conns_user"))
    try:
        with pytest.raises(psycopg.OperationalError, match="max_client_connections is 2") as info:
            psycopg.connect(proxy.dsn("conns_user"))
        assert "53300" in str(info.value) or "too many connections" in str(info.value)
        with psycopg.connect(proxy.dsn("rows_user")) as other:  # another tenant is not counted
            assert other.execute("SELECT 1").fetchone() == (1,)
    finally:
        second.close()
    with psycopg.connect(proxy.dsn("conns_user")) as again:  # a place freed
        assert again.execute("SELECT 1").fetchone() == (1,)
    first.close()
    until(lambda: _refusals(proxy).get(("conns", "max_client_connections"), 0) >= 1, timeout=10)


# --- max_concurrent_queries -----------------------------------------------------------------------


def _sleep_in_background(p: ProxyProcess, user: str, seconds: float) -> tuple[threading.Thread, threading.Event]:
    """A session of `user` running pg_sleep(seconds) in a thread; the event is set once its query is sent."""
    conn = psycopg.connect(p.dsn(user), autocommit=True)
    sent = threading.Event()

    def run() -> None:
        try:
            sent.set()
            conn.execute(f"SELECT pg_sleep({seconds})")
        finally:
            conn.close()

    thread = threading.Thread(target=run)
    thread.start()
    sent.wait()
    return thread, sent


def _running(p: ProxyProcess) -> bool:
    return bool(p.cluster.execute(
        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(%'"))


def test_max_concurrent_queries_wait_times_out_other_tenant_unaffected(proxy: ProxyProcess) -> None:
    before = _refusals(proxy).get(("conc", "max_concurrent_queries"), 0)
    with psycopg.connect(proxy.dsn("conc_user"), autocommit=True) as waiting:
        busy, _ = _sleep_in_background(proxy, "conc_user", 4)
        until(lambda: _running(proxy), timeout=10)
        with psycopg.connect(proxy.dsn("rows_user"), autocommit=True) as other:  # its own limit: not waiting
            assert other.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.TooManyConnections, match="max_concurrent_queries = 1"):
            waiting.execute("SELECT 1")
        assert waiting.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        busy.join()
        assert waiting.execute("SELECT 2").fetchone() == (2,)  # usable, its turn comes at once now
    until(lambda: _refusals(proxy).get(("conc", "max_concurrent_queries"), 0) == before + 1, timeout=10)


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_max_concurrent_queries_waits_for_its_turn(proxy: ProxyProcess, prepare: bool) -> None:
    """The second request waits while the first runs, then runs; a transaction keeps its turn to its end."""
    with psycopg.connect(proxy.dsn("queue_user")) as tx, psycopg.connect(proxy.dsn("queue_user"),
                                                                          autocommit=True) as other:
        tx.execute("SELECT 1")  # a transaction block holds the turn between its statements
        done: list[object] = []
        thread = threading.Thread(target=lambda: done.append(other.execute("SELECT 5", prepare=prepare).fetchone()))
        thread.start()
        thread.join(1.0)  # (bounded: the thread is waiting for its turn, asserted below)
        assert done == []
        assert tx.execute("SELECT 3").fetchone() == (3,)
        tx.commit()
        thread.join(30)
        assert done == [(5,)]


@pytest.fixture(scope="module", params=["transaction", "session"])
def pooled(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[ProxyProcess]:
    """Both pool modes (in transaction pooling a batch without its Sync can also give its server back), tenant
    "prep": one query at a time, a 1 s wait for it, a 1 s statement_timeout."""
    prepare_backend(pg)
    p = ProxyProcess(
        pg, tmp_path_factory.mktemp("pgtenant-limits-pooled"), backend_sslmode="disable",
        pool={"pool_mode": request.param},
        extra_tenants={"prep": {"strategy": "shared", "database": "saas", "tenant_id": "acme",
                                "max_concurrent_queries": 1, "query_wait_timeout": 1.0, "statement_timeout": 1.0}},
        extra_users={"prep_user": ("prep", "prep-pw")},
    )
    p.start()
    yield p
    p.stop()


def test_asyncpg_prepare_holds_no_turn_and_no_watchdog(pooled: ProxyProcess) -> None:
    """Red team 9r F9: asyncpg's prepare() (Parse/Describe/Flush, no Sync), answered in full, ends its request: it
    gives its max_concurrent_queries turn back (another session of the tenant runs, not 53300 after
    query_wait_timeout) and starts no statement_timeout watchdog (its first use after longer than the limit runs,
    not 57014), in both pool modes; the server's transaction the Parse opened ends too (its table locks go)."""

    async def main() -> None:
        conn = await asyncpg.connect(pooled.url("prep_user"), ssl=False)
        try:
            stmt = await conn.prepare("SELECT count(*) FROM orders WHERE amount > $1")
            with psycopg.connect(pooled.dsn("prep_user"), autocommit=True) as other:
                assert other.execute("SELECT 1").fetchone() == (1,)
            assert not pooled.cluster.execute(  # (PostgreSQL holds a Parse's locks until its transaction ends)
                "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'orders' "
                "AND l.pid <> pg_backend_pid()", dbname="saas")
            await asyncio.sleep(1.5)  # (longer than statement_timeout, idle between prepare() and the first use)
            assert await stmt.fetchval(0) == 200
            assert await conn.fetchval("SELECT 2") == 2
        finally:
            await conn.close()

    asyncio.run(main())


def _grants(p: ProxyProcess) -> int:
    """Servers the pool handed out, every tenant (pgtenant_pool_wait_seconds_count): a kept server's reuse is none."""
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(int(float(ln.split()[-1])) for ln in lines if ln.startswith("pgtenant_pool_wait_seconds_count{"))


def test_a_session_with_a_turn_per_request_keeps_its_server_between_requests(pooled: ProxyProcess) -> None:
    """max_concurrent_queries in transaction pooling: the turn goes back at each request's end, the server is kept
    (sticky servers); the next request resumes it when its turn is free at once. Another session of the tenant takes
    its turn (and a server) in between; both go on."""
    with psycopg.connect(pooled.dsn("prep_user"), autocommit=True) as a:
        server = a.execute("SELECT pg_backend_pid()").fetchone()
        before = _grants(pooled)
        for _ in range(3):
            assert a.execute("SELECT pg_backend_pid()").fetchone() == server
        assert _grants(pooled) == before  # no handoff: the kept server each time
        with psycopg.connect(pooled.dsn("prep_user"), autocommit=True) as b:
            assert b.execute("SELECT 1").fetchone() == (1,)
        assert a.execute("SELECT 2").fetchone() == (2,)
