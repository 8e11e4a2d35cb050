"""aclitem values read from text (red team round 3 R7): which expressions may be aclitem-typed, and the places where a
literal or parameter beside one takes its type and is read by aclitemin, which looks role names up."""

from __future__ import annotations

from typing import Any

from proxy.policy.catalog import ACL_COLUMNS
from proxy.policy.rules import fail
from proxy.policy.tree import Node, names_of, string_const, walk_dicts
from proxy.policy.walk import Analysis

# aclitemin reads `grantee=privileges/grantor`: a hidden role is read, a missing one is 42704 `role "x" does not exist`.
# An aclitem or aclitem[] value comes from a catalog's ACL column, from a function that returns one, or from a cast of
# NULL (other casts to these types are refused, nametypes.check_acl_input); a temporary table or view never has such
# a column (`check_new_columns`). An unknown-typed value (a string literal, a parameter, an ARRAY[] of them) beside such
# an expression -- an operator's other operand, another argument of COALESCE/NULLIF/GREATEST/CASE/ARRAY[], of a
# polymorphic function, a column of another branch of a UNION or row of a VALUES list, the value tested by `IN
# (SELECT …)` -- takes its type, so it is refused (`aclitem_input`), also where the ACL value hides behind a
# subscript, a field selection, a sub-select or an alias of the statement.
ACL_NAMES: frozenset[str] = frozenset(ACL_COLUMNS.values())
ACL_RELATIONS: frozenset[str] = frozenset(ACL_COLUMNS)
ACL_TYPES = frozenset({"aclitem", "_aclitem"})
ACL_RESULTS = frozenset({"acldefault", "makeaclitem", "pg_get_acl", "aclinsert", "aclremove"})
# Functions whose result has the type of an argument (anyelement / anyarray / anycompatible): an ACL argument makes an
# ACL result, and a text argument beside it takes the ACL type.
PROPAGATING = frozenset({
    "array_append", "array_prepend", "array_cat", "array_remove", "array_replace", "array_position", "array_positions",
    "unnest", "array_agg", "any_value", "trim_array", "array_shuffle", "array_sample", "array_reverse", "min", "max",
    "first_value", "last_value", "nth_value", "lag", "lead", "mode", "percentile_disc", "array_fill",
})
_SETOPS = frozenset({"SETOP_UNION", "SETOP_INTERSECT", "SETOP_EXCEPT"})


def may_hold_acl(analysis: Analysis) -> bool:
    """Whether the statement names a source of aclitem values at all (only then is it walked)."""
    return (any(ref.rv.get("relname") in ACL_RELATIONS for ref in analysis.refs)
            or any(call.names and call.names[-1] in ACL_RESULTS for call in analysis.calls)
            or any(names and names[-1] in ACL_NAMES for names in analysis.column_refs)
            or any(names and names[-1] in ACL_TYPES for names in analysis.type_names))


def check(root: Any, analysis: Analysis) -> None:
    """Refuse an unknown-typed value where PostgreSQL would read it as aclitem or aclitem[] (`aclitem_input`)."""
    if not may_hold_acl(analysis):
        return
    names = _acl_names(root)
    for node in walk_dicts(root):
        for kind, body in node.items():
            if type(body) is dict:
                _check_node(kind, body, names)


def _refuse(where: str) -> None:
    raise fail("aclitem_input", f"a literal or parameter {where} an ACL value is read as aclitem, with role names")


