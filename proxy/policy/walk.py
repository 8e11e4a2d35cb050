"""Walks one statement's parse tree and records relation references, calls, names and casts in context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.policy.castsource import WrittenCast, resolve_params, type_key, written
from proxy.policy.guards import GUARDED_NAMES
from proxy.policy.reached import JSON_NODES, json_output, operator_symbols
from proxy.policy.tree import Node, names_of, string_const, tag_of

# Roles of a RangeVar in its statement.
READ = "read"  # FROM / JOIN / USING / MERGE source / TABLE t: rows are read
TARGET = "target"  # INSERT / UPDATE / DELETE / MERGE target
INTO = "into"  # SELECT INTO / CREATE TABLE AS: the new table's name
CREATE = "create"  # CREATE TABLE / CREATE VIEW: the new relation's name
LIKE = "like"  # CREATE TABLE (LIKE t): structure only
INHERIT = "inherit"  # CREATE TABLE ... INHERITS (t)
SAMPLE = "sample"  # t TABLESAMPLE ...
COPY_TO = "copy_to"  # COPY t TO ...
COPY_FROM = "copy_from"  # COPY t FROM ...
TRUNCATE = "truncate"
LOCK = "lock"  # LOCK TABLE t: no rows are read
UNKNOWN = "unknown"  # anywhere else; filtered relations found here are denied

# Nodes that hold nothing worth recording.
_LEAVES = frozenset({"A_Const", "String", "Integer", "Float", "Boolean", "BitString", "A_Star",
                     "SQLValueFunction"})

REG_TYPES: frozenset[str] = frozenset(
    {
        "regclass",
        "regproc",
        "regprocedure",
        "regoper",
        "regoperator",
        "regtype",
        "regnamespace",
        "regcollation",
        "regconfig",
        "regdictionary",
    }
)



class Scope:
    """The CTE names visible at a point of a statement: a chain of WITH clauses, each visible up to a position in its
    list (a CTE of a non-recursive WITH sees only those before it), so a long WITH list costs linear time."""

    __slots__ = ("names", "parent", "upto")

    def __init__(self, parent: Scope | None = None, names: dict[str, int] | None = None, upto: int = 0) -> None:
        self.parent = parent
        self.names = names or {}  # name -> index of its first CTE in the list
        self.upto = upto

    def __contains__(self, name: object) -> bool:
        scope: Scope | None = self
        while scope is not None:
            index = scope.names.get(name)  # type: ignore[call-overload]
            if index is not None and index < scope.upto:
                return True
            scope = scope.parent
        return False

# A relation's system columns: a derived table does not have them (see rewrite.py).
SYSTEM_COLUMNS = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})


@dataclass(slots=True)
class RelRef:
    """One RangeVar with its role; `holder[key]` is where its tagged node lives (for READ refs)."""

    rv: Node
    role: str
    cte: bool = False
    table_form: bool = False
    holder: Any = None
    key: Any = None
    stmt: Node | None = None
    stmt_kind: str = ""
    sample: Node | None = None  # the RangeTableSample body of a SAMPLE ref (`holder[key]` holds that node)


@dataclass(slots=True)
class Call:
    """One function call; `holder[key]` is its tagged node."""

    names: tuple[str, ...]
    args: list[Node]
    named: bool
    holder: Any = None
    key: Any = None


@dataclass(slots=True)
class Site:
    """A place where a value may become an object's name: a cast to a reg* type (`regrole` too) or a call of a
    function that names objects (guards.GUARDED_NAMES), in the order the walk met them (outer before inner);
    `holder[key]` is its tagged node."""

    node: Node
    holder: Any
    key: Any


@dataclass(slots=True)
class Analysis:
    """Everything the policy checks need to know about one statement."""

    refs: list[RelRef] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    type_names: list[tuple[str, ...]] = field(default_factory=list)
    type_locations: list[int] = field(default_factory=list)  # where each of type_names is written
    operators: list[tuple[str, ...]] = field(default_factory=list)
    operator_locations: list[int] = field(default_factory=list)  # where each of operators is written
    collations: list[tuple[str, ...]] = field(default_factory=list)
    collation_locations: list[int] = field(default_factory=list)  # where each of collations is written
    # names looked up outside the expression parser: an index element's collation and operator class, an
    # exclusion constraint's operator (no position); a TABLESAMPLE method (its clause's location)
    index_names: list[tuple[str, ...]] = field(default_factory=list)
    sample_methods: list[tuple[tuple[str, ...], int]] = field(default_factory=list)
    column_refs: list[tuple[str, ...]] = field(default_factory=list)
    # Field names selected from an expression (`(t).f`, `(row).f`): f(row) when the row has no column f.
    indirections: list[str] = field(default_factory=list)
    # Every operator symbol written or implied (A_Expr, ORDER BY ... USING, x op ANY (SELECT ...)), qualified or not.
    operator_symbols: set[str] = field(default_factory=set)
    # every cast an expression is written with: its target's key and the names its value's type may have
    # (policy/castsource.py)
    casts: list[WrittenCast] = field(default_factory=list)
    param_uses: dict[int, int] = field(default_factory=dict)  # how many times each $n is written
    # PREPARE's argument types by key; None where a routine's parameters are ($n in CREATE FUNCTION ... BEGIN ATOMIC)
    param_types: list[str] | None = field(default_factory=list)
    # The JSON-writing built-ins and SQL/JSON constructors used (policy/reached.py JSON_OUTPUT, JSON_NODES): each runs
    # a cast to json of a value's type when the type has one done by a function.
    json_output: list[str] = field(default_factory=list)
    reg_literals: list[tuple[str, str, int]] = field(default_factory=list)  # (reg* type, literal, its location)
    qualified_columns: list[Node] = field(default_factory=list)  # ColumnRef bodies with 3+ fields
    sites: list[Site] = field(default_factory=list)  # reg* casts and calls, outer ones first
    refnames: list[str] = field(default_factory=list)  # every FROM-item / CTE name in the statement
    # Other names a query level can reference a row by: JOIN ... USING (...) AS x, the target of UPDATE/DELETE/MERGE
    other_names: list[str] = field(default_factory=list)
    # Names that may be whole-row references: single-name column references (`SELECT o`, `row_to_json(o)`)
    # and the X of `X.*` / `s.X.*` inside an expression (a whole row; a target-list entry `X.*` is X's columns).
    row_names: set[str] = field(default_factory=set)
    star_names: set[str] = field(default_factory=set)
    system_columns: bool = False  # a column reference names a system column (ctid, xmin, tableoid…)
    ctid_names: set[str | None] = field(default_factory=set)  # qualifiers of `ctid` references (None: unqualified)
    xmax_names: set[str | None] = field(default_factory=set)  # qualifiers of `xmax` references (None: unqualified)
    locking: bool = False
    kinds: set[str] = field(default_factory=set)


def analyze(node: Node) -> Analysis:
    """Walk a tagged statement node."""
    walker = _Walker()
    walker.any(node, Scope())
    out = walker.out
    if out.param_uses and any(cast.param for cast in out.casts):
        out.casts = resolve_params(out.casts, out.param_uses, out.param_types)
    return out


def _literal_below_casts(node: Node | None) -> str | None:
    while node and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return string_const(node)


class _Walker:
    def __init__(self) -> None:
        self.out = Analysis()

    # -- generic traversal -------------------------------------------------------------------------------
    def any(self, value: Any, scope: Scope, holder: Any = None, key: Any = None) -> None:
        if type(value) is list:
            for i, item in enumerate(value):
                if type(item) is dict:
                    self.node(item, scope, value, i)
                elif type(item) is list:
                    self.any(item, scope)
        elif type(value) is dict:
            self.node(value, scope, holder, key)

    def node(self, node: Node, scope: Scope, holder: Any, key: Any) -> None:
        if len(node) == 1:
            (tag,) = node
            if tag[:1].isupper():
                if tag in _LEAVES:
                    return
                handler = _HANDLERS.get(tag)
                if handler is None:
                    self.fields(node[tag], scope)
                else:
                    handler(self, node[tag], scope, holder, key)
                return
        self.struct(node, scope)

    def fields(self, body: Node, scope: Scope, skip: tuple[str, ...] = ()) -> None:
        for k, v in body.items():
            if k in skip:
                continue
            if type(v) is dict:
                self.node(v, scope, body, k)
            elif type(v) is list:
                self.any(v, scope)

    def struct(self, d: Node, scope: Scope) -> None:
        """An untagged struct (a typed field): recognise the shapes that matter, else recurse."""
        if "relname" in d and "relpersistence" in d:
            self.ref(d, UNKNOWN, scope)
        elif "names" in d and "typemod" in d:
            self.out.type_names.append(names_of(d["names"]))
            self.out.type_locations.append(d.get("location", -1))
            self.fields(d, scope, skip=("names",))
        elif "op" in d and "limitOption" in d:
            self.select(d, scope)
        elif "collname" in d:  # a column definition's COLLATE clause
            _h_collate(self, d, scope, None, None)
        else:
            self.fields(d, scope)

    def ref(self, rv: Node, role: str, scope: Scope, holder: Any = None, key: Any = None, **kw: Any) -> None:
        cte = (
            role in (READ, SAMPLE)
            and "schemaname" not in rv
            and "catalogname" not in rv
            and rv.get("relname", "") in scope
        )
        if role in (READ, SAMPLE):
            self.out.refnames.append(rv.get("alias", {}).get("aliasname") or rv.get("relname", ""))
        elif role == TARGET:
            self.out.other_names.append(rv.get("alias", {}).get("aliasname") or rv.get("relname", ""))
        self.out.refs.append(RelRef(rv=rv, role=role, cte=cte, holder=holder, key=key, **kw))

    # -- scopes -----------------------------------------------------------------------------------------
    def with_clause(self, wc: Node | None, scope: Scope) -> Scope:
        if not wc:
            return scope
        ctes = [c.get("CommonTableExpr", {}) for c in wc.get("ctes", ())]
        names = [c.get("ctename", "") for c in ctes]
        self.out.refnames.extend(names)
        first: dict[str, int] = {}
        for i, name in enumerate(names):
            first.setdefault(name, i)
        recursive = bool(wc.get("recursive"))
        for i, cte in enumerate(ctes):
            self.fields(cte, Scope(scope, first, len(names) if recursive else i))
        return Scope(scope, first, len(names))

    # -- statements -------------------------------------------------------------------------------------
    def select(self, b: Node, scope: Scope, holder: Any = None, key: Any = None) -> None:
        self.out.kinds.add("SelectStmt")
        scope = self.with_clause(b.get("withClause"), scope)
        table_form = False
        targets = b.get("targetList")
        if targets and len(targets) == 1 and targets[0].get("ResTarget", {}).get("location", 0) == -1:
            table_form = True
        for k, v in b.items():
            if k == "withClause":
                continue
            if k == "fromClause":
                for i, item in enumerate(v):
                    self.from_item(item, scope, v, i, table_form=table_form, stmt=b)
            elif k in ("larg", "rarg"):
                self.select(v, scope)
            elif k == "intoClause":
                self.into(v, scope)
            elif k == "lockingClause":
                self.out.locking = True  # lockedRels name FROM items, not relations
            elif isinstance(v, (dict, list)):
                self.any(v, scope, b, k)

    def into(self, d: Node, scope: Scope) -> None:
        self.ref(d["rel"], INTO, scope)
        self.fields(d, scope, skip=("rel",))

    def from_item(
        self, item: Node, scope: Scope, holder: Any, key: Any, table_form: bool = False, stmt: Node | None = None
    ) -> None:
        tag = tag_of(item)
        if tag == "RangeVar":
            self.ref(item[tag], READ, scope, holder, key, table_form=table_form, stmt=stmt)
        elif tag == "JoinExpr":
            body = item[tag]
            self.alias(body)
            if body.get("usingClause") or body.get("isNatural"):  # PostgreSQL applies `=` by name to each column
                self.out.operator_symbols.add("=")
            for side in ("larg", "rarg"):
                if side in body:
                    self.from_item(body[side], scope, body, side)
            self.fields(body, scope, skip=("larg", "rarg"))
        elif tag == "RangeTableSample":
            body = item[tag]
            rel = body.get("relation", {})
            if "RangeVar" in rel:
                self.ref(rel["RangeVar"], SAMPLE, scope, holder, key, sample=body)
            else:
                self.from_item(rel, scope, body, "relation")
            self.out.sample_methods.append((names_of(body.get("method")), body.get("location", -1)))
            self.fields(body, scope, skip=("relation", "method"))
        elif tag == "RangeSubselect":
            self.alias(item[tag])
            self.fields(item[tag], scope)
        else:
            if tag == "RangeFunction" or tag == "RangeTableFunc" or tag == "JsonTable":
                self.alias(item[tag])
            self.node(item, scope, holder, key)

    def alias(self, body: Node) -> None:
        name = body.get("alias", {}).get("aliasname")
        if name:
            self.out.refnames.append(name)
        using = body.get("join_using_alias", {}).get("aliasname")
        if using:
            self.out.other_names.append(using)

    def dml(self, tag: str, b: Node, scope: Scope) -> None:
        self.out.kinds.add(tag)
        scope = self.with_clause(b.get("withClause"), scope)
        self.ref(b["relation"], TARGET, scope, b, "relation", stmt=b, stmt_kind=tag)
        for k, v in b.items():
            if k in ("withClause", "relation"):
                continue
            if k in ("fromClause", "usingClause"):
                for i, item in enumerate(v):
                    self.from_item(item, scope, v, i)
            elif k == "sourceRelation":
                self.from_item(v, scope, b, k)
            elif isinstance(v, (dict, list)):
                self.any(v, scope, b, k)


def _h_select(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.select(b, scope, holder, key)


def _dml_handler(tag: str) -> Callable[[_Walker, Node, Scope, Any, Any], None]:
    def handler(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
        w.dml(tag, b, scope)

    return handler


def _h_rangevar(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.ref(b, UNKNOWN, scope, holder, key)


def _from_handler(tag: str) -> Callable[[_Walker, Node, Scope, Any, Any], None]:
    # JoinExpr / RangeSubselect / RangeTableSample reached outside a FROM list walk: treat as FROM items.
    def handler(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
        w.from_item({tag: b}, scope, holder, key)

    return handler


def _h_funccall(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    args = b.get("args", [])
    named = any("NamedArgExpr" in a for a in args)
    names = names_of(b.get("funcname"))
    w.out.calls.append(Call(names=names, args=args, named=named, holder=holder, key=key))
    if json_output(names):
        w.out.json_output.append(names[-1] + "()")
    if holder is not None and names and names[-1] in GUARDED_NAMES:
        w.out.sites.append(Site(holder[key], holder, key))
    w.fields(b, scope, skip=("funcname",))


def _h_typecast(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    type_name = b.get("typeName", {})
    names = names_of(type_name.get("names"))
    w.out.casts.append(written(b))
    if names and (names[-1] in REG_TYPES or names[-1] == "regrole") and holder is not None:
        w.out.sites.append(Site(holder[key], holder, key))
    if names and names[-1] in REG_TYPES:
        literal = _literal_below_casts(b.get("arg"))
        if literal is not None:
            arg = b.get("arg") or {}
            while "TypeCast" in arg:
                arg = arg["TypeCast"].get("arg") or {}
            w.out.reg_literals.append((names[-1], literal, arg.get("A_Const", {}).get("location", -1)))
    w.fields(b, scope)


def _h_aexpr(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    names = names_of(b.get("name"))
    w.out.operator_symbols.update(operator_symbols(b))
    if len(names) > 1:
        w.out.operators.append(names)
        w.out.operator_locations.append(b.get("location", -1))
    w.fields(b, scope, skip=("name",))


def _h_sortby(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    names = names_of(b.get("useOp"))
    w.out.operator_symbols.update(names[-1:])
    if len(names) > 1:  # `ORDER BY x USING OPERATOR(s.<)`: PostgreSQL places it at the SortBy (its operator)
        w.out.operators.append(names)
        w.out.operator_locations.append(b.get("location", -1))
    w.fields(b, scope, skip=("useOp",))


def _h_indexelem(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    for k in ("collation", "opclass"):
        names = names_of(b.get(k))
        if len(names) > 1:
            w.out.index_names.append(names)
    w.fields(b, scope, skip=("collation", "opclass"))


def _h_constraint(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    for pair in b.get("exclusions", ()):  # (index element, operator name) pairs
        items = pair.get("List", {}).get("items", []) if type(pair) is dict else []
        if len(items) == 2:
            names = names_of(items[1].get("List", {}).get("items"))
            if len(names) > 1:
                w.out.index_names.append(names)
    w.fields(b, scope)


def _h_sublink(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.out.operator_symbols.update(names_of(b.get("operName"))[-1:])  # x op ANY / ALL (SELECT ...)
    if b.get("subLinkType") == "ANY_SUBLINK" and not b.get("operName"):  # x IN (SELECT ...): PostgreSQL applies `=`
        w.out.operator_symbols.add("=")  # (red team 9a12 F3)
    w.fields(b, scope)


def _h_case(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    if b.get("arg"):  # CASE x WHEN y: PostgreSQL applies `=` (x = y) by name
        w.out.operator_symbols.add("=")
    w.fields(b, scope)


def _json_handler(tag: str) -> Callable[[_Walker, Node, Scope, Any, Any], None]:
    def handler(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
        w.out.json_output.append(tag)
        w.fields(b, scope)

    return handler


def _h_indirection(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    for item in b.get("indirection", ()):
        name = item.get("String", {}).get("sval") if type(item) is dict else None
        if name:
            w.out.indirections.append(name)
    w.fields(b, scope)


def _h_collate(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    names = names_of(b.get("collname"))
    if len(names) > 1:
        w.out.collations.append(names)
        w.out.collation_locations.append(b.get("location", -1))
    w.fields(b, scope, skip=("collname",))


def _h_columnref(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    names = names_of(b.get("fields"))
    if names and names[-1] in SYSTEM_COLUMNS:
        w.out.system_columns = True
        if names[-1] == "ctid":
            w.out.ctid_names.add(names[-2] if len(names) > 1 else None)
        elif names[-1] == "xmax":
            w.out.xmax_names.add(names[-2] if len(names) > 1 else None)
    if len(names) > 1:
        w.out.column_refs.append(names)
        if len(names) > 2:
            w.out.qualified_columns.append(b)
        if names[-1] == "*" and holder is not _TARGET:
            w.out.star_names.add(names[-2])
    elif names and names[0] != "*":
        w.out.row_names.add(names[0])


_TARGET = object()  # holder marker: the column reference is a whole target-list entry


def _h_restarget(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    val = b.get("val")
    if val is not None and "ColumnRef" in val:  # `o.*` here stands for o's columns, not for a row
        _h_columnref(w, val["ColumnRef"], scope, _TARGET, None)
        w.fields(b, scope, skip=("val",))
    else:
        w.fields(b, scope)


def _h_copy(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.out.kinds.add("CopyStmt")
    if "relation" in b:
        w.ref(b["relation"], COPY_FROM if b.get("is_from") else COPY_TO, scope, b, "relation", stmt=b)
    w.fields(b, scope, skip=("relation",))


def _h_create(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.out.kinds.add("CreateStmt")
    w.ref(b["relation"], CREATE, scope)
    for item in b.get("inhRelations", ()):
        if "RangeVar" in item:
            w.ref(item["RangeVar"], INHERIT, scope)
    w.fields(b, scope, skip=("relation", "inhRelations"))


def _h_view(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.out.kinds.add("ViewStmt")
    w.ref(b["view"], CREATE, scope)
    w.fields(b, scope, skip=("view",))


def _h_like(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.ref(b["relation"], LIKE, scope)
    w.fields(b, scope, skip=("relation",))


def _h_ctas(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.out.kinds.add("CreateTableAsStmt")
    w.into(b["into"], scope)
    w.fields(b, scope, skip=("into",))


def _h_truncate(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.out.kinds.add("TruncateStmt")
    for item in b.get("relations", ()):
        if "RangeVar" in item:
            w.ref(item["RangeVar"], TRUNCATE, scope)


def _h_lock(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.out.kinds.add("LockStmt")
    for item in b.get("relations", ()):
        if "RangeVar" in item:
            w.ref(item["RangeVar"], LOCK, scope)


def _h_locking(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.out.locking = True


def _h_param(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    number = int(b.get("number") or 0)
    w.out.param_uses[number] = w.out.param_uses.get(number, 0) + 1


def _h_prepare(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    if w.out.param_types is not None:
        w.out.param_types = [type_key(t.get("TypeName", t)) for t in b.get("argtypes") or ()]
    w.fields(b, scope)


def _h_routine(w: _Walker, b: Node, scope: Scope, holder: Any, key: Any) -> None:
    w.out.param_types = None  # its body's $n are its parameters, of the types it declares
    w.fields(b, scope)


_HANDLERS: dict[str, Callable[[_Walker, Node, Scope, Any, Any], None]] = {
    "ParamRef": _h_param,
    "PrepareStmt": _h_prepare,
    "CreateFunctionStmt": _h_routine,
    "SelectStmt": _h_select,
    "InsertStmt": _dml_handler("InsertStmt"),
    "UpdateStmt": _dml_handler("UpdateStmt"),
    "DeleteStmt": _dml_handler("DeleteStmt"),
    "MergeStmt": _dml_handler("MergeStmt"),
    "RangeVar": _h_rangevar,
    "JoinExpr": _from_handler("JoinExpr"),
    "RangeSubselect": _from_handler("RangeSubselect"),
    "RangeTableSample": _from_handler("RangeTableSample"),
    "FuncCall": _h_funccall,
    "TypeCast": _h_typecast,
    "A_Expr": _h_aexpr,
    "SubLink": _h_sublink,
    "A_Indirection": _h_indirection,
    "CaseExpr": _h_case,
    "CollateClause": _h_collate,
    "SortBy": _h_sortby,
    "IndexElem": _h_indexelem,
    "Constraint": _h_constraint,
    "ColumnRef": _h_columnref,
    "ResTarget": _h_restarget,
    "CopyStmt": _h_copy,
    "CreateStmt": _h_create,
    "TableLikeClause": _h_like,
    "TypeName": lambda w, b, scope, holder, key: w.struct(b, scope),  # a tagged one (PREPARE's argtypes)
    "ViewStmt": _h_view,
    "CreateTableAsStmt": _h_ctas,
    "TruncateStmt": _h_truncate,
    "LockStmt": _h_lock,
    "LockingClause": _h_locking,
    **{tag: _json_handler(tag) for tag in JSON_NODES},
}
