"""Read replicas: their health from polled probes, which requests are provably read-only, where one goes; pure."""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from pglast.parser import ParseError, parse_sql_json

from proxy import errors
from proxy._accel import speedups
from proxy.config import BackendConfig, Config, ReplicaConfig, RoutingConfig
from proxy.errors import PgError
from proxy.policy import readonly, shape
from proxy.policy.model import READ_ONLY, Deny
from proxy.policy.reached import NOTHING, Reached
from proxy.protocol import messages as m

# What the poller asks (the I/O layer runs it with the backend's own credentials, never a tenant's).
PRIMARY_PROBE = "SELECT pg_is_in_recovery(), pg_current_wal_insert_lsn()::text"
REPLICA_PROBE = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"
HISTORY = 1024  # primary WAL positions kept (at one a second: 17 minutes; older ones count as "far behind")
SILENCE_POLLS = 3  # a replica whose last good probe is older than this many poll intervals (+ the timeout) is down



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
    # The replicas fit to serve under a max_lag (no read-your-writes bound), until when that holds without a new
    # probe: what every routed request asks, computed once per probe instead of once per request.
    _fit: dict[float, tuple[list[str], float]] = field(default_factory=dict)
    # Bumped at every change of what `candidates` answers but the clock (a probe, a failure, a check, a reload
    # replacing the set): a kept server's resume reuses `kept`'s answer while it and the fit's deadline hold.
    generation: int = 0

    def primary_polled(self, sent_at: float, in_recovery: bool, lsn: str) -> None:
        """The primary's probe, sent at `sent_at`: every commit acknowledged before then is at or before `lsn`."""
        if not in_recovery:
            self.primary.append((sent_at, parse_lsn(lsn)))

    def replica_polled(self, name: str, now: float, in_recovery: bool, replay_lsn: str | None) -> None:
        """A streaming replica's probe: it has replayed up to `replay_lsn`."""
        r = self.replicas[name]
        self._changed()
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
        self._changed()
        if seconds is None:
            self.replica_failed(name, "its staleness query returned NULL")
            return
        r.probed_at, r.failure, r.caught_up = now, None, False
        r.fresh_as_of = now - max(0.0, seconds)

    def replica_failed(self, name: str, reason: str) -> None:
        self.replicas[name].failure = reason
        self._changed()

    def _changed(self) -> None:
        """A probe's or check's news: the fit is computed anew, a kept answer (kept_until) no longer stands."""
        self._fit.clear()
        self.generation += 1

    def replica_checked(self, name: str, waiting: str, problem: str | None) -> None:
        """A replica's start-up checks ended with `problem` (None: passed): its failure if it was only `waiting`
        for them (a failed probe since stays), or if it served meanwhile (its last pass stood across a reload)."""
        r = self.replicas.get(name)
        if r is not None and (r.failure == waiting or (problem is not None and r.failure is None)):
            r.failure = problem
            self._changed()  # (its passing checks put it back at once, not at the next probe; failing: out at once)

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
        fit = self._fit.get(max_lag)
        if fit is None or now > fit[1]:
            fit = self._fit[max_lag] = self._fit_now(now, max_lag)
        if wrote_at is None:
            return fit[0]
        replicas = self.replicas
        return [n for n in fit[0] if replicas[n].fresh_as_of >= wrote_at - max_staleness]  # type: ignore[operator]

    def _fit_now(self, now: float, max_lag: float) -> tuple[list[str], float]:
        """The replicas up and lagging at most `max_lag` now, and until when they all stay so without a new probe
        (a replica left out comes back only with one: a probe clears `_fit`)."""
        out = []
        window = SILENCE_POLLS * self.poll_interval + self.probe_timeout
        until = float("inf")
        for name, r in self.replicas.items():
            fresh, probed = r.fresh_as_of, r.probed_at
            if r.failure is not None or fresh is None or probed is None or probed < now - window:
                continue
            if not r.caught_up and now - fresh > max_lag:
                continue
            until = min(until, probed + window, until if r.caught_up else fresh + max_lag)
            out.append(name)
        return out, until


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

    __slots__ = ("_routes", "asked", "judged", "memo", "read_only", "routing", "watching", "wrote", "wrote_at")

    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self.read_only = False  # the last request routed
        # What the session sent its primary server since it got it may have written (the request that asked for it
        # and those sent while it holds it: a read-write transaction that only read is no write).
        self.wrote = False
        self.watching = False  # the session judges what it sends its server (a primary, transaction pooling)
        self.judged = 0  # bytes of the request judged when the session asked for a server
        # (sql, its cached decision, the session's decide function): what routing looked up, for the gate
        self.memo: tuple[str, object, object] | None = None
        self.wrote_at: float | None = None
        self._routes = (Route(routing, False), Route(routing, True))  # (made anew at each write: `released`)
        self.asked: tuple[Route, object, object] | None = None  # (Route, server request, the ask made of both): resume

    def route(self, read_only: bool, writes: Callable[[], bool] | None = None) -> Route:
        """The Route of a request (`read_only`: it provably only reads; else `writes()` says whether it may write,
        None: it may)."""
        self.read_only = read_only
        self.wrote = not read_only and (writes is None or writes())
        return self._routes[read_only]  # (the same object from write to write: a kept server's resume keys on it)

    def attached(self, replica: str | None, pooled: bool) -> None:
        """The session got its server (`replica`: its name, None: the primary): in transaction pooling, what it sends
        a primary not yet known to be written is judged (`sent`) until something may write."""
        self.watching = pooled and replica is None and not self.wrote

    def sent(self, writes: bool) -> None:
        """A request sent to the server the session holds (`writes`: it may write)."""
        if writes:
            self.wrote, self.watching = True, False

    def login(self) -> Route:
        """The login's server (its startup answer; in session pooling the session's): "auto" on the primary, yet no
        write to wait for."""
        self.read_only = True
        self.wrote = False
        return Route(self.routing, False, self.wrote_at)

    def reconfigure(self, routing: RoutingConfig) -> None:
        """A reload's routing for the session's user: its next request's Route carries it (its last write's time
        kept: read-your-writes holds across the reload)."""
        if routing != self.routing:
            self.routing = routing
            self._routes = (Route(routing, False, self.wrote_at), Route(routing, True, self.wrote_at))

    def released(self, replica: str | None, clock: Callable[[], float]) -> None:
        """The session gives its server back: a primary after requests that may have written marks a write (at
        `clock()`, read only then)."""
        if replica is None and self.wrote:
            self.wrote_at = wrote_at = clock()
            self._routes = (Route(self.routing, False, wrote_at), Route(self.routing, True, wrote_at))
        self.wrote = self.watching = False


