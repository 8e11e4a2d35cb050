"""proxy.tenancy: each tenant's pinned backend context, search_path and policy, built from its config."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import Config, TenantConfig, parse_config
from proxy.tenancy import (
    PINNED_PARSING,
    backend_context,
    explicit_tables,
    other_tenants_schemas,
    parsing_violation,
    search_path,
    shares_database,
    tenant_policy,
)

SHARED = TenantConfig("acme", "shared", "main", "saas", tenant_id="acme", tenant_schemas=("public", "sales"),
                      tables=("public.orders", "sales.deals"), tenant_column="org", allow_writes=True)
SCHEMA = TenantConfig("globex", "schema", "main", "saas", schema='glo"bex', shared_schemas=("reference",))
DATABASE = TenantConfig("initech", "database", "main", "initech")


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("standard_conforming_strings", "on", None),
        ("standard_conforming_strings", "off", "standard_conforming_strings is off on the backend"),
        ("client_encoding", "UTF8", None),
        ("client_encoding", "utf8", None),
        ("client_encoding", "SQL_ASCII", None),
        ("client_encoding", "LATIN1", "client_encoding is LATIN1 on the backend"),
        ("TimeZone", "UTC", None),
    ],
)
def test_parsing_violation(name: str, value: str, problem: str | None) -> None:
    assert parsing_violation(name, value) == problem


def test_search_path_per_strategy() -> None:
    assert search_path(SHARED) == ("public", "sales")
    assert search_path(SCHEMA) == ('glo"bex', "reference")
    assert search_path(DATABASE) == ("public",)


def test_backend_context_pins_parsing_and_the_tenant() -> None:
    assert backend_context(DATABASE) == dict(PINNED_PARSING)  # the database itself is the boundary
    assert backend_context(SCHEMA) == {**PINNED_PARSING, "search_path": '"glo""bex", "reference"'}
    assert backend_context(SHARED) == {
        **PINNED_PARSING, "search_path": '"public", "sales"', "pgtenant.tenant_id": "acme"}


def test_explicit_tables_carry_the_tenant_column() -> None:
    assert explicit_tables(SHARED) == {("public", "orders"): "org", ("sales", "deals"): "org"}
    assert explicit_tables(DATABASE) == {}


def _config(tmp_path: Path) -> Config:
    schema = {"strategy": "schema", "backend": "a", "database": "saas"}
    return parse_config(
        {
            "backends": {"a": {}, "b": {"port": 5433}},
            "tenants": {
                "s1": {**schema, "schema": "s1", "shared_schemas": ["ref"]},
                "s2": {**schema, "schema": "s2"},
                "ref": {**schema, "schema": "ref"},  # a tenant whose schema s1 shares: not hidden from s1
                "elsewhere": {**schema, "database": "other", "schema": "s3"},
                "other_backend": {**schema, "backend": "b", "schema": "s4"},
                "shared": {"strategy": "shared", "backend": "a", "database": "saas", "tenant_id": "x"},
            },
        },
        base=tmp_path,
    )


def test_other_tenants_schemas_are_those_of_the_same_database(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert other_tenants_schemas(cfg, cfg.tenants["s1"]) == {"s2"}
    assert other_tenants_schemas(cfg, cfg.tenants["s2"]) == {"s1", "ref"}
    assert other_tenants_schemas(cfg, cfg.tenants["shared"]) == {"s1", "s2", "ref"}
    assert other_tenants_schemas(cfg, cfg.tenants["elsewhere"]) == frozenset()


def test_shared_policy_uses_the_explicit_tables_over_discovered_ones() -> None:
    p = tenant_policy(SHARED, {("public", "x"): "tenant_id"}, fence=True, rls_tables=[("public", "orders")],
                      hidden_schemas=["s2"], catalog_columns={"pg_class": ("oid",)})
    assert (p.tenant, p.strategy, p.tenant_value) == ("acme", "shared", "acme")
    assert p.scoped_tables == {("public", "orders"): "org", ("sales", "deals"): "org"}
    assert p.fence and p.rls_tables == {("public", "orders")} and p.allow_writes
    assert p.hidden_schemas == p.foreign_schemas == {"s2"}
    assert p.search_path == ("public", "sales") and p.tenant_setting == "pgtenant.tenant_id"
    assert dict(p.catalog_columns) == {"pg_class": ("oid",)}
    discovered = TenantConfig("acme", "shared", "main", "saas", tenant_id="acme")
    assert tenant_policy(discovered, {("public", "x"): "tenant_id"}).scoped_tables == {("public", "x"): "tenant_id"}


def test_schema_and_database_policies() -> None:
    p = tenant_policy(SCHEMA, hidden_schemas=["s2"])
    assert (p.strategy, p.tenant_schema, p.shared_schemas) == ("schema", 'glo"bex', ("reference",))
    assert p.search_path == ('glo"bex', "reference") and p.hidden_schemas == {"s2"} and not p.allow_writes
    d = tenant_policy(DATABASE)
    assert (d.tenant, d.strategy, d.search_path) == ("initech", "database", ("public",))
    assert not d.scoped_tables and not d.hidden_schemas


def test_known_schemas_never_include_a_hidden_one() -> None:
    d = tenant_policy(DATABASE, hidden_schemas=["s2"], known_schemas=["public", "s2", "app"])
    assert d.hidden_schemas == {"s2"} and d.known_schemas == {"public", "app"}
    assert tenant_policy(DATABASE, known_schemas=["public"]).key != tenant_policy(DATABASE).key


def test_a_database_is_shared_when_another_tenant_of_any_strategy_uses_it(tmp_path: Path) -> None:
    base = {"backends": {"a": {}, "b": {"port": 5433}}, "tenants": {
        "db": {"strategy": "database", "backend": "a", "database": "saas"},
        "alone": {"strategy": "database", "backend": "a", "database": "solo"},
        "acme": {"strategy": "shared", "backend": "a", "database": "saas", "tenant_id": "x"},
        "other_backend": {"strategy": "database", "backend": "b", "database": "solo"},
    }}
    cfg = parse_config(base, base=tmp_path)
    assert shares_database(cfg, cfg.tenants["db"]) and shares_database(cfg, cfg.tenants["acme"])
    assert not shares_database(cfg, cfg.tenants["alone"]) and not shares_database(cfg, cfg.tenants["other_backend"])
    assert tenant_policy(cfg.tenants["db"], database_shared=True).database_shared
    assert not tenant_policy(cfg.tenants["alone"]).database_shared


def test_a_tenants_extra_allowed_functions_reach_its_policy_and_the_allow_list(tmp_path: Path) -> None:
    """[tenants.X] extra_allowed_functions (the key the function_not_allowed message names): parsed from the
    config, folded to lower case, admitted by the allow-list; never-allowed functions stay refused."""
    from proxy.policy.functions import is_allowed

    cfg = parse_config({"backends": {"a": {}}, "tenants": {"acme": {
        "strategy": "database", "database": "acme", "extra_allowed_functions": ["Public.Fiscal_Quarter", "dblink"]}}},
        base=tmp_path)
    p = tenant_policy(cfg.tenants["acme"])
    assert p.extra_allowed_functions == {"public.fiscal_quarter", "dblink"}
    assert is_allowed(p, ("public", "fiscal_quarter")) and not is_allowed(p, ("sales", "fiscal_quarter"))
    assert not is_allowed(p, ("dblink",))  # never allowed, listed or not
    assert not is_allowed(tenant_policy(DATABASE), ("public", "fiscal_quarter"))
