"""What a tenant may see in the catalogs, as SQL predicates over the system catalogs (pure text builders).

Every predicate is read by PostgreSQL at run time, so it holds for schemas, roles and objects created after the
statement was decided. Names are schema-qualified (`pg_catalog.`) and aliases start with `pgt_`, so nothing a
tenant can create or name changes what they mean.

* Namespaces: a schema-strategy tenant sees an allow-list (its schema, the shared ones, `pg_catalog`,
  `information_schema`, its own session's `pg_temp_N`/`pg_toast_temp_N`); a shared-strategy tenant sees every
  schema except other tenants' (`TenantPolicy.hidden_schemas`) and other sessions' temporary schemas; a
  database-strategy tenant everything but `hidden_schemas` (usually nothing: its database is its own), and, where
  other tenants share its database (`TenantPolicy.database_shared`), not other sessions' temporary schemas. Where some
  schema is hidden, the predicate is an allow-list of the schemas the tenant sees (`TenantPolicy.known_schemas`,
  found when the tenant is prepared, with its search_path and the system schemas): the text PostgreSQL prints in
  EXPLAIN and stores in a view never names a hidden schema. A schema created later stays out of the catalogs until
  the next reload prepares the tenant again.
* Roles: the session's own roles and those it is a member of, PostgreSQL's built-in roles (OID below 16384: the
  bootstrap superuser and the `pg_*` roles), the current database's owner and the owners of the schemas and
  relations the tenant sees. Every other role (other tenants' backend roles) is hidden in every strategy.
"""

from __future__ import annotations

from functools import lru_cache

from proxy.policy.model import TenantPolicy
from proxy.policy.sqltext import quote_literal

FIRST_NORMAL_OID = "'16384'::pg_catalog.oid"  # OIDs below are built in (initdb)
_DIGITS = "'^[0-9]+$'"


def _names(names: object) -> str:
    return ", ".join(quote_literal(n) for n in sorted(names))  # type: ignore[call-overload]


def hides_namespaces(policy: TenantPolicy) -> bool:
    """True when some schema of the database is not the tenant's to see, or its catalogs' figures count other
    tenants' objects: everywhere but in a database the tenant owns alone (`TenantPolicy.owns_database`) with no
    hidden schema."""
    return not policy.owns_database or bool(policy.hidden_schemas)


SYSTEM_NAMESPACES = ("pg_catalog", "information_schema", "pg_toast")


@lru_cache(maxsize=256)
def namespace_row_visible(policy: TenantPolicy, alias: str) -> str:
    """Predicate over a pg_namespace row `alias`: the tenant may see this schema. It names only schemas the tenant
    may see (PostgreSQL prints it in EXPLAIN and in a temporary view's definition): an allow-list wherever some
    schema is hidden, never the hidden ones."""
    own_temp = (
        f"{alias}.oid = pg_catalog.pg_my_temp_schema() OR (pg_catalog.starts_with({alias}.nspname::pg_catalog.text, "
        f"'pg_toast_temp_') AND NOT pg_catalog.pg_is_other_temp_schema({alias}.oid))"
    )
    if policy.strategy == "schema":
        visible = [policy.tenant_schema or "", *policy.shared_schemas, "pg_catalog", "information_schema"]
        return f"({alias}.nspname IN ({_names(set(visible))}) OR {own_temp})"
    if policy.hidden_schemas:  # the schemas found when the tenant was prepared, less the hidden ones
        visible = {*policy.known_schemas, *policy.search_path, *SYSTEM_NAMESPACES} - policy.hidden_schemas
        if policy.owns_database:  # every session of its database is its own
            own_temp = (f"pg_catalog.starts_with({alias}.nspname::pg_catalog.text, 'pg_temp_') OR "
                        f"pg_catalog.starts_with({alias}.nspname::pg_catalog.text, 'pg_toast_temp_')")
        return f"({alias}.nspname IN ({_names(visible)}) OR {own_temp})"
    if not policy.owns_database:  # other sessions may be other tenants' sessions: their temp tables' names too
        return f"NOT (pg_catalog.pg_is_other_temp_schema({alias}.oid))"
    return "true"


@lru_cache(maxsize=256)
def namespace_array(policy: TenantPolicy) -> str:
    """`ARRAY(...)` of the OIDs of the schemas the tenant sees (evaluated once per query: an InitPlan)."""
    return (
        "ARRAY(SELECT pgt_n.oid FROM pg_catalog.pg_namespace pgt_n WHERE "
        + namespace_row_visible(policy, "pgt_n")
        + ")"
    )


def namespace_visible(policy: TenantPolicy, expr: str) -> str:
    """Predicate: the namespace OID `expr` is one the tenant sees (never NULL for a non-NULL `expr`)."""
    return f"{expr} = ANY ({namespace_array(policy)})"


PG_TOAST_NAMESPACE = "'99'::pg_catalog.oid"  # pg_toast's OID, fixed at initdb (pg_namespace.dat)


