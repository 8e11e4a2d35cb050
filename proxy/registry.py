"""The tenant registry: each tenant's prepared policy, a new config's validation, and what a reload revokes (data)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from proxy import errors
from proxy.config import Config, TenantConfig
from proxy.errors import PgError
from proxy.logs import get_logger
from proxy.policy.model import Tenant, TenantPolicy
from proxy.policy.reached import Reached, union
from proxy.registrydb import SCHEMA as REGISTRY_SCHEMA
from proxy.tenancy import neighbour_layout, other_tenants_schemas, shares_database, tenant_policy

log = get_logger("pgtenant.registry")
__all__ = ["Revocation", "SessionRef", "Tenant", "TenantRegistry", "revocations"]

# The blocking database checks a tenant is prepared with (proxy.dbcheck's discover and preflight): passed in, so
# the registry itself never opens a connection.
Discover = Callable[[Config, TenantConfig], dict[tuple[str, str], str]]
Preflight = Callable[[Config, TenantConfig, dict[tuple[str, str], str]], Any]


@dataclass(frozen=True, slots=True)
class SessionRef:
    """What a reload needs to know of a logged-in session: who it is (its tenant is the user's, in the old config)."""

    session_id: str
    user: str
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Revocation:
    """A session a reload ends at its next statement, and the error it gets."""

    session_id: str
    user: str
    tenant: str | None
    reason: str
    error: PgError


def revocations(old: Config, new: Config, sessions: Iterable[SessionRef]) -> list[Revocation]:
    """The sessions a switch from `old` to `new` revokes: a removed admin, a removed user, a user moved to another
    tenant or to another profile or agent limits (its server connection and gate are the old ones), or a tenant
    whose placement or rules changed (its backend connection is the old one)."""
    out: list[Revocation] = []
    for s in sessions:
        if s.admin:
            if s.user not in new.admin.users:
                out.append(Revocation(s.session_id, s.user, None, "user_removed", errors.user_removed(s.user)))
            continue
        before = old.users.get(s.user)
        after = new.users.get(s.user)
        if after is None or before is None or after.tenant != before.tenant or (
            new.agent_limits(s.user) != old.agent_limits(s.user)) or (
            new.tenants[after.tenant] != old.tenants.get(after.tenant)
            or new.backend_for(new.tenants[after.tenant]) != old.backend_for(old.tenants[after.tenant])
        ):
            tenant = before.tenant if before is not None else None
            out.append(Revocation(s.session_id, s.user, tenant, "user_removed", errors.user_removed(s.user)))
    return out


class TenantRegistry:
    """The current config's tenants and their prepared policies (`policies`: a reload replaces the dict)."""

    def __init__(self, config: Config, discover: Discover, preflight: Preflight) -> None:
        self.config = config
        self.policies: dict[str, TenantPolicy] = {}
        self._discover = discover
        self._preflight = preflight
        self._published = Reached()  # the union publish() gave the text judge last
        self._publishing = threading.Lock()  # (prepare_tenant runs on executor threads)

    def policy(self, name: str) -> TenantPolicy | None:
        """The tenant's current policy (None while it is pending)."""
        return self.policies.get(name)

    def pending(self) -> list[str]:
        """The tenants of the current config without a policy yet (their backend was down)."""
        return sorted(set(self.config.tenants) - set(self.policies))

    def build(self, config: Config, name: str) -> tuple[TenantPolicy | None, list[str]]:
        """Blocking: discover, check and build one tenant's policy under `config`; (policy, problems)."""
        tenant = config.tenants[name]
        scoped = self._discover(config, tenant) if tenant.strategy == "shared" else {}
        if tenant.strategy == "shared":
            log.info("tenant_tables", tenant=name, tables=sorted(f"{s}.{t}" for s, t in scoped))
        report = self._preflight(config, tenant, scoped)
        for w in report.warnings:
            log.warning("preflight_warning", tenant=name, problem=w)
        for e in report.errors:
            log.error("preflight_failed", tenant=name, problem=e)
        if report.errors and config.preflight.enforce:
            return None, report.errors
        if tenant.strategy == "shared" and not report.rls_complete:
            log.warning("rewrite_fenced", tenant=name,
                        reason="row-level security does not cover every scoped table; filters become fences")
        try:
            return tenant_policy(
                tenant, scoped, fence=not report.rls_complete, rls_tables=report.rls_tables,
                hidden_schemas=other_tenants_schemas(config, tenant) | (report.schemas & {REGISTRY_SCHEMA}),
                catalog_columns=report.catalog_columns,
                known_schemas=report.schemas, max_advisory_locks=config.limits.max_advisory_locks,
                setting_caps=config.limits.setting_caps(), database_shared=shares_database(config, tenant),
                others_tables=report.neighbour_tables, others_parents=report.neighbour_parents,
                others_sequences=report.neighbour_sequences,
                others_shadows=report.neighbour_shadows, reached=report.reached,
            ), []
        except ValueError as exc:
            return None, [f"tenants.{name}: {exc}"]

    @staticmethod
    def inputs(config: Config, name: str) -> tuple[object, ...] | None:
        """Everything of `config` a tenant's policy is built from (besides the database itself), or None."""
        tenant = config.tenants.get(name)
        if tenant is None:
            return None
        return (tenant, config.backend_for(tenant), other_tenants_schemas(config, tenant), config.preflight,
                config.limits.max_advisory_locks, shares_database(config, tenant), neighbour_layout(config, tenant))

    def prepare_tenant(self, name: str, publish: bool = True) -> list[str]:
        """Blocking: prepare one tenant of the current config; return the blocking preflight problems (`publish`
        False: the caller publishes once after a batch, as the start does)."""
        policy, problems = self.build(self.config, name)
        if policy is not None:
            old = self.policies.get(name)
            self.policies[name] = policy
            if not publish:
                pass
            elif old is None or old.reached.rows <= policy.reached.rows:
                self._publish_more(policy.reached)  # nothing of the union removed: add the new rows only
            else:
                self.publish()
        return problems

    def prepare_config(self, new: Config, unreachable: type[Exception], *,
                       keep_unchanged: bool = False) -> tuple[dict[str, TenantPolicy], list[str]]:
        """Blocking: build every tenant's policy under a new config (for reload): (policies, problems that reject
        it); tenants whose check raises `unreachable` (their backend is down) are left to be prepared later.
        `keep_unchanged` (a registry change): a prepared tenant whose every input is the same under `new` keeps its
        policy instead of being discovered and preflighted again (one user added among thousands of tenants)."""
        policies: dict[str, TenantPolicy] = {}
        problems: list[str] = []
        for name in new.tenants:
            kept = self.policies.get(name) if keep_unchanged else None
            if kept is not None and self.inputs(self.config, name) == self.inputs(new, name):
                policies[name] = kept
                continue
            try:
                policy, found = self.build(new, name)
            except unreachable as exc:
                log.warning("tenant_pending", tenant=name, reason=str(exc))
                continue
            problems += found
            if policy is not None:
                policies[name] = policy
        return policies, problems

    def install(self, new: Config, policies: dict[str, TenantPolicy],
                sessions: Iterable[SessionRef]) -> list[Revocation]:
        """Switch to `new` and its policies; the sessions the switch revokes (the caller tells them)."""
        old = self.config
        self.config = new
        self.policies = policies
        self.publish()
        return revocations(old, new, sessions)

    def publish(self) -> None:
        """Give the text judge of read-only routing (proxy/replicas.py) every prepared database's routines run
        without a call (`TenantPolicy.reached`)."""
        from proxy import replicas

        with self._publishing:
            self._published = union(p.reached for p in list(self.policies.values()))
            replicas.set_reached(self._published)

    def _publish_more(self, reached: Reached) -> None:
        """publish() when one tenant's snapshot is added and none removed: the union grows by its new rows only (a
        full union at each prepare was quadratic in the tenants at start: review 19b F10)."""
        from proxy import replicas

        with self._publishing:
            if reached.rows <= self._published.rows:
                return
            self._published = union((self._published, reached))
            replicas.set_reached(self._published)
