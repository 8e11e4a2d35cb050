"""Cross-tenant attack suite: every attempt through the simple and the extended protocol, in every strategy.

Strategies (one attacking login each, all on the `tests.support.bidata` dataset):

* ``shared``   -- ``t_acme`` on ``bi_shared``: proxy rewrite AND forced RLS (the deployment default);
* ``norls``    -- ``n_acme`` on ``bi_shared_norls``: RLS disabled, only the proxy's rewrite protects;
* ``schema``   -- ``s_one`` on ``bi_schema`` (schema ``one_co``; ``two_co``/``ghost_co`` are the victims, and
  ``public.legacy_orders`` with every tenant's rows is readable by PUBLIC: only the proxy stands in front of it);
* ``database`` -- ``d_four`` on ``bi_t4`` (``bi_t5`` is the victim).

Every case asserts, whatever the outcome: no other tenant's canary in any row, COPY byte, notice or error text;
no other tenant's id, tenant key, schema name or database name in any row (names the attack itself spells are
exempt); afterwards the session still works and its tenant context (tenant setting, role, search_path, own row
count) is unchanged. On top of that each case states what must happen: ``deny`` (an ErrorResponse with a
SQLSTATE; ``by="proxy"`` when the proxy itself must refuse), ``same`` (exactly the rows the statement returns to
the tenant's own RLS-restricted / own-schema / own-database role directly), ``ok`` (succeeds, plus a check),
``empty`` (succeeds with no rows) or ``any`` (only the leak and context checks).

Protocols: ``simple`` sends each step as one Query message (parameters interpolated client-side, like psycopg2 /
psqlODBC); ``extended`` sends Parse of a named statement, then Bind/Execute/Sync (like pgJDBC and asyncpg), with
parameters as $n. Startup and portal cases use asyncpg for the extended side; FunctionCall uses the raw wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from psycopg import pq

from proxy.policy import nametypes
from proxy.protocol import messages as m
from tests.support import bidata
from tests.support.bidata import PqClient, Result
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import (
    TENANT_ROLES,
    ProxyProcess,
    dan_proxy,
    default_pool_mode,
    prepare_backend,
)
from tests.support.wire import login, read_message, read_to_close

STRATEGY_LETTERS = {"S": "shared", "N": "norls", "C": "schema", "D": "database"}
PROTOCOLS = ("simple", "extended")


# ------------------------------------------------------------------------------------------------ the attackers


@dataclass(frozen=True)
class Actor:
    strategy: str
    user: str
    key: str  # dataset key of the attacker's own rows (tenant_id value / schema / canary key)
    db: str
    proxy: str  # strict | norls
    other_db: str  # a database of another tenant
    ref_user: str  # the role the "same" reference runs as, directly against PostgreSQL
    ref_password: str
    ref_db: str
    ref_options: str
    post_sql: str  # session health + tenant context, run after every case

    @property
    def counts(self) -> dict[str, int]:
        return bidata.own_counts(self.key)

    @property
    def foreign_keys(self) -> tuple[str, ...]:
        return tuple(k for k in bidata.SIZES if k != self.key)

    @property
    def foreign_names(self) -> tuple[str, ...]:
        dbs = (*bidata.ALL_DATABASES, "saas", "initech")
        return (*self.foreign_keys, *(d for d in dbs if d != self.db), *(r for r in ALL_ROLES if r != self.role))

    @property
    def role(self) -> str:
        """The backend role the attacker's session runs as."""
        return {"schema": "pgt_bi_one", "database": "pgt_bi_four"}.get(self.strategy, bidata.BACKEND_ROLE)

    def expected_context(self) -> tuple[str | None, ...]:
        n = str(self.counts["orders"])
        if self.strategy in ("shared", "norls"):
            return (self.key, bidata.BACKEND_ROLE, '"public"', n)
        if self.strategy == "schema":
            return ("pgt_bi_one", '"one_co", "reference"', n)
        return ("pgt_bi_four", self.db, n)


# Every role of the test cluster but the bootstrap superuser: other tenants' backend roles must never be named.
ALL_ROLES = (bidata.BACKEND_ROLE, *bidata.TENANT_ROLES, TENANT_ROLES["globex"][0], TENANT_ROLES["initech"][0],
             bidata.DIRECT_ROLE)

_SHARED_POST = ("SELECT current_setting('pgtenant.tenant_id', true), current_user, current_setting('search_path'),"
                " (SELECT count(*) FROM orders)")
ACTORS: dict[str, Actor] = {
    "shared": Actor("shared", "t_acme", "acme", bidata.SHARED_DB, "strict", bidata.NORLS_DB,
                    bidata.DIRECT_ROLE, bidata.DIRECT_PASSWORD, bidata.SHARED_DB,
                    "-c search_path=public -c pgtenant.tenant_id=acme", _SHARED_POST),
    "norls": Actor("norls", "n_acme", "acme", bidata.NORLS_DB, "norls", bidata.SHARED_DB,
                   bidata.DIRECT_ROLE, bidata.DIRECT_PASSWORD, bidata.SHARED_DB,
                   "-c search_path=public -c pgtenant.tenant_id=acme", _SHARED_POST),
    "schema": Actor("schema", "s_one", "one_co", bidata.SCHEMA_DB, "strict", bidata.DB_FIVE,
                    "pgt_bi_one", bidata.TENANT_ROLES["pgt_bi_one"], bidata.SCHEMA_DB,
                    "-c search_path=one_co,reference",
                    "SELECT current_user, current_setting('search_path'), (SELECT count(*) FROM orders)"),
    "database": Actor("database", "d_four", "dfour", bidata.DB_FOUR, "strict", bidata.DB_FIVE,
                      "pgt_bi_four", bidata.TENANT_ROLES["pgt_bi_four"], bidata.DB_FOUR, "",
                      "SELECT current_user, current_database(), (SELECT count(*) FROM orders)"),
}


# ---------------------------------------------------------------------------------------------------- the cases

Check = Callable[[list[Result], Actor], None]
Steps = str | tuple[str, ...]


@dataclass(frozen=True)
class Attack:
    id: str
    sql: Steps | dict[str, Steps]  # per-strategy variants keyed by strategy letters ("SN", "C", ...)
    where: str = "SNCD"
    expect: str | dict[str, str] = "any"  # deny | same | ok | empty | any (per strategy letters if a dict)
    by: str | None = None  # "proxy": the denial must come from pgtenant itself, not from PostgreSQL; "missing": it
    # must be PostgreSQL's answer for a schema that does not exist (the schema exists: PostgreSQL would refuse it)
    params: tuple[str | int | None, ...] | None = None
    check: Check | None = None
    runner: str = "sql"  # sql | startup | function_call | portal
    writes: bool = False  # run inside BEGIN ... ROLLBACK
    copy_in: bytes | None = None
    multi: bool = False  # several statements in one string: the extended protocol cannot carry them
    startup: dict[str, str] = field(default_factory=dict)
    xfail: dict[str, str] = field(default_factory=dict)  # "<strategy>" or "<strategy>-<protocol>" -> reason

    def letters(self) -> Iterator[str]:
        yield from self.where

    def steps_for(self, letter: str) -> tuple[str, ...]:
        sql = self.sql
        if isinstance(sql, dict):
            sql = next(v for k, v in sql.items() if letter in k)
        return (sql,) if isinstance(sql, str) else sql

    def expect_for(self, letter: str, protocol: str) -> str:
        """The expectation for a strategy letter and protocol: keys "SN" (letters) or "C:simple" (per protocol)."""
        if self.multi and protocol == "extended":
            return "deny"
        e = self.expect
        if isinstance(e, str):
            return e
        for key, value in e.items():
            letters, _, proto = key.partition(":")
            if letter in letters and proto == protocol:
                return value
        return next(v for k, v in e.items() if letter in k and ":" not in k)


def _last_rows(results: list[Result]) -> Result:
    rows = [r for r in results if r.kind == "rows"]
    assert rows, f"no row result in {[r.kind for r in results]}"
    return rows[-1]


def count_is(table: str) -> Check:
    def check(results: list[Result], actor: Actor) -> None:
        assert _last_rows(results).rows[0][0] == str(actor.counts[table])
    return check


def nrows_is(table: str) -> Check:
    def check(results: list[Result], actor: Actor) -> None:
        assert len(_last_rows(results).rows) == actor.counts[table]
    return check


def tag_is(verb: str, table: str) -> Check:
    def check(results: list[Result], actor: Actor) -> None:
        tags = [r.tag for r in results if r.tag.startswith(verb)]
        assert tags and tags[-1].split()[-1] == str(actor.counts[table]), tags
    return check


def copy_lines_is(table: str, header: int = 0) -> Check:
    def check(results: list[Result], actor: Actor) -> None:
        copies = [r for r in results if r.kind == "copy_out"]
        assert copies and len(copies[-1].copy.splitlines()) == actor.counts[table] + header
    return check


def value_is(value: str) -> Check:
    def check(results: list[Result], actor: Actor) -> None:
        assert _last_rows(results).rows[0][0] == value
    return check


def own_tenant_cells(results: list[Result], actor: Actor) -> None:
    last = _last_rows(results)
    assert last.rows, "expected rows"
    assert {row[0] for row in last.rows} == {actor.key}


def own_context_value(results: list[Result], actor: Actor) -> None:
    assert _last_rows(results).rows == [(actor.key,)]


def _assert_column(results: list[Result], index: int, value: str) -> None:
    rows = _last_rows(results).rows
    assert rows and {r[index] for r in rows} == {value}, {r[index] for r in rows}


def own_tenant_cells_if_shared(results: list[Result], actor: Actor) -> None:
    if actor.strategy in ("shared", "norls"):
        own_tenant_cells(results, actor)


def last_empty(results: list[Result], actor: Actor) -> None:
    assert _last_rows(results).rows == []


def all_null(results: list[Result], actor: Actor) -> None:
    """Every cell of the last row result is NULL: the object is hidden exactly as a missing one."""
    rows = _last_rows(results).rows
    assert rows and all(cell is None for row in rows for cell in row), rows


def cells_alike(results: list[Result], actor: Actor) -> None:
    """Every cell of the one row is the first one (a search_path set and read back in one statement)."""
    rows = _last_rows(results).rows
    assert len(rows) == 1 and len(set(rows[0])) == 1, rows


def cells_are(value: str, step: int = -1) -> Check:
    """Every cell of the rows of the `step`-th result that has rows is `value`."""
    def check(results: list[Result], actor: Actor) -> None:
        rows = [r for r in results if r.kind == "rows"][step].rows
        assert rows and {c for row in rows for c in row} == {value}, rows
    return check


def first_cell_is(value: str) -> Check:
    def check(results: list[Result], actor: Actor) -> None:
        assert _last_rows(results).rows[0][0] == value, _last_rows(results).rows
    return check


_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")


def same_plan_each_step(results: list[Result], actor: Actor) -> None:
    """Every EXPLAIN step shows the same plan once the constants the query spelled are blanked out (a value only
    another tenant has and one nobody has), and no estimate at all."""
    plans = ["\n".join(c or "" for row in r.rows for c in row) for r in results if r.kind == "rows"]
    assert len(plans) >= 2, plans
    blanked = {_STRING_LITERAL.sub("'?'", p) for p in plans}
    assert len(blanked) == 1, plans
    for word in ("rows=", "cost=", "Plan Rows", "Total Cost", "Plan Width"):
        assert word not in plans[0], plans[0]


def plan_without_estimates(results: list[Result], actor: Actor) -> None:
    """The last step's EXPLAIN output: a plan, with no estimate in it."""
    plan = "\n".join(c or "" for row in _last_rows(results).rows for c in row)
    assert plan and "cost=" not in plan and "rows=" not in plan, plan


def scrubbed_statistics(results: list[Result], actor: Actor) -> None:
    """pg_class of a tenant-scoped table and its index: reltuples -1, relpages and relallvisible 0."""
    rows = _last_rows(results).rows
    assert rows and {row[1:] for row in rows} == {("-1", "0", "0")}, rows


def plan_uses_index(results: list[Result], actor: Actor) -> None:
    """EXPLAIN output: the client's key predicate reaches the table's index (no fence under forced RLS; the norls
    tenant, whose filters are all fences, reads the tenant's rows and filters them instead)."""
    plan = "\n".join(row[0] for row in _last_rows(results).rows)
    assert ("Index" in plan) != (actor.strategy == "norls"), plan


def row_typed(index: int) -> Check:
    """Column `index` of the last result is not of an anonymous row type (record / record[]) where forced RLS
    backs the tables (the norls tenant's fenced wrappers keep `record`)."""
    def check(results: list[Result], actor: Actor) -> None:
        if actor.strategy != "norls":
            assert _last_rows(results).types[index] not in (2249, 2287), _last_rows(results).types
    return check


SN, C, D, ALL = "SN", "C", "D", "SNCD"
_LOOKUP = "SELECT set_config(name, '{}', false) FROM pg_settings WHERE name = '{}'"  # pg_dump's form
# A name given as a parameter: a string literal through the simple protocol (checked when decided, refused when it
# names another schema), a bound value through the extended protocol (guarded at run time: NULL, like a missing one).
BY_VALUE = {"C:simple": "deny", "C:extended": "ok"}

# Known engine gaps, recorded as strict xfails (they start failing loudly the day they are fixed).
GAP_SYSTEM_COLUMNS = ("wrong result: without forced RLS (a fence), system columns (ctid, xmin, tableoid) of a "
                      "tenant-scoped table are lost in the filtered subquery `(SELECT * FROM t WHERE … OFFSET 0) t`, "
                      "so the query fails with 42703 (with forced RLS the predicate goes into the WHERE clause)")
NEW_CUSTOMER = ("INSERT INTO customers (id, name, email, segment, created_at, is_active) "
                "VALUES (1990002, 'new', 'new@new.example', 'Consumer', '2025-01-01', true)")
NEW_CUSTOMER_SN = NEW_CUSTOMER + " RETURNING tenant_id"
NEW_CUSTOMER_CD = NEW_CUSTOMER + " RETURNING id"
FOREIGN_ORDER = ("INSERT INTO orders (id, tenant_id, customer_id, order_date, status, channel, amount) "
                 "VALUES (1990001, {v}, 100002, '2025-01-01', 'paid', 'web', 1)")

