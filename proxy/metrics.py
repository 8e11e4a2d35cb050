"""Every Prometheus metric pgtenant exports, in one place, with bounded label values."""

from __future__ import annotations

import statistics
import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from proxy.reasons import CloseReason

OTHER_TENANT = "_other"
# Latency buckets for BI traffic: sub-millisecond lookups to multi-minute extracts (seconds).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
DECISION_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
)
DECISION_STAGES = ("total", "gate", "rewrite", "verify")
CONNECT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PIN_BUCKETS: tuple[float, ...] = (0.01, 0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
_WINDOW = 2048  # recent latencies kept per tenant for SHOW STATS quantiles
# Seconds a client waited for a server: none for most, up to query_wait_timeout for some.
WAIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)
# (tenant, clients waiting, servers active, idle, pinned, resetting or checked, connecting) per pool.
PoolGauges = tuple[str, int, int, int, int, int, int]


class TenantLabels:
    """Caps the number of distinct tenant label values: the first `limit` tenants seen keep their
    names, every later one is counted as `_other`. Tenant names come from config, never from clients."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str | None) -> str:
        if tenant is None:
            return OTHER_TENANT
        if tenant in self._known:
            return tenant
        with self._lock:
            if len(self._known) < self.limit:
                self._known.add(tenant)
                return tenant
        return OTHER_TENANT

    def preload(self, tenants: Iterable[str]) -> None:
        for t in tenants:
            self(t)


class _CacheCollector(Collector):
    """`pgtenant_policy_cache_lookups_total{result}`, `pgtenant_policy_cache_entries` and `pgtenant_policy_cache_bytes`
    from the decision cache's own counts."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        family = CounterMetricFamily(
            "pgtenant_policy_cache_lookups", "Policy decision cache lookups.", labels=["result"]
        )
        source = self.metrics._cache_source
        hits, misses, entries, held = source() if source is not None else (0, 0, 0, 0)
        family.add_metric(["hit"], hits)
        family.add_metric(["miss"], misses)
        yield family
        yield GaugeMetricFamily("pgtenant_policy_cache_entries", "Decisions held by the policy cache.", value=entries)
        yield GaugeMetricFamily(
            "pgtenant_policy_cache_bytes", "Bytes held by the policy cache (its texts and a fixed cost per entry).",
            value=held,
        )


class _PoolCollector(Collector):
    """`pgtenant_server_connections{tenant,state}` and `pgtenant_pool_clients_waiting{tenant}` from the pools' own
    counts at scrape time (nothing to do per grant)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        servers = GaugeMetricFamily("pgtenant_server_connections", "Backend connections, by pool state.",
                                    labels=["tenant", "state"])
        waiting = GaugeMetricFamily("pgtenant_pool_clients_waiting", "Clients waiting for a server connection.",
                                    labels=["tenant"])
        source = self.metrics._pool_source
        totals: dict[str, list[int]] = {}
        for tenant, *counts in (source() if source is not None else []):
            label = self.metrics.tenant(tenant)
            row = totals.setdefault(label, [0] * len(counts))
            for i, n in enumerate(counts):
                row[i] += n
        for label, (wait, *states) in sorted(totals.items()):
            waiting.add_metric([label], wait)
            for state, n in zip(("active", "idle", "pinned", "used", "connecting"), states, strict=True):
                servers.add_metric([label, state], n)
        yield servers
        yield waiting


class _ReplicaCollector(Collector):
    """`pgtenant_replica_lag_seconds{backend,replica}` and `pgtenant_replica_health{backend,replica,state}` (1 for its
    state: healthy, lagging, down) from the replicas' last probes at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("pgtenant_replica_lag_seconds",
                                "How far a read replica is behind its primary (NaN before its first probe).",
                                labels=["backend", "replica"])
        health = GaugeMetricFamily("pgtenant_replica_health", "A read replica's health: 1 for its current state.",
                                   labels=["backend", "replica", "state"])
        source = self.metrics._replica_source
        for backend, replica, state, seconds in (source() if source is not None else []):
            lag.add_metric([backend, replica], float("nan") if seconds is None else seconds)
            for s in REPLICA_STATES:
                health.add_metric([backend, replica, s], 1.0 if s == state else 0.0)
        yield lag
        yield health


