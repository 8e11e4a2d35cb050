"""SET / RESET / SHOW / set_config() / current_setting() rules that keep the tenant context unforgeable."""

from __future__ import annotations

import re

from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

from proxy.errors import INVALID_PARAMETER_VALUE
from proxy.policy import hiding, resources
from proxy.policy.model import (
    PIN,
    REAPPLY_CONTEXT,
    SET_PATH,
    SETTING,
    SYSTEM_SCHEMAS,
    Change,
    Deny,
    TenantPolicy,
)
from proxy.policy.rules import Denied, fail
from proxy.policy.schema import FOREIGN_SCHEMA
from proxy.policy.sqltext import downcase_identifier, split_identifier_list, truncate_identifier
from proxy.policy.tree import Node, const_text, names_of, string_const
from proxy.policy.walk import Call

ROLE_SETTINGS: frozenset[str] = frozenset({"role", "session_authorization"})

_ON = frozenset({"on", "true", "yes", "1"})
_OFF = frozenset({"off", "false", "no", "0"})
# Settings whose value the proxy relies on: the SQL text the proxy parses must mean the same to the server
# (encoding, string escapes). Allowed values, or empty = never changed.
PINNED_VALUES: dict[str, frozenset[str]] = {
    "client_encoding": frozenset({"utf8", "unicode"}),
    "standard_conforming_strings": _ON,
    # off never bypasses row-level security for a role without BYPASSRLS (every backend role: dbcheck); PostgreSQL
    # then raises an error where a policy would filter rows. pg_dump sends it (see row_security_off).
    "row_security": _ON | _OFF,
    "backslash_quote": frozenset(),
    "session_replication_role": frozenset(),
    # The server's own plan dumps (LOG messages a client reads with client_min_messages = log) carry the planner's
    # estimates and costs from whole-table statistics: what EXPLAIN's COSTS OFF keeps from tenants (red team 7 F1).
    "debug_print_parse": _OFF,
    "debug_print_rewritten": _OFF,
    "debug_print_plan": _OFF,
    # Below notice, the server's DEBUG and LOG lines show the statements it parsed and ran: the proxy's rewrites, the
    # run-time marker of a statement naming a hidden schema where a missing one shows the client's text (red team 8a
    # F4), and with the operator's log_statement the text of every statement. notice is PostgreSQL's default.
    "client_min_messages": frozenset({"notice", "warning", "error"}),
    # The server's own check that the proxy is still there (pooling.CONNECTION_CHECK): a drained server's pipelined
    # statements end with it; never changed.
    "client_connection_check_interval": frozenset(),
}


def _norm(value: str) -> str:
    return value.strip().lower().replace("-", "").replace("_", "")


def _check_name(policy: TenantPolicy, name: str) -> str:
    low = name.lower()
    if policy.is_reserved_setting(low):
        raise fail("reserved_setting", f'setting "{name}" is reserved for the proxy')
    if low in ROLE_SETTINGS:
        raise fail("set_role", f'changing "{low}" is not allowed')
    return low


def usable_schema(policy: TenantPolicy, entry: str) -> bool:
    """Whether a search_path entry may reach PostgreSQL: the tenant's own, shared and system schemas (schema
    strategy), any schema but other tenants' (shared strategy), anything but hidden schemas (database strategy:
    schema tenants' of the same database, the tenant registry's). PostgreSQL itself skips entries that do not exist
    or that the role may not use; the proxy skips these the same way."""
    if entry in ("pg_catalog", "pg_temp"):
        return True
    if policy.strategy == "schema":
        return entry in policy.allowed_schemas
    if policy.strategy == "database":
        usable = entry not in policy.hidden_schemas and entry not in policy.foreign_schemas
    else:  # "$user" names the backend role's schema, never the client's; pg_temp_N / pg_toast* are other sessions'
        # or internal schemas.
        usable = entry != "$user" and not entry.startswith("pg_") and entry not in policy.foreign_schemas
    if usable and policy.hidden_schemas and entry != "$user":
        # Where some schema is hidden, only the schemas found when the tenant was prepared (its catalogs' allow-list,
        # policy/visibility.py): a missing schema's entry is kept from PostgreSQL as a hidden one's is, so the text
        # sent (the marker carrying the client's value, in SET and in set_config's literal, which EXPLAIN VERBOSE
        # prints) and every position after it are the same for both (red team 9a3 J4, J4b).
        usable = entry in policy.known_schemas or entry in policy.search_path or entry in _SYSTEM_NAMESPACES
    return usable


