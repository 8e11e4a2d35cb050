"""Who besides pgtenant's backend roles can read a tenant-scoped table directly, and whether a tenant check they
cannot forge restricts them; read by `pgtenant provision` and by the startup preflight."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg

from proxy.policy.tree import expr_node, names_of, string_const

PUBLIC = "PUBLIC"
OWN_POLICY = "pgtenant_isolation"  # the policy `pgtenant provision` makes (TO pgtenant's backend roles only)

# How an RLS policy expression chooses rows: "open" cannot depend on the session; "setting" reads settings, which
# any login can SET (custom ones included); "login" depends on who is logged in (current_user …) and nothing
# the session can set; "unproven" calls something pgtenant cannot see into (a helper function, a subquery).
PolicyKey = Literal["open", "setting", "login", "unproven"]
# What a role reads of a table: "all" every tenant's rows; "forgeable" any tenant's, by SETting what a policy reads;
# "unproven" cannot tell; "checked" a tenant check it cannot forge; "none" no row.
Level = Literal["all", "forgeable", "unproven", "checked", "none"]
OPEN_LEVELS: frozenset[str] = frozenset({"all", "forgeable", "unproven"})

_LOGIN_FUNCTIONS = frozenset({"SVFOP_CURRENT_USER", "SVFOP_CURRENT_ROLE", "SVFOP_SESSION_USER", "SVFOP_USER"})


@dataclass(frozen=True, slots=True)
class PolicyFact:
    """One RLS policy on a table, as pg_policy holds it (expressions as pg_get_expr prints them)."""

    name: str
    permissive: bool
    cmd: str  # r (SELECT), a, w, d, * (ALL)
    qual: str | None
    roles: tuple[str, ...] = (PUBLIC,)
    check: str | None = None  # WITH CHECK


@dataclass(frozen=True, slots=True)
class Reader:
    """A role (or PUBLIC) with SELECT on a table, USAGE on its schema and CONNECT on its database; `policies` are those
    that apply to it."""

    role: str
    bypassrls: bool = False
    owner: bool = False  # the owner, or a role with its privileges (RLS does not apply unless forced)
    policies: tuple[PolicyFact, ...] = ()


@dataclass(frozen=True, slots=True)
class Access:
    """What a reader reads of a table, and why (for the message)."""

    level: Level
    why: str


@dataclass(frozen=True, slots=True)
class TableFacts:
    """A tenant-scoped table as the catalogs describe it: RLS state, owner, policies, direct readers."""

    schema: str
    table: str
    kind: str
    rls: bool
    force: bool
    owner: str
    policies: tuple[PolicyFact, ...]
    readers: tuple[Reader, ...]

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


def _walk(node: object) -> Iterable[dict]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def policy_key(expr: str | None) -> tuple[PolicyKey, tuple[str, ...]]:
    """How the policy expression `expr` chooses rows, and the settings it reads (lower case; "?" for a name that
    is not a literal)."""
    if expr is None:
        return "open", ()
    try:
        node = expr_node(expr)
    except Exception:  # not an expression pglast parses: nothing is proven
        return "unproven", ()
    settings: list[str] = []
    login = other = False
    for n in _walk(node):
        call = n.get("FuncCall")
        if call is not None:
            if names_of(call.get("funcname"))[-1:] == ("current_setting",):
                arg = (call.get("args") or [{}])[0]
                while "TypeCast" in arg:
                    arg = arg["TypeCast"].get("arg") or {}
                settings.append((string_const(arg) or "?").lower())
            else:
                other = True
        elif "SubLink" in n:
            other = True
        elif n.get("SQLValueFunction", {}).get("op") in _LOGIN_FUNCTIONS:
            login = True
    if settings:
        return ("unproven" if login or other else "setting"), tuple(dict.fromkeys(settings))
    if login:
        return "login", ()  # a subquery keyed on current_user (a role -> tenant table) cannot be forged either
    return ("unproven" if other else "open"), ()


def _reads(p: PolicyFact) -> bool:
    return p.cmd in ("r", "*")


def access(reader: Reader, rls: bool, force: bool, *, ignore: frozenset[str] = frozenset()) -> Access:
    """What `reader` can read of a table with this RLS state (policies named in `ignore` left out)."""
    if reader.bypassrls:
        return Access("all", "BYPASSRLS")
    if not rls:
        return Access("all", "no row-level security")
    if reader.owner and not force:
        return Access("all", "owner; row-level security not forced")
    policies = [p for p in reader.policies if _reads(p) and p.name not in ignore]
    for p in policies:
        if not p.permissive and policy_key(p.qual)[0] == "login":
            return Access("checked", f"restrictive policy {p.name!r} checks the login")
    permissive = [p for p in policies if p.permissive]
    if not permissive:
        return Access("none", "no policy lets it read")
    keyed = [(p, *policy_key(p.qual)) for p in permissive]
    for p, key, _ in keyed:
        if key == "open":
            return Access("all", f"policy {p.name!r} ({p.qual or 'true'}) ignores the tenant")
    for p, key, settings in keyed:
        if key == "setting":
            return Access("forgeable", f"policy {p.name!r} reads {', '.join(settings)}, which any login can SET")
    for p, key, _ in keyed:
        if key == "unproven":
            return Access("unproven", f"policy {p.name!r} ({p.qual}) cannot be read by pgtenant")
    return Access("checked", "its policies check the login")


def reusable_settings(facts: TableFacts, column: str) -> dict[str, str]:
    """Settings other policies on the table already key the tenant column on: setting -> policy name."""
    from proxy.dbcheck import policy_pins_tenant

    out: dict[str, str] = {}
    for p in facts.policies:
        key, settings = policy_key(p.qual)
        if p.name == OWN_POLICY or key != "setting" or len(settings) != 1 or settings[0] == "?":
            continue
        if p.qual is not None and policy_pins_tenant(p.qual, column, settings[0]) == "exact":
            out.setdefault(settings[0], p.name)
    return out


# --- reading the catalogs (any role may: pg_class, pg_policy, pg_roles and the has_*_privilege functions) -------

_TABLE = """
SELECT c.oid, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity, pg_catalog.pg_get_userbyid(c.relowner),
       EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a WHERE a.grantee = 0 AND a.privilege_type = 'SELECT')
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute t, pg_catalog.aclexplode(t.attacl) a
                   WHERE t.attrelid = c.oid AND a.grantee = 0 AND a.privilege_type = 'SELECT'),
       EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) a WHERE a.grantee = 0 AND a.privilege_type = 'USAGE')
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_database d,
                          pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a
                    WHERE d.datname = pg_catalog.current_database() AND a.grantee = 0
                      AND a.privilege_type = 'CONNECT')
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relname = %s
"""

_POLICIES = """
SELECT p.polname, p.polpermissive, p.polcmd::text, pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       ARRAY(SELECT CASE WHEN r.oid = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r.oid) END
               FROM unnest(p.polroles) AS r(oid) ORDER BY 1),
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
  FROM pg_catalog.pg_policy p WHERE p.polrelid = %s ORDER BY 1
