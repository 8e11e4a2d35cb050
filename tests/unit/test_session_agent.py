"""ClientSession under the agent profile: a query is held while the proxy's EXPLAIN of it runs on the session's
server, then forwarded or refused in its place; the EXPLAIN's answers never reach the client. Scripted bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from proxy.actions import AcquireServer, AgentAdmission, RelayToClient, RelayToServer, RunDecision
from proxy.auth.throttle import AuthThrottle
from proxy.config import parse_config
from proxy.policy.cache import Pending
from proxy.policy.model import ADMIT, Allow, Rewrite
from proxy.protocol import messages as m
from proxy.session import ClientSession
from tests.support.sessions import attach, frames, login, make_verifier, server_for

ADMITTED = Rewrite("SELECT * FROM t LIMIT 5", ("agent_limit",), frozenset({ADMIT}))


def agent_session(tmp_path: Path, decide=lambda kind, sql: ADMITTED, **pool: object) -> ClientSession:
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw")}"\n')
    config = parse_config({
        "secrets_file": "s.toml", "backends": {"main": {}},
        "tenants": {"acme": {"strategy": "database", "database": "acme"}},
        "users": {"alice": {"tenant": "acme", "profile": "agent"}},
        "agent": {"max_rows": 5, "max_estimated_rows": 100.0, "max_cost": 1000.0},
        "pool": {"pool_mode": "session", **pool},  # one server throughout unless a test pools
    }, base=tmp_path)
    s = ClientSession(config, session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                      clock=lambda: 100.0, tls_available=False)
    login(s)
    s.enable_policy(decide)
    attach(s)
    return s


def forwarded(actions: list) -> bytes:
    return b"".join(bytes(c) for a in actions if isinstance(a, RelayToServer) for c in a.chunks)


def relayed(actions: list) -> bytes:
    return b"".join(bytes(c) for a in actions if isinstance(a, RelayToClient) for c in a.chunks)


def explain_answer(rows: float, cost: float = 10.0, extended: bool = False) -> bytes:
    plan = json.dumps([{"Plan": {"Node Type": "Limit", "Total Cost": cost, "Plan Rows": 5,
                                 "Plans": [{"Node Type": "Seq Scan", "Total Cost": cost, "Plan Rows": rows}]}}])
    head = m.frame(b"3", b"") * 2 + m.frame(b"1", b"") + m.frame(b"2", b"") if extended else m.row_description(
        ["QUERY PLAN"])
    tail = m.frame(b"3", b"") * 2 if extended else b""
    return head + m.data_row([plan.encode()]) + m.command_complete("EXPLAIN") + tail + m.ready_for_query(b"I")


def test_a_query_waits_for_its_explain_then_goes_as_rewritten(tmp_path: Path) -> None:
    s = agent_session(tmp_path)
    actions = s.client_data(m.Query("SELECT * FROM t").encode() + m.Query("SELECT 2").encode())
    assert forwarded(actions) == m.SYNC_MESSAGE + m.Query("EXPLAIN (FORMAT JSON) SELECT * FROM t LIMIT 5").encode()
    actions = s.server_data(m.ready_for_query(b"I") + explain_answer(rows=40.0))
    assert relayed(actions) == b""  # nothing of the EXPLAIN reaches the client
    [audit] = [a for a in actions if isinstance(a, AgentAdmission)]
    assert (audit.outcome, audit.rows, audit.max_rows) == ("admitted", 40.0, 5)
    # the held query, then the next one: held again for its own admission
    assert forwarded(actions) == (m.Query("SELECT * FROM t LIMIT 5").encode())


def test_a_query_above_the_estimate_is_refused_in_its_place(tmp_path: Path) -> None:
    s = agent_session(tmp_path)
    s.client_data(m.Query("SELECT * FROM t").encode())
    actions = s.server_data(m.ready_for_query(b"I") + explain_answer(rows=5000.0))
    [(kind, body)] = frames(forwarded(actions))
    marker = m.Query.decode(body).sql
    assert kind == b"Q" and marker.startswith("pgtenant_denied_")
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601", "M": f'syntax error at or near "{marker}"'})
    out = relayed(s.server_data(error + m.ready_for_query(b"I")))
    fields = m.decode_error_fields(frames(out)[0][1])
    assert fields["C"] == "54000" and "rule agent_estimate" in fields["M"] and "5000 rows" in fields["M"]


def test_a_pipelined_query_waits_for_the_answers_before_it(tmp_path: Path) -> None:
    s = agent_session(tmp_path, lambda kind, sql: ADMITTED if "t" in sql else Allow())
    actions = s.client_data(m.Query("SELECT 1").encode() + m.Query("SELECT * FROM t").encode())
    assert forwarded(actions) == m.Query("SELECT 1").encode()  # the EXPLAIN waits for SELECT 1's answer
    answer = m.data_row([b"1"]) + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    actions = s.server_data(answer)
    assert relayed(actions) == answer
    assert forwarded(actions) == m.SYNC_MESSAGE + m.Query("EXPLAIN (FORMAT JSON) SELECT * FROM t LIMIT 5").encode()


def _bind(statement: str, value: bytes) -> bytes:
    return m.frame(b"B", b"\x00" + statement.encode() + b"\x00" + struct.pack("!hhi", 0, 1, len(value)) + value
                   + struct.pack("!h", 0))


def test_a_bind_is_admitted_with_its_parameters_after_its_batch_so_far(tmp_path: Path) -> None:
    s = agent_session(tmp_path, lambda kind, sql: Rewrite(sql + " LIMIT 5", ("agent_limit",), frozenset({ADMIT})))
    parse = m.Parse("", "SELECT * FROM t WHERE a = $1", b"\x00\x00").encode()
    rest = m.frame(b"E", b"\x00" + struct.pack("!i", 0)) + m.SYNC_MESSAGE
    actions = s.client_data(parse + _bind("", b"42") + rest)
    sent = frames(forwarded(actions))
    assert [k for k, _ in sent] == [b"P", b"S", b"C", b"C", b"P", b"B", b"E", b"C", b"C", b"S"]  # its Parse, a Sync,
    assert m.Parse.decode(sent[4][1]).sql == "EXPLAIN (FORMAT JSON) SELECT * FROM t WHERE a = $1 LIMIT 5"  # the EXPLAIN
    assert sent[5][1].endswith(struct.pack("!i", 2) + b"42" + b"\x00\x00")  # the client's value, text results
    actions = s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I") + explain_answer(3.0, extended=True))
    assert relayed(actions) == m.frame(b"1", b"")  # the client's ParseComplete; the proxy's Sync answer is not
    assert frames(forwarded(actions)) == [(b"B", _bind("", b"42")[5:]), *frames(rest)]


def test_a_close_the_session_does_not_follow_is_answered_before_the_explain(tmp_path: Path) -> None:
    s = agent_session(tmp_path)
    s.client_data(m.Parse("s1", "SELECT * FROM t", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    close = m.close_message(b"S", "s0")
    actions = s.client_data(close + _bind("s1", b"1") + m.SYNC_MESSAGE)
    assert [k for k, _ in frames(forwarded(actions))] == [b"C", b"S", b"C", b"C", b"P", b"B", b"E", b"C", b"C", b"S"]
    actions = s.server_data(m.frame(b"3", b"") + m.ready_for_query(b"I") + explain_answer(1.0, extended=True))
    assert relayed(actions) == m.frame(b"3", b"")  # the client's CloseComplete, not the EXPLAIN's
    assert [k for k, _ in frames(forwarded(actions))] == [b"B", b"S"]


def test_a_query_after_an_open_batch_ends_it_first(tmp_path: Path) -> None:
    s = agent_session(tmp_path, lambda kind, sql: ADMITTED if "t" in sql else Allow())
    actions = s.client_data(m.Parse("", "SELECT 1", b"\x00\x00").encode() + m.Query("SELECT * FROM t").encode())
    sent = frames(forwarded(actions))
    assert [k for k, _ in sent] == [b"P", b"S", b"Q"]  # its batch's Parse, a Sync, the EXPLAIN
    actions = s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I") + explain_answer(rows=1.0))
    assert relayed(actions) == m.frame(b"1", b"")
    assert forwarded(actions) == m.Query("SELECT * FROM t LIMIT 5").encode()
    answer = m.data_row([b"1"]) + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    assert relayed(s.server_data(answer)) == answer  # one ReadyForQuery for the batch and the Query, as before


def test_the_statements_kept_for_admission_are_bounded_and_a_parse_past_them_fails(tmp_path: Path) -> None:
    s = agent_session(tmp_path, max_session_statements=2)
    parses = b"".join(m.Parse(f"s{i}", f"SELECT * FROM t{i}", b"\x00\x00").encode() for i in range(3))
    sent = frames(forwarded(s.client_data(parses + m.SYNC_MESSAGE)))
    assert [m.Parse.decode(body).name for _, body in sent[:3]] == ["s0", "s1", "s2"]
    assert m.Parse.decode(sent[2][1]).sql.startswith("pgtenant_denied_")  # its error is the session's limit
    s.server_data(m.frame(b"1", b"") * 2 + m.ready_for_query(b"I"))
    s.client_data(m.close_message(b"S", "s0") + m.SYNC_MESSAGE)  # a Close makes room again
    s.server_data(m.frame(b"3", b"") + m.ready_for_query(b"I"))
    sent = frames(forwarded(s.client_data(m.Parse("s2", "SELECT * FROM t2", b"\x00\x00").encode())))
    assert not m.Parse.decode(sent[0][1]).sql.startswith("pgtenant_denied_")


def test_a_query_decided_by_a_worker_is_admitted_too(tmp_path: Path) -> None:
    s = agent_session(tmp_path, lambda kind, sql: Pending.__new__(Pending) if kind == "query" else Allow())
    actions = s.client_data(m.Parse("", "SELECT 1", b"\x00\x00").encode() + m.Query("SELECT * FROM t").encode())
    assert [k for k, _ in frames(forwarded(actions))] == [b"P"] and any(isinstance(a, RunDecision) for a in actions)
    actions = s.decision_ready(ADMITTED)
    assert forwarded(actions) == m.SYNC_MESSAGE + m.Query("EXPLAIN (FORMAT JSON) SELECT * FROM t LIMIT 5").encode()
    actions = s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I") + explain_answer(rows=1.0))
    assert relayed(actions) == m.frame(b"1", b"")
    assert forwarded(actions) == m.Query("SELECT * FROM t LIMIT 5").encode()


def test_a_bind_whose_parameters_cannot_be_read_is_refused_not_run(tmp_path: Path) -> None:
    s = agent_session(tmp_path)
    s.client_data(m.Parse("s1", "SELECT * FROM t WHERE a = $1", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    broken = m.frame(b"B", b"\x00s1\x00" + struct.pack("!hh", 0, 1) + struct.pack("!i", 50) + b"short")
    sent = frames(forwarded(s.client_data(broken + m.SYNC_MESSAGE)))
    assert sent[0][0] == b"B" and b"pgtenant_denied_" in sent[0][1]  # its statement is a marker: it fails


# --- red team round 6 F8 in session pooling: the names the server has (proxy/stmtnames.py) ------------------------

EXECUTE = m.frame(b"E", b"\x00" + struct.pack("!i", 0))


def _T_ONLY(kind: str, sql: str) -> Allow | Rewrite:
    return ADMITTED if "FROM t" in sql else Allow()


_EXPLAIN_OF_T = "EXPLAIN (FORMAT JSON) SELECT * FROM t LIMIT 5"


def _explained(sent: list[tuple[bytes, bytes]]) -> str:
    return next(m.Parse.decode(body).sql for kind, body in sent if kind == b"P")


def _marker_error(body: bytes) -> bytes:
    marker = m.Parse.decode(body).sql
    assert marker.startswith("pgtenant_denied_")
    return m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601", "M": f'syntax error at or near "{marker}"'})


def test_a_parse_of_a_name_the_server_has_is_refused_and_the_old_statement_stays_admitted(tmp_path: Path) -> None:
    s = agent_session(tmp_path, _T_ONLY)
    s.client_data(m.Parse("s1", "SELECT * FROM t", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    sent = frames(forwarded(s.client_data(m.Parse("s1", "SELECT 1", b"\x00\x00").encode() + m.SYNC_MESSAGE)))
    assert [k for k, _ in sent] == [b"P", b"S"] and m.Parse.decode(sent[0][1]).name == "s1"
    out = relayed(s.server_data(_marker_error(sent[0][1]) + m.ready_for_query(b"I")))
    fields = m.decode_error_fields(frames(out)[0][1])
    assert (fields["C"], fields["M"]) == ("42P05", 'prepared statement "s1" already exists')  # PostgreSQL's words
    sent = frames(forwarded(s.client_data(_bind("s1", b"") + EXECUTE + m.SYNC_MESSAGE)))
    assert _explained(sent) == _EXPLAIN_OF_T  # admitted as the statement the server has


def test_a_close_the_server_skipped_keeps_the_statement_admitted(tmp_path: Path) -> None:
    s = agent_session(tmp_path, _T_ONLY)
    s.client_data(m.Parse("s1", "SELECT * FROM t", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    s.client_data(_bind("nope", b"") + m.close_message(b"S", "s1") + m.SYNC_MESSAGE)
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "26000", "M": 'prepared statement "nope" does not exist'})
    s.server_data(error + m.ready_for_query(b"I"))  # the Close was skipped: s1 is still there
    sent = frames(forwarded(s.client_data(_bind("s1", b"") + EXECUTE + m.SYNC_MESSAGE)))
    assert _explained(sent) == _EXPLAIN_OF_T
    s.server_data(m.ready_for_query(b"I") + explain_answer(1.0, extended=True))  # (its Sync first)
    s.server_data(m.frame(b"2", b"") + m.command_complete("SELECT 0") + m.ready_for_query(b"I"))
    s.client_data(m.close_message(b"S", "s1") + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"3", b"") + m.ready_for_query(b"I"))  # closed now
    sent = frames(forwarded(s.client_data(m.Parse("s1", "SELECT 1", b"\x00\x00").encode() + m.SYNC_MESSAGE)))
    assert m.Parse.decode(sent[0][1]).sql == "SELECT 1"  # a new statement of that name, as on a direct connection
    s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    sent = frames(forwarded(s.client_data(_bind("s1", b"") + EXECUTE + m.SYNC_MESSAGE)))
    assert [k for k, _ in sent] == [b"B", b"E", b"S"]  # needs no admission


def test_a_close_and_a_parse_of_one_name_in_one_batch_make_a_new_statement(tmp_path: Path) -> None:
    s = agent_session(tmp_path, _T_ONLY)
    s.client_data(m.Parse("s1", "SELECT * FROM t", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    again = m.close_message(b"S", "s1") + m.Parse("s1", "SELECT 1", b"\x00\x00").encode() + m.SYNC_MESSAGE
    sent = frames(forwarded(s.client_data(again)))
    assert [k for k, _ in sent] == [b"C", b"P", b"S"] and m.Parse.decode(sent[1][1]).sql == "SELECT 1"
    s.server_data(m.frame(b"3", b"") + m.frame(b"1", b"") + m.ready_for_query(b"I"))
    sent = frames(forwarded(s.client_data(_bind("s1", b"") + EXECUTE + m.SYNC_MESSAGE)))
    assert [k for k, _ in sent] == [b"B", b"E", b"S"]  # the new statement's records: no admission needed


def test_in_transaction_pooling_a_close_skipped_after_an_error_keeps_the_statement_admitted(tmp_path: Path) -> None:
    """The statement maps keep a statement whose Close was skipped (an error earlier in its batch); its admission
    text stays with it, and goes with a Close whose request ended without an error."""
    s = agent_session(tmp_path, _T_ONLY, pool_mode="transaction")
    s.enable_statements({}, cache=False)

    def send(data: bytes) -> list:
        actions = s.client_data(data)
        if s.server is None and any(isinstance(a, AcquireServer) for a in actions):
            actions = s.server_attached(server_for(s))
        return actions

    send(m.Parse("s1", "SELECT * FROM t", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    send(_bind("nope", b"") + m.close_message(b"S", "s1") + m.SYNC_MESSAGE)
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "26000", "M": 'prepared statement "nope" does not exist'})
    s.server_data(error + m.ready_for_query(b"I"))
    assert _explained(frames(forwarded(send(_bind("s1", b"") + EXECUTE + m.SYNC_MESSAGE)))) == _EXPLAIN_OF_T
    s.server_data(m.ready_for_query(b"I") + explain_answer(1.0, extended=True))
    s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + m.command_complete("SELECT 0") + m.ready_for_query(b"I"))
    send(m.close_message(b"S", "s1") + m.SYNC_MESSAGE)
    s.server_data(m.ready_for_query(b"I"))  # (the maps answered the Close themselves)
    assert "s1" not in s._agent_statements


def test_an_explain_error_still_holding_a_reserved_name_is_withheld(tmp_path: Path) -> None:
    """The last line (proxy/hiddennames.py): the admission EXPLAIN's error is the statement's own, unless it still
    holds a reserved name the statement was sent with (a computed value, never written back): then it is withheld."""
    reserved = "pg_9" + "b" * 24
    renamed = Rewrite(f"SELECT current_setting('x') FROM \"{reserved}\".t LIMIT 5", ("agent_limit",),
                      frozenset({ADMIT}), names=((reserved, "hid"),))
    s = agent_session(tmp_path, decide=lambda kind, sql: renamed)
    s.client_data(m.Query("SELECT current_setting('x') FROM hid.t").encode())
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42704",
                                         "M": f'unrecognized configuration parameter "{reserved}.zz"'})
    [(kind, body)] = frames(forwarded(s.server_data(m.ready_for_query(b"I") + error + m.ready_for_query(b"I"))))
    marker = m.Query.decode(body).sql
    assert kind == b"Q" and marker.startswith("pgtenant_denied_")
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601", "M": f'syntax error at or near "{marker}"'})
    out = relayed(s.server_data(error + m.ready_for_query(b"I")))
    fields = m.decode_error_fields(frames(out)[0][1])
    assert "rule answer_withheld" in fields["M"] and reserved not in str(fields), fields
