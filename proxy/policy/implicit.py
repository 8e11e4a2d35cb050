"""Implicitly typed object identifiers: where PostgreSQL's type resolution makes a raw OID or a name a reg* value.

A written conversion (`x::regclass`, `to_regclass(x)`) gets its run-time guard (guarding.py). PostgreSQL also
converts without one: an integer, an OID or an unknown-typed literal beside a value of an object-identifier type
takes that type ("typeconv-union-case": the reg* type wins over int, oid and unknown) in the arms of CASE,
COALESCE, GREATEST/LEAST, ARRAY[...], the columns of VALUES and set operations, the polymorphic array functions
(array_append, array_cat, array_position...) and `||`. (Comparisons, IN, BETWEEN, = ANY, NULLIF and a simple CASE's
tests are resolved as `oid = oid`: a literal there is read by oidin, no name is looked up or printed.) The rule:

* a value construct (CASE/COALESCE/GREATEST/LEAST/ARRAY/array functions) with an arm of a reg* type (an *anchor*:
  a written conversion, a reg*-returning function, a catalog column of such a type, a subquery column holding one)
  and another arm that is not one is guarded as a whole: its result's OID must name an object the tenant may see
  (NULL otherwise), as if the conversion had been written around it; the result type stays PostgreSQL's;
* a set operation's or VALUES' column with an anchor in one arm gets, in every other arm, the guard the written
  conversion of that arm would get (the arm has the anchor's type already; the guard only checks the value);
* an unknown-typed literal or an untyped parameter in such a group is read by the reg* input function, so it is
  treated as if the conversion were written on it: checked when decided where that is enough, guarded otherwise.

A new table (CREATE TABLE AS / SELECT INTO) or view may not get a column that may be of a reg* type: every value
written into the table later would be converted by an assignment cast without a guard (classify._check_column_type),
and a view's column would carry the type into later statements, where no anchor is visible.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from proxy.policy import guards as g
from proxy.policy.builtins import BUILTIN_FUNCTIONS
from proxy.policy.nametypes import ACL_TYPE_OIDS, NAME_TYPE_OIDS, RESULT_FUNCTIONS, ROW_FUNCTIONS
from proxy.policy.rules import fail
from proxy.policy.tree import Node, names_of, tag_of, walk_dicts

# Catalog columns of an object-identifier type (PostgreSQL 15-18) whose names no other relation uses.
DISTINCT_COLUMNS: dict[str, str] = {
    **dict.fromkeys(("typinput", "typoutput", "typreceive", "typsend", "typmodin", "typmodout", "typanalyze",
                     "typsubscript", "aggfnoid", "aggtransfn", "aggfinalfn", "aggcombinefn", "aggserialfn",
                     "aggdeserialfn", "aggmtransfn", "aggminvtransfn", "aggmfinalfn", "amhandler", "amproc",
                     "conproc", "oprcode", "oprrest", "oprjoin", "prosupport", "prsstart", "prstoken", "prsend",
                     "prsheadline", "prslextype", "rngcanonical", "rngsubdiff", "tmplinit", "tmpllexize",
                     "trffromsql", "trftosql"), "regproc"),
}
# Columns of a reg* type with common names: counted only where the statement reads their relation or function.
SOURCE_COLUMNS: dict[str, dict[str, str]] = {
    "pg_sequences": {"data_type": "regtype"},
    "pg_prepared_statements": {"parameter_types": "regtype[]", "result_types": "regtype[]"},
    **ROW_FUNCTIONS,
}
# Functions returning a reg* value (besides guards.RESULT_CALLS / RESULT_WRAPPED).
RESULT_TYPES: dict[str, str] = {
    **RESULT_FUNCTIONS,
    **{name: out for name, (_, out) in g.RESULT_CALLS.items()},
    **{name: out for name, (_, out) in g.RESULT_WRAPPED.items()},
}
# Functions returning (an array of) their argument's type.
_SAME_TYPE = frozenset({"any_value", "mode", "percentile_disc", "first_value", "last_value", "nth_value", "lag",
                        "lead", "array_fill"})
# Window functions whose default (third) argument resolves with their value (first) to one type.
_WINDOW_DEFAULTS = frozenset({"lag", "lead"})
# Polymorphic array functions: the position of each argument that is an array (A) or an element (E); the value
# ones return the array, the others compare only.
ARRAY_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "array_append": ("A", "E"), "array_prepend": ("E", "A"), "array_cat": ("A", "A"),
    "array_replace": ("A", "E", "E"),
}
ARRAY_COMPARES: dict[str, tuple[str, ...]] = {
    "array_remove": ("A", "E"), "array_position": ("A", "E"), "array_positions": ("A", "E"),
    "width_bucket": ("E", "A"),
}

VALUE, COMPARE, COLUMN, STARRED = "value", "compare", "column", "starred"
# Node types that may hold a group (node_groups).
GROUP_TAGS = frozenset({"CoalesceExpr", "MinMaxExpr", "CaseExpr", "A_ArrayExpr", "A_Expr", "FuncCall", "SelectStmt",
                        "InsertStmt"})


def _scalar(regtype: str) -> str:
    return regtype.removesuffix("[]")


@dataclass(slots=True)
class Member:
    """One expression of a group: `holder[key]`, an array (True) or an element of the group's type."""

    holder: Any
    key: Any
    array: bool = False

    @property
    def node(self) -> Node:
        return self.holder[self.key]  # type: ignore[no-any-return]


