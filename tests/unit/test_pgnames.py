"""Statement, portal and cursor names keyed as PostgreSQL keys them (pgnames.py, red team 9a5 F5, F6)."""

from __future__ import annotations

import json

from pglast.parser import parse_sql_json

from proxy.pgnames import protocol_name, sql_identifier


def test_a_protocol_name_is_its_first_63_bytes() -> None:
    assert protocol_name("S_1") == "S_1" and protocol_name("") == ""
    assert protocol_name("k" * 63) == "k" * 63
    assert protocol_name("k" + "x" * 70) == "k" + "x" * 62 == protocol_name("k" + "x" * 62 + "ZZZ")
    # cut inside a character, as PostgreSQL cuts it (its first byte ends the key)
    assert protocol_name("d" * 62 + "é") == "d" * 62 + "\ufffd" == protocol_name("d" * 62 + "è")
    assert protocol_name("d" * 62 + "é") != protocol_name("d" * 62)
    assert protocol_name("é" * 40) == "é" * 31 + "\ufffd"


def test_a_sql_identifier_is_cut_at_a_character_as_the_scanner_cuts_it() -> None:
    assert sql_identifier("k" + "x" * 70) == "k" + "x" * 62
    assert sql_identifier("c" * 62 + "é") == "c" * 62
    for name in ("k" + "x" * 70, "c" * 62 + "é", "é" * 40, "short"):
        parsed = json.loads(parse_sql_json(f'DEALLOCATE "{name}"'))["stmts"][0]["stmt"]["DeallocateStmt"]["name"]
        assert sql_identifier(name) == parsed
