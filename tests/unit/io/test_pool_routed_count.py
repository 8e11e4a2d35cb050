"""Pool.reuse counts a routed session's resumed request as replica_routed does, through a count it keeps on the
server link while the request and the router's Choice stay the same objects (no lookup per request)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from proxy.io import pool as pool_module
from proxy.io.pool import Pool
from proxy.metrics import Metrics
from proxy.replicas import _PRIMARY, Choice


def _routed(metrics: Metrics) -> dict[tuple[Any, ...], int]:
    return {metrics._routed_labels[key]: n for key, (n,) in metrics._routed.items()}


def test_a_resumed_request_is_counted_under_its_own_tenant_and_server(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics(max_tenants=5)
    pool = Pool.__new__(Pool)
    pool.proxy, pool.router, pool.clock = SimpleNamespace(metrics=metrics), None, lambda: 5.0
    pool.manager = SimpleNamespace(reuse=lambda client, server, now: True)
    choice: list[Choice | None] = [Choice("r1")]
    monkeypatch.setattr(pool_module, "kept", lambda router, backend, route, now, replica: choice[0])
    link = SimpleNamespace(closed=False, stale=False, server=SimpleNamespace(replica="r1", id=1, last_used=0.0),
                           routed=None, owner=None)

    def ask(tenant: str) -> SimpleNamespace:
        return SimpleNamespace(request=SimpleNamespace(tenant=tenant, backend=SimpleNamespace(name="main")),
                               route=object())

    acme, globex = ask("acme"), ask("globex")
    for _ in range(3):
        assert pool.reuse(link, object(), acme)  # type: ignore[arg-type]
    assert pool.reuse(link, object(), globex)  # type: ignore[arg-type]  # (another request: its own count)
    choice[0] = _PRIMARY
    assert pool.reuse(link, object(), globex)  # type: ignore[arg-type]  # (another Choice: its own count)
    choice[0] = None
    assert not pool.reuse(link, object(), acme)  # type: ignore[arg-type]  # (not for this server: not counted)
    choice[0] = Choice("r1")  # (an equal Choice, another object: the same key, the same count)
    assert pool.reuse(link, object(), acme)  # type: ignore[arg-type]
    metrics.replica_routed("acme", "main", "r1")  # (the pool's other path adds to the same count)
    assert _routed(metrics) == {("acme", "main", "r1"): 5, ("globex", "main", "r1"): 1,
                                ("globex", "main", "primary"): 1}
