"""Metrics: the lock-free query recorders export the same Prometheus histogram and counter a client library
would, per-tenant latencies and the tenant label cap, and the dashboard reads only exported metrics."""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics, QueryRecorder, TenantLabels, TenantStats

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
