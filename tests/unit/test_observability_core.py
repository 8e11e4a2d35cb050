"""Pure pieces of observability: statement kinds, request tracking, label cap, admin console, redaction."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from proxy import admin
from proxy.audit import end_user_from_sql, redact
from proxy.errors import PgError
from proxy.metrics import Metrics, QueryRecorder, TenantLabels
from proxy.policy.model import Allow, Deny
from proxy.stmtkind import statement_kind
from proxy.tracking import RequestTracker

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
    assert recorder.series[("select", "ok")] == [0, 1, 1, 2.5]


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


def test_admin_console_commands() -> None:
    out = admin.execute(" show   tenants ; ", _Ctx())
    assert out[:1] == b"T" and b"acme" in out and out.endswith(b"C\x00\x00\x00\x0bSHOW 2\x00")
    assert b"\xff\xff\xff\xff" in out  # NULL encoded as -1
    assert admin.execute("RELOAD", _Ctx()).startswith(b"N")
    assert admin.execute("kill_client abc", _Ctx()).startswith(b"C")
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
