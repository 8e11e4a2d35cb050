"""Run-time guards: the SQL that turns an OID or a name into an object only when the tenant may see the object.

What the proxy cannot check when it decides a statement -- the OID in a column, a parameter's value, a number --
PostgreSQL checks while it runs the statement. Every OID-to-name conversion whose value is not a string literal
(`::regclass` & co. of a column, a parameter, a number or an expression; `to_regclass(x)` & co.; the naming
functions such as `format_type`, `pg_get_viewdef`, `obj_description`, `pg_get_userbyid`; the object and role
arguments of `has_*_privilege` and `pg_has_role`; the size functions) gets its value through a guard:

* **carrier** (`T1`): `(SELECT pgt_g.o::<type> FROM (SELECT <oid of v> AS o FROM (SELECT <the client's
  expression> AS t OFFSET 0) pgt_v) pgt_g WHERE <the object exists and is visible>)`. The client's expression is
  evaluated once (the `OFFSET 0` keeps the planner from copying it); a name is looked up with `to_reg*` (NULL
  when missing) and an all-digit text is an OID, exactly as the `reg*` input functions read them, so an object
  the tenant may not see and one that does not exist give the same NULL.
* **array** (`T2`), for an expression holding an aggregate, a window or a set-returning function (which cannot
  move into a subquery): `(<visible OIDs>)[array_position(<visible OIDs>, <the client's cast>)]`, the value
  evaluated once where the client wrote it.

The guard's text is generated here, once per policy, and parsed with a placeholder for the client's expression;
the rewrite puts the client's bytes in the placeholder's place and the verifier (`verify.py`) accepts exactly
this tree around a hole (`match`). Each template names itself in an alias (`pgt_g_<id>`).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast.parser import parse_sql_json

from proxy.policy import visibility as vis
from proxy.policy.model import SYSTEM_SCHEMAS, TenantPolicy
from proxy.policy.sqltext import object_name_parts
from proxy.policy.tree import Node, strip_positions
from proxy.registrynames import CHANNEL as REGISTRY_CHANNEL
from proxy.registrynames import INSTANCE_LOCK

PLACEHOLDER = "pgtenant.operand"  # a quoted column name no client can mean: the hole in a template's tree
_PLACEHOLDER_SQL = '"' + PLACEHOLDER + '"'


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of object an OID can name: its catalog, the catalog's namespace column and its reg* type."""

    name: str
    catalog: str
    nspcol: str | None = None
    regtype: str | None = None
    to_reg: str | None = None  # the to_reg* function reading a name (None: only OIDs, or the reg* input)
    exact: tuple[str, str] | None = None  # (catalog, name column) for names given verbatim (not parsed)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("class", "pg_class", "relnamespace", "regclass", "to_regclass"),
    Kind("type", "pg_type", "typnamespace", "regtype", "to_regtype"),
    Kind("proc", "pg_proc", "pronamespace", "regprocedure", "to_regprocedure"),
    Kind("oper", "pg_operator", "oprnamespace", "regoperator", "to_regoperator"),
    Kind("namespace", "pg_namespace", None, "regnamespace", "to_regnamespace", ("pg_namespace", "nspname")),
    Kind("collation", "pg_collation", "collnamespace", "regcollation", "to_regcollation"),
    Kind("config", "pg_ts_config", "cfgnamespace", "regconfig"),
    Kind("dictionary", "pg_ts_dict", "dictnamespace", "regdictionary"),
    Kind("ts_parser", "pg_ts_parser", "prsnamespace"),
    Kind("ts_template", "pg_ts_template", "tmplnamespace"),
    Kind("conversion", "pg_conversion", "connamespace"),
    Kind("opclass", "pg_opclass", "opcnamespace"),
    Kind("opfamily", "pg_opfamily", "opfnamespace"),
    Kind("constraint", "pg_constraint", "connamespace"),
    Kind("statext", "pg_statistic_ext", "stxnamespace"),
    Kind("trigger", "pg_trigger"),
    Kind("rule", "pg_rewrite"),
    Kind("role", "pg_roles", None, "regrole", "to_regrole", ("pg_roles", "rolname")),
    Kind("database", "pg_database", None, None, None, ("pg_database", "datname")),
    Kind("sized", "pg_class", "relnamespace", "regclass", "to_regclass"),  # a relation whose size may be told
    Kind("dbsize", "pg_database", None, None, None, ("pg_database", "datname")),  # a database ditto
    Kind("object", ""),  # any object (obj_description): hidden when it is a hidden object of any catalog
    Kind("shared", ""),  # a shared object (shobj_description): the current database, a visible role, a tablespace
)}

# Casts to these types name an object; the kind says which visibility applies.
CAST_KINDS: dict[str, str] = {
    "regclass": "class", "regtype": "type", "regproc": "proc", "regprocedure": "proc", "regoper": "oper",
    "regoperator": "oper", "regnamespace": "namespace", "regcollation": "collation", "regconfig": "config",
    "regdictionary": "dictionary", "regrole": "role",
}
# Kinds whose objects live in a schema (guarded only when the policy hides some schema).
_NAMESPACED = frozenset(
    {"class", "type", "proc", "oper", "namespace", "collation", "config", "dictionary", "ts_parser", "ts_template",
     "conversion", "opclass", "opfamily", "constraint", "statext", "trigger", "rule", "object"}
)
# Kinds guarded even for a string literal (what they hide does not depend on a schema named in the text).
ALWAYS = frozenset({"role", "sized", "dbsize", "database", "shared"})

