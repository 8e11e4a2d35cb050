"""The WITH HOLD cursors, LISTEN channels and savepoints a session holds are bounded ([pool] max_session_cursors,
max_session_listens, max_session_savepoints; red team 9s8 F4: 40,000 of them cost the proxy ~4 ms of the event loop
every tenant shares per further statement), in both pool modes: past the bound the statement fails with 54000 before
it reaches the server, the session goes on with what it holds, CLOSE / UNLISTEN / RELEASE free room, another
tenant is unaffected, the refusal is counted."""

from __future__ import annotations

import select
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import pq

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, prepare_backend

CURSORS = 5  # [pool] max_session_cursors of the proxy
LISTENS = 4  # [pool] max_session_listens
SAVEPOINTS = 6  # [pool] max_session_savepoints


@pytest.fixture(scope="module", params=["transaction", "session"])
def bounded(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), backend_sslmode="disable",
                     pool={"pool_mode": request.param, "query_wait_timeout": 30.0, "max_session_cursors": CURSORS,
                           "max_session_listens": LISTENS, "max_session_savepoints": SAVEPOINTS,
                           "max_session_statements": 2000})  # (more than the 1,000 savepoint statements remembered)
    p.start()
    yield p
    p.stop()


def _denied(p: ProxyProcess, rule: str) -> float:
    """The refusals counted under `rule`, over every tenant label (a tenant past the metrics' bound on tenants
    shown is counted as "_other")."""
    text = urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("pgtenant_denied_statements_total{") and f'rule="{rule}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _declare(n: int, start: int = 0) -> str:
    return ";".join(f"DECLARE rtc{i} CURSOR WITH HOLD FOR SELECT {i}" for i in range(start, start + n))


def test_hold_cursors_past_the_bound_fail_and_the_session_goes_on(bounded: ProxyProcess) -> None:
    """alice (a shared-strategy tenant): DECLARE ... WITH HOLD is a read; it is bounded all the same."""
    before = _denied(bounded, "session_cursors_limit")
    with psycopg.connect(bounded.dsn("alice"), autocommit=True) as a, \
            psycopg.connect(bounded.dsn("bruno"), autocommit=True) as b:
        a.execute(_declare(CURSORS - 1))  # one multi-statement Query
        a.execute(_declare(1, CURSORS - 1))  # exactly the bound
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=f"max_session_cursors = {CURSORS}") as info:
            a.execute(_declare(1, CURSORS))
        assert info.value.diag.message_hint is not None and "CLOSE" in info.value.diag.message_hint
        assert a.execute("SELECT 1").fetchone() == (1,)  # the session goes on
        assert a.execute(f"FETCH rtc{CURSORS - 1}").fetchone() == (CURSORS - 1,)  # with what it holds
        assert a.execute("SELECT count(*) FROM pg_cursors").fetchone() == (CURSORS,)
        a.execute("CLOSE rtc0")
        a.execute(_declare(1, CURSORS))  # CLOSE then DECLARE: allowed
        assert a.execute(f"FETCH rtc{CURSORS}").fetchone() == (CURSORS,)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="session_cursors_limit"):
            a.execute("CLOSE rtc1;" + _declare(2, 100))  # past it within one string: none of it runs
        assert a.execute("FETCH rtc1").fetchone() == (1,)
        a.execute("CLOSE ALL")
        a.execute(_declare(CURSORS, 200))
        b.execute(_declare(CURSORS, 300))  # another tenant: its own sessions, its own count
        assert b.execute("SELECT count(*) FROM pg_cursors").fetchone() == (CURSORS,)
    assert _denied(bounded, "session_cursors_limit") - before == 2


def test_listen_past_the_bound_fails_and_the_session_goes_on(bounded: ProxyProcess) -> None:
    """ivan (initech, database strategy) may LISTEN."""
    before = _denied(bounded, "session_listens_limit")
    with psycopg.connect(bounded.dsn("ivan"), autocommit=True) as i:
        i.execute(";".join(f"LISTEN rtch{k}" for k in range(LISTENS)))
        i.execute("LISTEN rtch0")  # a channel it listens on already: nothing added
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=f"max_session_listens = {LISTENS}"):
            i.execute(f"LISTEN rtch{LISTENS}")
        assert i.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (LISTENS,)
        i.execute("UNLISTEN rtch0")
        i.execute(f"LISTEN rtch{LISTENS}")
        assert i.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (LISTENS,)
        i.execute("UNLISTEN *")
        i.execute(";".join(f"LISTEN other{k}" for k in range(LISTENS)))
    assert _denied(bounded, "session_listens_limit") - before == 1


