"""statement_timeout under a limit (policy/timeouts.py): what the client is shown of it, followed in the session's
context, and decided in that context by its gate."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.policy import Allow, Rewrite, TenantPolicy, decide
from proxy.policy.cache import DecisionCache, Gate, Pending
from proxy.policy.model import EMPTY_CONTEXT, SET_TIMEOUT, TEMP_TABLE, Change
from proxy.policy.timeouts import show_text, shown_value, startup_context
from proxy.registry import Tenant

LIMITED = TenantPolicy(tenant="t", strategy="database", statement_timeout_ms=10_000)


@pytest.mark.parametrize(("ms", "text"), [(0, "0"), (1, "1ms"), (1500, "1500ms"), (90_000, "90s"),
                                           (5_400_000, "90min"), (7_200_000, "2h"), (172_800_000, "2d"),
                                           (86_401_000, "86401s")])
def test_show_text_is_postgresqls(ms: int, text: str) -> None:
    """SHOW prints a time setting in the largest unit that divides it (guc.c)."""
    assert show_text(ms) == text


def test_shown_value_reads_as_postgresql_does() -> None:
    assert [shown_value(v) for v in ("0", "1h", "3600000", "0.4", "1.5min", "100us", "soon", "-1")] == [
        "0", "1h", "1h", "0", "90s", "0", None, None]


def test_the_context_follows_set_local_reset_and_the_end_of_a_transaction() -> None:
    raised = EMPTY_CONTEXT.apply(Change(0, SET_TIMEOUT, shown="0"))
    assert raised.effective_timeout() == "0"
    local = raised.apply(Change(0, SET_TIMEOUT, shown="1h", flag=True))
    assert local.effective_timeout() == "1h" and local.end_of_transaction().effective_timeout() == "0"
    assert local.apply(Change(0, SET_TIMEOUT)).effective_timeout() is None  # RESET: the limit, the default
    assert raised.apply(Change(0, SET_TIMEOUT)) == EMPTY_CONTEXT
    assert raised.for_decisions() == raised  # decisions depend on it


def test_a_session_that_raised_it_reads_its_value_and_shares_every_other_decision() -> None:
    """The session's gate decides reads of the setting in its context; other texts stay the tenant's (shared)."""
    cache = DecisionCache()
    gate = Gate(cache, lambda _name: LIMITED, Tenant("t", "database", "t"), lambda _stage, _s: None)
    session = gate.with_context(EMPTY_CONTEXT.apply(Change(0, SET_TIMEOUT, shown="0")))
    for sql in ("SHOW statement_timeout", "SHOW ALL", "SELECT current_setting('statement_timeout')",
                "SELECT setting FROM pg_settings"):
        assert isinstance(_decided(gate("query", sql)), Allow), sql
        shown = _decided(session("query", sql))
        assert isinstance(shown, Rewrite) and "statement_timeout_shown" in shown.rules, sql
        assert session.cached(sql) == shown  # (the routing's lookup: nothing decided)
    assert _decided(session("query", "SELECT 1")) == _decided(gate("query", "SELECT 1"))
    with_temp = gate.with_context(EMPTY_CONTEXT.apply(Change(0, TEMP_TABLE, "x")))
    assert isinstance(_decided(with_temp("query", "SHOW statement_timeout")), Allow)


def _decided(decision: object) -> object:
    """A gate's answer, decided here when it left it to a worker (its inline budget spent on a slow host)."""
    if isinstance(decision, Pending):
        outcome, stages = decision.run()
        decision.finish(outcome, stages)
        return outcome
    return decision


def test_a_batch_reads_what_it_set_earlier_in_it() -> None:
    decision = decide(LIMITED, "SET LOCAL statement_timeout = 0; SHOW statement_timeout")
    assert isinstance(decision, Rewrite) and "THEN '0'" in decision.sql
    assert [c.op for c in decision.changes] == [SET_TIMEOUT]
    unlimited = dataclasses.replace(LIMITED, statement_timeout_ms=0)
    assert isinstance(decide(unlimited, "SET statement_timeout = 0; SHOW statement_timeout"), Allow)


def test_a_startup_value_above_the_limit_is_the_sessions_default() -> None:
    """`options=-c statement_timeout=0`: the servers start with the limit, the client reads 0 (RESET returns there)."""
    start = startup_context("0", "10000ms")
    assert start is not None and start.effective_timeout() == "0"
    assert start.apply(Change(0, SET_TIMEOUT, shown="1h")).apply(Change(0, SET_TIMEOUT)).effective_timeout() == "0"
    assert startup_context("200", "200") is None and startup_context(None, "10000ms") is None
    assert startup_context("soon", "10000ms") is None
    shown = decide(LIMITED.with_context(start), "SHOW statement_timeout")
    assert isinstance(shown, Rewrite) and "THEN '0'" in shown.sql
