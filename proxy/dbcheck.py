"""Asks the backend databases what the proxy needs at startup: tenant-scoped tables, and isolation preflight."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

from proxy.config import BackendConfig, Config, ReplicaConfig, TenantConfig
from proxy.policy.builtins import BUILTIN_FUNCTIONS
from proxy.policy.castsource import ANY, PARAM, SEP
from proxy.policy.catalog import COLUMN_LISTED
from proxy.policy.reached import CAST_SOURCE, JSON_OUTPUT, Reached
from proxy.policy.tree import expr_node, names_of, string_const
from proxy.tenancy import ScopedTables, database_neighbours, explicit_tables

_DISCOVER = """
SELECT n.nspname, c.relname
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attname = %s AND n.nspname = ANY(%s)
 ORDER BY 1, 2
"""

_TABLE_FACTS = """
SELECT n.nspname, c.relname, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity,
       pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER') AS is_owner,
       EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid) AS has_policy, c.oid
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relname = %s
"""

# The permissive policies that apply to the backend role (PUBLIC, or a role whose privileges it has, as
# PostgreSQL decides it): policies OR together, so each of them alone decides which rows the role can reach.
_PERMISSIVE_POLICIES = """
SELECT p.polname, p.polcmd::text, pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
  FROM pg_catalog.pg_policy p
 WHERE p.polrelid = %s AND p.polpermissive
   AND (0 = ANY (p.polroles) OR EXISTS (SELECT 1 FROM unnest(p.polroles) AS r(oid)
                                          WHERE pg_catalog.pg_has_role(current_user, r.oid, 'USAGE')))
 ORDER BY 1
"""


def policy_pins_tenant(expr: str, column: str, setting: str) -> str:
    """How an RLS policy expression relates to the tenant: "exact" when a top-level AND term is
    `<column> = current_setting('<setting>'…)` (casts allowed), "open" when it cannot depend on the session at
    all (no function call, no subquery: `true`, `is_public`), else "unproven" (e.g. a helper function)."""
    try:
        node = expr_node(expr)
    except Exception:  # not an expression pglast parses: nothing is proven
        return "unproven"
    terms = node["BoolExpr"]["args"] if node.get("BoolExpr", {}).get("boolop") == "AND_EXPR" else [node]
    for term in terms:
        op = term.get("A_Expr")
        if op is None or op.get("kind") != "AEXPR_OP" or names_of(op.get("name")) != ("=",):
            continue
        sides = (_uncast(op.get("lexpr")), _uncast(op.get("rexpr")))
        for a, b in (sides, sides[::-1]):
            if names_of(a.get("ColumnRef", {}).get("fields"))[-1:] != (column,):
                continue
            call = b.get("FuncCall", {})
            args = call.get("args") or [{}]
            if names_of(call.get("funcname"))[-1:] == ("current_setting",) and (
                (string_const(_uncast(args[0])) or "").lower() == setting.lower()
            ):
                return "exact"
    return "unproven" if _calls_anything(node) else "open"


def _uncast(node: dict | None) -> dict:
    while node and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return node or {}


def _calls_anything(node: object) -> bool:
    if isinstance(node, dict):
        if "FuncCall" in node or "SubLink" in node:
            return True
        return any(_calls_anything(v) for v in node.values())
    if isinstance(node, list):
        return any(_calls_anything(v) for v in node)
    return False


# The column names, in order, of the catalogs whose values the proxy replaces (pg_class statistics and the
# pg_stat*/pg_statio* counters of tenant-scoped tables, ACLs, role-name arrays): they differ between majors.
_CATALOG_COLUMNS = """
SELECT c.relname, pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
 WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relname = ANY(%s)
   AND a.attnum > 0 AND NOT a.attisdropped
 GROUP BY c.relname
"""


def catalog_columns(conn: psycopg.Connection) -> dict[str, tuple[str, ...]]:
    """The column lists of the catalogs the policy scrubs, as this server has them."""
    rows = conn.execute(_CATALOG_COLUMNS, (sorted(COLUMN_LISTED),)).fetchall()
    return {name: tuple(columns) for name, columns in rows}


_SCHEMA_NAMES = r"""
SELECT nspname FROM pg_catalog.pg_namespace
 WHERE nspname !~ '^pg_(toast_)?temp_[0-9]+$'
