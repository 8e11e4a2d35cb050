"""Which catalog filters may go without an optimization fence.

A catalog filter wraps a catalog the client reads: `(SELECT * FROM pg_class WHERE <filter> OFFSET 0) c`. The
`OFFSET 0` (the fence) makes the filter run before anything of the client's. Without it the planner merges the
filter with the client's conditions and orders them by cost, so a client's condition may run first, on a row the
filter hides, and a condition that can raise an error (`relname::int = 0`) echoes the hidden row's values. The
fence has a price: the client's conditions no longer reach the catalog's indexes, and a correlated
`(SELECT ... FROM pg_class c WHERE c.oid = t.typrelid)` scans all of pg_class for every outer row.

A relation reference is *quiet* -- its filter may be plain -- when no condition that can fail reaches its rows:

- every WHERE, HAVING and JOIN condition of its own SELECT is safe (`safe_condition`: comparisons and pattern
  matches of plain columns and constants, NULL and boolean tests; no call, no cast of a column, no subquery);
- a FROM subquery (or an arm of a set operation) may be flattened into the SELECT around it, or get that SELECT's
  conditions pushed down, with its output columns replaced by their expressions: so the SELECT around it must be
  quiet too, and when any condition reaches that SELECT, every FROM item of it must be a plain source (see
  `plain_source`; a view, a CTE or a function may compute an output that fails);
- an EXISTS or IN subquery may become a join of the SELECT around it (and that SELECT of the one around it...):
  the FROM items of those SELECTs, which its correlated references may name, must be plain sources, and an IN
  needs a plain left side, a safe operator and plain outputs (another kind of subquery link stays fenced); a
  scalar or ARRAY subquery runs as a subplan and gets the values of the rows around it as parameters;
- a LATERAL subquery may join the FROM items before it: its conditions must be safe and it a plain source, and
  those items plain sources;
- a CTE the planner may inline where it is used stays fenced; a MATERIALIZED or recursive one is computed once,
  like a statement of its own, and its rows are plain values to the queries reading it;
- everything in a statement other than a query (`SELECT`, or the query of EXPLAIN, CREATE TABLE AS, DECLARE and
  COPY) stays fenced.

This applies only to a catalog filter that leaves no row out (`Filter.hides_rows`; the column replacements of a
database tenant alone in its database): one that hides rows is always fenced (`catalog.needs_fence`), since the
client's conditions merged with it would reach the catalog's own scan, whose plan follows statistics that count the
hidden rows (red team 9a8 N1).

verify.py decides the same independently (`verify.quiet_locations`) and accepts an unfenced wrapper only for a
relation reference it finds quiet.
"""

from __future__ import annotations

from typing import Any

from proxy.policy.tree import Node, names_of, tag_of, walk_dicts

# Conditions that cannot raise an error whatever the row: comparisons and pattern matches of columns with
# columns or constants, IN lists, NULL and boolean tests, AND/OR/NOT of them (a constant's cast or collation is
# applied when the statement is planned, not per row). Anything else -- a cast of a column, a function call, a
# subquery, CASE -- may fail on a hidden row.
SAFE_OPERATORS = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})
PATTERN_OPERATORS = frozenset({"~", "~*", "!~", "!~*", "~~", "~~*", "!~~", "!~~*"})
_SAFE_KINDS = frozenset({"AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_OP_ALL", "AEXPR_IN", "AEXPR_DISTINCT",
                         "AEXPR_NOT_DISTINCT", "AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN"})
# Functions in FROM whose output columns are values, not expressions the planner could move into a condition.
_PLAIN_FUNCTIONS = frozenset({"unnest", "generate_series", "generate_subscripts", "_pg_expandarray"})
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


def _constant(node: Node) -> bool:
    while "TypeCast" in node or "CollateClause" in node:
        node = (node.get("TypeCast") or node.get("CollateClause") or {}).get("arg") or {}
    return "A_Const" in node or "ParamRef" in node


def plain_value(node: Node) -> bool:
    """A column (not `*`), a constant or parameter, or an ARRAY[...] of them."""
    if "CollateClause" in node:
        return plain_value(node["CollateClause"].get("arg") or {})
    if "ColumnRef" in node:
        fields = node["ColumnRef"].get("fields") or ()
        return bool(fields) and "A_Star" not in fields[-1]
    if "A_ArrayExpr" in node:
        return all(plain_value(e) for e in node["A_ArrayExpr"].get("elements") or ())
    return _constant(node)


def _safe_operator(names: list[str]) -> bool:
    return bool(names) and names[:-1] in ([], ["pg_catalog"]) and names[-1] in SAFE_OPERATORS


