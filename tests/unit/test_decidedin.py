"""DecidedIn: a prepared statement's decision holds only in the context it was made in (red team 9a9 R1)."""

from __future__ import annotations

from dataclasses import replace

from proxy.decidedin import DecidedIn, sent_text
from proxy.policy.model import EMPTY_CONTEXT, Allow, Deny, Rewrite

VIEW = replace(EMPTY_CONTEXT, temp_views=frozenset({"orders"}))
PARSE_GATE, BIND_GATE = object(), object()  # the session's decision functions at the Parse and at the Bind


def _never(_sql: str) -> object:
    raise AssertionError("decided again in the same context")


def test_a_bind_in_the_parses_context_is_not_decided_again() -> None:
    seen = DecidedIn()
    base = object()
    seen.parsed("s2", PARSE_GATE, base, "EXPLAIN SELECT * FROM orders", sent_text(Allow()), EMPTY_CONTEXT)
    assert seen.bound("s2", PARSE_GATE, _never, _never, EMPTY_CONTEXT) is None  # the same decision function
    assert seen.bound("s2", BIND_GATE, lambda _sql: base, _never, EMPTY_CONTEXT) is None  # the same policy
    assert seen.bound("other", BIND_GATE, lambda _sql: object(), _never, VIEW) is None  # never decided here


def test_a_bind_in_another_context_runs_only_if_decided_alike() -> None:
    """c1 L: EXPLAIN over the tenant's orders decided in the empty context, bound after a temporary view orders."""
    seen = DecidedIn()
    base, ctx = object(), object()
    seen.parsed("s2", PARSE_GATE, base, "EXPLAIN SELECT * FROM orders", sent_text(Allow()), EMPTY_CONTEXT)
    denied = Deny("42501", "no", "", "explain_catalog")
    refused = seen.bound("s2", BIND_GATE, lambda _sql: ctx, lambda _sql: denied, VIEW)
    assert refused is not None and refused.sqlstate == "0A000"
    assert 'prepared statement "s2" was prepared before a temporary table or view was created' in refused.message
    assert refused.hint
    seen.parsed("", PARSE_GATE, base, "SELECT 1", sent_text(Rewrite("SELECT 1 /* r */", ())), EMPTY_CONTEXT)
    other, alike = Rewrite("SELECT 1 /* other */", ()), Rewrite("SELECT 1 /* r */", ())
    assert seen.bound("", BIND_GATE, lambda _sql: ctx, lambda _sql: other, VIEW) is not None
    assert seen.bound("", BIND_GATE, lambda _sql: ctx, lambda _sql: Allow(), VIEW) is not None  # another verdict
    assert seen.bound("", BIND_GATE, lambda _sql: ctx, lambda _sql: alike, VIEW) is None  # alike: runs
    assert seen.bound("", BIND_GATE, lambda _sql: ctx, _never, VIEW) is None  # and holds in the new context from now on


def test_a_text_not_decided_at_once_at_the_bind_is_refused() -> None:
    """A decision for a worker (a Pending) is not waited for at a Bind: prepare the statement again."""
    seen = DecidedIn()
    seen.parsed("s", PARSE_GATE, object(), "SELECT 1", sent_text(Allow()), EMPTY_CONTEXT)
    moved = replace(EMPTY_CONTEXT, path=("x",))
    refused = seen.bound("s", BIND_GATE, lambda _sql: object(), lambda _sql: object(), moved)
    assert refused is not None and "search_path changed" in refused.message


def test_a_refused_or_closed_statement_is_forgotten() -> None:
    seen = DecidedIn()
    seen.parsed("s", PARSE_GATE, object(), "SELECT 1", sent_text(Allow()), EMPTY_CONTEXT)
    seen.parsed("s", PARSE_GATE, object(), "SELECT nope", sent_text(Deny("42501", "no", "", "x")), EMPTY_CONTEXT)
    assert not seen.records
    seen.parsed("s", PARSE_GATE, object(), "SELECT 1", sent_text(Allow()), EMPTY_CONTEXT)
    seen.closed("s")
    assert not seen.records
