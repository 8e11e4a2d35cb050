"""Name-bearing types: every type whose values PostgreSQL reads and prints through a reg* input/output function.

A value of a reg* type (regclass, regtype, regrole...) is read from text by regclassin & co. (a name is looked up,
an OID is printed as the object's name). So is a value of an array of one (`_regclass`, `regtype[]`), a domain over
one, and a composite type with a field of one (a catalog's row type, `pg_sequences`, `pg_prepared_statements`...),
transitively. The run-time guards (guards.py) follow the written scalar conversions (`x::regclass`,
`x::regclass[]`) and the implicit typing around them (implicit.py); any other written reference to one of these
types -- `'{16385}'::_regclass`, `ROW(...)::pg_sequences`, `null::pg_sequences`, a column definition list
`AS x(a regclass)`, `RETURNING regclass`, `XMLTABLE`/`JSON_TABLE` columns, a temporary table's column -- reads or
prints names without a guard and is refused (`name_bearing_type`). A Parse message declaring a parameter of one of
them is refused likewise (`reg_parameter_type`).

The sets below are PostgreSQL's catalog (`TYPE_QUERY`, `FUNCTION_QUERY`): the same names and OIDs in PostgreSQL
15 to 18; tests/integration/test_isolation_attacks.py checks them against the running server of every major.
"""

from __future__ import annotations

import json
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from proxy.policy.aclinput import ACL_TYPES, is_text
from proxy.policy.guards import CAST_KINDS
from proxy.policy.rules import fail
from proxy.policy.tree import names_of, string_const, walk_dicts
from proxy.policy.walk import Analysis

# The name-bearing types of a database: reg* types, then arrays of, domains over, and composite types with a field
# of a name-bearing type, to a fixed point.
TYPE_QUERY = """
WITH RECURSIVE nb(oid) AS (
  SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_proc p ON p.oid = t.typinput
   WHERE p.proname IN ('regclassin', 'regtypein', 'regprocin', 'regprocedurein', 'regoperin', 'regoperatorin',
                       'regnamespacein', 'regrolein', 'regcollationin', 'regconfigin', 'regdictionaryin')
  UNION
  SELECT t.oid FROM pg_catalog.pg_type t JOIN nb ON (t.typelem = nb.oid AND t.typcategory = 'A')
      OR (t.typtype = 'd' AND t.typbasetype = nb.oid)
      OR EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0
                 AND NOT a.attisdropped AND a.atttypid = nb.oid)
)
SELECT n.nspname, t.typname, t.oid::int8 FROM nb JOIN pg_catalog.pg_type t USING (oid)
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace ORDER BY 1, 2
"""
# The functions whose result, OUT or TABLE columns are of a name-bearing type (`types`: their OIDs).
FUNCTION_QUERY = """
SELECT DISTINCT p.proname::text FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace
   AND (p.prorettype = ANY (%(types)s::oid[]) OR EXISTS (
        SELECT FROM unnest(p.proallargtypes, p.proargmodes) u(t, m)
         WHERE u.m IN ('o', 'b', 't') AND u.t = ANY (%(types)s::oid[])))
 ORDER BY 1
"""

_REG = ("regclass", "regcollation", "regconfig", "regdictionary", "regnamespace", "regoper", "regoperator",
        "regproc", "regprocedure", "regrole", "regtype")
_ROW = ("pg_aggregate", "pg_am", "pg_amproc", "pg_conversion", "pg_operator", "pg_prepared_statements", "pg_proc",
        "pg_range", "pg_sequences", "pg_transform", "pg_ts_parser", "pg_ts_template", "pg_type")
_OIDS = (2205, 4191, 3734, 3769, 4089, 2203, 2204, 24, 2202, 4096, 2206,  # the reg* types, in _REG's order
         2210, 4192, 3735, 3770, 4090, 2208, 2209, 1008, 2207, 4097, 2211,  # their arrays
         10027, 10015, 10019, 10049, 10009, 12097, 81, 10101, 12050, 10103, 10070, 10072, 71,  # row types (_ROW)
         10026, 10014, 10018, 10048, 10008, 12096, 272, 10100, 12049, 10102, 10069, 10071, 210)  # their arrays
