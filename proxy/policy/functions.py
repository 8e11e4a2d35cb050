"""The function allow-list check: built-ins plus the tenant's extras, minus what is never allowed."""

from __future__ import annotations

from proxy.policy import advisory, agent, nextval, notify, othersseq, settings
from proxy.policy.builtins import BUILTIN_FUNCTIONS
from proxy.policy.model import TenantPolicy
from proxy.policy.reached import ATTRIBUTE, CAST, DOMAIN, FIELD, HOW, JSON, OPERATOR, SHADOW, VIEW
from proxy.policy.rules import fail
from proxy.policy.tree import Node
from proxy.policy.walk import COPY_TO, INTO, LIKE, READ, SAMPLE, TARGET, Analysis

# Never allowed, not even through extra_allowed_functions: they reach outside the tenant (other databases or
# clusters, server files, large objects, other backends) or execute SQL text the proxy never sees.
NEVER_PREFIXES: tuple[str, ...] = (
    "dblink",
    "lo_",
    "pg_ls_",
    "pg_read_",
    "pg_file_",
    "pg_stat_get_backend_",
    "pg_replication_",
    "pg_logical_",
    "pg_create_",
    "pg_drop_",
    "pg_copy_",
    "pg_backup_",
    "binary_upgrade_",
    "query_to_xml",
    "table_to_xml",
    "cursor_to_xml",
    "database_to_xml",
    "schema_to_xml",
    "crosstab",
)
NEVER_NAMES: frozenset[str] = frozenset(
    {
        "loread",
        "lowrite",
        "pg_stat_file",
        "pg_stat_get_activity",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_signal_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_current_logfile",
        "pg_logdir_ls",
        "current_query",
        "ts_stat",
        "ts_rewrite",
        "connectby",
        "pg_import_system_collations",
        "pg_switch_wal",
        # name any object by OID, including other databases and other tenants' schemas (attack suite)
        "pg_describe_object",
        "pg_identify_object",
        "pg_identify_object_as_address",
        "pg_get_object_address",
        # the function behind pg_prepared_statements: the server's statements under pgtenant's names, other
        # sessions' of the pool too (the view lists the session's own: catalog.py)
        "pg_prepared_statement",
        # the size of a tablespace holds every database's (every tenant's) data; an object's ACL names roles
        "pg_tablespace_size",
        "pg_get_acl",
    }
)
# The server's transaction counter, snapshots and commit times: every tenant's (every database's) activity as it
# happens. Refused in every strategy (rule cluster_activity); `age(xid)` stays (see docs/security.md).
CLUSTER_ACTIVITY: frozenset[str] = frozenset(
    {
        "pg_current_snapshot", "pg_current_xact_id", "pg_current_xact_id_if_assigned", "txid_current",
        "txid_current_if_assigned", "txid_current_snapshot", "txid_status", "pg_xact_status",
        "pg_xact_commit_timestamp", "pg_xact_commit_timestamp_origin", "pg_last_committed_xact", "mxid_age",
        "pg_snapshot_xip", "pg_snapshot_xmin", "pg_snapshot_xmax", "txid_snapshot_xip", "txid_snapshot_xmin",
        "txid_snapshot_xmax", "pg_visible_in_snapshot", "txid_visible_in_snapshot", "pg_notification_queue_usage",
    }
)
SYSTEM_FUNCTION_SCHEMAS: frozenset[str] = frozenset({"pg_catalog", "information_schema"})


def never_allowed(name: str) -> bool:
    """True for functions no tenant may call."""
    return name in NEVER_NAMES or name.startswith(NEVER_PREFIXES)


def is_builtin(names: tuple[str, ...]) -> bool:
    """Whether the (possibly qualified) function `names` is one of the hand-picked built-ins."""
    return (len(names) < 2 or names[-2] in SYSTEM_FUNCTION_SCHEMAS) and names[-1] in BUILTIN_FUNCTIONS


def is_allowed(policy: TenantPolicy, names: tuple[str, ...]) -> bool:
    """Whether a call to the (possibly qualified) function `names` is allowed for this policy."""
    name = names[-1]
    schema = names[-2] if len(names) >= 2 else None
    qualified = f"{schema}.{name}" if schema else name
    if never_allowed(name):
        return False
    if name in policy.denied_functions or qualified in policy.denied_functions:
        return False
    if is_builtin(names):
        return True
    return qualified in policy.extra_allowed_functions or name in policy.extra_allowed_functions


# Advisory locks are keyed per database: outside the database strategy every tenant of the database shares
# them, so one tenant could block another's or learn that another session holds a key (like NOTIFY channels).
ADVISORY_PREFIXES: tuple[str, ...] = ("pg_advisory_", "pg_try_advisory_")