"""


def schema_names(conn: psycopg.Connection) -> frozenset[str]:
    """The database's schemas, without the sessions' temporary ones (`TenantPolicy.known_schemas`)."""
    return frozenset(name for (name,) in conn.execute(_SCHEMA_NAMES).fetchall())


# The routines of a database PostgreSQL may run without a call naming them (policy/reached.py): functions outside
# pg_catalog and information_schema (or made there after initdb, oid 16384 or more: red team 22d R4, as
# definers._system) that no extension owns (pg_depend 'e': extension code such as citext or PostGIS
# operators is not counted) and that PostgreSQL did not make for a range type (its and its multirange's constructors:
# built-in C code, `range_constructor2` ..., internally dependent on the type), as (kind, key, "schema.function")
# rows. A function of one argument reached as `t.f` is left out when its argument is a relation's row type and that
# relation has a column of its name (the column wins); one whose argument is neither a row (composite), a
# pseudo-type nor a domain is reached only as `(x).f` ("field").
# A view counts when its query (or a view it reads, at any depth) calls such a function, directly, by an operator or
# by a cast, reads a value as a type a domain checks (its functions), or calls a JSON-writing built-in (every
# function of a cast to json); a type ("domain") when its values are checked by one: a domain whose CHECK or DEFAULT
# calls one, and the types over it (domains, arrays, ranges, composite types with such a field, at any depth).
_REACHED = r"""
WITH RECURSIVE fn AS (
  SELECT p.oid, n.nspname || '.' || p.proname AS qualified, p.proname, p.prokind, p.pronargs, p.pronargdefaults,
         p.provariadic, p.proargtypes
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
   WHERE (n.nspname NOT IN ('pg_catalog', 'information_schema') OR p.oid >= 16384)
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                        AND d.deptype = 'e')
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_type t ON t.oid = d.refobjid
                       JOIN pg_catalog.pg_language l ON l.oid = p.prolang
                      WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                        AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.deptype = 'i'
                        AND t.typtype IN ('r', 'm') AND l.lanname = 'internal')
), checked(typ, qualified) AS (  -- domains whose CHECK constraints or DEFAULT call one (directly, by operator, cast)
  SELECT COALESCE(con.contypid, t.oid), f.qualified
    FROM pg_catalog.pg_depend d
    LEFT JOIN pg_catalog.pg_constraint con ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
                                          AND con.oid = d.objid AND con.contypid <> 0
    LEFT JOIN pg_catalog.pg_type t ON d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND t.oid = d.objid
                                  AND t.typtype = 'd' AND d.refobjid NOT IN (t.typinput, t.typoutput, t.typreceive,
                                      t.typsend, t.typmodin, t.typmodout, t.typanalyze)
    LEFT JOIN pg_catalog.pg_operator o ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
                                      AND o.oid = d.refobjid
    LEFT JOIN pg_catalog.pg_cast c ON d.refclassid = 'pg_catalog.pg_cast'::pg_catalog.regclass AND c.oid = d.refobjid
    JOIN fn f ON f.oid = CASE WHEN d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.refobjid
                              ELSE COALESCE(o.oprcode::pg_catalog.oid, c.castfunc) END
   WHERE con.oid IS NOT NULL OR t.oid IS NOT NULL
), domains(typ, qualified) AS (  -- ... and every type whose values are checked by one: a domain over it, its array,
  SELECT typ, qualified FROM checked  -- a range of it, a composite type (a table's row type) with a field of it
  UNION
  SELECT t.oid, d.qualified
    FROM domains d JOIN pg_catalog.pg_type dt ON dt.oid = d.typ
    JOIN pg_catalog.pg_type t ON (t.typtype = 'd' AND t.typbasetype = d.typ) OR t.oid = dt.typarray
      OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = t.typrelid AND a.atttypid = d.typ
                                                       AND a.attnum > 0 AND NOT a.attisdropped)
      OR EXISTS (SELECT 1 FROM pg_catalog.pg_range r WHERE r.rngsubtype = d.typ
                                                   AND t.oid IN (r.rngtypid, r.rngmultitypid))
), direct AS (
  SELECT r.ev_class AS view, f.qualified
    FROM pg_catalog.pg_rewrite r
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
    LEFT JOIN pg_catalog.pg_operator o ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
                                      AND o.oid = d.refobjid
    LEFT JOIN pg_catalog.pg_cast c ON d.refclassid = 'pg_catalog.pg_cast'::pg_catalog.regclass AND c.oid = d.refobjid
    JOIN fn f ON f.oid = CASE WHEN d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.refobjid
                              ELSE COALESCE(o.oprcode::pg_catalog.oid, c.castfunc) END
  UNION  -- a value read as a type a domain checks (a cast to it, a constant of it): the domain's functions
  SELECT r.ev_class, dm.qualified
    FROM pg_catalog.pg_rewrite r
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
                               AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass
    JOIN domains dm ON dm.typ = d.refobjid
  UNION  -- a JSON-writing built-in (pinned: no pg_depend row; read in the stored query) runs every cast to json
  SELECT r.ev_class, f.qualified
    FROM pg_catalog.pg_rewrite r
    JOIN pg_catalog.pg_cast c ON c.casttarget = 'pg_catalog.json'::pg_catalog.regtype
    JOIN fn f ON f.oid = c.castfunc
   WHERE r.ev_action::text ~ ('\{JSONCONSTRUCTOREXPR |:(funcid|aggfnoid|winfnoid|opfuncid) ('
                              || (SELECT pg_catalog.string_agg(p.oid::text, '|') FROM pg_catalog.pg_proc p
                                   WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
                                     AND p.proname = ANY(%s::text[]))
                              || ')[^0-9]')
), casts(source, target, qualified) AS (  -- a cast from or to a domain is never used (PostgreSQL looks casts up
  SELECT c.castsource, c.casttarget, f.qualified  -- by the base types)
    FROM pg_catalog.pg_cast c JOIN fn f ON f.oid = c.castfunc
    JOIN pg_catalog.pg_type s ON s.oid = c.castsource JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
   WHERE s.typtype <> 'd' AND t.typtype <> 'd'
), over(base, typ, arr) AS (  -- a cast's type, the domains over it (at any depth), and their array types (arr) and
  SELECT x.typ, x.typ, false FROM (SELECT source FROM casts UNION SELECT target FROM casts) x(typ)  -- the domains
  UNION                                                                                               -- over those
  SELECT o.base, n.oid, o.arr OR n.typtype <> 'd'
    FROM over o JOIN pg_catalog.pg_type t ON t.oid = o.typ
    JOIN pg_catalog.pg_type n ON (n.typtype = 'd' AND n.typbasetype = o.typ) OR (NOT o.arr AND n.oid = t.typarray)
), typenames(base, arr, name) AS (  -- the names a type of `over` is written with: its name, `elem[]` for an array
  SELECT o.base, o.arr, t.typname::text FROM over o JOIN pg_catalog.pg_type t ON t.oid = o.typ
  UNION
  SELECT o.base, o.arr, e.typname || '[]' FROM over o JOIN pg_catalog.pg_type t ON t.oid = o.typ
    JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND e.typarray = t.oid
), views(view, qualified) AS (
  SELECT view, qualified FROM direct
  UNION
  SELECT r.ev_class, v.qualified
    FROM views v
    JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = v.view
                               AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
    JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND r.ev_class <> v.view
)
SELECT CASE WHEN t.typtype IN ('c', 'p', 'd') THEN 'attribute' ELSE 'field' END, f.proname, f.qualified
  FROM fn f JOIN pg_catalog.pg_type t ON t.oid = f.proargtypes[0]
 WHERE f.prokind = 'f' AND f.pronargs >= 1 AND (f.pronargs - f.pronargdefaults <= 1 OR f.provariadic <> 0)
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
                    WHERE c.reltype = f.proargtypes[0] AND a.attname = f.proname AND a.attnum > 0
                      AND NOT a.attisdropped)
UNION
SELECT 'operator', o.oprname, f.qualified FROM pg_catalog.pg_operator o JOIN fn f ON f.oid = o.oprcode::pg_catalog.oid
UNION
SELECT 'cast', k.name, c.qualified FROM casts c JOIN typenames k ON k.base = c.target
 WHERE EXISTS (SELECT 1 FROM typenames n WHERE n.base = c.source AND n.arr = k.arr)  -- (no array of an array)