ATTACKS: list[Attack] = [
    # --- qualified names, other schemas, other databases -------------------------------------------------------
    Attack("qual_other_schema", "SELECT * FROM two_co.orders", C, "deny", by="missing"),
    Attack("qual_other_schema_quoted", 'SELECT * FROM "two_co"."customers"', C, "deny", by="missing"),
    Attack("qual_other_schema_case_folded", "SELECT * FROM TWO_CO.Customers", C, "deny", by="missing"),
    Attack("qual_three_part_other_db", "SELECT * FROM <<otherdb>>.public.orders", "SND", "deny"),
    Attack("qual_three_part_other_schema", "SELECT * FROM bi_schema.two_co.orders", C, "deny"),
    Attack("qual_three_part_own_db", "SELECT count(*) FROM <<db>>.public.orders", "SND", "any"),
    Attack("qual_public_legacy_table", "SELECT * FROM public.legacy_orders", C, "deny", by="missing"),
    Attack("qual_join_other_schema", "SELECT o.id FROM orders o JOIN two_co.customers c ON c.id = o.customer_id",
           C, "deny", by="missing"),
    Attack("qual_scalar_subquery_other_schema", "SELECT (SELECT count(*) FROM ghost_co.orders)", C, "deny",
           by="missing"),
    Attack("qual_regclass_literal", "SELECT 'two_co.orders'::regclass::oid", C, "deny", by="missing"),
    Attack("qual_to_regclass", "SELECT to_regclass('two_co.customers')", C, "deny", by="missing"),
    Attack("qual_schema_qualified_own", "SELECT count(*) FROM public.orders", SN, "same"),
    Attack("qual_foreign_tenant_literal", "SELECT * FROM orders WHERE tenant_id = 'bigco'", SN, "empty"),
    Attack("qual_foreign_tenant_param", "SELECT * FROM orders WHERE tenant_id = %s", SN, "empty",
           params=("bigco",)),
    Attack("qual_any_tenant_array_param", "SELECT DISTINCT tenant_id FROM orders WHERE tenant_id = ANY(%s::text[])",
           SN, "same", params=("{acme,bigco,smallco,ghostco}",)),
    Attack("qual_foreign_id_range", "SELECT * FROM orders WHERE id NOT BETWEEN <<lo>> AND <<hi>>", ALL, "empty"),
    Attack("qual_foreign_customer_param", "SELECT count(*) FROM orders WHERE customer_id = ANY(%s::int[])", ALL,
           "same", params=("{200001,200002,600001,900001,100001,500001,800001}",)),
    Attack("qual_type_other_schema", "SELECT NULL::two_co.orders", C, "deny", by="missing"),
    Attack("qual_operator_other_schema", "SELECT 1 OPERATOR(two_co.+) 1", C, "deny", by="missing"),
    Attack("qual_collation_other_schema", 'SELECT name FROM customers ORDER BY name COLLATE two_co."C"', C, "deny",
           by="missing"),
    Attack("qual_function_other_schema", "SELECT two_co.now()", C, "deny", by="proxy"),  # as for no_co.now()
    Attack("qual_regnamespace_literal", "SELECT 'two_co'::regnamespace::oid", C, "deny", by="missing"),
    Attack("qual_has_table_privilege", "SELECT has_table_privilege('two_co.orders', 'SELECT')", C, "deny",
           by="missing"),
    # An OID or a name given as a value (parameter, number, expression, column) is checked while the statement runs:
    # another tenant's object gives NULL, exactly like one that does not exist.
    # (Through the simple protocol the value arrives as a string literal and is checked when decided: refused.)
    Attack("qual_regclass_param", "SELECT %s::regclass::oid", C, BY_VALUE, by="missing", params=("two_co.orders",),
           check=all_null),
    Attack("qual_regclass_param_missing", "SELECT %s::regclass::oid", C, BY_VALUE, by="missing",
           params=("no_co.orders",), check=all_null),
    Attack("qual_regnamespace_param", "SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace", C,
           BY_VALUE, by="missing", params=("two_co",), check=first_cell_is("0")),
    Attack("qual_regclass_oid_number", "SELECT (SELECT min(oid) FROM pg_namespace)::int::regclass::text", C, "any"),
    Attack("qual_regclass_oid_string", "SELECT '16384'::regclass::text", C, "any"),
    Attack("qual_regclass_expression", "SELECT ('two' || '_co.orders')::regclass::oid", C, "ok", check=all_null),
    Attack("qual_relation_size_param", "SELECT pg_total_relation_size(%s)", C, BY_VALUE, by="missing",
           params=("two_co.orders",), check=all_null),
    Attack("qual_regnamespace_from_column", "SELECT n::regnamespace::oid FROM (VALUES ('two_co')) v(n)", C, "ok",
           check=all_null),
    Attack("qual_regnamespace_from_column_missing", "SELECT n::regnamespace::oid FROM (VALUES ('no_co')) v(n)", C,
           "ok", check=all_null),
    Attack("catalog_oid_scan_regclass",
           "SELECT string_agg(g::regclass::text, ',') FROM generate_series(16384, 17384) g"
           " WHERE g::regclass::text LIKE '%%.%%'", C, "any"),
    # --- other tenants' OIDs through every conversion (literal, parameter, column, generate_series, subquery) ------
    Attack("oid_attrelid_regclass", "SELECT DISTINCT attrelid::regclass::text FROM pg_attribute", ALL, "any"),
    Attack("oid_attrelid_unfiltered_pg_depend", "SELECT DISTINCT objid::regclass::text, refobjid::regclass::text "
           "FROM pg_depend WHERE classid = 'pg_class'::regclass", ALL, "any"),
    Attack("oid_regtype_scan", "SELECT string_agg(g::regtype::text, ',') FROM generate_series(16384, 40000) g", ALL,
           "any"),
    Attack("oid_regtype_cast_syntax", "SELECT string_agg(CAST(g AS regtype)::text, ',') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("oid_regtype_array", "SELECT array_agg(g)::regtype[]::text FROM generate_series(16384, 20000) g", ALL,
           "any"),
    Attack("oid_regtype_aggregate", "SELECT max(g)::regtype::text FROM generate_series(16384, 40000) g", ALL, "any"),
    Attack("oid_regclass_set_returning", "SELECT generate_series(16384, 40000)::regclass::text", ALL, "any"),
    Attack("oid_regclass_volatile", "SELECT (16384 + (random() * 20000)::int)::regclass::text", ALL, "any"),
    Attack("oid_regclass_param_number", "SELECT %s::int::regclass::text", ALL, "any", params=(16500,)),
    Attack("oid_regclass_subquery", "SELECT (SELECT max(c) FROM generate_series(16384, 40000) c)::regclass::text",
           ALL, "any"),
    Attack("oid_format_type_scan", "SELECT string_agg(format_type(g::oid, NULL), ',') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("oid_oidvectortypes", "SELECT oidvectortypes(string_agg(g::text, ' ')::oidvector) FROM "
           "generate_series(16384, 16900) g", ALL, "any"),
    Attack("oid_pg_get_viewdef_scan", "SELECT string_agg(pg_get_viewdef(c.oid), ';') FROM "
           "(SELECT g::oid AS oid FROM generate_series(16384, 40000) g) c "
           "WHERE EXISTS (SELECT 1 FROM pg_class k WHERE k.oid = c.oid AND k.relkind = 'v')", ALL, "any"),
    Attack("oid_pg_get_viewdef_unfiltered", "SELECT pg_get_viewdef(g::oid) FROM generate_series(16384, 40000) g "
           "WHERE pg_get_viewdef(g::oid) IS NOT NULL LIMIT 50", ALL, "any"),
    Attack("oid_obj_description_scan", "SELECT string_agg(obj_description(g::oid, 'pg_class'), ';') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("oid_obj_description_any", "SELECT string_agg(obj_description(g::oid), ';') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("oid_col_description_scan", "SELECT string_agg(col_description(g::oid, 5), ';') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("oid_pg_description_rows", "SELECT string_agg(description, ';') FROM pg_description", ALL, "any"),
    Attack("oid_to_regtype_param", "SELECT typname FROM pg_type WHERE oid = to_regtype(%s)", C,
           {"C:simple": "deny", "C:extended": "empty"}, by="missing", params=("two_co.cat_mood",)),
    Attack("oid_to_regtype_param_own", "SELECT typname FROM pg_type WHERE oid = to_regtype(%s)", C, "ok",
           params=("one_co.cat_mood",), check=first_cell_is("cat_mood")),
    Attack("oid_to_regclass_column", "SELECT to_regclass(n) FROM (VALUES ('two_co.orders')) v(n)", C, "ok",
           check=all_null),
    Attack("oid_has_table_privilege_param", "SELECT has_table_privilege(%s, 'SELECT')", C, BY_VALUE, by="missing",
           params=("two_co.orders",), check=all_null),
    Attack("oid_relation_size_scan", "SELECT string_agg(g || ':' || pg_relation_size(g::regclass), ',') FROM "
           "generate_series(16384, 20000) g", ALL, "any"),
    # --- OIDs made object identifiers by PostgreSQL's type resolution, without a written conversion (implicit.py) ----
    Attack("implicit_case_scan", "SELECT string_agg(x::text, ',') FROM (SELECT CASE WHEN g > 0 THEN g ELSE "
           "NULL::regclass END AS x FROM generate_series(16384, 40000) g) s", ALL, "any"),
    Attack("implicit_case_regtype_scan", "SELECT string_agg((CASE WHEN false THEN 'int4'::regtype ELSE g END)::text,"
           " ',') FROM generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_coalesce_scan", "SELECT string_agg(COALESCE(NULL::regclass, g)::text, ',') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_greatest_scan", "SELECT string_agg(GREATEST('pg_class'::regclass, g)::text, ',') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_least_nullif_scan", "SELECT string_agg(LEAST(g, NULL::regtype)::text || NULLIF(g, "
           "'int4'::regtype)::text, ',') FROM generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_union_scan", "SELECT string_agg(x::text, ',') FROM (SELECT NULL::regclass AS x UNION ALL "
           "SELECT g FROM generate_series(16384, 40000) g) s", ALL, "any"),
    Attack("implicit_values_literals", "SELECT string_agg(v::text, ',') FROM (VALUES (NULL::regnamespace), "
           "('16384'), ('16390'), ('16400'), ('16450'), ('16500'), ('17000')) t(v)", ALL, "any"),
    Attack("implicit_values_scan", "SELECT string_agg(v::text, ',') FROM generate_series(16384, 40000) g, "
           "LATERAL (VALUES (NULL::regclass), (g)) t(v)", ALL, "any"),
    Attack("implicit_array_scan", "SELECT string_agg(array_to_string(ARRAY[NULL::regclass, g], ','), ',') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_array_append_scan", "SELECT string_agg(array_append(ARRAY['pg_class'::regclass], g)::text, "
           "',') FROM generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_subquery_column_scan", "SELECT string_agg(COALESCE(s.r, g)::text, ',') FROM (SELECT "
           "NULL::regtype AS r) s, generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_nested_union_max", "SELECT string_agg(x::text, ',') FROM (SELECT 'pg_class'::regclass AS x "
           "UNION SELECT g FROM generate_series(16384, 40000) g UNION SELECT 1259) s", ALL, "any"),
    Attack("implicit_catalog_column", "SELECT string_agg(COALESCE(NULLIF(t.typinput, t.typinput), g)::text, ',') "
           "FROM (SELECT typinput FROM pg_type LIMIT 1) t, generate_series(16384, 40000) g", ALL, "any"),
    # a name beside an object-identifier value is read by its input function: a hidden schema's answer is a
    # missing one's (NULL through the guard, or refused when decided in the schema strategy)
    Attack("implicit_array_position_name", "SELECT array_position(ARRAY['pg_class'::regclass], 'two_co.orders')", C,
           "deny", by="missing"),
    Attack("implicit_coalesce_name", "SELECT COALESCE(NULL::regclass, 'two_co.orders')", C, "deny", by="missing"),
    Attack("implicit_coalesce_param", "SELECT COALESCE(NULL::regclass, %s)", C, BY_VALUE, by="missing",
           params=("two_co.orders",), check=all_null),
    # a new table or view: no column of an object-identifier type (writes into it would convert without a guard)
    Attack("implicit_ctas_regclass", "CREATE TEMP TABLE bi_oids AS SELECT 'pg_class'::regclass AS r", ALL, "deny",
           by="proxy"),
    Attack("implicit_select_into_coalesce", "SELECT COALESCE(NULL::regclass, 1259) AS r INTO TEMP bi_oids", ALL,
           "deny", by="proxy"),
    Attack("implicit_ctas_catalog_star", "CREATE TEMP TABLE bi_types AS SELECT * FROM pg_type", ALL, "deny",
           by="proxy"),
    Attack("implicit_temp_view_regproc", "CREATE TEMP VIEW bi_procs AS SELECT typinput FROM pg_type", ALL, "deny",
           by="proxy"),
    Attack("implicit_function_column_scan", "SELECT string_agg(COALESCE(f, g)::text, ',') FROM pg_typeof(1) f, "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_row_field_scan", "SELECT string_agg(COALESCE((s).r, g)::text, ',') FROM (SELECT NULL::regtype "
           "AS r) s, generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_union_star", "SELECT * FROM (SELECT NULL::regclass) s UNION ALL SELECT g FROM "
           "generate_series(16384, 40000) g", ALL, "deny", by="proxy"),
    Attack("implicit_array_literal_cast", "SELECT string_agg(('{' || g || '}')::text::regclass[]::text, ',') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("implicit_array_literal_oids", "SELECT '{16384,16385,16386,16387,16388,16389,16390}'::regclass[]::text",
           ALL, "any"),
    # --- name-bearing types written another way (redteam-guards-1 F1-F5, nametypes.py): refused by the proxy ----------
    Attack("nametype_coldef_scan", "SELECT string_agg(x.c::text, ',') FROM generate_series(16384, 40000) g, "
           "jsonb_to_record(jsonb_build_object('c', g)) AS x(c regclass)", ALL, "deny", by="proxy"),
    Attack("nametype_coldef_roles", "SELECT x.* FROM jsonb_to_record('{\"n\":16384,\"r\":10}') AS x(n regnamespace, "
           "r regrole)", ALL, "deny", by="proxy"),
    Attack("nametype_rows_from_coldef", "SELECT * FROM ROWS FROM (json_to_record('{\"a\":\"16384\"}') AS "
           "(a regclass))", ALL, "deny", by="proxy"),
    Attack("nametype_coldef_param", "SELECT * FROM jsonb_to_recordset(jsonb_build_array(jsonb_build_object('c', "
           "%s::int))) AS x(c regclass)", ALL, "deny", by="proxy", params=(16385,)),
    Attack("nametype_array_spelling", "SELECT ('{' || string_agg(g::text, ',') || '}')::_regclass::text FROM "
           "generate_series(16384, 40000) g", ALL, "deny", by="proxy"),
    Attack("nametype_array_roles", "SELECT '{10,16384,16385,16386}'::pg_catalog._regrole", ALL, "deny", by="proxy"),
    Attack("nametype_array_param", "SELECT %s::_regclass::text", ALL, "deny", by="proxy",
           params=("{16384,16385,16386}",)),
    Attack("nametype_temp_array_column", "CREATE TEMP TABLE bi_arr (a _regclass, b _regnamespace)", ALL, "deny",
           by="proxy"),
    Attack("nametype_temp_row_array_column", "CREATE TEMP TABLE bi_seqs (a _pg_sequences)", ALL, "deny", by="proxy"),
    Attack("nametype_row_literal", "SELECT '(a,b,c,16385,1,1,1,1,f,1,1)'::pg_sequences", ALL, "deny", by="proxy"),
    Attack("nametype_row_constructor", "SELECT ROW('a','b','c',16385,1,1,1,1,false,1,1)::pg_sequences", ALL, "deny",
           by="proxy"),
    Attack("nametype_populate_record", "SELECT string_agg((jsonb_populate_record(null::pg_sequences, "
           "jsonb_build_object('data_type', g))).data_type::text, ',') FROM generate_series(16384, 40000) g", ALL,
           "deny", by="proxy"),
    Attack("nametype_populate_recordset", "SELECT * FROM jsonb_populate_recordset(null::pg_prepared_statements, "
           "'[{\"parameter_types\":[16384,16385]}]')", ALL, "deny", by="proxy"),
    Attack("nametype_ctas_coldef", "CREATE TEMP TABLE bi_t1 AS SELECT * FROM jsonb_to_record('{}') AS x(a regclass)",
           ALL, "deny", by="proxy"),
    Attack("nametype_ctas_row", "CREATE TEMP TABLE bi_t2 AS SELECT jsonb_populate_record(null::pg_sequences, '{}') r",
           ALL, "deny", by="proxy"),
    Attack("nametype_json_value_returning", "SELECT json_value('16385', '$' RETURNING regclass)", ALL, "deny",
           by="proxy"),
    # qualified spellings of || (redteam-guards-2 G3): the same operator, refused like the plain one
    Attack("guards2_qualified_concat_scan", "SELECT string_agg((ARRAY[NULL::regclass] OPERATOR(pg_catalog.||) "
           "g)::text, ',') FROM generate_series(16384, 40000) g", SN + C, "deny", by="proxy"),
    Attack("guards2_qualified_concat_roles", "SELECT string_agg((ARRAY[NULL::regrole] OPERATOR(pg_catalog.||) "
           "g)::text, ',') FROM generate_series(16384, 40000) g", ALL, "deny", by="proxy"),
    Attack("guards2_qualified_concat_literal", "SELECT 16385 OPERATOR(pg_catalog.||) ARRAY[NULL::regrole]", ALL, "ok",
           check=first_cell_is("{NULL,NULL}")),
    Attack("guards2_qualified_concat_param", "SELECT (ARRAY[NULL::regclass] OPERATOR(pg_catalog.||) %s::int)::text",
           SN + C, "deny", by="proxy", params=(16385,)),
    # lag/lead's default converted to the value's reg* type (redteam-guards-2 G1): refused
    Attack("guards2_lag_default_scan", "SELECT string_agg(x::text, ',') FROM (SELECT lag(NULL::regclass, 1, g::oid) "
           "OVER (PARTITION BY g) AS x FROM generate_series(16384, 40000) g) s", SN + C, "deny", by="proxy"),
    Attack("guards2_lead_value_anchor", "SELECT lead(16385, 0, NULL::regclass) OVER ()", SN + C, "any",
           check=all_null),  # (the policy cache reads the literal as a parameter: guarded, NULL)
    Attack("guards2_lag_roles", "SELECT lag(NULL::regrole, 1, g::oid) OVER (PARTITION BY g) FROM "
           "generate_series(10, 40000) g", ALL, "deny", by="proxy"),
    Attack("guards2_lag_typeof_param", "SELECT lag(pg_typeof(1), 1, %s::int::oid) OVER ()", SN + C, "deny",
           by="proxy", params=(16385,)),
    # populate functions over a row holding a reg* field (redteam-guards-2 G2): refused unless NULL::<named type>
    Attack("guards2_populate_row_scan", "SELECT string_agg(jsonb_populate_record(ROW(NULL::regclass), "
           "jsonb_build_object('f1', g))::text, ',') FROM generate_series(16384, 40000) g", ALL, "deny", by="proxy"),
    Attack("guards2_populate_subselect_row", "SELECT jsonb_populate_record(r, '{\"x\":16385}') FROM (SELECT "
           "NULL::regclass AS x) r", ALL, "deny", by="proxy"),
    Attack("guards2_populate_recordset_roles", "SELECT jsonb_populate_recordset(ROW(NULL::regrole, "
           "NULL::regnamespace), '[{\"f1\":10,\"f2\":16385}]')", ALL, "deny", by="proxy"),
    Attack("guards2_populate_param", "SELECT jsonb_populate_record(ROW(NULL::regtype), jsonb_build_object('f1', "
           "%s::int))::text", ALL, "deny", by="proxy", params=(16385,)),
    Attack("guards2_populate_named_type", "SELECT count(*) FROM jsonb_populate_recordset(NULL::orders, "
           "'[{\"id\":1},{\"id\":2}]')", ALL, "ok", check=first_cell_is("2")),
    # anchors from the catalog and renamed columns (F5): guarded, or refused where a rename cannot be followed
    Attack("nametype_basetype_coalesce_scan", "SELECT string_agg(COALESCE(pg_basetype(NULL), g)::text, ',') FROM "
           "generate_series(16384, 40000) g", ALL, "any"),
    Attack("nametype_basetype_union_scan", "SELECT string_agg(x::text, ',') FROM (SELECT pg_basetype(NULL) AS x "
           "UNION ALL SELECT g FROM generate_series(16384, 40000) g) s", ALL, "any"),
    Attack("nametype_foreign_keys_column_scan", "SELECT string_agg(COALESCE(CASE WHEN false THEN f.fktable END, g)"
           "::text, ',') FROM (SELECT * FROM pg_get_catalog_foreign_keys() LIMIT 1) f, generate_series(16384, 40000) g",
           ALL, "any"),
    Attack("nametype_cte_alias_rename_scan", "WITH a AS (SELECT NULL::regclass AS r) SELECT string_agg(COALESCE(z, g)"
           "::text, ',') FROM a AS b(z), generate_series(16384, 40000) g", ALL, "any"),
    Attack("nametype_join_alias_rename", "WITH a AS (SELECT NULL::regclass AS r) SELECT COALESCE(j.z, 16385) FROM "
           "(a CROSS JOIN (SELECT 1) q) AS j(z, w)", ALL, "deny", by="proxy"),
    Attack("nametype_unnest_second_column_scan", "SELECT string_agg(COALESCE(n, g)::text, ',') FROM unnest(ARRAY[1], "
           "'{NULL}'::regtype[]) AS u(m, n), generate_series(16384, 40000) g", ALL, "any"),
    # an IN list of two items or more resolves to one type with its left side (F6): a name in it is read by regclassin
    Attack("nametype_in_list_name", "SELECT 'pg_class'::regclass IN (0, 'two_co.orders')", C, "deny", by="missing"),
    Attack("nametype_in_list_param", "SELECT 'pg_class'::regclass IN (%s, 0)", C, BY_VALUE, by="missing",
           params=("two_co.orders",)),
    Attack("nametype_in_list_typeof", "SELECT pg_typeof(NULL) IN (0, 'two_co.orders')", C, "deny", by="missing"),
    # --- role names: through every catalog and function --------------------------------------------------------------
    Attack("role_pg_roles", "SELECT rolname FROM pg_roles", ALL, "any"),
    Attack("role_pg_user", "SELECT usename FROM pg_user", ALL, "any"),
    Attack("role_pg_group", "SELECT groname FROM pg_group", ALL, "any"),
    Attack("role_pg_auth_members", "SELECT roleid::regrole::text, member::regrole::text FROM pg_auth_members", ALL,
           "any"),
    Attack("role_regrole_scan", "SELECT string_agg(g::regrole::text, ',') FROM generate_series(10, 40000) g", ALL,
           "any"),
    Attack("role_to_regrole_literal", "SELECT to_regrole('pgt_bi_two')", ALL, "ok", check=all_null),
    Attack("role_regrole_literal", "SELECT 'pgt_bi_two'::regrole", ALL, "ok", check=all_null),
    Attack("role_regrole_param", "SELECT %s::regrole::oid", ALL, "ok", params=("pgt_bi_two",), check=all_null),
    Attack("role_pg_has_role", "SELECT pg_has_role('pgt_bi_two', 'MEMBER')", ALL, "ok", check=all_null),
    Attack("role_pg_has_role_param", "SELECT pg_has_role(%s, 'USAGE')", ALL, "ok", params=("pgt_bi_two",),
           check=all_null),
    Attack("role_has_table_privilege", "SELECT has_table_privilege('pgt_bi_two', 'orders', 'SELECT')", ALL, "ok",
           check=all_null),
    Attack("role_has_schema_privilege", "SELECT has_schema_privilege('pgt_bi_two', 'pg_catalog', 'USAGE')", ALL,
           "ok", check=all_null),
    Attack("role_pg_get_userbyid_scan", "SELECT string_agg(pg_get_userbyid(g::oid), ',') FROM "
           "generate_series(16384, 40000) g WHERE pg_get_userbyid(g::oid) NOT LIKE 'unknown%%'", ALL, "any"),
    Attack("role_acldefault", "SELECT string_agg(acldefault('r', g::oid)::text, ',') FROM "
           "generate_series(16384, 20000) g", ALL, "any"),
    Attack("role_acl_pg_class", "SELECT relname, relacl::text FROM pg_class WHERE relacl IS NOT NULL", ALL, "any"),
    Attack("role_acl_pg_namespace", "SELECT nspname, nspacl::text FROM pg_namespace", ALL, "any"),
    Attack("role_acl_pg_database", "SELECT datname, datacl::text FROM pg_database", ALL, "any"),
    Attack("role_acl_explode", "SELECT DISTINCT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a",
           ALL, "any"),
    Attack("role_acl_columns", "SELECT attname, attacl::text FROM pg_attribute WHERE attacl IS NOT NULL", ALL,
           "any"),
    Attack("role_policies", "SELECT tablename, roles::text FROM pg_policies", ALL, "any"),
    Attack("role_owner_of_own_tables", "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class", ALL, "any"),
    # --- planner statistics and activity counters (shared strategy: computed over every tenant's rows) -------------
    Attack("stats_explain_other_tenant_value", ("EXPLAIN SELECT * FROM orders WHERE tenant_id = 'bigco'",
                                                "EXPLAIN SELECT * FROM orders WHERE tenant_id = 'nobody'"),
           SN, "ok", check=same_plan_each_step),
    Attack("stats_explain_prefix_search", ("EXPLAIN SELECT * FROM orders WHERE tenant_id >= 'b' AND tenant_id < 'c'",
                                           "EXPLAIN SELECT * FROM orders WHERE tenant_id >= 'x' AND tenant_id < 'y'"),
           SN, "ok", check=same_plan_each_step),
    Attack("stats_explain_json", ("EXPLAIN (FORMAT JSON) SELECT * FROM customers WHERE segment = 'Consumer'",
                                  "EXPLAIN (FORMAT JSON) SELECT * FROM customers WHERE segment = 'nobody'"),
           SN, "ok", check=same_plan_each_step),
    Attack("stats_explain_costs_on", "EXPLAIN (COSTS ON) SELECT * FROM orders", SN, "deny", by="proxy"),
    Attack("stats_explain_costs_true", "EXPLAIN (FORMAT YAML, COSTS true) SELECT * FROM orders", SN, "deny",
           by="proxy"),
    Attack("stats_pg_class_estimates", "SELECT relname, reltuples::text, relpages::text, relallvisible::text "
           "FROM pg_class WHERE relname IN ('orders', 'orders_pkey', 'customers')", SN, "ok",
           check=scrubbed_statistics),
    # red team round 3 R6: the system catalogs hold every tenant's objects; their counters and estimates moved with
    # another tenant's DDL (n_tup_ins of pg_attribute) and counted hidden relations (n_live_tup of pg_class)
    Attack("stats_sys_tables_catalog_counters", "SELECT n_tup_ins, n_tup_del, n_live_tup, n_dead_tup, seq_scan "
           "FROM pg_stat_sys_tables WHERE relname IN ('pg_attribute', 'pg_class', 'pg_namespace')", "SNC", "ok",
           check=all_null),
    Attack("stats_all_tables_catalog_counters", "SELECT n_tup_ins, n_live_tup FROM pg_stat_all_tables "
           "WHERE relname = 'pg_class'", "SNC", "ok", check=all_null),
    Attack("stats_statio_catalog_counters", "SELECT heap_blks_read, heap_blks_hit FROM pg_statio_sys_tables "
           "WHERE relname = 'pg_attribute'", "SNC", "ok", check=all_null),
    Attack("stats_statio_catalog_index_counters", "SELECT idx_blks_read, idx_blks_hit FROM pg_statio_sys_indexes "
           "WHERE indexrelname = 'pg_class_oid_index'", "SNC", "ok", check=all_null),
    Attack("stats_pg_class_catalog_estimates", "SELECT relname, reltuples::text, relpages::text, relallvisible::text "
           "FROM pg_class WHERE relname IN ('pg_class', 'pg_attribute')", "SNC", "ok", check=scrubbed_statistics),
    # red team 7 F2/F3: the shared catalogs' statistics are the cluster's, in the database strategy too: pg_stats'
    # histogram of pg_database.datname listed every database, their counters counted databases, roles and every
    # backend start of every tenant, their sizes grew with each
    Attack("stats_shared_catalog_histograms", "SELECT attname, most_common_vals::text, histogram_bounds::text "
           "FROM pg_stats WHERE tablename IN ('pg_database', 'pg_authid', 'pg_auth_members', 'pg_shdescription')",
           ALL, {"SNC": "deny", "D": "empty"}),
    Attack("stats_shared_catalog_counters", "SELECT n_live_tup, n_tup_ins, idx_scan, seq_scan FROM "
           "pg_stat_all_tables WHERE relname IN ('pg_database', 'pg_authid', 'pg_db_role_setting')", ALL, "ok",
           check=all_null),
    Attack("stats_shared_catalog_index_counters", "SELECT idx_scan, idx_tup_read FROM pg_stat_all_indexes "
           "WHERE indexrelname IN ('pg_database_datname_index', 'pg_authid_rolname_index')", ALL, "ok",
           check=all_null),
    Attack("stats_shared_catalog_estimates", "SELECT relname, reltuples::text, relpages::text, "
           "relallvisible::text FROM pg_class WHERE relname IN ('pg_database', 'pg_authid')", ALL, "ok",
           check=scrubbed_statistics),
    # red team 8a F5/F8: EXPLAIN of a catalog in the database strategy (the shared catalogs' estimates count the
    # cluster's databases and roles) was sent with COSTS OFF as in the schema strategy; red team 9a7 H8: the plan's
    # shape still followed the cluster's database count: EXPLAIN of a filtered catalog is refused in every strategy
    Attack("stats_shared_catalog_explain", "EXPLAIN SELECT 1 FROM pg_database WHERE datname > 'a'", ALL, "deny",
           by="proxy"),
    Attack("stats_shared_catalog_size", "SELECT pg_total_relation_size('pg_database'), "
           "pg_relation_size('pg_catalog.pg_authid'), pg_table_size('pg_shdescription'::regclass)", ALL, "ok",
           check=all_null),
    Attack("stats_pg_stat_user_tables", "SELECT n_live_tup, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch, "
           "n_tup_ins, last_analyze FROM pg_stat_user_tables WHERE relname = 'orders'", SN, "ok", check=all_null),
    Attack("stats_pg_stat_user_indexes", "SELECT idx_scan, idx_tup_read, idx_tup_fetch FROM pg_stat_user_indexes "
           "WHERE relname = 'orders'", SN, "ok", check=all_null),
    Attack("stats_pg_statio_user_tables", "SELECT heap_blks_read, heap_blks_hit, idx_blks_hit FROM "
           "pg_statio_user_tables WHERE relname = 'orders'", SN, "ok", check=all_null),
    Attack("stats_table_size", "SELECT pg_total_relation_size('orders'), pg_relation_size('orders_pkey'), "
           "pg_table_size('customers'), pg_indexes_size('orders')", SN, "ok", check=all_null),
    Attack("stats_current_snapshot", "SELECT pg_current_snapshot()", ALL, "deny", by="proxy"),
    Attack("stats_txid_current", "SELECT txid_current()", ALL, "deny", by="proxy"),
    Attack("stats_snapshot_xmax", "SELECT pg_snapshot_xmax(pg_current_snapshot())", ALL, "deny", by="proxy"),
    Attack("stats_xact_commit_timestamp", "SELECT pg_xact_commit_timestamp(xmin) FROM countries LIMIT 1", ALL,
           "deny", by="proxy"),
    Attack("db_create_database", "CREATE DATABASE bi_evil", ALL, "deny", by="proxy"),
    Attack("db_rename_other_database", "ALTER DATABASE <<otherdb>> RENAME TO bi_x", ALL, "deny", by="proxy"),
    Attack("db_drop_other_database", "DROP DATABASE <<otherdb>>", ALL, "deny", by="proxy"),
    Attack("db_size_probe_other_database", "SELECT pg_database_size('<<otherdb>>')", ALL, "any"),
    # --- catalog hygiene --------------------------------------------------------------------------------------------
    Attack("catalog_pg_namespace", "SELECT nspname FROM pg_namespace", ALL, "ok"),
    Attack("catalog_pg_database", "SELECT datname FROM pg_database", ALL, "ok"),
    Attack("catalog_information_schema_tables", "SELECT table_schema, table_name FROM information_schema.tables",
           ALL, "ok"),
    Attack("catalog_regnamespace_names", "SELECT DISTINCT relnamespace::regnamespace::text FROM pg_class", ALL,
           "any"),
    Attack("catalog_describe_database_names",
           "SELECT DISTINCT pg_describe_object('pg_database'::regclass, dbid, 0) FROM pg_shdepend", ALL, "deny",
           by="proxy"),
    Attack("catalog_describe_database_oid_scan",
           "SELECT DISTINCT pg_describe_object('pg_database'::regclass, g, 0) FROM generate_series(1, 30000) g",
           ALL, "deny", by="proxy"),
    Attack("catalog_pg_stats_values",
           "SELECT schemaname, tablename, attname, most_common_vals::text, histogram_bounds::text FROM pg_stats"
           " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')", "SNC", "deny", by="proxy"),
    # a condition that fails on a row must never see a row the catalog filter hides (its value would be in the error)
    Attack("catalog_error_probe_relname", "SELECT relname FROM pg_class WHERE relname::int = 0", ALL, "any"),
    Attack("catalog_error_probe_nspname", "SELECT nspname FROM pg_namespace WHERE nspname::int = 1", ALL, "any"),
    Attack("catalog_error_probe_datname", "SELECT datname FROM pg_database WHERE datname::int = 1", ALL, "any"),
    Attack("catalog_error_probe_rolname", "SELECT rolname FROM pg_roles WHERE rolname::int = 1", ALL, "any"),
    Attack("catalog_error_probe_join", "SELECT c.relname FROM pg_class c JOIN pg_namespace n "
           "ON n.oid = c.relnamespace AND n.nspname::int = 1", ALL, "any"),
    Attack("catalog_error_probe_description", "SELECT 1 FROM pg_description WHERE description::int = 1", ALL, "any"),
    # ... nor through a subquery's output, a CTE, a set operation's arm or a correlated subquery (the CASE fails
    # only on a schema the schema tenant may not see, two_co)
    Attack("catalog_error_probe_subquery_output", "SELECT * FROM (SELECT CASE WHEN nspname LIKE 't%\\_co' THEN "
           "nspname::int END AS n FROM pg_namespace) s WHERE n = 0", ALL, "empty"),
    Attack("catalog_error_probe_cte", "WITH x AS (SELECT CASE WHEN nspname LIKE 't%\\_co' THEN nspname::int END "
           "AS n FROM pg_namespace) SELECT * FROM x WHERE n = 0", ALL, "empty"),
    Attack("catalog_error_probe_union_arm", "SELECT nspname FROM pg_namespace WHERE CASE WHEN nspname LIKE "
           "'t%\\_co' THEN nspname::int END = 0 UNION ALL SELECT nspname FROM pg_namespace WHERE false", ALL,
           "empty"),
    Attack("catalog_error_probe_correlated", "SELECT relname FROM pg_class c WHERE EXISTS (SELECT FROM "
           "pg_namespace n WHERE n.oid = c.relnamespace AND CASE WHEN n.nspname LIKE 't%\\_co' THEN "
           "n.nspname::int END = 0)", ALL, "empty"),
    Attack("catalog_union_arm_whole_rows", "SELECT * FROM pg_namespace WHERE false UNION ALL SELECT * FROM "
           "pg_namespace", ALL, "any"),
    Attack("catalog_pg_tables_schemanames", "SELECT DISTINCT schemaname FROM pg_tables", ALL, "any"),
    Attack("catalog_pg_stat_user_tables", "SELECT schemaname, relname, n_live_tup FROM pg_stat_user_tables", ALL,
           "any"),
    Attack("catalog_pg_indexes_schemanames", "SELECT DISTINCT schemaname FROM pg_indexes", ALL, "any"),
    Attack("catalog_format_type_names", "SELECT format_type(reltype, NULL) FROM pg_class WHERE relkind = 'r'", ALL,
           "any"),
    Attack("catalog_describe_schema_names",
           "SELECT DISTINCT pg_describe_object('pg_namespace'::regclass, relnamespace, 0) FROM pg_class", ALL, "deny",
           by="proxy"),
    # --- search_path: any SET is accepted, PostgreSQL only gets the schemas the tenant may use -----------------------
    Attack("sp_set_other_schema", {SN: ("SET search_path = pg_catalog", "SELECT count(*) FROM orders",
                                        "RESET search_path"),
                                   C: ("SET search_path = two_co", "SELECT count(*) FROM orders", "RESET search_path")},
           "SNC", "deny"),  # nothing the tenant may use is left: PostgreSQL's 42P01, never two_co.orders
    Attack("sp_other_tenant_first", {SN: ("SET search_path = two_co, one_co, public", "SELECT count(*) FROM orders",
                                          "RESET search_path"),
                                     C: ("SET search_path = two_co, one_co", "SELECT count(*) FROM orders",
                                         "RESET search_path"),
                                     D: ("SET search_path = two_co, public", "SELECT count(*) FROM orders",
                                         "RESET search_path")}, ALL, "ok", check=count_is("orders")),
    Attack("sp_other_tenant_quoted", ('SET search_path = "two_co", "ONE_CO", "one_co", public',
                                      "SELECT count(*) FROM orders", "RESET search_path"), ALL, "ok",
           check=count_is("orders")),
    Attack("sp_user_variable", ('SET search_path = "$user", two_co', "SELECT count(*) FROM orders",
                                "RESET search_path"), "SNC", "deny"),
    Attack("sp_empty", ("SET search_path = ''", "SELECT count(*) FROM orders", "RESET search_path"), ALL, "deny"),
    Attack("sp_pg_temp_first", {SN: ("SET search_path = pg_temp, two_co, public", "SELECT count(*) FROM orders",
                                     "RESET search_path"),
                                "CD": ("SET search_path = pg_temp, two_co, one_co, public",
                                       "SELECT count(*) FROM orders", "RESET search_path")}, ALL, "ok",
           check=count_is("orders")),
    Attack("sp_pg_temp_first_with_shadow", ("SET search_path = pg_temp, two_co, one_co, public",
                                            "CREATE TEMP TABLE orders (id int)", "SELECT count(*) FROM orders",
                                            "DROP TABLE orders", "SELECT count(*) FROM orders", "RESET search_path"),
           ALL, "ok", check=count_is("orders")),
    Attack("sp_pg_temp_last_with_shadow",
           {"SND": ("SET search_path = public, pg_temp", "CREATE TEMP TABLE orders (id int)",
                    "SELECT count(*) FROM orders", "DROP TABLE orders", "RESET search_path"),
            C: ("SET search_path = one_co, pg_temp", "CREATE TEMP TABLE orders (id int)",
                "SELECT count(*) FROM orders", "DROP TABLE orders", "RESET search_path")}, ALL, "ok",
           check=count_is("orders")),
    Attack("sp_set_local", {SN: ("BEGIN", "SET LOCAL search_path = pg_temp, two_co, public",
                                 "SELECT count(*) FROM orders", "ROLLBACK"),
                            "CD": ("BEGIN", "SET LOCAL search_path = two_co, one_co, public",
                                   "SELECT count(*) FROM orders", "ROLLBACK")}, ALL, "ok", check=count_is("orders")),
    Attack("sp_set_local_then_commit", ("BEGIN", "SET LOCAL search_path = two_co", "COMMIT",
                                        "SELECT count(*) FROM orders"), ALL, "ok", check=count_is("orders")),
    Attack("sp_set_config", {SN: ("SELECT set_config('search_path', 'pg_temp,two_co,public', false)",
                                  "SELECT count(*) FROM orders", "RESET search_path"),
                             "CD": ("SELECT set_config('search_path', 'two_co, one_co, public', false)",
                                    "SELECT count(*) FROM orders", "RESET search_path")}, ALL, "ok",
           check=count_is("orders")),
    Attack("sp_set_config_local", {SN: ("BEGIN", "SELECT set_config('search_path', 'two_co,public,pg_catalog', true)",
                                        "SELECT count(*) FROM orders", "COMMIT"),
                                   "CD": ("BEGIN", "SELECT set_config('search_path', 'two_co,one_co,public', true)",
                                          "SELECT count(*) FROM orders", "COMMIT")}, ALL, "ok",
           check=count_is("orders")),
    Attack("sp_set_config_param", ("SELECT set_config('search_path', %s, false)", "RESET search_path"), "SNC", "any",
           params=("two_co",)),  # a parameter is refused (extended); interpolated it is a literal (simple)
    Attack("sp_append_schema", ("SET search_path = one_co, two_co", "SELECT count(*) FROM orders",
                                "RESET search_path"), C, "ok", check=count_is("orders")),
    Attack("sp_computed_value",
           "SELECT set_config('search_path', current_setting('search_path') || ', two_co', false)", "SNC", "deny",
           by="proxy"),
    # red team round 3 R2: a read after set_config() in the same statement saw PostgreSQL's value (hidden left out);
    # read at run time, it is the client's value (R3: PREPARE, cursor, temporary view, named Parse alike)
    Attack("sp_set_config_and_read", ("SELECT set_config('search_path', '\"$user\", two_co, nix_co, public', false) "
                                      "AS sent, current_setting('search_path') AS pg_value", "RESET search_path"),
           "SNC", "ok", check=cells_alike),
    Attack("sp_set_config_and_pg_settings", ("SELECT set_config('search_path', '\"$user\", two_co, nix_co, public', "
                                             "false), (SELECT setting FROM pg_settings WHERE name = 'search_path')",
                                             "RESET search_path"), "SNC", "ok", check=cells_alike),
    Attack("sp_prepared_before_the_set", ("PREPARE sp_read AS SELECT current_setting('search_path'), (SELECT setting "
                                          "FROM pg_settings WHERE name = 'search_path')",
                                          "SET search_path = nix_co, two_co, public", "EXECUTE sp_read",
                                          "RESET search_path", "DEALLOCATE sp_read"), "SNC", "ok",
           check=cells_are("nix_co, two_co, public")),
    Attack("sp_cursor_before_the_set_local",
           ("BEGIN", "DECLARE sp_cur CURSOR FOR SELECT current_setting('search_path')",
            "SET LOCAL search_path = nix_co, two_co, public", "FETCH ALL FROM sp_cur", "ROLLBACK", "SHOW search_path"),
           "SNC", "ok",
           check=cells_are("nix_co, two_co, public", step=-2)),
    Attack("sp_set_marker_entry", "SET search_path = pg_pgtenant_path_6f6e655f636f, public", ALL, "deny",
           by="proxy"),  # the proxy's mark (settings.PATH_MARK): decoded by every read
    Attack("sp_set_config_marker_entry", "SELECT set_config('search_path', 'public,pg_pgtenant_path_6f6e', true)",
           ALL, "deny", by="proxy"),
    Attack("sp_rolled_back", ("BEGIN", "SET search_path = two_co", "ROLLBACK", "SELECT count(*) FROM orders"), ALL,
           "ok", check=count_is("orders")),
    Attack("sp_reset", ("RESET search_path", "SELECT count(*) FROM orders"), "SNC", "any"),
    Attack("sp_to_default", ("SET search_path TO DEFAULT", "SELECT count(*) FROM orders"), "SNC", "any"),
    Attack("sp_single_quoted_list", ("SET search_path = 'one_co, two_co'", "SELECT count(*) FROM orders",
                                     "RESET search_path"), C, "any"),
    Attack("sp_session_keyword", ("SET SESSION search_path TO two_co, one_co", "SELECT count(*) FROM orders",
                                  "RESET search_path"), C, "ok", check=count_is("orders")),
    Attack("sp_then_select_multi", "SET search_path = two_co; SELECT * FROM orders", C, "deny", multi=True),
    # --- the tenant setting (the RLS context) -----------------------------------------------------------------------
    Attack("ctx_set", "SET pgtenant.tenant_id = 'bigco'", ALL, "deny", by="proxy"),
    Attack("ctx_set_local_in_txn", ("BEGIN", "SET LOCAL pgtenant.tenant_id = 'bigco'", "SELECT * FROM orders",
                                    "ROLLBACK"), ALL, "deny", by="proxy"),
    Attack("ctx_set_session_to", "SET SESSION pgtenant.tenant_id TO 'bigco'", ALL, "deny", by="proxy"),
    Attack("ctx_set_quoted_name", 'SET "pgtenant"."tenant_id" = \'bigco\'', ALL, "deny", by="proxy"),
    Attack("ctx_set_upper_case", "SET PGTENANT.TENANT_ID = 'bigco'", ALL, "deny", by="proxy"),
    Attack("ctx_set_identifier_value", "SET pgtenant.tenant_id = bigco", ALL, "deny", by="proxy"),
    Attack("ctx_set_default", "SET pgtenant.tenant_id TO DEFAULT", ALL, "deny", by="proxy"),
    Attack("ctx_reset", "RESET pgtenant.tenant_id", ALL, "deny", by="proxy"),
    Attack("ctx_reset_all", ("RESET ALL", "SELECT count(*) FROM orders"), ALL, "ok", check=count_is("orders")),
    Attack("ctx_discard_all", ("DISCARD ALL", "SELECT count(*) FROM orders"), ALL, "ok", check=count_is("orders")),
    Attack("ctx_discard_then_select_multi", "DISCARD ALL; SELECT count(*) FROM orders", ALL, "deny", multi=True),
    Attack("ctx_select_then_reset_all_multi", "SELECT count(*) FROM orders; RESET ALL", ALL,
           "ok", multi=True, check=count_is("orders")),
    Attack("ctx_set_config", "SELECT set_config('pgtenant.tenant_id', 'bigco', false)", ALL, "deny", by="proxy"),
    Attack("ctx_set_config_local_in_txn",
           ("BEGIN", "SELECT set_config('pgtenant.tenant_id', 'bigco', true)", "SELECT * FROM orders", "ROLLBACK"),
           ALL, "deny", by="proxy"),
    Attack("ctx_set_config_mixed_case", "SELECT set_config('PgTenant.Tenant_Id', 'bigco', false)", ALL, "deny",
           by="proxy"),
    Attack("ctx_set_config_e_string", "SELECT set_config(E'pgtenant\\x2etenant_id', 'bigco', false)", ALL, "deny",
           by="proxy"),
    Attack("ctx_set_config_unicode_escape", "SELECT set_config(U&'pgtenant\\002etenant_id', 'bigco', false)", ALL,
           "deny", by="proxy"),
    Attack("ctx_set_config_dollar_quoted", "SELECT set_config($$pgtenant.tenant_id$$, $v$bigco$v$, false)", ALL,
           "deny", by="proxy"),
    Attack("ctx_set_config_concatenated", "SELECT set_config('pgtenant.' || 'tenant_id', 'bigco', false)", ALL,
           "deny", by="proxy"),
    Attack("ctx_set_config_params", "SELECT set_config(%s, %s, false)", ALL, "deny", by="proxy",
           params=("pgtenant.tenant_id", "bigco")),
    Attack("ctx_set_config_from_catalog",
           "SELECT set_config(name, 'bigco', false) FROM pg_settings WHERE name LIKE 'pgtenant%'", ALL, "deny",
           by="proxy"),
    Attack("ctx_set_config_never_evaluated",
           "SELECT 1 WHERE false AND set_config('pgtenant.tenant_id', 'bigco', false) IS NOT NULL", ALL, "deny",
           by="proxy"),
    Attack("ctx_set_config_nested", "SELECT upper(set_config('pgtenant.tenant_id', 'bigco', false))", ALL, "deny",
           by="proxy"),
    Attack("ctx_update_pg_settings", "UPDATE pg_settings SET setting = 'bigco' WHERE name = 'pgtenant.tenant_id'",
           ALL, "deny", by="proxy"),
    Attack("ctx_alter_role_set", "ALTER ROLE CURRENT_USER SET pgtenant.tenant_id = 'bigco'", ALL, "deny",
           by="proxy"),
    Attack("ctx_alter_database_set", "ALTER DATABASE <<db>> SET pgtenant.tenant_id = 'bigco'", ALL, "deny",
           by="proxy"),
    Attack("ctx_other_reserved_name", "SET pgtenant.debug = 'on'", ALL, "deny", by="proxy"),
    Attack("ctx_current_setting_is_own", "SELECT current_setting('pgtenant.tenant_id')",
           ALL, {SN: "ok", "CD": "any"}, check=own_context_value),
    Attack("ctx_show_is_own", "SHOW pgtenant.tenant_id", SN, "ok", check=own_context_value),
    Attack("ctx_show_all", "SHOW ALL", ALL, "ok"),
    Attack("ctx_pg_settings_reserved", "SELECT name, setting, reset_val, boot_val FROM pg_settings"
           " WHERE name LIKE 'pgtenant%'", ALL, "any"),
    # the server's plan dumps carry whole-table estimates: every other tenant's share of a shared table, catalog
    # counts of hidden schemas (red team 7 F1); EXPLAIN's COSTS OFF would be moot
    Attack("ctx_debug_print_plan_notices", ("SET client_min_messages = log", "SET debug_print_plan = on",
                                            "SELECT count(*) FROM orders"), ALL, "deny", by="proxy"),
    Attack("ctx_debug_print_rewritten_local", ("BEGIN", "SET LOCAL debug_print_rewritten = true",
                                               "SELECT count(*) FROM orders", "COMMIT"), ALL, "deny", by="proxy"),
    Attack("ctx_debug_print_parse_set_config", "SELECT set_config('debug_print_parse', 'on', false)", ALL, "deny",
           by="proxy"),
    # the server's memory is every tenant's (red team 7 F4): a hash aggregate held in 64GB of work_mem grew a backend
    # ~100 MB/s; the memory settings are capped (limits.max_work_mem & co.), temp_file_limit is the operator's
    Attack("res_work_mem_64gb", "SET work_mem = '64GB'", ALL, "deny", by="proxy"),
    Attack("res_hash_mem_local", ("BEGIN", "SET LOCAL hash_mem_multiplier = 1000", "COMMIT"), ALL, "deny",
           by="proxy"),
    Attack("res_work_mem_set_config", "SELECT set_config('work_mem', '1TB', false)", ALL, "deny", by="proxy"),
    Attack("res_temp_file_limit_off", "SET temp_file_limit = -1", ALL, "deny", by="proxy"),
    Attack("res_work_mem_within", ("SET work_mem = '64MB'", "SET max_parallel_workers_per_gather = 0",
                                   "SELECT count(*) FROM orders"), ALL, "ok", check=count_is("orders")),
    Attack("ctx_client_min_messages_debug", "SET client_min_messages = debug2", ALL, "deny", by="proxy"),
    Attack("ctx_client_min_messages_log_local", ("BEGIN", "SET LOCAL client_min_messages TO log", "COMMIT"), ALL,
           "deny", by="proxy"),
    Attack("ctx_client_min_messages_warning", ("SET client_min_messages = warning", "RESET client_min_messages",
                                               "SELECT count(*) FROM orders"), ALL, "ok", check=count_is("orders")),
    # red team 8a F7: the server's own check that a drained server's socket is gone stays on
    Attack("ctx_connection_check_off", "SET client_connection_check_interval = 0", ALL, "deny", by="proxy"),
    Attack("ctx_debug_print_plan_off", ("SET debug_print_plan = off", "RESET debug_print_plan",
                                        "SELECT count(*) FROM orders"), ALL, "ok", check=count_is("orders")),
    # pg_dump's default: the shared strategy forwards it as on (the proxy's filter already gives the tenant its whole
    # table); elsewhere PostgreSQL raises an error where a policy would hide rows (no backend role has BYPASSRLS)
    Attack("ctx_row_security_off", ("SET row_security = off", "SELECT count(*) FROM orders"), ALL, "ok",
           check=count_is("orders")),
    Attack("ctx_row_security_off_show", ("SET row_security = off", "SHOW row_security"), SN, "ok",
           check=first_cell_is("on")),
    Attack("ctx_session_replication_role", "SET session_replication_role = replica", ALL, "deny", by="proxy"),
    Attack("ctx_client_encoding", "SET client_encoding = 'SJIS'", ALL, "deny", by="proxy"),
    Attack("ctx_standard_conforming_strings_off", "SET standard_conforming_strings = off", ALL, "deny",
           by="proxy"),
    Attack("ctx_backslash_quote_multi", "SELECT 'a\\'; SET pgtenant.tenant_id = 'bigco'; -- '", ALL, "deny",
           multi=True),
    # --- role switching --------------------------------------------------------------------------------------------
    Attack("role_set_superuser", "SET ROLE postgres", ALL, "deny", by="proxy"),
    Attack("role_set_other_tenant_role", "SET ROLE pgt_bi_two", ALL, "deny", by="proxy"),
    Attack("role_reset", "RESET ROLE", ALL, "deny", by="proxy"),
    Attack("role_set_none", "SET ROLE NONE", ALL, "deny", by="proxy"),
    Attack("role_set_local_in_txn", ("BEGIN", "SET LOCAL ROLE postgres", "SELECT * FROM orders", "ROLLBACK"), ALL,
           "deny", by="proxy"),
    Attack("role_session_authorization", "SET SESSION AUTHORIZATION postgres", ALL, "deny", by="proxy"),
    Attack("role_reset_session_authorization", "RESET SESSION AUTHORIZATION", ALL, "deny", by="proxy"),
    Attack("role_set_config_role", "SELECT set_config('role', 'postgres', false)", ALL, "deny", by="proxy"),
    Attack("role_set_config_session_authorization",
           "SELECT set_config('session_authorization', 'postgres', false)", ALL, "deny", by="proxy"),
    Attack("role_grant_read_all_data", "GRANT pg_read_all_data TO CURRENT_USER", ALL, "deny", by="proxy"),
    Attack("role_create_superuser", "CREATE ROLE evil SUPERUSER LOGIN", ALL, "deny", by="proxy"),
    # --- startup packet --------------------------------------------------------------------------------------------
    Attack("startup_options_tenant", "", ALL, "deny", runner="startup",
           startup={"options": "-c pgtenant.tenant_id=bigco"}),
    Attack("startup_param_tenant", "", ALL, "deny", runner="startup", startup={"pgtenant.tenant_id": "bigco"}),
    Attack("startup_options_search_path", "", ALL, "deny", runner="startup",
           startup={"options": "-c search_path=two_co"}),
    Attack("startup_param_search_path", "", ALL, "deny", runner="startup", startup={"search_path": "two_co"}),
    # red team 8a F4: below notice the server's DEBUG/LOG lines show the statements it parsed (the proxy's rewrites,
    # a hidden schema's run-time marker where a missing one shows the client's text)
    Attack("startup_client_min_messages_debug", "", ALL, "deny", runner="startup",
           startup={"options": "-c client_min_messages=debug2"}),
    Attack("startup_client_min_messages_warning", "", ALL, "ok", runner="startup",
           startup={"client_min_messages": "warning"}),
    Attack("startup_options_role", "", ALL, "deny", runner="startup", startup={"options": "-c role=postgres"}),
    Attack("startup_options_session_authorization", "", ALL, "deny", runner="startup",
           startup={"options": "-c session_authorization=postgres"}),
    Attack("startup_options_row_security", "", ALL, "deny", runner="startup",
           startup={"options": "-c row_security=off"}),
    Attack("startup_options_no_space", "", ALL, "deny", runner="startup",
           startup={"options": "-cpgtenant.tenant_id=bigco"}),
    Attack("startup_options_long_form", "", ALL, "deny", runner="startup",
           startup={"options": "--pgtenant.tenant_id=bigco"}),
    Attack("startup_param_tenant_upper_case", "", ALL, "deny", runner="startup",
           startup={"PGTENANT.TENANT_ID": "bigco"}),
    Attack("startup_options_escaped_spaces", "", ALL, "any", runner="startup",
           startup={"options": "-c application_name=x\\ -c\\ pgtenant.tenant_id=bigco"}),
    Attack("startup_options_after_allowed", "", ALL, "deny", runner="startup",
           startup={"options": "-c application_name=bi -c pgtenant.tenant_id=bigco"}),
    Attack("startup_replication", "", ALL, "deny", runner="startup", startup={"replication": "database"}),
    Attack("startup_other_tenant_database", "", ALL, "deny", runner="startup", startup={"database": "<<otherdb>>"}),
    # --- names hidden by comments, quoting and escapes -------------------------------------------------------------
    Attack("hide_comment_in_qualified_name", "SELECT * FROM two_co/**/.orders", C, "deny", by="missing"),
    Attack("hide_whitespace_in_qualified_name", 'SELECT * FROM "two_co" . "orders"', C, "deny", by="missing"),
    Attack("hide_unicode_escaped_schema", 'SELECT * FROM U&"\\0074wo_co".orders', C, "deny", by="missing"),
    Attack("hide_unicode_escaped_table", 'SELECT count(*) FROM U&"\\006Frders"', ALL, "same"),
    Attack("hide_line_comment_where", "SELECT * FROM orders -- WHERE tenant_id = 'acme'\nWHERE tenant_id <> 'acme'",
           SN, "empty"),
    Attack("hide_block_comments_everywhere",
           "SELECT/**/count(*)/**/FROM/**/orders/**/WHERE/**/tenant_id<>'acme'", SN, "same"),
    Attack("hide_e_string_tenant_value", "SELECT * FROM orders WHERE tenant_id = E'big\\x63o'", SN, "empty"),
    Attack("hide_statement_in_dollar_quotes",
           "SELECT $x$; SET pgtenant.tenant_id = 'bigco'; $x$ AS s, count(*) FROM orders", ALL, "same"),
    Attack("hide_statement_in_nested_comment",
           "/* /* */ SET pgtenant.tenant_id = 'bigco'; */ SELECT count(*) FROM orders", ALL, "same"),
    Attack("hide_trailing_comment_statement", "SELECT count(*) FROM orders; -- ; SET pgtenant.tenant_id = 'bigco'",
           ALL, "same"),
    Attack("hide_dotted_alias", 'SELECT count(*) FROM orders AS "public.orders"', ALL, "same"),
    Attack("hide_quoted_upper_table", 'SELECT count(*) FROM "ORDERS"', ALL, "any"),
    # --- several statements in one Query --------------------------------------------------------------------------
    Attack("multi_select_then_set", "SELECT 1; SET pgtenant.tenant_id = 'bigco'", ALL, "deny", multi=True),
    Attack("multi_set_then_select", "SET pgtenant.tenant_id = 'bigco'; SELECT * FROM orders", ALL, "deny",
           multi=True),
    Attack("multi_txn_set_local",
           "BEGIN; SET LOCAL pgtenant.tenant_id = 'bigco'; SELECT * FROM orders; COMMIT", ALL, "deny", multi=True),
    Attack("multi_other_schema_second", "SELECT 1; SELECT * FROM two_co.orders", C, "deny", multi=True),
    Attack("multi_role_then_select", "SET ROLE postgres; SELECT * FROM orders", ALL, "deny", multi=True),
    # --- CTEs ----------------------------------------------------------------------------------------------------
    Attack("cte_plain", "WITH o AS (SELECT * FROM orders) SELECT count(*), sum(amount) FROM o", ALL, "same"),
    Attack("cte_recursive_constant",
           "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
           "SELECT r.n, count(o.id) FROM r CROSS JOIN orders o GROUP BY r.n", ALL, "same"),
    Attack("cte_recursive_walks_into_other_ranges",
           "WITH RECURSIVE c AS (SELECT id, 1 AS depth FROM orders WHERE id = (SELECT min(id) FROM orders) "
           "UNION ALL SELECT o.id, c.depth + 1 FROM c JOIN orders o ON o.id = c.id + 100000 WHERE c.depth < 9) "
           "SELECT count(*), max(depth) FROM c", ALL, "same"),
    Attack("cte_named_like_table", "WITH orders AS (SELECT * FROM orders) SELECT count(*) FROM orders", ALL, "same"),
    Attack("cte_materialized", "WITH x AS MATERIALIZED (SELECT name FROM customers) SELECT count(*) FROM x", ALL,
           "same"),
    Attack("cte_delete_returning", "WITH d AS (DELETE FROM order_lines RETURNING id) SELECT id FROM d", ALL, "ok",
           writes=True, check=nrows_is("order_lines")),
    Attack("cte_update_returning", "WITH u AS (UPDATE orders SET amount = amount RETURNING id) SELECT id FROM u",
           ALL, "ok", writes=True, check=nrows_is("orders")),
    Attack("cte_insert_foreign_tenant",
           "WITH i AS (INSERT INTO customers (id, tenant_id, name, email, segment, created_at, is_active) VALUES "
           "(1990003, 'bigco', 'x', 'x', 'Consumer', now(), true) RETURNING id) SELECT * FROM i", SN, "deny",
           by="proxy", writes=True),
    Attack("cte_insert_fills_own_tenant", {SN: f"WITH i AS ({NEW_CUSTOMER_SN}) SELECT tenant_id FROM i"}, SN, "ok",
           writes=True, check=own_tenant_cells),
    Attack("cte_select_into_temp",
           ("WITH x AS (SELECT * FROM orders) SELECT * INTO TEMP bi_t_x FROM x", "SELECT count(*) FROM bi_t_x"), ALL,
           "same"),
    # --- set operations, LATERAL, subqueries, windows ---------------------------------------------------------------
    Attack("union_names", "SELECT name FROM customers UNION SELECT name FROM products", ALL, "same"),
    Attack("union_all_tenant_ids", "SELECT tenant_id FROM orders UNION ALL SELECT tenant_id FROM customers "
           "UNION ALL SELECT tenant_id FROM events", SN, "same"),
    Attack("except_own_rows", "SELECT id FROM orders EXCEPT SELECT id FROM orders WHERE tenant_id = 'acme'", SN,
           "empty"),
    Attack("intersect", "SELECT customer_id FROM orders INTERSECT SELECT id FROM customers", ALL, "same"),
    Attack("lateral_sum", "SELECT c.id, x.total FROM customers c CROSS JOIN LATERAL "
           "(SELECT sum(o.amount) AS total FROM orders o WHERE o.customer_id = c.id) x", ALL, "same"),
    Attack("lateral_other_tenant", "SELECT c.id, x.id FROM customers c CROSS JOIN LATERAL "
           "(SELECT o.id FROM orders o WHERE o.tenant_id <> c.tenant_id LIMIT 1) x", SN, "empty"),
    Attack("lateral_left_join", "SELECT c.name, l.last_order FROM customers c LEFT JOIN LATERAL "
           "(SELECT max(order_date) AS last_order FROM orders o WHERE o.customer_id = c.id) l ON true", ALL, "same"),
    Attack("correlated_exists_other_tenant", "SELECT c.id FROM customers c WHERE EXISTS "
           "(SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.tenant_id <> c.tenant_id)", SN, "empty"),
    Attack("correlated_not_exists", "SELECT count(*) FROM customers c WHERE NOT EXISTS "
           "(SELECT 1 FROM orders o WHERE o.customer_id = c.id)", ALL, "same"),
    Attack("scalar_subqueries", "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM customers), "
           "(SELECT max(id) FROM events)", ALL, "same"),
    Attack("subqueries_in_having_and_order_by", "SELECT status, count(*) FROM orders GROUP BY status "
           "HAVING count(*) < (SELECT count(*) FROM order_lines) ORDER BY (SELECT max(id) FROM customers) + count(*)",
           ALL, "same"),
    Attack("in_subquery", "SELECT count(*) FROM products WHERE id IN (SELECT product_id FROM order_lines)", ALL,
           "same"),
    Attack("not_in_subquery", "SELECT count(*) FROM customers WHERE id NOT IN (SELECT customer_id FROM orders)",
           ALL, "same"),
    Attack("window_count_over_all", "SELECT id, count(*) OVER () AS n, sum(amount) OVER () AS total FROM orders",
           ALL, "same", check=lambda res, actor: _assert_column(res, 1, str(actor.counts["orders"]))),
    Attack("window_partition", "SELECT DISTINCT customer_id, count(*) OVER (PARTITION BY customer_id) FROM orders",
           ALL, "same"),
    Attack("window_rank_global", "SELECT id, rank() OVER (ORDER BY amount DESC, id) FROM orders", ALL, "same"),
    Attack("window_partition_by_tenant",
           "SELECT DISTINCT tenant_id, count(*) OVER (PARTITION BY tenant_id) FROM customers", SN, "same"),
    Attack("window_ntile_events", "SELECT ntile(4) OVER (ORDER BY occurred_at, id), id FROM events", ALL, "same"),
    Attack("table_statement", "TABLE orders", ALL, "same"),
    Attack("only_table", "SELECT count(*) FROM ONLY orders", ALL, "same"),
    Attack("only_parenthesized", "SELECT count(*) FROM ONLY (customers)", ALL, "same"),
    Attack("whole_row_alias", "SELECT o FROM orders o", ALL, "same"),
    Attack("whole_row_table_name", "SELECT orders FROM orders", ALL, "same"),
    Attack("row_to_json", "SELECT row_to_json(c) FROM customers c", ALL, "same"),
    Attack("schema_qualified_column", {SN: "SELECT public.orders.id FROM public.orders",
                                       C: "SELECT one_co.orders.id FROM one_co.orders",
                                       D: "SELECT public.orders.id FROM public.orders"}, ALL, "same"),
    Attack("full_outer_join", "SELECT count(*), count(o.id), count(c.id) FROM orders o "
           "FULL JOIN customers c ON c.id = o.customer_id", ALL, "same"),
    Attack("right_join", "SELECT p.id, count(l.id) FROM order_lines l RIGHT JOIN products p ON p.id = l.product_id "
           "GROUP BY p.id", ALL, "same"),
    Attack("natural_join", "SELECT count(*) FROM orders NATURAL JOIN customers", ALL, "same"),
    Attack("partition_read_directly", "SELECT count(*), min(id), max(id) FROM events_2024", SN, "same"),
    Attack("partitioned_parent_only", "SELECT count(*) FROM ONLY events", SN, "same"),
    Attack("view_with_tenant_column", "SELECT tenant_id, customer_id, revenue FROM customer_revenue", SN, "ok",
           check=nrows_is("customers")),
    # (shared strategy: SYSTEM and REPEATABLE of a scoped table are refused, rule row_sampling: red team 9a7 H6)
    Attack("tablesample_whole_table_would_cross_tenants", "SELECT count(*) FROM orders TABLESAMPLE BERNOULLI (100)",
           ALL, "same", check=count_is("orders")),
    Attack("tablesample_system_whole_table", "SELECT count(*) FROM orders TABLESAMPLE SYSTEM (100)",
           ALL, {"SN": "deny", "CD": "same"}, by="proxy", check=count_is("orders")),
    Attack("tablesample_bernoulli_or_true", "SELECT count(*), sum(amount) FROM orders TABLESAMPLE BERNOULLI (100) "
           "WHERE status <> 'x' OR true", ALL, "same"),
    Attack("tablesample_bernoulli_repeatable_or_true", "SELECT count(*), sum(amount) FROM orders TABLESAMPLE "
           "BERNOULLI (50) REPEATABLE (3) WHERE status <> 'x' OR true", ALL, {"SN": "deny", "CD": "same"}, by="proxy"),
    Attack("tablesample_system_or_true", "SELECT id, customer_id FROM orders TABLESAMPLE SYSTEM (50) REPEATABLE (9) "
           "WHERE true OR id < 0", ALL, {"SN": "deny", "CD": "same"}, by="proxy"),
    Attack("tablesample_tenant_column_or_true", "SELECT DISTINCT tenant_id FROM customers TABLESAMPLE BERNOULLI (100) "
           "WHERE tenant_id <> 'acme' OR true", SN, "same", check=own_tenant_cells),
    Attack("tablesample_arguments_read_tables", "SELECT count(*) FROM orders TABLESAMPLE BERNOULLI "
           "((SELECT count(*) FROM customers) * 0 + 100)", ALL, "same"),
    Attack("tablesample_repeatable_argument_reads_tables", "SELECT count(*) FROM customers TABLESAMPLE BERNOULLI "
           "(50) REPEATABLE ((SELECT max(id) FROM orders))", ALL, {"SN": "deny", "CD": "same"}, by="proxy"),
    Attack("tablesample_whole_row_join", "SELECT o, c.name FROM orders o TABLESAMPLE BERNOULLI (100) "
           "JOIN customers c ON c.id = o.customer_id OR true", ALL, "same", check=row_typed(0)),
    # --- whole-row references keep the table's row type (issue 22) ---------------------------------------------
    Attack("whole_row_row_to_json_or_true", "SELECT row_to_json(o), o FROM orders o WHERE o.status = 'x' OR true",
           ALL, "same", check=row_typed(1)),
    Attack("whole_row_to_jsonb_left_join", "SELECT to_jsonb(o), c FROM orders o LEFT JOIN customers c "
           "ON c.id = o.customer_id WHERE true OR o IS NULL", ALL, "same", check=row_typed(1)),
    Attack("whole_row_array_agg", "SELECT c.id, array_agg(o ORDER BY o.id) FROM customers c JOIN orders o "
           "ON o.customer_id = c.id OR false GROUP BY c.id", ALL, "same", check=row_typed(1)),
    Attack("whole_row_text_cast", "SELECT o::text FROM orders o FULL JOIN customers c ON c.id = o.customer_id "
           "WHERE o::text NOT LIKE '%x' OR true", ALL, "same"),
    Attack("whole_row_composite_comparison", "SELECT count(*), count(DISTINCT a) FROM orders a JOIN orders b "
           "ON a = b WHERE a IS NOT NULL OR true", ALL, "same"),
    Attack("whole_row_composite_in_subquery", "SELECT count(*) FROM orders o WHERE o IN "
           "(SELECT p FROM orders p WHERE p.amount > 0 OR true)", ALL, "same"),
    Attack("whole_row_star_in_function", "SELECT md5(row_to_json(o.*)::text), count(o.*) OVER () FROM orders o, "
           "customers c WHERE c.id = o.customer_id", ALL, "same"),
    Attack("whole_row_client_join_filter_other_tenant", "SELECT count(*), count(o) FROM "
           "(orders o JOIN (SELECT) z ON o.tenant_id <> 'acme')", SN, "same"),
    Attack("whole_row_system_columns_in_join", "SELECT o.xmin::text, c.xmin::text, o FROM orders o JOIN customers c "
           "ON c.id = o.customer_id ORDER BY o.id LIMIT 30", ALL, "same", check=row_typed(2),
           xfail={"norls": GAP_SYSTEM_COLUMNS}),
    Attack("values_join", "SELECT v.x, count(o.id) FROM (VALUES (1), (2)) v(x) LEFT JOIN orders o "
           "ON o.id % 2 = v.x - 1 GROUP BY v.x", ALL, "same"),
    Attack("for_update_locks_own_rows", "SELECT id FROM orders FOR UPDATE", ALL, "ok", writes=True,
           check=nrows_is("orders")),
    Attack("rewrite_inheritance_star", "SELECT count(*) FROM orders*", ALL, "same"),
    Attack("rewrite_spaced_qualified_name", {SN + D: "SELECT count(*) FROM public . orders",
                                             C: "SELECT count(*) FROM one_co . orders"}, ALL, "same"),
    Attack("rewrite_quoted_qualified_name", {SN + D: 'SELECT count(*) FROM "public"."orders"',
                                             C: 'SELECT count(*) FROM "one_co"."orders"'}, ALL, "same"),
    Attack("rewrite_column_alias_list", "SELECT count(x), count(DISTINCT y) FROM orders AS o(x, y)", ALL, "same"),
    Attack("rewrite_uescape_identifier", "SELECT count(*) FROM U&\"!006Frders\" UESCAPE '!'", ALL, "same"),
    Attack("rewrite_join_alias", "SELECT count(*), count(j.customer_id) FROM "
           "(orders o JOIN customers c ON c.id = o.customer_id) AS j", ALL, "same"),
    Attack("rewrite_cte_scope_inner_subquery", "SELECT (WITH orders AS (SELECT 1 AS id) SELECT count(*) FROM orders)"
           " AS cte_rows, (SELECT count(*) FROM orders) AS table_rows", ALL, "same"),
    Attack("rewrite_cte_in_from_subquery", "SELECT count(*) FROM (WITH orders AS (SELECT 1 AS id) "
           "SELECT id FROM orders) a, orders b", ALL, "same"),
    Attack("rewrite_cte_shadow_then_qualified",
           {SN + D: "WITH customers AS (SELECT * FROM orders) SELECT (SELECT count(*) FROM customers), "
                    "(SELECT count(*) FROM public.customers)",
            C: "WITH customers AS (SELECT * FROM orders) SELECT (SELECT count(*) FROM customers), "
               "(SELECT count(*) FROM one_co.customers)"}, ALL, "same"),
    Attack("rewrite_exists_table_statement", "SELECT count(*) FROM customers WHERE EXISTS (TABLE orders)", ALL,
           "same"),
    Attack("rewrite_lateral_unnest", "SELECT count(*) FROM orders o, LATERAL unnest(ARRAY[o.id, o.customer_id]) x",
           ALL, "same"),
    Attack("rewrite_self_join_same_name", {SN + D: "SELECT count(*) FROM public.orders AS orders "
                                                   "JOIN orders AS o2 ON o2.id = orders.id",
                                           C: "SELECT count(*) FROM one_co.orders AS orders "
                                              "JOIN orders AS o2 ON o2.id = orders.id"}, ALL, "same"),
    Attack("rewrite_or_true_predicate", "SELECT count(*) FROM orders WHERE tenant_id = 'acme' OR true", SN, "same"),
    Attack("rewrite_negated_own_tenant", "SELECT count(*) FROM orders WHERE NOT (tenant_id = 'acme')", SN, "same"),
    # ctid: where a row is stored; in a table shared by every tenant it counts the others' rows (redteam-guards-2 G8)
    Attack("rewrite_ctid_first_heap_tuple", "SELECT * FROM orders WHERE ctid = '(0,1)'", ALL,
           {SN: "deny", C + D: "same"}, by="proxy"),
    Attack("rewrite_ctid_range_of_own_rows", "SELECT min(ctid)::text, max(ctid)::text FROM orders", ALL,
           {SN: "deny", C + D: "same"}, by="proxy"),
    Attack("rewrite_system_columns_or_true", "SELECT xmin::text, cmin::text, id FROM orders WHERE xmin <> '0' OR true "
           "ORDER BY id", ALL, "same", xfail={"norls": GAP_SYSTEM_COLUMNS}),
    Attack("rewrite_tableoid_grouped", "SELECT tableoid::regclass::text AS t, count(*) FROM orders o "
           "GROUP BY 1 HAVING count(*) > 0", ALL, "same", xfail={"norls": GAP_SYSTEM_COLUMNS}),
    Attack("rewrite_system_column_two_tables", "SELECT o.xmin::text, c.xmin::text FROM orders o, customers c "
           "WHERE c.id = o.customer_id OR c.id = o.customer_id + 1 ORDER BY 1, 2 LIMIT 50", ALL, "same",
           xfail={"norls": GAP_SYSTEM_COLUMNS}),
    Attack("rewrite_system_column_alias_list_renames_tenant_column",
           "SELECT xmin, o.real_tenant FROM orders AS o (id, real_tenant, customer_id, order_date, tenant_id) "
           "WHERE o.real_tenant <> 'acme'", SN, "any"),
    Attack("rewrite_key_lookup_keeps_index", "EXPLAIN SELECT * FROM orders WHERE id = <<lo>>", SN, "ok",
           check=plan_uses_index),
    Attack("rewrite_grouping_sets", "SELECT status, channel, count(*) FROM orders "
           "GROUP BY GROUPING SETS ((status), (channel), ())", ALL, "same"),
    Attack("rewrite_window_clause", "SELECT id, sum(amount) OVER w FROM orders "
           "WINDOW w AS (PARTITION BY customer_id ORDER BY id)", ALL, "same"),
    Attack("rewrite_for_update_of_alias", "SELECT id FROM orders o FOR UPDATE OF o", ALL, "ok", writes=True,
           check=nrows_is("orders")),
    Attack("rewrite_ctas_table_statement", ("CREATE TEMP TABLE bi_x5 AS TABLE orders", "SELECT count(*) FROM bi_x5"),
           ALL, "same"),
    # CREATE TABLE AS EXECUTE: the prepared statement's column types are not known to the proxy (a Parse message can
    # name one too), so one of a reg* type could not be kept out of the new table: refused (implicit.py)
    Attack("rewrite_ctas_execute", ("PREPARE bi_q6 AS SELECT * FROM orders", "CREATE TEMP TABLE bi_x6 AS EXECUTE bi_q6",
                                    "SELECT count(*) FROM bi_x6"), ALL, "deny", by="proxy"),
    # red team 9a7 H4: EXPLAIN EXECUTE of a SQL prepared statement the session PREPAREd reading no catalog the proxy
    # filters (nor a temporary view): its plan, without estimates; of another one, refused (test_plan_shapes)
    Attack("rewrite_explain_execute", ("PREPARE bi_q7 AS SELECT * FROM orders", "EXPLAIN EXECUTE bi_q7"), ALL, "ok",
           check=plan_without_estimates),
    # --- prepared statements, portals, cursors --------------------------------------------------------------------
    Attack("sql_prepare_execute", ("PREPARE bi_q1 AS SELECT id, amount FROM orders", "EXECUTE bi_q1",
                                   "DEALLOCATE bi_q1"), ALL, "same"),
    Attack("sql_prepare_foreign_tenant_argument", ("PREPARE bi_q2(text) AS SELECT * FROM orders WHERE tenant_id = $1",
                                                   "EXECUTE bi_q2('bigco')"), SN, "ok", check=last_empty),
    Attack("sql_prepare_set_config", "PREPARE bi_q3 AS SELECT set_config('pgtenant.tenant_id', 'bigco', false)",
           ALL, "deny", by="proxy"),
    Attack("sql_prepare_update_tenant_column", "PREPARE bi_q4 AS UPDATE orders SET tenant_id = 'bigco'", SN, "deny",
           by="proxy"),
    Attack("sql_explain_analyze_execute", ("PREPARE bi_q5 AS SELECT * FROM orders", "EXPLAIN ANALYZE EXECUTE bi_q5"),
           SN, "deny", by="proxy"),
    Attack("protocol_named_portal", "SELECT id, customer_id, status, amount FROM orders", ALL, "same",
           runner="portal"),
    Attack("cursor_with_hold", ("DECLARE bi_c1 CURSOR WITH HOLD FOR SELECT id, customer_id FROM orders",
                                "FETCH ALL FROM bi_c1", "CLOSE bi_c1"), ALL, "same"),
    Attack("cursor_scroll_backwards", ("DECLARE bi_c2 SCROLL CURSOR WITH HOLD FOR SELECT name FROM customers "
                                       "ORDER BY id", "FETCH LAST FROM bi_c2", "FETCH ABSOLUTE 1 FROM bi_c2",
                                       "MOVE FORWARD ALL IN bi_c2", "FETCH BACKWARD 3 FROM bi_c2", "CLOSE bi_c2"),
           ALL, "same"),
    Attack("cursor_table_in_transaction", ("BEGIN", "DECLARE bi_c3 NO SCROLL CURSOR FOR TABLE customers",
                                           "FETCH FORWARD 1000 FROM bi_c3", "COMMIT"), ALL, "same"),
    Attack("cursor_set_config", "DECLARE bi_c4 CURSOR WITH HOLD FOR SELECT set_config('pgtenant.tenant_id', 'bigco',"
           " false)", ALL, "deny", by="proxy"),
    Attack("cursor_where_current_of", ("DECLARE bi_c5 CURSOR FOR SELECT * FROM orders FOR UPDATE",
                                       "FETCH 1 FROM bi_c5",
                                       "UPDATE orders SET amount = amount WHERE CURRENT OF bi_c5"), ALL, "any",
           writes=True),
    # --- COPY ----------------------------------------------------------------------------------------------------
    Attack("copy_table_to_stdout", "COPY orders TO STDOUT", ALL, "same", check=copy_lines_is("orders")),
    Attack("copy_query_to_stdout", "COPY (SELECT id, name, email FROM customers) TO STDOUT", ALL, "same"),
    Attack("copy_columns_csv_header", "COPY customers (id, email) TO STDOUT WITH (FORMAT csv, HEADER)", ALL, "same",
           check=copy_lines_is("customers", header=1)),
    Attack("copy_partition_to_stdout", "COPY events_2025 TO STDOUT", SN, "same"),
    Attack("copy_view_to_stdout", "COPY (SELECT * FROM customer_revenue) TO STDOUT", SN, "ok",
           check=copy_lines_is("customers")),
    Attack("copy_other_schema", "COPY two_co.customers TO STDOUT", C, "deny", by="missing"),
    Attack("copy_to_server_file", "COPY orders TO '/tmp/pgtenant_bi_leak.txt'", ALL, "deny", by="proxy"),
    Attack("copy_to_program", "COPY orders TO PROGRAM 'cat > /dev/null'", ALL, "deny", by="proxy"),
    Attack("copy_from_program", "COPY orders FROM PROGRAM 'echo 1'", ALL, "deny", by="proxy", writes=True),
    Attack("copy_stat_activity", "COPY (SELECT query FROM pg_stat_activity) TO STDOUT", ALL, "deny", by="proxy"),
    Attack("copy_in_foreign_tenant", "COPY customers (id, tenant_id, name, email, segment, created_at, is_active) "
           "FROM STDIN", SN, "deny", by="proxy", writes=True,
           copy_in=b"1990004\tbigco\tx\tx@x\tConsumer\t2025-01-01\tt\n"),
    # --- temp tables and views shadowing real tables ----------------------------------------------------------------
    Attack("temp_table_shadows_scoped", ("CREATE TEMP TABLE orders (id int, tenant_id text)",
                                         "INSERT INTO orders VALUES (1, 'bigco'), (2, 'smallco')",
                                         "SELECT count(*) FROM orders", "DROP TABLE orders"), ALL, "ok",
           check=value_is("2")),
    Attack("temp_ctas_shadows_scoped", ("CREATE TEMP TABLE customers AS SELECT * FROM customers",
                                        "SELECT count(*), count(DISTINCT id) FROM customers", "DROP TABLE customers"),
           ALL, "same"),
    Attack("temp_pg_temp_qualified_shadow", ("CREATE TABLE pg_temp.orders (id int)", "SELECT count(*) FROM orders",
                                             "DROP TABLE orders", "SELECT count(*) FROM orders"), ALL, "ok",
           check=count_is("orders")),
    Attack("temp_shadows_partition", ("CREATE TEMP TABLE events_2024 (id int)", "SELECT count(*) FROM events_2024",
                                      "DROP TABLE events_2024"), SN, "ok", check=value_is("0")),
    Attack("temp_shadows_pg_database", "CREATE TEMP TABLE pg_database (datname name)", ALL, "deny", by="proxy"),
    Attack("temp_shadow_from_other_schema", "CREATE TEMP TABLE orders AS SELECT * FROM two_co.orders", C, "deny",
           by="missing"),
    Attack("temp_shadow_then_read", ("CREATE TEMP TABLE orders AS SELECT * FROM orders",
                                     "SELECT count(*), sum(amount) FROM orders", "DROP TABLE orders"), ALL, "same"),
    Attack("temp_shadow_every_order", ("CREATE TEMP TABLE orders (id int, tenant_id text)",
                                       "INSERT INTO orders VALUES (1, 'bigco')", "DROP TABLE orders",
                                       "SELECT count(*) FROM orders",
                                       "CREATE TEMP TABLE orders AS SELECT * FROM orders",
                                       "DELETE FROM orders WHERE id < 0", "DROP TABLE orders",
                                       "SELECT count(*) FROM orders"), ALL, "ok", check=count_is("orders")),
    Attack("temp_copy_then_query", ("CREATE TEMP TABLE bi_my_orders AS SELECT * FROM orders",
                                    "SELECT count(*), sum(amount) FROM bi_my_orders"), ALL, "same"),
    Attack("temp_select_into", ("SELECT * INTO TEMP bi_my_customers FROM customers",
                                "SELECT count(*) FROM bi_my_customers"), ALL, "same"),
    Attack("temp_view", ("CREATE TEMP VIEW bi_v_orders AS SELECT * FROM orders", "SELECT count(*) FROM bi_v_orders",
                         "DROP VIEW bi_v_orders"), ALL, "same"),
    Attack("temp_view_shadows_scoped", ("CREATE TEMP VIEW orders AS SELECT * FROM public.orders",
                                        "SELECT count(*) FROM orders", "DROP VIEW orders"), SN, "same"),
    Attack("temp_view_is_not_updatable", ("CREATE TEMP VIEW bi_wv AS SELECT * FROM orders",
                                          "SELECT is_updatable || is_insertable_into FROM information_schema.views "
                                          "WHERE table_name = 'bi_wv'", "DROP VIEW bi_wv"), ALL, "ok",
           check=value_is("NONO")),
    Attack("temp_view_write_through", ("CREATE TEMP VIEW bi_wv AS SELECT * FROM orders", "UPDATE bi_wv SET amount = 0",
                                       "DELETE FROM pg_temp.bi_wv", "INSERT INTO bi_wv (id) VALUES (1990007)",
                                       "DROP VIEW bi_wv"), ALL, "deny", by="proxy"),
    Attack("temp_pg_temp_write_without_table", ("INSERT INTO pg_temp.orders (id) VALUES (1990008)",
                                                "UPDATE pg_temp.customers SET name = 'x'",
                                                "DELETE FROM pg_temp.order_lines", "TRUNCATE pg_temp.orders",
                                                "SELECT count(*) FROM orders"), ALL, "deny"),
    Attack("temp_rollback_create", ("BEGIN", "CREATE TEMP TABLE orders (id int)", "ROLLBACK",
                                    "SELECT count(*) FROM orders"), ALL, "ok", check=count_is("orders")),
    Attack("temp_rollback_drop", ("CREATE TEMP TABLE orders (id int)", "BEGIN", "DROP TABLE orders", "ROLLBACK",
                                  "SELECT count(*) FROM orders", "DROP TABLE orders"), ALL, "ok", check=value_is("0")),
    Attack("temp_like_including_defaults", "CREATE TEMP TABLE bi_l (LIKE orders INCLUDING DEFAULTS)", ALL, "deny",
           by="proxy"),
    Attack("temp_foreign_key_to_tenant_table", "CREATE TEMP TABLE bi_fk (id int REFERENCES orders (id))", ALL,
           "deny", by="proxy"),
    Attack("temp_like_other_schema", "CREATE TEMP TABLE bi_x (LIKE two_co.orders)", C, "deny", by="missing"),
    Attack("ddl_disable_rls", "ALTER TABLE orders DISABLE ROW LEVEL SECURITY", ALL, "deny", by="proxy"),
    Attack("ddl_drop_policy", "DROP POLICY pgtenant_isolation ON orders", ALL, "deny", by="proxy"),
    Attack("ddl_create_policy", "CREATE POLICY bi_open ON orders USING (true)", ALL, "deny", by="proxy"),
    Attack("ddl_create_table", "CREATE TABLE bi_stolen AS SELECT * FROM orders", ALL, "deny", by="proxy"),
    Attack("ddl_create_schema", "CREATE SCHEMA bi_evil", ALL, "deny", by="proxy"),
    # --- functions and catalog functions ---------------------------------------------------------------------------
    Attack("fn_create_sql_function",
           "CREATE FUNCTION bi_leak() RETURNS SETOF text LANGUAGE sql AS $$SELECT name FROM customers$$", ALL,
           "deny", by="proxy"),
    Attack("fn_create_in_pg_temp", "CREATE FUNCTION pg_temp.bi_f() RETURNS int LANGUAGE sql AS 'SELECT 1'", ALL,
           "deny", by="proxy"),
    Attack("fn_create_procedure", "CREATE PROCEDURE bi_p() LANGUAGE sql AS $$SELECT 1$$", ALL, "deny", by="proxy"),
    Attack("fn_do_block", "DO $$BEGIN PERFORM set_config('pgtenant.tenant_id', 'bigco', false); END$$", ALL, "deny",
           by="proxy"),
    Attack("fn_create_extension_dblink", "CREATE EXTENSION dblink", ALL, "deny", by="proxy"),
    Attack("fn_pg_read_file", "SELECT pg_read_file('PG_VERSION')", ALL, "deny", by="proxy"),
    Attack("fn_pg_read_binary_file", "SELECT pg_read_binary_file('/etc/hostname')", ALL, "deny", by="proxy"),
    Attack("fn_pg_ls_dir", "SELECT pg_ls_dir('.')", ALL, "deny", by="proxy"),
    Attack("fn_pg_stat_file", "SELECT pg_stat_file('PG_VERSION')", ALL, "deny", by="proxy"),
    Attack("fn_lo_import", "SELECT lo_import('/etc/hostname')", ALL, "deny", by="proxy"),
    Attack("fn_dblink", "SELECT * FROM dblink('dbname=<<otherdb>>', 'SELECT name FROM customers') AS t(name text)",
           ALL, "deny", by="proxy"),
    Attack("fn_query_to_xml", "SELECT query_to_xml('SELECT * FROM orders', true, false, '')", ALL, "deny",
           by="proxy"),
    Attack("fn_qualified_query_to_xml", "SELECT pg_catalog.query_to_xml('SELECT * FROM customers', true, false, '')",
           ALL, "deny", by="proxy"),
    Attack("fn_table_to_xml", "SELECT table_to_xml('orders', true, false, '')", ALL, "deny", by="proxy"),
    Attack("fn_database_to_xml", "SELECT database_to_xml(true, false, '')", ALL, "deny", by="proxy"),
    Attack("fn_ts_stat_executes_sql", "SELECT * FROM ts_stat('SELECT to_tsvector(name) FROM customers')", ALL,
           "deny", by="proxy"),
    Attack("fn_pg_stat_activity", "SELECT pid, query FROM pg_stat_activity", ALL, "deny", by="proxy"),
    # cluster-wide write counters: another database's writes moved them (red team, pg_dump round 2)
    Attack("stat_wal_activity", "SELECT wal_records, wal_bytes FROM pg_stat_wal", ALL, "deny", by="proxy"),
    Attack("stat_bgwriter_activity", "SELECT buffers_alloc FROM pg_stat_bgwriter", ALL, "deny", by="proxy"),
    Attack("fn_pg_stat_activity_qualified",
           "SELECT query FROM pg_catalog.pg_stat_activity WHERE query ILIKE '%orders%'", ALL, "deny", by="proxy"),
    Attack("fn_pg_stat_statements", "SELECT query FROM pg_stat_statements", ALL, "deny", by="proxy"),
    Attack("fn_pg_stat_get_activity", "SELECT * FROM pg_stat_get_activity(NULL)", ALL, "deny", by="proxy"),
    Attack("fn_pg_locks", "SELECT * FROM pg_locks", ALL, "deny", by="proxy"),
    Attack("fn_current_query", "SELECT current_query()", ALL, "deny", by="proxy"),
    Attack("fn_pg_notify", "SELECT pg_notify('bi_channel', 'x')", "SNC", "deny", by="proxy"),
    Attack("fn_notify_statement", "NOTIFY bi_channel, 'x'", "SNC", "deny", by="proxy"),
    # the notification queue is the server's, every database's (red team 7 F7: 5,000 distinct 8 KB notifications per
    # statement filled its 8 GB behind one idle listener): one call per statement, the same for every row
    Attack("fn_pg_notify_per_row", "SELECT count(pg_notify('bi_channel', g::text)) FROM generate_series(1, 5000) g",
           D, "deny", by="proxy"),
    Attack("fn_pg_notify_twice", "SELECT pg_notify('bi_channel', 'a'), pg_notify('bi_channel', 'b')", D, "deny",
           by="proxy"),
    Attack("fn_pg_notify_fixed", "SELECT pg_notify('bi_channel', 'x') FROM generate_series(1, 3)", D, "ok"),
    Attack("fn_advisory_lock_probe", "SELECT pg_try_advisory_lock(4242), pg_advisory_unlock(4242)", "SNC", "deny",
           by="proxy"),
    Attack("fn_advisory_xact_lock", "SELECT pg_advisory_xact_lock(4242)", "SNC", "deny", by="proxy"),
    Attack("fn_listen_statement", "LISTEN bi_channel", "SNC", "deny", by="proxy"),
    # --- EXPLAIN ---------------------------------------------------------------------------------------------------
    Attack("explain_analyze_verbose", "EXPLAIN (ANALYZE, VERBOSE) SELECT * FROM orders", ALL,
           {SN: "deny", "CD": "ok"}, by="proxy"),
    Attack("explain_analyse_british", "EXPLAIN ANALYSE SELECT count(*) FROM customers", ALL, {SN: "deny", "CD": "ok"},
           by="proxy"),
    Attack("explain_analyze_option_value", "EXPLAIN (ANALYZE 1, BUFFERS) SELECT * FROM orders", ALL,
           {SN: "deny", "CD": "ok"}, by="proxy"),
    Attack("explain_verbose", "EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM orders o JOIN customers c "
           "ON c.id = o.customer_id", ALL, "ok"),
    Attack("explain_json", "EXPLAIN (FORMAT JSON) SELECT count(*) FROM orders", ALL, "ok"),
    Attack("explain_analyze_other_schema", "EXPLAIN ANALYZE SELECT * FROM two_co.orders", C, "deny", by="missing"),
    # red team round 3 R1: PostgreSQL reads an EXPLAIN option's last occurrence (ANALYZE showed other tenants' row
    # count as Rows Removed by Filter, COSTS their estimates, SETTINGS a hidden schema dropped from search_path)
    Attack("explain_analyze_repeated", "EXPLAIN (ANALYZE off, ANALYZE on, COSTS off, TIMING off) SELECT * FROM orders",
           SN, "deny", by="proxy"),
    Attack("explain_analyze_repeated_bool", "EXPLAIN (ANALYZE false, ANALYZE true, COSTS false, TIMING false, "
           "SUMMARY false, BUFFERS false) SELECT * FROM orders", SN, "deny", by="proxy"),
    # red team 9a7: a boolean option is read as PostgreSQL's defGetBoolean reads it (0 and OFF are false)
    Attack("explain_analyze_zero_only_plans", "EXPLAIN (ANALYZE 0, COSTS 0) SELECT * FROM orders", ALL, "ok"),
    Attack("explain_analyze_upper_off_only_plans", "EXPLAIN (ANALYZE OFF, COSTS Off) SELECT count(*) FROM orders",
           ALL, "ok"),
    Attack("explain_analyze_zero_then_one", "EXPLAIN (ANALYZE 0, ANALYZE 1, COSTS 0, TIMING 0) SELECT * FROM orders",
           SN, "deny", by="proxy"),
    Attack("explain_costs_repeated", "EXPLAIN (COSTS off, COSTS on) SELECT * FROM orders WHERE tenant_id >= 'b' "
           "AND tenant_id < 'c'", SN, "deny", by="proxy"),
    Attack("explain_costs_repeated_json", "EXPLAIN (FORMAT JSON, COSTS false, COSTS true) SELECT * FROM orders", SN,
           "deny", by="proxy"),
    Attack("explain_settings_repeated", "EXPLAIN (SETTINGS off, SETTINGS on, COSTS off) SELECT 1", SN, "deny",
           by="proxy"),
    # red team round 3 R7: aclitemin reads role names (a hidden role was read, a missing one answered 42704)
    Attack("acl_aclitem_array_literal", "SELECT '{pgtenant_r2=r/pgtenant_r1}'::aclitem[]", ALL, "deny", by="proxy"),
    Attack("acl_aclitem_cast", "SELECT CAST('nosuchrole=r/postgres' AS aclitem)", ALL, "deny", by="proxy"),
    Attack("acl_literal_beside_acl_column", "SELECT relname FROM pg_class WHERE relacl @> '{nosuchrole=r/postgres}'",
           ALL, "deny", by="proxy"),
    Attack("acl_aclexplode_literal", "SELECT * FROM aclexplode('{nosuchrole=r/postgres}')", ALL, "deny", by="proxy"),
    Attack("acl_aclcontains_literal", "SELECT aclcontains(relacl, 'nosuchrole=r/postgres') FROM pg_class", ALL,
           "deny", by="proxy"),
    # ... also beside an ACL value that is not a plain ACL column (renamed, subscripted, computed, another branch)
    Attack("acl_literal_beside_renamed_column", "SELECT 1 FROM (SELECT relacl AS a FROM pg_class) s WHERE a @> "
           "'nosuchrole=r/postgres'", ALL, "deny", by="proxy"),
    Attack("acl_literal_beside_alias_list", "SELECT 1 FROM pg_namespace n(a, b, c, d) WHERE d @> "
           "'nosuchrole=U/postgres'", ALL, "deny", by="proxy"),
    Attack("acl_literal_beside_subscript", "SELECT 1 FROM pg_class WHERE relacl[1] = 'nosuchrole=r/postgres'", ALL,
           "deny", by="proxy"),
    Attack("acl_literal_in_coalesce", "SELECT coalesce(relacl, '{nosuchrole=r/postgres}') FROM pg_class", ALL, "deny",
           by="proxy"),
    Attack("acl_literal_in_union", "SELECT relacl FROM pg_class UNION ALL SELECT '{nosuchrole=r/postgres}'", ALL,
           "deny", by="proxy"),
    Attack("acl_literal_in_array_append", "SELECT array_append(relacl, 'nosuchrole=r/postgres') FROM pg_class", ALL,
           "deny", by="proxy"),
    Attack("acl_literal_beside_acldefault", "SELECT acldefault('r', 10) @> 'nosuchrole=r/postgres'", ALL, "deny",
           by="proxy"),
    Attack("acl_literal_in_subquery_test", "SELECT '{nosuchrole=r/postgres}' IN (SELECT relacl FROM pg_class)", ALL,
           "deny", by="proxy"),
    Attack("acl_temp_table_column", ("CREATE TEMP TABLE acl_t AS SELECT relacl FROM pg_class LIMIT 0",
                                     "INSERT INTO acl_t VALUES ('{nosuchrole=r/postgres}')"), ALL, "deny",
           by="proxy"),
    Attack("acl_param_beside_column", "SELECT 1 FROM pg_class WHERE relacl IS DISTINCT FROM %s", ALL, "deny",
           by="proxy", params=("{nosuchrole=r/postgres}",)),
    # --- error texts that could echo other tenants' values ----------------------------------------------------------
    Attack("err_div_zero_foreign_rows", "SELECT 1/0 FROM orders WHERE tenant_id = 'bigco'", SN, "any"),
    Attack("err_cast_name_in_select", "SELECT name::int FROM customers", ALL, "deny"),
    Attack("err_cast_name_in_where", "SELECT id FROM customers WHERE name::int = 1", ALL, "deny"),
    Attack("err_cast_email_in_join", "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id "
           "WHERE c.email::int > 0", ALL, "deny"),
    Attack("err_cast_ordered_desc", "SELECT email::date FROM customers ORDER BY id DESC", ALL, "deny"),
    Attack("err_cast_sku", "SELECT 1 FROM products WHERE sku::numeric > 0", ALL, "deny"),
    Attack("err_cast_jsonb_note", "SELECT (props->>'note')::int FROM events WHERE props ? 'note'", ALL, "deny"),
    Attack("err_cast_string_agg", "SELECT string_agg(email, ',')::int FROM customers", ALL, "deny"),
    Attack("err_cast_scalar_max", "SELECT (SELECT max(name) FROM customers)::int", ALL, "deny"),
    Attack("err_division_in_select_list",
           "SELECT 1/(CASE WHEN tenant_id = 'bigco' THEN 0 ELSE 1 END) FROM orders", SN, "same"),
    Attack("err_division_in_where",
           "SELECT id FROM customers WHERE 1/(CASE WHEN tenant_id = 'bigco' THEN 0 ELSE 1 END) = 1", SN, "same"),
    Attack("err_division_in_join_qual", "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
           "AND 1/(CASE WHEN c.tenant_id = 'bigco' THEN 0 ELSE 1 END) = 1", SN, "same"),
    Attack("err_regclass_other_schema", "SELECT 'two_co.nonexistent'::regclass", C, "deny", by="missing"),
    # --- writes (the attackers are writing roles; everything is rolled back) --------------------------------------
    Attack("w_insert_foreign_tenant", FOREIGN_ORDER.format(v="'bigco'"), SN, "deny", by="proxy", writes=True),
    Attack("w_insert_fills_own_tenant", {SN: NEW_CUSTOMER_SN, "CD": NEW_CUSTOMER_CD}, ALL, "ok", writes=True,
           check=own_tenant_cells_if_shared),
    Attack("w_insert_tenant_e_string", FOREIGN_ORDER.format(v="E'big\\x63o'"), SN, "deny", by="proxy", writes=True),
    Attack("w_insert_tenant_other_case", FOREIGN_ORDER.format(v="'ACME'"), SN, "deny", by="proxy", writes=True),
    Attack("w_insert_tenant_expression", FOREIGN_ORDER.format(v="'ac' || 'me'"), SN, "any", writes=True),
    Attack("w_insert_tenant_param", FOREIGN_ORDER.format(v="%s"), SN, "deny", by="proxy", writes=True,
           params=("bigco",)),
    Attack("w_insert_select_names_tenant_column",
           "INSERT INTO customers (id, tenant_id, name, email, segment, created_at, is_active) "
           "SELECT id + 1000000, 'bigco', name, email, segment, created_at, is_active FROM customers", SN, "deny",
           by="proxy", writes=True),
    Attack("w_insert_select_copies_own_rows",
           "INSERT INTO customers (id, name, email, segment, created_at, is_active) "
           "SELECT id + 1000000, name, email, segment, created_at, is_active FROM customers RETURNING tenant_id", SN,
           "ok", writes=True, check=nrows_is("customers")),
    Attack("w_insert_without_column_list",
           "INSERT INTO customers VALUES (1990005, 'bigco', 'x', 'x@x', NULL, 'Consumer', now(), true)", SN, "deny",
           by="proxy", writes=True),
    Attack("w_upsert_foreign_row", "INSERT INTO customers (id, name, email, segment, created_at, is_active) "
           "VALUES (200002, 'x', 'x', 'Consumer', now(), true) ON CONFLICT (id) DO UPDATE SET name = 'pwned'", SN,
           "deny", writes=True),
    Attack("w_upsert_do_nothing_probe", "INSERT INTO customers (id, name, email, segment, created_at, is_active) "
           "VALUES (200002, 'x', 'x', 'Consumer', now(), true) ON CONFLICT (id) DO NOTHING", SN, "any", writes=True),
    Attack("w_update_set_tenant", "UPDATE orders SET tenant_id = 'bigco'", SN, "deny", by="proxy", writes=True),
    Attack("w_update_set_tenant_upper", "UPDATE orders SET TENANT_ID = 'bigco' WHERE id = 100001", SN, "deny",
           by="proxy", writes=True),
    Attack("w_update_returning", "UPDATE orders SET status = status RETURNING id", ALL, "ok", writes=True,
           check=nrows_is("orders")),
    Attack("w_update_from_join", "UPDATE orders o SET amount = o.amount FROM customers c WHERE c.id = o.customer_id "
           "RETURNING o.id, c.id", ALL, "ok", writes=True, check=nrows_is("orders")),
    Attack("w_update_foreign_where", "UPDATE orders SET amount = 0 WHERE tenant_id = 'bigco' RETURNING id", SN,
           "ok", writes=True, check=last_empty),
    Attack("w_delete_everything", "DELETE FROM order_lines", ALL, "ok", writes=True,
           check=tag_is("DELETE", "order_lines")),
    Attack("w_delete_returning", "DELETE FROM events RETURNING id", ALL, "ok", writes=True, check=nrows_is("events")),
    Attack("w_delete_using_foreign", "DELETE FROM order_lines l USING orders o WHERE o.id = l.order_id "
           "AND o.tenant_id = 'bigco' RETURNING l.id", SN, "ok", writes=True, check=last_empty),
    Attack("w_delete_partition", "DELETE FROM events_2024 RETURNING id, tenant_id", SN, "ok", writes=True),
    Attack("w_merge_foreign_row", "MERGE INTO customers c USING (SELECT 200002 AS id) s ON c.id = s.id "
           "WHEN MATCHED THEN UPDATE SET name = 'pwned'", SN, "deny", writes=True),
    Attack("w_returning_subquery_insert", NEW_CUSTOMER + " RETURNING (SELECT count(*) FROM orders)", ALL, "ok",
           writes=True, check=count_is("orders")),
    Attack("w_returning_subquery_update",
           "UPDATE customers SET name = name WHERE id = <<lo>> RETURNING (SELECT count(*) FROM orders)", ALL, "ok",
           writes=True, check=count_is("orders")),
    Attack("w_returning_subquery_delete",
           "DELETE FROM events WHERE id = <<lo>> RETURNING (SELECT string_agg(email, ',') FROM customers)", ALL,
           "ok", writes=True),
    Attack("w_update_set_from_foreign_row", "UPDATE orders SET status = (SELECT status FROM orders o2 "
           "WHERE o2.id = 200001) WHERE id = 100001 RETURNING status", SN, "ok", writes=True,
           check=lambda res, actor: _last_rows(res).rows == [(None,)] or pytest.fail(str(_last_rows(res).rows))),
    Attack("w_update_where_or_true", "UPDATE orders SET amount = amount WHERE id = <<lo>> OR true RETURNING id", ALL,
           "ok", writes=True, check=nrows_is("orders")),
    Attack("w_delete_where_or_trailing_comment",
           "DELETE FROM order_lines WHERE quantity > 0 OR quantity <= 0 -- trailing comment", ALL, "ok",
           writes=True, check=tag_is("DELETE", "order_lines")),
    Attack("w_update_alias", "UPDATE orders AS o SET amount = o.amount RETURNING o.id", ALL, "ok", writes=True,
           check=nrows_is("orders")),
    Attack("w_update_only", "UPDATE ONLY orders SET amount = amount RETURNING id", ALL, "ok", writes=True,
           check=nrows_is("orders")),
    Attack("w_delete_commented_where", "DELETE FROM order_lines /* WHERE false */ RETURNING id", ALL, "ok",
           writes=True, check=nrows_is("order_lines")),
    Attack("w_update_subquery_in_where",
           "UPDATE orders SET amount = amount WHERE customer_id IN (SELECT id FROM customers) RETURNING id", ALL,
           "ok", writes=True, check=nrows_is("orders")),
    Attack("w_merge_from_other_schema", "MERGE INTO customers c USING two_co.customers s ON c.id = s.id "
           "WHEN NOT MATCHED THEN INSERT (id, name, email, segment, created_at, is_active) "
           "VALUES (s.id, s.name, s.email, s.segment, s.created_at, s.is_active)", C, "deny", by="missing",
           writes=True),
    Attack("w_insert_select_from_other_schema", "INSERT INTO customers SELECT * FROM two_co.customers", C, "deny",
           by="missing", writes=True),
    Attack("w_copy_in_own_rows", "COPY customers (id, name, email, segment, created_at, is_active) FROM STDIN", ALL,
           "any", writes=True, copy_in=b"1990006\tnew\tnew@new.example\tConsumer\t2025-01-01\tt\n"),
    Attack("w_truncate", "TRUNCATE order_lines", SN, "deny", by="proxy", writes=True),
    Attack("w_truncate_other_schema", "TRUNCATE two_co.order_lines", C, "deny", by="missing", writes=True),
    Attack("w_update_other_schema", "UPDATE two_co.orders SET amount = 0", C, "deny", by="missing", writes=True),
    Attack("w_insert_reference_schema", "INSERT INTO reference.countries VALUES ('XX', 'X', 'X')", C, "deny",
           by="proxy", writes=True),
    Attack("w_delete_legacy_public", "DELETE FROM public.legacy_orders", C, "deny", by="missing", writes=True),
    Attack("w_lock_table", "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", ALL, "deny", by="proxy", writes=True),
    # --- what pg_dump sends (tests/integration/test_pg_dump.py dumps and restores) -----------------------------------
    Attack("dump_lock_access_share", ("LOCK TABLE orders, customers IN ACCESS SHARE MODE",
                                      "SELECT count(*) FROM orders"), ALL, "ok", writes=True, check=count_is("orders")),
    Attack("dump_lock_default_mode", "LOCK TABLE orders", ALL, "deny", by="proxy", writes=True),
    Attack("dump_lock_share", "LOCK TABLE orders IN SHARE MODE NOWAIT", ALL, "deny", by="proxy", writes=True),
    Attack("dump_lock_row_exclusive", "LOCK orders IN ROW EXCLUSIVE MODE", ALL, "deny", by="proxy", writes=True),
    Attack("dump_lock_other_schema", "LOCK TABLE two_co.customers IN ACCESS SHARE MODE", C, "deny", by="missing",
           writes=True),
    Attack("dump_lock_catalog", "LOCK TABLE pg_catalog.pg_authid IN ACCESS SHARE MODE", ALL, "deny", by="proxy",
           writes=True),
    Attack("dump_lock_catalog_through_search_path", ("SET search_path = information_schema, public",
                                                     "LOCK TABLE tables IN ACCESS SHARE MODE"), ALL, "deny",
           by="proxy", writes=True),
    Attack("dump_export_snapshot", "SELECT pg_export_snapshot()", "SNC", "deny", by="proxy", writes=True),
    Attack("dump_import_snapshot", "SET TRANSACTION SNAPSHOT '00000003-00000002-1'", "SNC", "deny", by="proxy",
           writes=True),
    Attack("dump_import_unknown_snapshot", ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                                            "SET TRANSACTION SNAPSHOT '00000003-00000002-1'"), D, "deny", writes=True),
    Attack("dump_settings_lookup_reserved",
           "SELECT set_config(name, 'bigco', false) FROM pg_settings WHERE name = 'pgtenant.tenant_id'", ALL, "deny",
           by="proxy"),
    # pg_dump's pg_settings form of set_config(): for search_path refused (red team 9a8 N6: its call runs only where
    # the FROM/WHERE yield a row, and the proxy would track a search_path PostgreSQL may not have; pg_dump does not
    # send it for search_path)
    Attack("dump_settings_lookup_search_path",
           {SN: _LOOKUP.format("pg_temp,two_co,public", "search_path"),
            "CD": _LOOKUP.format("two_co, one_co, public", "search_path")}, ALL, "deny", by="proxy"),
    Attack("dump_settings_lookup_search_path_local",
           ("BEGIN", _LOOKUP.format("two_co, one_co, public", "search_path").replace("false", "true"), "COMMIT"),
           "SNC", "deny", by="proxy"),
    Attack("dump_settings_lookup_catalog_first", _LOOKUP.format("public, pg_catalog", "search_path"), "SNC", "deny",
           by="proxy"),
    Attack("dump_settings_lookup_hidden_public", _LOOKUP.format("public", "search_path"), C, "deny", by="proxy"),
    Attack("dump_settings_lookup_row_security_off", (_LOOKUP.format("off", "row_security"), "SHOW row_security",
                                                     "RESET row_security"), SN, "ok", check=first_cell_is("on")),
    Attack("dump_settings_lookup_computed_path",
           "SELECT set_config(name, current_setting('search_path') || ', two_co', false) FROM pg_settings"
           " WHERE name = 'search_path'", "SNC", "deny", by="proxy"),
    Attack("w_vacuum", "VACUUM orders", ALL, "deny", by="proxy"),
    Attack("w_analyze", "ANALYZE orders", ALL, "deny", by="proxy"),
    Attack("w_prepare_transaction", "PREPARE TRANSACTION 'bi_x'", ALL, "deny", by="proxy", writes=True),
    # --- protocol level ----------------------------------------------------------------------------------------------
    Attack("protocol_function_call_set_config", "", ALL, "deny", runner="function_call"),
]


def _params() -> list[Any]:
    out = []
    for attack in ATTACKS:
        for letter in attack.letters():
            strategy = STRATEGY_LETTERS[letter]
            for protocol in PROTOCOLS:
                reason = attack.xfail.get(f"{strategy}-{protocol}") or attack.xfail.get(strategy)
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                out.append(pytest.param(attack, strategy, protocol, id=f"{strategy}-{protocol}-{attack.id}",
                                        marks=marks))
    return out


# ------------------------------------------------------------------------------------------------ the environment


class Env:
    def __init__(self, strict: ProxyProcess, norls: ProxyProcess, pg: PgCluster) -> None:
        self.proxies = {"strict": strict, "norls": norls}
        self.pg = pg
        self.clients: dict[str, PqClient] = {}
        self.refs: dict[str, PqClient] = {}
        self.outcomes: dict[str, str] = {}
        self.set_config_oid = int(pg.execute("SELECT 'pg_catalog.set_config'::regproc::oid")[0][0])

    def proxy(self, actor: Actor) -> ProxyProcess:
        return self.proxies[actor.proxy]

    def client(self, actor: Actor) -> PqClient:
        c = self.clients.get(actor.strategy)
        if c is None or c.broken:
            c = self.clients[actor.strategy] = PqClient(self.proxy(actor).dsn(actor.user, dbname=actor.db))
        return c

    def ref(self, actor: Actor) -> PqClient:
        c = self.refs.get(actor.strategy)
        if c is None or c.broken:
            c = self.refs[actor.strategy] = PqClient(
                self.pg.dsn(actor.ref_user, actor.ref_password, actor.ref_db, sslmode="disable",
                            options=actor.ref_options)
            )
        return c

    def close(self) -> None:
        for c in [*self.clients.values(), *self.refs.values()]:
            c.close()


strict_proxy = bidata.bi_proxy_fixture(name="strict_proxy")
norls_proxy = bidata.bi_proxy_fixture(norls=True, name="norls_proxy")


@pytest.fixture(scope="module")
def env(pg: PgCluster, strict_proxy: ProxyProcess, norls_proxy: ProxyProcess) -> Iterator[Env]:
    before = bidata.fingerprint(pg)
    e = Env(strict_proxy, norls_proxy, pg)
    try:
        for actor in ACTORS.values():  # the baseline the post-checks compare with
            res = e.client(actor).simple(actor.post_sql)
            assert res[-1].rows == [actor.expected_context()], (actor.strategy, res)
        yield e
    finally:
        e.close()
        report = os.environ.get("PGTENANT_ATTACK_REPORT")
        if report:  # every case's outcome, for reviewing what was denied, by whom, and what was allowed
            Path(report).write_text(json.dumps(e.outcomes, indent=1, sort_keys=True))
    assert bidata.fingerprint(pg) == before, "the attack suite changed data (a write was not rolled back)"


# --------------------------------------------------------------------------------------------------- the runners


def _subst(text: str, actor: Actor) -> str:
    r = bidata.id_range(actor.key)
    return (text.replace("<<db>>", actor.db).replace("<<otherdb>>", actor.other_db)
            .replace("<<lo>>", str(r.start)).replace("<<hi>>", str(r.stop - 1)))


def run_steps(client: PqClient, steps: tuple[str, ...], attack: Attack, protocol: str) -> list[Result]:
    out: list[Result] = []
    for step in steps:
        params = attack.params if "%s" in step and attack.params else None
        if protocol == "simple":
            out += client.simple(bidata.bind_simple(step, params), attack.copy_in)
        else:
            text, values = bidata.bind_extended(step, params)
            out += client.extended(text, values, attack.copy_in)
        if client.broken:
            break
    return out


def run_sql(env: Env, actor: Actor, attack: Attack, letter: str, protocol: str) -> tuple[list[Result], list[str]]:
    client = env.client(actor)
    client.notices.clear()
    steps = tuple(_subst(s, actor) for s in attack.steps_for(letter))
    if attack.writes:
        steps = ("BEGIN", *steps)
    try:
        results = run_steps(client, steps, attack, protocol)
        notices = list(client.notices)
        assert not client.broken, f"the session died: {[r.message for r in results if r.kind == 'error']}"
        if client.in_transaction:
            client.simple("ROLLBACK")
        post = client.simple(actor.post_sql)
        assert [r.kind for r in post] == ["rows"], f"session unusable after the attack: {_describe(post)}"
        assert post[0].rows == [actor.expected_context()], f"tenant context changed: {post[0].rows}"
    finally:  # the next case starts from a clean session whatever happened
        if not client.broken and client.in_transaction:
            client.simple("ROLLBACK")
        if client.broken or client.simple("DISCARD ALL")[0].kind != "command":
            client.reconnect()
    return results, notices


def run_reference(env: Env, actor: Actor, attack: Attack, letter: str) -> list[Result]:
    ref = env.ref(actor)
    steps = tuple(_subst(s, actor) for s in attack.steps_for(letter))
    try:
        return run_steps(ref, steps, attack, "simple")
    finally:
        if ref.in_transaction:
            ref.simple("ROLLBACK")
        ref.simple("DISCARD ALL")


def _drain(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    out = []
    while True:
        t, body = read_message(sock)
        out.append((t, body))
        if t == b"Z":
            return out


def _wire_results(msgs: list[Any]) -> list[Result]:
    out: list[Result] = []
    rows: list[tuple[str | None, ...]] = []
    for t, body in msgs:
        if t == "E":  # wire.login() hands login errors over already decoded
            out.append(Result("error", sqlstate=body.get("C"), message=" ".join(body.values())))
        elif t == b"D":
            (n,) = struct.unpack_from("!h", body)
            pos, row = 2, []
            for _ in range(n):
                (ln,) = struct.unpack_from("!i", body, pos)
                pos += 4
                row.append(None if ln < 0 else body[pos:pos + ln].decode())
                pos += max(ln, 0)
            rows.append(tuple(row))
        elif t == b"C":
            out.append(Result("rows", tag=body.rstrip(b"\0").decode(), rows=rows))
            rows = []
        elif t == b"V":
            (ln,) = struct.unpack_from("!i", body)
            out.append(Result("rows", tag="FUNCTION", rows=[(None if ln < 0 else body[4:4 + ln].decode(),)]))
        elif t == b"E":
            f = m.decode_error_fields(body)
            out.append(Result("error", sqlstate=f.get("C"), message=" ".join(f.values())))
    return out


def _extended_query(sql: str) -> bytes:
    parse = m.frame(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))
    bind = m.frame(b"B", b"\0\0" + struct.pack("!hhh", 0, 0, 0))
    execute = m.frame(b"E", b"\0" + struct.pack("!i", 0))
    return parse + bind + execute + m.SYNC_MESSAGE


def _context_sql() -> str:
    return "SELECT current_setting('pgtenant.tenant_id', true), current_user, (SELECT count(*) FROM orders)"


def _check_wire_context(results: list[Result], actor: Actor) -> None:
    rows = [r for r in results if r.kind == "rows"]
    assert rows and rows[-1].rows, results
    setting, user, count = rows[-1].rows[0]
    assert count == str(actor.counts["orders"])
    if actor.strategy in ("shared", "norls"):
        assert setting == actor.key
    assert user == actor.expected_context()[1 if actor.strategy in ("shared", "norls") else 0]


def run_function_call(env: Env, actor: Actor, protocol: str) -> list[Result]:
    proxy = env.proxy(actor)
    sock, msgs = login(proxy.port, {"user": actor.user, "database": actor.db}, proxy.password(actor.user))
    try:
        assert msgs[-1][0] == b"Z", msgs
        args = [b"pgtenant.tenant_id", b"bigco", b"false"]
        body = struct.pack("!ihhh", env.set_config_oid, 1, 0, len(args))
        body += b"".join(struct.pack("!i", len(a)) + a for a in args) + struct.pack("!h", 0)
        sock.sendall(m.frame(b"F", body))
        results = _wire_results(_drain(sock))
        check = _context_sql()
        sock.sendall(m.Query(check).encode() if protocol == "simple" else _extended_query(check))
        after = _wire_results(_drain(sock))
        _check_wire_context(after, actor)
        sock.sendall(m.TERMINATE_MESSAGE)
        return results + after
    finally:
        sock.close()


def run_startup(env: Env, actor: Actor, attack: Attack, protocol: str) -> list[Result]:
    proxy = env.proxy(actor)
    params = {k: _subst(v, actor) for k, v in attack.startup.items()}
    database = params.pop("database", actor.db)
    check = _context_sql()
    if protocol == "simple":
        sock, msgs = login(proxy.port, {"user": actor.user, "database": database, **params},
                           proxy.password(actor.user))
        try:
            results = _wire_results(msgs)
            if msgs and msgs[-1][0] == b"Z":
                sock.sendall(m.Query(check).encode())
                after = _wire_results(_drain(sock))
                _check_wire_context(after, actor)
                results += after
                sock.sendall(m.TERMINATE_MESSAGE)
            return results
        finally:
            sock.close()

    async def go() -> list[Result]:
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=actor.user,
                                         password=proxy.password(actor.user), database=database, ssl=False,
                                         server_settings=params, timeout=10)
        except asyncpg.PostgresError as exc:
            return [Result("error", sqlstate=exc.sqlstate, message=str(exc))]
        try:
            rows = await conn.fetch(check)
            out = [Result("rows", rows=[tuple(None if v is None else str(v) for v in r) for r in rows])]
            _check_wire_context(out, actor)
            return out
        finally:
            await conn.close()

    return asyncio.run(go())


def run_portal(env: Env, actor: Actor, attack: Attack, protocol: str) -> list[Result]:
    sql = attack.steps_for("S")[0]
    if protocol == "simple":  # what psycopg's named cursors and psql's FETCH_COUNT do
        client = env.client(actor)
        out = client.simple("BEGIN") + client.simple(f"DECLARE bi_portal NO SCROLL CURSOR FOR {sql}")
        rows: list[tuple[str | None, ...]] = []
        while True:
            batch = client.simple("FETCH FORWARD 50 FROM bi_portal")
            out += [r for r in batch if r.kind == "error"]
            got = [r for r in batch if r.kind == "rows"]
            if not got or not got[0].rows:
                break
            rows += got[0].rows
        out += client.simple("CLOSE bi_portal") + client.simple("COMMIT")
        cols = got[0].columns if got else ()
        return [r for r in out if r.kind == "error"] + [Result("rows", columns=cols, rows=rows)]

    proxy = env.proxy(actor)

    async def go() -> list[Result]:
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=actor.user,
                                     password=proxy.password(actor.user), database=actor.db, ssl=False, timeout=10)
        try:
            async with conn.transaction():  # asyncpg: Bind to a named portal, Execute with a row limit
                rows = [tuple(None if v is None else str(v) for v in r)
                        async for r in conn.cursor(sql, prefetch=50)]
                stmt = await conn.prepare(sql)
                cols = tuple(a.name for a in stmt.get_attributes())
            return [Result("rows", columns=cols, rows=rows)]
        except asyncpg.PostgresError as exc:
            return [Result("error", sqlstate=exc.sqlstate, message=str(exc))]
        finally:
            await conn.close()

    return asyncio.run(go())


