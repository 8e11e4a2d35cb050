"""Whether a batch ended by a Flush and answered in full holds nothing on its server (red team 9r F7/F9); pure."""

from __future__ import annotations

import re

from proxy.tracking import Request

# The leading keywords of a statement that can only return rows (a data-modifying WITH fails on a replica).
_READS = frozenset({"select", "with", "values", "table"})
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")


def _plain_read(sql: str) -> bool:
    found = _FIRST_WORD.match(sql)
    return found is not None and found.group(1).lower() in _READS


def settles(request: Request, *, binds: int, paged: bool, replica: bool) -> bool:
    """Whether the open batch `request` — its client's last message a Flush, every answer delivered, the server
    outside a transaction block — may be ended by a Sync of the proxy's own, its server then judged free again: it
    failed nowhere (an error makes the server skip to the client's Sync), and either nothing ran (Parse, Describe,
    Close only: asyncpg's prepare()) or, on a replica, only reads ran to their end (psycopg's pipeline fetch; no
    Execute with a row count: its portal may go on). On the primary a batch that ran statements keeps its server:
    its writes commit only at the client's Sync, and an error before it would roll them back."""
    if request.closed_by_sync or request.outcome != "ok":
        return False
    if not binds:
        return True
    if paged or not replica or request.extra_dropped:
        return False
    return all(_plain_read(sql) for sql in (request.sql, *(sql for sql, _ in request.extra or ())))
