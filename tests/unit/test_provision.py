"""The pure parts of `pgtenant provision`: the SQL it writes and the access analysis (who else reads a table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.access import PUBLIC, PolicyFact, Reader, TableFacts, access, direct_readers, policy_key
from proxy.config import ConfigError, TenantConfig, parse_config
from proxy.provision import (
    ProvisionRefused,
    TableTarget,
    assess_members,
    assess_table,
    policy_current,
    provision,
    quote_literal,
    role_step,
    shared_targets,
    table_steps,
)
from proxy.tenancy import backend_context

APP = "(tenant_id = current_setting('app.tenant_id'::text, true))"
OWN = "((tenant_id)::text = current_setting('pgtenant.tenant_id'::text, true))"
TARGET = TableTarget("public", "orders", "tenant_id", "pgtenant.tenant_id", ("pgtenant",))


def _facts(
    *readers: Reader, rls: bool = False, force: bool = False, policies: tuple[PolicyFact, ...] = ()
) -> TableFacts:
    return TableFacts("public", "orders", "r", rls, force, "app_owner", policies, readers)


@pytest.mark.parametrize(
    ("expr", "key", "settings"),
    [
        (APP, "setting", ("app.tenant_id",)),
        (OWN, "setting", ("pgtenant.tenant_id",)),
        ("(tenant_id = current_setting(name_of_setting()))", "unproven", ("?",)),
        ("(tenant_id = (SELECT t.tenant FROM tenant_roles t WHERE (t.role = CURRENT_USER)))", "login", ()),
        ("(owner = SESSION_USER)", "login", ()),
        ("(tenant_id = current_setting('app.t'::text) OR (CURRENT_USER = 'x'::name))", "unproven", ("app.t",)),
        ("(tenant_id = my_tenant())", "unproven", ()),
        ("(tenant_id IN (SELECT id FROM t))", "unproven", ()),
        ("true", "open", ()),
        ("is_public", "open", ()),
        (None, "open", ()),
        ("not an expression ((", "unproven", ()),
    ],
)
def test_policy_key(expr: str | None, key: str, settings: tuple[str, ...]) -> None:
    assert policy_key(expr) == (key, settings)


def test_access_levels() -> None:
    app = PolicyFact("tenant_isolation", True, "*", APP)
    by_login = PolicyFact("by_login", True, "r", "(tenant_id = (SELECT tenant FROM m WHERE r = CURRENT_USER))")
    open_ = PolicyFact("everything", True, "r", "true")
    writes_only = PolicyFact("inserts", True, "a", None)
    fence = PolicyFact("login_fence", False, "*", "(tenant_id = (SELECT tenant FROM m WHERE r = CURRENT_USER))")
    assert access(Reader("a"), rls=False, force=False).level == "all"
    assert access(Reader("a", bypassrls=True), rls=True, force=True).why == "BYPASSRLS"
    assert access(Reader("a", owner=True), rls=True, force=False).level == "all"
    assert access(Reader("a", owner=True), rls=True, force=True).level == "none"
    assert access(Reader("a", policies=(writes_only,)), rls=True, force=True).level == "none"
    assert access(Reader("a", policies=(app,)), rls=True, force=False).level == "forgeable"
    assert access(Reader("a", policies=(app, open_)), rls=True, force=False).level == "all"
    assert access(Reader("a", policies=(by_login,)), rls=True, force=False).level == "checked"
    assert access(Reader("a", policies=(open_, fence)), rls=True, force=False).level == "checked"
    assert access(Reader("a", policies=(app,)), rls=True, force=True, ignore=frozenset({"tenant_isolation"})).level \
        == "none"


def test_public_without_rls_is_a_problem_it_would_cut_off() -> None:
    found = assess_table(_facts(Reader(PUBLIC)), TARGET)
    assert found.problems == [
        "public.orders: PUBLIC (every role) reads it today (no row-level security); with row-level security enabled "
        "and forced and no policy for it, it would see (and change) no rows. If your application reads it that way, "
        "grant SELECT to your application's role and give it a policy of its own first (CREATE POLICY app_access ON "
        '"public"."orders" TO app_role USING (…), then --trust app_role); or accept the change with --force'
    ]
    assert not found.refusals and not found.notes


def test_a_setting_keyed_policy_is_forgeable_and_its_setting_reusable() -> None:
    app = PolicyFact("tenant_isolation", True, "*", APP, (PUBLIC,))
    found = assess_table(_facts(Reader(PUBLIC, policies=(app,)), rls=True, policies=(app,)), TARGET)
    (problem,) = found.problems
    assert problem.startswith("public.orders: PUBLIC (every role) can read other tenants' rows directly, without a "
                              "tenant check it cannot forge (policy 'tenant_isolation' reads app.tenant_id, which any "
                              "login can SET); provision does not change that.")
    (note,) = found.notes
    assert 'set tenant_setting = "app.tenant_id"' in note and "any login can SET app.tenant_id" in note
    # the same setting as the tenant's: nothing to suggest
    same = TableTarget("public", "orders", "tenant_id", "app.tenant_id", ("pgtenant",))
    assert assess_table(_facts(rls=True, policies=(app,)), same).notes == []


def test_trusted_roles_owners_and_pgtenants_old_policy() -> None:
    app = PolicyFact("tenant_isolation", True, "*", APP, ("app",))
    facts = _facts(Reader("app", policies=(app,)), rls=True, policies=(app,))
    assert len(assess_table(facts, TARGET).problems) == 1
    trusted = assess_table(facts, TARGET, frozenset({"app"}))
    assert not trusted.problems and trusted.notes[0].startswith("public.orders: role app (--trust) reads other")
    # the owner reads without RLS being forced; FORCE would leave it nothing: said, not done silently
    (owner,) = assess_table(_facts(Reader("app_owner", owner=True), rls=True), TARGET).problems
    assert owner.startswith("public.orders: role app_owner (its owner) reads it today (owner; row-level security "
                            "not forced); with row-level security enabled and forced and no policy for it, it would "
                            "see (and change) no rows")
    # an owner with a policy of its own reads everything, as owners can anyway: a note, not a problem
    mine = PolicyFact("owner_reads", True, "*", "true", ("app_owner",))
    owns = assess_table(_facts(Reader("app_owner", owner=True, policies=(mine,)), rls=True), TARGET)
    assert not owns.problems and "can change the table's row-level security" in owns.notes[0]
    # a BYPASSRLS role reads everything, with or without pgtenant: a note
    bypass = assess_table(_facts(Reader("etl", bypassrls=True)), TARGET)
    assert not bypass.problems and "BYPASSRLS" in bypass.notes[0]
    # what an earlier provision made TO PUBLIC is replaced: its readers lose only what it gave them
    old = PolicyFact("pgtenant_isolation", True, "*", OWN, (PUBLIC,))
    closed = assess_table(_facts(Reader(PUBLIC, policies=(old,)), rls=True, force=True, policies=(old,)), TARGET)
    assert not closed.problems
    assert closed.notes == ["public.orders: closes what an earlier pgtenant provision opened: PUBLIC (every role) "
                            "could choose any tenant (policy 'pgtenant_isolation' reads pgtenant.tenant_id, which "
                            "any login can SET)"]
    # the preflight reads the table as it is: that policy still lets PUBLIC choose its tenant
    still_open = _facts(Reader(PUBLIC, policies=(old,)), rls=True)
    assert [(r.role, a.level) for r, a in direct_readers(still_open)] == [(PUBLIC, "forgeable")]
    assert direct_readers(still_open, trusted=frozenset({PUBLIC})) == []


def test_members_of_backend_roles_are_refusals() -> None:
    assert assess_members([("analyst", "pgtenant")]) == [
        "role analyst is a member of pgtenant's backend role pgtenant: it could act as pgtenant, under pgtenant's "
        'policy, with a tenant setting of its choosing (REVOKE "pgtenant" FROM "analyst")'
    ]


def _tenant(name: str, **kw: object) -> TenantConfig:
    return TenantConfig(name=name, strategy="shared", backend="main", database="saas", tenant_id=name, **kw)  # type: ignore[arg-type]


def test_shared_targets_one_policy_for_every_backend_role() -> None:
    a, b, w = _tenant("a"), _tenant("b"), _tenant("w", allow_writes=True)
    tables = {"a": [("public", "orders")], "b": [("public", "orders")], "w": [("public", "orders")]}
    targets, conflicts = shared_targets([a, b, w], tables, {"a": "pgt", "b": "pgt", "w": "pgt_w"})
    assert conflicts == []
    assert targets == [TableTarget("public", "orders", "tenant_id", "pgtenant.tenant_id", ("pgt", "pgt_w"),
                                   ("pgt_w",))]
    other = _tenant("o", tenant_setting="app.tenant_id")
    _, conflicts = shared_targets([a, other], {"a": [("public", "orders")], "o": [("public", "orders")]},
                                  {"a": "pgt", "o": "pgt"})
    assert conflicts and "tenants key it differently" in conflicts[0]


def test_table_steps_sql() -> None:
    target = TableTarget("public", "Orders", "tenant_id", "app.tenant_id", ("pgt", "pgt_w"), ("pgt_w",))
    steps = [s.sql for s in table_steps(target, policy_current=False)]
    assert steps == [
        'ALTER TABLE "public"."Orders" ENABLE ROW LEVEL SECURITY',
        'ALTER TABLE "public"."Orders" FORCE ROW LEVEL SECURITY',
        'DROP POLICY IF EXISTS "pgtenant_isolation" ON "public"."Orders"',
        'CREATE POLICY "pgtenant_isolation" ON "public"."Orders" AS PERMISSIVE FOR ALL TO "pgt", "pgt_w" '
        "USING (\"tenant_id\"::text = pg_catalog.current_setting('app.tenant_id', true)) "
        "WITH CHECK (\"tenant_id\"::text = pg_catalog.current_setting('app.tenant_id', true))",
        'GRANT SELECT ON "public"."Orders" TO "pgt", "pgt_w"',
        'GRANT INSERT, UPDATE, DELETE ON "public"."Orders" TO "pgt_w"',
    ]
    assert "TO PUBLIC" not in " ".join(steps)
    kept = [s.sql for s in table_steps(target, policy_current=True)]
    assert not any("POLICY" in s for s in kept)


def test_policy_current_compares_roles_and_predicate() -> None:
    own = PolicyFact("pgtenant_isolation", True, "*", OWN, ("pgtenant",), OWN)
    assert policy_current(_facts(policies=(own,)), TARGET)
    for changed in (
        PolicyFact("pgtenant_isolation", True, "*", OWN, (PUBLIC,), OWN),
        PolicyFact("pgtenant_isolation", True, "r", OWN, ("pgtenant",), None),
        PolicyFact("pgtenant_isolation", True, "*", APP, ("pgtenant",), APP),
    ):
        assert not policy_current(_facts(policies=(changed,)), TARGET)
    assert not policy_current(_facts(), TARGET)


def test_role_step_redacts_the_password() -> None:
    step = role_step("pgt", "it's\\secret", exists=False)
    assert step.sql.endswith("PASSWORD E'it''s\\\\secret'") and "secret" not in step.text
    assert role_step("pgt", None, exists=True).sql == 'ALTER ROLE "pgt" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB ' \
        "NOCREATEROLE NOREPLICATION"
    assert quote_literal("a'b") == "'a''b'"


def _config(tenant: dict[str, object]) -> dict[str, object]:
    return {"backends": {"main": {}}, "tenants": {"t": tenant}}


def test_schemas_key_is_for_database_tenants() -> None:
    db = parse_config(_config({"strategy": "database", "database": "t"}), base=Path("."))
    assert db.tenants["t"].schemas == ("public",)
    sales = parse_config(_config({"strategy": "database", "database": "t", "schemas": ["sales"]}), base=Path("."))
    assert sales.tenants["t"].schemas == ("sales",)
    assert backend_context(sales.tenants["t"]) == {"standard_conforming_strings": "on"}
    with pytest.raises(ConfigError, match=r"tenants\.t\.schemas: only for the database strategy"):
        parse_config(_config({"strategy": "schema", "database": "t", "schema": "s", "schemas": ["x"]}), base=Path("."))
    with pytest.raises(ConfigError, match=r"tenants\.t\.schemas: at least one schema"):
        parse_config(_config({"strategy": "database", "database": "t", "schemas": []}), base=Path("."))


def test_public_cannot_be_trusted() -> None:
    config = parse_config(_config({"strategy": "database", "database": "t"}), base=Path("."))
    said: list[str] = []
    with pytest.raises(ProvisionRefused):  # before connecting: the DSN is never used
        provision(config, "host=/nonexistent", log=said.append, trust=["public"])
    assert said == ["REFUSED: --trust PUBLIC: PUBLIC is every role, a person's login included"]
