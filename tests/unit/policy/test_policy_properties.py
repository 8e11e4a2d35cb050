"""Property tests: decide() never raises; its rewrites filter every scoped reference (checked via pglast's AST)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import ast, enums, parse_sql
from policy_corpus import POLICIES, case_policy, load_cases

from proxy.policy import Allow, Deny, Rewrite, TenantPolicy, decide
from proxy.policy.catalog import relation_filter
from proxy.policy.model import SessionContext

SHARED = POLICIES["shared"]
SHARED_RW = POLICIES["shared_rw"]
SCOPED_NAMES = {table for (_schema, table) in SHARED.scoped_tables}


def _children(node: Any) -> list[Any]:
    if isinstance(node, tuple):
        return list(node)
    if isinstance(node, ast.Node):
        return [getattr(node, attr) for attr in node if attr not in ("location", "stmt_location", "stmt_len")]
    return []


def _rls_backed(policy: TenantPolicy, table: tuple[str, str]) -> bool:
    return table in policy.rls_tables


def _is_wrapper_for(sub: ast.RangeSubselect, rv: ast.RangeVar, value: str, policy: TenantPolicy) -> bool:
    """RangeSubselect(SELECT * FROM rv WHERE "<relname>"."<column>" = '<value>' [OFFSET 0]), with OFFSET 0
    whenever the policy is fenced and the table is not under forced RLS."""
    query = sub.subquery
    if not isinstance(query, ast.SelectStmt) or len(query.fromClause or ()) != 1:
        return False
    item = query.fromClause[0]
    if isinstance(item, ast.RangeTableSample):  # `SELECT * FROM t TABLESAMPLE … WHERE …`: sampled, then filtered
        item = item.relation
    if item is not rv:
        return False
    where = query.whereClause
    if not isinstance(where, ast.A_Expr) or [s.sval for s in where.name] != ["="]:
        return False
    names = {"relname": rv.relname, **({"schemaname": rv.schemaname} if rv.schemaname else {})}
    column = relation_filter(SHARED, names)
    assert column is not None
    if policy.fence and not _rls_backed(policy, column.table):
        offset = query.limitOffset
        if not (isinstance(offset, ast.A_Const) and getattr(offset.val, "ival", None) == 0):
            return False
    fields = [f.sval for f in where.lexpr.fields]
    const = where.rexpr
    return (
        fields == [rv.relname, column.column]
        and isinstance(const, ast.A_Const)
        and getattr(const.val, "sval", None) == value
        and query.targetList is not None
        and len(query.targetList) == 1
        and isinstance(query.targetList[0].val, ast.ColumnRef)
        and isinstance(query.targetList[0].val.fields[0], ast.A_Star)
    )


def _is_tenant_predicate(expr: Any, ref: str, column: str, value: str) -> bool:
    """`"<ref>"."<column>" = '<value>'`."""
    return (
        isinstance(expr, ast.A_Expr)
        and [s.sval for s in expr.name] == ["="]
        and isinstance(expr.lexpr, ast.ColumnRef)
        and [getattr(f, "sval", None) for f in expr.lexpr.fields] == [ref, column]
        and isinstance(expr.rexpr, ast.A_Const)
        and getattr(expr.rexpr.val, "sval", None) == value
    )


def _where_has_filter(query: ast.SelectStmt, rv: ast.RangeVar, value: str, policy: TenantPolicy) -> bool:
    """The SELECT's WHERE clause is, or is an AND with, the tenant predicate on `rv`'s reference name (and `rv`
    has no column alias list, which could rename another column to the tenant column's name, and its table is
    under forced RLS, which must run before the client's quals)."""
    if rv.alias is not None and rv.alias.colnames:
        return False
    names = {"relname": rv.relname, **({"schemaname": rv.schemaname} if rv.schemaname else {})}
    column = relation_filter(SHARED, names)
    assert column is not None
    if not _rls_backed(policy, column.table):
        return False
    ref = rv.alias.aliasname if rv.alias else rv.relname
    where = query.whereClause
    conjuncts = where.args if isinstance(where, ast.BoolExpr) and where.boolop == enums.BoolExprType.AND_EXPR else (
        where,)
    return any(_is_tenant_predicate(c, ref, column.column, value) for c in conjuncts)


def _is_join_filter_for(join: ast.JoinExpr, rv: ast.RangeVar, value: str, policy: TenantPolicy) -> bool:
    """`(<rv> [TABLESAMPLE …] JOIN (SELECT) <name> ON "<ref>"."<column>" = '<value>')`: an inner join (no USING,
    not NATURAL, no alias) of `rv` (no column alias list, its table under forced RLS), or of `rv`'s sample, with an
    empty SELECT, on the predicate."""
    left = join.larg.relation if isinstance(join.larg, ast.RangeTableSample) else join.larg
    if join.jointype != enums.JoinType.JOIN_INNER or left is not rv or join.isNatural or join.usingClause:
        return False
    if join.alias is not None or join.join_using_alias is not None or (rv.alias is not None and rv.alias.colnames):
        return False
    empty = join.rarg
    if not isinstance(empty, ast.RangeSubselect) or empty.lateral or (empty.alias and empty.alias.colnames):
        return False
    query = empty.subquery
    if not isinstance(query, ast.SelectStmt) or any(
        getattr(query, attr) for attr in query if attr not in ("limitOption", "op")
    ):
        return False
    names = {"relname": rv.relname, **({"schemaname": rv.schemaname} if rv.schemaname else {})}
    column = relation_filter(SHARED, names)
    assert column is not None
    ref = rv.alias.aliasname if rv.alias else rv.relname
    return _rls_backed(policy, column.table) and _is_tenant_predicate(join.quals, ref, column.column, value)


def unfiltered_references(sql: str, value: str = "acme", policy: TenantPolicy | None = None) -> list[str]:
    """Scoped-table RangeVars (unqualified or sales./public.-qualified) that are read without the tenant wrapper
    (fenced where `policy` needs it) or a WHERE-clause filter where it allows one (pg_temp.<name> is the session's
    own temporary relation; a new relation's name is not a reference). Generated queries never name a CTE like a
    scoped table, so no CTE scoping is needed here."""
    policy = policy or SHARED
    problems: list[str] = []

    def visit(node: Any, parents: list[Any]) -> None:
        if isinstance(node, ast.LockingClause):
            return  # FOR UPDATE OF <name> names FROM items, not relations
        if isinstance(node, ast.RangeVar) and node.relname in SCOPED_NAMES and node.schemaname != "pg_temp":
            parent = parents[-1] if parents else None
            if isinstance(parent, (ast.IntoClause, ast.CreateStmt, ast.ViewStmt)) and node is not getattr(
                parent, "query", None
            ):
                return  # the name of a new (temporary) relation
            is_target = isinstance(parent, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)) and (
                parent.relation is node
            )
            wrapped = (
                len(parents) >= 3
                and isinstance(parent, tuple)  # the wrapper's FROM list
                and isinstance(parents[-2], ast.SelectStmt)
                and isinstance(parents[-3], ast.RangeSubselect)
                and _is_wrapper_for(parents[-3], node, value, policy)
            ) or (
                len(parents) >= 4
                and isinstance(parent, ast.RangeTableSample)  # a sampled relation inside the wrapper
                and isinstance(parents[-2], tuple)
                and isinstance(parents[-3], ast.SelectStmt)
                and isinstance(parents[-4], ast.RangeSubselect)
                and _is_wrapper_for(parents[-4], node, value, policy)
            )
            joined = (isinstance(parent, ast.JoinExpr) and _is_join_filter_for(parent, node, value, policy)) or (
                isinstance(parent, ast.RangeTableSample)  # a sampled relation joined with the empty row
                and len(parents) >= 2
                and isinstance(parents[-2], ast.JoinExpr)
                and _is_join_filter_for(parents[-2], node, value, policy)
            )
            in_where = (  # a plain FROM item of a SELECT whose WHERE has its predicate as a top-level conjunct
                len(parents) >= 2
                and isinstance(parent, tuple)
                and isinstance(parents[-2], ast.SelectStmt)
                and parents[-2].fromClause is parent
                and _where_has_filter(parents[-2], node, value, policy)
            )
            if not (is_target or wrapped or in_where or joined):
                problems.append(node.relname)
        for child in _children(node):
            visit(child, [*parents, node])

    for raw in parse_sql(sql):
        visit(raw.stmt, [])
    return problems


