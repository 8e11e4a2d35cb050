"""statement_timeout under a limit: what PostgreSQL gets for a client's SET [LOCAL] or set_config() of it."""

from __future__ import annotations

from proxy.policy.model import TenantPolicy
from proxy.policy.rules import fail
from proxy.policy.settings import setting_milliseconds
from proxy.policy.tree import Node, const_text

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
    the limit itself (the pool starts the session's servers with it)."""
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
