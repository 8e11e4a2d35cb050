"""The audit stream: one JSON line per statement; literal redaction by PostgreSQL's own scanner."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pglast import parser

from proxy.memory import text_cache
from proxy.policy.model import Allow, Decision, Deny, Rewrite
from proxy.tracking import Request

_CONSTANTS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "XCONST", "BCONST"})
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
# BI tools that annotate queries with the end user; a claim for attribution, never an authentication.
_METABASE = re.compile(r"--\s*Metabase::\s*userID:\s*(\d+)")
_TABLEAU = re.compile(r"TableauServerUser\s*[=:]\s*'?([\w.@\\-]+)")


@text_cache(4096)  # a long text is computed, not kept: 4096 x 2 KB at most
def redact(sql: str) -> str:
    """`sql` with every literal replaced by `?` and comments emptied; unscannable text is withheld."""
    try:
        tokens = parser.scan(sql)  # offsets are character offsets into `sql`, end inclusive
    except Exception:
        return "<unscannable statement withheld>"
    out: list[str] = []
    pos = 0
    for tok in tokens:
        if tok.name in _CONSTANTS or tok.name in _COMMENTS:
            out.append(sql[pos : tok.start])
            out.append("?" if tok.name in _CONSTANTS else "/* */")
            pos = tok.end + 1
    out.append(sql[pos:])
    return "".join(out)


def end_user_from_sql(sql: str) -> str | None:
    """An end-user identity a BI tool wrote into the SQL (Metabase remark, Tableau initial SQL)."""
    if "Metabase" not in sql and "TableauServerUser" not in sql:  # a substring search, cheaper than two regexes
        return None
    m = _METABASE.search(sql)
    if m:
        return f"metabase:{m.group(1)}"
    m = _TABLEAU.search(sql)
    if m:
        return f"tableau:{m.group(1)}"
    return None


def _make_encoder() -> Callable[[Any], str]:
    """`json.dumps(obj, default=str)` for the audit's flat records: the C encoder json.dumps builds on every call
    (with default= it also builds a JSONEncoder), built once here; json.dumps itself where it is unavailable or
    would answer differently."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is not None:
        try:
            chunks = make(None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
            probe = {"a": "é\n", "b": [1, None, True, 1.5], "c": {"d": Path("x")}}
            if "".join(chunks(probe, 0)) == json.dumps(probe, default=str):
                return lambda obj: "".join(chunks(obj, 0))
        except (TypeError, ValueError):
            pass
    return lambda obj: json.dumps(obj, default=str)


_to_json = _make_encoder()
_quote: Callable[[str], str] = getattr(json.encoder, "c_encode_basestring_ascii", None) or (
    json.encoder.encode_basestring_ascii)


# Values `statement()` writes without quoting them again: the closed sets they come from (a test holds every one
# to be plain JSON-safe text).
DECISIONS = ("allow", "rewrite", "deny", "none")
OUTCOMES = ("ok", "error", "denied")


def decision_fields(decision: Decision | None) -> tuple[str, str | None, str | None]:
    """A decision's audit fields: its name (one of DECISIONS), its rule(s), and the rewritten SQL."""
    kind = type(decision)
    if kind is Allow:
        return "allow", None, None
    if kind is Rewrite:
        return "rewrite", ",".join(decision.rules), decision.sql  # type: ignore[union-attr]
    if kind is Deny:
        return "deny", decision.rule, None  # type: ignore[union-attr]
    return "none", None, None


def _further_statement(sql: str, decision: Decision | None) -> dict[str, object]:
    """Audit fields of a further statement of the same request (an extended batch or a merged Query)."""
    name, rule, rewritten = decision_fields(decision)
    return {"sql": sql, "decision": name, "rule": rule if name == "deny" else None, "rewritten_sql": rewritten}

def _redact_record(record: dict[str, Any]) -> None:
    """Redact the SQL texts of one audit record (or of one further statement of it) in place."""
    for key in ("sql", "rewritten_sql"):
        if record.get(key):
            record[key] = redact(record[key])


FLUSH_INTERVAL = 0.1  # seconds a record may wait in the buffer: one write() per batch, not per statement


class AuditLog:
    """Writes audit records as JSON lines to a file (appending) or to standard error.

    A file is written in batches: the first record after a flush schedules the next flush on the running
    event loop, FLUSH_INTERVAL later (without a running loop, every record is flushed at once). `close()`
    flushes what is left, so a clean shutdown loses nothing; a crash can lose the last FLUSH_INTERVAL.
    """

    def __init__(self, file: Path | None, redact_literals: bool) -> None:
        self.redact = redact_literals
        self._lock = threading.Lock()
        self._out: IO[str] = file.open("a", buffering=1 << 16) if file is not None else sys.stderr
        self._owned = file is not None
        self._flush_scheduled = False
        self._second = -1
        self._head = ""

    @staticmethod
    def fields(**fields: Any) -> str:
        """Fields encoded once for many records (a session's id, tenant, user…): pass it as `record(prefix)`."""
        return _to_json(fields)[1:-1]

    def record(self, prefix: str = "", /, **fields: Any) -> None:
        """One JSON line: timestamp, event, the pre-encoded `prefix` fields, then `fields`."""
        if self.redact:
            for record in (fields, *(fields.get("more") or ())):
                _redact_record(record)
        head = self._head_now() + (", " + prefix if prefix else "")
        self._write(head + (", " + _to_json(fields)[1:] if fields else "}") + "\n")

    def event(self, event: str, prefix: str = "", /, **fields: Any) -> None:
        """One JSON line of another event than a statement (an admin login or command): timestamp, event,
        the pre-encoded `prefix` fields, then `fields`."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        head = _to_json({"timestamp": stamp, "event": event})[:-1] + (", " + prefix if prefix else "")
        self._write(head + (", " + _to_json(fields)[1:] if fields else "}") + "\n")

    def admission(self, prefix: str, sql: str, outcome: str, cost: float | None, rows: float | None, max_rows: int,
                  seconds: float) -> None:
        """The line of an agent's statement admitted or refused by the planner's estimate (proxy/admission.py):
        the estimate, the LIMIT the agent profile applied, the EXPLAIN round trip's duration."""
        self.event("agent_admission", prefix, outcome=outcome, estimated_cost=cost, estimated_rows=rows,
                   applied_limit=max_rows, explain_ms=round(seconds * 1000, 3),
                   sql=redact(sql) if self.redact and sql else sql)

    def request(self, prefix: str, end_user: str | None, req: Request) -> None:
        """The line of one answered request; `end_user` is the session's claim, else one the SQL carries."""
        name, rule, rewritten = decision_fields(req.decision)
        sql = req.sql
        extra = req.extra
        self.statement(
            prefix, end_user or end_user_from_sql(sql), req.kind, name, rule, req.outcome, req.sqlstate,
            req.end - req.start, req.rows, sql, rewritten, req.statements,
            [_further_statement(text, decision) for text, decision in extra] if extra else None,
        )

    def statement(self, prefix: str, end_user: str | None, kind: str, decision: str, rule: str | None,
                  outcome: str, sqlstate: str | None, seconds: float, rows: int, sql: str, rewritten: str | None,
                  statements: int, more: list[dict[str, object]] | None) -> None:
        """One request's line: what `record(prefix, end_user=…, …, more=…)` writes, in the same key order, built
        as one string (a dict and the generic encoder cost several times more per request). `kind`, `decision`
        and `outcome` come from closed sets of plain words (stmtkind.KINDS, DECISIONS, OUTCOMES); every other
        string is quoted. The duration is written in milliseconds with three decimals."""
        if self.redact:
            sql = redact(sql) if sql else sql
            if rewritten:
                rewritten = redact(rewritten)
            for record in more or ():
                _redact_record(record)
        quote = _quote
        micros = int(min(seconds, 1e9) * 1e6 + 0.5) if seconds > 0 else 0  # ms with three decimals (NaN: 0)
        self._write(
            f'{self._head_now()}{", " if prefix else ""}{prefix}, '
            f'"end_user": {"null" if end_user is None else quote(end_user)}, "kind": "{kind}", '
            f'"decision": "{decision}", "rule": {"null" if rule is None else quote(rule)}, '
            f'"outcome": "{outcome}", "sqlstate": {"null" if sqlstate is None else quote(sqlstate)}, '
            f'"duration_ms": {micros // 1000}.{micros % 1000:03d}, "rows": {rows}, "sql": {quote(sql)}, '
            f'"rewritten_sql": {"null" if rewritten is None else quote(rewritten)}, "statements": {statements}, '
            f'"more": {"null" if more is None else _to_json(more)}}}\n'
        )

    def _head_now(self) -> str:
        """The line's opening: the timestamp (one-second resolution, so formatted once a second) and the event."""
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self._second)) + "Z"
            self._head = '{"timestamp": "' + stamp + '", "event": "statement"'
        return self._head

    def _write(self, line: str) -> None:
        """Append a whole line (with its newline); a flush follows within FLUSH_INTERVAL."""
        with self._lock:
            self._out.write(line)
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_scheduled = True
            loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write out the buffered records."""
        with self._lock:
            self._flush_scheduled = False
            if not self._out.closed:
                self._out.flush()

    def close(self) -> None:
        self.flush()
        if self._owned:
            with self._lock:
                self._out.close()
