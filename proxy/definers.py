"""Code that runs with its owner's rights (SECURITY DEFINER functions, views) and reads other tenants' rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import psycopg

from proxy import access, inherits
from proxy.pgqualname import TRUE_SPELLINGS, parse_qualified

# Issue 18/14: a SECURITY DEFINER function, and a view without `security_invoker` (PG 15+), read tables as their
# owner. Owned by a role row security does not bind on a tenant-scoped table (a superuser, BYPASSRLS, the table's
# owner while its RLS is not forced, a role a permissive policy lets through), such code reads every tenant's rows
# whatever the proxy rewrites: a cast, operator, domain CHECK, default, trigger, RLS policy or json output can run a
# function without a call. The preflight (proxy/dbcheck.py) and `pgtenant provision` report each one a backend
# role of a shared or schema tenant (or a database tenant sharing its database) can use.


def _system(oid: str, nsp: str = "n") -> str:
    """Not PostgreSQL's own: outside pg_catalog and information_schema, or made there after initdb (a superuser may
    create there: red team 21d F10; initdb's objects have oids below FirstNormalObjectId, 16384), and not in a
    toast or temporary schema."""
    return (f"({nsp}.nspname NOT IN ('pg_catalog', 'information_schema') OR {oid} >= 16384) "
            f"AND {nsp}.nspname !~ '^pg_(toast|temp)'")


_SYSTEM_P, _SYSTEM_C = _system("p.oid"), _system("c.oid")
# security_invoker as PostgreSQL's parse_bool reads it: `t`, `yes`, `on` ... (red team 21d F11)
_TRUE = ", ".join(f"'{w}'" for w in TRUE_SPELLINGS)

# Every SECURITY DEFINER routine outside the system schemas (usable or not: a view may call it), with its owner,
# its extension (if a member), whether `role` may execute it (when `role` does not exist yet: through PUBLIC), how,
# and for a SQL-standard body (BEGIN ATOMIC) what it reads (pg_depend): relations, and whether it calls or reads
# something that may itself read anything (a function outside the system schemas, a view).
_FUNCTIONS = f"""
WITH me AS (SELECT (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = %(role)s) AS oid)
SELECT p.oid::int8, n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
       pg_catalog.oidvectortypes(p.proargtypes),
       CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
       o.rolname, o.rolsuper, o.rolbypassrls,
       (SELECT e.extname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
           AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e' LIMIT 1),
       pub.x AS public,
       CASE WHEN me.oid IS NULL THEN pub.x ELSE pg_catalog.has_function_privilege(me.oid, p.oid, 'EXECUTE') END,
       CASE WHEN me.oid IS NULL THEN false ELSE pg_catalog.pg_has_role(me.oid, p.proowner, 'USAGE') END,
       {{atomic}},
       (SELECT tn.nspname || '.' || tc.relname FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_class tc ON tc.oid = t.tgrelid JOIN pg_catalog.pg_namespace tn ON tn.oid = tc.relnamespace
         WHERE t.tgfoid = p.oid AND NOT t.tgisinternal AND me.oid IS NOT NULL
           AND (pg_catalog.has_table_privilege(me.oid, t.tgrelid, 'INSERT, UPDATE, DELETE, TRUNCATE')
                -- (an INSERT or UPDATE on some columns fires the trigger too: red team 22d R7)
                OR pg_catalog.has_any_column_privilege(me.oid, t.tgrelid, 'INSERT, UPDATE'))
         ORDER BY 1 LIMIT 1),
       (SELECT an.nspname || '.' || ap.proname || '(' || pg_catalog.pg_get_function_identity_arguments(ap.oid) || ')'
          FROM pg_catalog.pg_aggregate a JOIN pg_catalog.pg_proc ap ON ap.oid = a.aggfnoid
          JOIN pg_catalog.pg_namespace an ON an.oid = ap.pronamespace
         WHERE p.oid IN (a.aggtransfn::oid, a.aggfinalfn::oid, a.aggcombinefn::oid, a.aggmtransfn::oid,
                         a.aggminvtransfn::oid, a.aggmfinalfn::oid)
           AND CASE WHEN me.oid IS NULL THEN false
                    ELSE pg_catalog.has_function_privilege(me.oid, a.aggfnoid, 'EXECUTE') END
         ORDER BY 1 LIMIT 1),
       ARRAY(SELECT pg_catalog.json_build_array(rn.nspname, rc.relname, rc.relkind)::text
               FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class rc ON rc.oid = d.refobjid
               JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
             UNION  -- (pg_depend records no system catalog: pinned)
             SELECT '["pg_catalog", "pg_statistic", "r"]'
              WHERE pg_catalog.pg_get_functiondef(p.oid) ~* 'pg_statistic'),
       ARRAY(SELECT d.refobjid::int8 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc q ON q.oid = d.refobjid
               JOIN pg_catalog.pg_namespace qn ON qn.oid = q.pronamespace
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                AND (qn.nspname NOT IN ('pg_catalog', 'information_schema') OR q.oid >= 16384))
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_catalog.pg_roles o ON o.oid = p.proowner
  CROSS JOIN me
  CROSS JOIN LATERAL (SELECT EXISTS (
       SELECT 1 FROM pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS x) pub
 WHERE p.prosecdef AND p.prokind IN ('f', 'p') AND {_SYSTEM_P}
 ORDER BY 2, 3, 4
"""

# Every view without security_invoker and every materialized view outside the system schemas, with its owner,
# extension, whether `role` may read it (SELECT on it or a column, USAGE on its schema; a role that does not exist
# yet: through PUBLIC), how, and what its query reads and calls (pg_depend of its rewrite rule).
# The relations (`c`, schema `n`, owner `o`) of `_VIEWS` and `_GRAPH_RELATIONS`, with `pub.x`: SELECT granted to PUBLIC
# on the relation or one of its columns (`me`: the backend role's oid, of their WITH)
_RELATIONS_FROM = """  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
  CROSS JOIN me
  CROSS JOIN LATERAL (SELECT EXISTS (
       SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a WHERE a.grantee = 0 AND a.privilege_type = 'SELECT')
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute t, pg_catalog.aclexplode(t.attacl) a
                   WHERE t.attrelid = c.oid AND a.grantee = 0 AND a.privilege_type = 'SELECT') AS x) pub
"""

_VIEWS = f"""
WITH me AS (SELECT (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = %(role)s) AS oid)
SELECT c.oid::int8, n.nspname, c.relname, c.relkind::text, o.rolname, o.rolsuper, o.rolbypassrls,
       (SELECT e.extname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
           AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e' LIMIT 1),
       pub.x AS public,
       CASE WHEN me.oid IS NULL THEN pub.x AND EXISTS (
              SELECT 1 FROM pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
               WHERE a.grantee = 0 AND a.privilege_type = 'USAGE')
            ELSE pg_catalog.has_any_column_privilege(me.oid, c.oid, 'SELECT')
                 AND pg_catalog.has_schema_privilege(me.oid, c.relnamespace, 'USAGE') END,
       CASE WHEN me.oid IS NULL THEN false ELSE pg_catalog.pg_has_role(me.oid, c.relowner, 'USAGE') END,
       ARRAY(SELECT DISTINCT pg_catalog.json_build_array(rn.nspname, rc.relname, rc.relkind)::text
               FROM pg_catalog.pg_rewrite w JOIN pg_catalog.pg_depend d ON d.objid = w.oid
               JOIN pg_catalog.pg_class rc ON rc.oid = d.refobjid
               JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
              WHERE w.ev_class = c.oid AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> c.oid
             UNION  -- (pg_depend records no system catalog: pinned)
             SELECT '["pg_catalog", "pg_statistic", "r"]' WHERE pg_catalog.pg_get_viewdef(c.oid) ~* 'pg_statistic'),
       ARRAY(SELECT DISTINCT d.refobjid::int8
               FROM pg_catalog.pg_rewrite w JOIN pg_catalog.pg_depend d ON d.objid = w.oid
               JOIN pg_catalog.pg_proc fp ON fp.oid = d.refobjid
               JOIN pg_catalog.pg_namespace fn ON fn.oid = fp.pronamespace
              WHERE w.ev_class = c.oid AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                AND (fn.nspname NOT IN ('pg_catalog', 'information_schema') OR fp.oid >= 16384))
{_RELATIONS_FROM} WHERE c.relkind IN ('v', 'm') AND {_SYSTEM_C}
   AND NOT coalesce((SELECT pg_catalog.lower(x.option_value) IN ({_TRUE})
                       FROM pg_catalog.pg_options_to_table(c.reloptions) x
                      WHERE x.option_name = 'security_invoker'), false)
 ORDER BY 2, 3
"""

# What the role `owner` reads of each relation (schema, name): its kind and RLS state, whether it is (a member of)
# the relation's owner, whether it may read it at all (SELECT), whether it may look its name up (USAGE on its
# schema), and the policies that apply to it.
_OWNER_READS = """
SELECT t.s, t.r, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity,
       pg_catalog.pg_has_role(o.oid, c.relowner, 'USAGE'),
       pg_catalog.has_any_column_privilege(o.oid, c.oid, 'SELECT'),
       pg_catalog.has_schema_privilege(o.oid, c.relnamespace, 'USAGE'),
       ARRAY(SELECT pg_catalog.json_build_array(p.polname, p.polpermissive, p.polcmd::text,
                                                pg_catalog.pg_get_expr(p.polqual, p.polrelid))::text
               FROM pg_catalog.pg_policy p
              WHERE p.polrelid = c.oid AND (0 = ANY (p.polroles) OR EXISTS (
                    SELECT 1 FROM unnest(p.polroles) AS x(oid) WHERE pg_catalog.pg_has_role(o.oid, x.oid, 'USAGE')))
              ORDER BY p.polname)
  FROM ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) AS t(s, r)
  JOIN pg_catalog.pg_namespace n ON n.nspname = t.s
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.r
  JOIN pg_catalog.pg_roles o ON o.rolname = %s
"""

# Red team 21d F9: a LEAKPROOF function runs before row security's quals (and the proxy's filter) on every row the
# scan reads, so what it raises or logs of its arguments shows other tenants' values. Every one outside PostgreSQL's
# own (`_system`) that `role` may execute, with its extension (if a member) and whether through PUBLIC.
_LEAKPROOF = f"""
WITH me AS (SELECT (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = %(role)s) AS oid)
SELECT n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
       pg_catalog.oidvectortypes(p.proargtypes),
       (SELECT e.extname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
           AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e' LIMIT 1),
       pub.x
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  CROSS JOIN me
  CROSS JOIN LATERAL (SELECT EXISTS (
       SELECT 1 FROM pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS x) pub
 WHERE p.proleakproof AND {_SYSTEM_P}
   AND CASE WHEN me.oid IS NULL THEN pub.x ELSE pg_catalog.has_function_privilege(me.oid, p.oid, 'EXECUTE') END
 ORDER BY 1, 2, 3
"""

# dblink's functions: the members of extension dblink, and any C function of its library wherever it is (red team
# 22v V2: `ALTER EXTENSION dblink DROP FUNCTION …` leaves the function out of the extension; a superuser's copy
# `CREATE FUNCTION … AS '$libdir/dblink', 'dblink_record'` is none of its members), or any C function of one of its
# symbols (`dblink_*`) whatever the library's file name (red team 22w W2: a symlink to dblink.so).
_DBLINK_FUNCTIONS = r"""
WITH dblink_functions AS (
  SELECT d.objid FROM pg_catalog.pg_extension e
    JOIN pg_catalog.pg_depend d ON d.refobjid = e.oid
     AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
     AND d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.deptype = 'e'
   WHERE e.extname = 'dblink'
  UNION
  SELECT p.oid FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
   WHERE l.lanname = 'c' AND (p.probin ~ '(^|/)dblink(\.[a-z]+)?$' OR p.prosrc ~ '^dblink')
)"""

# Red team 21w W7: dblink's functions connect with the credentials a connection string or a foreign server's user
# mapping carries and run SQL there as that user; its script grants them (not dblink_connect_u) to PUBLIC. Code a
# role runs whose body pgtenant cannot read (a function that is not BEGIN ATOMIC, plpgsql's dynamic SQL) may call
# them: each member of extension dblink (quoted signature, as a REVOKE takes it), whether through PUBLIC, and whether
# `role` may execute it (a role that does not exist yet: through PUBLIC).
_DBLINK = _DBLINK_FUNCTIONS + """,
me AS (SELECT (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = %(role)s) AS oid)
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(p.proname) || '('
       || pg_catalog.oidvectortypes(p.proargtypes) || ')', pub.x,
       CASE WHEN me.oid IS NULL THEN pub.x ELSE pg_catalog.has_function_privilege(me.oid, p.oid, 'EXECUTE') END
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  CROSS JOIN me
  CROSS JOIN LATERAL (SELECT EXISTS (
       SELECT 1 FROM pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS x) pub
 WHERE p.oid IN (SELECT objid FROM dblink_functions)
 ORDER BY 1
"""

# The roles of `owners` that may execute a member of extension dblink.
_DBLINK_USERS = _DBLINK_FUNCTIONS + """
SELECT DISTINCT o.rolname FROM pg_catalog.pg_roles o JOIN dblink_functions d ON true
 WHERE o.rolname = ANY(%s::text[]) AND pg_catalog.has_function_privilege(o.oid, d.objid, 'EXECUTE')
"""

_KINDS = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}


@dataclass(frozen=True, slots=True)
class Owner:
    """The role code runs as."""

    name: str
    superuser: bool = False
    bypassrls: bool = False


@dataclass(frozen=True, slots=True)
class RelRead:
    """What an owner reads of one tenant-scoped relation (as `_OWNER_READS` tells it)."""

    schema: str
    table: str
    kind: str = "r"
    rls: bool = True
    force: bool = True
    owns: bool = False  # the owner is (a member of) the relation's owner
    readable: bool = True  # SELECT on it or a column
    policies: tuple[access.PolicyFact, ...] = ()  # those that apply to the owner
    # USAGE on its schema: PostgreSQL checks it only when a name is looked up (a non-atomic body, run time), not when
    # a view's stored query, a REFRESH or a BEGIN ATOMIC body runs (red team 21d F4)
    usage: bool = True

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class Routine:
    """A SECURITY DEFINER function or procedure (`_FUNCTIONS`)."""

    oid: int
    signature: str  # schema.name(identity arguments)
    kind: str  # FUNCTION or PROCEDURE (for the fix's SQL)
    owner: Owner
    extension: str | None = None
    public: bool = False  # EXECUTE through PUBLIC (the default)
    usable: bool = True  # the backend role may execute it
    member: bool = False  # the backend role is a member of its owner
    atomic: bool = False  # a SQL-standard body: pg_depend says what it reads
    reads: tuple[tuple[str, str, str], ...] = ()  # (schema, name, relkind) its atomic body depends on
    calls: tuple[int, ...] = ()  # functions outside the system schemas its atomic body calls
    trigger_on: str | None = None  # a table the backend role may write whose trigger runs it (no EXECUTE checked)
    aggregate: str | None = None  # an aggregate the backend role may run that calls it (checked as its owner)
    schema: str = ""
    name: str = ""
    args: tuple[str, ...] = ()  # its identity arguments and its argument types, as PostgreSQL prints them

    @property
    def reached(self) -> bool:
        """The backend role can make it run: EXECUTE, or a trigger or aggregate that runs it."""
        return self.usable or self.trigger_on is not None or self.aggregate is not None


@dataclass(frozen=True, slots=True)
class View:
    """A view without security_invoker, or a materialized view (`_VIEWS`)."""

    oid: int
    schema: str
    name: str
    kind: str  # v or m
    owner: Owner
    extension: str | None = None
    public: bool = False
    usable: bool = True
    member: bool = False
    reads: tuple[tuple[str, str, str], ...] = ()
    calls: tuple[int, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Found:
    """What the check found: errors (refuse the start, a provision problem) and warnings (extension members)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def unbound(owner: Owner, rel: RelRead, pinned: frozenset[str] = frozenset(),
            lookup: bool = False) -> tuple[str, str] | None:
    """Why row security does not keep `owner` to one tenant's rows of `rel` ("error" or "warning" level, the
    reason), or None when it does (it may not read it, or a policy keyed on a setting the proxy pins (`pinned`,
    lower case) or on the login holds it, or no policy lets it read). `lookup`: code that looks the name up when it
    runs (a non-atomic body), which needs USAGE on the schema too."""
    if owner.superuser:
        return "error", "a superuser: row-level security and grants do not apply to it"
    if not rel.readable or (lookup and not rel.usage):
        return None
    if rel.kind not in ("r", "p"):
        return "error", f"{rel.name} is {_KINDS.get(rel.kind, 'not a table')}, which row-level security does not filter"
    reader = access.Reader(owner.name, owner.bypassrls, rel.owns, rel.policies)
    got = access.access(reader, rel.rls, rel.force)
    if got.level == "forgeable":
        keyed = [access.policy_key(p.qual) for p in rel.policies if p.permissive and p.cmd in ("r", "*")]
        if all(key != "setting" or set(settings) <= pinned for key, settings in keyed):
            return None  # the setting it reads is the one the proxy pins for the session
        return "error", f"{got.why}: on {rel.name}"
    if got.level == "all":
        return "error", f"{rel.name}: {got.why}"
    if got.level == "unproven":
        return "warning", f"{rel.name}: {got.why}"
    return None


def _first(owner: Owner, rels: Iterable[RelRead], pinned: frozenset[str],
           lookup: bool = False) -> tuple[str, str] | None:
    """The widest opening of `owner` on `rels` (an error before a warning), if any."""
    found = [u for u in (unbound(owner, r, pinned, lookup) for r in rels) if u is not None]
    return min(found, key=lambda u: u[0] != "error") if found else None


# System catalogs that hold copies of every table's column values (most common values, histograms): read by a
# superuser owner, they show other tenants' values (red team 20b F3: a definer view over pg_statistic). pg_depend
# records no dependency on a system catalog (pinned): the view's or the body's text names it (`_VIEWS`, `_FUNCTIONS`).
STATISTICS = frozenset({("pg_catalog", "pg_statistic"), ("pg_catalog", "pg_statistic_ext_data")})


def _reads_statistics(reads: Iterable[tuple[str, str, str]]) -> bool:
    return any((s, n) in STATISTICS for s, n, _ in reads)


def judge(role: str, routines: Iterable[Routine], views: Iterable[View],
          reads: Mapping[str, Mapping[tuple[str, str], RelRead]], scoped: Iterable[tuple[str, str]],
          pinned: frozenset[str] = frozenset(), trusted: Iterable[str] = (),
          materialized: Mapping[int, str] | None = None, sql_text: frozenset[tuple[str, int]] = frozenset(),
          owner_uses: Mapping[str, frozenset[int]] | None = None,
          dblink_users: frozenset[str] = frozenset(), stored_users: Mapping[str, str] | None = None) -> Found:
    """The problems of backend role `role`: each routine and view it can use whose owner reads other tenants' rows
    of `scoped` (`reads[owner][relation]`, as that owner reads it). A routine of any language but a SQL-standard
    body is assumed to read anything; an atomic one what it depends on (or anything, if it calls a function outside
    the system schemas or reads a view). A view reads what its query depends on, the views it reads included, and
    leaks what a SECURITY DEFINER function it calls (and `role` may run) leaks. A materialized view of
    `materialized` (`Graph.materialized`: its stored rows may hold other tenants' whatever its owner) is an error
    as such. A routine ("fn", oid) or view ("rel", oid) of `sql_text` runs SQL text (SQL_TEXT_BUILTINS): read
    anything. `owner_uses[owner]`: the views it may SELECT and the SECURITY DEFINER routines it may EXECUTE (of
    `views` and `routines`): a routine whose owner row security binds still leaks when its body (any, for a body
    that is not BEGIN ATOMIC) reads through one of them that leaks (review 21 F4). A routine whose owner is one of
    `dblink_users` (may execute dblink's functions) and whose body may call it (any but a BEGIN ATOMIC body that
    calls no function outside the system schemas) reads with stored credentials (red team 21w W7): an error, in a
    database with no scoped relation too; and so does one whose owner may read a relation of `stored_users[owner]`
    (a foreign table not itself scoped, or a view reaching one: `read_stored_users`; red team 22d R2). Extension
    members are warnings,
    and so are the objects a `trusted` entry (`[preflight]
    trusted_definers`, as PostgreSQL reads the name) names."""
    vouched = [parse_qualified(t) for t in trusted]
    scoped_set = set(scoped)
    routines, views = list(routines), list(views)
    found = Found()
    opening: dict[int, tuple[str, str]] = {}  # oid -> (level, why): routines and views that leak
    for r in routines:
        mine = reads.get(r.owner.name, {})
        if (r.atomic and not r.calls and not any(k in ("v", "m") for _, _, k in r.reads)
                and not _reads_statistics(r.reads) and ("fn", r.oid) not in sql_text):
            rels = [mine[(s, n)] for s, n, _ in r.reads if (s, n) in mine and (s, n) in scoped_set]
        else:
            rels = [mine[rel] for rel in sorted(scoped_set) if rel in mine]
        got = _first(r.owner, rels, pinned, lookup=not r.atomic)
        if got is None and r.owner.name in dblink_users and not (r.atomic and not r.calls):
            got = ("error", f"{_DBLINK_WHY}; its body may call them")
        if got is None and r.owner.name in (stored_users or {}) and not (r.atomic and not r.calls):
            ft = (stored_users or {})[r.owner.name]
            got = ("error", f"it may read {ft}, which reads with stored credentials (a foreign server's user "
                            f"mapping), not row security of this database, and its body may: add the tenant column to "
                            f"{ft} (the proxy then filters it) or REVOKE SELECT ON {ft} FROM {r.owner.name}")
        if got is not None:
            opening[r.oid] = got
    stored = dict(materialized or {})
    opening.update({oid: ("error", why) for oid, why in stored.items()})
    viewed = {v.oid: v for v in views}
    usable = {r.oid for r in routines if r.reached}
    uses = owner_uses or {}
    # (what the operator accepted — an extension's member, an object trusted_definers vouches for — is not assumed to
    # be read through by every body that may: an RLS helper executable by PUBLIC would make every routine an error)
    accepted = {r.oid for r in routines if r.extension or any(q.matches(r.schema, r.name, r.args) for q in vouched)}
    accepted |= {v.oid for v in views if v.extension
                 or any(q.args is None and q.matches(v.schema, v.name) for q in vouched)}
    changed = True
    while changed:  # a view over a leaking view leaks (its owner reads that view's rows)
        changed = False
        for r in routines:  # ... and a routine whose owner reads through a leaking view or routine (review 21 F4)
            if r.oid in opening:
                continue
            through = uses.get(r.owner.name, frozenset()) - accepted if not r.atomic else frozenset(r.calls) | {
                w.oid for w in views if (w.schema, w.name, w.kind) in r.reads}
            inner = sorted(o for o in through if o in opening and o != r.oid)
            if inner:
                what = next((f"calls {x.signature}" for x in routines if x.oid == inner[0]), None) or (
                    f"reads {viewed[inner[0]].qualified}" if inner[0] in viewed else "reads through another")
                opening[r.oid] = (opening[inner[0]][0], f"its body may: it {what}, which reads other tenants' rows "
                                  "as its owner")
                changed = True
        for v in views:
            if v.oid in opening or (v.schema, v.name) in scoped_set:
                continue
            mine = reads.get(v.owner.name, {})
            if (v.kind == "m" and (v.calls or any(k in ("v", "m") for _, _, k in v.reads))) or \
                    _reads_statistics(v.reads) or ("rel", v.oid) in sql_text:
                # a materialized view's query ran as its owner at REFRESH, through every view under it (invoker ones
                # too) and every function it calls (any security): assumed to have read anything (review 20 F0)
                rels = [mine[rel] for rel in sorted(scoped_set) if rel in mine]
            else:
                rels = [mine[(s, n)] for s, n, _ in v.reads if (s, n) in scoped_set and (s, n) in mine]
            got = _first(v.owner, rels, pinned)
            if got is None:
                # a function a view calls runs as the reader, who needs EXECUTE on it: only a usable one counts
                inner = [o for o in v.calls if o in opening and o in usable] + [
                    w.oid for w in views if w.oid in opening and (w.schema, w.name, w.kind) in v.reads]
                if inner:
                    what = next((f"calls {x.signature}" for x in routines if x.oid == inner[0]), None) or (
                        f"reads {viewed[inner[0]].qualified}")
                    got = (opening[inner[0]][0], f"it {what}, which reads other tenants' rows as its owner")
            if got is not None:
                opening[v.oid] = got
                changed = True
    for r in routines:
        if r.oid not in opening or not r.reached:
            continue
        level, why = opening[r.oid]
        how = ("EXECUTE through PUBLIC, the default" if r.public and r.usable else
               "a member of its owner" if r.member else
               "EXECUTE granted to it or to a role it is a member of" if r.usable else
               f"a trigger of {r.trigger_on}, which it may write; a trigger's function runs without an EXECUTE check"
               if r.trigger_on is not None else
               f"the aggregate {r.aggregate} calls it, which it may run; PostgreSQL checks the aggregate owner's "
               "EXECUTE")
        body = "" if r.atomic else (
            " (its body is assumed to read any table: only a BEGIN ATOMIC body's reads are known)")
        revoke = f"REVOKE EXECUTE ON {r.kind} {r.signature} FROM PUBLIC" if r.public else (
            f"REVOKE EXECUTE ON {r.kind} {r.signature} FROM {role} (or the role it has it through)")
        grant = " and GRANT EXECUTE to the application's roles only" if r.usable else ""
        if not r.usable:
            revoke = (f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {r.trigger_on} FROM {role} (and PUBLIC)"
                      if r.trigger_on is not None else f"REVOKE EXECUTE ON FUNCTION {r.aggregate} FROM {role} "
                      "(and PUBLIC)")
        text = (f"{r.kind.lower()} {r.signature} runs with its owner's rights (SECURITY DEFINER) and its owner "
                f"{r.owner.name!r} is not bound by row security ({why}){body}; the backend role {role!r} may run "
                f"it ({how}), so it reads other tenants' rows whatever the proxy rewrites (a call, or a cast, "
                f"operator, domain CHECK, default, trigger, policy or json output that runs it). Fix: {revoke}"
                f"{grant}; or ALTER {r.kind} {r.signature} SECURITY INVOKER; or "
                "an owner row security binds (not a superuser nor BYPASSRLS, FORCE ROW LEVEL SECURITY on the "
                "tables it owns)")
        _add(found, level, r.extension, text, any(q.matches(r.schema, r.name, r.args) for q in vouched))
    for v in views:
        if v.oid not in opening or not v.usable:
            continue
        level, why = opening[v.oid]
        how = ("SELECT granted to PUBLIC" if v.public else "a member of its owner" if v.member else
               "SELECT granted to it or to a role it is a member of")
        revoke = f"REVOKE SELECT ON {v.qualified} FROM PUBLIC" if v.public else (
            f"REVOKE SELECT ON {v.qualified} FROM {role} (or the role it has it through)")
        if v.oid in stored:
            text = (f"materialized view {v.qualified} holds STORED rows: what its owner read at its last REFRESH, "
                    f"with the rights it had then (before provision forced row security, say), through any function "
                    f"run as that owner; row security never applies when it is read ({stored[v.oid]}), whatever its "
                    f"owner {v.owner.name!r} may read now; the backend role {role!r} may read it ({how}), so it may "
                    f"show other tenants' rows whatever the proxy rewrites. Fix: add the tenant column to it (the "
                    f"proxy then filters it as a tenant-scoped relation); or {revoke}; or vouch for it in "
                    "[preflight] trusted_definers")
            _add(found, "error", v.extension, text,
                 any(q.args is None and q.matches(v.schema, v.name) for q in vouched))
            continue
        if v.kind == "m":
            what = "materialized view"
            fix = f"{revoke} (a materialized view holds what its owner read at REFRESH)"
        else:
            what = "view"
            fix = (f"ALTER VIEW {v.qualified} SET (security_invoker = true); or {revoke}; or an owner row security "
                   "binds (not a superuser nor BYPASSRLS, FORCE ROW LEVEL SECURITY on the tables it owns)")
        text = (f"{what} {v.qualified} reads its tables with its owner's rights (no security_invoker) and its owner "
                f"{v.owner.name!r} is not bound by row security ({why}); the backend role {role!r} may read it "
                f"({how}), so it shows other tenants' rows whatever the proxy rewrites. Fix: {fix}")
        _add(found, level, v.extension, text,
             any(q.args is None and q.matches(v.schema, v.name) for q in vouched))
    return found


_DBLINK_WHY = ("it may execute the functions of extension dblink, which connect with the credentials a connection "
               "string or a foreign server's user mapping carries and run SQL there as that user (REVOKE them from it)")


@dataclass(frozen=True, slots=True)
class DblinkFunction:
    """A member of extension dblink (`_DBLINK`)."""

    signature: str  # quoted, with its argument types: as a REVOKE takes it
    public: bool = True  # EXECUTE through PUBLIC
    usable: bool = True  # the backend role may execute it


def judge_dblink(role: str, functions: Iterable[DblinkFunction]) -> Found:
    """Red team 21w W7: the backend role `role` may execute a member of extension dblink: an error (in every
    database). Code it runs whose body pgtenant cannot read (a function that is not BEGIN ATOMIC, plpgsql's dynamic
    SQL, a view calling one: PostgreSQL checks EXECUTE as the reader) may call it with stored credentials; no
    narrower rule is sound (scanning bodies for dblink misses dynamic SQL)."""
    found = Found()
    usable = [f for f in functions if f.usable]
    if not usable:
        return found
    public = [f.signature for f in usable if f.public]
    granted = [f.signature for f in usable if not f.public]
    how = ("EXECUTE through PUBLIC, the default of dblink's script" if public else
           "EXECUTE granted to it or to a role it is a member of")
    fixes = ([f"REVOKE EXECUTE ON FUNCTION {', '.join(public)} FROM PUBLIC"] if public else []) + (
        [f"REVOKE EXECUTE ON FUNCTION {', '.join(granted)} FROM {role} (or the role it has it through)"]
        if granted else [])
    found.errors.append(
        f"the backend role {role!r} may execute the functions of extension dblink ({how}: {len(usable)} of them), "
        "which connect with the credentials a connection string or a foreign server's user mapping carries and run "
        "SQL there as that user: code it runs whose body pgtenant cannot read (a function that is not BEGIN ATOMIC, "
        "plpgsql's dynamic SQL; a view calling one) may call them and read any tenant's rows, of this database or "
        f"another, whatever the proxy rewrites. Fix: {'; '.join(fixes)}; and GRANT EXECUTE to the application's "
        "roles only")
    return found


@dataclass(frozen=True, slots=True)
class Leakproof:
    """A LEAKPROOF function the backend role may execute (`_LEAKPROOF`)."""

    schema: str
    name: str
    args: tuple[str, str]  # identity arguments, argument types
    extension: str | None = None
    public: bool = True

    @property
    def signature(self) -> str:
        return f"{self.schema}.{self.name}({self.args[0]})"


def judge_leakproof(role: str, functions: Iterable[Leakproof], trusted: Iterable[str] = ()) -> Found:
    """Each LEAKPROOF function `role` may run is an error (an extension's member, or one a `trusted` entry names, a
    warning): PostgreSQL runs it ahead of row security's quals, on other tenants' rows (red team 21d F9)."""
    vouched = [parse_qualified(t) for t in trusted]
    found = Found()
    for f in functions:
        how = ("EXECUTE through PUBLIC, the default" if f.public else
               "EXECUTE granted to it or to a role it is a member of")
        revoke = f"REVOKE EXECUTE ON FUNCTION {f.signature} FROM {'PUBLIC' if f.public else role}"
        text = (f"function {f.signature} is marked LEAKPROOF, so PostgreSQL runs it before row-level security's "
                f"quals (and the proxy's filter), on other tenants' rows too: whatever it raises or logs of its "
                f"arguments (a NOTICE, an error) shows their values; the backend role {role!r} may run it ({how}). "
                f"Fix: ALTER FUNCTION {f.signature} NOT LEAKPROOF (or {revoke})")
        _add(found, "error", f.extension, text, any(q.matches(f.schema, f.name, f.args) for q in vouched))
    return found


def _add(found: Found, level: str, extension: str | None, text: str, trusted: bool = False) -> None:
    if trusted:  # the operator vouches for it ([preflight] trusted_definers): reported, not counted
        found.warnings.append(f"{text} (vouched for by [preflight] trusted_definers: a warning, not an error)")
    elif extension is not None:
        found.warnings.append(f"{text} (a member of extension {extension!r}: a warning, not an error; drop or "
                              "update the extension, or revoke as said)")
    elif level == "error":
        found.errors.append(text)
    else:
        found.warnings.append(f"{text} (not counted as an error: pgtenant cannot read that policy)")


# --- reading the catalogs ------------------------------------------------------------------------------------


def _rels(raw: Iterable[str]) -> tuple[tuple[str, str, str], ...]:
    return tuple(sorted({(str(a), str(b), str(c)) for a, b, c in (json.loads(x) for x in raw)}))


def read_routines(conn: psycopg.Connection, role: str) -> list[Routine]:
    atomic = "p.prosqlbody IS NOT NULL" if conn.info.server_version >= 140000 else "false"
    rows = conn.execute(_FUNCTIONS.replace("{atomic}", atomic), {"role": role}).fetchall()
    return [Routine(int(oid), f"{schema}.{name}({args})", kind, Owner(owner, bool(sup), bool(byp)), ext, bool(pub),
                    bool(usable), bool(member), bool(atom), _rels(reads), tuple(int(c) for c in calls), trig, agg,
                    schema, name, (args, types))
            for (oid, schema, name, args, types, kind, owner, sup, byp, ext, pub, usable, member, atom, trig, agg,
                 reads, calls) in rows]


def read_views(conn: psycopg.Connection, role: str) -> list[View]:
    rows = conn.execute(_VIEWS, {"role": role}).fetchall()
    return [View(int(oid), schema, name, kind, Owner(owner, bool(sup), bool(byp)), ext, bool(pub), bool(usable),
                 bool(member), _rels(reads), tuple(int(c) for c in calls))
            for oid, schema, name, kind, owner, sup, byp, ext, pub, usable, member, reads, calls in rows]


def read_dblink(conn: psycopg.Connection, role: str) -> list[DblinkFunction]:
    return [DblinkFunction(str(sig), bool(pub), bool(usable))
            for sig, pub, usable in conn.execute(_DBLINK, {"role": role}).fetchall()]


def read_dblink_users(conn: psycopg.Connection, owners: Iterable[str]) -> frozenset[str]:
    """The roles of `owners` that may execute a member of extension dblink."""
    return frozenset(str(o) for (o,) in conn.execute(_DBLINK_USERS, (sorted(set(owners)),)).fetchall())


def read_leakproof(conn: psycopg.Connection, role: str) -> list[Leakproof]:
    return [Leakproof(schema, name, (args, types), ext, bool(pub))
            for schema, name, args, types, ext, pub in conn.execute(_LEAKPROOF, {"role": role}).fetchall()]


def read_owner(conn: psycopg.Connection, owner: str, rels: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RelRead]:
    rels = sorted(set(rels))
    rows = conn.execute(_OWNER_READS, ([r[0] for r in rels], [r[1] for r in rels], owner)).fetchall()
    out: dict[tuple[str, str], RelRead] = {}
    for s, t, kind, rls, force, owns, readable, usage, raw in rows:
        policies = tuple(access.PolicyFact(p[0], bool(p[1]), p[2], p[3]) for p in (json.loads(x) for x in raw))
        out[(s, t)] = RelRead(s, t, kind, bool(rls), bool(force), bool(owns), bool(readable), policies, bool(usage))
    return out


# (SELECT on the view or one of its columns: a column grant reads those columns, red team 22d R1)
_OWNER_USES = """
SELECT c.oid::int8 FROM pg_catalog.pg_class c
 WHERE c.oid = ANY(%(views)s::oid[]) AND pg_catalog.has_any_column_privilege(%(owner)s, c.oid, 'SELECT')
UNION ALL
SELECT p.oid::int8 FROM pg_catalog.pg_proc p
 WHERE p.oid = ANY(%(routines)s::oid[]) AND pg_catalog.has_function_privilege(%(owner)s, p.oid, 'EXECUTE')
"""


# Red team 22d R2: for each role of `owners`, the relations of `rels` (read with stored credentials) it may read and
# look up by name (USAGE on the schema: a body that is not BEGIN ATOMIC looks the name up), first by name.
_STORED_USERS = """
SELECT DISTINCT ON (o.rolname) o.rolname, n.nspname || '.' || c.relname
  FROM pg_catalog.pg_roles o JOIN pg_catalog.pg_class c ON c.oid = ANY(%(rels)s::oid[])
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE o.rolname = ANY(%(owners)s::text[]) AND pg_catalog.has_any_column_privilege(o.oid, c.oid, 'SELECT')
   AND pg_catalog.has_schema_privilege(o.oid, c.relnamespace, 'USAGE')
 ORDER BY o.rolname, 2
"""


def read_stored_users(conn: psycopg.Connection, owners: Iterable[str], graph: Graph) -> dict[str, str]:
    """For each role of `owners` that may read one, the first relation not itself scoped that reads with stored
    credentials: a foreign table, or a view or materialized view whose query reaches one (or dblink)."""
    rels = sorted(n.oid for n in graph.relations.values() if n.name not in graph.scoped
                  and (n.kind == "f" or graph.reach(n).stored is not None))
    if not rels or not owners:
        return {}
    rows = conn.execute(_STORED_USERS, {"rels": rels, "owners": sorted(set(owners))}).fetchall()
    return {str(o): str(name) for o, name in rows}


def read_owner_uses(conn: psycopg.Connection, owners: Iterable[str], views: Iterable[int],
                    routines: Iterable[int]) -> dict[str, frozenset[int]]:
    """For each routine owner, the views of `views` it may SELECT and the routines of `routines` it may EXECUTE."""
    keys = {"views": sorted(set(views)), "routines": sorted(set(routines))}
    if not keys["views"] and not keys["routines"]:
        return {}
    return {o: frozenset(int(x) for (x,) in conn.execute(_OWNER_USES, {**keys, "owner": o}).fetchall())
            for o in sorted(set(owners))}


def check(conn: psycopg.Connection, role: str, scoped: Iterable[tuple[str, str]],
          pinned: frozenset[str] = frozenset(), forced: Mapping[tuple[str, str], Iterable[str]] | None = None,
          trusted: Iterable[str] = (), columns: Iterable[str] = ()) -> Found:
    """Read the catalogs and `judge` backend role `role` against the tenant-scoped relations `scoped`. `forced`
    (provision): relations that will have forced RLS with pgtenant's policy TO the given roles only, judged as they
    will be. An inheritance parent of a scoped relation that is not scoped itself, or without the tenant `columns`
    of a descendant with one in any schema, reads that relation's rows of every tenant under its own row security
    (proxy/inherits.py): it counts as scoped, but for a view or materialized view whose query reads it only as
    `ONLY parent` (its own rows: `inherits.only_reads`)."""
    held = inherits.holders(conn, scoped, columns)
    scoped = sorted(set(scoped) | set(held))
    graph = read_graph(conn, role, scoped)
    routines, views = read_routines(conn, role), read_views(conn, role)
    only = inherits.only_reads(conn, [n.oid for n in graph.relations.values()
                                      if any((s, t) in held for _, s, t, _ in n.reads)], held)
    if only:
        graph = Graph([replace(n, reads=tuple(r for r in n.reads if (r[1], r[2]) not in only.get(n.oid, ())))
                       for n in graph.relations.values()], graph.functions.values(), scoped)
        views = [replace(v, reads=tuple(r for r in v.reads if (r[0], r[1]) not in only.get(v.oid, ())))
                 for v in views]
    owner_uses = read_owner_uses(conn, {r.owner.name for r in routines}, [v.oid for v in views],
                                 [r.oid for r in routines])
    dblink_users = read_dblink_users(conn, {r.owner.name for r in routines})
    stored_users = read_stored_users(conn, {r.owner.name for r in routines}, graph)
    dblink = judge_dblink(role, read_dblink(conn, role))
    if not scoped:  # (a database tenant alone in its database: stored credentials reach other databases)
        found = judge(role, routines, views, {}, (), pinned, trusted, owner_uses=owner_uses,
                      dblink_users=dblink_users, stored_users=stored_users)
        for more in (judge_stored(role, graph, trusted), dblink):
            found.errors.extend(more.errors)
            found.warnings.extend(more.warnings)
        return found
    owners = {r.owner.name for r in routines} | {v.owner.name for v in views}
    reads = {o: read_owner(conn, o, scoped) for o in sorted(owners)}
    if forced:
        for o, mine in reads.items():
            for rel, roles in forced.items():
                if rel in mine:
                    got = mine[rel]
                    keep = tuple(p for p in got.policies if p.name != access.OWN_POLICY or o in set(roles))
                    mine[rel] = RelRead(got.schema, got.table, got.kind, True, True, got.owns, got.readable, keep,
                                        got.usage)
    materialized = graph.materialized()
    sql_text = frozenset({("fn", n.oid) for n in graph.functions.values() if n.runs_sql}
                         | {("rel", n.oid) for n in graph.relations.values() if n.runs_sql})
    found = judge(role, routines, views, reads, scoped, pinned, trusted, materialized, sql_text, owner_uses,
                  dblink_users, stored_users)
    for more in (dblink, judge_leakproof(role, read_leakproof(conn, role), trusted),
                 judge_stored(role, graph, trusted, materialized),
                 judge_unfiltered(role, graph, trusted, materialized),
                 judge_opaque(role, graph, trusted, materialized)):
        found.errors.extend(more.errors)
        found.warnings.extend(more.warnings)
    return found


# --- stored rows and stored credentials (issue 18, red team 21d F1, F2, F5, F7) ---------------------------------
# A materialized view's rows are STORED: row security never applies when it is read, and they are what its owner
# (with whatever rights it had then, e.g. before provision forced RLS) read at its last REFRESH, through any
# function, EXECUTE checked as that owner. Its owner's rights now prove nothing. A foreign table, and dblink, read
# with STORED CREDENTIALS (a user mapping, a connection string): the remote user is unknown here, and a
# cross-database reach needs no scoped relation in this database.

# Built-ins that run SQL text given to them: the relations that text names leave no pg_depend row. Found in the
# stored query (ev_action, prosqlbody) by `:funcid <oid>` (pinned: no pg_depend row either), as dbcheck's `_REACHED`.
SQL_TEXT_BUILTINS = frozenset({
    "ts_stat", "ts_rewrite", "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
    "cursor_to_xmlschema", "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema", "schema_to_xml",
    "schema_to_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml", "database_to_xmlschema",
    "database_to_xml_and_xmlschema"})

_RUNS_SQL = r"""(':(funcid|aggfnoid|winfnoid|opfuncid) (' || coalesce((SELECT pg_catalog.string_agg(b.oid::text, '|')
    FROM pg_catalog.pg_proc b WHERE b.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
     AND b.proname = ANY(%(sql_text)s::text[])), '0') || ')[^0-9]')"""

# What a dependency row (`d`) calls: a function outside the system schemas, directly, by an operator or by a cast.
_CALLED = """
    LEFT JOIN pg_catalog.pg_operator o ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
                                      AND o.oid = d.refobjid
    LEFT JOIN pg_catalog.pg_cast k ON d.refclassid = 'pg_catalog.pg_cast'::pg_catalog.regclass AND k.oid = d.refobjid
    JOIN pg_catalog.pg_proc fp ON fp.oid = CASE WHEN d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                                                THEN d.refobjid ELSE COALESCE(o.oprcode::pg_catalog.oid, k.castfunc) END
    JOIN pg_catalog.pg_namespace fn ON fn.oid = fp.pronamespace
                                   AND (fn.nspname NOT IN ('pg_catalog', 'information_schema') OR fp.oid >= 16384)
"""

_EXTENSION = """(SELECT e.extname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.classid = '{cls}'::pg_catalog.regclass AND d.objid = {oid}
           AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e' LIMIT 1)"""

# Every view (any security), materialized view and foreign table outside the system schemas: whether `role` may
# read it (as `_VIEWS`), and what its query reads (relations) and calls, directly; whether it runs SQL text.
_GRAPH_RELATIONS = f"""
WITH me AS (SELECT (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = %(role)s) AS oid)
SELECT c.oid::int8, n.nspname || '.' || c.relname, c.relkind::text, o.rolname,
       {_EXTENSION.format(cls='pg_catalog.pg_class', oid='c.oid')},
       pub.x,
       CASE WHEN me.oid IS NULL THEN pub.x AND EXISTS (
              SELECT 1 FROM pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
               WHERE a.grantee = 0 AND a.privilege_type = 'USAGE')
            ELSE pg_catalog.has_any_column_privilege(me.oid, c.oid, 'SELECT')
                 AND pg_catalog.has_schema_privilege(me.oid, c.relnamespace, 'USAGE') END,
       CASE WHEN me.oid IS NULL THEN false ELSE pg_catalog.pg_has_role(me.oid, c.relowner, 'USAGE') END,
       ARRAY(SELECT DISTINCT pg_catalog.json_build_array(rc.oid::int8, rn.nspname, rc.relname, rc.relkind)::text
               FROM pg_catalog.pg_rewrite w JOIN pg_catalog.pg_depend d ON d.objid = w.oid
               JOIN pg_catalog.pg_class rc ON rc.oid = d.refobjid
               JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
              WHERE w.ev_class = c.oid AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> c.oid),
       ARRAY(SELECT DISTINCT fp.oid::int8
               FROM pg_catalog.pg_rewrite w JOIN pg_catalog.pg_depend d ON d.objid = w.oid {_CALLED}
              WHERE w.ev_class = c.oid AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass),
       EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w WHERE w.ev_class = c.oid AND w.ev_action::text ~ {_RUNS_SQL}),
       n.nspname, c.relname
{_RELATIONS_FROM} WHERE c.relkind IN ('v', 'm', 'f') AND {_SYSTEM_C}
"""

# Every function outside the system schemas: whether `role` may execute it, its extension, whether its body is
# SQL-standard (BEGIN ATOMIC: pg_depend says what it reads and calls) and runs SQL text.
_GRAPH_FUNCTIONS = f"""
WITH me AS (SELECT (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = %(role)s) AS oid)
SELECT p.oid::int8, n.nspname || '.' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid)
       || ')', o.rolname, {_EXTENSION.format(cls='pg_catalog.pg_proc', oid='p.oid')},
       CASE WHEN me.oid IS NULL THEN EXISTS (
              SELECT 1 FROM pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
               WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
            ELSE pg_catalog.has_function_privilege(me.oid, p.oid, 'EXECUTE') END,
       {{atomic}},
       ARRAY(SELECT DISTINCT pg_catalog.json_build_array(rc.oid::int8, rn.nspname, rc.relname, rc.relkind)::text
               FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class rc ON rc.oid = d.refobjid
               JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass),
       ARRAY(SELECT DISTINCT fp.oid::int8 FROM pg_catalog.pg_depend d {_CALLED}
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND fp.oid <> p.oid),
       {{runs_sql}}, n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
       pg_catalog.oidvectortypes(p.proargtypes)
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_catalog.pg_roles o ON o.oid = p.proowner
  CROSS JOIN me
 WHERE {_SYSTEM_P}
"""


@dataclass(frozen=True, slots=True)
class Node:
    """A view, materialized view or foreign table (`_GRAPH_RELATIONS`), or a function (`_GRAPH_FUNCTIONS`)."""

    oid: int
    name: str  # schema.name, or schema.name(identity arguments)
    kind: str  # v, m, f, or "fn"
    owner: str = ""
    extension: str | None = None
    public: bool = False
    usable: bool = True  # SELECT on it (a relation), EXECUTE (a function), by the backend role
    member: bool = False
    atomic: bool = False  # a function's SQL-standard body
    reads: tuple[tuple[int, str, str, str], ...] = ()  # (oid, schema, name, relkind) its query or body depends on
    calls: tuple[int, ...] = ()  # functions outside the system schemas
    runs_sql: bool = False  # calls a built-in of SQL_TEXT_BUILTINS
    schema: str = ""  # its schema, name and (a function's) identity arguments, exactly: trusted_definers matching
    bare: str = ""
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reach:
    """What a node's query or body reaches, at any depth: a scoped relation, a reason it may read anything, a
    reason it reads with stored credentials, a scoped relation no row security filters (a view, materialized view
    or foreign table: only the proxy's rewrite of a statement naming it does) (each the first found, or None)."""

    scoped: str | None = None
    anything: str | None = None
    stored: str | None = None
    unfiltered: str | None = None


class Graph:
    """The relations and functions of one database and what each reaches (views of any kind, materialized views
    and BEGIN ATOMIC bodies followed at any depth)."""

    def __init__(self, relations: Iterable[Node], functions: Iterable[Node], scoped: Iterable[tuple[str, str]]):
        self.relations = {n.oid: n for n in relations}
        self.functions = {n.oid: n for n in functions}
        self.scoped = {f"{s}.{t}" for s, t in scoped}
        self._memo: dict[tuple[str, int], Reach] = {}

    def reach(self, node: Node) -> Reach:
        key = ("fn" if node.kind == "fn" else "rel", node.oid)
        if key not in self._memo:
            self._memo[key] = Reach()  # (a cycle reaches nothing more)
            self._memo[key] = self._walk(node)
        return self._memo[key]

    def _walk(self, node: Node) -> Reach:
        scoped = anything = stored = unfiltered = None
        if node.kind == "fn":
            if node.extension == "dblink":
                stored = anything = (f"it calls {node.name} (extension dblink), which reads with its connection's "
                                     "stored credentials")
            elif not node.atomic:
                anything = (f"it calls {node.name}, whose body may read any table (only a BEGIN ATOMIC body's "
                            "reads are known)")
        if node.runs_sql:
            anything = anything or ("it calls a built-in that runs SQL text given to it (ts_stat, query_to_xml, …), "
                                    "whose relations pg_depend does not record")
        if node.kind == "fn" and not node.atomic:
            return Reach(None, anything, stored)
        for oid, s, n, k in node.reads:
            name = f"{s}.{n}"
            if name in self.scoped:
                scoped = scoped or f"it reads {name}, a tenant-scoped relation"
                if k in _UNFILTERED:
                    unfiltered = unfiltered or (f"it reads {name}, a tenant-scoped {_UNFILTERED[k]} no row security "
                                                "filters")
                continue
            if k == "f":
                stored = stored or (f"it reads the foreign table {name}, which reads with its user mapping's stored "
                                    "credentials")
            inner = self.relations.get(oid)
            if inner is not None and k in ("v", "m"):
                got = self.reach(inner)
                scoped, anything, stored = (scoped or _via(got.scoped, name), anything or _via(got.anything, name),
                                            stored or _via(got.stored, name))
                unfiltered = unfiltered or _via(got.unfiltered, name)
        for oid in node.calls:
            fn = self.functions.get(oid)
            if fn is not None:
                got = self.reach(fn)
                scoped, anything, stored = (scoped or _via(got.scoped, fn.name),
                                            anything or _via(got.anything, fn.name),
                                            stored or _via(got.stored, fn.name))
                unfiltered = unfiltered or _via(got.unfiltered, fn.name)
        return Reach(scoped, anything, stored, unfiltered)

    def opaque(self, node: Node, seen: set[tuple[str, int]] | None = None) -> str | None:
        """The first function (by name) whose body pgtenant cannot read (not BEGIN ATOMIC, not an extension's
        member) that `node`'s query or body calls, at any depth through views and BEGIN ATOMIC bodies."""
        seen = set() if seen is None else seen
        key = ("fn" if node.kind == "fn" else "rel", node.oid)
        if key in seen:
            return None
        seen.add(key)
        if node.kind == "fn" and not node.atomic:
            return None if node.extension is not None else node.name
        # (a materialized view's query ran at its REFRESH, not when it is read: `materialized`)
        inner = [self.relations[oid] for oid, _, _, k in node.reads if k == "v" and oid in self.relations]
        inner += [self.functions[oid] for oid in node.calls if oid in self.functions]
        found = (self.opaque(x, seen) for x in sorted(inner, key=lambda x: x.name))
        return next((f for f in found if f is not None), None)

    def materialized(self) -> dict[int, str]:
        """Materialized views not themselves scoped whose stored rows may hold other tenants' (any owner): why."""
        out: dict[int, str] = {}
        for n in self.relations.values():
            if n.kind == "m" and n.name not in self.scoped:
                got = self.reach(n)
                why = got.scoped or got.anything or got.stored
                if why is not None:
                    out[n.oid] = why
        return out


_UNFILTERED = {"v": "view", "m": "materialized view", "f": "foreign table"}  # relkinds row security never filters


def _via(why: str | None, name: str) -> str | None:
    return why if why is None or " (through " in why or name in why else f"{why} (through {name})"


def read_graph(conn: psycopg.Connection, role: str, scoped: Iterable[tuple[str, str]]) -> Graph:
    keys = {"role": role, "sql_text": sorted(SQL_TEXT_BUILTINS)}
    rels = [Node(int(oid), name, kind, owner, ext, bool(pub), bool(usable), bool(member), False, _graph_rels(reads),
                 tuple(int(c) for c in calls), bool(runs), str(nsp), str(bare))
            for oid, name, kind, owner, ext, pub, usable, member, reads, calls, runs, nsp, bare
            in conn.execute(_GRAPH_RELATIONS, keys).fetchall()]
    modern = conn.info.server_version >= 140000
    sql = _GRAPH_FUNCTIONS.replace("{atomic}", "p.prosqlbody IS NOT NULL" if modern else "false").replace(
        "{runs_sql}", f"coalesce(p.prosqlbody::text ~ {_RUNS_SQL}, false)" if modern else "false")
    fns = [Node(int(oid), name, "fn", owner, ext, False, bool(usable), False, bool(atom), _graph_rels(reads),
                tuple(int(c) for c in calls), bool(runs), str(nsp), str(bare), (str(args), str(types)))
           for oid, name, owner, ext, usable, atom, reads, calls, runs, nsp, bare, args, types
           in conn.execute(sql, keys).fetchall()]
    return Graph(rels, fns, scoped)


def _graph_rels(raw: Iterable[str]) -> tuple[tuple[int, str, str, str], ...]:
    return tuple(sorted({(int(a), str(b), str(c), str(d)) for a, b, c, d in (json.loads(x) for x in raw)}))


def judge_stored(role: str, graph: Graph, trusted: Iterable[str] = (), skip: Iterable[int] = ()) -> Found:
    """Code the backend role `role` can use that reads with stored credentials (in any database, scoped relations
    or not): a foreign table not itself scoped; a view (any security) or materialized view whose query, and a
    BEGIN ATOMIC body whose calls, reach dblink or such a foreign table. `skip`: relations reported already."""
    found = Found()
    skipped = set(skip)
    vouched = [parse_qualified(t) for t in trusted]
    for n in sorted(graph.relations.values(), key=lambda x: x.name):
        if not n.usable or n.name in graph.scoped or n.oid in skipped:
            continue
        how = _how(n.public, n.member, "SELECT")
        revoke = f"REVOKE SELECT ON {n.name} FROM {'PUBLIC' if n.public else role}"
        if n.kind == "f":
            why = "its user mapping's remote user reads for it, with stored credentials pgtenant cannot judge"
        else:
            why = graph.reach(n).stored
            if why is None:
                continue
        what = {"f": "foreign table", "m": "materialized view", "v": "view"}[n.kind]
        text = (f"{what} {n.name} reads with stored credentials, not its reader's rights nor row security of this "
                f"database ({why}); the backend role {role!r} may read it ({how}), so it may show any tenant's rows, "
                f"of this database or another, whatever the proxy rewrites. Fix: add the tenant column to it (the "
                f"proxy then filters it); or {revoke}; or vouch for it in [preflight] trusted_definers")
        _add(found, "error", n.extension, text, any(q.args is None and q.matches(n.schema, n.bare) for q in vouched))
    for n in sorted(graph.functions.values(), key=lambda x: x.name):
        if not n.usable or not n.atomic or n.extension is not None:
            continue
        why = graph.reach(n).stored
        if why is not None:
            text = (f"function {n.name} reads with stored credentials ({why}); the backend role {role!r} may run "
                    f"it, so it may return any tenant's rows whatever the proxy rewrites. Fix: REVOKE EXECUTE ON "
                    f"FUNCTION {n.name} FROM PUBLIC (and from {role}); or vouch for it in [preflight] trusted_definers")
            _add(found, "error", None, text, any(q.matches(n.schema, n.bare, n.args) for q in vouched))
    return found


def judge_unfiltered(role: str, graph: Graph, trusted: Iterable[str] = (), skip: Iterable[int] = ()) -> Found:
    """Views (any security, security_invoker too) and materialized views the backend role `role` may read, not
    themselves scoped, whose query reaches at any depth a scoped relation no row security filters (a view,
    materialized view or foreign table with the tenant column): the proxy filters only the relations a statement
    names, not those inside a view (red team 21w W1). `skip`: relations reported already."""
    found = Found()
    skipped = set(skip)
    vouched = [parse_qualified(t) for t in trusted]
    for n in sorted(graph.relations.values(), key=lambda x: x.name):
        if n.kind not in ("v", "m") or not n.usable or n.name in graph.scoped or n.oid in skipped:
            continue
        why = graph.reach(n).unfiltered
        if why is None:
            continue
        what = _UNFILTERED[n.kind]
        revoke = f"REVOKE SELECT ON {n.name} FROM {'PUBLIC' if n.public else role}"
        text = (f"{what} {n.name} is not tenant-scoped and its query reads a relation only the proxy's rewrite "
                f"filters ({why}); the proxy filters only the relations a statement names, not those inside a view, "
                f"and the backend role {role!r} may read it ({_how(n.public, n.member, 'SELECT')}), so it shows "
                f"every tenant's rows of it, of any security (security_invoker too). Fix: add the tenant column to "
                f"this {what} too (the proxy then filters it); or read the base tables, with forced row-level "
                f"security, instead; or {revoke}; or vouch for it in [preflight] trusted_definers")
        _add(found, "error", n.extension, text, any(q.args is None and q.matches(n.schema, n.bare) for q in vouched))
    return found


def judge_opaque(role: str, graph: Graph, trusted: Iterable[str] = (), skip: Iterable[int] = ()) -> Found:
    """Red team 22d R4(a): warnings for the views (any security; a materialized view's query ran at its REFRESH) the
    backend role `role` may read, not themselves
    scoped, whose query calls (at any depth, through views and BEGIN ATOMIC bodies) a function whose body pgtenant
    cannot read (not BEGIN ATOMIC, no extension's member), in a database where `role` may read a scoped relation no
    row security filters (W1's rule, `judge_unfiltered`): such a body, run as the reader, may read it unfiltered. A
    warning, not an error: the proxy refuses reading the view while that function is not allowed (`policy.reached`,
    `[tenants.X] extra_allowed_functions`); this says why admitting it is not safe. `skip`: reported already."""
    found = Found()
    open_ = sorted(n.name for n in graph.relations.values()
                   if n.kind in _UNFILTERED and n.usable and n.name in graph.scoped)
    if not open_:
        return found
    skipped = set(skip)
    vouched = [parse_qualified(t) for t in trusted]
    for n in sorted(graph.relations.values(), key=lambda x: x.name):
        if n.kind != "v" or not n.usable or n.name in graph.scoped or n.oid in skipped:
            continue
        if graph.reach(n).unfiltered is not None:
            continue  # (judge_unfiltered's error)
        fn = graph.opaque(n)
        if fn is None:
            continue
        what = "view"
        text = (f"{what} {n.name} calls {fn}, whose body pgtenant cannot read (only a BEGIN ATOMIC body's reads are "
                f"known), and the backend role {role!r} may read it ({_how(n.public, n.member, 'SELECT')}) and "
                f"{open_[0]}, a tenant-scoped relation no row security filters: that body, run as the reader, may "
                f"read it unfiltered (the proxy filters only the relations a statement names). The proxy refuses "
                f"the {what} while the function is not allowed; do not admit it in [tenants.X] "
                f"extra_allowed_functions unless its body reads no such relation. Fix: make the function BEGIN "
                f"ATOMIC (pgtenant then follows what it reads); or REVOKE SELECT ON {n.name} FROM "
                f"{'PUBLIC' if n.public else role}; or vouch for it in [preflight] trusted_definers")
        if any(q.args is None and q.matches(n.schema, n.bare) for q in vouched):
            continue  # (the operator vouches for it)
        _add(found, "warning", None, text)
    return found


def _how(public: bool, member: bool, privilege: str) -> str:
    return (f"{privilege} granted to PUBLIC" if public else "a member of its owner" if member else
            f"{privilege} granted to it or to a role it is a member of")


_SCHEMA_RELATIONS = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname = ANY(%s::text[])
"""


def schema_relations(conn: psycopg.Connection, schemas: Iterable[str]) -> list[tuple[str, str]]:
    """The relations of `schemas` (a schema tenant's: every one is that tenant's)."""
    return [(str(a), str(b)) for a, b in conn.execute(_SCHEMA_RELATIONS, (sorted(set(schemas)),)).fetchall()]