# Modes: how the argument is read. "oid": it is an OID (oid, integer or reg* typed: the function's parameter is
# oid). "parse": it may also be a name that PostgreSQL parses (`'sales.orders'`, `'"Foo"'`), read with to_reg*.
# "exact": it may be a name taken verbatim (has_schema_privilege('Foo', …)).
OID, PARSE, EXACT = "oid", "parse", "exact"


@dataclass(frozen=True, slots=True)
class ArgGuard:
    """Guard argument `index` of a call (negative: from the end) with `kind`/`mode` when the call has `nargs`
    arguments (None: any number); `literal_only`: only when it is a string literal."""

    index: int
    kind: str
    mode: str
    nargs: tuple[int, ...] | None = None
    literal_only: bool = False  # only a string literal is guarded (the argument may be of another type)


def _args(kind: str, mode: str, *names: str, index: int = 0) -> dict[str, tuple[ArgGuard, ...]]:
    return {n: (ArgGuard(index, kind, mode),) for n in names}


def _privilege(obj_kind: str | None, obj_mode: str, obj_index: int, role_nargs: int) -> tuple[ArgGuard, ...]:
    out = [ArgGuard(0, "role", EXACT, (role_nargs,))]
    if obj_kind is not None:
        out.append(ArgGuard(obj_index, obj_kind, obj_mode))
    return tuple(out)


# Text search functions taking a configuration (regconfig) first when called with these numbers of arguments.
_TS_CONFIG: dict[str, tuple[int, ...]] = {
    "to_tsvector": (2,), "to_tsquery": (2,), "plainto_tsquery": (2,), "phraseto_tsquery": (2,),
    "websearch_to_tsquery": (2,), "ts_debug": (2,), "json_to_tsvector": (3,), "jsonb_to_tsvector": (3,),
}

# Naming functions: the arguments that name an object, the kind that decides whether the tenant may see it.
CALL_ARGS: dict[str, tuple[ArgGuard, ...]] = {
    **_args("type", OID, "format_type"),
    **_args("class", OID, "col_description", "pg_get_indexdef", "pg_get_partkeydef",
            "pg_get_partition_constraintdef", "pg_table_is_visible", "pg_sequence_parameters"),
    **_args("class", PARSE, "pg_get_viewdef", "pg_get_replica_identity_index", "pg_column_is_updatable",
            "pg_relation_is_updatable", "pg_relation_is_publishable", "pg_index_column_has_property",
            "pg_index_has_property", "row_security_active", "pg_partition_tree", "pg_partition_root",
            "pg_partition_ancestors", "pg_sequence_last_value", "pg_get_sequence_data",
            "currval", "nextval", "setval"),  # (regclass arguments: an OID's error names any relation)
    **_args("sized", PARSE, "pg_relation_size", "pg_total_relation_size", "pg_table_size", "pg_indexes_size"),
    **_args("dbsize", EXACT, "pg_database_size"),
    **_args("object", OID, "obj_description"),
    **_args("shared", OID, "shobj_description"),
    **_args("constraint", OID, "pg_get_constraintdef"),
    **_args("trigger", OID, "pg_get_triggerdef"),
    **_args("rule", OID, "pg_get_ruledef"),
    **_args("proc", OID, "pg_get_functiondef", "pg_get_function_arguments", "pg_get_function_identity_arguments",
            "pg_get_function_result", "pg_get_function_sqlbody", "pg_get_function_arg_default",
            "pg_function_is_visible"),
    **_args("statext", OID, "pg_get_statisticsobjdef", "pg_get_statisticsobjdef_columns",
            "pg_get_statisticsobjdef_expressions", "pg_statistics_obj_is_visible"),
    **_args("type", OID, "pg_type_is_visible"),
    **_args("type", PARSE, "pg_basetype"),
    **_args("oper", OID, "pg_operator_is_visible"),
    **_args("opclass", OID, "pg_opclass_is_visible"),
    **_args("opfamily", OID, "pg_opfamily_is_visible"),
    **_args("collation", OID, "pg_collation_is_visible", "pg_collation_actual_version"),
    **_args("conversion", OID, "pg_conversion_is_visible"),
    **_args("config", OID, "pg_ts_config_is_visible"),
    **_args("dictionary", OID, "pg_ts_dict_is_visible"),
    **_args("ts_parser", OID, "pg_ts_parser_is_visible"),
    **_args("ts_template", OID, "pg_ts_template_is_visible"),
    **_args("database", OID, "pg_database_collation_actual_version"),
    **_args("type", PARSE, "pg_input_is_valid", "pg_input_error_info", index=1),
    **_args("namespace", OID, "pg_is_other_temp_schema"),  # another session's temporary schema: its activity
    # The text search functions' regconfig / regdictionary parameter (pg_proc; tests/integration/test_name_catalog.py
    # checks that every allow-listed function with a parameter of a reg* type is here): a name literal, a parameter
    # or an OID in it is read by regconfigin & co., which answer "permission denied for schema" for a hidden one.
    **{name: (ArgGuard(0, "config", PARSE, nargs),) for name, nargs in _TS_CONFIG.items()},
    "ts_lexize": (ArgGuard(0, "dictionary", PARSE, (2,)),),
    # a text search parser by name (text) or OID: looked up by the function itself, "permission denied" likewise
    "ts_parse": (ArgGuard(0, "ts_parser", PARSE),),
    "ts_token_type": (ArgGuard(0, "ts_parser", PARSE),),
    # ts_headline(config, document, query) and ts_headline(document, query, options) both take three arguments:
    # the first is a configuration only when PostgreSQL resolves it so: a column or a parameter there is a document
    # (text has no implicit cast to regconfig), a string literal may be either and is guarded when it is a name.
    "ts_headline": (ArgGuard(0, "config", PARSE, (4,)), ArgGuard(0, "config", PARSE, (3,), literal_only=True)),
    "pg_get_expr": (ArgGuard(1, "class", OID),),
    "pg_get_serial_sequence": (ArgGuard(0, "class", PARSE),),
    "acldefault": (ArgGuard(1, "role", OID),),
    "makeaclitem": (ArgGuard(0, "role", OID), ArgGuard(1, "role", OID)),
    "pg_has_role": (ArgGuard(0, "role", EXACT), ArgGuard(1, "role", EXACT, (3,))),
    "has_table_privilege": _privilege("class", PARSE, -2, 3),
    "has_sequence_privilege": _privilege("class", PARSE, -2, 3),
    "has_any_column_privilege": _privilege("class", PARSE, -2, 3),
    "has_column_privilege": _privilege("class", PARSE, -3, 4),
    "has_function_privilege": _privilege("proc", PARSE, -2, 3),
    "has_type_privilege": _privilege("type", PARSE, -2, 3),
    "has_schema_privilege": _privilege("namespace", EXACT, -2, 3),
    "has_database_privilege": _privilege("database", EXACT, -2, 3),
    "has_foreign_data_wrapper_privilege": _privilege(None, OID, 0, 3),
    "has_language_privilege": _privilege(None, OID, 0, 3),
    "has_server_privilege": _privilege(None, OID, 0, 3),
    "has_tablespace_privilege": _privilege(None, OID, 0, 3),
    "has_parameter_privilege": _privilege(None, OID, 0, 3),
}
# The type an argument guard gives its value: the function's parameter type (oid unless listed).
CALL_OUT: dict[str, str] = {
    **dict.fromkeys(("pg_get_serial_sequence", "pg_input_is_valid", "pg_input_error_info"), "text"),
    **dict.fromkeys((*_TS_CONFIG, "ts_headline"), "regconfig"),
    "ts_lexize": "regdictionary",
}
# Functions that return an object looked up by name: the whole call becomes the guard of its first argument
# (to_regclass(x) and regclass(x) alike: NULL when the object is missing or hidden), with this result type.
RESULT_CALLS: dict[str, tuple[str, str]] = {
    "to_regclass": ("class", "regclass"), "to_regtype": ("type", "regtype"), "to_regproc": ("proc", "regproc"),
    "to_regprocedure": ("proc", "regprocedure"), "to_regoper": ("oper", "regoper"),
    "to_regoperator": ("oper", "regoperator"), "to_regnamespace": ("namespace", "regnamespace"),
    "to_regcollation": ("collation", "regcollation"), "to_regrole": ("role", "regrole"),
    "regclass": ("class", "regclass"),
}
# Functions whose whole result is an object OID from a lookup the proxy cannot see (by file node).
RESULT_WRAPPED: dict[str, tuple[str, str]] = {"pg_filenode_relation": ("class", "regclass")}
# Template families with their own SQL (see the builders below).
SPECIAL_CALLS = frozenset({"pg_get_userbyid", "oidvectortypes", "current_setting", "to_regtypemod"})
# Advisory lock calls (database strategy): their key goes through `advisory_key` (policy/advisory.py).
ADVISORY_LOCKS = frozenset(
    {
        "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
        "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared", "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
    }
)
# pg_notify() (database strategy): a channel that is not a literal goes through `notify_channel` (policy/notify.py).
NOTIFY = "pg_notify"
GUARDED_NAMES = (frozenset(CALL_ARGS) | frozenset(RESULT_CALLS) | frozenset(RESULT_WRAPPED) | SPECIAL_CALLS
                 | ADVISORY_LOCKS | {NOTIFY})