# -- generated BI-shaped queries ------------------------------------------------------------------------------

TABLES = ["orders", "sales.orders", '"sales"."orders"', "customers", "sales.customers", "order_items", "events",
          "public.events", "countries", "pg_catalog.pg_class"]


@st.composite
def from_item(draw: st.DrawFn, depth: int) -> str:
    kind = draw(st.sampled_from(["table", "table", "only", "sub", "join", "lateral", "sample"] if depth < 3
                                else ["table", "sample"]))
    alias = draw(st.sampled_from(["", " t", ' AS "Custom SQL Query"', " x1", " AS o(a, b, c)"]))
    if kind == "table":
        return draw(st.sampled_from(TABLES)) + alias
    if kind == "sample":
        method = draw(st.sampled_from(["BERNOULLI (10)", "pg_catalog.bernoulli (5)", "BERNOULLI (100)"]))
        return draw(st.sampled_from(["", "ONLY "])) + draw(st.sampled_from(TABLES)) + alias + " TABLESAMPLE " + method
    if kind == "only":
        return "ONLY " + draw(st.sampled_from(TABLES)) + alias
    if kind == "sub":
        return "(" + draw(select(depth + 1)) + ")" + (alias if alias and "(" not in alias else " s")
    if kind == "lateral":
        return "LATERAL (" + draw(select(depth + 1)) + ") l"
    join = draw(st.sampled_from(["JOIN", "LEFT JOIN", "FULL OUTER JOIN", "CROSS JOIN", "NATURAL JOIN"]))
    on = "" if join in ("CROSS JOIN", "NATURAL JOIN") else " ON true"
    return draw(from_item(depth + 1)) + f" {join} " + draw(from_item(depth + 1)) + on


