"""Literal-insensitive decision keys: a simple-protocol statement with its integer literals as parameters.

`SELECT abalance FROM pgbench_accounts WHERE aid = 4711` has the shape
`SELECT abalance FROM pgbench_accounts WHERE aid = $1`. The engine must already decide a Parse with `$n`
soundly for every value a client may bind, so a decision for the shape that allows (or rewrites) holds for
every integer in those places: the engine never reads an integer literal's value to allow something (it
reads them only to refuse, e.g. an INSERT of another tenant's key, and a parameter there is refused too).
A shape whose decision is a denial says nothing about the literal text, which is then decided as written.

Only plain text is shaped: ASCII, with no quote, dollar sign, backslash or comment anywhere, so the only
tokens holding digits are identifiers, numbers and operators, and a digit run that no identifier, dot or
dollar touches is an integer literal. Anything else is decided by its exact text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pglast.parser import ParseError, parse_sql_json, scan

from proxy._accel import speedups
from proxy.policy.model import VALUE_OPS, Allow, Change, Decision, Rewrite

_UNSHAPEABLE = ("'", '"', "$", "\\", "--", "/*")
# \w and \d spelled out for ASCII (only ASCII text is shaped): the same tokens, found faster.
_INTEGER = re.compile(r"(?<![A-Za-z0-9_.])([0-9]+)(?![A-Za-z0-9_.])")
_GAP = "\x00"  # joins the text between the literals into a shape key (no Query text holds a NUL)
_MAX_LITERALS = 1000


def split(sql: str) -> tuple[str, list[str]] | None:
    """The shape key of `sql` (its text between integer literals, a NUL for each) and the literals in order, or
    None when it has none or is not plain; `text(key)` is the shape's SQL (only a cache miss needs it)."""
    if not sql.isascii():
        return None
    for mark in _UNSHAPEABLE:
        if mark in sql:
            return None
    parts = _INTEGER.split(sql)
    count = len(parts) // 2
    if count == 0 or count > _MAX_LITERALS:
        return None
    return _GAP.join(parts[0::2]), parts[1::2]


def text(key: str) -> str:
    """The SQL of a shape: the text of its key with `$1`, `$2`, … where the literals were."""
    pieces = key.split(_GAP)
    out = [pieces[0]]
    for i in range(1, len(pieces)):
        out += (f"${i}", pieces[i])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Template:
    """A rewrite of a shape: text pieces around its parameters, and which literal goes after each piece."""

    pieces: tuple[str, ...]
    order: tuple[int, ...]
    rules: tuple[str, ...]
    effects: frozenset[str]
    changes: tuple[Change, ...]

    def fill(self, literals: list[str]) -> Rewrite:
        """The rewrite of the statement whose literals are `literals`."""
        pieces, order = self.pieces, self.order
        out = [pieces[0]]
        for i, k in enumerate(order):
            out.append(literals[k])
            out.append(pieces[i + 1])
        return new_rewrite("".join(out), self.rules, self.effects, self.changes)


def new_rewrite(sql: str, rules: tuple[str, ...], effects: frozenset[str], changes: tuple[Change, ...]) -> Rewrite:
    """`Rewrite(sql, rules, effects, changes)` for the shape cache's hot path, at a fraction of the cost of the
    frozen dataclass's __init__ (the same object; a test holds the two to the same fields)."""
    rewrite = _new_object(Rewrite)
    _set_attribute(rewrite, "sql", sql)
    _set_attribute(rewrite, "rules", rules)
    _set_attribute(rewrite, "effects", effects)
    _set_attribute(rewrite, "changes", changes)
    _set_attribute(rewrite, "names", ())
    _set_attribute(rewrite, "explain", None)  # (a decision with an admission text is never a shape's)
    _set_attribute(rewrite, "moved", ())
    return rewrite


_new_object = object.__new__
_set_attribute = object.__setattr__

ShapeDecision = Allow | Template | None


def from_decision(shape: str, count: int, decision: Decision) -> ShapeDecision:
    """What a shape's decision says for every statement of that shape; None when it says nothing."""
    if not isinstance(decision, Allow | Rewrite) or not _params_plain(shape):
        return None
    if isinstance(decision, Rewrite) and decision.names:  # a hidden schema's reserved name: decided per text
        return None
    if any(c.op in VALUE_OPS for c in decision.changes):  # `SET x = 1`: its replay must say 1, not $1
        return None
    if type(decision) is Rewrite and decision.explain is not None:  # (an agent's admission text: not templated)
        return None
    if isinstance(decision, Allow):
        return decision
    return _template(decision, count)


def _params_plain(shape: str) -> bool:
    """True when no parameter of the shape is the operand of a cast (`4711::regclass` names a relation)."""
    try:
        tree = json.loads(parse_sql_json(shape))
    except (ParseError, ValueError, RecursionError):
        return False
    return not _cast_param(tree)


def _cast_param(tree: object) -> bool:
    """True when a TypeCast in `tree` (pglast's JSON) has a ParamRef operand; a loop, not a recursion: a tree
    of any depth the parser accepted is walked (60 nested subqueries went past Python's recursion limit)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            cast = node.get("TypeCast")
            if isinstance(cast, dict) and isinstance(cast.get("arg"), dict) and "ParamRef" in cast["arg"]:
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _template(decision: Rewrite, count: int) -> Template | None:
    """Cut the rewritten shape at its parameter tokens; each of $1..$count must appear exactly once."""
    sql = decision.sql
    if not sql.isascii():  # scanner positions are characters; keep them equal to string indexes
        return None
    try:
        tokens = scan(sql)
    except ParseError:
        return None
    pieces: list[str] = []
    order: list[int] = []
    last = 0
    for tok in tokens:
        if tok.name != "PARAM":
            continue
        number = int(sql[tok.start + 1 : tok.end + 1])
        pieces.append(sql[last : tok.start])
        order.append(number - 1)
        last = tok.end + 1
    pieces.append(sql[last:])
    if sorted(order) != list(range(count)):
        return None
    return Template(tuple(pieces), tuple(order), decision.rules, decision.effects, decision.changes)


if speedups is not None:  # the compiled build of these names (proxy/_speedups.pyx, proxy/_accel.py)
    split = speedups.split
