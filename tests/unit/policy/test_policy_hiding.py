"""Hidden schemas sent as reserved missing names (hiding.py): which names are renamed, the reserved names, the
verification, positions and names mapped back."""

from __future__ import annotations

import dataclasses

import pytest
from policy_corpus import DATABASE_HIDING, POLICIES

from proxy.hiddennames import written_back
from proxy.policy import Allow, Deny, Rewrite, decide
from proxy.policy.hiding import Renamed, position_back, rename, reserved_name, restored
from proxy.policy.model import UNSEEN_SCHEMA

SHARED_HIDING = POLICIES["shared_hiding"]
# What a missing schema's statement was sent as before it was renamed too (red team 9a8 N2): the same tenant with
# nothing hidden, whose statements are sent as written; PostgreSQL's positions for a missing name are in that text.
AS_WRITTEN = dataclasses.replace(SHARED_HIDING, hidden_schemas=frozenset())


def _renamed(sql: str) -> Renamed:
    out = rename(SHARED_HIDING, sql)
    assert out is not None, sql
    return out


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM tenant_globex.zz",
        "SELECT * FROM TENANT_GLOBEX.zz",
        'SELECT * FROM "tenant_globex".zz',
        'SELECT * FROM U&"tenant\\005fglobex".zz',
        'SELECT * FROM U&"tenant!005fglobex" UESCAPE \'!\'.zz',
        "SELECT * FROM tenant_globex /* c */ . zz",
        "SELECT tenant_globex.f(1)",
        "SELECT NULL::tenant_globex.t",
        "SELECT 1 OPERATOR(tenant_globex.+) 1",
        "SELECT 'a' COLLATE tenant_globex.\"C\"",
        "SELECT tenant_globex.zz.id",
        "SELECT (tenant_globex.zz.*)",
        "CREATE TEMP TABLE t (LIKE tenant_globex.zz)",
        "CREATE TEMP TABLE t (x text, EXCLUDE USING btree (x tenant_globex.text_ops WITH =))",
        "SELECT * FROM zz TABLESAMPLE tenant_globex.bernoulli(1)",
        "COPY tenant_globex.zz TO STDOUT",
        "LOCK TABLE tenant_globex.zz",
        "SELECT * FROM pg_temp_3.zz",
    ],
)
def test_every_way_of_writing_the_schema_is_renamed(sql: str) -> None:
    renamed = _renamed(sql)
    low = renamed.sql.lower()
    assert "tenant_globex" not in low and "tenant\\005f" not in low and "tenant!005f" not in low, renamed
    assert "pg_temp_3" not in low, renamed
    (reserved, name), = renamed.names
    assert name in ("tenant_globex", "pg_temp_3") and reserved == reserved_name(name)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT tenant_globex.id FROM zz tenant_globex",  # a FROM item's alias
        "SELECT tenant_globex.* FROM zz tenant_globex",
        "SET tenant_globex.x = 1",  # a setting's prefix
        "SHOW tenant_globex.x",
        "SELECT 1; SET tenant_globex.x = 1",
        "UPDATE zz SET tenant_globex.f = 1",  # a column's field
        "SELECT 'tenant_globex.zz'",  # a value (run-time guards)
        "SELECT * FROM tenant_globex",  # a table of that name
        "SELECT * FROM public.zz",  # a schema the tenant sees
        "SELECT zz.id FROM zz; SELECT z.* FROM zz z",  # a table, an alias
        "CREATE TEMP TABLE rz (a int) WITH (tenant_globex.fillfactor = 50)",  # a reloption namespace (9a G10)
        "CREATE TEMP VIEW vz WITH (tenant_globex.x = 1) AS SELECT 1",
        "ALTER TABLE zz SET (tenant_globex.fillfactor = 50)",
    ],
)
def test_a_name_that_is_not_a_hidden_schema_stays(sql: str) -> None:
    assert rename(SHARED_HIDING, sql) is None


