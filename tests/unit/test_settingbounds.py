"""The bounds on the settings a session keeps for its settings replay ([pool] max_session_settings and
max_session_setting_bytes, red team 9s7 S1): the pure count, then a scripted session (real policy) in both pool
modes: SETs, set_config() and prepared SETs past the bound refused with 54000, the session going on, RESET x /
RESET ALL / DISCARD ALL / a rolled-back transaction freeing room, SET LOCAL never counted."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from proxy.actions import AcquireServer, RelayToServer
from proxy.policy import TenantPolicy
from proxy.policy.model import RESET_SETTINGS, SETTING, Change
from proxy.protocol import messages as m
from proxy.session import ClientSession, State
from proxy.settingbounds import entries, measure, refusal, size, sizes
from tests.support.sessions import frames, policy_session, sent, server_for

POLICY = TenantPolicy(tenant="acme", strategy="database")


# --- the count -------------------------------------------------------------------------------------------------


def test_the_count_is_what_the_settle_keeps_or_what_is_unsettled() -> None:
    kept = {"rt.a": "SET rt.a = '1'", "rt.b": "SET rt.b = '2'"}
    startup = {"application_name": "SELECT pg_catalog.set_config('application_name', 'psql', false)"}
    held = sizes(kept)
    assert measure(held, startup, ()) == (2, size("rt.a", kept["rt.a"]) + size("rt.b", kept["rt.b"]))
    assert measure(held, startup, [("rt.a", "")])[0] == 1  # RESET frees at once
    assert measure(held, startup, [("rt.a", ""), ("rt.b", ""), ("rt.c", "")])[0] == 3  # RESETs held until settled
    assert measure(held, startup, [("rt.c", "SET rt.c = '3'")])[0] == 3
    assert measure(held, startup, [("*", ""), ("rt.c", "SET rt.c = '3'")])[0] == 2  # ("*" and rt.c unsettled)
    assert measure(held, startup, [("application_name", startup["application_name"])])[0] == 2  # the startup value
    assert size("é", "é") == 4  # UTF-8 bytes


def test_a_statement_past_a_bound_is_refused_and_a_reset_never_is() -> None:
    kept = {f"rt.k{i}": f"SET rt.k{i} = 'x'" for i in range(3)}
    assert refusal(sizes(kept), {}, (), [("rt.k0", "SET rt.k0 = 'y'")], 3, 1 << 20) is None  # the same name again
    past = refusal(sizes(kept), {}, (), [("rt.k3", "SET rt.k3 = 'x'")], 3, 1 << 20)
    assert past is not None and past.sqlstate == "54000" and past.rule == "session_settings_limit"
    assert 'setting "rt.k3"' in past.message and "max_session_settings = 3" in past.message
    assert "RESET" in past.hint
    assert refusal(sizes(kept), {}, (("rt.k0", ""),), [("rt.k3", "SET rt.k3 = 'x'")], 3, 1 << 20) is None  # RESET freed
    assert refusal(sizes(kept), {}, (), [("rt.k0", "")], 2, 1 << 20) is None  # over a lowered bound: a RESET goes
    assert refusal(sizes(kept), {}, (), [("rt.k0", "SET rt.k0 = 'y'")], 2, 1 << 20) is not None  # a SET does not
    past = refusal({}, {}, (), [("rt.a", "SET rt.a = '" + "x" * 100 + "'")], 3, 100)
    assert past is not None and "max_session_setting_bytes = 100" in past.message
    assert entries([Change(0, SETTING, "rt.a", shown="SET rt.a = '1'"), Change(1, SETTING, "rt.b"),
                    Change(2, RESET_SETTINGS)]) == [("rt.a", "SET rt.a = '1'"), ("rt.b", ""), ("*", "")]
    assert entries([Change(0, SETTING, "rt.b"), Change(1, RESET_SETTINGS)], sets_only=True) == []


# --- a session -------------------------------------------------------------------------------------------------


def _session(tmp_path: Path, mode: str, **pool: object) -> ClientSession:
    return policy_session(tmp_path, mode, POLICY, **pool)


def _send(s: ClientSession, data: bytes) -> list[tuple[bytes, bytes]]:
    """The client sends `data`: the frames that reach the server (a server is lent when the session asks)."""
    out = list(s.client_data(data))
    replay = False
    if s.state is State.WAITING:
        assert isinstance(out[-1], AcquireServer)
        out += s.server_attached(server_for(s))
        replay = s._replaying > 0  # a fresh server gets the session's settings first: answered here (swallowed)
    relayed = frames(b"".join(bytes(c) for a in out if isinstance(a, RelayToServer) for c in a.chunks))
    if replay:
        assert relayed[0][0] == b"Q"
        s.server_data(m.command_complete("SET") + m.ready_for_query(b"I"))
        relayed = relayed[1:]
    return relayed


def _answer(s: ClientSession, *tags: str, status: bytes = b"I") -> bytes:
    back = b"".join(m.command_complete(t) for t in tags) + m.ready_for_query(status)
    return sent(s.server_data(back)) + b"".join(bytes(c) for a in s.server_data(b"") for c in getattr(a, "chunks", ()))


def _refused(s: ClientSession, sent_: list[tuple[bytes, bytes]], status: bytes = b"I") -> bytes:
    """The backend's answer to a denial marker sent in place of the client's statement: what the client gets."""
    texts = [body for type_, body in sent_ if type_ in (b"Q", b"B")]
    marker = next(t for t in texts if b"pgtenant_denied_" in t)
    name = marker[marker.index(b"pgtenant_denied_"):].split(b"\x00")[0]
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601",
                                         "M": f'syntax error at or near "{name.decode()}"'})
    out = s.server_data(error + m.ready_for_query(status))
    return b"".join(bytes(c) for a in out for c in getattr(a, "chunks", ()))


def _q(s: ClientSession, sql: str, tag: str = "SET", status: bytes = b"I") -> None:
    """A statement that reaches the server as written and succeeds."""
    sent_ = _send(s, m.Query(sql).encode())
    assert sent_ == [(b"Q", sql.encode() + b"\x00")], sent_
    _answer(s, tag, status=status)


def _denied(s: ClientSession, sql: str, status: bytes = b"I") -> bytes:
    """A statement refused by the proxy: the client's error."""
    sent_ = _send(s, m.Query(sql).encode())
    assert sql.encode() not in b"".join(body for _, body in sent_)
    return _refused(s, sent_, status)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_settings_past_the_bound_are_refused_and_resets_free_room(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_settings=3)
    for i in range(3):
        _q(s, f"SET rt.k{i} = 'x'")
    err = _denied(s, "SET rt.k3 = 'x'")
    assert b"C54000\x00" in err and b"max_session_settings = 3" in err and b"rule session_settings_limit" in err
    assert b'setting \\"rt.k3\\"' in err or b'setting "rt.k3"' in err
    _q(s, "SET rt.k0 = 'y'")  # the session goes on; a setting it keeps may change
    assert b"C54000" in _denied(s, "SELECT set_config('rt.k3', 'x', false)")
    _q(s, "RESET rt.k0", "RESET")
    _q(s, "SET rt.k3 = 'x'")
    assert b"C54000" in _denied(s, "SET rt.k4 = 'x'")
    _q(s, "RESET ALL", "RESET")
    for i in range(4, 7):
        _q(s, f"SET rt.k{i} = 'x'")
    assert b"C54000" in _denied(s, "SET rt.k7 = 'x'")
    _q(s, "DISCARD ALL", "DISCARD ALL")
    for i in range(7, 10):
        _q(s, f"SET rt.k{i} = 'x'")
    # a rolled-back transaction takes its SETs back; SET LOCAL is never kept
    _q(s, "RESET rt.k9", "RESET")
    _q(s, "BEGIN", "BEGIN", status=b"T")
    _q(s, "SET rt.k10 = 'x'", status=b"T")
    assert b"C54000" in _denied(s, "SET rt.k11 = 'x'", status=b"E")
    _q(s, "ROLLBACK", "ROLLBACK")
    _q(s, "BEGIN", "BEGIN", status=b"T")
    _q(s, "SET rt.k11 = 'x'", status=b"T")
    _q(s, "SET LOCAL rt.k12 = 'x'", status=b"T")
    _q(s, "COMMIT", "COMMIT")
    assert b"C54000" in _denied(s, "SET rt.k12 = 'x'")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_pipelined_sets_are_counted_before_their_answers(tmp_path: Path, mode: str) -> None:
    """Red team 9s7 S1: 20,000 pipelined SETs were all kept. SETs in flight count (the belief)."""
    s = _session(tmp_path, mode, max_session_settings=3)
    sent_ = _send(s, b"".join(m.Query(f"SET rt.k{i} = 'x'").encode() for i in range(5)))
    texts = [body for _, body in sent_]
    assert texts[:3] == [f"SET rt.k{i} = 'x'".encode() + b"\x00" for i in range(3)]
    assert all(b"pgtenant_denied_" in t and b"rt.k" not in t for t in texts[3:])


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_the_bytes_bound(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_setting_bytes=100)
    _q(s, "SET rt.a = '" + "x" * 60 + "'")
    err = _denied(s, "SET rt.b = '" + "x" * 60 + "'")
    assert b"C54000" in err and b"max_session_setting_bytes = 100" in err
    _q(s, "SET rt.a = '" + "y" * 60 + "'")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_prepared_set_past_the_bound_is_refused_at_its_bind(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_settings=2)
    _q(s, "SET rt.a = 'x'")
    bind = m.frame(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
    batch = (m.Parse("", "SET rt.b = 'x'", b"\x00\x00").encode() + bind + m.execute_message("")
             + m.Parse("", "SET rt.c = 'x'", b"\x00\x00").encode() + bind + m.execute_message("") + m.SYNC_MESSAGE)
    sent_ = _send(s, batch)
    binds = [body for type_, body in sent_ if type_ == b"B"]
    assert b"pgtenant_denied_" not in binds[0] and b"pgtenant_denied_" in binds[1]
    # two portals bound before either runs: the second counts the first's SET
    s2 = _session(tmp_path, mode, max_session_settings=2)
    _q(s2, "SET rt.a = 'x'")
    named = (m.Parse("b", "SET rt.b = 'x'", b"\x00\x00").encode() + m.Parse("c", "SET rt.c = 'x'", b"\x00\x00").encode()
             + m.SYNC_MESSAGE)
    _send(s2, named)
    s2.server_data(m.frame(b"1", b"") + m.frame(b"1", b"") + m.ready_for_query(b"I"))
    portals = (m.frame(b"B", b"pb\x00b\x00" + struct.pack("!hhh", 0, 0, 0))
               + m.frame(b"B", b"pc\x00c\x00" + struct.pack("!hhh", 0, 0, 0)) + m.SYNC_MESSAGE)
    binds = [body for type_, body in _send(s2, portals) if type_ == b"B"]
    assert b"pgtenant_denied_" not in binds[0] and b"pgtenant_denied_" in binds[1]
