"""Parses SQL with libpg_query (pglast) into JSON parse trees and compares trees ignoring positions."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pglast.parser import parse_sql_json

Node = dict[str, Any]

# Positional fields libpg_query emits; they never carry meaning and are removed before comparing trees.
_POSITIONAL = (
    "location|stmt_location|stmt_len|rexpr_list_start|rexpr_list_end|list_start|list_end|arg_location"
    "|name_location|payload_location|conninfo_location"
)
# A key can only be matched outside string values: inside a JSON string every '"' is escaped.
_STRIP_AFTER_COMMA = re.compile(r',"(?:' + _POSITIONAL + r')":-?\d+')
_STRIP_FIRST = re.compile(r'(?<=\{)"(?:' + _POSITIONAL + r')":-?\d+,?')


@dataclass(slots=True)
class Statement:
    """One top-level statement: its tagged parse node and its byte span in the UTF-8 query text."""

    node: Node
    kind: str
    body: Node
    start: int
    end: int


def tag_of(node: Node) -> str | None:
    """The node type of a tagged node ({"SelectStmt": {...}}), else None (untagged struct)."""
    if len(node) == 1:
        (key,) = node
        if key[:1].isupper():
            return key
    return None


def parse_json(sql: str) -> str:
    """libpg_query's JSON parse tree of `sql` (raises pglast.parser.ParseError)."""
    return parse_sql_json(sql)


def parse(sql: str, size: int) -> list[Statement]:
    """Parse `sql` (whose UTF-8 encoding is `size` bytes long) into statements with byte spans."""
    doc = json.loads(parse_json(sql))
    out: list[Statement] = []
    for raw in doc.get("stmts", ()):
        node = raw["stmt"]
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len", 0)
        end = start + length if length else size
        kind = tag_of(node) or ""
        out.append(Statement(node=node, kind=kind, body=node[kind], start=start, end=end))
    return out


def strip_positions(json_text: str) -> str:
    """Remove positional fields from libpg_query JSON text."""
    return _STRIP_FIRST.sub("", _STRIP_AFTER_COMMA.sub("", json_text))


def canonical_statements(json_text: str) -> list[Any]:
    """The statement trees of libpg_query JSON text, without positions."""
    doc = json.loads(strip_positions(json_text))
    return [raw["stmt"] for raw in doc.get("stmts", ())]


def canonical(value: Any) -> Any:
    """A position-free deep copy of a (possibly mutated) parse tree value."""
    return json.loads(strip_positions(json.dumps(value, separators=(",", ":"), ensure_ascii=False)))


def names_of(items: list[Node] | None) -> tuple[str, ...]:
    """The strings of a list of {"String": {"sval": ...}} nodes (e.g. funcname, TypeName.names)."""
    out: list[str] = []
    for item in items or ():
        s = item.get("String")
        if s is None:
            out.append("*" if "A_Star" in item else "")
        else:
            out.append(s.get("sval", ""))
    return tuple(out)


def const_text(node: Node | None) -> str | None:
    """The text of a bare literal A_Const (string, integer, numeric), else None."""
    if not node or "A_Const" not in node:
        return None
    c = node["A_Const"]
    if "sval" in c:
        return str(c["sval"].get("sval", ""))
    if "ival" in c:
        return str(c["ival"].get("ival", 0))
    if "fval" in c:
        return str(c["fval"].get("fval", ""))
    return None


def string_const(node: Node | None) -> str | None:
    """The value of a string literal A_Const, else None."""
    if not node or "A_Const" not in node:
        return None
    c = node["A_Const"]
    if "sval" in c:
        return str(c["sval"].get("sval", ""))
    return None