@dataclass(slots=True)
class Group:
    """Expressions PostgreSQL resolves to one type. VALUE: the construct at `holder[key]` yields it (`array`:
    an array of it); COMPARE: only compared; COLUMN: a set operation's or VALUES' column."""

    kind: str
    members: list[Member]
    holder: Any = None
    key: Any = None
    array: bool = False
    node: Node | None = None  # the construct (VALUE)
    arrays_only: bool = False  # a comparison: only an array of a reg* type makes its members one (see _compared)


class Types:
    """What decides whether an expression may be of a reg* type in one statement: the column names that are (read
    from the statement `root` when a column is first looked up)."""

    __slots__ = ("_columns", "_qualified", "root")

    def __init__(self, root: Any = None) -> None:
        self.root = root
        self._columns: dict[str, str] | None = None
        self._qualified: dict[tuple[str, str], str] = {}

    @property
    def columns(self) -> dict[str, str]:
        """Unqualified column name -> reg* type."""
        if self._columns is None:
            self._columns = dict(DISTINCT_COLUMNS)
            if self.root is not None:
                _read_columns(self, self.root)
        return self._columns

    @property
    def qualified(self) -> dict[tuple[str, str], str]:
        """(relation alias, column) -> reg* type."""
        _ = self.columns
        return self._qualified

    def of(self, node: Any) -> str | None:
        """The reg* type (`regclass`, `regtype[]`…) the expression may have, else None."""
        if type(node) is not dict:
            return None
        tag = tag_of(node)
        if tag is None:
            return None
        body = node[tag]
        if tag == "TypeCast":
            type_name = body.get("typeName") or {}
            names = names_of(type_name.get("names"))
            if names and names[-1] in g.CAST_KINDS:
                return names[-1] + ("[]" if type_name.get("arrayBounds") else "")
            return None
        if tag == "FuncCall":
            names = names_of(body.get("funcname"))
            name = names[-1] if names else ""
            if len(names) > 1 and names[-2] != "pg_catalog":
                return None
            args = body.get("args") or []
            if name in RESULT_TYPES:
                return RESULT_TYPES[name]
            if name == "unnest" and len(args) == 1:
                found = self.of(args[0])
                return _scalar(found) if found and found.endswith("[]") else None
            if name == "array_agg" and len(args) == 1:
                found = self.of(args[0])
                return found if found is None or found.endswith("[]") else found + "[]"
            if name in _SAME_TYPE and args:
                found = self.of(args[0])
                return (_scalar(found) + "[]") if found and name == "array_fill" else found
            if name in ARRAY_FUNCTIONS:
                found = self._first(args[: len(ARRAY_FUNCTIONS[name])])
                return None if found is None else _scalar(found) + "[]"
            if len(args) == 1 and len(names) == 1 and name not in BUILTIN_FUNCTIONS and name in self.columns:
                # r(s): the field r of the row s
                return self.columns[name]
            return None
        if tag == "ColumnRef":
            names = names_of(body.get("fields"))
            if not names or names[-1] == "*":
                return None
            if len(names) >= 2 and (names[-2], names[-1]) in self.qualified:
                return self.qualified[(names[-2], names[-1])]
            return self.columns.get(names[-1])
        if tag in ("CoalesceExpr", "MinMaxExpr"):
            return self._first(body.get("args") or [])
        if tag == "CaseExpr":
            arms = [w.get("CaseWhen", {}).get("result") for w in body.get("args") or []]
            return self._first([*arms, body.get("defresult")])
        if tag == "A_ArrayExpr":
            found = self._first(body.get("elements") or [])
            return None if found is None else _scalar(found) + "[]"
        if tag == "A_Expr":  # NULLIF is resolved as `oid = oid`: an OID
            if names_of(body.get("name"))[-1:] == ("||",):
                found = self._first([body.get("lexpr"), body.get("rexpr")])
                return None if found is None else _scalar(found) + "[]"
            return None
        if tag in ("SubLink", "A_Indirection"):
            guarded = _guard_type(node)
            if guarded is not None:
                return guarded or None
        if tag == "SubLink":
            kind = body.get("subLinkType")
            if kind not in ("EXPR_SUBLINK", "ARRAY_SUBLINK"):
                return None
            found = self.output(body.get("subselect"), 0)
            if found is None:
                return None
            return found if kind == "EXPR_SUBLINK" else _scalar(found) + "[]"
        if tag == "A_Indirection":
            last = (body.get("indirection") or [{}])[-1]
            if "String" in last:  # (s).r: a field of a row, by its name
                return self.columns.get(last["String"].get("sval", ""))
            found = self.of(body.get("arg"))
            if found is None or not found.endswith("[]"):
                return None
            indices = [i.get("A_Indices", {}) for i in body.get("indirection") or []]
            if indices and len(indices) == len(body.get("indirection") or []):
                return found if any(i.get("is_slice") for i in indices) else _scalar(found)
            return None
        return None

    def _first(self, items: list[Any]) -> str | None:
        for item in items:
            found = self.of(item)
            if found is not None:
                return found
        return None

    def output(self, select: Any, index: int) -> str | None:
        """The reg* type column `index` of a (tagged or bare) SELECT may have."""
        if type(select) is not dict:
            return None
        body = select.get("SelectStmt", select)
        if body.get("op", "SETOP_NONE") != "SETOP_NONE":
            return self.output(body.get("larg"), index) or self.output(body.get("rarg"), index)
        rows = body.get("valuesLists")
        if rows:
            return self._first([_items(row)[index] for row in rows if index < len(_items(row))])
        targets = body.get("targetList") or []
        if index < len(targets):
            return self.of(targets[index].get("ResTarget", {}).get("val"))
        return None


