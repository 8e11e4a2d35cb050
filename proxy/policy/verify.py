"""The post-rewrite verifier: the rewritten text parses to the intended tree and every filtered relation is filtered."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from proxy.policy.catalog import ambiguous_scoped, needs_fence, relation_filter
from proxy.policy.model import TenantPolicy
from proxy.policy.tree import Node, canonical, const_text, dumps, expr_node, names_of, parse_json, strip_positions

_STAR_FIELDS = [{"A_Star": {}}]
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


def verify_rewrite(statements: list[tuple[TenantPolicy, Node]], intended: str, rewritten_sql: str) -> None:
    """Raise Unverified unless `rewritten_sql` parses to exactly the `intended` JSON parse tree (positions
    ignored) and every filtered relation in the (edited) statement trees carries its filter, each statement under
    its policy (the session context the statements before it leave)."""
    if strip_positions(parse_json(rewritten_sql)) != strip_positions(intended):
        raise Unverified("the rewritten text does not parse to the intended statement")
    for policy, node in statements:
        check_coverage(policy, node)


def check_coverage(policy: TenantPolicy, node: Node) -> None:
    """Raise Unverified if any filtered relation in the statement tree is read or written without its filter, or
    if the statement writes, creates or drops what the write rule does not allow: a read-only role writes only
    pg_temp.<name>, every role drops only pg_temp.<name>, creates only temporary relations, and a temporary view's
    query is always the wrapper PostgreSQL cannot update through."""
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
        elif tag == "DropStmt":
            for obj in body.get("objects", ()):
                names = [i.get("String", {}).get("sval") for i in obj.get("List", {}).get("items", ())]
                if len(names) != 2 or names[0] != "pg_temp":
                    raise Unverified("DROP of a relation that is not named pg_temp.<name>")
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
        if not sub or len(sub.get("fromClause") or ()) != 1:
            return False
        item = sub["fromClause"][0]
        if "RangeTableSample" in item:
            item = item["RangeTableSample"].get("relation", {})
        inner = item.get("RangeVar")
        flt = self.filtered(inner) if inner is not None else None
        if flt is None or flt.kind == "temp":
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
