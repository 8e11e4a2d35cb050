"""A portal's note (the change its Execute applies) follows PostgreSQL's portal, not the client's messages (rt20a).

F1: a `Close P c` or `Execute c` PostgreSQL skips (an error earlier in its batch) or refuses (25P02, the transaction
aborted) dropped c's note while c lived on: after ROLLBACK TO, `Execute c` ran `set_config('search_path',
'information_schema, <own>')` unseen, the proxy stopped filtering the information_schema views (other tenants' function
names) and, in transaction pooling, gave the server back with that path. F2: a later `Bind` of the same name to a
change-free statement (in one batch or two), a skipped `Bind` of it to a statement with a change, or SQL `CLOSE c` +
`DECLARE c`, left the proxy applying a change PostgreSQL never ran (a DECLARE of a noted name makes the name unknown
until its request ends without an error; an Execute of an unknown name is refused, 34000). gina (schema tenant) and dan
(database tenant sharing `saas`); transaction pooling, session pooling with and without the statement cache; every
PostgreSQL the fixtures offer; the tenant's next session read after each.
"""

from __future__ import annotations

import socket

import pytest

from proxy.protocol import messages as m
from tests.integration.test_protocol_by_sql import (  # noqa: F401 (proxies: the fixture)
    HIDDEN,
    MODES,
    OWN,
    READ,
    _bind,
    _close_portal,
    _errors,
    _execute,
    _fresh_session_unmoved,
    _parse,
    _query,
    _rows,
    _session,
    _set_path,
    _wire,
    proxies,
)
from tests.support.proxyproc import ProxyProcess

_FAILING = _parse("bad", "SELECT 1/0") + _bind("p9", "bad") + _execute("p9")  # 22012: the rest of its batch skipped


def _extended(sql: str, portal: str) -> bytes:
    """`sql` by Parse/Bind/Execute of a named portal (a Query would drop PostgreSQL's unnamed portal)."""
    return _parse("", sql) + _bind(portal, "") + _execute(portal) + m.SYNC_MESSAGE


def _own_path(user: str) -> str:
    return f"SELECT set_config('search_path', '{OWN[user]}', false)"


def _unleaked(sock: socket.socket, user: str) -> None:
    """The unqualified information_schema read lists nothing of the schema the tenant may not see (by Query and by
    Parse/Bind/Execute): the proxy filters it, or it is not on the path."""
    for data in (_query(READ), _parse("", READ) + _bind() + _execute() + m.SYNC_MESSAGE):
        answers = _wire(sock, data)
        assert f"{HIDDEN[user]}.zz_secret" not in str(_rows(answers)), answers
        assert _errors(answers) in ([], ["42P01"]), answers


def _f1(user: str, last: bytes, portal: str) -> list[tuple[bytes, list[str] | None]]:
    """BEGIN; portal bound to the set_config; a savepoint; a failing batch ending with `last` (skipped); ROLLBACK TO
    (the portal, made before the savepoint, stays); its Execute runs the set_config; COMMIT."""
    return [(_query("BEGIN"), []),
            (_parse("s", _set_path(user)) + _bind(portal, "s") + m.SYNC_MESSAGE, []),
            (_extended("SAVEPOINT sp", "p1"), []),
            (_FAILING + last + m.SYNC_MESSAGE, ["22012"]),
            (_extended("ROLLBACK TO sp", "p2"), []),
            (_execute(portal) + m.SYNC_MESSAGE, []),
            (_query("COMMIT"), [])]


def _aborted(user: str) -> list[tuple[bytes, list[str] | None]]:
    """rt20a's pe.py: `Execute c` refused by PostgreSQL in an aborted transaction (25P02) in a batch of its own."""
    return [(_query("BEGIN"), []),
            (_parse("s", _set_path(user)) + _bind("c", "s") + m.SYNC_MESSAGE, []),
            (_query("SAVEPOINT sp"), []),
            (_query("SELECT 1/0"), ["22012"]),
            (_execute("c") + m.SYNC_MESSAGE, ["25P02"]),
            (_query("ROLLBACK TO sp"), []),
            (_execute("c") + m.SYNC_MESSAGE, []),
            (_query("COMMIT"), [])]


def _rebound(user: str) -> list[tuple[bytes, list[str] | None]]:
    """rt20a's pr.py onebatch: the unnamed portal bound to a set_config, then re-bound to `SELECT 1` and executed."""
    return [(_query(f"SET search_path = information_schema, {OWN[user]}"), []),
            (_parse("s2", _own_path(user)) + _bind("", "s2") + _parse("t", "SELECT 1") + _bind("", "t") + _execute()
             + m.SYNC_MESSAGE, [])]


