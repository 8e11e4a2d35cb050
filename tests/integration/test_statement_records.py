"""Red team 21p F3 / F1: what the session follows is never given up while PostgreSQL may still act on it.

F3: the records of prepared statements' changes (a set_config of search_path) held 1,000 and dropped the oldest for
the next — the 1,001st with the unnamed statement, or (transaction pooling) a Parse the statement maps refused past
[pool] max_session_statements: the set_config then ran unfollowed and gina (globex) read other schemas' function
names through unqualified `routines`. F1: past 10,000 requests in flight the tracker matched answers to the wrong
request; the session now ends (FATAL 54000, test_in_flight.py). gina of `saas`, both pool modes, every PostgreSQL
the fixtures offer.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.protocol import messages as m
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, dan_proxy, started_per_mode
from tests.support.wire import answer_codes as _errors
from tests.support.wire import answer_rows as _rows
from tests.support.wire import answers as _wire
from tests.support.wire import login

MODES = ("transaction", "session", "sessioncache")
SECRET = ("CREATE SCHEMA IF NOT EXISTS othert; CREATE OR REPLACE FUNCTION othert.zz_secret_fn() RETURNS int "
          "LANGUAGE sql AS 'SELECT 1'")
ROUTINES = "SELECT routine_schema::text, routine_name::text FROM routines WHERE routine_name::text LIKE 'zz%'"
SET_PATH = "SELECT set_config('search_path', 'information_schema, globex', false)"
FILLER = "SET application_name = 'filler'"  # (a statement with a change to follow: it takes a record)


@pytest.fixture(scope="module")
def proxies(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyProcess]]:
    """One proxy per pool mode; session pooling without the statement cache (the client's names reach the server)
    and with it (sessioncache: the statement maps hold them, as in transaction pooling)."""
    yield from started_per_mode(lambda mode: dan_proxy(
        pg, tmp_path_factory.mktemp(f"records-{mode}"),
        pool={"pool_mode": mode.removesuffix("cache"), "statement_cache": mode == "sessioncache"}), MODES)


@pytest.fixture(autouse=True)
def _no_secret_left(pg: PgCluster) -> Iterator[None]:
    yield
    pg.execute("DROP SCHEMA IF EXISTS othert CASCADE", dbname="saas")


def _session(proxy: ProxyProcess) -> socket.socket:
    sock, msgs = login(proxy.port, {"user": "gina", "database": "saas"}, proxy.password("gina"))
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _parse(name: str, sql: str) -> bytes:
    return m.Parse(name, sql, b"\x00\x00").encode()


def _bind(portal: str, statement: str) -> bytes:
    return m.frame(b"B", portal.encode() + b"\x00" + statement.encode() + b"\x00" + struct.pack("!hhh", 0, 0, 0))


def _execute(portal: str) -> bytes:
    return m.frame(b"E", portal.encode() + b"\x00" + struct.pack("!i", 0))


def _leaked(answers: list[tuple[str, Any]]) -> list[Any]:
    return [row for row in _rows(answers) if "zz_secret" in str(row)]


def _fill(sock: socket.socket, names: list[str]) -> list[Any]:
    """Parse `names` (the filler), 100 a batch, one Sync each: the SQLSTATEs of the refused ones."""
    codes: list[Any] = []
    for k in range(0, len(names), 100):
        batch = names[k:k + 100]
        for name in batch:  # (one Sync each: a refused one skips nothing after it)
            codes += _errors(_wire(sock, _parse(name, FILLER) + m.SYNC_MESSAGE))
    return codes


@pytest.mark.parametrize(("shape", "mode"), [("unnamed_last", "transaction"), ("unnamed_last", "session"),
                                             ("unnamed_last", "sessioncache"), ("refused_parses", "transaction")])
# (refused_parses held in session pooling before the fix, rt21p: not listed there)
def test_a_set_config_statement_is_followed_after_a_thousand_others(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str, shape: str) -> None:
    """rt21p F3 (lk3, lk2): Parse s = set_config(search_path, information_schema first), then 999 named statements
    with a change and the unnamed one (1,001 records, all PostgreSQL holds), or (lk2) 1,010 named ones, the last
    11 refused past max_session_statements = 1000; then Bind s and Execute: PostgreSQL sets the path, and the proxy
    must know it — unqualified `routines` is filtered (othert's function not listed)."""
    pg.execute(SECRET, dbname="saas")
    sock = _session(proxies[mode])
    try:
        assert _errors(_wire(sock, _parse("s", SET_PATH) + m.SYNC_MESSAGE)) == []
        if shape == "unnamed_last":
            assert _fill(sock, [f"f{k}" for k in range(999)]) == []
            assert _errors(_wire(sock, _parse("", FILLER) + m.SYNC_MESSAGE)) == []
        else:
            assert _fill(sock, [f"f{k}" for k in range(1010)]) == ["53200"] * 11
        answers = _wire(sock, _bind("p", "s") + _execute("p") + m.SYNC_MESSAGE)
        assert _errors(answers) == [] and _rows(answers) == ["information_schema, globex"]
        assert _leaked(_wire(sock, m.Query(ROUTINES).encode())) == []
    finally:
        sock.close()


def _close_statement(name: str) -> bytes:
    return m.close_message(b"S", name)


@pytest.mark.parametrize("mode", MODES)
def test_a_skipped_close_leaves_a_lost_statement_refused(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str) -> None:
    """Red team 21v F1 (lc.py, transaction pooling): with the records full (s, 999 named, the unnamed), a batch
    whose Close S s and Parse g PostgreSQL skips (an Execute of an unknown portal fails first) leaves s lost — g's
    record took its room —; a second such skipped Close of s cleared the lost mark when it was sent, and nothing put
    it back: the Bind of s then ran unfollowed and gina read othert's function through unqualified `routines`. Each
    skipped Close leaves s lost now: its Bind is refused (54000), nothing leaks."""
    pg.execute(SECRET, dbname="saas")
    sock = _session(proxies[mode])
    try:
        assert _errors(_wire(sock, _parse("s", SET_PATH) + m.SYNC_MESSAGE)) == []
        assert _fill(sock, [f"f{k}" for k in range(999)]) == []
        assert _errors(_wire(sock, _parse("", FILLER) + m.SYNC_MESSAGE)) == []
        skipped = _execute("nop") + _close_statement("s")
        assert _errors(_wire(sock, skipped + _parse("g", FILLER) + m.SYNC_MESSAGE)) == ["34000"]
        assert _errors(_wire(sock, skipped + m.SYNC_MESSAGE)) == ["34000"]
        answers = _wire(sock, _bind("p", "s") + _execute("p") + m.SYNC_MESSAGE)
        # refused where s's record is lost (the statement maps: transaction pooling, the statement cache); run and
        # followed where it stayed recorded (the client's names reach the server: its records go at CloseComplete)
        assert _errors(answers) in ([], ["54000"]), answers
        assert _leaked(_wire(sock, m.Query(ROUTINES).encode())) == []
    finally:
        sock.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("forget", ["DISCARD ALL", "DEALLOCATE ALL", "DEALLOCATE s"])
def test_a_statement_parsed_behind_a_deallocate_keeps_its_record(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str, forget: str) -> None:
    """Red team 22p G1 (do.py, do_all_discard): a DEALLOCATE / DEALLOCATE ALL / DISCARD ALL freed the records at its
    answer — those of Parses sent behind it in the same write too, which PostgreSQL runs after it and keeps: the Bind
    of the set_config then ran unfollowed and gina read othert's function through unqualified `routines` (in
    transaction pooling her later logins too). Only records made before it was sent go now."""
    pg.execute(SECRET, dbname="saas")
    sock = _session(proxies[mode])
    try:
        assert _errors(_wire(sock, _parse("s", "SELECT 1") + m.SYNC_MESSAGE)) == []
        name = "s" if forget == "DEALLOCATE s" else "t"
        assert _errors(_wire(sock, m.Query(forget).encode() + _parse(name, SET_PATH) + m.SYNC_MESSAGE)) == []
        # (session pooling answers the re-Parse of s 42P05 itself until the DEALLOCATE's answer)
        parsed = _errors(_wire(sock, b""))
        assert parsed in ([], ["42P05"]), parsed
        answers = _wire(sock, _bind("p", name) + _execute("p") + m.SYNC_MESSAGE)
        assert _errors(answers) == (["26000"] if parsed else []), answers
        assert _leaked(_wire(sock, m.Query(ROUTINES).encode())) == []
    finally:
        sock.close()
    if mode == "transaction":  # (the path stayed on a pooled server: fresh logins must not read through it)
        for _ in range(2):
            fresh = _session(proxies[mode])
            try:
                assert _leaked(_wire(fresh, m.Query(ROUTINES).encode())) == []
            finally:
                fresh.close()


@pytest.mark.parametrize("mode", ["transaction", "sessioncache"])
@pytest.mark.parametrize("form", ["DEALLOCATE x;;", "/**/DEALLOCATE x", "DEALLOCATE x; SELECT 1"])
def test_a_sql_deallocate_the_maps_do_not_send_keeps_the_protocol_record(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str, form: str) -> None:
    """Red team 22p G2 (tp.py): under the statement maps a client's protocol statement x has another name on the
    server, so a SQL `PREPARE x` is accepted beside it; a DEALLOCATE form the maps do not rewrite deallocates that
    SQL x, and its answer freed the protocol x's record: its Bind ran the set_config unfollowed. Such a DEALLOCATE
    frees no protocol record now."""
    pg.execute(SECRET, dbname="saas")
    sock = _session(proxies[mode])
    try:
        assert _errors(_wire(sock, _parse("x", SET_PATH) + m.SYNC_MESSAGE)) == []
        assert _errors(_wire(sock, m.Query("PREPARE x AS SELECT 1").encode())) == []
        assert _errors(_wire(sock, m.Query(form).encode())) == []
        answers = _wire(sock, _bind("p", "x") + _execute("p") + m.SYNC_MESSAGE)
        assert _errors(answers) == [] and _rows(answers) == ["information_schema, globex"]
        assert _leaked(_wire(sock, m.Query(ROUTINES).encode())) == []
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["transaction", "sessioncache"])
@pytest.mark.parametrize(("read", "written"), [("x", "x\u00a0"), ("k", "\u212a")])
def test_a_deallocate_the_maps_read_as_another_name_keeps_the_record(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str, read: str, written: str) -> None:
    """Red team 22v V1 (uk.py): the statement maps' DEALLOCATE pattern read `DEALLOCATE x<no-break space>` as x and
    `DEALLOCATE <Kelvin sign>` as k (Python's Unicode spaces and case folding; PostgreSQL's scanner takes high-bit
    characters as identifier characters and downcases ASCII only): the maps dropped their x and the answer freed
    the record of the protocol statement PostgreSQL's grammar names, which the maps still held — its set_config ran
    unfollowed. The pattern is ASCII-only now, and only the statement the maps dropped is freed."""
    pg.execute(SECRET, dbname="saas")
    sock = _session(proxies[mode])
    try:
        assert _errors(_wire(sock, _parse(written, SET_PATH) + _parse(read, "SELECT 1") + m.SYNC_MESSAGE)) == []
        _wire(sock, m.Query(f"DEALLOCATE {written}").encode())
        answers = _wire(sock, _bind("p", written) + _execute("p") + m.SYNC_MESSAGE)
        assert _errors(answers) == [] and _rows(answers) == ["information_schema, globex"]
        assert _leaked(_wire(sock, m.Query(ROUTINES).encode())) == []
        assert _errors(_wire(sock, _bind("q", read) + _execute("q") + m.SYNC_MESSAGE)) == []  # (the maps kept it)
    finally:
        sock.close()