UNION  -- (its key: [cast key, function], joined by `reached_routines`; '': a built-in source, NULL: any source)
SELECT 'castsource', pg_catalog.json_build_array(k.name, c.qualified)::text,
       CASE WHEN c.source <> c.target THEN n.name END
  FROM casts c JOIN typenames k ON k.base = c.target JOIN typenames n ON n.base = c.source AND n.arr = k.arr
UNION
SELECT 'castsource', pg_catalog.json_build_array(k.name, c.qualified)::text, ''
  FROM casts c JOIN typenames k ON k.base = c.target
 WHERE c.source < 16384::pg_catalog.oid AND c.source <> c.target
UNION
SELECT 'shadow', f.proname, f.qualified FROM fn f WHERE f.proname = ANY(%s::text[])
UNION
SELECT 'view', n.nspname || '.' || c.relname, v.qualified
  FROM views v JOIN pg_catalog.pg_class c ON c.oid = v.view JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'v'
UNION
SELECT 'castfrom', c.qualified, n.nspname
  FROM casts c JOIN pg_catalog.pg_type t ON t.oid = c.source JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
UNION
SELECT 'domain', n.nspname || '.' || t.typname, d.qualified
  FROM domains d JOIN pg_catalog.pg_type t ON t.oid = d.typ JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
"""


def reached_routines(conn: psycopg.Connection) -> Reached:
    """The database's routines run without a call (`_REACHED`; `TenantPolicy.reached`). Without JIT: the planner's
    estimate of the catalog joins is far above jit_above_cost, and compiling it took seconds (4.5 s of 4.6 on
    PostgreSQL 15) for a query that runs in milliseconds."""
    with conn.transaction():
        conn.execute("SET LOCAL jit = off")
        rows = conn.execute(_REACHED, (sorted(JSON_OUTPUT), sorted(BUILTIN_FUNCTIONS))).fetchall()
    return Reached(frozenset(_row(str(k), str(key), f) for k, key, f in rows))


def _row(kind: str, key: str, function: str | None) -> tuple[str, str, str]:
    """A snapshot row; a `CAST_SOURCE` one's key joined with castsource.SEP, its markers (a type's name is never
    empty)."""
    if kind != CAST_SOURCE:
        return kind, key, str(function)
    target, qualified = json.loads(key)
    return kind, f"{target}{SEP}{qualified}", ANY if function is None else PARAM if function == "" else function


class BackendCheckError(RuntimeError):
    """A backend could not be reached or asked."""


@dataclass
class PreflightReport:
    """What the startup checks found: errors refuse startup (unless overridden), warnings are logged."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    rls_complete: bool = True  # every scoped relation has enabled, forced RLS with a policy
    rls_tables: set[tuple[str, str]] = field(default_factory=set)  # the scoped tables that have it
    catalog_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # see catalog_columns()
    schemas: frozenset[str] = frozenset()  # see schema_names()
    # A database tenant's: the tenant-scoped tables of the shared tenants of its database (as discovered for them)
    neighbour_tables: set[tuple[str, str]] = field(default_factory=set)
    # ... of them, the inheritance parents without the tenant column (proxy/inherits.py: `ONLY parent` is let through)
    neighbour_parents: set[tuple[str, str]] = field(default_factory=set)
    # ... their sequences (`NEIGHBOUR_SEQUENCES`), and the database's other relations of those names (the tenant's own)
    neighbour_sequences: set[tuple[str, str]] = field(default_factory=set)
    neighbour_shadows: set[tuple[str, str]] = field(default_factory=set)
    reached: Reached = field(default_factory=Reached)  # see reached_routines()

    @property
    def ok(self) -> bool:
        return not self.errors


def connect_kwargs(backend: BackendConfig, database: str, timeout: float | None = None,
                   application_name: str = "pgtenant-startup") -> dict[str, object]:
    """libpq connection parameters of the proxy's own connection to `backend` (its credentials)."""
    kwargs: dict[str, object] = {
        "host": backend.host, "port": backend.port, "user": backend.user, "dbname": database,
        "sslmode": backend.sslmode, "connect_timeout": max(1, int(timeout or backend.connect_timeout)),
        "application_name": application_name,
    }
    if backend.password is not None:
        kwargs["password"] = backend.password
    if backend.sslrootcert is not None:
        kwargs["sslrootcert"] = str(backend.sslrootcert)
    return kwargs


def connect(backend: BackendConfig, database: str, timeout: float | None = None) -> psycopg.Connection:
    kwargs = connect_kwargs(backend, database, timeout)
    try:
        return psycopg.connect(autocommit=True, **kwargs)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise BackendCheckError(f"backend {backend.describe()} database {database!r}: {exc}".strip()) from exc


def discover(config: Config, tenant: TenantConfig, backend: BackendConfig | None = None) -> ScopedTables:
    """The tenant-scoped tables of a shared tenant: explicit, or every relation in its schemas with the column (on
    `backend`, a replica's settings; default: the tenant's own backend)."""
    if tenant.tables:
        return explicit_tables(tenant)
    with connect(backend or config.backend_for(tenant), tenant.database) as conn:
        rows = conn.execute(_DISCOVER, (tenant.tenant_column, list(tenant.tenant_schemas))).fetchall()
    return {(s, t): tenant.tenant_column for s, t in rows}


def preflight(config: Config, tenant: TenantConfig, scoped: ScopedTables,
              backend: BackendConfig | None = None) -> PreflightReport:
    """Check that PostgreSQL itself enforces this tenant's boundary (the second lock), on `backend` (a replica's
    settings; default: the tenant's own backend)."""
    report = PreflightReport()
    backend = backend or config.backend_for(tenant)
    with connect(backend, tenant.database) as conn:
        _check_role(conn, backend, report)
        _check_temp_file_limit(conn, config, backend, report)
        report.catalog_columns = catalog_columns(conn)
        report.schemas = schema_names(conn)
        report.reached = reached_routines(conn)
        if tenant.strategy == "shared":
            _check_shared(conn, tenant, scoped, report)
            _check_direct_readers(conn, config, tenant, scoped, report)
            _check_parents(conn, config, tenant, scoped, report, [tenant.tenant_column])
        elif tenant.strategy == "schema":
            _check_schema(conn, config, tenant, report)
            layouts, _ = _database_layout(config, tenant.database, tenant.backend)
            theirs = {(str(s), str(t)) for o in layouts for s, t in (explicit_tables(o) if o.tables else conn.execute(
                _DISCOVER, (o.tenant_column, list(o.tenant_schemas))).fetchall())}
            columns = [o.tenant_column for o in layouts]
            _check_parents(conn, config, tenant, dict.fromkeys(theirs, ""), report, columns)
            _check_shared_schemas(conn, config, tenant, theirs, columns, report)
        else:
            _check_database(conn, config, tenant, report)
            _check_database_schemas(conn, tenant, report)
            _check_database_neighbours(conn, config, tenant, report)
        _check_definers(conn, config, tenant, scoped, backend, report)
    report.checked.append(tenant.name)
    return report


