"""Byte-level SQL text helpers: quoting, PostgreSQL-scanner token windows and span edits."""

from __future__ import annotations

from dataclasses import dataclass

from pglast.parser import ParseError, scan

OPEN, CLOSE, COMMA, DOT, STAR = "ASCII_40", "ASCII_41", "ASCII_44", "ASCII_46", "ASCII_42"


def quote_ident(name: str) -> str:
    """Always-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


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
    window = 96
    while True:
        stop = min(end, start + window)
        try:
            toks = _scan(data, start, stop, complete=stop >= end)
        except TextError:
            if stop >= end:
                raise
            toks = []
        if len(toks) >= need or stop >= end:
            return toks
        window *= 4


def _scan(data: bytes, start: int, stop: int, complete: bool) -> list[Tok]:
    chunk = data[start:stop]
    text = chunk.decode("utf-8", errors="ignore" if not complete else "strict")
    try:
        raw = scan(text)
    except ParseError as exc:
        raise TextError(str(exc)) from exc
    if not complete and raw:
        raw = raw[:-1]  # the last token may have been cut by the window
    if text.isascii():
        return [Tok(start + t.start, start + t.end + 1, t.name) for t in raw]
    offsets = [0]
    for ch in text:
        offsets.append(offsets[-1] + len(ch.encode("utf-8")))
    return [Tok(start + offsets[t.start], start + offsets[t.end + 1], t.name) for t in raw]


def name_span(data: bytes, location: int, end: int, parts: int) -> tuple[int, int, bool]:
    """Byte span of the qualified name of `parts` parts at `location`, and whether a `*` follows it."""
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
