"""Byte-level SQL text helpers: quoting, PostgreSQL-scanner token windows and span edits."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast.parser import ParseError, scan

from proxy.pgnames import sql_identifier

OPEN, CLOSE, COMMA, DOT, STAR = "ASCII_40", "ASCII_41", "ASCII_44", "ASCII_46", "ASCII_42"
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})


def quote_ident(name: str) -> str:
    """Always-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


_DOWNCASE = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def downcase_identifier(name: str) -> str:
    """An unquoted identifier as PostgreSQL's downcase_identifier folds it in a UTF-8 database: ASCII A-Z only
    (`str.lower` would fold `É` too, which PostgreSQL keeps: red team 9a10 B2)."""
    return name.translate(_DOWNCASE)


def truncate_identifier(name: str) -> str:
    """An identifier as PostgreSQL's truncate_identifier keeps it: its longest prefix of whole characters within
    NAMEDATALEN - 1 = 63 bytes (red team 9a10 B2)."""
    return sql_identifier(name)


def fold_identifier(name: str) -> str:
    """An unquoted identifier as PostgreSQL names it (downcase_truncate_identifier)."""
    return truncate_identifier(downcase_identifier(name))


def quote_literal(value: str) -> str:
    """SQL string literal (standard_conforming_strings is enforced on, so backslashes are literal)."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Tok:
    """One scanner token as a half-open byte span of the query text."""

    start: int
    end: int
    name: str


class TextError(Exception):
    """The text around a parse-tree location does not have the expected token shape."""


def tokens(data: bytes, start: int, end: int) -> list[Tok]:
    """All tokens of data[start:end] (which must begin at a token or whitespace boundary)."""
    return _scan(data, start, end, complete=True)


def tokens_from(data: bytes, start: int, end: int, need: int) -> list[Tok]:
    """At least `need` complete tokens starting at byte `start` (fewer only if data[start:end] has fewer)."""
    window = 64
    while True:
        stop = min(end, start + window)
        toks = _scan(data, start, stop, complete=stop >= end)
        if len(toks) >= need or stop >= end:
            return toks
        window *= 4


def _scan(data: bytes, start: int, stop: int, complete: bool) -> list[Tok]:
    """Scan data[start:stop] with PostgreSQL's scanner. The bytes are handed over as latin-1 text, so token
    positions are byte offsets; bytes >= 0x80 are identifier characters to the scanner either way."""
    text = data[start:stop].decode("latin-1")
    try:
        raw = scan(text)
    except ParseError as exc:
        cut = exc.args[1] if len(exc.args) > 1 else None
        if complete or not cut:
            raise TextError(str(exc)) from exc
        # The window ends inside a string, identifier or comment: keep the complete tokens before it.
        try:
            raw = scan(text[:cut])
        except ParseError as again:
            raise TextError(str(again)) from again
        complete = True
    if not complete and raw:
        raw = raw[:-1]  # the last token may have been cut by the window
    return [Tok(start + t.start, start + t.end + 1, t.name) for t in raw if t.name not in _COMMENTS]


_WORD_BOUNDARY = rb"[A-Za-z0-9_$\x80-\xff]"


def keyword_before(
    data: bytes, low: int, location: int, end: int, keyword: str, between: frozenset[str]
) -> list[Tok]:
    """Tokens from the `keyword` that directly precedes `location` (only tokens named in `between` may sit
    between them) up to and including the token at `location`. The candidate found by a text search is
    confirmed with PostgreSQL's scanner, so comments or strings containing the word cannot mislead it."""
    pattern = re.compile(rb"(?i)(?<!" + _WORD_BOUNDARY + rb")" + keyword.encode() + rb"(?!" + _WORD_BOUNDARY + rb")")
    candidates = [m.start() for m in pattern.finditer(data, max(low, location - 4096), location)]
    for cand in reversed(candidates[-8:]):
        try:
            toks = tokens_from(data, cand, end, need=8)
        except TextError:
            continue
        if not toks or toks[0].name != keyword.upper():
            continue
        for i, tok in enumerate(toks[1:], start=1):
            if tok.start == location:
                return toks[: i + 1]
            if tok.name not in between:
                break
    raise TextError(f"no {keyword.upper()} keyword before byte {location}")


_UNQUOTED = re.compile(rb"[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*")
_QUOTED = re.compile(rb'"((?:[^"]|"")*)"')
_AFTER = re.compile(rb"[ \t\n\r\f\v]*")


def simple_name_end(data: bytes, location: int, names: tuple[str, ...]) -> int | None:
    """End of the qualified name `names` written plainly at `location` (identifiers, double-quoted identifiers
    and dots, no spaces or comments), or None when it is written any other way (then use the scanner)."""
    i = location
    for k, name in enumerate(names):
        if k:
            if data[i : i + 1] != b".":
                return None
            i += 1
        m = _QUOTED.match(data, i)
        if m is not None:
            value = m.group(1).replace(b'""', b'"')
        else:
            m = _UNQUOTED.match(data, i)
            if m is None:
                return None
            raw = m.group(0)
            value = raw.lower() if raw.isascii() else bytes(c + 32 if 65 <= c <= 90 else c for c in raw)
        if value != name.encode("utf-8"):
            return None
        i = m.end()
    k = _AFTER.match(data, i).end()  # type: ignore[union-attr]
    if data[k : k + 1] in (b"*", b"/", b"-"):
        return None  # a '*', a comment or something unusual follows: let the scanner decide
    return i


