"""The audit log's batching: records reach the file within the flush interval, and nothing is lost at close."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from proxy.audit import FLUSH_INTERVAL, AuditLog


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
