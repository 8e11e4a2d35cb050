"""SCRAM server: verifiers match PostgreSQL/libpq, exchanges interoperate, bad input is only AuthFailed."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg.pq
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scramp import ScramClient, ScramMechanism
from scramp.core import CBindData

from proxy.auth.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    AuthFailed,
    ScramServerExchange,
    ScramVerifier,
    encode_text,
    make_verifier,
    mock_verifier,
    prepare_password,
    tls_server_end_point,
)

SECRET = b"0123456789abcdef-mock-secret"
CB = hashlib.sha256(b"pretend this is the proxy certificate").digest()

# Computed by libpq 18 (PQencryptPasswordConn, i.e. PostgreSQL's own scram_build_secret) for password "foo".
LIBPQ_FOO = (
    "SCRAM-SHA-256$4096:cuIcA6bE7hB2Lr0fY1h1aA==$H3e7AWQnueXVsSUkD8cvfwJZrmtV/YNXjy/uz0VHMRQ="
    ":MUdnwD7qIbP02j+lv/JL024ycuG5MRVh6qS/v8TXO2Q="
)

# RFC 7677 section 3 example exchange (user "user", password "pencil").
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.fixture(scope="module")
def verifier() -> ScramVerifier:
    return make_verifier("correct horse")


def _libpq_verifier(password: bytes) -> ScramVerifier:
    """libpq's PQencryptPasswordConn (needs a PGconn object, but never talks to a server)."""
    conn = psycopg.pq.PGconn.connect_start(b"host=/nonexistent-pgtenant-socket-dir dbname=x")
    try:
        return ScramVerifier.parse(conn.encrypt_password(password, b"someone", b"scram-sha-256").decode())
    finally:
        conn.finish()


def _exchange(
    verifier: ScramVerifier | None,
    client: ScramClient,
    *,
    channel_binding: bytes | None = None,
    mechanism: str | None = None,
    username: str = "alice",
) -> tuple[ScramServerExchange, bytes]:
    """Run a whole exchange; returns the server object and server-final (verified by the client)."""
    server = ScramServerExchange(
        verifier, username=username, mock_secret=SECRET, channel_binding=channel_binding
    )
    server_first = server.client_first(mechanism or client.mechanism_name, client.get_client_first().encode())
    client.set_server_first(server_first.decode())
    server_final = server.client_final(client.get_client_final().encode())
    client.set_server_final(server_final.decode())
    return server, server_final


# ------------------------------------------------------------------------------------------------ verifiers


def test_verifier_round_trip_with_libpq_output() -> None:
    v = ScramVerifier.parse(LIBPQ_FOO)
    assert v.iterations == 4096 and len(v.salt) == 16
    assert str(v) == LIBPQ_FOO
    assert ScramVerifier.parse(str(v)) == v


def test_verifier_repr_hides_keys(verifier: ScramVerifier) -> None:
    text = repr(verifier)
    assert base64.b64encode(verifier.stored_key).decode() not in text
    assert "stored_key" not in text and "server_key" not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "three '$'-separated parts"),
        ("md5e8a48653851e28c69d0506508fb27fc5", "three '$'-separated parts"),
        ("SCRAM-SHA-1$4096:c2FsdA==$a:b", "unsupported verifier scheme 'SCRAM-SHA-1'"),
        ("SCRAM-SHA-256$4096c2FsdA==$a:b", "missing the ':' between iteration count and salt"),
        ("SCRAM-SHA-256$abc:c2FsdA==$a:b", "iteration count must be a positive decimal integer"),
        ("SCRAM-SHA-256$-1:c2FsdA==$a:b", "iteration count must be a positive decimal integer"),
        ("SCRAM-SHA-256$0:c2FsdA==$a:b", "iteration count must be between"),
        ("SCRAM-SHA-256$99999999999:c2FsdA==$a:b", "iteration count must be between"),
        ("SCRAM-SHA-256$4096:c2Fsd!==$a:b", "salt is not valid base64"),
        ("SCRAM-SHA-256$4096:$a:b", "salt is empty"),
        ("SCRAM-SHA-256$4096:c2FsdA==$ab", "missing the ':' between StoredKey and ServerKey"),
        ("SCRAM-SHA-256$4096:c2FsdA==$!!!!:" + "A" * 43 + "=", "StoredKey is not valid base64"),
        (
            "SCRAM-SHA-256$4096:c2FsdA==$c2FsdA==:" + "A" * 43 + "=",
            "StoredKey must decode to 32 bytes, got 4",
        ),
        (
            "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:c2FsdA==",
            "ServerKey must decode to 32 bytes, got 4",
        ),
        (LIBPQ_FOO + "$extra", "three '$'-separated parts"),
    ],
)
def test_malformed_verifier_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ScramVerifier.parse(text)


