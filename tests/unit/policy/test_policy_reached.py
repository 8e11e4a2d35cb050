"""Functions PostgreSQL runs without a call naming them (red team 9s8 F1/F2): attribute notation, an operator, a cast,
an overloaded built-in name and a view calling one are checked against the allow-list and are never read-only."""

from __future__ import annotations

import pytest

from proxy.policy import Deny, TenantPolicy, decide
from proxy.policy.castsource import ANY, PARAM
from proxy.policy.model import READ_ONLY
from proxy.policy.reached import Reached
from proxy.replicas import _read_only, set_reached
from tests.unit.policy.policy_corpus import cast_rows

REACHED = Reached(frozenset({
    ("attribute", "rt_tenants_sd", "public.rt_tenants_sd"),
    ("field", "amount", "public.amount"),
    ("operator", "#@#", "public.rt_op_sd"),
    ("cast", "text", "public.rt_tenants_sd"),
    ("shadow", "lower", "public.lower"),
    ("view", "public.rt_v", "public.rt_w"),
    # review 19b F1: a domain whose CHECK calls rt_chk, its array type; F2: an enum's cast to json by rt_st_json
    ("domain", "rt_dom", "public.rt_chk"),
    ("domain", "_rt_dom", "public.rt_chk"),
    ("cast", "json", "public.rt_st_json"),
    ("domain", "public.rt_items", "public.rt_chk"),  # a table with a column of rt_dom (its row type)
}))

REACHING = {
    "attribute": "SELECT o.rt_tenants_sd FROM orders o LIMIT 1",
    "attribute_paren": "SELECT (o).rt_tenants_sd FROM orders o LIMIT 1",
    "attribute_schema_table": "SELECT public.orders.rt_tenants_sd FROM public.orders LIMIT 1",
    "attribute_scalar": "SELECT (o.id).rt_tenants_sd FROM orders o LIMIT 1",
    "field_paren": "SELECT (o.id).amount FROM orders o LIMIT 1",
    "operator": "SELECT 1 #@# 2",
    "operator_qualified": "SELECT 1 OPERATOR(public.#@#) 2",
    "operator_any": "SELECT 1 #@# ANY (SELECT 2)",
    "cast": "SELECT o::text FROM orders o LIMIT 1",
    "cast_syntax": "SELECT CAST(o AS text) FROM orders o LIMIT 1",
    "overload": "SELECT lower(o) FROM orders o LIMIT 1",
    "domain_cast": "SELECT 'x'::rt_dom",
    "domain_cast_qualified": "SELECT 'x'::public.rt_dom",
    "domain_cast_syntax": "SELECT CAST('x' AS rt_dom)",
    "domain_array": "SELECT '{x}'::rt_dom[]",
    "domain_array_name": "SELECT '{x}'::_rt_dom",
    "domain_column_definition": "SELECT * FROM json_to_record('{\"a\": \"x\"}') AS r(a rt_dom)",
    "domain_in_subquery": "SELECT 1 FROM orders o WHERE o.tenant_id IN (SELECT 'x'::rt_dom)",
    "json_to_json": "SELECT to_json(o.id) FROM orders o LIMIT 1",
    "json_to_jsonb": "SELECT pg_catalog.to_jsonb(o.id) FROM orders o LIMIT 1",
    "json_row_to_json": "SELECT row_to_json(o) FROM orders o LIMIT 1",
    "json_agg": "SELECT json_agg(o) FROM orders o",
    "jsonb_agg": "SELECT jsonb_agg(o.id) FROM orders o",
    "json_object_agg": "SELECT json_object_agg(o.id, o.tenant_id) FROM orders o",
    "jsonb_object_agg": "SELECT jsonb_object_agg(o.id, o.tenant_id) FROM orders o",
    "json_build_object": "SELECT json_build_object('s', o.id) FROM orders o",
    "jsonb_build_array": "SELECT jsonb_build_array(o.id) FROM orders o",
    "json_array_to_json": "SELECT array_to_json(array_agg(o.id)) FROM orders o",
    "sql_json_object": "SELECT JSON_OBJECT('s': o.id) FROM orders o",
    "sql_json_array": "SELECT JSON_ARRAY(o.id) FROM orders o",
    "sql_json_array_query": "SELECT JSON_ARRAY(SELECT o.id FROM orders o)",
    "sql_json_objectagg": "SELECT JSON_OBJECTAGG(o.tenant_id: o.id) FROM orders o",
    "sql_json_arrayagg": "SELECT JSON_ARRAYAGG(o.id) FROM orders o",
    "sql_json_scalar": "SELECT JSON_SCALAR(o.id) FROM orders o",
}
PLAIN = ["SELECT id, tenant_id, o.amount FROM orders o WHERE o.id = 1", "SELECT 1 + 2",
         "SELECT upper(tenant_id) FROM orders",
         "SELECT o.id::int8 FROM orders o",
         # schema.table.column (SQLAlchemy's schema'd Table): never amount(column), though amount(numeric) exists
         "SELECT public.orders.amount, public.orders.id FROM public.orders WHERE public.orders.id = 1",
         # a function-style cast runs no cast function (PostgreSQL: 42883 where one would be needed)
         "SELECT text(o.id) FROM orders o",
         # types without a constraint calling an app function; JSON read, not written
         "SELECT 'x'::varchar, CAST(o.id AS int8), '{1}'::int[] FROM orders o",
         "SELECT '{\"a\": 1}'::jsonb -> 'a', json_typeof('1'), jsonb_set('{}', '{a}', '1') FROM orders"]


