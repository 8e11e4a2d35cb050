"""The client's schema names written back in PostgreSQL's answers to statements sent with reserved ones (hiding.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from proxy.policy.hiding import position_back
from proxy.protocol import messages as m

# A reserved name (policy/hiding.reserved_name: pg_9 and 24 secret characters) where PostgreSQL names a schema: as a
# qualifier (`"r.t"`, `r.f()`, `r.+`) or alone (`schema "r" does not exist`).
_RESERVED = re.compile(r'(?<![A-Za-z0-9_$])pg_9[a-z2-7]{24}(?=\.)|(?<=schema ")pg_9[a-z2-7]{24}(?=")')
# The answers that name a missing schema: class 42 (undefined relation, function, type, ...), 3F (invalid schema
# name), 0A (cross-database reference), and notices/warnings (`IF EXISTS`: "… does not exist, skipping"). Values a
# statement computes (class 22, 23, P0 …) are never rewritten.
_CLASSES = frozenset({"42", "3F", "0A", "00", "01"})
# Only the fields PostgreSQL fills from its message templates with the statement's own names (message, detail,
# hint); never CONTEXT or an internal query, which may quote a value the statement computed.
_NAMED_FIELDS = ("M", "D", "H")
# PostgreSQL's own message shapes that name the statement's objects: the message begins with the kind of object it
# names (`relation "r.t" does not exist`, `schema "r" does not exist, skipping`, `function r.f() does not exist`,
# `operator does not exist: r.+`, `cross-database references are not implemented: r.t.c`). A value the statement
# computed is quoted in other shapes (`unrecognized configuration parameter "…"`, `invalid input syntax …`): never
# written back (red team 9a2 H7).
_SHAPES = re.compile(
    r"(?:relation|schema|type|function|procedure|routine|aggregate|operator(?: class| family)?|collation|conversion"
    r"|text search (?:configuration|dictionary|parser|template)|sequence|table|view|materialized view|index"
    r"|foreign table|statistics object|access method|domain|column|tablesample method|improper qualified name"
    r"|cross-database references are not implemented)\b")
# What every reserved name begins with: the backend stream's guard looks for it in the messages that carry text
# (MessageStream.guard, at C speed) once the session sent one; only a message holding it is checked (`leaks`).
NEEDLE = b"pg_9"
# Any reserved name's shape: the last-line check once the session has sent more distinct names than it keeps.
_ANY_RESERVED = re.compile(rb"pg_9[a-z2-7]{24}")
# Where every one of them begins, overlapping ones too: a name may begin in the last two characters of a shape before
# it (never earlier: its third character, "_", is no letter of a shape), so a match takes its first 26 characters and
# only looks at the last two. (A pattern that begins with its literal is searched at C speed, memchr-like: a
# lookahead around the whole name was scanned at every position, ~30 times slower, red team 9a7 H1.)
_EVERY_RESERVED = re.compile(rb"pg_9[a-z2-7]{22}(?=[a-z2-7]{2})")
_RESERVED_LEN = 28
# Distinct reserved names a session keeps for the last-line check (of hidden schemas, of missing ones, renamed alike
# since red team 9a8 N2, and of other sessions' temporary schemas `pg_temp_N`, any N); past them, any reserved name's
# shape. Every name counts alike, so the bound is reached at the same point whether a name the client wrote is hidden
# or missing (red team 9a3 J3).
MAX_SENT = 4096
Names = tuple[tuple[str, str], ...]
Moved = tuple[tuple[int, int, int], ...]  # (start, end, characters added) of each renamed span: hiding.Renamed
_PLAIN: tuple[Names, Moved] = ((), ())  # a statement sent without reserved names


class Executed(tuple):  # type: ignore[type-arg]
    """The (names, moved) of a prepared statement a SQL EXECUTE runs (`executed`): its answer is mapped through them
    unless PostgreSQL confirmed the statement gone before it (`InFlight.forget`: a Close, DEALLOCATE [ALL] or
    DISCARD ALL, red team 9a5 F3), and never a position PostgreSQL reports in the EXECUTE's own parameters (`own`:
    their nodes' character offsets in the client's text, red team 9a5 F2)."""

    record: tuple[Names, Moved]
    own: frozenset[int]

    def __new__(cls, record: tuple[Names, Moved], own: frozenset[int]) -> Executed:
        run = super().__new__(cls, record)
        run.record, run.own = record, own
        return run


class InFlight:
    """The reserved names of the requests in flight (each request's own, from the decisions of its statements, so
    nothing evicts them), of the prepared statements sent renamed (for their later Bind/Execute), of the portals
    bound to them (for their Executes in any later request of the transaction: red team 9a2 H1) and every reserved
    name the session sent (the last-line check: none reaches the client)."""

    __slots__ = ("gone", "guarded", "plain_first", "portals", "requests", "sent", "shapes", "statements")

    def __init__(self) -> None:
        self.requests: dict[object, list[tuple[Names, Moved]]] = {}
        self.statements: dict[str, tuple[Names, Moved]] = {}
        self.plain_first: object = None  # the newest request, when a statement naming nothing hidden came first in it
        # portal -> the record of its statement, the request that bound it and the savepoint level it was bound in
        # (subxacts.py; gone at its Close, when a later request ends the transaction or a ROLLBACK TO drops it)
        self.portals: dict[str, tuple[tuple[Names, Moved], object, int]] = {}
        self.sent: set[bytes] = set()  # the reserved names sent (MAX_SENT at most)
        self.shapes = False  # past MAX_SENT names: the last-line check looks for any reserved name's shape
        # records of statements PostgreSQL confirmed gone, by identity: the SQL EXECUTEs of them in flight (sent
        # before the confirmation) are answered through no moves (emptied once no request is in flight)
        self.gone: dict[int, tuple[Names, Moved]] = {}
        self.guarded = False  # the backend stream's guard is set (the session's first reserved name was sent)

    def sending(self, names: Names) -> None:
        """`names` are sent to PostgreSQL: none of them may reach the client (`leaks`)."""
        if self.shapes:
            return
        sent = self.sent
        for reserved, _ in names:
            sent.add(reserved.encode())
        if len(sent) > MAX_SENT:  # fail closed, never forget one: any reserved name's shape from now on
            self.shapes = True
            sent.clear()

    def leaks(self, data: bytes) -> bool:
        """Whether `data` (a message for the client) holds a reserved name this session sent. One pass over `data`
        for every name of the reserved shape, each looked up: what it costs does not depend on how many names the
        session sent (one, after naming a hidden or a missing schema: red team 9a6 G3; up to MAX_SENT: each was
        searched for in turn, 632 µs a row of "pg_9" at 4,000 names, red team 9a7 H1)."""
        if NEEDLE not in data:
            return False
        if self.shapes:
            return _ANY_RESERVED.search(data) is not None
        sent = self.sent
        for found in _EVERY_RESERVED.finditer(data):
            at = found.start()
            if data[at : at + _RESERVED_LEN] in sent:
                return True
        return False

    def bound(self, portal: str, statement: str, request: object, level: int = 0) -> tuple[Names, Moved] | None:
        """`portal` is bound (in `request`, in savepoint level `level`) to `statement`: its Executes are answered
        with the statement's names."""
        found = self.statements.get(statement)
        if found is None:
            self.portals.pop(portal, None)
        else:
            self.portals[portal] = (found, request, level)
        return found

    def rolled_back(self, gone: Callable[[int], bool]) -> None:
        """A ROLLBACK TO was confirmed: the portals bound in the levels it aborted (`gone`) are dropped (red team 9a3
        J2)."""
        portals = self.portals
        for portal in [p for p, entry in portals.items() if gone(entry[2])]:
            del portals[portal]

    def ended(self, pending: object) -> None:
        """A transaction ended: the portals bound by requests answered by now are gone (not those of requests still
        in `pending`, pipelined behind it)."""
        portals = self.portals
        for portal in [p for p, (_, r, _) in portals.items() if r not in pending]:  # type: ignore[operator]
            del portals[portal]

    def add(self, request: object, names: Names, moved: Moved, pending: object) -> None:
        """`request` (in flight) was sent with `names`; the requests no longer in `pending` are forgotten."""
        self._entries(request, pending).append((names, moved))

    def running(self, request: object, run: Executed, pending: object) -> None:
        """`request` (in flight) runs a prepared statement by SQL EXECUTE (`executed`)."""
        self._entries(request, pending).append(run)

    def carry(self, request: object, record: tuple[Names, Moved], pending: object) -> None:
        """`request` (in flight) runs a statement of `record` (a Bind or an Execute of its portal)."""
        if type(record) is Executed:
            self.running(request, record, pending)
        else:
            self.add(request, record[0], record[1], pending)

    def _entries(self, request: object, pending: object) -> list[tuple[Names, Moved]]:
        for done in [r for r in self.requests if r is not request and r not in pending]:  # type: ignore[operator]
            del self.requests[done]
        if self.gone and not self.requests:
            self.gone.clear()
        entries = self.requests.get(request)
        if entries is None:
            entries = self.requests[request] = [_PLAIN] if self.plain_first is request else []
        return entries

    def forget(self, names: list[str] | None, keep: frozenset[str] = frozenset()) -> None:
        """PostgreSQL confirmed statements `names` gone (None: every one but those of `keep`, Parsed again since):
        their records go, and the SQL EXECUTEs of them still in flight are answered through no moves (red team 9a5
        F3)."""
        statements = self.statements
        for name in list(statements) if names is None else names:
            if name in keep:
                continue
            record = statements.pop(name, None)
            if record is not None and self.requests:
                self.gone[id(record)] = record

    def plain(self, request: object) -> None:
        """A statement of `request` (the newest in flight) that names nothing hidden: its answers are mapped through
        no other statement's moves (kept once per run of them; nothing at all for a request of plain statements)."""
        entries = self.requests.get(request)
        if entries is None:
            self.plain_first = request
        elif entries[-1] is not _PLAIN:
            entries.append(_PLAIN)

    def of(self, request: object) -> list[tuple[Names, Moved]]:
        entries = self.requests.get(request, [])
        gone = self.gone
        if gone and any(type(entry) is Executed and id(entry.record) in gone for entry in entries):  # type: ignore
            return [_PLAIN if type(entry) is Executed and id(entry.record) in gone else entry  # type: ignore
                    for entry in entries]
        return entries


