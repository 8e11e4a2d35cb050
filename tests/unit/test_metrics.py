"""Metrics: the lock-free query recorders export the same Prometheus histogram and counter a client library
would, per-tenant latencies and the tenant label cap, and the dashboard reads only exported metrics."""

from __future__ import annotations

import ast
import json
import re
from bisect import bisect_left
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy import metrics as metrics_module
from proxy.metrics import Metrics, QueryRecorder, TenantLabels, TenantStats, WorkerExpositions, merge_expositions
from proxy.reasons import CloseReason

ROOT = Path(__file__).resolve().parents[2]


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histogram_buckets_are_cumulative_with_count_and_sum() -> None:
    metrics = Metrics(buckets=(0.001, 0.01, 0.1))
    rec = metrics.query_recorder("acme")
    for seconds, rows in ((0.0005, 1), (0.001, 2), (0.05, 3), (7.0, 0)):
        rec.record("select", "ok", seconds, rows)
    rec.record("select", "error", 0.002, 0)
    s = _samples(metrics)
    ok = (("kind", "select"), ("outcome", "ok"), ("tenant", "acme"))

    def bucket(le: str) -> float:
        return s[("pgtenant_query_duration_seconds_bucket", tuple(sorted((*ok, ("le", le)))))]

    assert [bucket(le) for le in ("0.001", "0.01", "0.1", "+Inf")] == [2, 2, 3, 4]  # le is inclusive
    assert s[("pgtenant_query_duration_seconds_count", ok)] == 4
    assert abs(s[("pgtenant_query_duration_seconds_sum", ok)] - 7.0515) < 1e-9
    assert s[("pgtenant_query_duration_seconds_count", (("kind", "select"), ("outcome", "error"),
                                                        ("tenant", "acme")))] == 1
    assert s[("pgtenant_client_rows_total", (("tenant", "acme"),))] == 6


def test_a_configured_infinite_bucket_is_not_doubled() -> None:
    metrics = Metrics(buckets=(0.5, float("inf")))
    metrics.query_recorder("t").record("other", "ok", 1.0, 0)
    text = generate_latest(metrics.registry).decode()
    assert text.count('le="+Inf"') == 1
    assert 'pgtenant_query_duration_seconds_bucket{kind="other",le="0.5",outcome="ok",tenant="t"} 0.0' in text


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=1, max_size=12, unique=True).map(sorted),
       st.lists(st.floats(0, 12), max_size=20))
def test_recorder_buckets_like_bisect_left(bounds: list[float], seconds: list[float]) -> None:
    """A latency equal to a bound falls in that bound's bucket (Prometheus counts le), as bisect_left does."""
    recorder = QueryRecorder(tuple(bounds))
    expected = [0] * (len(bounds) + 1)
    for s in [*seconds, *bounds]:
        recorder.record("select", "ok", s, 0)
        expected[bisect_left(bounds, s)] += 1
    got = recorder.series[("select", "ok")].snapshot()
    assert got[:-1] == expected and got[-1] == pytest.approx(sum(seconds) + sum(bounds))


def test_recorder_keeps_series_apart_when_kind_or_outcome_changes() -> None:
    recorder = QueryRecorder((1.0,))
    for kind, outcome in [("select", "ok"), ("select", "ok"), ("insert", "ok"), ("select", "error"), ("select", "ok")]:
        recorder.record(kind, outcome, 0.5, 1)
    assert {k: v.snapshot() for k, v in recorder.series.items()} == {
        ("select", "ok"): [3, 0, 1.5], ("insert", "ok"): [1, 0, 0.5], ("select", "error"): [1, 0, 0.5]}
    assert recorder.rows == 5


def test_tenant_stats_keep_the_last_2048_latencies_in_order() -> None:
    stats = TenantStats()
    assert stats.latencies() == [] and stats.quantiles() == (None, None, None)
    stats.add_latency(0.002)
    assert stats.quantiles() == (2.0, 2.0, 2.0)
    for i in range(1, 3001):
        stats.add_latency(i / 1000)
    recent = stats.latencies()
    assert recent == [i / 1000 for i in range(953, 3001)]
    assert stats.quantiles()[0] == pytest.approx(1976.5)


def test_tenant_label_cap() -> None:
    labels = TenantLabels(2)
    assert [labels(t) for t in ("a", "b", "c", "a", None)] == ["a", "b", "_other", "a", "_other"]


