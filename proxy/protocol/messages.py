"""One small type per wire message the proxy acts on, with decoders and encoders; the rest stays raw bytes."""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy._accel import speedups

PROTOCOL_3_0 = 196608
PROTOCOL_3_2 = 196610  # PostgreSQL 18: a longer cancel key (BackendKeyData and CancelRequest of up to 256 bytes)
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
MAX_STARTUP_PACKET = 10_000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_FIELD = struct.Struct("!ihihih")  # a RowDescription field after its name: table, column, type, size, modifier, format
_U32 = struct.Struct("!I")
_HDR = struct.Struct("!cI")

# Message type bytes (PostgreSQL's names).
QUERY = ord("Q")
PARSE = ord("P")
BIND = ord("B")
EXECUTE = ord("E")
DESCRIBE = ord("D")
CLOSE = ord("C")
SYNC = ord("S")
FLUSH = ord("H")
TERMINATE = ord("X")
FUNCTION_CALL = ord("F")
COPY_DATA = ord("d")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")
PASSWORD = ord("p")

AUTHENTICATION = ord("R")
PARAMETER_STATUS = ord("S")
BACKEND_KEY_DATA = ord("K")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
NEGOTIATE_PROTOCOL_VERSION = ord("v")
COMMAND_COMPLETE = ord("C")
COPY_IN_RESPONSE = ord("G")
ROW_DESCRIPTION = ord("T")
DATA_ROW = ord("D")
NOTIFICATION_RESPONSE = ord("A")
EMPTY_QUERY_RESPONSE = ord("I")
PORTAL_SUSPENDED = ord("s")

TEXT_OID = 25  # pg_type's text

FRONTEND_TYPES = frozenset(b"QPBEDCSHXFdcfp")
# What PostgreSQL reads from a logged-in client (PostgresMain; CopyData/CopyDone/CopyFail outside COPY are ignored): any
# other type byte ends its session at once ("invalid frontend message type N", 08P01).
SESSION_TYPES = FRONTEND_TYPES - {PASSWORD}

# The one-byte answers to an SSLRequest or GSSENCRequest (or an ErrorResponse's type byte from a server too old).
SSL_ACCEPTED = b"S"
SSL_REFUSED = b"N"
SSL_ERROR = b"E"


class DecodeError(ValueError):
    """A message body that does not follow the protocol."""


class InvalidText(DecodeError):
    """A well-framed string that is not valid UTF-8 (PostgreSQL answers 22021 and keeps the session)."""


# --- startup-phase packets (no type byte) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class StartupMessage:
    major: int
    minor: int
    parameters: dict[str, str] = field(default_factory=dict)
    protocol_options: dict[str, str] = field(default_factory=dict)  # _pq_.* options


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def startup_packet_length(header: bytes) -> int:
    """Length of a startup packet from its first four bytes, validated."""
    (length,) = _I32.unpack_from(header, 0)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise DecodeError(f"invalid length of startup packet: {length}")
    return length