def test_parse_error_does_not_echo_key_material() -> None:
    bad = LIBPQ_FOO.rsplit(":", 1)[0] + ":" + "Zm9v" * 3  # ServerKey too short
    with pytest.raises(ValueError) as info:
        ScramVerifier.parse(bad)
    assert "H3e7AWQnueXVsSUkD8cvfwJZrmtV" not in str(info.value)


def test_verifier_constructor_validates() -> None:
    with pytest.raises(ValueError, match="StoredKey must be 32 bytes"):
        ScramVerifier(iterations=4096, salt=b"s", stored_key=b"short", server_key=bytes(32))
    with pytest.raises(ValueError, match="salt"):
        ScramVerifier(iterations=4096, salt=b"", stored_key=bytes(32), server_key=bytes(32))
    with pytest.raises(ValueError, match="iteration"):
        ScramVerifier(iterations=0, salt=b"s", stored_key=bytes(32), server_key=bytes(32))


def test_make_verifier_reproduces_libpq_vector() -> None:
    lib = ScramVerifier.parse(LIBPQ_FOO)
    assert make_verifier("foo", salt=lib.salt, iterations=lib.iterations) == lib


def test_make_verifier_matches_rfc7677_salt_and_scramp() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    ours = make_verifier("pencil", salt=salt, iterations=4096)
    s_salt, stored, server, iterations = ScramMechanism().make_auth_info(
        "pencil", iteration_count=4096, salt=salt
    )
    assert (ours.salt, ours.stored_key, ours.server_key, ours.iterations) == (
        s_salt,
        stored,
        server,
        iterations,
    )
    assert str(ours) == (
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
        ":wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    )


@pytest.mark.parametrize(
    "password",
    ["", "p", "correct horse battery staple", "\uff46\uff55\uff4c\uff4c", "\u00e9t\u00e9", "\u00adsoft"],
)
def test_make_verifier_agrees_with_scramp_where_saslprep_agrees(password: str) -> None:
    salt = bytes(range(16))
    _, stored, server, _ = ScramMechanism().make_auth_info(password, iteration_count=4096, salt=salt)
    ours = make_verifier(password, salt=salt)
    assert (ours.stored_key, ours.server_key) == (stored, server)


# Passwords where SASLprep matters. PostgreSQL (server and libpq share src/common/saslprep.c) maps non-ASCII
# spaces before deleting "mapped to nothing" characters, checks prohibited characters *before* NFKC, and
# falls back to the raw bytes when SASLprep refuses; scramp differs on several of these.
SASLPREP_CASES = [
    "foo",
    "",
    "a\x01b",  # ASCII control character: PostgreSQL's ASCII fast path keeps it
    "\u00adsoft",  # soft hyphen mapped to nothing
    "\u00ad",  # empty after mapping -> prohibited -> raw bytes (scramp: "")
    "a\u200bb",  # U+200B is in C.1.2 and B.1; PostgreSQL maps it to a space (scramp deletes it)
    "a\u00a0b",  # no-break space -> space
    "\u3000",
    "\ufeffx",
    "\uff46\uff55\uff4c\uff4c",  # fullwidth -> "full"
    "\u2168",  # ROMAN NUMERAL NINE -> "IX"
    "\ufb01x",  # ligature
    "e\u0301",  # combining acute -> é
    "x\u0340",  # prohibited before NFKC (which would turn it into U+0300): raw bytes (scramp differs)
    "\u05d0\u05d1",  # valid RTL
    "\u05d0a",  # bidi violation -> raw bytes
    "\u05d0a\u05d1",
    "\U0001f600",  # unassigned in Unicode 3.2 -> raw bytes
    "\u0221",
    "pass\u0301word\ufe0f",
    "\udcff",  # an undecodable byte smuggled in via surrogateescape: raw b"\xff"
]


@pytest.mark.parametrize("password", SASLPREP_CASES, ids=[ascii(p) for p in SASLPREP_CASES])
def test_make_verifier_matches_libpq(password: str) -> None:
    lib = _libpq_verifier(encode_text(password))
    assert make_verifier(password, salt=lib.salt, iterations=lib.iterations) == lib


def test_prepare_password_examples() -> None:
    assert prepare_password("a\u200bb") == b"a b"
    assert prepare_password("\u00ad") == "\u00ad".encode()
    assert prepare_password("\u2168") == b"IX"
    assert prepare_password("\udcff") == b"\xff"
    with pytest.raises(ValueError, match="NUL"):
        prepare_password("a\x00b")


def test_make_verifier_defaults_and_validation() -> None:
    a, b = make_verifier("pw"), make_verifier("pw")
    assert a.iterations == 4096 and len(a.salt) == 16 and a.salt != b.salt
    assert make_verifier("pw", iterations=1).iterations == 1
    with pytest.raises(ValueError):
        make_verifier("pw", iterations=0)
    with pytest.raises(ValueError):
        make_verifier("pw", salt=b"")


def test_mock_verifier_is_deterministic_and_secret_dependent() -> None:
    a = mock_verifier("ghost", SECRET)
    assert a == mock_verifier("ghost", SECRET)
    assert a.salt != mock_verifier("ghost2", SECRET).salt
    assert a.salt != mock_verifier("ghost", SECRET + b"!").salt
    assert a.iterations == 4096 and len(a.salt) == 16
    assert mock_verifier("ghost", SECRET, iterations=10000).iterations == 10000
    with pytest.raises(ValueError, match="must not be empty"):
        mock_verifier("ghost", b"")


# ------------------------------------------------------------------------------------------------ exchanges


def test_rfc7677_known_answer() -> None:
    class FixedNonce(ScramServerExchange):
        def _new_server_nonce(self) -> bytes:
            return RFC_SERVER_NONCE

    v = make_verifier("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096)
    server = FixedNonce(v, username="user", mock_secret=SECRET)
    assert server.client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.succeeded and not server.channel_bound


def test_success_with_scramp_client(verifier: ScramVerifier) -> None:
    server, server_final = _exchange(verifier, ScramClient([SCRAM_SHA_256], "alice", "correct horse"))
    assert server_final.startswith(b"v=") and server.succeeded and not server.channel_bound


def test_server_first_format(verifier: ScramVerifier) -> None:
    server = ScramServerExchange(verifier, username="alice", mock_secret=SECRET)
    out = server.client_first(SCRAM_SHA_256, b"n,,n=,r=clientnonce")
    m = re.fullmatch(rb"r=clientnonce([A-Za-z0-9+/]{24}),s=([A-Za-z0-9+/=]+),i=4096", out)
    assert m is not None
    assert base64.b64decode(m.group(2)) == verifier.salt


def test_wrong_password_is_bad_proof(verifier: ScramVerifier) -> None:
    with pytest.raises(AuthFailed) as info:
        _exchange(verifier, ScramClient([SCRAM_SHA_256], "alice", "wrong horse"))
    assert info.value.reason == "bad_proof"


def test_unknown_user_runs_the_same_messages_then_fails(verifier: ScramVerifier) -> None:
    client = ScramClient([SCRAM_SHA_256], "ghost", "whatever")
    server = ScramServerExchange(None, username="ghost", mock_secret=SECRET)
    server_first = server.client_first(SCRAM_SHA_256, client.get_client_first().encode())
    real_first = ScramServerExchange(verifier, username="alice", mock_secret=SECRET).client_first(
        SCRAM_SHA_256, b"n,,n=,r=" + b"x" * 32
    )
    shape = rb"r=[!-+\--~]+,s=[A-Za-z0-9+/]{22}==,i=4096"
    assert re.fullmatch(shape, server_first) and re.fullmatch(shape, real_first)
    mock = mock_verifier("ghost", SECRET)
    assert f"s={base64.b64encode(mock.salt).decode()}," in server_first.decode()
    client.set_server_first(server_first.decode())
    with pytest.raises(AuthFailed) as info:
        server.client_final(client.get_client_final().encode())
    assert info.value.reason == "unknown_user"
    assert not server.succeeded


def test_unknown_user_salt_is_stable_across_exchanges() -> None:
    def salt_of() -> bytes:
        out = ScramServerExchange(None, username="ghost", mock_secret=SECRET).client_first(
            SCRAM_SHA_256, b"n,,n=,r=abc"
        )
        return out.split(b",")[1]

    assert salt_of() == salt_of()


def test_channel_binding_plus_success(verifier: ScramVerifier) -> None:
    client = ScramClient(
        [SCRAM_SHA_256_PLUS], "alice", "correct horse", channel_binding=("tls-server-end-point", CB)
    )
    server, _ = _exchange(verifier, client, channel_binding=CB)
    assert server.succeeded and server.channel_bound
    assert server.mechanisms() == [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]


def test_channel_binding_mismatch_fails(verifier: ScramVerifier) -> None:
    other = hashlib.sha256(b"a man in the middle's certificate").digest()
    client = ScramClient(
        [SCRAM_SHA_256_PLUS], "alice", "correct horse", channel_binding=("tls-server-end-point", other)
    )
    with pytest.raises(AuthFailed) as info:
        _exchange(verifier, client, channel_binding=CB)
    assert info.value.reason == "channel_binding"


def test_client_y_flag_when_plus_offered_is_a_downgrade(verifier: ScramVerifier) -> None:
    # The client supports binding but did not see PLUS: someone stripped it from the mechanism list.
    client = ScramClient(
        [SCRAM_SHA_256], "alice", "correct horse", channel_binding=("tls-server-end-point", CB)
    )
    assert client.get_client_first().startswith("y,,")
    server = ScramServerExchange(verifier, username="alice", mock_secret=SECRET, channel_binding=CB)
    with pytest.raises(AuthFailed) as info:
        server.client_first(SCRAM_SHA_256, b"y,,n=,r=abc")
    assert info.value.reason == "channel_binding"


def test_client_y_flag_without_tls_is_fine(verifier: ScramVerifier) -> None:
    client = ScramClient(
        [SCRAM_SHA_256], "alice", "correct horse", channel_binding=("tls-server-end-point", CB)
    )
    server, _ = _exchange(verifier, client)
    assert server.succeeded and server.mechanisms() == [SCRAM_SHA_256]


def test_plain_scram_over_tls_without_binding_is_allowed(verifier: ScramVerifier) -> None:
    # A client that cannot bind at all ('n') may still use SCRAM-SHA-256 on a TLS session, as in PostgreSQL.
    server, _ = _exchange(
        verifier, ScramClient([SCRAM_SHA_256], "alice", "correct horse"), channel_binding=CB
    )
    assert server.succeeded and not server.channel_bound


@pytest.mark.parametrize(
    ("mechanism", "data", "channel_binding", "reason"),
    [
        (SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc", CB, "channel_binding"),
        (SCRAM_SHA_256_PLUS, b"n,,n=,r=abc", CB, "channel_binding"),
        (SCRAM_SHA_256_PLUS, b"y,,n=,r=abc", CB, "channel_binding"),
        (SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=abc", CB, "channel_binding"),
        (SCRAM_SHA_256_PLUS, b"p=tls-server-end-point,,n=,r=abc", None, "bad_mechanism"),
        ("SCRAM-SHA-1", b"n,,n=,r=abc", None, "bad_mechanism"),
        ("", b"n,,n=,r=abc", None, "bad_mechanism"),
        (SCRAM_SHA_256, b"", None, "malformed"),
        (SCRAM_SHA_256, b"n,,n=,r=abc\x00", None, "malformed"),
        (SCRAM_SHA_256, b"x,,n=,r=abc", None, "malformed"),
        (SCRAM_SHA_256, b"n,a=admin,n=,r=abc", None, "malformed"),
        (SCRAM_SHA_256, b"n,,m=ext,n=,r=abc", None, "malformed"),
        (SCRAM_SHA_256, b"n,,r=abc", None, "malformed"),
        (SCRAM_SHA_256, b"n,,n=,r=", None, "malformed"),
        (SCRAM_SHA_256, b"n,,n=,r=ab\x7fc", None, "malformed"),
        (SCRAM_SHA_256, b"n,,n=,r=ab c", None, "malformed"),
        (SCRAM_SHA_256, b"n,,n=,r=abc,1=x", None, "malformed"),
        (SCRAM_SHA_256, b"n,,n=,r=abc,", None, "malformed"),
        (SCRAM_SHA_256, b"n,", None, "malformed"),
        (SCRAM_SHA_256, b"n", None, "malformed"),
    ],
)
def test_bad_client_first(
    verifier: ScramVerifier, mechanism: str, data: bytes, channel_binding: bytes | None, reason: str
) -> None:
    server = ScramServerExchange(
        verifier, username="alice", mock_secret=SECRET, channel_binding=channel_binding
    )
    with pytest.raises(AuthFailed) as info:
        server.client_first(mechanism, data)
    assert info.value.reason == reason
    with pytest.raises(AuthFailed, match="out of order"):  # a failed exchange accepts nothing more
        server.client_final(b"c=biws,r=abc,p=" + base64.b64encode(bytes(32)))


def test_client_first_extensions_and_username_are_ignored(verifier: ScramVerifier) -> None:
    server = ScramServerExchange(verifier, username="alice", mock_secret=SECRET)
    out = server.client_first(SCRAM_SHA_256, b"n,,n=somebody=2Celse,r=abc,x=ext,y=")
    assert out.startswith(b"r=abc")


def _started(verifier: ScramVerifier, password: str = "correct horse") -> tuple[ScramServerExchange, bytes]:
    """A server after client-first, plus a valid client-final (computed by hand) for it."""
    server = ScramServerExchange(verifier, username="alice", mock_secret=SECRET)
    bare = b"n=,r=clientnonce"
    server_first = server.client_first(SCRAM_SHA_256, b"n,," + bare)
    nonce = server_first.split(b",")[0][2:]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), verifier.salt, verifier.iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    without_proof = b"c=biws,r=" + nonce
    auth = bare + b"," + server_first + b"," + without_proof
    sig = hmac.new(hashlib.sha256(client_key).digest(), auth, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig, strict=True))
    return server, without_proof + b",p=" + base64.b64encode(proof)


def test_hand_built_final_succeeds(verifier: ScramVerifier) -> None:
    server, final = _started(verifier)
    assert server.client_final(final).startswith(b"v=")
    with pytest.raises(AuthFailed, match="out of order"):
        server.client_final(final)
    with pytest.raises(AuthFailed, match="out of order"):
        server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc")


def _tamper_nonce(final: bytes) -> bytes:
    c, r, p = final.split(b",")
    return b",".join((c, r[:-1] + (b"A" if r[-1:] != b"A" else b"B"), p))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f.replace(b"c=biws", b"c=eSws"), "channel_binding"),  # flag was 'n'
        (
            lambda f: f.replace(b"c=biws", b"c=" + base64.b64encode(b"p=tls-server-end-point,," + CB)),
            "channel_binding",
        ),
        (_tamper_nonce, "malformed"),
        (lambda f: f.rsplit(b",p=", 1)[0], "malformed"),  # no proof
        (lambda f: f.rsplit(b",p=", 1)[0] + b",p=" + base64.b64encode(bytes(31)), "malformed"),
        (lambda f: f.rsplit(b",p=", 1)[0] + b",p=!!!!", "malformed"),
        (lambda f: f + b",x=trailing", "malformed"),
        (lambda f: f.replace(b"c=biws,", b""), "malformed"),
        (lambda f: f + b"\x00", "malformed"),
        (lambda f: b"", "malformed"),
        (lambda f: f.rsplit(b",p=", 1)[0] + b",p=" + base64.b64encode(bytes(32)), "bad_proof"),
    ],
)
def test_bad_client_final(verifier: ScramVerifier, mutate: Callable[[bytes], bytes], reason: str) -> None:
    server, final = _started(verifier)
    with pytest.raises(AuthFailed) as info:
        server.client_final(mutate(final))
    assert info.value.reason == reason