def test_dashboard_uses_only_real_metrics() -> None:
    exported = generate_latest(Metrics().registry).decode()
    names = set(re.findall(r"^# TYPE (\w+) ", exported, re.M))
    dash = json.loads((ROOT / "config" / "grafana" / "pgtenant-dashboard.json").read_text())
    used = set(re.findall(r"pgtenant_\w+", json.dumps(dash)))
    histogram_parts = {n + s for n in names for s in ("_bucket", "_count", "_sum")}
    counters = {n + "_total" for n in names}
    missing = used - names - histogram_parts - counters
    assert not missing, missing
    assert len(dash["panels"]) >= 8


# Methods that change a prometheus_client metric; `labels` only ever leads to one of them.
_MUTATORS = {"labels", "inc", "dec", "observe", "set", "set_to_current_time"}


def metric_mutations(source: str) -> list[int]:
    """Lines of calls that change a Prometheus metric: any `.labels(`, `.inc(` or `.dec(`; `.observe(` and `.set(`
    of a `.labels(...)` child or of something reached through a `metrics` attribute (an Event's `.set()`, a
    gate's own `observe` callback are not metrics)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS):
            continue
        receiver = node.func.value
        chain = ast.unparse(receiver)
        if node.func.attr in ("labels", "inc", "dec") or ".labels(" in chain or "metrics" in chain:
            lines.append(node.lineno)
    return lines


def test_only_metrics_py_touches_prometheus_objects() -> None:
    """proxy/metrics.py is the one writer: everything else calls its named methods."""
    root = Path(metrics_module.__file__).resolve().parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        if path == root / "metrics.py":
            continue
        source = path.read_text()
        if "prometheus_client" in source:
            found[f"{path.relative_to(root.parent)}: imports prometheus_client"] = 0
        for line in metric_mutations(source):
            found[f"{path.relative_to(root.parent)}:{line}"] = line
    assert not found, f"metrics changed outside proxy/metrics.py: {sorted(found)}"


def test_the_scan_sees_a_mutation() -> None:
    source = "m.denied.labels('t', 'r').inc()\nself.proxy.metrics.x.observe(1)\n" \
        "self._idle.set()\nself.observe('a', 1)\n"
    assert sorted(set(metric_mutations(source))) == [1, 2]


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return _samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def test_session_closed_counts_the_labels_the_reason_carries() -> None:
    metrics = Metrics()
    metrics.session_closed(CloseReason.AUTH_FAILED_BAD_PROOF)
    metrics.session_closed(CloseReason.AUTH_FAILED_UNKNOWN_USER, auth_detail=True)
    metrics.session_closed(CloseReason.AUTH_THROTTLED_USER)
    metrics.session_closed(CloseReason.PRELOGIN_ADDRESS_REFUSED)
    metrics.session_closed(CloseReason.TOO_MANY_CLIENTS)
    metrics.session_closed(CloseReason.CLIENT_TERMINATE)
    auth = "pgtenant_auth_attempts_total"
    assert _value(metrics, auth, outcome="failure", reason="invalid_credentials") == 1
    assert _value(metrics, auth, outcome="failure", reason="unknown_user") == 1
    assert _value(metrics, auth, outcome="refused", reason="throttled") == 1
    assert _value(metrics, "pgtenant_auth_throttled_total", limit="user") == 1
    assert _value(metrics, "pgtenant_prelogin_closed_total", limit="address_refused") == 1
    assert _value(metrics, auth, outcome="refused", reason="too_many_clients") == 1
    assert sum(v for (name, _), v in _samples(metrics).items() if name == auth) == 4  # a terminate counts nowhere


def test_client_moved_keeps_one_gauge_per_connection() -> None:
    metrics = Metrics()
    at = metrics.client_moved(None, ("_none", "authenticating"))
    at = metrics.client_moved(at, ("acme", "active"))
    assert _value(metrics, "pgtenant_client_connections", tenant="_none", state="authenticating") == 0
    assert _value(metrics, "pgtenant_client_connections", tenant="acme", state="active") == 1
    assert metrics.client_moved(at, None) is None
    assert _value(metrics, "pgtenant_client_connections", tenant="acme", state="active") == 0


def test_named_writers_reach_their_metrics() -> None:
    metrics = Metrics(max_tenants=1)
    metrics.statement_denied("acme", "set_role")
    metrics.statement_denied("globex", "set_role")  # past the label cap
    metrics.backend_error("acme", "57P01")
    metrics.client_bytes("acme", 10, 3)
    metrics.client_bytes("acme", 5, 0)
    metrics.decision_timed("gate", 0.001)
    metrics.preflight("acme", False)
    metrics.config_reloaded(True)
    assert _value(metrics, "pgtenant_denied_statements_total", tenant="acme", rule="set_role") == 1
    assert _value(metrics, "pgtenant_denied_statements_total", tenant="_other", rule="set_role") == 1
    assert _value(metrics, "pgtenant_backend_errors_total", tenant="acme", sqlstate_class="57") == 1
    assert _value(metrics, "pgtenant_client_sent_bytes_total", tenant="acme") == 15
    assert _value(metrics, "pgtenant_client_received_bytes_total", tenant="acme") == 3
    assert _value(metrics, "pgtenant_policy_decision_duration_seconds_count", stage="gate") == 1
    assert _value(metrics, "pgtenant_preflight_ok", tenant="acme") == 0
    assert _value(metrics, "pgtenant_config_reloads_total", outcome="ok") == 1
    content_type, body = metrics.exposition()
    assert content_type.startswith("text/plain") and b"pgtenant_config_reloads_total" in body


def test_pool_gauges_come_from_the_pools_at_scrape_time() -> None:
    metrics = Metrics(max_tenants=1)
    rows = [("acme", 3, 2, 1, 1, 0, 1), ("acme", 0, 1, 0, 0, 1, 0), ("globex", 1, 1, 0, 0, 0, 0)]
    metrics.watch_pools(lambda: rows)
    metrics.pool_waited("acme", 0.02)
    metrics.pool_waited("acme", 0.0)  # a grant from an idle server (per transaction in transaction pooling)
    metrics.pool_waited("acme", 0.0001)  # (a bound is its bucket's own: le)
    metrics.pool_server_opened("acme")
    metrics.pool_server_closed("budget")
    s = _samples(metrics)
    assert s[("pgtenant_pool_clients_waiting", (("tenant", "acme"),))] == 3  # two pools of acme, summed
    assert s[("pgtenant_server_connections", (("state", "active"), ("tenant", "acme")))] == 3
    assert s[("pgtenant_server_connections", (("state", "used"), ("tenant", "acme")))] == 1
    assert s[("pgtenant_server_connections", (("state", "active"), ("tenant", "_other")))] == 1  # the label cap
    assert s[("pgtenant_pool_wait_seconds_count", (("tenant", "acme"),))] == 3
    assert s[("pgtenant_pool_wait_seconds_sum", (("tenant", "acme"),))] == pytest.approx(0.0201)
    assert s[("pgtenant_pool_wait_seconds_bucket", (("le", "0.0001"), ("tenant", "acme")))] == 2
    assert s[("pgtenant_pool_wait_seconds_bucket", (("le", "0.01"), ("tenant", "acme")))] == 2
    assert s[("pgtenant_pool_wait_seconds_bucket", (("le", "0.05"), ("tenant", "acme")))] == 3
    assert s[("pgtenant_pool_wait_seconds_bucket", (("le", "+Inf"), ("tenant", "acme")))] == 3
    assert s[("pgtenant_pool_servers_opened_total", (("tenant", "acme"),))] == 1
    assert s[("pgtenant_pool_servers_closed_total", (("reason", "budget"),))] == 1
    rows.clear()
    assert ("pgtenant_pool_clients_waiting", (("tenant", "acme"),)) not in _samples(metrics)


def test_routed_requests_are_plain_counts_labelled_at_their_first() -> None:
    metrics = Metrics(max_tenants=1)
    metrics.replica_routed("acme", "main", "r1")
    metrics.replica_routed("acme", "main", "r1")  # (per transaction: no lock, no label lookup)
    metrics.replica_routed("acme", "main", "primary")
    metrics.replica_routed("globex", "main", "r1")  # past the tenant label cap: _other
    metrics.replica_routed(None, "main", "refused")
    s = _samples(metrics)
    assert s[("pgtenant_replica_routed_total", (("backend", "main"), ("server", "r1"), ("tenant", "acme")))] == 2
    assert s[("pgtenant_replica_routed_total", (("backend", "main"), ("server", "primary"), ("tenant", "acme")))] == 1
    assert s[("pgtenant_replica_routed_total", (("backend", "main"), ("server", "r1"), ("tenant", "_other")))] == 1
    assert s[("pgtenant_replica_routed_total", (("backend", "main"), ("server", "refused"), ("tenant", "_other")))] == 1
    metrics.replica_routed("acme", "main", "r1")
    assert _samples(metrics)[
        ("pgtenant_replica_routed_total", (("backend", "main"), ("server", "r1"), ("tenant", "acme")))] == 3
    count = metrics.replica_routed_count("acme", "main", "r1")  # (what a kept server's resume adds to: Pool.reuse)
    assert count == [3] and metrics.replica_routed_count("acme", "main", "r1") is count
    count[0] += 2
    assert _samples(metrics)[
        ("pgtenant_replica_routed_total", (("backend", "main"), ("server", "r1"), ("tenant", "acme")))] == 5
    assert metrics.replica_routed_count("initech", "main", "r2") == [0]  # (labelled at its first: _other here)
    metrics.replica_routed("initech", "main", "r2")
    assert _samples(metrics)[
        ("pgtenant_replica_routed_total", (("backend", "main"), ("server", "r2"), ("tenant", "_other")))] == 1


def test_pins_are_counted_by_reason_and_timed() -> None:
    metrics = Metrics(max_tenants=2)
    metrics.session_pinned("acme", "temp_relation")
    metrics.session_pinned("acme", "listen")
    metrics.session_pinned("acme", "temp_relation")
    metrics.session_unpinned("acme", 12.0)
    s = _samples(metrics)
    assert s[("pgtenant_session_pins_total", (("reason", "temp_relation"), ("tenant", "acme")))] == 2
    assert s[("pgtenant_session_pins_total", (("reason", "listen"), ("tenant", "acme")))] == 1
    assert s[("pgtenant_session_pinned_seconds_count", (("tenant", "acme"),))] == 1
    assert s[("pgtenant_session_pinned_seconds_bucket", (("le", "15.0"), ("tenant", "acme")))] == 1
    assert s[("pgtenant_session_pinned_seconds_bucket", (("le", "5.0"), ("tenant", "acme")))] == 0


# --- worker processes: one exposition from several ----------------------------------------------------------------


def _worker_text(clients: float, queries: float, latency: float, preflight: float) -> str:
    r = CollectorRegistry()
    Gauge("pgtenant_client_connections", "Client connections.", ["tenant", "state"], registry=r).labels(
        "acme", "active").set(clients)
    Counter("pgtenant_config_reloads_total", "Reloads.", ["outcome"], registry=r).labels("ok").inc(queries)
    Histogram("pgtenant_wait_seconds", "Waits.", buckets=(0.1, 1.0), registry=r).observe(latency)
    Gauge("pgtenant_preflight_ok", "Preflight.", ["tenant"], registry=r).labels("acme").set(preflight)
    return generate_latest(r).decode()


def test_metrics_add_up_except_the_gauges_that_must_hold_on_every_worker() -> None:
    ctype, merged_bytes = merge_expositions([_worker_text(2, 3, 0.05, 1), _worker_text(5, 4, 0.5, 0)])
    merged = merged_bytes.decode()
    assert ctype.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(merged) for s in f.samples}
    assert samples[("pgtenant_client_connections", (("state", "active"), ("tenant", "acme")))] == 7
    assert samples[("pgtenant_config_reloads_total", (("outcome", "ok"),))] == 7
    assert samples[("pgtenant_wait_seconds_bucket", (("le", "0.1"),))] == 1
    assert samples[("pgtenant_wait_seconds_bucket", (("le", "1.0"),))] == 2
    assert samples[("pgtenant_wait_seconds_count", ())] == 2
    assert samples[("pgtenant_wait_seconds_sum", ())] == pytest.approx(0.55)
    assert samples[("pgtenant_preflight_ok", (("tenant", "acme"),))] == 0  # ready only where every worker is
    assert "# TYPE pgtenant_config_reloads_total counter" in merged


def _sample(text: str, name: str, **labels: str) -> float | None:
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def test_a_replaced_workers_counters_stay_in_the_sums_and_its_gauges_go() -> None:
    seen = WorkerExpositions()
    merged = lambda answers: merge_expositions(seen.texts(answers))[1].decode()  # noqa: E731
    first = merged({0: (100, _worker_text(2, 3, 0.05, 1)), 1: (200, _worker_text(1, 4, 0.5, 1))})
    assert _sample(first, "pgtenant_config_reloads_total", outcome="ok") == 7
    assert _sample(first, "pgtenant_client_connections", tenant="acme", state="active") == 3
    down = merged({0: (100, _worker_text(2, 5, 0.05, 1)), 1: None})  # worker 1 died: its last counters stay
    assert _sample(down, "pgtenant_config_reloads_total", outcome="ok") == 9
    assert _sample(down, "pgtenant_client_connections", tenant="acme", state="active") == 2
    assert _sample(down, "pgtenant_wait_seconds_count") == 2
    back = merged({0: (100, _worker_text(2, 5, 0.05, 1)), 1: (201, _worker_text(1, 1, 0.5, 1))})  # replaced
    assert _sample(back, "pgtenant_config_reloads_total", outcome="ok") == 10  # 5 + 4 (retired) + 1: never down
    assert _sample(back, "pgtenant_client_connections", tenant="acme", state="active") == 3
    assert _sample(back, "pgtenant_wait_seconds_count") == 3
    again = merged({0: (100, _worker_text(2, 5, 0.05, 1)), 1: (201, _worker_text(1, 2, 0.5, 1))})
    assert _sample(again, "pgtenant_config_reloads_total", outcome="ok") == 11  # retired once, not per scrape
