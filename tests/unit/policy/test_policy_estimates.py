"""The shared strategy's admission EXPLAIN text (policy/estimates.py): the tenant column reads as the tenant's value."""

from __future__ import annotations

import pytest
from policy_corpus import POLICIES

from proxy import admission
from proxy.policy import Rewrite, decide, shape

AGENT = POLICIES["shared_agent"]  # acme, scoped tables sales.orders / sales.customers ... (tenant column tenant_id)
CASE = "(CASE WHEN false THEN {ref} ELSE 'acme' END)"


def _explain(sql: str) -> Rewrite:
    decision = decide(AGENT, sql)
    assert isinstance(decision, Rewrite), decision
    return decision


@pytest.mark.parametrize(("table", "written", "ref"), [
    ("sales.orders o", "o.tenant_id", "o.tenant_id"),
    ("orders", "tenant_id", "tenant_id"),
    ("sales.orders", "sales.orders.tenant_id", "orders.tenant_id"),  # (the rewrite's own form of the reference)
    ("sales.orders o", 'o."tenant_id"', 'o."tenant_id"'),
])
def test_the_clients_tenant_column_references_read_as_the_tenants_value(table: str, written: str, ref: str) -> None:
    """Red team 6 F7's probe: `tenant_id >= 'x'` times an agent-chosen factor no longer reads the other tenants'
    share of the column's statistics (the planner folds `'acme' >= 'x'`); the statement that runs is unchanged."""
    sql = f"SELECT 1 FROM {table}, generate_series(1, 703) g WHERE {written} >= 'umbrella'"
    decision = _explain(sql)
    assert decision.explain is not None
    assert CASE.format(ref=ref) + " >= 'umbrella'" in decision.explain
    assert CASE.format(ref=ref) not in decision.sql and f"{ref} >= 'umbrella'" in decision.sql
    # the proxy's own filter keeps the column: the scan is estimated as the tenant's share, not the table's size
    assert "\"tenant_id\" = 'acme'" in decision.explain
    assert decision.explain.replace(CASE.format(ref=ref), ref) == decision.sql
    assert admission.sent_text(sql, decision) == decision.explain


def test_every_reference_in_select_group_and_order_by() -> None:
    decision = _explain("SELECT tenant_id, count(*) FROM sales.orders GROUP BY tenant_id ORDER BY tenant_id")
    assert decision.explain is not None and decision.explain.count(CASE.format(ref="tenant_id")) == 3


def test_no_tenant_column_reference_no_other_text() -> None:
    sql = "SELECT id FROM sales.orders WHERE id > 4"
    decision = _explain(sql)
    assert decision.explain is None
    assert admission.sent_text(sql, decision) == decision.sql


def test_other_strategies_and_other_columns_untouched() -> None:
    assert _explain("SELECT o.id FROM sales.orders o WHERE o.customer_id > 3").explain is None
    decision = decide(POLICIES["schema_agent"], "SELECT 1 FROM orders WHERE tenant_id >= 'b'")
    assert getattr(decision, "explain", None) is None


def test_not_shaped() -> None:
    """A decision with an admission text is never reused for another text of its shape (its EXPLAIN would be the
    first text's)."""
    decision = _explain("SELECT 1 FROM sales.orders o WHERE o.tenant_id >= 'b' AND o.id = 1")
    assert shape.from_decision("SELECT 1 FROM sales.orders o WHERE o.tenant_id >= 'b' AND o.id = \x00", 1,
                               decision) is None
