"""proxy/mcp/results.py: rows as plain JSON, and a truncation the model cannot miss."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid

from proxy.mcp.door import Rows
from proxy.mcp.results import plain, records, table


def test_values_become_plain_json() -> None:
    u = uuid.UUID(int=5)
    values = [None, True, 3, 1.5, "x", decimal.Decimal("1.10"), datetime.date(2026, 1, 2),
              datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), datetime.time(1, 2), b"\x00\xff",
              memoryview(b"a"), [decimal.Decimal(1), None], {"k": (1, 2)}, u, datetime.timedelta(hours=1),
              frozenset()]
    out = [plain(v) for v in values]
    assert out == [None, True, 3, 1.5, "x", "1.10", "2026-01-02", "2026-01-02T03:04:05+00:00", "01:02:00",
                   "\\x00ff", "\\x61", ["1", None], {"k": [1, 2]}, str(u), "1:00:00", "frozenset()"]
    json.dumps(out)


def test_a_complete_result_has_no_note() -> None:
    out = table(Rows([("n", "int4")], [(1,), (2,)]), limit=5, limit_name="max_rows")
    assert out == {"columns": [{"name": "n", "type": "int4"}], "rows": [[1], [2]], "row_count": 2,
                   "truncated": False}


def test_a_cut_result_says_so_and_how_to_narrow_it() -> None:
    out = table(Rows([("n", "int4")], [(1,), (2,)], truncated=True), limit=2, limit_name="max_rows")
    assert out["truncated"] is True and out["row_count"] == 2
    assert "Only the first 2 rows are shown (max_rows = 2)" in out["note"] and "LIMIT" in out["note"]


def test_records_are_keyed_by_column() -> None:
    rows = Rows([("schema", "name"), ("name", "name")], [("public", "orders"), ("public", "items")])
    assert records(rows) == [{"schema": "public", "name": "orders"}, {"schema": "public", "name": "items"}]
