"""Issue 14: a database tenant whose database other tenants share (`database_shared`) is not its database's only
tenant: the catalogs' figures of their tables, other sessions' temporary schemas and large objects are not its own.
A database tenant alone in its database keeps every one of them."""

from __future__ import annotations

import dataclasses

import pytest
from policy_corpus import POLICIES

from proxy.policy import Rewrite, decide
from proxy.policy.guards import visible
from proxy.policy.visibility import hides_namespaces, namespace_row_visible, others_rows_relations

ALONE = POLICIES["database"]
SHARING = POLICIES["database_shared"]
HIDING = POLICIES["database_hiding"]  # hidden schemas, no other tenant configured (the registry's schema)


def _sql(policy: object, sql: str) -> str:
    decision = decide(policy, sql)  # type: ignore[arg-type]
    assert isinstance(decision, Rewrite), decision
    return decision.sql


def test_only_a_database_tenant_alone_owns_its_database() -> None:
    assert ALONE.owns_database and HIDING.owns_database
    assert not SHARING.owns_database
    assert not POLICIES["shared"].owns_database and not POLICIES["schema"].owns_database
    assert SHARING.key != ALONE.key and SHARING != ALONE


def test_a_shared_database_hides_namespaces_and_other_sessions_temp_schemas() -> None:
    assert not hides_namespaces(ALONE) and hides_namespaces(SHARING)
    assert namespace_row_visible(SHARING, "n") == "NOT (pg_catalog.pg_is_other_temp_schema(n.oid))"
    assert namespace_row_visible(ALONE, "n") == "true"
    with_hidden = dataclasses.replace(SHARING, hidden_schemas=HIDING.hidden_schemas,
                                      known_schemas=HIDING.known_schemas)
    assert "pg_is_other_temp_schema" in namespace_row_visible(with_hidden, "n")
    assert "pg_is_other_temp_schema" not in namespace_row_visible(HIDING, "n")  # every session is its own


def test_the_row_secured_tables_figures_are_scrubbed_in_a_shared_database() -> None:
    others = others_rows_relations(SHARING)
    assert others is not None and "relrowsecurity" in others
    assert others_rows_relations(ALONE) is None and others_rows_relations(HIDING) is None
    for sql in ("SELECT reltuples, relpages FROM pg_class WHERE relname = 'orders'",
                "SELECT n_live_tup, n_tup_ins FROM pg_stat_user_tables WHERE relname = 'orders'"):
        assert "pgt_c.relrowsecurity" in _sql(SHARING, sql), sql
        assert "pgt_c.relrowsecurity" not in _sql(ALONE, sql), sql
    assert "relrowsecurity" in visible(SHARING, "sized", "x")
    assert "relrowsecurity" not in visible(ALONE, "sized", "x")
    assert visible(SHARING, "dbsize", "x") == "false"


def test_large_objects_are_not_listed_in_a_shared_database() -> None:
    assert "false" in _sql(SHARING, "SELECT oid FROM pg_largeobject_metadata")
    assert "lomowner" in _sql(ALONE, "SELECT oid FROM pg_largeobject_metadata")


@pytest.mark.parametrize("view", ["pg_statio_all_sequences", "pg_statio_user_sequences", "pg_statio_sys_sequences"])
def test_the_shared_tenants_sequences_block_counters_are_scrubbed_in_a_shared_database(view: str) -> None:
    """Red team 9a10 B1: a sequence's blks_hit counts its nextval()s, the shared tenants' inserts: their sequences'
    counters (`others_sequences`, and those the row-secured tables own) are NULL as their tables' are."""
    sql = _sql(SHARING, f"SELECT relname, blks_read, blks_hit FROM pg_catalog.{view}")
    assert "THEN NULL ELSE" in sql and "pgt_d.deptype IN ('a', 'i')" in sql, sql
    assert "(pgt_m.nspname, pgt_q.relname) IN (('public', 'orders_id_seq'))" in sql, sql
    assert "relrowsecurity" not in _sql(ALONE, f"SELECT blks_hit FROM pg_catalog.{view}")