def replica_preflight(config: Config, backend: str, replica: ReplicaConfig) -> list[str]:
    """Blocking: the start-up checks of every tenant of `backend` (role attributes, RLS, grants), run on its replica
    `replica` with the role each tenant's servers use there: the problems that keep the replica from being routed to
    (none: it may serve). A streaming replica is a copy of its primary and passes as it does; a reporting database
    fed by ETL is built apart and may not. One failing tenant is enough (its problems are returned)."""
    for tenant in sorted((t for t in config.tenants.values() if t.backend == backend), key=lambda t: t.name):
        target = config.replica_backend(config.backend_for(tenant), replica)
        try:
            scoped = discover(config, tenant, target) if tenant.strategy == "shared" else {}
            report = preflight(config, tenant, scoped, target)
        except (BackendCheckError, psycopg.Error) as exc:
            return [f"tenants.{tenant.name}: cannot be checked on replica {replica.name}: {exc}".strip()]
        if report.errors and config.preflight.enforce:
            return report.errors
    return []


# Roles the backend role (current_user) is a member of whose rights a switch to them adds (`_check_role`).
_SWITCHABLE = """
SELECT r.rolname, CASE WHEN r.rolsuper THEN 'is a superuser' WHEN r.rolbypassrls THEN 'has BYPASSRLS'
                       ELSE 'it does not inherit the rights of' END
  FROM pg_catalog.pg_roles r
 WHERE r.rolname <> current_user
   AND CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
            THEN pg_catalog.pg_has_role(current_user, r.oid, 'SET')  -- (16+: a grant WITH SET FALSE cannot switch)
            ELSE pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER') END
   AND (r.rolsuper OR r.rolbypassrls OR NOT pg_catalog.pg_has_role(current_user, r.oid, 'USAGE'))
 ORDER BY 1
"""