def _rebound_tx(user: str) -> list[tuple[bytes, list[str] | None]]:
    """pr.py tx: the same in a transaction block, the two Binds in batches of their own."""
    return [(_query(f"SET search_path = information_schema, {OWN[user]}"), []),
            (_query("BEGIN"), []),
            (_parse("s2", _own_path(user)) + _bind("", "s2") + m.SYNC_MESSAGE, []),
            (_parse("t", "SELECT 1") + _bind("", "t") + _execute() + m.SYNC_MESSAGE, []),
            (_query("COMMIT"), [])]


def _skipped_bind(user: str) -> list[tuple[bytes, list[str] | None]]:
    """rt20a's sb.py: c bound to `SELECT 1`; `Close P c` + `Bind c` of the set_config skipped; c still SELECT 1."""
    return [(_query(f"SET search_path = information_schema, {OWN[user]}"), []),
            (_query("BEGIN"), []),
            (_parse("t", "SELECT 1") + _bind("c", "t") + m.SYNC_MESSAGE, []),
            (_query("SAVEPOINT sp"), []),
            (_FAILING + _close_portal("c") + _parse("s2", _own_path(user)) + _bind("c", "s2") + m.SYNC_MESSAGE,
             ["22012"]),
            (_query("ROLLBACK TO sp"), []),
            (_execute("c") + m.SYNC_MESSAGE, []),
            (_query("COMMIT"), [])]


def _sql_close_declare(user: str, declare: bytes) -> list[tuple[bytes, list[str] | None]]:
    """rt20a's xd.py: SQL CLOSE of the protocol portal c bound to a set_config, then SQL DECLARE c of `SELECT 1`
    (`declare`: by Query, in the CLOSE's Query string, or by Parse/Bind/Execute): `Execute c` runs the cursor, and
    the proxy applies nothing."""
    steps = [(_query(f"SET search_path = information_schema, {OWN[user]}"), []),
             (_query("BEGIN"), []),
             (_parse("s2", _own_path(user)) + _bind("c", "s2") + m.SYNC_MESSAGE, [])]
    if declare:
        steps += [(_query("CLOSE c"), []), (declare, [])]
    else:
        steps += [(_query("CLOSE c; DECLARE c CURSOR FOR SELECT 1"), [])]
    return [*steps, (_execute("c") + m.SYNC_MESSAGE, []), (_query("COMMIT"), [])]


def _declare_refused(user: str) -> list[tuple[bytes, list[str] | None]]:
    """SQL DECLARE c while the protocol portal c lives: PostgreSQL fails it (42P03); after ROLLBACK TO the proxy does
    not know which c PostgreSQL has (it did not follow the DECLARE's answer to the portal): `Execute c` is refused
    (34000, portal_not_known), the session goes on."""
    return [(_query(f"SET search_path = information_schema, {OWN[user]}"), []),
            (_query("BEGIN"), []),
            (_parse("s2", _own_path(user)) + _bind("c", "s2") + m.SYNC_MESSAGE, []),
            (_query("SAVEPOINT sp"), []),
            (_query("DECLARE c CURSOR FOR SELECT 1"), ["42P03"]),
            (_query("ROLLBACK TO sp"), []),
            (_execute("c") + m.SYNC_MESSAGE, ["34000"]),
            (_query("ROLLBACK"), [])]


SPELLINGS = {
    "close skipped": lambda user: _f1(user, _close_portal("c"), "c"),
    "execute skipped": lambda user: _f1(user, _execute("c"), "c"),
    "unnamed execute skipped": lambda user: _f1(user, _execute(""), ""),
    "execute refused in an aborted transaction": _aborted,
    "unnamed rebound in one batch": _rebound,
    "unnamed rebound in a transaction": _rebound_tx,
    "bind skipped": _skipped_bind,
    "sql close, then declare": lambda user: _sql_close_declare(user, _query("DECLARE c CURSOR FOR SELECT 1")),
    "sql close and declare in one query": lambda user: _sql_close_declare(user, b""),
    "sql close, then declare by parse": lambda user: _sql_close_declare(
        user, _extended("DECLARE c CURSOR FOR SELECT 1", "p")),
    "sql declare failed, then rollback to": _declare_refused,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", sorted(OWN))
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_a_portals_note_follows_the_portal_postgresql_has(
        proxies: dict[str, ProxyProcess], user: str, mode: str, spelling: str) -> None:  # noqa: F811 (the fixture)
    """Each spelling answered as PostgreSQL answers it; the read after lists nothing hidden (the proxy's belief of
    the search_path is PostgreSQL's), and the tenant's next session (the server given back, in transaction
    pooling) reads with the tenant's own path."""
    sock = _session(proxies[mode], user)
    try:
        for data, expected in SPELLINGS[spelling](user):
            answers = _wire(sock, data)
            if expected is not None:
                assert _errors(answers) == expected, (data, answers)
        _unleaked(sock, user)
    finally:
        sock.close()
    _fresh_session_unmoved(proxies[mode], user)