_SYSTEM_NAMESPACES = frozenset({"information_schema", "pg_toast"})  # (as visibility.SYSTEM_NAMESPACES)


def _usable(policy: TenantPolicy, entries: list[str]) -> list[int]:
    """Indexes of the entries that may reach PostgreSQL. Outside the database strategy pg_catalog also goes when a
    schema other than pg_temp comes before it: PostgreSQL then searches it first, so an unqualified built-in
    function, type or operator always means pg_catalog's (what the function allow-list assumes)."""
    kept = [i for i, entry in enumerate(entries) if usable_schema(policy, entry)]
    if policy.strategy != "database":
        first = next((k for k, i in enumerate(kept) if entries[i] == "pg_catalog"), None)
        if first is not None and any(entries[i] != "pg_temp" for i in kept[:first]):
            kept = [i for i in kept if entries[i] != "pg_catalog"]
    return kept


def identifier(name: str) -> str:
    """`name` as PostgreSQL's quote_identifier() writes it (what SHOW prints for a search_path entry)."""
    safe = bool(name) and (name[0].islower() or name[0] == "_") and name.isascii()
    if safe:
        safe = all(c.islower() or c.isdigit() or c == "_" for c in name) and name not in _QUOTED_KEYWORDS
    return name if safe else '"' + name.replace('"', '""') + '"'


_QUOTED_KEYWORDS = frozenset(RESERVED_KEYWORDS | COL_NAME_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS)


# A search_path PostgreSQL gets without some of the client's entries starts with one more entry that carries the
# client's own value (what SHOW prints, hex-encoded): a schema name no role can create (the pg_ prefix is reserved for
# system schemas), so PostgreSQL skips it as it skips a missing schema. Every read of search_path the proxy lets
# through decodes it at run time (`client_path_sql`: current_setting, SHOW, SHOW ALL, pg_settings; `client_path`:
# ParameterStatus), so a statement decided before a SET -- PREPARE, DECLARE CURSOR, a temporary view, a named Parse --
# answers the client's value too (red team round 3 R3), and the value rolls back, ends with SET LOCAL's transaction
# and is replayed on another server together with search_path itself: it is search_path.
PATH_MARK = "pg_pgtenant_path_"


def marked_entry(shown: str) -> str:
    """The search_path entry that carries the client's value `shown` (lower-case hex: never quoted by PostgreSQL)."""
    return PATH_MARK + shown.encode("utf-8").hex()


def client_path(value: str) -> str:
    """The client's search_path when PostgreSQL has `value` (`client_path_sql` in Python)."""
    if not value.startswith(PATH_MARK):
        return value
    try:
        return bytes.fromhex(value[len(PATH_MARK) :].split(",", 1)[0].strip()).decode("utf-8")
    except ValueError:
        return value


def client_path_sql(value: str) -> str:
    """SQL for the client's search_path when PostgreSQL's is the text expression `value` (a column or a call)."""
    start = len(PATH_MARK) + 1
    return (f"CASE WHEN pg_catalog.starts_with({value}, '{PATH_MARK}') THEN pg_catalog.convert_from(pg_catalog.decode("
            f"pg_catalog.split_part(pg_catalog.substr({value}, {start}), ',', 1), 'hex'), 'UTF8') ELSE {value} END")


CURRENT_PATH_SQL = client_path_sql("pg_catalog.current_setting('search_path')")
RESULT_PATH_SQL = client_path_sql("pgt_r.v")  # of a setting's value read as `pgt_r.v` (rewrite.call_result)


def _check_marks(entries: list[str]) -> None:
    """A client may not write the proxy's mark itself (a schema no role can create): its value would be decoded."""
    if any(entry.startswith(PATH_MARK) for entry in entries):
        raise fail("reserved_setting", f'search_path entries starting with "{PATH_MARK}" are reserved for the proxy')


def path_read_at_run_time(policy: TenantPolicy) -> bool:
    """Whether reads of search_path are rewritten to `client_path_sql`: wherever PostgreSQL may get a search_path
    without some of the client's entries (the shared and schema strategies, and a database tenant's where some
    schema of its database is hidden), whatever the session's value is when the statement is decided."""
    return policy.strategy != "database" or bool(policy.hidden_schemas or policy.foreign_schemas)


