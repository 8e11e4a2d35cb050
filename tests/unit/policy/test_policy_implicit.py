"""Implicitly typed object identifiers (implicit.py): the constructs where PostgreSQL makes a raw OID or a name a reg*
value get the guard the written conversion would get, the verifier refuses them without it, and a new table or view
never gets a column of a reg* type."""

from __future__ import annotations

import json

import pytest
from policy_corpus import DATABASE_HIDING, POLICIES

from proxy.policy import Allow, Deny, Rewrite, decide, implicit
from proxy.policy.tree import parse_json
from proxy.policy.verify import Unverified, check_coverage

SHARED, SCHEMA, DATABASE = POLICIES["shared"], POLICIES["schema"], POLICIES["database"]

# Each statement converts a raw OID (or a name) to a reg* type without a written conversion.
IMPLICIT = [
    "SELECT CASE WHEN false THEN 'x'::regclass ELSE 16385 END",
    "SELECT CASE WHEN g > 0 THEN g ELSE NULL::regtype END FROM generate_series(16384, 16390) g",
    "SELECT COALESCE('x'::regclass, 16385)",
    "SELECT COALESCE(NULL::regclass, c.oid) FROM pg_class c",
    "SELECT GREATEST('x'::regclass, 16385), LEAST(16385, 'x'::regclass)",
    "SELECT ARRAY['x'::regclass, 16385]",
    "SELECT ARRAY[ARRAY['x'::regclass], ARRAY[16385]]",
    "SELECT array_append(ARRAY['x'::regclass], 16385)",
    "SELECT array_prepend(16385, ARRAY['x'::regclass])",
    "SELECT 'x'::regclass UNION SELECT 16385",
    "SELECT 'x'::regclass UNION ALL SELECT '16385'",
    "SELECT 'x'::regclass AS a, 1 UNION SELECT g, 2 FROM generate_series(1, 3) g",
    "VALUES ('x'::regclass), (16385)",
    "VALUES (to_regclass('x')), ($1)",
    "SELECT v FROM generate_series(16384, 16390) g, LATERAL (VALUES (NULL::regclass), (g)) t(v)",
    "SELECT r FROM (SELECT 'x'::regclass AS r UNION ALL SELECT 16385) s",
    "SELECT COALESCE(s.r, 16385) FROM (SELECT 'x'::regclass AS r) s",
    "WITH s(r) AS (SELECT pg_typeof(1)) SELECT COALESCE(r, 16385) FROM s",
    "SELECT COALESCE(typinput, 16385) FROM pg_type",
    "SELECT COALESCE((SELECT 'x'::regclass), 16385)",
    "SELECT COALESCE(COALESCE('x'::regclass, 1), 16385)",
    "SELECT array_position(ARRAY['x'::regclass], 'tenant_globex.orders')",
    "SELECT array_remove(ARRAY[to_regclass('x')], $1)",
    "SELECT COALESCE('x'::regclass, 'tenant_globex.orders')",
    "SELECT ARRAY['x'::regclass] || '{16385}'",
    "SELECT COALESCE('x'::regclass, max(c.oid)) FROM pg_class c",
    "SELECT COALESCE(f, 16385) FROM pg_typeof(1) f",
    "SELECT COALESCE(u, 16385) FROM unnest(ARRAY['x'::regclass]) AS u",
    "SELECT COALESCE((s).r, 16385) FROM (SELECT 'x'::regclass AS r) s",
    "SELECT COALESCE(x, 16385) FROM (VALUES ('x'::regclass)) v(x)",
    "SELECT COALESCE(v.column1, 16385) FROM (VALUES ('x'::regclass)) v",
]


def _decide(policy_name: str, sql: str) -> Rewrite:
    policy = DATABASE_HIDING if policy_name == "database_hiding" else POLICIES[policy_name]
    decision = decide(policy, sql)
    assert isinstance(decision, Rewrite), decision
    assert "object_guard" in decision.rules, decision
    parse_json(decision.sql)
    return decision