def test_extensions_before_proof_are_part_of_the_auth_message(verifier: ScramVerifier) -> None:
    # PostgreSQL skips unknown attributes between r= and p=; they are covered by the proof, so adding one
    # after the client computed its proof must fail.
    server, final = _started(verifier)
    head, proof = final.rsplit(b",p=", 1)
    with pytest.raises(AuthFailed) as info:
        server.client_final(head + b",x=ext,p=" + proof)
    assert info.value.reason == "bad_proof"


def test_client_final_before_client_first(verifier: ScramVerifier) -> None:
    server = ScramServerExchange(verifier, username="alice", mock_secret=SECRET)
    with pytest.raises(AuthFailed) as info:
        server.client_final(b"c=biws,r=abc,p=" + base64.b64encode(bytes(32)))
    assert info.value.reason == "malformed"


def test_constructor_validation(verifier: ScramVerifier) -> None:
    with pytest.raises(ValueError, match="channel_binding"):
        ScramServerExchange(None, username="x", mock_secret=SECRET, channel_binding=b"")
    with pytest.raises(ValueError, match="mock secret"):
        ScramServerExchange(verifier, username="x", mock_secret=b"")


_messages = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from(
            [b"n", b"y", b"p=tls-server-end-point", b"", b"n=", b"r=abc", b"c=biws", b"p=", b"a=x", b"m="]
        )
        | st.binary(max_size=12),
        max_size=8,
    ).map(b",".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mechanism=st.sampled_from([SCRAM_SHA_256, SCRAM_SHA_256_PLUS, "", "x\x00"]) | st.text(max_size=20),
    first=_messages,
    final=_messages,
    tls=st.booleans(),
    known=st.booleans(),
)
def test_random_input_only_raises_auth_failed(
    verifier: ScramVerifier, mechanism: str, first: bytes, final: bytes, tls: bool, known: bool
) -> None:
    server = ScramServerExchange(
        verifier if known else None, username="alice", mock_secret=SECRET, channel_binding=CB if tls else None
    )
    with contextlib.suppress(AuthFailed):
        server.client_first(mechanism, first)
    with contextlib.suppress(AuthFailed):
        server.client_final(final)
    assert not server.succeeded


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_valid_final_never_succeeds_or_crashes(verifier: ScramVerifier, data: st.DataObject) -> None:
    server, final = _started(verifier)
    pos = data.draw(st.integers(0, len(final) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != final[pos]))
    mutated = final[:pos] + bytes([byte]) + final[pos + 1 :]
    with pytest.raises(AuthFailed):
        server.client_final(mutated)