# pg_catalog type name -> OID (TYPE_QUERY's answer on PostgreSQL 15 to 18).
NAME_TYPES: dict[str, int] = dict(zip((*_REG, *("_" + n for n in _REG), *_ROW, *("_" + n for n in _ROW)), _OIDS,
                                      strict=True))
NAME_TYPE_OIDS = frozenset(NAME_TYPES.values())

# pg_catalog functions with a name-bearing result or output column (FUNCTION_QUERY's answer, PostgreSQL 15 to 18;
# pg_basetype since 17); the reg* input and receive functions take cstring/internal and are not callable by a tenant.
RESULT_FUNCTIONS: dict[str, str] = {
    "get_current_ts_config": "regconfig", "pg_basetype": "regtype", "pg_filenode_relation": "regclass",
    "pg_get_replica_identity_index": "regclass", "pg_partition_ancestors": "regclass", "pg_partition_root": "regclass",
    "pg_typeof": "regtype", "regclass": "regclass",
    **{f"to_{name}": name for name in _REG if name not in ("regconfig", "regdictionary")},
}
# Their output columns, by name, for the functions returning rows.
ROW_FUNCTIONS: dict[str, dict[str, str]] = {
    "pg_get_catalog_foreign_keys": {"fktable": "regclass", "pktable": "regclass"},
    "pg_partition_tree": {"relid": "regclass", "parentrelid": "regclass"},
    "pg_partition_ancestors": {"relid": "regclass", "pg_partition_ancestors": "regclass"},
    "pg_prepared_statement": {"parameter_types": "regtype[]", "result_types": "regtype[]"},
    "ts_debug": {"dictionaries": "regdictionary[]", "dictionary": "regdictionary"},
}


# Functions reading a value with the input function of a type named in a text argument (index 1).
INPUT_FUNCTIONS = frozenset({"pg_input_is_valid", "pg_input_error_info"})


# Functions reading JSON (hstore) values into the fields of their first argument's row type with the fields' input
# functions: a ROW(NULL::regclass), a sub-select's row or a catalog row would read and print names unguarded.
POPULATE_FUNCTIONS = frozenset({"json_populate_record", "json_populate_recordset", "jsonb_populate_record",
                                "jsonb_populate_recordset", "jsonb_populate_record_valid", "populate_record"})


# aclitem and its array: aclitemin reads `grantee=privileges/grantor` with role names, answering `role "x" does not
# exist` for a missing role and reading a hidden one (red team round 3 R7). Neither a reg* type nor guarded: any written
# reference is refused, and so is an unknown-typed literal or parameter read as one by aclcontains(aclitem[], aclitem).
ACL_TYPE_OIDS = frozenset({1033, 1034})


def _acl_type(type_name: dict[str, Any]) -> str | None:
    names = names_of(type_name.get("names"))
    if names and names[-1] in ACL_TYPES and (len(names) == 1 or names[-2] == "pg_catalog"):
        return names[-1]
    return None


def check_acl_input(root: Any, analysis: Analysis) -> None:
    """Refuse aclitem input from text: a written aclitem type (a cast of anything but NULL, a column) and
    aclcontains() of a literal or a parameter (`aclitem_input`)."""
    if any(names and names[-1] in ACL_TYPES for names in analysis.type_names):
        null_casts: set[int] = set()
        for node in walk_dicts(root):
            cast = node.get("TypeCast")
            if cast is not None and ((cast.get("arg") or {}).get("A_Const") or {}).get("isnull"):
                null_casts.add(id(cast.get("typeName")))
            elif _is_type_name(node) and id(node) not in null_casts and _acl_type(node):
                raise fail("aclitem_input", f"type {_acl_type(node)} reads role names from text")
    for call in analysis.calls:
        index = _ACL_ARGUMENT.get(call.names[-1]) if call.names else None
        if index is not None and (len(call.names) == 1 or call.names[-2] == "pg_catalog"):
            arg = call.args[index] if len(call.args) > index else None
            if is_text(arg):
                raise fail("aclitem_input", f"{call.names[-1]}() reads a text argument as aclitem, with role names")


# Functions with an aclitem/aclitem[] parameter, by its position: an unknown-typed literal or parameter there is read
# by aclitemin.
_ACL_ARGUMENT = {"aclcontains": 1, "aclexplode": 0}


