"""proxy/admission.py: the EXPLAIN request, reading the server's answers, the estimate and the verdict."""

from __future__ import annotations

import json
import struct

import pytest

from proxy import admission
from proxy.config import AgentConfig
from proxy.policy.model import ADMIT, Allow, Rewrite
from proxy.protocol import messages as m

LIMITS = AgentConfig(max_rows=10, max_cost=1000.0, max_estimated_rows=500.0)


def plan(cost: float, rows: float, limit: bool = True) -> str:
    node = {"Node Type": "Seq Scan", "Total Cost": cost, "Plan Rows": rows}
    top = {"Node Type": "Limit", "Total Cost": cost / 10, "Plan Rows": 10, "Plans": [node]} if limit else node
    return json.dumps([{"Plan": top}])


def test_the_estimate_is_the_top_cost_and_the_rows_below_the_agents_limit() -> None:
    assert admission.estimate(plan(5000.0, 123.0)) == admission.Estimate(500.0, 123.0)
    assert admission.estimate(plan(7.5, 3.0, limit=False)) == admission.Estimate(7.5, 3.0)


@pytest.mark.parametrize(("found", "show", "words"), [
    (admission.Estimate(1500.0, 1.0), True, "cost at 1500, above agent.max_cost = 1000"),
    (admission.Estimate(1500.0, 1.0), False, "statement's cost, above agent.max_cost = 1000"),
    (admission.Estimate(10.0, 9000.0), True, "returns 9000 rows (before the agent's LIMIT), above "
                                             "agent.max_estimated_rows = 500"),
    (admission.Estimate(10.0, 9000.0), False, "returns more rows"),
])
def test_a_refusal_names_the_estimate_its_value_where_shown_and_the_limit(
        found: admission.Estimate, show: bool, words: str) -> None:
    denied = admission.verdict(found, LIMITS, show)
    assert denied is not None and denied.rule == "agent_estimate" and denied.sqlstate == "54000"
    assert words in denied.message, denied.message
    assert "WHERE" in denied.hint
    assert show or ("9000" not in denied.message and "1500" not in denied.message)


def test_within_the_limits_or_without_limits_it_is_admitted() -> None:
    assert admission.verdict(admission.Estimate(1000.0, 500.0), LIMITS, True) is None
    unlimited = AgentConfig(max_cost=0.0, max_estimated_rows=0.0)
    assert admission.verdict(admission.Estimate(1e12, 1e12), unlimited, True) is None


def test_only_allowed_or_rewritten_queries_with_the_effect_need_admission() -> None:
    assert admission.needs(Allow(frozenset({ADMIT})))
    assert admission.needs(Rewrite("SELECT 1 LIMIT 5", ("agent_limit",), frozenset({ADMIT})))
    assert not admission.needs(Rewrite("SELECT 1 LIMIT 5", ("agent_limit",)))
    assert admission.sent_text("SELECT 1", Rewrite("SELECT 1 LIMIT 5", ())) == "SELECT 1 LIMIT 5"
    assert admission.sent_text("SELECT 1", Allow()) == "SELECT 1"


def _bind_body(portal: str, statement: str, values: list[bytes | None], formats: list[int]) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!H", len(formats))
    body += b"".join(struct.pack("!H", f) for f in formats) + struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return body + struct.pack("!HH", 1, 1)  # one binary result format: not the EXPLAIN's


def test_the_bind_request_carries_the_clients_parameters_under_the_proxys_names() -> None:
    bind = _bind_body("", "s1", [b"42", None, b"\x00\x01"], [0, 0, 1])
    request = admission.bind_request("SELECT $1, $2, $3", b"\x00\x01\x00\x00\x00\x17", bind)
    messages, used = m.split_messages(request)
    assert used == len(request)
    assert [chr(t) for t, _, _ in messages] == ["C", "C", "P", "B", "E", "C", "C", "S"]
    assert [b for _, b, _ in messages[:2]] == [b for _, b, _ in messages[5:7]]  # (closed first too: see bind_request)
    messages = messages[2:]
    parse = m.Parse.decode(messages[0][1])
    assert (parse.name, parse.sql, parse.param_types) == (
        "pgt_admission", "EXPLAIN (FORMAT JSON) SELECT $1, $2, $3", b"\x00\x01\x00\x00\x00\x17")
    assert messages[1][1] == _bind_body("pgt_admission", "pgt_admission", [b"42", None, b"\x00\x01"],
                                        [0, 0, 1])[:-4] + b"\x00\x00"


def _answer(plan_text: str) -> bytes:
    return (m.frame(b"1", b"") + m.frame(b"2", b"") + m.data_row([plan_text.encode()])
            + m.command_complete("EXPLAIN") + m.frame(b"3", b"") + m.frame(b"3", b"") + m.ready_for_query(b"I"))


