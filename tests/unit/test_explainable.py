"""Which SQL prepared statements EXPLAIN EXECUTE may show (`SessionContext.explainable`): the PREPARE's decision
marks them; what PostgreSQL does to prepared statements takes them back (wp-f4)."""

from __future__ import annotations

from proxy.policy.model import (
    DEALLOCATE,
    DISCARD_ALL,
    EMPTY_CONTEXT,
    SQL_PREPARE,
    TEMP_TABLE,
    TEMP_VIEW,
    Change,
    SessionContext,
)
from proxy.sessionstate import _rolled_back


def _prepare(context: SessionContext, name: str, explainable: bool) -> SessionContext:
    return context.apply(Change(0, SQL_PREPARE, name, flag=explainable))


def test_a_prepare_marks_its_statement_and_a_name_prepared_already_stays_as_it_was() -> None:
    context = _prepare(EMPTY_CONTEXT, "p", True)
    assert context.explainable == {"p"} and context.for_decisions().explainable == {"p"}
    assert _prepare(context, "p", True).explainable == {"p"}
    opaque = _prepare(EMPTY_CONTEXT, "q", False)
    assert opaque.explainable == frozenset() and opaque.prepared == {"q"}
    # PostgreSQL refuses a second PREPARE of q (42P05): q stays the statement over a catalog
    assert _prepare(opaque, "q", True).explainable == frozenset()
    # a PREPARE over a catalog of a name the session believed explainable takes it back, whatever PostgreSQL answers
    assert _prepare(context, "p", False).explainable == frozenset()


def test_deallocate_discard_and_a_temporary_view_take_them_back() -> None:
    context = _prepare(_prepare(EMPTY_CONTEXT, "p", True), "r", True)
    assert context.apply(Change(0, DEALLOCATE, "p")).explainable == {"r"}
    assert context.apply(Change(0, DEALLOCATE, "")).explainable == frozenset()
    assert context.apply(Change(0, DISCARD_ALL)).explainable == frozenset()
    assert context.apply(Change(0, TEMP_VIEW, "orders")).explainable == frozenset()
    # a temporary table may take a name they read too (review 18 F1): prepared again before EXPLAIN EXECUTE shows them
    assert context.apply(Change(0, TEMP_TABLE, "orders")).explainable == frozenset()


def test_a_rollback_leaves_them_as_it_leaves_the_statements() -> None:
    before = _prepare(EMPTY_CONTEXT, "p", True)
    now = _prepare(before.apply(Change(0, DEALLOCATE, "p")), "p", False)
    assert _rolled_back(before, now).explainable == frozenset()
    assert _rolled_back(EMPTY_CONTEXT, before).explainable == {"p"}