def check(policy: TenantPolicy, analysis: Analysis, select: Node | None = None) -> bool:
    """Deny the first call that is not allowed; apply the settings rules to set_config & co (`select`: the
    statement's SelectStmt, if it is one). True when the statement reaches, without a call, a routine of the database
    the tenant's allow-list admits (it pins the session as a call of it does)."""
    for call in analysis.calls:
        names = call.names
        if len(names) > 2:
            raise fail("cross_database", "function name " + ".".join(names) + " has too many parts")
        if names[-1] in CLUSTER_ACTIVITY and (len(names) == 1 or names[-2] == "pg_catalog"):
            raise fail("cluster_activity", f"{names[-1]}() shows the activity of every tenant of the server")
        if not is_allowed(policy, names):
            raise fail("function_not_allowed", "function " + ".".join(names) + "() is not allowed")
        if policy.agent_max_rows is not None:
            agent.check_function(names, is_builtin(names))
        # Keys are shared with other tenants. pg_advisory_unlock_all() only frees this session's own locks (none, for a
        # tenant that may not take one): asyncpg's Pool sends it on every release (red team 20a F4).
        if (not policy.owns_database and names[-1].startswith(ADVISORY_PREFIXES)
                and names[-1] != "pg_advisory_unlock_all"):
            raise fail("advisory_lock_shared", f"{names[-1]}() is not allowed in this strategy")
        settings.check_function(policy, call, select)
    nextval.check(policy, analysis)
    othersseq.check(policy, analysis)
    if policy.owns_database:
        advisory.check(policy, analysis)
        notify.check(analysis)
    for fields in analysis.column_refs:
        # `t.f` calls f(t) when t has no column f (functional notation): never-allowed names are refused here.
        last = fields[-1]
        if never_allowed(last) or last in policy.denied_functions:
            raise fail("function_not_allowed", f"function {last}() is not allowed")
    return bool(policy.reached) and check_reached(policy, analysis)


def check_reached(policy: TenantPolicy, analysis: Analysis) -> bool:
    """Apply the allow-list (and the agent's list) to the routines of the tenant's database a statement reaches
    without calling them by name (`TenantPolicy.reached`): `t.f` / `(t).f`, an operator, a cast to a type (a
    JSON-writing built-in: the cast to json), a type whose constraints or default call one (a domain), an unqualified
    call of a name a routine of the database overloads, a new table made from a relation whose row type a domain
    checks; for a shared or schema tenant, a view whose query reaches
    one (a database tenant's views are its own). True when one is reached (and admitted)."""
    reached = False
    for fields in analysis.column_refs:
        # only the last field can be a function, of a row: `t.f` is f(t), `s.t.f` f(s.t); `a.b.c` is never f(c) nor
        # f(a.b)'s field c (PostgreSQL reads it as schema.table.column and nothing else)
        if len(fields) > 1:
            reached |= _check_reached(policy, ATTRIBUTE, fields[-1], ".".join(fields))
    for name in analysis.indirections:
        reached |= _check_reached(policy, ATTRIBUTE, name, f"(...).{name}")
        reached |= _check_reached(policy, FIELD, name, f"(...).{name}")
    for symbol in analysis.operator_symbols:
        reached |= _check_reached(policy, OPERATOR, symbol, symbol)
    for cast in analysis.casts:  # only a cast whose source type may be its value's (policy/castsource.py)
        sources = None if cast.via and policy.reached.functions(SHADOW, cast.via) else cast.sources
        reached |= _check_reached(policy, CAST, cast.target, cast.target,
                                  policy.reached.cast_functions(cast.target, sources))
        if cast.fields:  # (a row value cast field by field to a composite type's columns: any cast may run)
            reached |= _check_reached(policy, CAST, cast.target, f"{cast.target} (field by field)",
                                      policy.reached.all_cast_functions())
    for written in analysis.json_output:  # to_json(x) & co. write x through its type's cast to json, at any depth
        reached |= _check_reached(policy, CAST, JSON, f"{JSON} (done by {written})")
    for names in analysis.type_names:
        if names:
            reached |= _check_reached(policy, DOMAIN, names[-1], ".".join(names))
    if any(ref.role in (INTO, LIKE) for ref in analysis.refs):
        # a new table made from a relation (CREATE TABLE AS, SELECT INTO, CREATE TABLE (LIKE ...)) takes its columns'
        # types: a domain's CHECK of them runs at each later INSERT / UPDATE / COPY of it (rt20b F2)
        for ref in analysis.refs:
            if ref.cte or ref.role not in _SOURCE_ROLES:
                continue
            name, schema = ref.rv.get("relname", ""), ref.rv.get("schemaname")
            written = f"{schema}.{name}" if schema else name
            reached |= _check_reached(policy, DOMAIN, written, f"{written} (a column of the new table)")
    if policy.strategy != "database":
        for ref in analysis.refs:
            if ref.cte or ref.role not in _VIEW_ROLES:
                continue
            name, schema = ref.rv.get("relname", ""), ref.rv.get("schemaname")
            written = f"{schema}.{name}" if schema else name
            reached |= _check_reached(policy, VIEW, written, written)
    for call in analysis.calls:
        if len(call.names) == 1:
            # (`text(x)` never runs a cast's function: PostgreSQL takes a call for a cast only when no function is
            # needed, else 42883)
            reached |= _check_reached(policy, SHADOW, call.names[0], call.names[0] + "()")
    return reached


_VIEW_ROLES = frozenset({READ, SAMPLE, TARGET, COPY_TO})  # a view's query runs when it is read or written through
_SOURCE_ROLES = frozenset({READ, SAMPLE, LIKE})  # the relations a new table's columns may come from


def _check_reached(policy: TenantPolicy, kind: str, key: str, written: str,
                   functions: tuple[str, ...] | None = None) -> bool:
    found = False
    for function in policy.reached.functions(kind, key) if functions is None else functions:
        found = True
        names = tuple(function.split(".", 1))
        if not is_allowed(policy, names):
            # never the name of a function in another tenant's schema (a cast to json of its type stays counted)
            named = "a function" if names[0] in policy.hidden_schemas else f"function {function}()"
            raise fail("function_not_allowed", f"{named} is not allowed (reached by {HOW[kind]} "
                       f"{written}; [tenants.X] extra_allowed_functions admits it, but the proxy does not filter "
                       "what its body reads: only if it reads no tenant-scoped view, materialized view or foreign "
                       "table)")
        if policy.agent_max_rows is not None:
            agent.check_function(names, False)
    return found