def test_savepoint_depth_past_the_bound_fails(bounded: ProxyProcess) -> None:
    before = _denied(bounded, "session_savepoints_limit")
    with psycopg.connect(bounded.dsn("alice"), autocommit=True) as a:
        a.execute("BEGIN")
        a.execute(";".join(f"SAVEPOINT s{k}" for k in range(SAVEPOINTS)))  # exactly the bound
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=f"max_session_savepoints = {SAVEPOINTS}"):
            a.execute(f"SAVEPOINT s{SAVEPOINTS}")
        # (PostgreSQL got the refusal's placeholder: the transaction is aborted, as after any failed statement)
        a.execute(f"ROLLBACK TO s{SAVEPOINTS - 1}")
        assert a.execute("SELECT 1").fetchone() == (1,)
        a.execute(f"RELEASE s{SAVEPOINTS - 2}")
        a.execute("SAVEPOINT again1; SAVEPOINT again2")
        a.execute("COMMIT")
        # psqlODBC's shape: a savepoint per statement, released: never deep
        a.execute("BEGIN")
        for k in range(3 * SAVEPOINTS):
            a.execute(f"SAVEPOINT _exec_svp; SELECT {k}; RELEASE _exec_svp")
        a.execute("COMMIT")
    assert _denied(bounded, "session_savepoints_limit") - before == 1


def _pipelined_parses(conn: psycopg.Connection, texts: list[str]) -> list[tuple[pq.ExecStatus, str | None]]:
    """Parses of the unnamed statement, one per text, nothing bound, then one Sync (libpq pipeline mode): each
    result's status and SQLSTATE, up to the Sync's."""
    pg = conn.pgconn
    pg.enter_pipeline_mode()
    for text in texts:
        pg.send_prepare(b"", text.encode())
    pg.pipeline_sync()
    while pg.flush() != 0:
        pg.consume_input()
    results: list[tuple[pq.ExecStatus, str | None]] = []
    while True:
        pg.consume_input()
        if pg.is_busy():
            select.select([pg.socket], [], [], 10)
            continue
        r = pg.get_result()
        if r is None:
            continue
        state = r.error_field(pq.DiagnosticField.SQLSTATE)
        results.append((r.status, state.decode() if state else None))
        if r.status == pq.ExecStatus.PIPELINE_SYNC:
            break
    pg.exit_pipeline_mode()
    return results


def test_pipelined_parses_past_the_bound_are_refused_at_the_parse(bounded: ProxyProcess) -> None:
    """Review 19b F3: Parses without a Sync of DECLARE ... WITH HOLD / LISTEN, none bound, grew the proxy's belief
    past the bound (checked at Bind only; 20,000 of them stalled another tenant's SELECT 1 5-9 s). The Parse that
    would take it past the bound fails 54000; the session goes on after the Sync."""
    before = _denied(bounded, "session_cursors_limit")
    with psycopg.connect(bounded.dsn("alice"), autocommit=True) as a:
        texts = [f"DECLARE rtp{i} CURSOR WITH HOLD FOR SELECT {i}" for i in range(CURSORS + 3)]
        got = _pipelined_parses(a, texts)
        ok = [(pq.ExecStatus.COMMAND_OK, None)] * CURSORS
        assert got[:CURSORS + 1] == [*ok, (pq.ExecStatus.FATAL_ERROR, "54000")], got
        assert got[-1][0] == pq.ExecStatus.PIPELINE_SYNC
        assert a.execute("SELECT 1").fetchone() == (1,)  # the session goes on
        a.execute(_declare(CURSORS, 400))  # the Parses never ran: nothing is held
        assert a.execute("SELECT count(*) FROM pg_cursors").fetchone() == (CURSORS,)
    assert _denied(bounded, "session_cursors_limit") - before == 3  # (each Parse past it, PostgreSQL skipping them)
    before = _denied(bounded, "session_listens_limit")
    with psycopg.connect(bounded.dsn("ivan"), autocommit=True) as i:
        got = _pipelined_parses(i, [f"LISTEN rtpl{k}" for k in range(LISTENS + 1)])
        assert got[:LISTENS + 1] == [*[(pq.ExecStatus.COMMAND_OK, None)] * LISTENS,
                                     (pq.ExecStatus.FATAL_ERROR, "54000")], got
        assert i.execute("SELECT 1").fetchone() == (1,)
    assert _denied(bounded, "session_listens_limit") - before == 1