def executed(sql: str, statements: dict[str, tuple[Names, Moved]], sent: str | None = None) -> list[Executed]:
    """The recorded names of the prepared statements (sent with reserved names) that `sql` runs by SQL `EXECUTE`,
    under EXPLAIN or CREATE TABLE AS too: PostgreSQL's answers name them, its positions in their texts (red team 9a4
    K5), as a Bind/Execute of one is answered; not its positions in the EXECUTE's own parameters (`Executed.own`,
    in the text sent in its place, `sent`, when the policy rewrote it: PostgreSQL's positions are in that text).
    (The parser keys each name as PostgreSQL does: an identifier truncated to 63 bytes, pgnames.sql_identifier.)"""
    if not statements or "execute" not in sql.lower():
        return []
    runs = _runs(sql)
    if not any(run.get("name") in statements for run in runs):
        return []
    text = sql
    if sent is not None and sent != sql:
        sent_runs = _runs(sent)
        if [run.get("name") for run in sent_runs] == [run.get("name") for run in runs]:
            runs, text = sent_runs, sent
        else:  # (cannot tell where the parameters were sent: every position is the statement's, as before)
            text = ""
    return [Executed(statements[run["name"]], _locations(text, run.get("params")) if text else frozenset())
            for run in runs if run.get("name") in statements]


