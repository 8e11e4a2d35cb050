"""The statement-kind gate and the per-reference rules: what each strategy and role may run at all."""

from __future__ import annotations

from proxy.policy import castsource, notify, othersseq, settings
from proxy.policy.catalog import CATALOG_SCHEMAS, is_denied_relation, is_filtered_name, relation_filter, rv_names
from proxy.policy.model import REAPPLY_CONTEXT, RESERVED_STATEMENT_PREFIX, TenantPolicy
from proxy.policy.nametypes import NAME_TYPES
from proxy.policy.rules import fail
from proxy.policy.schema import check_writes_to_shared
from proxy.policy.tree import Node, boolean_option, names_of, tag_of
from proxy.policy.walk import (
    COPY_FROM,
    COPY_TO,
    CREATE,
    INHERIT,
    INTO,
    LIKE,
    LOCK,
    READ,
    REG_TYPES,
    SAMPLE,
    TARGET,
    TRUNCATE,
    UNKNOWN,
    Analysis,
)

QUERY_KINDS: frozenset[str] = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
# Statements that carry no table references and no expressions worth walking.
PLAIN_ALLOWED: frozenset[str] = frozenset(
    {"DeallocateStmt", "FetchStmt", "ClosePortalStmt", "ConstraintsSetStmt", "UnlistenStmt"}
)
# Statements that need the tree walk (references, functions, names) after the gate.
WALKED: frozenset[str] = QUERY_KINDS | {
    "ExplainStmt",
    "DeclareCursorStmt",
    "PrepareStmt",
    "ExecuteStmt",
    "CopyStmt",
    "CreateStmt",
    "CreateTableAsStmt",
    "TruncateStmt",
    "ViewStmt",
    "LockStmt",
}
ACCESS_SHARE = 1  # LockStmt.mode of IN ACCESS SHARE MODE (PostgreSQL's AccessShareLock)
# What PostgreSQL analyzes at Parse (transformStmt); every other statement is analyzed when it runs, so a name it
# cannot find there is answered at Execute, after ParseComplete and BindComplete.
ANALYZED_AT_PARSE: frozenset[str] = QUERY_KINDS | {"DeclareCursorStmt", "ExplainStmt", "CreateTableAsStmt", "CallStmt"}
# Statements that create a relation (a temporary one: check_references, verified by verify.py).
CREATES: frozenset[str] = frozenset({"CreateStmt", "CreateTableAsStmt", "ViewStmt"})
_NOT_ALLOWED_DETAIL: dict[str, str] = {
    "DoStmt": "DO blocks are not allowed",
    "CreateFunctionStmt": "creating functions or procedures is not allowed",
    "CallStmt": "CALL is not allowed",
    "LoadStmt": "LOAD is not allowed",
    "CreateExtensionStmt": "CREATE EXTENSION is not allowed",
    "VacuumStmt": "VACUUM / ANALYZE are not allowed",
    "CheckPointStmt": "CHECKPOINT is not allowed",
    "AlterSystemStmt": "ALTER SYSTEM is not allowed",
    "ReindexStmt": "REINDEX is not allowed",
    "ClusterStmt": "CLUSTER is not allowed",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW is not allowed",
    "GrantStmt": "GRANT / REVOKE are not allowed",
    "GrantRoleStmt": "GRANT / REVOKE of roles is not allowed",
    "CreateRoleStmt": "role management is not allowed",
    "AlterRoleStmt": "role management is not allowed",
    "DropRoleStmt": "role management is not allowed",
}
_DDL_PREFIXES = ("Create", "Alter", "Drop", "Rename", "Comment", "Define", "Index", "View", "Rule", "Secl")


def option_value(options: list[Node] | None, name: str) -> bool | None:
    """A boolean option of a statement's option list (EXPLAIN's): True, False, or None when not given. A repeated
    option counts by its last occurrence, as PostgreSQL reads it (`EXPLAIN (ANALYZE off, ANALYZE on)` analyzes)."""
    value: bool | None = None
    for opt in options or ():
        d = opt.get("DefElem", {})
        if d.get("defname") == name:
            value = boolean_option(d.get("arg"))
    return value


