"""Round-trips and rejections of the startup packets and messages the proxy decodes."""

from __future__ import annotations

import contextlib
import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.protocol import messages as m


def test_startup_message_round_trip() -> None:
    params = {"user": "alice", "database": "acme", "application_name": "psql", "client_encoding": "'utf-8'"}
    packet = m.encode_startup_message(params)
    decoded = m.decode_startup_packet(packet)
    assert isinstance(decoded, m.StartupMessage)
    assert (decoded.major, decoded.minor) == (3, 0)
    assert decoded.parameters == params
    assert decoded.protocol_options == {}


def test_startup_message_protocol_options_split_out() -> None:
    body = struct.pack("!i", (3 << 16) | 2) + b"user\x00bob\x00_pq_.foo\x00bar\x00\x00"
    decoded = m.decode_startup_packet(struct.pack("!i", len(body) + 4) + body)
    assert isinstance(decoded, m.StartupMessage)
    assert decoded.minor == 2
    assert decoded.parameters == {"user": "bob"}
    assert decoded.protocol_options == {"_pq_.foo": "bar"}


@pytest.mark.parametrize(
    ("packet", "kind"),
    [
        (m.encode_ssl_request(), m.SSLRequest),
        (struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE), m.GSSENCRequest),
        (m.encode_cancel_request(1234, b"\x01\x02\x03\x04"), m.CancelRequest),
    ],
)
def test_special_startup_packets(packet: bytes, kind: type) -> None:
    decoded = m.decode_startup_packet(packet)
    assert isinstance(decoded, kind)
    if isinstance(decoded, m.CancelRequest):
        assert decoded.process_id == 1234
        assert decoded.secret_key == b"\x01\x02\x03\x04"


def _startup(body: bytes) -> bytes:
    return struct.pack("!ii", len(body) + 8, m.PROTOCOL_3_0) + body


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack("!i", 4) + b"\x00" * 4,  # length too small
        struct.pack("!i", 20000) + b"\x00" * 4,  # longer than PostgreSQL's limit
        struct.pack("!ii", 11, 196608) + b"a\x00\x00",  # name without value
    ],
)
def test_bad_startup_packets(packet: bytes) -> None:
    with pytest.raises(m.DecodeError):
        m.decode_startup_packet(packet)


@pytest.mark.parametrize(
    "body",
    [
        b"user\x00alice\x00database\x00acme\x00",  # no final terminator (was accepted: issue 17)
        b"",  # no terminator at all
        b"user\x00alice\x00\x00\x00",  # bytes after the terminator
        b"user\x00alice\x00\x00extra",
        b"user\x00alice",  # an unterminated value
        b"user\x00",  # a name without a value
    ],
)
def test_startup_packet_layout_refused_like_postgresql(body: bytes) -> None:
    with pytest.raises(m.DecodeError, match=r"^invalid startup packet layout: expected terminator as last byte$"):
        m.decode_startup_packet(_startup(body))


def test_startup_packet_layout_accepted_like_postgresql() -> None:
    """PostgreSQL only checks that the pairs end on the packet's last byte: a trailing unterminated name is
    ignored (its value would start past the end), so `user\0a\0x` logs in as user a, here as there."""
    decoded = m.decode_startup_packet(_startup(b"user\x00a\x00x"))
    assert isinstance(decoded, m.StartupMessage)
    assert decoded.parameters == {"user": "a"}


def test_duplicate_startup_parameter_rejected() -> None:
    body = struct.pack("!i", m.PROTOCOL_3_0) + b"user\x00a\x00user\x00b\x00\x00"
    with pytest.raises(m.DecodeError, match="duplicate"):
        m.decode_startup_packet(struct.pack("!i", len(body) + 4) + body)