ALLOWED = frozenset({"public.rt_tenants_sd", "rt_op_sd", "public.lower", "amount", "public.rt_chk",
                     "public.rt_st_json"})


def _shared(reached: Reached = REACHED, extra: frozenset[str] = frozenset(), agent: bool = False) -> TenantPolicy:
    return TenantPolicy(tenant="acme", strategy="shared", tenant_value="acme",
                        scoped_tables={("public", "orders"): "tenant_id"}, reached=reached,
                        extra_allowed_functions=extra, agent_max_rows=100 if agent else None)


def _dan(reached: Reached = REACHED, extra: frozenset[str] = frozenset()) -> TenantPolicy:
    return TenantPolicy(tenant="dan", strategy="database", reached=reached, extra_allowed_functions=extra)


@pytest.mark.parametrize("shape", list(REACHING))
@pytest.mark.parametrize("make", [_shared, _dan])
def test_refused_unless_allowed(shape: str, make) -> None:
    sql = REACHING[shape]
    denied = decide(make(), sql)
    assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", denied
    assert "extra_allowed_functions" in denied.message
    allowed = make(extra=ALLOWED)
    assert not isinstance(decide(allowed, sql), Deny), decide(allowed, sql)
    # without the snapshot (main's behaviour) the same text passes the allow-list: the snapshot is what refuses it
    assert not isinstance(decide(make(Reached()), sql), Deny)
    for plain in PLAIN:  # what does not reach them is unchanged
        assert not isinstance(decide(make(), plain), Deny), (plain, decide(make(), plain))


@pytest.mark.parametrize("shape", ["attribute", "operator", "cast", "overload", "domain_cast", "json_to_json"])
def test_agent_refuses_even_when_allowed(shape: str) -> None:
    agent = _shared(extra=ALLOWED, agent=True)
    denied = decide(agent, REACHING[shape])
    assert isinstance(denied, Deny) and denied.rule in ("agent_function", "function_not_allowed"), denied


@pytest.mark.parametrize("sql", [*REACHING.values(), "SELECT w FROM rt_v", "SELECT w FROM public.rt_v",
                                 "SELECT * FROM (SELECT w FROM rt_v) s"])
def test_not_read_only(sql: str) -> None:
    allowed = _dan(extra=ALLOWED | {"public.rt_w"})
    decision = decide(allowed, sql)
    assert not isinstance(decision, Deny), decision
    assert READ_ONLY not in decision.effects
    assert READ_ONLY in decide(_dan(Reached(), extra=allowed.extra_allowed_functions), sql).effects
    for plain in PLAIN:
        assert READ_ONLY in decide(allowed, plain).effects, plain


def test_text_judge_counts_the_published_snapshot() -> None:
    """The routing judge without a tenant (proxy/replicas.py) counts every prepared database's routines."""
    text = "BEGIN; SELECT w FROM rt_v; COMMIT"
    try:
        set_reached(Reached())
        assert _read_only(text, True) == "y"
        set_reached(REACHED)
        assert _read_only(text, True) == ""
        assert all(_read_only(plain, True) == "y" for plain in PLAIN)
    finally:
        set_reached(Reached())


def test_other_tenants_schemas_do_not_count() -> None:
    """A function of a schema the tenant never has on its search_path (another tenant's) is not reached unqualified;
    a cast is found by its types wherever its function lives."""
    from proxy.config import TenantConfig
    from proxy.tenancy import tenant_policy

    theirs = Reached(frozenset({("shadow", "lower", "globex.lower"), ("attribute", "f", "globex.f"),
                                ("cast", "text", "globex.f"), ("view", "globex.v", "globex.f")}))
    acme = TenantConfig(name="acme", strategy="shared", backend="main", database="saas", tenant_id="acme",
                        tables=("public.orders",))
    policy = tenant_policy(acme, hidden_schemas={"globex"}, reached=theirs)
    assert not isinstance(decide(policy, "SELECT lower(tenant_id), o.f FROM orders o"), Deny)
    denied = decide(policy, "SELECT o::text FROM orders o")
    assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", denied


