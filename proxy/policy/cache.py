"""The decision cache and each tenant's gate: what every Query and Parse goes through before it is forwarded."""

from __future__ import annotations

import sys
from collections.abc import Callable
from hashlib import blake2b
from time import perf_counter

from proxy._accel import speedups
from proxy.policy import cost, shape
from proxy.policy.engine import UNLIMITED, Limits, decide
from proxy.policy.model import EMPTY_CONTEXT, Allow, Decision, Deny, Rewrite, SessionContext, Tenant, TenantPolicy
from proxy.policy.shape import split

# A text longer than this (in characters) is cached under a digest of it, not under the text, is never shaped, and
# on a miss is decided by a worker process rather than on the event loop (its decision may take a while).
_LONG_TEXT = 4096
LONG_TEXT = _LONG_TEXT
# What an entry costs besides its texts: the key tuple, the entry, the dict slot, the decision object (bytes).
_ENTRY_OVERHEAD = 400
# One entry may take at most this fraction of the byte bound (a huge rewrite is decided again rather than kept).
_ENTRY_SHARE = 64
# Deciding cache misses on the event loop: each tenant may spend a quarter of the loop's time on it, with a burst of
# 20 ms; past that, its misses go to the decision workers (other sessions do not wait for them).
INLINE_SHARE = 0.25
INLINE_BURST = 0.020
# A miss whose static cost estimate (proxy/policy/cost.py) is above this goes to a worker whatever the allowance: the
# allowance is checked before a decision, so one costly decision would otherwise run to its end on the loop (red
# team 7 F8: 272 `N::regclass` items in 4 KiB held every tenant's sessions for 13.8 s).
INLINE_MAX_ESTIMATE = 0.040


def text_key(sql: str) -> str | bytes:
    """What a text is cached under: the text itself, or a 160-bit digest of a long one (which is not held)."""
    if len(sql) <= _LONG_TEXT:
        return sql
    return blake2b(sql.encode("utf-8", "surrogatepass"), digest_size=20).digest()


def entry_size(key: str | bytes, value: object) -> int:
    """The bytes an entry holds: its key text and the texts of its decision, plus a fixed overhead."""
    size = _ENTRY_OVERHEAD + sys.getsizeof(key)
    kind = type(value)
    if kind is Rewrite:
        size += sys.getsizeof(value.sql)  # type: ignore[union-attr]
    elif kind is Deny:
        size += sys.getsizeof(value.message)  # type: ignore[union-attr]  # the hint is the rule's shared text
        if value.before is not None:  # type: ignore[union-attr]  # the statements that run before its refusal
            size += sys.getsizeof(value.before.sql)  # type: ignore[union-attr]
    elif kind is shape.Template:
        for piece in value.pieces:  # type: ignore[union-attr]
            size += sys.getsizeof(piece)
    return size


def _parse_error(decision: object) -> bool:
    return type(decision) is Deny and decision.rule == "parse_error"  # type: ignore[union-attr]


class _Entry:
    """A cached value, when it was stored or last moved to the recent end (the cache's clock), and its bytes."""

    __slots__ = ("seq", "size", "value")

    def __init__(self, value: object, seq: int, size: int) -> None:
        self.value = value
        self.seq = seq
        self.size = size


class _Part:
    """One tenant's entries: its text and shape maps (each in recency order), and how much they hold."""

    __slots__ = ("data", "entries", "held", "shapes", "tenant")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.data: dict[tuple[int, str | bytes], _Entry] = {}
        self.shapes: dict[tuple[int, str], _Entry] = {}
        self.entries = 0
        self.held = 0  # bytes


