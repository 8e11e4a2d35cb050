"""Fuzz targets shared by the bounded hypothesis runs (tests/unit/protocol/test_fuzz.py) and the long mode
(benchmarks/fuzz.py): the codec, the framing and the client session state machine, each with the only
exceptions it may raise, and a seeded mutator of valid wire messages."""

from __future__ import annotations

import random
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from proxy.actions import CloseClient, RelayToServer
from proxy.auth.scram import make_verifier
from proxy.auth.throttle import AuthThrottle
from proxy.config import Config, parse_config
from proxy.policy.model import Allow, Decision, Deny
from proxy.protocol import messages as m
from proxy.protocol.stream import FramingError, Message, MessageStream
from proxy.session import ClientSession, State


def _p(name: bytes, sql: bytes, types: bytes = b"\x00\x00") -> bytes:
    return m.frame(b"P", name + b"\x00" + sql + b"\x00" + types)


# Valid frontend messages (after login) to start mutations from.
SEEDS: tuple[bytes, ...] = (
    m.Query("SELECT 1").encode(),
    m.Query("SELECT * FROM orders WHERE id = 1; SELECT 'x'").encode(),
    _p(b"", b"SELECT $1::int", struct.pack("!hi", 1, 23)),
    _p(b"S_1", b"SELECT id FROM orders"),
    m.frame(b"B", b"\x00S_1\x00" + struct.pack("!hhih", 0, 1, 1, 1) + b"7" + struct.pack("!h", 0)),
    m.frame(b"D", b"SS_1\x00"),
    m.frame(b"E", b"\x00" + struct.pack("!i", 0)),
    m.frame(b"C", b"SS_1\x00"),
    m.SYNC_MESSAGE,
    m.frame(b"H", b""),
    m.frame(b"d", b"1\n"),
    m.frame(b"c", b""),
    m.frame(b"f", b"gave up\x00"),
    m.frame(b"F", struct.pack("!ih", 1299, 0) + struct.pack("!hh", 0, 0)),
    m.TERMINATE_MESSAGE,
)
STARTUP_SEEDS: tuple[bytes, ...] = (
    m.encode_startup_message({"user": "alice", "database": "acme"}),
    m.encode_ssl_request(),
    struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE),
    m.encode_cancel_request(1, b"\x00\x01\x02\x03"),
)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four random edits: flip, set, insert or delete bytes, truncate, corrupt a length word, splice."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos % len(buf)] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and buf:
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 4:
            del buf[pos:]
        elif op == 5 and len(buf) >= 5:
            at = rng.choice((0, 1)) if buf[:1] != b"\x00" else 0
            buf[at : at + 4] = struct.pack("!i", rng.choice((-1, 0, 3, 4, 5, len(buf), len(buf) + 1, 1 << 30)))
        elif op == 6:
            buf[pos:pos] = rng.choice(SEEDS)
    return bytes(buf)


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """`data` cut at random points (how TCP may deliver it)."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 4)))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# --- targets: each takes bytes and raises only what it is allowed to ----------------------------------


def codec(data: bytes) -> set[str]:
    """Every decoder, on `data` as a body: DecodeError is the only way to refuse. The refusals' messages."""
    decoders: tuple[Callable[[bytes], object], ...] = (
        m.Query.decode, m.Parse.decode, m.SASLInitialResponse.decode, m.decode_parameter_status,
        m.decode_error_fields, m.decode_backend_key_data,
    )
    refused: set[str] = set()
    for decoder in decoders:
        try:
            decoder(data)
        except m.DecodeError as exc:
            refused.add(f"{type(exc).__name__}: {exc}")
    try:
        m.decode_startup_packet(struct.pack("!i", len(data) + 4) + data)
    except m.DecodeError as exc:
        refused.add(f"{type(exc).__name__}: {exc}")
    return refused


def framing(data: bytes, pieces: list[bytes]) -> set[str]:
    """The message stream, fed `data` in `pieces`: what it returns is exactly what it was fed, up to what it
    still holds; FramingError is the only way to refuse."""
    stream = MessageStream(intercept=frozenset({m.TERMINATE, m.SYNC}), max_length=4096)
    out = bytearray()
    try:
        for piece in pieces:
            for item in stream.feed(piece):
                out += item.raw() if isinstance(item, Message) else bytes(item)
    except FramingError as exc:
        return {f"FramingError: {exc}"}
    if bytes(out) != data[: len(out)] or len(out) + stream.pending < len(data):
        raise AssertionError(f"framing lost or changed bytes: fed {len(data)}, returned {len(out)}, "
                             f"held {stream.pending}")
    return set()


_CONFIG: Config | None = None


def config() -> Config:
    """One small configuration (a SCRAM verifier costs milliseconds: built once)."""
    global _CONFIG
    if _CONFIG is None:
        tmp = Path(tempfile.mkdtemp(prefix="pgtenant-fuzz-"))
        (tmp / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw")}"\n')
        _CONFIG = parse_config(
            {"secrets_file": "s.toml", "limits": {"max_message_length": 4096}, "backends": {"main": {}},
             "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme"}},
             "users": {"alice": {"tenant": "acme"}}},
            base=tmp,
        )
    return _CONFIG


def _decide(_kind: str, sql: str) -> Decision:
    return Deny("42501", "denied", "", "fuzz") if "orders" in sql else Allow()


def new_session(ready: bool) -> ClientSession:
    session = ClientSession(config(), session_id="fuzz", client_address="fuzz", throttle=AuthThrottle(),
                            clock=lambda: 0.0, tls_available=True)
    if ready:  # as after a login (the SCRAM exchange costs milliseconds; it has its own tests)
        session.state = State.READY
        session.enable_policy(_decide)
    return session


def session(data: bytes, pieces: list[bytes], ready: bool, backend: bytes = b"") -> set[str]:
    """A client session fed `pieces` (and the backend's `backend` bytes): it never raises, closes with an
    error it sends, and once closed stays closed; every byte it relays parses as whole frontend messages.
    How it ended: each close's SQLSTATE and reason."""
    ended: set[str] = set()
    s = new_session(ready)
    relayed = bytearray()
    closed = False
    for piece in pieces:
        actions = s.client_data(piece)
        if closed and actions:
            raise AssertionError(f"a closed session acted again: {actions}")
        for a in actions:
            if isinstance(a, RelayToServer):
                relayed += b"".join(bytes(c) for c in a.chunks)
            elif isinstance(a, CloseClient):
                closed = True
                ended.add(f"close {a.error.sqlstate if a.error else '-'} {a.reason}")
        if s.state is State.CLOSED:
            closed = True
    if backend and not closed and s.state is State.READY:
        for a in s.server_data(backend):
            if isinstance(a, CloseClient):
                ended.add(f"close {a.error.sqlstate if a.error else '-'} {a.reason} (backend bytes)")
    pos = 0
    while pos + 5 <= len(relayed):  # whole messages only, except possibly a large one still streaming
        (length,) = struct.unpack_from("!I", relayed, pos + 1)
        if length < 4:
            raise AssertionError(f"relayed a message with length {length}")
        pos += 1 + length
    return ended