def _option_on(options: list[Node] | None, name: str) -> bool:
    return option_value(options, name) is True


def _is_temp(rel: Node) -> bool:
    return rel.get("relpersistence") == "t" or rel.get("schemaname") == "pg_temp"


def _check_temp_name(kind: str, body: Node) -> None:
    """A temporary relation may not take the name of a built-in scalar type: PostgreSQL looks an unqualified type
    name up in pg_temp first, so its row type would stand for that type (red team 22x X1: `CREATE TEMP TABLE int4
    (t text); SELECT (ROW('a'::app_type)::int4).t` cast the row field by field, running the app's cast)."""
    if kind == "CreateStmt":
        rel = body.get("relation") or {}
    elif kind == "ViewStmt":
        rel = body.get("view") or {}
    elif kind == "CreateTableAsStmt":
        rel = (body.get("into") or {}).get("rel") or {}
    else:
        while body.get("larg") and "intoClause" not in body:
            body = body["larg"]
        rel = (body.get("intoClause") or {}).get("rel") or {}
    name = rel.get("relname") or ""
    if name in castsource.SCALARS:
        raise fail("ddl_not_allowed", f'a temporary relation may not be named "{name}": it would stand for the '
                   "built-in type of that name")


# Statements that name a SQL prepared statement (the proxy's own, RESERVED_STATEMENT_PREFIX, are on its servers).
_NAMES_STATEMENT = frozenset({"PrepareStmt", "ExecuteStmt", "DeallocateStmt"})


def gate(policy: TenantPolicy, kind: str, body: Node) -> frozenset[str]:
    """Allow or deny a statement by its kind (and its nested statement); returns driver effects."""
    if kind in CREATES or kind == "SelectStmt":
        _check_temp_name(kind, body)
    if kind in _NAMES_STATEMENT and (body.get("name") or "").startswith(RESERVED_STATEMENT_PREFIX):
        raise fail("reserved_statement_name", f'prepared statement name "{body["name"]}" is reserved for the proxy')
    if kind in QUERY_KINDS or kind in PLAIN_ALLOWED or kind == "ExecuteStmt":
        return frozenset()
    if kind == "ExplainStmt":
        if policy.estimates_shared and _option_on(body.get("options"), "analyze"):
            raise fail("explain_analyze", "EXPLAIN ANALYZE is not allowed for tenant-scoped data")
        if policy.estimates_shared and _option_on(body.get("options"), "costs"):
            raise fail("explain_costs", "EXPLAIN with COSTS would show estimates computed from every tenant's rows")
        if policy.strategy == "shared" and _option_on(body.get("options"), "settings"):
            raise fail("explain_settings", "EXPLAIN with SETTINGS would show the search_path PostgreSQL has, without "
                       "the schemas the proxy keeps from it")
        return _nested(policy, body.get("query", {}), QUERY_KINDS | {"ExecuteStmt", "CreateTableAsStmt"})
    if kind == "DeclareCursorStmt":
        return _nested(policy, body.get("query", {}), frozenset({"SelectStmt"}))
    if kind == "PrepareStmt":
        return _nested(policy, body.get("query", {}), QUERY_KINDS)
    if kind == "TransactionStmt":
        if body.get("kind") in ("TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"):
            raise fail("two_phase_commit", "two-phase commit statements are not allowed")
        return frozenset()
    if kind == "VariableSetStmt":
        return settings.check_set(policy, body)
    if kind == "VariableShowStmt":
        settings.check_show(policy, body)
        return frozenset()
    if kind == "DiscardStmt":
        return frozenset({REAPPLY_CONTEXT}) if body.get("target") == "DISCARD_ALL" else frozenset()
    if kind == "CopyStmt":
        if body.get("is_program"):
            raise fail("copy_program", "COPY ... PROGRAM is not allowed")
        if "filename" in body:
            raise fail("copy_server_file", "COPY to or from a server file is not allowed")
        return frozenset()
    if kind == "CreateStmt":
        rel = body.get("relation", {})
        if not _is_temp(rel) or not policy.allow_ddl_temp:
            raise fail("ddl_not_allowed", "only temporary tables may be created")
        if any(k in body for k in ("inhRelations", "partbound", "partspec", "ofTypename")):
            raise fail("ddl_not_allowed", "temporary tables may not use INHERITS, PARTITION or OF")
        _check_table_elements(policy, body.get("tableElts") or ())
        return frozenset()
    if kind == "ViewStmt":
        if not _is_temp(body.get("view", {})) or not policy.allow_ddl_temp:
            raise fail("ddl_not_allowed", "only temporary views may be created")
        if body.get("withCheckOption", "NO_CHECK_OPTION") != "NO_CHECK_OPTION":
            raise fail("ddl_not_allowed", "temporary views are read-only; WITH CHECK OPTION is not supported")
        return _nested(policy, body.get("query", {}), frozenset({"SelectStmt"}))
    if kind == "CreateTableAsStmt":
        rel = body.get("into", {}).get("rel", {})
        if body.get("objtype") != "OBJECT_TABLE" or not _is_temp(rel) or not policy.allow_ddl_temp:
            raise fail("ddl_not_allowed", "only temporary tables may be created")
        return _nested(policy, body.get("query", {}), frozenset({"SelectStmt", "ExecuteStmt"}))
    if kind == "DropStmt":
        _check_drop(policy, body)
        return frozenset()
    if kind == "TruncateStmt":
        return frozenset()  # per relation: check_references
    if kind == "LockStmt":
        if body.get("mode") != ACCESS_SHARE:
            raise fail("lock_mode", "LOCK TABLE is allowed only IN ACCESS SHARE MODE")
        return frozenset()  # per relation: check_references
    if kind in ("ListenStmt", "NotifyStmt"):
        if not policy.owns_database:  # channels shared with other tenants' sessions
            raise fail("notify_not_allowed", "LISTEN/NOTIFY are not allowed in this strategy")
        notify.reserved(body.get("conditionname"))
        return frozenset()
    if kind in ("AlterRoleSetStmt", "AlterDatabaseSetStmt", "AlterSystemStmt"):
        setstmt = body.get("setstmt", {})
        setstmt = setstmt.get("VariableSetStmt", setstmt)
        if policy.is_reserved_setting(setstmt.get("name", "")):
            raise fail("reserved_setting", f'setting "{setstmt.get("name")}" is reserved for the proxy')
    if kind in _NOT_ALLOWED_DETAIL:
        raise fail("statement_not_allowed", _NOT_ALLOWED_DETAIL[kind])
    if kind.startswith(_DDL_PREFIXES):
        raise fail("ddl_not_allowed", f"{kind.removesuffix('Stmt')} is not allowed")
    raise fail("statement_not_allowed", f"{kind.removesuffix('Stmt') or 'this statement'} is not allowed")