class DecisionCache:
    """A bounded, roughly least-recently-used map of decisions keyed by (policy, SQL text), kept per tenant; a policy
    compares by value (its `cache_id`).

    Plain simple-protocol text with integer literals is keyed by its shape (`proxy.policy.shape`), so
    `... WHERE id = 1` and `... WHERE id = 2` share one entry when the shape's decision holds for both. A text
    longer than LONG_TEXT is keyed by its digest (the text is not held) and not shaped. A denial for text that does
    not parse is not kept under a short text (deciding it again costs no more than a lookup) and never under a
    long one.

    Bounds: `maxsize` entries and `max_bytes` bytes (entry_size: its texts plus a fixed overhead) for all tenants
    together. When a store goes past either, entries are evicted from the tenant holding the most (bytes, or
    entries) — so a tenant is only ever evicted by its own stores or by a tenant holding no more than it: with k
    tenants caching, each keeps at least a k-th of the bounds, whatever the others send. Within a tenant the
    oldest entry goes first. Each map is a plain dict in recency order; a hit moves its entry to the end only
    once more than (maxsize - 1) // 2 stores and moves have happened since it was stored or last moved (moving it
    on every hit cost more than the lookup), so an entry hit at least that often is never evicted for age; a
    bound of 1 or 2 is exact LRU.
    """

    __slots__ = ("_clock", "_parts", "entries", "held", "hits", "max_bytes", "maxsize", "misses")

    def __init__(self, maxsize: int = 10_000, max_bytes: int = 64 << 20) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.entries = 0
        self.held = 0  # bytes held by all entries
        self._clock = 0  # counts stores and moves: an entry's age is the clock minus its seq
        self._parts: dict[str, _Part] = {}

    def __len__(self) -> int:
        return self.entries

    def tenant_usage(self, tenant: str) -> tuple[int, int]:
        """(entries, bytes) one tenant holds."""
        part = self._parts.get(tenant)
        return (0, 0) if part is None else (part.entries, part.held)

    def cached(self, policy: TenantPolicy, sql: str) -> Decision | None:
        """The cached decision for (policy, sql), by shape or by text (counted as a hit), else None."""
        part = self._parts.get(policy.tenant)
        if part is None:
            return None
        cache_id = policy.cache_id
        if len(sql) <= _LONG_TEXT:
            parts = split(sql)
            if parts is not None:  # a usable shape decides for every text of that shape
                skey = (cache_id, parts[0])
                found = part.shapes.get(skey)
                if found is not None and found.value is not None:
                    self._touch(part.shapes, skey, found)
                    self.hits += 1
                    by_shape = found.value
                    return by_shape if type(by_shape) is Allow else by_shape.fill(parts[1])
            key: tuple[int, str | bytes] = (cache_id, sql)
        else:
            key = (cache_id, text_key(sql))
        entry = part.data.get(key)
        if entry is None:
            return None
        self._touch(part.data, key, entry)
        self.hits += 1
        return entry.value  # type: ignore[return-value]

    def _touch(self, data: dict, key: tuple, entry: _Entry) -> None:
        """A hit: move the entry to the recent end if it has aged by about half the bound."""
        if self._clock - entry.seq > (self.maxsize - 1) // 2:
            self._clock += 1
            entry.seq = self._clock
            del data[key]
            data[key] = entry

    def get_or_decide(
        self, policy: TenantPolicy, sql: str, timings: dict[str, float] | None = None, limits: Limits = UNLIMITED
    ) -> Decision:
        """The cached decision for (policy, sql), deciding and caching it on a miss (stage times in
        `timings` on a miss only)."""
        found = self.cached(policy, sql)
        if found is not None:
            return found
        return self.decide_miss(policy, sql, timings, limits)

    def decide_miss(
        self, policy: TenantPolicy, sql: str, timings: dict[str, float] | None = None, limits: Limits = UNLIMITED
    ) -> Decision:
        """Decide (policy, sql) after `cached()` found nothing, and cache the outcome (counted as a miss)."""
        self.misses += 1
        parts = split(sql) if len(sql) <= _LONG_TEXT else None
        if parts is not None:
            key, literals = parts
            skey = (policy.cache_id, key)
            part = self._part(policy.tenant)
            if skey not in part.shapes:
                text = shape.text(key)
                decision = decide(policy, text, timings, limits)
                by_shape = shape.from_decision(text, len(literals), decision)
                if by_shape is not None or not _parse_error(decision):  # an unparseable shape is not kept either
                    self._store(part, part.shapes, skey, key, by_shape)
                if by_shape is not None:
                    return by_shape if isinstance(by_shape, Allow) else by_shape.fill(literals)
                timings = None  # the stage times are the shape's
        decision = decide(policy, sql, timings, limits)
        self.store(policy, sql, decision)
        return decision

    def store(self, policy: TenantPolicy, sql: str, decision: Decision) -> None:
        """Cache the decision for (policy, sql) as written (a decision made elsewhere, or a miss decided here)."""
        if _parse_error(decision):
            return  # nothing worth keeping: a short text fails to parse as fast as it is looked up
        part = self._part(policy.tenant)
        key = text_key(sql)
        self._store(part, part.data, (policy.cache_id, key), key, decision)

    def _part(self, tenant: str) -> _Part:
        part = self._parts.get(tenant)
        if part is None:
            part = self._parts[tenant] = _Part(tenant)
        return part

    def _store(self, part: _Part, data: dict, key: tuple, text: str | bytes, value: object) -> None:
        size = entry_size(text, value)
        if size > self.max_bytes // _ENTRY_SHARE:
            return  # decided again when it comes back, rather than crowding out many ordinary entries
        old = data.pop(key, None)
        if old is not None:
            self._forget(part, old)
        self._clock += 1
        data[key] = _Entry(value, self._clock, size)
        part.entries += 1
        part.held += size
        self.entries += 1
        self.held += size
        while self.entries > self.maxsize or self.held > self.max_bytes:
            self._evict(part)

    def _forget(self, part: _Part, entry: _Entry) -> None:
        part.entries -= 1
        part.held -= entry.size
        self.entries -= 1
        self.held -= entry.size

    def _evict(self, storing: _Part) -> None:
        """Evict the oldest entry of the tenant holding the most of what is over its bound (the storing tenant on a
        tie)."""
        by_bytes = self.held > self.max_bytes
        victim = storing
        for part in self._parts.values():
            if (part.held > victim.held) if by_bytes else (part.entries > victim.entries):
                victim = part
        data, shapes = victim.data, victim.shapes
        if shapes and (not data or next(iter(shapes.values())).seq < next(iter(data.values())).seq):
            data = shapes
        key = next(iter(data))
        self._forget(victim, data.pop(key))

    def clear(self) -> None:
        """Drop every cached decision (e.g. after a configuration reload)."""
        self._parts.clear()
        self.entries = 0
        self.held = 0