# ------------------------------------------------------------------------------------ tls-server-end-point


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _self_signed(key: Any, algorithm: hashes.HashAlgorithm | None) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgtenant test")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("algorithm", "hashlib_name"),
    [
        (hashes.SHA256(), "sha256"),
        (hashes.SHA384(), "sha384"),
        (hashes.SHA512(), "sha512"),
        (hashes.SHA224(), "sha224"),
    ],
)
def test_tls_server_end_point_uses_signature_hash(algorithm: hashes.HashAlgorithm, hashlib_name: str) -> None:
    der = _self_signed(ec.generate_private_key(ec.SECP256R1()), algorithm)
    assert tls_server_end_point(der) == hashlib.new(hashlib_name, der).digest()
    assert tls_server_end_point(der) == bytes(CBindData.from_der(der))  # scramp/asn1crypto, independently


@pytest.mark.parametrize("last_oid_byte", [0x04, 0x05], ids=["md5WithRSA", "sha1WithRSA"])
def test_tls_server_end_point_md5_sha1_become_sha256(rsa_key: rsa.RSAPrivateKey, last_oid_byte: int) -> None:
    # cryptography refuses to sign with MD5/SHA-1, so relabel a sha256WithRSAEncryption certificate
    # (1.2.840.113549.1.1.11) as 1.2.840.113549.1.1.{4,5}; the signature is never checked here.
    sha256_oid = bytes.fromhex("06092a864886f70d01010b")
    der = _self_signed(rsa_key, hashes.SHA256())
    assert der.count(sha256_oid) == 2
    relabelled = der.replace(sha256_oid, sha256_oid[:-1] + bytes([last_oid_byte]))
    cert = x509.load_der_x509_certificate(relabelled)
    assert isinstance(cert.signature_hash_algorithm, hashes.MD5 | hashes.SHA1)
    assert tls_server_end_point(relabelled) == hashlib.sha256(relabelled).digest()
    assert tls_server_end_point(relabelled) == bytes(CBindData.from_der(relabelled))