def _nested(policy: TenantPolicy, node: Node, allowed: frozenset[str]) -> frozenset[str]:
    kind = tag_of(node) or ""
    if kind not in allowed:
        raise fail("statement_not_allowed", f"{kind.removesuffix('Stmt') or 'this statement'} is not allowed here")
    return gate(policy, kind, node[kind])


# LIKE options that copy expressions (defaults, generated columns, constraints, index expressions): they would
# run on every write to the new table without the proxy ever seeing them (CREATE_TABLE_LIKE_* bits).
_LIKE_COPIES_EXPRESSIONS = {4: "CONSTRAINTS", 8: "DEFAULTS", 16: "GENERATED", 64: "INDEXES"}


def _check_table_elements(policy: TenantPolicy, elements: list[Node] | tuple[Node, ...]) -> None:
    """A temporary table's LIKE clauses copy no expressions, and its foreign keys reference temporary tables."""
    for element in elements:
        like = element.get("TableLikeClause")
        if like is not None:
            copied = [word for bit, word in _LIKE_COPIES_EXPRESSIONS.items() if like.get("options", 0) & bit]
            if copied:
                raise fail("ddl_not_allowed", "LIKE ... INCLUDING " + ", ".join(copied) + " copies expressions "
                           "the proxy cannot check; use INCLUDING COMMENTS, STORAGE, COMPRESSION, IDENTITY or "
                           "STATISTICS")
            _check_like_source(like.get("relation", {}))
        column = element.get("ColumnDef")
        if column is not None:
            _check_column_type(names_of(column.get("typeName", {}).get("names")))
        constraints = column.get("constraints") or () if column is not None else (element,)
        for item in constraints:
            constraint = item.get("Constraint", {})
            if constraint.get("contype") == "CONSTR_FOREIGN":
                pk = constraint.get("pktable", {})
                if policy.temp_kind(pk.get("schemaname"), pk.get("relname", "")) != "table":
                    raise fail("ddl_not_allowed", "a temporary table may only reference temporary tables")


