"""The registry's rows as a config overlay, and a [tenants.X] table as its row (pure)."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError
from proxy.registrydb import DDL, SCHEMA, RegistryRows, overlay, tenant_row

V = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2VydmVy"


def test_rows_become_tenant_and_user_tables() -> None:
    rows = RegistryRows(
        tenants=[("acme", "shared", None, "saas", {"tenant_id": "acme"}),
                 ("initech", "database", "main", "initech", {})],
        settings=[("acme", "max_client_connections", 5), ("acme", "agent", {"max_rows": 10})],
        users=[("alice", "acme", V, {"profile": "agent"})],
        version=12,
    )
    out = overlay(rows)
    assert out.tenants == {
        "acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme", "max_client_connections": 5,
                 "agent": {"max_rows": 10}},
        "initech": {"strategy": "database", "database": "initech", "backend": "main"},
    }
    assert out.users == {"alice": {"tenant": "acme", "profile": "agent"}}
    assert out.verifiers == {"alice": V} and out.version == 12


@pytest.mark.parametrize(("rows", "problem"), [
    (RegistryRows(tenants=[("a", "shared", None, "d", {"database": "other"})]), r"tenants\.a\.database: a column"),
    (RegistryRows(tenants=[("a", "shared", None, "d", {"tenant_id": "a"})], settings=[("a", "tenant_id", "b")]),
     r"tenant_settings \(a, tenant_id\): 'tenant_id' is set by the tenants row itself"),
    (RegistryRows(users=[("u", "a", V, {"tenant": "b"})]), r"users\.u\.tenant: a column"),
    (RegistryRows(users=[("u", "a", V, ["profile"])]), r"users\.u: options must be a JSON object"),
])
def test_a_row_that_contradicts_itself_is_refused(rows: RegistryRows, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        overlay(rows)


def test_a_tenant_table_splits_into_its_row_options_and_settings() -> None:
    table = {"strategy": "shared", "database": "saas", "tenant_id": "x", "pool_size": 3, "backend": "main"}
    assert tenant_row(table) == ("shared", "main", "saas", {"tenant_id": "x"}, {"pool_size": 3})
    assert tenant_row({"strategy": "database", "database": "d"})[1] is None


def test_the_schema_grants_nothing_to_public_and_every_table_notifies() -> None:
    text = "\n".join(DDL)
    assert f"REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC" in text
    assert "GRANT" not in text.replace("REVOKE", "")
    for table in ("tenants", "tenant_settings", "users"):
        assert f"ON {SCHEMA}.{table}\n" in text or f"ON {SCHEMA}.{table} " in text
    assert "pg_notify" in text
