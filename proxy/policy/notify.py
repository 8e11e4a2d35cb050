"""pg_notify() in the database strategy (red team 7 F7): one notification per call written, one call per statement;
never on the tenant registry's channel (red team 8b F3).

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
from proxy.policy.tree import Node
from proxy.policy.walk import Analysis
from proxy.registrynames import CHANNEL as REGISTRY_CHANNEL

# The tenant registry announces its changes on REGISTRY_CHANNEL: a tenant whose database holds the registry (a
# config the proxy refuses, registryplace.py; this is the second lock) could make every proxy reload by notifying
# it, and read the change feed by listening. LISTEN/NOTIFY of it are refused; pg_notify() with it as a literal is
# refused, with any other channel expression guarded at run time (guards.notify_channel).

MAX_CALLS = 1  # pg_notify() calls a statement may write


def _is_notify(names: tuple[str, ...] | list[str]) -> bool:
    return bool(names) and names[-1] == "pg_notify" and (len(names) == 1 or names[0] == "pg_catalog")


def reserved(channel: str | None) -> None:
    """Refuse the registry's channel (LISTEN, NOTIFY, UNLISTEN are harmless and allowed)."""
    if channel == REGISTRY_CHANNEL:
        raise fail("registry_reserved", f"the channel {channel} is the proxy's own (its tenant registry)")


def literal(node: Node | None) -> str | None:
    """The text of a bare string literal (no cast: `'x '::char(3)` is `x` to pg_notify), else None."""
    const = node.get("A_Const") if isinstance(node, dict) else None
    return str(const["sval"].get("sval", "")) if isinstance(const, dict) and "sval" in const else None


def needs_guard(channel: Node) -> bool:
    """True when pg_notify()'s channel is not a bare string literal nor NULL: its value is checked at run time."""
    const = channel.get("A_Const") if isinstance(channel, dict) else None
    return literal(channel) is None and not (isinstance(const, dict) and const.get("isnull"))


def check(analysis: Analysis) -> None:
    """Refuse pg_notify() calls whose channel or payload may differ from one row to the next, statements that write
    more than MAX_CALLS of them, and the registry's channel as a literal."""
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
        if call.args:
            reserved(literal(call.args[0]))