def test_tls_server_end_point_undefined_for_ed25519() -> None:
    with pytest.raises(ValueError, match="no hash"):
        tls_server_end_point(_self_signed(ed25519.Ed25519PrivateKey.generate(), None))


def test_tls_server_end_point_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="DER"):
        tls_server_end_point(b"not a certificate")


# ------------------------------------------------- real libpq client against the server exchange (loopback)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("client closed the connection")
        buf += chunk
    return buf


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _recv_exact(sock, 5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], _recv_exact(sock, length - 4)


def _send(sock: socket.socket, kind: bytes, body: bytes) -> None:
    sock.sendall(kind + struct.pack("!i", len(body) + 4) + body)


def _serve_one(
    listener: socket.socket,
    verifiers: dict[str, ScramVerifier],
    ssl_context: ssl.SSLContext | None,
    cert_hash: bytes | None,
    result: dict[str, Any],
) -> None:
    """Just enough of a PostgreSQL server for libpq to authenticate with SCRAM (over TLS if asked)."""
    conn, _ = listener.accept()
    sock: socket.socket = conn
    sock.settimeout(10)
    try:
        while True:
            length, code = struct.unpack("!ii", _recv_exact(sock, 8))
            if code == 80877103:  # SSLRequest
                if ssl_context is None:
                    sock.sendall(b"N")
                    continue
                sock.sendall(b"S")
                sock = ssl_context.wrap_socket(sock, server_side=True)
                continue
            if code == 80877104:  # GSSENCRequest
                sock.sendall(b"N")
                continue
            break
        fields = _recv_exact(sock, length - 8).split(b"\x00")
        params = dict(zip(fields[0::2], fields[1::2], strict=False))
        user = params[b"user"].decode()
        on_tls = isinstance(sock, ssl.SSLSocket)
        exchange = ScramServerExchange(
            verifiers.get(user),
            username=user,
            mock_secret=SECRET,
            channel_binding=cert_hash if on_tls else None,
        )
        mechs = b"".join(m.encode() + b"\x00" for m in exchange.mechanisms()) + b"\x00"
        _send(sock, b"R", struct.pack("!i", 10) + mechs)
        kind, body = _read_message(sock)
        assert kind == b"p"
        mechanism, _, rest = body.partition(b"\x00")
        (n,) = struct.unpack("!i", rest[:4])
        result["client_first"] = rest[4 : 4 + n]
        try:
            server_first = exchange.client_first(mechanism.decode(), rest[4 : 4 + n])
            _send(sock, b"R", struct.pack("!i", 11) + server_first)
            kind, body = _read_message(sock)
            server_final = exchange.client_final(body)
        except AuthFailed as exc:
            result["reason"] = exc.reason
            _send(sock, b"E", b"SFATAL\x00VFATAL\x00C28P01\x00Mpassword authentication failed\x00\x00")
            return
        _send(sock, b"R", struct.pack("!i", 12) + server_final)
        _send(sock, b"R", struct.pack("!i", 0))
        for key, value in ((b"server_version", b"18.0"), (b"client_encoding", b"UTF8")):
            _send(sock, b"S", key + b"\x00" + value + b"\x00")
        _send(sock, b"K", struct.pack("!ii", 1234, 5678))
        _send(sock, b"Z", b"I")
        result["ok"] = True
        result["channel_bound"] = exchange.channel_bound
        result["mechanism"] = mechanism.decode()
    finally:
        sock.close()


