"""A database tenant sharing its database reads none of the shared tenants' sequences' positions (review 17 F4)."""

from __future__ import annotations

from proxy.policy.model import TenantPolicy
from proxy.policy.rules import fail
from proxy.policy.sqltext import object_name_parts
from proxy.policy.tree import string_const
from proxy.policy.walk import Analysis

# The functions that read (or advance) the sequence their first argument names: its last value counts the inserts
# of the tenant whose table takes its keys from it.
SEQUENCE_READERS = frozenset({"nextval", "currval", "setval", "pg_sequence_last_value", "pg_sequence_parameters",
                              "pg_get_sequence_data"})


def resolve(policy: TenantPolicy, schema: str | None, name: str) -> str | None:
    """Which of the shared tenants' relations (`TenantPolicy.others_tables`, `others_sequences`) a relation name
    reaches: "table", "parent" (one of `others_parents`: an inheritance parent without the tenant column),
    "sequence" or None. Qualified, that one; unqualified, the first schema of the effective
    search_path (pg_catalog first unless placed) holding the name decides, as in PostgreSQL: one of theirs, or the
    tenant's own relation of that name (`others_shadows`) or its temporary relation, which it then reaches instead."""
    if schema is not None:
        return _kind(policy, schema, name)
    temp = name in policy.temp_tables or name in policy.temp_views
    if temp and policy.temp_first:
        return None
    path = policy.path if "pg_catalog" in policy.path else ("pg_catalog", *policy.path)
    for entry in path:
        if entry in policy.hidden_schemas:  # (PostgreSQL never gets one on the path)
            continue
        if entry == "pg_temp" and temp:
            return None
        kind = _kind(policy, entry, name)
        if kind is not None:
            return kind
        if (entry, name) in policy.others_shadows:
            return None
    return None


def _kind(policy: TenantPolicy, schema: str, name: str) -> str | None:
    if (schema, name) in policy.others_tables:
        return "parent" if (schema, name) in policy.others_parents else "table"
    if (schema, name) in policy.others_sequences:
        return "sequence"
    return None


def check(policy: TenantPolicy, analysis: Analysis) -> None:
    """Refuse a call of a sequence function (`SEQUENCE_READERS`) whose argument names one of the shared tenants'
    sequences, as a string literal (under casts: `'s'::regclass`); a parameter, a column, an OID or a computed name
    cannot be checked before it runs: refused alike where the database holds such sequences."""
    if not policy.others_sequences:
        return
    for call in analysis.calls:
        names = call.names
        if names[-1] not in SEQUENCE_READERS or (len(names) == 2 and names[0] != "pg_catalog") or not call.args:
            continue
        arg = call.args[0]
        while arg and "TypeCast" in arg:
            arg = arg["TypeCast"].get("arg") or {}
        text = string_const(arg)
        parts = object_name_parts(text) if text is not None else None
        if parts is None or len(parts) > 2 or "" in parts:
            raise fail("others_sequence", f"{names[-1]}() of a sequence named by other than a string literal cannot "
                       "be checked: the database holds other tenants' sequences")
        kind = resolve(policy, parts[0] if len(parts) == 2 else None, parts[-1])
        if kind is not None:
            raise fail("others_sequence", f'{names[-1]}() of "{".".join(parts)}": a sequence of other tenants')


def reference_rule(kind: str) -> tuple[str, str]:
    """The rule and the message's ending of a reference to one of the shared tenants' relations of `kind`."""
    if kind == "sequence":
        return "others_sequence", "is a sequence of other tenants (its position counts their inserts)"
    if kind == "parent":
        return "others_table", ("holds other tenants' rows: an inheritance parent of their table, read without ONLY "
                                "it returns its children's rows (name it ONLY to read or change its own rows)")
    return "others_table", "holds other tenants' rows only"

