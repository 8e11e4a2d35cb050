"""statement_timeout under a limit: what PostgreSQL gets for a client's SET or set_config() of it; what SHOW prints."""

from __future__ import annotations

from proxy.policy.model import SET_TIMEOUT, Change, SessionContext, TenantPolicy
from proxy.policy.rules import fail
from proxy.policy.settings import quote_literal, set_config_local, setting_milliseconds
from proxy.policy.tree import Node, const_text, string_const
from proxy.policy.walk import Call

NAME = "statement_timeout"
RULE = "statement_timeout_clamped"  # rewrite rule: a value above the limit (or 0) reaches PostgreSQL as the limit


def limit_value(limit_ms: int) -> str:
    """The limit as the value PostgreSQL gets (the startup clamp's spelling, limits.clamped_timeout)."""
    return f"{limit_ms}ms"


def clamped(policy: TenantPolicy, value: str | None) -> str | None:
    """The value PostgreSQL gets instead of the client's `value` (a literal, None: not one) for statement_timeout
    under the policy's limit: the limit for 0 (no timeout) or anything above it; None to send the client's own
    (no limit, a value within it, or a negative one, which PostgreSQL refuses). A value the proxy cannot read as
    PostgreSQL would is refused: it could mean anything (fail closed)."""
    limit = policy.statement_timeout_ms
    if not limit:
        return None
    ms = setting_milliseconds(value) if value is not None else None
    if ms is None:
        raise fail("statement_timeout_limit", f"statement_timeout can only be set to a literal time under the "
                   f"limit of {limit} ms" + ("" if value is None else f", not {value!r}"))
    if 0 < ms <= limit or ms < 0:
        return None
    return limit_value(limit)


def set_value(policy: TenantPolicy, body: Node) -> tuple[Node, str] | None:
    """SET [LOCAL] statement_timeout = <value> (a VariableSetStmt): the argument to replace and the value
    PostgreSQL gets instead, or None. RESET / SET ... TO DEFAULT return to the server connection's startup value,
    the limit itself, or the DBA's own default for the role and database where that is lower (the pool starts the
    session's servers with the lower of the two: proxy/dbadefault.py)."""
    if not policy.statement_timeout_ms or body.get("kind") != "VAR_SET_VALUE":
        return None
    if (body.get("name") or "").lower() != NAME:
        return None
    args = body.get("args") or []
    value = const_text(args[0]) if len(args) == 1 else None
    new = clamped(policy, value)
    return None if new is None else (args[0], new)


def set_statement(value: str) -> str:
    """The session SET replaying a clamped value on another server."""
    return f"SET {NAME} TO '{value}'"


# What the client is shown (SHOW, current_setting(), set_config()'s result, SHOW ALL, pg_settings): its own value,
# as on a direct connection, while PostgreSQL enforces the limit. The limit is the session's default (as a role's
# `ALTER ROLE ... SET statement_timeout` would be: RESET returns to it); a client's SET above it is followed in the
# session's context (SessionContext.timeout: SET, SET LOCAL, RESET, rollbacks), and a read is rewritten to print it
# where PostgreSQL has exactly the limit (a value within the limit reaches PostgreSQL as written, reads as itself).
SHOWN_RULE = "statement_timeout_shown"  # rewrite rule: a read of statement_timeout prints the client's value
_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000))


def show_text(ms: int) -> str:
    """A statement_timeout in ms as SHOW prints it (guc.c: the largest unit that divides it exactly)."""
    if ms == 0:
        return "0"
    for unit, size in _UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def shown_value(value: str | None) -> str | None:
    """The client's literal `value` as SHOW prints it once PostgreSQL has it (None: not readable as a time)."""
    ms = setting_milliseconds(value) if value is not None else None
    return None if ms is None or ms < 0 else show_text(ms)


def set_change(policy: TenantPolicy, body: Node, index: int) -> Change | None:
    """The SET_TIMEOUT change of SET [LOCAL] statement_timeout / RESET / SET ... TO DEFAULT under a limit."""
    if not policy.statement_timeout_ms or (body.get("name") or "").lower() != NAME:
        return None
    kind, local = body.get("kind"), bool(body.get("is_local"))
    if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return Change(index, SET_TIMEOUT, flag=local)
    args = body.get("args") or []
    if kind != "VAR_SET_VALUE" or len(args) != 1:
        return None
    return Change(index, SET_TIMEOUT, shown=shown_value(const_text(args[0])), flag=local)


def set_config_change(call: Call, value: str | None, index: int) -> Change:
    """The SET_TIMEOUT change of set_config('statement_timeout', `value`, is_local) (a literal is_local; else the
    session pins: settings.set_config_change)."""
    return Change(index, SET_TIMEOUT, shown=shown_value(value), flag=set_config_local(call))


def client_shown(policy: TenantPolicy) -> str:
    """What SHOW statement_timeout prints for the client in the policy's session context."""
    return policy.context.effective_timeout() or show_text(policy.statement_timeout_ms)


def read_expression(policy: TenantPolicy, value: str, raw: bool = False) -> str | None:
    """SQL for the client's statement_timeout where PostgreSQL's is the text expression `value` (as SHOW prints it;
    `raw`: in ms, as pg_settings.setting), or None when no read needs rewriting (no limit, or the client's value
    prints as the limit does)."""
    limit = policy.statement_timeout_ms
    if not limit:
        return None
    shown = client_shown(policy)
    if shown == show_text(limit):
        return None
    enforced, client = show_text(limit), shown
    if raw:
        enforced, client = str(limit), str(setting_milliseconds(shown) or 0)
    return f"CASE WHEN {value} = {quote_literal(enforced)} THEN {quote_literal(client)} ELSE {value} END"


def reads_timeout(call: Call) -> bool:
    """current_setting('statement_timeout' [, missing_ok])."""
    if call.names[-1] != "current_setting" or call.names[:-1] not in ((), ("pg_catalog",)) or call.named:
        return False
    name = string_const(call.args[0]) if call.args else None
    return name is not None and name.lower() == NAME


def startup_context(asked: str | None, sent: str) -> SessionContext | None:
    """The context a session starts in when its startup packet asked for statement_timeout `asked` and its servers
    start with `sent` (the limit, when it asked for more or for 0): the client's value as its default (RESET
    returns to it, as to a startup value), None when it got what it asked for or asked for nothing readable."""
    shown = shown_value(asked) if asked is not None and sent != asked else None
    return None if shown is None else SessionContext(timeout_default=shown)