def test_query_and_parse_round_trip() -> None:
    q = m.Query("SELECT 1; SELECT 'é'")
    raw = q.encode()
    assert raw[0:1] == b"Q"
    assert m.Query.decode(raw[5:]) == q
    p = m.Parse("S_1", "SELECT $1::int", struct.pack("!hi", 1, 23))
    raw = p.encode()
    assert m.Parse.decode(raw[5:]) == p


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # PostgreSQL's own words for each (pq_getmsgint / pq_getmsgend / pq_getmsgstring): issue 17
        (b"\x00SELECT 1\x00" + struct.pack("!hi", 2, 23), "insufficient data left in message"),
        (b"\x00SELECT 1\x00" + struct.pack("!h", -1), "insufficient data left in message"),  # read unsigned
        (b"\x00SELECT 1\x00\x00", "insufficient data left in message"),
        (b"\x00SELECT 1\x00", "insufficient data left in message"),
        (b"\x00SELECT 1\x00" + struct.pack("!hi", 1, 23) + b"\x00", "invalid message format"),
        (b"\x00SELECT 1", "invalid string in message"),
        (b"S_1", "invalid string in message"),
    ],
)
def test_parse_rejects_like_postgresql(body: bytes, message: str) -> None:
    with pytest.raises(m.DecodeError, match=f"^{re.escape(message)}$"):
        m.Parse.decode(body)


def test_error_fields_round_trip() -> None:
    fields = {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "denied: é", "H": "hint"}
    raw = m.encode_error_fields(b"E", fields)
    assert m.decode_error_fields(raw[5:-0 or None]) == fields


def test_sasl_initial_response() -> None:
    body = b"SCRAM-SHA-256\x00" + struct.pack("!i", 5) + b"n,,ab"
    assert m.SASLInitialResponse.decode(body) == m.SASLInitialResponse("SCRAM-SHA-256", b"n,,ab")
    with pytest.raises(m.DecodeError):
        m.SASLInitialResponse.decode(b"SCRAM-SHA-256\x00" + struct.pack("!i", 9) + b"n,,ab")


def test_negotiate_protocol_version_layout() -> None:
    raw = m.negotiate_protocol_version(m.PROTOCOL_3_0, ["_pq_.x"])
    assert raw[0:1] == b"v"
    assert struct.unpack_from("!iii", raw, 1) == (len(raw) - 1, 196608, 1)
    assert raw.endswith(b"_pq_.x\x00")


@given(st.binary(max_size=300))
def test_garbage_startup_packets_only_raise_decode_error(data: bytes) -> None:
    packet = struct.pack("!i", len(data) + 4) + data
    with contextlib.suppress(m.DecodeError):
        m.decode_startup_packet(packet)


@given(st.binary(max_size=200))
def test_garbage_bodies_only_raise_decode_error(body: bytes) -> None:
    for decoder in (m.Query.decode, m.Parse.decode, m.SASLInitialResponse.decode, m.decode_parameter_status):
        with contextlib.suppress(m.DecodeError):
            decoder(body)


def _query_text_by_the_book(body: bytes) -> str | type[Exception]:
    """One NUL-terminated UTF-8 string and nothing after it; the first problem found decides the error."""
    end = body.find(b"\x00")
    if end < 0:
        return m.DecodeError
    try:
        sql = body[:end].decode("utf-8")
    except UnicodeDecodeError:
        return m.InvalidText
    return sql if end == len(body) - 1 else m.DecodeError


@given(st.lists(st.sampled_from([b"SELECT 1", b"\x00", b"\xff", b"\xc3\xa9", b"\xc3", b" "]), max_size=6).map(b"".join))
def test_query_text_answers_every_body_as_the_protocol_says(body: bytes) -> None:
    expected = _query_text_by_the_book(body)
    if isinstance(expected, str):
        assert m.query_text(body) == expected
    else:
        with pytest.raises(expected) as info:
            m.query_text(body)
        assert type(info.value) is expected


@given(st.text(max_size=300).filter(lambda s: "\x00" not in s))
def test_query_message_is_the_framed_text(sql: str) -> None:
    """'Q', an int32 length counting itself, the UTF-8 text and its NUL (built in C in the compiled build)."""
    data = sql.encode()
    out = m.query_message(sql)
    assert out == b"Q" + struct.pack("!I", len(data) + 5) + data + b"\x00"
    assert m.query_text(out[5:]) == sql


@given(st.lists(st.sampled_from([b"\x00", b"P0_1", b"\xff", b"s\xc3\xa9", b"\x00\x01"]), max_size=6).map(b"".join))
def test_bind_statement_names_the_second_string(body: bytes) -> None:
    end = body.find(b"\x00")
    stmt_end = body.find(b"\x00", end + 1)
    expected = None if end < 0 or stmt_end <= end else body[end + 1 : stmt_end].decode("utf-8", "replace")
    assert m.bind_statement(body) == expected


