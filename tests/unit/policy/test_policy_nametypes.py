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
])
def test_other_types_are_left_alone(sql: str) -> None:
    decision = decide(SHARED, sql)
    assert not (isinstance(decision, Deny) and decision.rule == "name_bearing_type"), decision


def test_the_text_check_sees_every_spelling() -> None:
    assert nametypes.may_name("select '{}'::_regclass")
    assert nametypes.may_name('select null::u&"pg_sequence\\0073"')
    assert not nametypes.may_name("select relname from pg_class")


def test_declared_name_bearing_parameters() -> None:
    for oid in (2210, 4097, 12050, 12049, 71, 2205):  # _regclass, _regrole, pg_sequences and its array, pg_type
        assert implicit.declares_reg_parameter(b"\x00\x01" + oid.to_bytes(4, "big")), oid
    assert not implicit.declares_reg_parameter(b"\x00\x01" + (1007).to_bytes(4, "big"))  # _int4


def test_the_tables_agree() -> None:
    assert len(nametypes.NAME_TYPES) == len(nametypes.NAME_TYPE_OIDS) == 48
    assert {"pg_basetype", "regclass", "to_regrole"} <= set(nametypes.RESULT_FUNCTIONS)
    assert implicit.RESULT_TYPES["pg_basetype"] == "regtype"
    assert implicit.SOURCE_COLUMNS["pg_get_catalog_foreign_keys"] == {"fktable": "regclass", "pktable": "regclass"}