# Object-identifier types print an object's name and read one: a column of one in a temporary table would convert
# every value written into it (an assignment cast, COPY) and read from it without the run-time guards that every
# written conversion gets (proxy/policy/guards.py). The same for the catalogs' row types, which hold such columns.
_SAFE_PG_TYPES = frozenset({"pg_lsn", "pg_snapshot", "_pg_lsn", "_pg_snapshot"})


def _check_column_type(names: tuple[str, ...]) -> None:
    """Refuse a temporary table column of an object-identifier type (regclass, regrole…) or a catalog's row type."""
    if not names:
        return
    name, schema = names[-1].lower(), (names[-2] if len(names) > 1 else None)
    if name in REG_TYPES or name == "regrole" or (name in NAME_TYPES and schema in (None, "pg_catalog")) or (
        name.removeprefix("_").startswith("pg_") and name not in _SAFE_PG_TYPES and schema in (None, "pg_catalog")
    ) or schema == "information_schema":
        raise fail("ddl_not_allowed", f"a temporary table may not have a column of type {'.'.join(names)}: it names "
                   "objects without the checks the proxy applies to conversions (store the OID as oid, or the name "
                   "as text)")


def _check_like_source(rv: Node) -> None:
    """LIKE copies column types: not from a catalog (its object-identifier columns, see `_check_column_type`)."""
    schema, name = rv.get("schemaname"), rv.get("relname", "")
    if schema in CATALOG_SCHEMAS or (schema is None and name.startswith("pg_")):
        raise fail("ddl_not_allowed", f'a temporary table may not be created LIKE the catalog "{name}"')


def _check_drop(policy: TenantPolicy, body: Node) -> None:
    """DROP TABLE / VIEW of the session's temporary relations only: every name is (made) pg_temp.<name>."""
    if body.get("removeType") not in ("OBJECT_TABLE", "OBJECT_VIEW") or not policy.allow_ddl_temp:
        raise fail("ddl_not_allowed", "only temporary tables and views may be dropped")
    for obj in body.get("objects", ()):
        names = names_of(obj.get("List", {}).get("items"))
        if len(names) == 1 or (len(names) == 2 and names[0] == "pg_temp"):
            continue
        raise fail("ddl_not_allowed", "only temporary tables and views may be dropped (qualify them with pg_temp)")


def check_row_locker(policy: TenantPolicy, analysis: Analysis) -> None:
    """`xmax` is the last transaction that deleted, updated or locked a row, and it stays after that transaction
    ended: a foreign key check locks the referenced row (FOR KEY SHARE) for every insert of a referencing row, so the
    `xmax` of a row other tenants' rows reference (a shared product or currency table) changes with their inserts.
    Refused outside a database of the tenant's own (`owns_database`) for every relation but the session's
    temporary tables, unqualified or qualified with the relation's name (`xmin`, the transaction that wrote the
    row, stays: see docs/security.md)."""
    for ref in analysis.refs:
        rv = ref.rv
        if ref.cte or policy.temp_kind(rv.get("schemaname"), rv.get("relname", "")) == "table":
            continue
        refname = (rv.get("alias") or {}).get("aliasname") or rv.get("relname")
        if None in analysis.xmax_names or refname in analysis.xmax_names:
            raise fail("row_locker", f'the xmax of "{rv.get("relname")}" is not available: it names the last '
                       "transaction that locked a row, also another tenant's")