class _RoutedCollector(Collector):
    """`pgtenant_replica_routed_total{tenant,backend,server}` from plain counts (a routed request, once per
    transaction in transaction pooling, takes no lock and makes no label lookup)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "pgtenant_replica_routed",
            "Requests of routed tenants (route = replica or auto) by where they went: a replica's name, primary, or "
            "refused (no healthy replica, replica_fallback = refuse).", labels=["tenant", "backend", "server"])
        totals: dict[tuple[str, str, str], int] = {}
        labels = self.metrics._routed_labels
        for key, (n,) in list(self.metrics._routed.items()):
            label = labels[key]
            totals[label] = totals.get(label, 0) + n
        for label, n in sorted(totals.items()):
            family.add_metric(list(label), n)
        yield family


REPLICA_STATES = ("healthy", "lagging", "down")
ReplicaGauges = tuple[str, str, str, float | None]  # backend, replica, state, lag seconds


class LatencySeries:
    """One (kind, outcome) latency histogram: a count per bucket (+Inf last) and the sum of the seconds."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = memoryview(array("Q", bytes(8 * (buckets + 1))))  # unsigned 64-bit, as Prometheus counts
        self.total = 0.0

    def snapshot(self) -> list[float]:
        """The counts, then the sum."""
        counts = self.counts
        out: list[float] = [counts[i] for i in range(len(counts))]
        out.append(self.total)
        return out

    def cumulative(self, bounds: list[str]) -> tuple[list[tuple[str, float]], float]:
        """(bucket bound, cumulative count) per bucket, +Inf last, and the sum: a HistogramMetricFamily's sample."""
        snapshot = self.snapshot()
        out, total = [], 0.0
        for bound, count in zip([*bounds, "+Inf"], snapshot[:-1], strict=True):
            total += count
            out.append((bound, total))
        return out, snapshot[-1]


