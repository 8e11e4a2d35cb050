"""Red team 21p F3 (scripted conversations): a prepared statement whose changes the session does not remember is
never run unfollowed: no record is dropped for another (the bound is [pool] max_session_statements + the unnamed
one) and, as a last line, a Bind of a statement parsed past the records' bound is refused (54000)."""

from __future__ import annotations

import struct
from pathlib import Path

from proxy.actions import RelayToServer
from proxy.auth.throttle import AuthThrottle
from proxy.policy.model import SAVEPOINT, SET_PATH, Allow, Change, Decision
from proxy.protocol import messages as m
from proxy.session import ClientSession
from tests.support.sessions import attach, frames, login, make_config

_SET = "SELECT set_config('search_path', 'information_schema, globex', false)"
_PATH = Change(0, SET_PATH, path=("information_schema", "globex"))


def _session(tmp_path: Path, **pool: object) -> ClientSession:
    session = ClientSession(make_config(tmp_path, pool=dict(pool)), session_id="s1", client_address="10.0.0.1",
                            throttle=AuthThrottle(), clock=lambda: 100.0, tls_available=False)
    login(session)
    attach(session)

    def decide(kind: str, sql: str) -> Decision:
        if sql == _SET:
            return Allow(changes=(_PATH,))
        if sql.startswith("SAVEPOINT"):
            return Allow(changes=(Change(0, SAVEPOINT, "a"),))
        return Allow()

    session.enable_policy(decide)
    return session


def _bind(statement: str) -> bytes:
    return m.frame(b"B", f"\x00{statement}\x00".encode() + struct.pack("!hhh", 0, 0, 0))


_EXECUTE = m.frame(b"E", b"\x00" + struct.pack("!i", 0))


def _bound_statement(actions: list) -> str:
    forwarded = frames(b"".join(bytes(c) for a in actions if isinstance(a, RelayToServer) for c in a.chunks))
    [body] = [body for kind, body in forwarded if kind == b"B"]
    return body.split(b"\x00")[1].decode()


def _parse(session: ClientSession, names: list[str], sql: str) -> None:
    session.client_data(b"".join(m.Parse(n, sql, b"\x00\x00").encode() for n in names) + m.SYNC_MESSAGE)
    session.server_data(m.frame(b"1", b"") * len(names) + m.ready_for_query(b"I"))


def test_a_set_config_statement_parsed_before_a_thousand_others_is_still_followed(tmp_path: Path) -> None:
    """rt21p F3 (lk3): Parse s (a set_config of search_path), 999 named statements with changes and the unnamed
    one — 1,001 PostgreSQL holds, within max_session_statements = 1000: s's record was dropped for the last, its
    Bind ran unfollowed. Now it is followed: the path it sets is the session's once answered."""
    session = _session(tmp_path)
    _parse(session, ["s"], _SET)
    for k0 in range(0, 999, 333):
        _parse(session, [f"f{k}" for k in range(k0, k0 + 333)], "SAVEPOINT a")
    _parse(session, [""], "SAVEPOINT a")
    assert _bound_statement(session.client_data(_bind("s") + _EXECUTE + m.SYNC_MESSAGE)) == "s"
    session.server_data(m.frame(b"2", b"") + m.frame(b"C", b"SELECT 1\x00") + m.ready_for_query(b"I"))
    assert session.context.current.path == _PATH.path


def test_a_statement_parsed_past_the_records_bound_is_not_bound(tmp_path: Path) -> None:
    """The last line: a statement whose changes were not recorded (past the records' bound) is refused at its Bind
    (a marker statement PostgreSQL fails: the session's 54000), the statements recorded stay bound as they are."""
    session = _session(tmp_path, max_session_statements=5)
    assert session.context.max_statements == 6  # (the named ones the bound allows + the unnamed one)
    session.context.max_statements = 2  # (as if the server held more than the bound: the last line)
    _parse(session, ["s"], _SET)
    _parse(session, [""], "SAVEPOINT a")
    _parse(session, ["g"], "SAVEPOINT a")  # (as if the server held a third: nothing of it is remembered)
    assert _bound_statement(session.client_data(_bind("g") + _EXECUTE + m.SYNC_MESSAGE)) != "g"
    session.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "26000", "M": "x"}) + m.ready_for_query(b"I"))
    assert _bound_statement(session.client_data(_bind("s") + _EXECUTE + m.SYNC_MESSAGE)) == "s"
