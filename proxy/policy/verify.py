"""The post-rewrite verifier: the rewritten text parses to the intended tree and every filtered relation is filtered."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from proxy.policy.catalog import needs_fence, relation_filter
from proxy.policy.model import TenantPolicy
from proxy.policy.tree import Node, canonical, const_text, dumps, expr_node, names_of, parse_json, strip_positions

_STAR_FIELDS = [{"A_Star": {}}]
_WRAPPER_KEYS = frozenset({"targetList", "fromClause", "whereClause", "limitOption", "op"})
_FENCED_WRAPPER_KEYS = _WRAPPER_KEYS | {"limitOffset"}
_OFFSET_ZERO: Node = {"A_Const": {"ival": {}}}
_INSERT_WRAPPER_ALIAS = "_pgt"
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


def verify_rewrite(policy: TenantPolicy, intended: str, statements: list[Node], rewritten_sql: str) -> None:
    """Raise Unverified unless `rewritten_sql` parses to exactly the `intended` JSON parse tree (positions
    ignored) and every filtered relation in the (edited) statement trees carries its filter."""
    if strip_positions(parse_json(rewritten_sql)) != strip_positions(intended):
        raise Unverified("the rewritten text does not parse to the intended statement")
    for node in statements:
        check_coverage(policy, node)


def check_coverage(policy: TenantPolicy, node: Node) -> None:
    """Raise Unverified if any filtered relation in the statement tree is read or written without its filter."""
    _Coverage(policy).run(node)


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


class _Coverage:
    """An independent walk over one statement tree (it shares no traversal code with walk.py): explicit stack,
    CTE scopes, FROM positions, DML targets."""

    def __init__(self, policy: TenantPolicy) -> None:
        self.policy = policy
        self.stack: list[tuple[Any, _Scope]] = []
        self.conjuncts = _Conjuncts()

    def filtered(self, rv: Node) -> Any:
        return relation_filter(self.policy, rv)

    def run(self, node: Node) -> None:
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
            self.push(body, scope, ("relation",))
        elif tag in ("CreateStmt", "TableLikeClause"):
            self.push(body, scope, ("relation",))  # a new temp table's name / LIKE copies structure only
        elif tag == "CreateTableAsStmt":
            self.push(body, scope, ("into",))
        else:
            self.push(body, scope, ())

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
        elif "JoinExpr" in item:
            body = item["JoinExpr"]
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
        flt = self.filtered(rv)
        if flt is None or flt.kind != "tenant" or flt.table not in self.policy.rls_tables:
            return False
        return self.conjuncts.has_predicate(body, rv, flt)

    def wrapper(self, body: Node) -> bool:
        """True if this derived table is an injected filter wrapper (its predicate must then be exact)."""
        sub = body.get("subquery", {}).get("SelectStmt")
        if not sub or len(sub.get("fromClause") or ()) != 1:
            return False
        inner = sub["fromClause"][0].get("RangeVar")
        flt = self.filtered(inner) if inner is not None else None
        if flt is None:
            return False
        fence = needs_fence(self.policy, flt)
        if set(sub) != (_FENCED_WRAPPER_KEYS if fence else _WRAPPER_KEYS):
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

    def dml(self, tag: str, body: Node, scope: _Scope) -> None:
        scope = self.ctes(body, scope)
        rv = body.get("relation", {})
        flt = self.filtered(rv)
        if flt is not None:
            if tag == "MergeStmt" or flt.kind != "tenant":
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