@pytest.mark.parametrize("cut", [1, 3, 17, 40])
def test_the_answer_is_read_across_reads(cut: int) -> None:
    adm = admission.Admission(b"")
    assert adm.start(0.0) == m.SYNC_MESSAGE
    data = m.ready_for_query(b"I") + _answer(plan(10.0, 2.0)) + b"after"
    client, done, rest = adm.feed(data[:cut])
    assert (client, done) == (b"", False)
    client, done, rest = adm.feed(data[cut:])
    assert (client, done, rest) == (b"", True, b"after")
    assert adm.plan is not None and admission.estimate(adm.plan).rows == 2.0


def test_an_open_batch_ends_first_its_answers_are_the_clients_and_an_error_is_noted() -> None:
    adm = admission.Admission(b"X", open_batch=True)
    assert adm.start(1.0) == m.SYNC_MESSAGE + b"X"
    failed = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42703", "M": "column \"nope\" does not exist"})
    batch = m.frame(b"1", b"") + failed
    own = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42703", "M": "again"}) + m.ready_for_query(b"I")
    client, done, rest = adm.feed(batch + m.ready_for_query(b"I") + own)
    assert (client, done, rest) == (batch, True, b"")
    assert adm.batch_failed and adm.error is not None and adm.error["M"] == "again" and adm.plan is None


def test_a_plan_reading_a_system_catalog_is_told() -> None:
    """Red team 6 F5: a catalog's estimate counts every tenant's objects; the refusal must not show it."""
    catalog = {"Node Type": "Seq Scan", "Relation Name": "pg_class", "Alias": "c", "Plan Rows": 13}
    series = {"Node Type": "Function Scan", "Function Name": "generate_series", "Plan Rows": 10_000_000}
    own = {"Node Type": "Seq Scan", "Relation Name": "orders", "Alias": "o", "Plan Rows": 1}
    nested = {"Node Type": "Nested Loop", "Plans": [series, {"Node Type": "Materialize", "Plans": [catalog]}]}
    top = {"Node Type": "Limit", "Plans": [{"Node Type": "Nested Loop", "Plans": [own, nested]}]}
    assert admission.reads_catalogs(json.dumps([{"Plan": top}]))
    assert not admission.reads_catalogs(json.dumps([{"Plan": {"Node Type": "Nested Loop", "Plans": [own, series]}}]))
    assert admission.reads_catalogs(json.dumps([{"Plan": {"Node Type": "Nested Loop", "Plans": [own, 7]}}]))


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("own", ["plan", "error"])
def test_a_plan_or_error_past_the_bound_is_dropped_as_it_arrives_and_told(own: str) -> None:
    """Red team 9a8 N0: a plan quoting a 100 MB literal was held whole and re-joined on every read (CPU quadratic
    in its size, every tenant waiting). Past MAX_ANSWER nothing of it is held; the admission says it was too large."""
    adm = admission.Admission(b"")
    adm.start(0.0)
    big = b"x" * (3 * admission.MAX_ANSWER)
    answer = (m.data_row([big]) if own == "plan"
              else m.encode_error_fields(b"E", {"S": "ERROR", "C": "22P02", "M": big.decode()}))
    data = m.ready_for_query(b"I") + m.frame(b"1", b"") + answer + m.ready_for_query(b"I") + b"after"
    held = 0
    for chunk in _chunks(data, 65536)[:-1]:
        assert adm.feed(chunk) == (b"", False, b"")
        held = max(held, len(adm.buf))
    assert adm.feed(_chunks(data, 65536)[-1]) == (b"", True, b"after")
    assert held <= 5 and adm.too_large and adm.plan is None and adm.error is None


def test_a_plan_within_the_bound_is_read_across_many_reads() -> None:
    adm = admission.Admission(b"")
    adm.start(0.0)
    text = plan(10.0, 2.0)
    text = text[:-1] + " " * (admission.MAX_ANSWER - 64 - len(text)) + "]"
    data = m.ready_for_query(b"I") + _answer(text)
    for chunk in _chunks(data, 4096)[:-1]:
        assert adm.feed(chunk) == (b"", False, b"")
    assert adm.feed(_chunks(data, 4096)[-1]) == (b"", True, b"")
    assert not adm.too_large and adm.plan == text and admission.estimate(adm.plan).rows == 2.0


def test_the_clients_batch_answers_pass_on_as_they_arrive() -> None:
    """A large row of the client's batch before the held statement is not held either (each read passes on)."""
    adm = admission.Admission(b"X", open_batch=True)
    adm.start(0.0)
    row = m.data_row([b"y" * (2 * admission.MAX_ANSWER)])
    data = row + m.ready_for_query(b"I") + _answer(plan(10.0, 2.0))
    passed, at = bytearray(), 0
    for chunk in _chunks(data, 65536):
        client, done, rest = adm.feed(chunk)
        at += len(chunk)
        if at <= len(row):  # each read of the row is the client's at once
            assert client == chunk
        passed += client
    assert (bytes(passed), done, rest) == (row, True, b"")
    assert adm.plan is not None and not adm.too_large