class Pending:
    """A cache miss a gate leaves to a decision worker: what to decide (`policy`, `sql`, within `limits`); the
    outcome goes back through `finish` (on the event loop), which caches it."""

    __slots__ = ("gate", "policy", "sql")

    def __init__(self, gate: Gate, policy: TenantPolicy, sql: str) -> None:
        self.gate = gate
        self.policy = policy
        self.sql = sql

    @property
    def tenant(self) -> str:
        return self.gate.tenant.name

    @property
    def limits(self) -> Limits:
        return self.gate.limits

    def run(self) -> tuple[Decision, dict[str, float]]:
        """Decide here, as a worker would: (decision, stage times including "total")."""
        stages: dict[str, float] = {}
        t0 = perf_counter()
        decision = decide(self.policy, self.sql, stages, self.gate.limits)
        stages["total"] = perf_counter() - t0
        return decision, stages

    def finish(self, decision: Decision, stages: dict[str, float]) -> None:
        """The decision arrived: cache it and observe its stage times."""
        gate = self.gate
        gate.cache.store(self.policy, self.sql, decision)
        for stage, seconds in stages.items():
            gate.observe(stage, seconds)


class Gate:
    """One tenant's decision function, `gate(kind, sql)`, shared by its sessions: the shared cache under the
    tenant's current policy (`policies(name)`, e.g. the tenant registry's lookup: a reload replaces the policy),
    with the decision time of each miss given to `observe(stage, seconds)` (stages "total", "gate", "rewrite",
    "verify").

    A miss is decided on the spot (on the event loop) while it is cheap: a text of at most LONG_TEXT characters
    whose static cost estimate is at most INLINE_MAX_ESTIMATE, within the tenant's inline budget (INLINE_SHARE of
    the time, INLINE_BURST at once). Any other miss is answered
    with a `Pending`, for a decision worker, so a tenant's costly statements never stall other sessions."""

    __slots__ = ("allowance", "cache", "limits", "observe", "policies", "policy", "stamp", "tenant")

    def __init__(
        self, cache: DecisionCache, policies: Callable[[str], TenantPolicy | None], tenant: Tenant,
        observe: Callable[[str, float], None], limits: Limits = UNLIMITED,
    ) -> None:
        self.cache = cache
        self.policies = policies
        self.tenant = tenant
        policy = policies(tenant.name)
        if policy is None:
            raise KeyError(tenant.name)
        self.policy = policy  # the policy when the gate was made, should a reload drop the tenant
        self.observe = observe
        self.limits = limits
        self.allowance = INLINE_BURST  # seconds of inline deciding the tenant may still spend now
        self.stamp = perf_counter()

    def current(self) -> TenantPolicy:
        """The policy the gate decides by now (what a session's Parse memo is keyed by)."""
        found = self.policies(self.tenant.name)
        return self.policy if found is None else found

    def __call__(self, kind: str, sql: str) -> Decision | Pending:
        return self.decide_for(self.current(), sql)

    def policy_for(self, sql: str) -> TenantPolicy:
        """The policy `sql` is decided under now (what its decision is keyed by)."""
        return self.current()

    def cached(self, sql: str) -> Decision | None:
        """The decision cached for `sql` (counted as a hit), None when it is not: nothing is decided."""
        return self.cache.cached(self.current(), sql)

    def decide_for(self, policy: TenantPolicy, sql: str) -> Decision | Pending:
        """The decision for `sql` under `policy` (the tenant's, or a session's `with_context` of it), or a
        `Pending` for a decision worker."""
        found = self.cache.cached(policy, sql)
        if found is not None:
            return found
        t0 = perf_counter()
        allowance = self.allowance + (t0 - self.stamp) * INLINE_SHARE
        self.allowance = allowance if allowance < INLINE_BURST else INLINE_BURST
        self.stamp = t0
        if len(sql) > _LONG_TEXT or self.allowance <= 0 or cost.estimate(sql) > INLINE_MAX_ESTIMATE:
            return Pending(self, policy, sql)
        stages: dict[str, float] = {}
        decision = self.cache.decide_miss(policy, sql, stages, self.limits)
        t1 = perf_counter()
        self.allowance -= t1 - t0
        self.observe("total", t1 - t0)
        for stage, seconds in stages.items():
            self.observe(stage, seconds)
        return decision

    def with_context(self, context: SessionContext) -> Gate | ContextGate:
        """The decision function of a session in `context`: this gate itself for the empty context."""
        return self if context is EMPTY_CONTEXT else ContextGate(self, context)


