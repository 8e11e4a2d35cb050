"""Name-bearing types (nametypes.py): a written reference to a reg* array, a catalog row type holding a reg* field, a
column definition list or RETURNING clause of a reg* type is refused; the scalar conversions stay guarded."""

from __future__ import annotations

import dataclasses

import pytest
from policy_corpus import POLICIES

from proxy.policy import Allow, Deny, Rewrite, decide, implicit, nametypes

SHARED, SCHEMA, DATABASE = POLICIES["shared"], POLICIES["schema"], POLICIES["database"]
DATABASE_HIDING = dataclasses.replace(DATABASE, hidden_schemas=frozenset({"tenant_globex"}))
ALL = [SHARED, SCHEMA, DATABASE, DATABASE_HIDING]

# The red team's statements (redteam-guards-1 F1-F4): each read or printed a name through a reg* function unguarded.
REFUSED = [
    # F1: column definition lists
    """SELECT * FROM jsonb_to_record('{"a":16445}') AS x(a regclass)""",
    """SELECT * FROM json_to_record('{"a":"16445"}') AS x(a regclass)""",
    """SELECT * FROM ROWS FROM (jsonb_to_record('{"a":16445}') AS (a regclass))""",
    """SELECT x.* FROM jsonb_to_record('{"n":16444,"r":16682}') AS x(n regnamespace, r regrole)""",
    """SELECT x.c FROM generate_series(16384, 20000) g, jsonb_to_record(jsonb_build_object('c', g)) AS x(c regclass)""",
    """SELECT * FROM jsonb_to_recordset('[{"a":16445}]') AS x(a pg_catalog.regclass)""",
    "SELECT * FROM jsonb_to_record(jsonb_build_object('c', $1::int)) AS x(c regclass)",
    # F2: array spellings
    "SELECT '{16445,16466}'::_regclass",
    "SELECT CAST('{16447}' AS pg_catalog._regtype)",
    "SELECT '{16444}'::_regnamespace, '{16682}'::_regrole",
    "SELECT $1::_regclass",
    # F3: catalog row types with a reg* field
    "SELECT '(a,b,c,16447,1,1,1,1,f,1,1)'::pg_sequences",
    "SELECT ROW('a','b','c',16447,1,1,1,1,false,1,1)::pg_sequences",
    """SELECT (jsonb_populate_record(null::pg_sequences,'{"data_type":16468}')).data_type""",
    """SELECT * FROM jsonb_populate_recordset(null::pg_sequences,'[{"data_type":16447}]')""",
    """SELECT (jsonb_populate_record(null::pg_prepared_statements,'{"parameter_types":[16447]}')).parameter_types""",
    "SELECT NULL::pg_catalog.pg_type",
    "SELECT '{}'::_pg_proc",
    # F4: new tables
    "CREATE TEMP TABLE t1 AS SELECT * FROM jsonb_to_record('{}') AS x(a regclass)",
    "CREATE TEMP TABLE t2 AS SELECT jsonb_populate_record(null::pg_sequences,'{}') r",
    # redteam-guards-2 G2: populate functions on a row that is not NULL::<named type>
    """SELECT jsonb_populate_record(ROW(NULL::regclass), '{"f1":16445}')""",
    """SELECT jsonb_populate_record(r, '{"x":16693}') FROM (SELECT NULL::regclass AS x) r""",
    """SELECT jsonb_populate_recordset(ROW(NULL::regrole, NULL::regnamespace), '[{"f1":16682,"f2":16444}]')""",
    """SELECT json_populate_record(ROW(NULL::regclass), '{"f1":"public.customers"}')""",
    """SELECT pg_catalog.jsonb_populate_record(t, '{"typinput":16445}') FROM pg_type t""",
    "SELECT jsonb_populate_record(ROW(NULL::regtype), jsonb_build_object('f1', $1::int))",
    # other places a type is written
    "SELECT json_value('16445', '$' RETURNING regclass)",
    "SELECT * FROM XMLTABLE('/r' PASSING ('<r><a>16445</a></r>'::xml) COLUMNS a regclass PATH 'a')",
]


