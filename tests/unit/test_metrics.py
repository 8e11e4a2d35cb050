"""The lock-free query recorders export the same Prometheus histogram and counter a client library would."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics


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
