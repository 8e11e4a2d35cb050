"""A minimal raw-socket PostgreSQL client for tests that must see exact startup/auth error fields, or send and read
protocol messages byte for byte (the message builders and readers the raw-protocol tests share)."""

from __future__ import annotations

import socket
import ssl
import struct
from typing import TYPE_CHECKING

from scramp import ScramClient

from proxy.protocol import messages as m

if TYPE_CHECKING:
    from tests.support.proxyproc import ProxyProcess


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = recv_exact(sock, 5)
    (length,) = struct.unpack("!I", head[1:])
    return head[:1], recv_exact(sock, length - 4)


def login(
    port: int, params: dict[str, str], password: str, timeout: float = 10, tls_ca: str | None = None
) -> tuple[socket.socket, list]:
    """SCRAM login (over TLS when `tls_ca` is given); returns the socket and the messages up to
    ReadyForQuery or an error. Each message is (type, body); an ErrorResponse is ('E', fields).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls_ca is not None:
        sock.sendall(m.encode_ssl_request())
        assert recv_exact(sock, 1) == b"S"
        ctx = ssl.create_default_context(cafile=tls_ca)
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(m.encode_startup_message(params))
    client: ScramClient | None = None
    out: list = []
    while True:
        try:
            t, body = read_message(sock)
        except ConnectionError:
            return sock, out
        if t == b"E":
            out.append(("E", m.decode_error_fields(body)))
            return sock, out
        if t == b"R":
            (code,) = struct.unpack_from("!i", body)
            if code == m.AUTH_SASL:
                mechs = [x.decode() for x in body[4:].split(b"\x00") if x]
                client = ScramClient(["SCRAM-SHA-256"], params["user"], password)
                assert "SCRAM-SHA-256" in mechs
                first = client.get_client_first().encode()
                payload = b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first
                sock.sendall(m.frame(b"p", payload))
            elif code == m.AUTH_SASL_CONTINUE:
                assert client is not None
                client.set_server_first(body[4:].decode())
                sock.sendall(m.frame(b"p", client.get_client_final().encode()))
            elif code == m.AUTH_SASL_FINAL:
                assert client is not None
                client.set_server_final(body[4:].decode())
            out.append((t, body))
            continue
        out.append((t, body))
        if t == b"Z":
            return sock, out


def login_error(port: int, params: dict[str, str], password: str) -> dict[str, str]:
    """The ErrorResponse fields a login attempt ends with (AssertionError if it succeeds)."""
    sock, msgs = login(port, params, password)
    sock.close()
    errs = [fields for t, fields in msgs if t == "E"]
    assert errs, f"login unexpectedly succeeded: {[t for t, _ in msgs]}"
    return errs[0]


def backend_key(messages: list) -> tuple[int, bytes]:
    """(process id, secret) from the BackendKeyData among login messages."""
    for t, body in messages:
        if t == b"K":
            return m.decode_backend_key_data(body)
    raise AssertionError("no BackendKeyData")


def send_cancel(port: int, process_id: int, secret: bytes) -> None:
    """A plaintext CancelRequest on a new socket, as libpq < 17, pgJDBC and psqlODBC send it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(m.encode_cancel_request(process_id, secret))
        s.settimeout(10)
        assert s.recv(1) == b""  # the proxy closes without answering, like PostgreSQL


def connect(p: ProxyProcess, user: str, timeout: float = 10) -> socket.socket:
    """A socket logged in to proxy `p` as `user` (its database and password), ready for a query."""
    sock, msgs = login(p.port, {"user": user, "database": p.users[user][0]}, p.password(user), timeout=timeout)
    assert msgs and msgs[-1][0] == b"Z", msgs
    return sock


# --- message builders (unnamed statement and portal unless named; no parameters, text results) ---------------------


def parse(sql: str, name: str = "", types: bytes = b"\x00\x00") -> bytes:
    return m.frame(b"P", name.encode() + b"\x00" + sql.encode() + b"\x00" + types)


def bind(statement: str = "", portal: str = "") -> bytes:
    return m.frame(b"B", portal.encode() + b"\x00" + statement.encode() + b"\x00" + struct.pack("!hhh", 0, 0, 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return m.execute_message(portal, max_rows)


SYNC = m.SYNC_MESSAGE


# --- readers ----------------------------------------------------------------------------------


def read_until(sock: socket.socket, stop: bytes = b"Z", count: int = 1, *, closed: bool = False) -> list[
        tuple[bytes, bytes]]:
    """Messages up to and including the `count`-th one whose type is one of `stop`'s bytes; with `closed`, the
    connection's end ends the read too (else it raises ConnectionError)."""
    out: list[tuple[bytes, bytes]] = []
    seen = 0
    while seen < count:
        try:
            t, body = read_message(sock)
        except ConnectionError:
            if closed:
                return out
            raise
        out.append((t, body))
        if t in stop:
            seen += 1
    return out


def exchange(sock: socket.socket, data: bytes, requests: int = 1) -> list[tuple[bytes, bytes]]:
    """Send `data`; every message up to the `requests`-th ReadyForQuery, raw."""
    sock.sendall(data)
    return read_until(sock, b"Z", requests)


def errors_in(msgs: list[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    """The fields of each ErrorResponse among `msgs`."""
    return [m.decode_error_fields(body) for t, body in msgs if t == b"E"]


def answers(sock: socket.socket, data: bytes) -> list[tuple[str, object]]:
    """Send `data` (ending in one Sync or one Query) and read to its ReadyForQuery: (type, error code | row text)."""
    sock.sendall(data)
    out: list[tuple[str, object]] = []
    while True:
        t, body = read_message(sock)
        if t == b"E":
            out.append(("E", m.decode_error_fields(body).get("C")))
        elif t == b"D":
            out.append(("D", body[6:].decode("utf-8", "replace")))
        elif t == b"Z":
            return out
        else:
            out.append((t.decode(), None))


def answer_codes(answered: list[tuple[str, object]]) -> list[object]:
    """The SQLSTATEs of the errors among `answers`' answers."""
    return [code for t, code in answered if t == "E"]


def answer_rows(answered: list[tuple[str, object]]) -> list[object]:
    """The text of the rows among `answers`' answers."""
    return [row for t, row in answered if t == "D"]


def read_to_close(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """Every message up to the connection's end (a session the proxy ends)."""
    return read_until(sock, b"", closed=True)
