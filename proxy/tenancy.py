"""Builds each tenant's policy (what the engine decides with) and backend context from config; pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from proxy.config import Config, TenantConfig
from proxy.policy.model import TenantPolicy
from proxy.policy.reached import NOTHING, Reached
from proxy.policy.sqltext import quote_ident

ScopedTables = Mapping[tuple[str, str], str]  # (schema, table) -> tenant column

# Backend settings that decide how SQL text is tokenized: sent at startup, verified while relaying.
PINNED_PARSING: Mapping[str, str] = {"standard_conforming_strings": "on"}
SAFE_CLIENT_ENCODINGS = frozenset({"UTF8", "SQL_ASCII"})


def parsing_violation(name: str, value: str) -> str | None:
    """Why a reported backend setting breaks the engine's reading of SQL text, or None."""
    if name == "standard_conforming_strings" and value != "on":
        return "standard_conforming_strings is off on the backend"
    if name == "client_encoding" and value.upper() not in SAFE_CLIENT_ENCODINGS:
        return f"client_encoding is {value} on the backend"
    return None


def search_path(tenant: TenantConfig) -> tuple[str, ...]:
    """The search_path pinned for the tenant's sessions."""
    if tenant.strategy == "schema":
        assert tenant.schema is not None
        return (tenant.schema, *tenant.shared_schemas)
    if tenant.strategy == "shared":
        return tenant.tenant_schemas
    return ("public",)


def backend_context(tenant: TenantConfig) -> dict[str, str]:
    """Startup parameters that pin the tenant context on the backend.

    Sent in the startup packet, they become the session's reset values: `RESET ALL` and
    `DISCARD ALL` restore them instead of clearing them.
    """
    # The policy engine reads SQL text as UTF-8 with standard-conforming strings; the backend must read it the
    # same way, whatever the server, database or role defaults say (a mismatch would let SQL hide in literals).
    params = dict(PINNED_PARSING)
    if tenant.strategy == "database":
        return params  # the database itself is the boundary; the tenant's search_path is its own business
    params["search_path"] = ", ".join(quote_ident(s) for s in search_path(tenant))
    if tenant.strategy == "shared":
        assert tenant.tenant_id is not None
        params[tenant.tenant_setting] = tenant.tenant_id
    return params


def explicit_tables(tenant: TenantConfig) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for name in tenant.tables:
        schema, table = name.split(".", 1)
        out[(schema, table)] = tenant.tenant_column
    return out


def other_tenants_schemas(config: Config, tenant: TenantConfig) -> frozenset[str]:
    """The schemas of the other tenants of `tenant`'s database (schema-strategy tenants on the same backend and
    database): hidden from `tenant` in every catalog and name conversion."""
    mine = {tenant.schema, *tenant.shared_schemas, *tenant.tenant_schemas}
    return frozenset(
        other.schema
        for other in config.tenants.values()
        if other.name != tenant.name and other.strategy == "schema" and other.schema is not None
        and other.database == tenant.database and other.backend == tenant.backend and other.schema not in mine
    )


def shares_database(config: Config, tenant: TenantConfig) -> bool:
    """Whether another tenant (any strategy) is configured on `tenant`'s backend and database: a database-strategy
    tenant's database is then not its own (`TenantPolicy.database_shared`, issue 14)."""
    return any(
        other.name != tenant.name and other.database == tenant.database and other.backend == tenant.backend
        for other in config.tenants.values()
    )


def database_neighbours(config: Config, tenant: TenantConfig) -> list[TenantConfig]:
    """The other tenants of a database-strategy tenant's backend and database, by name (none for the other
    strategies): the tenants whose rows and schemas the preflight checks it cannot read (issue 14)."""
    if tenant.strategy != "database":
        return []
    return sorted((other for other in config.tenants.values() if other.name != tenant.name
                   and other.database == tenant.database and other.backend == tenant.backend), key=lambda t: t.name)


def neighbour_layout(config: Config, tenant: TenantConfig) -> frozenset[tuple[object, ...]]:
    """What the preflight of a database tenant reads of its neighbours' config (`database_neighbours`): their
    strategies and where their rows and schemas are, not their tenant ids (a registry change that adds a shared
    tenant like the others does not prepare the database tenant again)."""
    return frozenset((o.strategy, o.schema, o.tenant_column, tuple(o.tenant_schemas), tuple(o.tables))
                     for o in database_neighbours(config, tenant))


