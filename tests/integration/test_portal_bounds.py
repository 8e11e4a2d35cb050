"""The portals and cursors a session holds open at once are bounded ([pool] max_session_portals; red team 20s M0:
~24 KB of the backend's memory per open protocol portal, 9.5 GB at 400,000 from one login; ~60 KB per DECLAREd
cursor; M1: each may keep a sort of work_mem), in both pool modes: the Bind of a new named portal and the DECLARE past
the bound fail with 54000 before they reach the server, the session goes on (a transaction block failed as after any
error), Close / CLOSE / CLOSE ALL / the transaction's end free room; real clients that close what they open are never
refused."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.jdbc import JdbcError, require_jdbc, run_jdbc
from tests.support.odbc import connection_string, require_odbc
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, prepare_backend

PORTALS = 6  # [pool] max_session_portals of the proxy


@pytest.fixture(scope="module", params=["transaction", "session"])
def bounded(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), backend_sslmode="disable",
                     pool={"pool_mode": request.param, "query_wait_timeout": 30.0, "max_session_portals": PORTALS})
    p.start()
    yield p
    p.stop()


def _denied(p: ProxyProcess) -> float:
    text = urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("pgtenant_denied_statements_total{") and 'rule="session_portals_limit"' in line)


def _query(sock: object, sql: str) -> list[tuple[bytes, bytes]]:
    return wire.exchange(sock, m.Query(sql).encode())  # type: ignore[arg-type]


def _portals(sock: object, names: list[str]) -> list[tuple[bytes, bytes]]:
    """Bind + Execute (one row) of each named portal of statement "ps", then one Sync: left suspended, open."""
    batch = b"".join(wire.bind("ps", n) + wire.execute(n, 1) for n in names) + wire.SYNC
    return wire.exchange(sock, batch)  # type: ignore[arg-type]


def _kinds(msgs: list[tuple[bytes, bytes]]) -> str:
    return "".join(t.decode() for t, _ in msgs)


def test_protocol_portals_past_the_bound_fail_at_the_bind(bounded: ProxyProcess) -> None:
    """The red team's shape scaled down (alice, shared strategy): BEGIN, then batches of Bind/Execute(max_rows 1)
    of distinct named portals, each batch Synced."""
    before = _denied(bounded)
    sock = wire.connect(bounded, "alice")
    try:
        assert _kinds(_query(sock, "BEGIN")).endswith("Z")
        assert wire.errors_in(wire.exchange(sock, wire.parse("SELECT generate_series(1, 3)", "ps") + wire.SYNC)) == []
        out = _portals(sock, [f"p{i}" for i in range(PORTALS - 2)])
        assert wire.errors_in(out) == [] and _kinds(out).count("s") == PORTALS - 2
        out = _portals(sock, [f"p{i}" for i in range(PORTALS - 2, PORTALS)])  # exactly the bound, across batches
        assert wire.errors_in(out) == [] and out[-1] == (b"Z", b"T")
        out = _portals(sock, [f"p{PORTALS}", f"p{PORTALS + 1}"])
        [err] = wire.errors_in(out)
        assert err["C"] == "54000" and f"max_session_portals = {PORTALS}" in err["M"] and "Close" in err["H"]
        assert out[-1] == (b"Z", b"E")  # the transaction failed, as after any error
        assert _kinds(_query(sock, "ROLLBACK")).endswith("Z")
        assert _kinds(_query(sock, "BEGIN")).endswith("Z")  # the session goes on; the transaction's end freed room
        out = _portals(sock, [f"q{i}" for i in range(PORTALS)])
        assert wire.errors_in(out) == [] and _kinds(out).count("s") == PORTALS
        out = wire.exchange(sock, m.frame(b"C", b"Pq0\x00") + m.frame(b"C", b"Pq1\x00") + wire.SYNC)
        assert _kinds(out) == "33Z"
        out = _portals(sock, ["q0", "r1"])  # closed: room for two again
        assert wire.errors_in(out) == [] and _kinds(out).count("s") == 2
        [err] = wire.errors_in(_portals(sock, ["r2"]))
        assert err["C"] == "54000"
        assert _kinds(_query(sock, "ROLLBACK")).endswith("Z")
        assert wire.errors_in(_query(sock, "SELECT 1")) == []
    finally:
        sock.close()
    assert _denied(bounded) - before == 2  # (one per batch: PostgreSQL skips the rest of it)


def test_closes_skipped_after_an_error_free_nothing(bounded: ProxyProcess) -> None:
    """Closes PostgreSQL skips (after an error in their batch; a string failing before its CLOSE or COMMIT) then
    ROLLBACK TO a savepoint set after the portals were opened (they stay open), or a Parse of COMMIT never run:
    the portals still count."""
    sock = wire.connect(bounded, "alice")
    try:
        _query(sock, "BEGIN")
        wire.exchange(sock, wire.parse("SELECT generate_series(1, 3)", "ps") + wire.SYNC)
        assert wire.errors_in(_portals(sock, [f"p{i}" for i in range(PORTALS)])) == []
        _query(sock, "SAVEPOINT s")
        closes = b"".join(m.frame(b"C", f"Pp{i}\x00".encode()) for i in range(PORTALS))
        out = wire.exchange(sock, wire.parse("SELECT 1/0") + wire.bind() + wire.execute() + closes + wire.SYNC)
        assert [e["C"] for e in wire.errors_in(out)] == ["22012"] and out[-1] == (b"Z", b"E")
        assert wire.errors_in(_query(sock, "ROLLBACK TO s")) == []
        [err] = wire.errors_in(_portals(sock, ["x0"]))  # p0..p5 are still open on the server
        assert err["C"] == "54000"
        _query(sock, "ROLLBACK TO s")
        out = _query(sock, "SELECT 1/0; CLOSE ALL; COMMIT")
        assert [e["C"] for e in wire.errors_in(out)] == ["22012"]
        _query(sock, "ROLLBACK TO s")
        [err] = wire.errors_in(_portals(sock, ["x1"]))
        assert err["C"] == "54000"
        _query(sock, "ROLLBACK TO s")
        assert wire.errors_in(wire.exchange(sock, wire.parse("COMMIT", "cs") + wire.parse("CLOSE ALL", "ca") +
                                            wire.SYNC)) == []
        [err] = wire.errors_in(_portals(sock, ["x2"]))
        assert err["C"] == "54000"
        _query(sock, "ROLLBACK TO s")
        out = wire.exchange(sock, m.frame(b"C", b"Pp0\x00") + wire.SYNC)  # a Close that runs frees room
        assert _kinds(out) == "3Z"
        assert wire.errors_in(_portals(sock, ["x3"])) == []
        _query(sock, "ROLLBACK")
    finally:
        sock.close()


def test_a_batch_of_many_binds_past_the_bound_gets_54000(bounded: ProxyProcess) -> None:
    """The red team's batch, 8,000 Binds past the bound: the client's error is the proxy's 54000 (a marker per Bind
    pushed the first one's error out of the bounded denials: 26000 "prepared statement ... does not exist"), one
    refusal counted for the batch; the next batch's refusal is 54000 again."""
    before = _denied(bounded)
    sock = wire.connect(bounded, "alice")
    try:
        _query(sock, "BEGIN")
        wire.exchange(sock, wire.parse("SELECT generate_series(1, 3)", "ps") + wire.SYNC)
        for batch in range(2):
            out = _portals(sock, [f"b{batch}_{i}" for i in range(8000)])
            [err] = wire.errors_in(out)
            assert err["C"] == "54000" and "max_session_portals" in err["M"]
            _query(sock, "ROLLBACK")
            _query(sock, "BEGIN")
        _query(sock, "ROLLBACK")
    finally:
        sock.close()
    assert _denied(bounded) - before == 2