def test_other_tenants_types_and_json_casts_do_not_count_and_are_never_named() -> None:
    """Schema-per-tenant apps make the same domain and enum in every tenant's schema: another tenant's domain (its
    type lives in that schema), and its cast to json (function and source type there), are not reached by this
    tenant's `to_json(1)` or `'x'::email`; a cast kept because its source type lives elsewhere is refused without
    naming the other tenant's function (wp-sd1's report: gina's refusals named functions of schemas she cannot see)."""
    from proxy.config import TenantConfig
    from proxy.tenancy import tenant_policy

    rows = frozenset({
        ("domain", "globex.email", "globex.valid_email"), ("domain", "initech.email", "initech.valid_email"),
        ("cast", "json", "globex.status_json"), ("castfrom", "globex.status_json", "globex"),
        ("cast", "json", "initech.status_json"), ("castfrom", "initech.status_json", "initech"),
    })
    initech = TenantConfig(name="initech", strategy="schema", backend="main", database="saas", schema="initech")
    policy = tenant_policy(initech, hidden_schemas={"globex"}, reached=Reached(rows))
    assert policy.reached.functions("domain", "email") == ("initech.valid_email",)
    assert policy.reached.functions("cast", "json") == ("initech.status_json",)
    for sql in ("SELECT to_json(1)", "SELECT 'x'::email", "SELECT 'x'::initech.email"):
        denied = decide(policy, sql)
        assert isinstance(denied, Deny) and "initech." in denied.message and "globex" not in denied.message, denied
    alone = tenant_policy(initech, hidden_schemas={"globex", "initech_x"}, reached=Reached(frozenset({
        ("cast", "json", "globex.status_json"), ("castfrom", "globex.status_json", "globex"),
        ("castfrom", "globex.status_json", "public"),  # one of its casts is from a type it can name
    })))
    denied = decide(alone, "SELECT to_json(1)")
    assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", denied
    assert "globex" not in denied.message and "a function is not allowed" in denied.message, denied.message
    gone = tenant_policy(initech, hidden_schemas={"globex"}, reached=Reached(frozenset({
        ("cast", "json", "globex.status_json"), ("castfrom", "globex.status_json", "globex")})))
    assert not isinstance(decide(gone, "SELECT to_json(1)"), Deny)


@pytest.mark.parametrize("shape", list(REACHING))
@pytest.mark.parametrize("make", [_shared, _dan])
def test_an_allowed_routine_reached_without_a_call_pins(shape: str, make) -> None:
    """What the routine leaves on the server (a GUC, a lock, a temporary table) is not known, as for a direct call of
    an extra-allowed function: the session pins (docs/pinning.md `function`; review 19b F5)."""
    decision = decide(make(extra=ALLOWED), REACHING[shape])
    assert not isinstance(decision, Deny), decision
    assert [(c.op, c.name) for c in decision.changes] == [("pin", "function")], decision.changes
    for plain in PLAIN:  # nothing reached: nothing pinned
        assert decide(make(extra=ALLOWED), plain).changes == (), plain


@pytest.mark.parametrize("sql", ["SELECT 1 FROM orders o WHERE o.id IN (SELECT 2)",
                                 "SELECT 1 FROM orders o WHERE o.id NOT IN (SELECT 2)",
                                 "SELECT 1 FROM orders o WHERE o.id IN (VALUES (2))"])
def test_in_a_subquery_applies_an_apps_equality_operator(sql: str) -> None:
    """Red team 9a12 F3: `x IN (SELECT …)` (and NOT IN, IN (VALUES …)) is a SubLink without an operator name;
    PostgreSQL applies `=`, an app's SECURITY DEFINER `=` of the operand's type included."""
    equal = Reached(frozenset({("operator", "=", "public.orders_eq")}))
    denied = decide(_shared(equal), sql)
    assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", denied
    assert not isinstance(decide(_shared(Reached()), sql), Deny)


@pytest.mark.parametrize("sql", ["CREATE TEMP TABLE t (c rt_dom)", "CREATE TEMP TABLE t (c rt_dom[] DEFAULT NULL)",
                                 "PREPARE p(rt_dom) AS SELECT $1", "PREPARE p(text) AS SELECT $1::rt_dom"])