def tenant_policy(
    tenant: TenantConfig, scoped: ScopedTables | None = None, *, fence: bool = False,
    rls_tables: Iterable[tuple[str, str]] = (), hidden_schemas: Iterable[str] = (),
    catalog_columns: Mapping[str, tuple[str, ...]] | None = None, known_schemas: Iterable[str] = (),
    max_advisory_locks: int | None = None, setting_caps: Mapping[str, str] | None = None,
    database_shared: bool = False, others_tables: Iterable[tuple[str, str]] = (),
    others_parents: Iterable[tuple[str, str]] = (),
    others_sequences: Iterable[tuple[str, str]] = (), others_shadows: Iterable[tuple[str, str]] = (),
    reached: Reached = NOTHING,
) -> TenantPolicy:
    """The engine's view of one tenant. `fence` makes every injected filter an optimization barrier:
    needed when the database's RLS does not back the rewrite (the planner could otherwise evaluate a
    client predicate that raises an error on another tenant's row before the tenant filter).
    `rls_tables`: the scoped tables the preflight found with forced RLS (a SELECT naming their system
    columns may get the tenant predicate in its WHERE clause). `hidden_schemas`: other tenants' schemas in
    the same database (`other_tenants_schemas`). `catalog_columns`: the server's column lists of the catalogs
    whose statistics the policy replaces (`dbcheck.catalog_columns`). `known_schemas`: the database's schemas
    (`dbcheck.schema_names`), the allow-list of catalog filters where some schema is hidden.
    `max_advisory_locks`: config `limits.max_advisory_locks` (database strategy, policy/advisory.py).
    `setting_caps`: config `limits.max_work_mem` & co. (`LimitsConfig.setting_caps`, policy/resources.py).
    `database_shared`: other tenants share the database (`shares_database`; database strategy only).
    `others_tables`: the shared tenants' scoped tables in that database (`PreflightReport.neighbour_tables`), and
    `others_parents` those that are inheritance parents without the tenant column (`neighbour_parents`);
    `others_sequences` their sequences (`neighbour_sequences`); `others_shadows` the database's other relations of
    those names (`neighbour_shadows`). `reached`: the database's routines run without a call
    (`PreflightReport.reached`, policy/reached.py)."""
    common = {"hidden_schemas": frozenset(hidden_schemas), "catalog_columns": dict(catalog_columns or {}),
              "known_schemas": frozenset(known_schemas), "setting_caps": dict(setting_caps or {}),
              "reached": reached.without(frozenset(hidden_schemas)),
              "extra_allowed_functions": frozenset(f.lower() for f in tenant.extra_allowed_functions)}
    if tenant.strategy == "shared":
        tables = explicit_tables(tenant) if tenant.tables else dict(scoped or {})
        return TenantPolicy(
            fence=fence,
            rls_tables=frozenset(rls_tables),
            foreign_schemas=frozenset(hidden_schemas),  # a client's search_path never gets them
            tenant=tenant.name,
            strategy="shared",
            tenant_value=tenant.tenant_id,
            scoped_tables=tables,
            search_path=search_path(tenant),
            tenant_setting=tenant.tenant_setting,
            allow_writes=tenant.allow_writes,
            **common,
        )
    if tenant.strategy == "schema":
        return TenantPolicy(
            tenant=tenant.name,
            strategy="schema",
            search_path=search_path(tenant),
            tenant_schema=tenant.schema,
            shared_schemas=tenant.shared_schemas,
            tenant_setting=tenant.tenant_setting,
            allow_writes=tenant.allow_writes,
            **common,
        )
    if max_advisory_locks is not None:
        common["max_advisory_locks"] = max_advisory_locks
    return TenantPolicy(
        tenant=tenant.name,
        strategy="database",
        database_shared=database_shared,
        others_tables=frozenset(others_tables) if database_shared else frozenset(),
        others_parents=frozenset(others_parents) & frozenset(others_tables) if database_shared else frozenset(),
        others_sequences=frozenset(others_sequences) if database_shared else frozenset(),
        others_shadows=frozenset(others_shadows) if database_shared else frozenset(),
        search_path=search_path(tenant),
        tenant_setting=tenant.tenant_setting,
        allow_writes=tenant.allow_writes,
        **common,
    )