# ------------------------------------------------------------------------------------------------ the judgement

_TOKEN = re.compile(r"[a-z0-9_]+")


def find_leaks(actor: Actor, results: list[Result], notices: list[str], attack_text: str) -> list[str]:
    problems = []
    blob = "\n".join([r.text() for r in results] + notices).lower()
    for marker in bidata.foreign_markers(actor.key, tuple(bidata.SIZES)):
        if marker in blob:
            problems.append(f"canary {marker!r} of another tenant")
    said = attack_text.lower()
    names = [n for n in actor.foreign_names if n not in said]
    ranges = [bidata.id_range(k) for k in actor.foreign_keys]
    for r in results:
        if r.kind == "rows":
            cells = [c.lower() for row in r.rows for c in row if c is not None]
        elif r.kind == "copy_out":
            cells = r.copy.decode("utf-8", "replace").lower().splitlines()
        else:
            continue
        tokens = {t for c in cells for t in _TOKEN.findall(c)}
        problems += [f"name {n!r} of another tenant/database in the rows" for n in names if n in tokens]
        ids = list(r.int_cells())
        if r.kind == "copy_out":
            ids = [int(f) for line in cells if (f := re.split(r"[\t,]", line)[0]).isdigit()]
        for i in ids:
            if any(i in rg for rg in ranges):
                problems.append(f"id {i} of another tenant in the rows")
                break
    return problems


