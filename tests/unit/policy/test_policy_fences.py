"""Catalog filters without a fence (fences.py): which relation references are quiet -- no condition that can fail
reaches their rows -- decided alike by the planner (fences.quiet_references) and the verifier
(verify.quiet_locations); everything else keeps `OFFSET 0`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from policy_corpus import POLICIES, load_cases

from proxy.policy import Deny, Rewrite, decide
from proxy.policy.fences import quiet_references
from proxy.policy.tree import Node, parse_json, walk_dicts
from proxy.policy.verify import quiet_locations

SHARED, SCHEMA = POLICIES["shared"], POLICIES["schema"]
ROOT = Path(__file__).resolve().parents[3]


def _statements(sql: str) -> list[Node]:
    return [s["stmt"] for s in json.loads(parse_json(sql))["stmts"]]


def _quiet_names(sql: str) -> set[str]:
    """The names (alias, else relation name) of the quiet relation references; both implementations must agree."""
    (node,) = _statements(sql)
    planner, verifier = quiet_references(node), quiet_locations(node)
    assert planner == verifier, sql
    return {
        (v.get("alias") or {}).get("aliasname") or v["relname"]
        for v in walk_dicts(node)
        if "relname" in v and "relpersistence" in v and v.get("location") in planner
    }


@pytest.mark.parametrize(
    ("sql", "quiet"),
    [
        # conditions of its own SELECT
        ("SELECT attname FROM pg_attribute WHERE attrelid = '16387' AND attnum > 0 AND NOT attisdropped",
         {"pg_attribute"}),
        ("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
         "WHERE c.relname OPERATOR(pg_catalog.~) '^(orders)$' COLLATE pg_catalog.default", {"c", "n"}),
        ("SELECT relname FROM pg_class WHERE relkind IN ('r', 'v') AND relnamespace = $1", {"pg_class"}),
        ("SELECT relname FROM pg_class WHERE relname::int = 0", set()),
        ("SELECT relname FROM pg_class WHERE 1 / (relnatts - 3) = 1", set()),
        ("SELECT relname FROM pg_class WHERE relname ~ relname", set()),
        ("SELECT relname FROM pg_class WHERE pg_table_is_visible(oid)", set()),
        ("SELECT relname FROM pg_class c JOIN pg_namespace n ON n.nspname::int = c.relnatts", set()),
        ("SELECT relkind, count(*) FROM pg_class GROUP BY 1 HAVING relkind::int > 0", set()),
        ("SELECT relname::int, format_type(reltype, NULL) FROM pg_class ORDER BY relname::int", {"pg_class"}),
        # a correlated scalar subquery runs as a subplan: its own conditions decide (psql's \dT)
        ("SELECT (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) FROM pg_type t "
         "WHERE pg_type_is_visible(t.oid)", {"c"}),
        ("SELECT (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid AND c.relname::int = 0) FROM pg_type t",
         {"t"}),
        # EXISTS / IN may become joins: the condition holding them is not safe, theirs must be
        ("SELECT relname FROM pg_class c WHERE EXISTS (SELECT 1 FROM pg_namespace n WHERE n.oid = c.relnamespace)",
         {"n"}),
        ("SELECT relname FROM pg_class c WHERE EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname::int = 0)",
         set()),
        ("SELECT 1 FROM pg_type t WHERE t.typrelid IN (SELECT oid FROM pg_class WHERE relkind = 'c')", {"pg_class"}),
        ("SELECT 1 WHERE 0 IN (SELECT relname::int FROM pg_class)", set()),
        ("SELECT 1 FROM pg_type t WHERE t.typname::text IN (SELECT relname FROM pg_class)", set()),
        # a FROM subquery is flattened: the outer conditions reach it, with its outputs' expressions
        ("SELECT * FROM (SELECT relname FROM pg_class) s WHERE relname = 'x'", {"pg_class"}),
        ("SELECT * FROM (SELECT relname FROM pg_class) s WHERE relname::int = 0", set()),
        ("SELECT * FROM (SELECT relname::int AS n FROM pg_class) s WHERE n = 0", set()),
        ("SELECT * FROM (SELECT relname::int AS n FROM pg_class) s", {"pg_class"}),
        ("SELECT * FROM (SELECT CASE WHEN relnamespace = 16386 THEN relname::int END AS n FROM pg_class "
         "UNION ALL SELECT 1) s WHERE n = 0", set()),
        ("SELECT c.relname FROM pg_class c JOIN (SELECT relname::int AS n FROM pg_namespace) s ON true "
         "WHERE c.relnatts = s.n", set()),
        # sources whose outputs may be computed: views, CTEs that may be inlined, functions (a CTE's own references
        # are listed too; they get no filter)
        ("SELECT c.relname FROM pg_class c JOIN orders_view v ON c.relname = v.name", set()),
        ("SELECT c.relname FROM pg_class c JOIN pg_tables t ON c.relname = t.tablename", {"c", "t"}),
        ("SELECT c.relname FROM pg_class c, unnest(c.relacl) a WHERE c.relname = 'x'", {"c"}),
        ("SELECT c.relname FROM pg_class c, my_fn() f WHERE c.relname = f.x", set()),
        ("WITH x AS (SELECT relname::int AS n FROM pg_class) SELECT * FROM x WHERE n = 0", set()),
        ("WITH x AS MATERIALIZED (SELECT relname::int AS n FROM pg_class) SELECT * FROM x WHERE n = 0",
         {"pg_class", "x"}),
        ("WITH RECURSIVE r(o) AS (SELECT oid FROM pg_type WHERE oid = 16 UNION ALL "
         "SELECT t.typbasetype FROM pg_type t, r WHERE t.oid = r.o) SELECT * FROM r", {"pg_type", "t", "r"}),
        # set operation arms, each with its own conditions
        ("SELECT relname FROM pg_class WHERE relname::int = 0 UNION ALL SELECT nspname FROM pg_namespace",
         {"pg_namespace"}),
        # LATERAL subqueries join the items before them
        ("SELECT * FROM pg_type t, LATERAL (SELECT relkind FROM pg_class c WHERE c.oid = t.typrelid) l", {"t", "c"}),
        ("SELECT * FROM pg_type t, LATERAL (SELECT relkind FROM pg_class c WHERE c.relname::int = t.typlen) l",
         set()),
        # queries inside other statements
        ("EXPLAIN SELECT relname FROM pg_class WHERE relkind = 'r'", {"pg_class"}),
        ("DECLARE c CURSOR FOR SELECT relname FROM pg_class WHERE relkind = 'r'", {"pg_class"}),
        ("INSERT INTO t SELECT relname FROM pg_class WHERE relkind = 'r'", set()),
    ],
)
def test_quiet_relation_references(sql: str, quiet: set[str]) -> None:
    assert _quiet_names(sql) == quiet


def test_planner_and_verifier_agree_on_every_fixture_statement() -> None:
    sqls = [case.sql for case in load_cases()]
    sqls += (ROOT / "tests" / "fixtures" / "catalog_queries.sql").read_text().split(";\n")
    checked = 0
    for sql in sqls:
        try:
            statements = _statements(sql)
        except Exception:  # fixtures of text that does not parse
            continue
        for node in statements:
            assert quiet_references(node) == quiet_locations(node), sql
            checked += 1
    assert checked > 200


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM (SELECT CASE WHEN relnamespace = 16386 THEN relname::int END AS n FROM pg_class) s WHERE n = 0",
        "WITH x AS (SELECT CASE WHEN relnamespace = 16386 THEN relname::int END AS n FROM pg_class) "
        "SELECT * FROM x WHERE n = 0",
        "SELECT relname FROM pg_class WHERE CASE WHEN relnamespace = 16386 THEN relname::int END = 0 "
        "UNION ALL SELECT 'x'",
        "SELECT 1 FROM pg_type t WHERE EXISTS (SELECT FROM pg_class c WHERE c.oid = t.typrelid AND c.relname::int = 0)",
    ],
)
def test_a_computed_output_or_an_arm_condition_keeps_the_fence(sql: str) -> None:
    """The leaks a statement-wide check missed: outputs replaced by their expressions under a safe outer
    condition, and the conditions of a set operation's arms."""
    for policy in (SHARED, SCHEMA):
        decision = decide(policy, sql)
        assert isinstance(decision, Rewrite), decision
        fences = _wrapper_fences(decision.sql)
        assert fences and all(fences), decision.sql


