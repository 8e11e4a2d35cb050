"""Parses SQL with libpg_query (pglast) into JSON parse trees and compares trees ignoring positions."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import ast
from pglast.parser import parse_sql_json

Node = dict[str, Any]

# Positional fields libpg_query emits; they carry no meaning and are removed before comparing trees. A key
# can only match outside string values: inside a JSON string every '"' is escaped.
_LOCATION = re.compile(r',"location":-?\d+')
_LOCATION_FIRST = re.compile(r'(?<=\{)"location":-?\d+,?')
_OTHER_KEYS = r'(?:[a-z_]+_location|stmt_len|[a-z_]*list_start|[a-z_]*list_end)'
_OTHER = re.compile(r',"' + _OTHER_KEYS + r'":-?\d+|(?<=\{)"' + _OTHER_KEYS + r'":-?\d+,?')
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


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


class TreeTooLarge(Exception):
    """The parse tree has more nodes than allowed (raised before it is decoded)."""

    def __init__(self, nodes: int) -> None:
        super().__init__(nodes)
        self.nodes = nodes


def tree_size(json_text: str) -> int:
    """The nodes of a JSON parse tree, counted as its objects (each node and each structured field; a brace in a
    string value counts too, so this never undercounts): one pass over the text, before it is decoded."""
    return json_text.count("{")


def parse(sql: str, size: int, max_nodes: int | None = None) -> tuple[str, Node, list[Statement]]:
    """Parse `sql` (UTF-8 length `size`) into JSON text, the JSON document and statements with byte spans; raise
    TreeTooLarge, before decoding it, when the tree has more than `max_nodes` nodes."""
    text = parse_json(sql)
    if max_nodes is not None:
        nodes = tree_size(text)
        if nodes > max_nodes:
            raise TreeTooLarge(nodes)
    doc: Node = json.loads(text)
    out: list[Statement] = []
    for raw in doc.get("stmts", ()):
        node = raw["stmt"]
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len", 0)
        end = start + length if length else size
        kind = tag_of(node) or ""
        out.append(Statement(node=node, kind=kind, body=node[kind], start=start, end=end))
    return text, doc, out


def strip_positions(json_text: str) -> str:
    """Remove positional fields from libpg_query JSON text."""
    text = _LOCATION.sub("", json_text)
    if '{"location"' in text:
        text = _LOCATION_FIRST.sub("", text)
    if '_location"' in text or 'stmt_len"' in text or 'list_start"' in text or 'list_end"' in text:
        text = _OTHER.sub("", text)
    return text


def dumps(value: Any) -> str:
    """Compact JSON text in libpg_query's format (same separators and escapes; it also escapes < and >)."""
    return _ENCODER.encode(value).replace("<", "\\u003c").replace(">", "\\u003e")


def walk_dicts(node: Any, prune: Callable[[Node], bool] | None = None) -> Iterator[Node]:
    """Every dict of a parse tree (depth first, explicit stack); below a dict for which `prune` is true nothing."""
    stack = [node]
    while stack:
        value = stack.pop()
        if type(value) is list:
            stack.extend(value)
        elif type(value) is dict:
            yield value
            if prune is None or not prune(value):
                stack.extend(v for v in value.values() if type(v) is dict or type(v) is list)


def canonical(value: Any) -> Any:
    """A position-free deep copy of a (possibly mutated) parse tree value."""
    return json.loads(strip_positions(dumps(value)))


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


def boolean_option(arg: Node | None) -> bool:
    """An option's argument as PostgreSQL's defGetBoolean reads it: no argument, 1, true or on (any case) is true;
    0, false or off is false. What PostgreSQL refuses ("requires a Boolean value": 2, 'yes', 0.0) reads as true,
    so that a check refusing the option on refuses it too."""
    if not arg:
        return True
    if "Integer" in arg:
        return arg["Integer"].get("ival", 0) != 0
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval"))
    if "String" in arg:
        return str(arg["String"].get("sval", "")).lower() not in ("false", "off")
    return True


def string_const(node: Node | None) -> str | None:
    """The value of a string literal A_Const, else None."""
    if not node or "A_Const" not in node:
        return None
    c = node["A_Const"]
    if "sval" in c:
        return str(c["sval"].get("sval", ""))
    return None


@lru_cache(maxsize=4096)
def expr_node(expr: str) -> Node:
    """The position-free parse tree of the SQL expression `expr` (shared and cached: never mutate it)."""
    doc = json.loads(strip_positions(parse_json("SELECT WHERE " + expr)))
    node: Node = doc["stmts"][0]["stmt"]["SelectStmt"]["whereClause"]
    return node


def statement_node(sql: str) -> Node:
    """The position-free parse tree of the one statement `sql` (a tagged node)."""
    node: Node = json.loads(strip_positions(parse_json(sql)))["stmts"][0]["stmt"]
    return node


@lru_cache(maxsize=64)
def _field_order(tag: str) -> dict[str, int]:
    return {name: i for i, name in enumerate(getattr(ast, tag).__slots__)}


def reorder(body: Node, tag: str) -> None:
    """Put the fields of a mutated `tag` node back in libpg_query's output order (in place)."""
    order = _field_order(tag)
    items = sorted(body.items(), key=lambda kv: order.get(kv[0], len(order)))
    body.clear()
    body.update(items)