def safe_condition(node: Node) -> bool:
    """True for a condition that cannot raise an error whatever the row (see above)."""
    if "BoolExpr" in node:
        return all(safe_condition(a) for a in node["BoolExpr"].get("args") or ())
    if "NullTest" in node or "BooleanTest" in node:
        return plain_value((node.get("NullTest") or node.get("BooleanTest") or {}).get("arg") or {})
    if "A_Expr" in node:
        expr = node["A_Expr"]
        names = [n.get("String", {}).get("sval", "") for n in expr.get("name") or ()]
        if expr.get("kind") not in _SAFE_KINDS or len(names) > 2 or names[:-1] not in ([], ["pg_catalog"]):
            return False
        left, right = expr.get("lexpr") or {}, expr.get("rexpr") or {}
        rights = right["List"].get("items") or [] if "List" in right else [right]
        if names[-1] in PATTERN_OPERATORS:
            return plain_value(left) and all(_constant(r) for r in rights)
        return names[-1] in SAFE_OPERATORS and plain_value(left) and all(plain_value(r) for r in rights)
    return plain_value(node)


def _select(node: Any) -> Node | None:
    """The body of a tagged SelectStmt, else None."""
    return node.get("SelectStmt") if type(node) is dict and tag_of(node) == "SelectStmt" else None


def _from_tree(items: list[Node], leaves: list[Node], conditions: list[Node]) -> None:
    """The FROM items of one SELECT through its joins, and the joins' conditions."""
    for item in items:
        join = item.get("JoinExpr") if tag_of(item) == "JoinExpr" else None
        if join is None:
            leaves.append(item)
            continue
        if join.get("quals") is not None:
            conditions.append(join["quals"])
        _from_tree([join[side] for side in ("larg", "rarg") if side in join], leaves, conditions)


def _links(select: Node) -> tuple[list[Node], list[Node]]:
    """The subquery links of one SELECT outside its FROM subqueries, CTEs and set operation arms (their testexpr
    searched too), and any other nested query found there."""
    links: list[Node] = []
    others: list[Node] = []
    todo: list[Any] = [v for k, v in select.items() if k not in ("withClause", "larg", "rarg")]
    while todo:
        item = todo.pop()
        if type(item) is list:
            todo.extend(item)
        elif type(item) is dict:
            tag = tag_of(item)
            if tag == "SubLink":
                links.append(item["SubLink"])
                if item["SubLink"].get("testexpr") is not None:
                    todo.append(item["SubLink"]["testexpr"])
            elif tag == "RangeSubselect":
                continue  # a level of its own, reached through the FROM tree
            elif tag == "SelectStmt" or ("op" in item and "limitOption" in item):
                others.append(item.get("SelectStmt") or item)
            else:
                todo.extend(v for v in item.values() if type(v) is dict or type(v) is list)
    return links, others


def _every_condition_safe(node: Node) -> bool:
    for value in walk_dicts(node):
        for key in ("whereClause", "havingClause"):
            if value.get(key) is not None and not safe_condition(value[key]):
                return False
        if "jointype" in value and value.get("quals") is not None and not safe_condition(value["quals"]):
            return False
    return True


def _materialized(cte: Node, recursive: bool) -> bool:
    """A CTE the planner never inlines: MATERIALIZED, or recursive (it reads its own name)."""
    if cte.get("ctematerialized") == "CTEMaterializeAlways":
        return True
    name = cte.get("ctename")
    return recursive and any(
        "relname" in v and "schemaname" not in v and v.get("relname") == name
        for v in walk_dicts(cte.get("ctequery"))
    )


