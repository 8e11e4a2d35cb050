"""The decision cache and each tenant's gate: what every Query and Parse goes through before it is forwarded."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from proxy.policy import shape
from proxy.policy.engine import decide
from proxy.policy.model import EMPTY_CONTEXT, Allow, Decision, SessionContext, TenantPolicy
from proxy.policy.shape import split


class _Entry:
    """A cached value and when it was stored or last moved to the recent end (the cache's clock)."""

    __slots__ = ("seq", "value")

    def __init__(self, value: object, seq: int) -> None:
        self.value = value
        self.seq = seq


class DecisionCache:
    """A bounded, roughly least-recently-used map of decisions keyed by (policy, SQL text); a policy compares by
    value (its `cache_id`).

    Plain simple-protocol text with integer literals is keyed by its shape (`proxy.policy.shape`), so
    `... WHERE id = 1` and `... WHERE id = 2` share one entry when the shape's decision holds for both.
    Both maps are plain dicts in recency order; the first entry is evicted. A hit moves its entry to the end
    only once more than (maxsize - 1) // 2 stores and moves have happened since it was stored or last moved
    (moving it on every hit cost more than the lookup), so an entry hit at least that often is never evicted;
    a bound of 1 or 2 is exact LRU.
    """

    __slots__ = ("_clock", "_data", "_shapes", "hits", "maxsize", "misses")

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._clock = 0  # counts stores and moves: an entry's age is the clock minus its seq
        self._data: dict[tuple[int, str], _Entry] = {}
        self._shapes: dict[tuple[int, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._data) + len(self._shapes)

    def cached(self, policy: TenantPolicy, sql: str) -> Decision | None:
        """The cached decision for (policy, sql), by shape or by text (counted as a hit), else None."""
        cache_id = policy.cache_id
        parts = split(sql)
        if parts is not None:  # a usable shape decides for every text of that shape
            skey = (cache_id, parts[0])
            entry = self._shapes.get(skey)
            if entry is not None and entry.value is not None:
                self._touch(self._shapes, skey, entry)
                self.hits += 1
                by_shape = entry.value
                return by_shape if type(by_shape) is Allow else by_shape.fill(parts[1])
        key = (cache_id, sql)
        entry = self._data.get(key)
        if entry is None:
            return None
        self._touch(self._data, key, entry)
        self.hits += 1
        return entry.value

    def _touch(self, data: dict, key: tuple[int, str], entry: _Entry) -> None:
        """A hit: move the entry to the recent end if it has aged by about half the bound."""
        if self._clock - entry.seq > (self.maxsize - 1) // 2:
            self._clock += 1
            entry.seq = self._clock
            del data[key]
            data[key] = entry

    def get_or_decide(
        self, policy: TenantPolicy, sql: str, timings: dict[str, float] | None = None
    ) -> Decision:
        """The cached decision for (policy, sql), deciding and caching it on a miss (stage times in
        `timings` on a miss only)."""
        found = self.cached(policy, sql)
        if found is not None:
            return found
        return self.decide_miss(policy, sql, timings)

    def decide_miss(self, policy: TenantPolicy, sql: str, timings: dict[str, float] | None = None) -> Decision:
        """Decide (policy, sql) after `cached()` found nothing, and cache the outcome (counted as a miss)."""
        self.misses += 1
        parts = split(sql)
        if parts is not None:
            key, literals = parts
            skey = (policy.cache_id, key)
            if skey not in self._shapes:
                text = shape.text(key)
                by_shape = shape.from_decision(text, len(literals), decide(policy, text, timings))
                self._store(self._shapes, skey, by_shape)
                if by_shape is not None:
                    return by_shape if isinstance(by_shape, Allow) else by_shape.fill(literals)
                timings = None  # the stage times are the shape's
        decision = decide(policy, sql, timings)
        self._store(self._data, (policy.cache_id, sql), decision)
        return decision

    def _store(self, data: dict, key: tuple[int, str], value: object) -> None:
        self._clock += 1
        data[key] = _Entry(value, self._clock)
        if len(data) > self.maxsize:
            del data[next(iter(data))]

    def clear(self) -> None:
        """Drop every cached decision (e.g. after a configuration reload)."""
        self._data.clear()
        self._shapes.clear()


class Gate:
    """One tenant's decision function, `gate(kind, sql)`, shared by its sessions: the shared cache under the
    tenant's current policy (`owner.policies[tenant]`: a reload replaces that dict), with the decision time of
    each miss given to `observe(stage, seconds)` (stages "total", "gate", "rewrite", "verify")."""

    __slots__ = ("cache", "observe", "owner", "policy", "tenant")

    def __init__(self, cache: DecisionCache, owner: Any, tenant: str, observe: Callable[[str, float], None]) -> None:
        self.cache = cache
        self.owner = owner
        self.tenant = tenant
        self.policy = owner.policies[tenant]  # the policy when the gate was made, should a reload drop the tenant
        self.observe = observe

    def current(self) -> TenantPolicy:
        """The policy the gate decides by now (what a session's Parse memo is keyed by)."""
        policies: dict[str, TenantPolicy] = self.owner.policies
        return policies.get(self.tenant, self.policy)

    def __call__(self, kind: str, sql: str) -> Decision:
        return self.decide_for(self.current(), sql)

    def decide_for(self, policy: TenantPolicy, sql: str) -> Decision:
        """The decision for `sql` under `policy` (the tenant's, or a session's `with_context` of it)."""
        found = self.cache.cached(policy, sql)
        if found is not None:
            return found
        stages: dict[str, float] = {}
        t0 = perf_counter()
        decision = self.cache.decide_miss(policy, sql, stages)
        self.observe("total", perf_counter() - t0)
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
    is the tenant's default, is decided under the tenant's policy itself (the same decision, a shared entry)."""

    __slots__ = ("_base", "_names", "_policy", "_whole", "context", "gate")

    def __init__(self, gate: Gate, context: SessionContext) -> None:
        self.gate = gate
        self.context = context
        self._names = tuple(n.lower() for n in (*context.temp_tables, *context.temp_views))
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

    def __call__(self, kind: str, sql: str) -> Decision:
        policy = self.current()
        if self._whole:
            return self.gate.decide_for(policy, sql)
        low = sql.lower()
        if "u&" in low or any(name in low for name in self._names):
            return self.gate.decide_for(policy, sql)
        return self.gate.decide_for(policy.base, sql)