@pytest.mark.parametrize("make", [_shared, _dan])
def test_a_domain_named_anywhere_runs_its_constraint(sql: str, make) -> None:
    """Review 19b F1: a value read as a domain (a new table's column, a prepared statement's parameter) runs the
    domain's CHECK (and DEFAULT) functions."""
    denied = decide(make(), sql)
    assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", denied
    assert "public.rt_chk()" in denied.message and "rt_dom" in denied.message
    assert not isinstance(decide(make(extra=ALLOWED), sql), Deny)
    assert not isinstance(decide(make(Reached()), sql), Deny)


@pytest.mark.parametrize("sql", ["CREATE TEMP TABLE t AS SELECT d FROM rt_items",
                                 "CREATE TEMP TABLE t AS SELECT * FROM public.rt_items WHERE id > 1",
                                 "SELECT d INTO TEMP t FROM rt_items", "CREATE TEMP TABLE t (LIKE rt_items)",
                                 "CREATE TEMP TABLE t AS SELECT * FROM (SELECT d FROM rt_items) s",
                                 "CREATE TEMP TABLE t AS SELECT o.id FROM orders o JOIN rt_items i ON i.id = o.id"])
@pytest.mark.parametrize("make", [_shared, _dan])
def test_a_new_table_made_from_a_relation_of_a_checked_domain_is_refused(sql: str, make) -> None:
    """rt20b F2: a new table made from a relation whose row type a domain checks takes the domain: its CHECK runs at
    each later INSERT / UPDATE / COPY of the table."""
    denied = decide(make(), sql)
    assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", denied
    assert "public.rt_chk()" in denied.message and "rt_items" in denied.message
    assert not isinstance(decide(make(extra=ALLOWED), sql), Deny)
    assert not isinstance(decide(make(Reached()), sql), Deny)


@pytest.mark.parametrize("sql", ["CREATE TEMP TABLE t AS SELECT id FROM orders", "CREATE TEMP TABLE t (LIKE orders)",
                                 "SELECT id INTO TEMP t FROM orders",
                                 "CREATE TEMP TABLE t AS WITH rt_items AS (SELECT 1 AS d) SELECT d FROM rt_items",
                                 "SELECT d FROM rt_items"])
@pytest.mark.parametrize("make", [_shared, _dan])
def test_a_new_table_of_no_checked_domain_is_not_refused(sql: str, make) -> None:
    assert not isinstance(decide(make(), sql), Deny), decide(make(), sql)


def _schema(reached: Reached = REACHED, extra: frozenset[str] = frozenset()) -> TenantPolicy:
    return TenantPolicy(tenant="acme", strategy="schema", tenant_schema="tenant_acme", shared_schemas=("public",),
                        reached=reached, extra_allowed_functions=extra)


@pytest.mark.parametrize("sql", ["SELECT w FROM rt_v", "SELECT w FROM public.rt_v",
                                 "SELECT * FROM (SELECT w FROM rt_v) s", "SELECT 1 WHERE EXISTS (SELECT FROM rt_v)",
                                 "WITH x AS (SELECT w FROM rt_v) SELECT * FROM x"])
@pytest.mark.parametrize("make", [_shared, _schema])
def test_a_view_over_a_function_not_allowed_is_refused(sql: str, make) -> None:
    """Review 19b F4: reading a view runs the functions of its query (with the view owner's rights on the tables);
    a shared or schema tenant's allow-list applies to them. A view over allowed functions only stays readable."""
    denied = decide(make(), sql)
    assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", denied
    assert "public.rt_w()" in denied.message and "view" in denied.message and "rt_v" in denied.message
    assert not isinstance(decide(make(extra=frozenset({"public.rt_w"})), sql), Deny)
    assert not isinstance(decide(make(Reached()), sql), Deny)
    # a CTE of the view's name is not the view
    assert not isinstance(decide(make(), "WITH rt_v AS (SELECT 1 AS w) SELECT w FROM rt_v"), Deny)


def test_a_database_tenants_views_are_its_own() -> None:
    assert not isinstance(decide(_dan(), "SELECT w FROM rt_v"), Deny)