def _wrapper_fences(sql: str) -> list[bool]:
    """For each catalog wrapper of pg_class in `sql`: whether it has the fence."""
    return [
        "limitOffset" in sub
        for v in walk_dicts(_statements(sql))
        if "subquery" in v and (sub := v["subquery"].get("SelectStmt") or {}).get("fromClause")
        and sub["fromClause"][0].get("RangeVar", {}).get("relname") == "pg_class"
    ]


def test_the_verifier_refuses_an_unfenced_filter_it_does_not_find_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.policy import rewrite

    monkeypatch.setattr(rewrite._Planner, "quiet", lambda self, rv: True)
    database = POLICIES["database"]  # alone in its database: its pg_class filter hides no row
    assert isinstance(decide(database, "SELECT relname FROM pg_class WHERE relkind = 'r'"), Rewrite)
    for sql in (
        "SELECT relname FROM pg_class WHERE relname::int = 0",
        "SELECT * FROM (SELECT relname::int AS n FROM pg_class) s WHERE n = 0",
        "SELECT relname FROM pg_class WHERE relname::int = 0 UNION ALL SELECT 'x'",
    ):
        decision = decide(database, sql)
        assert isinstance(decision, Deny) and decision.rule == "rewrite_unverified", (sql, decision)


def test_a_filter_that_hides_rows_is_fenced_and_opaque_even_where_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 9a8 N1: an unfenced filter let the client's conditions reach the catalog's scan, whose plan (and the
    order of the rows returned) followed statistics that count the hidden rows; a plain fenced one let the planner
    read the same statistics through it. A catalog table whose filter hides rows gets `SELECT DISTINCT ON (<ref>.ctid)
    * … OFFSET 0` wherever it is read (a view: DISTINCT ON the row's number), and the verifier accepts no other
    wrapper for it."""
    from proxy.policy import rewrite

    decision = decide(SCHEMA, "SELECT relname FROM pg_class WHERE relkind = 'r'")  # a quiet reference
    assert isinstance(decision, Rewrite), decision
    assert decision.sql.startswith('SELECT relname FROM (SELECT DISTINCT ON ("pg_class".ctid) * FROM pg_class WHERE ')
    assert decision.sql.endswith(" OFFSET 0) \"pg_class\" WHERE relkind = 'r'"), decision.sql
    view = decide(SCHEMA, "SELECT tablename FROM pg_tables WHERE tablename = 't'")  # a view: no ctid
    assert isinstance(view, Rewrite), view
    assert view.sql.startswith("SELECT tablename FROM (SELECT DISTINCT ON (pg_catalog.row_number() OVER (), "
                               "pg_catalog.random()) * FROM pg_tables WHERE "), view.sql
    assert view.sql.endswith(" OFFSET 0) \"pg_tables\" WHERE tablename = 't'"), view.sql
    monkeypatch.setattr(rewrite, "needs_fence", lambda policy, flt, quiet=False: False)
    decision = decide(SCHEMA, "SELECT relname FROM pg_class WHERE relkind = 'r'")
    assert isinstance(decision, Deny) and decision.rule == "rewrite_unverified", decision


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM pg_namespace UNION ALL SELECT * FROM pg_namespace",
        "SELECT * FROM pg_class WHERE false UNION ALL (SELECT * FROM pg_class LIMIT 1)",
    ],
)
def test_a_set_operation_arm_reading_whole_rows_gets_the_replaced_columns(sql: str) -> None:
    """`*` in an arm of a UNION reads every column: the wrapper that replaces ACLs and statistics, not the lean one
    (a plain `(SELECT * FROM pg_... WHERE <filter>)`)."""
    decision = decide(SHARED, sql)
    assert isinstance(decision, Rewrite), decision
    assert "(SELECT * FROM pg_" not in decision.sql, decision.sql


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE orders SET amount = amount FROM pg_namespace n WHERE false RETURNING *",
        "DELETE FROM orders USING pg_namespace n WHERE false RETURNING *",
    ],
)
def test_returning_star_reads_the_whole_rows_of_from_and_using(sql: str) -> None:
    """RETURNING * returns the columns of the FROM / USING relations too (PostgreSQL 18 parses it as
    returningClause.exprs, older releases as returningList)."""
    decision = decide(POLICIES["shared_rw"], sql)
    assert isinstance(decision, Rewrite), decision
    assert "(SELECT * FROM pg_" not in decision.sql and '"nspacl"' in decision.sql, decision.sql