def decode_startup_packet(packet: bytes) -> StartupPacket:
    """Decode a whole startup-phase packet (length word included)."""
    length = startup_packet_length(packet)
    if len(packet) != length:
        raise DecodeError("incomplete startup packet")
    (code,) = _I32.unpack_from(packet, 4)
    if code == SSL_REQUEST_CODE and length == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and length == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if length < 16 or length > 8 + 4 + 256:
            raise DecodeError("invalid length of cancel request")
        (pid,) = _I32.unpack_from(packet, 8)
        return CancelRequest(pid, bytes(packet[12:length]))
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        return StartupMessage(major, minor)
    params: dict[str, str] = {}
    options: dict[str, str] = {}
    for raw_name, raw_value in _startup_pairs(bytes(packet[8:length])):
        try:
            # (interned: every session of a client type sends the same few names and values, one copy of each)
            name = sys.intern(raw_name.decode("utf-8"))
            value = sys.intern(raw_value.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DecodeError("startup packet is not valid UTF-8") from exc
        if name in params or name in options:
            raise DecodeError(f'duplicate startup parameter "{name}"')
        if name.startswith("_pq_."):
            options[name] = value
        else:
            params[name] = value
    return StartupMessage(major, minor, params, options)


def _startup_pairs(body: bytes) -> list[tuple[bytes, bytes]]:
    """The name/value pairs of a startup packet's body, read the way PostgreSQL's ProcessStartupPacket reads
    them: pairs up to an empty name, which must be the body's last byte."""
    pairs: list[tuple[bytes, bytes]] = []
    n = len(body)
    pos = 0
    while pos < n and body[pos] != 0:
        name_end = body.find(b"\x00", pos)
        if name_end < 0:
            name_end = n
        if name_end + 1 >= n:
            break  # a name without a value: the layout check below refuses it
        value_end = body.find(b"\x00", name_end + 1)
        if value_end < 0:
            value_end = n
        pairs.append((body[pos:name_end], body[name_end + 1 : value_end]))
        pos = value_end + 1
    if pos != n - 1:
        raise DecodeError("invalid startup packet layout: expected terminator as last byte")
    return pairs


def encode_startup_message(parameters: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3_0)
    body += b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in parameters.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def encode_ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


def encode_cancel_request(process_id: int, secret_key: bytes) -> bytes:
    body = _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(process_id) + secret_key
    return _I32.pack(len(body) + 4) + body


# --- regular messages ----------------------------------------------------------------------


def split_messages(buf: bytes) -> tuple[list[tuple[int, bytes, int]], int]:
    """The complete messages at the start of `buf` as (type, body, offset after it), and the bytes they take."""
    out: list[tuple[int, bytes, int]] = []
    pos, n = 0, len(buf)
    while n - pos >= 5:
        (length,) = struct.unpack_from("!I", buf, pos + 1)
        if length < 4:
            raise DecodeError(f"invalid message length {length}")
        end = pos + 1 + length
        if end > n:
            break
        out.append((buf[pos], buf[pos + 5 : end], end))
        pos = end
    return out, pos


def frame(type_byte: bytes, body: bytes) -> bytes:
    return _HDR.pack(type_byte, len(body) + 4) + body


def bind_renamed(body: bytes, statement: str) -> bytes:
    """The Bind message of `body` (a well-formed Bind's body) naming prepared statement `statement` instead."""
    portal_end = body.index(b"\x00")
    stmt_end = body.index(b"\x00", portal_end + 1)
    return frame(b"B", body[: portal_end + 1] + statement.encode() + body[stmt_end:])


def bind_for(body: bytes, portal: str, statement: str) -> bytes:
    """The Bind of `body` (a well-formed Bind's body: the client's parameters and their formats) binding portal
    `portal` to statement `statement`, with every result column in text format."""
    portal_end = body.index(b"\x00")
    pos = body.index(b"\x00", portal_end + 1) + 1
    (formats,) = struct.unpack_from("!H", body, pos)
    pos += 2 + 2 * formats
    (params,) = struct.unpack_from("!H", body, pos)
    pos += 2
    for _ in range(params):
        (length,) = struct.unpack_from("!i", body, pos)
        pos += 4 + max(length, 0)
    if pos > len(body) - 2:  # (the result formats' count follows)
        raise DecodeError("insufficient data left in message")
    start = body.index(b"\x00", portal_end + 1) + 1
    return frame(b"B", portal.encode() + b"\x00" + statement.encode() + b"\x00" + body[start:pos] + b"\x00\x00")


def execute_message(portal: str, max_rows: int = 0) -> bytes:
    return frame(b"E", portal.encode() + b"\x00" + struct.pack("!i", max_rows))


def close_message(kind: bytes, name: str) -> bytes:
    """Close of a prepared statement (kind b"S") or a portal (b"P")."""
    return frame(b"C", kind + name.encode() + b"\x00")


def _cstring(body: bytes, pos: int) -> tuple[str, int]:
    end = body.find(b"\x00", pos)
    if end < 0:
        raise DecodeError("invalid string in message")  # PostgreSQL's pq_getmsgstring
    try:
        return body[pos:end].decode("utf-8"), end + 1
    except UnicodeDecodeError as exc:
        raise InvalidText("invalid UTF-8 in string") from exc


def query_text(body: bytes) -> str:
    """The SQL of a Query body, without building a `Query` (the relay's hot path)."""
    n = len(body)
    if n and body[n - 1] == 0:  # the usual case: one string, decoded in place
        try:
            sql = body[: n - 1].decode("utf-8")
        except UnicodeDecodeError:
            pass  # the exact error comes from the general path below
        else:
            if "\x00" not in sql:
                return sql
    sql, pos = _cstring(body, 0)
    if pos != len(body):
        raise DecodeError("invalid message format")  # PostgreSQL's pq_getmsgend
    return sql


@dataclass(frozen=True, slots=True)
class Query:
    sql: str

    @classmethod
    def decode(cls, body: bytes) -> Query:
        return cls(query_text(body))

    def encode(self) -> bytes:
        return query_message(self.sql)


def query_message(sql: str) -> bytes:
    """A Query message's bytes (without building a `Query`)."""
    return frame(b"Q", sql.encode() + b"\x00")


NO_PARAMETER_TYPES = b"\x00\x00"  # a Parse's parameter types when it declares none


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_types: bytes  # raw: int16 count + int32 oids, passed through untouched

    @classmethod
    def decode(cls, body: bytes) -> Parse:
        name, pos = _cstring(body, 0)
        sql, pos = _cstring(body, pos)
        rest = body[pos:]
        # Read as PostgreSQL reads it: the count is unsigned (-1 is 65535 types), each missing byte is
        # "insufficient data left in message", anything after the types "invalid message format".
        if len(rest) < 2:
            raise DecodeError("insufficient data left in message")
        count = rest[0] << 8 | rest[1]
        if len(rest) < 2 + 4 * count:
            raise DecodeError("insufficient data left in message")
        if len(rest) != 2 + 4 * count:
            raise DecodeError("invalid message format")
        # (a statement's name and an empty type list are held once, however many sessions hold them)
        return cls(sys.intern(name) if name else name, sql, NO_PARAMETER_TYPES if not count else rest)

    def encode(self) -> bytes:
        return frame(b"P", self.name.encode() + b"\x00" + self.sql.encode() + b"\x00" + self.param_types)


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    mechanism: str
    data: bytes

    @classmethod
    def decode(cls, body: bytes) -> SASLInitialResponse:
        mechanism, pos = _cstring(body, 0)
        if len(body) < pos + 4:
            raise DecodeError("SASLInitialResponse too short")
        (n,) = _I32.unpack_from(body, pos)
        data = body[pos + 4 :]
        if n == -1:
            data = b""
        elif n != len(data):
            raise DecodeError("SASLInitialResponse length mismatch")
        return cls(mechanism, bytes(data))

    def encode(self) -> bytes:
        return password_message(self.mechanism.encode() + b"\x00" + _I32.pack(len(self.data)) + self.data)


def password_message(payload: bytes) -> bytes:
    """A 'p' message: PasswordMessage, SASLInitialResponse and SASLResponse share the type byte."""
    return frame(b"p", payload)


# AuthenticationRequest codes ('R' message, first int32 of the body).
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SCM_CREDENTIAL = 6
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def authentication(code: int, payload: bytes = b"") -> bytes:
    return frame(b"R", _I32.pack(code) + payload)


def decode_sasl_mechanisms(payload: bytes) -> list[str]:
    """The mechanism names of an AuthenticationSASL request (its payload after the code)."""
    if not payload.endswith(b"\x00"):
        raise DecodeError("mechanism list not terminated")
    names = payload[:-1].split(b"\x00")
    if names and names[-1] == b"":
        names.pop()
    if b"" in names:
        raise DecodeError("empty mechanism name")
    return [name.decode("ascii", "replace") for name in names]


def decode_authentication(body: bytes) -> tuple[int, bytes]:
    """(code, payload) of an AuthenticationRequest body."""
    if len(body) < 4:
        raise DecodeError("authentication request shorter than 4 bytes")
    (code,) = _I32.unpack_from(body, 0)
    return code, bytes(body[4:])


def authentication_sasl(mechanisms: list[str]) -> bytes:
    return authentication(AUTH_SASL, b"".join(m.encode() + b"\x00" for m in mechanisms) + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", name.encode() + b"\x00" + value.encode() + b"\x00")


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = _cstring(body, 0)
    value, _ = _cstring(body, pos)
    return name, value


def backend_key_data(process_id: int, secret_key: bytes) -> bytes:
    return frame(b"K", _I32.pack(process_id) + secret_key)


def decode_backend_key_data(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8:
        raise DecodeError("BackendKeyData too short")
    (pid,) = _I32.unpack_from(body, 0)
    return pid, bytes(body[4:])


def ready_for_query(status: bytes) -> bytes:
    return frame(b"Z", status)


def negotiate_protocol_version(version: int, unrecognized: list[str]) -> bytes:
    """NegotiateProtocolVersion; `version` is the full code (3.0 = 196608), as PostgreSQL and libpq use it."""
    body = _I32.pack(version) + _I32.pack(len(unrecognized))
    body += b"".join(o.encode() + b"\x00" for o in unrecognized)
    return frame(b"v", body)


def encode_error_fields(type_byte: bytes, fields: dict[str, str]) -> bytes:
    body = b"".join(k.encode() + v.encode("utf-8", "replace") + b"\x00" for k, v in fields.items()) + b"\x00"
    return frame(type_byte, body)


def decode_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body, keyed by their one-letter codes."""
    out: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n and body[pos] != 0:
        code = chr(body[pos])
        end = body.find(b"\x00", pos + 1)
        if end < 0:
            raise DecodeError("unterminated error field")
        out[code] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return out


def error_sqlstate(body: bytes) -> str | None:
    """The SQLSTATE (the 'C' field) of an ErrorResponse/NoticeResponse body, without decoding the rest."""
    pos = body.find(b"C")
    while pos >= 0:  # a 'C' at a field start
        if pos == 0 or body[pos - 1] == 0:
            return body[pos + 1 : pos + 6].decode("ascii", "replace")
        pos = body.find(b"C", pos + 1)
    return None


def error_is_fatal(body: bytes) -> bool:
    """True when an ErrorResponse body's (non-localized) severity is FATAL or PANIC: the backend ends the session."""
    return b"\x00VFATAL\x00" in body or b"\x00VPANIC\x00" in body


def bind_statement(body: bytes) -> str | None:
    """The prepared statement a Bind body names (None when the body is malformed: the backend says so)."""
    n = len(body)
    end = 0
    while end < n and body[end] != 0:  # the portal name
        end += 1
    stmt_end = end + 1
    while stmt_end < n and body[stmt_end] != 0:
        stmt_end += 1
    if stmt_end >= n:
        return None
    if stmt_end == end + 1:
        return ""  # the unnamed statement
    return body[end + 1 : stmt_end].decode("utf-8", "replace")


def target(body: bytes) -> tuple[bytes, str] | None:
    """The kind (b"S" a statement, b"P" a portal, else PostgreSQL refuses it) and name of a Close or Describe body,
    read as PostgreSQL reads them: a byte, a string, nothing after it. None when the body is malformed (PostgreSQL
    answers ERROR 08P01, "invalid string in message" or "invalid message format", and acts on nothing)."""
    end = body.find(b"\x00", 1)
    if end < 0 or end != len(body) - 1:
        return None
    return body[:1], body[1:end].decode("utf-8", "replace")


def parse_name(body: bytes) -> str:
    """The statement name of a Parse body, leniently (for a Parse whose text cannot be decoded)."""
    return body[: max(body.find(b"\x00"), 0)].decode("utf-8", "replace")


def row_description(columns: Sequence[str], type_oid: int = TEXT_OID) -> bytes:
    """RowDescription of columns of one type, in text format, of no table."""
    field_tail = _FIELD.pack(0, 0, type_oid, -1, -1, 0)
    return frame(b"T", _I16.pack(len(columns)) + b"".join(c.encode() + b"\x00" + field_tail for c in columns))


def decode_data_row(body: bytes) -> list[bytes | None]:
    """The column values of a DataRow body (None is NULL)."""
    (count,) = _I16.unpack_from(body, 0)
    pos, out = 2, []
    for _ in range(count):
        (length,) = _I32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            out.append(None)
        else:
            out.append(body[pos : pos + length])
            pos += length
    return out


def data_row(values: Sequence[bytes | None]) -> bytes:
    """DataRow of values already in their wire form (None is NULL)."""
    body = bytearray(_I16.pack(len(values)))
    for value in values:
        if value is None:
            body += _I32.pack(-1)
        else:
            body += _I32.pack(len(value)) + value
    return frame(b"D", bytes(body))


def command_complete(tag: str) -> bytes:
    return frame(b"C", tag.encode() + b"\x00")


TERMINATE_MESSAGE = frame(b"X", b"")
SYNC_MESSAGE = frame(b"S", b"")


if speedups is not None:  # the compiled build of these names (proxy/_speedups.pyx, proxy/_accel.py)
    query_text = speedups.query_text
    query_message = speedups.query_message