def _declare(i: int, hold: str = "") -> str:
    return f"DECLARE rpc{i} CURSOR {hold} FOR SELECT g FROM generate_series(1, 3) g"


def test_sql_cursors_past_the_bound_fail_at_the_declare(bounded: ProxyProcess) -> None:
    """Plain DECLAREd cursors of a transaction: alone, in one string, CLOSE and CLOSE ALL freeing room."""
    with psycopg.connect(bounded.dsn("alice")) as a:
        a.execute(";".join(_declare(i) for i in range(PORTALS - 1)))  # (psycopg opened the transaction)
        a.execute(_declare(PORTALS - 1))  # exactly the bound
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=f"max_session_portals = {PORTALS}"):
            a.execute(_declare(PORTALS))
        a.rollback()
        a.execute(";".join(_declare(i) for i in range(PORTALS)))
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="session_portals_limit"):
            a.execute(f"CLOSE rpc0; {_declare(100)}; {_declare(101)}")  # past it within one string: none runs
        a.rollback()
        a.execute(";".join(_declare(i) for i in range(PORTALS)))
        a.execute(f"CLOSE rpc0; {_declare(100)}")
        assert a.execute("FETCH 2 FROM rpc100").fetchall() == [(1,), (2,)]
        a.execute("CLOSE ALL")
        a.execute(";".join(_declare(i, "") for i in range(200, 200 + PORTALS)))
        a.commit()
        a.execute(";".join(_declare(i) for i in range(PORTALS)))  # the COMMIT freed them
        a.commit()


