"""Advisory locks in the database strategy (red team round 4 F7): keys fixed for the statement, every lock call's
key through the guard that counts the backend's advisory locks, the verifier refusing a lock call without it."""

from __future__ import annotations

import dataclasses

import pytest
from policy_corpus import POLICIES

from proxy.policy import Deny, Rewrite, decide
from proxy.policy import guarding as guarding_module
from proxy.policy.advisory import fixed
from proxy.policy.tree import parse_json

DATABASE = dataclasses.replace(POLICIES["database"], max_advisory_locks=3)


def _arg(expr: str) -> dict:
    import json

    doc = json.loads(parse_json(f"SELECT f({expr})"))
    return doc["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]["FuncCall"]["args"][0]


@pytest.mark.parametrize(("expr", "ok"), [
    ("42", True), ("$1", True), ("$1::bigint + 7", True), ("-3", True), ("abs($2::int) * 2", True),
    ("('x' || $1)::text", True), ("g", False), ("t.id", False), ("random()::bigint", False),
    ("(SELECT 1)", False), ("nextval('s')", False), ("count(*)", False), ("CASE WHEN $1 THEN 1 END", False),
])
def test_a_key_is_fixed_only_when_no_row_can_change_it(expr: str, ok: bool) -> None:
    assert fixed(_arg(expr)) is ok


@pytest.mark.parametrize("sql", [
    "SELECT pg_advisory_lock(7)", "SELECT pg_try_advisory_lock_shared($1, 2)", "SELECT pg_advisory_xact_lock(1)",
    "PREPARE p(bigint) AS SELECT pg_catalog.pg_advisory_lock($1)",
    "CREATE TEMP VIEW v AS SELECT count(*) FROM (SELECT pg_advisory_lock(4242)) s",
    "SELECT pg_advisory_lock(7) FROM generate_series(1, 2)",
])
def test_every_lock_key_is_guarded(sql: str) -> None:
    decision = decide(DATABASE, sql)
    assert isinstance(decision, Rewrite) and "advisory_lock_guard" in decision.rules, decision
    assert "pg_catalog.pg_lock_status()" in decision.sql and "<= 3 THEN" in decision.sql
    assert "limits.max_advisory_locks = 3" in decision.sql


@pytest.mark.parametrize(("sql", "rule"), [
    ("SELECT count(pg_advisory_lock(g)) FROM generate_series(1000, 1999) g", "advisory_lock_key"),
    ("SELECT pg_advisory_xact_lock(k) FROM (VALUES (1), (2)) v(k)", "advisory_lock_key"),
    ("SELECT pg_advisory_lock(key => 1)", "advisory_lock_key"),
    ("SELECT pg_advisory_lock(1), pg_advisory_lock(2), pg_advisory_lock(3), pg_advisory_lock(4)",
     "advisory_lock_limit"),
])
def test_locks_that_cannot_be_bounded_are_refused(sql: str, rule: str) -> None:
    decision = decide(DATABASE, sql)
    assert isinstance(decision, Deny) and decision.rule == rule, decision
    assert "limits.max_advisory_locks" in decision.hint


def test_unlocks_are_not_guarded() -> None:
    decision = decide(DATABASE, "SELECT pg_advisory_unlock(7), pg_advisory_unlock_all()")
    assert not isinstance(decision, Deny) and "pg_lock_status" not in getattr(decision, "sql", "")


@pytest.mark.parametrize("sql", ["SELECT pg_advisory_lock(7)", "SELECT 1, pg_try_advisory_xact_lock($1)",
                                 "SELECT pg_try_advisory_lock($1, 2)", "SELECT pg_notify($1, 'x')"])
def test_verifier_refuses_a_lock_call_without_its_guard(monkeypatch: pytest.MonkeyPatch, sql: str) -> None:
    monkeypatch.setattr(guarding_module, "plan", lambda *args, **kwargs: None)
    decision = decide(DATABASE, sql)
    assert isinstance(decision, Deny) and decision.rule == "rewrite_unverified", decision


@pytest.mark.parametrize("forged", [
    "SELECT pg_advisory_lock((SELECT CASE WHEN pgt_g_k__1__1.n + 1 <= 99 THEN 5 ELSE 0 END FROM (SELECT 0 AS n) "
    "pgt_g_k__1__1))",
    "SELECT pg_notify((SELECT CASE WHEN pgt_g_n.c = 'x' THEN '' ELSE pgt_g_n.c END FROM (SELECT ($1)::pg_catalog.text "
    "AS c OFFSET 0) pgt_g_n), 'x')",
])
def test_a_forged_guard_is_no_guard(forged: str) -> None:
    decision = decide(DATABASE, forged)
    assert isinstance(decision, Deny), decision


# --- the registry's instance-slot class (red team 8b F2) and channel (F3) --------------------------------------------


@pytest.mark.parametrize(("sql", "rule", "check"), [
    ("SELECT pg_try_advisory_lock($1, 2)", "advisory_lock_guard", "THEN ('pgtenant: advisory lock class '"),
    ("SELECT pg_advisory_lock(1885828194 + 1, 0)", "advisory_lock_guard", "= 1885828195 THEN"),
    ("SELECT pg_try_advisory_xact_lock(abs($1::int), $2)", "advisory_lock_guard", "= 1885828195 THEN"),
    ("SELECT pg_notify($1, 'x')", "notify_channel_guard", "WHEN pgt_g_n.c = 'pgtenant_registry' THEN"),
    ("SELECT pg_notify('pgtenant_' || 'registry', '')", "notify_channel_guard", "WHEN pgt_g_n.c = 'pgtenant_registry'"),
    ("SELECT pg_notify('pgtenant_registry   '::char(20), '')", "notify_channel_guard", "WHEN pgt_g_n.c = "),
])
def test_a_key_or_channel_other_than_a_literal_is_checked_at_run_time(sql: str, rule: str, check: str) -> None:
    """A two-key lock's first key may be the slot class, a channel the registry's, once the statement runs."""
    decision = decide(DATABASE, sql)
    assert isinstance(decision, Rewrite) and rule in decision.rules, decision
    assert check in decision.sql


def test_a_one_key_lock_is_not_the_slot_class() -> None:
    """pg_advisory_lock(bigint) is another lock than (int, int) of the same bits (objsubid 1, not 2)."""
    decision = decide(DATABASE, "SELECT pg_advisory_lock(8099611627077910528)")
    assert isinstance(decision, Rewrite) and "1885828195" not in decision.sql
