"""Hidden schemas answered by PostgreSQL itself: each hidden (or unseen) schema name sent as a reserved name that cannot
exist.

In the shared and database strategies a tenant must not tell another tenant's schema (`TenantPolicy.hidden_schemas`,
and other sessions' temporary schemas `pg_temp_N`) from a schema that does not exist. Rather than answer for
PostgreSQL, the proxy sends the statement with every such name, and (where some schema is hidden) every name of a
schema the tenant cannot see (`unseen`: one that does not exist, or was created since the tenant was prepared, until
the next reload; never a schema it sees, its own, a system or `pg_` one) alike, written as a qualifier (`s.t`,
`s.f()`, `x::s.t`, `OPERATOR(s.+)`, `COLLATE s."C"`, `LIKE s.t`, `s.t.c`, an index's `s.opclass`, …) replaced by a
quoted reserved name:
`"pg_9` and 24 secret characters`"` (`reserved_name`), whatever the written spelling, after a space where what stands
before it could join it into another token. PostgreSQL refuses to create a schema whose name starts with `pg_`, so
every answer (SQLSTATE, message, the phase, the notices of `IF [NOT] EXISTS`, the routine/file/line fields) is
PostgreSQL's own for a missing schema; the session writes the client's name back where PostgreSQL's answer names the
reserved one, and maps its position back through `Renamed.moved`, followed through the policy's own edits of the
text (`Renamed.moves`; hiddennames.py). The names travel with the request's decision (`Rewrite.names`), never in a
session-wide map.

A name followed by a dot is a qualifier; it is kept where PostgreSQL reads it as something else: a table or alias
(`t.c`, `t.*`), an INSERT/UPDATE target column's field (`SET c.f = …`), `t.c%TYPE`, and a setting's prefix
(`SET s.x = …`, `SHOW s.x`), and a reloption's namespace (`WITH (s.fillfactor = 50)`). The renamed text is
re-parsed and must be the client's tree with those names changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass

from pglast.parser import ParseError

from proxy.policy.model import SYSTEM_SCHEMAS, TenantPolicy
from proxy.policy.sqltext import (
    DOT,
    Edit,
    TextError,
    Tok,
    apply_edits,
    downcase_identifier,
    tokens,
    truncate_identifier,
)
from proxy.policy.tree import dumps, parse_json, strip_positions, walk_dicts

RULE = "hidden_schema"  # the rewrite rule of a statement sent with reserved names
_SECRET = secrets.token_bytes(16)  # the reserved names of this process: not guessable from the client's side
# A digit first: no name PostgreSQL has (pg_catalog, pg_temp, pg_toast, a catalog or function the engine looks for in
# the text) starts with pg_ and a digit.
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
SECRET_CHARS = 24  # 120 secret bits
QUOTED_CHARS = SECRET_CHARS + 6  # "pg_9…": the reserved name as sent
OTHER_TEMP = re.compile(r"pg_(?:toast_)?temp_[0-9]+")  # other sessions' temporary schemas (hidden too)
_WORD = re.compile(rb"[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*")
_SETTING_STATEMENTS = frozenset({"VariableSetStmt", "VariableShowStmt"})
_APART = frozenset(b" \t\n\r\f\v(),;[]")  # what a quoted name written after cannot join: no space needed
Moved = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class Renamed:
    """The text sent in place of the client's and the names it carries: (reserved, the client's name) pairs;
    `moved`, one (start, end, characters added) per renamed span in the new text, in order (fewer than none when the
    spelling was longer; the span is the quoted reserved name and the space written before it, if any); `spans`, the
    same spans as byte offsets, to follow them through the policy's own edits (`moves`)."""

    sql: str
    names: tuple[tuple[str, str], ...]
    moved: Moved = ()
    spans: tuple[tuple[int, int], ...] = ()

    def moves(self, sent: str, edits: list[Edit] | tuple[Edit, ...]) -> Moved:
        """`moved` in `sent`, the text the policy's `edits` (byte offsets in `sql`, the policy's own rewrite of the
        renamed text) made of `sql`, so PostgreSQL's positions map back as they would for a missing name's
        spelling. Only the recorded edits move a span, never what the text looks like (red team 9a2 H5); a span
        past the end of `sent` (a prefix of the text) has no move there."""
        if not edits:
            limit = len(sent.encode("utf-8"))
            return tuple(m for m, (_, end) in zip(self.moved, self.spans, strict=True) if end <= limit)
        ordered = sorted(edits, key=lambda e: (e.start, e.end != e.start, e.end, e.seq))
        data = sent.encode("utf-8")
        out: list[tuple[int, int, int]] = []
        delta, i, chars, at = 0, 0, 0, 0
        for (bstart, bend), (_, _, added) in zip(self.spans, self.moved, strict=True):
            while i < len(ordered) and ordered[i].end <= bstart and (ordered[i].start < bstart or
                                                                     ordered[i].start == ordered[i].end):
                delta += len(ordered[i].text.encode("utf-8")) - (ordered[i].end - ordered[i].start)
                i += 1
            start, end = bstart + delta, bend + delta
            over = [e for e in ordered[i:] if e.start < bend and e.end > bstart]
            if over:  # rewritten with the text around it: the span is the edit's new text
                first = over[0]
                start = first.start + delta
                end = start + len(first.text.encode("utf-8")) + sum(
                    len(e.text.encode("utf-8")) - (e.end - e.start) for e in over[1:])
            if end > len(data):
                break
            chars = chars + len(data[at:start].decode("utf-8")) if start >= at else len(data[:start].decode("utf-8"))
            cstart = chars
            chars += len(data[start:end].decode("utf-8"))
            at = end
            out.append((cstart, chars, added))
        return tuple(out)