@pytest.mark.parametrize("closer", ["SELECT 1/0; COMMIT", "SELECT 1/0; CLOSE ALL", "SELECT 1/0; ROLLBACK",
                                    "DISCARD ALL"])
def test_cursors_before_a_close_that_never_runs_stay_counted(bounded: ProxyProcess, closer: str) -> None:
    """Red team 20b F1: one string of DECLAREs, a SAVEPOINT, then a closer PostgreSQL never runs (an error before
    it; DISCARD ALL fails inside a transaction); `ROLLBACK TO` keeps the cursors, which were never counted: sent again
    and again, 1,980 cursors open at a bound of 100. They count now: the next string's first DECLARE is refused."""
    with psycopg.connect(bounded.dsn("alice")) as a:
        declares = ";".join(_declare(i) for i in range(PORTALS - 1))
        with pytest.raises(psycopg.errors.Error):
            a.execute(f"{declares}; SAVEPOINT s; {closer}")
        a.execute("ROLLBACK TO s")
        assert a.execute("SELECT count(*) FROM pg_cursors").fetchone() == (PORTALS - 1,)
        a.execute(_declare(50))  # exactly the bound
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="session_portals_limit"):
            a.execute(_declare(51))
        a.rollback()
        a.execute(declares)  # the transaction's end freed them
        a.rollback()


def test_with_hold_cursors_and_commits_in_one_string(bounded: ProxyProcess) -> None:
    """Review 20 F9: `DECLARE h0 … WITH HOLD; COMMIT; DECLARE h1 … WITH HOLD; COMMIT; …` in one Query opened 20
    cursors at a bound of 6 (each COMMIT reset the string's count); the string past the bound is refused now."""
    with psycopg.connect(bounded.dsn("alice"), autocommit=True) as a:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="session_portals_limit"):
            a.execute("; ".join(f"{_declare(i, 'WITH HOLD')}; COMMIT" for i in range(PORTALS + 2)))
        assert a.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
        a.execute("; ".join(f"{_declare(i, 'WITH HOLD')}; COMMIT" for i in range(PORTALS)))
        assert a.execute("SELECT count(*) FROM pg_cursors").fetchone() == (PORTALS,)
        a.execute("CLOSE ALL")


def test_with_hold_cursors_count_after_the_commit(bounded: ProxyProcess) -> None:
    """WITH HOLD cursors stay open past their transaction (with their rows) and count beside the portals."""
    with psycopg.connect(bounded.dsn("alice"), autocommit=True) as a:
        a.execute(";".join(_declare(i, "WITH HOLD") for i in range(PORTALS - 1)))
        a.execute("BEGIN")
        a.execute(_declare(50))  # exactly the bound: 5 held + 1
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="session_portals_limit"):
            a.execute(_declare(51))
        a.execute("ROLLBACK")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="session_portals_limit"):
            a.execute(_declare(60, "WITH HOLD") + ";" + _declare(61, "WITH HOLD"))
        assert a.execute("FETCH 1 FROM rpc0").fetchone() == (1,)  # the session goes on with what it holds
        a.execute("CLOSE rpc0; CLOSE rpc1")
        a.execute(_declare(60, "WITH HOLD") + ";" + _declare(61, "WITH HOLD"))
        a.execute("CLOSE ALL")
        a.execute(";".join(_declare(i, "WITH HOLD") for i in range(PORTALS)))
        a.execute("CLOSE ALL")