def search_path_change(policy: TenantPolicy, body: Node, index: int) -> tuple[Change | None, list[int] | None]:
    """The change a SET / SET LOCAL / RESET / SET ... TO DEFAULT of search_path makes, and, when some entries
    must not reach PostgreSQL, the indexes of the arguments to keep (the statement is rewritten to them)."""
    kind = body.get("kind", "")
    local = bool(body.get("is_local"))
    if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return Change(index, SET_PATH, flag=local), None
    if kind != "VAR_SET_VALUE":
        return None, None  # SET ... FROM CURRENT: the value stays
    entries = [const_text(a) for a in body.get("args") or ()]
    if None in entries:
        raise fail("search_path_pinned", "search_path must be set to schema names")
    names = [e for e in entries if e is not None]
    _check_marks(names)
    kept = _usable(policy, names)
    path = tuple(names[i] for i in kept)
    if len(kept) == len(names):
        return Change(index, SET_PATH, path=path, flag=local), None
    shown = ", ".join(identifier(n) for n in names)
    return Change(index, SET_PATH, path=path, shown=shown, flag=local), kept


def set_config_path(policy: TenantPolicy, call: Call, index: int) -> tuple[Change, str | None]:
    """set_config('search_path', '<literal>', is_local): its change, and the literal PostgreSQL must get
    instead (None when every entry may stay)."""
    value = literal_arg(call, 1)
    entries = None if value is None else ([] if not value.strip() else split_identifier_list(value))
    if entries is None:
        raise fail("search_path_pinned", "set_config() can only set search_path to a literal list of schemas")
    _check_marks(entries)
    local = _bool_arg(call, 2)
    kept = [entries[i] for i in _usable(policy, entries)]
    if len(kept) == len(entries):
        return Change(index, SET_PATH, path=tuple(entries), flag=local), None
    literal = ", ".join([marked_entry(value), *(identifier(e) for e in kept)])
    return Change(index, SET_PATH, path=tuple(kept), shown=value, flag=local), literal


def set_config_setting(call: Call, body: Node | None) -> str | None:
    """The setting (lower case) a set_config() call changes: its literal first argument, or the row of pg_dump's
    `FROM pg_settings WHERE name = '<setting>'` form (`body`: the statement's SelectStmt). Both forms are decided,
    filtered, rewritten and tracked alike; None for another function or a name known only at run time (which
    check_function refuses)."""
    if call.names[-1] != "set_config" or call.names[:-1] not in ((), ("pg_catalog",)) or call.named:
        return None
    name = literal_arg(call, 0)
    if name is None and body is not None:
        name = pg_settings_row(body, call)
    return None if name is None else name.lower()


def _bool_arg(call: Call, index: int) -> bool:
    """A literal boolean argument (true, 'on', …); anything else counts as false."""
    if index >= len(call.args):
        return False
    return literal_bool(call.args[index]) is True


_BOOL_CASTS = frozenset({"bool", "boolean", "text"})  # casts that keep a boolean literal's value


def literal_bool(node: Node | None) -> bool | None:
    """The value PostgreSQL gives a literal boolean argument: a boolean constant or NULL (False, as set_config takes
    a NULL is_local), or a string read as boolin reads it, under casts to boolean or text only; None for anything
    else (an expression, a parameter, a cast through another type, a string that is no boolean)."""
    while node and "TypeCast" in node:
        cast = node["TypeCast"]
        names = [n.get("String", {}).get("sval", "") for n in cast.get("typeName", {}).get("names", [])]
        if not names or names[-1].lower() not in _BOOL_CASTS or names[:-1] not in ([], ["pg_catalog"]):
            return None
        node = cast.get("arg")
    const = (node or {}).get("A_Const")
    if const is None:
        return None
    if "boolval" in const:
        return bool(const["boolval"].get("boolval"))
    if const.get("isnull"):
        return False
    text = string_const(node)
    return None if text is None else _parse_bool(text)


def _parse_bool(text: str) -> bool | None:
    """PostgreSQL's parse_bool after boolin's trim: a prefix of true/false/yes/no, on/off (two letters at least),
    1 or 0, in any case."""
    value = text.strip(" \t\n\r\f\v").lower()
    if not value:
        return None
    for word, result, least in (("true", True, 1), ("false", False, 1), ("yes", True, 1), ("no", False, 1),
                                ("on", True, 2), ("off", False, 2)):
        if len(value) >= least and word.startswith(value):
            return result
    return {"1": True, "0": False}.get(value)


def set_config_local(call: Call) -> bool:
    """True when set_config()'s is_local argument is a literal true."""
    return _bool_arg(call, 2)


