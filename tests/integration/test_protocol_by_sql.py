"""A protocol-level statement or portal run by SQL EXECUTE / FETCH / MOVE (red team 9a11 C1, C1b).

A statement made by a Parse message (`SELECT set_config('search_path', 'information_schema, <own>', false)`, a
`SET search_path`, a `DEALLOCATE` / `PREPARE`) or a portal bound from one, run by SQL, changed PostgreSQL's session
unseen: unqualified information_schema views were read unfiltered (another tenant's function names), and in
transaction pooling the server went back to the tenant's pool with the path. Refused (`protocol_name_by_sql`,
0A000) where the name reaches the server: a statement's in session pooling without the statement cache, a portal's
in every mode; the session stays usable and a fresh session of the tenant reads as before. gina (schema tenant
`globex`) and dan (database tenant sharing `saas`); transaction pooling, session pooling with and without the
statement cache; every PostgreSQL the fixtures offer.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from proxy.protocol import messages as m
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, dan_proxy, prepare_backend, started_per_mode
from tests.support.wire import answer_codes as _errors
from tests.support.wire import answer_rows as _rows
from tests.support.wire import answers as _wire
from tests.support.wire import login

MODES = ("transaction", "session", "session-cache")
NAMES_REACH_SERVER = "session"  # the mode where the client's statement names are the server's (no statement maps)
OWN = {"gina": "globex", "dan": "public"}
HIDDEN = {"gina": "othert", "dan": "globex"}  # a schema the user may not see, holding zz_secret_fn()
READ = "SELECT string_agg(routine_schema::text || '.' || routine_name::text, ',') FROM routines " \
       "WHERE routine_name::text LIKE 'zz%'"


@pytest.fixture(scope="module")
def proxies(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyProcess]]:
    prepare_backend(pg)
    pg.execute("CREATE SCHEMA IF NOT EXISTS othert; CREATE OR REPLACE FUNCTION othert.zz_secret_fn() RETURNS int "
               "LANGUAGE sql AS 'SELECT 1'; CREATE OR REPLACE FUNCTION globex.zz_secret_fn() RETURNS int "
               "LANGUAGE sql AS 'SELECT 1'", dbname="saas")
    try:
        yield from started_per_mode(lambda mode: dan_proxy(
            pg, tmp_path_factory.mktemp(f"bysql-{mode}"),
            pool={"pool_mode": mode.split("-")[0], "statement_cache": mode.endswith("cache")}), MODES)
    finally:
        pg.execute("DROP FUNCTION othert.zz_secret_fn(); DROP SCHEMA othert; DROP FUNCTION globex.zz_secret_fn()",
                   dbname="saas")


def _session(proxy: ProxyProcess, user: str) -> socket.socket:
    sock, msgs = login(proxy.port, {"user": user, "database": "saas"}, proxy.password(user))
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _parse(name: str, sql: str) -> bytes:
    return m.Parse(name, sql, b"\x00\x00").encode()


def _bind(portal: str = "", statement: str = "") -> bytes:
    return m.frame(b"B", portal.encode() + b"\x00" + statement.encode() + b"\x00" + struct.pack("!hhh", 0, 0, 0))


def _execute(portal: str = "") -> bytes:
    return m.frame(b"E", portal.encode() + b"\x00" + struct.pack("!i", 0))


def _close_statement(name: str) -> bytes:
    return m.frame(b"C", b"S" + name.encode() + b"\x00")


def _query(sql: str) -> bytes:
    return m.Query(sql).encode()


def _set_path(user: str) -> str:
    return f"SELECT set_config('search_path', 'information_schema, {OWN[user]}', false)"


def _unmoved(sock: socket.socket) -> None:
    """PostgreSQL's search_path is the tenant's: no unqualified `routines`, nothing hidden listed."""
    answers = _wire(sock, _query(READ))
    assert "zz_secret" not in str(_rows(answers)), answers
    assert _errors(answers) == ["42P01"], answers
    answers = _wire(sock, _parse("", READ) + _bind() + _execute() + m.SYNC_MESSAGE)
    assert "zz_secret" not in str(_rows(answers)) and _errors(answers) == ["42P01"], answers


def _fresh_session_unmoved(proxy: ProxyProcess, user: str) -> None:
    """The tenant's next session (the server the last one gave back, in transaction pooling) reads as before."""
    sock = _session(proxy, user)
    try:
        _unmoved(sock)
    finally:
        sock.close()


# --- SQL EXECUTE of a statement made by a Parse message ------------------------------------------------------------