class ContextGate:
    """A session's decisions while it has a context (temporary relations, its own search_path): under the
    tenant's current policy `with_context` of it, through the shared cache (sessions in the same context share
    entries). A text that cannot name one of the session's temporary relations, in a session whose search_path
    is the tenant's default, nor read a statement_timeout the session set above its limit, nor EXPLAIN an EXECUTE
    of a statement the session prepared (`SessionContext.explainable`), is decided under the tenant's policy itself
    (the same decision, a shared entry)."""

    __slots__ = ("_base", "_executes", "_names", "_policy", "_timeout", "_whole", "context", "gate")

    def __init__(self, gate: Gate, context: SessionContext) -> None:
        self.gate = gate
        self.context = context
        # (each as written unquoted and quoted: `v"c` is written "v""c" — review 17 F3)
        self._names = tuple({f for n in (*context.temp_tables, *context.temp_views)
                             for f in (n.lower(), n.lower().replace('"', '""'))})
        self._timeout = context.effective_timeout() is not None  # reads of statement_timeout: policy/timeouts.py
        # EXPLAIN EXECUTE of them (rewrite._opaque_execute), an EXECUTE after names moved (engine, `reprepare`)
        self._executes = bool(context.explainable) or context.reprepare is not None
        self._base: TenantPolicy | None = None
        self._policy: TenantPolicy | None = None
        self._whole = True  # every statement depends on the context (its search_path is not the default)

    def current(self) -> TenantPolicy:
        """The session's policy now (a reload replaces the tenant's): what its Parse memo is keyed by."""
        base = self.gate.current()
        if base is not self._base or self._policy is None:
            self._base = base
            self._policy = policy = base.with_context(self.context)
            self._whole = policy.path != base.search_path or policy.shown_search_path is not None
        return self._policy

    def __call__(self, kind: str, sql: str) -> Decision | Pending:
        return self.gate.decide_for(self._policy_for(sql), sql)

    def policy_for(self, sql: str) -> TenantPolicy:
        """The policy `sql` is decided under now (what its decision is keyed by: the session's context where the
        text may depend on it, else the tenant's)."""
        return self._policy_for(sql)

    def cached(self, sql: str) -> Decision | None:
        """The decision cached for `sql` (counted as a hit), None when it is not: nothing is decided."""
        return self.gate.cache.cached(self._policy_for(sql), sql)

    def _policy_for(self, sql: str) -> TenantPolicy:
        policy = self.current()
        if self._whole:
            return policy
        low = sql.lower()
        if "u&" in low or "temp" in low or "snapshot" in low or any(name in low for name in self._names) or (
                self._timeout and ("timeout" in low or "setting" in low or "show" in low)) or (
                self._executes and "execute" in low):
            return policy
        return policy.base


if speedups is not None:  # the compiled build of these names (proxy/_speedups.pyx, proxy/_accel.py)
    DecisionCache = speedups.DecisionCache
