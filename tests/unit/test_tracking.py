"""The request tracker holds a bounded amount of SQL text per session, whatever a client sends."""

from __future__ import annotations

from proxy.policy.model import Allow, Rewrite
from proxy.tracking import MAX_HELD, MAX_TEXT, SHORT_TEXT, RequestTracker, clip


def test_a_long_text_is_held_clipped_with_its_length() -> None:
    t = RequestTracker(lambda: 0.0)
    sql = "SELEC " + "x" * (30 << 20)
    t.on_query(sql, Rewrite("R" * (2 * MAX_TEXT), ("r",)))
    [req] = t.pending
    assert req.sql == clip(sql, MAX_TEXT) and req.sql.endswith(f"... [{len(sql)} characters]")
    assert len(req.decision.sql) < MAX_TEXT + 40 and req.decision.rules == ("r",)
    assert t.held == req.held == len(req.sql) + len(req.decision.sql)
    t.on_ready()
    assert t.held == 0


def test_past_its_budget_a_tracker_holds_short_texts_only() -> None:
    t = RequestTracker(lambda: 0.0)
    long = "SELECT '" + "y" * MAX_TEXT + "'"
    for _ in range(100):  # a pipelined burst of long statements, none answered yet
        t.on_query(long, Allow())
    assert t.held <= MAX_HELD + MAX_TEXT + 100 * (SHORT_TEXT + 40)
    assert len(t.pending[-1].sql) < SHORT_TEXT + 40 and len(t.pending[0].sql) > MAX_TEXT
    while t.pending:
        t.on_ready()
    assert t.held == 0


def test_named_statements_are_bounded_in_bytes_the_oldest_going_first() -> None:
    done = []
    t = RequestTracker(lambda: 0.0, done.append)
    text = "SELECT '" + "z" * 60_000 + "'"
    for i in range(100):
        t.on_parse(f"s{i}", text + str(i), Allow())
        t.on_sync()
        t.on_ready()
    assert t.held <= MAX_HELD
    t.on_bind("s99")  # still known: its kind and (clipped) text are recorded
    t.on_sync()
    t.on_ready()
    assert done[-1].sql.startswith("SELECT 'zzz")
    t.on_bind("s0")  # forgotten: the request is recorded without its text
    t.on_sync()
    t.on_ready()
    assert done[-1].sql == ""
    for i in range(100):
        t.on_close_statement(f"s{i}")
    assert t.held == 0


def test_a_batch_keeps_the_text_of_a_thousand_and_one_statements_and_counts_the_rest() -> None:
    done = []
    t = RequestTracker(lambda: 0.0, done.append)
    for i in range(5000):
        t.on_parse("", f"INSERT INTO t VALUES ({i})", Allow())
    t.on_sync()
    t.on_ready()
    [req] = done
    assert len(req.extra) == 1000 and req.extra_dropped == 3999 and req.statements == 5000
    assert t.held == 0