@pytest.mark.parametrize("policy_name", ["shared", "schema", "database_hiding"])
@pytest.mark.parametrize("sql", IMPLICIT)
def test_implicit_conversions_get_a_guard(policy_name: str, sql: str) -> None:
    if policy_name == "schema" and "'tenant_globex." in sql:  # a literal name: checked when decided
        decision = decide(SCHEMA, sql)
        assert isinstance(decision, Deny), decision
        assert (decision.sqlstate, decision.message) == ("3F000", 'schema "tenant_globex" does not exist'), decision
        return
    _decide(policy_name, sql)


def test_an_array_literal_is_never_a_checked_name() -> None:
    """`'{16385}'::regclass[]` read OIDs unguarded in the schema strategy (a red-team finding)."""
    _decide("schema", "SELECT '{16385}'::regclass[]::text")


@pytest.mark.parametrize("sql", IMPLICIT)
def test_the_verifier_refuses_them_unguarded(sql: str) -> None:
    node = json.loads(parse_json(sql))["stmts"][0]["stmt"]
    with pytest.raises(Unverified):
        check_coverage(SHARED, node)


@pytest.mark.parametrize(
    ("sql", "wrapped", "kept"),
    [
        # the construct as a whole: its result's OID is checked, its type stays
        ("SELECT COALESCE('x'::regclass, 16385)", "(COALESCE('x'::regclass, 16385))::pg_catalog.oid",
         "pgt_g_c__class__oid__regclass.o::pg_catalog.regclass"),
        # an array: every element checked
        ("SELECT ARRAY['x'::regclass, 16385]", "(SELECT (ARRAY['x'::regclass, 16385]) AS t OFFSET 0)",
         "pgt_g_r__class__regclass"),
        # a set operation's other arm: the guard its written conversion would get
        ("SELECT 'x'::regclass UNION SELECT 16385 AS y", "SELECT (16385)::pg_catalog.text AS t",
         "AS y"),
        # a name read by regclassin beside a reg* value: looked up only outside hidden schemas
        ("SELECT array_position(ARRAY['x'::regclass], 'tenant_globex.orders')",
         "('tenant_globex.orders')::pg_catalog.text", "array_position(ARRAY['x'::regclass], (SELECT"),
    ],
)
def test_the_guard_forms(sql: str, wrapped: str, kept: str) -> None:
    rewritten = _decide("shared", sql).sql
    assert wrapped in rewritten and kept in rewritten, rewritten


@pytest.mark.parametrize(
    "sql",
    [
        # no reg* value: nothing to convert (psql's, pgJDBC's and the BI tools' CASE/COALESCE/UNION stay as they are)
        "SELECT CASE WHEN c.relkind = 'r' THEN 'table' ELSE 'other' END, COALESCE(c.reltuples, 0) FROM pg_class c",
        "SELECT 1 AS a, 'x' UNION ALL SELECT 2, 'y'",
        "SELECT COALESCE(o.amount, 0) FROM orders o",
        # a reg* value compared with a column or a number: no name is read, no name is printed
        "SELECT c.relname FROM pg_class c WHERE c.oid = 'orders'::regclass",
        "SELECT a.attname FROM pg_attribute a WHERE a.attrelid IN ('orders'::regclass, 'customers'::regclass)",
        # every arm is a checked conversion or NULL
        "SELECT CASE WHEN true THEN 'orders'::regclass ELSE NULL END",
        "SELECT 'orders'::regclass UNION SELECT 'customers'",
        # compared, a literal is an OID (oidin): `'x'::regclass = 'y'` is `oid = oid`, no name is looked up
        "SELECT 'orders'::regclass = 'tenant_globex.orders', 'orders'::regclass IN (16385, 'x')",
        "SELECT NULLIF(16385, 'orders'::regclass), CASE 16385 WHEN 'orders'::regclass THEN 1 END",
    ],
)
def test_legitimate_statements_are_left_alone(sql: str) -> None:
    decision = decide(SHARED, sql)
    assert isinstance(decision, Allow | Rewrite), decision
    assert not isinstance(decision, Rewrite) or "object_guard" not in decision.rules, decision


