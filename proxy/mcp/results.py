"""A statement's rows as JSON for the model: values made plain, and a note saying so when rows were cut off."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

from proxy.mcp.door import Rows


def plain(value: Any) -> Any:
    """A database value as JSON: numbers stay numbers (numeric as exact text), times ISO 8601, bytes as hex."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, uuid.UUID | datetime.timedelta):
        return str(value)
    return str(value)


def table(result: Rows, *, limit: int, limit_name: str) -> dict[str, Any]:
    """`result` as {columns, rows, row_count, truncated[, note]}; `limit_name` is the setting that cut it."""
    out: dict[str, Any] = {
        "columns": [{"name": name, "type": type_} for name, type_ in result.columns],
        "rows": [[plain(v) for v in row] for row in result.rows],
        "row_count": len(result.rows),
        "truncated": result.truncated,
    }
    if result.truncated:
        out["note"] = (
            f"Only the first {limit} rows are shown ({limit_name} = {limit}); the statement returned more. "
            "Aggregate (count, sum, GROUP BY), filter with WHERE, or add ORDER BY ... LIMIT to get what you need."
        )
    return out


def records(result: Rows) -> list[dict[str, Any]]:
    """Each row as {column: value} (catalog answers)."""
    names = [name for name, _ in result.columns]
    return [dict(zip(names, (plain(v) for v in row), strict=True)) for row in result.rows]