class _Quiet:
    def __init__(self, node: Node) -> None:
        self.quiet: set[int] = set()
        self.barriers: dict[str, bool] = {}  # CTE name -> every CTE so named is materialized
        for value in walk_dicts(node):
            for cte in value.get("ctes") or ():
                body = cte.get("CommonTableExpr") or {}
                name = body.get("ctename", "")
                barrier = _materialized(body, bool(value.get("recursive")))
                self.barriers[name] = self.barriers.get(name, True) and barrier
        self.statement(node)

    def statement(self, node: Node) -> None:
        select = _select(node)
        if select is not None:
            self.level(select, True, False, True)
            return
        tag = tag_of(node)
        if tag in ("ExplainStmt", "CreateTableAsStmt", "DeclareCursorStmt", "CopyStmt"):
            query = node[tag].get("query")
            if type(query) is dict:
                self.statement(query)

    def plain_source(self, item: Node) -> bool:
        """A FROM item whose output columns are stored values: a system catalog or view (`pg_*` names resolve to
        pg_catalog first), a plain unnest()/generate_series(), a subquery whose outputs are plain columns of plain
        sources."""
        tag = tag_of(item)
        if tag == "RangeVar":
            rv = item["RangeVar"]
            schema, name = rv.get("schemaname"), rv.get("relname", "")
            if "catalogname" in rv:
                return False
            if schema is None and name in self.barriers:
                return self.barriers[name]  # a materialized CTE's rows are values
            return schema in _SYSTEM_SCHEMAS or (schema is None and name.startswith("pg_"))
        if tag == "RangeSubselect":
            select = _select(item["RangeSubselect"].get("subquery"))
            return select is not None and self.plain_select(select)
        if tag == "RangeFunction":
            for entry in item["RangeFunction"].get("functions") or ():
                call = ((entry.get("List") or {}).get("items") or [{}])[0].get("FuncCall")
                names = names_of(call.get("funcname")) if call else ()
                if not names or names[-1] not in _PLAIN_FUNCTIONS or len(names) > 2:
                    return False
                if len(names) == 2 and names[0] not in _SYSTEM_SCHEMAS:
                    return False
            return True
        return False

    def plain_select(self, select: Node) -> bool:
        """A query whose output columns are plain columns (or constants) of plain sources."""
        if select.get("op", "SETOP_NONE") != "SETOP_NONE":
            return all(self.plain_select(select[side]) for side in ("larg", "rarg") if side in select)
        for target in select.get("targetList") or ():
            value = target.get("ResTarget", {}).get("val") or {}
            if not (plain_value(value) or "ColumnRef" in value):
                return False
        leaves: list[Node] = []
        _from_tree(select.get("fromClause") or [], leaves, [])
        return all(self.plain_source(leaf) for leaf in leaves)

    def level(self, select: Node, ok: bool, reached: bool, above: bool) -> None:
        """Mark the quiet relation references of one SELECT. `ok`: nothing outside it that reaches its rows can
        fail; `reached`: a condition outside it reaches its rows (through its output columns); `above`: the FROM
        items of the queries around it that it may be joined with (its correlated references) are plain sources."""
        recursive = bool((select.get("withClause") or {}).get("recursive"))
        for cte in (select.get("withClause") or {}).get("ctes") or ():
            body = _select(cte.get("CommonTableExpr", {}).get("ctequery"))
            if body is None:
                continue
            if _materialized(cte.get("CommonTableExpr") or {}, recursive):
                self.level(body, True, False, True)  # computed once; nothing outside reaches into it
            else:
                self.level(body, False, True, False)  # may be inlined where it is used
        if select.get("op", "SETOP_NONE") != "SETOP_NONE":
            for side in ("larg", "rarg"):
                if side in select:
                    self.level(select[side], ok, reached, above)
            return
        leaves: list[Node] = []
        conditions = [select[k] for k in ("whereClause", "havingClause") if select.get(k) is not None]
        _from_tree(select.get("fromClause") or [], leaves, conditions)
        reached = reached or bool(conditions)
        sources = all(self.plain_source(leaf) for leaf in leaves)
        laterals = [leaf["RangeSubselect"] for leaf in leaves
                    if tag_of(leaf) == "RangeSubselect" and leaf["RangeSubselect"].get("lateral")]
        quiet = (
            ok
            and above
            and all(safe_condition(c) for c in conditions)
            and (sources or not reached)
            and all(self.quiet_lateral(sub) for sub in laterals)
        )
        for leaf in leaves:
            tag = tag_of(leaf)
            if tag == "RangeVar":
                if quiet and "location" in leaf["RangeVar"]:
                    self.quiet.add(leaf["RangeVar"]["location"])
            elif tag == "RangeSubselect":
                body = _select(leaf["RangeSubselect"].get("subquery"))
                lateral = bool(leaf["RangeSubselect"].get("lateral"))
                if body is not None:
                    self.level(body, quiet, reached, above and (sources or not lateral))
        links, others = _links(select)
        for link in links:
            body = _select(link.get("subselect"))
            if body is None:
                continue
            kind = link.get("subLinkType")
            if kind in ("EXPR_SUBLINK", "ARRAY_SUBLINK"):
                self.level(body, True, False, True)
            elif kind == "EXISTS_SUBLINK":
                self.level(body, True, False, above and sources)
            elif kind == "ANY_SUBLINK":
                operator = [n.get("String", {}).get("sval", "") for n in link.get("operName") or ()]
                joinable = (
                    plain_value(link.get("testexpr") or {})
                    and (not operator or _safe_operator(operator))
                    and self.plain_select(body)
                )
                self.level(body, joinable, True, above and sources)
            else:
                self.level(body, False, True, False)
        for body in others:
            self.level(body, False, True, False)

    def quiet_lateral(self, sub: Node) -> bool:
        body = _select(sub.get("subquery"))
        return body is not None and self.plain_select(body) and _every_condition_safe(body)


def quiet_references(node: Node) -> frozenset[int]:
    """The locations of the relation references (RangeVars) of a client's statement tree whose catalog filter
    needs no fence (see above)."""
    return frozenset(_Quiet(node).quiet)