def _guard_type(node: Node) -> str | None:
    """A guard's result type by its self-naming alias (guards.py): '' when it is not a reg* type, None when `node`
    is no guard."""
    ident = g.ident_of(node)
    if ident is None:
        return None
    family, *parts = ident.removeprefix("pgt_g_").split("__")
    out = parts[2] if family in ("c", "p") and len(parts) == 3 else parts[1] if family in ("a", "r", "q") and len(
        parts) == 2 else ""
    if out not in g.CAST_KINDS:
        return ""
    return out + "[]" if family in ("r", "q") else out


def _items(row: Any) -> list[Any]:
    return row.get("List", {}).get("items") or [] if type(row) is dict else []


def _default_name(node: Any) -> str | None:
    """The column name PostgreSQL gives an unnamed target (FigureColname), for the cases that matter here."""
    if type(node) is not dict:
        return None
    tag = tag_of(node)
    body = node.get(tag) if tag else None
    if body is None:
        return None
    if tag == "ColumnRef":
        names = names_of(body.get("fields"))
        return names[-1] if names and names[-1] != "*" else None
    if tag == "FuncCall":
        names = names_of(body.get("funcname"))
        return names[-1] if names else None
    if tag == "TypeCast":
        inner = _default_name(body.get("arg"))
        names = names_of((body.get("typeName") or {}).get("names"))
        return inner or (names[-1] if names else None)
    return {"CaseExpr": "case", "CoalesceExpr": "coalesce", "A_ArrayExpr": "array", "NullTest": None}.get(tag)


def walk(node: Any, holder: Any = None, key: Any = None) -> Iterator[tuple[Node, Any, Any]]:
    """Every tagged dict of the tree with where it lives, in pre-order (outer before inner)."""
    stack: list[tuple[Any, Any, Any]] = [(node, holder, key)]
    while stack:
        value, holder, key = stack.pop()
        if type(value) is list:
            stack.extend((value[i], value, i) for i in range(len(value) - 1, -1, -1))
        elif type(value) is dict:
            if tag_of(value) is not None:
                yield value, holder, key
            items = [(v, value, k) for k, v in value.items() if type(v) is dict or type(v) is list]
            stack.extend(reversed(items))


