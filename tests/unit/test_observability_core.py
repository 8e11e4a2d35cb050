"""Pure pieces of observability: statement kinds, request tracking, label cap, admin console, redaction."""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from proxy import admin
from proxy.audit import end_user_from_sql, redact
from proxy.errors import PgError
from proxy.metrics import Metrics, QueryRecorder, TenantLabels, TenantStats
from proxy.policy.model import Allow, Deny
from proxy.stmtkind import _BY_KEYWORD, _statement_kind, statement_kind
from proxy.tracking import RequestTracker, tag_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "select"), ("  /* c /* nested */ */ -- x\n (select 1)", "select"),
        ("WITH t AS (SELECT 1) TABLE t", "select"),
        ("insert into t values (1)", "insert"), ("UPDATE t SET a=1", "update"), ("DELETE FROM t", "delete"),
        ("COPY t TO STDOUT", "copy"), ("CREATE TEMP TABLE x (a int)", "ddl"), ("BEGIN", "utility"),
        ("SET x = 1", "utility"), ("", "other"), ("42", "other"), ("fetch 50 in c", "select"),
    ],
)
def test_statement_kind(sql: str, kind: str) -> None:
    assert statement_kind(sql) == kind


_OLD_LEADING_WORD = re.compile(r"[A-Za-z_]+(?![^\W\d])")


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(["select", "SELECT", "Update", "with", "_", "x", "é", "1", " ", "(", "--", "\n",
                                 "/*", "*/", "insert", "ß", "K", "\u212a"]), max_size=6).map("".join))
def test_statement_kind_reads_the_leading_word_as_before(sql: str) -> None:
    """The typed scan answers as the regular expression it replaced (a whole word, case-insensitive)."""
    word = _OLD_LEADING_WORD.match(sql)
    expected = _BY_KEYWORD.get(word.group().lower(), "other") if word else _statement_kind(sql)
    assert statement_kind(sql) == expected


def test_tracker_matches_responses_in_order() -> None:
    now = [0.0]
    done: list = []
    t = RequestTracker(lambda: now[0], done.append)
    t.on_query("SELECT 1", Allow())
    t.on_parse("S_1", "INSERT INTO t VALUES ($1)", Allow())
    t.on_bind("S_1")
    t.on_sync()
    t.on_bind("S_1")  # reuse of the named statement: kind known from its Parse
    t.on_sync()
    now[0] = 1.0
    t.on_command_complete(b"SELECT 1\x00")
    t.on_ready()
    t.on_error("23505")
    t.on_ready()
    t.on_command_complete(b"INSERT 0 3\x00")
    now[0] = 2.5
    t.on_ready()
    assert [(r.kind, r.outcome, r.rows, r.duration) for r in done] == [
        ("select", "ok", 1, 1.0), ("insert", "error", 0, 1.0), ("insert", "ok", 3, 2.5),
    ]
    assert done[1].sqlstate == "23505"
    assert t.on_ready() is None  # nothing pending: e.g. the startup ReadyForQuery


def test_row_counts_past_64_bits_are_counted_exactly() -> None:
    """PostgreSQL's row counts are unsigned 64-bit: the compiled build must not narrow them either."""
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_query("SELECT 1", Allow())
    t.on_command_complete(b"SELECT 18446744073709551615\x00")
    t.on_command_complete(b"SELECT 2\x00")
    t.on_ready()
    assert done[0].rows == 18446744073709551617
    recorder = QueryRecorder((0.1, 1.0))
    recorder.record("select", "ok", 0.5, done[0].rows)
    recorder.record("select", "ok", 2.0, 1)
    assert recorder.rows == 18446744073709551618
    assert recorder.series[("select", "ok")].snapshot() == [0, 1, 1, 2.5]


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=30) | st.lists(st.sampled_from([b"SELECT", b"INSERT", b" ", b"0", b"7", b"12", b"\x00",
                                                           b"x", b"18446744073709551617"]), max_size=8).map(b"".join))
def test_tag_rows_reads_the_trailing_count_as_the_spec_says(tag: bytes) -> None:
    """The count is the tag's last space-separated word, without trailing NULs, when it is all ASCII digits."""
    last = tag[tag.rfind(b" ") + 1 :].rstrip(b"\x00")
    assert tag_rows(tag) == (int(last) if last.isdigit() else 0)


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


def test_tracker_denied_outcome() -> None:
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_query("SET pgtenant.tenant_id = 'x'", Deny("42501", "no", "", "reserved_setting"))
    t.on_error("42501", denied=True)
    t.on_ready()
    assert done[0].outcome == "denied"


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


class _Ctx:
    def tenants(self):
        return ("tenant", "strategy"), [("acme", "shared"), ("globex", None)]

    clients = servers = stats = config_rows = tenants

    def reload(self) -> str:
        return "reload started"

    def kill_client(self, session_id: str) -> bool:
        return session_id == "abc"

    def unlock(self, user: str) -> int:
        return 3 if user == "Alice x" else 0


def test_admin_console_commands() -> None:
    out = admin.execute(" show   tenants ; ", _Ctx())
    assert out[:1] == b"T" and b"acme" in out and out.endswith(b"C\x00\x00\x00\x0bSHOW 2\x00")
    assert b"\xff\xff\xff\xff" in out  # NULL encoded as -1
    assert admin.execute("RELOAD", _Ctx()).startswith(b"N")
    assert admin.execute("kill_client abc", _Ctx()).startswith(b"C")
    assert admin.execute('unlock "Alice x";', _Ctx()) == admin.command_complete("UNLOCK 3")
    assert admin.execute("UNLOCK bob", _Ctx()) == admin.command_complete("UNLOCK 0")
    with pytest.raises(PgError) as exc:
        admin.execute("KILL_CLIENT fff", _Ctx())
    assert exc.value.sqlstate == "42704"
    with pytest.raises(PgError) as exc:
        admin.execute("SELECT * FROM pg_shadow", _Ctx())
    assert exc.value.sqlstate == "42601" and exc.value.hint


def test_redaction_and_end_user() -> None:
    assert redact("SELECT 'a''b', 1.5, x'ff', $$d$$ FROM t WHERE n = E'\\n' /* c */") == (
        "SELECT ?, ?, ?, ? FROM t WHERE n = ? /* */"
    )
    assert redact("SELECT 'é', 'x'") == "SELECT ?, ?"
    assert end_user_from_sql("-- Metabase:: userID: 12 queryType: MBQL\nSELECT 1") == "metabase:12"
    assert end_user_from_sql("SELECT 1") is None
