"""The one documented list of catalog relations tenants may not read, and the row filters the proxy injects."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from proxy.policy.model import TenantPolicy
from proxy.policy.rules import fail
from proxy.policy.sqltext import quote_ident, quote_literal
from proxy.policy.tree import Node

# Relations that show other sessions' query text, locks, prepared transactions, connection details, server
# files or cluster-wide object names. Matched by relation name in any schema (pg_stat_statements usually lives
# in `public`). Everything else in pg_catalog / information_schema stays readable so BI introspection works;
# what that still reveals is documented in the report (row estimates in pg_class.reltuples and pg_stat_*_tables,
# names of other tenants' tables in pg_class for the schema strategy, role names in pg_roles).
DENIED_RELATIONS: frozenset[str] = frozenset(
    {
        "pg_stat_activity",
        "pg_stat_statements",
        "pg_stat_statements_info",
        "pg_prepared_xacts",
        "pg_locks",
        "pg_stat_replication",
        "pg_stat_replication_slots",
        "pg_replication_slots",
        "pg_replication_origin_status",
        "pg_stat_wal_receiver",
        "pg_stat_subscription",
        "pg_stat_subscription_stats",
        "pg_stat_ssl",
        "pg_stat_gssapi",
        "pg_stat_database",
        "pg_stat_database_conflicts",
        "pg_stat_progress_analyze",
        "pg_stat_progress_basebackup",
        "pg_stat_progress_cluster",
        "pg_stat_progress_copy",
        "pg_stat_progress_create_index",
        "pg_stat_progress_vacuum",
        "pg_backend_memory_contexts",
        "pg_shmem_allocations",
        "pg_file_settings",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_authid",
        "pg_shadow",
        "pg_user_mappings",
        "pg_largeobject",
        "pg_largeobject_metadata",
        "pg_config",
        # shared catalogs that list objects of every database (their OIDs name other databases)
        "pg_shdepend",
        "pg_shdescription",
        "pg_shseclabel",
        "pg_db_role_setting",
    }
)

# Shared and schema strategies: planner statistics hold real column values (most common values, histogram
# bounds) of rows the tenant may not read -- other tenants' rows of a shared table, or any table some other
# grant lets the role see (the attack suite found a PUBLIC-readable table's values through pg_stats in the
# schema strategy). Only the database strategy, whose database is the tenant's own, may read them.
SHARED_DENIED_RELATIONS: frozenset[str] = frozenset(
    {"pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data"}
)

# Relations a tenant may never write, whatever its role (writing pg_settings is SET in disguise).
CATALOG_SCHEMAS: frozenset[str] = frozenset({"pg_catalog", "information_schema", "pg_toast"})


@dataclass(frozen=True, slots=True)
class Filter:
    """A row filter the proxy injects for one relation; `predicate(ref)` is SQL qualified by `ref`."""

    kind: str  # "tenant" (shared-schema scoped table), "catalog", or "temp" (name it pg_temp.<name>: no filter)
    relation: str  # display name, e.g. sales.orders
    column: str  # the tenant column for "tenant" filters, the filtered column for "catalog" filters
    template: str  # predicate with {ref} standing for the quoted reference name
    table: tuple[str, str] = ("", "")  # (schema, table) of a "tenant" filter's scoped table

    def predicate(self, ref: str) -> str:
        """The predicate SQL for a reference named `ref`."""
        return self.template.replace("{ref}", quote_ident(ref))


def needs_fence(policy: TenantPolicy, flt: Filter) -> bool:
    """True when `flt`'s wrapper must be an optimization fence (`OFFSET 0`): the tenant has `fence` set (RLS
    does not back every scoped relation) and this relation is not one under forced RLS (its RLS quals would
    already run before any qual of the client's)."""
    return policy.fence and (flt.kind != "tenant" or flt.table not in policy.rls_tables)


def rv_names(rv: Node) -> tuple[str | None, str | None, str]:
    """(catalog, schema, relation) of a RangeVar body."""
    return rv.get("catalogname"), rv.get("schemaname"), rv.get("relname", "")


@lru_cache(maxsize=256)
def _scoped_by_name(policy: TenantPolicy) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for (schema, table), column in policy.scoped_tables.items():
        out.setdefault(table, {})[schema] = column
    return out


@lru_cache(maxsize=4096)
def _tenant_filter(policy: TenantPolicy, schema: str, table: str, column: str) -> Filter:
    template = "{ref}." + quote_ident(column) + " = " + quote_literal(policy.tenant_value or "")
    return Filter("tenant", f"{schema}.{table}", column, template, (schema, table))


# Schema strategy: catalogs whose rows belong to a schema, by the column holding the schema's OID. Their rows
# in other tenants' schemas are filtered out, so neither the rows nor `<column>::regnamespace` show them.
NAMESPACE_OID_COLUMNS: dict[str, str] = {
    "pg_class": "relnamespace",
    "pg_type": "typnamespace",
    "pg_proc": "pronamespace",
    "pg_constraint": "connamespace",
    "pg_operator": "oprnamespace",
    "pg_collation": "collnamespace",
    "pg_conversion": "connamespace",
    "pg_opclass": "opcnamespace",
    "pg_opfamily": "opfnamespace",
    "pg_extension": "extnamespace",
    "pg_ts_config": "cfgnamespace",
    "pg_ts_dict": "dictnamespace",
    "pg_ts_parser": "prsnamespace",
    "pg_ts_template": "tmplnamespace",
}
# Schema strategy: system views with a `schemaname` column (names, not OIDs).
SCHEMANAME_VIEWS: frozenset[str] = frozenset(
    {
        "pg_tables", "pg_indexes", "pg_views", "pg_matviews", "pg_sequences", "pg_policies", "pg_rules",
        "pg_stat_all_tables", "pg_stat_user_tables", "pg_stat_sys_tables",
        "pg_stat_xact_all_tables", "pg_stat_xact_user_tables", "pg_stat_xact_sys_tables",
        "pg_statio_all_tables", "pg_statio_user_tables", "pg_statio_sys_tables",
        "pg_stat_all_indexes", "pg_stat_user_indexes", "pg_stat_sys_indexes",
        "pg_statio_all_indexes", "pg_statio_user_indexes", "pg_statio_sys_indexes",
        "pg_statio_all_sequences", "pg_statio_user_sequences", "pg_statio_sys_sequences",
        "pg_stat_user_functions", "pg_stat_xact_user_functions",
    }
)


@lru_cache(maxsize=256)
def _catalog_filters(policy: TenantPolicy) -> dict[str, Filter]:
    out = {
        "pg_database": Filter(
            "catalog", "pg_catalog.pg_database", "datname", '{ref}."datname" = pg_catalog.current_database()'
        )
    }
    if policy.strategy == "schema":
        visible = [policy.tenant_schema or "", *policy.shared_schemas, "pg_catalog", "information_schema"]
        listed = ", ".join(quote_literal(s) for s in visible)
        out["pg_namespace"] = Filter(
            "catalog",
            "pg_catalog.pg_namespace",
            "nspname",
            '({ref}."nspname" IN (' + listed + ') OR {ref}."oid" = pg_catalog.pg_my_temp_schema())',
        )
        oids = ", ".join(f"pg_catalog.to_regnamespace({quote_literal(s)})::pg_catalog.oid" for s in visible)
        for relation, column in NAMESPACE_OID_COLUMNS.items():
            out[relation] = Filter(
                "catalog", f"pg_catalog.{relation}", column,
                f'({{ref}}."{column}" IN ({oids}) OR {{ref}}."{column}" = pg_catalog.pg_my_temp_schema())',
            )
        own_temp = "pg_catalog.pg_my_temp_schema()::pg_catalog.regnamespace::pg_catalog.text"
        for view in SCHEMANAME_VIEWS:
            out[view] = Filter(
                "catalog", f"pg_catalog.{view}", "schemaname",
                '({ref}."schemaname" IN (' + listed + ") OR {ref}.\"schemaname\" = " + own_temp + ")",
            )
    return out


@lru_cache(maxsize=4096)
def temp_marker(name: str) -> Filter:
    """The "filter" of an unqualified name that means one of the session's temporary relations where a filtered
    relation has the same name: the reference is qualified with pg_temp, so it can only ever mean that one."""
    return Filter("temp", f"pg_temp.{name}", "", "")


def relation_filter(policy: TenantPolicy, rv: Node) -> Filter | None:
    """The row filter for a RangeVar, or None. Unqualified names match scoped tables in any schema, except names
    the session has as temporary relations (found first): those get the `temp_marker`. A scoped table is picked
    along the session's search_path; when tables of that name are scoped in several schemas, the filter's
    `qualify` says to name the one picked explicitly."""
    _, schema, table = rv_names(rv)
    if schema is None and policy.temp_first and (table in policy.temp_tables or table in policy.temp_views):
        if (policy.strategy == "shared" and table in _scoped_by_name(policy.base)) or table in _catalog_filters(
            policy.base
        ):
            return temp_marker(table)
        return None
    if policy.strategy == "shared":
        by_schema = _scoped_by_name(policy.base).get(table)
        if by_schema:
            if schema is not None:
                column = by_schema.get(schema)
                if column is not None:
                    return _tenant_filter(policy.base, schema, table, column)
            else:
                for candidate in policy.path:
                    if candidate in by_schema:
                        return _tenant_filter(policy.base, candidate, table, by_schema[candidate])
                columns = set(by_schema.values())
                if len(columns) != 1:
                    raise fail(
                        "rewrite_unsupported",
                        f'unqualified table name "{table}" matches tenant-scoped tables with different '
                        "tenant columns; qualify it with its schema",
                    )
                first = sorted(by_schema)[0]
                return _tenant_filter(policy.base, first, table, by_schema[first])
    if schema is None or schema == "pg_catalog":
        return _catalog_filters(policy.base).get(table)
    return None


def ambiguous_scoped(policy: TenantPolicy, name: str) -> bool:
    """True when tables called `name` are scoped in more than one schema (an unqualified reference's filter then
    depends on the search_path: the wrapper names the table it was built for)."""
    return len(_scoped_by_name(policy.base).get(name, ())) > 1


def is_filtered_name(policy: TenantPolicy, name: str) -> bool:
    """True if `name` is a system catalog the proxy filters: a temporary relation may not take it (a tenant-scoped
    table's name it may: the session's own temporary relation then comes first, as in PostgreSQL)."""
    return name in _catalog_filters(policy.base)


@lru_cache(maxsize=1024)
def filtered_names(policy: TenantPolicy) -> tuple[str, ...]:
    """Lower-cased names of every relation this policy filters, and of the session's temporary relations."""
    names = set(_catalog_filters(policy.base))
    if policy.strategy == "shared":
        names.update(_scoped_by_name(policy.base))
    names.update(policy.temp_tables)
    names.update(policy.temp_views)
    return tuple(sorted(n.lower() for n in names))


def may_name_filtered(policy: TenantPolicy, sql: str) -> bool:
    """False only if no identifier in `sql` can name a filtered relation: a relation name comes from the
    text itself (lower-cased, or quoted verbatim) unless written with Unicode escapes (U&"...")."""
    low = sql.lower()
    return "u&" in low or any(name in low for name in filtered_names(policy))


def is_denied_relation(policy: TenantPolicy, rv: Node) -> bool:
    """True for relations in DENIED_RELATIONS (any schema except the session's own pg_temp)."""
    name = rv.get("relname", "")
    if rv.get("schemaname") == "pg_temp":
        return False
    return name in DENIED_RELATIONS or (policy.strategy != "database" and name in SHARED_DENIED_RELATIONS)