def _check_role(conn: psycopg.Connection, backend: BackendConfig, report: PreflightReport) -> None:
    row = conn.execute(
        "SELECT rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    if row[0]:
        report.errors.append(
            f"backends.{backend.name}: backend role {backend.user!r} is a superuser; it bypasses row-level "
            "security and every grant (run `pgtenant provision` or use a NOSUPERUSER role)"
        )
    if row[1]:
        report.errors.append(
            f"backends.{backend.name}: backend role {backend.user!r} has BYPASSRLS (ALTER ROLE … NOBYPASSRLS)"
        )
    # Red team 22v V3: a role the backend role is a member of but does not inherit the rights of (NOINHERIT, PG 16+
    # INHERIT FALSE), or one with SUPERUSER / BYPASSRLS (attributes are never inherited): code it runs may switch to
    # it (a function's `SET role` clause, checked against the session's role), with rights no check here counts.
    for name, why in conn.execute(_SWITCHABLE).fetchall():
        report.errors.append(
            f"backends.{backend.name}: backend role {backend.user!r} is a member of role {name!r}, which {why}: code "
            f"it runs may switch to that role (a function's SET role clause) and read with its rights "
            f"(REVOKE the membership that leads to it from {backend.user}, or grant it WITH SET FALSE on PostgreSQL "
            f"16+)"
        )


def _check_temp_file_limit(conn: psycopg.Connection, config: Config, backend: BackendConfig,
                           report: PreflightReport) -> None:
    """A warning when the backend role's sessions have no temp_file_limit (red team 7 F4): one tenant's statement
    could then fill the server's disk with temporary files, for every tenant."""
    row = conn.execute("SELECT pg_catalog.current_setting('temp_file_limit')").fetchone()
    if config.limits.temp_file_limit.strip() != "-1" and row is not None and row[0] == "-1":
        report.warnings.append(
            f"backends.{backend.name}: backend role {backend.user!r} has no temp_file_limit: one statement's temporary "
            f"files can fill the server's disk (run `pgtenant provision`: ALTER ROLE … SET temp_file_limit = "
            f"'{config.limits.temp_file_limit}', limits.temp_file_limit)")


def _check_shared(
    conn: psycopg.Connection, tenant: TenantConfig, tables: ScopedTables, report: PreflightReport
) -> None:
    where = f"tenants.{tenant.name}"
    if not tables:
        report.errors.append(
            f"{where}: no tenant-scoped tables found (column {tenant.tenant_column!r} in schemas "
            f"{', '.join(tenant.tenant_schemas)})"
        )
        return
    for schema, table in tables:
        row = conn.execute(_TABLE_FACTS, (schema, table)).fetchone()
        if row is None:
            report.errors.append(f"{where}.tables: {schema}.{table} does not exist")
            continue
        _, _, kind, rls, force, owner, has_policy, oid = row
        name = f"{schema}.{table}"
        pinned = True
        if kind not in ("v", "m", "f"):
            pinned = _check_policies(conn, tenant, oid, name, tables[(schema, table)], report)
        if kind in ("v", "m", "f") or not (rls and force and has_policy) or owner or not pinned:
            report.rls_complete = False
        else:
            report.rls_tables.add((schema, table))
        if kind in ("v", "m"):
            report.warnings.append(f"{where}: {name} is a view; only the proxy's rewrite filters it")
            continue
        if kind == "f":
            report.warnings.append(f"{where}: {name} is a foreign table; only the proxy's rewrite filters it")
            continue
        if not rls:
            report.errors.append(f"{where}: row-level security is not enabled on {name}")
        elif not has_policy:
            report.errors.append(f"{where}: {name} has row-level security but no policy")
        if owner:
            report.errors.append(
                f"{where}: the backend role owns {name} (or is a member of its owner); owners can alter or drop "
                "its policies"
            )
        elif rls and not force:
            report.warnings.append(f"{where}: row-level security on {name} is not FORCEd")


def _check_policies(
    conn: psycopg.Connection, tenant: TenantConfig, oid: int, name: str, column: str, report: PreflightReport
) -> bool:
    """Check each permissive policy the backend role is under; True when every one that governs reads provably
    keeps it to the tenant's rows (only then does the rewrite count on RLS: no fence, WHERE-form filters)."""
    where = f"tenants.{tenant.name}"
    commands = ("r", "*", "w", "d", "a") if tenant.allow_writes else ("r", "*")
    pinned = True
    for polname, cmd, qual, check in conn.execute(_PERMISSIVE_POLICIES, (oid,)).fetchall():
        if cmd not in commands:
            continue
        for expr in (qual, check if cmd in ("a", "w", "*") else None):
            if expr is None:
                continue
            verdict = policy_pins_tenant(expr, column, tenant.tenant_setting)
            if verdict == "open":
                report.errors.append(
                    f"{where}: policy {polname!r} on {name} admits rows whatever the tenant ({expr}); policies OR "
                    "together, so every tenant reaches them (drop it, or make it RESTRICTIVE or for other roles)"
                )
            elif verdict == "unproven":
                report.warnings.append(
                    f"{where}: policy {polname!r} on {name} is not of the form {column} = "
                    f"current_setting('{tenant.tenant_setting}') ({expr}); pgtenant does not count on it, so its "
                    f"filters on {name} are fenced"
                )
            if verdict != "exact" and cmd in ("r", "*"):
                pinned = False
    return pinned


def _check_direct_readers(
    conn: psycopg.Connection, config: Config, tenant: TenantConfig, tables: ScopedTables, report: PreflightReport
) -> None:
    """Roles other than pgtenant's backend roles that can read a scoped table without a tenant check they cannot
    forge. An error when it is pgtenant's own lock they can open (its policy applying to them, membership in its
    backend role); a warning when it is the database's own posture, which the proxy neither made nor uses
    (docs/security.md says why)."""
    from proxy import access

    where = f"tenants.{tenant.name}"
    own_role = config.backend_for(tenant).user
    proxy_roles = sorted({config.backend_for(t).user for t in config.tenants.values()})
    for member, role in access.proxy_role_members(conn, proxy_roles):
        if role == own_role:
            report.errors.append(
                f"{where}: role {member!r} is a member of the backend role {role!r}: it can act as that role with a "
                f"{tenant.tenant_setting} of its choosing and read every tenant's rows (REVOKE {role} FROM {member})"
            )
    for schema, table in tables:
        facts = access.read_table(conn, schema, table, proxy_roles)
        if facts is None or facts.kind not in ("r", "p"):
            continue
        for p in facts.policies:
            others = sorted(set(p.roles) - set(proxy_roles))
            if p.name == access.OWN_POLICY and others:
                report.errors.append(
                    f"{where}: policy {p.name!r} on {facts.name} applies to {', '.join(others)} besides pgtenant's "
                    f"backend roles: they can SET {tenant.tenant_setting} and read every tenant's rows (left by an "
                    "older `pgtenant provision`: run it again, it makes the policy TO pgtenant's roles only)"
                )
        for reader, a in access.direct_readers(facts):
            who = "PUBLIC (every role)" if reader.role == access.PUBLIC else f"role {reader.role!r}"
            report.warnings.append(
                f"{where}: {who} can read other tenants' rows of {facts.name} directly, without a tenant check it "
                f"cannot forge ({a.why}); not through pgtenant, but `pgtenant provision --dry-run` lists what to fix"
            )


def _check_parents(
    conn: psycopg.Connection, config: Config, tenant: TenantConfig, tables: ScopedTables, report: PreflightReport,
    columns: Iterable[str] = (),
) -> None:
    """A shared tenant's backend role (or a schema tenant's, `tables` then the shared tenants' of its database) that
    can read an inheritance parent of a scoped table that is not scoped itself (no tenant column;
    proxy/inherits.py): `SELECT … FROM parent` returns the child's rows of every tenant under the parent's row
    security, and the proxy adds no tenant filter to a table without the column. An error each (provision grants no
    such privilege)."""
    import json

    from proxy import access, inherits

    role = config.backend_for(tenant).user
    for (schema, table), (cs, ct) in sorted(inherits.holders(conn, tables, columns).items()):
        row = conn.execute(_REACH, (schema, table)).fetchone()
        if row is None or not row[5]:
            continue  # it cannot read it
        _, rls, force, owns, bypass, _, public, raw, _ = row
        policies = tuple(access.PolicyFact(p[0], p[1] == "true", p[2], p[3]) for p in (json.loads(x) for x in raw))
        reached = access.access(access.Reader(role, bool(bypass), bool(owns), policies), bool(rls), bool(force))
        if not (bypass or owns or reached.level in access.OPEN_LEVELS):
            continue  # the parent's own row security binds it, and applies to the child's rows read through it
        whom = "PUBLIC" if public else f"{role} (or the role it has it through)"
        if _foreign(conn, cs, ct):
            report.errors.append(
                f"tenants.{tenant.name}: its backend role {role!r} can read {schema}.{table}, an inheritance parent of "
                f"the foreign table {cs}.{ct} with no tenant column: read without ONLY it returns what {cs}.{ct} reads "
                f"with the reader's user mapping's stored credentials, any tenant's rows, and the proxy adds no tenant "
                f"filter to it (REVOKE SELECT ON {schema}.{table} FROM {whom}; or detach {cs}.{ct})")
            continue
        report.errors.append(
            f"tenants.{tenant.name}: its backend role {role!r} can read {schema}.{table}, an inheritance parent of the "
            f"tenant-scoped {cs}.{ct} with no tenant column: read without ONLY it returns {cs}.{ct}'s rows of every "
            f"tenant under its own row security, not the child's ({reached.why}), and the proxy adds no tenant filter "
            f"to it (REVOKE SELECT ON {schema}.{table} FROM {whom}; or add the tenant column to it)")


def _foreign(conn: psycopg.Connection, schema: str, table: str) -> bool:
    """Whether schema.table is a foreign table (an inheritance holder by its stored credentials, proxy/inherits.py)."""
    row = conn.execute("SELECT c.relkind = 'f' FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    return bool(row and row[0])


def _check_schema(conn: psycopg.Connection, config: Config, tenant: TenantConfig, report: PreflightReport) -> None:
    where = f"tenants.{tenant.name}"
    exists = conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (tenant.schema,)).fetchone()
    if exists is None:
        report.errors.append(f"{where}.schema: schema {tenant.schema!r} does not exist in {tenant.database!r}")
        return
    for other in config.tenants.values():
        if other.strategy != "schema" or other.name == tenant.name or other.database != tenant.database:
            continue
        row = conn.execute(
            "SELECT has_schema_privilege(n.oid, 'USAGE') FROM pg_catalog.pg_namespace n WHERE nspname = %s",
            (other.schema,),
        ).fetchone()
        if row and row[0]:
            report.warnings.append(
                f"{where}: its backend role can use schema {other.schema!r} of tenant {other.name!r}; only the "
                "proxy separates them (give each schema tenant its own backend_user and run `pgtenant provision`)"
            )


def _check_database(
    conn: psycopg.Connection, config: Config, tenant: TenantConfig, report: PreflightReport
) -> None:
    where = f"tenants.{tenant.name}"
    for other in config.tenants.values():
        # Other tenants' own databases must be closed to this role; a shared database is guarded by
        # its grants and RLS instead (revoking PUBLIC there could lock out the application itself).
        if other.strategy != "database" or other.database == tenant.database or other.backend != tenant.backend:
            continue
        row = conn.execute(
            "SELECT has_database_privilege(d.oid, 'CONNECT') FROM pg_catalog.pg_database d WHERE datname = %s",
            (other.database,),
        ).fetchone()
        if row and row[0]:
            report.warnings.append(
                f"{where}: its backend role may connect to database {other.database!r} of tenant {other.name!r}; "
                "only the proxy keeps it out (run `pgtenant provision`)"
            )


def _check_database_schemas(conn: psycopg.Connection, tenant: TenantConfig, report: PreflightReport) -> None:
    """Each schema of a database tenant's `schemas` key exists and its backend role may use it."""
    for schema in tenant.schemas:
        row = conn.execute(
            "SELECT has_schema_privilege(n.oid, 'USAGE') FROM pg_catalog.pg_namespace n WHERE nspname = %s", (schema,)
        ).fetchone()
        if row is None:
            report.warnings.append(f"tenants.{tenant.name}.schemas: schema {schema!r} does not exist in "
                                   f"{tenant.database!r}")
        elif not row[0]:
            report.warnings.append(f"tenants.{tenant.name}.schemas: its backend role may not use schema {schema!r} "
                                   "(run `pgtenant provision`)")


# A relation as the connected role (a database tenant's backend role) reaches it: whether it may read it at all
# (SELECT on it or a column, USAGE on its schema), its RLS state, whether it is a member of the owner (with its
# privileges, or able to SET ROLE to it), whether PUBLIC holds the SELECT, and the policies that apply to it
# (PUBLIC's, or a role whose privileges it has).
_REACH = """
SELECT c.relkind::text, c.relrowsecurity, c.relforcerowsecurity,
       pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER'),
       (SELECT r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = current_user),
       pg_catalog.has_any_column_privilege(c.oid, 'SELECT')
       AND pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE'),
       EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a WHERE a.grantee = 0 AND a.privilege_type = 'SELECT')
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute t, pg_catalog.aclexplode(t.attacl) a
                   WHERE t.attrelid = c.oid AND a.grantee = 0 AND a.privilege_type = 'SELECT'),
       ARRAY(SELECT pg_catalog.array_to_json(ARRAY[p.polname, p.polpermissive::text, p.polcmd::text,
                                                   pg_catalog.pg_get_expr(p.polqual, p.polrelid)])::text
               FROM pg_catalog.pg_policy p
              WHERE p.polrelid = c.oid AND (0 = ANY (p.polroles) OR EXISTS (
                    SELECT 1 FROM unnest(p.polroles) AS x(oid)
                     WHERE pg_catalog.pg_has_role(current_user, x.oid, 'USAGE')))
              ORDER BY p.polname),
       pg_catalog.pg_get_userbyid(c.relowner)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relname = %s
"""


# A shared tenant's sequences (review 17 F4): their positions count its inserts. The identity and serial sequences of
# its scoped tables and the ones their column defaults call; and every other sequence of its schemas but one that
# belongs to (or is called by a default of) another table: a table that is not theirs is the database tenant's.
NEIGHBOUR_SEQUENCES = """
WITH theirs AS (
  SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) AS t(s, r)
      ON t.s = n.nspname AND t.r = c.relname
), uses AS (
  SELECT d.objid AS seq, d.refobjid AS tab FROM pg_catalog.pg_depend d
   WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
     AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')
  UNION
  SELECT d.refobjid, a.adrelid FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_attrdef a ON a.oid = d.objid
   WHERE d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
     AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
)
SELECT n.nspname, s.relname FROM pg_catalog.pg_class s JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
 WHERE s.relkind = 'S' AND (s.oid IN (SELECT u.seq FROM uses u JOIN theirs t ON t.oid = u.tab)
       OR (n.nspname = ANY(%s::text[]) AND s.oid NOT IN (SELECT u.seq FROM uses u)))
 ORDER BY 1, 2
"""


def neighbour_sequences(conn: psycopg.Connection, tables: Iterable[tuple[str, str]],
                        schemas: Iterable[str]) -> list[tuple[str, str]]:
    """A shared tenant's sequences (`NEIGHBOUR_SEQUENCES`), given its scoped relations and its tenant_schemas."""
    rels = sorted(tables)
    rows = conn.execute(NEIGHBOUR_SEQUENCES, ([r[0] for r in rels], [r[1] for r in rels], list(schemas))).fetchall()
    return [(str(a), str(b)) for a, b in rows]


_SHADOWS = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relname = ANY(%s::text[]) AND n.nspname !~ '^pg_(temp|toast)'
"""

_SEQUENCE_REACH = """
SELECT pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
       AND pg_catalog.has_sequence_privilege(c.oid, 'SELECT, USAGE, UPDATE'),
       pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER'),
       EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a WHERE a.grantee = 0),
       pg_catalog.pg_get_userbyid(c.relowner)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'S'