def _check_node(kind: str, body: Node, names: set[str]) -> None:
    if kind == "A_Expr":
        sides = [body.get("lexpr"), *_items(body.get("rexpr"))]
        left, right = body.get("lexpr"), body.get("rexpr")
        if left and right and "RowExpr" in left and "RowExpr" in right:  # (a, b) = ('…', x): position by position
            for pair in zip(left["RowExpr"].get("args") or (), right["RowExpr"].get("args") or (), strict=False):
                _siblings(pair, names, "beside")
        _siblings(sides, names, "beside")
    elif kind in ("CoalesceExpr", "MinMaxExpr"):
        _siblings(body.get("args") or [], names, "beside")
    elif kind == "A_ArrayExpr":
        _siblings(body.get("elements") or [], names, "in an array with")
    elif kind == "CaseExpr":
        whens = [w.get("CaseWhen", {}) for w in body.get("args") or ()]
        _siblings([*(w.get("result") for w in whens), body.get("defresult")], names, "in a CASE with")
        if body.get("arg") is not None:
            _siblings([body["arg"], *(w.get("expr") for w in whens)], names, "in a CASE with")
    elif kind == "FuncCall":
        fname = names_of(body.get("funcname"))
        if fname and fname[-1] in PROPAGATING and (len(fname) == 1 or fname[-2] == "pg_catalog"):
            _siblings(body.get("args") or [], names, f"passed to {fname[-1]}() with")
    elif kind == "SubLink":
        test = body.get("testexpr")
        tested = (test or {}).get("RowExpr", {}).get("args") or [test]
        if any(is_text(t) and _target_acl(body.get("subselect"), i, names) for i, t in enumerate(tested)):
            _refuse("tested against")
    elif kind in ("CreateTableAsStmt", "ViewStmt"):
        check_new_columns(body.get("query"), names, "a view" if kind == "ViewStmt" else "a temporary table")
    elif "op" in body or "valuesLists" in body:  # a SELECT (a set operation's branches are bare bodies)
        if body.get("intoClause"):
            check_new_columns(body, names, "a temporary table")
        if body.get("op") in _SETOPS or body.get("valuesLists"):
            _check_columns(body, names)


def _items(node: Any) -> list[Any]:
    if type(node) is list:
        return node
    if type(node) is dict and "List" in node:
        return node["List"].get("items") or []
    return [node]


def _siblings(nodes: Any, names: set[str], where: str) -> None:
    present = [n for n in nodes if type(n) is dict]
    if any(is_text(n) for n in present) and any(_is_acl(n, names) for n in present):
        _refuse(where)


def is_text(node: Any) -> bool:
    """An unknown-typed value that may name a role: a string literal, a parameter, an ARRAY[] of them (typed by its
    context). An empty string or array (`'{}'`: pg_dump's default ACL) names none."""
    if type(node) is not dict:
        return False
    literal = string_const(node)
    if literal is not None:
        return literal.replace(" ", "") not in ("", "{}")
    if "ParamRef" in node:
        return True
    cast = node.get("TypeCast")
    if cast is not None and names_of((cast.get("typeName") or {}).get("names"))[-1:] == ("unknown",):
        return is_text(cast.get("arg"))
    array = node.get("A_ArrayExpr")
    return bool(array and array.get("elements")) and all(is_text(e) for e in array["elements"])


def _is_acl(node: Any, names: set[str]) -> bool:
    """Whether `node` may have type aclitem or aclitem[] (over-approximated by names: `names` are the column names of
    the statement that may hold one)."""
    if type(node) is not dict:
        return False
    if "ColumnRef" in node:
        fields = names_of(node["ColumnRef"].get("fields"))
        return bool(fields) and fields[-1] in names
    if "A_Indirection" in node:
        ind = node["A_Indirection"]
        fields = [f["String"]["sval"] for f in ind.get("indirection") or () if "String" in f]
        return _is_acl(ind.get("arg"), names) or (bool(fields) and fields[-1] in names)
    if "TypeCast" in node:
        type_names = names_of((node["TypeCast"].get("typeName") or {}).get("names"))
        return bool(type_names) and type_names[-1] in ACL_TYPES
    if "FuncCall" in node:
        call = node["FuncCall"]
        fname = names_of(call.get("funcname"))
        if not fname or (len(fname) > 1 and fname[-2] != "pg_catalog"):
            return False
        return fname[-1] in ACL_RESULTS or (
            fname[-1] in PROPAGATING and any(_is_acl(a, names) for a in call.get("args") or ()))
    if "CoalesceExpr" in node or "MinMaxExpr" in node:
        return any(_is_acl(a, names) for a in next(iter(node.values())).get("args") or ())
    if "A_ArrayExpr" in node:
        return any(_is_acl(a, names) for a in node["A_ArrayExpr"].get("elements") or ())
    if "CaseExpr" in node:
        case = node["CaseExpr"]
        results = [w.get("CaseWhen", {}).get("result") for w in case.get("args") or ()]
        return any(_is_acl(r, names) for r in [*results, case.get("defresult")])
    if "A_Expr" in node:
        expr = node["A_Expr"]
        if expr.get("kind") == "AEXPR_NULLIF":
            return _is_acl(expr.get("lexpr"), names)
        return names_of(expr.get("name")) == ("||",) and (
            _is_acl(expr.get("lexpr"), names) or _is_acl(expr.get("rexpr"), names))
    if "SubLink" in node:
        sub = node["SubLink"]
        return sub.get("subLinkType") in ("EXPR_SUBLINK", "ARRAY_SUBLINK") and _target_acl(
            sub.get("subselect"), 0, names)
    return False