def _check_pinned(name: str, value: str | None) -> None:
    allowed = PINNED_VALUES[name]
    if value is None or _norm(value) not in {_norm(v) for v in allowed}:
        raise fail("session_setting", f'"{name}" may not be changed{"" if value is None else " to " + value}')


# Settings whose value names a schema-qualified object, looked up when set: PostgreSQL answers "permission denied for
# schema" for a schema the role may not use and "invalid value" for one that does not exist.
OBJECT_NAME_SETTINGS: frozenset[str] = frozenset({"default_text_search_config"})
_SCANNER_SPACE = " \t\n\r\f\v"  # PostgreSQL's scanner_isspace


def check_object_name_value(policy: TenantPolicy, name: str, value: str | None) -> None:
    """default_text_search_config = '<schema>.<name>': the schema must be one the tenant may use by its text (a system
    schema, one of its search_path, its own or a shared one), whether the schema exists or not, so the answer never
    tells another tenant's schema from a missing one; a value that is not a literal is refused alike. Where some
    schema is hidden (shared, database strategy), a hidden schema and one of none of the database's schemas found
    when the tenant was prepared are answered by the proxy alike, with PostgreSQL's own answer for a missing one
    (`value_as_missing`): the value never reaches the server, which would keep it (a view, a DEFAULT, a prepared
    statement, a cursor) and print or evaluate it later (red team 9a5 F1, F4, F7, F8, F9, F10, F14)."""
    if policy.strategy == "database" and not policy.hidden_schemas:
        return  # every schema of the database is the tenant's
    if value is None:
        raise fail("foreign_schema", f'"{name}" can only be set to a literal name')
    parts = qualified_name(value)
    if not parts or len(parts) not in (2, 3):
        return  # no schema, or PostgreSQL refuses the value's syntax before it looks a schema up (alike)
    schema = parts[-2]
    if policy.strategy != "schema" and policy.hidden_schemas and _answered_as_missing(policy, schema):
        raise value_as_missing(name, value)
    usable = {*SYSTEM_SCHEMAS, *policy.search_path, *policy.path, *policy.allowed_schemas}
    if schema not in usable or not usable_schema(policy, schema):
        raise fail("foreign_schema", f'"{name}" may only name an object of your schemas or a system schema, not '
                   f'"{schema}"')


def value_as_missing(name: str, value: str) -> Denied:
    """PostgreSQL's answer to a named setting's value whose schema does not exist (its check hook fails without a
    detail: 22023 invalid value, the value as the server got it), answered when the statement runs."""
    message = f'invalid value for parameter "{name}": "{value}"'
    return Denied(Deny(INVALID_PARAMETER_VALUE, message, "", FOREIGN_SCHEMA, at_run=True))


def qualified_name(value: str) -> list[str] | None:
    """The names of a setting's value as PostgreSQL's stringToQualifiedNameList reads them (SplitIdentifierString
    with a dot: a quoted name as written, quote pairs collapsed; an unquoted one up to a dot or a space, ASCII letters
    downcased; each truncated to 63 bytes); None where it refuses the value (invalid name syntax)."""
    names: list[str] = []
    i, n = 0, len(value)
    while i < n and value[i] in _SCANNER_SPACE:
        i += 1
    if i == n:
        return None
    while True:
        if value[i] == '"':
            out: list[str] = []
            j = i + 1
            while True:
                k = value.find('"', j)
                if k < 0:
                    return None
                if value[k + 1 : k + 2] == '"':
                    out.append(value[j : k + 1])
                    j = k + 2
                    continue
                out.append(value[j:k])
                i = k + 1
                break
            found = "".join(out)
        else:
            j = i
            while i < n and value[i] != "." and value[i] not in _SCANNER_SPACE:
                i += 1
            if i == j:
                return None
            found = downcase_identifier(value[j:i])
        while i < n and value[i] in _SCANNER_SPACE:
            i += 1
        names.append(truncate_identifier(found))
        if i == n:
            return names
        if value[i] != ".":
            return None
        i += 1
        while i < n and value[i] in _SCANNER_SPACE:
            i += 1
        if i == n:
            return None


def _answered_as_missing(policy: TenantPolicy, schema: str) -> bool:
    """Where some schema is hidden: a hidden schema, and a schema of none of the database's schemas found when the
    tenant was prepared nor the tenant's search_path (which PostgreSQL would answer 22023 invalid value: a missing
    one). Names of PostgreSQL's own prefix stay refused (another session's pg_temp_N, pg_toast), existing or not."""
    return hiding.unseen(policy, schema)  # (as a qualifier is: renamed if hidden, guarded alike, red team 9a6 G3)