"""


def _check_shared_schemas(conn: psycopg.Connection, config: Config, tenant: TenantConfig,
                          theirs: Iterable[tuple[str, str]], columns: Iterable[str], report: PreflightReport) -> None:
    """A schema tenant's backend role that can read a relation of its `shared_schemas` with a shared tenant's tenant
    column (`theirs`, and what else there carries one of `columns`) that row-level security does not filter for it
    (a view, materialized view or foreign table; a table whose RLS lets it through): the proxy adds no shared
    tenant's filter to a schema tenant's statements (red team 21w W4). An error each (provision grants none)."""
    import json

    from proxy import access

    schemas = sorted(set(tenant.shared_schemas))
    if not schemas:
        return
    role = config.backend_for(tenant).user
    rels = {rel for rel in theirs if rel[0] in schemas}
    for column in sorted(set(columns)):
        rels |= {(str(a), str(b)) for a, b in conn.execute(_DISCOVER, (column, schemas)).fetchall()}
    for schema, table in sorted(rels):
        row = conn.execute(_REACH, (schema, table)).fetchone()
        if row is None or not row[5]:
            continue  # no such relation, or it cannot read it
        kind, rls, force, owns, bypass, _, public, raw, _ = row
        if kind in ("v", "m", "f"):
            why = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}[kind]
            why += ", which row-level security does not filter"
        else:
            policies = tuple(access.PolicyFact(p[0], p[1] == "true", p[2], p[3])
                             for p in (json.loads(x) for x in raw))
            reached = access.access(access.Reader(role, bool(bypass), bool(owns), policies), bool(rls), bool(force))
            if not (bypass or owns or reached.level in access.OPEN_LEVELS):
                continue  # pgtenant's forced policy (TO the shared tenants' roles) gives it no rows
            why = reached.why
        whom = "PUBLIC" if public else f"{role} (or the role it has it through)"
        report.errors.append(
            f"tenants.{tenant.name}: its backend role {role!r} can read {schema}.{table} in its shared_schemas, which "
            f"carries the shared tenants' tenant column ({why}); the proxy adds no tenant filter of theirs to a "
            f"schema tenant's statements, so it would read every tenant's rows (REVOKE SELECT ON {schema}.{table} "
            f"FROM {whom}, as `pgtenant provision` leaves it)")


def _check_database_neighbours(
    conn: psycopg.Connection, config: Config, tenant: TenantConfig, report: PreflightReport
) -> None:
    """A database tenant whose database other tenants share (issue 14): its statements are not rewritten, so
    PostgreSQL alone keeps it from their rows. An error for every tenant-scoped relation of a shared tenant there
    (discovered as for that tenant) its backend role can read without a tenant check (`access.access`: no RLS, RLS
    not forced on a table it owns, a policy that lets it through, BYPASSRLS; a view, materialized view or foreign
    table, which RLS does not filter), and for every schema tenant's schema it may use."""
    import json

    from proxy import access, inherits

    where = f"tenants.{tenant.name}"
    role = config.backend_for(tenant).user
    owners: dict[tuple[str, str], list[str]] = {}
    sequences: dict[tuple[str, str], list[str]] = {}
    parents: dict[tuple[str, str], tuple[str, str]] = {}  # an inheritance parent (no tenant column): its scoped child
    direct: set[tuple[str, str]] = set()  # their scoped relations themselves (a parent scoped for another is one)
    for other in database_neighbours(config, tenant):
        if other.strategy == "shared":
            rels = explicit_tables(other) if other.tables else {
                (s, t): other.tenant_column
                for s, t in conn.execute(_DISCOVER, (other.tenant_column, list(other.tenant_schemas))).fetchall()}
            # a parent read without ONLY returns their rows (F3 of 21d), of a child in any schema too (21w W6)
            held = inherits.holders(conn, rels, [other.tenant_column])
            for rel in [*rels, *held]:
                owners.setdefault(rel, []).append(other.name)
                report.neighbour_tables.add((str(rel[0]), str(rel[1])))
            parents.update(held)
            direct.update((str(s), str(t)) for s, t in rels)
            for seq in neighbour_sequences(conn, rels, other.tenant_schemas):
                sequences.setdefault(seq, []).append(other.name)
                report.neighbour_sequences.add(seq)
        elif other.strategy == "schema" and other.schema is not None:
            row = conn.execute("SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE') FROM pg_catalog.pg_namespace n "
                               "WHERE nspname = %s", (other.schema,)).fetchone()
            if row and row[0]:
                report.errors.append(
                    f"{where}: its backend role {role!r} may use schema {other.schema!r} of tenant {other.name!r} in "
                    f"the database they share; a database tenant's statements are not rewritten, so only PostgreSQL "
                    f"keeps it out (REVOKE USAGE ON SCHEMA {other.schema} FROM {role} and from PUBLIC, or give "
                    f"{tenant.name!r} a backend_user of its own)")
    # (a foreign table parent's own rows are remote, read with stored credentials: ONLY of it is no local read)
    report.neighbour_parents.update((str(s), str(t)) for s, t in parents
                                    if (str(s), str(t)) not in direct and not _foreign(conn, str(s), str(t)))
    for (schema, table), names in sorted(owners.items()):
        row = conn.execute(_REACH, (schema, table)).fetchone()
        if row is None or not row[5]:
            continue  # no such relation (the shared tenant's own preflight says so), or it cannot read it
        kind, rls, force, owns, bypass, _, public, raw, owner = row
        name = f"{schema}.{table}"
        revoke = (f"REVOKE SELECT ON {name} FROM PUBLIC" if public else
                  f"REVOKE SELECT ON {name} FROM {role} (or the role it has it through)")
        if kind in ("v", "m", "f"):
            why = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}[kind]
            why += ", which row-level security does not filter for it"
            fix = revoke
        elif (schema, table) in parents:  # its own row security is what applies to the child's rows read through it
            policies = tuple(access.PolicyFact(p[0], p[1] == "true", p[2], p[3])
                             for p in (json.loads(x) for x in raw))
            reached = access.access(access.Reader(role, bool(bypass), bool(owns), policies), bool(rls), bool(force))
            if not (bypass or owns or reached.level in access.OPEN_LEVELS):
                continue
            child = "{}.{}".format(*parents[(schema, table)])
            why = (f"an inheritance parent of {child} with no tenant column: read without ONLY it returns "
                   f"{child}'s rows under its own row security, not the child's ({reached.why})")
            if _foreign(conn, *parents[(schema, table)]):
                why = (f"an inheritance parent of the foreign table {child} with no tenant column: read without ONLY "
                       f"it returns what {child} reads with the reader's user mapping's stored credentials")
            fix = revoke
        else:
            policies = tuple(access.PolicyFact(p[0], p[1] == "true", p[2], p[3])
                             for p in (json.loads(x) for x in raw))
            reached = access.access(access.Reader(role, bool(bypass), bool(owns), policies), bool(rls), bool(force))
            if bypass:
                why, fix = reached.why, f"ALTER ROLE {role} NOBYPASSRLS"
            elif owns:  # forced RLS holds the owner only while it leaves the table as it is
                why = reached.why if reached.level in access.OPEN_LEVELS else (
                    "owner: it can turn the table's row-level security off or change its policies")
                fix = f"REVOKE {owner} FROM {role}, or make another role the table's owner"
            elif reached.level not in access.OPEN_LEVELS:
                continue
            elif not rls:
                why = reached.why
                fix = (f"ALTER TABLE {name} ENABLE and FORCE ROW LEVEL SECURITY with a policy for the shared tenants' "
                       f"roles only, as `pgtenant provision` makes it; or {revoke}")
            else:
                why = reached.why
                fix = (f"DROP that policy, or ALTER POLICY … TO the roles that need it, not {role} or PUBLIC; "
                       f"or {revoke}")
        report.errors.append(
            f"{where}: its backend role {role!r} can read other tenants' rows of {name} (tenant "
            f"{', '.join(sorted(names))}: {why}); a database tenant's statements are not rewritten, so only "
            f"PostgreSQL keeps it out ({fix}; or give {tenant.name!r} a backend_user of its own, with no access to "
            "it)")
    for (schema, name), names in sorted(sequences.items()):
        row = conn.execute(_SEQUENCE_REACH, (schema, name)).fetchone()
        if row is None or not (row[0] or row[1]):
            continue
        _, owns, public, owner = row
        qualified = f"{schema}.{name}"
        if owns:
            why, fix = "owner", f"REVOKE {owner} FROM {role}, or make another role the sequence's owner"
        else:
            why = "granted to PUBLIC" if public else "granted"
            whom = "PUBLIC" if public else f"{role} (or the role it has it through)"
            fix = f"REVOKE ALL ON SEQUENCE {qualified} FROM {whom}"
        report.errors.append(
            f"{where}: its backend role {role!r} can read the position of {qualified}, a sequence of tenant "
            f"{', '.join(sorted(names))} ({why}; its last value counts their inserts); a database tenant's statements "
            f"are not rewritten, so only PostgreSQL keeps it out ({fix}; or give {tenant.name!r} a backend_user of "
            "its own, with no access to it)")
    theirs = report.neighbour_tables | report.neighbour_sequences
    if theirs:
        rows = conn.execute(_SHADOWS, (sorted({n for _, n in theirs}),)).fetchall()
        report.neighbour_shadows.update((str(a), str(b)) for a, b in rows if (str(a), str(b)) not in theirs)



