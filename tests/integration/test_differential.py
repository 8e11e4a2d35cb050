"""Differential protocol tests: malformed and edge-case bytes at every phase, to PostgreSQL and through pgtenant.

The corpus below is compared case by case (tests/support/differential.py says how). Where pgtenant answers
differently on purpose, the entry says why and what pgtenant must answer instead: a policy denial, its own
startup and authentication rules. Runs against every selected PostgreSQL major (the `pg` fixture).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from proxy.protocol import messages as m
from tests.support import differential as d
from tests.support.differential import GSSENC, Case, Login, Outcome, startup_body
from tests.support.pgcluster import PgCluster
from tests.support.pools import pooled_proxy
from tests.support.proxyproc import TENANT_ROLES, ProxyProcess
from tests.support.wire import SYNC, bind, execute, parse, read_until

USER, DATABASE = "ivan", "initech"  # the database strategy: the same database, as pgt_initech on both sides


def _q(sql: str) -> bytes:
    return m.Query(sql).encode()


def _raw(type_byte: bytes, body: bytes) -> bytes:
    return m.frame(type_byte, body)


def _fixed(data: bytes) -> Callable[[Login], bytes]:
    return lambda _side: data


def _sasl_initial(mechanism: bytes, data: bytes) -> bytes:
    return _raw(b"p", mechanism + b"\x00" + struct.pack("!i", len(data)) + data)


POST_AUTH_PHASES = ("idle", "in_transaction", "failed_transaction", "extended_pending")
_GARBAGE_PARSE = {
    # issue 17: ERROR 08P01 with PostgreSQL's words, the session kept
    "parse_type_list_short": _raw(b"P", b"\x00SELECT 1\x00" + struct.pack("!hi", 2, 23)) + SYNC,
    "parse_type_count_minus_one": _raw(b"P", b"\x00SELECT 1\x00" + struct.pack("!h", -1)) + SYNC,
    "parse_unterminated_query": _raw(b"P", b"\x00SELECT 1") + SYNC,
    "parse_unterminated_name": _raw(b"P", b"S_1") + SYNC,
    "parse_trailing_bytes": _raw(b"P", b"\x00SELECT 1\x00" + struct.pack("!hi", 1, 23) + b"\x01") + SYNC,
    "query_unterminated": _raw(b"Q", b"SELECT 1"),
    "query_trailing_bytes": _raw(b"Q", b"SELECT 1\x00x"),
}
# A statement's Close or Describe with bytes missing or extra (issue 14/16 leftovers): PostgreSQL's ERROR 08P01 in its
# words, the rest of the batch skipped to the Sync, the session kept. pgtenant answers a statement's Close itself and
# renames a statement's Describe in transaction pooling (the server keeps its own names), so it reads them as
# PostgreSQL does (messages.target) and lets the server answer a malformed one. (Probed equal without a change, not
# listed: Close/Describe of a portal unterminated, either empty, a Bind with an unterminated statement name, trailing
# bytes or a short result-format list, an Execute unterminated, short or with trailing bytes, a Sync or Flush with a
# body: pgtenant forwards them as written.)
_GARBAGE_EXTENDED = {
    "close_statement_unterminated": _raw(b"C", b"Sabc") + SYNC,
    "close_statement_trailing_bytes": _raw(b"C", b"Sabc\x00x") + SYNC,
    "close_statement_two_nuls": _raw(b"C", b"Sabc\x00\x00") + SYNC,
    "describe_statement_unterminated": _raw(b"D", b"Sabc") + SYNC,
    "describe_statement_trailing_bytes": _raw(b"D", b"Sabc\x00x") + SYNC,
}
_EDGE = {
    "empty_query": _q(""),
    "sync_alone": SYNC,
    "bind_unknown_statement": bind("no_such_statement") + SYNC,
    "bind_short": _raw(b"B", b"\x00\x00\x00") + SYNC,
    "execute_unknown_portal": execute("no_such_portal") + SYNC,
    "describe_bad_kind": _raw(b"D", b"Xname\x00") + SYNC,
    "close_bad_kind": _raw(b"C", b"Xname\x00") + SYNC,
    "copy_data_outside_copy": _raw(b"d", b"1\n") + _raw(b"c", b"") + SYNC,
    "flush_then_sync": _raw(b"H", b"") + SYNC,
    "parse_invalid_utf8": parse("SELECT '\udcff'".encode("utf-8", "surrogateescape").decode("latin-1")) + SYNC,
    "syntax_error": _q("SELEC 1"),
    "division_by_zero": _q("SELECT 1/0"),
    "pipeline_error_then_statement": parse("SELECT 1/0") + bind() + execute() + parse("SELECT 2") + SYNC,
    "unknown_message_type": _raw(b"y", b""),  # issue 17: PostgreSQL's FATAL, and no second one
    "terminate": _raw(b"X", b""),
    "commit": _q("COMMIT"),
}


# An unknown message type is refused by pgtenant at its type byte, never forwarded (red team 9s2 M1: a pooled server's
# FATAL for it came after its ReadyForQuery, when the server may serve another client): what the session had in flight
# is not answered first, as PostgreSQL answers it when it flushes before its FATAL.
_REFUSED_TYPE = "pgtenant refuses an unknown message type itself, before anything in flight is answered"
_TYPE_121 = ("FATAL", "08P01", "invalid frontend message type 121")


def _corpus() -> list[Case]:
    cases: list[Case] = []
    for phase in POST_AUTH_PHASES:
        for name, data in {**_GARBAGE_PARSE, **_GARBAGE_EXTENDED, **_EDGE}.items():
            if (phase, name) == ("extended_pending", "unknown_message_type"):
                cases.append(Case(f"{phase}-{name}", phase, _fixed(data), messages=True, differs=_REFUSED_TYPE,
                                  proxy=Outcome("E", (_TYPE_121,), "closed")))
                continue
            cases.append(Case(f"{phase}-{name}", phase, _fixed(data),
                              messages=name in _GARBAGE_PARSE or name in _GARBAGE_EXTENDED))
    # In COPY FROM STDIN
    for name, data in {
        "copy_bad_row": _raw(b"d", b"not a number\n") + _raw(b"c", b""),
        "copy_fail": _raw(b"f", b"client gave up\x00"),
        "copy_good_row": _raw(b"d", b"1\n") + _raw(b"c", b""),
        "copy_query_inside": _q("SELECT 1"),
        "copy_sync_inside": SYNC + _raw(b"c", b""),
    }.items():
        cases.append(Case(f"copy_in-{name}", "copy_in", _fixed(data)))
    cases.append(Case("copy_in-copy_unknown_type", "copy_in", _fixed(_raw(b"y", b"")), messages=True,
                      differs=_REFUSED_TYPE + " (PostgreSQL: ERROR unexpected message type during COPY, then FATAL "
                      "protocol synchronization was lost)", proxy=Outcome("E", (_TYPE_121,), "closed")))
    # Startup: the packet itself
    cases += [
        Case("startup-no_final_terminator", "startup",  # issue 17
             lambda s: startup_body(f"user\0{s.user}\0database\0{s.database}\0".encode()), messages=True),
        Case("startup-bytes_after_terminator", "startup",
             lambda s: startup_body(f"user\0{s.user}\0\0\0".encode()), messages=True),
        Case("startup-name_without_value", "startup", lambda s: startup_body(b"user\0"), messages=True),
        Case("startup-trailing_unterminated_name", "startup",
             lambda s: startup_body(f"user\0{s.user}\0database\0{s.database}\0x".encode())),
        Case("startup-no_user", "startup", lambda s: startup_body(b"database\0x\0\0")),
        Case("startup-protocol_2", "startup", lambda s: startup_body(f"user\0{s.user}\0\0".encode(), 2 << 16),
             differs="PostgreSQL answers a 2.0 client in the 2.0 error format; pgtenant in 3.0 (libpq reads both)",
             proxy=Outcome("E", (("FATAL", "0A000", ""),), "closed")),
        Case("startup-valid", "startup", lambda s: s.startup()),
        Case("startup-incomplete", "startup", lambda s: s.startup()[:-3]),
        Case("startup-cancel_unknown_key", "startup", _fixed(m.encode_cancel_request(12345, b"\x01\x02\x03\x04"))),
        Case("startup-unknown_database", "startup",
             lambda s: m.encode_startup_message({"user": s.user, "database": "no_such_database"})),
        Case("startup-length_too_small", "startup", _fixed(struct.pack("!ii", 4, 0)),
             differs="PostgreSQL closes without a word (COMMERROR); pgtenant says why in a FATAL 08P01",
             proxy=Outcome("E", (("FATAL", "08P01", ""),), "closed")),
        Case("startup-length_too_large", "startup", _fixed(struct.pack("!ii", 20000, m.PROTOCOL_3_0)),
             differs="PostgreSQL closes without a word (COMMERROR); pgtenant says why in a FATAL 08P01",
             proxy=Outcome("E", (("FATAL", "08P01", ""),), "closed")),
    ]
    # SSL / GSSAPI negotiation (pgtenant offers TLS, and so does the cluster when it has OpenSSL). PostgreSQL
    # built with GSSAPI answers 'G' and starts a GSSAPI handshake; pgtenant has no GSSAPI encryption and
    # answers 'N' like a PostgreSQL built without it, refusing bytes sent before its answer like PostgreSQL.
    no_gss = "pgtenant has no GSSAPI encryption: it answers 'N', as PostgreSQL built without GSSAPI does"
    unencrypted = ("FATAL", "08P01", "received unencrypted data after GSSAPI encryption request")

    def gss_build(pg: Outcome) -> bool:
        return pg.types.startswith("G")

    cases += [
        Case("negotiation-gssenc", "negotiation", _fixed(GSSENC), differs=no_gss, when=gss_build,
             proxy=Outcome("N", (), "waiting")),
        Case("negotiation-two_gssenc_in_one_write", "negotiation", _fixed(GSSENC + GSSENC),  # issue 17
             differs=no_gss, when=gss_build, proxy=Outcome("NE", (unencrypted,), "closed"), messages=True),
        Case("negotiation-gssenc_then_startup_in_one_write", "negotiation", lambda s: GSSENC + s.startup(),
             differs=no_gss, when=gss_build, proxy=Outcome("NE", (unencrypted,), "closed"), messages=True),
        Case("negotiation-ssl", "negotiation", _fixed(m.encode_ssl_request()),
             differs="pgtenant offers TLS here where the cluster has none", when=lambda pg: pg.types == "N",
             proxy=Outcome("S", (), "tls")),
        Case("negotiation-ssl_then_startup_in_one_write", "negotiation",
             lambda s: m.encode_ssl_request() + s.startup(),
             differs="pgtenant refuses the injected bytes (CVE-2021-23222) before answering 'S'; PostgreSQL "
             "answers 'S' and refuses them after its TLS handshake",
             proxy=Outcome("E", (("FATAL", "08P01", "received unencrypted data after SSL request"),), "closed"),
             messages=True),
    ]
    # SASL
    cases += [
        Case("sasl-query_instead", "sasl", _fixed(_q("SELECT 1")), messages=True),
        Case("sasl-unknown_mechanism", "sasl", _fixed(_sasl_initial(b"PLAIN", b"n,,n=x,r=abc")),
             differs="pgtenant answers every failed SASL exchange as a failed password (28P01): nothing to probe",
             proxy=Outcome("E", (("FATAL", "28P01", ""),), "closed")),
        Case("sasl-malformed_client_first", "sasl", _fixed(_sasl_initial(b"SCRAM-SHA-256", b"garbage")),
             differs="pgtenant answers every failed SASL exchange as a failed password (28P01): nothing to probe",
             proxy=Outcome("E", (("FATAL", "28P01", ""),), "closed")),
        Case("sasl-truncated_initial_response", "sasl", _fixed(_raw(b"p", b"SCRAM-SHA-256\x00\x00\x00")),
             differs="pgtenant answers every failed SASL exchange as a failed password (28P01): nothing to probe",
             proxy=Outcome("E", (("FATAL", "28P01", ""),), "closed")),
    ]
    # Policy: pgtenant must differ
    cases += [
        Case("idle-function_call_message", "idle",
             _fixed(_raw(b"F", struct.pack("!ih", 1299, 0) + struct.pack("!hh", 0, 0))),  # now()
             differs="the FunctionCall message bypasses every SQL check: pgtenant refuses it (42501)",
             proxy=Outcome("EZ", (("ERROR", "42501", ""),), "ZI", True)),
    ]
    return cases


CORPUS = _corpus()


@pytest.fixture(scope="module")
def sides(pg: PgCluster, proxy: ProxyProcess) -> dict[str, Login]:
    role, role_pw = TENANT_ROLES["initech"]
    return {
        "postgres": Login(pg.port, role, DATABASE, role_pw),
        "pgtenant": Login(proxy.port, USER, DATABASE, proxy.password(USER)),
    }


def _shape(o: Outcome, messages: bool) -> tuple[object, ...]:
    return o.key(messages)


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_same_answer_as_postgresql(case: Case, sides: dict[str, Login]) -> None:
    direct = d.run_case(sides["postgres"], case)
    proxied = d.run_case(sides["pgtenant"], case)
    if not case.differs or (case.when is not None and not case.when(direct)):
        assert _shape(proxied, case.messages) == _shape(direct, case.messages), (
            f"\nPostgreSQL: {direct}\npgtenant:   {proxied}")
        return
    assert case.proxy is not None
    assert _shape(proxied, case.messages) == _shape(case.proxy, case.messages), (
        f"\npgtenant: {proxied}\n(PostgreSQL: {direct})")
    assert _shape(direct, False) != _shape(proxied, False), (
        f"listed as a difference ({case.differs}) but PostgreSQL answers the same: {direct}")


# --- The order of answers to a batch the pool answers in part itself (wp-9s6b) -----------------------------------
# In transaction pooling a Parse of a text the held server already has (prepared by an earlier session, or by this
# one under another name, or an unnamed text with the statement cache) and a Close of a statement are answered by
# pgtenant (ParseComplete/CloseComplete) without reaching the server. Its answer must come in its turn: before the
# server's answer to the message after it (red team 9s6: `t 1 T Z` for Parse + Describe(S) + Sync, PostgreSQL `1 t
# T Z`). Each step is (client, bytes): the clients log in one after the other on a pool of one server (the second
# gets the server the first left); a step of None closes the client. Compared: the message types of each batch.

def _describe_statement(name: str) -> bytes:
    return _raw(b"D", b"S" + name.encode() + b"\x00")


def _close_statement(name: str) -> bytes:
    return _raw(b"C", b"S" + name.encode() + b"\x00")


def _order_shapes(tag: str) -> dict[str, list[tuple[str, bytes | None]]]:
    def text(shape: str) -> str:
        return f"SELECT generate_series(1, 3) AS n /* {tag} {shape} */"

    def in_tx(shape: str, head: bytes, then: bytes) -> list[tuple[str, bytes | None]]:
        return [("a", _q("BEGIN")), ("a", head), ("a", then), ("a", _q("COMMIT"))]

    t = {name: text(name) for name in ("other_session", "other_name", "unnamed", "close_exec", "parse_exec",
                                       "notice")}
    long_alias = "a" * 70  # PostgreSQL's NOTICE 42622 "identifier ... will be truncated", before its ParseComplete
    return {
        "describe_after_other_session": [
            ("a", parse(t["other_session"], "s1") + _describe_statement("s1") + SYNC), ("a", None),
            ("b", parse(t["other_session"], "s1") + _describe_statement("s1") + SYNC),
            ("b", parse(t["other_session"], "s9") + _describe_statement("s9") + bind("s9") + execute() + SYNC)],
        "describe_other_name_same_session": [
            ("a", parse(t["other_name"], "s1") + _describe_statement("s1") + SYNC),
            ("a", parse(t["other_name"], "s2") + _describe_statement("s2") + SYNC),
            ("a", _close_statement("s2") + _describe_statement("s1") + SYNC)],
        "unnamed_describe_thrice": [  # (the statement cache prepares a text at its second Parse, skips the third)
            ("a", parse(t["unnamed"]) + _describe_statement("") + SYNC),
            ("a", parse(t["unnamed"]) + _describe_statement("") + SYNC),
            ("a", parse(t["unnamed"]) + _describe_statement("") + bind() + execute() + SYNC)],
        "parse_then_parse_with_notice": [
            ("a", parse(t["notice"], "s1") + bind("s1") + execute() + SYNC),
            ("a", parse(t["notice"], "s2") + parse(f"SELECT 1 AS {long_alias} /* {tag} */", "s3") + SYNC)],
        "close_then_execute_open_portal": in_tx(
            "close_exec", parse(t["close_exec"], "s1") + bind("s1", "p") + execute("p", 1) + SYNC,
            _close_statement("s1") + execute("p") + SYNC),
        "parse_then_execute_open_portal": in_tx(
            "parse_exec", parse(t["parse_exec"], "s1") + bind("s1", "p") + execute("p", 1) + SYNC,
            parse(t["parse_exec"], "s2") + execute("p") + SYNC),
    }


_ORDER_POOLS = {
    "session": {"pool_mode": "session"},
    "transaction-sticky": {"pool_mode": "transaction", "sticky_servers": True},
    "transaction-no_sticky": {"pool_mode": "transaction", "sticky_servers": False},
    "transaction-sticky-cache": {"pool_mode": "transaction", "sticky_servers": True, "statement_cache": True},
    "transaction-no_sticky-cache": {"pool_mode": "transaction", "sticky_servers": False, "statement_cache": True},
}


@pytest.fixture(scope="module", params=list(_ORDER_POOLS), ids=list(_ORDER_POOLS))
def one_server(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory,
               request: pytest.FixtureRequest) -> Iterator[tuple[str, ProxyProcess]]:
    """pgtenant with one server per pool, in each pool mode (transaction: sticky servers and the statement cache on
    and off)."""
    p = pooled_proxy(pg, tmp_path_factory.mktemp("order"), pool_size=1, query_wait_timeout=30.0,
                     **_ORDER_POOLS[request.param])
    yield request.param, p
    p.stop()


def _batches(side: Login, steps: list[tuple[str, bytes | None]]) -> list[str]:
    socks: dict[str, socket.socket] = {}
    out: list[str] = []
    try:
        for client, data in steps:
            if data is None:
                socks.pop(client).close()
                continue
            if client not in socks:
                socks[client] = d.logged_in(side)
            socks[client].sendall(data)  # (notices too: these shapes' are the same on both sides)
            out.append("".join(chr(t[0]) for t, _ in read_until(socks[client]) if t not in (b"S", b"K")))
    finally:
        for sock in socks.values():
            sock.close()
    return out


@pytest.mark.parametrize("shape", list(_order_shapes("")), ids=list(_order_shapes("")))
def test_answer_order_as_postgresql(shape: str, one_server: tuple[str, ProxyProcess], pg: PgCluster) -> None:
    """Each batch's answers, in order, as PostgreSQL's (both pool modes; red on stage b06641a for the shapes
    describe_* and unnamed_describe_thrice with the cache, `t 1 T Z`, and close_/parse_then_execute_open_portal in
    transaction pooling, `D D 3 C Z`; parse_then_parse_with_notice, `N 1 1 Z` where PostgreSQL answers `1 N 1 Z`, red
    before NoticeResponse was followed)."""
    mode, proxy = one_server
    steps = _order_shapes(mode)[shape]
    role, role_pw = TENANT_ROLES["initech"]
    direct = _batches(Login(pg.port, role, DATABASE, role_pw), steps)
    proxied = _batches(Login(proxy.port, USER, DATABASE, proxy.password(USER)), steps)
    assert proxied == direct, f"\nPostgreSQL: {direct}\npgtenant:   {proxied}"