# Aggregates, window-only functions and set-returning functions of pg_catalog (PostgreSQL 18): an expression
# holding one of them (outside a nested query) cannot move into the carrier's subquery.
AGGREGATES: frozenset[str] = frozenset(
    [
        "any_value", "array_agg", "avg", "bit_and", "bit_or", "bit_xor", "bool_and", "bool_or", "corr", "count",
        "covar_pop", "covar_samp", "cume_dist", "dense_rank", "every", "first_value", "json_agg", "json_agg_strict",
        "json_object_agg", "json_object_agg_strict", "json_object_agg_unique", "json_object_agg_unique_strict",
        "jsonb_agg", "jsonb_agg_strict", "jsonb_object_agg", "jsonb_object_agg_strict", "jsonb_object_agg_unique",
        "jsonb_object_agg_unique_strict", "lag", "last_value", "lead", "max", "min", "mode", "nth_value", "ntile",
        "percent_rank", "percentile_cont", "percentile_disc", "range_agg", "range_intersect_agg", "rank", "regr_avgx",
        "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy",
        "row_number", "stddev", "stddev_pop", "stddev_samp", "string_agg", "sum", "var_pop", "var_samp", "variance",
        "xmlagg",
    ]
)
SET_RETURNING: frozenset[str] = frozenset(
    [
        "_pg_expandarray", "aclexplode", "generate_series", "generate_subscripts", "json_array_elements",
        "json_array_elements_text", "json_each", "json_each_text", "json_object_keys", "json_populate_recordset",
        "json_to_recordset", "jsonb_array_elements", "jsonb_array_elements_text", "jsonb_each", "jsonb_each_text",
        "jsonb_object_keys", "jsonb_path_query", "jsonb_path_query_tz", "jsonb_populate_recordset",
        "jsonb_to_recordset", "pg_available_extension_versions", "pg_available_extensions", "pg_cursor",
        "pg_get_catalog_foreign_keys", "pg_get_keywords", "pg_get_publication_tables", "pg_listening_channels",
        "pg_options_to_table", "pg_partition_ancestors", "pg_partition_tree", "pg_prepared_statement",
        "pg_show_all_settings", "pg_snapshot_xip", "pg_timezone_abbrevs", "pg_timezone_names", "regexp_matches",
        "regexp_split_to_table", "string_to_table", "ts_debug", "ts_parse", "ts_stat", "ts_token_type",
        "txid_snapshot_xip", "unnest",
    ]
)