def routed(config: Config, user: str) -> Routed | None:
    """`user`'s routing, or None when every statement of it goes to the primary."""
    routing = routing_of(config, user)
    return None if routing.route == "primary" else Routed(routing)


def routing_of(config: Config, user: str) -> RoutingConfig:
    """`user`'s routing settings; route "primary" when its backend has no replica."""
    routing = config.routing_for(user)
    tenant = config.tenants[config.users[user].tenant]
    if routing.route != "primary" and not config.backends[tenant.backend].replicas:
        return replace(routing, route="primary")
    return routing


@dataclass(frozen=True, slots=True)
class Choice:
    """Where a request goes: `replica` (its name), or the primary (None); or `refusal` when it may go nowhere.
    `server`: where it went, as the metrics name it: the replica, "primary" or "refused"."""

    replica: str | None = None
    refusal: PgError | None = None
    server: str = field(init=False, default="")

    def __post_init__(self) -> None:  # (made once per replica, refusal or primary: read per routed request)
        object.__setattr__(self, "server", "refused" if self.refusal is not None else self.replica or "primary")


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
        for prev in old.values():  # (replaced: what kept answered from it no longer stands)
            prev.generation += 1
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
        if route is None:
            return _PRIMARY
        routing = route.routing
        kind = routing.route
        if kind == "primary" or (kind == "auto" and not route.read_only):
            return _PRIMARY
        s = self.sets.get(backend)
        names = s.candidates(now, routing.max_replica_lag, route.wrote_at, routing.max_staleness) if s else []
        if names:
            if len(names) == 1:  # (one replica: no turn to take)
                name = names[0]
            else:
                self._turn += 1
                name = names[self._turn % len(names)]
            return self._choice(name)
        if routing.route == "replica" and routing.replica_fallback == "refuse":
            return Choice(refusal=errors.no_healthy_replica(tenant=tenant, seconds=routing.max_replica_lag))
        return _PRIMARY

    def _choice(self, name: str) -> Choice:
        choice = self._choices.get(name)
        return choice if choice is not None else self._choices.setdefault(name, Choice(name))

    def rows(self, now: float) -> Iterator[tuple[str, str, Health, float | None, str | None]]:
        """(backend, replica, health, lag seconds, why it is down) per replica."""
        for backend, s in self.sets.items():
            for name, r in s.replicas.items():
                health = s.health(name, now)
                why = r.failure or ("no probe for too long" if health is Health.DOWN else None)
                yield backend, name, health, r.lag(now), why