def _runs(sql: str) -> list[dict[str, Any]]:
    """The ExecuteStmt nodes of `sql`, in the order they are written."""
    try:
        tree = json.loads(parse_sql_json(sql))
    except (ParseError, ValueError):
        return []
    found: list[dict[str, Any]] = []
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            run = node.get("ExecuteStmt")
            if isinstance(run, dict):
                found.append(run)
            stack.extend(reversed(node.values()))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return found


def _locations(sql: str, tree: Any) -> frozenset[int]:
    """The character offsets in `sql` of the nodes of `tree` (the parser's locations are byte offsets)."""
    found: list[int] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            at = node.get("location")
            if isinstance(at, int) and at >= 0:
                found.append(at)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if not found or sql.isascii():
        return frozenset(found)
    raw = sql.encode("utf-8", "surrogatepass")
    return frozenset(len(raw[:at].decode("utf-8", "ignore")) for at in found)


def written_back(type_byte: bytes, body: bytes, sent: list[tuple[Names, Moved]], written: str) -> bytes | None:
    """The ErrorResponse/NoticeResponse `body` with each reserved schema name of the request's statements (`sent`)
    replaced by the client's and its position mapped back to the client's text, framed; None when nothing changes. A
    reserved name the client wrote itself (`written`, lower-cased) stays."""
    if b"pg_9" not in body and not any(moved for _, moved in sent):
        return None
    fields = m.decode_error_fields(body)
    return m.encode_error_fields(type_byte, fields) if fields_back(fields, sent, written) else None


