"""A cheap static estimate of how long deciding a statement takes, looked at before deciding it on the event loop."""

from __future__ import annotations

from proxy.policy.guards import GUARD_SUBSTRINGS, PG_WORDS, REG_WORDS

# Seconds, measured on the policy corpus (red team 7 F5/F8): a written conversion or naming function gets a guard
# (~12-15 ms each to build and verify); where the statement may read a catalog or convert to a reg* type, every
# list item or set-operation arm may be an implicitly typed OID guarded as a whole (a VALUES row: ~9 ms) and every
# `pg_` word a catalog filter (a catalog query of three relations: ~50 ms); a query level costs a walk.
GUARD_SECONDS = 0.012
ITEM_SECONDS = 0.004
SELECT_SECONDS = 0.0005


def guard_sites(low: str) -> int:
    """How many places of the lower-cased text `low` may each need a guard (an over-count: a word is enough)."""
    sites = sum(low.count(word) for word in GUARD_SUBSTRINGS)
    if "reg" in low:
        sites += len(REG_WORDS.findall(low))
    if "pg_" in low:
        sites += len(PG_WORDS.findall(low))
    return sites


def estimate(sql: str) -> float:
    """Seconds deciding `sql` may take, from its words alone (tens of microseconds for a text of 4 KiB)."""
    low = sql.lower()
    seconds = guard_sites(low) * GUARD_SECONDS + low.count("select") * SELECT_SECONDS
    if "pg_" in low or "reg" in low or "u&" in low:  # a catalog or a reg* type may be read (U&"\0070g_type" too)
        items = low.count(",") + low.count("union") + low.count("intersect") + low.count("except")
        seconds += (items + low.count("pg_")) * ITEM_SECONDS
    return seconds
