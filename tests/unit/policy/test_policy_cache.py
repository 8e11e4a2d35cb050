"""The decision cache's gate: the tenant's current policy after a reload, misses observed, hits not."""

from __future__ import annotations

from types import SimpleNamespace

from proxy.policy import Allow, Deny, Rewrite, TenantPolicy
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


def test_an_entry_in_use_outlives_many_newer_ones() -> None:
    """Roughly LRU: an entry hit once per half-bound of stores stays, however many come after it; one never hit
    since it was stored goes first."""
    cache = DecisionCache(maxsize=4)
    cache.get_or_decide(READ_ONLY, "SELECT 'hot'")
    cache.get_or_decide(READ_ONLY, "SELECT 'cold'")
    for i in range(20):
        cache.get_or_decide(READ_ONLY, f"SELECT 'new {i}'")
        assert cache.cached(READ_ONLY, "SELECT 'hot'") is not None, i
        assert len(cache) <= 4
    assert cache.cached(READ_ONLY, "SELECT 'cold'") is None
    assert cache.cached(READ_ONLY, "SELECT 'new 19'") is not None
    assert (cache.hits, cache.misses) == (21, 22)


def test_a_shape_and_its_texts_share_one_entry() -> None:
    """Texts differing only in integer literals hit the shape's entry; a text with a string literal is its own."""
    cache = DecisionCache(maxsize=10)
    shared = TenantPolicy(tenant="acme", strategy="shared", tenant_value="acme",
                          scoped_tables={("public", "orders"): "tenant_id"})
    first = cache.get_or_decide(shared, "SELECT amount FROM orders WHERE id = 1")
    again = cache.cached(shared, "SELECT amount FROM orders WHERE id = 22")
    assert isinstance(first, Rewrite) and isinstance(again, Rewrite)
    assert again.sql == first.sql.replace("id = 1", "id = 22") and again.rules == first.rules
    assert cache.cached(shared, "SELECT amount FROM orders WHERE id = '1'") is None
    assert (len(cache), cache.hits, cache.misses) == (1, 1, 1)


def test_an_unusable_shape_leaves_each_text_to_its_own_entry() -> None:
    """A literal cast to regclass names a relation: its shape decides nothing, so every text is decided as written
    (the shape is looked up first, finds its 'unusable' mark, and the text's own entry answers)."""
    cache = DecisionCache(maxsize=10)
    first = cache.get_or_decide(READ_ONLY, "SELECT 1259::regclass")
    assert cache.cached(READ_ONLY, "SELECT 1259::regclass") is first
    assert cache.cached(READ_ONLY, "SELECT 2615::regclass") is None  # not answered by the other text's entry
    assert (cache.hits, cache.misses) == (1, 1)
    assert len(cache) == 2  # the shape's mark and the text's decision


def test_lru_keeps_what_was_used_last() -> None:
    cache = DecisionCache(maxsize=2)
    for sql in ("SELECT 'a'", "SELECT 'b'"):
        cache.get_or_decide(READ_ONLY, sql)
    assert cache.cached(READ_ONLY, "SELECT 'a'") is not None  # now the most recent
    cache.get_or_decide(READ_ONLY, "SELECT 'c'")  # evicts 'b'
    assert cache.cached(READ_ONLY, "SELECT 'b'") is None
    assert cache.cached(READ_ONLY, "SELECT 'a'") is not None
    assert (cache.hits, cache.misses) == (2, 3)