def test_psycopg_named_cursors(bounded: ProxyProcess) -> None:
    """psycopg's named (server-side) cursors: many in a loop, each closed, never refused; past the bound held open
    at once, refused; closing one makes room."""
    with psycopg.connect(bounded.dsn("alice")) as a:
        for i in range(3 * PORTALS):
            with a.cursor(name=f"nc{i}") as cur:
                cur.itersize = 2
                cur.execute("SELECT g FROM generate_series(1, 5) g")
                assert [r[0] for r in cur] == [1, 2, 3, 4, 5]
        a.commit()
        held = [a.cursor(name=f"open{i}") for i in range(PORTALS)]
        for cur in held:
            cur.execute("SELECT g FROM generate_series(1, 5) g")
            assert cur.fetchmany(2) == [(1,), (2,)]
        extra = a.cursor(name="one_more")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_session_portals"):
            extra.execute("SELECT 1")
        a.rollback()
        held = [a.cursor(name=f"again{i}") for i in range(PORTALS)]
        for cur in held:
            cur.execute("SELECT g FROM generate_series(1, 5) g")
        assert a.execute("SELECT 1").fetchone() == (1,)  # at the bound: the unnamed portal still runs
        held[0].close()
        late = a.cursor(name="late")
        late.execute("SELECT g FROM generate_series(1, 5) g")
        assert late.fetchone() == (1,)
        a.commit()


def _jdbc(p: ProxyProcess, seq: int, open_: int) -> object:
    return run_jdbc(p.jdbc_url("alice", sslmode="disable"), "alice", p.password("alice"), "openresults", seq, open_)


def test_pgjdbc_fetch_size_result_sets(bounded: ProxyProcess) -> None:
    """pgJDBC, autocommit off and setFetchSize: each ResultSet is a named portal (C_n) suspended between fetches;
    18 read one after another (pgJDBC closes each portal with its ResultSet) and then 6 open at once are never
    refused; 7 open at once are."""
    require_jdbc()
    assert _jdbc(bounded, 3 * PORTALS, PORTALS) == {"rows": 3 * PORTALS + 10 * PORTALS}
    with pytest.raises(JdbcError) as info:
        _jdbc(bounded, 0, PORTALS + 1)
    assert info.value.sqlstate == "54000" and "max_session_portals" in info.value.driver_message


def test_psqlodbc_use_declare_fetch(bounded: ProxyProcess) -> None:
    """psqlODBC with Tableau's UseDeclareFetch=1 (a DECLARE ... WITH HOLD per open statement, fetched in pieces,
    CLOSEd when read): 18 queries one after another and 6 statements open at once are never refused; a 7th open at
    once is."""
    require_odbc()
    import pyodbc

    connstr = connection_string(port=bounded.port, database="saas", user="alice", password=bounded.password("alice"),
                                options={"UseDeclareFetch": 1, "Fetch": 2})
    conn = pyodbc.connect(connstr, autocommit=True, timeout=10)
    try:
        for i in range(3 * PORTALS):
            cur = conn.cursor()
            assert [r[0] for r in cur.execute(f"SELECT g + {i} FROM generate_series(1, 5) g").fetchall()] == [
                1 + i, 2 + i, 3 + i, 4 + i, 5 + i]
            cur.close()
        held = []
        for _ in range(PORTALS):
            cur = conn.cursor()
            assert cur.execute("SELECT g FROM generate_series(1, 5) g").fetchone()[0] == 1
            held.append(cur)
        extra = conn.cursor()
        with pytest.raises(pyodbc.Error, match=r"54000|max_session_portals"):
            extra.execute("SELECT g FROM generate_series(1, 5) g").fetchone()
        # (the error failed psqlODBC's transaction, which it rolls back: its cursors declared in it are gone, as
        # after any error of PostgreSQL's own)
        for cur in [*held, extra]:
            cur.close()
        again = [conn.cursor() for _ in range(PORTALS)]  # the session goes on, with room again
        for cur in again:
            assert cur.execute("SELECT g FROM generate_series(1, 5) g").fetchone()[0] == 1
        assert [r[0] for r in again[0].fetchall()] == [2, 3, 4, 5]
        for cur in again:
            cur.close()
    finally:
        conn.close()


