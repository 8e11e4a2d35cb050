"""proxy/sqlruns.py: what SQL runs by name, and a session's protocol portals and what its statements run (rt9a11 C1)."""

from __future__ import annotations

import pytest

from proxy import sqlruns
from proxy.pgnames import protocol_key, protocol_name
from proxy.sqlruns import NOTHING, ProtocolRuns, sql_runs
from proxy.stmtnames import ServerNames

RUNS = {
    "EXECUTE s": ({"s"}, set()),
    "execute S (1, 'x')": ({"s"}, set()),
    'EXECUTE "S"': ({"S"}, set()),
    "EXPLAIN EXECUTE q": ({"q"}, set()),
    "EXPLAIN (ANALYZE, COSTS OFF) EXECUTE q": ({"q"}, set()),
    "CREATE TEMP TABLE t AS EXECUTE q": ({"q"}, set()),
    "FETCH c": (set(), {b"c"}),
    "fetch all from C": (set(), {b"c"}),
    'FETCH FORWARD 100 FROM "Cur"': (set(), {b"Cur"}),
    "MOVE c": (set(), {b"c"}),
    "MOVE ABSOLUTE 3 IN c": (set(), {b"c"}),
    "FETCH c; COMMIT": (set(), {b"c"}),
    "SELECT 1; EXECUTE s; MOVE c": ({"s"}, {b"c"}),
    "/* x */EXECUTE/**/s": ({"s"}, set()),
}


@pytest.mark.parametrize("sql", sorted(RUNS))
def test_the_names_a_text_runs_are_found_in_any_of_its_statements(sql: str) -> None:
    statements, portals = RUNS[sql]
    assert sql_runs(sql) == (frozenset(statements), frozenset(portals), frozenset())


@pytest.mark.parametrize("sql", [
    "SELECT removed_at, executed, fetched FROM moves",  # the words inside identifiers
    "SELECT 'EXECUTE s'",  # in a literal: not run
    "UPDATE t SET a = 1 WHERE CURRENT OF c",  # the cursor's position only: its query is not run
    "CLOSE c", "CLOSE ALL", "DEALLOCATE s", "PREPARE s AS SELECT 1",
    "EXECUTE", "FETCH FROM",  # not PostgreSQL's grammar: nothing runs
])
def test_a_text_that_runs_no_statement_or_portal_by_name_runs_nothing(sql: str) -> None:
    assert sql_runs(sql) is NOTHING


def test_a_long_name_is_keyed_as_postgresql_keys_it() -> None:
    """PostgreSQL cuts a SQL identifier at a character within 63 bytes and a protocol name at 63 bytes: a SQL name
    meets a protocol name only when those bytes are equal."""
    long = "a" * 70
    assert sql_runs(f"EXECUTE {long}")[0] == {protocol_name(long)}
    assert sql_runs(f"FETCH {long}")[1] == {protocol_key(long.encode())}
    wide = "é" * 40  # 80 bytes: SQL keeps 31 characters (62 bytes), a protocol name 63 bytes (a cut character)
    assert sql_runs(f'EXECUTE "{wide}"')[0] == {"é" * 31}
    assert protocol_name(wide) != "é" * 31
    assert sql_runs(f'FETCH "{wide}"')[1] == {("é" * 31).encode()} != {protocol_key(wide.encode())}


def test_a_statement_s_runs_are_replaced_unnamed_and_grow_named() -> None:
    runs = ProtocolRuns()
    runs.parsed("", sql_runs("FETCH c"), True)
    runs.parsed("", sql_runs("SELECT 1"), True)
    assert "" not in runs.statements
    runs.parsed("x", sql_runs("FETCH c"), True)
    runs.parsed("x", sql_runs("EXECUTE s"), True)  # (a Parse PostgreSQL may refuse: the old statement stays)
    assert runs.statements["x"] == (frozenset({"s"}), frozenset({b"c"}), frozenset())
    runs.parsed("x", NOTHING, True)
    assert runs.statements["x"] == (frozenset({"s"}), frozenset({b"c"}), frozenset())


def test_whether_a_statement_changes_nothing_is_replaced_unnamed_and_only_turns_to_changes_named() -> None:
    runs = ProtocolRuns()
    assert not runs.quiet("") and not runs.quiet("s")  # (never Parsed: unknown, not change-free)
    runs.parsed("", NOTHING, False)
    assert not runs.quiet("")
    runs.parsed("", NOTHING, True)
    assert runs.quiet("")
    runs.parsed("s", NOTHING, True)
    assert runs.quiet("s")
    runs.parsed("s", NOTHING, False)  # (its Parse may be one PostgreSQL refuses: either may be the server's)
    assert not runs.quiet("s")
    runs.parsed("s", NOTHING, True)
    assert not runs.quiet("s")


