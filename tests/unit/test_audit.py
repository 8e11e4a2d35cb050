"""The audit log: batching (records reach the file within the flush interval, nothing is lost at close), literal
redaction, and the end user a BI tool names in its comment."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.audit import (
    DECISIONS,
    FLUSH_INTERVAL,
    OUTCOMES,
    AuditLog,
    _to_json,
    decision_fields,
    end_user_from_sql,
    redact,
)
from proxy.policy.model import Allow, Deny, Rewrite
from proxy.stmtkind import KINDS as KINDS_


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_records_are_batched_then_flushed_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, redact_literals=False)

    async def go() -> tuple[int, int]:
        for i in range(3):
            log.record(sql=f"SELECT {i}")
        before = len(_lines(path))  # still buffered: one write for the batch, not one per record
        await asyncio.sleep(FLUSH_INTERVAL * 3)
        return before, len(_lines(path))

    before, after = asyncio.run(go())
    assert (before, after) == (0, 3)
    log.close()


def test_close_flushes_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, redact_literals=True)

    async def go() -> None:
        log.record(sql="SELECT 'secret'")
        log.close()  # before the scheduled flush: close writes it

    asyncio.run(go())
    assert [x["sql"] for x in _lines(path)] == ["SELECT ?"]


def test_without_a_loop_every_record_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, redact_literals=False)
    log.record(sql="SELECT 1")
    assert [x["sql"] for x in _lines(path)] == ["SELECT 1"]
    log.close()


def test_session_fields_are_encoded_once_and_lines_stay_json(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, redact_literals=False)
    prefix = log.fields(session_id="s1", tenant='we"ird', user="u")
    log.record(prefix, sql="SELECT 1", rows=1)
    log.record(prefix)
    log.record(sql="SELECT 2")
    log.close()
    first, bare, plain = _lines(path)
    assert list(first) == ["timestamp", "event", "session_id", "tenant", "user", "sql", "rows"]
    assert first["tenant"] == 'we"ird' and first["event"] == "statement"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["timestamp"])
    assert bare == {"timestamp": bare["timestamp"], "event": "statement", "session_id": "s1", "tenant": 'we"ird',
                    "user": "u"}
    assert plain["sql"] == "SELECT 2" and "session_id" not in plain


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.builds(Path, st.text(max_size=5)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
))
def test_records_are_encoded_exactly_as_json_dumps_would(value: object) -> None:
    """The audit's once-built encoder writes what json.dumps(…, default=str) writes, byte for byte."""
    record = {"sql": "SELECT 1", "value": value}
    assert _to_json(record) == json.dumps(record, default=str)


_STATEMENT_KEYS = ("end_user", "kind", "decision", "rule", "outcome", "sqlstate", "duration_ms", "rows", "sql",
                   "rewritten_sql", "statements", "more")


def test_statement_words_need_no_quoting() -> None:
    """statement() writes kind, decision and outcome unquoted: every value they can take is a plain word."""
    from proxy.stmtkind import _BY_KEYWORD, KINDS

    decisions = (Allow(), Rewrite("SELECT 2", ("a", "b")), Deny("42501", "no", "hint", "rule"), None)
    names = [decision_fields(d)[0] for d in decisions]
    assert names == list(DECISIONS)
    assert [decision_fields(d)[1:] for d in decisions] == [(None, None), ("a,b", "SELECT 2"), ("rule", None),
                                                          (None, None)]
    words = {*KINDS, *_BY_KEYWORD.values(), "other", *DECISIONS, *OUTCOMES}
    assert set(_BY_KEYWORD.values()) <= set(KINDS)
    for word in words:
        assert re.fullmatch(r"[a-z]+", word), word


_text = st.none() | st.text()


@given(end_user=_text, kind=st.sampled_from(KINDS_), decision=st.sampled_from(DECISIONS),
       rule=_text, outcome=st.sampled_from(OUTCOMES), sqlstate=_text,
       seconds=st.floats(min_value=0, max_value=1e6), rows=st.integers(min_value=0, max_value=2**64 - 1),
       sql=st.text(), rewritten=_text, more=st.none() | st.lists(st.fixed_dictionaries(
           {"sql": st.text(), "decision": st.sampled_from(DECISIONS), "rule": _text, "rewritten_sql": _text}),
           min_size=1, max_size=3))