def check_set(policy: TenantPolicy, body: Node) -> frozenset[str]:
    """Decide a VariableSetStmt (SET / SET LOCAL / RESET / SET ... TO DEFAULT); returns effects."""
    kind = body.get("kind", "")
    if kind == "VAR_RESET_ALL":
        return frozenset({REAPPLY_CONTEXT})
    if kind == "VAR_SET_MULTI":  # SET TRANSACTION ..., SET SESSION CHARACTERISTICS ..., TRANSACTION SNAPSHOT
        if body.get("name", "").upper() == "TRANSACTION SNAPSHOT":
            check_snapshot_sharing(policy, "SET TRANSACTION SNAPSHOT")
        return frozenset()
    name = _check_name(policy, body.get("name", ""))
    args = body.get("args") or []
    if name in OBJECT_NAME_SETTINGS and kind == "VAR_SET_VALUE":
        check_object_name_value(policy, name, const_text(args[0]) if len(args) == 1 else None)
    resources.check_set(policy, name, body, const_text(args[0]) if len(args) == 1 else None)
    if name in PINNED_VALUES:
        if kind in ("VAR_RESET", "VAR_SET_DEFAULT", "VAR_SET_CURRENT") and PINNED_VALUES[name]:
            return frozenset()  # back to the connection's value, which the proxy pins at startup
        _check_pinned(name, const_text(args[0]) if len(args) == 1 else None)
    return frozenset()


def row_security_off(policy: TenantPolicy, value: str | None) -> bool:
    """Whether row_security = `value` must reach PostgreSQL as on: in the shared strategy, where the proxy filters
    every read of a tenant-scoped table to the tenant's rows, which are all the rows the tenant has. pg_dump sets
    row_security off (unless --enable-row-security) so that a table is dumped whole or not at all; PostgreSQL
    would refuse every forced-RLS table, the proxy's filter already gives the tenant the whole table it can see."""
    return policy.strategy == "shared" and value is not None and _norm(value) in ("off", "false", "no", "0")


def check_show(policy: TenantPolicy, body: Node) -> None:
    """Decide SHOW: everything except reserved settings other than the tenant's own context."""
    name = body.get("name", "").lower()
    if policy.is_reserved_setting(name) and name != policy.tenant_setting.lower():
        raise fail("reserved_setting", f'setting "{name}" is reserved for the proxy')


def _arg(call: Call, index: int) -> Node | None:
    """A positional argument without its casts, None when there is none. A cast that may change a literal's text
    (`'…'::varchar(13)`, `::name`, `::bpchar`: cut or trimmed) is kept, so the argument is no literal: the setting's
    name or value the proxy checks is the one the server gets."""
    if index >= len(call.args):
        return None
    node = call.args[index]
    while node and "TypeCast" in node and _keeps_text(node["TypeCast"].get("typeName") or {}):
        node = node["TypeCast"].get("arg")
    return node


_TEXT_TYPES = frozenset({("text",), ("pg_catalog", "text"), ("varchar",), ("pg_catalog", "varchar")})


def _keeps_text(type_name: Node) -> bool:
    """Whether a cast to `type_name` gives a string literal's text unchanged (text, varchar without a length)."""
    names = tuple(n.get("String", {}).get("sval") for n in type_name.get("names") or ())
    return (names in _TEXT_TYPES and not type_name.get("typmods") and not type_name.get("arrayBounds")
            and not type_name.get("setof") and not type_name.get("pct_type"))


def literal_arg(call: Call, index: int) -> str | None:
    return string_const(_arg(call, index))


def check_snapshot_sharing(policy: TenantPolicy, what: str) -> None:
    """Exported snapshots (pg_dump -j, --snapshot) are the database's: outside a database of the tenant's own
    (`owns_database`) other tenants' sessions share it, and a snapshot id names one of their transactions."""
    if not policy.owns_database:
        raise fail("snapshot_sharing", f"{what} is not available in this strategy")