def _select(node: Any) -> Node:
    return (node or {}).get("SelectStmt", node or {}) if type(node) is dict else {}


def _leaves(body: Node) -> list[Node]:
    """The SELECT / VALUES leaves of a set operation, left to right."""
    if body.get("op") in _SETOPS:
        return _leaves(_select(body.get("larg"))) + _leaves(_select(body.get("rarg")))
    return [body]


def _columns(leaf: Node) -> list[list[Any]]:
    """A leaf's output columns: its target values, or each row of its VALUES list."""
    if leaf.get("valuesLists"):
        return [_items(row) for row in leaf["valuesLists"]]
    return [[(t.get("ResTarget") or {}).get("val") for t in leaf.get("targetList") or ()]]


def _star(value: Any) -> bool:
    fields = (value or {}).get("ColumnRef", {}).get("fields") if type(value) is dict else None
    return bool(fields) and "A_Star" in fields[-1]


def _check_columns(body: Node, names: set[str]) -> None:
    """Columns of the branches of a set operation (and rows of VALUES) are typed together: position by position; a
    `*` branch may put an ACL column at any position."""
    rows = [row for leaf in _leaves(body) for row in _columns(leaf)]
    if any(_star(v) for row in rows for v in row):
        if any(is_text(v) for row in rows for v in row):
            _refuse("in a set operation with a * column, possibly")
        return
    for position in zip(*rows, strict=False):
        _siblings(position, names, "in the column of a set operation or VALUES list with")


def _target_acl(subselect: Any, position: int, names: set[str]) -> bool:
    """Whether output column `position` of a sub-select may be an ACL value (a `*` may put one anywhere)."""
    for leaf in _leaves(_select(subselect)):
        for row in _columns(leaf):
            if any(_star(v) for v in row[: position + 1]):
                return True
            if position < len(row) and _is_acl(row[position], names):
                return True
    return False


def check_new_columns(query: Any, names: set[str], what: str) -> None:
    """A temporary table (CREATE TABLE AS, SELECT INTO) or view may not get an aclitem or aclitem[] column: a later
    INSERT, UPDATE or COPY would read text into it, and its column name could be anything. `*` over a catalog with an
    ACL column counts."""
    body = _select(query)
    for leaf in _leaves(body):
        for row in _columns(leaf):
            for value in row:
                if _is_acl(value, names) or (_star(value) and _reads_acl_relation(leaf)):
                    raise fail("aclitem_input", f"{what} may not have an aclitem column (it would read role names "
                               "from text); cast it to text")


def _reads_acl_relation(leaf: Node) -> bool:
    return any(node.get("relname") in ACL_RELATIONS for node in walk_dicts(leaf.get("fromClause") or []))


def _acl_names(root: Any) -> set[str]:
    """Column names of the statement that may hold an ACL value: the catalogs' ACL columns, then, to a fixed point,
    the output names of ACL expressions and every alias of a column of a FROM item that holds one."""
    names = set(ACL_NAMES)
    targets: list[Node] = []
    aliased: list[tuple[list[str], Any]] = []  # (column aliases, the FROM item's content)
    for node in walk_dicts(root):
        if "ResTarget" in node and node["ResTarget"].get("name"):
            targets.append(node["ResTarget"])
        for kind in ("RangeVar", "RangeSubselect", "RangeFunction"):
            item = node.get(kind)
            colnames = ((item or {}).get("alias") or {}).get("colnames")
            if colnames:
                aliased.append(([c["String"]["sval"] for c in colnames if "String" in c], node))
        cte = node.get("CommonTableExpr")
        if cte and cte.get("aliascolnames"):
            aliased.append(([c["String"]["sval"] for c in cte["aliascolnames"] if "String" in c], cte.get("ctequery")))
    while True:
        before = len(names)
        for target in targets:
            if _is_acl(target.get("val"), names):
                names.add(target["name"])
        for colnames, content in aliased:
            if _holds_acl(content, names):
                names.update(colnames)
        if len(names) == before:
            return names


def _holds_acl(content: Any, names: set[str]) -> bool:
    for node in walk_dicts(content):
        if (node.get("RangeVar") or {}).get("relname") in ACL_RELATIONS or node.get("relname") in ACL_RELATIONS:
            return True
        for value in node.values():
            if type(value) is dict and _is_acl(value, names):
                return True
    return False
