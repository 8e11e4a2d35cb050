"""Functions PostgreSQL runs without a call naming them (red team 9s8 F1/F2): attribute notation, an operator, a cast,
an overloaded built-in name and a view calling one are checked against the allow-list and are never read-only."""

from __future__ import annotations

import pytest

from proxy.policy import Deny, TenantPolicy, decide
from proxy.policy.model import READ_ONLY
from proxy.policy.reached import Reached
from proxy.replicas import _read_only, set_reached

REACHED = Reached(frozenset({
    ("attribute", "rt_tenants_sd", "public.rt_tenants_sd"),
    ("field", "amount", "public.amount"),
    ("operator", "#@#", "public.rt_op_sd"),
    ("cast", "text", "public.rt_tenants_sd"),
    ("shadow", "lower", "public.lower"),
    ("view", "public.rt_v", "public.rt_w"),
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
}
PLAIN = ["SELECT id, tenant_id, o.amount FROM orders o WHERE o.id = 1", "SELECT 1 + 2",
         "SELECT upper(tenant_id) FROM orders",
         "SELECT o.id::int8 FROM orders o",
         # schema.table.column (SQLAlchemy's schema'd Table): never amount(column), though amount(numeric) exists
         "SELECT public.orders.amount, public.orders.id FROM public.orders WHERE public.orders.id = 1",
         # a function-style cast runs no cast function (PostgreSQL: 42883 where one would be needed)
         "SELECT text(o.id) FROM orders o"]


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
    allowed = make(extra=frozenset({"public.rt_tenants_sd", "rt_op_sd", "public.lower", "amount"}))
    assert not isinstance(decide(allowed, sql), Deny), decide(allowed, sql)
    # without the snapshot (main's behaviour) the same text passes the allow-list: the snapshot is what refuses it
    assert not isinstance(decide(make(Reached()), sql), Deny)
    for plain in PLAIN:  # what does not reach them is unchanged
        assert not isinstance(decide(make(), plain), Deny), (plain, decide(make(), plain))


@pytest.mark.parametrize("shape", ["attribute", "operator", "cast", "overload"])
def test_agent_refuses_even_when_allowed(shape: str) -> None:
    agent = _shared(extra=frozenset({"public.rt_tenants_sd", "rt_op_sd", "public.lower"}), agent=True)
    denied = decide(agent, REACHING[shape])
    assert isinstance(denied, Deny) and denied.rule in ("agent_function", "function_not_allowed"), denied


@pytest.mark.parametrize("sql", [*REACHING.values(), "SELECT w FROM rt_v", "SELECT w FROM public.rt_v",
                                 "SELECT * FROM (SELECT w FROM rt_v) s"])
def test_not_read_only(sql: str) -> None:
    allowed = _dan(extra=frozenset({"public.rt_tenants_sd", "rt_op_sd", "public.lower", "public.rt_w", "amount"}))
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


ALLOWED = frozenset({"public.rt_tenants_sd", "rt_op_sd", "public.lower", "amount"})


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