def _describe(results: list[Result]) -> str:
    out = []
    for r in results:
        if r.kind == "error":
            out.append(f"error {r.sqlstate}: {r.message.strip().splitlines()[0]}")
        elif r.kind == "rows":
            out.append(f"{len(r.rows)} rows {r.rows[:3]}")
        else:
            out.append(r.kind + (f" {r.tag}" if r.tag else ""))
    return "; ".join(out)


@pytest.mark.parametrize(("attack", "strategy", "protocol"), _params())
def test_attack(env: Env, attack: Attack, strategy: str, protocol: str) -> None:
    actor = ACTORS[strategy]
    letter = next(k for k, v in STRATEGY_LETTERS.items() if v == strategy)
    steps = tuple(_subst(s, actor) for s in attack.steps_for(letter)) if attack.runner != "startup" else ()
    attack_text = " ".join([*steps, *map(str, attack.params or ()), *attack.startup.values(), actor.other_db])
    for marker in bidata.foreign_markers(actor.key, tuple(bidata.SIZES)):
        assert marker not in attack_text.lower(), "the attack must not spell a canary itself"

    notices: list[str] = []
    if attack.runner == "sql":
        results, notices = run_sql(env, actor, attack, letter, protocol)
    elif attack.runner == "startup":
        results = run_startup(env, actor, attack, protocol)
    elif attack.runner == "function_call":
        results = run_function_call(env, actor, protocol)
    else:
        results = run_portal(env, actor, attack, protocol)
    errors = [r for r in results if r.kind == "error"]
    env.outcomes[f"{strategy}-{protocol}-{attack.id}"] = _describe(results)

    leaks = find_leaks(actor, results, notices, attack_text)
    assert not leaks, f"LEAK: {leaks}\n{_describe(results)}"

    expect = attack.expect_for(letter, protocol)
    if expect == "deny":
        assert errors, f"expected a denial, got: {_describe(results)}"
        assert all(e.sqlstate and len(e.sqlstate) == 5 for e in errors)
        if attack.by == "proxy" and not (attack.multi and protocol == "extended"):
            assert any(e.denied_by_proxy for e in errors), f"denied by PostgreSQL, not by pgtenant: {_describe(errors)}"
        if attack.by == "missing":  # PostgreSQL's answer for a missing schema (for an existing one it would refuse)
            assert any(e.sqlstate in ("3F000", "42P01") and " does not exist" in e.message and "pgtenant" not in
                       e.message for e in errors), f"not answered as a missing schema: {_describe(errors)}"
    elif expect in ("same", "ok", "empty"):
        assert not errors, f"unexpected error: {_describe(errors)}"
        if expect == "empty":
            last_empty(results, actor)
        if expect == "same":
            ref = run_reference(env, actor, attack, letter)
            assert not [r for r in ref if r.kind == "error"], f"reference failed: {_describe(ref)}"
            if attack.runner == "portal":
                assert sorted(results[-1].rows, key=str) == sorted(_last_rows(ref).rows, key=str)
            else:
                assert bidata.rows_key(results) == bidata.rows_key(ref), (
                    f"differs from the tenant's own direct result:\nproxy: {_describe(results)}\n"
                    f"direct: {_describe(ref)}"
                )
    if attack.check is not None and expect != "deny" and not errors:
        attack.check(results, actor)