def test_asyncpg_cursors(bounded: ProxyProcess) -> None:
    """asyncpg's cursors (a named portal __asyncpg_portal_N__ each, Execute with a row count): many in a loop of one
    transaction, each read to its end, are never refused."""
    import asyncio

    import asyncpg

    async def run() -> list[int]:
        conn = await asyncpg.connect(bounded.url("alice"), statement_cache_size=0)
        try:
            totals = []
            async with conn.transaction():
                for i in range(3 * PORTALS):
                    totals.append(sum([r[0] async for r in conn.cursor(
                        f"SELECT g + {i} FROM generate_series(1, 5) g", prefetch=2)]))
                cur = await conn.cursor("SELECT g FROM generate_series(1, 5) g")
                totals.append(len(await cur.fetch(2)))
            return totals
        finally:
            await conn.close()

    assert asyncio.run(run()) == [15 + 5 * i for i in range(3 * PORTALS)] + [2]


def _extended(sock: object, statements: list[str]) -> list[tuple[bytes, bytes]]:
    """Parse + Bind + Execute of each statement (unnamed), then one Sync."""
    batch = b"".join(wire.parse(sql) + wire.bind() + wire.execute() for sql in statements) + wire.SYNC
    return wire.exchange(sock, batch)  # type: ignore[arg-type]


def _open_cursors(sock: object) -> int:
    out = _query(sock, "SELECT count(*) FROM pg_cursors WHERE name <> ''")
    return int(next(body for t, body in out if t == b"D")[6:])


def test_cursors_declared_and_closed_over_the_extended_protocol(bounded: ProxyProcess) -> None:
    """Review 20 F1 (pgJDBC's default mode, Npgsql's DECLARE/FETCH/CLOSE): a transaction declaring and closing
    distinct cursors one at a time, each statement Parse/Bind/Execute, past the bound: never refused; CLOSE ALL
    likewise; the bound still holds for what is open at once."""
    sock = wire.connect(bounded, "alice")
    try:
        _query(sock, "BEGIN")
        for i in range(2 * PORTALS):
            out = _extended(sock, [_declare(i), f"FETCH 1 FROM rpc{i}", f"CLOSE rpc{i}"])
            assert wire.errors_in(out) == [] and out[-1] == (b"Z", b"T"), i
        for i in range(2 * PORTALS):
            assert wire.errors_in(_extended(sock, [_declare(100 + i)])) == [], i
            assert wire.errors_in(_extended(sock, [f"CLOSE rpc{100 + i}"])) == [], i
        assert wire.errors_in(_extended(sock, [_declare(200 + i) for i in range(PORTALS)] + ["CLOSE ALL"])) == []
        assert wire.errors_in(_extended(sock, [_declare(300 + i) for i in range(PORTALS)])) == []
        assert _open_cursors(sock) == PORTALS
        [err] = wire.errors_in(_extended(sock, [_declare(400)]))
        assert err["C"] == "54000"
        _query(sock, "ROLLBACK")
    finally:
        sock.close()


def test_a_prepared_close_pg_skips_frees_nothing(bounded: ProxyProcess) -> None:
    """Red team 20b F1's shape over the extended protocol: cursors DECLAREd, SAVEPOINT, an error, then the prepared
    CLOSE ALL / CLOSE / COMMIT PostgreSQL skips; ROLLBACK TO the savepoint keeps the cursors: they still count."""
    sock = wire.connect(bounded, "alice")
    try:
        _query(sock, "BEGIN")
        out = _extended(sock, [_declare(i) for i in range(PORTALS)] + ["SAVEPOINT s", "SELECT 1/0", "CLOSE ALL",
                                                                       "CLOSE rpc0", "COMMIT"])
        assert [e["C"] for e in wire.errors_in(out)] == ["22012"] and out[-1] == (b"Z", b"E")
        assert wire.errors_in(_query(sock, "ROLLBACK TO s")) == []
        assert _open_cursors(sock) == PORTALS  # (PostgreSQL kept them)
        [err] = wire.errors_in(_extended(sock, [_declare(99)]))
        assert err["C"] == "54000"
        _query(sock, "ROLLBACK")
    finally:
        sock.close()


