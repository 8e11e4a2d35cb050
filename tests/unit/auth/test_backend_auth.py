"""Backend authentication client: SCRAM against our server and scramp's, md5/cleartext framing, refusals."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import psycopg.pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scramp import ScramException, ScramMechanism

from proxy.auth import backend as backend_module
from proxy.auth.backend import BackendAuthenticator, BackendAuthError
from proxy.auth.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    AuthFailed,
    ScramServerExchange,
    make_verifier,
)

SECRET = b"0123456789abcdef-mock-secret"
CB = hashlib.sha256(b"pretend this is the backend certificate").digest()


def req(code: int, payload: bytes = b"") -> bytes:
    """Body of an 'R' message."""
    return struct.pack("!i", code) + payload


def sasl_request(*mechanisms: str) -> bytes:
    return req(10, b"".join(m.encode() + b"\x00" for m in mechanisms) + b"\x00")


def unframe(message: bytes | None) -> bytes:
    """Check the 'p' framing and return the payload."""
    assert message is not None and message[:1] == b"p"
    (length,) = struct.unpack("!i", message[1:5])
    assert length == len(message) - 1
    return message[5:]


def split_initial_response(message: bytes | None) -> tuple[str, bytes]:
    payload = unframe(message)
    name, _, rest = payload.partition(b"\x00")
    (n,) = struct.unpack("!i", rest[:4])
    assert n == len(rest) - 4
    return name.decode(), rest[4:]


def run_against_our_server(
    auth: BackendAuthenticator, server: ScramServerExchange
) -> tuple[str, bytes | None, bytes | None]:
    """Drive both sides of our own code; returns (mechanism, client-first, reply to SASLFinal)."""
    mechanism, client_first = split_initial_response(auth.on_auth_request(sasl_request(*server.mechanisms())))
    server_first = server.client_first(mechanism, client_first)
    client_final = unframe(auth.on_auth_request(req(11, server_first)))
    server_final = server.client_final(client_final)
    final_reply = auth.on_auth_request(req(12, server_final))
    assert not auth.done
    assert auth.on_auth_request(req(0)) is None
    return mechanism, client_first, final_reply


# ------------------------------------------------------------------------------------- SCRAM, our own server


def test_scram_round_trip_with_our_server() -> None:
    auth = BackendAuthenticator("app", "backend pw")
    server = ScramServerExchange(make_verifier("backend pw"), username="app", mock_secret=SECRET)
    mechanism, client_first, final_reply = run_against_our_server(auth, server)
    assert mechanism == SCRAM_SHA_256 and client_first.startswith(b"n,,n=app,r=")
    assert final_reply is None and auth.done and server.succeeded
    assert auth.method == SCRAM_SHA_256 and not auth.channel_bound


def test_scram_plus_round_trip_with_our_server() -> None:
    auth = BackendAuthenticator("app", "backend pw", channel_binding=CB)
    server = ScramServerExchange(
        make_verifier("backend pw"), username="app", mock_secret=SECRET, channel_binding=CB
    )
    mechanism, client_first, _ = run_against_our_server(auth, server)
    assert mechanism == SCRAM_SHA_256_PLUS and client_first.startswith(b"p=tls-server-end-point,,")
    assert auth.done and auth.channel_bound and server.channel_bound


def test_binding_capable_client_says_y_when_plus_not_offered() -> None:
    auth = BackendAuthenticator("app", "backend pw", channel_binding=CB)
    server = ScramServerExchange(make_verifier("backend pw"), username="app", mock_secret=SECRET)
    mechanism, client_first, _ = run_against_our_server(auth, server)
    assert mechanism == SCRAM_SHA_256 and client_first.startswith(b"y,,")
    assert auth.done and not auth.channel_bound


def test_y_flag_is_refused_by_a_server_that_offers_plus() -> None:
    # A MITM strips PLUS from the list; the real server, which supports binding, refuses the 'y' client.
    auth = BackendAuthenticator("app", "backend pw", channel_binding=CB)
    server = ScramServerExchange(
        make_verifier("backend pw"), username="app", mock_secret=SECRET, channel_binding=CB
    )
    mechanism, client_first = split_initial_response(auth.on_auth_request(sasl_request(SCRAM_SHA_256)))
    with pytest.raises(AuthFailed) as info:
        server.client_first(mechanism, client_first)
    assert info.value.reason == "channel_binding"


def test_client_without_binding_uses_plain_scram_when_plus_offered() -> None:
    auth = BackendAuthenticator("app", "backend pw")
    server = ScramServerExchange(
        make_verifier("backend pw"), username="app", mock_secret=SECRET, channel_binding=CB
    )
    mechanism, client_first, _ = run_against_our_server(auth, server)
    assert mechanism == SCRAM_SHA_256 and client_first.startswith(b"n,,")


def test_channel_binding_mismatch_is_detected_by_the_server() -> None:
    auth = BackendAuthenticator("app", "backend pw", channel_binding=hashlib.sha256(b"mitm cert").digest())
    server = ScramServerExchange(
        make_verifier("backend pw"), username="app", mock_secret=SECRET, channel_binding=CB
    )
    with pytest.raises(AuthFailed) as info:
        run_against_our_server(auth, server)
    assert info.value.reason == "channel_binding"


def test_wrong_password_is_rejected_by_our_server() -> None:
    auth = BackendAuthenticator("app", "not the pw")
    server = ScramServerExchange(make_verifier("backend pw"), username="app", mock_secret=SECRET)
    with pytest.raises(AuthFailed) as info:
        run_against_our_server(auth, server)
    assert info.value.reason == "bad_proof"


def test_saslprep_equivalent_password_authenticates() -> None:
    auth = BackendAuthenticator("app", "pass\u00a0word")  # NBSP -> space under SASLprep
    server = ScramServerExchange(make_verifier("pass word"), username="app", mock_secret=SECRET)
    run_against_our_server(auth, server)
    assert auth.done


def test_username_is_escaped_in_client_first() -> None:
    auth = BackendAuthenticator("we,ird=name", "pw")
    _, client_first = split_initial_response(auth.on_auth_request(sasl_request(SCRAM_SHA_256)))
    assert client_first.startswith(b"n,,n=we=2Cird=3Dname,r=")


# ------------------------------------------------------------------------ SCRAM, scramp as independent server


def _scramp_server(password: str, *, plus: bool = False) -> Any:
    salt, stored_key, server_key, iterations = ScramMechanism().make_auth_info(password)

    def auth_fn(username: str) -> tuple[bytes, bytes, bytes, int]:
        assert username == "app"
        return salt, stored_key, server_key, iterations

    if plus:
        return ScramMechanism(SCRAM_SHA_256_PLUS).make_server(
            auth_fn, channel_binding=("tls-server-end-point", CB)
        )
    return ScramMechanism(SCRAM_SHA_256).make_server(auth_fn)


@pytest.mark.parametrize("plus", [False, True])
def test_scram_against_scramp_server(plus: bool) -> None:
    server = _scramp_server("backend pw", plus=plus)
    auth = BackendAuthenticator("app", "backend pw", channel_binding=CB if plus else None)
    offered = [SCRAM_SHA_256_PLUS, SCRAM_SHA_256] if plus else [SCRAM_SHA_256]
    mechanism, client_first = split_initial_response(auth.on_auth_request(sasl_request(*offered)))
    assert mechanism == (SCRAM_SHA_256_PLUS if plus else SCRAM_SHA_256)
    server.set_client_first(client_first.decode())
    server_first = server.get_server_first()
    client_final = unframe(auth.on_auth_request(req(11, server_first.encode())))
    server.set_client_final(client_final.decode())
    assert auth.on_auth_request(req(12, server.get_server_final().encode())) is None
    assert auth.on_auth_request(req(0)) is None and auth.done
    assert auth.channel_bound is plus


def test_scramp_server_error_is_reported() -> None:
    server = _scramp_server("backend pw")
    auth = BackendAuthenticator("app", "wrong pw")
    _, client_first = split_initial_response(auth.on_auth_request(sasl_request(SCRAM_SHA_256)))
    server.set_client_first(client_first.decode())
    server_first = server.get_server_first()
    client_final = unframe(auth.on_auth_request(req(11, server_first.encode())))
    with pytest.raises(ScramException):
        server.set_client_final(client_final.decode())
    server_final = server.get_server_final()
    assert server_final == "e=invalid-proof"
    with pytest.raises(BackendAuthError, match="invalid-proof"):
        auth.on_auth_request(req(12, server_final.encode()))


def test_rfc7677_known_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    client_nonce = base64.b64decode("rOprNGfwEbeRWgbNEkqO")
    monkeypatch.setattr(backend_module.secrets, "token_bytes", lambda n: client_nonce)
    auth = BackendAuthenticator("user", "pencil")
    _, client_first = split_initial_response(auth.on_auth_request(sasl_request(SCRAM_SHA_256)))
    assert client_first == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    assert unframe(auth.on_auth_request(req(11, server_first))) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert auth.on_auth_request(req(12, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")) is None
    assert auth.on_auth_request(req(0)) is None and auth.done


# --------------------------------------------------------------------------------- SCRAM, hostile backends


def _after_client_first(password: str = "pw") -> tuple[BackendAuthenticator, bytes]:
    auth = BackendAuthenticator("app", password)
    _, client_first = split_initial_response(auth.on_auth_request(sasl_request(SCRAM_SHA_256)))
    return auth, client_first.split(b",r=")[1]


def test_forged_server_signature_is_rejected() -> None:
    auth = BackendAuthenticator("app", "backend pw")
    server = ScramServerExchange(make_verifier("backend pw"), username="app", mock_secret=SECRET)
    mechanism, client_first = split_initial_response(auth.on_auth_request(sasl_request(SCRAM_SHA_256)))
    auth.on_auth_request(req(11, server.client_first(mechanism, client_first)))
    with pytest.raises(BackendAuthError, match="server signature is invalid"):
        auth.on_auth_request(req(12, b"v=" + base64.b64encode(bytes(32))))


def test_ok_before_scram_completes_is_rejected() -> None:
    auth, nonce = _after_client_first()
    with pytest.raises(BackendAuthError, match="before completing the SCRAM exchange"):
        auth.on_auth_request(req(0))
    auth, nonce = _after_client_first()
    auth.on_auth_request(req(11, b"r=" + nonce + b"srv,s=c2FsdHNhbHQ=,i=4096"))
    with pytest.raises(BackendAuthError, match="before completing the SCRAM exchange"):
        auth.on_auth_request(req(0))


@pytest.mark.parametrize(
    ("server_first", "message"),
    [
        (b"r=someone-elses-nonce,s=c2FsdA==,i=4096", "nonce mismatch"),
        (b"r={nonce},s=c2FsdA==,i=4096", "nonce mismatch"),  # server added nothing
        (b"r={nonce}srv,s=!!!,i=4096", "invalid salt"),
        (b"r={nonce}srv,s=,i=4096", "invalid salt or iterations"),
        (b"r={nonce}srv,s=c2FsdA==,i=abc", "invalid salt or iterations"),
        (b"r={nonce}srv,s=c2FsdA==,i=0", "SCRAM iterations"),
        (b"r={nonce}srv,s=c2FsdA==,i=99999999", "SCRAM iterations"),
        (b"r={nonce}srv,i=4096,s=c2FsdA==", "malformed SCRAM server-first-message"),
        (b"e=other-error", "backend reported a SCRAM error: other-error"),
        (b"", "malformed SCRAM server-first-message"),
    ],
)
def test_bad_server_first(server_first: bytes, message: str) -> None:
    auth, nonce = _after_client_first()
    with pytest.raises(BackendAuthError, match=message):
        auth.on_auth_request(req(11, server_first.replace(b"{nonce}", nonce)))


@pytest.mark.parametrize(
    ("server_final", "message"),
    [
        (b"", "malformed SCRAM server-final-message"),
        (b"x=1", "malformed SCRAM server-final-message"),
        (b"v=!!!", "invalid base64"),
        (b"v=" + base64.b64encode(bytes(31)), "server signature is invalid"),
        (b"e=invalid-proof", "invalid-proof"),
    ],
)
def test_bad_server_final(server_final: bytes, message: str) -> None:
    auth, nonce = _after_client_first()
    auth.on_auth_request(req(11, b"r=" + nonce + b"srv,s=c2FsdHNhbHQ=,i=4096"))
    with pytest.raises(BackendAuthError, match=message):
        auth.on_auth_request(req(12, server_final))


def test_no_supported_mechanism() -> None:
    auth = BackendAuthenticator("app", "pw")
    with pytest.raises(BackendAuthError, match=r"no supported SASL mechanism \(offered: OAUTHBEARER\)"):
        auth.on_auth_request(sasl_request("OAUTHBEARER"))


def test_plus_only_without_binding_is_refused() -> None:
    auth = BackendAuthenticator("app", "pw")
    with pytest.raises(BackendAuthError, match="SCRAM-SHA-256-PLUS"):
        auth.on_auth_request(sasl_request(SCRAM_SHA_256_PLUS))


def test_malformed_sasl_list() -> None:
    with pytest.raises(BackendAuthError, match="not terminated"):
        BackendAuthenticator("app", "pw").on_auth_request(req(10, b"SCRAM-SHA-256"))
    with pytest.raises(BackendAuthError, match="empty mechanism"):
        BackendAuthenticator("app", "pw").on_auth_request(req(10, b"\x00SCRAM-SHA-256\x00\x00"))


def test_sasl_messages_out_of_order() -> None:
    with pytest.raises(BackendAuthError, match="unexpected AuthenticationSASLContinue"):
        BackendAuthenticator("app", "pw").on_auth_request(req(11, b"r=x,s=c2FsdA==,i=1"))
    with pytest.raises(BackendAuthError, match="unexpected AuthenticationSASLFinal"):
        BackendAuthenticator("app", "pw").on_auth_request(req(12, b"v=x"))
    auth, _ = _after_client_first()
    with pytest.raises(BackendAuthError, match="in the middle of another exchange"):
        auth.on_auth_request(req(3))  # downgrade to cleartext mid-SCRAM


def test_scram_without_password() -> None:
    with pytest.raises(
        BackendAuthError, match="backend requested SCRAM-SHA-256 but no password is configured"
    ):
        BackendAuthenticator("app", None).on_auth_request(sasl_request(SCRAM_SHA_256))


# ----------------------------------------------------------------------------------- md5, cleartext, trust


def test_md5_matches_hand_computed_literal() -> None:
    # "md5" + md5hex(md5hex(password + user) + salt) for user "alice", password "secret", salt 01 02 03 04,
    # computed once by hand with hashlib and pasted here:
    expected = b"md598a0412b9c31436fc53776e863350083"
    inner = hashlib.md5(b"secret" + b"alice").hexdigest().encode()
    assert expected == b"md5" + hashlib.md5(inner + b"\x01\x02\x03\x04").hexdigest().encode()
    auth = BackendAuthenticator("alice", "secret")
    assert (
        auth.on_auth_request(req(5, b"\x01\x02\x03\x04"))
        == b"p" + struct.pack("!i", 4 + 36) + expected + b"\x00"
    )
    assert auth.method == "md5" and not auth.done
    assert auth.on_auth_request(req(0)) is None and auth.done


def test_md5_inner_hash_matches_libpq() -> None:
    conn = psycopg.pq.PGconn.connect_start(b"host=/nonexistent-pgtenant-socket-dir dbname=x")
    try:
        stored = conn.encrypt_password(
            "pässwörd".encode(), "jörg".encode(), b"md5"
        )  # "md5" + md5hex(pw+user)
    finally:
        conn.finish()
    salt = b"\xde\xad\xbe\xef"
    payload = unframe(BackendAuthenticator("jörg", "pässwörd").on_auth_request(req(5, salt)))
    assert payload == b"md5" + hashlib.md5(stored[3:] + salt).hexdigest().encode() + b"\x00"


def test_md5_without_password() -> None:
    with pytest.raises(BackendAuthError, match=r"^backend requested md5 but no password is configured$"):
        BackendAuthenticator("alice", None).on_auth_request(req(5, b"salt"))


def test_md5_bad_salt_length() -> None:
    with pytest.raises(BackendAuthError, match="salt must be 4 bytes"):
        BackendAuthenticator("alice", "pw").on_auth_request(req(5, b"abc"))


def test_cleartext_password() -> None:
    auth = BackendAuthenticator("alice", "pässword")
    assert auth.on_auth_request(req(3)) == b"p" + struct.pack("!i", 4 + 10) + "pässword".encode() + b"\x00"
    assert auth.method == "password"
    assert auth.on_auth_request(req(0)) is None and auth.done


def test_cleartext_without_password() -> None:
    with pytest.raises(BackendAuthError, match="no password is configured"):
        BackendAuthenticator("alice", None).on_auth_request(req(3))


def test_trust() -> None:
    auth = BackendAuthenticator("alice", None)
    assert auth.on_auth_request(req(0)) is None
    assert auth.done and auth.method == "trust"


def test_nothing_accepted_after_ok() -> None:
    auth = BackendAuthenticator("alice", "pw")
    auth.on_auth_request(req(0))
    with pytest.raises(BackendAuthError, match="after AuthenticationOk"):
        auth.on_auth_request(req(3))


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (2, "KerberosV5"),
        (6, "SCM credential"),
        (7, "GSSAPI"),
        (8, "GSSAPI"),
        (9, "SSPI"),
        (4, "code 4"),
        (99, "code 99"),
    ],
)
def test_unsupported_methods_are_named(code: int, name: str) -> None:
    with pytest.raises(BackendAuthError, match=name):
        BackendAuthenticator("alice", "pw").on_auth_request(req(code))


def test_short_body() -> None:
    with pytest.raises(BackendAuthError, match="malformed authentication request"):
        BackendAuthenticator("alice", "pw").on_auth_request(b"\x00\x00")


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="NUL"):
        BackendAuthenticator("alice", "a\x00b")
    with pytest.raises(ValueError):
        BackendAuthenticator("alice", "pw", channel_binding=b"")


@settings(max_examples=300, deadline=None)
@given(
    first=st.sampled_from([None, 10]),
    bodies=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.tuples(st.sampled_from([0, 3, 5, 10, 11, 12, 2, 7]), st.binary(max_size=64)).map(
                lambda t: req(t[0], t[1])
            ),
        ),
        max_size=4,
    ),
)
def test_random_requests_only_raise_backend_auth_error(first: int | None, bodies: list[bytes]) -> None:
    auth = BackendAuthenticator("app", "pw", channel_binding=CB)
    if first is not None:
        auth.on_auth_request(sasl_request(SCRAM_SHA_256_PLUS, SCRAM_SHA_256))
    for body in bodies:
        try:
            out = auth.on_auth_request(body)
        except BackendAuthError:
            break
        assert out is None or out[:1] == b"p"