# Words of the texts that may need a guard or the EXPLAIN rewrite: an allowed statement holding one is checked
# by the verifier too (an identifier written with Unicode escapes is caught by catalog.may_name_filtered). Plain
# substrings first (cheap), then the reg* and pg_* families by a regular expression only when their prefix occurs.
GUARD_SUBSTRINGS = (
    "format_type", "_description", "has_", "current_setting", "oidvectortypes", "acldefault", "makeaclitem",
    "row_security_active", "explain", "advisory", "pg_notify",
)
REG_WORDS = re.compile(r"reg(?:class|type|procedure|proc|operator|oper|namespace|collation|config|dictionary|role)\b")
PG_WORDS = re.compile(
    r"pg_(?:get_|has_role|partition_|sequence_|index_|input_|basetype|filenode_relation|relation_|column_is_|"
    r"total_relation_size|table_size|indexes_size|database_size|[a-z_]*_is_visible|[a-z_]*_actual_version)"
)


def may_need_guard(low: str) -> bool:
    """False only when no word of the lower-cased text `low` can be a conversion, a naming function or EXPLAIN."""
    if any(w in low for w in GUARD_SUBSTRINGS):
        return True
    if "reg" in low and REG_WORDS.search(low):
        return True
    return "pg_" in low and PG_WORDS.search(low) is not None


def literal_checked(policy: TenantPolicy, kind: str, mode: str, text: str) -> bool:
    """Whether a name written in a string literal needs no guard: in the schema strategy every literal naming
    another schema is refused when the statement is decided (schema.check_schemas); in the others a literal that is
    unqualified (resolved on the tenant's search_path) or qualified with a system schema or one of the tenant's
    own cannot name another tenant's object, and any other is guarded (refusing only other tenants' schemas would
    tell them from schemas that do not exist)."""
    if mode == OID or kind in ALWAYS or text.strip().isdigit():
        return False  # an OID
    if text.lstrip().startswith("{"):  # an array literal: each name as in a literal of its own (none in the schema
        elements = array_elements(text)  # strategy is checked when the statement is decided), an OID never
        return elements is not None and all(
            e is None or (not e.strip().isdigit() and _name_checked(policy, kind, e, policy.strategy == "schema"))
            for e in elements)
    return policy.strategy == "schema" or _name_checked(policy, kind, text, False)


def _name_checked(policy: TenantPolicy, kind: str, text: str, allow_list: bool) -> bool:
    parts = object_name_parts(text)
    if not parts:
        return False
    schema = parts[0] if kind == "namespace" else (parts[-2] if len(parts) >= 2 else None)
    if allow_list:
        return schema is None or schema in policy.allowed_schemas
    return schema is None or schema in SYSTEM_SCHEMAS or schema in policy.search_path


def array_elements(text: str) -> list[str | None] | None:
    """The elements of a one-dimensional array literal (`'{a,"b c",NULL}'`, None for NULL) as array_in reads them,
    or None when the text is not such a literal (the guard then reads it at run time)."""
    body = text.strip()
    if len(body) < 2 or body[0] != "{" or body[-1] != "}":
        return None
    body = body[1:-1]
    if not body.strip():
        return []
    out: list[str | None] = []
    i, n = 0, len(body)
    while True:
        while i < n and body[i].isspace():
            i += 1
        chars: list[str] = []
        quoted = False
        if i < n and body[i] == '"':
            quoted, i = True, i + 1
            while i < n and body[i] != '"':
                if body[i] == "\\":
                    i += 1
                if i < n:
                    chars.append(body[i])
                i += 1
            if i >= n:
                return None
            i += 1
            while i < n and body[i].isspace():
                i += 1
        else:
            while i < n and body[i] != ",":
                if body[i] in '{}"\\':
                    return None
                chars.append(body[i])
                i += 1
        element = "".join(chars) if quoted else "".join(chars).strip()
        if not quoted and not element:
            return None
        out.append(None if not quoted and element.upper() == "NULL" else element)
        if i >= n:
            return out
        if body[i] != ",":
            return None
        i += 1


def required(policy: TenantPolicy, kind: str) -> bool:
    """Whether values of `kind` need a guard under this policy."""
    if kind in _NAMESPACED:
        return vis.hides_namespaces(policy)
    return True  # (sized: the database strategy's too, a shared catalog's size being the cluster's)


# -- visibility of one OID, by kind -----------------------------------------------------------------------------


def _in_catalog(policy: TenantPolicy, kind: Kind, o: str) -> str:
    if kind.catalog == "pg_class":  # a TOAST table (index) is seen with the relation it belongs to
        visible = vis.relation_visible(policy, "pgt_k.oid", "pgt_k.relnamespace")
    else:
        visible = vis.namespace_visible(policy, f"pgt_k.{kind.nspcol}")
    return f"EXISTS (SELECT FROM pg_catalog.{kind.catalog} pgt_k WHERE pgt_k.oid = {o} AND {visible})"


def _by_relation(policy: TenantPolicy, catalog: str, column: str, o: str) -> str:
    return (
        f"EXISTS (SELECT FROM pg_catalog.{catalog} pgt_k JOIN pg_catalog.pg_class pgt_c ON pgt_c.oid = "
        f"pgt_k.{column} WHERE pgt_k.oid = {o} AND " + vis.namespace_visible(policy, "pgt_c.relnamespace") + ")"
    )