def check_function(policy: TenantPolicy, call: Call, body: Node | None = None) -> None:
    """Extra rules for set_config(), current_setting(), pg_notify() and pg_export_snapshot(); `body` is the
    statement's SelectStmt."""
    name = call.names[-1]
    if name == "pg_export_snapshot":
        check_snapshot_sharing(policy, "pg_export_snapshot()")
        if not _alone(body, call):
            raise fail("snapshot_export_once", "pg_export_snapshot() is allowed only as SELECT "
                       "pg_catalog.pg_export_snapshot(), alone (once per transaction)")
    if name == "pg_show_all_settings" and policy.strategy == "shared":  # pg_settings' rows, unfiltered
        raise fail("function_not_allowed", "pg_show_all_settings() is not allowed in this strategy; read pg_settings")
    if name == "pg_notify" and not policy.owns_database:  # channels shared with other tenants' sessions
        raise fail("notify_not_allowed", "pg_notify() is not allowed in this strategy")
    if name not in ("set_config", "current_setting"):
        return
    if call.named:
        raise fail("reserved_setting", f"{name}() must be called with positional arguments")
    setting = literal_arg(call, 0)
    if setting is None and name == "current_setting":
        return  # read at run time through a guard that turns a reserved name into no name (guards.setting_name)
    if setting is None and body is not None:
        setting = pg_settings_row(body, call)  # then decided, rewritten and tracked as the literal (engine)
    if setting is None:
        raise fail("reserved_setting", f"{name}() needs a literal setting name")
    if name == "current_setting":
        check_show(policy, {"name": setting})
        return
    low = _check_name(policy, setting)
    if low == "search_path" and not runs_once(body, call):
        raise fail("search_path_set_config", "set_config() of search_path is allowed only as a target of a SELECT "
                   "with no FROM, WHERE, GROUP BY, HAVING, LIMIT or set operation, where PostgreSQL runs it once")
    if low == "search_path" and len(call.args) > 2 and literal_bool(call.args[2]) is None:
        raise fail("search_path_set_config", "set_config() of search_path needs a literal is_local (true or false): "
                   "PostgreSQL may take an expression or a parameter for true, a change the proxy would not follow")
    if low in PINNED_VALUES:
        _check_pinned(low, literal_arg(call, 1))
    if low in OBJECT_NAME_SETTINGS:
        check_object_name_value(policy, low, literal_arg(call, 1))
    if low in resources.CAPPED or low in resources.OPERATOR_ONLY:
        resources.check_value(policy, low, const_text(_arg(call, 1)))


def reads_search_path(call: Call) -> str | None:
    """Whether a call may read search_path, which PostgreSQL has without the entries the proxy kept from it (another
    tenant's schema: a missing one stays, the difference would tell them apart): "literal" for
    `current_setting('search_path' [, missing_ok])`, "computed" for current_setting of a name known at run time,
    else None. Its result is decoded at run time (rewrite.call_result, client_path_sql)."""
    if call.names[-1] != "current_setting" or call.names[:-1] not in ((), ("pg_catalog",)) or call.named:
        return None
    if not call.args or (call.args[0].get("A_Const") or {}).get("isnull"):
        return None
    name = literal_arg(call, 0)
    if name is None:
        return "computed"
    return "literal" if name.lower() == "search_path" else None


_ONCE_CLAUSES = frozenset({"targetList", "limitOption", "op"})


def runs_once(body: Node | None, call: Call) -> bool:
    """True when PostgreSQL evaluates `call` exactly once as the statement runs: a target (under casts) of a top-level
    SELECT (`body`; None for another statement: EXPLAIN, PREPARE, a view…) with no FROM, WHERE, GROUP BY, HAVING,
    LIMIT/OFFSET, ORDER BY, DISTINCT, CTE or set operation; what psql, pgJDBC and SQLAlchemy send. Elsewhere it may
    not run (`WHERE false`, `LIMIT 0`, an empty FROM, a CASE branch, a subquery), and the proxy would track a
    search_path PostgreSQL does not have (red team 9a8 N6). Every target must be row-level too: a set-returning call
    anywhere in the target list (`SELECT generate_series(1, 2), set_config(…)`, or in its arguments) makes
    PostgreSQL run it once per row, so an Execute with a row limit, a followed `SET`, and the suspended portal's next
    Execute would move the path unseen (red team 20a F3); an aggregate, a window or a function the proxy does not
    know may do the same."""
    if body is None or set(body) - _ONCE_CLAUSES or body.get("op", "SETOP_NONE") != "SETOP_NONE":
        return False
    if body.get("limitOption", "LIMIT_OPTION_DEFAULT") != "LIMIT_OPTION_DEFAULT" or call.holder is None:
        return False
    from proxy.policy.guarding import row_level  # guarding's imports reach this module

    if not all(row_level(target) for target in body.get("targetList") or ()):
        return False
    node = call.holder[call.key]
    for target in body.get("targetList") or ():
        value = target.get("ResTarget", {}).get("val")
        while value is not None and "TypeCast" in value:
            value = value["TypeCast"].get("arg")
        if value is node:
            return True
    return False


