"""pg_notify() in the database strategy (red team 7 F7): one notification per call written, one call per statement.

PostgreSQL's notification queue is one for the whole server (`max_notify_queue_pages`, 8 GB by default) and cannot be
truncated past the position of its slowest listener, in any database; when it is full every NOTIFY of every database
fails. `SELECT count(pg_notify('c', $1 || g::text || repeat('x', 7900))) FROM generate_series(1, 5000) g` queued
5,000 distinct notifications (40 MB) per statement and filled it in under 3 minutes behind one listener idle in a
transaction. PostgreSQL drops a notification identical (channel and payload) to one already queued by the same
transaction, so when pg_notify's arguments are fixed for the statement's run (constants, parameters, casts and
operators of them: `advisory.fixed`) each call written queues at most one notification per transaction, whatever
number of rows it runs for; a statement may write one call (`NOTIFY` is one notification by its grammar).
"""

from __future__ import annotations

from proxy.policy.advisory import fixed
from proxy.policy.rules import fail
from proxy.policy.walk import Analysis

MAX_CALLS = 1  # pg_notify() calls a statement may write


def _is_notify(names: tuple[str, ...] | list[str]) -> bool:
    return bool(names) and names[-1] == "pg_notify" and (len(names) == 1 or names[0] == "pg_catalog")


def check(analysis: Analysis) -> None:
    """Refuse pg_notify() calls whose channel or payload may differ from one row to the next, and statements that
    write more than MAX_CALLS of them."""
    calls = [c for c in analysis.calls if _is_notify(c.names)]
    if len(calls) > MAX_CALLS:
        raise fail("notify_bound", f"the statement calls pg_notify() {len(calls)} times; one call per statement is "
                   "allowed")
    for call in calls:
        if call.named:
            raise fail("notify_bound", "pg_notify() must be called with positional arguments")
        if not all(fixed(a) for a in call.args):
            raise fail("notify_bound", "the channel and payload of pg_notify() may differ from one row to the next "
                       "(a column, a subquery or a volatile function): each row would queue a notification of its "
                       "own")