def _libpq_connect(conninfo: bytes, timeout: float = 10.0) -> psycopg.pq.PGconn:
    """Non-blocking libpq connect (PQconnectdb would hold the GIL and starve the server thread)."""
    conn = psycopg.pq.PGconn.connect_start(conninfo)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = conn.connect_poll()
        if status in (psycopg.pq.PollingStatus.OK, psycopg.pq.PollingStatus.FAILED):
            break
        wait_read = status == psycopg.pq.PollingStatus.READING
        select.select([conn.socket] if wait_read else [], [] if wait_read else [conn.socket], [], 0.5)
    return conn


@pytest.fixture
def libpq_login(tls_certs: Any) -> Iterator[Callable[..., tuple[psycopg.pq.PGconn, dict[str, Any]]]]:
    """Connect real libpq (via psycopg.pq) to a one-shot fake server on 127.0.0.1 driven by our exchange."""
    cert_der = ssl.PEM_cert_to_DER_cert(tls_certs.cert_file.read_text())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_certs.cert_file), str(tls_certs.key_file))
    threads: list[threading.Thread] = []
    conns: list[psycopg.pq.PGconn] = []

    def login(
        user: str, password: str, *, tls: bool, **opts: str
    ) -> tuple[psycopg.pq.PGconn, dict[str, Any]]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        port = listener.getsockname()[1]
        result: dict[str, Any] = {}
        verifiers = {"alice": make_verifier("s3cret\u00a0pw")}
        thread = threading.Thread(
            target=_serve_one,
            args=(listener, verifiers, context if tls else None, tls_server_end_point(cert_der), result),
            daemon=True,
        )
        thread.start()
        threads.append(thread)
        conninfo = {
            "host": "127.0.0.1",
            "port": str(port),
            "user": user,
            "password": password,
            "dbname": "db",
            "sslmode": "require" if tls else "disable",
            "gssencmode": "disable",
            "connect_timeout": "10",
            **opts,
        }
        text = " ".join(f"{k}='{v}'" for k, v in conninfo.items())
        conn = _libpq_connect(text.encode())
        conns.append(conn)
        thread.join(10)
        listener.close()
        return conn, result

    yield login
    for conn in conns:
        conn.finish()
    for thread in threads:
        thread.join(10)


