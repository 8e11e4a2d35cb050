"""Statement, portal and cursor names keyed as PostgreSQL keys them (pgnames.py, red team 9a5 F5, F6)."""

from __future__ import annotations

import json

from pglast.parser import parse_sql_json

from proxy.pgnames import cut, protocol_name, server_bytes, shown, sql_identifier


def test_a_protocol_name_is_its_first_63_bytes() -> None:
    assert protocol_name("S_1") == "S_1" and protocol_name("") == ""
    assert protocol_name("k" * 63) == "k" * 63
    assert protocol_name("k" + "x" * 70) == "k" + "x" * 62 == protocol_name("k" + "x" * 62 + "ZZZ")
    # cut inside a character, as PostgreSQL cuts it (the first byte of "é" and of "è" is 0xC3): the key keeps that
    # byte, shown as U+FFFD
    key = protocol_name("d" * 62 + "é")
    assert key == protocol_name("d" * 62 + "è") and key not in (protocol_name("d" * 62), "d" * 62 + "\ufffd")
    assert cut(key) and server_bytes(key) == b"d" * 62 + b"\xc3" and shown(key) == "d" * 62 + "\ufffd"
    assert server_bytes(protocol_name("é" * 40)) == ("é" * 40).encode()[:63]
    assert not cut(protocol_name("k" + "x" * 70)) and server_bytes("S_1") == b"S_1"


def test_a_sql_identifier_is_cut_at_a_character_as_the_scanner_cuts_it() -> None:
    assert sql_identifier("k" + "x" * 70) == "k" + "x" * 62
    assert sql_identifier("c" * 62 + "é") == "c" * 62
    for name in ("k" + "x" * 70, "c" * 62 + "é", "é" * 40, "short"):
        parsed = json.loads(parse_sql_json(f'DEALLOCATE "{name}"'))["stmts"][0]["stmt"]["DeallocateStmt"]["name"]
        assert sql_identifier(name) == parsed