def types_of(root: Node) -> Types:
    """The reg* typing of the statement `root`: catalog columns, and the outputs of its subqueries and CTEs that may
    be of a reg* type (by their names, qualified with the subquery's alias and not), read when first needed."""
    return Types(root)


def _read_columns(types: Types, root: Node) -> None:
    columns = types.columns
    sources: list[tuple[Node, str | None, list[str]]] = []  # (select, alias, alias column names)
    ctes: dict[str, Node] = {}
    renamed: list[Node] = []  # relation references with an alias column list: `FROM a AS b(z)`
    joins = False  # a join with an alias column list: `(a JOIN b ...) AS j(x, y)`
    for node in walk_dicts(root):
        if len(node) != 1:
            continue
        tag = next(iter(node))
        if tag not in _SOURCE_TAGS:
            continue
        body = node[tag]
        if tag == "RangeVar":
            if body.get("relname") in SOURCE_COLUMNS:
                columns.update(SOURCE_COLUMNS[body["relname"]])
            if (body.get("alias") or {}).get("colnames"):
                renamed.append(body)
        elif tag == "FuncCall":
            names = names_of(body.get("funcname"))
            if names and names[-1] in SOURCE_COLUMNS:
                columns.update(SOURCE_COLUMNS[names[-1]])
        elif tag == "RangeSubselect" and body.get("subquery"):
            alias = body.get("alias") or {}
            if str(alias.get("aliasname", "")).startswith("pgt_"):
                continue  # a guard's own subqueries (guards.py)
            sources.append((body["subquery"], alias.get("aliasname"), names_of(alias.get("colnames"))))
        elif tag == "RangeFunction":  # FROM f(...) [AS a [(c, ...)]]: a function's value is a column
            _function_columns(types, body)
        elif tag == "CommonTableExpr" and body.get("ctequery"):
            sources.append((body["ctequery"], body.get("ctename"), names_of(body.get("aliascolnames"))))
            ctes.setdefault(body.get("ctename") or "", body["ctequery"])
        elif tag == "JoinExpr" and (body.get("alias") or {}).get("colnames"):
            joins = True
    for rv in renamed:  # a CTE read under new column names: its columns by position
        alias = rv["alias"]
        if rv.get("schemaname") is None and rv.get("relname") in ctes:
            sources.append((ctes[rv["relname"]], alias.get("aliasname"), names_of(alias.get("colnames"))))
        elif rv.get("relname") in REG_RELATIONS and rv.get("schemaname") in (None, "pg_catalog"):
            raise _renamed(rv["relname"])
    for _ in range(4):  # nested subqueries: a few rounds reach a fixed point
        before = (len(types.columns), len(types.qualified))
        for select, alias, colnames in sources:
            for index, name in enumerate(_output_names(select)):
                found = types.output(select, index)
                if found is None:
                    continue
                name = colnames[index] if index < len(colnames) else name
                if name is None:
                    continue
                types.columns[name] = found
                if alias:
                    types.qualified[(alias, name)] = found
        if (len(types.columns), len(types.qualified)) == before:
            break
    if joins and (len(columns) > len(DISTINCT_COLUMNS) or reads_reg_relation(root)):
        raise _renamed("a join")


def _renamed(what: str) -> Exception:
    return fail("rewrite_unsupported", f"the columns of {what} renamed by an alias column list may be of an "
                "object-identifier type, which the proxy cannot follow through the new names; name the columns in "
                "the subquery instead")


