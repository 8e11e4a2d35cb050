"""The client's schema names written back in PostgreSQL's answers (hiddennames.py)."""

from __future__ import annotations

from proxy.hiddennames import MAX_NAMES, remember, written_back
from proxy.protocol import messages as m

NAMES = {"pg_7xq": "globex"}


def _body(**fields: str) -> bytes:
    return m.encode_error_fields(b"E", fields)[5:]


def _fields(framed: bytes | None) -> dict[str, str]:
    assert framed is not None
    return m.decode_error_fields(framed[5:])


def test_a_schema_named_by_postgresql_gets_the_clients_name() -> None:
    body = _body(S="ERROR", V="ERROR", C="42P01", M='relation "pg_7xq.orders" does not exist', P="15",
                 F="parse_relation.c", L="1477", R="parserOpenTable")
    out = _fields(written_back(b"E", body, NAMES, "select * from globex.orders"))
    assert out["M"] == 'relation "globex.orders" does not exist'
    assert (out["P"], out["F"], out["L"], out["R"]) == ("15", "parse_relation.c", "1477", "parserOpenTable")
    out = _fields(written_back(b"N", _body(S="NOTICE", C="00000", M='schema "pg_7xq" does not exist, skipping'),
                               NAMES, ""))
    assert out["M"] == 'schema "globex" does not exist, skipping'


def test_what_is_not_a_reserved_schema_stays() -> None:
    for fields in (
        {"C": "42P01", "M": 'relation "pg_7xq" does not exist'},  # not as a schema
        {"C": "22P02", "M": 'invalid input syntax for type integer: "pg_7xq.a"'},  # a value
        {"C": "42P01", "M": 'relation "pg_7xqz.t" does not exist'},  # another name
        {"C": "42P01", "M": 'relation "xpg_7xq.t" does not exist'},
    ):
        assert written_back(b"E", _body(**fields), NAMES, "") is None, fields
    # the client wrote the reserved name itself
    body = _body(C="42P01", M='relation "pg_7xq.t" does not exist')
    assert written_back(b"E", body, NAMES, "select * from pg_7xq.t") is None


def test_the_map_is_bounded() -> None:
    names: dict[str, str] = {}
    for i in range(MAX_NAMES + 5):
        remember(names, ((f"pg_{i}", "s"),))
    assert len(names) == MAX_NAMES and "pg_0" not in names and f"pg_{MAX_NAMES + 4}" in names