@pytest.mark.parametrize("op", ["||", "OPERATOR(||)", "OPERATOR(pg_catalog.||)"])
def test_an_operand_of_concatenation_that_is_not_a_literal_is_refused(op: str) -> None:
    """The qualified spelling of || is the same operator (redteam-guards-2 G3)."""
    for sql in (f"SELECT ARRAY['x'::regclass] {op} 16385", f"SELECT 16385 {op} ARRAY[NULL::regclass]"):
        decision = decide(SHARED, sql)
        assert isinstance(decision, Deny) and decision.rule == "rewrite_unsupported", (sql, decision)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT lag(NULL::regclass, 1, 16445) OVER ()",
        "SELECT lead(16445, 0, NULL::regclass) OVER ()",
        "SELECT lag(pg_typeof(1), 1, 16447) OVER ()",
        "SELECT pg_catalog.lag(to_regrole('x'), 1, 16683) OVER ()",
        "SELECT g, lag(NULL::regclass, 1, g::oid) OVER (PARTITION BY g) FROM generate_series(16384, 16700) g",
    ],
)
def test_a_lag_lead_default_beside_a_reg_value_is_refused(sql: str) -> None:
    """lag/lead(anycompatible, int, anycompatible): the default is converted to the value's reg* type and printed
    (redteam-guards-2 G1); unless both are written conversions (or the default is NULL), refused."""
    decision = decide(SHARED, sql)
    assert isinstance(decision, Deny) and decision.rule == "rewrite_unsupported", decision


def test_lag_lead_without_a_converted_default_are_left_alone() -> None:
    decision = decide(SHARED, "SELECT lag(relname, 1, 'x') OVER (), lag(c.oid::regclass, 1, NULL) OVER (), "
                      "lag(c.oid::regclass, 1, c.oid::regclass) OVER () FROM pg_class c")
    assert isinstance(decision, Rewrite), decision
    guarded = decide(SHARED, "SELECT lead(NULL::regclass, 1, $1) OVER ()")  # a parameter: read as a name, guarded
    assert isinstance(guarded, Rewrite) and "object_guard" in guarded.rules, guarded


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM (SELECT 'x'::regclass) s UNION ALL SELECT 16385",
        "SELECT * FROM pg_am UNION ALL SELECT 1, 'x', 16385, 't'",
    ],
)
def test_a_set_operation_of_star_over_reg_columns_is_refused(sql: str) -> None:
    """The columns a * stands for are not known, so neither is which arm's value PostgreSQL converts."""
    decision = decide(SHARED, sql)
    assert isinstance(decision, Deny) and decision.rule == "rewrite_unsupported", decision


def test_declared_reg_parameters() -> None:
    assert implicit.declares_reg_parameter(b"\x00\x01" + (2205).to_bytes(4, "big"))
    assert implicit.declares_reg_parameter(b"\x00\x02" + (25).to_bytes(4, "big") + (4097).to_bytes(4, "big"))
    assert not implicit.declares_reg_parameter(b"\x00\x02" + (25).to_bytes(4, "big") + (26).to_bytes(4, "big"))
    assert not implicit.declares_reg_parameter(b"\x00\x00")
    # a type that is not built in (a table's row type, a domain: OID >= FirstNormalObjectId) is refused too
    assert implicit.declares_reg_parameter(b"\x00\x01" + (16447).to_bytes(4, "big"))
    assert implicit.declares_reg_parameter(b"\x00\x02" + (0).to_bytes(4, "big") + (16384).to_bytes(4, "big"))
    assert not implicit.declares_reg_parameter(b"\x00\x01" + (16383).to_bytes(4, "big"))