@pytest.mark.parametrize("policy", ALL, ids=["shared", "schema", "database", "database_hiding"])
@pytest.mark.parametrize("sql", REFUSED)
def test_name_bearing_types_are_refused(policy: object, sql: str) -> None:
    decision = decide(policy, sql)  # type: ignore[arg-type]
    assert isinstance(decision, Deny), decision
    assert decision.rule in ("name_bearing_type", "ddl_not_allowed"), decision
    assert decision.sqlstate == "42501"


@pytest.mark.parametrize("sql", ["CREATE TEMP TABLE t4 (a _regclass, b _regnamespace)",
                                 "CREATE TEMP TABLE t5 (a pg_catalog._regrole)",
                                 "CREATE TEMP TABLE t7 (a _pg_sequences)", "CREATE TEMP TABLE t8 (a _pg_class)"])
def test_temp_table_columns_of_them_are_refused(sql: str) -> None:
    decision = decide(SHARED, sql)
    assert isinstance(decision, Deny) and decision.rule == "ddl_not_allowed", decision


@pytest.mark.parametrize("sql", [
    "SELECT 'x'::regclass", "SELECT CAST(16385 AS pg_catalog.regtype)", "SELECT regclass '16385'",
    "SELECT '{16385}'::regclass[]", "SELECT c.oid::regclass FROM pg_class c",
])
def test_scalar_conversions_stay_guarded(sql: str) -> None:
    decision = decide(DATABASE_HIDING, sql)
    assert isinstance(decision, Allow) or (isinstance(decision, Rewrite) and "object_guard" in decision.rules), decision


@pytest.mark.parametrize("sql", [
    "SELECT NULL::pg_lsn", "SELECT * FROM jsonb_to_record('{}') AS x(a int, b text)",
    "SELECT '{1}'::_int4", "SELECT NULL::my_schema.pg_sequences", "SELECT relname FROM pg_class",
    "CREATE TEMP TABLE t (a oid, b text, c pg_lsn)",
    """SELECT * FROM jsonb_populate_record(NULL::orders, '{"id":1}')""",
    """SELECT * FROM json_populate_recordset(CAST(NULL AS orders), '[{"id":1}]')""",
])
def test_other_types_are_left_alone(sql: str) -> None:
    decision = decide(SHARED, sql)
    assert not (isinstance(decision, Deny) and decision.rule == "name_bearing_type"), decision


@pytest.mark.parametrize("sql", [
    'SELECT NULL::u&"pg_sequence\\0073"', "SELECT '{}'::\"_regclass\"", "PREPARE bi_p(regclass) AS SELECT $1::text",
    "PREPARE bi_q(int, _regtype) AS SELECT 1",
])
def test_every_spelling_and_place_is_seen(sql: str) -> None:
    decision = decide(SHARED, sql)
    assert isinstance(decision, Deny) and decision.rule == "name_bearing_type", decision


def test_declared_name_bearing_parameters() -> None:
    for oid in (2210, 4097, 12050, 12049, 71, 2205):  # _regclass, _regrole, pg_sequences and its array, pg_type
        assert implicit.declares_reg_parameter(b"\x00\x01" + oid.to_bytes(4, "big")), oid
    assert not implicit.declares_reg_parameter(b"\x00\x01" + (1007).to_bytes(4, "big"))  # _int4


def test_the_tables_agree() -> None:
    assert len(nametypes.NAME_TYPES) == len(nametypes.NAME_TYPE_OIDS) == 48
    assert {"pg_basetype", "regclass", "to_regrole"} <= set(nametypes.RESULT_FUNCTIONS)
    assert implicit.RESULT_TYPES["pg_basetype"] == "regtype"
    assert implicit.SOURCE_COLUMNS["pg_get_catalog_foreign_keys"] == {"fktable": "regclass", "pktable": "regclass"}