def test_statement_line_is_the_record_line(
    end_user: str | None, kind: str, decision: str, rule: str | None, outcome: str, sqlstate: str | None,
    seconds: float, rows: int, sql: str, rewritten: str | None, more: list[dict] | None,
) -> None:
    """statement() writes the line record() would, field for field and in the same order (the duration with
    three decimals)."""
    fast, generic = _Capture(), _Capture()
    prefix = AuditLog.fields(session_id="s", tenant="t\u00e9")
    statements = len(more) + 1 if more else 1
    fast.statement(prefix, end_user, kind, decision, rule, outcome, sqlstate, seconds, rows, sql, rewritten,
                   statements, more)
    values = (end_user, kind, decision, rule, outcome, sqlstate, round(seconds * 1000, 3), rows, sql, rewritten,
              statements, more)
    generic.record(prefix, **dict(zip(_STATEMENT_KEYS, values, strict=True)))
    (line,), (expected,) = fast.lines, generic.lines
    assert line.isascii()
    got, want = json.loads(line), json.loads(expected)
    assert list(got) == list(want)
    assert abs(got.pop("duration_ms") - want.pop("duration_ms")) <= 0.0005 + 1e-9 * seconds * 1000
    assert got == want


class _Capture(AuditLog):
    """An AuditLog whose lines stay in a list."""

    def __init__(self) -> None:
        super().__init__(None, redact_literals=False)
        self.lines: list[str] = []
        self._out = self  # type: ignore[assignment]
        self._owned = False

    def write(self, text: str) -> None:
        self.lines.append(text.rstrip("\n"))

    def flush(self) -> None:
        pass

    closed = False


def test_statement_redacts_like_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, redact_literals=True)
    more = [{"sql": "SELECT 'b'", "decision": "allow", "rule": None, "rewritten_sql": None}]
    log.statement("", None, "select", "rewrite", "r", "ok", None, 0.001, 1, "SELECT 'a' -- x",
                  "SELECT 'a' FROM t", 2, more)
    log.close()
    (line,) = _lines(path)
    assert (line["sql"], line["rewritten_sql"], line["more"][0]["sql"]) == ("SELECT ? /* */", "SELECT ? FROM t",
                                                                             "SELECT ?")
    assert line["duration_ms"] == 1.0 and line["statements"] == 2


def test_request_line_from_a_tracked_request() -> None:
    """request() writes a tracked request's fields: the decision's name and rule, the batch's further statements,
    and the end user from the session or, failing that, from the SQL."""
    from proxy.tracking import new_request

    req = new_request(10.0, "select", "SELECT 1 -- Metabase:: userID: 7", Rewrite("SELECT 1 AS x", ("r1", "r2")))
    req.end, req.rows, req.outcome, req.sqlstate = 10.25, 3, "error", "57014"
    req.more("SELECT 2", Deny("42501", "no", "hint", "fn_denied"))
    req.more("SELECT 3", None)
    log = _Capture()
    log.request("", None, req)
    log.request("", "tableau:ann", req)
    first, second = (json.loads(x) for x in log.lines)
    assert first == {
        "timestamp": first["timestamp"], "event": "statement", "end_user": "metabase:7", "kind": "select",
        "decision": "rewrite", "rule": "r1,r2", "outcome": "error", "sqlstate": "57014", "duration_ms": 250.0,
        "rows": 3, "sql": "SELECT 1 -- Metabase:: userID: 7", "rewritten_sql": "SELECT 1 AS x", "statements": 3,
        "more": [{"sql": "SELECT 2", "decision": "deny", "rule": "fn_denied", "rewritten_sql": None},
                 {"sql": "SELECT 3", "decision": "none", "rule": None, "rewritten_sql": None}],
    }
    assert second["end_user"] == "tableau:ann"


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), float("inf"), 1e300])
def test_statement_odd_durations_stay_numbers(seconds: float) -> None:
    """A duration the clock cannot produce still gives a valid line, in both builds (clamped to 1e9 s)."""
    log = _Capture()
    log.statement("", None, "select", "allow", None, "ok", None, seconds, 0, "SELECT 1", None, 1, None)
    assert 0.0 <= json.loads(log.lines[0])["duration_ms"] <= 1e12


def test_redaction_and_end_user() -> None:
    assert redact("SELECT 'a''b', 1.5, x'ff', $$d$$ FROM t WHERE n = E'\\n' /* c */") == (
        "SELECT ?, ?, ?, ? FROM t WHERE n = ? /* */"
    )
    assert redact("SELECT 'é', 'x'") == "SELECT ?, ?"
    assert end_user_from_sql("-- Metabase:: userID: 12 queryType: MBQL\nSELECT 1") == "metabase:12"
    assert end_user_from_sql("SELECT 1") is None
