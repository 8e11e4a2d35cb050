"""SET / RESET / SHOW / set_config() / current_setting() rules that keep the tenant context unforgeable."""

from __future__ import annotations

from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

from proxy.policy.model import REAPPLY_CONTEXT, SET_PATH, Change, TenantPolicy
from proxy.policy.rules import fail
from proxy.policy.sqltext import split_identifier_list
from proxy.policy.tree import Node, const_text, string_const
from proxy.policy.walk import Call

ROLE_SETTINGS: frozenset[str] = frozenset({"role", "session_authorization"})

# Settings whose value the proxy relies on: the SQL text the proxy parses must mean the same to the server
# (encoding, string escapes), and row security must stay enforced. Allowed values, or empty = never changed.
PINNED_VALUES: dict[str, frozenset[str]] = {
    "client_encoding": frozenset({"utf8", "unicode"}),
    "standard_conforming_strings": frozenset({"on", "true", "yes", "1"}),
    "row_security": frozenset({"on", "true", "yes", "1"}),
    "backslash_quote": frozenset(),
    "session_replication_role": frozenset(),
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
    strategy), any schema but other tenants' (shared strategy), anything (database strategy). PostgreSQL itself
    skips entries that do not exist or that the role may not use; the proxy skips these the same way."""
    if policy.strategy == "database" or entry in ("pg_catalog", "pg_temp"):
        return True
    if policy.strategy == "schema":
        return entry in policy.allowed_schemas
    # "$user" names the backend role's schema, never the client's; pg_temp_N / pg_toast* are other sessions' or
    # internal schemas.
    return entry != "$user" and not entry.startswith("pg_") and entry not in policy.foreign_schemas


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
    kept = _usable(policy, names)
    path = tuple(names[i] for i in kept)
    if len(kept) == len(names):
        return Change(index, SET_PATH, path=path, flag=local), None
    shown = ", ".join(identifier(n) for n in names)
    return Change(index, SET_PATH, path=path, shown=shown, flag=local), kept


def set_config_path(policy: TenantPolicy, call: Call, index: int) -> tuple[Change, str | None]:
    """set_config('search_path', '<literal>', is_local): its change, and the literal PostgreSQL must get
    instead (None when every entry may stay)."""
    value = _literal_arg(call, 1)
    entries = None if value is None else ([] if not value.strip() else split_identifier_list(value))
    if entries is None:
        raise fail("search_path_pinned", "set_config() can only set search_path to a literal list of schemas")
    local = _bool_arg(call, 2)
    kept = [entries[i] for i in _usable(policy, entries)]
    if len(kept) == len(entries):
        return Change(index, SET_PATH, path=tuple(entries), flag=local), None
    return Change(index, SET_PATH, path=tuple(kept), shown=value, flag=local), ", ".join(identifier(e) for e in kept)


def is_set_config_path(call: Call) -> bool:
    """True for set_config('search_path', ...)."""
    if call.names[-1] != "set_config" or call.names[:-1] not in ((), ("pg_catalog",)) or call.named:
        return False
    name = _literal_arg(call, 0)
    return name is not None and name.lower() == "search_path"


def _bool_arg(call: Call, index: int) -> bool:
    """A literal boolean argument (true, 'on', …); anything else counts as false."""
    if index >= len(call.args):
        return False
    node = call.args[index]
    while node and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    const = (node or {}).get("A_Const", {})
    if "boolval" in const:
        return bool(const["boolval"].get("boolval"))
    text = string_const(node)
    return text is not None and _norm(text) in ("on", "true", "yes", "1", "t", "y")


def _check_pinned(name: str, value: str | None) -> None:
    allowed = PINNED_VALUES[name]
    if value is None or _norm(value) not in {_norm(v) for v in allowed}:
        raise fail("session_setting", f'"{name}" may not be changed{"" if value is None else " to " + value}')


def check_set(policy: TenantPolicy, body: Node) -> frozenset[str]:
    """Decide a VariableSetStmt (SET / SET LOCAL / RESET / SET ... TO DEFAULT); returns effects."""
    kind = body.get("kind", "")
    if kind == "VAR_RESET_ALL":
        return frozenset({REAPPLY_CONTEXT})
    if kind == "VAR_SET_MULTI":  # SET TRANSACTION ..., SET SESSION CHARACTERISTICS ..., TRANSACTION SNAPSHOT
        return frozenset()
    name = _check_name(policy, body.get("name", ""))
    args = body.get("args") or []
    if name in PINNED_VALUES:
        if kind in ("VAR_RESET", "VAR_SET_DEFAULT", "VAR_SET_CURRENT") and PINNED_VALUES[name]:
            return frozenset()  # back to the connection's value, which the proxy pins at startup
        _check_pinned(name, const_text(args[0]) if len(args) == 1 else None)
    return frozenset()


def check_show(policy: TenantPolicy, body: Node) -> None:
    """Decide SHOW: everything except reserved settings other than the tenant's own context."""
    name = body.get("name", "").lower()
    if policy.is_reserved_setting(name) and name != policy.tenant_setting.lower():
        raise fail("reserved_setting", f'setting "{name}" is reserved for the proxy')


def _literal_arg(call: Call, index: int) -> str | None:
    if index >= len(call.args):
        return None
    node = call.args[index]
    while node and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return string_const(node)


def check_function(policy: TenantPolicy, call: Call) -> None:
    """Extra rules for set_config(), current_setting() and pg_notify()."""
    name = call.names[-1]
    if name == "pg_notify" and policy.strategy != "database":
        raise fail("notify_not_allowed", "pg_notify() is not allowed in this strategy")
    if name not in ("set_config", "current_setting"):
        return
    if call.named:
        raise fail("reserved_setting", f"{name}() must be called with positional arguments")
    setting = _literal_arg(call, 0)
    if setting is None and name == "current_setting":
        return  # read at run time through a guard that turns a reserved name into no name (guards.setting_name)
    if setting is None:
        raise fail("reserved_setting", f"{name}() needs a literal setting name")
    if name == "current_setting":
        check_show(policy, {"name": setting})
        return
    low = _check_name(policy, setting)
    if low in PINNED_VALUES:
        _check_pinned(low, _literal_arg(call, 1))