def _check_definers(conn: psycopg.Connection, config: Config, tenant: TenantConfig, scoped: ScopedTables,
                    backend: BackendConfig, report: PreflightReport) -> None:
    """Code that runs with its owner's rights (proxy/definers.py) the backend role can use and whose owner reads
    the rows of any tenant of this database: the scoped relations of its shared tenants (each layout discovered
    once) and the relations of its schema tenants' schemas (the tenant's own schema aside). An error each (an
    extension member: a warning)."""
    from proxy import definers

    layouts, all_schemas = _database_layout(config, tenant.database, tenant.backend)  # (re)sets _LAYOUTS
    schemas = {s for name, s in all_schemas.items() if name != tenant.name}
    rels = {(str(s), str(t)) for s, t in scoped}
    for other in layouts:
        rels |= {(str(s), str(t)) for s, t in (explicit_tables(other) if other.tables else conn.execute(
            _DISCOVER, (other.tenant_column, list(other.tenant_schemas))).fetchall())}
    rels |= set(definers.schema_relations(conn, schemas))
    pinned = frozenset({tenant.tenant_setting.lower()}) if tenant.strategy == "shared" else frozenset()
    # Tenants alike (same server, database, role, relations and pinned setting) share one reading per config: a
    # registry's thousands of shared tenants of one database cost one (~3-9 ms each otherwise).
    columns = frozenset(o.tenant_column for o in layouts)
    key = (backend.host, backend.port, tenant.database, backend.user, frozenset(rels), pinned, columns)
    results: dict[object, definers.Found] = _LAYOUTS[2]  # type: ignore[assignment]
    found = results.get(key)
    if found is None:
        trusted = frozenset(config.preflight.trusted_definers)
        found = results[key] = definers.check(conn, backend.user, rels, pinned, trusted=trusted, columns=columns)
    report.errors += [f"tenants.{tenant.name}: {e}" for e in found.errors]
    report.warnings += [f"tenants.{tenant.name}: {w}" for w in found.warnings]


