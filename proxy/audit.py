"""The audit stream: one JSON line per statement; literal redaction by PostgreSQL's own scanner."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from pglast import parser

_CONSTANTS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "XCONST", "BCONST"})
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
# BI tools that annotate queries with the end user; a claim for attribution, never an authentication.
_METABASE = re.compile(r"--\s*Metabase::\s*userID:\s*(\d+)")
_TABLEAU = re.compile(r"TableauServerUser\s*[=:]\s*'?([\w.@\\-]+)")


@lru_cache(maxsize=4096)
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
                for key in ("sql", "rewritten_sql"):
                    if record.get(key):
                        record[key] = redact(record[key])
        now = time.time()
        if int(now) != self._second:  # the timestamp has one-second resolution: format it once a second
            self._second = int(now)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self._second)) + "Z"
            self._head = '{"timestamp": "' + stamp + '", "event": "statement"'
        body = _to_json(fields)
        line = self._head + (", " + prefix if prefix else "") + (", " + body[1:] if fields else "}")
        with self._lock:
            self._out.write(line + "\n")
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