def test_bind_statement_of_a_real_bind() -> None:
    body = b"portal\x00stmt_1\x00" + struct.pack("!hhh", 0, 0, 0)
    assert m.bind_statement(body) == "stmt_1"
    assert m.bind_statement(b"\x00\x00" + struct.pack("!hhh", 0, 0, 0)) == ""  # the unnamed statement


@pytest.mark.parametrize(("body", "found"), [
    (b"Sstmt_1\x00", (b"S", "stmt_1")), (b"S\x00", (b"S", "")), (b"Pportal\x00", (b"P", "portal")),
    (b"Xname\x00", (b"X", "name")),  # (a kind PostgreSQL refuses: the caller's to judge)
    # malformed, as PostgreSQL's pq_getmsgbyte/pq_getmsgstring/pq_getmsgend read them: ERROR 08P01
    (b"", None), (b"S", None), (b"Sstmt_1", None), (b"Sstmt_1\x00x", None), (b"Sstmt_1\x00\x00", None),
])
def test_target_of_a_close_or_describe(body: bytes, found: tuple[bytes, str] | None) -> None:
    assert m.target(body) == found


def test_parse_name_reads_the_name_of_an_unreadable_parse() -> None:
    assert m.parse_name(b"s1\x00\xff\x00\x00\x00") == "s1"
    assert m.parse_name(b"no terminator") == ""


@pytest.mark.parametrize(("fields", "sqlstate"), [
    ({"S": "ERROR", "V": "ERROR", "C": "42501", "M": "x"}, "42501"),
    ({"S": "ERROR", "M": "a C in the text", "C": "22021"}, "22021"),  # a 'C' inside a value is no field start
    ({"S": "ERROR", "M": "no code"}, None),
])
def test_error_sqlstate_reads_the_code_field(fields: dict[str, str], sqlstate: str | None) -> None:
    body = m.encode_error_fields(b"E", fields)[5:]
    assert m.error_sqlstate(body) == sqlstate == m.decode_error_fields(body).get("C")


@pytest.mark.parametrize(("severity", "fatal"), [("FATAL", True), ("PANIC", True), ("ERROR", False)])
def test_error_is_fatal_reads_the_unlocalized_severity(severity: str, fatal: bool) -> None:
    body = m.encode_error_fields(b"E", {"S": "FATAL", "V": severity, "C": "57P01", "M": "bye"})[5:]
    assert m.error_is_fatal(body) is fatal


def test_result_set_messages_layout() -> None:
    """RowDescription/DataRow/CommandComplete as the protocol documents them (text columns of no table)."""
    desc = m.row_description(["a", "bc"])
    assert desc[:1] == b"T" and struct.unpack_from("!I", desc, 1)[0] == len(desc) - 1
    assert desc[5:] == struct.pack("!h", 2) + b"".join(
        name + b"\x00" + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0) for name in (b"a", b"bc")
    )
    row = m.data_row([b"1", None, b""])
    assert row == b"D" + struct.pack("!Ih", 4 + 2 + 5 + 4 + 4, 3) + struct.pack("!i", 1) + b"1" + struct.pack(
        "!ii", -1, 0
    )
    assert m.command_complete("SHOW 2") == b"C" + struct.pack("!I", 11) + b"SHOW 2\x00"


def test_authentication_round_trip() -> None:
    msg = m.authentication(m.AUTH_SASL_CONTINUE, b"r=abc")
    assert msg[:1] == b"R"
    assert m.decode_authentication(msg[5:]) == (m.AUTH_SASL_CONTINUE, b"r=abc")
    with pytest.raises(m.DecodeError):
        m.decode_authentication(b"\x00\x00")


def test_sasl_initial_response_encode_round_trip() -> None:
    msg = m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=xyz").encode()
    assert msg[:1] == b"p" and struct.unpack_from("!I", msg, 1)[0] == len(msg) - 1
    assert m.SASLInitialResponse.decode(msg[5:]) == m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=xyz")
    assert m.password_message(b"secret\x00") == b"p" + struct.pack("!I", 11) + b"secret\x00"


def test_sasl_mechanisms_round_trip() -> None:
    msg = m.authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
    code, payload = m.decode_authentication(msg[5:])
    assert code == m.AUTH_SASL and m.decode_sasl_mechanisms(payload) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    for bad in (b"SCRAM-SHA-256", b"A\x00\x00B\x00\x00"):  # not terminated; an empty name
        with pytest.raises(m.DecodeError):
            m.decode_sasl_mechanisms(bad)