# The last config's tenants by (database, backend), and the definers check's results: computed once per config, not
# once per tenant (a registry of thousands of tenants in one database would otherwise scan them all for each). A
# reload (SIGHUP) makes a new config, so it reads the catalogs again.
_LAYOUTS: list[object] = [None, {}, {}]  # config, _database_layout's index, _check_definers' results


def _database_layout(config: Config, database: str, backend: str
                     ) -> tuple[list[TenantConfig], dict[str, str]]:
    """The shared tenants of `database` on `backend`, one per layout (column, schemas, tables), and its schema
    tenants' schemas by tenant name."""
    if _LAYOUTS[0] is not config:
        index: dict[tuple[str, str], tuple[list[TenantConfig], dict[str, str]]] = {}
        seen: set[tuple[object, ...]] = set()
        for t in config.tenants.values():
            shared, schemas = index.setdefault((t.database, t.backend), ([], {}))
            if t.strategy == "shared":
                layout = (t.database, t.backend, t.tenant_column, tuple(t.tenant_schemas), tuple(t.tables))
                if layout not in seen:
                    seen.add(layout)
                    shared.append(t)
            elif t.strategy == "schema" and t.schema is not None:
                schemas[t.name] = t.schema
        _LAYOUTS[:] = [config, index, {}]
    found = _LAYOUTS[1].get((database, backend))  # type: ignore[attr-defined]
    return found if found is not None else ([], {})