def _alone(body: Node | None, call: Call) -> bool:
    """True for `SELECT <call>` with nothing else (pg_dump's `SELECT pg_catalog.pg_export_snapshot()`)."""
    if body is None or set(body) - {"targetList", "limitOption", "op"} or len(body.get("targetList") or ()) != 1:
        return False
    target = body["targetList"][0].get("ResTarget", {})
    return call.holder is not None and target.get("val") is call.holder[call.key]


_LOOKUP_CLAUSES = frozenset({"targetList", "fromClause", "whereClause", "limitOption", "op"})


def pg_settings_row(body: Node, call: Call) -> str | None:
    """The setting of `SELECT set_config(name, <value>, <is_local>) FROM pg_settings WHERE name = '<setting>'`,
    pg_dump's way to set a setting only where the server has it (restrict_nonsystem_relation_kind): when `call` is
    that statement's only output and its first argument the `name` column of the one row, that row's name."""
    targets = body.get("targetList") or ()
    items = body.get("fromClause") or ()
    if set(body) - _LOOKUP_CLAUSES or len(targets) != 1 or len(items) != 1 or not call.args:
        return None
    if call.holder is None or targets[0].get("ResTarget", {}).get("val") is not call.holder[call.key]:
        return None
    rv = items[0].get("RangeVar", {})
    if rv.get("relname") != "pg_settings" or rv.get("schemaname") not in (None, "pg_catalog") or "alias" in rv:
        return None
    where = body.get("whereClause", {}).get("A_Expr", {})
    if where.get("kind") != "AEXPR_OP" or names_of(where.get("name")) != ("=",):
        return None
    if not (_is_name_column(call.args[0]) and _is_name_column(where.get("lexpr", {}))):
        return None
    setting = string_const(where.get("rexpr"))
    # pg_settings names are lower case: another spelling matches no row and changes nothing, which the proxy
    # would track as a change (refused instead, as a name it cannot know).
    return setting if setting is not None and setting == setting.lower() else None


def _is_name_column(node: Node) -> bool:
    fields = node.get("ColumnRef", {}).get("fields") or ()
    return [f.get("String", {}).get("sval") for f in fields] in (["name"], ["pg_settings", "name"])


# Settings whose SET cannot be replayed on another server connection with the same effect: setting the random seed
# restarts random()'s sequence there (the session pins instead).
NOT_REPLAYABLE: frozenset[str] = frozenset({"seed"})
# SET SESSION CHARACTERISTICS AS TRANSACTION ...: the setting each of its options sets.
_CHARACTERISTICS = {"transaction_isolation": "default_transaction_isolation",
                    "transaction_read_only": "default_transaction_read_only",
                    "transaction_deferrable": "default_transaction_deferrable"}


def quote_literal(value: str) -> str:
    """`value` as an SQL string literal (standard_conforming_strings is on: quotes doubled, backslashes kept)."""
    return "'" + value.replace("'", "''") + "'"


def set_config_statement(name: str, value: str) -> str:
    """The statement that sets `name` to `value` for the session, read as a startup parameter would be."""
    return f"SELECT pg_catalog.set_config({quote_literal(name)}, {quote_literal(value)}, false)"


