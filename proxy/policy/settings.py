"""SET / RESET / SHOW / set_config() / current_setting() rules that keep the tenant context unforgeable."""

from __future__ import annotations

from proxy.policy.model import REAPPLY_CONTEXT, TenantPolicy
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


def _check_search_path(policy: TenantPolicy, schemas: list[str] | None, how: str) -> None:
    if policy.strategy == "database":
        return
    if schemas is None:
        raise fail("search_path_pinned", f"search_path may not be {how}")
    if policy.strategy == "shared":
        if tuple(schemas) != policy.search_path:
            raise fail(
                "search_path_pinned",
                "search_path is pinned to " + ", ".join(policy.search_path) + f"; it may not be {how}",
            )
        return
    outside = [s for s in schemas if s not in policy.allowed_schemas]
    if outside:
        raise fail("foreign_schema", "search_path may only contain your schemas; not " + ", ".join(outside))


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
    if name == "search_path":
        if kind == "VAR_SET_CURRENT":
            return frozenset()
        if kind != "VAR_SET_VALUE":
            _check_search_path(policy, None, "reset")
        values = [const_text(a) for a in args]
        _check_search_path(policy, None if None in values else [v for v in values if v is not None], "changed")
    elif name in PINNED_VALUES:
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
    value = _literal_arg(call, 1)
    if low == "search_path":
        _check_search_path(policy, None if value is None else split_identifier_list(value), "changed")
    elif low in PINNED_VALUES:
        _check_pinned(low, value)