def test_only_portals_of_statements_not_known_change_free_are_held_with_what_they_run_until_their_transaction_ends(
) -> None:
    runs = ProtocolRuns()
    runs.parsed("x", sql_runs("FETCH c"), True)
    assert runs.bind(b"", "x", True) == (frozenset(), frozenset({b"c"}), frozenset())
    assert runs.running == (frozenset(), frozenset({b"c"}), frozenset())
    assert runs.bind(b"c", "s", False) is NOTHING
    # (change-free: SQL may FETCH it)
    assert runs.bind(b"cursor", "x", True) == (frozenset(), frozenset({b"c"}), frozenset())
    assert runs.portals == {b"c"}  # (the unnamed portal is not one SQL can name)
    runs.parsed("y", sql_runs("EXECUTE s"), True)
    runs.bind(b"", "y", True)  # a Bind that fails leaves the old unnamed portal: what it runs grows
    assert runs.running == (frozenset({"s"}), frozenset({b"c"}), frozenset())
    assert runs.portal(b"c") and not runs.portal(b"d") and not runs.portal(b"cursor")
    runs.ended()
    assert runs.portals == set() and runs.running is NOTHING and not runs.portal(b"c")


def test_past_its_bounds_a_portal_with_changes_and_a_new_running_statement_are_refused_a_new_decision_unknown(
) -> None:
    runs = ProtocolRuns()
    for i in range(sqlruns._MAX_PORTALS):
        assert runs.bind(b"p%d" % i, "", False) is NOTHING
    assert runs.bind(b"one more", "", False) is None  # (its Bind is refused)
    assert runs.bind(b"p1", "", False) is NOTHING and runs.bind(b"quiet", "", True) is NOTHING
    assert len(runs.portals) == sqlruns._MAX_PORTALS and not runs.portal(b"never bound")  # (SQL cursors run)
    runs.ended()
    assert runs.bind(b"one more", "", False) is NOTHING
    for i in range(sqlruns._MAX_STATEMENTS):
        assert runs.parsed(f"s{i}", sql_runs("FETCH c"), True)
    assert not runs.parsed("one more", sql_runs("FETCH c"), True)
    assert runs.parsed("s1", sql_runs("EXECUTE t"), True) and runs.parsed("other", NOTHING, True)
    assert runs.parsed("", NOTHING, True)
    runs = ProtocolRuns()
    for i in range(sqlruns._MAX_DECIDED + 1):
        runs.parsed(f"s{i}", NOTHING, True)
    runs.parsed("late", NOTHING, True)
    assert runs.quiet("s1") and not runs.quiet("late")  # (not kept: unknown, refused when run by SQL)
    runs.parsed("", NOTHING, True)
    assert runs.quiet("")


def test_server_names_may_have_a_statement_parsed_or_confirmed_until_its_close_is_answered() -> None:
    names = ServerNames()
    request = object()
    assert not names.may_have("s")
    names.parse("s", request)
    assert names.may_have("s")  # sent, not answered
    names.parse_complete(request)
    assert names.may_have("s")
    names.close("s", request)
    assert names.may_have("s")  # (a Close the server may skip)
    names.close_complete(request)
    assert not names.may_have("s")


def test_a_name_prepared_or_declared_earlier_in_the_same_string_is_the_sql_one() -> None:
    """`DEALLOCATE k; PREPARE k …; EXECUTE k` in one Query runs the SQL-prepared k (its PREPARE made it, or failed and
    nothing after it ran); so does `DECLARE c …; FETCH c` (the DECLARE itself is reported as such: red team 20a F2).
    A run before the PREPARE/DECLARE, or of another name, is still reported."""
    assert sql_runs("DEALLOCATE k2; PREPARE k2(int) AS SELECT $1; EXECUTE k2(1)") is NOTHING
    assert sql_runs("DECLARE c CURSOR FOR SELECT 1; FETCH c; MOVE c") == (frozenset(), frozenset(), frozenset({b"c"}))
    assert sql_runs("EXECUTE k2(1); PREPARE k2(int) AS SELECT $1") == (frozenset({"k2"}), frozenset(), frozenset())
    assert sql_runs("FETCH c; DECLARE c CURSOR FOR SELECT 1") == (frozenset(), frozenset({b"c"}), frozenset({b"c"}))
    assert sql_runs('PREPARE "K" AS SELECT 1; EXECUTE k') == (frozenset({"k"}), frozenset(), frozenset())
    assert sql_runs("DECLARE c CURSOR FOR SELECT 1; FETCH d") == (frozenset(), frozenset({b"d"}), frozenset({b"c"}))


@pytest.mark.parametrize(("sql", "declared"), [
    ("DECLARE c CURSOR FOR SELECT 1", {b"c"}),
    ('declare "Cur" cursor with hold for select 1', {b"Cur"}),
    ("CLOSE c; DECLARE c CURSOR FOR SELECT 1; DECLARE d CURSOR FOR SELECT 2", {b"c", b"d"}),
    ("SELECT 'declare c cursor for select 1'", set()),
])
def test_the_cursors_a_text_declares_are_found(sql: str, declared: set[bytes]) -> None:
    """A SQL cursor may take the name of a protocol portal the proxy noted a change for (red team 20a F2)."""
    assert sql_runs(sql)[2] == frozenset(declared)