class Unrenamed(Exception):
    """The renamed text does not parse to the client's statement with the reserved names (fail closed)."""


def hides(policy: TenantPolicy, name: str) -> bool:
    """Whether a schema name written by the client is one PostgreSQL must be asked about as a missing one."""
    return name in policy.hidden_schemas or OTHER_TEMP.fullmatch(name) is not None


def unseen(policy: TenantPolicy, name: str) -> bool:
    """Where some schema is hidden (shared, database strategy): whether a schema name the client wrote is one the
    tenant cannot see, a hidden one or one of none of the schemas it sees (those found when the tenant was prepared,
    its search_path, the system ones), so answered as missing: hidden and missing alike. Names of PostgreSQL's own
    prefix are not (none can be a hidden schema; another session's pg_temp_N is renamed whether it exists or not)."""
    if name in policy.hidden_schemas:
        return True
    return (bool(policy.hidden_schemas) and name not in policy.known_schemas and name not in policy.search_path
            and name not in SYSTEM_SCHEMAS and not name.startswith("pg_") and name != "$user"
            and not _own(policy, name))


def _own(policy: TenantPolicy, name: str) -> bool:
    """Whether `name` is a schema of the tenant's own configuration (its tables', its shared schemas): never unseen,
    even if it was created after the tenant was prepared."""
    return (name in policy.shared_schemas or name == policy.tenant_schema
            or any(schema == name for schema, _ in policy.scoped_tables)
            or any(schema == name for schema, _ in policy.rls_tables))