@st.composite
def predicate(draw: st.DrawFn, depth: int) -> str:
    kind = draw(st.sampled_from(["plain", "exists", "in", "scalar"] if depth < 3 else ["plain"]))
    if kind == "plain":
        return draw(st.sampled_from(["1 = 1", "amount > 5", "status <> 'x' OR true", "tenant_id = 'globex'"]))
    if kind == "exists":
        return "EXISTS (" + draw(select(depth + 1)) + ")"
    if kind == "in":
        return "1 IN (SELECT 1 FROM " + draw(from_item(depth + 1)) + ")"
    return "(SELECT count(*) FROM " + draw(from_item(depth + 1)) + ") > 0"


@st.composite
def select(draw: st.DrawFn, depth: int = 0) -> str:
    head = draw(st.sampled_from(["SELECT *", "SELECT count(*)", "SELECT 1 AS one", "SELECT xmin, cmin", "TABLE",
                                 "SELECT t, x1", "SELECT row_to_json(t.*)", "SELECT t.*", "SELECT orders::text",
                                 'SELECT count(*) FILTER (WHERE "Custom SQL Query" = t)']))
    if head == "TABLE":
        return "TABLE " + draw(st.sampled_from(TABLES[:7]))
    sql = f"{head} FROM " + draw(from_item(depth))
    if draw(st.booleans()):
        sql += " WHERE " + draw(predicate(depth))
    if depth < 2 and draw(st.booleans()):
        sql += draw(st.sampled_from([" UNION ALL ", " EXCEPT ", " INTERSECT "])) + draw(select(depth + 1))
    return sql


@st.composite
def statement(draw: st.DrawFn) -> str:
    body = draw(select())
    wrap = draw(st.sampled_from(["{}", "WITH c1 AS ({}) SELECT * FROM c1", "DECLARE cur CURSOR WITH HOLD FOR {}",
                                 "EXPLAIN {}", "COPY ({}) TO STDOUT", "SELECT * FROM ({}) \"_\" LIMIT 1000001",
                                 "INSERT INTO orders (order_id) SELECT 1 FROM ({}) q",
                                 "DELETE FROM orders WHERE EXISTS ({})",
                                 "UPDATE customers SET region = 'x' WHERE EXISTS ({})",
                                 "/* comment */ {} -- trailing"]))
    return wrap.format(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statement())
def test_generated_queries_are_always_filtered(sql: str) -> None:
    decision = decide(SHARED_RW, sql)
    if isinstance(decision, Deny):
        # only honest refusals: nothing the engine could not verify, nothing internal
        assert decision.rule in {"rewrite_unsupported", "read_only", "parse_error", "explain_catalog"}, (sql, decision)
        return
    forwarded = decision.sql if isinstance(decision, Rewrite) else sql
    assert unfiltered_references(forwarded) == [], (sql, forwarded)