@pytest.mark.parametrize("sql", ["SELECT * FROM tenant_globez.zz", "SELECT x.tenant_globex.zz"])
def test_a_schema_the_tenant_cannot_see_that_is_not_hidden_is_renamed_as_a_hidden_one(sql: str) -> None:
    """Red team 9a8 N2: a missing schema (of none of the schemas the tenant sees) is renamed as a hidden one is, so
    the proxy's work (the Rewrite, the answer written back) never tells them apart."""
    name = "tenant_globez" if "globez" in sql else "x"
    renamed = _renamed(sql)
    assert renamed.names == ((reserved_name(name), name),) and f'"{reserved_name(name)}".' in renamed.sql, renamed


@pytest.mark.parametrize("sql", [
    "SELECT * FROM public.zz", "SELECT * FROM sales.orders", "SELECT * FROM pg_catalog.pg_class",
    "SELECT * FROM information_schema.tables", "SELECT * FROM pg_temp.zz", "SELECT * FROM pg_toast.pg_toast_1",
    "SELECT NULL::pg_catalog.int4", "SELECT 1 OPERATOR(pg_catalog.+) 1", "SELECT 'a' COLLATE pg_catalog.\"C\"",
    "SELECT sales.f(1)", "SELECT NULL::public.t",
])
@pytest.mark.parametrize("known", ["prepared", "created since", "created since, not on the search_path"])
def test_a_schema_the_tenant_sees_is_never_renamed(sql: str, known: str) -> None:
    """Its own schemas (its tables', its search_path), the system ones and PostgreSQL's `pg_` ones are never renamed,
    nor answered as missing: also when the schema was created after the tenant was prepared (not among
    `known_schemas`): the tenant's own are of its configuration."""
    policy = SHARED_HIDING if known == "prepared" else dataclasses.replace(SHARED_HIDING, known_schemas=frozenset())
    if known.endswith("search_path"):
        policy = dataclasses.replace(policy, search_path=("public",))  # (sales: its tables' schema only)
    assert rename(policy, sql) is None
    assert not isinstance(decide(policy, sql), Rewrite) or "hidden_schema" not in decide(policy, sql).rules


# Every way a statement names a schema ({s}); hidden (tenant_globex) and missing (tenant_glebox) alike.
_NAMINGS = [
    "SELECT * FROM {s}.zz", 'SELECT * FROM "{s}".zz', "SELECT {s}.f(1)", "SELECT NULL::{s}.t",
    "SELECT 1 OPERATOR({s}.+) 1", "SELECT 'a' COLLATE {s}.\"C\"", "SELECT {s}.zz.id", "LOCK TABLE {s}.zz",
    "COPY {s}.zz TO STDOUT", "CREATE TEMP TABLE t (LIKE {s}.zz)", "CREATE TABLE {s}.t (a int)", "DROP SCHEMA {s}",
    "CREATE SCHEMA {s}", "GRANT USAGE ON SCHEMA {s} TO PUBLIC", "SET search_path = {s}, public",
    "SELECT pg_catalog.set_config('search_path', '{s}', false)", "SELECT to_regclass('{s}.zz')",
    "SELECT '{s}.zz'::regclass", "SELECT 'x'::regclass, 1 FROM zz WHERE false AND to_regclass('{s}.zz') IS NULL",
    "SET default_text_search_config = '{s}.english'", "SELECT 1; SELECT * FROM {s}.zz",
    "PREPARE p AS SELECT * FROM {s}.zz", "DECLARE c CURSOR FOR SELECT * FROM {s}.zz",
    "EXPLAIN SELECT * FROM {s}.zz", "SELECT 1 FROM zz WHERE EXISTS (SELECT 1 FROM {s}.zz)",
]