def test_no_guard_is_needed_where_nothing_is_hidden() -> None:
    decision = decide(DATABASE, "SELECT COALESCE('x'::regclass, 16385)")
    assert isinstance(decision, Allow), decision
    decision = decide(DATABASE, "SELECT COALESCE('x'::regrole, 10)")  # role names are hidden everywhere
    assert isinstance(decision, Rewrite) and "object_guard" in decision.rules, decision


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TEMP TABLE t AS SELECT 'x'::regclass AS r",
        "CREATE TEMP TABLE t AS SELECT c.oid::regclass FROM pg_class c",
        "CREATE TEMP TABLE t AS SELECT COALESCE('x'::regclass, 1) AS c",
        "CREATE TEMP TABLE t AS SELECT 1 UNION SELECT 'x'::regclass",
        "CREATE TEMP TABLE t AS VALUES (pg_typeof(1))",
        "CREATE TEMP TABLE t AS SELECT typname, typinput FROM pg_type",
        "CREATE TEMP TABLE t AS SELECT * FROM pg_type",
        "CREATE TEMP TABLE t AS SELECT ty FROM pg_type ty",
        "CREATE TEMP TABLE t AS SELECT * FROM pg_partition_tree('orders')",
        "CREATE TEMP TABLE t AS EXECUTE p",
        "SELECT 'x'::regclass AS r INTO TEMP t",
        "SELECT * INTO TEMP t FROM (SELECT to_regclass('x') AS r) s",
        "WITH s AS (SELECT 1 AS a, to_regrole('x') AS r) SELECT s.* INTO TEMP t FROM s",
        "CREATE TEMP VIEW v AS SELECT typinput FROM pg_type",
        "CREATE TEMP VIEW v AS SELECT 'x'::regclass AS r",
    ],
)
@pytest.mark.parametrize("policy", [SHARED, SCHEMA, DATABASE], ids=["shared", "schema", "database"])
def test_a_new_table_or_view_gets_no_reg_column(policy: object, sql: str) -> None:
    decision = decide(policy, sql)  # type: ignore[arg-type]
    assert isinstance(decision, Deny) and decision.rule == "ddl_not_allowed", decision


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TEMP TABLE t AS SELECT oid, relname FROM pg_class",
        "CREATE TEMP TABLE t AS SELECT typname, typinput::oid AS f FROM pg_type",
        "CREATE TEMP TABLE t AS SELECT c.oid::regclass::text AS name FROM pg_class c",
        "SELECT * INTO TEMP t FROM orders",
        "WITH s AS (SELECT 1 AS a, to_regclass('x') AS r) SELECT o.* INTO TEMP t FROM s, orders o",
        "CREATE TEMP VIEW v AS SELECT c.oid::regclass::text FROM pg_class c",
    ],
)
def test_a_new_table_of_names_as_text_or_oids_is_allowed(sql: str) -> None:
    assert isinstance(decide(SHARED, sql), Allow | Rewrite)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 'x'::regclass", "regclass"),
        ("SELECT 'x'::regtype[]", "regtype[]"),
        ("SELECT to_regrole('x')", "regrole"),
        ("SELECT pg_typeof(1)", "regtype"),
        ("SELECT unnest(ARRAY['x'::regclass])", "regclass"),
        ("SELECT array_agg('x'::regclass)", "regclass[]"),
        ("SELECT (ARRAY['x'::regclass])[1]", "regclass"),
        ("SELECT (ARRAY['x'::regclass])[1:1]", "regclass[]"),
        ("SELECT ARRAY(SELECT 'x'::regclass)", "regclass[]"),
        ("SELECT typinput", "regproc"),
        ("SELECT max('x'::regclass)", None),  # max(oid): an OID
        ("SELECT 'x'::regclass::text", None),
        ("SELECT data_type", None),  # information_schema.columns.data_type: text (pg_sequences' only where read)
    ],
)
def test_types(sql: str, expected: str | None) -> None:
    node = json.loads(parse_json(sql))["stmts"][0]["stmt"]
    types = implicit.types_of(node)
    target = node["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
    assert types.of(target) == expected
