"""The preflight's reading of row-level security policies (as pg_get_expr prints them), without a database."""

from __future__ import annotations

import pytest

from proxy.dbcheck import policy_pins_tenant


@pytest.mark.parametrize(
    ("expr", "verdict"),
    [
        # what `pgtenant provision` creates, as PostgreSQL prints it back
        ("((tenant_id)::text = current_setting('pgtenant.tenant_id'::text, true))", "exact"),
        ("((current_setting('PGTENANT.TENANT_ID'::text, true) = (tenant_id)::text) AND (id > 0))", "exact"),
        ("(tenant_id = pg_catalog.current_setting('pgtenant.tenant_id'))", "exact"),
        # names the setting but admits rows of every tenant
        ("(current_setting('pgtenant.tenant_id'::text) IS NOT NULL)", "unproven"),
        ("((tenant_id = current_setting('pgtenant.tenant_id'::text)) OR (status IS NOT NULL))", "unproven"),
        ("(status = current_setting('pgtenant.tenant_id'::text))", "unproven"),  # another column
        ("(tenant_id = current_setting('app.tenant'::text))", "unproven"),  # another setting
        # a helper function or a subquery may well pin the tenant, but pgtenant cannot tell
        ("(tenant_id = cur_tenant())", "unproven"),
        ("(tenant_id IN (SELECT t.id FROM tenants t))", "unproven"),
        # cannot depend on the session at all
        ("true", "open"),
        ("is_public", "open"),
        ("((id > 0) AND (tenant_id IS NOT NULL))", "open"),
        ("not an expression ((", "unproven"),
    ],
)
def test_policy_verdicts(expr: str, verdict: str) -> None:
    assert policy_pins_tenant(expr, "tenant_id", "pgtenant.tenant_id") == verdict
