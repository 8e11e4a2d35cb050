"""The decision cache's gate: the tenant's current policy after a reload, misses observed, hits not."""

from __future__ import annotations

from types import SimpleNamespace

from proxy.policy import Allow, Deny, TenantPolicy
from proxy.policy.cache import DecisionCache, Gate

READ_ONLY = TenantPolicy(tenant="t", strategy="database")
WRITER = TenantPolicy(tenant="t", strategy="database", allow_writes=True)
INSERT = "INSERT INTO orders (id) VALUES (1)"


def test_a_gate_follows_the_policy_a_reload_installs() -> None:
    owner = SimpleNamespace(policies={"t": READ_ONLY})
    observed: list[str] = []
    gate = Gate(DecisionCache(), owner, "t", lambda stage, _seconds: observed.append(stage))
    assert isinstance(gate("query", INSERT), Deny)
    owner.policies = {"t": WRITER}  # what Proxy.install_config does: a new dict
    assert isinstance(gate("query", INSERT), Allow)
    owner.policies = {}  # the tenant is gone: its sessions end elsewhere; the gate keeps its first policy
    assert isinstance(gate("query", INSERT), Deny)
    assert observed.count("total") == 2  # two misses (one per policy); the third call was a hit


def test_lru_keeps_what_was_used_last() -> None:
    cache = DecisionCache(maxsize=2)
    for sql in ("SELECT 'a'", "SELECT 'b'"):
        cache.get_or_decide(READ_ONLY, sql)
    assert cache.cached(READ_ONLY, "SELECT 'a'") is not None  # now the most recent
    cache.get_or_decide(READ_ONLY, "SELECT 'c'")  # evicts 'b'
    assert cache.cached(READ_ONLY, "SELECT 'b'") is None
    assert cache.cached(READ_ONLY, "SELECT 'a'") is not None
    assert (cache.hits, cache.misses) == (2, 3)