def _savepoint_runs(sock: object, statement: str, n: int) -> list[tuple[bytes, bytes]]:
    """`n` Bind/Execute of prepared `statement` in one batch, one Sync: the answers."""
    return wire.exchange(sock, (wire.bind(statement) + wire.execute()) * n + wire.SYNC)  # type: ignore[arg-type]


def test_a_prepared_savepoint_stays_bounded_after_many_closed_ones(bounded: ProxyProcess) -> None:
    """Issue 18: a prepared `SAVEPOINT z`, 1,000 other savepoint statements Parsed and closed (one batch), then many
    runs of z in one batch: the closed ones pushed z's record out and its runs went unfollowed, past the bound (the
    1,500 of the probe all ran). A Close removes its statement's record: z's runs stop at the bound, 54000."""
    before = _denied(bounded, "session_savepoints_limit")
    sock = wire.connect(bounded, "alice")
    try:
        assert wire.errors_in(wire.exchange(sock, m.Query("BEGIN").encode())) == []
        assert wire.errors_in(wire.exchange(sock, wire.parse("SAVEPOINT z", "z") + wire.SYNC)) == []
        more = b"".join(wire.parse("RELEASE y", f"y{i}") + m.frame(b"C", f"Sy{i}\x00".encode())
                        for i in range(1000))
        assert wire.errors_in(wire.exchange(sock, more + wire.SYNC)) == []
        answers = _savepoint_runs(sock, "z", SAVEPOINTS + 10)
        [err] = wire.errors_in(answers)
        assert err["C"] == "54000" and f"max_session_savepoints = {SAVEPOINTS}" in err["M"]
        assert sum(1 for t, _ in answers if t == b"C") == SAVEPOINTS
        assert wire.errors_in(wire.exchange(sock, m.Query("ROLLBACK").encode())) == []
        assert any(t == b"D" for t, _ in wire.exchange(sock, m.Query("SELECT 1").encode()))  # (the session goes on)
    finally:
        sock.close()
    assert _denied(bounded, "session_savepoints_limit") - before == 10  # (each Bind past it refused, counted)


def test_a_forgotten_savepoint_statement_is_refused_until_parsed_again(bounded: ProxyProcess) -> None:
    """Issue 18: past the 1,000 open savepoint statements the session remembers, the oldest is forgotten: its Bind
    is refused (26000, the session goes on), not run unfollowed; Parsed again, it is followed and bounded."""
    sock = wire.connect(bounded, "alice")
    try:
        assert wire.errors_in(wire.exchange(sock, m.Query("BEGIN").encode())) == []
        assert wire.errors_in(wire.exchange(sock, wire.parse("SAVEPOINT z", "z") + wire.SYNC)) == []
        more = b"".join(wire.parse("RELEASE y", f"y{i}") for i in range(1000))
        assert wire.errors_in(wire.exchange(sock, more + wire.SYNC)) == []
        answers = _savepoint_runs(sock, "z", SAVEPOINTS + 10)
        [err] = wire.errors_in(answers)
        assert err["C"] == "26000" and 'statement "z" sets, releases or rolls back to a savepoint' in err["M"]
        assert not any(t == b"C" for t, _ in answers)
        assert wire.errors_in(wire.exchange(sock, m.Query("ROLLBACK").encode())) == []
        assert wire.errors_in(wire.exchange(sock, m.Query("BEGIN").encode())) == []
        assert wire.errors_in(wire.exchange(sock, m.frame(b"C", b"Sz\x00") + wire.parse("SAVEPOINT z", "z")
                                            + wire.SYNC)) == []
        answers = _savepoint_runs(sock, "z", SAVEPOINTS + 10)
        [err] = wire.errors_in(answers)
        assert err["C"] == "54000"
        assert sum(1 for t, _ in answers if t == b"C") == SAVEPOINTS
        assert wire.errors_in(wire.exchange(sock, m.Query("ROLLBACK").encode())) == []
    finally:
        sock.close()
