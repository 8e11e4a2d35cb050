"""proxy.clusterview: the workers' console rows merged into one view."""

from __future__ import annotations

import pytest

from proxy.clusterview import merge_rows


def test_per_session_views_list_every_workers_rows_with_its_index() -> None:
    columns, rows = merge_rows("clients", [(1, ("id", "user"), [("b", "bob")]), (0, ("id", "user"), [("a", "al")])])
    assert list(columns) == ["id", "user", "worker"]
    assert rows == [("a", "al", 0), ("b", "bob", 1)]


def test_pools_add_up_per_pool_and_keep_the_longest_wait() -> None:
    cols = ("tenant", "backend", "database", "role", "pool_mode", "cl_active", "cl_waiting", "sv_active", "sv_idle",
            "sv_pinned", "sv_used", "sv_connecting", "maxwait_s", "pool_size")
    a = ("acme", "main", "saas", "r", "transaction", 2, 1, 1, 3, 0, 0, 0, 0.5, 20)
    b = ("acme", "main", "saas", "r", "transaction", 1, 0, 1, 1, 0, 0, 1, 2.0, 20)
    c = ("beta", "main", "saas", "r", "session", 1, 0, 1, 0, 0, 0, 0, 0.0, 20)
    columns, rows = merge_rows("pools", [(0, cols, [a, c]), (1, cols, [b])])
    assert list(columns) == list(cols)
    assert sorted(rows) == [("acme", "main", "saas", "r", "transaction", 3, 1, 2, 4, 0, 0, 1, 2.0, 40), c]


def test_tenants_add_up_clients_and_are_pending_if_any_worker_waits() -> None:
    cols = ("tenant", "strategy", "backend", "database", "backend_role", "state", "clients")
    key = ("acme", "shared", "main", "saas", "r")
    _, rows = merge_rows("tenants", [(0, cols, [(*key, "ready", 2)]), (1, cols, [(*key, "pending", 1)])])
    assert rows == [(*key, "pending", 3)]
    with pytest.raises(ValueError, match="no merge"):
        merge_rows("config", [(0, cols, [])])
