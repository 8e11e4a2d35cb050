"""Differential protocol testing: the same bytes to PostgreSQL directly and through pgtenant, outcomes compared.

Each side is logged in its own way (pgtenant with a client user's SCRAM password, PostgreSQL directly as the
backend role that user's tenant logs in as, in the same database), brought to the same phase (idle, in a
transaction, in a failed transaction, in COPY FROM STDIN, extended messages pending before a Sync), then sent
the case's bytes. What comes back is reduced to an `Outcome`: the message types, each ErrorResponse's severity,
SQLSTATE (and message), how the exchange ended (ReadyForQuery and its status, closed, still waiting) and, when
it ended ready, whether a `SELECT 1` still works — the session survived.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from proxy.protocol import messages as m
from tests.support.wire import bind, execute, login, parse, recv_exact

QUIET = 2.0  # seconds without a byte after which a side counts as waiting for more input (only such cases pay it)


@dataclass(frozen=True)
class Login:
    """How one side is reached: its port and the user, database and password its client logs in with."""

    port: int
    user: str
    database: str
    password: str

    def startup(self, **extra: str) -> bytes:
        return m.encode_startup_message({"user": self.user, "database": self.database, **extra})


@dataclass(frozen=True)
class Outcome:
    """What a side answered: reply types in order ('S'/'N' bytes of a negotiation included), errors as
    (severity, SQLSTATE, message), the end ('Z<status>', 'closed', 'waiting', 'auth') and survival."""

    types: str
    errors: tuple[tuple[str, str, str], ...]
    end: str
    alive: bool | None = None

    def key(self, messages: bool) -> tuple[object, ...]:
        errs = self.errors if messages else tuple(e[:2] for e in self.errors)
        return (self.types, errs, self.end, self.alive)


@dataclass(frozen=True)
class Case:
    """One corpus entry: a phase to reach, then bytes to send (built per side from its `Login`).

    `messages`: compare error texts too (where PostgreSQL's words are the point). `differs`: pgtenant answers
    differently on purpose — the reason, and `proxy` is what pgtenant must answer instead; with `when`, only
    where PostgreSQL's own answer satisfies it (a build with GSSAPI, a cluster without TLS), else the same.
    """

    name: str
    phase: str
    send: Callable[[Login], bytes]
    messages: bool = False
    differs: str = ""
    proxy: Outcome | None = None
    when: Callable[[Outcome], bool] | None = None


# --- reading --------------------------------------------------------------------------------


def _recv_some(sock: socket.socket, timeout: float) -> bytes | None:
    """Bytes available within `timeout` (b"" when the peer closed, None when it stayed silent)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None
    except (ConnectionResetError, BrokenPipeError):
        return b""


def read_outcome(sock: socket.socket, *, negotiation: bool = False, quiet: float = QUIET) -> Outcome:
    """Read until ReadyForQuery, an authentication request, the peer closing, or `quiet` seconds of silence."""
    buf = b""
    types: list[str] = []
    errs: list[tuple[str, str, str]] = []

    def done(end: str) -> Outcome:
        return Outcome("".join(types), tuple(errs), end)

    while True:
        while buf:
            if negotiation and buf[:1] in (b"S", b"N", b"G"):  # one-byte answers until a real message
                types.append(buf[:1].decode())
                buf = buf[1:]
                if types[-1] == "S":
                    return done("tls")  # TLS accepted: nothing more comes in plaintext
                continue
            negotiation = False
            if len(buf) < 5:
                break
            (length,) = struct.unpack_from("!I", buf, 1)
            if len(buf) < 1 + length:
                break
            t, body, buf = buf[:1].decode("latin-1"), buf[5 : 1 + length], buf[1 + length :]
            if t in "NSK":  # notices, parameter statuses and key data differ between the sides by nature
                continue
            types.append(t)
            if t == "E":
                f = m.decode_error_fields(body)
                errs.append((f.get("V", f.get("S", "")), f.get("C", ""), f.get("M", "")))
            elif t == "Z":
                return done("Z" + body.decode())
            elif t == "R":
                return done("auth")
        chunk = _recv_some(sock, quiet)
        if chunk is None:
            return done("waiting")
        if not chunk:
            return done("closed")
        buf += chunk


def _expect_ready(sock: socket.socket, what: str) -> Outcome:
    got = read_outcome(sock)
    if not got.end.startswith("Z"):
        raise AssertionError(f"setting up {what}: {got}")
    return got


# --- phases -----------------------------------------------------------------------------------

PHASES = ("startup", "negotiation", "sasl", "idle", "in_transaction", "failed_transaction", "copy_in",
          "extended_pending")


def logged_in(side: Login) -> socket.socket:
    sock, msgs = login(side.port, {"user": side.user, "database": side.database}, side.password)
    if not msgs or msgs[-1][0] != b"Z":
        sock.close()
        raise AssertionError(f"login to port {side.port} as {side.user} failed: {msgs}")
    return sock


def enter_phase(side: Login, phase: str) -> socket.socket:
    """A socket to `side` in `phase`, ready for the case's bytes."""
    if phase in ("startup", "negotiation"):
        return socket.create_connection(("127.0.0.1", side.port), timeout=10)
    if phase == "sasl":
        sock = socket.create_connection(("127.0.0.1", side.port), timeout=10)
        sock.sendall(side.startup())
        got = read_outcome(sock)
        if got.end != "auth":
            raise AssertionError(f"no authentication request: {got}")
        return sock
    sock = logged_in(side)
    setup = {
        "idle": [],
        "in_transaction": ["BEGIN"],
        "failed_transaction": ["BEGIN", "SELECT 1/0"],
        "copy_in": ["CREATE TEMP TABLE difftest_copy (a int)"],
    }.get(phase, [])
    for sql in setup:
        sock.sendall(m.Query(sql).encode())
        _expect_ready(sock, phase)
    if phase == "copy_in":
        sock.sendall(m.Query("COPY difftest_copy FROM STDIN").encode())
        sock.settimeout(10)
        head = sock.recv(1)
        (length,) = struct.unpack("!I", recv_exact(sock, 4))
        recv_exact(sock, length - 4)
        if head != b"G":
            raise AssertionError(f"no CopyInResponse: {head!r}")
    elif phase == "extended_pending":  # a statement parsed, bound and executed, no Sync yet
        sock.sendall(parse("SELECT 1") + bind() + execute())
    return sock


def run_case(side: Login, case: Case) -> Outcome:
    """Bring `side` to the case's phase, send its bytes, read the outcome and probe survival."""
    sock = enter_phase(side, case.phase)
    try:
        sock.sendall(case.send(side))
        got = read_outcome(sock, negotiation=case.phase == "negotiation")
        if not got.end.startswith("Z"):
            return got
        try:
            sock.sendall(m.Query("SELECT 1").encode())
            probe = read_outcome(sock)
        except OSError:
            return Outcome(got.types, got.errors, got.end, False)
        return Outcome(got.types, got.errors, got.end, probe.end.startswith("Z") and not probe.errors)
    finally:
        sock.close()


# --- message builders -------------------------------------------------------------------------


def startup_body(body: bytes, code: int = m.PROTOCOL_3_0) -> bytes:
    """A startup packet around a raw body (length word and protocol code added)."""
    return struct.pack("!ii", len(body) + 8, code) + body


GSSENC = struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE)
