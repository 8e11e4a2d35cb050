"""The client's schema names written back in PostgreSQL's answers (hiddennames.py)."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.hiddennames import MAX_SENT, InFlight, executed, written_back
from proxy.policy.hiding import reserved_name
from proxy.protocol import messages as m

R = reserved_name("globex")
SENT = [(((R, "globex"),), ())]


def _body(**fields: str) -> bytes:
    return m.encode_error_fields(b"E", fields)[5:]


def _fields(framed: bytes | None) -> dict[str, str]:
    assert framed is not None
    return m.decode_error_fields(framed[5:])


def test_a_schema_named_by_postgresql_gets_the_clients_name() -> None:
    body = _body(S="ERROR", V="ERROR", C="42P01", M=f'relation "{R}.orders" does not exist', P="15",
                 F="parse_relation.c", L="1477", R="parserOpenTable")
    out = _fields(written_back(b"E", body, SENT, "select * from globex.orders"))
    assert out["M"] == 'relation "globex.orders" does not exist'
    assert (out["P"], out["F"], out["L"], out["R"]) == ("15", "parse_relation.c", "1477", "parserOpenTable")
    out = _fields(written_back(b"N", _body(S="NOTICE", C="00000", M=f'schema "{R}" does not exist, skipping'),
                               SENT, ""))
    assert out["M"] == 'schema "globex" does not exist, skipping'


def test_positions_map_back_through_the_renamed_spans() -> None:
    # `SELECT * FROM ab.zz` sent as `SELECT * FROM "<R>".zz`: the quoted name ends at 14 + 30, 28 characters more
    sent = [(((R, "ab"),), ((14, 14 + 30, 28),))]
    body = _body(C="42P01", M=f'relation "{R}.zz" does not exist', P="15")
    assert _fields(written_back(b"E", body, sent, ""))["P"] == "15"
    body = _body(C="42703", M='column "nosuch" does not exist', P=str(15 + 30 + 4))
    assert _fields(written_back(b"E", body, sent, ""))["P"] == str(15 + 2 + 4)


def test_what_is_not_a_reserved_schema_of_the_request_stays() -> None:
    other = reserved_name("initech")
    for fields in (
        {"C": "42P01", "M": f'relation "{R}" does not exist'},  # not as a schema
        {"C": "22P02", "M": f'invalid input syntax for type integer: "{R}.a"'},  # a value
        {"C": "42P01", "M": f'relation "{other}.t" does not exist'},  # not a name this request sent
        {"C": "42P01", "M": f'relation "x{R}.t" does not exist'},
        {"C": "42601", "M": "syntax error", "W": f'invalid type name "{R}.t"'},  # CONTEXT quotes computed text
    ):
        assert written_back(b"E", _body(**fields), SENT, "") is None, fields
    # the client wrote the reserved name itself
    body = _body(C="42P01", M=f'relation "{R}.t" does not exist')
    assert written_back(b"E", body, SENT, f"select * from {R}.t") is None


def test_names_travel_with_their_request_and_nothing_evicts_them() -> None:
    flight = InFlight()
    first, second = object(), object()
    pending = [first, second]
    flight.add(first, ((R, "globex"),), (), pending)
    for i in range(10_000):  # many other names for the next request: the first's stay
        flight.add(second, ((reserved_name(f"pg_temp_{i}"), f"pg_temp_{i}"),), (), pending)
    assert flight.of(first) == [(((R, "globex"),), ())]
    flight.add(second, (), (), [second])  # the first answered: forgotten
    assert flight.of(first) == []


def test_a_position_is_mapped_through_its_own_statements_moves_only() -> None:
    """Red team 9a2 H2: a batch of a renamed statement and one that names nothing hidden: the plain one's error is not
    mapped through the other's moves; the renamed one's (its Parse and Bind alike) is."""
    renamed = ((R, "ab"),), ((14, 14 + 30, 28),)
    plain: tuple[tuple[()], tuple[()]] = ((), ())
    error = _body(C="42703", M='column "nosuch" does not exist', P="118")
    assert written_back(b"E", error, [renamed, renamed, plain], "") is None
    assert _fields(written_back(b"E", error, [renamed, renamed], ""))["P"] == "90"
    quoted = _body(C="42P01", M=f'relation "{R}.zz" does not exist', P="60")
    assert _fields(written_back(b"E", quoted, [renamed, plain], ""))["P"] == "32"


def test_a_request_keeps_its_plain_statements_beside_its_renamed_ones() -> None:
    """A statement naming nothing hidden before or after a renamed one in the same request is kept (once per run),
    so the request's answers are not mapped through the renamed one's moves alone; a request of plain statements
    only keeps nothing."""
    flight = InFlight()
    renamed = ((R, "ab"),), ((14, 14 + 30, 28),)
    first, second, third = object(), object(), object()
    pending = [first, second, third]
    flight.plain(first)
    flight.add(first, *renamed, pending)
    flight.add(second, *renamed, pending)
    flight.plain(second)
    flight.plain(second)
    flight.plain(third)
    assert flight.of(first) == [((), ()), renamed]
    assert flight.of(second) == [renamed, ((), ())]
    assert flight.of(third) == []


def test_only_postgresqls_shapes_naming_the_statements_objects_are_written_back() -> None:
    """Red team 9a2 H7: a value the statement computed that quotes a reserved name (a setting's name, a function body's
    or dynamic SQL's error, with its CONTEXT) stays as it is (and the last-line check withholds it)."""
    for fields in (
        {"C": "42704", "M": f'unrecognized configuration parameter "{R}.zz"'},
        {"C": "42P01", "M": f'relation "{R}.t" does not exist', "W": "PL/pgSQL function inline_code_block line 1"},
        {"C": "42P01", "M": f'relation "{R}.t" does not exist', "q": f"SELECT 1 FROM {R}.t"},
    ):
        assert written_back(b"E", _body(**fields), SENT, "") is None, fields
    for message in (f'tablesample method {R}.bernoulli does not exist', f"function {R}.f() does not exist",
                    f'type "{R}.t" does not exist', f"cross-database references are not implemented: saas.{R}.t"):
        out = _fields(written_back(b"E", _body(C="42704", M=message), SENT, ""))
        assert out["M"] == message.replace(R, "globex"), message


def test_the_names_sent_are_found_in_an_answer_and_past_their_bound_any_reserved_shape() -> None:
    flight = InFlight()
    other = reserved_name("initech")
    flight.sending(((R, "globex"),))
    assert flight.leaks(f'x "{R}.t"'.encode()) and not flight.leaks(f'x "{other}.t"'.encode())
    assert not flight.leaks(b"pg_9 nothing")
    flight.sending(tuple((reserved_name(f"pg_temp_{i}"), f"pg_temp_{i}") for i in range(MAX_SENT - 1)))
    # red team 9a3 J3, 9a8 N2: every name counts toward the bound alike (a hidden and a missing schema's are both sent)
    assert not flight.shapes and not flight.leaks(f'x "{other}.t"'.encode())
    flight.sending(((reserved_name("pg_toast_temp_1"), "pg_toast_temp_1"),))
    assert flight.shapes and not flight.sent  # never one forgotten: any reserved name's shape from now on
    assert flight.leaks(f'x "{other}.t"'.encode()) and not flight.leaks(b"pg_9 nothing")


def test_the_bound_is_reached_alike_with_a_hidden_name_and_a_missing_one() -> None:
    """Red team 9a3 J3, 9a8 N2: names of other sessions' temporary schemas and a hidden schema's name leave the check
    as the same names and a missing schema's name do (both sent renamed): under the bound and past it alike."""
    shaped = b'relation "pg_9aaaaaaaaaaaaaaaaaaaaaaaa.t" does not exist'
    for count in (MAX_SENT - 1, MAX_SENT):
        temps = tuple((reserved_name(f"pg_temp_{i}"), f"pg_temp_{i}") for i in range(count))
        with_hidden, with_missing = InFlight(), InFlight()
        for flight, names in ((with_hidden, ((R, "globex"),)), (with_missing, ((reserved_name("glebox"), "glebox"),))):
            flight.sending(temps)
            flight.sending(names)
        assert with_hidden.shapes == with_missing.shapes == (count == MAX_SENT)
        assert with_hidden.leaks(shaped) == with_missing.leaks(shaped) == (count == MAX_SENT)


def test_a_portal_keeps_its_statements_names_until_its_transaction_ends() -> None:
    flight = InFlight()
    first, second = object(), object()
    flight.statements["s1"] = (((R, "globex"),), ())
    assert flight.bound("p1", "s1", first) == (((R, "globex"),), ())
    assert flight.bound("p2", "s1", second) is not None
    assert flight.bound("", "nosuch", second) is None and "" not in flight.portals
    flight.ended([second])  # the first request ended the transaction; the second, pipelined, is still in flight
    assert set(flight.portals) == {"p2"}
    flight.bound("p2", "plain", second)  # bound again to a statement without names
    assert flight.portals == {}


def test_sql_execute_of_a_renamed_statement_carries_its_names() -> None:
    """Red team 9a4 K5: `EXECUTE k1` (also under EXPLAIN or CREATE TABLE AS) runs k1's renamed text: its names."""
    names = (("pg_9aaaaaaaaaaaaaaaaaaaaaaaa", "globex"),)
    k1 = (names, ((10, 16, 22),))
    statements = {"k1": k1, "K2": k1}
    assert executed("EXECUTE k1", statements) == [k1]
    assert executed('BEGIN; explain Execute "K2"; CREATE TABLE t AS EXECUTE k1', statements) == [k1, k1]
    assert executed("EXECUTE k3", statements) == []
    assert executed("SELECT 'execute k1'", statements) == []
    assert executed("EXECUTE k1", {}) == []


def test_an_executes_own_parameter_positions_are_not_moved_by_its_statement() -> None:
    """Red team 9a5 F2: PostgreSQL's position in a SQL EXECUTE's own parameters is in the EXECUTE's text; only one
    elsewhere is in the statement's, mapped through its moves."""
    k1 = (((R, "ab"),), ((7, 7 + 30, 28),))
    sql = f"EXECUTE k1({' ' * 80}'abc')"
    [run] = executed(sql, {"k1": k1})
    assert run == k1 and sql.index("'abc'") in run.own
    flight, request = InFlight(), object()
    flight.running(request, run, [request])
    own = _body(C="22P02", M='invalid input syntax for type integer: "abc"', P=str(sql.index("'abc'") + 1))
    assert written_back(b"E", own, flight.of(request), sql.lower()) is None
    elsewhere = _body(C="42703", M='column "nosuch" does not exist', P=str(8 + 30 + 4))
    assert _fields(written_back(b"E", elsewhere, flight.of(request), sql.lower()))["P"] == str(8 + 2 + 4)
    # a rewritten EXECUTE: its own positions are those of the text sent
    sent = f"EXECUTE k1(/* sent */ {' ' * 80}'abc')"
    assert sent.index("'abc'") in executed(sql, {"k1": k1}, sent)[0].own


def test_an_execute_of_a_statement_confirmed_gone_carries_no_names() -> None:
    """Red team 9a5 F3: once PostgreSQL confirmed a statement gone (Close, DEALLOCATE, DISCARD ALL), the SQL EXECUTEs
    of its name in flight (sent before the confirmation came) and later ones are mapped through no moves."""
    k2 = (((R, "ab"),), ((7, 7 + 30, 28),))
    flight, request = InFlight(), object()
    flight.statements["k2"] = k2
    flight.running(request, executed("EXECUTE k2(1)", flight.statements)[0], [request])
    flight.forget(["k2"])
    assert flight.of(request) == [((), ())] and flight.statements == {}
    assert executed("EXECUTE k2(1)", flight.statements) == []
    flight.statements.update(k3=k2, k4=k2)
    flight.forget(None, frozenset({"k4"}))  # DISCARD ALL with a Parse of k4 sent after it
    assert set(flight.statements) == {"k4"}


class _Kept(set):  # type: ignore[type-arg]
    """The names a session sent, which the check may look up (counted) but never walk one by one."""

    looked = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the sent names were walked one by one: a per-name cost per message (red team 9a7 H1)")

    def __contains__(self, name: object) -> bool:
        _Kept.looked += 1
        return super().__contains__(name)


def test_a_message_is_checked_without_walking_the_names_sent() -> None:
    """Red team 9a7 H1: every row holding "pg_9" was tested against each of up to 4,096 names sent (632 µs a row).
    The check looks up the names the message holds, whatever their number: the same lookups for 1 name sent as for
    MAX_SENT, dense "pg_9" data included, and the sent names themselves are never iterated."""
    rows = [b"pg_9" * 5000, b"pg_9" + b"a" * 23 + b"." + b"pg_9pg_9",
            (b"x " + reserved_name("initech").encode() + b".t ") * 50,  # (50 of one shape not sent)
            b"".join(reserved_name(f"other_{i}").encode() + b"." for i in range(40))]
    looked: list[list[int]] = []
    for count in (1, MAX_SENT):
        flight = InFlight()
        flight.sent = _Kept()
        flight.sending(((R, "globex"),))
        flight.sending(tuple((reserved_name(f"pg_temp_{i}"), f"pg_temp_{i}") for i in range(count - 1)))
        assert not flight.shapes and len(flight.sent) == count
        counts = []
        for row in rows:
            _Kept.looked = 0
            assert not flight.leaks(row)
            counts.append(_Kept.looked)
        _Kept.looked = 0
        assert flight.leaks(rows[-1] + b'"' + R.encode() + b'.t"')
        assert flight.leaks(b"pg_9" * 5000 + R.encode() + b".t")
        looked.append(counts)
    assert looked[0] == looked[1] == [0, 0, 50, 40]  # (a name held: looked up once per place)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"pg_9", b"p", b"g", b"_", b"9", b"a", b"2", b"pg", b"_9", b".", b"a" * 11,
                                 b"b" * 22]), max_size=30), st.integers(0, 3))
@example([b"pg_9", b"b" * 22, b"pg", b"_9", b"b" * 22, b"a", b"a"], 1)  # (the second begins in the first's last two)
@example([b"pg_9", b"b" * 22, b"a", b"p", b"g", b"_9", b"b" * 22, b"a", b"a"], 1)
def test_every_reserved_name_in_a_message_is_found(parts: list[bytes], which: int) -> None:
    """Wherever names of the reserved shape begin (overlapping ones too: one may begin in the last two characters of
    the one before), the check finds the one the session sent: as a search for it at every position would."""
    data = b"".join(parts)
    starts = [at for at in range(len(data)) if re.fullmatch(rb"pg_9[a-z2-7]{24}", data[at : at + 28])]
    flight = InFlight()
    flight.sending(((R, "globex"),))
    assert not flight.leaks(data)  # (R is none of these: its letters are random)
    if starts:
        flight.sent.add(data[starts[which % len(starts)] :][:28])
        assert flight.leaks(data)