# redteam-guards-1 F5: anchors the hand list missed, and columns renamed on the way to an implicit-typing construct.
GUARDED_RENAMES = [
    "SELECT coalesce(pg_basetype(NULL), 16447)",
    "SELECT GREATEST(pg_basetype(NULL), 16447)",
    "SELECT ARRAY[pg_basetype(NULL), 16447]",
    "SELECT pg_basetype(NULL) UNION ALL SELECT 16447",
    "SELECT * FROM (VALUES (pg_basetype(NULL)), (16447)) v",
    "SELECT coalesce(pg_basetype(NULL), $1::int)",
    "SELECT COALESCE(CASE WHEN false THEN fktable END, 16445) FROM pg_get_catalog_foreign_keys() LIMIT 1",
    "WITH a AS (SELECT NULL::regclass AS r) SELECT COALESCE(z, 16445) FROM a AS b(z)",
    "WITH a AS (SELECT NULL::regclass AS r) SELECT COALESCE(b.z, 16445) FROM a AS b(z)",
    "SELECT COALESCE(n, 16447) FROM unnest(ARRAY[1], '{NULL}'::regtype[]) AS u(m, n)",
    "SELECT COALESCE(u.n, 16447) FROM ROWS FROM (pg_typeof(1), pg_typeof(2)) AS u(m, n)",
]
REFUSED_RENAMES = [
    "WITH a AS (SELECT NULL::regclass AS r) SELECT COALESCE(j.z, 16445) FROM (a CROSS JOIN (SELECT 1) q) AS j(z, w)",
    "SELECT COALESCE(z, 16447) FROM pg_get_catalog_foreign_keys() AS f(z)",
    "SELECT COALESCE(z, 16447) FROM pg_type AS t(a, b, c, d, e, f, g, h, i, j, k, l, m, n, z)",
    "SELECT COALESCE(n, 16447) FROM ROWS FROM (jsonb_each('{}'), pg_typeof(1)) AS u(m, n, o)",
]


@pytest.mark.parametrize("policy", [SHARED, SCHEMA, DATABASE_HIDING], ids=["shared", "schema", "database_hiding"])
@pytest.mark.parametrize("sql", GUARDED_RENAMES)
def test_anchors_and_renamed_columns_are_guarded(policy: object, sql: str) -> None:
    decision = decide(policy, sql)  # type: ignore[arg-type]
    assert isinstance(decision, Rewrite) and "object_guard" in decision.rules, decision
    raw = "16445" if "16445" in sql else "16447" if "16447" in sql else "$1"
    assert "pgt_g_" in decision.sql[: decision.sql.index(raw)], decision.sql  # the value is inside a guard


@pytest.mark.parametrize("sql", REFUSED_RENAMES)
def test_renames_that_cannot_be_followed_are_refused(sql: str) -> None:
    decision = decide(SHARED, sql)
    assert isinstance(decision, Deny) and decision.rule == "rewrite_unsupported", decision


@pytest.mark.parametrize("sql", [
    "SELECT COALESCE(x, 16385) FROM generate_series(1, 3) AS g(x)",
    "SELECT COALESCE(j.x, 2) FROM ((SELECT 1) a(x) JOIN (SELECT 2) b(y) ON true) AS j(x, y)",
    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace",
])
def test_renames_without_object_identifiers_are_left_alone(sql: str) -> None:
    assert not isinstance(decide(SHARED, sql), Deny)


# redteam-guards-1 F6: an IN list of two items or more is resolved to one type with its left side.
@pytest.mark.parametrize("sql", [
    "SELECT 'pg_class'::regclass IN (0, 'tenant_globex.zz')",
    "SELECT 'pg_class'::regclass NOT IN (0, 'tenant_globex.zz')",
    "SELECT pg_typeof(NULL) IN (0, 'tenant_globex.x')",
    "SELECT 0 IN ('pg_class'::regclass, 'tenant_globex.zz')",
    "SELECT 'pg_class'::regclass IN ($1, 0)",
])
def test_in_lists_read_names_through_the_guard(sql: str) -> None:
    for policy in (SHARED, DATABASE_HIDING):
        decision = decide(policy, sql)
        assert isinstance(decision, Rewrite) and "object_guard" in decision.rules, decision
        raw = "$1" if "$1" in sql else "'tenant_globex"
        assert "pgt_g_" in decision.sql[: decision.sql.index(raw)], decision.sql
    decision = decide(SCHEMA, sql)  # the schema strategy decides a literal name as a cast's
    assert isinstance(decision, Deny if "$1" not in sql else Rewrite), decision


@pytest.mark.parametrize("sql", [
    "SELECT 'pg_class'::regclass IN ('tenant_globex.zz')",  # one item: oid = oid, read by oidin
    "SELECT relname FROM pg_class WHERE relkind IN ('r', 'v')",
])
def test_other_in_lists_are_left_alone(sql: str) -> None:
    decision = decide(SHARED, sql)
    assert not isinstance(decision, Deny) and "object_guard" not in getattr(decision, "rules", ()), decision
