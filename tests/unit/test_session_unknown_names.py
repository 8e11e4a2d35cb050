"""Review 19a F1/F1b (scripted conversations): a Parse or Close PostgreSQL skips after an error leaves its name
unknown (its Binds refused until a Parse of it is not skipped); dropped requests still owe their ReadyForQuery."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from proxy.actions import RelayToServer
from proxy.auth.throttle import AuthThrottle
from proxy.policy.model import Allow, Decision
from proxy.protocol import messages as m
from proxy.session import ClientSession
from tests.support.sessions import attach, frames, login, make_config

_SET = "SELECT set_config('search_path', 'information_schema', false)"
_DIV = m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "22012", "M": "division by zero"})


def _session(tmp_path: Path) -> ClientSession:
    session = ClientSession(make_config(tmp_path), session_id="s1", client_address="10.0.0.1",
                            throttle=AuthThrottle(), clock=lambda: 100.0, tls_available=False)
    login(session)
    attach(session)

    def decide(kind: str, sql: str) -> Decision:
        return Allow()

    session.enable_policy(decide)
    return session


def _bind(portal: str, statement: str) -> bytes:
    return m.frame(b"B", f"{portal}\x00{statement}\x00".encode() + struct.pack("!hhh", 0, 0, 0))


def _execute(portal: str) -> bytes:
    return m.frame(b"E", f"{portal}\x00".encode() + struct.pack("!i", 0))


def _forwarded(actions: list) -> list[tuple[bytes, bytes]]:
    return frames(b"".join(bytes(c) for a in actions if isinstance(a, RelayToServer) for c in a.chunks))


def _bound_statement(actions: list) -> str:
    [body] = [body for kind, body in _forwarded(actions) if kind == b"B"]
    return body.split(b"\x00")[1].decode()


@pytest.mark.parametrize("name", ["s", ""])
def test_a_statement_whose_parse_was_skipped_is_not_bound_until_parsed_again(tmp_path: Path, name: str) -> None:
    """Review 19a F1: a Close and a Parse of a name after an error in their batch are skipped by PostgreSQL, which
    keeps the old statement (a set_config): its Bind is refused (a marker statement), until a Parse of the name is
    answered; a Parse skipped again leaves it refused."""
    session = _session(tmp_path)
    session.client_data(m.Parse(name, _SET, b"\x00\x00").encode() + m.SYNC_MESSAGE)
    session.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    close = m.frame(b"C", b"S" + name.encode() + b"\x00") if name else b""
    session.client_data(m.Parse("bad", "SELECT 1/0", b"\x00\x00").encode() + _bind("", "bad") + _execute("")
                        + close + m.Parse(name, "SELECT 1", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    session.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + _DIV + m.ready_for_query(b"I"))
    assert _bound_statement(session.client_data(_bind("", name) + _execute("") + m.SYNC_MESSAGE)) != name
    session.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "26000", "M": "x"}) + m.ready_for_query(b"I"))
    if name:
        session.client_data(m.frame(b"C", b"S" + name.encode() + b"\x00") + m.SYNC_MESSAGE)
        session.server_data(m.frame(b"3", b"") + m.ready_for_query(b"I"))
    session.client_data(m.Parse(name, "SELECT 2", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    session.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    assert _bound_statement(session.client_data(_bind("", name) + _execute("") + m.SYNC_MESSAGE)) == name