def test_portals_and_cursors_a_rollback_to_drops_free_room(bounded: ProxyProcess) -> None:
    """Review 20 F2 (pgJDBC autosave, psqlODBC's per-statement savepoints): SAVEPOINT, a named portal (or a cursor)
    whose run fails, ROLLBACK TO: PostgreSQL dropped it; past the bound of such errors nothing is refused. What was
    opened before the savepoint stays counted; RELEASE hands a savepoint's portals to the level below."""
    sock = wire.connect(bounded, "alice")
    try:
        _query(sock, "BEGIN")
        wire.exchange(sock, wire.parse("SELECT 1/(g - 2) FROM generate_series(1, 3) g", "ps") + wire.SYNC)
        assert wire.errors_in(_query(sock, _declare(0))) == []  # before every savepoint: kept
        for i in range(2 * PORTALS):
            out = wire.exchange(sock, wire.parse("SAVEPOINT s") + wire.bind() + wire.execute()
                                + wire.bind("ps", f"p{i}") + wire.execute(f"p{i}", 10) + wire.SYNC)
            assert [e["C"] for e in wire.errors_in(out)] == ["22012"], i
            assert wire.errors_in(_query(sock, "ROLLBACK TO s")) == [], i
            _query(sock, "SAVEPOINT t")
            out = _query(sock, f"{_declare(100 + i)}; SELECT 1/0")
            assert [e["C"] for e in wire.errors_in(out)] == ["22012"], i
            assert wire.errors_in(_query(sock, "ROLLBACK TO t")) == [], i
        assert _open_cursors(sock) == 1
        _query(sock, "SAVEPOINT u")
        assert wire.errors_in(_extended(sock, [_declare(i) for i in range(1, PORTALS)])) == []
        _query(sock, "RELEASE u")  # (they are the transaction's now)
        _query(sock, "SAVEPOINT v")
        _query(sock, "ROLLBACK TO v")
        assert _open_cursors(sock) == PORTALS
        [err] = wire.errors_in(_extended(sock, [_declare(99)]))
        assert err["C"] == "54000"
        _query(sock, "ROLLBACK TO v")
        _query(sock, "ROLLBACK")
    finally:
        sock.close()


def test_with_hold_cursors_a_rollback_to_drops_free_room(bounded: ProxyProcess) -> None:
    """WITH HOLD cursors declared in a subtransaction rolled back are dropped by PostgreSQL (pg_cursors), and the
    bound counts them no more."""
    sock = wire.connect(bounded, "alice")
    try:
        _query(sock, "BEGIN")
        for i in range(2 * PORTALS):
            _query(sock, "SAVEPOINT s")
            assert wire.errors_in(_query(sock, _declare(i, "WITH HOLD"))) == [], i
            assert wire.errors_in(_query(sock, "ROLLBACK TO s")) == [], i
        assert _open_cursors(sock) == 0
        _query(sock, "COMMIT")
        assert wire.errors_in(_query(sock, "; ".join(_declare(50 + i, "WITH HOLD") for i in range(PORTALS)))) == []
        [err] = wire.errors_in(_query(sock, _declare(99)))
        assert err["C"] == "54000"
        _query(sock, "CLOSE ALL")
    finally:
        sock.close()


def test_parses_of_declares_open_nothing(bounded: ProxyProcess) -> None:
    """Review 20 F3: Parses of DECLAREs never bound count nothing; Binds of DECLAREs pipelined before any answer
    are still refused at the bound (review 20 checked it)."""
    sock = wire.connect(bounded, "alice")
    try:
        _query(sock, "BEGIN")
        for i in range(2 * PORTALS):
            assert wire.errors_in(wire.exchange(sock, wire.parse(_declare(i), f"d{i}") + wire.SYNC)) == [], i
        out = _extended(sock, [_declare(100 + i) for i in range(PORTALS + 1)])
        [err] = wire.errors_in(out)
        assert err["C"] == "54000" and _kinds(out).count("C") == PORTALS
        _query(sock, "ROLLBACK")
    finally:
        sock.close()


