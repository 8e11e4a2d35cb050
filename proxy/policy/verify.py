"""The post-rewrite verifier: the rewritten text parses to the intended tree and every filtered relation is filtered."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from proxy.policy import guards, implicit, notify
from proxy.policy.catalog import ambiguous_scoped, needs_fence, relation_filter, wrapper_select
from proxy.policy.classify import option_value
from proxy.policy.model import TenantPolicy
from proxy.policy.tree import Node, canonical, const_text, dumps, expr_node, names_of, parse_json, strip_positions

_STAR_FIELDS = [{"A_Star": {}}]
_ACCESS_SHARE = 1  # LockStmt.mode: LOCK TABLE names relations without reading a row, in this mode only


def _without_tableoid(sub: Node, relname: str) -> Node:
    """A catalog wrapper's SELECT without a last output `<relname>.tableoid` (`Filter.with_tableoid`: the catalog's
    own OID, nothing a filter hides), else `sub` as it is."""
    targets = sub.get("targetList") or ()
    last = targets[-1].get("ResTarget", {}) if len(targets) > 1 else {}
    fields = [{"String": {"sval": relname}}, {"String": {"sval": "tableoid"}}]
    if set(last) - {"location"} != {"val"} or last["val"].get("ColumnRef", {}).get("fields") != fields:
        return sub
    return {**sub, "targetList": targets[:-1]}
_WRAPPER_KEYS = frozenset({"targetList", "fromClause", "whereClause", "limitOption", "op"})
_FENCED_WRAPPER_KEYS = _WRAPPER_KEYS | {"limitOffset"}
_OFFSET_ZERO: Node = {"A_Const": {"ival": {}}}
_INSERT_WRAPPER_ALIAS = "_pgt"
_JOIN_FILTER_KEYS = frozenset({"jointype", "larg", "rarg", "quals"})
_EMPTY_SELECT: Node = {"SelectStmt": {"limitOption": "LIMIT_OPTION_DEFAULT", "op": "SETOP_NONE"}}
# Splicing k edits costs k searches of the JSON text; one serialization of the edited tree costs about 45 searches
# (measured on the BI fixture corpus): beyond this many edits the tree is serialized, so the cost stays linear.
_MAX_SPLICES = 16


class Unverified(Exception):
    """The rewrite (or the original statement) does not satisfy the filter invariant."""


def intended_json(original_json: str, doc: Node, splices: list[tuple[str, Node]], full_dump: bool) -> str:
    """JSON text of the intended tree: the client's tree with the filters applied as tree edits (`doc`, already
    edited). When a few edits replace leaves, splice them into the client's JSON text (the JSON text of a tree is
    the concatenation of its parts' texts: each splice is a search over the whole text, cheaper than serializing
    the document for up to _MAX_SPLICES of them); otherwise serialize the edited document, in linear time."""
    if full_dump or len(splices) > _MAX_SPLICES:
        return dumps(doc)
    text = original_json
    for old, new in splices:
        at = text.find(old)
        if at < 0 or text.find(old, at + 1) >= 0:
            raise Unverified("a filtered reference is not unique in the parse tree")
        text = text[:at] + dumps(new) + text[at + len(old) :]
    return text


def verify_rewrite(
    statements: list[tuple[TenantPolicy, Node]], intended: str, rewritten_sql: str, reads: list[Reads] | None = None
) -> None:
    """Raise Unverified unless `rewritten_sql` parses to exactly the `intended` JSON parse tree (positions
    ignored) and every filtered relation in the (edited) statement trees carries its filter, each statement under
    its policy (the session context the statements before it leave)."""
    if strip_positions(parse_json(rewritten_sql)) != strip_positions(intended):
        raise Unverified("the rewritten text does not parse to the intended statement")
    for i, (policy, node) in enumerate(statements):
        check_coverage(policy, node, reads[i] if reads is not None else None)


def check_coverage(policy: TenantPolicy, node: Node, reads: Reads | None = None) -> None:
    """Raise Unverified if any filtered relation in the statement tree is read or written without its filter, or
    if the statement writes, creates or drops what the write rule does not allow: a read-only role writes only
    pg_temp.<name>, every role drops only pg_temp.<name>, creates only temporary relations, and a temporary view's
    query is always the wrapper PostgreSQL cannot update through. `reads`: what the client's statement reads
    (`reads_of`, before the rewrite), which lets a catalog filter leave out column replacements it cannot see."""
    _Coverage(policy, reads).run(node)


@dataclass(frozen=True, slots=True)
class Reads:
    """What a client's statement may read: column names (the last name of each column reference; a lone name may
    be a whole row) and USING names; the locations of relation references it may read whole; the locations of the
    relation references no condition that can fail reaches (`quiet`: their catalog filters may be unfenced)."""

    names: frozenset[str]
    whole: frozenset[int]
    quiet: frozenset[int] = frozenset()


def _relations_of(from_items: list[Any], found: list[Node]) -> None:
    for it in from_items:
        if "JoinExpr" in it:
            j = it["JoinExpr"]
            _relations_of([j[side] for side in ("larg", "rarg") if side in j], found)
        elif "RangeVar" in it:
            found.append(it["RangeVar"])


def reads_of(node: Node) -> Reads:
    """What a client's statement may read (taken before the rewrite): a `*` reads every column of the relations of
    its own SELECT, `t.*` and a lone `t` of the relations so named, a NATURAL join of its two sides."""
    found: set[str] = set()
    whole: set[int] = set()
    row_names: set[str] = set()
    every_relation: list[Node] = []
    todo: list[Any] = [node]
    while todo:
        item = todo.pop()
        if type(item) is list:
            todo.extend(item)
        elif type(item) is dict:
            if "ColumnRef" in item:
                parts = item["ColumnRef"].get("fields") or []
                if parts and "A_Star" in parts[-1]:
                    row_names.update(p.get("String", {}).get("sval", "") for p in parts[-2:-1])
                elif parts:
                    last = parts[-1].get("String", {}).get("sval", "")
                    found.add(last)
                    if len(parts) == 1:
                        row_names.add(last)
                continue
            is_select = "op" in item and "limitOption" in item  # a SELECT body, tagged or a set operation's arm
            returning = item.get("returningList") or (item.get("returningClause") or {}).get("exprs") or []
            if is_select or returning:
                mine: list[Node] = []
                from_items = list(item.get("fromClause") or []) + list(item.get("usingClause") or [])
                if "sourceRelation" in item:
                    from_items.append(item["sourceRelation"])
                _relations_of(from_items, mine)
                every_relation += mine
                for target in (item.get("targetList") or []) if is_select else returning:
                    ref = target.get("ResTarget", {}).get("val", {}).get("ColumnRef", {})
                    if ref.get("fields") == [{"A_Star": {}}]:
                        whole.update(rv.get("location", -1) for rv in mine)
            if "JoinExpr" in item:
                j = item["JoinExpr"]
                found.update(u.get("String", {}).get("sval", "") for u in j.get("usingClause") or [])
                if j.get("isNatural"):
                    sides: list[Node] = []
                    _relations_of([j[side] for side in ("larg", "rarg") if side in j], sides)
                    whole.update(rv.get("location", -1) for rv in sides)
            todo.extend(item.values())
    for rv in every_relation:
        if ((rv.get("alias") or {}).get("aliasname") or rv.get("relname")) in row_names:
            whole.add(rv.get("location", -1))
    return Reads(frozenset(found), frozenset(whole), quiet_locations(node))


_COMPARISONS = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})
_MATCHES = frozenset({"~", "~*", "!~", "!~*", "~~", "~~*", "!~~", "!~~*"})


def _is_constant(node: Any) -> bool:
    while type(node) is dict and ("TypeCast" in node or "CollateClause" in node):
        node = next(iter(node.values())).get("arg")
    return type(node) is dict and ("A_Const" in node or "ParamRef" in node)


def _is_operand(node: Any) -> bool:
    if type(node) is not dict:
        return False
    if "CollateClause" in node:
        return _is_operand(node["CollateClause"].get("arg"))
    if "ColumnRef" in node:
        parts = node["ColumnRef"].get("fields") or []
        return bool(parts) and "A_Star" not in parts[-1]
    if "A_ArrayExpr" in node:
        return all(_is_operand(x) for x in node["A_ArrayExpr"].get("elements") or [])
    return _is_constant(node)


def _cannot_fail(node: Any) -> bool:
    """A condition that raises no error whatever the row: comparisons of columns and constants, pattern matches
    against a constant, IN lists, NULL/boolean tests, and AND/OR/NOT of them."""
    if type(node) is not dict:
        return False
    if "BoolExpr" in node:
        return all(_cannot_fail(a) for a in node["BoolExpr"].get("args") or [])
    for tag in ("NullTest", "BooleanTest"):
        if tag in node:
            return _is_operand(node[tag].get("arg"))
    if "A_Expr" in node:
        e = node["A_Expr"]
        op = [n.get("String", {}).get("sval") for n in e.get("name") or []]
        if not op or op[:-1] not in ([], ["pg_catalog"]) or e.get("kind") not in (
            "AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_OP_ALL", "AEXPR_IN", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT",
            "AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN",
        ):
            return False
        right = e.get("rexpr")
        operands = right["List"].get("items") or [] if type(right) is dict and "List" in right else [right]
        if op[-1] in _MATCHES:
            return _is_operand(e.get("lexpr")) and all(_is_constant(x) for x in operands)
        return op[-1] in _COMPARISONS and _is_operand(e.get("lexpr")) and all(_is_operand(x) for x in operands)
    return _is_operand(node)


def _body(node: Any) -> Node | None:
    if type(node) is dict and len(node) == 1 and "SelectStmt" in node:
        return node["SelectStmt"]  # type: ignore[no-any-return]
    return None


def _flatten_from(items: list[Any], leaves: list[Node], quals: list[Node]) -> None:
    for it in items:
        if type(it) is dict and len(it) == 1 and "JoinExpr" in it:
            j = it["JoinExpr"]
            if j.get("quals") is not None:
                quals.append(j["quals"])
            _flatten_from([j[side] for side in ("larg", "rarg") if side in j], leaves, quals)
        else:
            leaves.append(it)


_VALUE_FUNCTIONS = frozenset({"unnest", "generate_series", "generate_subscripts", "_pg_expandarray"})


def _computed_once(cte: Node, recursive: bool) -> bool:
    if cte.get("ctematerialized") == "CTEMaterializeAlways":
        return True
    if not recursive:
        return False
    todo: list[Any] = [cte.get("ctequery")]
    while todo:
        item = todo.pop()
        if type(item) is list:
            todo.extend(item)
        elif type(item) is dict:
            if item.get("relname") == cte.get("ctename") and "relpersistence" in item and "schemaname" not in item:
                return True
            todo.extend(item.values())
    return False


class _QuietFinder:
    """verify's own account of fences.quiet_references: the relation references no condition that can fail reaches
    (the rules are in fences.py's docstring)."""

    def __init__(self, node: Node) -> None:
        self.found: set[int] = set()
        self.ctes: dict[str, bool] = {}  # name -> whether every CTE of that name is computed once
        todo: list[Any] = [node]
        while todo:
            item = todo.pop()
            if type(item) is list:
                todo.extend(item)
            elif type(item) is dict:
                for c in item.get("ctes") or []:
                    cte = c.get("CommonTableExpr") or {}
                    once = _computed_once(cte, bool(item.get("recursive")))
                    self.ctes[cte.get("ctename", "")] = self.ctes.get(cte.get("ctename", ""), True) and once
                todo.extend(item.values())
        while len(node) == 1 and next(iter(node)) in ("ExplainStmt", "CreateTableAsStmt", "DeclareCursorStmt",
                                                         "CopyStmt"):
            node = next(iter(node.values())).get("query") or {}
        top = _body(node)
        if top is not None:
            self.visit(top, ok=True, reached=False, above=True)

    def stored(self, item: Any) -> bool:
        if type(item) is not dict or len(item) != 1:
            return False
        (tag, body), = item.items()
        if tag == "RangeVar":
            schema, name = body.get("schemaname"), str(body.get("relname", ""))
            if "catalogname" in body:
                return False
            if schema is None:
                return self.ctes[name] if name in self.ctes else name.startswith("pg_")
            return schema in ("pg_catalog", "information_schema")
        if tag == "RangeSubselect":
            sub = _body(body.get("subquery"))
            return sub is not None and self.columns_stored(sub)
        if tag == "RangeFunction":
            for f in body.get("functions") or []:
                items = (f.get("List") or {}).get("items") or []
                call = items[0].get("FuncCall") if items else None
                name = [n.get("String", {}).get("sval") for n in (call or {}).get("funcname") or []]
                if not name or name[-1] not in _VALUE_FUNCTIONS or name[:-1] not in (
                    [], ["pg_catalog"], ["information_schema"]
                ):
                    return False
            return True
        return False

    def columns_stored(self, sel: Node) -> bool:
        if sel.get("op") not in (None, "SETOP_NONE"):
            return all(self.columns_stored(sel[s]) for s in ("larg", "rarg") if s in sel)
        for t in sel.get("targetList") or []:
            val = t.get("ResTarget", {}).get("val")
            if not (type(val) is dict and ("ColumnRef" in val or _is_operand(val))):
                return False
        leaves: list[Node] = []
        _flatten_from(sel.get("fromClause") or [], leaves, [])
        return all(self.stored(x) for x in leaves)

    def visit(self, sel: Node, ok: bool, reached: bool, above: bool) -> None:
        for cte in (sel.get("withClause") or {}).get("ctes") or []:
            q = _body(cte.get("CommonTableExpr", {}).get("ctequery"))
            if q is None:
                continue
            if _computed_once(cte.get("CommonTableExpr") or {}, bool((sel.get("withClause") or {}).get("recursive"))):
                self.visit(q, ok=True, reached=False, above=True)
            else:
                self.visit(q, ok=False, reached=True, above=False)
        if sel.get("op") not in (None, "SETOP_NONE"):
            for s in ("larg", "rarg"):
                if s in sel:
                    self.visit(sel[s], ok, reached, above)
            return
        leaves: list[Node] = []
        quals = [sel[k] for k in ("whereClause", "havingClause") if sel.get(k) is not None]
        _flatten_from(sel.get("fromClause") or [], leaves, quals)
        reached = reached or len(quals) > 0
        stored = all(self.stored(x) for x in leaves)
        lateral = [x["RangeSubselect"] for x in leaves if "RangeSubselect" in x and x["RangeSubselect"].get("lateral")]
        lateral_fine = True
        for sub in lateral:
            q = _body(sub.get("subquery"))
            lateral_fine = lateral_fine and q is not None and self.columns_stored(q) and _all_cannot_fail(q)
        mine = ok and above and lateral_fine and all(_cannot_fail(q) for q in quals) and (stored or not reached)
        for x in leaves:
            if "RangeVar" in x and mine and "location" in x["RangeVar"]:
                self.found.add(x["RangeVar"]["location"])
            elif "RangeSubselect" in x:
                q = _body(x["RangeSubselect"].get("subquery"))
                if q is not None:
                    self.visit(q, mine, reached, above and (stored or not x["RangeSubselect"].get("lateral")))
        todo: list[Any] = [v for k, v in sel.items() if k not in ("withClause", "larg", "rarg")]
        while todo:
            item = todo.pop()
            if type(item) is list:
                todo.extend(item)
                continue
            if type(item) is not dict:
                continue
            if len(item) == 1 and "RangeSubselect" in item:
                continue
            if len(item) == 1 and "SubLink" in item:
                link = item["SubLink"]
                if link.get("testexpr") is not None:
                    todo.append(link["testexpr"])
                q = _body(link.get("subselect"))
                if q is None:
                    continue
                kind = link.get("subLinkType")
                if kind in ("EXPR_SUBLINK", "ARRAY_SUBLINK"):
                    self.visit(q, ok=True, reached=False, above=True)
                elif kind == "EXISTS_SUBLINK":
                    self.visit(q, ok=True, reached=False, above=above and stored)
                elif kind == "ANY_SUBLINK":
                    op = [n.get("String", {}).get("sval") for n in link.get("operName") or []]
                    fine = (
                        _is_operand(link.get("testexpr"))
                        and (op == [] or (op[-1] in _COMPARISONS and op[:-1] in ([], ["pg_catalog"])))
                        and self.columns_stored(q)
                    )
                    self.visit(q, ok=fine, reached=True, above=above and stored)
                else:
                    self.visit(q, ok=False, reached=True, above=False)
                continue
            nested = _body(item) if len(item) == 1 else (item if "op" in item and "limitOption" in item else None)
            if nested is not None:
                self.visit(nested, ok=False, reached=True, above=False)
                continue
            todo.extend(item.values())


def _all_cannot_fail(node: Node) -> bool:
    todo: list[Any] = [node]
    while todo:
        item = todo.pop()
        if type(item) is list:
            todo.extend(item)
        elif type(item) is dict:
            for key in ("whereClause", "havingClause"):
                if item.get(key) is not None and not _cannot_fail(item[key]):
                    return False
            if "jointype" in item and item.get("quals") is not None and not _cannot_fail(item["quals"]):
                return False
            todo.extend(item.values())
    return True


def quiet_locations(node: Node) -> frozenset[int]:
    """The locations of the relation references of a client's statement whose catalog filter may be unfenced."""
    return frozenset(_QuietFinder(node).found)


_DESCRIBED: dict[str, str] = {
    "pg_class": "class", "pg_type": "type", "pg_proc": "proc", "pg_namespace": "namespace",
    "pg_constraint": "constraint", "pg_trigger": "trigger", "pg_rewrite": "rule", "pg_operator": "oper",
    "pg_collation": "collation", "pg_statistic_ext": "statext", "pg_ts_config": "config",
    "pg_ts_dict": "dictionary", "pg_ts_parser": "ts_parser", "pg_ts_template": "ts_template",
    "pg_conversion": "conversion", "pg_opclass": "opclass", "pg_opfamily": "opfamily",
}
_OWN_ROLE = frozenset({"SVFOP_CURRENT_USER", "SVFOP_SESSION_USER", "SVFOP_CURRENT_ROLE", "SVFOP_USER"})


def _uncast(node: Node | None) -> Node:
    while node and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return node or {}


def _is_null(node: Node | None) -> bool:
    return bool(_uncast(node).get("A_Const", {}).get("isnull"))


def _literal(node: Node | None) -> str | None:
    """The text of a string literal (under any casts), else None."""
    const = _uncast(node).get("A_Const", {})
    return str(const["sval"].get("sval", "")) if "sval" in const else None


def _checked_value(policy: TenantPolicy, node: Node | None, kind: str, mode: str) -> bool:
    """True for a value that may name an object without a guard: NULL, the session's own role, or a name in a
    string literal that is checked otherwise (guards.literal_checked)."""
    if node is None or _is_null(node):
        return True
    if kind == "role" and _uncast(node).get("SQLValueFunction", {}).get("op") in _OWN_ROLE:
        return True
    text = _literal(node)
    return text is not None and guards.literal_checked(policy, kind, mode, text)


def _costs(options: list[Node] | None) -> bool | None:
    """EXPLAIN's COSTS option: True, False or None (not given: on); the last occurrence counts."""
    return option_value(options, "costs")


def _same(node: Any, expected: Node) -> bool:
    return node == expected or canonical(node) == expected


def _key(node: Any) -> str:
    """A text equal for two parse-tree values exactly when they are equal ignoring positions (and key order)."""
    return json.dumps(canonical(node), sort_keys=True, separators=(",", ":"))


class _Conjuncts:
    """The top-level conjuncts of statements' WHERE clauses, each statement's made once into a set of keys: a
    statement with n plain FROM items costs n lookups, not n scans of its n conjuncts."""

    def __init__(self) -> None:
        self._sets: dict[int, tuple[Node, frozenset[str]]] = {}

    def has_predicate(self, body: Node, rv: Node, flt: Any) -> bool:
        """True if the WHERE clause of the statement `body` is, or is an AND with, `flt`'s predicate on the
        reference name of `rv` (its alias, else its relation name)."""
        found = self._sets.get(id(body))
        if found is None or found[0] is not body:
            where = body.get("whereClause")
            conjuncts = [where]
            if where is not None and where.get("BoolExpr", {}).get("boolop") == "AND_EXPR":
                conjuncts = where["BoolExpr"]["args"]
            found = self._sets[id(body)] = (body, frozenset(_key(c) for c in conjuncts if c is not None))
        refname = rv.get("alias", {}).get("aliasname") or rv.get("relname", "")
        return _predicate_key(flt.predicate(refname)) in found[1]


@lru_cache(maxsize=1024)
def _predicate_key(predicate: str) -> str:
    return _key(expr_node(predicate))


# Nodes that cannot contain a relation reference.
_LEAVES = frozenset(
    {"A_Const", "String", "Integer", "Float", "Boolean", "BitString", "A_Star", "ColumnRef", "ParamRef",
     "SQLValueFunction", "LockingClause"}
)
# CTE names in scope: None (none), or (WITH clause's names -> index of the first CTE of that name, how many of them
# are visible here, the enclosing scope). A CTE of a non-recursive WITH sees only those before it; a chain rather
# than a set per CTE keeps a long WITH list linear.
_Scope = tuple[dict[str, int], int, "_Scope"] | None
_EMPTY: _Scope = None


def _in_scope(scope: _Scope, name: Any) -> bool:
    while scope is not None:
        first, visible, scope = scope
        index = first.get(name)
        if index is not None and index < visible:
            return True
    return False


def _same_join(joined: Node | None, expected: Node) -> bool:
    """A wrapper's first FROM item is the relation as its filter has it: plain, or joined exactly as the filter
    joins it (the relation itself, `larg`, is checked by the caller)."""
    want = expected.get("JoinExpr")
    if joined is None or want is None:
        return joined is None and want is None
    return _same({k: v for k, v in joined.items() if k != "larg"}, {k: v for k, v in want.items() if k != "larg"})


class _Coverage:
    """An independent walk over one statement tree (it shares no traversal code with walk.py): explicit stack,
    CTE scopes, FROM positions, DML targets."""

    def __init__(self, policy: TenantPolicy, reads: Reads | None = None) -> None:
        self.policy = policy
        self.reads = reads
        self.stack: list[tuple[Any, _Scope]] = []
        self.conjuncts = _Conjuncts()
        self.root: Node | None = None
        self.types: implicit.Types | None = None  # reg* typing of the statement (implicit.py), when first needed
        self.seen = implicit.Seen()
        self.guarded: set[int] = set()  # the client's expressions found inside a guard

    def reads_none_of(self, columns: frozenset[str], inner: Node, renamed: bool) -> bool:
        """True when the client's statement (`self.reads`, taken before the rewrite) cannot read any of `columns`
        of the relation reference `inner`: not read whole, no column alias list, none of `columns` named."""
        reads = self.reads
        if reads is None or renamed or inner.get("location", -1) in reads.whole:
            return False
        return not (reads.names & columns)

    def filtered(self, rv: Node) -> Any:
        return relation_filter(self.policy, rv)

    def run(self, node: Node) -> None:
        self.root = node
        stack = self.stack
        stack.append((node, _EMPTY))
        while stack:
            value, scope = stack.pop()
            if type(value) is list:
                stack.extend((item, scope) for item in value if type(item) is dict or type(item) is list)
                continue
            if len(value) == 1:
                (key,) = value
                if key[:1].isupper():
                    if key not in _LEAVES:
                        self.tagged(key, value[key], scope)
                    continue
            if "relname" in value and "relpersistence" in value:
                self.bare(value, "in this position")
            elif "op" in value and "limitOption" in value:
                self.select(value, scope)
            else:
                self.push(value, scope, ())

    def push(self, body: Node, scope: _Scope, skip: tuple[str, ...]) -> None:
        for k, v in body.items():
            if (type(v) is dict or type(v) is list) and k not in skip:
                self.stack.append((v, scope))

    def bare(self, rv: Node, where: str) -> None:
        if self.filtered(rv) is not None:
            raise Unverified(f'"{rv.get("relname")}" appears unfiltered {where}')

    def tagged(self, tag: str, body: Node, scope: _Scope) -> None:
        if tag in ("SubLink", "A_Indirection") and self.guard({tag: body}, scope):
            return
        if tag in implicit.GROUP_TAGS:
            self.implicit(tag, body)
        if tag == "TypeCast":
            self.cast(body)
        elif tag == "FuncCall":
            if self.call(body, scope):
                return
        elif tag == "ExplainStmt" and self.policy.estimates_shared and _costs(body.get("options")) is not False:
            raise Unverified("EXPLAIN without COSTS OFF shows estimates computed from every tenant's rows")
        if tag == "SelectStmt":
            self.select(body, scope)
        elif tag in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            self.dml(tag, body, scope)
        elif tag == "RangeVar":
            self.bare(body, "outside a FROM clause")
        elif tag in ("RangeSubselect", "JoinExpr", "RangeTableSample"):
            self.from_item({tag: body}, scope)
        elif tag == "CopyStmt":
            if "relation" in body:
                self.bare(body["relation"], "as a COPY table")
                if body.get("is_from"):
                    self.written(body["relation"])
            self.push(body, scope, ("relation",))
        elif tag == "CreateStmt":
            self.created(body.get("relation", {}))
            self.push(body, scope, ("relation",))
        elif tag == "TableLikeClause":
            self.push(body, scope, ("relation",))  # LIKE copies structure only
        elif tag == "CreateTableAsStmt":
            self.created(body.get("into", {}).get("rel", {}))
            self.push(body, scope, ("into",))
        elif tag == "ViewStmt":
            self.created(body.get("view", {}))
            self.view_query(body.get("query", {}))
            self.push(body, scope, ("view",))
        elif tag == "TruncateStmt":
            for item in body.get("relations", ()):
                rv = item.get("RangeVar", {})
                self.bare(rv, "as a TRUNCATE table")
                self.written(rv, truncate=True)
        elif tag == "LockStmt":
            if body.get("mode") != _ACCESS_SHARE:
                raise Unverified("LOCK TABLE in a mode stronger than ACCESS SHARE")
        elif tag == "DropStmt":
            for obj in body.get("objects", ()):
                names = [i.get("String", {}).get("sval") for i in obj.get("List", {}).get("items", ())]
                if len(names) != 2 or names[0] != "pg_temp":
                    raise Unverified("DROP of a relation that is not named pg_temp.<name>")
        else:
            self.push(body, scope, ())

    # -- run-time guards (guards.py): an OID or a name becomes an object only through a guard ----------------------
    def guard(self, node: Node, scope: _Scope) -> bool:
        """True (and the client's expression inside pushed) when `node` is a guard; a node that names itself a
        guard but is not exactly one is refused."""
        ident = guards.ident_of(node)
        if ident is None:
            return False
        template = guards.template_named(self.policy, ident)
        inner = guards.operand(template, node) if template is not None else None
        if template is None or inner is None:
            raise Unverified("an object guard does not have its exact form")
        inner_tag = next(iter(inner)) if type(inner) is dict and len(inner) == 1 else None
        if inner_tag is not None:
            self.guarded.add(id(inner[inner_tag]))
        call = inner.get("FuncCall")
        if call is not None and names_of(call.get("funcname"))[-1:] == ("pg_filenode_relation",):
            self.push(call, scope, ("funcname",))  # the guarded lookup itself
        else:
            self.stack.append((inner, scope))
        return True

    def required(self, kind: str) -> bool:
        return guards.required(self.policy, kind)

    def implicit(self, tag: str, body: Node) -> None:
        """What PostgreSQL converts to a reg* type without a written conversion is guarded (implicit.py): a name
        input is a guard or a name checked otherwise; a set operation's or VALUES' column value is a guard; a value
        construct with another arm is inside one."""
        for group in implicit.node_groups({tag: body}, None, None, self.seen):
            if self.types is None:
                self.types = implicit.types_of(self.root or {})
            types = self.types
            full = implicit.anchor(types, group)
            if full is None:
                continue
            regtype = full.removesuffix("[]")
            kind = guards.CAST_KINDS[regtype]
            if not self.required(kind):
                continue
            for member in group.members:
                node = member.node
                if node is None or implicit.is_null(node) or types.of(node) is not None:
                    continue
                ident = guards.ident_of(node)
                if ident is not None and guards.template_named(self.policy, ident) is not None:
                    continue  # a guard (its exact form is checked where the walk meets it)
                if implicit.is_name_input(node):  # a literal or parameter read by the input function
                    if not _checked_value(self.policy, node, kind, guards.PARSE):
                        raise Unverified(f"a value converted to {regtype} without its guard")
                elif group.kind == implicit.COLUMN:
                    raise Unverified(f"a column of {regtype} values with an unguarded value")
                elif group.kind == implicit.VALUE and id(body) not in self.guarded:
                    raise Unverified(f"an expression of {regtype} values outside its guard")

    def cast(self, body: Node) -> None:
        names = names_of(body.get("typeName", {}).get("names"))
        kind = guards.CAST_KINDS.get(names[-1]) if names else None
        arg = body.get("arg")
        if kind is not None and self.required(kind) and not _checked_value(self.policy, arg, kind, guards.PARSE):
            raise Unverified(f"a conversion to {names[-1]} without its guard")

    def call(self, body: Node, scope: _Scope) -> bool:
        """Check a call of a function that names objects; True when its arguments were pushed here."""
        names = names_of(body.get("funcname"))
        if not names or (len(names) > 1 and names[-2] != "pg_catalog") or names[-1] not in guards.GUARDED_NAMES:
            return False
        name, args = names[-1], body.get("args") or []
        if name in guards.RESULT_CALLS:
            kind = guards.RESULT_CALLS[name][0]
            if self.required(kind) and not all(_checked_value(self.policy, a, kind, guards.PARSE) for a in args):
                raise Unverified(f"{name}() of a value without its guard")
        elif name == "to_regtypemod":
            if self.required("type") and not all(_checked_value(self.policy, a, "type", guards.PARSE) for a in args):
                raise Unverified("to_regtypemod() of a value that names no checked type")
        elif name in guards.RESULT_WRAPPED:
            if self.required(guards.RESULT_WRAPPED[name][0]):
                raise Unverified(f"{name}() outside its guard")
        elif name in ("pg_get_userbyid", "oidvectortypes"):
            kind = "role" if name == "pg_get_userbyid" else "type"
            if self.required(kind) and not all(_is_null(a) for a in args):
                raise Unverified(f"{name}() outside its guard")
        elif name in guards.ADVISORY_LOCKS:
            if self.policy.owns_database and args:
                ident = guards.ident_of(args[0])
                template = guards.template_named(self.policy, ident) if ident else None
                inner = guards.operand(template, args[0]) if template is not None else None
                ours = ident is not None and ident.startswith(f"pgt_g_k__{len(args)}__")
                return self.first_guarded(inner if ours else None, args, scope,
                                          f"{name}() without its advisory lock guard")
        elif name == guards.NOTIFY:
            if self.policy.owns_database and args and notify.needs_guard(args[0]):
                return self.first_guarded(guards.operand(guards.notify_channel(self.policy), args[0]), args, scope,
                                          "pg_notify() of a channel without its guard")
            if self.policy.owns_database and args and notify.literal(args[0]) == notify.REGISTRY_CHANNEL:
                raise Unverified("pg_notify() on the registry's channel")
        elif name == "current_setting":
            if args and _literal(args[0]) is None and not _is_null(args[0]):
                return self.first_guarded(guards.operand(guards.setting_name(self.policy), args[0]), args, scope,
                                          "current_setting() of a value without its guard")
        else:
            self.call_args(name, args)
        return False

    def first_guarded(self, inner: Node | None, args: list[Node], scope: _Scope, problem: str) -> bool:
        """Push the client's expression `inner` from the first argument's guard and the other arguments (True);
        Unverified(`problem`) when the first argument is not its guard (`inner` None)."""
        if inner is None:
            raise Unverified(problem)
        self.stack.append((inner, scope))
        for arg in args[1:]:
            self.stack.append((arg, scope))
        return True

    def call_args(self, name: str, args: list[Node]) -> None:
        for spec in guards.CALL_ARGS.get(name, ()):
            if spec.nargs is not None and len(args) not in spec.nargs:
                continue
            index = spec.index if spec.index >= 0 else len(args) + spec.index
            if not 0 <= index < len(args) or (spec.literal_only and _literal(args[index]) is None):
                continue
            kind = spec.kind
            if name == "obj_description" and len(args) == 2:
                kind = _DESCRIBED.get(_literal(args[1]) or "", "object")
            arg = args[index]
            if not self.required(kind) or _checked_value(self.policy, arg, kind, spec.mode):
                continue
            out = guards.CALL_OUT.get(name, "oid")
            expected = {guards.carrier(self.policy, kind, spec.mode, out, param).ident for param in (False, True)}
            if out in guards.CAST_KINDS or (out == "oid" and guards.KINDS[kind].catalog):
                expected.add(guards.array_form(self.policy, kind, out).ident)
            if guards.ident_of(arg) not in expected:
                raise Unverified(f"argument {index + 1} of {name}() names an object without its guard")

    def ctes(self, body: Node, scope: _Scope) -> _Scope:
        wc = body.get("withClause")
        if not wc:
            return scope
        items = [c.get("CommonTableExpr", {}) for c in wc.get("ctes", ())]
        first: dict[str, int] = {}
        for i, c in enumerate(items):
            first.setdefault(c.get("ctename", ""), i)
        for i, cte in enumerate(items):
            self.push(cte, (first, len(items) if wc.get("recursive") else i, scope), ("ctename",))
        return (first, len(items), scope)

    def select(self, body: Node, scope: _Scope) -> None:
        scope = self.ctes(body, scope)
        for item in body.get("fromClause", ()):
            rv = item.get("RangeVar")
            if rv is not None and self.filtered_in_where(body, rv, scope):
                continue
            self.from_item(item, scope)
        if "intoClause" in body:
            self.created(body["intoClause"].get("rel", {}))
        self.push(body, scope, ("withClause", "fromClause", "intoClause", "lockingClause"))

    def from_item(self, item: Node, scope: _Scope) -> None:
        if "RangeVar" in item:
            rv = item["RangeVar"]
            is_cte = "schemaname" not in rv and "catalogname" not in rv and _in_scope(scope, rv.get("relname"))
            if not is_cte:
                self.bare(rv, "in FROM")
        elif "RangeSubselect" in item:
            body = item["RangeSubselect"]
            if not self.wrapper(body):
                self.push(body, scope, ())
            else:
                sample = body["subquery"]["SelectStmt"]["fromClause"][0].get("RangeTableSample")
                if sample is not None:  # its arguments may hold subqueries
                    self.push(sample, scope, ("relation",))
        elif "JoinExpr" in item:
            body = item["JoinExpr"]
            empty = body.get("rarg", {}).get("RangeSubselect", {}).get("subquery") == _EMPTY_SELECT
            if empty and self.join_filter(body):
                sample = body["larg"].get("RangeTableSample")
                if sample is not None:  # its arguments may hold subqueries
                    self.push(sample, scope, ("relation",))
                return
            for side in ("larg", "rarg"):
                if side in body:
                    self.from_item(body[side], scope)
            self.push(body, scope, ("larg", "rarg"))
        elif "RangeTableSample" in item:
            body = item["RangeTableSample"]
            rel = body.get("relation", {})
            if "RangeVar" in rel:
                self.bare(rel["RangeVar"], "with TABLESAMPLE")
            else:
                self.from_item(rel, scope)
            self.push(body, scope, ("relation",))
        else:
            self.stack.append((item, scope))

    def filtered_in_where(self, body: Node, rv: Node, scope: _Scope) -> bool:
        """True if the plain FROM item `rv` of the SELECT `body` is a tenant-scoped table whose tenant predicate
        is a conjunct of that SELECT's WHERE clause (accepted only for a table with forced RLS, which runs
        before any qual of the query)."""
        if "schemaname" not in rv and "catalogname" not in rv and _in_scope(scope, rv.get("relname")):
            return False  # a CTE: from_item decides
        if rv.get("alias", {}).get("colnames"):
            return False  # `t AS o(a, tenant_id)`: o.tenant_id names whichever column the list renamed
        if "schemaname" not in rv and ambiguous_scoped(self.policy, rv.get("relname", "")):
            return False  # which of the tables of that name is read depends on the search_path
        flt = self.filtered(rv)
        if flt is None or flt.kind != "tenant" or flt.table not in self.policy.rls_tables:
            return False
        return self.conjuncts.has_predicate(body, rv, flt)

    def join_filter(self, body: Node) -> bool:
        """True if this join is an injected join filter `(<t> JOIN (SELECT) <alias> ON <tenant predicate>)`: an
        inner join of a plain (or sampled) relation without a column alias list with an empty row, nothing else;
        only for a table under forced RLS, like the WHERE form."""
        if len(body) != 4 or body.get("jointype") != "JOIN_INNER" or set(body) != _JOIN_FILTER_KEYS:
            return False
        larg = body["larg"]
        if "RangeTableSample" in larg:  # sampled, then filtered (the caller checks the sampling arguments)
            larg = larg["RangeTableSample"].get("relation", {})
        rv = larg.get("RangeVar")
        empty = body["rarg"].get("RangeSubselect")
        if rv is None or empty is None or rv.get("alias", {}).get("colnames"):
            return False
        if set(empty) != {"subquery", "alias"} or empty["subquery"] != _EMPTY_SELECT:
            return False
        if set(empty["alias"]) != {"aliasname"}:
            return False
        if "schemaname" not in rv and ambiguous_scoped(self.policy, rv.get("relname", "")):
            return False  # scoped in several schemas: the wrapper names the one the filter is for
        flt = self.filtered(rv)
        if flt is None or flt.kind != "tenant" or flt.table not in self.policy.rls_tables:
            return False
        refname = rv.get("alias", {}).get("aliasname") or rv.get("relname", "")
        return _same(body["quals"], expr_node(flt.predicate(refname)))

    def wrapper(self, body: Node) -> bool:
        """True if this derived table is an injected filter wrapper (its predicate must then be exact); its FROM
        item may be the relation with a TABLESAMPLE clause (whose arguments the caller checks)."""
        sub = body.get("subquery", {}).get("SelectStmt")
        if not sub or not sub.get("fromClause"):
            return False
        item = sub["fromClause"][0]
        joined = item.get("JoinExpr")  # the relation joined with more (a filter whose `extra` is a JOIN)
        if joined is not None:
            item = joined.get("larg", {})
        if "RangeTableSample" in item:
            item = item["RangeTableSample"].get("relation", {})
        inner = item.get("RangeVar")
        flt = self.filtered(inner) if inner is not None else None
        if flt is None or flt.kind == "temp":
            return False
        if flt.kind == "catalog":
            sub = _without_tableoid(sub, inner.get("relname", ""))
        # a catalog filter: fenced, or plain when the conditions cannot fail and it hides no row
        quiet = self.reads is not None and inner.get("location", -1) in self.reads.quiet
        fence = needs_fence(self.policy, flt, flt.kind != "tenant" and quiet and "limitOffset" not in sub)
        if not flt.plain:  # a catalog wrapper that replaces column values: exactly its own select list and FROM
            if "alias" in inner:
                return False
            expected = wrapper_select(flt, inner.get("relname", ""), fence)
            actual = {k: v for k, v in sub.items() if k != "fromClause"}
            if (
                len(sub["fromClause"]) == len(expected["fromClause"])
                and _same(actual, {k: v for k, v in expected.items() if k != "fromClause"})
                and _same_join(joined, expected["fromClause"][0])
                and all(_same(a, e) for a, e in zip(sub["fromClause"][1:], expected["fromClause"][1:], strict=True))
            ):
                return True
            # ... or its plain row filter, when the statement reads none of the replaced columns of this reference
            alias = body.get("alias") or {}
            if flt.rows or not self.reads_none_of(flt.replaced, inner, bool(alias.get("colnames"))):
                return False
            flt = flt.lean()
            if flt.opaque:  # (`SELECT DISTINCT ON (…) * …`: exactly that)
                return joined is None and _same(sub, wrapper_select(flt, inner.get("relname", ""), fence) | {
                    "fromClause": sub["fromClause"]}) and len(sub["fromClause"]) == 1
        if joined is not None or len(sub["fromClause"]) != 1 or set(sub) != (
            _FENCED_WRAPPER_KEYS if fence else _WRAPPER_KEYS
        ):
            return False
        if fence and not _same(sub["limitOffset"], _OFFSET_ZERO):
            return False
        targets = sub["targetList"]
        if "alias" in inner or len(targets) != 1:
            return False
        if targets[0].get("ResTarget", {}).get("val", {}).get("ColumnRef", {}).get("fields") != _STAR_FIELDS:
            return False
        # Not the exact filter: not a wrapper, so its SELECT is checked like any other (a client's
        # `(SELECT * FROM t WHERE …)` whose WHERE got the tenant predicate AND-ed in, or a forgery that fails there).
        return _same(sub["whereClause"], expr_node(flt.predicate(inner.get("relname", ""))))

    def written(self, rv: Node, truncate: bool = False) -> None:
        """The write rule: a read-only role (and TRUNCATE in the shared strategy) writes only pg_temp.<name>."""
        if rv.get("schemaname") != "pg_temp" and (
            not self.policy.allow_writes or (truncate and self.policy.strategy == "shared")
        ):
            raise Unverified(f'"{rv.get("relname")}" is written outside pg_temp by a role that may only write there')

    def created(self, rv: Node) -> None:
        if rv.get("relpersistence") != "t" and rv.get("schemaname") != "pg_temp":
            raise Unverified(f'"{rv.get("relname")}" would not be a temporary relation')

    def view_query(self, query: Node) -> None:
        """A temporary view's query must be `SELECT * FROM (<query>) "_pgt"`: never automatically updatable."""
        sub = query.get("SelectStmt", {})
        items = sub.get("fromClause") or ()
        ok = (
            set(sub) == _WRAPPER_KEYS - {"whereClause"}
            and len(items) == 1
            and "RangeSubselect" in items[0]
            and items[0]["RangeSubselect"].get("alias", {}).get("aliasname") == _INSERT_WRAPPER_ALIAS
            and len(sub["targetList"]) == 1
            and sub["targetList"][0].get("ResTarget", {}).get("val", {}).get("ColumnRef", {}).get("fields")
            == _STAR_FIELDS
        )
        if not ok:
            raise Unverified("a temporary view's query is not wrapped to be read-only")

    def dml(self, tag: str, body: Node, scope: _Scope) -> None:
        scope = self.ctes(body, scope)
        rv = body.get("relation", {})
        self.written(rv)
        flt = self.filtered(rv)
        if flt is not None:
            if tag == "MergeStmt" or flt.kind != "tenant":  # ("temp": a temporary table left unqualified)
                raise Unverified(f'"{rv.get("relname")}" is written without a verifiable filter')
            if tag == "InsertStmt":
                self.insert(body, flt.column)
            else:
                self.update_delete(tag, body, rv, flt)
        for key in ("fromClause", "usingClause"):
            for item in body.get(key, ()):
                self.from_item(item, scope)
        if "sourceRelation" in body:
            self.from_item(body["sourceRelation"], scope)
        self.push(body, scope, ("withClause", "relation", "fromClause", "usingClause", "sourceRelation"))

    def update_delete(self, tag: str, body: Node, rv: Node, flt: Any) -> None:
        if not self.conjuncts.has_predicate(body, rv, flt):
            raise Unverified(f'"{rv.get("relname")}" is changed without the tenant predicate')
        if tag == "UpdateStmt":
            for target in body.get("targetList", ()):
                if target.get("ResTarget", {}).get("name") == flt.column:
                    raise Unverified("the tenant column is updated")

    def insert(self, body: Node, column: str) -> None:
        value = self.policy.tenant_value
        cols = [c.get("ResTarget", {}).get("name") for c in body.get("cols", ())]
        if cols.count(column) != 1:
            raise Unverified("INSERT without the tenant column")
        k = cols.index(column)
        conflict = body.get("onConflictClause") or {}
        if conflict.get("action") == "ONCONFLICT_UPDATE":
            raise Unverified("INSERT ... ON CONFLICT DO UPDATE on a tenant-scoped table")
        select = body.get("selectStmt", {}).get("SelectStmt", {})
        if "valuesLists" in select:
            for row in select["valuesLists"]:
                items = row.get("List", {}).get("items", [])
                if k >= len(items) or const_text(items[k]) != value:
                    raise Unverified("INSERT of a row without the tenant value")
            return
        targets = select.get("targetList", [])
        from_items = select.get("fromClause", [])
        ok = (
            k == len(cols) - 1
            and set(select) == {"targetList", "fromClause", "limitOption", "op"}
            and len(targets) == 2
            and len(from_items) == 1
            and names_of(targets[0].get("ResTarget", {}).get("val", {}).get("ColumnRef", {}).get("fields"))
            == (_INSERT_WRAPPER_ALIAS, "*")
            and const_text(targets[1].get("ResTarget", {}).get("val")) == value
            and "A_Const" in targets[1].get("ResTarget", {}).get("val", {})
            and from_items[0].get("RangeSubselect", {}).get("alias", {}).get("aliasname") == _INSERT_WRAPPER_ALIAS
        )
        if not ok:
            raise Unverified("INSERT ... SELECT without the tenant value")