@pytest.mark.parametrize("policy", ["shared_hiding", "database_hiding"])
@pytest.mark.parametrize("template", _NAMINGS)
def test_a_hidden_and_a_missing_schema_are_marked_alike(policy: str, template: str) -> None:
    """Red team 9a6 G3: whether a decision marks its statement as naming a schema the tenant cannot see (which sets
    the session's last-line guard) is the same for a hidden and a missing schema, whatever the statement and its
    decision."""
    def marked(decision: object) -> bool:
        if isinstance(decision, Deny):
            return decision.before is not None and UNSEEN_SCHEMA in decision.before.effects
        return UNSEEN_SCHEMA in decision.effects  # type: ignore[attr-defined]

    hidden = decide(POLICIES[policy], template.format(s="tenant_globex"))
    missing = decide(POLICIES[policy], template.format(s="tenant_glebox"))
    assert marked(hidden) == marked(missing), (hidden, missing)
    sent = hidden.before if isinstance(hidden, Deny) else hidden
    assert bool(getattr(sent, "names", ())) == marked(hidden), hidden  # (marked where a reserved name is sent)


def test_the_schema_strategy_is_not_renamed() -> None:
    assert rename(dataclasses.replace(POLICIES["schema"], hidden_schemas=frozenset({"tenant_globex"})),
                  "SELECT * FROM tenant_globex.zz") is None


def test_reserved_names_are_quoted_secret_and_of_one_length() -> None:
    first = _renamed("SELECT * FROM tenant_globex.zz")
    reserved = first.names[0][0]
    assert reserved == reserved_name("tenant_globex") and len(reserved) == 28 and reserved.startswith("pg_9")
    assert set(reserved[4:]) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert first.sql == f'SELECT * FROM "{reserved}".zz'
    # the same name again: the same reserved name (a cached decision agrees with itself); the client's text does not
    # steer it (red team 9a G7: no longer a name that avoids the text, so no longer one that grows)
    assert _renamed("SELECT 1 FROM tenant_globex.yy").names[0][0] == reserved
    assert _renamed("SELECT 'pg_9a' /* pg_9 */ FROM tenant_globex.zz").names[0][0] == reserved
    policy = dataclasses.replace(SHARED_HIDING, hidden_schemas=frozenset({"tenant_globex", "tenant_initech"}))
    both = rename(policy, 'SELECT * FROM tenant_globex.a, "tenant_globex".b, tenant_initech.c')
    assert both is not None and len(both.names) == 2 and len({r for r, _ in both.names}) == 2


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT*FROM"tenant_globex".zz',  # red team 9a G6: against a keyword
        "SELECT 1 FROM zz o JOIN\"tenant_globex\".zz p ON true",
        'SELECT 1 FROM zz WHERE 1=ANY(SELECT 1 FROM"tenant_globex".zz)',
        'SELECT * FROM U&"' + "".join(f"!+{ord(c):06x}" for c in "tenant_globex") + '" UESCAPE \'!\'.zz',  # > 63
        "SELECT * FROM U&\"tenant!005fglobex\" /* é, and a long comment " + "x" * 80 + " */ UESCAPE '!'.zz",
        'SELECT * FROM U&"tenant!005fglobex" UESCAPE $$!$$.zz',  # the escape is the string's value (9a G5)
        "SELECT * FROM U&\"tenant!005fglobex\" UESCAPE E'\\041'.zz",
        'SELECT * FROM U&"tenant!005fglobex" /* c */ UESCAPE /* d */ $x$!$x$.zz',
    ],
)
def test_the_renamed_text_parses_whatever_stands_around_the_name(sql: str) -> None:
    renamed = _renamed(sql)
    assert renamed.names == ((reserved_name("tenant_globex"), "tenant_globex"),)
    assert isinstance(decide(SHARED_HIDING, sql), Rewrite)


def test_positions_map_back_through_every_renamed_span() -> None:
    policy = dataclasses.replace(SHARED_HIDING, hidden_schemas=frozenset({"ab"}))
    sql = "SELECT * FROM ab.zz, U&\"a!0062\" UESCAPE '!'.yy, nosuch"
    renamed = rename(policy, sql)
    assert renamed is not None
    (reserved, _), = renamed.names
    assert len(renamed.moved) == 2
    assert position_back(renamed.sql.index("nosuch") + 1, renamed.moved) == sql.index("nosuch") + 1
    assert position_back(renamed.sql.index(f"\"{reserved}") + 1, renamed.moved) == sql.index("ab") + 1
    assert position_back(renamed.sql.index(".yy") + 1, renamed.moved) == sql.index(".yy") + 1
    decision = decide(policy, "SELECT * FROM ab.zz; SELECT pg_sleep_for('1s')")  # the proxy's own refusal
    assert isinstance(decision, Deny) and decision.statement == (2, 2)