def test_libpq_client_authenticates(libpq_login: Callable[..., Any]) -> None:
    conn, result = libpq_login("alice", "s3cret\u00a0pw", tls=False)
    assert conn.status == psycopg.pq.ConnStatus.OK, conn.get_error_message()
    assert result == {
        "client_first": result["client_first"],
        "ok": True,
        "channel_bound": False,
        "mechanism": SCRAM_SHA_256,
    }
    assert result["client_first"].startswith(b"n,,n=,r=")  # libpq sends an empty SCRAM username


def test_libpq_client_channel_binding_over_tls(libpq_login: Callable[..., Any]) -> None:
    conn, result = libpq_login("alice", "s3cret pw", tls=True, channel_binding="require")
    assert conn.status == psycopg.pq.ConnStatus.OK, conn.get_error_message()
    assert result["ok"] and result["channel_bound"] and result["mechanism"] == SCRAM_SHA_256_PLUS
    assert result["client_first"].startswith(b"p=tls-server-end-point,,n=,r=")


def test_libpq_client_wrong_password(libpq_login: Callable[..., Any]) -> None:
    conn, result = libpq_login("alice", "nope", tls=True)
    assert conn.status == psycopg.pq.ConnStatus.BAD
    assert "password authentication failed" in conn.get_error_message()
    assert result["reason"] == "bad_proof"