EQUAL_BY_NAME = {
    "case_when": "SELECT CASE o.id WHEN 1 THEN 'one' END FROM orders o",
    "join_using": "SELECT 1 FROM orders a JOIN orders b USING (id)",
    "natural_join": "SELECT 1 FROM orders a NATURAL JOIN orders b",
    "in_list": "SELECT 1 FROM orders o WHERE o.id IN (1, 2)",
    "nullif": "SELECT NULLIF(o.id, 1) FROM orders o",
    "is_distinct": "SELECT o.id IS DISTINCT FROM 1 FROM orders o",
    "is_not_distinct": "SELECT o.id IS NOT DISTINCT FROM 1 FROM orders o",
    "any_array": "SELECT 1 FROM orders o WHERE o.id = ANY (ARRAY[1])",
    "in_subquery": "SELECT 1 FROM orders o WHERE o.id IN (SELECT 1)",
}


@pytest.mark.parametrize("shape", list(EQUAL_BY_NAME))
@pytest.mark.parametrize("make", [_shared, _dan])
def test_an_equality_applied_by_name_counts_as_written(shape: str, make) -> None:
    """Review 19b F9: PostgreSQL applies the operator named `=` of the operand types (an app's SECURITY DEFINER one
    included) for a simple CASE, JOIN ... USING / NATURAL, IN, NULLIF, IS [NOT] DISTINCT FROM, = ANY: each counts as
    an explicit `a = b` does (refused unless allowed; not read-only)."""
    sql = EQUAL_BY_NAME[shape]
    equal = Reached(frozenset({("operator", "=", "public.orders_eq")}))
    denied = decide(make(equal), sql)
    assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", denied
    allowed = decide(make(equal, extra=frozenset({"public.orders_eq"})), sql)
    assert not isinstance(allowed, Deny) and READ_ONLY not in allowed.effects, allowed
    assert READ_ONLY in decide(make(Reached()), sql).effects
    assert READ_ONLY in decide(make(Reached(frozenset({("operator", "<", "public.orders_lt")}))), sql).effects


def test_between_applies_its_comparisons() -> None:
    sql = "SELECT 1 FROM orders o WHERE o.id BETWEEN 1 AND 2"
    for symbol in ("<=", ">="):
        denied = decide(_shared(Reached(frozenset({("operator", symbol, "public.f")}))), sql)
        assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", (symbol, denied)


# wp-cast: `CREATE CAST (sales.status AS text) WITH FUNCTION sales.status_text(...)` and a superuser's
# `CREATE CAST (int8 AS sales.status) WITH FUNCTION sales.of_int8(int8)` (a built-in source type: a Parse may
# declare a parameter of it), as dbcheck.reached_routines reads them
TEXT_CAST = Reached(frozenset({
    *cast_rows("sales.status_text", ("text", "label"), ("status", "state")),
    *cast_rows("sales.of_int8", ("status", "state"), ("int8", PARAM)),
    *cast_rows("sales.code_len", ("code",), (ANY,)),  # a length cast (code -> code): for a type modifier
    ("shadow", "count", "public.count"),
}))


def _text_cast(extra: frozenset[str] = frozenset({"count"})) -> TenantPolicy:
    return TenantPolicy(tenant="dan", strategy="database", reached=TEXT_CAST, extra_allowed_functions=extra)


@pytest.mark.parametrize("sql", [
    "SELECT 1::sales.status, '1'::sales.status, NULL::sales.status, 1.5::text, 'x'::text",
    "SELECT x::int::sales.status FROM t",  # int4: no cast of the database's from it
])
def test_a_cast_whose_source_type_is_provably_another_runs_no_app_function(sql: str) -> None:
    decision = decide(_text_cast(frozenset()), sql)
    assert not isinstance(decision, Deny), decision
    assert READ_ONLY in decision.effects  # and it stays read-only


@pytest.mark.parametrize("sql, function", [
    ("SELECT $1::sales.status", "sales.of_int8"),  # a Parse may declare $1 int8
    ("SELECT 3000000000::sales.status", "sales.of_int8"),  # an int8 constant
    ("SELECT '1'::int8::state", "sales.of_int8"),  # to a domain over the target
    ("SELECT pg_catalog.count(*)::sales.status", "sales.of_int8"),  # bigint
    ("SELECT count(x)::text FROM t", "sales.status_text"),  # public.count may be the one called: any type
    ("SELECT x::text FROM t", "sales.status_text"),
    ("SELECT 'x'::code(3)", "sales.code_len"),  # run on the literal read as code
])
def test_a_cast_whose_source_type_may_be_its_own_is_refused(sql: str, function: str) -> None:
    denied = decide(_text_cast(), sql)
    assert isinstance(denied, Deny) and denied.rule == "function_not_allowed", denied
    assert f"{function}()" in denied.message, denied.message
    allowed = decide(_text_cast(frozenset({"count", function})), sql)
    assert not isinstance(allowed, Deny) and READ_ONLY not in allowed.effects, allowed