def test_a_refusal_names_what_the_client_wrote() -> None:
    decision = decide(SHARED_HIDING, "SELECT * FROM tenant_globex.zz, zz; SELECT tenant_globex.zz.id FROM zz")
    assert isinstance(decision, Deny) and decision.rule == "qualified_column", decision
    assert "tenant_globex" in decision.message and "pg_" not in decision.message, decision
    assert restored("relation pg_1abc.t", (("pg_1abc", "s"),)) == "relation s.t"


def test_the_decision_is_a_rewrite_carrying_the_names() -> None:
    for policy in (SHARED_HIDING, DATABASE_HIDING):
        decision = decide(policy, "SELECT * FROM tenant_globex.zz")
        assert isinstance(decision, Rewrite) and decision.rules == ("hidden_schema",), decision
        assert decision.names and decision.names[0][1] == "tenant_globex"
    assert decide(POLICIES["database"], "SELECT * FROM tenant_globex.zz").__class__.__name__ == "Allow"


def test_positions_map_back_in_the_text_the_policy_rewrote_too() -> None:
    """A tenant filter written before the name: PostgreSQL's position in the sent text maps to where the missing
    name's statement has it (its rewrite included)."""
    sql = "SELECT * FROM sales.orders, {s}.zz WHERE nosuch"
    hidden, missing = decide(SHARED_HIDING, sql.format(s="tenant_globex")), decide(AS_WRITTEN,
                                                                                    sql.format(s="tenant_glebox"))
    assert isinstance(hidden, Rewrite) and isinstance(missing, Rewrite) and hidden.sql != hidden.sql.split(",")[0]
    reserved = hidden.names[0][0]
    for at_hidden, at_missing in ((hidden.sql.index(f'"{reserved}"'), missing.sql.index("tenant_glebox")),
                                  (hidden.sql.index("nosuch"), missing.sql.index("nosuch"))):
        assert position_back(at_hidden + 1, hidden.moved) == at_missing + 1, hidden


# Red team 9a2 H8: what stands right before the name must not join the quoted reserved name into another token (a
# quoted identifier: `"a""pg_9…"` is one name; `u&`: `u&"pg_9…"` is a Unicode identifier); every neighbour that could
FUSING_NEIGHBOURS = [
    'CREATE TEMP TABLE tq ("a"{s}.t)',  # a quoted identifier: a column and its type
    'CREATE TEMP TABLE tq (a int, "b"{s}.t)',
    'CREATE TEMP TABLE tq (U&"a"{s}.t)',  # a Unicode identifier
    "SELECT u&{s}.f() FROM (SELECT 1 AS u) v",  # `u & s.f()`
    "SELECT U&{s}.zz.id FROM (SELECT 1 AS u) v",
    "SELECT u&{s}.zz.id FROM (SELECT 1 AS u) v",
    "SELECT * FROM json_to_record('{{}}') AS x(\"a\"{s}.t)",
    "SELECT E'x'::{s}.t, E'x'{s}.t",  # an escape string
    "SELECT 'x'::{s}.t",
    "SELECT U&'x'::{s}.t, U&'x'{s}.t",
    "SELECT $a$x$a$::{s}.t",  # a dollar-quoted string
    "SELECT $a$x$a${s}.t",
    "SELECT 1 FROM/*c*/{s}.zz",  # a comment
    "SELECT 1 FROM zz--c\n,{s}.zz",
    "SELECT 1+{s}.f(), 2*{s}.f(), 1<{s}.f(), @{s}.f(), ~{s}.f(), 1-{s}.f()",  # an operator character
    "SELECT 1 OPERATOR({s}.+)1",
    "SELECT 1{s}.f()",  # a digit
    "SELECT 1.5{s}.f()",
    "SELECT é{s}.zz FROM zz",  # a multibyte identifier character: one name, not the schema
    'CREATE TEMP TABLE tq (é int, "é"{s}.t)',
    "SELECT 1 FROM zz AS\"a\", {s}.zz",
    "SELECT x'1f'::{s}.t, b'1'{s}.t",
]