STATEMENT_RUNS = {
    "execute": lambda user: [(_parse("s", _set_path(user)) + m.SYNC_MESSAGE, []), (_query("EXECUTE s"), None)],
    "execute in a parse": lambda user: [(_parse("s", _set_path(user)) + m.SYNC_MESSAGE, []),
                                        (_parse("", "EXECUTE s") + _bind() + _execute() + m.SYNC_MESSAGE, None)],
    "execute of a set": lambda user: [(_parse("s", f"SET search_path = information_schema, {OWN[user]}")
                                       + m.SYNC_MESSAGE, []), (_query("EXECUTE s"), None)],
    "execute, then a query": lambda user: [(_parse("s", _set_path(user)) + m.SYNC_MESSAGE, []),
                                           (_query("EXECUTE s; SELECT 1"), None)],
    # the statement parsed after the portal that runs it by SQL was bound
    "execute bound first": lambda user: [(_parse("x", "EXECUTE s") + _bind("", "x") + _parse("s", _set_path(user))
                                          + _execute() + m.SYNC_MESSAGE, None)],
}


@pytest.mark.parametrize("form", sorted(STATEMENT_RUNS))
@pytest.mark.parametrize("user", sorted(OWN))
def test_a_statement_made_by_parse_is_not_run_by_sql_execute(
        proxies: dict[str, ProxyProcess], user: str, form: str) -> None:
    """Refused 0A000 where the client's names reach the server: session pooling without the statement cache (with
    the statement maps, transaction pooling or the cache, PostgreSQL has no statement of the client's name: 26000,
    as before); PostgreSQL's search_path stays the tenant's, in this session and the tenant's next; once the
    protocol statement is closed, a statement PREPAREd by SQL under its name runs by SQL EXECUTE."""
    mode = NAMES_REACH_SERVER
    sock = _session(proxies[mode], user)
    try:
        _unmoved(sock)
        for data, expected in STATEMENT_RUNS[form](user):
            answers = _wire(sock, data)
            assert _errors(answers) == (["0A000"] if expected is None else expected), answers
        _unmoved(sock)
        assert _rows(_wire(sock, _query("SELECT 1"))) == ["1"]
        closed = _wire(sock, _close_statement("s") + _close_statement("x") + m.SYNC_MESSAGE)
        assert _errors(closed) == [], closed
        assert _errors(_wire(sock, _query("PREPARE s AS SELECT 2"))) == []
        assert _rows(_wire(sock, _query("EXECUTE s"))) == ["2"]
    finally:
        sock.close()
    _fresh_session_unmoved(proxies[mode], user)


def test_a_deallocate_and_prepare_made_by_parse_do_not_make_a_catalog_plan_explainable(
        proxies: dict[str, ProxyProcess]) -> None:
    """Red team 9a11 C1b: protocol `DEALLOCATE q` and `PREPARE q AS <pg_class read>` run by SQL EXECUTE left q
    explainable in the proxy (it had been `SELECT 1`), and `EXPLAIN EXECUTE q` showed the fenced catalog's plan.
    Both SQL EXECUTEs are refused; q stays `SELECT 1`."""
    sock = _session(proxies[NAMES_REACH_SERVER], "gina")
    try:
        assert _errors(_wire(sock, _query("PREPARE q AS SELECT 1"))) == []
        parsed = _wire(sock, _parse("d", "DEALLOCATE q") + _parse("x", "PREPARE q AS SELECT count(*) FROM "
                                                                   "pg_catalog.pg_class") + m.SYNC_MESSAGE)
        assert _errors(parsed) == [], parsed
        assert _errors(_wire(sock, _query("EXECUTE d"))) == ["0A000"]
        assert _errors(_wire(sock, _query("EXECUTE x"))) == ["0A000"]
        plan = _wire(sock, _query("EXPLAIN EXECUTE q"))
        assert _errors(plan) == [] and "pg_class" not in str(_rows(plan)), plan
        assert _rows(_wire(sock, _query("EXECUTE q"))) == ["1"]
    finally:
        sock.close()


# --- SQL FETCH / MOVE of a portal made by a Bind message -----------------------------------------------------------

