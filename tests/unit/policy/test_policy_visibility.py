"""The catalog filters name only schemas the tenant may see: PostgreSQL prints them in EXPLAIN and keeps them in a
temporary view's definition (red team round 4 F1: the shared strategy's filter listed every hidden schema)."""

from __future__ import annotations

import dataclasses

import pytest
from policy_corpus import POLICIES

from proxy.policy import Rewrite, decide
from proxy.policy.catalog import relation_filter
from proxy.policy.model import TenantPolicy
from proxy.policy.visibility import namespace_row_visible

HIDDEN = frozenset({"tenant_globex", "Other Co"})
KNOWN = frozenset({"public", "sales", "ref", "pg_catalog", "information_schema", "pg_toast", *HIDDEN})


def _hiding(name: str) -> TenantPolicy:
    return dataclasses.replace(POLICIES[name], hidden_schemas=HIDDEN, known_schemas=KNOWN)


def _relations() -> list[str]:
    from proxy.policy import catalog

    names = {"pg_namespace", "pg_database", "pg_default_acl", "pg_shdescription", "pg_db_role_setting",
             *catalog.NAMESPACE_OID_COLUMNS, *catalog.RELATION_COLUMNS, *catalog.TYPE_COLUMNS,
             *catalog.PROC_COLUMNS, *catalog.OBJECT_COLUMNS, *catalog.SCHEMANAME_VIEWS, *catalog.ROLE_COLUMNS,
             *catalog.ACL_COLUMNS, *catalog.STAT_VIEWS}
    return sorted(names) + [f"information_schema.{v}" for v in sorted(catalog.INFORMATION_SCHEMA_COLUMNS)]


@pytest.mark.parametrize("name", ["shared", "database"])
def test_no_filter_names_a_hidden_schema(name: str) -> None:
    policy = _hiding(name)
    assert policy.hidden_schemas == HIDDEN and policy.known_schemas == KNOWN - HIDDEN
    seen = 0
    for relation in _relations():
        schema, _, table = relation.rpartition(".")
        flt = relation_filter(policy, {"relname": table, **({"schemaname": schema} if schema else {})})
        if flt is None:
            continue
        seen += 1
        text = flt.wrapper_text(table, table, True)
        assert "tenant_globex" not in text and "Other Co" not in text, relation
    assert seen > 80


@pytest.mark.parametrize("name", ["shared", "database"])
def test_the_allow_list_names_the_visible_schemas(name: str) -> None:
    predicate = namespace_row_visible(_hiding(name), "n")
    for visible in ("'public'", "'sales'", "'pg_catalog'", "'information_schema'", "'pg_toast'"):
        assert visible in predicate
    assert "tenant_globex" not in predicate
    assert ("pg_my_temp_schema" in predicate) == (name == "shared")  # a shared tenant: its own session's only


def test_a_rewritten_statement_never_names_a_hidden_schema() -> None:
    for name in ("shared", "database"):
        decision = decide(_hiding(name), "SELECT n.nspname, c.relname, r.rolname FROM pg_namespace n, pg_class c, "
                                         "pg_roles r, information_schema.tables t")
        assert isinstance(decision, Rewrite), decision
        assert "tenant_globex" not in decision.sql and "Other Co" not in decision.sql


def test_without_hidden_schemas_nothing_is_listed() -> None:
    assert namespace_row_visible(POLICIES["shared"], "n") == "NOT (pg_catalog.pg_is_other_temp_schema(n.oid))"
    assert namespace_row_visible(POLICIES["database"], "n") == "true"
