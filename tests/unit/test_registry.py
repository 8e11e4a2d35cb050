"""The tenant registry: preparing policies with injected checks, validating a new config, revocations as data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.auth.scram import make_verifier
from proxy.config import Config, TenantConfig, parse_config
from proxy.policy.reached import Reached
from proxy.registry import Revocation, SessionRef, TenantRegistry, revocations


def make_config(tmp_path: Path, *, tenants: dict[str, Any] | None = None, users: dict[str, Any] | None = None,
                admins: tuple[str, ...] = ("root",), **backends: Any) -> Config:
    users = users if users is not None else {"alice": {"tenant": "acme"}, "bob": {"tenant": "globex"}}
    lines = [f'{u} = "{make_verifier("pw")}"' for u in (*users, *admins)]
    (tmp_path / "s.toml").write_text("[users]\n" + "\n".join(lines) + "\n")
    return parse_config(
        {
            "secrets_file": "s.toml",
            "admin": {"users": list(admins)},
            "backends": {"main": {}, **backends},
            "tenants": tenants if tenants is not None else {
                "acme": {"strategy": "database", "database": "acme"},
                "globex": {"strategy": "database", "database": "globex"},
            },
            "users": users,
        },
        base=tmp_path,
    )


def report(errors: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(warnings=[], errors=list(errors), rls_complete=True, rls_tables=frozenset(),
                           catalog_columns={}, schemas=frozenset(), neighbour_tables=set(), neighbour_parents=set(),
                           neighbour_sequences=set(), neighbour_shadows=set(), reached=Reached())


class Unreachable(Exception):
    pass


def registry(config: Config, failing: dict[str, Exception | tuple[str, ...]] | None = None) -> TenantRegistry:
    """A registry whose preflight answers per tenant: an exception raised, or the errors reported."""
    failing = failing or {}

    def preflight(_config: Config, tenant: TenantConfig, _scoped: object) -> SimpleNamespace:
        found = failing.get(tenant.name, ())
        if isinstance(found, Exception):
            raise found
        return report(found)

    return TenantRegistry(config, lambda _c, _t: {}, preflight)


def refs(*users: str, admin: tuple[str, ...] = ()) -> list[SessionRef]:
    return [SessionRef(f"s-{u}", u) for u in users] + [SessionRef(f"s-{u}", u, admin=True) for u in admin]


def test_prepare_tenant_builds_a_policy_and_reports_blocking_problems(tmp_path: Path) -> None:
    reg = registry(make_config(tmp_path), {"globex": ("RLS is off",)})
    assert reg.prepare_tenant("acme") == []
    assert reg.policy("acme") is not None and reg.policy("acme").tenant == "acme"
    assert reg.prepare_tenant("globex") == ["RLS is off"]
    assert reg.policy("globex") is None
    assert reg.pending() == ["globex"]


def test_prepare_config_leaves_unreachable_tenants_pending_and_collects_problems(tmp_path: Path) -> None:
    reg = registry(make_config(tmp_path), {"acme": Unreachable("down")})
    policies, problems = reg.prepare_config(reg.config, Unreachable)
    assert set(policies) == {"globex"} and problems == []
    reg = registry(make_config(tmp_path), {"acme": ("no RLS",)})
    policies, problems = reg.prepare_config(reg.config, Unreachable)
    assert set(policies) == {"globex"} and problems == ["no RLS"]
    assert reg.policies == {}  # validating a new config changes nothing in force


def test_install_switches_config_and_policies_and_returns_the_revocations(tmp_path: Path) -> None:
    old = make_config(tmp_path)
    reg = registry(old)
    reg.prepare_tenant("acme")
    new = make_config(tmp_path, users={"alice": {"tenant": "acme"}})
    policies, _ = reg.prepare_config(new, Unreachable)
    revoked = reg.install(new, policies, refs("alice", "bob"))
    assert reg.config is new and reg.policies is policies
    assert [(r.session_id, r.user, r.tenant, r.reason) for r in revoked] == [("s-bob", "bob", "globex", "user_removed")]
    error = revoked[0].error  # the client-visible error travels with it
    assert (error.sqlstate, error.message) == ("28000", 'role "bob" is no longer allowed to connect')


def test_revocations_for_a_moved_user_and_a_changed_tenant(tmp_path: Path) -> None:
    old = make_config(tmp_path)
    moved = make_config(tmp_path, users={"alice": {"tenant": "globex"}, "bob": {"tenant": "globex"}})
    assert [r.user for r in revocations(old, moved, refs("alice", "bob"))] == ["alice"]
    replaced = make_config(tmp_path, tenants={
        "acme": {"strategy": "database", "database": "acme2"},
        "globex": {"strategy": "database", "database": "globex"},
    })
    assert [r.user for r in revocations(old, replaced, refs("alice", "bob"))] == ["alice"]
    assert revocations(old, make_config(tmp_path), refs("alice", "bob")) == []


def test_revocations_for_a_user_whose_agent_profile_changed(tmp_path: Path) -> None:
    old = make_config(tmp_path)
    agent = make_config(tmp_path, users={"alice": {"tenant": "acme", "profile": "agent"}, "bob": {"tenant": "globex"}})
    assert [r.user for r in revocations(old, agent, refs("alice", "bob"))] == ["alice"]
    lower = make_config(tmp_path, users={"alice": {"tenant": "acme", "profile": "agent", "agent": {"max_rows": 9}},
                                         "bob": {"tenant": "globex"}})
    assert [r.user for r in revocations(agent, lower, refs("alice", "bob"))] == ["alice"]
    assert revocations(agent, agent, refs("alice", "bob")) == []


def test_revocations_for_a_removed_admin_only(tmp_path: Path) -> None:
    old = make_config(tmp_path, admins=("root", "ops"))
    new = make_config(tmp_path, admins=("root",))
    out = revocations(old, new, refs(admin=("root", "ops")))
    assert out == [Revocation("s-ops", "ops", None, "user_removed", out[0].error)]


@pytest.mark.parametrize("user", ["nobody"])
def test_a_user_unknown_to_the_old_config_is_revoked(tmp_path: Path, user: str) -> None:
    old = make_config(tmp_path)
    assert [r.user for r in revocations(old, old, refs(user))] == [user]


def test_a_registry_change_prepares_only_the_tenants_it_changes(tmp_path: Path) -> None:
    prepared: list[str] = []

    def preflight(_config: Config, tenant: TenantConfig, _scoped: object) -> SimpleNamespace:
        prepared.append(tenant.name)
        return report()

    old = make_config(tmp_path)
    reg = TenantRegistry(old, lambda _c, _t: {}, preflight)
    policies, _ = reg.prepare_config(old, Unreachable)
    reg.install(old, policies, [])
    prepared.clear()
    new = make_config(tmp_path, tenants={"acme": {"strategy": "database", "database": "acme"},
                                         "globex": {"strategy": "database", "database": "globex2"},
                                         "initech": {"strategy": "database", "database": "initech"}},
                      users={"alice": {"tenant": "acme"}, "carol": {"tenant": "acme"}})
    kept, problems = reg.prepare_config(new, Unreachable, keep_unchanged=True)
    assert problems == [] and sorted(prepared) == ["globex", "initech"]  # acme's inputs are the same
    assert kept["acme"] is policies["acme"] and kept["globex"] is not policies["globex"]
    prepared.clear()
    reg.prepare_config(new, Unreachable)  # SIGHUP: every tenant again (a migration may have changed its tables)
    assert sorted(prepared) == ["acme", "globex", "initech"]
    assert TenantRegistry.inputs(new, "nobody") is None


def test_a_tenant_joining_a_database_tenants_database_prepares_it_again(tmp_path: Path) -> None:
    """Issue 14: whether a database tenant shares its database is an input of its policy (`database_shared`): a
    shared tenant added to its database (no schema hidden from it) prepares it again."""
    prepared: list[str] = []

    def preflight(_config: Config, tenant: TenantConfig, _scoped: object) -> SimpleNamespace:
        prepared.append(tenant.name)
        return report()

    alone = {"acme": {"strategy": "database", "database": "acme"},
             "initech": {"strategy": "database", "database": "initech"}}
    old = make_config(tmp_path, tenants=alone, users={"alice": {"tenant": "acme"}})
    reg = TenantRegistry(old, lambda _c, _t: {}, preflight)
    policies, _ = reg.prepare_config(old, Unreachable)
    reg.install(old, policies, [])
    assert not policies["acme"].database_shared and policies["acme"].owns_database
    prepared.clear()
    new = make_config(tmp_path, tenants={**alone, "globex": {"strategy": "shared", "database": "acme",
                                                             "tenant_id": "g", "tables": ["public.t"]}},
                      users={"alice": {"tenant": "acme"}})
    kept, problems = reg.prepare_config(new, Unreachable, keep_unchanged=True)
    assert problems == [] and sorted(prepared) == ["acme", "globex"]  # initech's inputs are the same
    assert kept["acme"].database_shared and not kept["acme"].owns_database
    assert kept["initech"] is policies["initech"]


def test_a_database_tenants_neighbours_moving_their_rows_prepare_it_again(tmp_path: Path) -> None:
    """Issue 14 (wp-dbshare): a database tenant's preflight checks it cannot read its database's shared tenants'
    scoped tables, so where they are is an input of its policy: a second shared tenant with other tables prepares it
    again (already sharing: `database_shared` does not change); one more shared tenant like the first (another
    tenant id) does not."""
    prepared: list[str] = []

    def preflight(_config: Config, tenant: TenantConfig, _scoped: object) -> SimpleNamespace:
        prepared.append(tenant.name)
        return report()

    shared = {"strategy": "shared", "database": "acme", "tenant_id": "g", "tables": ["public.t"]}
    base = {"acme": {"strategy": "database", "database": "acme"}, "globex": shared}
    old = make_config(tmp_path, tenants=base, users={"alice": {"tenant": "acme"}})
    reg = TenantRegistry(old, lambda _c, _t: {}, preflight)
    policies, _ = reg.prepare_config(old, Unreachable)
    reg.install(old, policies, [])
    prepared.clear()
    same = make_config(tmp_path, tenants={**base, "hooli": {**shared, "tenant_id": "h"}},
                       users={"alice": {"tenant": "acme"}})
    kept, problems = reg.prepare_config(same, Unreachable, keep_unchanged=True)
    assert problems == [] and prepared == ["hooli"] and kept["acme"] is policies["acme"]
    prepared.clear()
    moved = make_config(tmp_path, tenants={**base, "hooli": {**shared, "tenant_id": "h", "tables": ["sales.t"]}},
                        users={"alice": {"tenant": "acme"}})
    kept, problems = reg.prepare_config(moved, Unreachable, keep_unchanged=True)
    assert problems == [] and sorted(prepared) == ["acme", "hooli"]