def fields_back(fields: dict[str, str], sent: list[tuple[Names, Moved]], written: str) -> bool:
    """`written_back` on decoded fields, in place; whether any changed."""
    changed = False
    position = fields.get("P")
    if position and position.isdigit():
        moved = _moved_of(fields, _runs_own(int(position), sent))
        if moved:
            back = str(position_back(int(position), moved))
            changed = back != position
            fields["P"] = back
    if "W" in fields or "q" in fields:
        # (a CONTEXT or internal query: the names are a function body's or dynamic SQL's, not the statement's)
        return changed
    code = fields.get("C", "")
    if code[:2] not in _CLASSES:
        return changed
    names = {reserved: name for pairs, _ in sent for reserved, name in pairs}

    def back(found: re.Match[str]) -> str:
        nonlocal changed
        reserved = found.group(0)
        name = names.get(reserved)
        if name is None or reserved in written:
            return reserved
        changed = True
        return name

    for code in _NAMED_FIELDS:
        value = fields.get(code)
        if value is not None and "pg_9" in value and _SHAPES.match(value) is not None:
            fields[code] = _RESERVED.sub(back, value)
    return changed


def _runs_own(position: int, sent: list[tuple[Names, Moved]]) -> list[tuple[Names, Moved]]:
    """`sent` without the prepared statements of SQL EXECUTEs when `position` (PostgreSQL's, in the text it was
    sent) is at one of those EXECUTEs' own parameters: a position in the EXECUTE's text, mapped through its own
    request's moves only, never the statement's (red team 9a5 F2)."""
    if not any(type(entry) is Executed for entry in sent):
        return sent
    if any(position - 1 in entry.own for entry in sent if type(entry) is Executed):  # type: ignore[attr-defined]
        return [entry for entry in sent if type(entry) is not Executed] or [_PLAIN]
    return sent


def _moved_of(fields: dict[str, str], sent: list[tuple[Names, Moved]]) -> Moved:
    """The moves of the statement the answer is about: the one statement `sent` holds (its Parse and Bind), else the
    one whose reserved name the message quotes; none when that cannot be told. A position is never mapped through
    another statement's moves (red team 9a2 H2: a statement of the batch that names nothing hidden is in `sent`
    too, with no moves)."""
    first = sent[0] if sent else None
    if first is None or all(entry == first for entry in sent):
        return first[1] if first is not None else ()
    text = fields.get("M", "")
    quoted = {moved for names, moved in sent if any(reserved in text for reserved, _ in names)}
    return quoted.pop() if len(quoted) == 1 else ()

