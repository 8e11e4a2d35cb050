"""The audit log's batching: records reach the file within the flush interval, and nothing is lost at close."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from proxy.audit import FLUSH_INTERVAL, AuditLog, _to_json


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