class QueryRecorder:
    """Per-request latency and row counts of one tenant label, kept as plain numbers (no lock, no label lookup
    on the hot path) and exported at scrape time by `_QueryCollector`."""

    __slots__ = ("_bounds", "_last", "_last_kind", "_last_outcome", "rows", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = tuple(float(b) for b in bounds)
        self.series: dict[tuple[str, str], LatencySeries] = {}
        self.rows = 0
        # The series of the last call: requests mostly repeat their kind and outcome (the same str objects).
        # Until the first call it is a spare series no (kind, outcome) matches.
        self._last_kind = self._last_outcome = ""
        self._last = LatencySeries(len(self._bounds))

    def record(self, kind: str, outcome: str, seconds: float, rows: int) -> None:
        """One request answered: its statement kind, outcome, latency and rows."""
        if kind is self._last_kind and outcome is self._last_outcome:
            series = self._last
        else:
            series = self.series.get((kind, outcome))
            if series is None:
                series = self.series[(kind, outcome)] = LatencySeries(len(self._bounds))
            self._last, self._last_kind, self._last_outcome = series, kind, outcome
        bounds = self._bounds
        i = 0
        n = len(bounds)
        while i < n and bounds[i] < seconds:  # the first bucket whose bound is >= seconds (bisect_left)
            i += 1
        series.counts[i] += 1
        series.total += seconds
        if rows:
            self.rows += rows


class TenantStats:
    """One tenant's request counts and recent latencies, for the admin console's SHOW STATS."""

    __slots__ = ("_count", "_next", "_ring", "denied", "errors", "queries", "rows")

    def __init__(self) -> None:
        self.queries = 0
        self.errors = 0
        self.denied = 0
        self.rows = 0
        self._ring = memoryview(array("d", bytes(8 * _WINDOW)))  # the last _WINDOW latencies, a ring
        self._next = 0
        self._count = 0

    def add_latency(self, seconds: float) -> None:
        self._ring[self._next] = seconds
        self._next = (self._next + 1) % _WINDOW
        if self._count < _WINDOW:
            self._count += 1

    def latencies(self) -> list[float]:
        """The recent latencies in seconds, oldest first."""
        ring, n, end = self._ring, self._count, self._next
        return [ring[(end - n + k) % _WINDOW] for k in range(n)]

    def quantiles(self) -> tuple[float | None, float | None, float | None]:
        """p50, p95 and p99 of the recent latencies, in milliseconds."""
        latencies = self.latencies()
        if len(latencies) < 2:
            only = latencies[0] * 1000 if latencies else None
            return only, only, only
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        return q[49] * 1000, q[94] * 1000, q[98] * 1000


class _QueryCollector(Collector):
    """`pgtenant_query_duration_seconds{tenant,kind,outcome}` and `pgtenant_client_rows_total{tenant}` from the
    recorders."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        m = self.metrics
        latency = HistogramMetricFamily(
            "pgtenant_query_duration_seconds",
            "Time from the client's Query or Sync to the backend's ReadyForQuery.",
            labels=["tenant", "kind", "outcome"],
        )
        rows = CounterMetricFamily(
            "pgtenant_client_rows", "Rows returned to clients (from CommandComplete tags).", labels=["tenant"]
        )
        bounds = [floatToGoString(b) for b in m.buckets]
        for tenant, recorder in list(m._recorders.items()):
            rows.add_metric([tenant], recorder.rows)
            for (kind, outcome), series in list(recorder.series.items()):
                latency.add_metric([tenant, kind, outcome], *series.cumulative(bounds))
        yield latency
        yield rows


class _WaitCollector(Collector):
    """`pgtenant_pool_wait_seconds{tenant}` from plain per-tenant counts (a grant, once per transaction in
    transaction pooling, takes no lock and makes no label lookup)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[HistogramMetricFamily]:
        waits = HistogramMetricFamily("pgtenant_pool_wait_seconds", "Time a client waited for a server connection.",
                                      labels=["tenant"])
        bounds = [floatToGoString(b) for b in WAIT_BUCKETS]
        for tenant, series in list(self.metrics._pool_waits.items()):
            waits.add_metric([tenant], *series.cumulative(bounds))
        yield waits


class Metrics:
    """The metric objects, registered in their own registry (so tests and reloads stay independent), and the one
    writer of them: every change goes through a named method below (no other module touches a metric object)."""

    def __init__(self, *, max_tenants: int = 100, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.registry = CollectorRegistry()
        self.tenant = TenantLabels(max_tenants)
        r = self.registry
        self.buckets = tuple(b for b in sorted(buckets) if b != float("inf"))  # +Inf is always the last bucket
        self._recorders: dict[str, QueryRecorder] = {}
        r.register(_QueryCollector(self))
        self._decision_duration = Histogram(
            "pgtenant_policy_decision_duration_seconds",
            "Time the policy engine took to decide a statement (cache misses only).",
            ["stage"], buckets=DECISION_BUCKETS, registry=r,
        )
        self._decision_stages: dict[str, Any] = {}  # stage -> its child, made at the first decision
        # Read from the decision cache's own counters at scrape time: nothing to do per statement.
        self._cache_source: Callable[[], tuple[int, int, int, int]] | None = None
        r.register(_CacheCollector(self))
        self._admissions = Histogram(
            "pgtenant_agent_admission_seconds",
            "Agent profile: the EXPLAIN round trip before an agent's statement, by outcome (admitted, refused, "
            "failed).",
            ["tenant", "outcome"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self._offloaded = Counter(
            "pgtenant_policy_offloaded_total",
            "Cache misses decided by a decision worker (a long text, or past the tenant's share of the event loop).",
            ["tenant"], registry=r,
        )
        self._worker_restarts = Counter(
            "pgtenant_policy_worker_restarts_total",
            "Decision workers replaced: killed at limits.decision_timeout (timeout), or failed.", ["reason"],
            registry=r,
        )
        self._backend_connect_duration = Histogram(
            "pgtenant_backend_connect_duration_seconds",
            "Time to open, negotiate and authenticate a backend connection.",
            ["tenant"], buckets=CONNECT_BUCKETS, registry=r,
        )
        self._auth = Counter(
            "pgtenant_auth_attempts_total", "Client authentication attempts.", ["outcome", "reason"], registry=r
        )
        self._auth_throttled = Counter(
            "pgtenant_auth_throttled_total", "Logins refused because a failed-login budget is spent, by budget.",
            ["limit"], registry=r,
        )
        self._prelogin_closed = Counter(
            "pgtenant_prelogin_closed_total",
            "Connections closed before login by a pre-login limit (address, total, address_refused, total_refused, "
            "first_message_timeout).",
            ["limit"], registry=r,
        )
        self._cancel_ignored = Counter(
            "pgtenant_cancel_ignored_total", "CancelRequests with a key of no running session (ignored).", registry=r
        )
        self._cancel_dropped = Counter(
            "pgtenant_cancel_dropped_total", "A session's CancelRequests not forwarded to its server, by reason "
            "(no_request, repeat, throttled).", ["reason"], registry=r,
        )
        self._log_suppressed = Counter(
            "pgtenant_log_lines_suppressed_total", "Pre-login log lines dropped by the log rate limit.", registry=r
        )
        self._instance_cancels = Counter(
            "pgtenant_instance_cancels_total", "CancelRequests for another instance's sessions (stateless replicas), "
            "by outcome (found, unknown, stale, no_instance, throttled, busy, failed).", ["outcome"], registry=r,
        )
        self._peer_refused = peer_refused_counter(r)
        self._proxy_headers_refused = Counter(
            "pgtenant_proxy_headers_refused_total",
            "Connections closed over the PROXY protocol header: reason = bad_header (a trusted balancer's missing or "
            "invalid), untrusted (one from a sender not in server.proxy_protocol_from, or with proxy_protocol off), "
            "second_header (a header after the trusted balancer's, from the client behind it).",
            ["reason"], registry=r,
        )
        self._limit_refusals = Counter(
            "pgtenant_limit_refusals_total",
            "Connections, queries and results refused or cut by a per-tenant limit (max_client_connections, "
            "max_concurrent_queries, statement_timeout, replica_statement_timeout, idle_in_transaction_timeout, "
            "max_result_rows, max_result_bytes).",
            ["tenant", "limit"], registry=r,
        )
        self._withheld = Counter(
            "pgtenant_answers_withheld_total",
            "Server messages withheld by the hidden schemas' last line: they held a reserved name the session sent "
            "(message = data_row, row_description, command_complete, copy_data, function_call_response, "
            "error_response, notice_response: answered with answer_withheld; parameter_status, "
            "notification_response: dropped; data_row_mid_message, copy_data_mid_message, ...: found in a large "
            "message already begun for the client, the session ended).",
            ["tenant", "message"], registry=r,
        )
        self._unread_closed = Counter(
            "pgtenant_unread_sessions_closed_total",
            "Sessions ended, their server closed, because the client left its results unread (reason = "
            "statement_timeout: the watchdog's cancel not acted on within limits.cancel_grace; client_write_timeout: "
            "none of its pending output taken for pool.client_write_timeout).",
            ["tenant", "reason"], registry=r,
        )
        self._denied = Counter(
            "pgtenant_denied_statements_total", "Statements refused by the tenant policy.", ["tenant", "rule"],
            registry=r,
        )
        self._clients = Gauge(
            "pgtenant_client_connections", "Client connections.", ["tenant", "state"], registry=r
        )
        self._pool_source: Callable[[], list[PoolGauges]] | None = None
        self._replica_source: Callable[[], list[ReplicaGauges]] | None = None
        r.register(_ReplicaCollector(self))
        # (tenant, backend, server) -> routed requests, and its labels (the tenant's label taken at its first)
        self._routed: dict[tuple[str | None, str, str], list[int]] = {}  # (one-item lists: replica_routed_count)
        self._routed_labels: dict[tuple[str | None, str, str], tuple[str, str, str]] = {}
        r.register(_RoutedCollector(self))
        r.register(_PoolCollector(self))
        self._pool_waits: dict[str, LatencySeries] = {}  # tenant label -> its waits for a server (_WaitCollector)
        r.register(_WaitCollector(self))
        self._servers_opened = Counter(
            "pgtenant_pool_servers_opened_total", "Backend connections opened by the pools.", ["tenant"], registry=r
        )
        self._servers_closed = Counter(
            "pgtenant_pool_servers_closed_total",
            "Backend connections closed by the pools, by reason (idle_timeout, lifetime, budget, not_reusable, "
            "reset_failed, check_failed, timeout, retired, lost, connect_failed, shutdown).", ["reason"], registry=r,
        )
        self._bytes_to_client = Counter(
            "pgtenant_client_sent_bytes_total", "Bytes sent to clients.", ["tenant"], registry=r
        )
        self._bytes_from_client = Counter(
            "pgtenant_client_received_bytes_total", "Bytes received from clients.", ["tenant"], registry=r
        )
        self._backend_errors = Counter(
            "pgtenant_backend_errors_total", "ErrorResponses from backends, by SQLSTATE class.",
            ["tenant", "sqlstate_class"], registry=r,
        )
        self._pins = Counter(
            "pgtenant_session_pins_total",
            "Transaction pooling: sessions pinned to their server connection, by the state that pins them.",
            ["tenant", "reason"], registry=r,
        )
        self._unsynced = Gauge(
            "pgtenant_servers_held_without_sync",
            "Transaction pooling: servers held by a session whose client sent an extended-protocol batch and no Sync "
            "yet (waiting=sync; asyncpg's prepare() does; the server goes back only after that Sync), or is in a COPY "
            "FROM STDIN (waiting=copy_in; the server goes back only after its CopyDone or CopyFail).",
            ["tenant", "waiting"], registry=r,
        )
        self._pinned_seconds = Histogram(
            "pgtenant_session_pinned_seconds",
            "Transaction pooling: how long a session stayed pinned to its server connection.",
            ["tenant"], buckets=PIN_BUCKETS, registry=r,
        )
        self._reloads = Counter(
            "pgtenant_config_reloads_total", "Configuration reloads.", ["outcome"], registry=r
        )
        self._registry_rejected = Gauge(
            "pgtenant_registry_rejected_rows", "Registry rows the last reload rejected (each alone: the rest applied).",
            registry=r,
        )
        self._preflight_ok = Gauge(
            "pgtenant_preflight_ok", "1 when the tenant's isolation preflight passed.", ["tenant"], registry=r
        )
        self._tenant_children: dict[str, tuple[Any, Any]] = {}

    def exposition(self) -> tuple[str, bytes]:
        """(content type, body) of the metrics endpoint: every metric in Prometheus' text format."""
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def watch_cache(self, source: Callable[[], tuple[int, int, int, int]]) -> None:
        """Report (hits, misses, entries, bytes) of the decision cache at every scrape."""
        self._cache_source = source

    def query_recorder(self, tenant: str) -> QueryRecorder:
        """The latency/rows recorder for a tenant label (a session binds it once)."""
        recorder = self._recorders.get(tenant)
        if recorder is None:
            recorder = self._recorders[tenant] = QueryRecorder(self.buckets)
        return recorder

    # --- client connections -------------------------------------------------------------------

    def client_moved(self, before: tuple[str, str] | None, after: tuple[str, str] | None) -> tuple[str, str] | None:
        """A client connection moved from the (tenant label, state) `before` to `after` (None: not counted, i.e.
        new or gone); returns `after`."""
        if before is not None:
            self._clients.labels(*before).dec()
        if after is not None:
            self._clients.labels(*after).inc()
        return after

    def session_closed(self, reason: CloseReason, auth_detail: bool = False) -> None:
        """A client connection closed for `reason`: counted under the labels the reason carries (a failed or refused
        login, a pre-login cap); `auth_detail` is metrics.auth_failure_detail."""
        labels = reason.auth_labels(auth_detail)
        if labels is not None:
            self._auth.labels(*labels).inc()
        if reason.limit is not None:
            (self._prelogin_closed if reason.prelogin else self._auth_throttled).labels(reason.limit).inc()

    def auth_succeeded(self) -> None:
        self._auth.labels("success", "ok").inc()

    def log_line_suppressed(self) -> None:
        """A pre-login log line was dropped by the log rate limit."""
        self._log_suppressed.inc()

    def proxy_header_refused(self, reason: str) -> None:
        self._proxy_headers_refused.labels(reason).inc()

    def instance_cancel(self, outcome: str) -> None:
        self._instance_cancels.labels(outcome).inc()

    def peer_refused(self, reason: str) -> None:
        self._peer_refused.labels(reason).inc()

    def cancel_ignored(self) -> None:
        """A CancelRequest with a key of no running session."""
        self._cancel_ignored.inc()

    def cancel_dropped(self, reason: str) -> None:
        """A session's CancelRequest not forwarded (proxy.cancel.SessionCancels)."""
        self._cancel_dropped.labels(reason).inc()

    def client_bytes(self, tenant: str, sent: int, received: int) -> None:
        """Bytes sent to and received from a client of a tenant label since the last call."""
        children = self._tenant_children.get(tenant)
        if children is None:
            children = self._tenant_children[tenant] = (
                self._bytes_to_client.labels(tenant), self._bytes_from_client.labels(tenant),
            )
        children[0].inc(sent)
        children[1].inc(received)

    # --- backends ----------------------------------------------------------------------------

    def backend_connected(self, tenant: str, seconds: float) -> None:
        """A backend connection of a tenant label is ready, `seconds` after it was opened."""
        self._backend_connect_duration.labels(tenant).observe(seconds)

    # --- pools -----------------------------------------------------------------------------------

    def watch_pools(self, source: Callable[[], list[PoolGauges]]) -> None:
        """Report the pools' gauges (per pool: tenant, clients waiting, servers by state) at every scrape."""
        self._pool_source = source

    def watch_replicas(self, source: Callable[[], list[ReplicaGauges]]) -> None:
        """Report the read replicas' lag and health at every scrape."""
        self._replica_source = source

    def replica_routed(self, tenant: str | None, backend: str, server: str) -> None:
        """A request of a routed session of `tenant` went to `server` (a replica's name, "primary"), or nowhere
        ("refused"): a plain count (_RoutedCollector), the tenant's label looked up once per key."""
        self.replica_routed_count(tenant, backend, server)[0] += 1

    def replica_routed_count(self, tenant: str | None, backend: str, server: str) -> list[int]:
        """The count replica_routed adds to for that key, as a one-item list: a caller that counts the same key
        request after request (a kept server's resume) keeps it and adds to it (`count[0] += 1`), no lookup."""
        key = (tenant, backend, server)
        count = self._routed.get(key)
        if count is None:
            self._routed_labels[key] = (self.tenant(tenant), backend, server)
            count = self._routed[key] = [0]
        return count

    def pool_waited(self, tenant: str, seconds: float) -> None:
        """A client of a tenant label got a server after waiting `seconds`."""
        series = self._pool_waits.get(tenant)
        if series is None:
            series = self._pool_waits[tenant] = LatencySeries(len(WAIT_BUCKETS))
        series.counts[bisect_left(WAIT_BUCKETS, seconds)] += 1
        series.total += seconds

    def pool_server_opened(self, tenant: str) -> None:
        self._servers_opened.labels(tenant).inc()

    def pool_server_closed(self, reason: str) -> None:
        self._servers_closed.labels(str(reason)).inc()

    def session_pinned(self, tenant: str, reason: str) -> None:
        """A session of a tenant label was pinned to its server for `reason` (a pin reason: a fixed set)."""
        self._pins.labels(tenant, reason).inc()

    def server_held_without_sync(self, tenant: str, held: bool, waiting: str = "sync") -> None:
        """A session of a tenant label holds its server by a batch waiting for its Sync, or (waiting="copy_in") by a
        COPY FROM STDIN waiting for the client's data (or no longer)."""
        child = self._unsynced.labels(tenant, waiting)
        if held:
            child.inc()
        else:
            child.dec()

    def session_unpinned(self, tenant: str, seconds: float) -> None:
        """A session of a tenant label is no longer pinned (or ended pinned), after `seconds`."""
        self._pinned_seconds.labels(tenant).observe(seconds)

    def backend_error(self, tenant: str | None, sqlstate: str) -> None:
        """A backend's ErrorResponse to a tenant's request (or login), counted by SQLSTATE class."""
        self._backend_errors.labels(self.tenant(tenant), sqlstate[:2]).inc()

    # --- the policy --------------------------------------------------------------------------

    def limit_refused(self, tenant: str | None, limit: str) -> None:
        """A per-tenant limit refused or cut something (limit: one of proxy.limits.LIMITS)."""
        self._limit_refusals.labels(self.tenant(tenant), limit).inc()

    def answer_withheld(self, tenant: str | None, message: str) -> None:
        """The last line withheld a server's message of type `message` (hidden schemas: a reserved name in it)."""
        self._withheld.labels(self.tenant(tenant), message).inc()

    def unread_closed(self, tenant: str | None, reason: str) -> None:
        """A session whose client left its results unread was ended for `reason` (a CloseReason value)."""
        self._unread_closed.labels(self.tenant(tenant), str(reason)).inc()

    def statement_denied(self, tenant: str | None, rule: str) -> None:
        self._denied.labels(self.tenant(tenant), rule).inc()

    def agent_admission(self, tenant: str | None, outcome: str, seconds: float) -> None:
        """An agent's statement admitted or refused by its estimate after `seconds` of EXPLAIN."""
        self._admissions.labels(self.tenant(tenant), outcome).observe(seconds)

    def decision_offloaded(self, tenant: str | None) -> None:
        """A cache miss of a tenant was sent to a decision worker."""
        self._offloaded.labels(self.tenant(tenant)).inc()

    def decision_timed(self, stage: str, seconds: float) -> None:
        """Seconds the policy engine spent on a cache miss, in one of DECISION_STAGES."""
        stages = self._decision_stages
        if not stages:
            stages.update((st, self._decision_duration.labels(st)) for st in DECISION_STAGES)
        stages[stage].observe(seconds)

    def worker_restarted(self, reason: str) -> None:
        self._worker_restarts.labels(reason).inc()

    def preflight(self, tenant: str, ok: bool) -> None:
        """The outcome of a tenant's isolation preflight."""
        self._preflight_ok.labels(self.tenant(tenant)).set(1 if ok else 0)

    def config_reloaded(self, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "rejected").inc()

    def registry_rejected(self, rows: int) -> None:
        self._registry_rejected.set(rows)


def peer_refused_counter(r: CollectorRegistry) -> Counter:
    """The peer port's refusals (a worker's, or with workers the supervisor's, which owns the port)."""
    return Counter("pgtenant_peer_refused_total", "Connections to the peer port refused (bad_mac, bad_length, "
                   "bad_magic, TimeoutError, IncompleteReadError, ...).", ["reason"], registry=r)


class SupervisorMetrics:
    """The supervisor's own metrics (worker processes), shown with the workers' merged ones."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._workers = Gauge("pgtenant_worker_processes", "Worker processes, by state (starting, running, waiting "
                              "to be restarted, stopped).", ["state"], registry=r)
        self._restarts = Counter("pgtenant_worker_process_restarts_total",
                                 "Worker processes restarted after they exited unexpectedly.", registry=r)
        self._peer_refused = peer_refused_counter(r)

    def peer_refused(self, reason: str) -> None:
        self._peer_refused.labels(reason).inc()

    def workers(self, states: Iterable[str]) -> None:
        """The state of every worker slot now."""
        counts = {state: 0 for state in ("starting", "running", "waiting", "stopped")}
        for state in states:
            counts[state] += 1
        for state, n in counts.items():
            self._workers.labels(state).set(n)

    def worker_restarted(self) -> None:
        self._restarts.inc()

    def text(self) -> str:
        return generate_latest(self.registry).decode()


# --- worker processes: one exposition from several ---------------------------------------------------------------

# Gauges whose workers' values are not added up: the view takes the lowest (1 only when every worker says 1).
MIN_GAUGES = frozenset({"pgtenant_preflight_ok"})


def merge_expositions(texts: Sequence[str]) -> tuple[str, bytes]:
    """One Prometheus text exposition from the workers' own: counters and histograms added up, gauges added up
    (a connection counted in one worker is one connection) except MIN_GAUGES; `_created` is the earliest."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            into = values.setdefault(family.name, {})
            lowest = family.name in MIN_GAUGES
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key not in into:
                    into[key] = s.value
                elif lowest or s.name.endswith("_created"):
                    into[key] = min(into[key], s.value)
                else:
                    into[key] += s.value
    for name, family in families.items():
        samples = sorted(values[name].items(), key=lambda kv: tuple(p for p in kv[0][1] if p[0] != "le"))
        family.samples = [Sample(sname, dict(labels), value) for (sname, labels), value in samples]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return CONTENT_TYPE_LATEST, generate_latest(registry)


class _Fixed(Collector):
    """Metric families already made."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def counters_of(text: str) -> str:
    """The counters and histograms of an exposition: what a gone worker leaves to the sums (its gauges go with it)."""
    kept = [f for f in text_string_to_metric_families(text) if f.type in ("counter", "histogram", "summary")]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(kept))
    return generate_latest(registry).decode()


class WorkerExpositions:
    """The supervisor's memory of its workers' expositions, so that the merged counters never go down: a worker
    that does not answer counts with the counters it last showed, and a replaced one's last counters are kept for
    good (as prometheus_client's multiprocess mode keeps a dead process's files); only the increments a worker made
    after the last scrape before it died are lost."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[int, str]] = {}  # worker index -> (its pid, its last exposition)
        self.retired = ""  # the replaced workers' counters, merged

    def texts(self, answers: dict[int, tuple[int, str] | None]) -> list[str]:
        """The expositions to merge, given each worker's (pid, exposition) now (None: it did not answer)."""
        out: list[str] = []
        for index, answer in sorted(answers.items()):
            last = self.last.get(index)
            if answer is None:
                if last is not None:
                    out.append(counters_of(last[1]))
                continue
            if last is not None and last[0] != answer[0]:
                self.retired = merge_expositions([self.retired, counters_of(last[1])])[1].decode()
            self.last[index] = answer
            out.append(answer[1])
        return [self.retired, *out] if self.retired else out