def test_libpq_client_unknown_user(libpq_login: Callable[..., Any]) -> None:
    conn, result = libpq_login("mallory", "whatever", tls=False)
    assert conn.status == psycopg.pq.ConnStatus.BAD
    assert result["reason"] == "unknown_user"


def test_non_canonical_base64_proof_is_refused(verifier: ScramVerifier) -> None:
    # The proof's last base64 character carries unused bits; flipping only those must not authenticate.
    server, final = _started(verifier)
    proof_b64 = final.rsplit(b"p=", 1)[1]
    last = proof_b64.rstrip(b"=")[-1:]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = alphabet[alphabet.index(last) ^ 1 : (alphabet.index(last) ^ 1) + 1]  # same data bits, other filler
    mutated_b64 = proof_b64.rstrip(b"=")[:-1] + twin + b"=" * (len(proof_b64) - len(proof_b64.rstrip(b"=")))
    assert base64.b64decode(mutated_b64) == base64.b64decode(proof_b64)  # a real twin of the same proof
    with pytest.raises(AuthFailed) as exc:
        server.client_final(final[: -len(proof_b64)] + mutated_b64)
    assert exc.value.reason == "malformed"


# ------------------------------------------------------------------------------- unknown users: same work


def _work_per_step(monkeypatch: pytest.MonkeyPatch, verifier: ScramVerifier | None, **kwargs: Any) -> list[int]:
    """HMACs computed by each step of an exchange that ends with a wrong proof."""
    import proxy.auth.scram as scram

    calls: list[bytes] = []
    real = scram._hmac
    monkeypatch.setattr(scram, "_hmac", lambda key, msg: calls.append(msg) or real(key, msg))
    counts = []
    server = ScramServerExchange(verifier, username="alice", mock_secret=SECRET, **kwargs)
    counts.append(len(calls))
    client = ScramClient([SCRAM_SHA_256], "alice", "wrong horse")
    server_first = server.client_first(SCRAM_SHA_256, client.get_client_first().encode())
    counts.append(len(calls) - sum(counts))
    client.set_server_first(server_first.decode())
    with pytest.raises(AuthFailed):
        server.client_final(client.get_client_final().encode())
    counts.append(len(calls) - sum(counts))
    return counts


def test_known_and_unknown_users_do_the_same_work_at_every_step(
    monkeypatch: pytest.MonkeyPatch, verifier: ScramVerifier
) -> None:
    # The mock verifier is made for a real user too, at the same moment: no step is faster for either.
    known = _work_per_step(monkeypatch, verifier)
    unknown = _work_per_step(monkeypatch, None)
    assert known == unknown
    assert known[0] >= 3  # the mock's salt and keys are computed up front, for both


def test_mock_iteration_count_mimics_the_configured_users() -> None:
    assert mock_verifier("ghost", SECRET, iterations=((10000, 3),)).iterations == 10000
    mixed = ((4096, 1), (10000, 3))
    counts = [mock_verifier(f"ghost{i}", SECRET, iterations=mixed).iterations for i in range(400)]
    assert set(counts) == {4096, 10000}
    assert 0.6 < counts.count(10000) / len(counts) < 0.9  # drawn by the users' own proportions (3 in 4)
    # Stable per name, so probing twice cannot tell a mock from a real user.
    assert [mock_verifier(f"ghost{i}", SECRET, iterations=mixed).iterations for i in range(400)] == counts
    server = ScramServerExchange(None, username="ghost", mock_secret=SECRET, mock_iterations=((10000, 2),))
    assert server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").endswith(b",i=10000")