"""

# Roles that can read the table (by grant, membership, ownership or pg_read_all_data; a login role only if it may
# connect to this database, a group role always, as its members may), superusers and built-in roles aside, with
# the policies that apply to each (PUBLIC's, or a role whose privileges it has).
_READERS = """
SELECT r.rolname, r.rolbypassrls, pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE'),
       ARRAY(SELECT p.polname FROM pg_catalog.pg_policy p
              WHERE p.polrelid = c.oid AND (0 = ANY (p.polroles) OR EXISTS (
                    SELECT 1 FROM unnest(p.polroles) AS x(oid) WHERE pg_catalog.pg_has_role(r.oid, x.oid, 'USAGE'))))
  FROM pg_catalog.pg_roles r, pg_catalog.pg_class c
 WHERE c.oid = %s AND NOT r.rolsuper AND r.rolname !~ '^pg_' AND NOT r.rolname = ANY (%s)
   AND pg_catalog.has_any_column_privilege(r.oid, c.oid, 'SELECT')
   AND pg_catalog.has_schema_privilege(r.oid, c.relnamespace, 'USAGE')
   AND (NOT r.rolcanlogin OR pg_catalog.has_database_privilege(r.oid, pg_catalog.current_database(), 'CONNECT'))
 ORDER BY 1
"""

_MEMBERS = """
SELECT m.rolname, b.rolname FROM pg_catalog.pg_roles b JOIN pg_catalog.pg_roles m ON m.oid <> b.oid
 WHERE b.rolname = ANY (%s) AND NOT m.rolname = ANY (%s) AND m.rolname !~ '^pg_' AND NOT m.rolsuper
   AND pg_catalog.pg_has_role(m.oid, b.oid, 'MEMBER')
 ORDER BY 1, 2
"""


def read_table(conn: psycopg.Connection, schema: str, table: str, proxy_roles: Sequence[str]) -> TableFacts | None:
    """The RLS state, policies and direct readers (proxy roles left out) of one table; None if it does not exist."""
    row = conn.execute(_TABLE, (schema, table)).fetchone()
    if row is None:
        return None
    oid, kind, rls, force, owner, public_select, public_reaches = row
    policies = tuple(
        PolicyFact(name, permissive, cmd, qual, tuple(roles), check)
        for name, permissive, cmd, qual, roles, check in conn.execute(_POLICIES, (oid,)).fetchall()
    )
    by_name = {p.name: p for p in policies}
    readers: list[Reader] = []
    if public_select and public_reaches:
        readers.append(Reader(PUBLIC, policies=tuple(p for p in policies if PUBLIC in p.roles)))
    for role, bypass, owns, names in conn.execute(_READERS, (oid, list(proxy_roles))).fetchall():
        reader = Reader(role, bool(bypass), bool(owns), tuple(by_name[n] for n in names))
        if readers and readers[0].role == PUBLIC and (reader.bypassrls, reader.owner, reader.policies) == (
            False, False, readers[0].policies
        ):
            continue  # reads exactly as PUBLIC does: PUBLIC's entry stands for it
        readers.append(reader)
    return TableFacts(schema, table, kind, bool(rls), bool(force), owner, policies, tuple(readers))


def proxy_role_members(conn: psycopg.Connection, proxy_roles: Sequence[str]) -> list[tuple[str, str]]:
    """(member, proxy role) for every other role that is a member of one of pgtenant's backend roles: it could
    act as that role, under its policy, with a tenant setting of its own choosing."""
    roles = list(proxy_roles)
    return [(m, b) for m, b in conn.execute(_MEMBERS, (roles, roles)).fetchall()]


def direct_readers(facts: TableFacts, *, trusted: frozenset[str] = frozenset()) -> list[tuple[Reader, Access]]:
    """The readers of a table (as it is now) that reach other tenants' rows without a check they cannot forge."""
    out = []
    for reader in facts.readers:
        if reader.role in trusted:
            continue
        a = access(reader, facts.rls, facts.force)
        if a.level in OPEN_LEVELS:
            out.append((reader, a))
    return out