def _hidden_in(policy: TenantPolicy, kind: Kind, o: str) -> str:
    return (
        f"EXISTS (SELECT FROM pg_catalog.{kind.catalog} pgt_k WHERE pgt_k.oid = {o} AND NOT "
        + vis.namespace_visible(policy, f"pgt_k.{kind.nspcol}") + ")"
    )


@lru_cache(maxsize=2048)
def visible(policy: TenantPolicy, kind_name: str, o: str) -> str:
    """Predicate: the OID `o` is an object of `kind` the tenant may see (an existing one, unless said)."""
    kind = KINDS[kind_name]
    if kind_name == "namespace":
        return vis.namespace_visible(policy, o)
    if kind_name == "role":
        return f"{o} = ANY ({vis.role_array(policy)})"
    if kind_name == "database":
        return f"{o} = {vis.current_database_oid()}"
    if kind_name == "dbsize":  # a shared database holds other tenants' rows: only a database tenant's own, and
        # only where it holds no schema hidden from it (its size counts theirs: red team 9a5 F13)
        return f"{o} = {vis.current_database_oid()}" if not vis.hides_namespaces(policy) else "false"
    if kind_name == "trigger":
        return _by_relation(policy, "pg_trigger", "tgrelid", o) if vis.hides_namespaces(policy) else "true"
    if kind_name == "rule":
        return _by_relation(policy, "pg_rewrite", "ev_class", o) if vis.hides_namespaces(policy) else "true"
    if kind_name == "object":  # any catalog: hidden when it is a hidden object of one (a missing one is not)
        hidden = [_hidden_in(policy, KINDS[k], o) for k in sorted(_NAMESPACED - {"namespace", "trigger", "rule",
                                                                                  "object"})]
        hidden.append(f"EXISTS (SELECT FROM pg_catalog.pg_namespace pgt_k WHERE pgt_k.oid = {o} AND NOT "
                      + vis.namespace_visible(policy, "pgt_k.oid") + ")")
        return "NOT (" + " OR ".join(hidden) + ")"
    if kind_name == "shared":
        return (
            f"({o} = {vis.current_database_oid()} OR {o} = ANY ({vis.role_array(policy)}) OR "
            f"EXISTS (SELECT FROM pg_catalog.pg_tablespace pgt_k WHERE pgt_k.oid = {o}))"
        )
    if not vis.hides_namespaces(policy):
        exists = f"EXISTS (SELECT FROM pg_catalog.{kind.catalog} pgt_k WHERE pgt_k.oid = {o})"
    else:
        exists = _in_catalog(policy, kind, o)
    others = vis.others_rows_relations(policy) if kind_name == "sized" else None
    if others is not None:  # their size counts other tenants' rows
        exists = f"({exists} AND NOT {o} IN {others})"
    if kind_name == "sized" and vis.hides_namespaces(policy):
        # a system catalog's size grows with every tenant's DDL (red team round 4 F2), as its counters would; so
        # in the database strategy where the database holds hidden schemas (red team 9a5 F13b)
        exists = f"({exists} AND NOT {_system_relation(o)})"
    elif kind_name == "sized":  # a shared catalog's size grows with every database and role (red team 7 F3)
        exists = f"({exists} AND NOT {o} IN (SELECT pgt_y.oid FROM pg_catalog.pg_class pgt_y WHERE pgt_y.relisshared))"
    return exists


def _system_relation(o: str) -> str:
    """Predicate: the OID `o` is a relation of a system schema (a catalog, its index or TOAST table; any TOAST
    table)."""
    return (
        "EXISTS (SELECT FROM pg_catalog.pg_class pgt_y JOIN pg_catalog.pg_namespace pgt_z ON pgt_z.oid = "
        f"pgt_y.relnamespace WHERE pgt_y.oid = {o} AND pgt_z.nspname IN ('pg_catalog', 'information_schema', "
        "'pg_toast'))"
    )


# -- the conversion of the client's value to an OID ---------------------------------------------------------------


# Kinds whose names carry a schema: a name qualified with a schema the tenant may not see is not looked up.
_QUALIFIED = frozenset({"class", "type", "proc", "oper", "collation", "config", "dictionary", "sized", "ts_parser"})


def _by_name(policy: TenantPolicy, kind: Kind, mode: str, text: str) -> str:
    if mode == EXACT and kind.exact is not None:
        catalog, column = kind.exact
        return f"(SELECT pgt_x.oid FROM pg_catalog.{catalog} pgt_x WHERE pgt_x.{column} = {text})"
    if kind.to_reg is not None:
        lookup = f"pg_catalog.{kind.to_reg}({text})::pg_catalog.oid"
    elif kind.regtype is not None:
        lookup = f"{text}::pg_catalog.{kind.regtype}::pg_catalog.oid"
    elif kind.name == "ts_parser":  # no reg* type: looked up as get_ts_parser_oid does (qualified, else visible)
        parts = f"pg_catalog.parse_ident({text})"
        lookup = (
            f"(SELECT pgt_x.oid FROM pg_catalog.pg_ts_parser pgt_x WHERE pgt_x.prsname = ({parts})"
            f"[pg_catalog.cardinality({parts})] AND CASE WHEN pg_catalog.cardinality({parts}) = 1 THEN "
            f"pg_catalog.pg_ts_parser_is_visible(pgt_x.oid) ELSE pgt_x.prsnamespace = (SELECT pgt_n.oid FROM "
            f"pg_catalog.pg_namespace pgt_n WHERE pgt_n.nspname = ({parts})[pg_catalog.cardinality({parts}) - 1]) "
            "END)"
        )
    else:
        return f"{text}::pg_catalog.oid"
    if kind.name in _QUALIFIED and vis.hides_namespaces(policy):
        return f"CASE WHEN {vis.name_in_hidden_schema(policy, text)} THEN NULL ELSE {lookup} END"
    return lookup


