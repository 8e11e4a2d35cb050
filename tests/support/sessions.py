"""Driving a ClientSession in unit tests: a one-tenant config, a SCRAM login, and the bytes its actions carry."""

from __future__ import annotations

import struct
from pathlib import Path

from scramp import ScramClient

from proxy.actions import AcquireServer, RelayToServer, SendClient
from proxy.auth.scram import make_verifier
from proxy.auth.throttle import AuthThrottle
from proxy.config import Config, parse_config
from proxy.policy import TenantPolicy
from proxy.policy.cache import DecisionCache
from proxy.protocol import messages as m
from proxy.server import ServerConnection
from proxy.session import ClientSession, State


def make_config(tmp_path: Path, pool: dict[str, object] | None = None, **limits: object) -> Config:
    """Tenant acme (shared strategy) on backend main, user alice with password "pw"; `limits` as [limits], `pool`
    as [pool], in session pooling unless `pool` says otherwise (these conversations hold one server throughout;
    transaction pooling's are in test_session_pooling.py), without sticky servers unless `pool` asks for them (the
    scripted conversations give the server back at each ReadyForQuery 'I'; test_session_sticky.py keeps it)."""
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw")}"\n')
    return parse_config(
        {
            "secrets_file": "s.toml",
            "pool": {"pool_mode": "session", "sticky_servers": False, **(pool or {})},
            "limits": dict(limits),
            "backends": {"main": {}},
            "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme"}},
            "users": {"alice": {"tenant": "acme"}},
        },
        base=tmp_path,
    )


def sent(actions: list) -> bytes:
    """The bytes the session sends its client in `actions`."""
    return b"".join(bytes(a.data) for a in actions if isinstance(a, SendClient))


def login(session: ClientSession, password: str = "pw", **params: str) -> list:
    """Alice's startup and SCRAM exchange (no TLS); the actions answering her final message."""
    return session.client_data(proof(session, password, **params))


def proof(session: ClientSession, password: str = "pw", user: str = "alice", **params: str) -> bytes:
    """`user`'s startup and SCRAM exchange up to her final message (no TLS): that message, not sent yet."""
    actions = session.client_data(m.encode_startup_message({"user": user, **params}))
    out = sent(actions)
    assert out[:1] == b"R" and struct.unpack_from("!i", out, 5)[0] == m.AUTH_SASL
    assert b"SCRAM-SHA-256\x00" in out and b"PLUS" not in out  # no TLS, no channel binding offered
    client = ScramClient(["SCRAM-SHA-256"], user, password)
    first = client.get_client_first().encode()
    actions = session.client_data(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
    out = sent(actions)
    client.set_server_first(out[9:].decode())
    return m.frame(b"p", client.get_client_final().encode())


def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, body) of each message in `data`."""
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("!I", data, pos + 1)
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def server_for(session: ClientSession, status: dict[str, str] | None = None) -> ServerConnection:
    """A server connection of the session's backend, as the pool lends it (READY), reporting `status`."""
    assert session.backend is not None and session.request is not None
    server = ServerConnection(session.backend, session.request.key.database, dict(session.request.parameters))
    server.status.update(status or {})
    return server


def attach(session: ClientSession, status: dict[str, str] | None = None) -> list:
    """The pool lends the session a fresh server reporting `status`: the session's answer."""
    return session.server_attached(server_for(session, status))


def refused_parses(client_frames: list[tuple[bytes, bytes]]) -> list[bool]:
    """Per frame, with nothing answered yet: a Parse a session pooling session answers 42P05 itself (red team 6 F8;
    proxy/stmtnames.py): of a name parsed before, unless a Close of it came after in the same batch."""
    parsed: set[str] = set()
    closed: set[str] = set()  # ... in the batch so far
    out = []
    for type_, body in client_frames:
        refused = False
        if type_ == b"P":
            name = m.parse_name(body)
            refused = bool(name) and name in parsed and name not in closed
            if name and not refused:
                parsed.add(name)
                closed.discard(name)
        elif type_ == b"C" and body[:1] == b"S":
            closed.add(body[1:].rstrip(b"\x00").decode())
        elif type_ == b"S":
            closed.clear()
        out.append(refused)
    return out


def policy_session(tmp_path: Path, mode: str, policy: TenantPolicy, **pool: object) -> ClientSession:
    """A logged-in session in pool mode `mode` (more [pool] keys: `pool`), `policy` decided through a DecisionCache,
    a server attached."""
    s = ClientSession(make_config(tmp_path, pool={"pool_mode": mode, **pool}), session_id="s1",
                      client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2), clock=lambda: 0.0,
                      tls_available=False)
    login(s)
    cache = DecisionCache()
    s.enable_policy(lambda _kind, sql: cache.get_or_decide(policy, sql))
    s.server_attached(server_for(s, {"application_name": ""}))
    return s


def relayed(s: ClientSession, data: bytes) -> list[tuple[bytes, bytes]]:
    """The client sends `data`: the frames that reach the server (a server is lent when the session asks)."""
    out = list(s.client_data(data))
    if s.state is State.WAITING:
        assert isinstance(out[-1], AcquireServer)
        out += s.server_attached(server_for(s))
    return frames(b"".join(bytes(c) for a in out if isinstance(a, RelayToServer) for c in a.chunks))