PORTAL_RUNS = {
    "fetch": lambda user: [(_parse("s", _set_path(user)) + _bind("c", "s") + m.SYNC_MESSAGE, []),
                           (_query("FETCH c"), ["0A000"])],
    "move": lambda user: [(_parse("s", _set_path(user)) + _bind("c", "s") + m.SYNC_MESSAGE, []),
                          (_query("MOVE c"), ["0A000"])],
    "fetch all of the unnamed statement's": lambda user: [
        (_parse("", _set_path(user)) + _bind("c", "") + m.SYNC_MESSAGE, []), (_query("FETCH ALL FROM c"), ["0A000"])],
    "fetch; commit": lambda user: [(_parse("s", _set_path(user)) + _bind("c", "s") + m.SYNC_MESSAGE, []),
                                   (_query("FETCH c; COMMIT"), ["0A000"])],
    "fetch in a parse": lambda user: [(_parse("s", _set_path(user)) + _bind("c", "s") + m.SYNC_MESSAGE, []),
                                      (_parse("", "FETCH c") + _bind() + _execute() + m.SYNC_MESSAGE, ["0A000"])],
    "fetch, same batch": lambda user: [(_parse("s", _set_path(user)) + _bind("c", "s") + _parse("", "FETCH c")
                                        + _bind() + _execute() + m.SYNC_MESSAGE, ["0A000"])],
    # the portal bound after the portal that runs it by SQL
    "fetch bound first": lambda user: [(_parse("s", _set_path(user)) + _parse("x", "FETCH c") + _bind("", "x")
                                        + _bind("c", "s") + _execute() + m.SYNC_MESSAGE, ["0A000"])],
}