@pytest.mark.parametrize("sql", FUSING_NEIGHBOURS)
def test_a_neighbour_of_the_name_gets_the_missing_names_answer(sql: str) -> None:
    """The hidden name's decision is the missing name's (the same refusal, or sent: to PostgreSQL, which answers as
    for the missing one); the renamed text always verifies."""
    hidden = decide(SHARED_HIDING, sql.format(s="tenant_globex"))
    missing = decide(AS_WRITTEN, sql.format(s="tenant_globez"))
    if isinstance(missing, Deny):
        assert isinstance(hidden, Deny), (hidden, missing)
        assert (hidden.rule, hidden.sqlstate, hidden.message.replace("globex", "globez"), hidden.position) == (
            missing.rule, missing.sqlstate, missing.message, missing.position), (hidden, missing)
    elif isinstance(hidden, Rewrite):  # renamed: the missing name's rewrite, and the renaming
        rules = missing.rules if isinstance(missing, Rewrite) else ()
        assert hidden.rules == (*rules, "hidden_schema"), (hidden, missing)
    else:  # not a schema name there (one identifier with what stands before it)
        assert isinstance(hidden, Allow) and isinstance(missing, Allow), (hidden, missing)


@pytest.mark.parametrize("sql", [
    'CREATE TEMP TABLE tq ("a"tenant_globex.t, nosuch int)',
    "SELECT u&tenant_globex.t(nosuch) FROM (SELECT 1 AS u) v",
    'CREATE TEMP TABLE tq (é int, "é"tenant_globex.t, nosuch int)',
])
def test_a_space_written_before_the_name_maps_back(sql: str) -> None:
    """The space before the quoted reserved name is part of the renamed span: positions at it and in the name map to
    the client's name, positions after it to where they were."""
    renamed = _renamed(sql)
    reserved = renamed.names[0][0]
    quote = renamed.sql.index(f'"{reserved}"')
    assert renamed.sql[quote - 1] == " " and sql[sql.index("tenant_globex") - 1] != " ", renamed
    at = sql.index("tenant_globex") + 1
    assert position_back(quote + 1, renamed.moved) == at  # PostgreSQL's caret: the quote
    assert position_back(quote, renamed.moved) == at  # the space
    assert position_back(quote + 3, renamed.moved) == at + 2  # inside the name
    assert position_back(quote + 29, renamed.moved) == at + len("tenant_globex") - 1  # past the client's spelling
    tail = renamed.sql.index("nosuch") + 1
    assert position_back(tail, renamed.moved) == sql.index("nosuch") + 1


@pytest.mark.parametrize("written", [
    'AS "pg_9aaaaaaaaaaaaaaaaaaaaaaaa"',  # red team 9a2 H5: an alias shaped like a reserved name
    '/* "pg_9aaaaaaaaaaaaaaaaaaaaaaaa" */',
    ", '\"pg_9aaaaaaaaaaaaaaaaaaaaaaaa\"' AS x",
    ", 1 AS \"pg_9aaaaaaaaaaaaaaaaaaaaaaaa\", 2 AS \"pg_9bbbbbbbbbbbbbbbbbbbbbbbb\"",
])
def test_positions_follow_the_policys_edits_not_the_texts_shape(written: str) -> None:
    """A tenant filter written before the name and text shaped like a reserved name in the client's statement: the
    position of a later name maps to the missing name's place in its rewrite (red team 9a2 H5)."""
    sql = "SELECT 1 " + written + " FROM sales.orders, {s}.zz WHERE nosuch"
    hidden, missing = (decide(p, sql.format(s=s)) for p, s in ((SHARED_HIDING, "tenant_globex"),
                                                                (AS_WRITTEN, "tenant_glebox")))
    assert isinstance(hidden, Rewrite) and isinstance(missing, Rewrite), (hidden, missing)
    reserved = hidden.names[0][0]
    for at_hidden, at_missing in ((hidden.sql.index(f'"{reserved}"'), missing.sql.index("tenant_glebox")),
                                  (hidden.sql.index("nosuch"), missing.sql.index("nosuch"))):
        assert position_back(at_hidden + 1, hidden.moved) == at_missing + 1, hidden