def others_relation(policy: TenantPolicy, rv: Node) -> str | None:
    """Which of the shared tenants' relations in a database tenant's shared database a RangeVar reaches
    (`othersseq.resolve`): "table" (`TenantPolicy.others_tables`), "parent" (`others_parents`), "sequence"
    (`others_sequences`) or None.
    Forced RLS gives the tenant none of their rows, but the planner estimates their tables from every tenant's
    statistics: a plan's shape (which join side, which scan) follows their row counts (red team 9a7 H3); a
    sequence's last value counts their inserts (review 17 F4). The reference is refused."""
    _, schema, table = rv_names(rv)
    return othersseq.resolve(policy, schema, table)


def check_references(policy: TenantPolicy, analysis: Analysis) -> None:
    """Per-relation rules: denied catalogs, writes, temp-table names, unsupported positions."""
    if analysis.locking and not policy.allow_writes:
        raise fail("read_only", "SELECT ... FOR UPDATE/SHARE locks rows and needs a writing role")
    if analysis.xmax_names and not policy.owns_database:  # rows other tenants' sessions lock
        check_row_locker(policy, analysis)
    for ref in analysis.refs:
        rv = ref.rv
        schema, rel = rv.get("schemaname"), rv.get("relname", "")
        if (policy.others_tables or policy.others_sequences) and not ref.cte and ref.role not in (INTO, CREATE) and (
                kind := others_relation(policy, rv)) is not None and not (
                kind == "parent" and ref.role in (READ, TARGET) and not rv.get("inh", False)):
            # (`ONLY parent` read, updated, deleted from: the parent's own rows only, planned from its own statistics)
            rule, why = othersseq.reference_rule(kind)
            raise fail(rule, f'"{rel}" {why}')
        if ref.role in (READ, SAMPLE, COPY_TO, UNKNOWN, LIKE) and not ref.cte and is_denied_relation(policy, rv):
            raise fail("catalog_denied", f'reading "{rel}" is not allowed')
        if ref.role in (TARGET, COPY_FROM, TRUNCATE):
            if schema in CATALOG_SCHEMAS or (schema is None and rel.startswith("pg_")):
                raise fail("catalog_write", f'"{rel}" is a system catalog')
            temp = policy.temp_kind(schema, rel)
            if temp == "view":
                raise fail("temp_view_write", f'"{rel}" is a temporary view')
            if temp == "table":
                continue  # the session's own temporary table: the rewrite names it pg_temp.<name>
            if not policy.allow_writes:
                raise fail("read_only", f'writing to "{rel}" is not allowed for this read-only role')
            if ref.role == TRUNCATE and policy.strategy == "shared":
                raise fail("statement_not_allowed", "TRUNCATE of a table other than a temporary one is not "
                           "allowed in the shared-schema strategy")
            if policy.strategy == "schema":
                check_writes_to_shared(policy, schema, rel)
        elif ref.role in (INTO, CREATE):
            if not _is_temp(rv) or not policy.allow_ddl_temp:
                raise fail("ddl_not_allowed", "only temporary tables and views may be created")
            if schema not in (None, "pg_temp"):
                raise fail("ddl_not_allowed", "temporary relations cannot be created in a named schema")
            if is_filtered_name(policy, rel):
                raise fail("temp_shadows_scoped", f'a temporary relation may not be called "{rel}"')
        elif ref.role == LOCK:
            if schema in CATALOG_SCHEMAS or (schema is None and rel.startswith("pg_")) or is_denied_relation(
                policy, rv
            ):
                raise fail("lock_mode", f'"{rel}" is a system catalog: only your own tables may be locked')
            if schema is None and any(s in CATALOG_SCHEMAS for s in policy.path if s != "pg_catalog"):
                # information_schema on the path: an unqualified name may be its view (pg_catalog's all start pg_)
                raise fail("lock_mode", f'"{rel}" may name a system catalog through search_path: qualify it with '
                           "its schema to lock it")
        elif ref.role == INHERIT:
            raise fail("ddl_not_allowed", "temporary tables may not inherit from other tables")
        elif ref.role in (SAMPLE, UNKNOWN) and not ref.cte:
            found = relation_filter(policy, rv)
            # A catalog filter is not sampled (tenant tables are: rewrite.sample); nothing filtered goes elsewhere.
            if found is not None and (found.kind == "catalog" if ref.role == SAMPLE else found.kind != "temp"):
                raise fail("rewrite_unsupported", f'"{rel}" is tenant-filtered and cannot be used in this position')
