"""Pool.reuse counts a routed session's resumed request as replica_routed does, through a count it keeps on the
server link with kept's answer (no lookup per request); it reuses that answer while the ask is the same object and
its replica set's generation and fit deadline hold (kept_until), and asks kept again after any change."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from proxy import replicas
from proxy.config import RoutingConfig, parse_config
from proxy.io import pool as pool_module
from proxy.io.pool import Pool
from proxy.metrics import Metrics
from proxy.replicas import _PRIMARY, _UNKNOWN, Choice, Route, Router

VERIFIER = (
    "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$zMqJ8k8FpC7CY8Io6qVbZrdP1k1b9QQ9mF7d4sW7b3E="
    ":Vfhh0k0K0Sx6LDOa3ySdBBTy9HzPJvdnM9rDTrqF8gU="
)


def config(tmp_path: Path, names: tuple[str, ...] = ("r1", "r2")) -> object:
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{VERIFIER}"\n')
    return parse_config({
        "secrets_file": "s.toml", "routing": {"route": "auto", "max_replica_lag": 5.0},
        "backends": {"main": {"replicas": [{"name": n, "port": 5433 + i} for i, n in enumerate(names)]}},
        "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme", "backend": "main"}},
        "users": {"alice": {"tenant": "acme"}},
    }, base=tmp_path)


def _routed(metrics: Metrics) -> dict[tuple[Any, ...], int]:
    return {metrics._routed_labels[key]: n for key, (n,) in metrics._routed.items()}


def test_a_resumed_request_is_counted_under_its_own_tenant_and_server(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics(max_tenants=5)
    pool = Pool.__new__(Pool)
    pool.proxy, pool.router, pool.clock = SimpleNamespace(metrics=metrics), None, lambda: 5.0
    pool.manager = SimpleNamespace(reuse=lambda client, server, now: True)
    choice: list[Choice | None] = [Choice("r1")]
    monkeypatch.setattr(pool_module, "kept", lambda router, backend, route, now, replica: choice[0])
    monkeypatch.setattr(pool_module, "kept_until", lambda router, backend, route: _UNKNOWN)  # (kept every time)
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


def test_a_resume_reuses_kepts_answer_only_while_nothing_it_read_changed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same ask (the session's Route and request objects) on the same server: kept's answer stands, kept is not
    asked again, until a probe, a failure, a reload or the fit's deadline (a replica behind the primary lags past
    max_lag as time passes); then kept judges it again and the server is not reused if it may no longer serve."""
    cfg = config(tmp_path)
    router = Router(cfg)  # type: ignore[arg-type]
    s = router.sets["main"]
    s.primary_polled(10.0, False, "0/100")
    s.primary_polled(11.0, False, "0/200")
    s.replica_polled("r1", 11.1, True, "0/100")  # fresh as of 10.0, not caught up: fit until 15.0 (max lag 5 s)
    s.replica_polled("r2", 11.1, True, "0/200")
    metrics, now = Metrics(max_tenants=5), [11.2]
    pool = Pool.__new__(Pool)
    pool.proxy, pool.router, pool.clock = SimpleNamespace(metrics=metrics), router, lambda: now[0]
    pool.manager = SimpleNamespace(reuse=lambda client, server, now: True)
    asked: list[float] = []

    def counted(*args: Any) -> Choice | None:
        asked.append(now[0])
        return replicas.kept(*args)

    monkeypatch.setattr(pool_module, "kept", counted)
    link = SimpleNamespace(closed=False, stale=False, server=SimpleNamespace(replica="r1", id=1, last_used=0.0),
                           routed=None, owner=None)
    read = SimpleNamespace(request=SimpleNamespace(tenant="acme", backend=SimpleNamespace(name="main")),
                           route=Route(RoutingConfig(route="auto", max_replica_lag=5.0), read_only=True))

    def reuse(at: float) -> bool:
        now[0] = at
        return pool.reuse(link, object(), read)  # type: ignore[arg-type]

    assert reuse(11.2) and reuse(11.3) and reuse(14.9) and asked == [11.2]  # (kept asked once)
    assert not reuse(15.1) and asked == [11.2, 15.1]  # the fit's deadline: r1 lags 5.1 s now
    s.replica_polled("r1", 15.2, True, "0/200")  # caught up
    assert reuse(15.3) and reuse(15.4) and asked == [11.2, 15.1, 15.3]
    s.replica_failed("r1", "gone")  # (a failure: the generation moves on)
    assert not reuse(15.5)
    s.replica_polled("r1", 15.6, True, "0/200")
    assert reuse(15.7) and asked[-1] == 15.7
    router.reconfigure(config(tmp_path, ("r2",)))  # type: ignore[arg-type]
    assert not reuse(15.8)  # (r1 is no replica of the reloaded set: the old set's answer does not stand)
    assert _routed(metrics) == {("acme", "main", "r1"): 6}
