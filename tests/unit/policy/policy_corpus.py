"""Policies and the fixture-file loader for the policy engine tests (tests/fixtures/policy/*.txt)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from proxy.config import LimitsConfig
from proxy.policy import TenantPolicy
from proxy.policy.agent import agent_policy
from proxy.policy.model import SessionContext
from proxy.policy.reached import Reached

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "policy"

# PostgreSQL 15's column lists of the catalogs the shared strategy scrubs (dbcheck.catalog_columns reads them from
# the server a tenant runs on).
PG15_CATALOG_COLUMNS: dict[str, tuple[str, ...]] = {
    "pg_largeobject_metadata": ("oid", "lomowner", "lomacl"),
    "pg_prepared_statements": (
        "name", "statement", "prepare_time", "parameter_types", "from_sql", "generic_plans", "custom_plans",
    ),
    "pg_attribute": (
        "attrelid", "attname", "atttypid", "attstattarget", "attlen", "attnum", "attndims", "attcacheoff",
        "atttypmod", "attbyval", "attalign", "attstorage", "attcompression", "attnotnull", "atthasdef",
        "atthasmissing", "attidentity", "attgenerated", "attisdropped", "attislocal", "attinhcount", "attcollation",
        "attacl", "attoptions", "attfdwoptions", "attmissingval",
    ),
    "pg_class": (
        "oid", "relname", "relnamespace", "reltype", "reloftype", "relowner", "relam", "relfilenode",
        "reltablespace", "relpages", "reltuples", "relallvisible", "reltoastrelid", "relhasindex", "relisshared",
        "relpersistence", "relkind", "relnatts", "relchecks", "relhasrules", "relhastriggers", "relhassubclass",
        "relrowsecurity", "relforcerowsecurity", "relispopulated", "relreplident", "relispartition", "relrewrite",
        "relfrozenxid", "relminmxid", "relacl", "reloptions", "relpartbound",
    ),
    "pg_database": (
        "oid", "datname", "datdba", "encoding", "datlocprovider", "datistemplate", "datallowconn", "datconnlimit",
        "datfrozenxid", "datminmxid", "dattablespace", "datcollate", "datctype", "daticulocale", "datcollversion",
        "datacl",
    ),
    "pg_default_acl": (
        "oid", "defaclrole", "defaclnamespace", "defaclobjtype", "defaclacl",
    ),
    "pg_foreign_data_wrapper": (
        "oid", "fdwname", "fdwowner", "fdwhandler", "fdwvalidator", "fdwacl", "fdwoptions",
    ),
    "pg_foreign_server": (
        "oid", "srvname", "srvowner", "srvfdw", "srvtype", "srvversion", "srvacl", "srvoptions",
    ),
    "pg_init_privs": (
        "objoid", "classoid", "objsubid", "privtype", "initprivs",
    ),
    "pg_language": (
        "oid", "lanname", "lanowner", "lanispl", "lanpltrusted", "lanplcallfoid", "laninline", "lanvalidator",
        "lanacl",
    ),
    "pg_namespace": (
        "oid", "nspname", "nspowner", "nspacl",
    ),
    "pg_parameter_acl": (
        "oid", "parname", "paracl",
    ),
    "pg_policies": (
        "schemaname", "tablename", "policyname", "permissive", "roles", "cmd", "qual", "with_check",
    ),
    "pg_proc": (
        "oid", "proname", "pronamespace", "proowner", "prolang", "procost", "prorows", "provariadic", "prosupport",
        "prokind", "prosecdef", "proleakproof", "proisstrict", "proretset", "provolatile", "proparallel",
        "pronargs", "pronargdefaults", "prorettype", "proargtypes", "proallargtypes", "proargmodes", "proargnames",
        "proargdefaults", "protrftypes", "prosrc", "probin", "prosqlbody", "proconfig", "proacl",
    ),
    "pg_stat_all_indexes": (
        "relid", "indexrelid", "schemaname", "relname", "indexrelname", "idx_scan", "idx_tup_read", "idx_tup_fetch",
    ),
    "pg_stat_all_tables": (
        "relid", "schemaname", "relname", "seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins",
        "n_tup_upd", "n_tup_del", "n_tup_hot_upd", "n_live_tup", "n_dead_tup", "n_mod_since_analyze",
        "n_ins_since_vacuum", "last_vacuum", "last_autovacuum", "last_analyze", "last_autoanalyze", "vacuum_count",
        "autovacuum_count", "analyze_count", "autoanalyze_count",
    ),
    "pg_stat_sys_indexes": (
        "relid", "indexrelid", "schemaname", "relname", "indexrelname", "idx_scan", "idx_tup_read", "idx_tup_fetch",
    ),
    "pg_stat_sys_tables": (
        "relid", "schemaname", "relname", "seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins",
        "n_tup_upd", "n_tup_del", "n_tup_hot_upd", "n_live_tup", "n_dead_tup", "n_mod_since_analyze",
        "n_ins_since_vacuum", "last_vacuum", "last_autovacuum", "last_analyze", "last_autoanalyze", "vacuum_count",
        "autovacuum_count", "analyze_count", "autoanalyze_count",
    ),
    "pg_stat_user_indexes": (
        "relid", "indexrelid", "schemaname", "relname", "indexrelname", "idx_scan", "idx_tup_read", "idx_tup_fetch",
    ),
    "pg_stat_user_tables": (
        "relid", "schemaname", "relname", "seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins",
        "n_tup_upd", "n_tup_del", "n_tup_hot_upd", "n_live_tup", "n_dead_tup", "n_mod_since_analyze",
        "n_ins_since_vacuum", "last_vacuum", "last_autovacuum", "last_analyze", "last_autoanalyze", "vacuum_count",
        "autovacuum_count", "analyze_count", "autoanalyze_count",
    ),
    "pg_stat_xact_all_tables": (
        "relid", "schemaname", "relname", "seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins",
        "n_tup_upd", "n_tup_del", "n_tup_hot_upd",
    ),
    "pg_stat_xact_sys_tables": (
        "relid", "schemaname", "relname", "seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins",
        "n_tup_upd", "n_tup_del", "n_tup_hot_upd",
    ),
    "pg_stat_xact_user_tables": (
        "relid", "schemaname", "relname", "seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins",
        "n_tup_upd", "n_tup_del", "n_tup_hot_upd",
    ),
    "pg_statio_all_indexes": (
        "relid", "indexrelid", "schemaname", "relname", "indexrelname", "idx_blks_read", "idx_blks_hit",
    ),
    "pg_statio_all_tables": (
        "relid", "schemaname", "relname", "heap_blks_read", "heap_blks_hit", "idx_blks_read", "idx_blks_hit",
        "toast_blks_read", "toast_blks_hit", "tidx_blks_read", "tidx_blks_hit",
    ),
    "pg_statio_sys_indexes": (
        "relid", "indexrelid", "schemaname", "relname", "indexrelname", "idx_blks_read", "idx_blks_hit",
    ),
    "pg_statio_sys_tables": (
        "relid", "schemaname", "relname", "heap_blks_read", "heap_blks_hit", "idx_blks_read", "idx_blks_hit",
        "toast_blks_read", "toast_blks_hit", "tidx_blks_read", "tidx_blks_hit",
    ),
    "pg_statio_user_indexes": (
        "relid", "indexrelid", "schemaname", "relname", "indexrelname", "idx_blks_read", "idx_blks_hit",
    ),
    "pg_statio_user_tables": (
        "relid", "schemaname", "relname", "heap_blks_read", "heap_blks_hit", "idx_blks_read", "idx_blks_hit",
        "toast_blks_read", "toast_blks_hit", "tidx_blks_read", "tidx_blks_hit",
    ),
    **{f"pg_statio_{w}_sequences": ("relid", "schemaname", "relname", "blks_read", "blks_hit")
       for w in ("all", "user", "sys")},
    "pg_tablespace": (
        "oid", "spcname", "spcowner", "spcacl", "spcoptions",
    ),
    "pg_type": (
        "oid", "typname", "typnamespace", "typowner", "typlen", "typbyval", "typtype", "typcategory",
        "typispreferred", "typisdefined", "typdelim", "typrelid", "typsubscript", "typelem", "typarray", "typinput",
        "typoutput", "typreceive", "typsend", "typmodin", "typmodout", "typanalyze", "typalign", "typstorage",
        "typnotnull", "typbasetype", "typtypmod", "typndims", "typcollation", "typdefaultbin", "typdefault",
        "typacl",
    ),
}

_CAPS = LimitsConfig().setting_caps()  # the memory settings' maximums, as the proxy builds every tenant's policy
_SCOPED = {
    ("sales", "orders"): "tenant_id",
    ("sales", "customers"): "tenant_id",
    ("sales", "order_items"): "tenant_id",
    ("public", "events"): "tenant_id",
}
_SHARED = TenantPolicy(
    tenant="acme",
    strategy="shared",
    tenant_value="acme",
    scoped_tables=_SCOPED,
    rls_tables=frozenset(_SCOPED),  # forced RLS on every scoped table, as `pgtenant provision` leaves it
    search_path=("sales", "public"),
    extra_allowed_functions=frozenset({"public.fiscal_quarter"}),
    denied_functions=frozenset({"pg_sleep_for"}),
    foreign_schemas=frozenset({"tenant_globex"}),  # another tenant's schema in the same database
    catalog_columns=PG15_CATALOG_COLUMNS,
    setting_caps=_CAPS,
)
_SCHEMA = TenantPolicy(tenant="acme", strategy="schema", tenant_schema="tenant_acme", shared_schemas=("ref",),
                       catalog_columns=PG15_CATALOG_COLUMNS, setting_caps=_CAPS)
_DATABASE = TenantPolicy(tenant="acme", strategy="database", catalog_columns=PG15_CATALOG_COLUMNS,
                         max_advisory_locks=16, setting_caps=_CAPS)

_KNOWN_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast", "public", "sales", "tenant_globex"})

POLICIES: dict[str, TenantPolicy] = {
    "shared": _SHARED,
    "shared_rw": dataclasses.replace(_SHARED, allow_writes=True),
    "shared_noddl": dataclasses.replace(_SHARED, allow_ddl_temp=False),
    "shared_fence": dataclasses.replace(_SHARED, fence=True, rls_tables=frozenset()),
    "schema": _SCHEMA,
    "schema_rw": dataclasses.replace(_SCHEMA, allow_writes=True),
    "database": _DATABASE,
    "database_rw": dataclasses.replace(_DATABASE, allow_writes=True),
    # the same database holds a schema tenant's schema (tenant_globex): hidden from these tenants too (their filters
    # name the schemas they may see, found when the tenant is prepared: `known_schemas`)
    "shared_hiding": dataclasses.replace(_SHARED, hidden_schemas=frozenset({"tenant_globex"}),
                                         known_schemas=_KNOWN_SCHEMAS),
    "database_hiding": dataclasses.replace(_DATABASE, hidden_schemas=frozenset({"tenant_globex"}),
                                           known_schemas=_KNOWN_SCHEMAS),
    # a database tenant whose database other tenants (a shared one's tables) share (issue 14): not its own
    # (public.orders: a shared tenant's scoped table there, `others_tables`; its identity sequence, `others_sequences`;
    # the tenant's own sales.orders and its sequence of the same names, `others_shadows`)
    "database_shared": dataclasses.replace(_DATABASE, database_shared=True,
                                           others_tables=frozenset({("public", "orders")}),
                                           others_sequences=frozenset({("public", "orders_id_seq")}),
                                           others_shadows=frozenset({("sales", "orders"), ("sales", "orders_id_seq")})),
    # the agent profile (agent.max_rows = 100; database_agent: statement_timeout 30 s) over the read-write tenants
    "shared_agent": agent_policy(dataclasses.replace(_SHARED, allow_writes=True), 100),
    "schema_agent": agent_policy(dataclasses.replace(_SCHEMA, allow_writes=True), 100),
    "database_agent": agent_policy(dataclasses.replace(_DATABASE, allow_writes=True), 100, 30_000),
    # a user's statement_timeout limit of 10 s (limits.statement_timeout): PostgreSQL never gets a larger one
    "shared_limited": dataclasses.replace(_SHARED, statement_timeout_ms=10_000),
    "schema_limited": dataclasses.replace(_SCHEMA, statement_timeout_ms=10_000),
    "database_limited": dataclasses.replace(_DATABASE, statement_timeout_ms=10_000),
}
# A database whose app defines functions PostgreSQL runs without a call (tests/fixtures/policy/reached.txt): a
# validator domain sales.sku (CHECK sales.sku_exists(VALUE)) and a domain over it, an enum sales.status with a cast
# to json by sales.status_label, a view public.tenant_stats over public.tenant_summary(), a view public.labels over
# built-ins only (no row), a user `=` of a type sales.money2 (sales.money2_eq)
_REACHED = Reached(frozenset({
    ("domain", "sku", "sales.sku_exists"), ("domain", "_sku", "sales.sku_exists"),
    ("domain", "sku_code", "sales.sku_exists"), ("domain", "_sku_code", "sales.sku_exists"),
    ("cast", "json", "sales.status_label"),
    ("view", "public.tenant_stats", "public.tenant_summary"),
}))
_EQUAL = Reached(frozenset({("operator", "=", "sales.money2_eq")}))


def cast_rows(function: str, targets: tuple[str, ...], sources: tuple[str, ...]) -> set[tuple[str, str, str]]:
    """The snapshot rows of a cast as dbcheck.reached_routines reads them: a `cast` row per name of its target type,
    a `castsource` row per (target name, source name)."""
    return ({("cast", t, function) for t in targets}
            | {("castsource", f"{t}\x00{function}", s) for t in targets for s in sources})


# An app's `CREATE CAST (sales.status AS text) WITH FUNCTION sales.status_text(sales.status)` (an enum), with a domain
# sales.state over the enum and a domain sales.label over text (wp-cast): the rows dbcheck read from PostgreSQL 15
_TEXT_CAST = Reached(frozenset({
    *cast_rows("sales.status_text", ("text", "label"), ("status", "state")),
    *cast_rows("sales.status_text", ("text[]", "_text", "label[]", "_label"), ("status[]", "_status", "state[]",
                                                                                "_state")),
    ("castfrom", "sales.status_text", "sales"), ("field", "status_text", "sales.status_text"),
}))
# An app's `CREATE CAST (int4 AS sales.cents) WITH FUNCTION sales.int_cents(int4)` (review 22 F1)
_INT_CAST = Reached(frozenset(cast_rows("sales.int_cents", ("cents",), ("int4", "integer"))))
# ... and `CREATE CAST (int8 AS sales.cents) WITH FUNCTION sales.int8_cents(int8)` (red team 22w W1)
_INT8_CAST = Reached(frozenset(cast_rows("sales.int8_cents", ("cents",), ("int8", "bigint"))))
POLICIES.update({
    "shared_int8_cast": dataclasses.replace(_SHARED, reached=_INT8_CAST),
    "shared_int_cast": dataclasses.replace(_SHARED, reached=_INT_CAST),
    "shared_reached": dataclasses.replace(_SHARED, reached=_REACHED),
    "schema_reached": dataclasses.replace(_SCHEMA, shared_schemas=("ref", "public"), reached=_REACHED),
    "database_reached": dataclasses.replace(_DATABASE, reached=_REACHED),
    "shared_reached_allowed": dataclasses.replace(_SHARED, reached=_REACHED, extra_allowed_functions=frozenset(
        {"sales.sku_exists", "sales.status_label", "public.tenant_summary"})),
    "shared_equal": dataclasses.replace(_SHARED, reached=_EQUAL),
    "shared_text_cast": dataclasses.replace(_SHARED, reached=_TEXT_CAST),
    "database_text_cast": dataclasses.replace(_DATABASE, reached=_TEXT_CAST),
})
# A database tenant with another tenant's schema in its database (an allow-list of the others).
DATABASE_HIDING = POLICIES["database_hiding"]


@dataclass(frozen=True)
class Case:
    """One fixture: input SQL for a named policy and the expected decision."""

    file: str
    name: str
    policy: str
    sql: str
    expect: str  # "allow" | "rewrite" | "deny"
    effects: tuple[str, ...] = ()
    sqlstate: str = ""
    rule: str = ""
    rewritten: str = ""
    context: str = ""  # the session's context: `temp_tables=a,b temp_views=v search_path=s,pg_temp shown=...`

    @property
    def id(self) -> str:
        return f"{self.file}:{self.name}"


def parse_context(text: str) -> SessionContext:
    """A `-- context:` directive: space-separated key=value, lists comma-separated (shown= takes the rest)."""
    fields: dict[str, object] = {}
    rest = text.strip()
    if "shown=" in rest:
        rest, shown = rest.split("shown=", 1)
        fields["shown"] = shown
    for item in rest.split():
        key, value = item.split("=", 1)
        values = tuple(v for v in value.split(",") if v)
        if key in ("temp_tables", "temp_views", "explainable"):
            fields[key] = frozenset(values)
        elif key == "search_path":
            fields["path"] = values
        elif key == "timeout":  # what SHOW statement_timeout prints for the client's SET under a limit
            fields["timeout"] = value
        else:
            raise ValueError(f"unknown context key {key!r}")
    return SessionContext(**fields)  # type: ignore[arg-type]


def case_policy(case: Case) -> TenantPolicy:
    """The policy a case is decided under: its named policy, in its session context."""
    policy = POLICIES[case.policy]
    return policy.with_context(parse_context(case.context)) if case.context else policy


_DIRECTIVE = re.compile(r"^-- (name|policy|context|expect|note):\s*(.*)$")


def parse_fixture_text(file: str, text: str) -> list[Case]:
    """Parse blocks of `-- name:` / `-- policy:` / SQL / `-- expect:` [/ expected SQL]."""
    cases: list[Case] = []
    block: dict[str, str] = {}
    sql_lines: list[str] = []
    out_lines: list[str] = []
    state = "outside"

    def finish() -> None:
        if not block:
            return
        expect = block["expect"].split()
        kind = expect[0]
        common = dict(file=file, name=block["name"], policy=block["policy"], sql="\n".join(sql_lines).strip("\n"),
                      context=block.get("context", ""))
        if kind == "deny":
            cases.append(Case(**common, expect="deny", sqlstate=expect[1], rule=expect[2]))
        elif kind == "allow":
            cases.append(Case(**common, expect="allow", effects=tuple(expect[1:])))
        elif kind == "rewrite":
            rewritten = "\n".join(out_lines).strip("\n")
            cases.append(Case(**common, expect="rewrite", effects=tuple(expect[1:]), rewritten=rewritten))
        else:
            raise ValueError(f"{file}: case {block['name']}: unknown expectation {kind!r}")

    for line in text.splitlines():
        m = _DIRECTIVE.match(line)
        if m and m.group(1) == "name":
            finish()
            block, sql_lines, out_lines, state = {"name": m.group(2).strip()}, [], [], "header"
        elif m and state == "header" and m.group(1) in ("policy", "note", "context"):
            block[m.group(1)] = m.group(2).strip()
            if m.group(1) == "policy":
                state = "sql"
        elif m and state == "sql" and m.group(1) == "context" and not sql_lines:
            block["context"] = m.group(2).strip()
        elif m and state == "sql" and m.group(1) == "expect":
            block["expect"] = m.group(2).strip()
            state = "after"
        elif state == "sql":
            sql_lines.append(line)
        elif state == "after":
            out_lines.append(line)
    finish()
    return cases


def load_cases() -> list[Case]:
    """Every case of every fixture file, in file order."""
    cases: list[Case] = []
    for path in sorted(FIXTURE_DIR.glob("*.txt")):
        cases.extend(parse_fixture_text(path.name, path.read_text(encoding="utf-8")))
    return cases