# A tenant fenced for one relation without forced RLS: only sales.orders is RLS-backed.
MIXED = dataclasses.replace(SHARED_RW, fence=True, rls_tables=frozenset({("sales", "orders")}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statement())
def test_generated_queries_fence_what_rls_does_not_back(sql: str) -> None:
    """With a fence for some relations: every other scoped table's wrapper has OFFSET 0, and only the RLS-backed
    one may take the WHERE form."""
    decision = decide(MIXED, sql)
    if isinstance(decision, Deny):
        assert decision.rule in {"rewrite_unsupported", "read_only", "parse_error", "explain_catalog"}, (sql, decision)
        return
    forwarded = decision.sql if isinstance(decision, Rewrite) else sql
    assert unfiltered_references(forwarded, policy=MIXED) == [], (sql, forwarded)


# -- garbage in, a decision out -------------------------------------------------------------------------------

SQL_WORDS = ["SELECT", "FROM", "WHERE", "orders", "sales.orders", "customers", "(", ")", ",", ";", "*", "'x'", "$$",
             "$a$", "E'\\''", "U&\"\\0061\"", "--", "/*", "*/", "WITH", "AS", "JOIN", "ON", "TABLE", "ONLY", "UNION",
             "SET", "ROLE", "pgtenant.tenant_id", "=", "set_config", "INSERT", "INTO", "VALUES", "UPDATE", "DELETE",
             "COPY", "TO", "STDOUT", "\"", ".", "1", "LATERAL", "EXISTS", "IN", "DECLARE", "CURSOR", "FOR", "RETURNING",
             "\n", " ", "é", "\\", "::regclass", "OFFSET", "0", "$1"]


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_decide_never_raises_on_arbitrary_text(text: str) -> None:
    assert isinstance(decide(SHARED, text), (Allow, Rewrite, Deny))


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(SQL_WORDS), max_size=40))
def test_decide_never_raises_on_token_soup(words: list[str]) -> None:
    sql = " ".join(words)
    for policy in (SHARED, SHARED_RW, POLICIES["schema"], POLICIES["database"]):
        decision = decide(policy, sql)
        assert isinstance(decision, (Allow, Rewrite, Deny))
        if isinstance(decision, Deny):
            assert decision.rule != "internal_error", (sql, decision)
        elif policy is SHARED:
            forwarded = decision.sql if isinstance(decision, Rewrite) else sql
            if "WITH" not in words:  # the independent checker does not model CTE scopes
                assert unfiltered_references(forwarded) == [], (sql, forwarded)


def test_corpus_rewrites_pass_the_independent_check() -> None:
    checked = 0
    for case in load_cases():
        policy = case_policy(case)
        if case.expect != "rewrite" or policy.strategy != "shared" or "WITH" in case.sql.upper():
            continue
        assert unfiltered_references(case.rewritten) == [], case.id
        checked += 1
    assert checked > 40


# -- in a session context: temporary relations (some shadowing tenant tables) and the session's search_path ------

WRITES = ["INSERT INTO {t} (id) VALUES (1)", "INSERT INTO {t} SELECT * FROM orders", "UPDATE {t} SET id = 1",
          "DELETE FROM {t} WHERE id IN (SELECT id FROM customers)", "TRUNCATE {t}", "COPY {t} FROM STDIN",
          "MERGE INTO {t} USING orders o ON o.id = {t}.id WHEN MATCHED THEN DELETE", "DROP TABLE {t}"]


@st.composite
def session_context(draw: st.DrawFn) -> TenantPolicy:
    tables = draw(st.sets(st.sampled_from(["orders", "customers", "events", "scratch", "picks"])))
    views = draw(st.sets(st.sampled_from(["v", "customers", "recent"]))) - tables
    path = draw(st.sampled_from([None, ("sales", "public"), ("pg_temp", "sales", "public"), ("sales", "pg_temp"),
                                 ("public",), ("pg_catalog", "pg_temp", "sales"), ()]))
    context = SessionContext(temp_tables=frozenset(tables), temp_views=frozenset(views), path=path)
    return SHARED.with_context(context)


def _written_relations(sql: str) -> list[ast.RangeVar]:
    out: list[ast.RangeVar] = []

    def visit(node: Any) -> None:
        dml = isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt))
        if dml or (isinstance(node, ast.CopyStmt) and node.is_from and node.relation is not None):
            out.append(node.relation)
        elif isinstance(node, ast.TruncateStmt):
            out.extend(node.relations)
        elif isinstance(node, ast.DropStmt):
            out.extend(ast.RangeVar(schemaname=o[0].sval if len(o) > 1 else None, relname=o[-1].sval)
                       for o in node.objects)
        for child in _children(node):
            visit(child)

    for raw in parse_sql(sql):
        visit(raw.stmt)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session_context(), st.one_of(statement(), st.builds(lambda w, t: w.format(t=t), st.sampled_from(WRITES),
                                                           st.sampled_from(["orders", "customers", "scratch", "v",
                                                                            "pg_temp.orders", "sales.orders"]))))
