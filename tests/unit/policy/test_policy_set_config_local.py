"""set_config('search_path', v, is_local): is_local read as PostgreSQL reads it, or refused (red team 9a9 R2)."""

from __future__ import annotations

import pytest
from policy_corpus import POLICIES

from proxy.policy import Deny, decide
from proxy.policy.model import SET_PATH


def _local(is_local: str) -> bool | None:
    """The SET_PATH change's LOCAL flag of `SELECT set_config('search_path', 'public', <is_local>)` (database
    tenant), None when refused."""
    decision = decide(POLICIES["database"], f"SELECT set_config('search_path', 'public', {is_local})")
    if isinstance(decision, Deny):
        assert (decision.sqlstate, decision.rule) == ("0A000", "search_path_set_config"), decision
        return None
    [change] = [c for c in decision.changes if c.op == SET_PATH]
    return change.flag


@pytest.mark.parametrize(("is_local", "local"), [
    ("true", True), ("false", False), ("NULL", False), ("NULL::boolean", False), ("'t'::bool", True),
    ("'tr'", True), ("'TRU'", True), ("' on '", True), ("'of'", False), ("'ye'", True), ("'n'", False),
    ("'1'", True), ("'0'", False), ("true::text::bool", True), ("pg_catalog.bool 'yes'", True),
])
def test_a_literal_is_local_is_read_as_postgresql_reads_it(is_local: str, local: bool) -> None:
    """boolin takes any prefix of true/false/yes/no (on/off: two letters), trimmed, in any case: 'tr' is LOCAL."""
    assert _local(is_local) is local


@pytest.mark.parametrize("is_local", ["1 = 1", "true AND true", "NOT false", "$1", "1::bool", "'2'::int::bool",
                                      "'o'", "'maybe'", "(SELECT true)", "current_setting('x')::bool"])
def test_an_is_local_postgresql_may_evaluate_otherwise_is_refused(is_local: str) -> None:
    assert _local(is_local) is None