def _function_columns(types: Types, body: Node) -> None:
    """The columns of `FROM f(...) [AS a [(c, ...)]]` or `ROWS FROM (f(...), g(...))` of a reg* type, by position:
    a multi-argument unnest has one column per array, a function of a known row type its output columns."""
    alias = body.get("alias") or {}
    aliasname = alias.get("aliasname")
    colnames = names_of(alias.get("colnames"))
    functions = body.get("functions") or []
    position, known = 0, True
    for item in functions:
        parts = (item.get("List", {}).get("items") or [None, None]) if type(item) is dict else [None, None]
        call, coldefs = parts[0], parts[1] if len(parts) > 1 else None
        fcall = (call or {}).get("FuncCall") if type(call) is dict else None
        names = names_of((fcall or {}).get("funcname"))
        name = names[-1] if names else ""
        args = (fcall or {}).get("args") or []
        outs: list[tuple[str, str | None]] | None
        if name in SOURCE_COLUMNS and (len(names) == 1 or names[-2] == "pg_catalog") and name not in RESULT_TYPES:
            if colnames:  # a row of a function whose column positions differ between majors
                raise _renamed(f"function {name}")
            outs = None
        elif name == "unnest" and len(args) > 1:
            outs = [("unnest", _scalar(t) if (t := types.of(a)) and t.endswith("[]") else None) for a in args]
        elif coldefs:
            outs = [("", None) for _ in coldefs]
        else:
            found = types.of(call)
            outs = [(name, found)] if found is not None else None
        if outs is None:
            known = False
            continue
        for default, found in outs:
            if found is not None:
                if not known and len(colnames) > position:
                    raise _renamed("a function in FROM")
                if position < len(colnames):
                    column = colnames[position]
                elif len(functions) == 1 and len(outs) == 1 and aliasname:
                    column = aliasname
                else:
                    column = default
                types.columns[column] = found
                if aliasname:
                    types.qualified[(aliasname, column)] = found
            position += 1


_SOURCE_TAGS = frozenset({"RangeVar", "FuncCall", "RangeSubselect", "RangeFunction", "CommonTableExpr", "JoinExpr"})


def _output_names(select: Node) -> list[str | None]:
    body = select.get("SelectStmt", select)
    while body.get("op", "SETOP_NONE") != "SETOP_NONE":
        body = body.get("larg") or {}
    rows = body.get("valuesLists")
    if rows:
        return [f"column{i + 1}" for i in range(len(_items(rows[0])))]
    out: list[str | None] = []
    for target in body.get("targetList") or []:
        res = target.get("ResTarget", {})
        out.append(res.get("name") or _default_name(res.get("val")))
    return out


# -- groups ----------------------------------------------------------------------------------------------------


def _leaves(body: Node) -> list[Node]:
    if body.get("op", "SETOP_NONE") == "SETOP_NONE":
        return [body]
    return [*_leaves(body.get("larg") or {}), *_leaves(body.get("rarg") or {})]


@dataclass(slots=True)
class Seen:
    """What the pre-order walk has learned about nodes below: INSERT sources, ARRAY[...] nested in another."""

    inserted: set[int] = field(default_factory=set)  # INSERT ... VALUES: each value takes its column's type
    nested: set[int] = field(default_factory=set)  # an ARRAY[...] inside another: one group with the outer one


def groups(root: Node) -> Iterator[tuple[Node, Any, Any, Group]]:
    """Every group of the statement with the tagged node it belongs to and where that lives, in pre-order."""
    seen = Seen()
    for node, holder, key in walk(root):
        for group in node_groups(node, holder, key, seen):
            yield node, holder, key, group


def node_groups(node: Node, holder: Any, key: Any, seen: Seen) -> Iterator[Group]:
    """The groups of one tagged node (visited in pre-order, so `seen` knows its ancestors)."""
    tag = tag_of(node)
    body = node[tag]  # type: ignore[index]
    if tag == "InsertStmt" and body.get("selectStmt"):
        seen.inserted.add(id(body["selectStmt"].get("SelectStmt", body["selectStmt"])))
    elif tag in ("CoalesceExpr", "MinMaxExpr"):
        args = body.get("args") or []
        yield Group(VALUE, [Member(args, i) for i in range(len(args))], holder, key, node=node)
    elif tag == "CaseExpr":
        whens = [w.get("CaseWhen", {}) for w in body.get("args") or []]
        arms = [Member(w, "result") for w in whens if w.get("result") is not None]
        if body.get("defresult") is not None:
            arms.append(Member(body, "defresult"))
        yield Group(VALUE, arms, holder, key, node=node)
        if body.get("arg") is not None:  # CASE x WHEN a ...: x = a
            yield Group(COMPARE, [Member(body, "arg"), *(Member(w, "expr") for w in whens)], arrays_only=True)
    elif tag == "A_ArrayExpr":
        if id(body) not in seen.nested:
            elements: list[Member] = []
            _array_elements(body, elements, seen.nested)
            yield Group(VALUE, elements, holder, key, array=True, node=node)
    elif tag == "A_Expr":
        yield from _a_expr(node, body, holder, key)
    elif tag == "FuncCall":
        names = names_of(body.get("funcname"))
        name = names[-1] if names and (len(names) == 1 or names[-2] == "pg_catalog") else ""
        args = body.get("args") or []
        if name in _WINDOW_DEFAULTS and len(args) == 3 and not any("NamedArgExpr" in a for a in args):
            # lag/lead(value, offset, default): value and default resolve to one type (anycompatible)
            yield Group(VALUE, [Member(args, 0), Member(args, 2)], holder, key, node=node)
        roles = ARRAY_FUNCTIONS.get(name) or ARRAY_COMPARES.get(name)
        if roles and len(args) >= len(roles) and not any("NamedArgExpr" in a for a in args):
            members = [Member(args, i, role == "A") for i, role in enumerate(roles)]
            if name in ARRAY_FUNCTIONS:
                yield Group(VALUE, members, holder, key, array=True, node=node)
            else:
                yield Group(COMPARE, members)
    elif tag == "SelectStmt":
        yield from _select_columns(body, seen.inserted)