def test_in_a_session_context_reads_are_filtered_and_writes_reach_only_pg_temp(policy: TenantPolicy, sql: str) -> None:
    """A read-only tenant with temporary relations: every scoped reference is still filtered or is pg_temp.<name>,
    and whatever is written, truncated or dropped is pg_temp.<name>."""
    decision = decide(policy, sql)
    if isinstance(decision, Deny):
        assert decision.rule != "internal_error" and decision.rule != "rewrite_unverified", (sql, decision)
        return
    forwarded = decision.sql if isinstance(decision, Rewrite) else sql
    assert unfiltered_references(forwarded) == [], (sql, forwarded)
    for rv in _written_relations(forwarded):
        assert rv.schemaname == "pg_temp", (sql, forwarded)


# -- OID-to-name conversions: never forwarded outside a guard -------------------------------------------------------

REG_TYPES = ["regclass", "regtype", "regnamespace", "regproc", "regprocedure", "regrole", "pg_catalog.regclass"]
VALUES = ["oid", "c.oid", "16385", "'16385'", "$1", "relname", "relnamespace + 0", "(SELECT max(oid) FROM pg_type)",
          "max(oid)", "generate_series(1, 3)", "random()::int", "NULL", "'pg_class'", "'tenant_globex.orders'"]
CALLS = ["format_type({v}, NULL)", "pg_get_viewdef({v})", "obj_description({v}, 'pg_class')",
         "pg_get_userbyid({v})", "to_regclass({v}::text)", "has_table_privilege({v}, 'SELECT')",
         "pg_relation_size({v})", "current_setting({v}::text)", "{v}::{t}", "CAST({v} AS {t})", "{v}::{t}[]"]


@st.composite
def conversion(draw: st.DrawFn) -> str:
    call = draw(st.sampled_from(CALLS))
    expr = call.format(v=draw(st.sampled_from(VALUES)), t=draw(st.sampled_from(REG_TYPES)))
    outer = draw(st.sampled_from(["{}", "({})::text", "upper({}::text)", "coalesce({}::text, 'x')"]))
    where = draw(st.sampled_from(["", " WHERE c.relkind = 'r'", " WHERE {} IS NOT NULL"]))
    return f"SELECT {outer.format(expr)} FROM pg_class c" + where.format(expr)


def _unguarded_conversions(sql: str) -> list[str]:
    """Casts to reg* types of anything but a string literal, and naming calls, outside a `pgt_g_*` guard."""
    problems: list[str] = []

    def is_guard(node: Any) -> bool:
        sub = getattr(node, "subselect", None)
        if isinstance(node, ast.A_Indirection):
            sub = getattr(node.arg, "subselect", None)
        items = getattr(sub, "fromClause", None) or ()
        alias = getattr(items[0], "alias", None) if items else None
        return alias is not None and alias.aliasname.startswith("pgt_g_")

    def visit(node: Any) -> None:
        if isinstance(node, ast.SubLink | ast.A_Indirection) and is_guard(node):
            return  # the verifier checks the guard's exact form; what it holds is visited by it
        if isinstance(node, ast.TypeCast):
            name = node.typeName.names[-1].sval
            arg = node.arg
            while isinstance(arg, ast.TypeCast):
                arg = arg.arg
            literal = isinstance(arg, ast.A_Const) and (arg.isnull or isinstance(arg.val, ast.String))
            if name.startswith("reg") and not literal:
                problems.append(name)
        if isinstance(node, ast.FuncCall) and node.funcname[-1].sval in ("format_type", "pg_get_userbyid"):
            first = node.args[0]
            null = isinstance(first, ast.A_Const) and first.isnull
            if not null and (node.funcname[-1].sval == "pg_get_userbyid" or not is_guard(first)):
                problems.append(node.funcname[-1].sval)
        for child in _children(node):
            visit(child)

    for raw in parse_sql(sql):
        visit(raw.stmt)
    return problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversion(), st.sampled_from(["shared", "schema"]))
def test_conversions_are_never_forwarded_unguarded(sql: str, policy_name: str) -> None:
    decision = decide(POLICIES[policy_name], sql)
    if isinstance(decision, Deny):  # honest refusals only: a name in another schema, a shape a guard cannot take
        assert decision.rule in {"foreign_schema", "rewrite_unsupported"}, (sql, decision)
        return
    forwarded = decision.sql if isinstance(decision, Rewrite) else sql
    assert _unguarded_conversions(forwarded) == [], (sql, forwarded)
