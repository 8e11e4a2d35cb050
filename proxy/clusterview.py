"""One view of several worker processes (pure): their admin console rows, merged (their metrics: proxy/metrics.py)."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.admin import Rows

# What a worker answers for one console view: (its index, the columns, the rows).
Part = tuple[int, Sequence[str], Rows]

# Per-row views (each worker's rows, with its index); the others are added up per key.
PER_WORKER = frozenset({"clients", "servers", "stats"})
_POOL_KEY = 5  # SHOW POOLS: tenant, backend, database, role, pool_mode, then counts (maxwait_s: the longest)
_TENANT_KEY = 5  # SHOW TENANTS: tenant, strategy, backend, database, backend_role, then state, clients


def merge_rows(view: str, parts: list[Part]) -> tuple[Sequence[str], Rows]:
    """The console's `view` (clients, servers, pools, stats, tenants) over every worker's part."""
    parts = sorted(parts, key=lambda p: p[0])
    columns = next((list(c) for _, c, _ in parts if c), [])
    if view in PER_WORKER:
        return [*columns, "worker"], [(*row, index) for index, _, rows in parts for row in rows]
    merged: dict[tuple[object, ...], list[object]] = {}
    if view == "pools":
        waited = columns.index("maxwait_s")
        for _, _, rows in parts:
            for row in rows:
                key, values = tuple(row[:_POOL_KEY]), list(row[_POOL_KEY:])
                into = merged.setdefault(key, [0] * len(values))
                for i, value in enumerate(values):
                    at = _POOL_KEY + i
                    into[i] = max(into[i], value) if at == waited else into[i] + value  # type: ignore[operator]
    elif view == "tenants":
        for _, _, rows in parts:
            for row in rows:
                key, (state, clients) = tuple(row[:_TENANT_KEY]), row[_TENANT_KEY:]
                into = merged.setdefault(key, ["ready", 0])
                into[0] = "pending" if "pending" in (state, into[0]) else state
                into[1] += clients  # type: ignore[operator]
    else:
        raise ValueError(f"no merge for the view {view!r}")
    return columns, [(*key, *values) for key, values in merged.items()]
