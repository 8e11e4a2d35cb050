"""nextval() advances a sequence: a write, refused for a read-only tenant but on the session's own temporary ones."""

from __future__ import annotations

from proxy.policy.model import TenantPolicy
from proxy.policy.rules import fail
from proxy.policy.sqltext import object_name_parts
from proxy.policy.tree import Node, string_const
from proxy.policy.walk import Analysis

_SYSTEM = ("pg_catalog",)


def check(policy: TenantPolicy, analysis: Analysis) -> None:
    """Refuse a read-only tenant's nextval() of anything but a sequence named `pg_temp.<name>` in a string literal
    (red team 9a7 H7: a tenant without `allow_writes` consumed, and could exhaust, a shared sequence other tenants'
    inserts take their keys from). setval() is not on the allow-list at all (`function_not_allowed`); currval(),
    lastval() and pg_sequence_last_value() only read. A parameter, a column or a computed name cannot be checked
    before it runs, nor an OID: refused alike."""
    if policy.allow_writes:
        return
    for call in analysis.calls:
        names = call.names
        if names[-1] != "nextval" or (len(names) == 2 and names[0] not in _SYSTEM) or len(names) > 2:
            continue
        if len(call.args) != 1 or not _own_temporary(call.args[0]):
            raise fail("read_only", "nextval() advances a sequence, a write this read-only role may make only to "
                       "the session's own temporary sequences, named pg_temp.<sequence> in a string literal")


def _own_temporary(arg: Node) -> bool:
    """Whether `arg` is a string literal (under casts: `'s'::regclass`, `'s'::text`) naming `pg_temp.<name>`."""
    while arg and "TypeCast" in arg:
        arg = arg["TypeCast"].get("arg") or {}
    text = string_const(arg)
    parts = object_name_parts(text) if text is not None else None
    return parts is not None and len(parts) == 2 and parts[0] == "pg_temp" and parts[1] != ""
