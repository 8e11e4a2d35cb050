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

from proxy.policy.model import Allow, Change, Decision, Rewrite

_UNSHAPEABLE = ("'", '"', "$", "\\", "--", "/*")
# \w and \d spelled out for ASCII (only ASCII text is shaped): the same tokens, found faster.
_INTEGER = re.compile(r"(?<![A-Za-z0-9_.])([0-9]+)(?![A-Za-z0-9_.])")
_GAP = "\x00"  # joins the text between the literals into a shape key (no Query text holds a NUL)
_MAX_LITERALS = 1000


# True in the build Cython compiled (setup.py, shape.pxd): there `split` is one typed pass over the text.
_COMPILED = not __file__.endswith(".py")


def split_regex(sql: str) -> tuple[str, list[str]] | None:
    """`split` with a regular expression: the faster way in pure Python."""
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


def _word_or_dot(c: int) -> bool:
    """[A-Za-z0-9_.]: what may not touch an integer literal."""
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95 or c == 46


def split_scan(sql: str) -> tuple[str, list[str]] | None:
    """`split` as one pass over the characters: the faster way once compiled (the same answers as
    `split_regex`, checked by the tests). The key is written as it goes, a NUL where each literal was."""
    n = len(sql)
    try:
        raw = sql.encode("utf-8")  # the characters, just as many bytes when all are ASCII
    except UnicodeEncodeError:  # a lone surrogate: not plain
        return None
    if len(raw) != n:
        return None
    p = raw  # the compiled build reads it through a C pointer: one byte per character
    # ... and writes the key (never longer than the text) through another: into the shared scratch buffer, or a
    # buffer of its own for a text longer than that (not kept: one huge statement must not pin its size)
    key = _scratch if n <= _SCRATCH_SIZE else bytearray(n)
    q = key
    k = 0  # the key's length so far
    literals: list[str] = []
    prev = 0  # the character before position i (0 at the start)
    i = 0
    while i < n:
        c = p[i]
        if c == 39 or c == 34 or c == 36 or c == 92:  # ' " $ \
            return None
        if (c == 45 or c == 47) and i + 1 < n and p[i + 1] == (45 if c == 45 else 42):  # -- or /*
            return None
        if 48 <= c <= 57 and not _word_or_dot(prev):
            j = i + 1
            while j < n and 48 <= p[j] <= 57:
                j += 1
            if j == n or not _word_or_dot(p[j]):
                literals.append(sql[i:j])
                if len(literals) > _MAX_LITERALS:
                    return None
                q[k] = 0
                k += 1
            else:
                while i < j:
                    q[k] = p[i]
                    k += 1
                    i += 1
            prev = p[j - 1]
            i = j
            continue
        q[k] = c
        k += 1
        prev = c
        i += 1
    if not literals:
        return None
    return q[:k].decode("ascii"), literals


_SCRATCH_SIZE = 4096
_scratch = bytearray(_SCRATCH_SIZE)  # split_scan's key buffer (a scan runs to its end without yielding)


def split(sql: str) -> tuple[str, list[str]] | None:
    """The shape key of `sql` (its text between integer literals, a NUL for each) and the literals in order, or
    None when it has none or is not plain; `text(key)` is the shape's SQL (only a cache miss needs it)."""
    return split_scan(sql) if _COMPILED else split_regex(sql)


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
    if _COMPILED:  # what object.__new__ and object.__setattr__ do, as C calls (shape.pxd cimports them)
        rewrite = new_object(Rewrite)  # noqa: F821
        PyObject_GenericSetAttr(rewrite, "sql", sql)  # noqa: F821
        PyObject_GenericSetAttr(rewrite, "rules", rules)  # noqa: F821
        PyObject_GenericSetAttr(rewrite, "effects", effects)  # noqa: F821
        PyObject_GenericSetAttr(rewrite, "changes", changes)  # noqa: F821
        return rewrite
    rewrite = _new_object(Rewrite)
    _set_attribute(rewrite, "sql", sql)
    _set_attribute(rewrite, "rules", rules)
    _set_attribute(rewrite, "effects", effects)
    _set_attribute(rewrite, "changes", changes)
    return rewrite


_new_object = object.__new__
_set_attribute = object.__setattr__

ShapeDecision = Allow | Template | None


def from_decision(shape: str, count: int, decision: Decision) -> ShapeDecision:
    """What a shape's decision says for every statement of that shape; None when it says nothing."""
    if not isinstance(decision, Allow | Rewrite) or not _params_plain(shape):
        return None
    if isinstance(decision, Allow):
        return decision
    return _template(decision, count)


def _params_plain(shape: str) -> bool:
    """True when no parameter of the shape is the operand of a cast (`4711::regclass` names a relation)."""
    try:
        tree = json.loads(parse_sql_json(shape))
    except (ParseError, ValueError):
        return False
    return not _cast_param(tree)


def _cast_param(node: object) -> bool:
    if isinstance(node, dict):
        cast = node.get("TypeCast")
        if isinstance(cast, dict) and isinstance(cast.get("arg"), dict) and "ParamRef" in cast["arg"]:
            return True
        return any(_cast_param(v) for v in node.values())
    if isinstance(node, list):
        return any(_cast_param(v) for v in node)
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
