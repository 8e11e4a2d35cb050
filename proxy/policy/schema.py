"""Name checks: cross-database names (every strategy) and foreign schemas (schema-per-tenant strategy)."""

from __future__ import annotations

import re

from proxy.errors import INVALID_PARAMETER_VALUE, INVALID_SCHEMA_NAME, UNDEFINED_OBJECT, UNDEFINED_TABLE
from proxy.policy.guards import ALWAYS, CALL_ARGS, OID
from proxy.policy.model import Deny, TenantPolicy
from proxy.policy.rules import Denied, fail
from proxy.policy.sqltext import object_name_parts
from proxy.policy.tree import names_of, string_const
from proxy.policy.walk import COPY_FROM, COPY_TO, LIKE, TRUNCATE, Analysis, Call

# Functions whose argument at the given position is an object name given as text (implicitly cast to a reg*
# type); kind "schema" means the whole literal is a schema name. Negative positions count from the end
# (has_*_privilege take an optional leading role argument).
NAME_ARGUMENTS: dict[str, tuple[int, str]] = {
    "to_regclass": (0, "object"),
    "regclass": (0, "object"),
    "to_regtype": (0, "object"),
    "to_regtypemod": (0, "object"),
    "to_regproc": (0, "routine"),
    "to_regprocedure": (0, "routine"),
    "to_regoper": (0, "routine"),
    "to_regoperator": (0, "routine"),
    "to_regcollation": (0, "object"),
    "to_regnamespace": (0, "schema"),
    "pg_relation_size": (0, "object"),
    "pg_total_relation_size": (0, "object"),
    "pg_table_size": (0, "object"),
    "pg_indexes_size": (0, "object"),
    "pg_get_serial_sequence": (0, "object"),
    "pg_get_viewdef": (0, "object"),
    "pg_partition_tree": (0, "object"),
    "pg_partition_root": (0, "object"),
    "pg_partition_ancestors": (0, "object"),
    "nextval": (0, "object"),
    "currval": (0, "object"),
    "has_table_privilege": (-2, "object"),
    "has_sequence_privilege": (-2, "object"),
    "has_any_column_privilege": (-2, "object"),
    "has_column_privilege": (-3, "object"),
    "has_function_privilege": (-2, "routine"),
    "has_type_privilege": (-2, "object"),
    "has_schema_privilege": (-2, "schema"),
}
_REG_KIND: dict[str, str] = {
    "regnamespace": "schema",
    "regproc": "routine",
    "regprocedure": "routine",
    "regoper": "routine",
    "regoperator": "routine",
}


def _literal_schema(text: str, kind: str) -> str | None:
    """The schema a reg*-style literal names explicitly (None when unqualified)."""
    parts = object_name_parts(text)
    if not parts:
        return None
    if kind == "schema":
        return parts[0]
    return parts[-2] if len(parts) >= 2 else None


# A session's temporary schemas by their own names: another session's answers `permission denied`, a missing one
# `does not exist`; the session's own is `pg_temp` (the proxy cannot tell which pg_temp_N it is).
_OTHER_TEMP = re.compile(r"pg_(?:toast_)?temp_[0-9]+")
FOREIGN_SCHEMA = "foreign_schema"  # the rule of every answer as a missing schema (engine: answered in its phase)
# (22023: a named setting's value in a missing schema, settings.value_as_missing)
_MISSING_STATES = frozenset({INVALID_PARAMETER_VALUE, INVALID_SCHEMA_NAME, UNDEFINED_OBJECT, UNDEFINED_TABLE})


def as_missing(denial: Deny) -> bool:
    """Whether `denial` is PostgreSQL's own answer for a missing schema given for a hidden one (`missing`)."""
    return denial.rule == FOREIGN_SCHEMA and denial.sqlstate in _MISSING_STATES


def missing(schema: str, relation: str | None = None, location: int = -1) -> Denied:
    """PostgreSQL's own answer for a schema that does not exist, for a schema the tenant may not see: the same
    SQLSTATE, message and position, so a hidden schema cannot be told from a missing one (the statement is still
    sent to the server as a failing marker: the same round trip). A relation reference gets `relation "s.t" does
    not exist` (42P01, parserOpenTable), every other name `schema "s" does not exist` (3F000)."""
    position = location + 1 if location >= 0 else 0  # a byte offset here; engine.decide makes it a character one
    if relation is not None:
        missing = f'relation "{schema}.{relation}" does not exist'
        return Denied(Deny(UNDEFINED_TABLE, missing, "", FOREIGN_SCHEMA, position))
    return Denied(Deny(INVALID_SCHEMA_NAME, f'schema "{schema}" does not exist', "", FOREIGN_SCHEMA, position))


