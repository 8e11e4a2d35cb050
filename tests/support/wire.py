"""A minimal raw-socket PostgreSQL client for tests that must see exact startup/auth error fields."""

from __future__ import annotations

import socket
import ssl
import struct

from scramp import ScramClient

from proxy.protocol import messages as m


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