def test_pgjdbc_autosave_errors_past_the_bound(bounded: ProxyProcess) -> None:
    """Review 20 F2 with pgJDBC: autosave=always, setFetchSize (a named portal C_n per query), 2x the bound of
    queries failing (each rolled back to pgJDBC's savepoint, the error caught), then the bound of ResultSets open
    at once: never refused."""
    require_jdbc()
    url = bounded.jdbc_url("alice", sslmode="disable", autosave="always")
    out = run_jdbc(url, "alice", bounded.password("alice"), "autosaveerrors", 2 * PORTALS, PORTALS)
    assert out == {"errors": ["22012"] * (2 * PORTALS), "rows": 10 * PORTALS}


def test_a_prepared_close_pg_never_prepared_frees_nothing(bounded: ProxyProcess) -> None:
    """A guard for F1's fix: a Parse of `CLOSE` into a statement name PostgreSQL refuses (42P05: it holds another
    statement of that name), then ROLLBACK TO: a Bind/Execute of that name runs PostgreSQL's statement, not the
    CLOSE: nothing is freed."""
    sock = wire.connect(bounded, "alice")
    try:
        _query(sock, "BEGIN")
        assert wire.errors_in(wire.exchange(sock, wire.parse("SELECT 1", "s") + wire.SYNC)) == []
        _query(sock, "SAVEPOINT sp")
        [err] = wire.errors_in(wire.exchange(sock, wire.parse("CLOSE rpc1", "s") + wire.SYNC))
        assert err["C"] == "42P05"
        assert wire.errors_in(_query(sock, "ROLLBACK TO sp")) == []
        assert wire.errors_in(_query(sock, "; ".join(_declare(i) for i in range(PORTALS)))) == []
        out = wire.exchange(sock, wire.bind("s") + wire.execute() + wire.SYNC)
        assert _kinds(out) == "2DCZ"
        assert _open_cursors(sock) == PORTALS
        [err] = wire.errors_in(_query(sock, _declare(99)))
        assert err["C"] == "54000"
        _query(sock, "ROLLBACK")
    finally:
        sock.close()


def test_a_rollback_to_frees_nothing_after_savepoint_statements_went_unfollowed(bounded: ProxyProcess) -> None:
    """A guard for F2's fix: prepared `RELEASE a` and `SAVEPOINT a` pushed out of the session's memory (1,000 more
    savepoint statements, Parsed and closed), then run: PostgreSQL's savepoints are not those the session follows;
    portals bound between them live in the transaction's level, and `ROLLBACK TO a` keeps them: still counted."""
    sock = wire.connect(bounded, "alice")
    try:
        _query(sock, "BEGIN")
        wire.exchange(sock, wire.parse("SELECT generate_series(1, 3)", "ps") + wire.SYNC)
        _query(sock, "SAVEPOINT a")
        assert wire.errors_in(wire.exchange(sock, wire.parse("RELEASE a", "rel") + wire.parse("SAVEPOINT a", "sav")
                                            + wire.SYNC)) == []
        more = b"".join(wire.parse("SAVEPOINT z", f"z{i}") + m.frame(b"C", f"Sz{i}\x00".encode()) for i in range(1000))
        assert wire.errors_in(wire.exchange(sock, more + wire.SYNC)) == []
        assert wire.errors_in(wire.exchange(sock, wire.bind("rel") + wire.execute() + wire.SYNC)) == []
        assert wire.errors_in(_portals(sock, [f"p{i}" for i in range(PORTALS)])) == []
        assert wire.errors_in(wire.exchange(sock, wire.bind("sav") + wire.execute() + wire.SYNC)) == []
        assert wire.errors_in(_query(sock, "ROLLBACK TO a")) == []
        assert _open_cursors(sock) == PORTALS  # (PostgreSQL kept them)
        [err] = wire.errors_in(_portals(sock, ["q0"]))
        assert err["C"] == "54000"
        _query(sock, "ROLLBACK")
    finally:
        sock.close()
