"""Another SQL dialect translated to PostgreSQL by sqlglot, which decides nothing."""

from __future__ import annotations

import re

import sqlglot
from sqlglot.dialects.dialect import Dialects
from sqlglot.errors import ErrorLevel, SqlglotError

POSTGRES = frozenset({"postgres", "postgresql", "pg"})
DIALECTS = tuple(sorted(d.value for d in Dialects if d.value and d.value != "postgres"))
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TOKEN = re.compile(r"<Token token_type: [^,]*, text: (.*?), line: .*?>")


class DialectError(ValueError):
    """A dialect sqlglot does not know, or a statement it cannot translate to PostgreSQL."""


def to_postgres(sql: str, dialect: str | None) -> str:
    """`sql` written in `dialect`, as PostgreSQL. No dialect (or PostgreSQL's) returns the text unchanged: only the
    proxy's grammar judges it. Several statements stay several (joined by `;`), for the server to refuse."""
    name = (dialect or "").strip().lower()
    if not name or name in POSTGRES:
        return sql
    if name not in DIALECTS:
        raise DialectError(f"unknown dialect {dialect!r}; known: postgres, {', '.join(DIALECTS)}")
    try:
        out = sqlglot.transpile(sql, read=name, write="postgres", unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as exc:
        raise DialectError(f"cannot translate this {name} statement to PostgreSQL: {_describe(exc)}") from exc
    out = [statement for statement in out if statement.strip()]
    if not out:
        raise DialectError(f"no statement found in this {name} text")
    return ";\n".join(out)


def _describe(exc: SqlglotError) -> str:
    """sqlglot's message without its terminal colours and the echoed statement."""
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors[0]
        text = _TOKEN.sub(_token, str(first.get("description")))
        return f"{text} (line {first.get('line')}, column {first.get('col')})"
    return _ANSI.sub("", str(exc)).splitlines()[0]


def _token(match: re.Match[str]) -> str:
    text = match.group(1)
    return "the end of the statement" if text == "SENTINEL" else repr(text)