def conversion(policy: TenantPolicy, kind: Kind, mode: str, value: str) -> str:
    """SQL of the OID the value column `value` stands for: itself when it is an OID (numeric or reg* typed), an
    all-digit text as an OID, any other text as a name (missing, or in a schema the tenant may not see: NULL)."""
    if mode == OID:
        return value
    text = f"{value}::pg_catalog.text"
    return (
        f"CASE WHEN (SELECT pgt_y.typcategory FROM pg_catalog.pg_type pgt_y WHERE pgt_y.oid = "
        f"pg_catalog.pg_typeof({value})) <> 'S' THEN {value}::pg_catalog.oid WHEN {text} ~ {vis.DIGITS} THEN "
        f"{text}::pg_catalog.oid ELSE {_by_name(policy, kind, mode, text)} END"
    )


# -- templates ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A guard's text around the client's expression, and its tree with a placeholder where the expression goes."""

    ident: str
    prefix: str
    suffix: str
    tree: Node  # position-free; the placeholder ColumnRef marks the hole
    path: tuple[Any, ...]  # keys from the root to the hole

    def instantiate(self, operand: Node) -> Node:
        """The guard's tree with `operand` (the client's node object, not a copy) in the hole."""
        node = copy.deepcopy(self.tree)
        holder: Any = node
        for key in self.path[:-1]:
            holder = holder[key]
        holder[self.path[-1]] = operand
        return node


def _ident(family: str, *parts: str) -> str:
    """A template's self-naming alias: `pgt_g_<family>[__<part>...]` (kinds and types hold single underscores)."""
    return "pgt_g_" + "__".join((family, *parts))