def hides_toast(policy: TenantPolicy) -> bool:
    """True when pg_toast is visible but holds the TOAST tables of relations the tenant may not see (whose sizes
    and activity counters tell how much other tenants store and read); the schema strategy hides pg_toast."""
    return policy.strategy != "schema" and hides_namespaces(policy)


@lru_cache(maxsize=256)
def toast_array(policy: TenantPolicy) -> str:
    """`ARRAY(...)` of the OIDs of the TOAST tables of the relations in schemas the tenant sees, and their
    indexes."""
    owners = (
        "SELECT pgt_o.reltoastrelid FROM pg_catalog.pg_class pgt_o WHERE pgt_o.reltoastrelid <> "
        "'0'::pg_catalog.oid AND " + namespace_visible(policy, "pgt_o.relnamespace")
    )
    return (
        f"ARRAY({owners} UNION ALL SELECT pgt_x.indexrelid FROM pg_catalog.pg_index pgt_x WHERE pgt_x.indrelid IN "
        f"({owners}))"
    )


def relation_visible(policy: TenantPolicy, oid: str, namespace: str) -> str:
    """Predicate over a relation's OID and namespace OID: the tenant may see it (its schema, and for a TOAST table
    or index, the relation it belongs to). The TOAST array is only computed for rows in pg_toast."""
    visible = namespace_visible(policy, namespace)
    if not hides_toast(policy):
        return visible
    return f"({visible} AND ({namespace} <> {PG_TOAST_NAMESPACE} OR {oid} = ANY ({toast_array(policy)})))"


def toast_row_visible(policy: TenantPolicy, oid: str, schema_name: str) -> str:
    """Predicate over a statistics view row (relation OID, schema *name*): not a TOAST table or index of a
    relation the tenant may not see ("true" where pg_toast is hidden anyway)."""
    if not hides_toast(policy):
        return "true"
    return f"({schema_name} <> 'pg_toast' OR {oid} = ANY ({toast_array(policy)}))"


@lru_cache(maxsize=256)
def schema_name_visible(policy: TenantPolicy, expr: str) -> str:
    """Predicate: the schema *name* `expr` (a name or sql_identifier column) is one the tenant sees."""
    return (
        f"{expr} = ANY (ARRAY(SELECT pgt_n.nspname FROM pg_catalog.pg_namespace pgt_n WHERE "
        + namespace_row_visible(policy, "pgt_n")
        + "))"
    )


@lru_cache(maxsize=256)
def role_array(policy: TenantPolicy) -> str:
    """`ARRAY(...)` of the OIDs of the roles the tenant may see named."""
    owners = ""
    if hides_namespaces(policy):
        owners = (
            " OR pgt_r.oid IN (SELECT pgt_o.nspowner FROM pg_catalog.pg_namespace pgt_o WHERE "
            + namespace_visible(policy, "pgt_o.oid")
            + ") OR pgt_r.oid IN (SELECT pgt_o.relowner FROM pg_catalog.pg_class pgt_o WHERE "
            + namespace_visible(policy, "pgt_o.relnamespace")
            + ")"
        )
    else:
        owners = (
            " OR pgt_r.oid IN (SELECT pgt_o.nspowner FROM pg_catalog.pg_namespace pgt_o)"
            " OR pgt_r.oid IN (SELECT pgt_o.relowner FROM pg_catalog.pg_class pgt_o)"
        )
    return (
        "ARRAY(SELECT pgt_r.oid FROM pg_catalog.pg_roles pgt_r WHERE pgt_r.oid < " + FIRST_NORMAL_OID
        + " OR pg_catalog.pg_has_role(pgt_r.oid, 'MEMBER') OR pgt_r.oid = (SELECT pgt_d.datdba FROM "
        "pg_catalog.pg_database pgt_d WHERE pgt_d.datname = pg_catalog.current_database())" + owners + ")"
    )


def role_visible(policy: TenantPolicy, expr: str) -> str:
    """Predicate: the role OID `expr` is one the tenant may see named (0, PUBLIC in an ACL, counts as seen)."""
    return f"({expr} = '0'::pg_catalog.oid OR {expr} = ANY ({role_array(policy)}))"


def role_name_visible(policy: TenantPolicy, expr: str) -> str:
    """Predicate: the role *name* `expr` is `public` or a role the tenant may see named."""
    return (
        f"({expr} = 'public' OR {expr} = ANY (ARRAY(SELECT pgt_m.rolname FROM pg_catalog.pg_roles pgt_m WHERE "
        f"pgt_m.oid = ANY ({role_array(policy)}))))"
    )


_IDENT = r'"(?:[^"]|"")*"|[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*'
_UPPER, _LOWER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"


