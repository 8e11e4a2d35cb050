"""Decisions and tenant policies as plain data."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

Strategy = Literal["shared", "schema", "database"]

# Effects tell the driver what to do after forwarding an allowed statement.
REAPPLY_CONTEXT = "reapply_context"  # the statement resets session state (DISCARD ALL / RESET ALL)

# Schemas every tenant may reference by name in the schema strategy (besides its own and the shared ones).
SYSTEM_SCHEMAS: frozenset[str] = frozenset({"pg_catalog", "information_schema", "pg_temp"})

RESERVED_NAMESPACE = "pgtenant."


@dataclass(frozen=True, slots=True)
class Allow:
    """Forward the client's original bytes untouched."""

    effects: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Forward `sql` instead of the client's text; `rules` names the rewrites applied."""

    sql: str
    rules: tuple[str, ...]
    effects: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Deny:
    """Answer the client with an ErrorResponse; the session stays usable."""

    sqlstate: str
    message: str
    hint: str
    rule: str


Decision = Allow | Rewrite | Deny


_POLICY_IDS: dict[tuple[Any, ...], int] = {}  # TenantPolicy.key -> cache_id (a few entries per configuration)
_NEXT_POLICY_ID = itertools.count()


@dataclass(frozen=True, slots=True, eq=False)
class TenantPolicy:
    """Everything the engine needs to decide for one tenant role; hashable and compared by value."""

    tenant: str
    strategy: Strategy
    tenant_value: str | None = None
    scoped_tables: Mapping[tuple[str, str], str] = field(default_factory=dict)
    search_path: tuple[str, ...] = ("public",)
    tenant_schema: str | None = None
    shared_schemas: tuple[str, ...] = ()
    tenant_setting: str = "pgtenant.tenant_id"
    allow_writes: bool = False
    allow_ddl_temp: bool = True
    extra_allowed_functions: frozenset[str] = frozenset()
    denied_functions: frozenset[str] = frozenset()
    # Add OFFSET 0 to every injected filter so PostgreSQL cannot push the client's predicates below it:
    # leaky expressions (casts, division) then only ever see the tenant's rows. Needed when RLS is not
    # enforced in the database (RLS quals are security barriers already); costs index use for outer quals.
    fence: bool = False
    # Scoped tables with enabled, FORCEd row-level security and a policy (the preflight's finding): their RLS
    # quals run before any qual of a query, so a SELECT that names one's system columns (ctid, xmin…) may
    # carry the tenant predicate in its WHERE clause instead of a wrapper (which has no system columns).
    rls_tables: frozenset[tuple[str, str]] = frozenset()
    # Schemas of other tenants of the same database (schema-strategy tenants'): hidden from every catalog, name
    # conversion and qualified reference of a shared- or database-strategy tenant (a schema tenant sees an
    # allow-list instead: its own, the shared and the system schemas).
    hidden_schemas: frozenset[str] = frozenset()
    # Column names of the catalogs the proxy replaces column values in (pg_class statistics, pg_stat*/pg_statio*
    # counters), in the catalog's own order, read from the server when the tenant is prepared: they differ between
    # PostgreSQL majors. A catalog whose list is missing cannot be scrubbed and is denied where it would need it.
    catalog_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    key: tuple[Any, ...] = field(init=False, repr=False)
    _hash: int = field(init=False, repr=False)
    # The same number for policies that compare equal: caches key by it (hashing an int is C; this class's
    # __hash__ and __eq__ are Python functions, several calls per cached statement).
    cache_id: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.strategy not in ("shared", "schema", "database"):
            raise ValueError(f"unknown strategy {self.strategy!r}")
        scoped = MappingProxyType({(str(s), str(t)): str(c) for (s, t), c in dict(self.scoped_tables).items()})
        search_path = tuple(self.search_path)
        shared_schemas = tuple(self.shared_schemas)
        if self.strategy == "shared":
            if self.tenant_value is None:
                raise ValueError("shared strategy needs tenant_value")
            if not scoped:
                raise ValueError("shared strategy needs at least one scoped table")
        if self.strategy == "schema":
            if not self.tenant_schema:
                raise ValueError("schema strategy needs tenant_schema")
            if search_path == ("public",):
                search_path = (self.tenant_schema, *shared_schemas)
            allowed = {self.tenant_schema, *shared_schemas, *SYSTEM_SCHEMAS}
            outside = [s for s in search_path if s not in allowed]
            if outside:
                raise ValueError(f"search_path entries outside the tenant's schemas: {outside}")
        if not self.tenant_setting or "." not in self.tenant_setting:
            raise ValueError("tenant_setting must be a qualified custom setting name such as pgtenant.tenant_id")
        object.__setattr__(self, "scoped_tables", scoped)
        object.__setattr__(self, "search_path", search_path)
        object.__setattr__(self, "shared_schemas", shared_schemas)
        object.__setattr__(self, "extra_allowed_functions", frozenset(self.extra_allowed_functions))
        object.__setattr__(self, "denied_functions", frozenset(self.denied_functions))
        object.__setattr__(self, "rls_tables", frozenset((str(s), str(t)) for s, t in self.rls_tables))
        hidden = frozenset(self.hidden_schemas) - self.allowed_schemas - set(search_path)
        object.__setattr__(self, "hidden_schemas", hidden)
        columns = {str(r): tuple(str(c) for c in cols) for r, cols in dict(self.catalog_columns).items()}
        object.__setattr__(self, "catalog_columns", MappingProxyType(columns))
        key = (
            self.tenant,
            self.strategy,
            self.tenant_value,
            tuple(sorted(scoped.items())),
            search_path,
            self.tenant_schema,
            shared_schemas,
            self.tenant_setting.lower(),
            self.allow_writes,
            self.allow_ddl_temp,
            tuple(sorted(self.extra_allowed_functions)),
            tuple(sorted(self.denied_functions)),
            self.fence,
            tuple(sorted(self.rls_tables)),
            tuple(sorted(hidden)),
            tuple(sorted(columns.items())),
        )
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "_hash", hash(key))
        object.__setattr__(self, "cache_id", _POLICY_IDS.setdefault(key, next(_NEXT_POLICY_ID)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, TenantPolicy):
            return NotImplemented
        return self._hash == other._hash and self.key == other.key

    @property
    def allowed_schemas(self) -> frozenset[str]:
        """Schemas a schema-strategy tenant may name (its own, the shared ones, the system ones)."""
        return frozenset({self.tenant_schema or "", *self.shared_schemas, *SYSTEM_SCHEMAS} - {""})

    def is_reserved_setting(self, name: str) -> bool:
        """True for the RLS tenant setting and everything in the proxy's reserved namespace."""
        low = name.lower()
        return low == self.tenant_setting.lower() or low.startswith(RESERVED_NAMESPACE)
