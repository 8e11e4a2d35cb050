"""The session context each prepared statement was decided in, checked again at its Bind (red team 9a9 R1); no I/O.

PostgreSQL analyses a prepared statement again at a Bind when the session's search_path changed since (the first
temporary object of a session creates its temporary schema, which changes the effective path) or a relation it
uses changed, so its names may resolve to other relations than at its Parse (a temporary view shadowing the
tenant's own `orders`, a temporary table dropped for a shared one). Its decision holds only in the context it was
made in: at a Bind in another context (what the decision cache keys the text's decision on: the policy of the
session's temporary relations and search_path, `Gate.policy_for`), the text is decided again; the same verdict
with the same text sent runs, anything else is refused (errors.prepared_in_other_context).
"""

from __future__ import annotations

from collections.abc import Callable

from proxy import errors
from proxy.errors import PgError
from proxy.policy.model import Allow, Rewrite, SessionContext

_MAX_RECORDS = 4096  # statements followed (above [pool] max_session_statements' default: the oldest go first)


def sent_text(decision: object) -> str | None:
    """What a decision sends PostgreSQL: its rewrite, "" for the text as written, None when refused."""
    if type(decision) is Rewrite:
        return decision.sql
    return "" if type(decision) is Allow else None


def change_between(then: SessionContext, now: SessionContext) -> str:
    """Words for what changed in the session's context between a Parse and a Bind."""
    if then.temp_tables != now.temp_tables or then.temp_views != now.temp_views:
        return "a temporary table or view was created or dropped"
    if then.path != now.path or then.local != now.local or then.shown != now.shown:
        return "search_path changed"
    return "the session's context changed"


class DecidedIn:
    """Statement name -> (the decision function it was decided by, the policy its text was decided under, the text,
    what was sent, the session's context)."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records: dict[str, tuple[object, object, str, str, SessionContext]] = {}

    def parsed(self, name: str, by: object, key: object, sql: str, sent: str | None, context: SessionContext) -> None:
        """Statement `name` was decided by `by` under `key` (sent: `sent_text`, None when refused: nothing to
        check)."""
        records = self.records
        if sent is None:
            records.pop(name, None)
            return
        if name not in records and len(records) >= _MAX_RECORDS:
            records.pop(next(iter(records)))
        records[name] = (by, key, sql, sent, context)

    def settled(self, name: str, by: object, key_for: Callable[[str], object], context: SessionContext) -> None:
        """Statement `name`'s own changes (counted from its Parse: a temporary relation, an exported snapshot) made
        the session's context `context`, decided by `by`: what its Bind compares with (PostgreSQL runs them only at
        its Execute, after the Bind)."""
        found = self.records.get(name)
        if found is not None:
            _, _, sql, sent, _ = found
            self.records[name] = (by, key_for(sql), sql, sent, context)

    def closed(self, name: str) -> None:
        self.records.pop(name, None)

    def bound(self, name: str, by: object, key_for: Callable[[str], object], decide: Callable[[str], object],
              context: SessionContext) -> PgError | None:
        """A Bind of `name` in `context`, decided by `by` now (the same one as at its Parse: the same context): None
        to run it, else the error to answer. `key_for(sql)` is the policy the text is decided under now,
        `decide(sql)` its decision now (a Pending, not decided at once, refuses)."""
        found = self.records.get(name)
        if found is None or found[0] is by:
            return None
        _, key, sql, sent, then = found
        now = key_for(sql)
        if now is key or now == key:
            return None
        if sent_text(decide(sql)) == sent:
            self.records[name] = (by, now, sql, sent, context)
            return None
        statement = f'prepared statement "{name}"' if name else "the unnamed prepared statement"
        return errors.prepared_in_other_context(statement=statement, change=change_between(then, context))