READ_ONLY_USERS = {"shared": "t_bigco", "norls": "n_bigco", "schema": "s_two", "database": "d_five"}
READ_ONLY_DBS = {"shared": bidata.SHARED_DB, "norls": bidata.NORLS_DB, "schema": bidata.SCHEMA_DB,
                 "database": bidata.DB_FIVE}
READ_ONLY_WRITES = {
    "insert": NEW_CUSTOMER,
    "update": "UPDATE orders SET amount = 0",
    "delete": "DELETE FROM order_lines",
    "cte_delete": "WITH d AS (DELETE FROM events RETURNING id) SELECT count(*) FROM d",
    "select_for_update": "SELECT id FROM orders FOR UPDATE",
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("what", list(READ_ONLY_WRITES))
@pytest.mark.parametrize("strategy", list(READ_ONLY_USERS))
def test_read_only_tenant_cannot_write(env: Env, strategy: str, what: str, protocol: str) -> None:
    """The victims' logins are read-only roles: every write is refused by the proxy (25006), reads still work."""
    actor = ACTORS[strategy]
    user = READ_ONLY_USERS[strategy]
    db = READ_ONLY_DBS[strategy]
    client = PqClient(env.proxy(actor).dsn(user, dbname=db))
    try:
        sql = READ_ONLY_WRITES[what]
        res = client.simple(sql) if protocol == "simple" else client.extended(sql)
        errors = [r for r in res if r.kind == "error"]
        assert errors and errors[0].sqlstate == "25006" and errors[0].denied_by_proxy, _describe(res)
        assert client.simple("SELECT count(*) FROM orders")[0].kind == "rows"
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("strategy", ["shared", "norls", "database"])
def test_read_only_tenant_cannot_advance_a_shared_sequence(env: Env, strategy: str, protocol: str) -> None:
    """Red team 9a7 H7: a read-only tenant called nextval() on a sequence the backend role may use, consuming (and
    able to exhaust) the keys other tenants' inserts take from it. nextval() is a write: refused by the proxy (25006)
    in every spelling, a parameter included; the sequence does not move; the tenant's own temporary sequence (a
    serial column of its temporary table), named pg_temp.<name>, still advances."""
    user, db = READ_ONLY_USERS[strategy], READ_ONLY_DBS[strategy]
    env.pg.execute("CREATE SEQUENCE public.bi_h7_seq; GRANT USAGE, SELECT, UPDATE ON SEQUENCE public.bi_h7_seq TO "
                   "PUBLIC", dbname=db)
    client = PqClient(env.proxy(ACTORS[strategy]).dsn(user, dbname=db))
    try:
        run = client.simple if protocol == "simple" else client.extended
        attempts = [run(sql) for sql in (
            "SELECT count(nextval('public.bi_h7_seq')) FROM generate_series(1, 400)",
            "SELECT pg_catalog.nextval('public.bi_h7_seq'::regclass)", "SELECT nextval('bi_h7_seq'::text)",
            "SELECT * FROM nextval('public.bi_h7_seq')",
            "CREATE TEMP TABLE bi_h7 (id bigint DEFAULT nextval('public.bi_h7_seq'))")]
        if protocol == "extended":
            attempts.append(client.extended("SELECT nextval($1)", ["public.bi_h7_seq"]))
        for results in attempts:
            errors = [r for r in results if r.kind == "error"]
            assert errors and errors[0].sqlstate == "25006" and errors[0].denied_by_proxy, _describe(results)
        assert env.pg.execute("SELECT last_value, is_called FROM public.bi_h7_seq", dbname=db) == [(1, False)]
        steps = ("CREATE TEMP TABLE bi_h7s (id serial, x int)", "INSERT INTO bi_h7s (x) VALUES (1)",
                 "SELECT nextval('pg_temp.bi_h7s_id_seq')", "DROP TABLE bi_h7s")
        results = [r for step in steps for r in run(step)]
        assert not [r for r in results if r.kind == "error"], _describe(results)
        assert _last_rows(results).rows == [("2",)]
        assert client.simple("SELECT count(*) FROM orders")[0].kind == "rows"
    finally:
        client.close()
        env.pg.execute("DROP SEQUENCE public.bi_h7_seq", dbname=db)


# Read-only tenants may now write their own temporary tables: every new permission, attacked. Each step is
# (sql, expected): "ok", an exact first value of its last row result, "error" (PostgreSQL refuses: the proxy let
# it through, it could not do harm) or "proxy" (pgtenant refuses). <<n>> is the tenant's own order count.
READ_ONLY_TEMP_ATTACKS: dict[str, tuple[tuple[str, str], ...]] = {
    "shadow_create_write_drop_recreate": (
        ("CREATE TEMP TABLE orders (id int, tenant_id text)", "ok"),
        ("INSERT INTO orders VALUES (1, 'acme'), (2, 'smallco')", "ok"),
        ("SELECT count(*) FROM orders", "2"),
        ("UPDATE orders SET tenant_id = 'bigco'", "ok"),
        ("DROP TABLE orders", "ok"),
        ("SELECT count(*) FROM orders", "<<n>>"),
        ("INSERT INTO orders (id) VALUES (1990009)", "proxy"),
        ("CREATE TEMP TABLE orders AS SELECT * FROM orders", "ok"),
        ("SELECT count(*) FROM orders", "<<n>>"),
        ("DELETE FROM orders", "ok"),
        ("SELECT count(*) FROM orders", "0"),
        ("DROP TABLE orders", "ok"),
        ("SELECT count(*) FROM orders", "<<n>>"),
    ),
    "write_through_temp_view": (
        ("CREATE TEMP VIEW bi_v AS SELECT * FROM orders", "ok"),
        ("SELECT count(*) FROM bi_v", "<<n>>"),
        ("UPDATE bi_v SET amount = 0", "proxy"),
        ("DELETE FROM bi_v", "proxy"),
        ("INSERT INTO pg_temp.bi_v (id) VALUES (1990010)", "proxy"),
        ("SELECT pg_relation_is_updatable('pg_temp.bi_v'::regclass, false)", "0"),
        ("DROP VIEW bi_v", "ok"),
        ("CREATE TEMP VIEW orders AS SELECT * FROM orders", "ok"),
        ("SELECT count(*) FROM orders", "<<n>>"),
        ("DELETE FROM orders", "proxy"),
        ("DROP VIEW orders", "ok"),
    ),
    "pg_temp_qualified_writes": (
        ("INSERT INTO pg_temp.orders (id) VALUES (1990011)", "error"),
        ("UPDATE pg_temp.customers SET name = 'x'", "error"),
        ("DELETE FROM pg_temp.order_lines", "error"),
        ("TRUNCATE pg_temp.orders", "error"),
        ("COPY pg_temp.orders FROM STDIN", "error"),
        ("DROP TABLE orders", "error"),  # pg_temp.orders: there is none
        ("SELECT count(*) FROM orders", "<<n>>"),
    ),
    "rollback_of_create_and_drop": (
        ("BEGIN", "ok"),
        ("CREATE TEMP TABLE orders (id int)", "ok"),
        ("ROLLBACK", "ok"),
        ("SELECT count(*) FROM orders", "<<n>>"),
        ("INSERT INTO orders (id) VALUES (1990012)", "proxy"),
        ("CREATE TEMP TABLE scratch (id int)", "ok"),
        ("BEGIN", "ok"),
        ("DROP TABLE scratch", "ok"),
        ("ROLLBACK", "ok"),
        ("INSERT INTO scratch VALUES (1)", "ok"),
        ("SELECT count(*) FROM scratch", "1"),
    ),
    "copy_into_a_tenant_table": (
        ("CREATE TEMP TABLE bi_c (id int)", "ok"),
        ("COPY orders (id) FROM STDIN", "proxy"),
        ("TRUNCATE orders", "proxy"),
        ("MERGE INTO orders o USING bi_c c ON o.id = c.id WHEN MATCHED THEN DELETE", "proxy"),
    ),
    "search_path_for_readers": (
        ("SET search_path = pg_temp, one_co, two_co, ghost_co, public", "ok"),
        ("SELECT count(*) FROM orders", "<<n>>"),
        ("CREATE TEMP TABLE orders (id int)", "ok"),
        ("SELECT count(*) FROM orders", "0"),
        ("SET search_path = public, one_co, two_co, pg_temp", "ok"),
        ("INSERT INTO orders (id) VALUES (1990013)", "proxy"),  # pg_temp last: `orders` is the tenant's table
        ("RESET search_path", "ok"),
        ("DROP TABLE orders", "ok"),
    ),
}


def _temp_step_failed(results: list[Result]) -> Result | None:
    return next((r for r in results if r.kind == "error"), None)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", list(READ_ONLY_TEMP_ATTACKS))
@pytest.mark.parametrize("strategy", list(READ_ONLY_USERS))
def test_read_only_tenant_temp_tables(env: Env, strategy: str, case: str, protocol: str) -> None:
    """A read-only tenant writes its own temporary tables and nothing else, whatever it names or shadows."""
    actor = ACTORS[strategy]
    user = READ_ONLY_USERS[strategy]
    key = {"shared": "bigco", "norls": "bigco", "schema": "two_co", "database": "dfive"}[strategy]
    db = READ_ONLY_DBS[strategy]
    own = str(bidata.own_counts(key)["orders"])
    reader = dataclasses.replace(actor, user=user, key=key, db=db)
    client = PqClient(env.proxy(actor).dsn(user, dbname=db))
    try:
        everything: list[Result] = []
        for sql, expected in READ_ONLY_TEMP_ATTACKS[case]:
            results = client.simple(sql) if protocol == "simple" else client.extended(sql)
            everything += results
            error = _temp_step_failed(results)
            if expected == "ok" or expected.isdigit() or expected == "<<n>>":
                assert error is None, (sql, _describe(results))
                if expected != "ok":
                    assert _last_rows(results).rows[0][0] == expected.replace("<<n>>", own), (sql, _describe(results))
            else:
                assert error is not None, (sql, _describe(results))
                assert error.denied_by_proxy == (expected == "proxy"), (sql, _describe(results))
            if client.in_transaction and expected not in ("ok",):
                client.simple("ROLLBACK")
        leaks = find_leaks(reader, everything, client.notices, " ".join(s for s, _ in READ_ONLY_TEMP_ATTACKS[case]))
        assert not leaks, f"LEAK: {leaks}"
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("strategy", list(READ_ONLY_USERS))
def test_temp_table_invisible_to_another_session_of_the_tenant(env: Env, strategy: str, protocol: str) -> None:
    actor = ACTORS[strategy]
    user = READ_ONLY_USERS[strategy]
    db = READ_ONLY_DBS[strategy]
    first, second = (PqClient(env.proxy(actor).dsn(user, dbname=db)) for _ in range(2))
    try:
        assert _temp_step_failed(first.simple("CREATE TEMP TABLE bi_private AS SELECT 'secret-of-first' AS s")) is None
        schema = _last_rows(first.simple("SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()")).rows[0][0]
        assert schema and schema.startswith("pg_temp_")
        for sql in ("SELECT * FROM bi_private", "SELECT * FROM pg_temp.bi_private",
                    f"SELECT * FROM {schema}.bi_private", "INSERT INTO bi_private VALUES ('x')",
                    f"DELETE FROM {schema}.bi_private", "DROP TABLE bi_private"):
            results = second.simple(sql) if protocol == "simple" else second.extended(sql)
            assert _temp_step_failed(results) is not None, (sql, _describe(results))
            assert "secret-of-first" not in "\n".join(r.text() for r in results)
        assert _last_rows(first.simple("SELECT count(*) FROM bi_private")).rows == [("1",)]
    finally:
        first.close()
        second.close()


def test_attack_catalogue_size() -> None:
    """The issue asks for at least 80 distinct cross-tenant attempts, each in both protocols."""
    assert len({a.id for a in ATTACKS}) == len(ATTACKS)
    assert len(ATTACKS) >= 80
    per_strategy = {s: sum(1 for a in ATTACKS if letter in a.where) for letter, s in STRATEGY_LETTERS.items()}
    assert all(n >= 50 for n in per_strategy.values()), per_strategy


# Another tenant's schema named in each way a name can be written (schema strategy: two_co exists, the tenant may not
# use it; nix_co, of the same length, does not exist).
HIDDEN_FORMS = {
    "relation": "SELECT * FROM {s}.orders",
    "join": "SELECT o.id FROM orders o JOIN {s}.customers c ON c.id = o.customer_id",
    "subquery": "SELECT (SELECT count(*) FROM {s}.orders)",
    "type": "SELECT NULL::{s}.orders",
    "regclass": "SELECT '{s}.orders'::regclass",
    "regnamespace": "SELECT '{s}'::regnamespace",
    "operator": "SELECT 1 OPERATOR({s}.+) 1",
    "coalesced_name": "SELECT COALESCE(NULL::regclass, '{s}.orders')",
    "column_ref": "SELECT {s}.orders.id",
    "column_star": "SELECT ({s}.orders.*)",
    "collate": "SELECT 'a' COLLATE {s}.c",
    "like": "CREATE TEMP TABLE bi_like (LIKE {s}.orders)",
    "copy": "COPY {s}.orders TO STDOUT",
    # red team round 3 R4: names PostgreSQL looks up outside the expression parser
    "column_collate": 'CREATE TEMP TABLE bi_coll (x text COLLATE {s}."C")',
    "exclusion_collate": 'CREATE TEMP TABLE bi_excl (x text, EXCLUDE USING btree (x COLLATE {s}."C" WITH =))',
    "exclusion_operator": "CREATE TEMP TABLE bi_excl (x text, EXCLUDE USING btree (x WITH OPERATOR({s}.=)))",
    "tablesample": "SELECT * FROM orders TABLESAMPLE {s}.bernoulli(1)",
    "order_using": "SELECT 'a' AS x ORDER BY x USING OPERATOR({s}.<)",  # short: libpq prints the whole line
}


@pytest.mark.parametrize("form", sorted(HIDDEN_FORMS))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hidden_schema_answers_as_a_missing_one(env: Env, protocol: str, form: str) -> None:
    """Naming another tenant's schema gets exactly PostgreSQL's own answer for a schema that does not exist (the
    SQLSTATE, the message, the position libpq prints as LINE/caret): the difference no longer tells that it exists."""
    actor = ACTORS["schema"]
    sql = HIDDEN_FORMS[form]
    _answers_as_missing(env, actor, protocol, sql, "two_co")


def _answers_as_missing(env: Env, actor: Actor, protocol: str, sql: str, schema: str) -> None:
    """`sql` naming `schema` through the proxy gets the errors PostgreSQL gives for nix_co (missing, same length)."""
    client, ref = env.client(actor), env.ref(actor)
    try:
        run = (lambda c, q: c.simple(q)) if protocol == "simple" else (lambda c, q: c.extended(q))
        hidden, missing = run(client, sql.format(s=schema)), run(ref, sql.format(s="nix_co"))
    finally:
        for c in (client, ref):
            if c.in_transaction:
                c.simple("ROLLBACK")
    got = [(r.sqlstate, r.message.replace(schema, "nix_co")) for r in hidden if r.kind == "error"]
    expected = [(r.sqlstate, r.message) for r in missing if r.kind == "error"]
    assert expected and got == expected, (got, expected)


@pytest.mark.parametrize("form", ["column_collate", "exclusion_collate", "tablesample", "order_using"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_public_answers_as_a_missing_schema(env: Env, protocol: str, form: str) -> None:
    """Schema strategy: `public` is not the tenant's to name; a collation, operator or TABLESAMPLE method written in
    it answered 42704/42883 where a missing schema answers 3F000 (red team round 3 R4, gina)."""
    actor = ACTORS["schema"]
    sql = HIDDEN_FORMS[form]
    _answers_as_missing(env, actor, protocol, sql, "public")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sequence_functions_take_no_hidden_relation(env: Env, protocol: str) -> None:
    """currval/nextval(regclass) given another tenant's table OID or a computed name answered with its name in the
    error ('cannot open relation "orders"'), or told a hidden table from a missing one (redteam-guards-2 G4): the
    argument is guarded like pg_sequence_last_value's, a hidden relation is NULL (and so is the result)."""
    actor = ACTORS["schema"]
    hidden = int(env.pg.execute("SELECT 'two_co.orders'::regclass::oid", dbname=actor.db)[0][0])
    client = env.client(actor)
    for sql, params in ((f"SELECT currval({hidden})", None), (f"SELECT nextval({hidden}::oid)", None),
                        ("SELECT currval(%s::int)", (hidden,)),
                        ("SELECT currval(concat('two_co.', 'orders')), currval(concat('two_co.', 'zz'))", None)):
        results = client.simple(bidata.bind_simple(sql, params)) if protocol == "simple" else client.extended(
            *bidata.bind_extended(sql, params))
        assert not [r for r in results if r.kind == "error"], (sql, results)
        all_null(results, actor)
    assert client.simple(actor.post_sql)[0].rows == [actor.expected_context()]


@pytest.mark.parametrize("strategy", ["shared", "schema"])
def test_parameter_declared_of_a_reg_type_is_refused(env: Env, strategy: str) -> None:
    """A Parse message may declare $1 regclass: its value ('16385') would be read by regclassin and printed as the
    name of any relation, another tenant's too, without a conversion in the text for a guard. Refused; the session
    goes on, and the same statement with the type unspecified and the conversion written is guarded."""
    actor = ACTORS[strategy]
    client = env.client(actor)
    conn = client.pgconn
    # regclass; an array of regtype as the second parameter; _regrole; pg_sequences' row type and its array;
    # aclitem and aclitem[] (role names, red team round 3 R7)
    for types in ([2205], [0, 2211], [4097], [12050], [0, 12049], [1033], [0, 1034]):
        conn.send_prepare(b"bi_reg_param", b"SELECT $1::text", param_types=types)
        results = client._collect(None)
        errors = [r for r in results if r.kind == "error"]
        assert errors and errors[0].sqlstate == "42501" and "reg_parameter_type" in errors[0].message, results
    # G5: a table's row type (another tenant's in the schema strategy) would describe its columns and name it
    user_type = int(env.pg.execute("SELECT reltype FROM pg_catalog.pg_class WHERE relname = 'orders' "
                                   "AND relkind = 'r' ORDER BY oid DESC LIMIT 1", dbname=actor.db)[0][0])
    assert user_type >= 16384
    for sql in (b"SELECT ($1).*", b"SELECT pg_typeof($1)", b"SELECT format('%s', pg_typeof($1))"):
        conn.send_prepare(b"bi_user_param", sql, param_types=[user_type])
        results = client._collect(None)
        errors = [r for r in results if r.kind == "error"]
        assert errors and errors[0].sqlstate == "42501" and "reg_parameter_type" in errors[0].message, results
    conn.send_prepare(b"bi_reg_param_ok", b"SELECT $1::regclass::text", param_types=[0])
    assert not [r for r in client._collect(None) if r.kind == "error"]
    conn.send_query_prepared(b"bi_reg_param_ok", [b"pg_class"])
    assert _last_rows(client._collect(None)).rows == [("pg_class",)]
    post = client.simple(actor.post_sql)
    assert post[0].rows == [actor.expected_context()]
    client.simple("DEALLOCATE ALL")



def test_name_bearing_types_match_the_catalog(pg: PgCluster) -> None:
    """nametypes.py's tables are PostgreSQL's catalog: the reg* types, their arrays, domains and the composite types
    holding one (TYPE_QUERY), and the pg_catalog functions returning one (FUNCTION_QUERY), on every major tested."""
    rows = pg.execute(nametypes.TYPE_QUERY)
    assert {(name, oid) for schema, name, oid in rows if schema == "pg_catalog"} == set(nametypes.NAME_TYPES.items())
    assert all(schema == "pg_catalog" for schema, _, _ in rows), rows  # a fresh cluster: no user type holds one
    functions = {name for (name,) in pg.execute(nametypes.FUNCTION_QUERY, {"types": sorted(nametypes.NAME_TYPE_OIDS)})}
    listed = set(nametypes.RESULT_FUNCTIONS) | set(nametypes.ROW_FUNCTIONS)
    internal = {f for f in functions if f.endswith(("in", "recv")) and f.startswith("reg")}
    assert functions - internal <= listed, functions - internal - listed
    assert listed - functions <= {"pg_basetype"}  # since PostgreSQL 17


_REG_TYPES = "SELECT oid FROM pg_catalog.pg_type WHERE typname ~ '^_?reg' AND typnamespace = 'pg_catalog'::regnamespace"


def test_name_conversions_match_the_catalog(pg: PgCluster) -> None:
    """Where PostgreSQL reads a value with a reg* input function without a written conversion, the guards follow it,
    decided on the catalog of every major tested (redteam-guards-2 G4, G6): every allow-listed pg_catalog function
    with a parameter of a reg* type (or an array of one) has that argument guarded (guards.CALL_ARGS, for that number
    of arguments); every allow-listed one with two polymorphic parameters resolves them in implicit.py; no operator
    takes a reg* type (a scalar beside one is compared as oid, read by oidin: only arrays need implicit.py's
    comparison groups)."""
    from proxy.policy import guards, implicit
    from proxy.policy.builtins import BUILTIN_FUNCTIONS

    rows = pg.execute(
        "SELECT p.proname, p.pronargs, a.n - 1 FROM pg_catalog.pg_proc p, unnest(p.proargtypes) WITH ORDINALITY "
        f"a(t, n) WHERE p.pronamespace = 'pg_catalog'::regnamespace AND a.t IN ({_REG_TYPES})")
    missing = []
    for name, nargs, index in rows:
        if name not in BUILTIN_FUNCTIONS:
            continue
        specs = [a for a in guards.CALL_ARGS.get(name, ()) if a.nargs is None or nargs in a.nargs]
        if not any((a.index if a.index >= 0 else nargs + a.index) == index for a in specs):
            missing.append((name, nargs, index))
    assert not missing, missing
    polymorphic = pg.execute(
        "SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace AND "
        "(SELECT count(*) FROM unnest(p.proargtypes) a WHERE a::regtype::text IN ('anyelement', 'anyarray', "
        "'anycompatible', 'anycompatiblearray', 'anynonarray', 'anycompatiblenonarray')) >= 2")
    known = {*implicit.ARRAY_FUNCTIONS, *implicit.ARRAY_COMPARES, *implicit._WINDOW_DEFAULTS}
    assert {name for (name,) in polymorphic if name in BUILTIN_FUNCTIONS} <= known
    assert pg.execute(f"SELECT oprname FROM pg_catalog.pg_operator WHERE oprleft IN ({_REG_TYPES}) OR oprright IN "
                      f"({_REG_TYPES})") == []


# ----------------------------------------------------- existence oracles of redteam-guards-2 G6, G8, G9 (closed)

# A name PostgreSQL reads with a reg* input function without a written conversion: beside an array of a reg* type
# (the anyarray operators, IS DISTINCT FROM, NULLIF, BETWEEN, a simple CASE, a row comparison, width_bucket,
# array_position), a text search configuration or dictionary argument, a reg* array literal. The input function
# answers "permission denied for schema" for a schema the role may not use and "does not exist" for a missing one;
# through pgtenant both answer alike ({s}: two_co exists and is another tenant's, nix_co does not exist).
NAME_LITERAL_FORMS = {
    "array_contains": "SELECT ARRAY[NULL::regclass] @> '{{{s}.orders}}'",
    "array_contained": "SELECT '{{{s}.orders}}' <@ ARRAY['pg_class'::regclass]",
    "array_equal": "SELECT ARRAY['pg_class'::regclass] = '{{pg_class,{s}.orders}}'",
    "array_overlap": "SELECT ARRAY[NULL::regclass] && '{{{s}.orders}}'",
    "array_distinct": "SELECT NULL::regclass[] IS DISTINCT FROM '{{{s}.orders}}'",
    "array_nullif": "SELECT NULLIF(NULL::regclass[], '{{{s}.orders}}')",
    "array_between": "SELECT NULL::regclass[] BETWEEN '{{{s}.orders}}' AND '{{pg_class}}'",
    "array_in_two": "SELECT NULL::regclass[] IN ('{{{s}.orders}}', '{{pg_class}}')",
    "array_in_one": "SELECT NULL::regclass[] IN ('{{{s}.orders}}')",
    "array_simple_case": "SELECT CASE NULL::regclass[] WHEN '{{{s}.orders}}' THEN 1 END",
    "array_row_compare": "SELECT (NULL::regclass[], 1) < ('{{{s}.orders}}', 2)",
    "array_cast": "SELECT '{{{s}.orders}}'::regclass[]",
    "array_regtype_cast": "SELECT '{{int4,{s}.orders}}'::regtype[]",
    "array_position": "SELECT array_position('{{{s}.orders}}', 'pg_class'::regclass)",
    "width_bucket": "SELECT width_bucket(NULL::regclass, '{{{s}.orders}}')",
    "to_tsvector": "SELECT to_tsvector('{s}.cfg', 'a')",
    "to_tsquery": "SELECT to_tsquery('{s}.cfg', 'a')",
    "plainto_tsquery": "SELECT plainto_tsquery('{s}.cfg', 'a')",
    "phraseto_tsquery": "SELECT phraseto_tsquery('{s}.cfg', 'a')",
    "websearch_to_tsquery": "SELECT websearch_to_tsquery('{s}.cfg', 'a')",
    "ts_debug": "SELECT * FROM ts_debug('{s}.cfg', 'a')",
    "ts_headline": "SELECT ts_headline('{s}.cfg', 'a b', to_tsquery('a'))",
    "jsonb_to_tsvector": "SELECT jsonb_to_tsvector('{s}.cfg', '{{\"a\": \"b\"}}', '[\"string\"]')",
    "ts_lexize": "SELECT ts_lexize('{s}.simple', 'a')",
    "ts_parse": "SELECT * FROM ts_parse('{s}.default', 'a b')",  # a parser's name as text (self-red-team)
    "ts_token_type": "SELECT count(*) FROM ts_token_type('{s}.default')",
    # a setting whose value names a configuration, looked up when set (self-red-team)
    "default_text_search_config": "SET default_text_search_config = '{s}.cfg'",
    "default_text_search_config_set_config": "SELECT set_config('default_text_search_config', '{s}.cfg', false)",
}
# The same through a bound value (the extended protocol: a parameter PostgreSQL infers as regclass[] / regconfig).
NAME_PARAMETER_FORMS = {
    "array_contains": ("SELECT ARRAY[NULL::regclass] @> %s", "{{{s}.orders}}"),
    "array_coalesce": ("SELECT COALESCE(NULL::regclass[], %s)", "{{{s}.orders}}"),
    "array_cast": ("SELECT %s::regclass[]", "{{{s}.orders}}"),
    "width_bucket": ("SELECT width_bucket(NULL::regclass, %s)", "{{{s}.orders}}"),
    "to_tsvector": ("SELECT to_tsvector(%s, 'a')", "{s}.cfg"),
    "ts_lexize": ("SELECT ts_lexize(%s, 'a')", "{s}.simple"),
    "ts_token_type": ("SELECT count(*) FROM ts_token_type(%s)", "{s}.default"),
}


def _answer(results: list[Result]) -> list[tuple[str, ...]]:
    """What a client sees: each error's SQLSTATE and message (the schema's name made the same), the last rows."""
    out = [(r.sqlstate, r.message.replace("two_co", "nix_co")) for r in results if r.kind == "error"]
    rows = [r for r in results if r.kind == "rows"]
    return out + ([tuple(str(c) for row in rows[-1].rows for c in row)] if rows and not out else [])


@pytest.mark.parametrize("form", sorted(NAME_LITERAL_FORMS))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_name_literal_does_not_tell_a_hidden_schema(env: Env, protocol: str, form: str) -> None:
    """redteam-guards-2 G6: another tenant's schema and a missing one get the same answer (an array of names is read
    as text[] and each name looked up only outside hidden schemas; a configuration's name the same way)."""
    actor = ACTORS["schema"]
    client = env.client(actor)
    answers = []
    for schema in ("two_co", "nix_co"):
        sql = NAME_LITERAL_FORMS[form].format(s=schema)
        results = client.simple(sql) if protocol == "simple" else client.extended(sql)
        answers.append(_answer(results))
    assert answers[0] == answers[1], answers
    assert client.simple(actor.post_sql)[0].rows == [actor.expected_context()]


@pytest.mark.parametrize("form", sorted(NAME_PARAMETER_FORMS))
def test_name_parameter_does_not_tell_a_hidden_schema(env: Env, form: str) -> None:
    """G6 through a bound parameter whose type PostgreSQL infers as regclass[] or regconfig."""
    actor = ACTORS["schema"]
    client = env.client(actor)
    sql, value = NAME_PARAMETER_FORMS[form]
    answers = [_answer(client.extended(*bidata.bind_extended(sql, (value.format(s=s),)))) for s in ("two_co", "nix_co")]
    assert answers[0] == answers[1], answers
    assert not [a for a in answers[0] if len(a) == 2 and a[0] == "42501"], answers


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_other_sessions_temp_schema_in_a_name_literal(env: Env, protocol: str) -> None:
    """G6, shared strategy: another session's temporary schema named in a configuration or an array of names answers
    as a temporary schema that does not exist (another tenant's session, in this strategy)."""
    actor = ACTORS["shared"]
    other = env.ref(actor)
    other.simple("CREATE TEMP TABLE IF NOT EXISTS bi_g6_other (x int)")
    try:
        temp = _last_rows(other.simple("SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()")).rows[0][0]
        client = env.client(actor)
        for sql in ("SELECT to_tsvector('{t}.cfg', 'a')", "SELECT ARRAY[NULL::regclass] @> '{{{t}.bi_g6_other}}'",
                    "SELECT '{{{t}.bi_g6_other}}'::regclass[]"):
            answers = []
            for schema in (temp, "pg_temp_987654"):
                text = sql.format(t=schema)
                results = client.simple(text) if protocol == "simple" else client.extended(text)
                answers.append([(r.sqlstate, r.message.replace(schema, "?")) for r in results if r.kind == "error"]
                               or _last_rows(results).rows)
            assert answers[0] == answers[1], (sql, answers)
    finally:
        other.simple("DROP TABLE IF EXISTS bi_g6_other")


def test_own_text_search_configuration_still_works(env: Env) -> None:
    """Reporting use of the text search functions is unchanged: a built-in configuration by its name."""
    for strategy in ("shared", "schema", "database"):
        client = env.client(ACTORS[strategy])
        for sql in ("SELECT to_tsvector('english', 'The quick foxes')::text",
                    "SELECT to_tsvector('pg_catalog.english', 'The quick foxes')::text",
                    "SELECT ts_headline('english', 'The quick foxes', to_tsquery('english', 'fox'))"):
            results = client.extended(sql)
            assert not [r for r in results if r.kind == "error"], (strategy, sql, results)
        assert _last_rows(client.simple("SELECT to_tsvector('english', 'The quick foxes')::text")).rows == [
            ("'fox':3 'quick':2",)]
        steps = ("SET default_text_search_config = 'pg_catalog.simple'", "SELECT to_tsvector('The foxes')::text",
                 "RESET default_text_search_config")
        results = [r for step in steps for r in client.simple(step)]
        assert not [r for r in results if r.kind == "error"], (strategy, results)
        assert _last_rows(results).rows == [("'foxes':2 'the':1",)], (strategy, results)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_other_sessions_temp_schemas_are_not_listed(env: Env, protocol: str) -> None:
    """redteam-guards-2 G9: pg_is_other_temp_schema(oid) over a range of OIDs listed other sessions' temporary
    schemas (other tenants' activity): its argument is guarded, a hidden schema reads as NULL like a missing one."""
    actor = ACTORS["schema"]
    other = env.ref(actor)  # another backend of the same database, holding a temporary schema
    other.simple("CREATE TEMP TABLE IF NOT EXISTS bi_g9_other (x int)")
    try:
        client = env.client(actor)
        sql = "SELECT count(*) FROM generate_series(16384, 100000) n WHERE pg_is_other_temp_schema(n::oid)"
        results = client.simple(sql) if protocol == "simple" else client.extended(sql)
        assert not [r for r in results if r.kind == "error"], results
        assert _last_rows(results).rows == [("0",)], _last_rows(results).rows
    finally:
        other.simple("DROP TABLE IF EXISTS bi_g9_other")


@pytest.mark.parametrize("strategy", ["shared", "norls"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ctid_of_own_rows_is_not_shown(env: Env, protocol: str, strategy: str) -> None:
    """redteam-guards-2 G8: the ctid of a tenant's rows in a table every tenant shares told how many other tenants'
    rows are stored before and between them: refused with its rule, the session goes on; other system columns and a
    temporary table's ctid stay available."""
    actor = ACTORS[strategy]
    client = env.client(actor)
    for sql in ("SELECT min(ctid)::text, max(ctid)::text FROM orders",
                "SELECT count(*) FROM orders o WHERE o.ctid < '(1,0)'",
                "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY c.ctid LIMIT 1"):
        results = client.simple(sql) if protocol == "simple" else client.extended(sql)
        errors = [r for r in results if r.kind == "error"]
        assert errors and errors[0].sqlstate == "42501" and "(rule row_position)" in errors[0].message, results
        assert not [r for r in results if r.kind == "rows"], results
    if strategy == "shared":  # xmin under forced RLS keeps the relation (the WHERE form)
        assert _last_rows(client.simple("SELECT count(xmin) FROM orders")).rows == [(str(actor.counts["orders"]),)]
    steps = ("CREATE TEMP TABLE bi_g8_temp AS SELECT 1 AS x", "SELECT ctid::text FROM bi_g8_temp",
             "DROP TABLE bi_g8_temp")
    results = [r for step in steps for r in client.simple(step)]
    assert not [r for r in results if r.kind == "error"], results
    assert _last_rows(results).rows == [("(0,1)",)]
    assert client.simple(actor.post_sql)[0].rows == [actor.expected_context()]


@pytest.mark.parametrize("strategy", ["shared", "norls"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_page_sampling_of_a_shared_table_is_refused(env: Env, protocol: str, strategy: str) -> None:
    """Red team 9a7 H6: `TABLESAMPLE SYSTEM (p) REPEATABLE (seed)` over a few seeds grouped a shared tenant's rows by
    page (rows drawn together share one), so the pages it shares counted the other tenants' rows on them, what the
    ctid refusal hides. SYSTEM and any REPEATABLE of a scoped table are refused with their rule, the session goes
    on; BERNOULLI without REPEATABLE samples the tenant's rows; a temporary table is sampled as written."""
    actor = ACTORS[strategy]
    client = env.client(actor)
    run = client.simple if protocol == "simple" else client.extended
    for sql in ("SELECT id FROM orders TABLESAMPLE SYSTEM (50) REPEATABLE (7)",
                "SELECT count(*) FROM orders TABLESAMPLE SYSTEM (100)",
                "SELECT count(*) FROM orders o TABLESAMPLE BERNOULLI (100) REPEATABLE (1)",
                "SELECT c.id FROM customers c TABLESAMPLE pg_catalog.system (100) JOIN orders o ON o.id = c.id"):
        results = run(sql)
        errors = [r for r in results if r.kind == "error"]
        assert errors and errors[0].sqlstate == "42501" and "(rule row_sampling)" in errors[0].message, results
        assert "BERNOULLI" in errors[0].message and not [r for r in results if r.kind == "rows"], results
    rows = _last_rows(run("SELECT count(*) FROM orders TABLESAMPLE BERNOULLI (100)")).rows
    assert rows == [(str(actor.counts["orders"]),)]
    steps = ("CREATE TEMP TABLE bi_h6_temp AS SELECT 1 AS x",
             "SELECT count(*) FROM bi_h6_temp TABLESAMPLE SYSTEM (100) REPEATABLE (3)", "DROP TABLE bi_h6_temp")
    results = [r for step in steps for r in client.simple(step)]
    assert not [r for r in results if r.kind == "error"], results
    assert _last_rows(results).rows == [("1",)]
    assert client.simple(actor.post_sql)[0].rows == [actor.expected_context()]


@pytest.mark.parametrize("strategy", ["shared", "norls", "schema", "database"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_xmax_is_refused_where_other_tenants_lock_rows(env: Env, protocol: str, strategy: str) -> None:
    """`xmax` is the last transaction that locked or deleted a row and stays after it: a foreign key check of another
    tenant's insert locks the (shared) row it references (PostgreSQL 18: an insert into a referencing table left
    the referenced row's xmax at its xid, after COMMIT and VACUUM). Refused with its rule outside the database
    strategy, the session goes on; xmin and a temporary table's xmax stay."""
    actor = ACTORS[strategy]
    client = env.client(actor)
    run = client.simple if protocol == "simple" else client.extended
    for sql in ("SELECT id, xmax FROM orders", "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id "
                "WHERE c.xmax <> '0'", "SELECT amname, xmax::text FROM pg_am"):
        results = run(sql)
        errors = [r for r in results if r.kind == "error"]
        if strategy == "database":
            assert not errors, results
        else:
            assert errors and errors[0].sqlstate == "42501" and "(rule row_locker)" in errors[0].message, results
            assert not [r for r in results if r.kind == "rows"], results
    if strategy != "norls":  # (without forced RLS a scoped table's system columns are lost: GAP_SYSTEM_COLUMNS)
        assert _last_rows(run("SELECT count(xmin) FROM customers")).rows == [(str(actor.counts["customers"]),)]
    steps = ("CREATE TEMP TABLE bi_xmax_temp AS SELECT 1 AS x", "SELECT xmax::text FROM bi_xmax_temp",
             "DROP TABLE bi_xmax_temp")
    results = [r for step in steps for r in client.simple(step)]
    assert not [r for r in results if r.kind == "error"], results
    assert _last_rows(results).rows == [("0",)]
    assert client.simple(actor.post_sql)[0].rows == [actor.expected_context()]


@pytest.mark.parametrize("strategy", ["schema", "database"])
def test_ctid_stays_in_a_tenant_of_its_own(env: Env, strategy: str) -> None:
    """A schema or database of the tenant's own holds only its rows: ctid is PostgreSQL's."""
    actor = ACTORS[strategy]
    rows = _last_rows(env.client(actor).simple("SELECT count(ctid) FROM orders")).rows
    assert rows == [(str(actor.counts["orders"]),)]


# The DDL phase oracle (issue 14): another tenant's schema and a missing one of the same length, named in each
# statement form the red teams used, must be answered alike through the proxy: the same results, SQLSTATE and message
# (the name aside), at the same protocol message (Parse or Execute), in both protocols.
PHASE_FORMS = {
    "create_temp_collate": 'CREATE TEMP TABLE bi_ph (x text COLLATE {s}."C")',
    "create_temp_like": "CREATE TEMP TABLE bi_ph (LIKE {s}.orders)",
    "create_temp_type": "CREATE TEMP TABLE bi_ph (x {s}.orders)",
    "create_temp_view": "CREATE TEMP VIEW bi_phv AS SELECT * FROM {s}.orders",
    "create_temp_as": "CREATE TEMP TABLE bi_ph AS SELECT * FROM {s}.orders",
    "create_temp_in": "CREATE TEMP TABLE {s}.bi_ph (a int)",
    "create_table": "CREATE TABLE {s}.bi_ph (a int)",
    "create_view": "CREATE VIEW {s}.bi_phv AS SELECT 1",
    "create_index": "CREATE INDEX bi_phi ON {s}.orders (id)",
    "create_function": "CREATE FUNCTION {s}.bi_phf() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "prepare": "PREPARE bi_php AS SELECT * FROM {s}.orders",
    "declare": "DECLARE bi_phc CURSOR FOR SELECT * FROM {s}.orders",
    "explain": "EXPLAIN SELECT * FROM {s}.orders",
    "copy_to": "COPY {s}.orders TO STDOUT",
    "copy_query": "COPY (SELECT * FROM {s}.orders) TO STDOUT",
    "drop_table": "DROP TABLE {s}.orders",
    "drop_if_exists": "DROP TABLE IF EXISTS {s}.orders",
    "drop_schema": "DROP SCHEMA {s}",
    "drop_schema_if_exists": "DROP SCHEMA IF EXISTS {s}",
    "drop_function_if_exists": "DROP FUNCTION IF EXISTS {s}.bi_f()",
    "drop_view_if_exists": "DROP VIEW IF EXISTS {s}.orders",
    "default_nextval": "CREATE TEMP TABLE bi_ph (a bigint DEFAULT nextval('{s}.bi_seq'))",
    "set_schema": "ALTER TABLE orders SET SCHEMA {s}",
    "security_label": "SECURITY LABEL ON TABLE {s}.orders IS 'x'",
    "to_regtype": "SELECT to_regtype('{s}.orders')",
    "has_privilege": "SELECT has_table_privilege('{s}.orders', 'SELECT')",
    "prepare_insert": "PREPARE bi_php (int) AS INSERT INTO {s}.orders (id) VALUES ($1)",
    "explain_view": "EXPLAIN SELECT * FROM orders o JOIN {s}.orders x ON x.id = o.id",
    # a later statement decided in the session the refused one would leave (its temporary table, view, statement)
    "then_insert": "CREATE TEMP TABLE bi_ph (LIKE {s}.orders); INSERT INTO bi_ph DEFAULT VALUES",
    "then_view": "CREATE TEMP VIEW bi_phv AS SELECT * FROM {s}.orders; SELECT * FROM bi_phv",
    "then_execute": "PREPARE bi_php AS SELECT * FROM {s}.orders; EXECUTE bi_php",
    "then_refused": "SELECT * FROM {s}.orders; DO $$BEGIN END$$",
    "drop_type": "DROP TYPE {s}.orders",
    "alter_table": "ALTER TABLE {s}.orders ADD COLUMN bi_z int",
    "alter_schema": "ALTER SCHEMA {s} RENAME TO bi_phs",
    "comment_table": "COMMENT ON TABLE {s}.orders IS 'x'",
    "comment_schema": "COMMENT ON SCHEMA {s} IS 'x'",
    "grant_table": "GRANT SELECT ON {s}.orders TO PUBLIC",
    "grant_schema": "GRANT USAGE ON SCHEMA {s} TO PUBLIC",
    "grant_all_in": "GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO PUBLIC",
    "revoke_table": "REVOKE SELECT ON {s}.orders FROM PUBLIC",
    "truncate": "TRUNCATE {s}.orders",
    "lock": "LOCK TABLE {s}.orders",
    "analyze": "ANALYZE {s}.orders",
    "vacuum": "VACUUM {s}.orders",
    "select": "SELECT * FROM {s}.orders",
    "select_type": "SELECT NULL::{s}.orders",
    "select_filtered": "SELECT * FROM orders, {s}.orders",  # the tenant filter written before the name (shared)
    "select_function": "SELECT {s}.bi_f()",
    "insert": "INSERT INTO {s}.orders (id) VALUES (1)",
    "to_regclass": "SELECT to_regclass('{s}.orders')",
    "regclass": "SELECT '{s}.orders'::regclass",
    "regnamespace": "SELECT '{s}'::regnamespace",
    "set_search_path": "SET search_path TO {s}",
}
PHASE_SCHEMAS = {"schema": ("two_co", "nix_co"), "shared": ("globex", "glebox")}


def _unnamed(message: str, name: str) -> str:
    """`message` with the schema name written as SCHEMA (also where libpq cut the statement's line short in it)."""
    message = message.replace(name, "SCHEMA")
    for cut in range(1, len(name)):
        message = message.replace(name[:cut] + "...", "SCHEMA"[:cut] + "...")
    return message


def _phased(client: PqClient, protocol: str, sql: str) -> list[tuple[str, str, str | None, str]]:
    """What the client sees of `sql`: per result the phase it came in (parse/execute), kind, SQLSTATE, message."""
    if protocol == "simple":
        return [("query", r.kind, r.sqlstate, r.message) for r in client.simple(sql)]
    client._names += 1
    name = f"bi_phase_{client._names}".encode()
    client.pgconn.send_prepare(name, sql.encode())
    out = [("parse", r.kind, r.sqlstate, r.message) for r in client._collect(None)]
    if any(r[1] == "error" for r in out):
        return out
    client.pgconn.send_describe_prepared(name)
    out += [("describe", r.kind, r.sqlstate, r.message) for r in client._collect(None)]
    client.pgconn.send_query_prepared(name, [])
    return out + [("execute", r.kind, r.sqlstate, r.message) for r in client._collect(None)]


@pytest.mark.parametrize("form", sorted(PHASE_FORMS))
@pytest.mark.parametrize("strategy", sorted(PHASE_SCHEMAS))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hidden_schema_is_answered_in_the_phase_of_a_missing_one(env: Env, protocol: str, strategy: str,
                                                                 form: str) -> None:
    """The DDL phase oracle (issue 14): PostgreSQL analyzes utility statements only when they run, so a missing
    schema there is answered at Execute; another tenant's schema must be too (not at Parse), with the same SQLSTATE
    and message, in both protocols, and in a multi-statement Query after the statements before it ran."""
    hidden, missing = PHASE_SCHEMAS[strategy]
    proxy = env.proxies["strict"]
    user = "s_one" if strategy == "schema" else "alice"
    db = bidata.SCHEMA_DB if strategy == "schema" else "saas"
    client = PqClient(proxy.dsn(user, dbname=db))
    try:
        seen = {}
        for name in (hidden, missing):
            for sql in (PHASE_FORMS[form], "SELECT 1 AS a; " + PHASE_FORMS[form]):
                client.notices.clear()
                got = _phased(client, protocol, sql.format(s=name))
                got += [("notice", "", None, notice) for notice in client.notices]
                if client.in_transaction:
                    client.simple("ROLLBACK")
                client.simple("DISCARD TEMP")
                seen.setdefault(name, []).append([(p, k, c, _unnamed(msg, name)) for p, k, c, msg in got])
        assert seen[hidden] == seen[missing]
    finally:
        client.close()


def _phase_client(env: Env, strategy: str) -> PqClient:
    user, db = ("s_one", bidata.SCHEMA_DB) if strategy == "schema" else ("alice", "saas")
    return PqClient(env.proxies["strict"].dsn(user, dbname=db))


@pytest.mark.parametrize("strategy", sorted(PHASE_SCHEMAS))
def test_a_statement_refused_when_it_runs_is_refused_at_each_run(env: Env, strategy: str) -> None:
    """A named statement naming a hidden schema that PostgreSQL analyzes when it runs: prepared, run twice with other
    requests between (another pooled server may serve them), listed in pg_prepared_statements with the client's text,
    deallocated -- the same answers as for a missing schema."""
    def run(client: PqClient, name: str) -> list[Any]:
        client.pgconn.send_prepare(b"bi_twice", f"CREATE TEMP VIEW bi_twice AS SELECT * FROM {name}.orders".encode())
        got: list[Any] = [(r.kind, r.sqlstate) for r in client._collect(None)]
        for _ in range(2):
            client.pgconn.send_query_prepared(b"bi_twice", [])
            got += [(r.kind, r.sqlstate, _unnamed(r.message, name)) for r in client._collect(None)]
            got += [r.rows for r in client.simple("SELECT count(*) FROM orders")]
        listed = client.simple("SELECT statement FROM pg_prepared_statements WHERE name = 'bi_twice'")
        got += [[tuple(_unnamed(v or "", name) for v in row) for row in r.rows] for r in listed]
        client.pgconn.send_describe_prepared(b"bi_twice")
        got += [(r.kind, r.sqlstate) for r in client._collect(None)]
        return got + [(r.kind, r.tag) for r in client.simple("DEALLOCATE bi_twice")]

    seen = _alike(env, strategy, run)
    assert 'relation "SCHEMA.orders" does not exist at character ' in str(seen)  # each Execute failed


def _alike(env: Env, strategy: str, run: Callable[[PqClient, str], list[Any]]) -> list[Any]:
    """`run` (a fresh session each time) naming the hidden schema and the missing one: the same, which it returns."""
    seen = {}
    for name in PHASE_SCHEMAS[strategy]:
        client = _phase_client(env, strategy)
        try:
            seen[name] = run(client, name)
        finally:
            client.close()
    hidden, missing = PHASE_SCHEMAS[strategy]
    assert seen[hidden] == seen[missing]
    return seen[missing]


@pytest.mark.parametrize("strategy", sorted(PHASE_SCHEMAS))
@pytest.mark.parametrize("prefix", ["SET application_name = 'bi_phase'; ", "BEGIN; SELECT 1; ",
                                    "CREATE TEMP TABLE bi_pre (a int); ",
                                    "BEGIN; COMMIT; SET application_name = 'x'; ",
                                    "PREPARE bi_pre AS SELECT 1; "])
def test_the_statements_before_a_hidden_schema_leave_what_they_leave_for_a_missing_one(env: Env, strategy: str,
                                                                                      prefix: str) -> None:
    """A Query whose later statement names a hidden schema: what the statements before it did (a setting, an open
    transaction, a temporary table, a committed transaction's effects) is what they do before a missing one."""
    def run(client: PqClient, name: str) -> list[Any]:
        got: list[Any] = [(r.kind, r.tag, r.sqlstate, _unnamed(r.message, name))
                          for r in client.simple(prefix + f"SELECT * FROM {name}.orders; SELECT 2")]
        got.append(client.in_transaction)
        if client.in_transaction:
            client.simple("ROLLBACK")
        got += [r.rows for r in client.simple("SELECT current_setting('application_name'), "
                                              "to_regclass('pg_temp.bi_pre') IS NOT NULL, "
                                              "(SELECT string_agg(name, ',') FROM pg_prepared_statements)")]
        return got + [(r.kind, r.sqlstate) for r in client.simple("EXECUTE bi_pre")]

    _alike(env, strategy, run)


# Issue 14 (red team 8a F1-F11): a hidden schema is sent to PostgreSQL as a reserved name that cannot exist, so every
# field of its answer is PostgreSQL's own for a missing schema -- compared field by field, LOCATION (file, line,
# routine) included, with the transaction status and a statement after it.
FIELD_FORMS = {
    **PHASE_FORMS,
    # F1: every form answered as missing
    "collate": "SELECT 'a' COLLATE {s}.\"C\"",
    "null_type": "SELECT NULL::{s}.orders",
    "check_operator": "CREATE TEMP TABLE bi_fx (x int CHECK (x OPERATOR({s}.>) 0))",
    "declare_in_tx": "BEGIN; DECLARE bi_fc CURSOR FOR SELECT * FROM {s}.orders",
    "column_ref": "SELECT {s}.orders.id",
    "column_star": "SELECT ({s}.orders.*)",
    "tablesample": "SELECT * FROM orders TABLESAMPLE {s}.bernoulli(1)",
    "order_using": "SELECT 'a' AS x ORDER BY x USING OPERATOR({s}.<)",
    "exclusion_operator": "CREATE TEMP TABLE bi_fx (x text, EXCLUDE USING btree (x WITH OPERATOR({s}.=)))",
    "exclusion_collate": 'CREATE TEMP TABLE bi_fx (x text, EXCLUDE USING btree (x COLLATE {s}."C" WITH =))',
    "quoted": 'SELECT * FROM "{s}".orders',
    "upper": "SELECT * FROM {S}.orders",
    "unicode_escape": 'SELECT * FROM U&"{u}".orders',
    "comment_between": "SELECT * FROM {s} /* x */ . orders",
    "alias_named_so": "SELECT {s}.id FROM orders {s} WHERE false",
    # F2: IF NOT EXISTS of an existing table never looks the schema up
    "if_not_exists_like": "CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 (LIKE {s}.orders)",
    "if_not_exists_collate": 'CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 '
                             '(x text COLLATE {s}."C")',
    "if_not_exists_type": "CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 (x {s}.orders)",
    "if_not_exists_check": "CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 "
                           "(x int CHECK (x OPERATOR({s}.>) 0))",
    # F6: an earlier error of the same statement
    "earlier_relation": "SELECT * FROM nosucht, {s}.orders",
    "earlier_cast": "SELECT 'x'::int, NULL::{s}.orders",
    "earlier_column": "SELECT nosuchcol, (SELECT 1 FROM {s}.orders)",
    "earlier_parameter": "SELECT * FROM orders o WHERE o.id = $1 AND EXISTS (SELECT 1 FROM {s}.orders)",
    "earlier_cte": "WITH a AS (SELECT * FROM nosucht) SELECT * FROM {s}.orders, a",
    "earlier_like": "CREATE TEMP TABLE bi_fx (LIKE nosuchq.orders, LIKE {s}.orders)",
    "earlier_type": "CREATE TEMP TABLE bi_fx (x nosuchtype, LIKE {s}.orders)",
    "earlier_collate": 'CREATE TEMP TABLE bi_fx (x int COLLATE nosuchq."C", y text COLLATE {s}."C")',
    "earlier_opclass": "CREATE TEMP TABLE bi_fx (x int, EXCLUDE USING gist (x WITH OPERATOR({s}.=)))",
    "insert_temp_missing": "INSERT INTO pg_temp.bi_nosuch SELECT * FROM {s}.orders",
    # F9: the position after a rewrite ahead of the name
    "rewritten_before": "SELECT current_setting('search_path'), * FROM {s}.orders",
    # F10: the statement's own earlier failures
    "lock_outside_tx": "LOCK TABLE {s}.orders IN ACCESS SHARE MODE",
    "lock_in_tx": "BEGIN; LOCK TABLE {s}.orders IN ACCESS SHARE MODE",
    "lock_after_own": "BEGIN; LOCK TABLE orders, {s}.orders IN ACCESS SHARE MODE",
    "lock_only_nowait": "BEGIN; LOCK TABLE ONLY {s}.orders IN ACCESS SHARE MODE NOWAIT",
    "read_only_tx": "BEGIN READ ONLY; CREATE TEMP TABLE bi_fx (LIKE {s}.orders)",
    "set_tx_read_only": "SET TRANSACTION READ ONLY; CREATE TEMP TABLE bi_fx (LIKE {s}.orders)",
    # F11: what the proxy cannot rewrite for another reason
    "recursive_view": "CREATE TEMP RECURSIVE VIEW bi_fv (a) AS SELECT 1 FROM {s}.orders",
    "regclass_concat": "SELECT ARRAY['x'::regclass] || 16385, * FROM {s}.orders",
    # notices: a statement that goes on past the missing name
    "drop_temp_if_exists": "DROP TABLE IF EXISTS pg_temp.bi_nosuch, {s}.orders",
    "two_names": "SELECT * FROM {s}.orders, {s}.customers",
    "setting_prefix": "SET {s}.x = 'v'; SHOW {s}.x",  # a setting's prefix, not a schema: kept
    "function_in_where": "SELECT id FROM orders WHERE false AND {s}.bi_f(id) > 0",
    "ctas_if_not_exists": "CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 AS "
                          "SELECT * FROM {s}.orders",
    "cast_in_values": "VALUES (1::{s}.dom)",
    # red team 9a: a reloption namespace is no schema (G10), a quoted name against a keyword (G6), a spelling past 63
    # characters (G6), positions after the renamed name (G7), the statements run before a refusal of the proxy's (G9)
    "reloption_namespace": "CREATE TEMP TABLE bi_fx (a int) WITH ({s}.fillfactor = 50)",
    "view_option_namespace": "CREATE TEMP VIEW bi_fv WITH ({s}.x = 1) AS SELECT 1",
    "quoted_after_keyword": 'SELECT*FROM"{s}".orders',
    "join_quoted": 'SELECT 1 FROM orders o JOIN"{s}".orders p ON true',
    "long_unicode": "SELECT * FROM U&\"{w}\" UESCAPE '!'.orders",
    "unicode_comment": "SELECT * FROM U&\"{w}\" /* \u00e9 " + "x" * 80 + " */ UESCAPE '!'.orders",
    "position_after": "CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 (LIKE {s}.orders); "
                      "SELECT nosuchcol",
    "before_refusal": "SELECT 1 FROM {s}.orders; SELECT pg_sleep_for('1s')",
    # G1, G11: a three-part operator/collation/TABLESAMPLE/constraint name (the current database first) is refused as
    # another database's, whatever schema follows; SET CONSTRAINTS s.c is renamed
    "three_part_operator": "SELECT nosuchcol, 1 OPERATOR(saas.{s}.+) 1 FROM orders",
    "three_part_collate": "CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 "
                          "(x text COLLATE saas.{s}.\"C\")",
    "three_part_sample": "SELECT * FROM orders TABLESAMPLE saas.{s}.bernoulli(10)",
    "three_part_before": "SELECT 1 FROM {s}.orders; SELECT 1 OPERATOR(saas.{s}.+) 1",
    "set_constraints_three_part": "SET CONSTRAINTS saas.{s}.c DEFERRED",
    "set_constraints": "BEGIN; SET CONSTRAINTS {s}.c DEFERRED",
    "uescape_dollar": "SELECT * FROM nosucht, U&\"{w}\" UESCAPE $$!$$.orders",  # G5: the escape is the value
    "uescape_escape_string": "SELECT * FROM U&\"{w}\" UESCAPE E'\\041'.orders",
    "uescape_if_not_exists": "CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 "
                             "(LIKE U&\"{w}\" UESCAPE $$!$$.orders)",
    "before_refusal_later": "CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 (LIKE {s}.orders); "
                            "SELECT nosuchcol; SELECT pg_sleep_for('1s')",
    # 9a2 H8: what stands right before the name does not join the reserved name into another token
    "quoted_identifier_before": 'CREATE TEMP TABLE bi_fq ("a"{s}.t)',
    "quoted_identifier_before_later": 'CREATE TEMP TABLE bi_fq (a int, "b"{s}.t, nosuch nosuchtype)',
    "unicode_identifier_before": 'CREATE TEMP TABLE bi_fq (U&"a"{s}.t)',
    "u_ampersand_function": "SELECT u&{s}.f() FROM (SELECT 1 AS u) v",
    "u_ampersand_column": "SELECT u&{s}.orders.id FROM (SELECT 1 AS u) v",
    "column_definition_list": "SELECT * FROM json_to_record('{{}}') AS x(\"a\"{s}.t)",
    "rows_from": "SELECT * FROM ROWS FROM (json_to_record('{{}}') AS (\"a\"{s}.t))",
    "comment_before": "SELECT 1 FROM/*c*/{s}.orders",
    "operator_before": "SELECT 1+{s}.f()",
    "string_before": "SELECT E'x'::{s}.t, $a$y$a$::{s}.t, nosuchcol",
    # 9a2 H5: text shaped like a reserved name in the client's statement, a tenant filter written before the name
    "reserved_shaped_alias": 'SELECT 1 AS "pg_9aaaaaaaaaaaaaaaaaaaaaaaa" FROM orders, {s}.orders',
    "reserved_shaped_comment": 'SELECT 1 FROM orders, {s}.orders /* "pg_9aaaaaaaaaaaaaaaaaaaaaaaa" */',
    "reserved_shaped_string": "SELECT '\"pg_9aaaaaaaaaaaaaaaaaaaaaaaa\"', 1 FROM orders, {s}.orders",
    "reserved_shaped_after": "CREATE TEMP TABLE bi_f0 (x int); CREATE TEMP TABLE IF NOT EXISTS bi_f0 "
                             "(LIKE {s}.orders); "
                             'SELECT 1 AS "pg_9aaaaaaaaaaaaaaaaaaaaaaaa", nosuchcol FROM orders',
}
# (user, database) of a tenant from whom schema globex (the schema tenant's, in database saas) is hidden.
HIDING_TENANTS = {"shared": ("alice", "saas"), "database": ("dan", "saas")}
_DIAGNOSTICS = tuple(f for f in pq.DiagnosticField)


@pytest.fixture(scope="module")
def hiding_proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The default tenants (alice: shared, acme) and a database tenant of database saas (dan: hooli); both have the
    schema tenant's schema globex hidden."""
    p = dan_proxy(pg, tmp_path_factory.mktemp("hiding"))
    p.start()
    yield p
    p.stop()


def _fields(res: pq.PGresult, names: tuple[str, ...]) -> tuple[Any, ...]:
    """Every diagnostic field of an error or notice, with the schema's name (any spelling used) as SCHEMA."""
    out = []
    for f in _DIAGNOSTICS:
        value = res.error_field(f)
        text = None if value is None else value.decode("utf-8", "replace")
        for name in names:
            text = text.replace(name, "SCHEMA") if text is not None else None
        out.append((f.name, text))
    return tuple(out)


def _answers(conn: pq.PGconn, protocol: str, sql: str, names: tuple[str, ...], run: int) -> list[Any]:
    """What a client sees of `sql` (every result's status, tag, rows and fields; the notices; the transaction status;
    a statement after it), then the session put back."""
    seen: list[Any] = []
    conn.notice_handler = lambda res: seen.append(("notice", _fields(res, names)))

    def collect(phase: str) -> bool:
        failed = False
        while (res := conn.get_result()) is not None:
            status = pq.ExecStatus(res.status)
            failed |= status == pq.ExecStatus.FATAL_ERROR
            if status == pq.ExecStatus.COPY_OUT:
                while conn.get_copy_data(0)[0] >= 0:
                    pass
            elif status == pq.ExecStatus.COPY_IN:
                conn.put_copy_end()
            rows = [tuple(res.get_value(i, j) for j in range(res.nfields)) for i in range(res.ntuples)]
            seen.append((phase, status.name, res.command_status, rows, _fields(res, names)))
        return failed

    if protocol == "simple":
        conn.send_query(sql.encode())
        collect("query")
    else:
        name = f"bi_field_{run}".encode()
        conn.send_prepare(name, sql.encode())
        if not collect("parse"):
            conn.send_describe_prepared(name)
            collect("describe")
            for _ in range(2):  # each run answers alike (red team 8a F3)
                conn.send_query_prepared(name, [])
                collect("execute")
    seen.append(("status", pq.TransactionStatus(conn.transaction_status).name))
    conn.send_query(b"SELECT count(*) FROM pg_prepared_statements")
    collect("after")
    for cleanup in (b"ROLLBACK", b"DISCARD ALL"):
        conn.send_query(cleanup)
        collect("cleanup")
    return seen[:-2]


def _unicode(name: str) -> str:
    return "".join(f"\\{ord(c):04x}" for c in name)


def _long_unicode(name: str) -> str:
    """`name` as U&"…" UESCAPE '!' text of more than 63 characters."""
    return "".join(f"!+{ord(c):06x}" for c in name) + "!+000078" * 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_hidden_schema_gets_postgresqls_own_answer_field_by_field(hiding_proxy: ProxyProcess, strategy: str,
                                                                    protocol: str) -> None:
    """Every form of red team 8a and of the phase test: the same statement naming the hidden schema globex and the
    missing glebox (same length) gets the same ErrorResponse and NoticeResponse fields, V C M D H P W F L R and the
    rest, the same transaction status and the same answer to the next statement."""
    user, db = HIDING_TENANTS[strategy]
    conn = pq.PGconn.connect(hiding_proxy.dsn(user, dbname=db).encode())
    assert conn.status == pq.ConnStatus.OK
    differ = {}
    try:
        for run, (form, sql) in enumerate(sorted(FIELD_FORMS.items())):
            got = {}
            for name in ("globex", "glebox"):
                text = sql.format(s=name, S=name.upper(), u=_unicode(name), w=_long_unicode(name))
                got[name] = _answers(conn, protocol, text, (name, name.upper()), run)
            if got["globex"] != got["glebox"]:
                differ[form] = got
    finally:
        conn.finish()
    assert not differ, (sorted(differ), differ)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_answer_names_the_hidden_schema_as_written(hiding_proxy: ProxyProcess, protocol: str) -> None:
    """PostgreSQL is sent a reserved name; the client reads its own name back in every field (message, detail,
    routine of a missing schema), never the reserved one, and its own text in pg_prepared_statements."""
    conn = pq.PGconn.connect(hiding_proxy.dsn("alice", dbname="saas").encode())
    try:
        seen = _answers(conn, protocol, "CREATE TEMP TABLE bi_fx (LIKE globex.orders)", (), 0)
        errors = [dict(entry[-1]) for entry in seen if entry[0] in ("parse", "execute", "query") and
                  entry[1] == "FATAL_ERROR"]
        assert errors and all(e["MESSAGE_PRIMARY"] == 'schema "globex" does not exist' for e in errors), seen
        assert all(e["SOURCE_FILE"] and e["SOURCE_LINE"] and e["SOURCE_FUNCTION"] for e in errors), seen  # F1
        assert "pg_" not in str(seen).replace("pg_prepared", ""), seen
        conn.send_prepare(b"bi_keep", b"CREATE TEMP TABLE bi_fx (LIKE globex.orders)")
        assert conn.get_result().status == pq.ExecStatus.COMMAND_OK
        while conn.get_result() is not None:
            pass
        conn.send_query(b"SELECT statement FROM pg_prepared_statements WHERE name = 'bi_keep'")
        res = conn.get_result()
        assert res.get_value(0, 0) == b"CREATE TEMP TABLE bi_fx (LIKE globex.orders)"
        while conn.get_result() is not None:
            pass
    finally:
        conn.finish()


def test_a_reserved_name_written_by_the_client_is_not_mapped(hiding_proxy: ProxyProcess) -> None:
    """A name the client writes itself stays its own in the answer, even one shaped like a reserved name (the
    client cannot learn one: it never reaches the client)."""
    conn = pq.PGconn.connect(hiding_proxy.dsn("alice", dbname="saas").encode())
    try:
        conn.send_query(b"SELECT * FROM globex.orders")
        while conn.get_result() is not None:
            pass
        conn.send_query(b"SELECT * FROM pg_0ab.orders")
        res = conn.get_result()
        assert res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) == b'relation "pg_0ab.orders" does not exist'
        while conn.get_result() is not None:
            pass
    finally:
        conn.finish()


def _first_error(conn: pq.PGconn) -> tuple[str | None, str | None]:
    """The first error's (message, position) of the results in flight, all read."""
    found: tuple[str | None, str | None] | None = None
    while (res := conn.get_result()) is not None:
        if found is None and res.status == pq.ExecStatus.FATAL_ERROR:
            found = tuple(None if v is None else v.decode() for v in (  # type: ignore[assignment]
                res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY),
                res.error_field(pq.DiagnosticField.STATEMENT_POSITION)))
    assert found is not None
    return found


@contextlib.contextmanager
def _hiding_session(proxy: ProxyProcess, strategy: str, table: str) -> Iterator[pq.PGconn]:
    """A session of the strategy's tenant that has globex hidden, notices dropped, with the temporary table `table`."""
    user, db = HIDING_TENANTS[strategy]
    conn = pq.PGconn.connect(proxy.dsn(user, dbname=db).encode())
    conn.notice_handler = lambda res: None
    try:
        _rows(conn, f"CREATE TEMP TABLE {table} (x int)")
        yield conn
    finally:
        conn.finish()


def _pipelined_errors(conn: pq.PGconn, texts: list[str]) -> list[tuple[str | None, str | None]]:
    """The (message, position) of every error of `texts` sent as one extended batch (Parse/Bind/Describe/Execute
    each, then one Sync)."""
    conn.enter_pipeline_mode()
    for text in texts:
        conn.send_query_params(text.encode(), None)
    conn.pipeline_sync()
    assert conn.flush() == 0
    found: list[tuple[str | None, str | None]] = []
    while True:
        res = conn.get_result()
        if res is None:
            continue
        if res.status == pq.ExecStatus.PIPELINE_SYNC:
            break
        if res.status == pq.ExecStatus.FATAL_ERROR:
            found.append(tuple(None if v is None else v.decode() for v in (  # type: ignore[arg-type]
                res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY),
                res.error_field(pq.DiagnosticField.STATEMENT_POSITION))))
    conn.exit_pipeline_mode()
    return found


@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_batch_maps_each_statements_position_through_its_own_moves(hiding_proxy: ProxyProcess,
                                                                     strategy: str) -> None:
    """Red team 9a2 H2: in one extended batch, the error of a statement that names nothing hidden, after one sent
    with a reserved name, has its own position (not moved by the other statement's reserved name)."""
    plain = "SELECT " + ", ".join(str(i) for i in range(30)) + ", nosuch FROM bi_p0"
    got = {}
    for name in ("globex", "glebox"):
        with _hiding_session(hiding_proxy, strategy, "bi_p0") as conn:
            got[name] = _pipelined_errors(conn, [f"CREATE TEMP TABLE IF NOT EXISTS bi_p0 (LIKE {name}.orders)", plain])
    assert got["globex"] == got["glebox"] == [('column "nosuch" does not exist', str(plain.index("nosuch") + 1))], got


@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_many_other_hidden_names_evict_nothing(hiding_proxy: ProxyProcess, strategy: str) -> None:
    """Red team 9a G2: the names travel with their request (and a prepared statement's with it), so 4,100 other
    hidden names in the same statement, or 42 requests of them between a Parse and its Execute, leave the client's
    name in the answer."""
    user, db = HIDING_TENANTS[strategy]
    others = ", ".join(f"pg_temp_{i}.a" for i in range(1, 4101))
    many = ", ".join(f"pg_temp_{i}.a" for i in range(1, 101))
    got = {}
    for name in ("globex", "glebox"):
        conn = pq.PGconn.connect(hiding_proxy.dsn(user, dbname=db).encode())
        try:
            conn.send_query(f"SELECT 1 FROM {name}.orders, {others}".encode())
            one = _first_error(conn)
            conn.send_query(b"CREATE TEMP TABLE bi_e0 (x int)")
            while conn.get_result() is not None:
                pass
            conn.send_prepare(b"bi_evict", f"CREATE TEMP TABLE IF NOT EXISTS bi_e1 (LIKE {name}.orders)".encode())
            assert conn.get_result().status == pq.ExecStatus.COMMAND_OK
            while conn.get_result() is not None:
                pass
            for _ in range(42):
                conn.send_query(f"SELECT 1 FROM {many}".encode())
                _first_error(conn)
            conn.send_query_prepared(b"bi_evict", [])
            got[name] = (one, _first_error(conn))
        finally:
            conn.finish()
    assert got["globex"][0] == ('relation "globex.orders" does not exist', "15"), got
    assert got["globex"][1] == ('schema "globex" does not exist', "45"), got
    assert got["glebox"] == tuple((msg.replace("globex", "glebox"), at) for msg, at in got["globex"]), got


def _wire_answers(sock: socket.socket, data: bytes, requests: int = 1) -> list[tuple[bytes, dict[str, str] | bytes]]:
    """Send `data`, read the answers of its `requests` (each up to its ReadyForQuery): errors and notices decoded."""
    sock.sendall(data)
    out: list[tuple[bytes, dict[str, str] | bytes]] = []
    while requests:
        t, body = read_message(sock)
        out.append((t, m.decode_error_fields(body) if t in (b"E", b"N") else body))
        requests -= t == b"Z"
    return out


def _hiding_login(proxy: ProxyProcess, user: str, db: str) -> socket.socket:
    sock, msgs = login(proxy.port, {"user": user, "database": db}, proxy.password(user))
    assert msgs[-1][0] == b"Z", msgs
    return sock


@pytest.mark.parametrize("portal", ["bi_p", ""])
@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_portal_run_in_a_later_request_names_the_hidden_schema_as_written(hiding_proxy: ProxyProcess, strategy: str,
                                                                            portal: str) -> None:
    """Red team 9a2 H1: in a transaction block a portal outlives the Sync of its Bind, and a utility statement is
    analyzed only when its portal runs: the Execute sent in a later request is answered with the client's name, as
    for a missing schema (the named and the unnamed statement and portal)."""
    user, db = HIDING_TENANTS[strategy]
    statement = portal.replace("p", "s")
    got = {}
    for name in ("globex", "glebox"):
        sock = _hiding_login(hiding_proxy, user, db)
        try:
            _wire_answers(sock, m.Query("BEGIN").encode())
            sql = f"CREATE TEMP TABLE IF NOT EXISTS bi_h1 (LIKE {name}.orders)"
            bound = _wire_answers(sock, m.Parse(statement, sql, b"\x00\x00").encode() + m.frame(
                b"B", f"{portal}\x00{statement}\x00".encode() + struct.pack("!hhh", 0, 0, 0)) + m.SYNC_MESSAGE)
            assert [t for t, _ in bound] == [b"1", b"2", b"Z"] and bound[-1][1] == b"T", bound
            ran = _wire_answers(sock, m.frame(b"E", f"{portal}\x00".encode() + struct.pack("!i", 0)) + m.SYNC_MESSAGE)
            got[name] = [(t, {k: v for k, v in body.items() if k in "SCMDHP"} if isinstance(body, dict) else body)
                         for t, body in ran]
            _wire_answers(sock, m.Query("ROLLBACK").encode())
        finally:
            sock.close()
    assert got["globex"][0] == (b"E", {"S": "ERROR", "C": "3F000", "M": 'schema "globex" does not exist',
                                       "P": "45"}), got
    assert str(got["glebox"]) == str(got["globex"]).replace("globex", "glebox"), got


def test_a_flood_of_pipelined_requests_never_shows_a_reserved_name(hiding_proxy: ProxyProcess) -> None:
    """Red team 9a2 H3: a renamed Query answered late, thousands more pipelined behind it: the client never reads the
    reserved name (its own name, or the answer withheld: rule answer_withheld); the session goes on. Past the request
    tracker's bound (10,000 in flight) the session now ends (red team 21p F1: answers were matched against the wrong
    request): FATAL 54000 too_many_in_flight, before any answer, the reserved name never shown."""
    sock = _hiding_login(hiding_proxy, "alice", "saas")
    try:
        sock.settimeout(120)
        late = m.Query("SELECT pg_sleep(2); SELECT 1 FROM globex.orders").encode()
        answers = _wire_answers(sock, late + m.Query("SELECT 1").encode() * 9_000, 9_001)
        errors = [body for t, body in answers if t == b"E"]
        assert len(errors) == 1 and "pg_9" not in str(answers), errors
        assert errors[0]["M"] in ('relation "globex.orders" does not exist',
                                  "pgtenant: the server's answer was withheld (rule answer_withheld)"), errors
        after = _wire_answers(sock, m.Query("SELECT 1 FROM globex.orders").encode())
        assert [body["M"] for t, body in after if t == b"E"] == ['relation "globex.orders" does not exist'], after
    finally:
        sock.close()
    sock = _hiding_login(hiding_proxy, "alice", "saas")
    try:
        sock.settimeout(120)
        sock.sendall(late + m.Query("SELECT 1").encode() * 10_000)
        ended = read_to_close(sock)
        fatal = [m.decode_error_fields(body) for t, body in ended if t == b"E"]
        assert "pg_9" not in str(ended) and fatal and fatal[-1]["C"] == "54000" \
            and "requests in flight" in fatal[-1]["M"], fatal
    finally:
        sock.close()


def _rows(conn: pq.PGconn, sql: str) -> list[tuple[Any, ...]]:
    """The rows of every result of `sql` (errors and notices aside), all read."""
    conn.send_query(sql.encode())
    rows: list[tuple[Any, ...]] = []
    while (res := conn.get_result()) is not None:
        rows += [tuple(res.get_value(i, j) for j in range(res.nfields)) for i in range(res.ntuples)]
    return rows


@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_pg_cursors_read_in_the_declaring_string_shows_the_clients_text(hiding_proxy: ProxyProcess,
                                                                        strategy: str) -> None:
    """Red team 9a2 H6: pg_cursors read in the Query string that declares a cursor beside a renamed statement (or
    by a cursor of that string, fetched there or later) lists the client's text of that string, never the text
    PostgreSQL was sent."""
    got = {}
    for name in ("globex", "glebox"):
        like = f"CREATE TEMP TABLE IF NOT EXISTS bi_c0 (LIKE {name}.orders)"
        texts = [f"{like}; DECLARE bi_c1 CURSOR WITH HOLD FOR SELECT 1; "
                 "SELECT name, statement FROM pg_cursors ORDER BY name",
                 f"BEGIN; {like}; DECLARE bi_c2 CURSOR FOR SELECT name, statement FROM pg_cursors ORDER BY name; "
                 "FETCH ALL FROM bi_c2; COMMIT",
                 f"BEGIN; {like}; DECLARE bi_c3 CURSOR FOR SELECT name, statement FROM pg_cursors ORDER BY name"]
        with _hiding_session(hiding_proxy, strategy, "bi_c0") as conn:
            got[name] = [_rows(conn, text) for text in texts] + [_rows(conn, "FETCH ALL FROM bi_c3")]
            _rows(conn, "COMMIT")
            _rows(conn, "CLOSE ALL")
        assert got[name] == [
            [(b"bi_c1", texts[0].encode())],
            [(b"bi_c1", texts[0].encode()), (b"bi_c2", texts[1].encode())],
            [],
            [(b"bi_c1", texts[0].encode()), (b"bi_c3", texts[2].encode())],
        ], got


@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_pg_cursors_past_the_bound_lists_a_hidden_schema_as_a_missing_one(hiding_proxy: ProxyProcess,
                                                                          strategy: str) -> None:
    """Red team 9a2 H4: past the session's bound on cursor texts a cursor is listed without a text, never with the
    text PostgreSQL was sent (a reserved name), and at the same point for a hidden schema as for a missing one: a
    1 MiB text alone pushes no earlier entry out; 3 x 400 kB push the first ones out."""
    got = {}
    for name in ("globex", "glebox"):
        like = f"CREATE TEMP TABLE IF NOT EXISTS bi_c0 (LIKE {name}.orders)"
        with _hiding_session(hiding_proxy, strategy, "bi_c0") as conn:
            _rows(conn, f"{like}; DECLARE bi_h0 CURSOR WITH HOLD FOR SELECT 1")
            _rows(conn, f"{like}; DECLARE bi_big CURSOR WITH HOLD FOR SELECT 1 /* " + "x" * (1 << 20) + " */")
            seen = [_rows(conn, "SELECT name, statement FROM pg_cursors ORDER BY name")]
            for i in range(3):
                _rows(conn, f"{like}; DECLARE bi_b{i} CURSOR WITH HOLD FOR SELECT 1 /* " + "x" * 400_000 + " */")
            seen.append(_rows(conn, "SELECT name, statement FROM pg_cursors ORDER BY name"))
            _rows(conn, "CLOSE ALL")
        got[name] = [[(n, None if t is None else t.decode().replace(name, "SCHEMA")[:120]) for n, t in rows]
                     for rows in seen]
    assert got["globex"] == got["glebox"], got
    first, then = got["globex"]
    assert first == [(b"bi_big", None), (b"bi_h0", "CREATE TEMP TABLE IF NOT EXISTS bi_c0 (LIKE SCHEMA.orders); "
                                                  "DECLARE bi_h0 CURSOR WITH HOLD FOR SELECT 1")], first
    assert [n for n, _ in then] == [b"bi_b0", b"bi_b1", b"bi_b2", b"bi_big", b"bi_h0"], then
    assert then[0][1] is None and then[2][1] is not None and then[4][1] is None, then


@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_pg_cursors_shows_the_clients_text(hiding_proxy: ProxyProcess, strategy: str) -> None:
    """Red team 9a G8: a cursor's statement in pg_cursors is the client's text, as in pg_prepared_statements: never
    a hidden schema's reserved name (a Query string that declares a cursor beside a renamed statement that
    succeeds), nor the proxy's tenant filter of a rewritten cursor."""
    got = {}
    # (dan may not name the shared tenants' public.orders: red team 9a7 H3; his own temporary table instead)
    table = "bi_c0" if strategy == "database" else "orders"
    for name in ("globex", "glebox"):
        with _hiding_session(hiding_proxy, strategy, "bi_c0") as conn:
            _rows(conn, f"CREATE TEMP TABLE IF NOT EXISTS bi_c0 (LIKE {name}.orders); "
                        "DECLARE bi_c CURSOR WITH HOLD FOR SELECT 1")
            _rows(conn, f"BEGIN; DECLARE bi_f CURSOR FOR SELECT count(*) FROM {table}")
            got[name] = _rows(conn, "SELECT name, statement FROM pg_cursors ORDER BY name")
            _rows(conn, "ROLLBACK")
            got[name] += _rows(conn, "SELECT name, statement FROM pg_cursors ORDER BY name")
            _rows(conn, "CLOSE ALL")
    for name in ("globex", "glebox"):
        held = (b"bi_c", f"CREATE TEMP TABLE IF NOT EXISTS bi_c0 (LIKE {name}.orders); "
                         "DECLARE bi_c CURSOR WITH HOLD FOR SELECT 1".encode())
        assert got[name] == [held, (b"bi_f", f"BEGIN; DECLARE bi_f CURSOR FOR SELECT count(*) FROM {table}".encode()),
                             held], got


# --- red team 9a3: records at PostgreSQL's confirmation -------------------------------------------------------------


@pytest.fixture(scope="module")
def hiding_proxies(hiding_proxy: ProxyProcess, pg: PgCluster,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyProcess]]:
    """`hiding_proxy` in both pool modes (the other one started here)."""
    mode = hiding_proxy.pool.get("pool_mode") or default_pool_mode()
    other = "session" if mode == "transaction" else "transaction"
    p = dan_proxy(pg, tmp_path_factory.mktemp("hiding_other"), pool={"pool_mode": other})
    p.start()
    yield {mode: hiding_proxy, other: p}
    p.stop()


_UNNAMED_PORTAL = struct.pack("!hhh", 0, 0, 0)


def _extended_wire(sql: str, statement: str = "", portal: str = "") -> bytes:
    """Parse, Bind and Execute of `sql` (no Sync)."""
    return (m.Parse(statement, sql, b"\x00\x00").encode()
            + m.frame(b"B", f"{portal}\x00{statement}\x00".encode() + _UNNAMED_PORTAL)
            + m.frame(b"E", f"{portal}\x00".encode() + struct.pack("!i", 0)))


def _errors_of(answers: list[tuple[bytes, dict[str, str] | bytes]], keys: str = "SCMP") -> list[dict[str, str]]:
    return [{k: v for k, v in body.items() if k in keys} for t, body in answers if t == b"E"]  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_query_inside_a_failed_extended_batch_leaves_the_session_aligned(hiding_proxies: dict[str, ProxyProcess],
                                                                           strategy: str, mode: str) -> None:
    """Red team 9a3 J8: a Query sent inside an extended batch that failed before it gets no answer from PostgreSQL
    (skipped up to the Sync); the requests after it are answered as theirs: a hidden schema's error names it as a
    missing schema's does (it was withheld, matched to the previous request)."""
    user, db = HIDING_TENANTS[strategy]
    got = {}
    for name in ("globex", "glebox"):
        sock = _hiding_login(hiding_proxies[mode], user, db)
        try:
            failed = _wire_answers(sock, _extended_wire("SELECT nosuch") + m.Query("SELECT 1").encode()
                                   + m.SYNC_MESSAGE)
            assert [t for t, _ in failed] == [b"E", b"Z"], failed
            after = [_wire_answers(sock, m.Query(f"SELECT 1 FROM {name}.orders").encode()) for _ in range(2)]
            got[name] = [_errors_of(answers) for answers in after]
        finally:
            sock.close()
    assert got["globex"] == [[{"S": "ERROR", "C": "42P01", "M": 'relation "globex.orders" does not exist',
                               "P": "15"}]] * 2, got
    assert str(got["glebox"]) == str(got["globex"]).replace("globex", "glebox"), got


def test_sessions_with_a_query_inside_a_failed_batch_give_their_server_back(pg: PgCluster,
                                                                            tmp_path: Path) -> None:
    """Red team 9a3 J8b: in transaction pooling a session whose Query was skipped inside a failed batch went on
    waiting for its answer, holding its server: with a pool of one, the next session waited in vain."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path, backend_sslmode="disable",
                     pool={"pool_mode": "transaction", "pool_size": 1, "query_wait_timeout": 10.0})
    p.start()
    try:
        first = _hiding_login(p, "alice", "saas")
        failed = _wire_answers(first, _extended_wire("SELECT nosuch") + m.Query("SELECT 1").encode()
                               + m.SYNC_MESSAGE)
        assert [t for t, _ in failed] == [b"E", b"Z"], failed
        second = _hiding_login(p, "alice", "saas")
        answers = _wire_answers(second, m.Query("SELECT 1").encode())
        assert [t for t, _ in answers] == [b"T", b"D", b"C", b"Z"], answers
        first.close()
        second.close()
    finally:
        p.stop()


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_plain_portal_run_in_a_later_request_keeps_its_own_positions(hiding_proxies: dict[str, ProxyProcess],
                                                                       strategy: str, mode: str) -> None:
    """Red team 9a3 J7: in a transaction, a portal bound to a statement sent as written and executed in a later
    request after a portal of a renamed statement has PostgreSQL's position in its error (for a hidden schema it was
    moved by the other statement's reserved name)."""
    user, db = HIDING_TENANTS[strategy]
    plain = "CREATE TEMP TABLE bi_j7 /*" + "_" * 60 + "*/ (LIKE bi_nosuch)"
    got = {}
    for name in ("globex", "glebox"):
        sock = _hiding_login(hiding_proxies[mode], user, db)
        try:
            _wire_answers(sock, m.Query("CREATE TEMP TABLE bi_p0 (x int)").encode())
            _wire_answers(sock, m.Query("BEGIN").encode())
            like = f"CREATE TEMP TABLE IF NOT EXISTS bi_p0 (LIKE {name}.orders)"
            bind = _extended_wire(plain, "bi_s2", "bi_p2")[:-len(m.frame(b"E", b"bi_p2\x00" + bytes(4)))]
            bind += _extended_wire(like, "bi_s1", "bi_p1")[:-len(m.frame(b"E", b"bi_p1\x00" + bytes(4)))]
            bound = _wire_answers(sock, bind + m.SYNC_MESSAGE)
            assert [t for t, _ in bound] == [b"1", b"2", b"1", b"2", b"Z"], bound
            ran = _wire_answers(sock, m.frame(b"E", b"bi_p1\x00" + bytes(4)) + m.frame(b"E", b"bi_p2\x00" + bytes(4))
                                + m.SYNC_MESSAGE)
            got[name] = _errors_of(ran)
            _wire_answers(sock, m.Query("ROLLBACK").encode())
        finally:
            sock.close()
    assert got["globex"] == got["glebox"] == [{"S": "ERROR", "C": "42P01", "M": 'relation "bi_nosuch" does not exist',
                                               "P": str(plain.index("bi_nosuch") + 1)}], got


def _bind_wire(statement: str, portal: str) -> bytes:
    return m.frame(b"B", f"{portal}\x00{statement}\x00".encode() + _UNNAMED_PORTAL)


def _execute_wire(portal: str) -> bytes:
    return m.frame(b"E", f"{portal}\x00".encode() + struct.pack("!i", 0))


_FAILING = m.Parse("", "SELECT bi_nosuch_column", b"\x00\x00").encode()  # fails: the rest of its batch is skipped


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_parse_skipped_after_an_error_keeps_the_statement_postgresql_has(hiding_proxies: dict[str, ProxyProcess],
                                                                           strategy: str, mode: str) -> None:
    """Red team 9a3 J1: a Close and a Parse of a statement's name after an error in their batch are skipped by
    PostgreSQL, which keeps the old statement: its Bind is refused alike for a hidden and a missing schema (review 19a
    F1: the name is unknown until Parsed again; before, its run's error had PostgreSQL's position, which the skipped
    Parse's reserved name had moved)."""
    user, db = HIDING_TENANTS[strategy]
    plain = "CREATE TEMP TABLE bi_j1 /*" + "_" * 60 + "*/ (LIKE bi_nosuch)"
    got = {}
    for name in ("globex", "glebox"):
        sock = _hiding_login(hiding_proxies[mode], user, db)
        try:
            _wire_answers(sock, m.Query("CREATE TEMP TABLE bi_p0 (x int)").encode())
            parsed = _wire_answers(sock, m.Parse("bi_s1", plain, b"\x00\x00").encode() + m.SYNC_MESSAGE)
            assert [t for t, _ in parsed] == [b"1", b"Z"], parsed
            like = f"CREATE TEMP TABLE IF NOT EXISTS bi_p0 (LIKE {name}.orders)"
            failed = _wire_answers(sock, _FAILING + m.frame(b"C", b"Sbi_s1\x00")
                                   + m.Parse("bi_s1", like, b"\x00\x00").encode() + m.SYNC_MESSAGE)
            assert [t for t, _ in failed] == [b"E", b"Z"], failed
            ran = _wire_answers(sock, _bind_wire("bi_s1", "") + _execute_wire("") + m.SYNC_MESSAGE)
            got[name] = _errors_of(ran)
        finally:
            sock.close()
    assert got["globex"] == got["glebox"] == [{"S": "ERROR", "C": "26000", "M": 'prepared statement "bi_s1" is not '
                                               "known to be the one PostgreSQL has after an error earlier in its "
                                               "batch; Parse it again"}], got


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_close_skipped_after_an_error_keeps_the_portal_postgresql_has(hiding_proxies: dict[str, ProxyProcess],
                                                                        strategy: str, mode: str) -> None:
    """Red team 9a3 J1b: a Close of a portal skipped after an error, the transaction rolled back to a savepoint from
    before it: PostgreSQL still has the portal, and its run names the hidden schema as a missing one (its names
    were dropped with the skipped Close: the answer was withheld)."""
    user, db = HIDING_TENANTS[strategy]
    got = {}
    for name in ("globex", "glebox"):
        sock = _hiding_login(hiding_proxies[mode], user, db)
        try:
            _wire_answers(sock, m.Query("BEGIN").encode())
            like = f"CREATE TEMP TABLE bi_j1b (LIKE {name}.orders)"
            bound = _wire_answers(sock, m.Parse("bi_s2", like, b"\x00\x00").encode() + _bind_wire("bi_s2", "bi_p")
                                  + m.SYNC_MESSAGE)
            assert [t for t, _ in bound] == [b"1", b"2", b"Z"], bound
            _wire_answers(sock, m.Query("SAVEPOINT bi_a").encode())
            failed = _wire_answers(sock, _FAILING + m.frame(b"C", b"Pbi_p\x00") + m.SYNC_MESSAGE)
            assert [t for t, _ in failed] == [b"E", b"Z"], failed
            _wire_answers(sock, m.Query("ROLLBACK TO bi_a").encode())
            ran = _wire_answers(sock, _execute_wire("bi_p") + m.SYNC_MESSAGE)
            got[name] = _errors_of(ran)
            _wire_answers(sock, m.Query("ROLLBACK").encode())
        finally:
            sock.close()
    assert got["globex"] == [{"S": "ERROR", "C": "3F000", "M": 'schema "globex" does not exist', "P": "32"}], got
    assert str(got["glebox"]) == str(got["globex"]).replace("globex", "glebox"), got


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_parse_skipped_after_an_error_keeps_the_clients_text_listed(hiding_proxies: dict[str, ProxyProcess],
                                                                      strategy: str, mode: str) -> None:
    """Red team 9a3 J6: a Close and a Parse (sent as written) of a renamed statement's name skipped after an error:
    pg_prepared_statements still lists the client's text of the statement PostgreSQL has (in session pooling it
    showed the text PostgreSQL was sent, with the reserved name)."""
    user, db = HIDING_TENANTS[strategy]
    got = {}
    for name in ("globex", "glebox"):
        sock = _hiding_login(hiding_proxies[mode], user, db)
        try:
            like = f"CREATE TEMP TABLE IF NOT EXISTS bi_p0 (LIKE {name}.orders)"
            parsed = _wire_answers(sock, m.Parse("bi_s3", like, b"\x00\x00").encode() + m.SYNC_MESSAGE)
            assert [t for t, _ in parsed] == [b"1", b"Z"], parsed
            _wire_answers(sock, _FAILING + m.frame(b"C", b"Sbi_s3\x00")
                          + m.Parse("bi_s3", "SELECT 1", b"\x00\x00").encode() + m.SYNC_MESSAGE)
            listed = _wire_answers(sock, m.Query("SELECT statement FROM pg_prepared_statements").encode())
            got[name] = [body for t, body in listed if t == b"D"]
        finally:
            sock.close()
    assert str(got["glebox"]) == str(got["globex"]).replace("globex", "glebox"), got
    assert len(got["globex"]) == 1 and like.replace("glebox", "globex").encode() in got["globex"][0], got



def _j2_step(sql: str, how: str) -> bytes:
    """`sql` as a simple Query, or as Parse/Bind/Execute of the unnamed statement and a Sync (`how`)."""
    return _extended_wire(sql) + m.SYNC_MESSAGE if how == "extended" else m.Query(sql).encode()


@pytest.mark.parametrize("how", ["query", "extended", "one_query"])
@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_portal_dropped_by_rollback_to_savepoint_leaves_no_names(hiding_proxies: dict[str, ProxyProcess],
                                                                   strategy: str, mode: str, how: str) -> None:
    """Red team 9a3 J2: ROLLBACK TO a savepoint drops the portals bound since it was set (in a savepoint released
    into it too) and keeps those bound before. A cursor then declared under a dropped portal's name and run by an
    Execute, in a batch with a Query, answers that Query's error with PostgreSQL's position (the dropped portal's
    record moved it by its reserved name); the portal bound before the savepoint still names the client's schema,
    after a failed transaction's ROLLBACK TO too. Savepoints as simple Queries, as extended messages and several in
    one Query string."""
    user, db = HIDING_TENANTS[strategy]
    plain = "CREATE TEMP TABLE bi_j2 /*" + "_" * 60 + "*/ (LIKE bi_nosuch)"
    got = {}
    for name in ("globex", "glebox"):
        sock = _hiding_login(hiding_proxies[mode], user, db)
        try:
            _wire_answers(sock, m.Query("CREATE TEMP TABLE bi_p0 (x int)").encode())
            _wire_answers(sock, m.Query("BEGIN").encode())
            kept = f"CREATE TEMP TABLE bi_j2k (LIKE {name}.orders)"
            skipping = f"CREATE TEMP TABLE IF NOT EXISTS bi_p0 (LIKE {name}.orders)"
            bound = _wire_answers(sock, m.Parse("bi_s1", kept, b"\x00\x00").encode() + _bind_wire("bi_s1", "bi_k")
                                  + m.Parse("bi_s2", skipping, b"\x00\x00").encode() + m.SYNC_MESSAGE)
            assert [t for t, _ in bound] == [b"1", b"2", b"1", b"Z"], bound
            for sql in ("SAVEPOINT bi_a", "SAVEPOINT bi_b"):
                step = _wire_answers(sock, _j2_step(sql, how))
                assert step[-1] == (b"Z", b"T"), step
            bound = _wire_answers(sock, _bind_wire("bi_s2", "bi_p") + m.SYNC_MESSAGE)
            assert [t for t, _ in bound] == [b"2", b"Z"], bound
            steps = ["RELEASE bi_b", "ROLLBACK TO bi_a", "DECLARE bi_p CURSOR FOR SELECT 1"]
            if how == "one_query":
                steps = ["; ".join(steps)]
            for sql in steps:
                step = _wire_answers(sock, _j2_step(sql, how))
                assert step[-1] == (b"Z", b"T"), step
            ran = _wire_answers(sock, _execute_wire("bi_p") + m.Query(plain).encode())
            assert [t for t, _ in ran] == [b"D", b"C", b"E", b"Z"], ran
            again = _wire_answers(sock, _j2_step("ROLLBACK TO bi_a", how))  # (in the failed transaction)
            assert again[-1] == (b"Z", b"T"), again
            outer = _wire_answers(sock, _execute_wire("bi_k") + m.SYNC_MESSAGE)
            got[name] = _errors_of(ran) + _errors_of(outer)
            _wire_answers(sock, m.Query("ROLLBACK").encode())
        finally:
            sock.close()
    assert got["globex"] == [{"S": "ERROR", "C": "42P01", "M": 'relation "bi_nosuch" does not exist',
                              "P": str(plain.index("bi_nosuch") + 1)},
                             {"S": "ERROR", "C": "3F000", "M": 'schema "globex" does not exist',
                              "P": str(len("CREATE TEMP TABLE bi_j2k (LIKE ") + 1)}], got
    assert str(got["glebox"]) == str(got["globex"]).replace("globex", "glebox"), got


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("strategy", sorted(HIDING_TENANTS))
def test_a_query_in_a_batch_after_a_renamed_portal_keeps_its_own_positions(hiding_proxies: dict[str, ProxyProcess],
                                                                           strategy: str, mode: str) -> None:
    """A Query sent without a Sync after an Execute of a renamed statement's portal is answered in that batch's
    request (red team 9a3 J8): its error has PostgreSQL's position (for a hidden schema it was moved by the portal's
    reserved name, found beside J2), and the portal's notice names the client's schema."""
    user, db = HIDING_TENANTS[strategy]
    plain = "CREATE TEMP TABLE bi_q /*" + "_" * 60 + "*/ (LIKE bi_nosuch)"
    got = {}
    for name in ("globex", "glebox"):
        sock = _hiding_login(hiding_proxies[mode], user, db)
        try:
            _wire_answers(sock, m.Query("CREATE TEMP TABLE bi_p0 (x int)").encode())
            _wire_answers(sock, m.Query("BEGIN").encode())
            skipping = f"CREATE TEMP TABLE IF NOT EXISTS bi_p0 (LIKE {name}.orders)"
            ran = _wire_answers(sock, _extended_wire(skipping, "bi_s1", "bi_p") + m.Query(plain).encode())
            assert [t for t, _ in ran] == [b"1", b"2", b"N", b"C", b"E", b"Z"], ran
            got[name] = [*_errors_of(ran), ran[2][1]["M"]]  # type: ignore[index]
            _wire_answers(sock, m.Query("ROLLBACK").encode())
        finally:
            sock.close()
    at = str(plain.index("bi_nosuch") + 1)
    assert got["globex"] == got["glebox"] == [
        {"S": "ERROR", "C": "42P01", "M": 'relation "bi_nosuch" does not exist', "P": at},
        'relation "bi_p0" already exists, skipping'], got