def _shape(decision: object, name: str) -> object:
    """A decision with the client's schema name (also as the hex of a search_path entry) and its reserved names
    written alike: what the proxy does with it."""
    def same(text: str) -> str:
        return text.replace(name, "S").replace(name.encode().hex(), "S")

    if isinstance(decision, (Allow, Rewrite)):
        names = getattr(decision, "names", ())
        text = getattr(decision, "sql", "")
        for reserved, _ in names:
            text = text.replace(reserved, "R")
        return (type(decision).__name__, getattr(decision, "rules", ()), decision.effects, same(repr(decision.changes)),
                same(text), tuple(("R", same(n)) for _, n in names),
                getattr(decision, "moved", ()))
    assert isinstance(decision, Deny)
    return ("Deny", decision.rule, decision.sqlstate, decision.message.replace(name, "S"),
            decision.hint.replace(name, "S"), decision.position, decision.statement, decision.at_run,
            None if decision.before is None else _shape(decision.before, name))


@pytest.mark.parametrize("policy", ["shared_hiding", "database_hiding"])
@pytest.mark.parametrize("template", [*_NAMINGS, *FUSING_NEIGHBOURS, "SELECT 1 FROM {s}.orders AS a0 WHERE 'x' = 'y'",
                                      'SELECT * FROM "{s}".zz, {s}.zz z2 WHERE nosuch',
                                      "SELECT 1 FROM sales.orders, {s}.zz WHERE nosuch"])
def test_a_hidden_and_a_missing_schema_take_the_same_path(policy: str, template: str) -> None:
    """Red team 9a8 N2: a hidden schema's statement and a missing one's (a name of the same length) get the same
    decision: both renamed (a Rewrite with one reserved name, the same rules, effects and moves) or both refused the
    same way; never one sent as written and the other re-encoded."""
    hidden = decide(POLICIES[policy], template.format(s="tenant_globex"))
    missing = decide(POLICIES[policy], template.format(s="tenant_glebox"))
    assert _shape(hidden, "tenant_globex") == _shape(missing, "tenant_glebox"), (hidden, missing)


@pytest.mark.parametrize("template", [
    "SELECT 1 FROM {s}.orders AS a0 WHERE 'x' = 'y'", "COPY {s}.zz TO STDOUT", "SELECT NULL::{s}.t",
    "SELECT 1 FROM sales.orders, {s}.zz WHERE nosuch",
])
def test_a_hidden_and_a_missing_schemas_answer_are_written_back_alike(template: str) -> None:
    """Red team 9a8 N2: PostgreSQL's answer to either renamed statement (naming its reserved name, at its position)
    is written back, decoded and framed again, to the same answer with the client's name: the same work for both."""
    out = []
    for name in ("tenant_globex", "tenant_glebox"):
        decision = decide(SHARED_HIDING, template.format(s=name))
        sent = decision.before if isinstance(decision, Deny) else decision
        assert isinstance(sent, Rewrite) and sent.names, decision
        reserved = sent.names[0][0]
        where = sent.sql.index(f'"{reserved}"') + 1
        body = b"".join(code + value.encode() + b"\0" for code, value in (
            (b"S", "ERROR"), (b"C", "42P01"), (b"M", f'relation "{reserved}.zz" does not exist'),
            (b"P", str(where)))) + b"\0"
        back = written_back(b"E", body, [(sent.names, sent.moved)], template.format(s=name).lower())
        assert back is not None, decision
        out.append(back.replace(name.encode(), b"S"))
    assert out[0] == out[1]