def kept(router: Router, backend: str, route: Route, now: float, replica: str | None) -> Choice | None:
    """A routed request whose session has a server kept for it (sticky) on `replica` (None: the primary): that
    server's Choice when `router.choose` could choose it now — a replica among the candidates (up, within the lag, and
    holding the session's last write: the same checks; any of them, the round robin's turn is not taken), the
    primary when the route goes there (a write, or no candidate and a fallback to the primary) — else None (the
    session gives the server back and asks the pool, which chooses anew). Run at every resumed routed request: it
    has a compiled twin (proxy/_speedups.pyx)."""
    routing = route.routing
    kind = routing.route
    if kind == "primary" or (kind == "auto" and not route.read_only):
        return _PRIMARY if replica is None else None
    s = router.sets.get(backend)
    if s is None:
        names: list[str] = []
    else:  # (the usual case, no write to hold, read inline: ReplicaSet.candidates' cached fit)
        fit = s._fit.get(routing.max_replica_lag) if route.wrote_at is None else None
        names = fit[0] if fit is not None and now <= fit[1] else s.candidates(
            now, routing.max_replica_lag, route.wrote_at, routing.max_staleness)
    if replica is not None:
        if replica not in names:
            return None
        return router._choice(replica)
    if names or (kind == "replica" and routing.replica_fallback == "refuse"):
        return None
    return _PRIMARY


def kept_until(router: Router, backend: str, route: Route) -> tuple[ReplicaSet | None, int, float]:
    """How long what `kept` just answered for `route` on `backend` stands: (the replica set, its generation, until
    when): the same answer while the set's generation is that one (no probe, failure, check or reload since) and
    the clock has not passed `until` (its fit's own deadline); (None, 0, -inf) when not known (no set or no fit:
    ask `kept` again). The route's own inputs are the Route object's (immutable): the caller keys on it."""
    s = router.sets.get(backend)
    fit = s._fit.get(route.routing.max_replica_lag) if s is not None else None
    if fit is None:
        return _UNKNOWN
    return s, s.generation, fit[1]  # type: ignore[union-attr]


_UNKNOWN: tuple[ReplicaSet | None, int, float] = (None, 0, float("-inf"))


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


def read_only_request(data: bytes, statement: Callable[[str], str | None],
                      judge: Callable[[str], bool] | None = None) -> bool:
    """Whether the request(s) in `data` (client messages ending with a Query, a Sync, or a Flush after which the client
    waits for answers: asyncpg's Parse/Describe/Flush) only read: every SQL text read-only by `read_only_sql`, a
    Bind's statement named in `data` or known to `statement(name)`; any other message (a FunctionCall, COPY data, a
    batch the client goes on writing) is not. `judge`: another verdict per text (writes_nothing_sql)."""
    read_only_sql = judge or _READ_ONLY_SQL
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