def _array_elements(body: Node, out: list[Member], nested: set[int]) -> None:
    elements = body.get("elements") or []
    for i, element in enumerate(elements):
        inner = element.get("A_ArrayExpr") if type(element) is dict else None
        if inner is not None:
            nested.add(id(inner))
            _array_elements(inner, out, nested)
        else:
            out.append(Member(elements, i))


def _a_expr(node: Node, body: Node, holder: Any, key: Any) -> Iterator[Group]:
    """`||` of an array of a reg* type and another operand; an IN list of two items or more, which PostgreSQL
    resolves with its left side to one type (an unknown literal in it is read by regclassin & co.). (A comparison,
    a one-item IN, BETWEEN, = ANY, NULLIF or a simple CASE's test is resolved as `oid = oid`: an unknown literal
    beside a reg* value is read as an OID, by oidin, and no name is looked up or printed.)"""
    kind = body.get("kind")
    if kind == "AEXPR_IN":  # x IN (a, b): the left side and the items resolve to one type
        rexpr = body.get("rexpr")
        items = rexpr.get("List", {}).get("items") if type(rexpr) is dict else rexpr
        if type(items) is list and len(items) >= 2:
            yield Group(COMPARE, [Member(body, "lexpr"), *(Member(items, i) for i in range(len(items)))])
            return
    if kind == "AEXPR_OP" and names_of(body.get("name"))[-1:] == ("||",):
        left, right = body.get("lexpr"), body.get("rexpr")
        yield Group(VALUE, [Member(body, "lexpr", _arrayish(left)), Member(body, "rexpr", _arrayish(right))],
                    holder, key, array=True, node=node)
    elif kind not in ("AEXPR_OP_ANY", "AEXPR_OP_ALL"):  # (x = ANY (a): an element of a beside x)
        for group in _compared(body):
            if kind == "AEXPR_IN":
                group.node = node  # x IN (a): a guard of a would read as IN (subquery) (guarding refuses it)
            yield group


def _compared(body: Node) -> Iterator[Group]:
    """The operands of an operator, IS [NOT] DISTINCT FROM, NULLIF, a one-item IN, BETWEEN (row comparisons column by
    column): pg_operator has no operator taking a reg* type, so a value of one is compared by an oid operator
    (an unknown literal beside it is read by oidin), but an array of one is compared by the anyarray operators, which
    read an unknown literal or a parameter beside it as an array of that type, with regclassin & co."""
    operands: list[Member] = []
    for side in ("lexpr", "rexpr"):
        value = body.get(side)
        items = value.get("List", {}).get("items") if type(value) is dict and "List" in value else None
        if type(value) is list:
            items = value
        if items is not None:
            operands.extend(Member(items, i) for i in range(len(items)))
        elif value is not None:
            operands.append(Member(body, side))
    rows = [m.node.get("RowExpr", {}).get("args") for m in operands if type(m.node) is dict]
    if len(operands) == 2 and all(type(r) is list for r in rows) and len(rows[0]) == len(rows[1]):
        for i in range(len(rows[0])):
            pair = [Member(rows[0], i), Member(rows[1], i)]
            if any(_array_input(m.node) for m in pair):
                yield Group(COMPARE, pair, arrays_only=True)
    elif len(operands) >= 2 and any(_array_input(m.node) for m in operands):
        yield Group(COMPARE, operands, arrays_only=True)


