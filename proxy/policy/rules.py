"""Stable denial rule ids with their SQLSTATE (proxy/errors.py's names) and hint, and the Deny builder."""

from __future__ import annotations

from proxy.errors import (
    CHARACTER_NOT_IN_REPERTOIRE,
    CONFIGURATION_LIMIT_EXCEEDED,
    FEATURE_NOT_SUPPORTED,
    INSUFFICIENT_PRIVILEGE,
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    OUT_OF_MEMORY,
    PROGRAM_LIMIT_EXCEEDED,
    PROTOCOL_VIOLATION,
    QUERY_CANCELED,
    READ_ONLY_SQL_TRANSACTION,
    STATEMENT_TOO_COMPLEX,
    SYNTAX_ERROR,
)
from proxy.policy.model import Deny

# rule id -> (SQLSTATE, hint). Rule ids are part of the public contract (logs, metrics, fixtures).
RULES: dict[str, tuple[str, str]] = {
    "parse_error": (SYNTAX_ERROR, "pgtenant only forwards SQL that PostgreSQL's grammar accepts."),
    "statement_not_allowed": (INSUFFICIENT_PRIVILEGE, "This kind of statement is not allowed for tenant roles."),
    "ddl_not_allowed": (
        INSUFFICIENT_PRIVILEGE,
        "Tenant roles may only create and drop temporary tables; ask an administrator for schema changes.",
    ),
    "read_only": (READ_ONLY_SQL_TRANSACTION, "This tenant role is read-only; writes are not allowed."),
    "reserved_setting": (
        INSUFFICIENT_PRIVILEGE,
        "The tenant context and the pgtenant.* settings are managed by the proxy and cannot be changed.",
    ),
    "reserved_statement_name": (
        INSUFFICIENT_PRIVILEGE,
        "Prepared statement names beginning with pgt_ are reserved for the proxy's own statements; use another name.",
    ),
    "set_role": (INSUFFICIENT_PRIVILEGE, "Role switching is not allowed through pgtenant."),
    "session_setting": (
        INSUFFICIENT_PRIVILEGE,
        "pgtenant requires client_encoding UTF8, standard_conforming_strings on and row security enforced.",
    ),
    "search_path_set_config": (
        FEATURE_NOT_SUPPORTED,
        "Set search_path with SET search_path TO a, b, or with set_config('search_path', 'a, b', false) alone in a "
        "SELECT list (no FROM, WHERE, subquery, CASE or other expression around it): anywhere else PostgreSQL may not "
        "run it, and the proxy must know the search_path PostgreSQL has.",
    ),
    "search_path_pinned": (
        INSUFFICIENT_PRIVILEGE,
        "Set search_path to a literal list of schema names (SET search_path TO a, b); the proxy keeps the ones "
        "you may use.",
    ),
    "function_not_allowed": (
        INSUFFICIENT_PRIVILEGE,
        "Only allow-listed functions may be called; ask an administrator to allow this function.",
    ),
    "foreign_schema": (INSUFFICIENT_PRIVILEGE, "Only your own schema and the shared schemas can be referenced."),
    "row_position": (
        INSUFFICIENT_PRIVILEGE,
        "Identify rows by their key columns: ctid is a row's physical position in a table shared with other "
        "tenants, and the positions of your rows tell how many of theirs are stored around them.",
    ),
    "row_sampling": (
        INSUFFICIENT_PRIVILEGE,
        "Use TABLESAMPLE BERNOULLI (p) without REPEATABLE: SYSTEM samples whole pages and REPEATABLE repeats a "
        "sample by where rows are stored, in a table shared with other tenants.",
    ),
    "others_table": (
        INSUFFICIENT_PRIVILEGE,
        "This table holds only other tenants' rows in the database you share with them (row-level security shows "
        "you none of them, and the planner's estimates of it count theirs); leave it out.",
    ),
    "others_sequence": (
        INSUFFICIENT_PRIVILEGE,
        "This sequence gives keys to other tenants' rows in the database you share with them: its position counts "
        "their inserts; leave it out (name your own sequences in a string literal).",
    ),
    "row_locker": (
        INSUFFICIENT_PRIVILEGE,
        "Leave xmax out (xmin, the transaction that wrote a row, is available): xmax names the last transaction that "
        "locked a row, and other tenants' inserts lock the rows theirs reference.",
    ),
    "unchecked_object_name": (
        INSUFFICIENT_PRIVILEGE,
        "Name the type in a string literal: to_regtypemod() of a parameter or a computed name cannot be checked.",
    ),
    "reg_parameter_type": (
        INSUFFICIENT_PRIVILEGE,
        "Declare the parameter as text or another built-in type (or leave its type unspecified) and write the "
        "conversion in the statement ($1::regclass, $1::my_type): the proxy checks that one.",
    ),
    "aclitem_input": (
        INSUFFICIENT_PRIVILEGE,
        "aclitem values written as text name roles and are read with the role lookup the proxy cannot check: build "
        "one with makeaclitem(grantee_oid, grantor_oid, privileges, grantable) or read ACLs with aclexplode().",
    ),
    "name_bearing_type": (
        INSUFFICIENT_PRIVILEGE,
        "Write the conversion as a scalar cast (x::regclass, x::regtype[]), which the proxy checks; array spellings "
        "(_regclass), catalog row types, column definition lists and RETURNING clauses of these types are not "
        "available.",
    ),
    "qualified_column": (
        INSUFFICIENT_PRIVILEGE,
        "Qualify the column with its table or alias only (t.c), or write the schema in FROM too (FROM s.t).",
    ),
    "shared_schema_write": (INSUFFICIENT_PRIVILEGE, "Shared reference schemas are read-only."),
    "cross_database": (INSUFFICIENT_PRIVILEGE, "Names may not refer to another database."),
    "catalog_denied": (
        INSUFFICIENT_PRIVILEGE,
        "This catalog relation exposes other sessions or tenants and is not available through pgtenant.",
    ),
    "catalog_write": (INSUFFICIENT_PRIVILEGE, "System catalogs cannot be modified."),
    "copy_program": (INSUFFICIENT_PRIVILEGE, "COPY ... PROGRAM is not allowed; use COPY ... TO STDOUT / FROM STDIN."),
    "copy_server_file": (
        INSUFFICIENT_PRIVILEGE,
        "COPY to or from a server file is not allowed; use COPY ... TO STDOUT / FROM STDIN (psql \\copy).",
    ),
    "advisory_lock_key": (
        FEATURE_NOT_SUPPORTED,
        "Write an advisory lock's key so that it is the same for every row of the statement: constants, parameters, "
        "hashtext() of them (one lock per statement call); pgtenant bounds the locks a session holds "
        "(limits.max_advisory_locks), which it cannot do for a key computed per row.",
    ),
    "advisory_lock_limit": (
        CONFIGURATION_LIMIT_EXCEEDED,
        "Release advisory locks you no longer need (pg_advisory_unlock, pg_advisory_unlock_all) or end the "
        "transaction; the limit is limits.max_advisory_locks.",
    ),
    "advisory_lock_shared": (
        INSUFFICIENT_PRIVILEGE,
        "Advisory locks are shared by every tenant of this database and are not available; use the database "
        "strategy for a database of your own.",
    ),
    "setting_limit": (
        CONFIGURATION_LIMIT_EXCEEDED,
        "The memory and parallelism a statement may use are capped for tenants (limits.max_work_mem, "
        "limits.max_hash_mem_multiplier, ...): they are the database server's, shared by every tenant. Use a value "
        "at most the limit, or ask the operator to raise it.",
    ),
    "operator_setting": (
        INSUFFICIENT_PRIVILEGE,
        "temp_file_limit bounds the temporary files of every statement; the operator sets it for pgtenant's roles "
        "(limits.temp_file_limit, applied by pgtenant provision).",
    ),
    "notify_bound": (
        FEATURE_NOT_SUPPORTED,
        "PostgreSQL's notification queue is shared by every database of the server: write pg_notify() once per "
        "statement with a channel and payload that are the same for every row (constants, parameters), e.g. SELECT "
        "pg_notify('jobs', $1); NOTIFY is one notification.",
    ),
    "registry_reserved": (
        INSUFFICIENT_PRIVILEGE,
        "The advisory lock class 1885828195 (two-key form) and the LISTEN/NOTIFY channel pgtenant_registry belong to "
        "pgtenant's tenant registry; use other keys and channels.",
    ),
    "notify_not_allowed": (
        INSUFFICIENT_PRIVILEGE,
        "LISTEN/NOTIFY channels are shared by every tenant of this database and are not available.",
    ),
    "lock_mode": (
        INSUFFICIENT_PRIVILEGE,
        "LOCK TABLE ... IN ACCESS SHARE MODE (the lock every SELECT takes, what pg_dump sends) is allowed on your own "
        "tables; stronger locks would block other tenants.",
    ),
    "snapshot_sharing": (
        FEATURE_NOT_SUPPORTED,
        "Snapshots are shared by every tenant of this database; run pg_dump without -j/--jobs and --snapshot (one "
        "connection, one snapshot: the dump is just as consistent).",
    ),
    "snapshot_export_once": (
        FEATURE_NOT_SUPPORTED,
        "Export one snapshot per transaction (pg_dump does): each export keeps a file on the server until the "
        "transaction ends.",
    ),
    "two_phase_commit": (INSUFFICIENT_PRIVILEGE, "Prepared transactions are not available through pgtenant."),
    "explain_analyze": (
        INSUFFICIENT_PRIVILEGE,
        "EXPLAIN ANALYZE would report row counts of other tenants; use EXPLAIN without ANALYZE.",
    ),
    "explain_costs": (
        INSUFFICIENT_PRIVILEGE,
        "The planner's estimates come from every tenant's rows; plans are shown with COSTS OFF (leave COSTS out).",
    ),
    "explain_catalog": (
        INSUFFICIENT_PRIVILEGE,
        "Query the catalog itself, without EXPLAIN: the plans of statements over system catalogs (and temporary "
        "views, whose bodies are not looked through) are chosen by statistics that count other tenants' objects. "
        "EXPLAIN EXECUTE shows only a statement this session PREPAREd over none of them; else EXPLAIN the "
        "statement's own text.",
    ),
    "prepared_elsewhere": (
        FEATURE_NOT_SUPPORTED,
        "PREPARE the statement again: since it was prepared, a temporary relation was made or dropped or the "
        "search_path changed, and PostgreSQL would resolve its names again in a context it was not checked for.",
    ),
    "explain_settings": (
        INSUFFICIENT_PRIVILEGE,
        "Leave SETTINGS out: SHOW and current_setting() show the settings of your session.",
    ),
    "cluster_activity": (
        INSUFFICIENT_PRIVILEGE,
        "Transaction ids, snapshots and commit times show the activity of every tenant of the server.",
    ),
    "temp_shadows_scoped": (
        INSUFFICIENT_PRIVILEGE,
        "A temporary relation may not take the name of a system catalog the proxy filters; choose another name.",
    ),
    "temp_view_write": (
        FEATURE_NOT_SUPPORTED,
        "Temporary views are read-only through pgtenant; write to a temporary table instead.",
    ),
    "tenant_column_write": (
        INSUFFICIENT_PRIVILEGE,
        "The tenant column is filled in by the proxy; leave it out of INSERT column lists and UPDATE SET lists.",
    ),
    "foreign_tenant_value": (INSUFFICIENT_PRIVILEGE, "Rows may only be written with your own tenant value."),
    "context_reset_not_last": (
        FEATURE_NOT_SUPPORTED,
        "Send DISCARD ALL / RESET ALL as the last (or only) statement of a query string.",
    ),
    "rewrite_unsupported": (
        FEATURE_NOT_SUPPORTED,
        "This statement shape cannot be restricted to your tenant automatically; rephrase it.",
    ),
    "rewrite_unverified": (
        INSUFFICIENT_PRIVILEGE,
        "The tenant filter could not be verified for this statement; rephrase it or report it to the admin.",
    ),
    "statement_too_complex": (STATEMENT_TOO_COMPLEX, "Simplify the statement (it is nested too deeply)."),
    "too_many_guards": (
        STATEMENT_TOO_COMPLEX,
        "Split the statement, or join the catalogs (pg_class, pg_type ...) to read names instead of converting "
        "many OIDs with ::regclass-style casts.",
    ),
    "too_many_statements": (
        STATEMENT_TOO_COMPLEX,
        "Send the statements in several query strings (the limit is limits.max_statements_per_query).",
    ),
    "statement_too_large": (
        STATEMENT_TOO_COMPLEX,
        "Split the statement, or pass long lists of values as a parameter (= ANY($1)); the limit is "
        "limits.max_parse_tree_nodes.",
    ),
    "sql_prepare_limit": (
        OUT_OF_MEMORY,
        "DEALLOCATE prepared statements the session no longer uses; the limits are [pool] max_session_statements "
        "and max_session_statement_bytes (the text the server keeps for each).",
    ),
    "session_settings_limit": (
        PROGRAM_LIMIT_EXCEEDED,
        "RESET the settings the session no longer needs (RESET name, RESET ALL or DISCARD ALL), or set fewer: pgtenant "
        "keeps each session setting to set it again on every server it hands the session; the limits are [pool] "
        "max_session_settings and max_session_setting_bytes.",
    ),
    "session_cursors_limit": (
        PROGRAM_LIMIT_EXCEEDED,
        "CLOSE the WITH HOLD cursors the session no longer reads (CLOSE name, CLOSE ALL or DISCARD ALL): pgtenant "
        "follows each one the session holds; the limit is [pool] max_session_cursors.",
    ),
    "session_portals_limit": (
        PROGRAM_LIMIT_EXCEEDED,
        "Close the portals and cursors the session no longer reads (a protocol Close of the portal, CLOSE name, "
        "CLOSE ALL, or end the transaction): each one keeps its query's state, up to work_mem for a sort, on the "
        "database server until it is closed; the limit is [pool] max_session_portals.",
    ),
    "session_listens_limit": (
        PROGRAM_LIMIT_EXCEEDED,
        "UNLISTEN the channels the session no longer needs (UNLISTEN name, UNLISTEN * or DISCARD ALL): pgtenant "
        "follows each channel a session listens on; the limit is [pool] max_session_listens.",
    ),
    "session_savepoints_limit": (
        PROGRAM_LIMIT_EXCEEDED,
        "RELEASE the savepoints the transaction no longer needs (RELEASE SAVEPOINT name) or end the transaction: "
        "pgtenant follows each savepoint a transaction has; the limit is [pool] max_session_savepoints.",
    ),
    "temp_relation_limit": (
        CONFIGURATION_LIMIT_EXCEEDED,
        "Drop the temporary tables you no longer need and end the transaction: relations dropped in a transaction "
        "count until it ends (PostgreSQL locks them until then); the limit is limits.max_temp_relations.",
    ),
    "decision_timeout": (
        QUERY_CANCELED,
        "Simplify or split the statement; pgtenant gives each check limits.decision_timeout seconds.",
    ),
    "statement_timeout_limit": (
        INVALID_PARAMETER_VALUE,
        "Set statement_timeout to a literal such as '30s' or 5000 (milliseconds); values above your limit (and 0) "
        "take the limit.",
    ),
    # The agent profile (proxy/policy/agent.py, proxy/admission.py).
    "agent_statement": (
        INSUFFICIENT_PRIVILEGE,
        "The agent profile runs read-only queries: SELECT (limited to agent.max_rows rows), EXPLAIN, SHOW, "
        "transactions and cursors.",
    ),
    "agent_setting": (
        READ_ONLY_SQL_TRANSACTION,
        "The agent profile's server connection is read-only with its own statement_timeout; neither can be changed.",
    ),
    "agent_function": (
        INSUFFICIENT_PRIVILEGE,
        "The agent profile calls built-in functions that do not wait, lock or change settings (no pg_sleep, advisory "
        "locks, set_config, large objects, user-defined functions).",
    ),
    "agent_estimate": (
        PROGRAM_LIMIT_EXCEEDED,
        "Narrow the query: add a WHERE condition on an indexed column, a smaller LIMIT, fewer joins, or aggregate "
        "before returning rows.",
    ),
    # PostgreSQL's answer still holds a hidden schema's reserved name (proxy/hiddennames.py's last-line check)
    "answer_withheld": (
        INSUFFICIENT_PRIVILEGE,
        "The statement failed; pgtenant does not relay the server's text for it (it would name what is hidden).",
    ),
    "internal_error": (INTERNAL_ERROR, "pgtenant failed closed while deciding this statement; please report it."),
    # Refused by the session before any policy decides (proxy/session.py).
    "malformed_message": (
        PROTOCOL_VIOLATION,
        "The client sent a message the PostgreSQL protocol does not allow; check the driver and its version.",
    ),
    "invalid_utf8": (CHARACTER_NOT_IN_REPERTOIRE, ""),
    "function_call_message": (INSUFFICIENT_PRIVILEGE, "Call the function from a SQL statement instead."),
    # SQL EXECUTE / FETCH / MOVE of a protocol-level statement or portal with changes (proxy/sqlruns.py)
    "protocol_name_by_sql": (
        FEATURE_NOT_SUPPORTED,
        "Run a statement made by a Parse message that changes the session's state (a setting, the search_path, a "
        "temporary relation) with Bind and Execute, and a portal of one with Execute (a row count pages it); SQL "
        "EXECUTE, FETCH and MOVE run statements made by PREPARE, cursors made by DECLARE and protocol-level ones "
        "that change nothing.",
    ),
}


def deny(rule: str, detail: str) -> Deny:
    """Build the Deny for `rule`: `detail` says what was found (proxy.errors.policy_denied renders the client's
    message, naming the rule)."""
    sqlstate, hint = RULES[rule]
    return Deny(sqlstate=sqlstate, message=detail, hint=hint, rule=rule)


class Denied(Exception):
    """Raised inside the engine to stop deciding a statement; carries the Deny."""

    def __init__(self, decision: Deny) -> None:
        super().__init__(decision.message)
        self.decision = decision


def fail(rule: str, detail: str) -> Denied:
    """Return a Denied exception for `rule` (use as `raise fail(...)`)."""
    return Denied(deny(rule, detail))


def temp_relation_limit(relations: int, limit: int) -> Deny:
    """The denial of a statement (or a Bind) that would give its session more than `limit` temporary relations."""
    return deny(
        "temp_relation_limit",
        f"the session would have {relations} temporary relations (tables with their indexes and sequences, views, "
        f"and those dropped in the open transaction), more than limits.max_temp_relations = {limit}",
    )