def rename(policy: TenantPolicy, sql: str) -> Renamed | None:
    """The text to send for `sql` with each qualifier of a schema the tenant cannot see renamed, or None when it names
    none (or does not scan or parse: the engine refuses it). Raises Unrenamed when the renamed text is not the same
    statement. Where some schema is hidden, a missing schema's qualifier (`unseen`) is renamed as a hidden one's is:
    the same reserved-name shape, the same parses, the same Rewrite and the same answer written back, so the proxy's
    work never tells them apart (red team 9a6 G3, 9a8 N2)."""
    if policy.strategy == "schema":
        return None  # every schema not the tenant's is refused alike there (schema.check_schemas)
    if "." not in sql:
        return None
    if not policy.hidden_schemas:
        low = sql.lower()
        if "u&" not in low and "_temp_" not in low and '""' not in sql:
            return None
    # (where some schema is hidden, every qualifier is looked at: a missing schema's is found as a hidden one's is,
    # not by whether the text holds a hidden name)
    data = sql.encode("utf-8")
    try:
        toks = tokens(data, 0, len(data))
    except TextError:
        return None
    found = _qualifiers(policy, data, toks)
    if not found:
        return None
    try:
        original = parse_json(sql)
    except ParseError:
        return None
    doc = json.loads(original)
    kept, settings = _kept_locations(doc)
    found = [f for f in found if f[0] not in kept and not any(a <= f[0] < b for a, b in settings)]
    if not found:
        return None
    chosen: dict[str, str] = {}
    edits: list[Edit] = []
    moved: list[tuple[int, int, int]] = []
    spans: list[tuple[int, int]] = []
    shift = bshift = chars = at = 0
    for start, end, name in found:
        reserved = chosen.get(name)
        if reserved is None:
            reserved = chosen[name] = reserved_name(name)
        # quoted: it cannot fuse with a keyword before it (`FROM"s".t`) nor be read as anything but a name; a space
        # before it unless whitespace or a parenthesis, comma, bracket or semicolon is there: nor with a quoted
        # identifier (`"a""pg_9…"` is one name), `u&` (`u&"pg_9…"` is a Unicode identifier) or anything else before
        # it (red team 9a2 H8).
        quoted = f'"{reserved}"' if start == 0 or data[start - 1] in _APART else f' "{reserved}"'
        edits.append(Edit(start, end, quoted))
        chars += len(data[at:start].decode("utf-8"))
        written = len(data[start:end].decode("utf-8"))
        at = end
        moved.append((chars + shift, chars + shift + len(quoted), len(quoted) - written))
        spans.append((start + bshift, start + bshift + len(quoted)))
        chars += written
        shift += len(quoted) - written
        bshift += len(quoted) - (end - start)
    new_sql = apply_edits(data, edits)
    names = tuple((reserved, name) for name, reserved in chosen.items())
    _verify(original, new_sql, names)
    return Renamed(new_sql, names, tuple(moved), tuple(spans))


def _qualifiers(policy: TenantPolicy, data: bytes, toks: list[Tok]) -> list[tuple[int, int, str]]:
    """(start, end, name) of each identifier written as a qualifier (followed by a dot, not preceded by one) that
    names a hidden schema, or one the tenant cannot see (`unseen`): both are renamed."""
    out: list[tuple[int, int, str]] = []
    n = len(toks)
    for i, tok in enumerate(toks):
        if i and toks[i - 1].name == DOT:
            continue
        j, end, escape = i + 1, tok.end, None
        if tok.name == "UIDENT" and j + 1 < n and toks[j].name == "UESCAPE" and toks[j + 1].name == "SCONST":
            escape = data[toks[j + 1].start : toks[j + 1].end].decode("utf-8")
            j, end = j + 2, toks[j + 1].end
        if j >= n or toks[j].name != DOT:
            continue
        name = _identifier(data, tok, escape)
        if name is not None and (hides(policy, name) or unseen(policy, name)):
            out.append((tok.start, end, name))
    return out


def _identifier(data: bytes, tok: Tok, uescape: str | None) -> str | None:
    """The name an identifier token stands for (as PostgreSQL reads it, truncated to 63 bytes), else None."""
    raw = data[tok.start : tok.end]
    if raw[:1] == b'"':
        name = raw[1:-1].replace(b'""', b'"').decode("utf-8", "replace")
    elif tok.name == "UIDENT":
        escape = "\\"
        if uescape is not None:  # UESCAPE and any string constant ('!', $$!$$, E'\041'): its value
            found = _string_value(uescape)
            if found is None or len(found) != 1:
                return None
            escape = found
        decoded = _unicode_escapes(raw[3:-1].replace(b'""', b'"').decode("utf-8", "replace"), escape)
        if decoded is None:
            return None
        name = decoded
    elif _WORD.fullmatch(raw):
        name = downcase_identifier(raw.decode("utf-8", "replace"))
    else:
        return None
    return truncate_identifier(name)


