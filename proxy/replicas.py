"""Read replicas: their health from polled probes, which requests are provably read-only, where one goes; pure."""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pglast.parser import ParseError, parse_sql_json

from proxy import errors
from proxy.config import BackendConfig, Config, ReplicaConfig, RoutingConfig
from proxy.errors import PgError
from proxy.policy import shape
from proxy.policy.builtins import BUILTIN_FUNCTIONS
from proxy.policy.context import SEQUENCE_FUNCTIONS, STATEFUL_FUNCTIONS
from proxy.policy.functions import SYSTEM_FUNCTION_SCHEMAS
from proxy.policy.settings import NOT_REPLAYABLE

# What the poller asks (the I/O layer runs it with the backend's own credentials, never a tenant's).
PRIMARY_PROBE = "SELECT pg_is_in_recovery(), pg_current_wal_insert_lsn()::text"
REPLICA_PROBE = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"
HISTORY = 1024  # primary WAL positions kept (at one a second: 17 minutes; older ones count as "far behind")
SILENCE_POLLS = 3  # a replica whose last good probe is older than this many poll intervals (+ the timeout) is down

# Built-in functions a read-only routing never sends to a replica: they write, leave state that pins the session to
# its server (proxy/policy/context.py), read the session's own sequence state, or fail in recovery.
PRIMARY_FUNCTIONS = frozenset({
    "nextval", "setval", "currval", "lastval", "set_config", "pg_notify", "txid_current", "txid_current_if_assigned",
    "pg_current_xact_id", "pg_current_xact_id_if_assigned", "pg_current_wal_lsn", "pg_current_wal_insert_lsn",
    "pg_export_snapshot", *STATEFUL_FUNCTIONS, *SEQUENCE_FUNCTIONS,
})
_PRIMARY_PREFIXES = ("pg_advisory_", "pg_try_advisory_", "lo_")
_WRITING_NODES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "intoClause", "lockingClause"})


class Health(enum.StrEnum):
    """A replica's health as SHOW SERVERS and the metrics show it."""

    HEALTHY = "healthy"
    LAGGING = "lagging"  # replay lag above [routing] max_replica_lag
    DOWN = "down"  # its probe failed, timed out, went silent, or it is not in recovery (promoted)


