"""The login (proxy/login.py) and its hand-over to the session: who is handed over, when, and what a refused or
interrupted login leaves behind. The startup and SCRAM conversations themselves are in test_session.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.actions import AdminLogin, AdminQuery, CloseClient, ConnectBackend, SendClient
from proxy.auth.scram import make_verifier
from proxy.auth.throttle import AuthThrottle
from proxy.config import Config, parse_config
from proxy.limits import ConnectionCounts
from proxy.login import ClientLogin, LoginState, SessionInfo
from proxy.protocol import messages as m
from proxy.reasons import CloseReason
from proxy.session import ClientSession, State
from tests.support.sessions import make_config, proof


def config(tmp_path: Path, users: dict[str, dict[str, str]], admin: tuple[str, ...] = (), **tenant: object) -> Config:
    """Tenant acme (shared strategy, `tenant` keys) and `users`, plus the admin console's `admin` users; every
    user's password is "pw"."""
    secrets = tmp_path / f"s{len(list(tmp_path.glob('s*.toml')))}.toml"
    secrets.write_text("[users]\n" + "".join(f'{u} = "{make_verifier("pw")}"\n' for u in (*users, *admin)))
    return parse_config(
        {"secrets_file": secrets.name, "backends": {"main": {}}, "admin": {"users": list(admin)}, "users": users,
         "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme", **tenant}}},
        base=tmp_path,
    )


def new_session(config: Config, **kwargs: object) -> ClientSession:
    return ClientSession(config, session_id="s", client_address="10.0.0.1", throttle=AuthThrottle(),
                         clock=lambda: 0.0, tls_available=False, **kwargs)  # type: ignore[arg-type]


def test_a_tenant_user_is_handed_over_as_data_and_the_login_dropped(tmp_path: Path) -> None:
    s = new_session(make_config(tmp_path))
    assert s.row().state == "startup" and s.state is State.LOGIN
    login = s.login
    assert login is not None
    actions = s.client_data(proof(s, application_name="tableau", **{"pgtenant.end_user": "ann@acme"}))
    assert login.state is LoginState.AUTHENTICATED and s.login is None and s.state is State.CONNECTING
    handed = login.logged_in
    assert handed is not None and handed.tenant.name == "acme" and handed.end_user == "ann@acme"
    assert handed.parameters.get("application_name") == "tableau" and handed.agent is None
    # The login answered the proof; the session asked for the first server with what it was handed.
    assert [type(a) for a in actions] == [SendClient, ConnectBackend]
    connect = actions[-1]
    assert isinstance(connect, ConnectBackend)
    assert (connect.tenant, connect.end_user, connect.login.user) == ("acme", "ann@acme", "alice")
    assert s.row() == dataclasses.replace(s.row(), state="connecting", tenant="acme", admin=False)


def test_a_message_pipelined_after_the_proof_refuses_the_login_and_hands_nobody_over(tmp_path: Path) -> None:
    """PostgreSQL's client waits for AuthenticationOk: a message behind the proof in the same read is refused, the
    session closes without asking for a server or taking a connection of the user's limit."""
    counts = ConnectionCounts()
    cfg = config(tmp_path, {"alice": {"tenant": "acme"}}, max_client_connections=1)
    s = new_session(cfg, connections=counts)
    [close] = s.client_data(proof(s) + m.Query("SELECT 1").encode())
    assert isinstance(close, CloseClient) and close.reason is CloseReason.AUTH_EXTRA
    assert s.state is State.CLOSED and s.row().state == "closed"
    other = new_session(cfg, connections=counts)
    assert isinstance(other.client_data(proof(other))[-1], ConnectBackend)  # the one connection is still free


def test_a_login_refused_after_the_proof_closes_the_session(tmp_path: Path) -> None:
    s = new_session(make_config(tmp_path))
    [close] = s.client_data(proof(s, database="other"))
    assert isinstance(close, CloseClient) and close.reason is CloseReason.DATABASE_NOT_ALLOWED
    assert close.error.sqlstate == "3D000" and s.state is State.CLOSED


@pytest.mark.parametrize("params", [{"application_name": "pgtenant-mcp"},
                                    {"options": "-c application_name=pgtenant-mcp"}], ids=["parameter", "options"])
def test_the_mcp_door_logs_in_only_as_an_agent(tmp_path: Path, params: dict[str, str]) -> None:
    """`pgtenant mcp` (its application_name) with a login of the default profile is refused after its proof, naming
    the profile it needs: without it the agent's queries would run without the profile's guards. An agent-profile
    login of the door, and the default profile under any other name, log in."""
    cfg = config(tmp_path, {"alice": {"tenant": "acme"}, "bot": {"tenant": "acme", "profile": "agent"}})
    s = new_session(cfg)
    [close] = s.client_data(proof(s, **params))
    assert isinstance(close, CloseClient) and close.reason is CloseReason.STARTUP_PARAMETER
    assert close.error is not None and (close.error.sqlstate, close.error.severity) == ("42501", "FATAL")
    assert 'user "alice" has the default profile' in close.error.message
    assert 'profile = "agent"' in (close.error.hint or "") and s.state is State.CLOSED
    agent = new_session(cfg)
    assert isinstance(agent.client_data(proof(agent, user="bot", **params))[-1], ConnectBackend)
    other = new_session(cfg)
    assert isinstance(other.client_data(proof(other, application_name="pgtenant-mcp-notes"))[-1], ConnectBackend)


def test_a_reload_during_the_login_reaches_it(tmp_path: Path) -> None:
    """The session's reconfigure event is its login's too: a user removed before its proof is refused."""
    s = new_session(make_config(tmp_path))
    final = proof(s)
    s.reconfigure(config(tmp_path, {}))
    [close] = s.client_data(final)
    assert isinstance(close, CloseClient) and close.reason is CloseReason.USER_REMOVED


def test_the_admin_console_reads_through_its_login(tmp_path: Path) -> None:
    s = new_session(config(tmp_path, {"alice": {"tenant": "acme"}}, admin=("ops",)))
    assert s.row().admin is False
    actions = s.client_data(proof(s, user="ops", database="pgtenant"))
    assert isinstance(actions[-1], AdminLogin) and s.state is State.ADMIN and s.login is not None
    assert s.row().admin and s.row().state == "admin"
    assert s.client_data(m.Query("SHOW CLIENTS").encode()) == [AdminQuery("SHOW CLIENTS")]
    [close] = s.client_data(m.Parse("", "SHOW CLIENTS", b"\x00\x00").encode())
    assert isinstance(close, CloseClient) and close.reason is CloseReason.ADMIN_EXTENDED
    assert s.state is State.CLOSED and s.login.state is LoginState.CLOSED


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_the_deadline_ends_a_login_in_any_of_its_states(tmp_path: Path, steps: int) -> None:
    login = ClientLogin(make_config(tmp_path), SessionInfo("s", "a"), key=(1, b"abcd"), throttle=AuthThrottle(),
                        clock=lambda: 0.0, tls_available=False)
    if steps:
        login.data(m.encode_startup_message({"user": "alice"}))
    if steps == 2:
        first = b"n,,n=,r=abcdefgh"
        login.data(m.frame(b"p", b"SCRAM-SHA-256\x00" + len(first).to_bytes(4, "big") + first))
    assert login.state is (LoginState.STARTUP, LoginState.SASL_INITIAL, LoginState.SASL_CONTINUE)[steps]
    [close] = login.timeout()
    assert close.reason is CloseReason.STARTUP_TIMEOUT and login.state is LoginState.CLOSED
    assert login.timeout() == []
