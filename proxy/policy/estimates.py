"""An agent's admission EXPLAIN in the shared strategy: every tenant-column reference reads as the tenant's value."""

from __future__ import annotations

from proxy.policy.model import TenantPolicy
from proxy.policy.sqltext import DOT, Edit, TextError, apply_edits, index_at, quote_literal, tokens
from proxy.policy.tree import Node, Statement, walk_dicts

# Why: the planner estimates a predicate on the tenant column from that column's statistics over every tenant's
# rows, and multiplies it with the proxy's own `tenant = '<the tenant>'` as an independent clause, so an agent's
# `tenant_id >= 'x'` times a factor of its choosing (the admit/refuse bit at the threshold) measured the other
# tenants' ids and row shares (red team 6 F7). The rows the tenant sees all hold its own value: in the EXPLAIN only
# (the statement that runs is unchanged), each reference the client wrote to a scoped table's tenant column becomes
# `(CASE WHEN false THEN <the reference> ELSE '<the tenant>' END)`, which the planner folds to a constant of the
# column's type before it estimates anything, so `'acme' >= 'x'` is true or false and no estimate reads the other
# tenants' values of that column. The proxy's own filter keeps the column: the scan is still estimated as the
# tenant's share of the table (what it can count itself), never the table's size.


def explain_text(policy: TenantPolicy, data: bytes, statements: list[Statement], edits: list[Edit]) -> str | None:
    """The text to EXPLAIN for admission (the rewrite's `edits` applied to `data`, and the tenant-column references
    of the client's statements read as the tenant's value), or None when no reference needs it. Raises TextError
    when a reference cannot be placed in the text."""
    value = quote_literal(policy.tenant_value or "")
    extra: list[Edit] = []
    for stmt in statements:
        for start, end in _references(policy, data, stmt):
            # Innermost around the reference: the opening after any other insertion there, the closing before.
            extra.append(Edit(start, start, "(CASE WHEN false THEN ", 1 << 30))
            extra.append(Edit(end, end, f" ELSE {value} END)", -1))
    if not extra:
        return None
    return apply_edits(data, [*edits, *extra])


def _references(policy: TenantPolicy, data: bytes, stmt: Statement) -> list[tuple[int, int]]:
    """Byte spans of the ColumnRefs in `stmt` that may name a scoped table's tenant column: qualified by the name or
    alias of a scoped table the statement reads, or unqualified with that table's tenant column name (a reference
    taken for one where it is another table's column changes an estimate only, never what runs)."""
    columns: dict[str, set[str]] = {}  # name or alias -> tenant columns
    for table, column in _scoped_tables(policy, stmt.node):
        columns.setdefault(table, set()).add(column)
    if not columns:
        return []
    unqualified = set().union(*columns.values())
    spans = []
    toks = None
    for node in walk_dicts(stmt.node):
        ref = node.get("ColumnRef")
        if ref is None:
            continue
        names = [f.get("String", {}).get("sval") for f in ref.get("fields", ())]
        if not names or any(n is None for n in names):
            continue  # (a `t.*`)
        column = names[-1]
        if column not in (columns.get(names[-2], ()) if len(names) > 1 else unqualified):
            continue
        if toks is None:
            toks = tokens(data, stmt.start, stmt.end)
        first = index_at(toks, ref["location"])
        last = first + 2 * (len(names) - 1)  # name(.name)*
        if last >= len(toks) or any(toks[i].name != DOT for i in range(first + 1, last, 2)):
            raise TextError("a column reference is not a dotted name")
        spans.append((toks[first].start, toks[last].end))
    return spans


def _scoped_tables(policy: TenantPolicy, node: Node) -> list[tuple[str, str]]:
    """(name or alias, tenant column) of every RangeVar in `node` naming a scoped table (in any schema)."""
    by_name: dict[str, set[str]] = {}
    for (schema, table), column in policy.scoped_tables.items():
        by_name.setdefault(table, set()).add(column)
        by_name.setdefault(f"{schema}.{table}", set()).add(column)
    out = []
    for item in walk_dicts(node):
        rv = item.get("RangeVar")
        if rv is None:
            continue
        table = rv.get("relname", "")
        schema = rv.get("schemaname")
        found = by_name.get(f"{schema}.{table}" if schema else table, ())
        alias = (rv.get("alias") or {}).get("aliasname") or table
        out += [(alias, c) for c in found]
    return out