def _make(ident: str, sql: str) -> Template:
    prefix, _, suffix = sql.partition(_PLACEHOLDER_SQL)
    if not _ or _PLACEHOLDER_SQL in suffix:
        raise ValueError("a template has exactly one placeholder")
    doc = json.loads(strip_positions(parse_sql_json("SELECT " + sql)))
    tree = doc["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
    path = _find(tree, ())
    if path is None:
        raise ValueError("placeholder not found in the template tree")
    return Template(ident, prefix, suffix, tree, path)


def _find(node: Any, path: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if isinstance(node, dict):
        col = node.get("ColumnRef")
        if col is not None and col.get("fields") == [{"String": {"sval": PLACEHOLDER}}]:
            return path
        for k, v in node.items():
            found = _find(v, (*path, k))
            if found is not None:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _find(v, (*path, i))
            if found is not None:
                return found
    return None


OUTS = frozenset({*CAST_KINDS, "oid", "text"})


def _out_sql(kind: Kind, out: str) -> str:
    """The SQL type a guard's result is cast to: a reg* type, oid, or the reg* type's text (a name)."""
    if out not in OUTS:
        raise ValueError(f"unknown guard result type {out!r}")
    if out == "text":
        return f"pg_catalog.{kind.regtype or 'oid'}::pg_catalog.text"
    return f"pg_catalog.{out}"


@lru_cache(maxsize=4096)
def carrier(policy: TenantPolicy, kind_name: str, mode: str, out: str, param: bool = False) -> Template:
    """T1: the value through a one-row subquery, converted to an OID, checked, and cast to `out`. For a bare
    parameter or constant (`param`: `$1::regclass`, `f(16385)`) the value is typed as text, so PostgreSQL can infer
    a parameter's type (and a constant and a parameter in its place give the same text: the shape cache)."""
    kind = KINDS[kind_name]
    param = param and mode != OID  # an OID is typed either way
    ident = _ident("p" if param else "c", kind_name, mode, out)
    if mode == OID:
        value = f"({_PLACEHOLDER_SQL})::pg_catalog.oid"
    else:
        value = f"({_PLACEHOLDER_SQL})::pg_catalog.text" if param else f"({_PLACEHOLDER_SQL})"
    o = f"{ident}.o"
    oid = conversion(policy, kind, mode, "pgt_v.t")
    sql = (
        f"(SELECT {o}::{_out_sql(kind, out)} FROM (SELECT {oid} AS o FROM (SELECT {value} AS t OFFSET 0) pgt_v) "
        f"{ident} WHERE {o} = '0'::pg_catalog.oid OR {visible(policy, kind_name, o)})"
    )
    return _make(ident, sql)


@lru_cache(maxsize=1024)
def array_form(policy: TenantPolicy, kind_name: str, out: str) -> Template:
    """T2: the client's value, converted where it stands, looked up in the array of visible OIDs."""
    kind = KINDS[kind_name]
    ident = _ident("a", kind_name, out)
    out_sql = _out_sql(kind, out)
    candidates = (
        f"ARRAY(SELECT {ident}.o::{out_sql} FROM (SELECT '0'::pg_catalog.oid AS o UNION ALL SELECT pgt_k.oid FROM "
        f"pg_catalog.{kind.catalog} pgt_k) {ident} WHERE {ident}.o = '0'::pg_catalog.oid OR "
        f"{visible(policy, kind_name, f'{ident}.o')})"
    )
    sql = f"({candidates})[pg_catalog.array_position({candidates}, ({_PLACEHOLDER_SQL})::{out_sql})]"
    return _make(ident, sql)


# Whether the value column `pgt_v.t` is a string or an array of strings (read by the reg* input functions).
_STRINGS = (
    "(SELECT CASE WHEN pgt_y.typcategory = 'A' THEN (SELECT pgt_z.typcategory FROM pg_catalog.pg_type pgt_z WHERE "
    "pgt_z.oid = pgt_y.typelem) ELSE pgt_y.typcategory END FROM pg_catalog.pg_type pgt_y WHERE pgt_y.oid = "
    "pg_catalog.pg_typeof(pgt_v.t)) = 'S'"
)


@lru_cache(maxsize=256)
def array_cast(policy: TenantPolicy, kind_name: str, out: str, param: bool = False) -> Template:
    """`x::regclass[]` & co.: the array as cast when every element is visible, else each hidden one NULL. A string
    (an array literal, a parameter, a text[] value) never reaches the reg* input function: it is read as text[]
    and each element converted as the carrier converts a name or an all-digit OID (a name in a hidden or missing
    schema gives NULL, where the input function would tell "permission denied" from "does not exist"). A bare
    parameter (`param`) is typed as text, so PostgreSQL can infer its type."""
    kind = KINDS[kind_name]
    ident = _ident("q" if param else "r", kind_name, out)
    seen = f"(pgt_e.e = '0'::pg_catalog.oid OR {visible(policy, kind_name, 'pgt_e.e::pg_catalog.oid')})"
    array = f"{ident}.a"
    regarray = f"{_out_sql(kind, out)}[]"
    element = (
        f"CASE WHEN pgt_f.f ~ {vis.DIGITS} THEN pgt_f.f::pg_catalog.oid ELSE "
        f"{_by_name(policy, kind, PARSE, 'pgt_f.f')} END"
    )
    value = (
        f"CASE WHEN {_STRINGS} THEN ARRAY(SELECT {element} FROM pg_catalog.unnest(pgt_v.t::pg_catalog.text[]) WITH "
        f"ORDINALITY pgt_f(f, n) ORDER BY pgt_f.n)::{regarray} ELSE pgt_v.t::{regarray} END"
    )
    sql = (
        f"(SELECT CASE WHEN {array} IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.unnest({array}) pgt_e(e) WHERE "
        f"pgt_e.e IS NOT NULL AND NOT {seen}) THEN {array} ELSE ARRAY(SELECT CASE WHEN {seen} THEN pgt_e.e END "
        f"FROM pg_catalog.unnest({array}) WITH ORDINALITY pgt_e(e, n) ORDER BY pgt_e.n) END "
        f"FROM (SELECT {value} AS a FROM (SELECT ({_PLACEHOLDER_SQL}){'::pg_catalog.text' if param else ''} AS t "
        f"OFFSET 0) pgt_v OFFSET 0) {ident})"
    )
    return _make(ident, sql)


@lru_cache(maxsize=256)
def userbyid(policy: TenantPolicy) -> Template:
    """pg_get_userbyid(x): a role the tenant may not see is named as PostgreSQL names a missing one."""
    ident = _ident("u", "role")
    o = f"{ident}.o"
    sql = (
        f"(SELECT CASE WHEN {visible(policy, 'role', o)} THEN pg_catalog.pg_get_userbyid({o}) ELSE "
        f"('unknown (OID=' || {o}::pg_catalog.text || ')')::pg_catalog.name END FROM (SELECT "
        f"({_PLACEHOLDER_SQL})::pg_catalog.oid AS o OFFSET 0) {ident})"
    )
    return _make(ident, sql)


@lru_cache(maxsize=256)
def vectortypes(policy: TenantPolicy) -> Template:
    """oidvectortypes(x): each type the tenant may not see is rendered as PostgreSQL renders a missing one."""
    ident = _ident("t", "type")
    vector = f"{ident}.a"
    sql = (
        f"(SELECT CASE WHEN {vector} IS NULL THEN NULL ELSE pg_catalog.array_to_string(ARRAY(SELECT CASE WHEN "
        f"pgt_e.e = '0'::pg_catalog.oid OR {visible(policy, 'type', 'pgt_e.e')} THEN "
        f"pg_catalog.format_type(pgt_e.e, NULL) ELSE '???' END FROM pg_catalog.unnest({vector}::pg_catalog.oid[]) "
        f"WITH ORDINALITY pgt_e(e, n) ORDER BY pgt_e.n), ', ') END FROM (SELECT "
        f"({_PLACEHOLDER_SQL})::pg_catalog.oidvector AS a OFFSET 0) {ident})"
    )
    return _make(ident, sql)


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if not (c.isalnum() or c == "_") else c for c in text)


@lru_cache(maxsize=256)
def setting_name(policy: TenantPolicy) -> Template:
    """current_setting(x): a reserved setting name other than the tenant's own becomes a name no setting can have
    (PostgreSQL then answers `unrecognized configuration parameter`, or NULL with missing_ok)."""
    own = policy.tenant_setting.lower()
    rest = own.removeprefix("pgtenant.")
    exception = f"(?!{_regex_escape(rest)}$)" if rest != own else ""
    sql = (
        f"pg_catalog.regexp_replace({_PLACEHOLDER_SQL}, '^pgtenant\\.{exception}.*$', "
        "'pgtenant: reserved setting', 'i')"
    )
    return _make(_ident("s"), sql)


@lru_cache(maxsize=256)
def advisory_key(policy: TenantPolicy, nargs: int, calls: int) -> Template:
    """The first key argument of an advisory lock call (`nargs` arguments) in a statement with `calls` of them: the
    value itself while the backend holds few enough advisory locks that the statement's own keep it within
    `policy.max_advisory_locks` (counted in `pg_lock_status()` once per run, before the statement's first lock), else
    a text no integer input reads, which fails the statement (22P02, the message naming the limit). A two-key call's
    first key may not be the class of the registry's instance slots (INSTANCE_LOCK, red team 8b F2): it fails alike."""
    ident = _ident("k", str(nargs), str(calls))
    out = "int8" if nargs == 1 else "int4"
    limit = policy.max_advisory_locks
    count = ("SELECT pg_catalog.count(*) AS n{v} FROM pg_catalog.pg_lock_status() pgt_l WHERE pgt_l.locktype = "
             "'advisory' AND pgt_l.pid = pg_catalog.pg_backend_pid()")
    over = (f"('pgtenant: the session holds ' || {ident}.n::pg_catalog.text || ' advisory locks, the limit is "
            f"limits.max_advisory_locks = {limit}')::pg_catalog.{out}")
    if nargs == 1:
        sql = (f"(SELECT CASE WHEN {ident}.n + {calls} <= {limit} THEN {_PLACEHOLDER_SQL} ELSE {over} END FROM "
               f"({count.format(v='')}) {ident})")
    else:
        v = f"{ident}.v"
        sql = (
            f"(SELECT CASE WHEN {v} = {INSTANCE_LOCK} THEN ('pgtenant: advisory lock class ' || {v}::pg_catalog.text "
            f"|| ' is reserved for the proxy')::pg_catalog.int4 WHEN {ident}.n + {calls} <= {limit} THEN {v} ELSE "
            f"{over} END FROM ({count.format(v=f', ({_PLACEHOLDER_SQL})::pg_catalog.int4 AS v')}) {ident})"
        )
    return _make(ident, sql)


@lru_cache(maxsize=64)
def notify_channel(policy: TenantPolicy) -> Template:
    """pg_notify()'s channel when it is not a literal: the value itself, unless it is the registry's channel (red team
    8b F3), which fails the statement (22P02, the message naming the channel)."""
    ident = _ident("n")
    c = f"{ident}.c"
    sql = (
        f"(SELECT CASE WHEN {c} = '{REGISTRY_CHANNEL}' THEN ('pgtenant: the channel ' || {c} || ' is reserved for "
        f"the proxy')::pg_catalog.int4::pg_catalog.text ELSE {c} END FROM (SELECT ({_PLACEHOLDER_SQL})::"
        f"pg_catalog.text AS c OFFSET 0) {ident})"
    )
    return _make(ident, sql)


# -- recognising a guard (the verifier) ---------------------------------------------------------------------------

_POSITION_KEYS = frozenset({"location"})


def _same_except_hole(template: Any, node: Any, path: tuple[Any, ...], depth: int) -> bool:
    """`node` equals `template` (positions ignored) everywhere except at `path` (from `depth` on)."""
    if depth < len(path):
        key = path[depth]
        if type(template) is dict:
            if type(node) is not dict:
                return False
            tkeys = {k for k in template if k not in _POSITION_KEYS}
            nkeys = {k for k in node if k not in _POSITION_KEYS}
            if tkeys != nkeys:
                return False
            return all(
                _same_except_hole(template[k], node[k], path, depth + 1) if k == key
                else _equal(template[k], node[k])
                for k in tkeys
            )
        if type(template) is list:
            if type(node) is not list or len(node) != len(template):
                return False
            return all(
                _same_except_hole(t, n, path, depth + 1) if i == key else _equal(t, n)
                for i, (t, n) in enumerate(zip(template, node, strict=True))
            )
        return False
    return True  # the hole: anything


def _equal(a: Any, b: Any) -> bool:
    if type(a) is dict:
        if type(b) is not dict:
            return False
        ka = {k for k in a if k not in _POSITION_KEYS}
        if ka != {k for k in b if k not in _POSITION_KEYS}:
            return False
        return all(_equal(a[k], b[k]) for k in ka)
    if type(a) is list:
        return type(b) is list and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def operand(template: Template, node: Node) -> Node | None:
    """The client's expression in `node` when `node` is exactly `template` around it, else None."""
    if not _same_except_hole(template.tree, node, template.path, 0):
        return None
    value: Any = node
    for key in template.path:
        value = value[key]
    return value  # type: ignore[no-any-return]


def ident_of(node: Node) -> str | None:
    """The self-naming alias of a guard-shaped node (a scalar subquery or an array subscript), else None."""
    if "A_Indirection" in node:
        node = node["A_Indirection"].get("arg") or {}
    sub = node.get("SubLink")
    if sub is None:
        return None
    select = (sub.get("subselect") or {}).get("SelectStmt") or {}
    items = select.get("fromClause") or ()
    if not items:
        return None
    first = items[0].get("RangeSubselect")
    if first is None:
        return None
    name = (first.get("alias") or {}).get("aliasname")
    return name if isinstance(name, str) and name.startswith("pgt_g_") else None


def template_named(policy: TenantPolicy, ident: str) -> Template | None:
    """The template a guard's self-naming alias stands for, or None when it names none this policy makes."""
    if not ident.startswith("pgt_g_"):
        return None
    family, *parts = ident.removeprefix("pgt_g_").split("__")
    try:
        if family == "s" and not parts:
            template = setting_name(policy)
        elif family == "n" and not parts:
            template = notify_channel(policy)
        elif family == "k" and len(parts) == 2:
            template = advisory_key(policy, int(parts[0]), int(parts[1]))
        elif family == "u" and parts == ["role"]:
            template = userbyid(policy)
        elif family == "t" and parts == ["type"]:
            template = vectortypes(policy)
        elif family in ("c", "p") and len(parts) == 3:
            template = carrier(policy, parts[0], parts[1], parts[2], family == "p")
        elif family == "a" and len(parts) == 2:
            template = array_form(policy, parts[0], parts[1])
        elif family in ("r", "q") and len(parts) == 2:
            template = array_cast(policy, parts[0], parts[1], family == "q")
        else:
            return None
    except (KeyError, ValueError):
        return None
    return template if template.ident == ident else None
