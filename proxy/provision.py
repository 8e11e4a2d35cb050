"""`pgtenant provision`: makes PostgreSQL enforce the same tenant boundary as the proxy, idempotently, and never
widens what any role but pgtenant's own backend roles can read."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import psycopg

from proxy import access, inherits
from proxy.access import OWN_POLICY, PUBLIC, TableFacts
from proxy.config import Config, TenantConfig
from proxy.policy.sqltext import quote_ident
from proxy.tenancy import database_neighbours, explicit_tables

POLICY_NAME = OWN_POLICY
_ROLE_ATTRS = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"

Log = Callable[[str], None]


class ProvisionRefused(RuntimeError):
    """Provision found what it must not paper over (listed through its `warn` callback); nothing was changed."""


@dataclass(frozen=True, slots=True)
class Step:
    """One statement: `sql` runs, `shown` is printed (secrets redacted), `done` is logged once it ran."""

    sql: str
    shown: str = ""
    done: str = ""

    @property
    def text(self) -> str:
        return self.shown or self.sql


@dataclass
class Findings:
    """What the access analysis found: refusals stop provision whatever the flags (provision itself would widen
    access); problems stop it unless --force; notes are printed."""

    refusals: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.refusals += other.refusals
        self.problems += other.problems
        self.notes += other.notes


@dataclass(frozen=True, slots=True)
class TableTarget:
    """A tenant-scoped table of shared tenants: the policy `pgtenant_isolation` TO `readers` keys `column` on
    `setting`; `writers` (allow_writes tenants' roles) also get INSERT, UPDATE, DELETE."""

    schema: str
    table: str
    column: str
    setting: str
    readers: tuple[str, ...]
    writers: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


# --- pure: SQL text -------------------------------------------------------------------------------------------


def quote_literal(value: str) -> str:
    """A SQL string literal that reads the same whatever standard_conforming_strings says."""
    body = value.replace("'", "''")
    return f"E'{body.replace(chr(92), chr(92) * 2)}'" if "\\" in value else f"'{body}'"


def _rel(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def _roles_sql(roles: Iterable[str]) -> str:
    return ", ".join(quote_ident(r) for r in roles)


def predicate_sql(column: str, setting: str) -> str:
    return f"{quote_ident(column)}::text = pg_catalog.current_setting({quote_literal(setting)}, true)"


def role_step(name: str, password: str | None, exists: bool) -> Step:
    verb = "ALTER" if exists else "CREATE"
    base = f"{verb} ROLE {quote_ident(name)} {_ROLE_ATTRS}"
    done = f"role {name}: {'updated' if exists else 'created'} (LOGIN NOSUPERUSER NOBYPASSRLS)"
    if password is None:
        return Step(base, done=done)
    return Step(f"{base} PASSWORD {quote_literal(password)}", f"{base} PASSWORD '…'", done)


def temp_file_limit_step(role: str, limit: str, current: str | None) -> Step | None:
    """ALTER ROLE … SET temp_file_limit (config `limits.temp_file_limit`, red team 7 F4): the temporary files of each
    statement of the role's sessions are bounded (a setting only a superuser may change); None when already so."""
    if current is not None and current.strip() == limit.strip():
        return None
    return Step(f"ALTER ROLE {quote_ident(role)} SET temp_file_limit = {quote_literal(limit)}",
                done=f"role {role}: temp_file_limit = {limit}")


def table_steps(t: TableTarget, *, policy_current: bool) -> list[Step]:
    """ENABLE and FORCE row-level security, the policy TO pgtenant's roles only (remade unless `policy_current`),
    and the grants."""
    rel, pol = _rel(t.schema, t.table), quote_ident(POLICY_NAME)
    pred = predicate_sql(t.column, t.setting)
    steps = [Step(f"ALTER TABLE {rel} ENABLE ROW LEVEL SECURITY"), Step(f"ALTER TABLE {rel} FORCE ROW LEVEL SECURITY")]
    if not policy_current:
        steps += [
            Step(f"DROP POLICY IF EXISTS {pol} ON {rel}"),
            Step(f"CREATE POLICY {pol} ON {rel} AS PERMISSIVE FOR ALL TO {_roles_sql(t.readers)} "
                 f"USING ({pred}) WITH CHECK ({pred})"),
        ]
    steps.append(Step(f"GRANT SELECT ON {rel} TO {_roles_sql(t.readers)}"))
    if t.writers:
        steps.append(Step(f"GRANT INSERT, UPDATE, DELETE ON {rel} TO {_roles_sql(t.writers)}"))
    steps[-1] = Step(steps[-1].sql, done=f"{t.name}: forced RLS, policy {POLICY_NAME} TO {', '.join(t.readers)} "
                     f"on {t.column} = {t.setting}")
    return steps


def schema_steps(schema: str, role: str, writes: bool, *, where: str, create: bool,
                 others: Sequence[tuple[str, str]] = (), defaults: bool = True,
                 other_sequences: Sequence[tuple[str, str]] = ()) -> list[Step]:
    """USAGE and the table privileges on a schema, for its tables to come too unless not `defaults` (then the
    default privileges an earlier provision set are revoked: a database tenant's schema its database's shared
    tenants also use, issue 14, and a schema tenant's shared schema, red team 22d R6, so that a relation made later
    is not readable by `role` before provision or the preflight has seen it). `others`: relations the grant leaves
    out (a REVOKE after it); `other_sequences` the same for sequences (the shared tenants' there, review 17 F4)."""
    s, r = quote_ident(schema), quote_ident(role)
    privileges = "SELECT, INSERT, UPDATE, DELETE" if writes else "SELECT"
    steps = [Step(f"CREATE SCHEMA IF NOT EXISTS {s}")] if create else []
    steps += [Step(f"GRANT USAGE ON SCHEMA {s} TO {r}"),
              Step(f"GRANT {privileges} ON ALL TABLES IN SCHEMA {s} TO {r}"),
              # the positions of the schema's own sequences: pg_dump reads them (its identity and serial columns)
              Step(f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}")]
    may = f"tenant {where}: {role} may {'read and write' if writes else 'read'} schema {schema}"
    steps += [Step(f"REVOKE ALL ON {_rel(*rel)} FROM {r}") for rel in others]
    steps += [Step(f"REVOKE ALL ON SEQUENCE {_rel(*seq)} FROM {r}") for seq in other_sequences]
    if not defaults:
        theirs = [*others, *other_sequences]
        left_out = f", but for the other tenants' {', '.join(f'{a}.{b}' for a, b in theirs)}" if theirs else ""
        return [*steps,
                Step(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE ALL ON SEQUENCES FROM {r}"),
                Step(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE ALL ON TABLES FROM {r}",
                     done=f"{may}{left_out}; no default privileges")]
    return [*steps,
            Step(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON SEQUENCES TO {r}"),
            Step(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {privileges} ON TABLES TO {r}", done=may)]


def shared_targets(
    tenants: Sequence[TenantConfig], tables: Mapping[str, Sequence[tuple[str, str]]], roles: Mapping[str, str]
) -> tuple[list[TableTarget], list[str]]:
    """One target per scoped table of the shared tenants of a database (`tables` and backend `roles` by tenant
    name), and the conflicts that stop provision (two tenants keying one table on different columns/settings)."""
    keys: dict[tuple[str, str], dict[tuple[str, str], list[str]]] = {}
    readers: dict[tuple[str, str], set[str]] = {}
    writers: dict[tuple[str, str], set[str]] = {}
    for t in tenants:
        for rel in tables.get(t.name, ()):
            keys.setdefault(rel, {}).setdefault((t.tenant_column, t.tenant_setting), []).append(t.name)
            readers.setdefault(rel, set()).add(roles[t.name])
            if t.allow_writes:
                writers.setdefault(rel, set()).add(roles[t.name])
    targets, conflicts = [], []
    for rel in sorted(keys):
        if len(keys[rel]) > 1:
            conflicts.append(f"{rel[0]}.{rel[1]}: tenants key it differently (" + "; ".join(
                f"{', '.join(names)}: {col} = {setting}" for (col, setting), names in sorted(keys[rel].items())
            ) + "); one policy cannot serve them: give them the same tenant_column and tenant_setting")
            continue
        ((column, setting),) = keys[rel]
        targets.append(TableTarget(rel[0], rel[1], column, setting, tuple(sorted(readers[rel])),
                                   tuple(sorted(writers.get(rel, ())))))
    return targets, conflicts


def policy_current(facts: TableFacts, target: TableTarget) -> bool:
    """Whether the table already has pgtenant's policy exactly as `target` wants it (then it is left alone)."""
    from proxy.dbcheck import policy_pins_tenant

    for p in facts.policies:
        if p.name == POLICY_NAME:
            exprs = (p.qual, p.check)
            return (p.permissive and p.cmd == "*" and set(p.roles) == set(target.readers) and all(
                e is not None and policy_pins_tenant(e, target.column, target.setting) == "exact" for e in exprs))
    return False


# --- pure: the access analysis ---------------------------------------------------------------------------------


def _who(reader: access.Reader) -> str:
    if reader.role == PUBLIC:
        return "PUBLIC (every role)"
    return f"role {reader.role}" + (" (its owner)" if reader.owner else "")


def assess_table(facts: TableFacts, target: TableTarget, trusted: frozenset[str] = frozenset()) -> Findings:
    """What enabling and forcing RLS with a policy for pgtenant's roles only does to every other reader of a table:
    a reader that still reads other tenants' rows without a check it cannot forge, or that reads today and would
    see nothing afterwards, is a problem; one whose access only pgtenant's earlier policy made is a note (closed)."""
    out = Findings()
    ignore = frozenset({POLICY_NAME})
    for reader in facts.readers:
        before = access.access(reader, facts.rls, facts.force, ignore=ignore)
        with_own = access.access(reader, facts.rls, facts.force)
        after = access.access(reader, True, True, ignore=ignore)
        who = _who(reader)
        if after.level in access.OPEN_LEVELS:
            if reader.bypassrls or reader.owner:
                out.notes.append(f"{facts.name}: {who} reads every tenant's rows ({after.why}), with or without "
                                 "pgtenant: it " + ("has BYPASSRLS" if reader.bypassrls else "can change the table's "
                                                    "row-level security"))
            elif reader.role in trusted:
                out.notes.append(f"{facts.name}: {who} (--trust) reads other tenants' rows directly ({after.why})")
            else:
                fix = ("revoke SELECT from PUBLIC (grant it to the roles that need it)" if reader.role == PUBLIC else
                       f"revoke its SELECT, or, if its sessions are your application's and never a person's login, "
                       f"pass --trust {reader.role}")
                out.problems.append(
                    f"{facts.name}: {who} can read other tenants' rows directly, without a tenant check it cannot "
                    f"forge ({after.why}); provision does not change that. Restrict that access: make the policy "
                    f"for your application's role only (ALTER POLICY … TO app_role), or {fix}"
                )
        elif after.level == "none" and before.level != "none":
            if reader.role == PUBLIC:
                fix = (f"grant SELECT to your application's role and give it a policy of its own first (CREATE POLICY "
                       f"app_access ON {_rel(facts.schema, facts.table)} TO app_role USING (…), then --trust app_role)")
            else:
                then = ")" if reader.owner else f", then --trust {reader.role})"
                fix = (f"give it a policy of its own first (CREATE POLICY app_access ON "
                       f"{_rel(facts.schema, facts.table)} TO {quote_ident(reader.role)} USING (…){then}")
            out.problems.append(
                f"{facts.name}: {who} reads it today ({before.why}); with row-level security enabled and forced and "
                f"no policy for it, it would see (and change) no rows. If your application reads it that way, {fix}; "
                "or accept the change with --force"
            )
        elif with_own.level in access.OPEN_LEVELS and after.level not in access.OPEN_LEVELS:
            out.notes.append(f"{facts.name}: closes what an earlier pgtenant provision opened: {who} could choose "
                             f"any tenant ({with_own.why})")
    for setting, policy in sorted(access.reusable_settings(facts, target.column).items()):
        if setting != target.setting.lower():
            out.notes.append(
                f"{facts.name}: policy {policy!r} already keys {target.column} on {setting}. To have pgtenant set "
                f"that setting too (views and functions reading it then work through the proxy), set "
                f'tenant_setting = "{setting}" on the shared tenants of this database. That is safe when {policy!r} '
                "applies only to roles whose sessions your application or pgtenant control, never to a role a "
                f"person logs in with: any login can SET {setting}"
            )
    return out


def assess_members(members: Iterable[tuple[str, str]]) -> list[str]:
    return [f"role {m} is a member of pgtenant's backend role {b}: it could act as {b}, under pgtenant's policy, with "
            f"a tenant setting of its choosing (REVOKE {quote_ident(b)} FROM {quote_ident(m)})" for m, b in members]


# --- reading and running ---------------------------------------------------------------------------------------


def _roles(config: Config) -> dict[str, str | None]:
    """Every backend role the config names, with its password when known."""
    out: dict[str, str | None] = {}
    for t in config.tenants.values():
        b = config.backend_for(t)
        out[b.user] = b.password
    return out


def _role_setting(conn: psycopg.Connection, role: str, name: str) -> str | None:
    """The value of `name` in `role`'s own settings (ALTER ROLE … SET, in every database), None when not set."""
    row = conn.execute(
        "SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_roles r ON r.oid = s.setrole "
        "WHERE r.rolname = %s AND s.setdatabase = 0", (role,)).fetchone()
    for item in (row[0] if row and row[0] else ()):
        key, _, value = item.partition("=")
        if key.lower() == name:
            return value
    return None


def _password_current(conn: psycopg.Connection, name: str, password: str) -> bool:
    """True when the role's stored SCRAM verifier is for `password` (only a superuser may read it)."""
    from proxy.auth.scram import ScramVerifier, make_verifier

    try:
        row = conn.execute("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s", (name,)).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return False
    if row is None or not row[0]:
        return False
    try:
        stored = ScramVerifier.parse(row[0])
    except ValueError:
        return False
    return str(make_verifier(password, iterations=stored.iterations, salt=stored.salt)) == row[0]


def _cluster_steps(conn: psycopg.Connection, config: Config, log: Log) -> list[Step]:
    steps: list[Step] = []
    for role, password in _roles(config).items():
        row = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolreplication "
            "FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)
        ).fetchone()
        if row == (True, False, False, False, False, False) and (
            password is None or _password_current(conn, role, password)
        ):
            log(f"role {role}: unchanged (LOGIN NOSUPERUSER NOBYPASSRLS)")
            continue
        steps.append(role_step(role, password, row is not None))
    for role in _roles(config):
        step = temp_file_limit_step(role, config.limits.temp_file_limit, _role_setting(conn, role, "temp_file_limit"))
        if step is None:
            log(f"role {role}: temp_file_limit unchanged ({config.limits.temp_file_limit})")
        else:
            steps.append(step)
    existing = {r[0] for r in conn.execute("SELECT datname FROM pg_catalog.pg_database").fetchall()}
    for db in sorted({t.database for t in config.tenants.values()} - existing):
        steps.append(Step(f"CREATE DATABASE {quote_ident(db)}", done=f"database {db}: created"))
    for db in sorted({t.database for t in config.tenants.values() if t.strategy == "database"}):
        steps.append(Step(f"REVOKE CONNECT, TEMPORARY ON DATABASE {quote_ident(db)} FROM PUBLIC",
                          done=f"database {db}: CONNECT revoked from PUBLIC"))
    for t in config.tenants.values():
        steps.append(Step(f"GRANT CONNECT, TEMPORARY ON DATABASE {quote_ident(t.database)} TO "
                          f"{quote_ident(config.backend_for(t).user)}"))
    return steps


_DISCOVER = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind IN ('r', 'p') AND a.attname = %s AND n.nspname = ANY(%s) ORDER BY 1, 2
"""


def _database_steps(
    conn: psycopg.Connection, config: Config, db: str, trusted: frozenset[str], findings: Findings
) -> list[Step]:
    """The statements for one database, after reading it; what the analysis finds goes to `findings`."""
    proxy_roles = sorted(_roles(config))
    tenants = [t for t in config.tenants.values() if t.database == db]
    steps: list[Step] = []
    shared = [t for t in tenants if t.strategy == "shared"]
    roles = {t.name: config.backend_for(t).user for t in tenants}
    for t in shared:
        for schema in t.tenant_schemas:
            steps.append(Step(f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {quote_ident(roles[t.name])}"))
    tables = {
        t.name: sorted(explicit_tables(t)) if t.tables else [
            (s, n) for s, n in conn.execute(_DISCOVER, (t.tenant_column, list(t.tenant_schemas))).fetchall()
        ]
        for t in shared
    }
    targets, conflicts = shared_targets(shared, tables, roles)
    findings.refusals += conflicts
    for target in targets:
        facts = access.read_table(conn, target.schema, target.table, proxy_roles)
        if facts is None:
            findings.problems.append(f"{target.name}: listed in tables but does not exist in database {db}")
            continue
        if facts.kind not in ("r", "p"):
            findings.notes.append(f"{target.name}: not a table (relkind {facts.kind}); only the proxy's rewrite "
                                  "filters it, so provision leaves it alone")
            continue
        findings.extend(assess_table(facts, target, trusted))
        steps += table_steps(target, policy_current=policy_current(facts, target))
    columns = {t.tenant_column for t in shared}
    held = set(inherits.holders(conn, {rel for rels in tables.values() for rel in rels}, columns))
    # A schema tenant's read-only grant on a shared schema leaves out the shared tenants' tenant-column relations
    # that no forced RLS of pgtenant's (TO their roles only) filters: views, materialized views, foreign tables, and
    # tables provision does not force (red team 21w W4): its statements get no tenant filter of theirs.
    forced = {(tg.schema, tg.table) for tg in targets}
    unfiltered = {rel for rel in _column_relations(conn, columns, {s for t in tenants if t.strategy == "schema"
                                                                   for s in t.shared_schemas})
                  if rel not in forced or _relkind(conn, *rel) not in ("r", "p")} | held
    for t in tenants:
        if t.strategy == "schema":
            assert t.schema is not None
            steps += schema_steps(t.schema, roles[t.name], t.allow_writes, where=t.name, create=True)
            # not the inheritance parents of the shared tenants' tables (red team 21d F3); no default privileges in a
            # shared schema (red team 22d R6): a relation made there later (a scoped materialized view, a parent of a
            # scoped table or a foreign table) is not readable before provision or the preflight has seen it
            for s in t.shared_schemas:
                steps += schema_steps(s, roles[t.name], False, where=t.name, create=True,
                                      others=sorted(rel for rel in unfiltered if rel[0] == s), defaults=False)
        elif t.strategy == "database":
            steps += _database_tenant_steps(conn, config, t, roles, findings)
    _definer_findings(conn, db, tenants, tables, targets, roles, findings,
                      frozenset(config.preflight.trusted_definers))
    return steps



def _definer_findings(conn: psycopg.Connection, db: str, tenants: Sequence[TenantConfig],
                      tables: Mapping[str, Sequence[tuple[str, str]]], targets: Sequence[TableTarget],
                      roles: Mapping[str, str], findings: Findings, trusted: frozenset[str] = frozenset()) -> None:
    """Code that runs with its owner's rights and reads the rows of any tenant of this database (its shared
    tenants' tables, its schema tenants' schemas), usable by a backend role: as the preflight finds it
    (proxy/definers.py), the tables provision forces RLS on judged as they will be. A problem each (refused unless
    --force); provision never changes these objects itself."""
    from proxy import definers
    from proxy.dbcheck import _DISCOVER as SCOPED  # the proxy's: views, materialized views, foreign tables too

    forced = {(t.schema, t.table): t.readers for t in targets}
    shared = {rel for rels in tables.values() for rel in rels}
    # a scoped view is the proxy's to filter (the preflight warns: "only the proxy's rewrite filters it"), as at start
    for t in tenants:
        if t.strategy == "shared" and not t.tables:
            shared |= {(str(a), str(b)) for a, b in conn.execute(SCOPED, (t.tenant_column, list(t.tenant_schemas)))}
    schemas = {t.name: t.schema for t in tenants if t.strategy == "schema" and t.schema is not None}
    seen: set[str] = set()
    for t in sorted(tenants, key=lambda x: x.name):
        rels = shared | set(definers.schema_relations(conn, (s for n, s in schemas.items() if n != t.name)))
        pinned = frozenset({t.tenant_setting.lower()}) if t.strategy == "shared" else frozenset()
        found = definers.check(conn, roles[t.name], rels, pinned, forced, trusted,
                               {o.tenant_column for o in tenants if o.strategy == "shared"})
        lines = [(x, findings.problems) for x in found.errors] + [(x, findings.notes) for x in found.warnings]
        for line, into in lines:
            if line not in seen:
                seen.add(line)
                into.append(f"database {db}: {line}")


def _column_relations(conn: psycopg.Connection, columns: Iterable[str],
                      schemas: Iterable[str]) -> set[tuple[str, str]]:
    """The relations of `schemas` (any kind the proxy counts as scoped) with one of the tenant `columns`."""
    from proxy.dbcheck import _DISCOVER as DISCOVER_ALL

    names = sorted(set(schemas))
    if not names:
        return set()
    return {(str(a), str(b)) for c in sorted(set(columns)) for a, b in conn.execute(DISCOVER_ALL, (c, names))}


def _relkind(conn: psycopg.Connection, schema: str, table: str) -> str | None:
    row = conn.execute("SELECT c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = "
                       "c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    return None if row is None else str(row[0])


def _database_tenant_steps(conn: psycopg.Connection, config: Config, t: TenantConfig, roles: Mapping[str, str],
                           findings: Findings) -> list[Step]:
    """A database tenant's grants on its `schemas`. Where other tenants share its database (issue 14) its
    statements are not rewritten, so provision gives its backend role none of their rows: a backend role of
    theirs, or a schema tenant's schema, is refused; their scoped relations in its schemas are left out."""
    from proxy.dbcheck import _DISCOVER as DISCOVER_ALL  # every kind the proxy counts as scoped (views too)
    from proxy.dbcheck import neighbour_sequences

    role = roles[t.name]
    others = [o for o in database_neighbours(config, t) if o.strategy in ("shared", "schema")]
    for o in others:
        if roles[o.name] == role:
            findings.refusals.append(
                f"tenant {t.name} (database strategy) and tenant {o.name} ({o.strategy} strategy) share database "
                f"{t.database} and backend role {role}: {t.name}'s statements are not rewritten, so it would read what "
                f"{o.name}'s role may read, every tenant's rows included; give {t.name} a backend_user of its own")
    foreign = {o.schema: o.name for o in others if o.strategy == "schema" and o.schema is not None}
    scoped: set[tuple[str, str]] = set()
    sequences: set[tuple[str, str]] = set()  # theirs: their positions count their inserts (review 17 F4)
    for o in others:
        if o.strategy == "shared":
            theirs = set(explicit_tables(o) if o.tables else (
                (s, n) for s, n in conn.execute(DISCOVER_ALL, (o.tenant_column, list(o.tenant_schemas))).fetchall()))
            scoped.update(theirs)
            sequences.update(neighbour_sequences(conn, theirs, o.tenant_schemas))
    # Their tables get forced RLS with a policy for their roles only (table_steps): `role` reads none of their rows
    # there. A view, materialized view or foreign table has no RLS of its own: `role` gets no privilege on it.
    unfiltered = {rel for rel in scoped if _relkind(conn, *rel) in ("v", "m", "f")}
    # An inheritance parent of theirs with no tenant column (proxy/inherits.py): read without ONLY it returns their
    # rows under its own row security, and it cannot carry their policy (forcing RLS with none would hide its own
    # rows from everyone): `role` gets no privilege on it either (red team 21d F3).
    held = set(inherits.holders(conn, scoped, {o.tenant_column for o in others if o.strategy == "shared"}))
    unfiltered |= held
    steps: list[Step] = []
    for s in t.schemas:
        if s in foreign:
            findings.refusals.append(
                f"tenant {t.name}: schemas lists {s}, the schema of tenant {foreign[s]} (schema strategy) in the same "
                f"database: {t.name}'s statements are not rewritten, so it would read {foreign[s]}'s tables")
            continue
        if any(rel[0] == s for rel in scoped | held | sequences):
            findings.notes.append(
                f"tenant {t.name}: schema {s} also holds the tenant-scoped relations of the shared tenants of database "
                f"{t.database}; {role} gets no privilege on their views, materialized views, foreign tables, "
                f"sequences and their tables' inheritance parents, and no default privileges in {s} (grant the "
                "tables made later yourself, or run provision again)")
            steps += schema_steps(s, role, t.allow_writes, where=t.name, create=True,
                                  others=sorted(rel for rel in unfiltered if rel[0] == s), defaults=False,
                                  other_sequences=sorted(seq for seq in sequences if seq[0] == s))
        else:
            steps += schema_steps(s, role, t.allow_writes, where=t.name, create=True)
    return steps


def _report(findings: Findings, warn: Log, force: bool) -> bool:
    """Print the findings; True when provision may go on."""
    for line in findings.notes:
        warn(f"note: {line}")
    for line in findings.refusals:
        warn(f"REFUSED: {line}")
    for line in findings.problems:
        warn(f"{'WARNING (--force)' if force else 'PROBLEM'}: {line}")
    if findings.refusals:
        warn("pgtenant provision: refused; nothing was changed. --force does not override the REFUSED lines: "
             "provision would widen what a role other than pgtenant's own can read")
        return False
    if findings.problems and not force:
        warn(f"pgtenant provision: {len(findings.problems)} problem(s); nothing was changed. Fix them, or run again "
             "with --force to proceed anyway (see --dry-run for the SQL)")
        return False
    if findings.problems:
        warn(f"pgtenant provision: --force: PROCEEDING DESPITE {len(findings.problems)} PROBLEM(S) ABOVE")
    return True


def provision(
    config: Config, admin_dsn: str, log: Log = print, *, warn: Log | None = None, force: bool = False,
    dry_run: bool = False, trust: Iterable[str] = (),
) -> Findings:
    """Create roles, databases, schemas, grants and RLS policies for every tenant in `config`.

    First reads every database and decides (nothing changes before): policies are made TO pgtenant's backend roles
    only; the analysis (`assess_table`) lists who else reads each tenant-scoped table and stops provision
    (`ProvisionRefused`) on a problem unless `force`. With `dry_run` the SQL is passed to `log` (a psql script)
    and nothing runs. `admin_dsn`: a role allowed to do all that (a superuser, or the owner of the tenant tables
    with CREATEROLE and CREATEDB). Running it again changes nothing new.
    """
    warn = warn or log
    trusted = frozenset(trust)
    if any(r.upper() == PUBLIC for r in trusted):
        warn("REFUSED: --trust PUBLIC: PUBLIC is every role, a person's login included")
        raise ProvisionRefused("provision refused; nothing was changed")
    findings = Findings()
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        cluster = _cluster_steps(admin, config, log)
        existing = {r[0] for r in admin.execute("SELECT datname FROM pg_catalog.pg_database").fetchall()}
        findings.refusals += assess_members(access.proxy_role_members(admin, sorted(_roles(config))))
    databases = sorted({t.database for t in config.tenants.values()})
    planned: dict[str, list[Step]] = {}
    for db in databases:
        if db in existing:
            with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=db), autocommit=True) as conn:
                planned[db] = _database_steps(conn, config, db, trusted, findings)
    ok = _report(findings, warn, force)
    if dry_run:
        log("-- pgtenant provision --dry-run: nothing was run; the statements it would run"
            + ("" if ok else " once the problems are fixed (or with --force)"))
        log("\n".join(f"{s.text};" for s in cluster))
        for db in databases:
            log(f"\\connect {quote_ident(db)}")
            if db not in planned:
                log(f"-- database {db} does not exist yet: its statements are decided once it is created")
            log("\n".join(f"{s.text};" for s in planned.get(db, [])))
    if not ok:
        raise ProvisionRefused("provision refused; nothing was changed")
    if dry_run:
        return findings
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        _run(admin, cluster, log)
    for db in databases:
        with psycopg.connect(psycopg.conninfo.make_conninfo(admin_dsn, dbname=db), autocommit=True) as conn:
            if db not in planned:  # created just now: empty, so nothing to analyse beyond what is planned here
                late = Findings()
                planned[db] = _database_steps(conn, config, db, trusted, late)
                if not _report(late, warn, force):
                    raise ProvisionRefused(f"provision refused in new database {db}")
            with conn.transaction():
                _run(conn, planned[db], log)
    return findings


def _run(conn: psycopg.Connection, steps: Sequence[Step], log: Log) -> None:
    for step in steps:
        conn.execute(step.sql.encode())
        if step.done:
            log(step.done)