def session_setting(body: Node, index: int, text: str, path: Change | None, row_security_on: bool) -> list[Change]:
    """What a session-level SET / RESET (`body`, statement `index` whose gated text is `text`) leaves on the server:
    SETTING changes carrying the statement that replays it elsewhere (`path`: the search_path change, whose gated
    form is written from what PostgreSQL got; `row_security_on`: the statement reaches PostgreSQL as on), or a PIN
    when it cannot be replayed. SET LOCAL and SET TRANSACTION end with their transaction: nothing."""
    kind = body.get("kind", "")
    if body.get("is_local") or kind == "VAR_RESET_ALL":  # (RESET ALL: context.statement_changes)
        return []
    name = body.get("name", "").lower()
    if kind == "VAR_SET_MULTI":
        if name != "session characteristics":
            return []  # SET TRANSACTION ...: this transaction only
        out = []
        for item in body.get("args") or ():
            option = item.get("DefElem", {})
            setting = _CHARACTERISTICS.get(option.get("defname", ""))
            value = const_text(option.get("arg") or {})
            if setting is None or value is None:
                return [Change(index, PIN, "setting")]
            if setting != "default_transaction_isolation":
                value = "on" if value.lower() in ("1", "true", "on") else "off"
            out.append(Change(index, SETTING, setting, shown=f"SET {setting} TO {quote_literal(value)}"))
        return out
    if kind == "VAR_SET_CURRENT" or name in NOT_REPLAYABLE:
        return [Change(index, PIN, "setting")]
    if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return [Change(index, SETTING, name)]
    if name == "search_path" and path is not None:
        marked = [] if path.shown is None else [quote_literal(marked_entry(path.shown))]
        entries = ", ".join([*marked, *(identifier(e) for e in path.path or ())]) or "''"
        return [Change(index, SETTING, name, shown=f"SET search_path TO {entries}")]
    if row_security_on:
        return [Change(index, SETTING, name, shown="SET row_security TO on")]
    return [Change(index, SETTING, name, shown=text)]


def set_config_change(call: Call, setting: str, index: int, literal: str | None) -> Change | None:
    """What set_config(`setting`, value, is_local) leaves on the server (`literal`: the value PostgreSQL gets
    instead of the written one): a SETTING replayed as a set_config() call with the literal value, a PIN when the
    value or is_local is not a literal, None for is_local true."""
    local = literal_arg(call, 2) if len(call.args) > 2 else None
    if len(call.args) > 2 and not _literal_bool(call.args[2]):
        return Change(index, PIN, "setting")
    if (local is not None and _norm(local) in ("on", "true", "yes", "1", "t", "y")) or _bool_arg(call, 2):
        return None
    value = literal if literal is not None else literal_arg(call, 1)
    if value is None or setting in NOT_REPLAYABLE:
        return Change(index, PIN, "setting")
    return Change(index, SETTING, setting, shown=set_config_statement(setting, value))


def _literal_bool(node: Node) -> bool:
    """True when `node` is a constant (a boolean or a string, under casts)."""
    while node and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    const = (node or {}).get("A_Const", {})
    return "boolval" in const or "sval" in const


# guc.c's time_unit_conversion_table for a setting in ms, largest unit first: (unit, ms). A fraction of a unit is
# rounded to a whole number of the next one down (convert_to_base_unit), "us" to itself.
_TIME_UNITS = (("d", 86_400_000.0), ("h", 3_600_000.0), ("min", 60_000.0), ("s", 1000.0), ("ms", 1.0),
               ("us", 1.0 / 1000))
_INT_PREFIX = re.compile(r"\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_FLOAT_PREFIX = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INT_MAX = 2**31 - 1


def setting_milliseconds(text: str) -> int | None:
    """A time setting in ms ("5000", "5s", "1.5 min", "1e-3") as PostgreSQL stores it (guc.c parse_int): the number
    read as strtol(base 0) reads it (hex, octal), or as a float if it goes on with '.' or 'e'; a fraction of a unit
    rounded to a whole number of the next smaller unit (convert_to_base_unit: '0.00001 min' is 0 s), then to whole ms,
    half to even (rint): "0.4", "100us" or "0.0005 h" is 0, i.e. no timeout. None when PostgreSQL would refuse it
    (unreadable, unknown or misspelt unit, out of int range)."""
    value = text.strip().strip("'")
    match = _INT_PREFIX.match(value)
    if match is None or value[match.end():match.end() + 1] in (".", "e", "E"):
        match = _FLOAT_PREFIX.match(value)
        if match is None:
            return None
        number = float(match.group(0))
    else:
        digits = match.group(0).strip()
        sign = -1 if digits.startswith("-") else 1
        digits = digits.lstrip("+-")
        whole = sign * int(digits, 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") else 10)
        if abs(whole) > 1e18:
            return None
        number = float(whole)
    unit = value[match.end():].strip()
    ms = number
    if unit:
        names = [name for name, _ in _TIME_UNITS]
        if unit not in names:  # (case-sensitive, as strcmp)
            return None
        i = names.index(unit)
        ms = number * _TIME_UNITS[i][1]
        if i + 1 < len(_TIME_UNITS):
            step = _TIME_UNITS[i + 1][1]
            ms = round(ms / step) * step
    if ms != ms or abs(ms) > 1e18:
        return None
    ms = round(ms)
    return ms if -_INT_MAX - 1 <= ms <= _INT_MAX else None