def lone_query_text(data: bytes) -> str | None:
    """The SQL of `data` when it is exactly one Query message whose text decodes (messages.query_text), else None
    (the session's routing then judges it by its walk: read_only_request)."""
    n = len(data)
    if n < 6 or data[0] != 0x51 or data[n - 1] != 0 or _LENGTH(data, 1)[0] != n - 1:
        return None
    try:
        return m.query_text(data[5:])
    except m.DecodeError:
        return None


def request_route(routing: Routed, data: bytes, decide: object, statement: Callable[[str], str | None]) -> Route:
    """The Route of the request(s) in `data` (Routed.route done) for a session whose reads may go to a replica (it
    checked SERIALIZABLE and the agent profile first). A lone Query (lone_query_text) whose decision the policy
    cache holds (`decide.cached(sql)`) only reads as the decision says (READ_ONLY, judged once per text or shape with
    it), the decision kept for the gate that reads the Query next (`routing.memo`: one cache lookup for both); any
    other request is walked (read_only_request, `statement`: a prepared statement's text). One routine for the
    usual request, so it has a compiled twin (proxy/_speedups.pyx)."""
    sql = lone_query_text(data)
    read_only = None
    if sql is not None:
        cached = getattr(decide, "cached", None)
        decision = cached(sql) if cached is not None else None
        if decision is not None:
            routing.memo = (sql, decision, decide)
            read_only = type(decision) is not Deny and READ_ONLY in decision.effects
    if read_only is None:
        read_only = read_only_request(data, statement)
    if read_only:  # (the usual case: no closure to build)
        return routing.route(True)
    return routing.route(False, lambda: not read_only_request(data, statement, writes_nothing_sql))


def resume(routing: Routed, data: bytes, decide: object, statement: Callable[[str], str | None], request: object,
           ask_of: Callable[[object, Route], object]) -> object:
    """What a routed session holding no agent profile nor default_transaction_isolation setting asks the pool for
    the request `data` begins, to resume the server kept for it (ClientSession.resume_route): the bytes judged
    (`routing.judged`), their Route (request_route) and `ask_of(request, route)`, the same ask object while its
    Route and `request` are (the pool keys its kept answer on it: Pool.reuse). A compiled twin."""
    routing.judged = len(data)
    route = request_route(routing, data, decide, statement)
    asked = routing.asked
    if asked is not None and asked[0] is route and asked[1] is request:
        return asked[2]
    ask = ask_of(request, route)
    routing.asked = (route, request, ask)
    return ask


def _cstring(body: bytes, at: int) -> tuple[str, int]:
    end = body.find(b"\x00", at)
    if end < 0:
        return "", len(body)
    return body[at:end].decode("utf-8", "replace"), end + 1


def _read_only(sql: str, transactions: bool = False, reached: Reached | None = None) -> str:
    """"y" when `sql` provably only reads (readonly.verdict; `transactions`: writes nothing, a read-write BEGIN or SET
    TRANSACTION included), "" when not, "?" when it does not parse."""
    try:
        tree = json.loads(parse_sql_json(sql))
    except (ParseError, ValueError, RecursionError):  # (too deep for the JSON reader: the policy refuses it)
        return "?"  # (not read-only; a shape that does not parse is judged by its text)
    return readonly.verdict([item.get("stmt", {}) for item in tree.get("stmts", [])], transactions,
                            _reached if reached is None else reached)


def writes_nothing_sql(sql: str) -> bool:
    """Whether `sql` provably writes nothing: read-only as `read_only_sql` judges it, but a read-write BEGIN or SET
    TRANSACTION is fine (a read-write transaction that only read is no write for read-your-writes). Verdicts kept
    per text, as read_only_sql's (integer literals: per shape)."""
    return _judged(sql, True)


