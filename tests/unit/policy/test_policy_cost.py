"""The static cost estimate the gate looks at before deciding a miss on the event loop."""

from __future__ import annotations

from proxy.policy.cache import INLINE_MAX_ESTIMATE
from proxy.policy.cost import GUARD_SECONDS, estimate, guard_sites


def test_words_that_may_need_a_guard_are_counted() -> None:
    assert guard_sites("select 1::regclass, 'x'::regtype, format_type(1, null), pg_get_expr(a, b)") == 4
    assert guard_sites("select id, name from orders where region = 'eu'") == 0


def test_the_estimate_grows_with_guards_catalog_items_and_query_levels() -> None:
    assert estimate("SELECT id FROM orders WHERE id = 1") < 0.001
    assert estimate("SELECT 1::regclass") >= GUARD_SECONDS
    assert estimate("SELECT " + ",".join(f"{i}::regclass" for i in range(4))) > INLINE_MAX_ESTIMATE
    implicit = "SELECT typinput FROM pg_type UNION ALL VALUES " + ",".join(f"({i})" for i in range(16))
    assert estimate(implicit) > INLINE_MAX_ESTIMATE  # no guard word, yet each row is guarded
    hidden = 'SELECT typinput FROM U&"\\0070g_type" UNION ALL VALUES ' + ",".join(f"({i})" for i in range(16))
    assert estimate(hidden) > INLINE_MAX_ESTIMATE  # a catalog named without "pg_"
    assert estimate("SELECT 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12") < INLINE_MAX_ESTIMATE  # plain lists: cheap
