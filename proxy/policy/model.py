"""Decisions and tenant policies as plain data."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal

from proxy.policy.reached import NOTHING, Reached

Strategy = Literal["shared", "schema", "database"]

# Effects tell the driver what to do after forwarding an allowed statement.
REAPPLY_CONTEXT = "reapply_context"  # the statement resets session state (DISCARD ALL / RESET ALL)
# The statement writes (INSERT, UPDATE, DELETE, MERGE, COPY FROM, TRUNCATE) or runs a SQL prepared statement: a column
# default or trigger may call nextval() unseen, leaving what currval()/lastval() read on the server (docs/pinning.md).
MAY_SET_SEQUENCES = "may_set_sequences"
# The statement reads a relation (a view's query may call nextval()), runs a cursor's query or calls a function that
# may (nextval(), setval(), a tenant's own): it may set what currval()/lastval() read, unseen (proxy/sequences.py).
MAY_USE_SEQUENCES = "may_use_sequences"
READS_SEQUENCES = "reads_sequences"  # the statement calls currval() or lastval() (proxy/sequences.py)
ADMIT = "admit"  # agent profile: the statement runs a query; it is admitted by the planner's estimate first
# The string provably only reads (policy/readonly.py): a routed session may send it to a read replica. Cached with
# the decision, so routing a repeated text reads this instead of judging the text again.
READ_ONLY = "read_only"
# The string declares a cursor: pg_cursors lists the client's text of it (proxy/statements.CursorTexts), rewritten or
# not, so a hidden schema's cursor and a missing one's are listed alike.
DECLARES_CURSOR = "declares_cursor"
# The string names, as a qualifier, a schema the tenant cannot see: a hidden one (sent renamed, policy/hiding.py) or,
# where some schema is hidden, one of none of the schemas it sees (a missing one, sent as written). The session's last
# line guards its results from then on, alike for both (red team 9a6 G3: the guard's cost told them apart).
UNSEEN_SCHEMA = "unseen_schema"

# Schemas every tenant may reference by name in the schema strategy (besides its own and the shared ones).
SYSTEM_SCHEMAS: frozenset[str] = frozenset({"pg_catalog", "information_schema", "pg_temp"})

RESERVED_NAMESPACE = "pgtenant."

# What a statement changes in its session when it succeeds (`Change.op`).
TEMP_TABLE = "temp_table"  # a temporary table `name` was created (flag: ON COMMIT DROP)
TEMP_VIEW = "temp_view"  # a temporary view `name` was created
DROP_TEMP = "drop_temp"  # the temporary relation `name` was dropped
DISCARD_TEMP = "discard_temp"  # every temporary relation was dropped (DISCARD TEMP / ALL)
SET_PATH = "set_path"  # search_path set (`path`: what PostgreSQL got, None = the tenant's default; flag: LOCAL)
# statement_timeout set under a limit (`shown`: the client's value as SHOW prints it, None = its default; flag: LOCAL)
SET_TIMEOUT = "set_timeout"
COMMIT = "commit"  # COMMIT / END: ends the transaction (the backend's tag says whether it committed)
ROLLBACK = "rollback"  # ROLLBACK / ABORT
SAVEPOINT = "savepoint"  # SAVEPOINT `name`
RELEASE = "release"  # RELEASE [SAVEPOINT] `name`
ROLLBACK_TO = "rollback_to"  # ROLLBACK TO [SAVEPOINT] `name`
EXPORT_SNAPSHOT = "export_snapshot"  # pg_export_snapshot(): a file in pg_snapshots until the transaction ends
TRANSACTION_OPS: frozenset[str] = frozenset({COMMIT, ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK_TO})
# Session state held on the server connection (what pins a session to its server in transaction pooling, and what
# the settings replay restores elsewhere). Transactional unless listed in NOT_TRANSACTIONAL.
HOLD_CURSOR = "hold_cursor"  # DECLARE `name` ... WITH HOLD (a cursor that outlives its transaction)
CLOSE_CURSOR = "close_cursor"  # CLOSE `name` ("" = CLOSE ALL)
# DECLARE `name` (not WITH HOLD): open until the transaction ends; nothing held, counted by [pool] max_session_portals
DECLARE_CURSOR = "declare_cursor"
SQL_PREPARE = "sql_prepare"  # SQL PREPARE `name`
DEALLOCATE = "deallocate"  # DEALLOCATE `name` ("" = DEALLOCATE ALL)
LISTEN = "listen"  # LISTEN `name` (takes effect at commit)
UNLISTEN = "unlisten"  # UNLISTEN `name` ("*" = every channel)
ADVISORY_LOCK = "advisory_lock"  # a session-level advisory lock (`name`: its key as written, "" = not literal)
ADVISORY_UNLOCK = "advisory_unlock"  # pg_advisory_unlock(`name`) ("*" = pg_advisory_unlock_all())
SETTING = "setting"  # session SET of `name` (lower case): `shown` is the statement replaying it, None = RESET
RESET_SETTINGS = "reset_settings"  # RESET ALL / DISCARD ALL: every setting back to the session's defaults
# The names of the proxy's own server-side prepared statements (proxy/statements.py): no client SQL names one.
RESERVED_STATEMENT_PREFIX = "pgt_"
# pg_prepared_statements lists the session's own statements (proxy/policy/catalog.py): the wrapper reads them from
# this literal, which the session replaces with its list (proxy/statements.py `listing`) before the text is sent; a
# rewrite that has one carries the rule SESSION_STATEMENTS. A client's text may not contain it.
SESSION_STATEMENTS_MARKER = "'pgtenant:session-statements'"
SESSION_STATEMENTS = "session_statements"
PIN = "pin"  # session state the proxy cannot follow or replay: pinned for the rest of the session (`name`: reason)
DISCARD_ALL = "discard_all"  # DISCARD ALL: cursors, prepared statements, LISTEN, advisory locks (and the rest)
# Not undone by a rollback (PostgreSQL: SQL prepared statements and session advisory locks ignore transactions; a
# CLOSE stays done too: sessionstate._rolled_back).
NOT_TRANSACTIONAL: frozenset[str] = frozenset({SQL_PREPARE, DEALLOCATE, ADVISORY_LOCK, ADVISORY_UNLOCK, PIN})
# Changes that carry a literal's value (the replayed statement, a lock's key): never taken from a decision made for
# another statement of the same shape (policy/shape.py).
VALUE_OPS: frozenset[str] = frozenset({SETTING, ADVISORY_LOCK, ADVISORY_UNLOCK, SET_TIMEOUT})
# Kept even when their statement fails: an advisory lock taken before the statement's error stays taken.
KEPT_ON_ERROR: frozenset[str] = frozenset({ADVISORY_LOCK, PIN})


@dataclass(frozen=True, slots=True)
class Change:
    """One change a statement makes to its session's state when it succeeds; `at` is the statement's index in
    its query string. The session applies it (`SessionContext.apply`) and follows the backend's answer."""

    at: int
    op: str
    name: str = ""
    path: tuple[str, ...] | None = None
    shown: str | None = None  # SET_PATH: the client's value as SHOW prints it, when PostgreSQL got another one
    flag: bool = False  # TEMP_TABLE: ON COMMIT DROP; SET_PATH: LOCAL; SQL_PREPARE: EXPLAIN EXECUTE may show it
    if_not_exists: bool = False  # TEMP_TABLE / TEMP_VIEW: an existing relation of that name stays as it is
    steady: bool = False  # SQL_PREPARE: its names resolve alike on any search_path (`SessionContext.steady`)
    relations: int = 1  # TEMP_TABLE: relations it makes (the table, its constraints' indexes and sequences)


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What a session has changed: its temporary relations and its search_path (what decisions depend on), and
    the state it holds on its server connection (what pins it there in transaction pooling, and the settings
    replayed elsewhere). Plain, hashable data; `apply` returns the context after a change (transaction changes are
    the session's)."""

    temp_tables: frozenset[str] = frozenset()
    temp_views: frozenset[str] = frozenset()
    drop_at_commit: frozenset[str] = frozenset()  # temporary tables created ON COMMIT DROP
    # Temporary tables that come with indexes or sequences (their constraints'): (name, relations in all).
    sizes: frozenset[tuple[str, int]] = frozenset()
    dropped: int = 0  # temporary relations dropped in the open transaction (PostgreSQL holds their locks to its end)
    exported: bool = False  # the open transaction exported a snapshot (once per transaction)
    path: tuple[str, ...] | None = None  # the search_path PostgreSQL has (None: the tenant's default)
    shown: str | None = None  # what SHOW search_path prints for it, when that differs (the client's value)
    local: tuple[tuple[str, ...] | None, str | None] | None = None  # SET LOCAL (path, shown) in the open transaction
    # Under a statement_timeout limit (policy/timeouts.py): what SHOW statement_timeout prints for the client's own
    # value (None: its default), SET LOCAL's in the open transaction ((shown,)), and its default when that is not
    # the limit (None: the limit).
    timeout: str | None = None
    timeout_local: tuple[str | None] | None = None
    timeout_default: str | None = None
    # SQL PREPAREd statements decided without reading a catalog the proxy filters for the tenant, a temporary view or
    # an object guard's catalog (`rewrite.explain_opaque`): the ones `EXPLAIN EXECUTE` may show the plan of (a name
    # prepared again, deallocated or unknown is not one: PostgreSQL's own protocol-level statements are named alike).
    explainable: frozenset[str] = frozenset()
    # Once the names a statement reads may resolve otherwise (a temporary relation made or dropped, DISCARD TEMP, a
    # search_path change): the SQL PREPAREd statements prepared since. PostgreSQL analyses a prepared statement again
    # under the session's search_path when it runs it after such a change (its plan cache), so one prepared before
    # may read what its PREPARE was never decided for (review 18 F1/F2: a temporary `routines` dropped, then
    # `information_schema` put on the path: `EXECUTE r` read information_schema.routines unfiltered). An EXECUTE
    # of any other name (one prepared before, a protocol-level statement) is refused (`prepared_elsewhere`). None:
    # no such change yet.
    reprepare: frozenset[str] | None = None
    # SQL PREPAREd statements whose relation names resolve alike whatever the temporary relations and search_path: no
    # unqualified name but a `pg_…` system relation's or a CTE's (a tenant makes no function or relation PostgreSQL
    # would find first). An EXECUTE of one runs whatever `reprepare` says.
    steady: frozenset[str] = frozenset()
    # Session state on the server that decisions do not depend on (`for_decisions` leaves it out): what pins the
    # session to its server connection, and the settings replayed on another one.
    cursors: frozenset[str] = frozenset()  # WITH HOLD cursors open
    prepared: frozenset[str] = frozenset()  # SQL PREPAREd statements
    listening: frozenset[str] = frozenset()  # LISTEN channels
    locks: tuple[str, ...] = ()  # session advisory locks held (their keys as written, sorted; "?" = not constant)
    # Session SETs since the last settle, in order: (name, replay statement; "" = RESET; name "*": RESET ALL).
    settings: tuple[tuple[str, str], ...] = ()
    pins: frozenset[str] = frozenset()  # reasons the proxy cannot follow (PIN), for the rest of the session

    def apply(self, change: Change) -> SessionContext:
        """The context after `change` (transaction changes other than COMMIT leave it as it is)."""
        op, name = change.op, change.name
        if op in _HELD_OPS:
            return _apply_held(self, change)
        if op in (TEMP_TABLE, TEMP_VIEW):
            if change.if_not_exists and (name in self.temp_tables or name in self.temp_views):
                return self
            tables, views = self.temp_tables - {name}, self.temp_views - {name}
            sizes = self._sizes_without(name)
            if op == TEMP_TABLE:
                tables |= {name}
                if change.relations > 1:
                    sizes |= {(name, change.relations)}
            else:
                views |= {name}
            at_commit = self.drop_at_commit | {name} if change.flag else self.drop_at_commit - {name}
            # A temporary relation may take the name of a relation a prepared statement reads: PostgreSQL analyses
            # the statement again (with the temporary schema first) when a relation it reads changes, and would then
            # read it (a view's body is not looked through): no prepared statement stays explainable (`reprepare`).
            return replace(self, temp_tables=tables, temp_views=views, drop_at_commit=at_commit, sizes=sizes,
                           explainable=frozenset(), reprepare=self._resolved_again())
        if op == DROP_TEMP:
            if name not in self.temp_tables and name not in self.temp_views:
                return self
            return replace(self, temp_tables=self.temp_tables - {name}, temp_views=self.temp_views - {name},
                           drop_at_commit=self.drop_at_commit - {name}, sizes=self._sizes_without(name),
                           dropped=self.dropped + self._relations_of(name), explainable=frozenset(),
                           reprepare=self._resolved_again())
        if op == DISCARD_TEMP:
            return replace(self, temp_tables=frozenset(), temp_views=frozenset(), drop_at_commit=frozenset(),
                           sizes=frozenset(), dropped=self.temp_relations, explainable=frozenset(),
                           reprepare=self._resolved_again())
        if op == SET_PATH:
            # (the search_path PostgreSQL gets unchanged -- a hidden or missing schema left out, RESET of a default
            # path --: no name resolves otherwise)
            moved = change.path != self.effective()[0]
            explainable = frozenset() if moved else self.explainable
            reprepare = self._resolved_again() if moved else self.reprepare
            if change.flag:
                return replace(self, local=(change.path, change.shown), explainable=explainable, reprepare=reprepare)
            return replace(self, path=change.path, shown=change.shown, local=None, explainable=explainable,
                           reprepare=reprepare)
        if op == SET_TIMEOUT:
            if change.flag:
                return replace(self, timeout_local=(change.shown,))
            return replace(self, timeout=change.shown, timeout_local=None)
        if op == EXPORT_SNAPSHOT:
            return replace(self, exported=True)
        if op in (COMMIT, ROLLBACK, ROLLBACK_TO):
            # A transaction's end or a rollback to a savepoint may take back a temporary relation or a search_path
            # (a COMMIT of a failed transaction rolls back): until PostgreSQL has answered, no statement prepared
            # before runs by a SQL EXECUTE (`reprepare`; rt9a10 A3: `ROLLBACK; EXECUTE q` in one string).
            ended = self.end_of_transaction() if op == COMMIT else self
            if ended.reprepare or ended.explainable:
                return replace(ended, reprepare=frozenset(), explainable=frozenset())
            return ended
        return self

    def end_of_transaction(self) -> SessionContext:
        """The context once the open transaction commits: SET LOCAL and ON COMMIT DROP tables are gone."""
        if (self.local is None and not self.drop_at_commit and not self.dropped and not self.exported
                and self.timeout_local is None):
            return self
        gone = self.drop_at_commit
        moved = self.local is not None or bool(gone)  # names may resolve otherwise (`reprepare`)
        return replace(self, temp_tables=self.temp_tables - gone, temp_views=self.temp_views - gone,
                       drop_at_commit=frozenset(), local=None, dropped=0, exported=False, timeout_local=None,
                       sizes=frozenset(s for s in self.sizes if s[0] not in gone),
                       explainable=frozenset() if moved else self.explainable,
                       reprepare=self._resolved_again() if moved else self.reprepare)

    def _resolved_again(self) -> frozenset[str]:
        """`reprepare` after a change of what names resolve to: no statement prepared before it is one."""
        return frozenset()

    @property
    def temp_relations(self) -> int:
        """Temporary relations the session has (a table with its constraints' indexes and sequences, a view),
        and those it dropped in the open transaction: what `limits.max_temp_relations` bounds. PostgreSQL locks
        each relation a transaction creates or drops until the transaction ends, in a lock table of fixed size
        shared by the whole server, and drops them all in one transaction when the session ends."""
        extra = sum(n - 1 for _, n in self.sizes)
        return len(self.temp_tables) + len(self.temp_views) + extra + self.dropped

    def _relations_of(self, name: str) -> int:
        return next((n for table, n in self.sizes if table == name), 1)

    def _sizes_without(self, name: str) -> frozenset[tuple[str, int]]:
        return frozenset(s for s in self.sizes if s[0] != name) if self.sizes else self.sizes

    def effective(self) -> tuple[tuple[str, ...] | None, str | None]:
        """(search_path PostgreSQL has, SHOW text) in effect: SET LOCAL's, else the session's."""
        return self.local if self.local is not None else (self.path, self.shown)

    def effective_timeout(self) -> str | None:
        """What SHOW statement_timeout prints for the client under a limit (None: the limit, its default)."""
        shown = self.timeout_local[0] if self.timeout_local is not None else self.timeout
        return shown if shown is not None else self.timeout_default

    def for_decisions(self) -> SessionContext:
        """This context without the state decisions do not depend on (EMPTY_CONTEXT when nothing is left)."""
        if not (self.cursors or self.prepared or self.listening or self.locks or self.settings or self.pins):
            return self
        held = replace(self, cursors=frozenset(), prepared=frozenset(), listening=frozenset(), locks=(),
                       settings=(), pins=frozenset())
        return EMPTY_CONTEXT if held == EMPTY_CONTEXT else held

    def pin_reasons(self) -> tuple[str, ...]:
        """Why the session must keep its server connection (empty when it holds nothing there), by reason."""
        reasons: list[str] = []
        if self.temp_tables or self.temp_views:
            reasons.append("temp_relation")
        if self.cursors:
            reasons.append("hold_cursor")
        if self.prepared:
            reasons.append("sql_prepare")
        if self.listening:
            reasons.append("listen")
        if self.locks:
            reasons.append("advisory_lock")
        reasons += sorted(self.pins)
        return tuple(reasons)


def _apply_held(context: SessionContext, change: Change) -> SessionContext:
    """`SessionContext.apply` for the state held on the server connection."""
    op, name = change.op, change.name
    if op == HOLD_CURSOR:
        return replace(context, cursors=context.cursors | {name})
    if op == CLOSE_CURSOR:
        return replace(context, cursors=context.cursors - {name} if name else frozenset())
    if op == SQL_PREPARE:  # (a name prepared already: PostgreSQL refuses it, and it stays as it was)
        fresh = name not in context.prepared
        explainable = (context.explainable | {name} if change.flag and fresh
                       else context.explainable if change.flag else context.explainable - {name})
        reprepare = context.reprepare | {name} if context.reprepare is not None and fresh else context.reprepare
        steady = (context.steady | {name} if change.steady else context.steady - {name}) if fresh else context.steady
        return replace(context, prepared=context.prepared | {name}, explainable=explainable, reprepare=reprepare,
                       steady=steady)
    if op == DEALLOCATE:
        reprepare = context.reprepare
        if reprepare is not None:
            reprepare = reprepare - {name} if name else frozenset()
        return replace(context, prepared=context.prepared - {name} if name else frozenset(),
                       explainable=context.explainable - {name} if name else frozenset(), reprepare=reprepare,
                       steady=context.steady - {name} if name else frozenset())
    if op == LISTEN:
        return replace(context, listening=context.listening | {name})
    if op == UNLISTEN:
        return replace(context, listening=frozenset() if name == "*" else context.listening - {name})
    if op == ADVISORY_LOCK:
        return replace(context, locks=tuple(sorted((*context.locks, name))))
    if op == ADVISORY_UNLOCK:
        if name == "*":
            return replace(context, locks=())
        if name == "?":  # a key not written as constants: which lock it frees is not known
            return context
        locks = list(context.locks)
        if name in locks:
            locks.remove(name)  # a key held twice is released once per unlock (PostgreSQL counts them)
        return replace(context, locks=tuple(locks))
    if op == SETTING:
        kept = tuple(s for s in context.settings if s[0] != name)
        return replace(context, settings=(*kept, (name, change.shown or "")))
    if op == RESET_SETTINGS:
        return replace(context, settings=(("*", ""),))
    if op == PIN:
        return replace(context, pins=context.pins | {name})
    if op == DISCARD_ALL:  # DISCARD ALL = CLOSE ALL, DEALLOCATE ALL, UNLISTEN *, pg_advisory_unlock_all(), RESET ALL...
        return replace(context, cursors=frozenset(), prepared=frozenset(), listening=frozenset(), locks=(),
                       settings=(("*", ""),), explainable=frozenset(),
                       reprepare=None if context.reprepare is None else frozenset(), steady=frozenset())
    return context


_HELD_OPS = frozenset({HOLD_CURSOR, CLOSE_CURSOR, SQL_PREPARE, DEALLOCATE, LISTEN, UNLISTEN, ADVISORY_LOCK,
                       ADVISORY_UNLOCK, SETTING, RESET_SETTINGS, PIN, DISCARD_ALL})

EMPTY_CONTEXT = SessionContext()


@dataclass(frozen=True, slots=True)
class Allow:
    """Forward the client's original bytes untouched."""

    effects: frozenset[str] = frozenset()
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Forward `sql` instead of the client's text; `rules` names the rewrites applied. `explain`: what an agent's
    admission EXPLAIN plans instead of `sql` (shared strategy: policy/estimates.py), None for `sql` itself."""

    sql: str
    rules: tuple[str, ...]
    effects: frozenset[str] = frozenset()
    changes: tuple[Change, ...] = ()
    # (reserved, the client's name): hidden schema names sent as reserved missing ones (policy/hiding.py); the
    # session writes the client's name back where PostgreSQL's answer names a reserved one.
    names: tuple[tuple[str, str], ...] = ()
    explain: str | None = None
    moved: tuple[tuple[int, int, int], ...] = ()  # where reserved names move PostgreSQL's positions (hiding.Renamed)


@dataclass(frozen=True, slots=True)
class Deny:
    """Answer the client with an ErrorResponse; the session stays usable. `message` says what the rule found;
    proxy.errors.policy_denied renders the client's text from it, the rule and `statement`."""

    sqlstate: str
    message: str
    hint: str
    rule: str
    position: int = 0  # 1-based character position in the statement text PostgreSQL would report (0: none)
    statement: tuple[int, int] | None = None  # (position from 1, count) in a string of several statements
    # A name answered as missing is answered when PostgreSQL would answer a missing one (the DDL phase oracle):
    # `at_run`, a statement PostgreSQL analyzes only when it runs (a Parse of it succeeds, each Execute fails);
    # `before`, the statements of a Query ahead of the refused one, which PostgreSQL runs before it reaches it.
    at_run: bool = False
    before: Rewrite | None = None
    shift: int = 0  # characters the rewrite puts before `position` in the text PostgreSQL gets (counted by it too)


Decision = Allow | Rewrite | Deny


# TenantPolicy.key -> cache_id: a few entries per configuration, and one per distinct session context in use
# (bounded: a key evicted here only gets a new number next time, so its cached decisions are not found again).
_POLICY_IDS: dict[tuple[Any, ...], int] = {}
_MAX_POLICY_IDS = 4096
_NEXT_POLICY_ID = itertools.count()


def _policy_id(key: tuple[Any, ...]) -> int:
    found = _POLICY_IDS.get(key)
    if found is None:
        if len(_POLICY_IDS) >= _MAX_POLICY_IDS:
            del _POLICY_IDS[next(iter(_POLICY_IDS))]
        found = _POLICY_IDS[key] = next(_NEXT_POLICY_ID)
    return found


def temp_schema_first(path: tuple[str, ...]) -> bool:
    """True when an unqualified relation name resolves to a temporary relation of that name before any other
    schema's: pg_temp is not in the path (PostgreSQL then searches it first) or only pg_catalog precedes it."""
    if "pg_temp" not in path:
        return True
    for entry in path:
        if entry == "pg_temp":
            return True
        if entry != "pg_catalog":
            return False
    return True


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
    # Shared strategy: schemas of other tenants of the same database (a search_path never gets them).
    foreign_schemas: frozenset[str] = frozenset()
    # The session's context (`with_context`); the policy without one is `base`.
    context: SessionContext = field(init=False, repr=False)
    base: TenantPolicy = field(init=False, repr=False)
    path: tuple[str, ...] = field(init=False, repr=False)  # the search_path in effect (the context's, else the default)
    temp_tables: frozenset[str] = field(init=False, repr=False)
    temp_views: frozenset[str] = field(init=False, repr=False)
    temp_first: bool = field(init=False, repr=False)  # unqualified names find temporary relations first
    shown_search_path: str | None = field(init=False, repr=False)  # what SHOW search_path must print, if not PG's
    # Schemas of other tenants of the same database (schema-strategy tenants'): hidden from every catalog, name
    # conversion and qualified reference of a shared- or database-strategy tenant (a schema tenant sees an
    # allow-list instead: its own, the shared and the system schemas).
    hidden_schemas: frozenset[str] = frozenset()
    # Database strategy: other tenants (any strategy) are configured on the same backend and database, so the
    # database is not the tenant's own (`owns_database`): its catalogs' figures, advisory lock keys, NOTIFY
    # channels and other sessions' temporary schemas are theirs too (issue 14).
    database_shared: bool = False
    # Database strategy, `database_shared`: the shared tenants' tenant-scoped tables in the same database (the
    # preflight's `neighbour_tables`). Forced RLS gives this tenant none of their rows, but the planner estimates
    # them from every tenant's statistics, so references to them are refused (`others_table`; red team 9a7 H3).
    others_tables: frozenset[tuple[str, str]] = frozenset()
    # Those of `others_tables` that are inheritance parents with no tenant column (proxy/inherits.py): read without
    # ONLY they return a scoped child's rows; `FROM ONLY parent` (and UPDATE / DELETE / MERGE ONLY) reaches the
    # parent's own rows only, planned from its own statistics, and is not refused (PostgreSQL's grants decide).
    others_parents: frozenset[tuple[str, str]] = frozenset()
    # Database strategy, `database_shared`: the shared tenants' sequences there (identity and serial sequences of
    # their tables, the ones their defaults call, the others of their schemas): their positions count their inserts,
    # so references to them are refused (`others_sequence`; review 17 F4).
    others_sequences: frozenset[tuple[str, str]] = frozenset()
    # The database's other relations named as one of `others_tables` / `others_sequences` (the tenant's own): an
    # unqualified name is theirs only where PostgreSQL would find theirs first on the search_path.
    others_shadows: frozenset[tuple[str, str]] = frozenset()
    # The routines of the tenant's database PostgreSQL may run without a call naming them (attribute notation, an
    # operator, a cast, an overloaded built-in name, a view's query), read when the tenant is prepared
    # (`dbcheck.reached_routines`): policy/functions.py applies the allow-list to them, policy/readonly.py counts them.
    reached: Reached = NOTHING
    # Where some schemas are hidden (`hidden_schemas`) from a shared- or database-strategy tenant: the other schemas
    # of its database, found when the tenant is prepared (`dbcheck.schema_names`). Its catalog filters name these (the
    # ones it may see) and never the hidden ones, whose names would show in EXPLAIN and in a temporary view's text.
    known_schemas: frozenset[str] = frozenset()
    # Database strategy: the advisory locks a session may hold (config `limits.max_advisory_locks`; policy/advisory.py)
    max_advisory_locks: int = 1 << 31
    # Column names of the catalogs the proxy replaces column values in (pg_class statistics, pg_stat*/pg_statio*
    # counters), in the catalog's own order, read from the server when the tenant is prepared: they differ between
    # PostgreSQL majors. A catalog whose list is missing cannot be scrubbed and is denied where it would need it.
    catalog_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The agent profile (policy/agent.py): None for ordinary users; else every top-level query returns at most
    # this many rows (an AST-level LIMIT), only read-only statements and a stricter function list are allowed.
    agent_max_rows: int | None = None
    agent_timeout_ms: int = 0  # the agent's statement_timeout: a client may only SET a smaller one (0: none)
    # The user's statement_timeout limit (ms, 0: none): a SET or set_config() of statement_timeout reaches PostgreSQL
    # as at most this (policy/timeouts.py), so the server itself enforces it whatever the client sets.
    statement_timeout_ms: int = 0
    # The most a tenant may SET the memory and parallelism settings to (policy/resources.py; config `limits.max_*`):
    # setting name -> its maximum as PostgreSQL writes it ("256MB", "4"). A setting not listed is not capped.
    setting_caps: Mapping[str, str] = field(default_factory=dict)
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
        object.__setattr__(self, "foreign_schemas", frozenset(self.foreign_schemas))
        for name in ("others_tables", "others_parents", "others_sequences", "others_shadows"):
            object.__setattr__(self, name, frozenset((str(s), str(t)) for s, t in getattr(self, name)))
        object.__setattr__(self, "context", EMPTY_CONTEXT)
        object.__setattr__(self, "base", self)
        object.__setattr__(self, "path", search_path)
        object.__setattr__(self, "temp_tables", frozenset())
        object.__setattr__(self, "temp_views", frozenset())
        object.__setattr__(self, "temp_first", temp_schema_first(search_path))
        object.__setattr__(self, "shown_search_path", None)
        hidden = frozenset(self.hidden_schemas) - self.allowed_schemas - set(search_path)
        object.__setattr__(self, "hidden_schemas", hidden)
        object.__setattr__(self, "known_schemas", frozenset(self.known_schemas) - hidden)
        columns = {str(r): tuple(str(c) for c in cols) for r, cols in dict(self.catalog_columns).items()}
        object.__setattr__(self, "catalog_columns", MappingProxyType(columns))
        caps = {str(k).lower(): str(v) for k, v in dict(self.setting_caps).items()}
        object.__setattr__(self, "setting_caps", MappingProxyType(caps))
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
            tuple(sorted(self.foreign_schemas)),
            tuple(sorted(hidden)),
            self.database_shared,
            tuple(sorted(self.others_tables)),
            tuple(sorted(self.others_parents)),
            tuple(sorted(self.others_sequences)),
            tuple(sorted(self.others_shadows)),
            self.reached,
            tuple(sorted(self.known_schemas)),
            self.max_advisory_locks,
            tuple(sorted(columns.items())),
            self.agent_max_rows,
            self.agent_timeout_ms,
            self.statement_timeout_ms,
            tuple(sorted(caps.items())),
        )
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "_hash", hash(key))
        object.__setattr__(self, "cache_id", _policy_id(key))

    def with_context(self, context: SessionContext) -> TenantPolicy:
        """This tenant's policy for a session in `context` (the base policy itself for the empty context).
        Compared and cached by value like any policy: sessions in the same context share decisions."""
        base = self.base
        context = context.for_decisions()
        if context == EMPTY_CONTEXT:
            return base
        derived = object.__new__(TenantPolicy)
        for name in _INIT_FIELDS:
            object.__setattr__(derived, name, getattr(base, name))
        path, shown = context.effective()
        path = base.search_path if path is None else path
        object.__setattr__(derived, "context", context)
        object.__setattr__(derived, "base", base)
        object.__setattr__(derived, "path", path)
        object.__setattr__(derived, "temp_tables", context.temp_tables)
        object.__setattr__(derived, "temp_views", context.temp_views)
        object.__setattr__(derived, "temp_first", temp_schema_first(path))
        object.__setattr__(derived, "shown_search_path", shown)
        key = (*base.key, context)
        object.__setattr__(derived, "key", key)
        object.__setattr__(derived, "_hash", hash(key))
        object.__setattr__(derived, "cache_id", _policy_id(key))
        return derived

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

    @property
    def owns_database(self) -> bool:
        """Database strategy with no other tenant on the same backend and database: every session, lock key, channel
        and catalog figure of the database is the tenant's own."""
        return self.strategy == "database" and not self.database_shared

    @property
    def estimates_shared(self) -> bool:
        """Whether the planner's estimates of the tenant's tables count other tenants' rows: the shared strategy,
        and a database tenant whose database others share (its RLS tables are theirs; issue 14, red team 9a6 G1).
        EXPLAIN is then sent with COSTS OFF; COSTS ON and ANALYZE are refused."""
        return self.strategy == "shared" or (self.strategy == "database" and not self.owns_database)

    def is_reserved_setting(self, name: str) -> bool:
        """True for the RLS tenant setting and everything in the proxy's reserved namespace."""
        low = name.lower()
        return low == self.tenant_setting.lower() or low.startswith(RESERVED_NAMESPACE)

    def temp_kind(self, schema: str | None, name: str) -> str | None:
        """"table" or "view" when the relation `schema.name` is one of the session's temporary relations as far
        as it knows (any name in pg_temp is: a table unless known as a view), else None."""
        if schema == "pg_temp":
            return "view" if name in self.temp_views else "table"
        if schema is None and self.temp_first:
            if name in self.temp_tables:
                return "table"
            if name in self.temp_views:
                return "view"
        return None


_INIT_FIELDS = tuple(f.name for f in fields(TenantPolicy) if f.init)


@dataclass(frozen=True, slots=True)
class Tenant:
    """A session's tenant identity, one value passed along: its name, strategy, and metrics label."""

    name: str
    strategy: str
    label: str