@lru_cache(maxsize=256)
def name_in_hidden_schema(policy: TenantPolicy, text: str) -> str:
    """Predicate: the object name `text` (a reg* input string such as `'two_co.orders'`, `'db.two_co.t'`,
    `'"Two".f(int)'`) is qualified with a schema the tenant may not see (or none that exists). Such a name is
    never handed to `to_regclass` & co., which report "permission denied for schema" for an existing schema
    the role may not use -- and NULL for a missing one."""
    three = rf"(pg_catalog.regexp_match({text}, '^\s*({_IDENT})\s*\.\s*({_IDENT})\s*\.'))[2]"
    two = rf"(pg_catalog.regexp_match({text}, '^\s*({_IDENT})\s*\.'))[1]"
    name = (
        "CASE WHEN pgt_q.p LIKE '\"%' THEN pg_catalog.replace(pg_catalog.substr(pgt_q.p, 2, "
        "pg_catalog.length(pgt_q.p) - 2), '\"\"', '\"') ELSE "
        f"pg_catalog.translate(pgt_q.p, '{_UPPER}', '{_LOWER}') END"
    )
    return (
        f"EXISTS (SELECT FROM (SELECT COALESCE({three}, {two}) AS p) pgt_q WHERE pgt_q.p IS NOT NULL AND NOT "
        f"({schema_name_visible(policy, name)} OR {name} = 'pg_temp'))"
    )


def current_database_oid() -> str:
    """The current database's OID as a scalar subquery."""
    return (
        "(SELECT pgt_d.oid FROM pg_catalog.pg_database pgt_d WHERE pgt_d.datname = pg_catalog.current_database())"
    )


@lru_cache(maxsize=256)
def scoped_relations(policy: TenantPolicy) -> str:
    """Shared strategy: a subquery of the OIDs of every tenant-scoped table, its TOAST table and their indexes,
    whose planner statistics, sizes and activity counters come from every tenant's rows."""
    pairs = ", ".join(
        f"({quote_literal(s)}, {quote_literal(t)})" for s, t in sorted(policy.scoped_tables)
    )
    return (
        "(WITH pgt_s AS (SELECT pgt_c.oid, pgt_c.reltoastrelid FROM pg_catalog.pg_class pgt_c JOIN "
        "pg_catalog.pg_namespace pgt_n ON pgt_n.oid = pgt_c.relnamespace WHERE (pgt_n.nspname, pgt_c.relname) IN "
        f"({pairs})), pgt_t AS (SELECT pgt_s.oid FROM pgt_s UNION ALL SELECT pgt_s.reltoastrelid FROM pgt_s WHERE "
        "pgt_s.reltoastrelid <> '0'::pg_catalog.oid) SELECT pgt_t.oid FROM pgt_t UNION ALL SELECT pgt_i.indexrelid "
        "FROM pg_catalog.pg_index pgt_i WHERE pgt_i.indrelid IN (SELECT pgt_t.oid FROM pgt_t))"
    )


_ROW_SECURED = (
    "(WITH pgt_t AS (SELECT pgt_c.oid FROM pg_catalog.pg_class pgt_c WHERE pgt_c.relrowsecurity UNION ALL SELECT "
    "pgt_c.reltoastrelid FROM pg_catalog.pg_class pgt_c WHERE pgt_c.relrowsecurity AND pgt_c.reltoastrelid <> "
    "'0'::pg_catalog.oid) SELECT pgt_t.oid FROM pgt_t UNION ALL SELECT pgt_i.indexrelid FROM pg_catalog.pg_index "
    "pgt_i WHERE pgt_i.indrelid IN (SELECT pgt_t.oid FROM pgt_t) UNION ALL SELECT pgt_d.objid FROM "
    "pg_catalog.pg_depend pgt_d WHERE pgt_d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND "
    "pgt_d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND pgt_d.deptype IN ('a', 'i') AND "
    "pgt_d.refobjid IN (SELECT pgt_t.oid FROM pgt_t){sequences})"
)


@lru_cache(maxsize=256)
def others_rows_relations(policy: TenantPolicy) -> str | None:
    """A subquery of the OIDs of the relations (with their TOAST tables and indexes) that hold other tenants' rows,
    whose planner statistics, sizes and activity counters count them, or None: the scoped tables in the shared
    strategy; every table with row-level security where a database tenant shares its database (issue 14: the
    shared tenants' tables, whose rows forced RLS keeps from it), with the sequences they own (serial, identity)
    and the shared tenants' sequences (`others_sequences`), whose block counters count their nextval()s (red team
    9a10 B1)."""
    if policy.strategy == "shared":
        return scoped_relations(policy)
    if policy.strategy == "database" and not policy.owns_database:
        sequences = ""
        if policy.others_sequences:
            pairs = ", ".join(f"({quote_literal(s)}, {quote_literal(n)})" for s, n in sorted(policy.others_sequences))
            sequences = (
                " UNION ALL SELECT pgt_q.oid FROM pg_catalog.pg_class pgt_q JOIN pg_catalog.pg_namespace pgt_m ON "
                f"pgt_m.oid = pgt_q.relnamespace WHERE (pgt_m.nspname, pgt_q.relname) IN ({pairs})"
            )
        return _ROW_SECURED.format(sequences=sequences)
    return None


DIGITS = _DIGITS
