"""Runs every case of tests/fixtures/policy/*.txt through the policy engine."""

from __future__ import annotations

from collections import Counter

from policy_corpus import POLICIES, Case, case_policy, load_cases

from proxy.errors import policy_denied
from proxy.policy import Allow, Deny, Rewrite, decide
from proxy.policy.model import (
    DECLARES_CURSOR,
    MAY_SET_SEQUENCES,
    MAY_USE_SEQUENCES,
    READ_ONLY,
    READS_SEQUENCES,
    UNSEEN_SCHEMA,
)
from proxy.policy.tree import parse_json

# Effects the fixture files do not spell out: facts about every write, read, currval() and read-only string, tested
# in test_policy_engine.py.
# (UNSEEN_SCHEMA: the session's guard, hidden and missing alike; test_policy_hiding covers it)
_UNLISTED = frozenset({MAY_SET_SEQUENCES, MAY_USE_SEQUENCES, READS_SEQUENCES, READ_ONLY, DECLARES_CURSOR,
                       UNSEEN_SCHEMA})


def test_fixture_case(fixture_case: Case) -> None:
    decision = decide(case_policy(fixture_case), fixture_case.sql)
    if fixture_case.expect == "deny":
        assert isinstance(decision, Deny), decision
        assert (decision.sqlstate, decision.rule) == (fixture_case.sqlstate, fixture_case.rule), decision
        if decision.sqlstate in ("3F000", "42P01", "42704"):  # a hidden schema: answered in PostgreSQL's own words
            assert decision.message.endswith(" does not exist") and not decision.hint, decision
        else:
            assert policy_denied(decision).message.endswith(f"(rule {decision.rule})")
            assert decision.hint
    elif fixture_case.expect == "allow":
        assert isinstance(decision, Allow), decision
        assert sorted(decision.effects - _UNLISTED) == sorted(fixture_case.effects)
    else:
        assert isinstance(decision, Rewrite), decision
        assert decision.sql == fixture_case.rewritten
        assert sorted(decision.effects - _UNLISTED) == sorted(fixture_case.effects)
        assert decision.rules
        parse_json(decision.sql)  # the forwarded text is valid PostgreSQL


def test_corpus_size_and_spread() -> None:
    cases = load_cases()
    assert len(cases) >= 150
    assert len({c.id for c in cases}) == len(cases), "fixture names must be unique per file"
    strategies = Counter(POLICIES[c.policy].strategy for c in cases)
    assert min(strategies.values()) >= 30, strategies
    kinds = Counter(c.expect for c in cases)
    assert min(kinds.values()) >= 50, kinds