def missing_name(policy: TenantPolicy, kind: str, text: str, schema: str, location: int = -1) -> Denied:
    """PostgreSQL's answer for a name in a missing schema read by a reg* input function: since PostgreSQL 16
    regclassin looks a relation up with missing_ok and answers `relation "s.t" does not exist` (42P01); the others,
    and every input function before 16, `schema "s" does not exist` (3F000)."""
    if kind in ("class", "object") and reads_names_softly(policy):
        position = location + 1 if location >= 0 else 0
        name = ".".join(object_name_parts(text) or [text])
        return Denied(Deny(UNDEFINED_TABLE, f'relation "{name}" does not exist', "", FOREIGN_SCHEMA, position))
    return missing(schema, location=location)


def reads_names_softly(policy: TenantPolicy) -> bool:
    """Whether the server is PostgreSQL 16 or later (the reg* input functions report soft errors): told by a column
    16 added to the statistics views whose column lists are read when the tenant is prepared."""
    return "last_seq_scan" in policy.catalog_columns.get("pg_stat_all_tables", ())


def check_qualified_column(analysis: Analysis, names: tuple[str, ...], location: int, hidden: bool) -> None:
    """`s.t.c` names the column of a FROM item `s.t`. Without an item of that name, PostgreSQL answers `missing
    FROM-clause entry for table "t"` when schema s does not exist (errorMissingRTE), so a hidden schema gets that
    answer. With an item named t that is not written `s.t`, its answer for a missing schema differs between majors
    (an invalid reference with a HINT or a DETAIL) and for a hidden one is `permission denied`: refused alike for
    every schema (`qualified_column`)."""
    schema, table = names[0], names[1]
    if any(r.rv.get("schemaname") == schema and r.rv.get("relname") == table and not r.rv.get("alias")
           for r in analysis.refs):
        return
    if table in analysis.refnames:
        raise fail("qualified_column", f'column reference "{".".join(names)}" names table "{table}" with a schema '
                   "its FROM item is not written with")
    if hidden:
        position = location + 1 if location >= 0 else 0
        text = f'missing FROM-clause entry for table "{table}"'
        raise Denied(Deny(UNDEFINED_TABLE, text, "", FOREIGN_SCHEMA, position))


def check_cross_database(analysis: Analysis) -> None:
    """Deny three-part relation names and over-qualified type names (another database)."""
    for ref in analysis.refs:
        if "catalogname" in ref.rv:
            raise fail("cross_database", f'relation "{ref.rv["catalogname"]}.…" names another database')
    for names in analysis.type_names:
        if len(names) > 2:
            raise fail("cross_database", "type name " + ".".join(names) + " names another database")
    # operators, collations, an index element's names, TABLESAMPLE methods: PostgreSQL accepts the current database
    # as a first part there, but a hidden schema after it is not renamed (hiding.py renames qualifiers only)
    methods = (n for n, _ in analysis.sample_methods)
    for kind, all_names in (("operator", analysis.operators), ("collation", analysis.collations),
                            ("name", analysis.index_names), ("tablesample method", methods)):
        for names in all_names:
            if len(names) > 2:
                raise fail("cross_database", f"{kind} name " + ".".join(names) + " names another database")
    for names in analysis.column_refs:
        if len(names) > 3:
            raise fail("cross_database", "column reference " + ".".join(names) + " names another database")


def check_constraint_names(policy: TenantPolicy, body: dict) -> None:
    """`SET CONSTRAINTS [db.]s.c`: a three-part name is refused as another database's whatever its parts (a hidden
    schema there is not renamed: hiding.py renames a qualifier only); in the schema strategy a schema not the
    tenant's is answered as a missing one, as everywhere else there (the other strategies send a hidden one
    renamed)."""
    for item in body.get("constraints") or ():
        rv = item.get("RangeVar") or {}
        if "catalogname" in rv:
            raise fail("cross_database", f'constraint "{rv["catalogname"]}.…" names another database')
        name = rv.get("schemaname")
        if policy.strategy == "schema" and name is not None and name not in policy.allowed_schemas:
            raise missing(name, location=rv.get("location", -1))