def parse_lsn(text: str) -> int:
    """A WAL position as PostgreSQL prints it ("16/B374D848") as a number."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


# --- replica health --------------------------------------------------------------------------


@dataclass(slots=True)
class Replica:
    """One replica's probe results: `fresh_as_of` is the (monotonic) time up to which it is known to hold every
    commit of its primary; lag is how long ago that was (0 while it has replayed the primary's last position)."""

    name: str
    etl: bool  # staleness from a query, not WAL replay positions
    fresh_as_of: float | None = None
    caught_up: bool = False
    probed_at: float | None = None  # the last good probe
    replay_lsn: int = 0
    failure: str | None = "not probed yet"

    def lag(self, now: float) -> float | None:
        if self.fresh_as_of is None:
            return None
        return 0.0 if self.caught_up else max(0.0, now - self.fresh_as_of)

    def holds(self, at: float) -> bool:
        """Whether it holds every commit acknowledged before `at` (monotonic)."""
        return self.fresh_as_of is not None and self.fresh_as_of >= at


@dataclass(slots=True)
class ReplicaSet:
    """A backend's replicas and its primary's recent WAL positions (as (probe sent at, LSN), oldest first)."""

    backend: str
    replicas: dict[str, Replica]
    poll_interval: float
    probe_timeout: float
    max_lag: float
    primary: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def primary_polled(self, sent_at: float, in_recovery: bool, lsn: str) -> None:
        """The primary's probe, sent at `sent_at`: every commit acknowledged before then is at or before `lsn`."""
        if not in_recovery:
            self.primary.append((sent_at, parse_lsn(lsn)))

    def replica_polled(self, name: str, now: float, in_recovery: bool, replay_lsn: str | None) -> None:
        """A streaming replica's probe: it has replayed up to `replay_lsn`."""
        r = self.replicas[name]
        if not in_recovery or replay_lsn is None:
            self.replica_failed(name, "not in recovery (promoted?)" if not in_recovery else "no WAL replayed yet")
            return
        r.replay_lsn = parse_lsn(replay_lsn)
        r.probed_at, r.failure = now, None
        fresh = [sent for sent, lsn in self.primary if lsn <= r.replay_lsn]
        if fresh and (r.fresh_as_of is None or fresh[-1] > r.fresh_as_of):
            r.fresh_as_of = fresh[-1]
        r.caught_up = bool(self.primary) and r.replay_lsn >= self.primary[-1][1]

    def replica_staleness(self, name: str, now: float, seconds: float | None) -> None:
        """An ETL-fed replica's staleness query answered `seconds` (None: it has no data yet)."""
        r = self.replicas[name]
        if seconds is None:
            self.replica_failed(name, "its staleness query returned NULL")
            return
        r.probed_at, r.failure, r.caught_up = now, None, False
        r.fresh_as_of = now - max(0.0, seconds)

    def replica_failed(self, name: str, reason: str) -> None:
        self.replicas[name].failure = reason

    def replica_checked(self, name: str, waiting: str, problem: str | None) -> None:
        """A replica's start-up checks ended with `problem` (None: passed): its failure if it was only `waiting`
        for them (a failed probe since stays)."""
        r = self.replicas.get(name)
        if r is not None and r.failure == waiting:
            r.failure = problem

    def health(self, name: str, now: float) -> Health:
        r = self.replicas[name]
        if r.failure is not None or r.probed_at is None:
            return Health.DOWN
        if now - r.probed_at > SILENCE_POLLS * self.poll_interval + self.probe_timeout:
            return Health.DOWN
        lag = r.lag(now)
        return Health.LAGGING if lag is None or lag > self.max_lag else Health.HEALTHY

    def candidates(self, now: float, max_lag: float, wrote_at: float | None, max_staleness: float) -> list[str]:
        """The replicas that may serve a read: up, lagging at most `max_lag`, and (after the session's write at
        `wrote_at`) holding every commit up to `max_staleness` seconds before that write."""
        out = []
        silent = now - SILENCE_POLLS * self.poll_interval - self.probe_timeout  # (health() inlined: once a request)
        for name, r in self.replicas.items():
            fresh = r.fresh_as_of
            if r.failure is not None or fresh is None or r.probed_at is None or r.probed_at < silent:
                continue
            if not r.caught_up and now - fresh > max_lag:
                continue
            if wrote_at is not None and fresh < wrote_at - max_staleness:
                continue
            out.append(name)
        return out


# --- routing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """What the session tells the pool about a request: its routing settings, whether it is provably read-only,
    and when the session last committed a write (monotonic; None: never)."""

    routing: RoutingConfig
    read_only: bool
    wrote_at: float | None = None


class Routed:
    """A session's routing (kept by the session when its route is not "primary" and its backend has replicas):
    each request's Route, and when it last released a primary server after a request not known to only read."""

    __slots__ = ("_routes", "read_only", "routing", "wrote_at")

    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self.read_only = False  # the last request routed
        self.wrote_at: float | None = None
        self._routes = (Route(routing, False), Route(routing, True))  # (until a write: then made per request)

    def route(self, read_only: bool) -> Route:
        self.read_only = read_only
        if self.wrote_at is None:
            return self._routes[read_only]
        return Route(self.routing, read_only, self.wrote_at)

    def login(self) -> Route:
        """The login's server (its startup answer; in session pooling the session's): "auto" on the primary, yet no
        write to wait for."""
        self.read_only = True
        return Route(self.routing, False, self.wrote_at)

    def released(self, replica: str | None, now: float) -> None:
        """The session gives its server back: a primary after a request that may have written marks a write."""
        if replica is None and not self.read_only:
            self.wrote_at = now


def routed(config: Config, user: str) -> Routed | None:
    """`user`'s routing, or None when every statement of it goes to the primary."""
    routing = config.routing_for(user)
    tenant = config.tenants[config.users[user].tenant]
    if routing.route == "primary" or not config.backends[tenant.backend].replicas:
        return None
    return Routed(routing)


@dataclass(frozen=True, slots=True)
class Choice:
    """Where a request goes: `replica` (its name), or the primary (None); or `refusal` when it may go nowhere."""

    replica: str | None = None
    refusal: PgError | None = None


_PRIMARY = Choice()


class Router:
    """Every backend's replica set; chooses a server for each routed request (round robin over the candidates)."""

    def __init__(self, config: Config) -> None:
        self.sets: dict[str, ReplicaSet] = {}
        self._turn = 0
        self._choices: dict[str, Choice] = {}  # one (immutable) Choice per replica name
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """A (re)load: replicas kept by name keep what their probes told."""
        routing, old = config.routing, self.sets
        self.sets = {}
        for name, b in config.backends.items():
            if not b.replicas:
                continue
            prev = old.get(name)
            s = ReplicaSet(name, {}, routing.poll_interval, routing.probe_timeout, routing.max_replica_lag)
            if prev is not None:
                s.primary = prev.primary
            for r in b.replicas:
                kept = prev.replicas.get(r.name) if prev is not None else None
                etl = r.staleness_query is not None
                s.replicas[r.name] = kept if kept is not None and kept.etl == etl else Replica(r.name, etl)
            self.sets[name] = s

    def choose(self, backend: str, route: Route | None, now: float, tenant: str) -> Choice:
        if route is None or route.routing.route == "primary" or (route.routing.route == "auto" and not route.read_only):
            return _PRIMARY
        s = self.sets.get(backend)
        routing = route.routing
        names = s.candidates(now, routing.max_replica_lag, route.wrote_at, routing.max_staleness) if s else []
        if names:
            if len(names) > 1:
                self._turn += 1
            name = names[self._turn % len(names)]
            choice = self._choices.get(name)
            return choice if choice is not None else self._choices.setdefault(name, Choice(name))
        if routing.route == "replica" and routing.replica_fallback == "refuse":
            return Choice(refusal=errors.no_healthy_replica(tenant=tenant, seconds=routing.max_replica_lag))
        return _PRIMARY

    def rows(self, now: float) -> Iterator[tuple[str, str, Health, float | None, str | None]]:
        """(backend, replica, health, lag seconds, why it is down) per replica."""
        for backend, s in self.sets.items():
            for name, r in s.replicas.items():
                health = s.health(name, now)
                why = r.failure or ("no probe for too long" if health is Health.DOWN else None)
                yield backend, name, health, r.lag(now), why


def probe_targets(config: Config) -> list[tuple[BackendConfig, str, list[tuple[BackendConfig, ReplicaConfig]]]]:
    """What the poller connects to, per backend with replicas: its primary, the database it connects to (the first,
    by name, of its tenants that use the backend's own role; else postgres), and its replicas, each as connection
    settings with the backend's own credentials (never a tenant's)."""
    out = []
    for name, b in config.backends.items():
        if not b.replicas:
            continue
        databases = sorted(t.database for t in config.tenants.values() if t.backend == name and not t.backend_user)
        replicas = [(config.replica_backend(b, r), r) for r in b.replicas]
        out.append((b, databases[0] if databases else "postgres", replicas))
    return out


# --- which requests are provably read-only -----------------------------------------------------


def read_only_request(data: bytes, statement: Callable[[str], str | None]) -> bool:
    """Whether the request(s) in `data` (client messages ending with a Query, a Sync, or a Flush after which the client
    waits for answers: asyncpg's Parse/Describe/Flush) only read: every SQL text read-only by `read_only_sql`, a
    Bind's statement named in `data` or known to `statement(name)`; any other message (a FunctionCall, COPY data, a
    batch the client goes on writing) is not."""
    n = len(data)
    if n > 6 and data[0] == 0x51 and _LENGTH(data, 1)[0] == n - 1 and data[-1] == 0:  # one Query: the usual case
        return read_only_sql(data[5:-1].decode("utf-8", "replace"))
    pos, parsed, last = 0, {}, 0
    while n - pos >= 5:
        type_ = data[pos]
        (length,) = _LENGTH(data, pos + 1)
        body, pos = data[pos + 5:pos + 1 + length], pos + 1 + length
        if pos > n:
            return False
        last = type_
        if type_ == 0x51:  # Query
            if not read_only_sql(_cstring(body, 0)[0]):
                return False
        elif type_ == 0x50:  # Parse
            name, at = _cstring(body, 0)
            parsed[name] = read_only_sql(_cstring(body, at)[0])
            if not parsed[name]:
                return False
        elif type_ == 0x42:  # Bind
            name = _cstring(body, body.find(b"\x00") + 1)[0]
            ok = parsed.get(name)
            if ok is None:
                text = statement(name)
                ok = text is not None and read_only_sql(text)
            if not ok:
                return False
        elif type_ not in (0x45, 0x44, 0x53, 0x48, 0x43):  # Execute, Describe, Sync, Flush, Close
            return False
    return pos == n and last in (0x51, 0x53, 0x48)


_LENGTH = struct.Struct("!I").unpack_from


def _cstring(body: bytes, at: int) -> tuple[str, int]:
    end = body.find(b"\x00", at)
    if end < 0:
        return "", len(body)
    return body[at:end].decode("utf-8", "replace"), end + 1


def _read_only(sql: str) -> str:
    try:
        tree = json.loads(parse_sql_json(sql))
    except (ParseError, ValueError):
        return "?"  # (not read-only; a shape that does not parse is judged by its text)
    open_rw = False  # a BEGIN without READ ONLY, not (yet) followed by SET TRANSACTION READ ONLY
    stmts = tree.get("stmts", [])
    for item in stmts:
        stmt = item.get("stmt", {})
        kind, node = next(iter(stmt.items())) if len(stmt) == 1 else ("", {})
        if kind == "TransactionStmt" and node.get("kind") in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
            open_rw = not _sets_read_only(node.get("options", ()))
        elif kind == "TransactionStmt" and node.get("kind") in _ENDS:  # what the text did in it only read
            if not node.get("chain"):  # (AND CHAIN opens the next one with the ended one's characteristics)
                open_rw = False
        elif kind == "TransactionStmt" and node.get("kind") in _SAVEPOINTS:
            continue
        elif kind == "VariableSetStmt" and node.get("name") == "TRANSACTION":
            if not _sets_read_only(node.get("args", ())):
                return ""
            open_rw = False
        elif kind == "VariableSetStmt":  # a session setting: replayed on whichever server the session gets
            if not _session_setting(node):
                return ""
        elif kind == "ExplainStmt":
            if not _reads(node.get("query", {})):
                return ""
        elif kind not in ("SelectStmt", "VariableShowStmt") or not _reads(stmt):
            return ""
    return "y" if stmts and not open_rw else ""


def read_only_sql(sql: str) -> bool:
    """Whether `sql` provably only reads (PostgreSQL's grammar decides): SELECTs without FOR UPDATE/SHARE, INTO or
    data-modifying WITH, calling only built-in functions that neither write nor lock; SHOW; a plain SET; EXPLAIN of
    those; a BEGIN (or SET TRANSACTION) READ ONLY. Anything else, or what does not parse, goes to the primary.
    A text with integer literals is judged by its shape (policy/shape.py: the literals as parameters), so
    `... WHERE aid = 4711` and `... WHERE aid = 42` share one parse (where a parameter cannot stand, as in
    `varchar(10)`, the shape does not parse: the text itself is judged). Verdicts are kept per text (texts without
    integer literals) and per shape, a long one under its digest. A text longer than MAX_JUDGED characters is not
    judged (parsing it would hold the event loop; the policy decides such texts in its worker processes)."""
    if len(sql) > MAX_JUDGED:
        return False
    key = _key(sql)
    known = _verdicts.get(key)
    if known is None:
        shaped = shape.split(sql)
        if shaped is not None:
            shape_key = ("shape", _key(shaped[0]))
            known = _verdicts.get(shape_key)
            if known is None:
                known = _keep(shape_key, _read_only(shape.text(shaped[0])))
            if known != "?":
                return known == "y"
            return _read_only(sql) == "y"  # (a text with integer literals is not kept: its shape is)
        known = _keep(key, _read_only(sql))
    return known == "y"


MAX_JUDGED = 16 * 1024  # characters: a longer text goes to the primary
_verdicts: dict[object, str] = {}  # text, digest or ("shape", key) -> "y" | "" | "?" (does not parse)
_MAX_VERDICTS, _MAX_KEPT = 4096, 2048


def _key(text: str) -> object:
    return text if len(text) <= _MAX_KEPT else hashlib.blake2b(text.encode(), digest_size=16).digest()


def _keep(key: object, verdict: str) -> str:
    if len(_verdicts) >= _MAX_VERDICTS:
        _verdicts.clear()
    _verdicts[key] = verdict
    return verdict


_ENDS = frozenset({"TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK"})
_SAVEPOINTS = frozenset({"TRANS_STMT_SAVEPOINT", "TRANS_STMT_RELEASE", "TRANS_STMT_ROLLBACK_TO"})
# Settings a SET sent to a replica could fail on or that change what a transaction may do.
_NOT_ON_REPLICA = frozenset({"transaction_read_only", "default_transaction_read_only", "transaction_isolation",
                             "default_transaction_isolation", "role", "session_authorization",
                             "transaction_deferrable", "default_transaction_deferrable"})


def _session_setting(node: dict) -> bool:
    """A plain SET/RESET of a session setting (not SET TRANSACTION, SET SESSION CHARACTERISTICS, RESET ALL, SET ...
    FROM CURRENT, a transaction-mode or role setting, nor one that pins the session: seed): it writes nothing, runs
    as well on a replica, and the session replays it on whichever server it gets next."""
    name = node.get("name", "")
    return (node.get("kind") in ("VAR_SET_VALUE", "VAR_SET_DEFAULT", "VAR_RESET") and name.islower()
            and name not in _NOT_ON_REPLICA and name not in NOT_REPLAYABLE and _reads(node))


def _sets_read_only(options: object) -> bool:
    """Whether a BEGIN / START TRANSACTION / SET TRANSACTION option list leaves the transaction read-only and runnable
    on a standby: PostgreSQL applies the options in order (`READ ONLY, READ WRITE` is read-write: the last one wins),
    and a standby refuses SERIALIZABLE (0A000)."""
    read_only = False
    for opt in options if isinstance(options, list) else ():
        d = opt.get("DefElem", {})
        name, arg = d.get("defname"), d.get("arg", {}).get("A_Const", {})
        if name == "transaction_read_only":
            read_only = arg.get("ival", {}).get("ival") == 1
        elif name == "transaction_isolation" and arg.get("sval", {}).get("sval", "").lower() == "serializable":
            return False
    return read_only


ISOLATION = "default_transaction_isolation"


def serializable(statement: str | None) -> bool:
    """Whether the statement a session replays for default_transaction_isolation (its startup value or its SET,
    SET SESSION CHARACTERISTICS) may make its transactions SERIALIZABLE, which a standby refuses (0A000): its reads
    then go to the primary (a mention of the word is enough: the primary serves any read)."""
    return statement is not None and "serializable" in statement.lower()


def _reads(node: object) -> bool:
    """No writing node, no function outside the read-only built-ins, anywhere in `node`."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in _WRITING_NODES:
                    return False
                if key == "FuncCall" and not _read_only_function(value.get("funcname", ())):
                    return False
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _read_only_function(funcname: list) -> bool:
    names = [n.get("String", {}).get("sval", "") for n in funcname]
    if not names or (len(names) == 2 and names[0] not in SYSTEM_FUNCTION_SCHEMAS) or len(names) > 2:
        return False
    name = names[-1]
    return name in BUILTIN_FUNCTIONS and name not in PRIMARY_FUNCTIONS and not name.startswith(_PRIMARY_PREFIXES)