def read_only_sql(sql: str) -> bool:
    """Whether `sql` provably only reads (PostgreSQL's grammar decides): SELECTs without FOR UPDATE/SHARE, INTO or
    data-modifying WITH, calling only built-in functions that neither write nor lock; SHOW; a plain SET; EXPLAIN of
    those; a BEGIN (or SET TRANSACTION) READ ONLY. Anything else, or what does not parse, goes to the primary.
    A text with integer literals is judged by its shape (policy/shape.py: the literals as parameters), so
    `... WHERE aid = 4711` and `... WHERE aid = 42` share one parse (where a parameter cannot stand, as in
    `varchar(10)`, the shape does not parse: the text itself is judged). Verdicts are kept per text (texts without
    integer literals) and per shape, a long one under its digest. A text longer than MAX_JUDGED characters is not
    judged (parsing it would hold the event loop; the policy decides such texts in its worker processes)."""
    return _judged(sql, False)


def _judged(sql: str, transactions: bool) -> bool:
    if len(sql) > MAX_JUDGED:
        return False
    reached = _reached  # (set_reached may replace it from a preparing thread: a verdict made with this is not kept)
    key = ("w", _key(sql)) if transactions else _key(sql)
    known = _verdicts.get(key)
    if known is None:
        shaped = shape.split(sql)
        if shaped is not None:
            shape_key = ("wshape" if transactions else "shape", _key(shaped[0]))
            known = _verdicts.get(shape_key)
            if known is None:
                known = _keep(shape_key, _read_only(shape.text(shaped[0]), transactions, reached), reached)
            if known != "?":
                return known == "y"
            return _read_only(sql, transactions, reached) == "y"  # (a text with integer literals is not kept)
        known = _keep(key, _read_only(sql, transactions, reached), reached)
    return known == "y"


_READ_ONLY_SQL = read_only_sql
# Every prepared tenant's database's routines run without a call (policy/reached.py; `set_reached`): the judge of
# a text without its tenant counts them all (a name that reaches a routine in any database goes to the primary).
_reached: Reached = NOTHING


def set_reached(reached: Reached) -> None:
    """Replace the routines the text judge counts (at start and reload); the verdicts kept are judged again."""
    global _reached
    if reached == _reached:
        return
    _reached = reached
    _verdicts.clear()
    if speedups is not None:  # (its last-Parse memo holds a verdict too)
        speedups._forget_verdicts()
MAX_JUDGED = 16 * 1024  # characters: a longer text goes to the primary
_verdicts: dict[object, str] = {}  # text, digest or ("shape", key) -> "y" | "" | "?" (does not parse)
_MAX_VERDICTS, _MAX_KEPT = 4096, 2048


def _key(text: str) -> object:
    return text if len(text) <= _MAX_KEPT else hashlib.blake2b(text.encode(), digest_size=16).digest()


def _keep(key: object, verdict: str, reached: Reached | None = None) -> str:
    if reached is not None and reached is not _reached:
        return verdict
    if len(_verdicts) >= _MAX_VERDICTS:
        _verdicts.clear()
    _verdicts[key] = verdict
    return verdict


ISOLATION = "default_transaction_isolation"


def serializable(statement: str | None) -> bool:
    """Whether the statement a session replays for default_transaction_isolation (its startup value or its SET,
    SET SESSION CHARACTERISTICS) may make its transactions SERIALIZABLE, which a standby refuses (0A000): its reads
    then go to the primary (a mention of the word is enough: the primary serves any read)."""
    return statement is not None and "serializable" in statement.lower()


if speedups is not None:  # the compiled build of these names (proxy/_speedups.pyx, proxy/_accel.py)
    read_only_request = speedups.read_only_request
    lone_query_text = speedups.lone_query_text
    request_route = speedups.request_route
    resume = speedups.resume
    kept = speedups.kept