def check_schemas(policy: TenantPolicy, analysis: Analysis) -> None:
    """Every explicitly named schema must be one the tenant may name: in the schema strategy its own, a shared one
    or a system one; in the others any schema but another tenant's (`policy.hidden_schemas`). A name given as a
    value (a `reg*` cast, `to_regclass(…)`, `has_table_privilege(…)`) is checked here when it is a string literal
    in the schema strategy; any other value (an OID, a parameter, a column, an expression), and every such value in
    the other strategies, gets a run-time guard (guards.py)."""
    if policy.strategy == "schema":
        allowed = policy.allowed_schemas

        def refused(schema: str) -> bool:
            return schema not in allowed
    else:
        hidden = policy.hidden_schemas

        def refused(schema: str) -> bool:
            return schema in hidden or _OTHER_TEMP.fullmatch(schema) is not None

    def check(schema: str | None, relation: str | None = None, location: int = -1) -> None:
        if schema is not None and refused(schema):
            raise missing(schema, relation, location)

    for ref in analysis.refs:  # COPY and TRUNCATE look the schema up first, outside the parser (no position)
        if ref.role in (COPY_TO, COPY_FROM, TRUNCATE):
            check(ref.rv.get("schemaname"))
        elif ref.role == LIKE:  # LIKE looks the schema up before the relation (transformTableLikeClause)
            check(ref.rv.get("schemaname"), location=ref.rv.get("location", -1))
        else:
            check(ref.rv.get("schemaname"), ref.rv.get("relname", ""), ref.rv.get("location", -1))
    for call in analysis.calls:
        if len(call.names) > 1:
            node = call.holder[call.key] if call.holder is not None else {}
            check(call.names[-2], location=node.get("FuncCall", {}).get("location", -1))
    for names, location in zip(analysis.type_names, analysis.type_locations, strict=True):
        if len(names) > 1:
            check(names[-2], location=location)
    for names, location in zip(analysis.operators, analysis.operator_locations, strict=True):
        check(names[-2], location=location)
    for names, location in zip(analysis.collations, analysis.collation_locations, strict=True):
        check(names[-2], location=location)
    for names in analysis.index_names:  # an index element's collation, operator class, exclusion operator
        check(names[-2])
    for names, location in analysis.sample_methods:  # looked up with missing_ok: `tablesample method … does not exist`
        if len(names) > 1 and refused(names[-2]):
            position = location + 1 if location >= 0 else 0
            text = f"tablesample method {'.'.join(names)} does not exist"
            raise Denied(Deny(UNDEFINED_OBJECT, text, "", FOREIGN_SCHEMA, position))
    for column in analysis.qualified_columns:  # schema.table.column
        names = names_of(column.get("fields"))
        if len(names) == 3:
            check_qualified_column(analysis, names, column.get("location", -1), refused(names[0]))
    if policy.strategy != "schema":
        return  # names given as values: guarded at run time (refusing only other tenants' would single them out)
    for regtype, literal, location in analysis.reg_literals:
        if not literal.strip().isdigit():  # an OID in a string: guarded at run time
            schema = _literal_schema(literal, _REG_KIND.get(regtype, "object"))
            if schema is not None and refused(schema):
                raise missing_name(policy, "class" if regtype == "regclass" else regtype, literal, schema, location)

    def check_argument(call: Call, index: int, kind: str) -> None:
        node = call.args[index]
        while node and "TypeCast" in node:
            node = node["TypeCast"].get("arg")
        literal = string_const(node)
        if literal is not None and not literal.strip().isdigit():
            check(_literal_schema(literal, kind))

    for call in analysis.calls:
        spec = NAME_ARGUMENTS.get(call.names[-1])
        if spec is not None and not call.named and -len(call.args) <= spec[0] < len(call.args):
            check_argument(call, spec[0], spec[1])
        if call.named or (len(call.names) > 1 and call.names[-2] != "pg_catalog"):
            continue
        for arg in CALL_ARGS.get(call.names[-1], ()):  # the naming functions' object arguments read as names
            index = arg.index if arg.index >= 0 else len(call.args) + arg.index
            if arg.mode == OID or arg.kind in ALWAYS or not 0 <= index < len(call.args):
                continue
            if arg.nargs is None or len(call.args) in arg.nargs:
                how = "schema" if arg.kind == "namespace" else "routine" if arg.kind == "proc" else "object"
                check_argument(call, index, how)


def check_writes_to_shared(policy: TenantPolicy, schema: str | None, relname: str) -> None:
    """Schema strategy: shared reference schemas are read-only."""
    if schema is not None and schema in policy.shared_schemas:
        raise fail("shared_schema_write", f'"{schema}.{relname}" is in a read-only shared schema')