def may_name(analysis: Analysis) -> bool:
    """Whether the statement writes a name-bearing type (a conversion to one too) or calls an input function by a
    type's name or a populate function: only then is it walked again (`check`)."""
    return any(names and names[-1] in NAME_TYPES for names in analysis.type_names) or any(
        call.names and call.names[-1] in (INPUT_FUNCTIONS | POPULATE_FUNCTIONS) for call in analysis.calls)


def _is_type_name(node: dict[str, Any]) -> bool:
    return "names" in node and "typemod" in node


def name_bearing(type_name: dict[str, Any]) -> str | None:
    """The name-bearing pg_catalog type a TypeName node resolves to (`regclass[]` for an array form), else None."""
    names = names_of(type_name.get("names"))
    if not names or (len(names) > 1 and names[-2] != "pg_catalog") or names[-1] not in NAME_TYPES:
        return None
    return names[-1] + ("[]" if type_name.get("arrayBounds") else "")


def check(root: Any) -> None:
    """Refuse a written reference to a name-bearing type other than a scalar reg* conversion (`x::regclass`,
    `CAST(x AS regtype)`, `regclass 'x'`, `x::regclass[]`), which the run-time guards follow."""
    guarded: set[int] = set()
    for node in walk_dicts(root):
        cast = node.get("TypeCast")
        if cast is not None:
            type_name = cast.get("typeName") or {}
            names = names_of(type_name.get("names"))
            if names and names[-1] in CAST_KINDS and (len(names) == 1 or names[-2] == "pg_catalog"):
                guarded.add(id(type_name))
        elif "FuncCall" in node:
            _check_input_call(node["FuncCall"])
            _check_populate_call(node["FuncCall"])
        elif _is_type_name(node) and id(node) not in guarded:
            found = name_bearing(node)
            if found is not None:
                raise fail("name_bearing_type", f"type {found} reads and prints object names without the checks "
                           "the proxy applies to a written conversion")


def _check_input_call(call: dict[str, Any]) -> None:
    """pg_input_is_valid(text, type) & co. read the text with the type's input function: regclassin would look a name
    up (and answer `permission denied` for a hidden schema, `f` for a missing one). The type must be a string literal
    naming a type that is not name-bearing."""
    names = names_of(call.get("funcname"))
    if not names or names[-1] not in INPUT_FUNCTIONS or (len(names) > 1 and names[-2] != "pg_catalog"):
        return
    args = call.get("args") or []
    arg = args[1] if len(args) > 1 else None
    while type(arg) is dict and "TypeCast" in arg:
        arg = arg["TypeCast"].get("arg")
    literal = string_const(arg) if len(args) > 1 else None
    found: str | None = "a type computed at run time"
    if literal is not None:
        try:
            doc = json.loads(parse_sql_json(f"SELECT NULL::{literal}"))
            type_name = doc["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]["TypeCast"][
                "typeName"]
            found = name_bearing(type_name)
        except (ParseError, KeyError, IndexError, TypeError, ValueError):
            found = f"type {literal!r}"
    if found is not None:
        raise fail("name_bearing_type", f"{names[-1]}() of {found} reads object names without the checks the proxy "
                   "applies to a written conversion")


def _check_populate_call(call: dict[str, Any]) -> None:
    """jsonb_populate_record(base, json) & co. read the JSON values with the input functions of base's row type: the
    base must be a NULL cast to a named type that is not name-bearing (`NULL::my_table`), whose fields the schema
    checks have seen; a ROW(), a sub-select's row or a column may hold a reg* field (redteam-guards-2 G2)."""
    names = names_of(call.get("funcname"))
    if not names or names[-1] not in POPULATE_FUNCTIONS or (len(names) > 1 and names[-2] != "pg_catalog"):
        return
    args = call.get("args") or []
    cast = args[0].get("TypeCast") if args and type(args[0]) is dict else None
    arg = (cast or {}).get("arg")
    if cast is None or type(arg) is not dict or not (arg.get("A_Const") or {}).get("isnull"):
        raise fail("name_bearing_type", f"{names[-1]}() reads values with the input functions of its first "
                   "argument's fields: write it as NULL::<type> of a named table or composite type")
