"""The request tracker: responses matched to requests in order, row counts, and a bounded amount of SQL text
held per session whatever a client sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.metrics import QueryRecorder
from proxy.policy.model import Allow, Deny, Rewrite
from proxy.tracking import MAX_HELD, MAX_TEXT, SHORT_TEXT, RequestTracker, clip, tag_rows


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


def test_tracker_denied_outcome() -> None:
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_query("SET pgtenant.tenant_id = 'x'", Deny("42501", "no", "", "reserved_setting"))
    t.on_error("42501", denied=True)
    t.on_ready()
    assert done[0].outcome == "denied"


def test_tracker_unsynced_batch_then_query_is_one_request() -> None:
    done = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_parse("", "SELECT 1", Allow())
    t.on_bind("")
    t.on_query("SELECT 2", Allow())
    t.on_ready()  # the only ReadyForQuery PostgreSQL sends for the above
    assert not t.pending, [r.sql for r in t.pending]


def test_tracker_pending_is_bounded() -> None:
    t = RequestTracker(lambda: 0.0)
    for _ in range(200_000):
        t.on_sync()
    assert len(t.pending) <= 10_000


@pytest.mark.parametrize("build", ["python", "compiled"])
def test_a_dropped_request_still_owes_its_ready_for_query(build: str) -> None:
    """Review 19a F1b: past 10,000 requests in flight the oldest are dropped, not their ReadyForQuerys: the kept
    ones stay in flight until every one sent is answered (an early empty `pending` read as "idle" ended an open
    transaction's portals)."""
    from tests.unit.test_speedups import both, speedups

    py, fast = both("proxy.tracking", "RequestTracker")
    if build == "compiled" and speedups is None:
        pytest.skip("no compiled build")
    t = (py if build == "python" else fast)(lambda: 0.0)
    for _ in range(10_010):
        t.on_query("SELECT 1", None)
    t.on_query("BEGIN", None)
    assert len(t.pending) == 10_000 and t.dropped == t.owed_dropped == 11
    for _ in range(10_010):
        t.on_ready()
        assert t.pending
    assert t.pending[-1].sql == "BEGIN"
    t.on_ready()
    assert not t.pending and t.owed_dropped == 0


@pytest.mark.parametrize("build", ["python", "compiled"])
def test_a_skipped_close_puts_the_statements_text_back(build: str) -> None:
    """A Close PostgreSQL skipped: the kind and text `on_close_statement` took are the name's again (its Binds'
    requests carry them), counted as held again."""
    from tests.unit.test_speedups import both, speedups

    py, fast = both("proxy.tracking", "RequestTracker")
    if build == "compiled" and speedups is None:
        pytest.skip("no compiled build")
    t = (py if build == "python" else fast)(lambda: 0.0)
    t.on_parse("s", "SELECT 42", None)
    t.on_sync()
    t.on_ready()
    held = t.held
    old = t.on_close_statement("s")
    assert old == ("select", "SELECT 42") and t.held == held - len("SELECT 42")
    t.on_close_undone("s", old)
    assert t.held == held
    t.on_bind("s")
    assert t.pending[-1].sql == "SELECT 42"


def _skipped_behind_a_flood(cls: type, synced: bool) -> list[object]:
    """An extended batch ended by a Query (no Sync), 10,010 Queries behind it (it and 11 of them dropped), a Sync or
    not; PostgreSQL fails the batch: everything up to the Sync is skipped, one ReadyForQuery."""
    t = cls(lambda: 0.0)
    t.on_parse("", "SELECT 1/0", None)
    t.on_bind("")
    t.on_query("SELECT 1", None)
    for _ in range(10_010):
        t.on_query("SELECT 1", None)
    if synced:
        t.on_sync()
    log: list[object] = [t.dropped, t.owed_dropped, len(t.pending)]
    t.on_error("22012")
    log += [len(t.on_skipped()), t.owed_dropped, len(t.pending)]
    if not synced:
        t.on_query("SELECT 2", None)  # (skipped too: part of the batch up to its Sync)
        t.on_sync()
    log += [t.on_ready() is not None, t.owed_dropped, len(t.pending), t.held]
    t.on_query("SELECT 3", None)
    log += [t.on_ready().sql, len(t.pending)]
    return log


@pytest.mark.parametrize("synced", [True, False])
def test_a_dropped_request_that_postgresql_skips_owes_no_ready_for_query(synced: bool) -> None:
    """wp-sk's residual of F1b: a dropped request joined into a failed batch (PostgreSQL skips it) is owed no
    ReadyForQuery: once the one ReadyForQuery of the skipped stretch came, nothing is in flight (before: the session
    stayed "busy" for ever); the compiled twin alike."""
    from tests.unit.test_speedups import both, speedups

    py, fast = both("proxy.tracking", "RequestTracker")
    log = _skipped_behind_a_flood(py, synced)
    dropped = 12 if synced else 11  # (the Sync's request pushed one more out)
    kept_joined = 9_999 if synced else 10_000  # (the Sync's request answers the stretch; unsynced, a new batch does)
    assert log == [dropped, dropped, 10_000, kept_joined, 0, 1, True, 0, 0, 0, "SELECT 3", 0], log
    if speedups is not None:
        assert _skipped_behind_a_flood(fast, synced) == log


def test_a_query_inside_a_failed_batch_is_answered_with_the_batch() -> None:
    """Red team 9a3 J8: extended messages, a Query, more, a Sync: when the extended messages fail, PostgreSQL skips
    everything up to the Sync (one ReadyForQuery); the tracker joins those requests to the first."""
    done = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_parse("", "SELECT nosuch", None)
    t.on_bind("")
    t.on_query("SELECT 1", None)  # ends the batch: one ReadyForQuery for both, unless the batch failed
    t.on_query("SELECT 2", None)
    t.on_parse("", "SELECT 3", None)
    t.on_sync()
    t.on_query("SELECT 4", None)
    assert len(t.pending) == 4
    joined = t.on_skipped()
    assert [r.sql for r in joined] == ["SELECT 2", "SELECT 3"] and len(t.pending) == 2
    assert t.on_ready().statements == 4 and t.pending[0].sql == "SELECT 4"
    t.on_ready()
    assert t.held == 0 and not t.pending


def test_a_query_after_the_failure_is_known_joins_the_open_batch() -> None:
    t = RequestTracker(lambda: 0.0)
    t.on_parse("", "SELECT nosuch", None)
    t.on_skipped()  # its error arrived (a Flush): the batch is still open
    t.on_query("SELECT 1", None)  # skipped by the backend
    t.on_sync()
    assert len(t.pending) == 1 and t.on_ready().statements == 2
    t.on_parse("", "SELECT 1", None)
    t.on_query("SELECT 2", None)  # a batch that did not fail: the Query's ReadyForQuery ends it
    t.on_sync()
    assert len(t.pending) == 2


def _answered_in_order(t: RequestTracker, done: list, answers: int) -> list[str]:
    """The texts of the requests `answers` ReadyForQuerys end."""
    for _ in range(answers):
        t.on_ready()
    return [req.sql for req in done]


def test_a_sync_pipelined_into_an_extended_copy_in_is_not_a_request_end() -> None:
    """Parse/Bind/Execute(COPY FROM STDIN)/Sync/CopyData/CopyDone/Sync in one write, then a Query: PostgreSQL
    ignores the first Sync and answers the batch with one ReadyForQuery (red team 9a4 K3)."""
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_parse("", "COPY tt FROM STDIN", Allow())
    t.on_bind("")
    t.on_sync()  # read by the proxy before the server's CopyInResponse
    t.on_copy_end()
    t.on_sync()
    t.on_query("SELECT * FROM nosuch", Allow())
    assert t.on_copy_in() and not t.copy_in  # (the client ended the COPY already)
    assert _answered_in_order(t, done, 2) == ["COPY tt FROM STDIN", "SELECT * FROM nosuch"]
    assert not t.pending and t.held == 0


def test_a_sync_pipelined_into_a_simple_copy_in_is_not_a_request_end() -> None:
    """Query(COPY FROM STDIN)/Sync/CopyData/CopyDone, then a Query: the Sync is swallowed (red team 9a4 K3c)."""
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_query("COPY tt FROM STDIN", Allow())
    t.on_sync()
    t.on_copy_end()
    t.on_query("SELECT 2", Allow())
    t.on_copy_in()
    assert not t.copy_in
    assert _answered_in_order(t, done, 2) == ["COPY tt FROM STDIN", "SELECT 2"]
    assert not t.pending


def _flush(t: RequestTracker) -> None:
    """A Flush, as the session reports it (proxy/session.py `_on_request_message`: it opens a batch as a Bind)."""
    t.on_bind("")


def test_a_flush_after_the_sync_pipelined_into_an_extended_copy_in_is_swallowed_too() -> None:
    """Parse/Bind/Execute(COPY)/Sync/Flush/CopyData/CopyDone/Sync in one write, then a Query: PostgreSQL ignores the
    Sync and the Flush in COPY IN and answers the batch with one ReadyForQuery; the batch the Flush opened is the
    COPY's own (red team 9a5 F11: every later answer was matched to the request before it)."""
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_parse("", "COPY tt FROM STDIN", Allow())
    t.on_bind("")
    t.on_sync()
    _flush(t)
    t.on_copy_end()
    t.on_sync()
    t.on_query("SELECT * FROM nosuch", Allow())
    t.on_copy_in()
    assert not t.copy_in
    assert _answered_in_order(t, done, 2) == ["COPY tt FROM STDIN", "SELECT * FROM nosuch"]
    assert not t.pending and t.held == 0


def test_a_flush_after_the_sync_pipelined_into_a_simple_copy_in_is_swallowed_too() -> None:
    """Query(COPY)/Sync/Flush/CopyData/CopyDone, then a Query: the Sync is swallowed; the batch the Flush opened is
    the next one (the Query's COPY ends with its own ReadyForQuery), here the Query's (red team 9a5 F11)."""
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_query("COPY tt FROM STDIN", Allow())
    t.on_sync()
    _flush(t)
    t.on_copy_end()
    t.on_query("SELECT 2", Allow())
    t.on_copy_in()
    assert _answered_in_order(t, done, 2) == ["COPY tt FROM STDIN", "SELECT 2"]
    assert not t.pending


@pytest.mark.parametrize("simple", [False, True], ids=["extended", "simple"])
def test_a_flush_in_a_copy_in_the_server_began_before_the_client_ended_it(simple: bool) -> None:
    """COPY/Sync/Flush, then CopyInResponse (the client still in the COPY), then CopyData/CopyDone, a Parse and a
    Sync, then a Query: the batch the Flush opened is not left detached (it is the COPY's, or the next one)."""
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    if simple:
        t.on_query("COPY tt FROM STDIN", Allow())
    else:
        t.on_parse("", "COPY tt FROM STDIN", Allow())
        t.on_bind("")
    t.on_sync()
    _flush(t)
    t.on_copy_in()
    assert t.copy_in
    t.on_copy_end()
    if not simple:
        t.on_sync()  # the extended COPY's batch ends here
    t.on_parse("", "SELECT 6", Allow())
    t.on_sync()
    t.on_query("SELECT 7", Allow())
    assert _answered_in_order(t, done, 3) == ["COPY tt FROM STDIN", "SELECT 6", "SELECT 7"]
    assert not t.pending and t.held == 0


def test_a_sync_sent_after_the_copy_ended_is_read_by_the_server() -> None:
    """Parse/Bind/Execute(COPY)/CopyData/CopyDone/Sync in one write: that Sync ends the batch, and the session is not
    left in COPY IN (its later Syncs are requests: red team 9a4 K4)."""
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_parse("", "COPY tt FROM STDIN", Allow())
    t.on_bind("")
    t.on_copy_end()
    t.on_sync()
    assert t.on_copy_in() == [] and not t.copy_in
    t.on_parse("k1", "SELECT 1", Allow())
    t.on_sync()
    assert _answered_in_order(t, done, 2) == ["COPY tt FROM STDIN", "SELECT 1"]


def test_a_sync_sent_before_the_server_began_the_copy_the_client_waits_for() -> None:
    """Parse/Bind/Execute(COPY)/Sync, then (after CopyInResponse) CopyData/CopyDone/Sync: one request."""
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_parse("", "COPY tt FROM STDIN", Allow())
    t.on_bind("")
    t.on_sync()
    assert t.on_copy_in() == [] and t.copy_in
    t.on_sync()  # (ignored in COPY IN)
    t.on_copy_end()
    t.on_sync()
    t.on_query("SELECT 3", Allow())
    assert _answered_in_order(t, done, 2) == ["COPY tt FROM STDIN", "SELECT 3"]


def test_what_followed_a_copy_in_its_batch_is_part_of_that_batch() -> None:
    """Execute(COPY)/Sync/CopyDone, then Parse/Sync before the CopyInResponse: PostgreSQL runs the Parse in the COPY's
    batch (its Sync was swallowed) and answers both with one ReadyForQuery."""
    done: list = []
    t = RequestTracker(lambda: 0.0, done.append)
    t.on_parse("", "COPY tt FROM STDIN", Allow())
    t.on_bind("")
    t.on_sync()
    t.on_copy_end()
    t.on_parse("", "SELECT 4", Allow())
    t.on_sync()
    t.on_query("SELECT 5", Allow())
    [joined] = t.on_copy_in()
    assert joined.sql == "SELECT 4"
    t.on_ready()
    assert done[0].statements == 2 and done[0].extra[0][0] == "SELECT 4"
    assert _answered_in_order(t, done, 1)[1:] == ["SELECT 5"]
    assert t.held == 0
