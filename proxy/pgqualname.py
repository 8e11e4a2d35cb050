"""PostgreSQL's reading of a qualified name (trusted_definers entries) and of a boolean option (parse_bool); pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.pgnames import sql_identifier as _truncate  # (63 bytes, at a character boundary)

_UNQUOTED = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
# PostgreSQL's scanner_isspace (parse_ident skips these, and only these, around the parts and the dot): a high-bit
# character (NBSP, U+2003 ...) is an identifier character to it, not a space (red team 21w W9)
_SPACE = " \t\n\r\f\v"
_SPACES = re.compile(r"[ \t\n\r\f\v]+")
# A quoted argument type PostgreSQL prints unquoted: a simple lower-case name; not one the grammar reads as another
# type when unquoted (`"integer"` names no type, `integer` int4; `"char"` is printed quoted)
_QUOTED_TYPE = re.compile(r'"([a-z_][a-z0-9_]*)"')
_TYPE_KEYWORDS = frozenset({"bigint", "bit", "boolean", "char", "character", "dec", "decimal", "double", "float",
                            "int", "integer", "national", "nchar", "real", "setof", "smallint", "varchar"})


@dataclass(frozen=True, slots=True)
class QualifiedName:
    """A `schema.name` entry as PostgreSQL resolves it, with the argument types of one overload (None: every one)."""

    schema: str
    name: str
    args: str | None = None  # normalized: "text, integer" ("" for no arguments)

    def matches(self, schema: str, name: str, args: tuple[str, ...] = ()) -> bool:
        """Whether it names an object `schema`.`name` (exactly); `args`: the function's argument lists as PostgreSQL
        prints them (identity arguments, argument types), one of which an entry's list must equal."""
        if (schema, name) != (self.schema, self.name):
            return False
        return self.args is None or any(_normal_args(a) == self.args for a in args)


def _ident(text: str, pos: int) -> tuple[str, int]:
    """One identifier of `text` at `pos` (quoted: exact, "" a quote; unquoted: ASCII folded to lower case)."""
    if text.startswith('"', pos):
        out, i = [], pos + 1
        while True:
            j = text.find('"', i)
            if j < 0:
                raise ValueError("an unterminated quoted identifier")
            out.append(text[i:j])
            if text.startswith('"', j + 1):
                out.append('"')
                i = j + 2
                continue
            name = "".join(out)
            if not name:
                raise ValueError("an empty quoted identifier")
            return _truncate(name), j + 1
    m = _UNQUOTED.match(text, pos)
    if m is None:
        raise ValueError(f"an identifier expected at {text[pos:]!r}")
    folded = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in m.group())
    return _truncate(folded), m.end()


def _normal_args(args: str) -> str:
    """An argument list with PostgreSQL's spacing: one space inside a type name, ", " between arguments."""
    parts, depth, cur = [], 0, []
    for c in args:
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += (c in "([") - (c in ")]")
        if depth < 0:
            raise ValueError("unbalanced parentheses in the argument list")
        cur.append(c)
    if depth:
        raise ValueError("unbalanced parentheses in the argument list")
    parts.append("".join(cur))
    norm = [" ".join(w for w in _SPACES.split(_QUOTED_TYPE.sub(_unquote, p)) if w) for p in parts]
    if norm == [""]:
        return ""
    if any(not p for p in norm):
        raise ValueError("an empty argument in the argument list")
    return ", ".join(norm)


def _unquote(m: re.Match[str]) -> str:
    return m.group(1) if m.group(1) not in _TYPE_KEYWORDS else m.group()


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def parse_qualified(entry: str) -> QualifiedName:
    """`schema.name` or `schema.name(argument types)`, each part quoted or not, as PostgreSQL reads it (parse_ident:
    its scanner's spaces only, around the parts and the dot); a ValueError says what is wrong (an unqualified name
    would depend on search_path: refused). In an argument list a quoted simple lower-case type name (`"text"`) is
    read as PostgreSQL prints it; any other quoting stays as written and matches nothing PostgreSQL prints."""
    text = entry
    schema, pos = _ident(text, _skip(text, 0))
    pos = _skip(text, pos)
    if not text.startswith(".", pos):
        raise ValueError("a qualified name schema.name expected")
    name, pos = _ident(text, _skip(text, pos + 1))
    rest = text[pos:].strip(_SPACE)
    if not rest:
        return QualifiedName(schema, name)
    if rest.startswith("."):
        raise ValueError("a schema.name expected, not a three-part name")
    if not (rest.startswith("(") and rest.endswith(")")):
        raise ValueError(f"unexpected {rest!r} after the name (an argument list is written (type, ...))")
    return QualifiedName(schema, name, _normal_args(rest[1:-1]))


def parse_bool(value: str) -> bool | None:
    """PostgreSQL's parse_bool (src/backend/utils/adt/bool.c, parse_bool_with_len): true/false, yes/no, on/off,
    1/0, any case, and the unique prefixes of each (t, tr, f, y, n, of; not "o"); None when not a boolean."""
    v = value.lower()
    if not v:
        return None
    if "true".startswith(v) or "yes".startswith(v) or v == "on" or v == "1":
        return True
    if "false".startswith(v) or "no".startswith(v) or (len(v) >= 2 and "off".startswith(v)) or v == "0":
        return False
    return None


# Every spelling parse_bool reads as true (lower case; PostgreSQL compares case-insensitively): the catalog query
# matches a stored reloption against these.
TRUE_SPELLINGS = tuple(sorted({w[:n] for w in ("true", "yes", "on", "1") for n in range(1, len(w) + 1)
                               if parse_bool(w[:n]) is True}))