def _array_input(node: Any) -> bool:
    """A parameter, or a string literal array_in would read (`{…}`, `[…]={…}`; any other text it refuses before
    reading an element): what such a comparison group guards (a value of another kind is compared, never named)."""
    if type(node) is not dict:
        return False
    text = (node.get("A_Const") or {}).get("sval", {}).get("sval") if "A_Const" in node else None
    return "ParamRef" in node or (text is not None and text.lstrip()[:1] in ("{", "["))


def _arrayish(node: Any) -> bool:
    """An operand of `||` that is an array (an ARRAY[...] or a literal, which PostgreSQL reads as one)."""
    return type(node) is dict and ("A_ArrayExpr" in node or ("A_Const" in node and "sval" in node["A_Const"])
                                   or "ArrayExpr" in node)


def _select_columns(body: Node, inserted: set[int]) -> Iterator[Group]:
    if body.get("op", "SETOP_NONE") != "SETOP_NONE":
        columns: list[list[Member]] = []
        leaves = _leaves(body)
        stars = [t for leaf in leaves for t in leaf.get("targetList") or []
                 if names_of(t.get("ResTarget", {}).get("val", {}).get("ColumnRef", {}).get("fields"))[-1:] == ("*",)]
        if stars:  # the columns a * stands for are not known: every column of every arm, one group
            members = [Member(t.get("ResTarget", {}), "val") for leaf in leaves for t in leaf.get("targetList") or []]
            yield Group(STARRED, members)
            return
        for leaf in leaves:
            for row in leaf.get("valuesLists") or [[]]:
                items = _items(row) if row else [t.get("ResTarget", {}) for t in leaf.get("targetList") or []]
                for i, item in enumerate(items):
                    while len(columns) <= i:
                        columns.append([])
                    columns[i].append(Member(_items(row), i) if row else Member(item, "val"))
        for members in columns:
            if len(members) > 1:
                yield Group(COLUMN, members)
    rows = body.get("valuesLists")
    if rows and id(body) not in inserted:
        width = max(len(_items(r)) for r in rows)
        for i in range(width):
            members = [Member(_items(r), i) for r in rows if i < len(_items(r))]
            if len(members) > 1:
                yield Group(COLUMN, members)


def anchor(types: Types, group: Group) -> str | None:
    """The reg* type of the first member of the group that is of one (`regclass`, or `regclass[]` when that member is
    an array where the group's members are elements), else None (also for a scalar one where only arrays count)."""
    for member in group.members:
        found = types.of(member.node)
        if found is not None:
            found = _scalar(found) if member.array else found
            return None if group.arrays_only and not found.endswith("[]") else found
    return None


def may_anchor(sites: int, calls: Iterator[str], columns: Iterator[str], relations: Iterator[str]) -> bool:
    """Whether a statement can hold a value of a reg* type: a written conversion (`sites`), a function returning one,
    a catalog column of one, a catalog relation that has one (read with *)."""
    return bool(sites) or any(c in RESULT_TYPES or c in REG_RELATIONS for c in calls) or any(
        c in DISTINCT_COLUMNS or c in _SOURCE_NAMES for c in columns) or any(r in REG_RELATIONS for r in relations)


_SOURCE_NAMES = frozenset(name for columns in SOURCE_COLUMNS.values() for name in columns)


def is_name_input(node: Any) -> bool:
    """An unknown-typed literal or an untyped parameter: read by the reg* input function of the group's type."""
    if type(node) is not dict:
        return False
    const = node.get("A_Const")
    return (const is not None and "sval" in const) or "ParamRef" in node


def is_null(node: Any) -> bool:
    return type(node) is dict and bool(node.get("A_Const", {}).get("isnull"))


# Catalog relations with a column of a reg* type (and the row types holding them): a new table takes none of them.
REG_RELATIONS = frozenset({"pg_aggregate", "pg_am", "pg_amproc", "pg_conversion", "pg_operator", "pg_proc", "pg_range",
                           "pg_ts_parser", "pg_ts_template", "pg_transform", "pg_type", "pg_sequences",
                           "pg_prepared_statements", *ROW_FUNCTIONS})