def _string_value(text: str) -> str | None:
    """The value of a string constant's text, as PostgreSQL's grammar reads it; None if it is not one."""
    try:
        doc = json.loads(parse_json(f"SELECT {text}"))
    except (ParseError, ValueError):
        return None
    try:
        value = doc["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]["A_Const"]["sval"]["sval"]
    except (KeyError, IndexError, TypeError):
        return None
    return value if isinstance(value, str) else None


def _unicode_escapes(text: str, escape: str) -> str | None:
    """The text of a U&"…" identifier with its escapes (\\XXXX, \\+XXXXXX, \\\\) read; None if malformed."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != escape:
            out.append(c)
            i += 1
            continue
        if text[i + 1 : i + 2] == escape:
            out.append(escape)
            i += 2
            continue
        width = 7 if text[i + 1 : i + 2] == "+" else 4
        digits = text[i + 2 : i + 8] if width == 7 else text[i + 1 : i + 5]
        if len(digits) != (6 if width == 7 else 4) or any(d not in "0123456789abcdefABCDEF" for d in digits):
            return None
        try:
            out.append(chr(int(digits, 16)))
        except ValueError:
            return None
        i += 1 + width
    return "".join(out)


def _kept_locations(doc: dict) -> tuple[set[int], list[tuple[int, int]]]:
    """Byte offsets of names written with a dot that are not schema names (see the module docstring), and the byte
    spans of the statements that name a setting (`SET s.x`, `SHOW s.x`: a prefix, not a schema)."""
    kept: set[int] = set()
    for node in walk_dicts(doc):
        ref = node.get("ColumnRef")
        if ref is not None and len(ref.get("fields") or ()) == 2:
            kept.add(ref.get("location", -1))
            continue
        target = node.get("ResTarget")
        if target is not None and target.get("indirection") and target.get("name"):
            kept.add(target.get("location", -1))
            continue
        option = node.get("DefElem")
        if option is not None and option.get("defnamespace"):  # WITH (s.x = 1): a reloption namespace
            kept.add(option.get("location", -1))
            continue
        type_name = node.get("TypeName")
        if type_name is not None and type_name.get("pct_type") and len(type_name.get("names") or ()) == 2:
            kept.add(type_name.get("location", -1))
    spans: list[tuple[int, int]] = []
    for raw in doc.get("stmts", ()):
        if set(raw.get("stmt", {})) & _SETTING_STATEMENTS:
            start = raw.get("stmt_location", 0)
            spans.append((start, start + raw["stmt_len"] if raw.get("stmt_len") else 1 << 62))
    return kept, spans


def reserved_name(name: str) -> str:
    """The reserved name `name` is sent as: `pg_9` and SECRET_CHARS characters derived from the process's secret (the
    same for the same name, so a cached decision agrees with itself), lower-case ASCII letters and digits (PostgreSQL
    prints it unquoted), 28 bytes whatever the spelling: no client can enumerate, steer or guess it."""
    digest = hashlib.blake2b(name.encode("utf-8"), key=_SECRET, digest_size=20).digest()
    value = int.from_bytes(digest, "big")
    body = "".join(_BASE32[(value >> (5 * i)) & 31] for i in range(SECRET_CHARS))
    return f"pg_9{body}"


def _verify(original: str, new_sql: str, names: tuple[tuple[str, str], ...]) -> None:
    """The renamed text parses to the client's tree with the reserved names in place of the hidden ones."""
    try:
        got = parse_json(new_sql)
    except ParseError as exc:
        raise Unrenamed("the renamed text does not parse") from exc
    for reserved, name in names:
        got = got.replace(reserved, dumps(name)[1:-1])
    if strip_positions(got) != strip_positions(original):
        raise Unrenamed("the renamed text does not parse to the client's statement")


def restored(text: str, names: tuple[tuple[str, str], ...]) -> str:
    """`text` (a refusal's message) with the client's names in place of the reserved ones."""
    for reserved, name in names:
        text = text.replace(reserved, name)
    return text


def position_back(position: int, moved: Moved) -> int:
    """A 1-based character position in the renamed text as a position in the client's text: after a span, less what
    the span added; inside one, the same character of the client's spelling (its first for the space before the
    quoted name, its last past the spelling's length)."""
    at = position - 1
    back = 0
    for start, end, added in moved:
        if at >= end:
            back += added
            continue
        if at >= start:
            written = end - start - added
            offset = at - (end - QUOTED_CHARS)  # from the opening quote
            return start - back + min(max(offset, 0), max(written - 1, 0)) + 1
        break
    return position - back
