"""Plans the run-time guards of one statement: which casts and calls get one, and the byte + tree edits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from proxy.policy import advisory, implicit, notify
from proxy.policy import guards as g
from proxy.policy.builtins import BUILTIN_FUNCTIONS
from proxy.policy.model import TenantPolicy
from proxy.policy.rules import fail
from proxy.policy.schema import missing_name
from proxy.policy.sqltext import (
    CLOSE,
    COMMA,
    DOT,
    OPEN,
    TextError,
    Tok,
    index_at,
    matching_close,
    object_name_parts,
    quote_ident,
)
from proxy.policy.tree import Node, names_of, tag_of, walk_dicts
from proxy.policy.walk import Analysis, Site

LBRACKET, RBRACKET = "ASCII_91", "ASCII_93"
OBJECT_GUARD = "object_guard"  # rewrite rule: a value checked in a subquery of the system catalog that holds it
OWN_ROLE_FUNCTIONS = frozenset({"SVFOP_CURRENT_USER", "SVFOP_SESSION_USER", "SVFOP_CURRENT_ROLE", "SVFOP_USER"})
# obj_description(oid, '<catalog>'): the kind of object the catalog holds.
DESCRIBED_KINDS: dict[str, str] = {
    "pg_class": "class", "pg_type": "type", "pg_proc": "proc", "pg_namespace": "namespace",
    "pg_constraint": "constraint", "pg_trigger": "trigger", "pg_rewrite": "rule", "pg_operator": "oper",
    "pg_collation": "collation", "pg_statistic_ext": "statext", "pg_ts_config": "config",
    "pg_ts_dict": "dictionary", "pg_ts_parser": "ts_parser", "pg_ts_template": "ts_template",
    "pg_conversion": "conversion", "pg_opclass": "opclass", "pg_opfamily": "opfamily",
}


class Planner(Protocol):
    """What the guard planning needs of `rewrite._Planner`."""

    policy: TenantPolicy

    def edit(self, start: int, end: int, text: str) -> None: ...

    def rule(self, rule: str) -> None: ...

    def statement_tokens(self) -> list[Tok]: ...

    def defer(self, fn: Callable[[], None]) -> None: ...

    def cut(self, start: int, end: int) -> str: ...

    node: Node | None


# -- what is a literal, what stays a row-level value ------------------------------------------------------------


def below_casts(node: Node | None) -> Node | None:
    """The expression under any chain of casts."""
    while node and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return node


def is_null(node: Node | None) -> bool:
    inner = below_casts(node)
    return bool(inner) and "A_Const" in inner and bool(inner["A_Const"].get("isnull"))  # type: ignore[index]


def name_literal(node: Node | None) -> str | None:
    """The text of a string literal (under any casts), else None."""
    inner = below_casts(node)
    if not inner or "A_Const" not in inner or "sval" not in inner["A_Const"]:
        return None
    return str(inner["A_Const"]["sval"].get("sval", ""))


def is_own_role(node: Node | None) -> bool:
    """CURRENT_USER, SESSION_USER, CURRENT_ROLE, USER: the session's own role, always the tenant's to see."""
    inner = below_casts(node)
    return bool(inner) and inner.get("SQLValueFunction", {}).get("op") in OWN_ROLE_FUNCTIONS  # type: ignore[union-attr]


def needs_guard(policy: TenantPolicy, node: Node | None, kind: str, mode: str) -> bool:
    """Whether an argument of `kind` read in `mode` needs a guard (the policy requires the kind's guards): not
    NULL, not the session's own role, not a name in a literal that is checked otherwise (guards.literal_checked)."""
    if node is None or is_null(node):
        return False
    if kind == "role" and is_own_role(node):
        return False
    text = name_literal(node)
    return text is None or not g.literal_checked(policy, kind, mode, text)


def row_level(node: Any) -> bool:
    """True when the expression holds no aggregate, window or set-returning call outside a nested query (and no
    call of a function the proxy does not know): it can be evaluated in a subquery of the same row."""
    for value in walk_dicts(node, lambda d: tag_of(d) in ("SubLink", "SelectStmt")):
        if "GroupingFunc" in value:
            return False
        call = value.get("FuncCall")
        if call is None or tag_of(value) != "FuncCall":
            continue
        names = names_of(call.get("funcname"))
        if call.get("over") or any(call.get(k) for k in ("agg_star", "agg_distinct", "agg_order", "agg_filter",
                                                        "agg_within_group")):
            return False
        name = names[-1] if names else ""
        if name in g.AGGREGATES or name in g.SET_RETURNING or name not in BUILTIN_FUNCTIONS:
            return False
        if len(names) > 1 and names[-2] not in ("pg_catalog", "information_schema"):
            return False
    return True


def call_guards(name: str, args: list[Node]) -> list[tuple[int, str, str]]:
    """(argument index, kind, mode) of each argument of a call of `name` that names an object."""
    out = []
    for spec in g.CALL_ARGS.get(name, ()):
        if spec.nargs is not None and len(args) not in spec.nargs:
            continue
        index = spec.index if spec.index >= 0 else len(args) + spec.index
        if not 0 <= index < len(args) or (spec.literal_only and name_literal(args[index]) is None):
            continue
        kind = spec.kind
        if name == "obj_description" and len(args) == 2:
            catalog = name_literal(args[1])
            kind = DESCRIBED_KINDS.get(catalog or "", "object")
        out.append((index, kind, spec.mode))
    return out


def call_out(name: str) -> str:
    """The result type of an argument guard: the function's parameter type (guards.CALL_OUT)."""
    return g.CALL_OUT.get(name, "oid")


# -- text spans --------------------------------------------------------------------------------------------------


def _min_location(node: Any) -> int | None:
    best: int | None = None
    stack = [node]
    while stack:
        value = stack.pop()
        if type(value) is dict:
            for k, v in value.items():
                if k == "location" and type(v) is int and v >= 0:
                    best = v if best is None or v < best else best
                elif type(v) is dict or type(v) is list:
                    stack.append(v)
        elif type(value) is list:
            stack.extend(value)
    return best


def _operand_start(toks: list[Tok], node: Node, before: int) -> int:
    """Index of the first token of the expression `node`, which ends before token `before` (parentheses
    around its first part or around all of it carry no location of their own)."""
    start = _min_location(node)
    if start is None:
        raise TextError("an expression without a location")
    i = index_at(toks, start)
    while i > 0 and toks[i - 1].name == OPEN and matching_close(toks, i - 1) < before:
        i -= 1
    return i


def _type_end(toks: list[Tok], i: int) -> int:
    """Index after the type name starting at token `i` (qualified, with typmods and array bounds)."""
    if i >= len(toks):
        raise TextError("missing type name")
    i += 1
    while i + 1 < len(toks) and toks[i].name == DOT:
        i += 2
    if i < len(toks) and toks[i].name == OPEN:
        i = matching_close(toks, i) + 1
    if i < len(toks) and toks[i].name == "ARRAY":
        i += 1
    while i < len(toks) and toks[i].name == LBRACKET:
        depth = 0
        while i < len(toks):
            if toks[i].name == LBRACKET:
                depth += 1
            elif toks[i].name == RBRACKET:
                depth -= 1
                if depth == 0:
                    break
            i += 1
        i += 1
    return i


def call_args(toks: list[Tok], location: int, count: int) -> tuple[int, list[tuple[int, int]], int]:
    """(index of '(', [(first, last) token index of each argument], index of ')') of the call at `location`."""
    i = index_at(toks, location)
    while i < len(toks) and toks[i].name != OPEN:
        i += 1
    if i >= len(toks):
        raise TextError("a call without parentheses")
    close = matching_close(toks, i)
    spans: list[tuple[int, int]] = []
    depth, first = 0, i + 1
    for j in range(i + 1, close):
        name = toks[j].name
        if name in (OPEN, LBRACKET):
            depth += 1
        elif name in (CLOSE, RBRACKET):
            depth -= 1
        elif name == COMMA and depth == 0:
            spans.append((first, j - 1))
            first = j + 1
    if close > i + 1:
        spans.append((first, close - 1))
    if len(spans) != count:
        raise TextError("the call's arguments do not match the tree")
    return i, spans, close


# -- planning -----------------------------------------------------------------------------------------------------


# The most guards one statement may get. Each is a few hundred tree nodes to build and verify (~5-10 ms); a statement
# of hundreds of `N::regclass` items held the event loop (or a decision worker) for seconds, stalling every tenant
# (red team 7 F5/F8). BI clients' catalog queries need at most a handful.
MAX_GUARDS = 16


def check_guard_count(count: int) -> None:
    """Refuse a statement that would need more than MAX_GUARDS guards, before any is built."""
    if count > MAX_GUARDS:
        raise fail("too_many_guards", f"the statement converts {count} object identifiers or names that must each "
                   f"be checked; at most {MAX_GUARDS} are allowed in one statement")


def plan(planner: Planner, analysis: Analysis) -> None:
    """Add a guard for every site of the statement that needs one, and for every group of expressions that
    PostgreSQL resolves to an object-identifier type (implicit.py); outer ones first: their text goes around."""
    policy = planner.policy
    root = planner.node
    columns = [*(n[-1] for n in analysis.column_refs if n), *analysis.row_names]
    if root is None or not implicit.may_anchor(len(analysis.sites), (c.names[-1] for c in analysis.calls if c.names),
                                               iter(columns), (r.rv.get("relname", "") for r in analysis.refs)):
        for site in analysis.sites:
            _site(planner, policy, site)
        return
    explicit = {id(site.node): site for site in analysis.sites}
    types = implicit.types_of(root)
    seen = implicit.Seen()
    done: set[int] = set()
    for node, holder, key in implicit.walk(root):
        site = explicit.pop(id(node), None)
        if site is not None:
            _site(planner, policy, site)
        for group in implicit.node_groups(node, holder, key, seen):
            _group(planner, policy, types, group, done)
    for site in explicit.values():  # not reached by the walk (never expected): still guarded
        _site(planner, policy, site)


def _site(planner: Planner, policy: TenantPolicy, site: Site) -> None:
    tag = tag_of(site.node)
    if tag == "TypeCast":
        _cast(planner, policy, site)
    elif tag == "FuncCall":
        _call(planner, policy, site)


# -- implicit conversions (implicit.py) --------------------------------------------------------------------------


def _group(planner: Planner, policy: TenantPolicy, types: implicit.Types, group: implicit.Group,
           done: set[int]) -> None:
    """Guard what PostgreSQL would convert to the group's reg* type without a written conversion."""
    if group.kind == implicit.STARRED:
        if types.qualified or implicit.reads_reg_relation(planner.node):
            raise fail("rewrite_unsupported", "a set operation with * over a relation or subquery that has columns "
                       "of an object-identifier type cannot be checked; name the columns")
        return
    full = implicit.anchor(types, group)
    if full is None:
        return
    regtype = full.removesuffix("[]")
    kind = g.CAST_KINDS[regtype]
    if not g.required(policy, kind):
        return
    level = full.endswith("[]")
    names: list[tuple[implicit.Member, bool]] = []  # name inputs to guard as if the conversion were written
    raw: list[tuple[implicit.Member, bool]] = []  # other values PostgreSQL converts
    for member in group.members:
        node = member.node
        if node is None or implicit.is_null(node) or id(node) in done or types.of(node) is not None:
            continue
        array = member.array or level
        if implicit.is_name_input(node):
            if policy.strategy == "schema" and not array:
                _schema_literal(policy, node, kind)
            if needs_guard(policy, node, kind, g.PARSE):
                names.append((member, array))
        elif group.kind in (implicit.COLUMN, implicit.VALUE):
            raw.append((member, array))
    if raw and group.kind == implicit.VALUE:
        _wrap_construct(planner, policy, group, kind, regtype, group.array or level)
    for member, array in raw if group.kind == implicit.COLUMN else ():
        done.add(id(member.node))
        _wrap_member(planner, policy, member, kind, regtype, array)
    if names and group.kind == implicit.COMPARE and group.node is not None:  # x IN (one item)
        raise fail("rewrite_unsupported", f"IN with one {regtype}[] value cannot be checked; write = instead")
    for member, array in names:
        done.add(id(member.node))
        if array:
            template = _array_template(policy, kind, regtype, member.node)
        else:
            template = _template_for(policy, kind, g.PARSE, regtype, member.node)
        _wrap_token(planner, member, template)


def _schema_literal(policy: TenantPolicy, node: Node, kind: str) -> None:
    """Schema strategy: a name read by a reg* input function without a written cast is checked like a cast's literal
    (schema.check_schemas): one in a schema the tenant may not name gets PostgreSQL's answer for a missing schema."""
    const = node.get("A_Const") or {}
    text = name_literal(node)
    if text is None or text.strip().isdigit():
        return
    parts = object_name_parts(text) or []
    schema = parts[0] if kind == "namespace" else (parts[-2] if len(parts) >= 2 else None)
    if schema is not None and schema not in policy.allowed_schemas:
        raise missing_name(policy, kind, text, schema, const.get("location", -1))


def _wrap_construct(planner: Planner, policy: TenantPolicy, group: implicit.Group, kind: str, regtype: str,
                    array: bool) -> None:
    """The construct's result through the guard of its type (CASE/COALESCE/GREATEST/LEAST/ARRAY/array_*)."""
    node = group.node
    assert node is not None
    tag = tag_of(node)
    body = node[tag]  # type: ignore[index]
    if tag == "A_Expr":
        raise fail("rewrite_unsupported", f"|| of {regtype} values and other values cannot be checked; write the "
                   f"conversion to {regtype} on each operand")
    if tag == "FuncCall" and body.get("over") is not None:
        raise fail("rewrite_unsupported", f"the default of lag/lead over {regtype} values cannot be checked; write "
                   f"the conversion to {regtype} on the value and on the default")
    template = _implicit_template(policy, node, kind, regtype, array, g.OID)
    toks = planner.statement_tokens()
    first = index_at(toks, body["location"])
    if tag == "CaseExpr":
        last = _case_end(toks, first)
    elif tag == "A_ArrayExpr":
        last = index_at(toks, body["list_end"])
    else:
        open_ = first
        while open_ < len(toks) and toks[open_].name != OPEN:
            open_ += 1
        if open_ >= len(toks):
            raise TextError("a construct without parentheses")
        last = matching_close(toks, open_)
    _wrap_span(planner, toks, first, last, Site(node, group.holder, group.key), template)


def _implicit_template(policy: TenantPolicy, node: Node, kind: str, regtype: str, array: bool,
                       mode: str) -> g.Template:
    """The guard of a value PostgreSQL converts to `regtype` (an array of it when `array`)."""
    if not array:
        return _template_for(policy, kind, mode, regtype, node)
    if not row_level(node):
        raise fail("rewrite_unsupported", f"an array of {regtype} values computed this way cannot be checked")
    return _array_template(policy, kind, regtype, node)


def _array_template(policy: TenantPolicy, kind: str, regtype: str, operand: Node) -> g.Template:
    """The guard of an array of `regtype` values (a bare parameter typed as text)."""
    return g.array_cast(policy, kind, regtype, param="ParamRef" in operand)


def _wrap_span(planner: Planner, toks: list[Tok], first: int, last: int, site: Site, template: g.Template) -> None:
    """Put tokens first..last (the site's expression) into the guard, in the text and in the tree."""
    planner.edit(toks[first].start, toks[first].start, template.prefix)
    planner.edit(toks[last].end, toks[last].end, template.suffix)
    _replace(planner, site, template.instantiate)
    planner.rule(OBJECT_GUARD)


def _case_end(toks: list[Tok], first: int) -> int:
    """Index of the END closing the CASE at token `first`."""
    depth = 0
    for i in range(first, len(toks)):
        if toks[i].name == "CASE":
            depth += 1
        elif toks[i].name == "END_P":
            depth -= 1
            if depth == 0:
                return i
    raise TextError("CASE without END")


def _wrap_member(planner: Planner, policy: TenantPolicy, member: implicit.Member, kind: str, regtype: str,
                 array: bool) -> None:
    """A set operation's or VALUES' column value through the guard its written conversion would get."""
    node = member.node
    holder = member.holder
    column = isinstance(holder, dict) and "ColumnRef" in (holder.get(member.key) or {})
    # A column keeps a number (oid) out of its guard: beside a reg* arm PostgreSQL resolves an oid column's set
    # operation to oid (its preferred type), and pg_dump reads such columns as numbers (its dependency query).
    out = "oid" if column and not array else regtype
    template = _implicit_template(policy, node, kind, out, array, g.PARSE)
    toks = planner.statement_tokens()
    if isinstance(holder, dict) and member.key == "val":  # a ResTarget: from its start to its alias or the next one
        first = index_at(toks, holder["location"])
        last = _target_last(toks, first, bool(holder.get("name")))
    else:
        first, last = _value_span(toks, node)
    _wrap_span(planner, toks, first, last, Site(node, holder, member.key), template)
    if isinstance(holder, dict) and member.key == "val" and not holder.get("name"):
        _keep_column_name(planner, holder, toks[last].end)


def _keep_column_name(planner: Planner, target: dict[str, Any], end: int) -> None:
    """A column reference wrapped in a guard keeps the output name PostgreSQL gave it (clients read columns by
    name: pg_dump's dependency query names `classid` in the arm a guarded UNION column wraps)."""
    fields = (target.get("val") or {}).get("ColumnRef", {}).get("fields") or ()
    name = fields[-1].get("String", {}).get("sval") if fields else None
    if not name:
        return
    planner.edit(end, end, " AS " + quote_ident(name))

    def named() -> None:  # "name" first, where the parser puts it (the verifier compares the trees as JSON text)
        rest = dict(target)
        target.clear()
        target["name"] = name
        target.update(rest)

    planner.defer(named)


_TARGET_STOPS = frozenset({"FROM", "INTO", "WHERE", "GROUP_P", "HAVING", "WINDOW", "UNION", "INTERSECT", "EXCEPT",
                           "ORDER", "LIMIT", "OFFSET", "FETCH", "FOR", "AS", "ASCII_59", COMMA})


def _target_last(toks: list[Tok], first: int, named: bool) -> int:
    """Index of the last token of the expression of the target starting at token `first` (before its alias)."""
    depth = case = 0
    i = first
    while i < len(toks):
        name = toks[i].name
        if name in (OPEN, LBRACKET):
            depth += 1
        elif name in (CLOSE, RBRACKET):
            if depth == 0:
                break
            depth -= 1
        elif depth == 0:
            if name == "CASE":
                case += 1
            elif name == "END_P" and case:
                case -= 1
            elif case == 0 and name in _TARGET_STOPS:
                break
        i += 1
    last = i - 1
    if named and (i >= len(toks) or toks[i].name != "AS"):
        last -= 1  # a bare alias
    if last < first:
        raise TextError("a target without an expression")
    return last


def _value_span(toks: list[Tok], node: Node) -> tuple[int, int]:
    """(first, last) token index of the VALUES item `node`: its row's VALUES list is split at its commas."""
    start = _min_location(node)
    if start is None:
        raise TextError("a VALUES item without a location")
    at = index_at(toks, start)
    i, depth = at, 0
    while i > 0 and not (toks[i].name == "VALUES" and depth < 0):  # back to the VALUES this item's row follows
        i -= 1
        if toks[i].name == CLOSE:
            depth += 1
        elif toks[i].name == OPEN:
            depth -= 1
    if toks[i].name != "VALUES":
        raise TextError("a VALUES item outside a VALUES list")
    j = i + 1
    while j < len(toks) and toks[j].name == OPEN:
        close = matching_close(toks, j)
        first, depth = j + 1, 0
        for k in range(j + 1, close + 1):
            name = toks[k].name
            if name in (OPEN, LBRACKET) and k < close:
                depth += 1
            elif name in (CLOSE, RBRACKET) and k < close:
                depth -= 1
            elif (name == COMMA and depth == 0) or k == close:
                if first <= at <= k - 1:
                    return first, k - 1
                first = k + 1
        j = close + 1
        if j < len(toks) and toks[j].name == COMMA:
            j += 1
        else:
            break
    raise TextError("a VALUES item not found in its list")


def _wrap_token(planner: Planner, member: implicit.Member, template: g.Template) -> None:
    """A literal or a parameter (one token) through the guard of the group's type."""
    node = member.node
    location = (node.get("A_Const") or node.get("ParamRef") or {}).get("location", -1)
    toks = planner.statement_tokens()
    tok = toks[index_at(toks, location)]
    planner.edit(tok.start, tok.end, template.prefix + planner.cut(tok.start, tok.end) + template.suffix)
    _replace(planner, Site(node, member.holder, member.key), template.instantiate)
    planner.rule(OBJECT_GUARD)


def _replace(planner: Planner, site: Site, build: Callable[[Node], Node]) -> None:
    """Replace the site's node in the tree by `build(<its node at that time>)`: deferred so that a guard around
    an inner guard wraps the inner one (the tree edits run inner first)."""
    holder, key = site.holder, site.key

    def mutation() -> None:
        holder[key] = build(holder[key])

    planner.defer(mutation)


def _template_for(policy: TenantPolicy, kind: str, mode: str, out: str, operand: Node) -> g.Template:
    if not row_level(operand):
        if out not in g.CAST_KINDS and not (out == "oid" and g.KINDS[kind].catalog):
            raise fail(
                "rewrite_unsupported",
                "an object named by an aggregate, window or set-returning function cannot be checked here; "
                "name it in a column of a subquery instead",
            )
        return g.array_form(policy, kind, out)
    return g.carrier(policy, kind, mode, out, param="ParamRef" in operand or "A_Const" in operand)


def _cast(planner: Planner, policy: TenantPolicy, site: Site) -> None:
    body = site.node["TypeCast"]
    type_name = body.get("typeName", {})
    regtype = names_of(type_name.get("names"))[-1]
    kind = g.CAST_KINDS[regtype]
    operand = body.get("arg")
    if operand is None or not g.required(policy, kind) or not needs_guard(policy, operand, kind, g.PARSE):
        return
    is_array = bool(type_name.get("arrayBounds"))
    if is_array:
        if not row_level(operand):
            raise fail("rewrite_unsupported", f"an array of {regtype} values computed this way cannot be checked")
        template = _array_template(policy, kind, regtype, operand)
    else:
        template = _template_for(policy, kind, g.PARSE, regtype, operand)
    toks = planner.statement_tokens()
    loc = body.get("location", -1)
    if loc < 0:  # `regclass '1259'`: the type name, then a string literal
        start = index_at(toks, type_name["location"])
        lit = index_at(toks, operand["A_Const"]["location"])
        planner.edit(toks[start].start, toks[lit].start, template.prefix)
        planner.edit(toks[lit].end, toks[lit].end, template.suffix)
        _replace(planner, site, lambda node: template.instantiate(node["TypeCast"]["arg"]))
        planner.rule(OBJECT_GUARD)
        return
    at = index_at(toks, loc)
    if toks[at].name == "CAST":
        open_ = at + 1
        close = matching_close(toks, open_)
        depth, as_at = 0, -1
        for j in range(open_ + 1, close):
            name = toks[j].name
            if name == OPEN:
                depth += 1
            elif name == CLOSE:
                depth -= 1
            elif name == "AS" and depth == 0:
                as_at = j
        if as_at < 0:
            raise TextError("CAST without AS")
        planner.edit(toks[at].start, toks[open_ + 1].start, template.prefix)
        planner.edit(toks[as_at - 1].end, toks[close].end, template.suffix)
    elif toks[at].name == "TYPECAST":
        first = _operand_start(toks, operand, at)
        end = _type_end(toks, at + 1)
        planner.edit(toks[first].start, toks[first].start, template.prefix)
        planner.edit(toks[at].start, toks[end - 1].end, template.suffix)
    else:
        raise TextError("a cast written in an unexpected way")
    _replace(planner, site, lambda node: template.instantiate(node["TypeCast"]["arg"]))
    planner.rule(OBJECT_GUARD)


def _call(planner: Planner, policy: TenantPolicy, site: Site) -> None:
    body = site.node["FuncCall"]
    names = names_of(body.get("funcname"))
    if not names or (len(names) > 1 and names[-2] != "pg_catalog"):
        return
    name = names[-1]
    if name not in g.GUARDED_NAMES:
        return
    args: list[Node] = body.get("args") or []
    if name in g.ADVISORY_LOCKS:  # (a database of its own: refused elsewhere; keys checked by advisory.check)
        if policy.owns_database and args and planner.node is not None:
            template = g.advisory_key(policy, len(args), advisory.count(planner.node))
            _wrap_arg(planner, site, body, 0, template, kind=None, rule="advisory_lock_guard")
        return
    if name == g.NOTIFY:  # (a database of its own: refused elsewhere; a literal channel is checked by notify.check)
        if policy.owns_database and args and notify.needs_guard(args[0]):
            _wrap_arg(planner, site, body, 0, g.notify_channel(policy), kind=None, rule="notify_channel_guard")
        return
    if any("NamedArgExpr" in a for a in args):
        raise fail("rewrite_unsupported", f"{name}() must be called with positional arguments")
    if name == "to_regtypemod":  # a type modifier, not an object: nothing to guard it with, so a value is refused
        if args and g.required(policy, "type") and needs_guard(policy, args[0], "type", g.PARSE):
            raise fail("unchecked_object_name", "the type name given to to_regtypemod() cannot be checked")
        return
    if name == "current_setting":
        if args and name_literal(args[0]) is None and not is_null(args[0]):  # a literal name: settings.py
            _wrap_arg(planner, site, body, 0, g.setting_name(policy), kind=None)
        return
    if name in g.RESULT_CALLS:
        kind, out = g.RESULT_CALLS[name]
        if len(args) == 1 and g.required(policy, kind) and needs_guard(policy, args[0], kind, g.PARSE):
            _whole_call(planner, site, body, _template_for(policy, kind, g.PARSE, out, args[0]))
        return
    if name in g.RESULT_WRAPPED:
        kind, out = g.RESULT_WRAPPED[name]
        if not g.required(policy, kind):
            return
        template = g.carrier(policy, kind, g.OID, out)
        if not row_level(site.node):
            raise fail("rewrite_unsupported", f"{name}() cannot be checked here; call it in a subquery")
        toks = planner.statement_tokens()
        _, _, close = call_args(toks, body["location"], len(args))
        start = index_at(toks, body["location"])
        planner.edit(toks[start].start, toks[start].start, template.prefix)
        planner.edit(toks[close].end, toks[close].end, template.suffix)
        _replace(planner, site, template.instantiate)
        planner.rule(OBJECT_GUARD)
        return
    if name in ("pg_get_userbyid", "oidvectortypes"):
        kind = "role" if name == "pg_get_userbyid" else "type"
        if len(args) == 1 and not is_null(args[0]) and g.required(policy, kind):
            template = g.userbyid(policy) if name == "pg_get_userbyid" else g.vectortypes(policy)
            if not row_level(args[0]):
                raise fail("rewrite_unsupported", f"the argument of {name}() cannot be checked here; use a subquery")
            _whole_call(planner, site, body, template)
        return
    if name == "ts_headline" and len(args) == 3 and "ParamRef" in args[0]:
        # (config, document, query) or (document, query, options): PostgreSQL resolves an untyped $1 by the other
        # arguments' types, which the proxy does not know; as a configuration its value would reach regconfigin
        raise fail("rewrite_unsupported", "the first argument of ts_headline() with three arguments may be a "
                   "configuration or a document; write $1::regconfig or $1::text")
    for index, kind, mode in call_guards(name, args):
        if g.required(policy, kind) and needs_guard(policy, args[index], kind, mode):
            template = _template_for(policy, kind, mode, call_out(name), args[index])
            _wrap_arg(planner, site, body, index, template, kind)


def _whole_call(planner: Planner, site: Site, body: Node, template: g.Template) -> None:
    """Replace `f(x)` by the guard around x."""
    toks = planner.statement_tokens()
    _, spans, close = call_args(toks, body["location"], 1)
    first, last = spans[0]
    start = index_at(toks, body["location"])
    planner.edit(toks[start].start, toks[first].start, template.prefix)
    planner.edit(toks[last].end, toks[close].end, template.suffix)
    _replace(planner, site, lambda node: template.instantiate(node["FuncCall"]["args"][0]))
    planner.rule(OBJECT_GUARD)


def _wrap_arg(planner: Planner, site: Site, body: Node, index: int, template: g.Template, kind: str | None,
              rule: str | None = None) -> None:
    """Put argument `index` of the call into the guard."""
    toks = planner.statement_tokens()
    args = body.get("args") or []
    _, spans, _ = call_args(toks, body["location"], len(args))
    first, last = spans[index]
    planner.edit(toks[first].start, toks[first].start, template.prefix)
    planner.edit(toks[last].end, toks[last].end, template.suffix)

    def mutation() -> None:
        args[index] = template.instantiate(args[index])

    planner.defer(mutation)
    planner.rule(rule or ("setting_guard" if kind is None else OBJECT_GUARD))