@pytest.mark.parametrize("form", sorted(PORTAL_RUNS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", sorted(OWN))
def test_a_portal_made_by_bind_is_not_run_by_sql_fetch_or_move(
        proxies: dict[str, ProxyProcess], user: str, mode: str, form: str) -> None:
    """Refused 0A000 in every mode (portal names reach the server); PostgreSQL's search_path stays the tenant's, in
    this session and the tenant's next; once that transaction ended, a SQL cursor of the same name is fetched."""
    sock = _session(proxies[mode], user)
    try:
        _unmoved(sock)
        assert _errors(_wire(sock, _query("BEGIN"))) == []
        for data, expected in PORTAL_RUNS[form](user):
            answers = _wire(sock, data)
            assert _errors(answers) == expected, answers
        _wire(sock, _query("COMMIT"))
        _unmoved(sock)
        assert _rows(_wire(sock, _query("BEGIN; DECLARE c CURSOR FOR SELECT 3; FETCH c; COMMIT"))) == ["3"]
        assert _errors(_wire(sock, _query("BEGIN; DECLARE c CURSOR FOR SELECT 4"))) == []
        answers = _wire(sock, _parse("", "FETCH c") + _bind() + _execute() + m.SYNC_MESSAGE)
        assert _errors(answers) == [] and _rows(answers) == ["4"], answers
        assert _errors(_wire(sock, _query("COMMIT"))) == []
    finally:
        sock.close()
    _fresh_session_unmoved(proxies[mode], user)


# --- a protocol-level statement or portal decided without a change runs by SQL (review 19a F2, F3) -----------------

SERIES = "SELECT g FROM generate_series(1, 5) g"


def _close_portal(name: str) -> bytes:
    return m.frame(b"C", b"P" + name.encode() + b"\x00")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", sorted(OWN))
def test_a_change_free_portal_made_by_bind_is_fetched_and_moved_by_sql(
        proxies: dict[str, ProxyProcess], user: str, mode: str) -> None:
    """asyncpg's `Cursor.forward` (SQL MOVE of the portal its cursor Bound) and the like: a portal of a SELECT that
    changes no session state is MOVEd and FETCHed by SQL as PostgreSQL does, by Query and by Parse, of a named and
    of the unnamed statement, and bound after a portal that FETCHes it; one of a set_config in the same transaction
    is still refused."""
    sock = _session(proxies[mode], user)
    try:
        assert _errors(_wire(sock, _query("BEGIN"))) == []
        assert _errors(_wire(sock, _parse("s", SERIES) + _bind("c", "s") + m.SYNC_MESSAGE)) == []
        answers = _wire(sock, _query("MOVE FORWARD 2 IN c"))
        assert _errors(answers) == [] and ("C", None) in answers, answers
        assert _rows(_wire(sock, _query("FETCH c"))) == ["3"]
        answers = _wire(sock, _parse("", "FETCH c") + _bind() + _execute() + m.SYNC_MESSAGE)
        assert _errors(answers) == [] and _rows(answers) == ["4"], answers
        assert _errors(_wire(sock, _parse("", SERIES) + _bind("u", "") + m.SYNC_MESSAGE)) == []
        assert _rows(_wire(sock, _query("FETCH 2 FROM u"))) == ["1", "2"]
        answers = _wire(sock, _parse("x", "FETCH d") + _bind("", "x") + _bind("d", "s") + _execute()
                        + m.SYNC_MESSAGE)
        assert _errors(answers) == [] and ("C", None) in answers, answers  # (PostgreSQL moved d: no row told)
        assert _rows(_wire(sock, _query("FETCH d"))) == ["2"]
        answers = _wire(sock, _parse("p", _set_path(user)) + _bind("e", "p") + m.SYNC_MESSAGE)
        assert _errors(answers) == [], answers
        assert _rows(_wire(sock, _query("FETCH c"))) == ["5"]
        assert _errors(_wire(sock, _query("FETCH e"))) == ["0A000"]
        _wire(sock, _query("ROLLBACK"))
        _unmoved(sock)
    finally:
        sock.close()
    _fresh_session_unmoved(proxies[mode], user)


@pytest.mark.parametrize("user", sorted(OWN))
def test_a_change_free_statement_made_by_parse_is_run_by_sql_execute(
        proxies: dict[str, ProxyProcess], user: str) -> None:
    """Where the client's names reach the server (session pooling without the cache), a protocol statement that
    changes no session state runs by SQL EXECUTE as PostgreSQL runs it; one Parsed with a change under its name once
    it is closed is refused."""
    sock = _session(proxies[NAMES_REACH_SERVER], user)
    try:
        assert _errors(_wire(sock, _parse("s", "SELECT 7") + m.SYNC_MESSAGE)) == []
        assert _rows(_wire(sock, _query("EXECUTE s"))) == ["7"]
        answers = _wire(sock, _parse("s", _set_path(user)) + m.SYNC_MESSAGE)
        assert _errors(answers) == ["42P05"], answers
        assert _rows(_wire(sock, _query("EXECUTE s"))) == ["7"]  # (PostgreSQL's statement s is still SELECT 7)
        answers = _wire(sock, _close_statement("s") + m.SYNC_MESSAGE)
        assert _errors(answers) == [], answers
        answers = _wire(sock, _parse("s", _set_path(user)) + m.SYNC_MESSAGE)
        assert _errors(answers) == [], answers
        assert _errors(_wire(sock, _query("EXECUTE s"))) == ["0A000"]
        _unmoved(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("mode", MODES)
def test_many_change_free_portals_leave_sql_cursors_fetched(proxies: dict[str, ProxyProcess], mode: str) -> None:
    """Review 19a F3: past 4,096 named portals bound in one transaction (pgJDBC names one per fetch-size query and
    Closes it) every SQL FETCH / MOVE was refused, of the client's own DECLAREd cursors too. Change-free portals are
    not held: a SQL cursor is fetched after 4,200 of them."""
    sock = _session(proxies[mode], "gina")
    try:
        assert _errors(_wire(sock, _query("BEGIN"))) == []
        batch = _parse("s", "SELECT 1") + b"".join(_bind(f"p{i}", "s") + _close_portal(f"p{i}") for i in range(4200))
        assert _errors(_wire(sock, batch + m.SYNC_MESSAGE)) == []
        assert _rows(_wire(sock, _query("DECLARE k CURSOR FOR SELECT 5; FETCH k"))) == ["5"]
        assert _errors(_wire(sock, _query("COMMIT"))) == []
    finally:
        sock.close()


@pytest.mark.parametrize("user", sorted(OWN))
def test_a_skipped_change_free_parse_leaves_the_statement_with_changes(
        proxies: dict[str, ProxyProcess], user: str) -> None:
    """A change-free Parse of the unnamed statement that PostgreSQL skips (an error earlier in its batch) leaves the
    set_config statement it had: a portal bound from it later is not FETCHed by SQL (review 19a F1's shape; a Query
    would drop PostgreSQL's unnamed statement, so the portal is bound and FETCHed in one batch). Session pooling
    without the cache: with the statement maps the proxy's map forgets the unnamed statement there (26000)."""
    mode = NAMES_REACH_SERVER
    sock = _session(proxies[mode], user)
    try:
        assert _errors(_wire(sock, _parse("", _set_path(user)) + m.SYNC_MESSAGE)) == []
        answers = _wire(sock, _parse("bad", "SELECT 1/0") + _bind("", "bad") + _execute() + _parse("", "SELECT 1")
                        + m.SYNC_MESSAGE)
        assert _errors(answers) == ["22012"], answers
        answers = _wire(sock, _bind("c", "") + _parse("", "FETCH c") + _bind() + _execute() + m.SYNC_MESSAGE)
        # (the Bind of the unnamed statement whose Parse was skipped is refused first: 26000 statement_not_known,
        # review 19a F1; without that rule the FETCH is refused, 0A000)
        assert _errors(answers) == ["26000"], answers
        _unmoved(sock)
    finally:
        sock.close()
    _fresh_session_unmoved(proxies[mode], user)