def name_span(data: bytes, location: int, end: int, parts: int) -> tuple[int, int, bool]:
    """Byte span of the qualified name of `parts` parts at `location` (including a following `*`)."""
    toks = tokens_from(data, location, end, need=parts * 2)
    if any(t.name == "UIDENT" for t in toks):
        toks = tokens_from(data, location, end, need=parts * 4 + 2)
    i = 0
    last = location
    for part in range(parts):
        if part:
            if i >= len(toks) or toks[i].name != DOT:
                raise TextError("expected '.' in qualified name")
            i += 1
        if i >= len(toks) or toks[i].name in (DOT, OPEN, CLOSE, COMMA, STAR):
            raise TextError("expected a name part")
        last = toks[i].end
        i += 1
        if i < len(toks) and toks[i].name == "UESCAPE":
            if i + 1 >= len(toks):
                raise TextError("incomplete UESCAPE clause")
            last = toks[i + 1].end
            i += 2
    star = i < len(toks) and toks[i].name == STAR
    return location, (toks[i].end if star else last), star


def index_at(toks: list[Tok], offset: int) -> int:
    """Index of the token starting at byte `offset`."""
    lo, hi = 0, len(toks)
    while lo < hi:
        mid = (lo + hi) // 2
        if toks[mid].start < offset:
            lo = mid + 1
        else:
            hi = mid
    if lo >= len(toks) or toks[lo].start != offset:
        raise TextError(f"no token starts at byte {offset}")
    return lo


def matching_close(toks: list[Tok], open_index: int) -> int:
    """Index of the ')' matching the '(' at `open_index`."""
    if toks[open_index].name != OPEN:
        raise TextError("expected '('")
    depth = 0
    for i in range(open_index, len(toks)):
        name = toks[i].name
        if name == OPEN:
            depth += 1
        elif name == CLOSE:
            depth -= 1
            if depth == 0:
                return i
    raise TextError("unbalanced parentheses")


def clause_end(toks: list[Tok], first: int, stop_words: frozenset[str]) -> int:
    """Index of the first token at nesting depth 0 from `first` that is a stop word, an unmatched ')' or ';'."""
    depth = 0
    for i in range(first, len(toks)):
        name = toks[i].name
        if name == OPEN:
            depth += 1
        elif name == CLOSE:
            if depth == 0:
                return i
            depth -= 1
        elif depth == 0 and (name in stop_words or name == "ASCII_59"):
            return i
    return len(toks)


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace data[start:end] with `text` (an insertion when start == end)."""

    start: int
    end: int
    text: str
    seq: int = 0


def apply_edits(data: bytes, edits: list[Edit]) -> str:
    """Apply non-overlapping edits to the UTF-8 text `data` and return the new text."""
    ordered = sorted(edits, key=lambda e: (e.start, e.end != e.start, e.end, e.seq))
    out: list[bytes] = []
    pos = 0
    for e in ordered:
        if e.start < pos:
            raise TextError("overlapping edits")
        out.append(data[pos : e.start])
        out.append(e.text.encode("utf-8"))
        pos = e.end
    out.append(data[pos:])
    return b"".join(out).decode("utf-8")


def _read_quoted(text: str, i: int) -> tuple[str, int] | None:
    """The double-quoted identifier starting at text[i] ('""' is a quote) and the index after it; None if open."""
    j = i + 1
    name: list[str] = []
    while True:
        k = text.find('"', j)
        if k < 0:
            return None
        name.append(text[j:k])
        if k + 1 < len(text) and text[k + 1] == '"':
            name.append('"')
            j = k + 2
            continue
        return "".join(name), k + 1


def split_identifier_list(text: str) -> list[str] | None:
    """Split a GUC list value the way PostgreSQL's SplitIdentifierString does (names folded and truncated as it
    does); None if malformed."""
    out: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            quoted = _read_quoted(text, i)
            if quoted is None:
                return None
            name, i = quoted
            out.append(truncate_identifier(name))
        else:
            j = i
            while i < n and text[i] != "," and not text[i].isspace():
                i += 1
            if i == j:
                return None
            out.append(fold_identifier(text[j:i]))
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        if text[i] != ",":
            return None
        i += 1


def object_name_parts(text: str) -> list[str] | None:
    """Leading dotted identifier chain of a reg* input string ('a."B".c(int)' -> ['a', 'B', 'c']), each name as
    PostgreSQL names it (unquoted: ASCII downcased; every one truncated to 63 bytes)."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            quoted = _read_quoted(text, i)
            if quoted is None:
                return None
            name, i = quoted
            parts.append(truncate_identifier(name))
        else:
            j = i
            while i < n and (text[i].isalnum() or text[i] in "_$" or ord(text[i]) > 127):
                i += 1
            if i == j:
                if parts:
                    parts.append("")  # 'schema.+' (an operator after the schema)
                return parts or None
            parts.append(fold_identifier(text[j:i]))
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == ".":
            i += 1
            continue
        return parts