def reg_relations(root: Any) -> set[str]:
    """The names (relation names and aliases) by which the statement reads a catalog relation or function that has a
    column of a reg* type."""
    catalogs: set[str] = set()  # names a catalog with a reg* column is read by
    for node, _holder, _key in walk(root):
        tag = tag_of(node)
        body = node[tag]  # type: ignore[index]
        if tag == "RangeVar" and body.get("relname") in REG_RELATIONS and body.get("schemaname") in (
                None, "pg_catalog"):
            catalogs.update({body["relname"], (body.get("alias") or {}).get("aliasname", body["relname"])})
        elif tag == "RangeFunction":
            for item in body.get("functions") or []:
                for call in item.get("List", {}).get("items") or [] if type(item) is dict else []:
                    names = names_of((call or {}).get("FuncCall", {}).get("funcname"))
                    if names and names[-1] in REG_RELATIONS:
                        catalogs.add((body.get("alias") or {}).get("aliasname", names[-1]))
    return catalogs


def reads_reg_relation(root: Any) -> bool:
    """Whether the statement reads a catalog relation or function that has a column of a reg* type."""
    return bool(root) and bool(reg_relations(root))


def new_table_query(kind: str, body: Node) -> Any:
    """The query of CREATE TABLE AS / SELECT INTO / CREATE VIEW (None for any other statement): a view's column types
    would carry a reg* type into later statements, where the guards could not follow it."""
    if kind in ("CreateTableAsStmt", "ViewStmt"):
        return body.get("query")
    if kind == "SelectStmt" and body.get("intoClause"):
        return body
    return None


def check_new_table(root: Node, query: Any) -> None:
    """CREATE TABLE AS / SELECT INTO: refuse a column that may be of a reg* type, every column or the whole row of a
    catalog that has one (every value written into the table later would be converted without a guard)."""
    if type(query) is not dict or tag_of(query) not in (None, "SelectStmt"):
        raise fail("ddl_not_allowed", "a new table is made from a SELECT or VALUES query only")
    types = types_of(root)
    catalogs = reg_relations(root)
    body = query.get("SelectStmt", query)
    for leaf in _leaves(body):
        for row in leaf.get("valuesLists") or []:
            for item in _items(row):
                _check_column(types, item)
        for target in leaf.get("targetList") or []:
            val = target.get("ResTarget", {}).get("val")
            names = names_of(val.get("ColumnRef", {}).get("fields")) if type(val) is dict else ()
            star = bool(names) and names[-1] == "*"
            derived = {alias for alias, _ in types.qualified}
            if star and (derived if len(names) == 1 else derived & {names[-2]}):
                raise fail("ddl_not_allowed", "a new table or view may not take every column of a subquery with a "
                           "column of an object-identifier type; name the columns, as oid or text")
            if names and ((star and (len(names) == 1 or names[-2] in catalogs) and catalogs)
                          or (len(names) == 1 and names[0] in catalogs)):
                raise fail("ddl_not_allowed", "a new table or view may not take the columns or rows of a catalog that "
                           "has object-identifier columns (regproc, regtype...); name the columns, as oid or text")
            _check_column(types, val)


def _check_column(types: Types, node: Any) -> None:
    found = types.of(node)
    if found is not None:
        raise fail("ddl_not_allowed", f"a new table or view may not have a column of type {found}: it names objects "
                   "without the checks the proxy applies to conversions (store the OID as oid, or the name as text)")


# PostgreSQL's FirstNormalObjectId: OIDs below it are the built-in catalog's; a type at or above it is a user's
# (a table's row type, a domain, an enum...), possibly another tenant's or another session's temporary one.
FIRST_NORMAL_OID = 16384


def declares_reg_parameter(param_types: bytes) -> bool:
    """Whether a Parse message's parameter types (int16 count, int32 OIDs) declare a type a client may not: a
    name-bearing type (a reg* type, an array of one, a catalog row type holding one: nametypes.py), whose values
    would be read by regclassin & co. and printed as names without a written conversion the guards could follow,
    aclitem or aclitem[] (role names read by aclitemin), or any type that is not built in (OID >=
    FirstNormalObjectId): a hidden table's row type would describe its columns
    (`SELECT ($1).*`) and name it (`pg_typeof($1)`)."""
    count = int.from_bytes(param_types[:2], "big")
    for i in range(count):
        oid = int.from_bytes(param_types[2 + 4 * i: 6 + 4 * i], "big")
        if oid in NAME_TYPE_OIDS or oid in ACL_TYPE_OIDS or oid >= FIRST_NORMAL_OID:
            return True
    return False
