"""SCRAM-SHA-256(-PLUS) server side (the proxy authenticating its clients) plus PostgreSQL verifier tools."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

__all__ = [
    "DEFAULT_ITERATIONS",
    "SCRAM_SHA_256",
    "SCRAM_SHA_256_PLUS",
    "AuthFailReason",
    "AuthFailed",
    "IterationProfile",
    "ScramServerExchange",
    "ScramVerifier",
    "derive_keys",
    "encode_text",
    "make_verifier",
    "mock_verifier",
    "prepare_password",
    "tls_server_end_point",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING_TYPE = "tls-server-end-point"  # the only type PostgreSQL supports

DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
SALT_LEN = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
RAW_NONCE_LEN = 18  # PostgreSQL's SCRAM_RAW_NONCE_LEN (24 base64 characters, no padding)
KEY_LEN = 32  # SHA-256 digest size
_MAX_ITERATIONS = 2**31 - 1  # PostgreSQL stores the count in an int32

# The GS2 headers PostgreSQL accepts without an authzid, and their base64 form as sent back in 'c='.
_CBIND_PLUS_HEADER = b"p=" + CHANNEL_BINDING_TYPE.encode() + b",,"
_CBIND_N = b"biws"  # base64("n,,")
_CBIND_Y = b"eSws"  # base64("y,,")

AuthFailReason = Literal["unknown_user", "bad_proof", "malformed", "channel_binding", "bad_mechanism"]


class AuthFailed(Exception):
    """A client authentication attempt failed.

    ``reason`` is for logs and metrics only; the client must always get the same generic message.
    ``detail`` is a human-readable explanation for logs; it never contains secrets.
    """

    def __init__(self, reason: AuthFailReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: AuthFailReason = reason
        self.detail = detail


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str | bytes) -> bytes:
    """Strict base64 decoding; ValueError on any non-alphabet byte, bad padding, or non-canonical encoding
    (unused trailing bits set), so each value has exactly one accepted spelling."""
    raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    decoded = base64.b64decode(raw, validate=True)
    if base64.b64encode(decoded) != raw:
        raise ValueError("non-canonical base64")
    return decoded


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def encode_text(text: str) -> bytes:
    """UTF-8, keeping undecodable bytes smuggled in as surrogates (os.environ, argv) as they were."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------------------------------------
# SASLprep exactly as PostgreSQL's src/common/saslprep.c applies it
# --------------------------------------------------------------------------------------------------------

_PROHIBITED_TABLES = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def _pg_saslprep(text: str) -> str | None:
    """Return the SASLprep'd text, or None where PostgreSQL's pg_saslprep() reports PROHIBITED.

    Mirrors PostgreSQL rather than RFC 4013 to the letter: pure ASCII is returned untouched (even
    control characters), non-ASCII spaces are mapped to ' ' *before* the "mapped to nothing" table
    (so U+200B becomes a space), an empty mapped string is prohibited, and the prohibited/unassigned/
    bidi checks run on the mapped input before NFKC normalization.
    """
    if text.isascii():
        return text
    mapped: list[str] = []
    for ch in text:
        if stringprep.in_table_c12(ch):
            mapped.append(" ")
        elif not stringprep.in_table_b1(ch):
            mapped.append(ch)
    if not mapped:
        return None
    for ch in mapped:
        if stringprep.in_table_a1(ch) or any(table(ch) for table in _PROHIBITED_TABLES):
            return None
    if any(stringprep.in_table_d1(ch) for ch in mapped):
        if any(stringprep.in_table_d2(ch) for ch in mapped):
            return None
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return None
    return unicodedata.normalize("NFKC", "".join(mapped))


def prepare_password(password: str) -> bytes:
    """The bytes PostgreSQL feeds to PBKDF2: SASLprep'd UTF-8, or the raw bytes when SASLprep refuses.

    Used both for verifiers and by the proxy's own SCRAM client toward the backend (libpq does the same).
    """
    raw = encode_text(password)
    if b"\x00" in raw:
        raise ValueError("a PostgreSQL password cannot contain a NUL character")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # SASLPREP_INVALID_UTF8: PostgreSQL uses the password as is
    prepared = _pg_saslprep(text)
    return raw if prepared is None else prepared.encode("utf-8")


def derive_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) for a password, as PostgreSQL and libpq compute them (RFC 5802)."""
    salted_password = hashlib.pbkdf2_hmac("sha256", prepare_password(password), salt, iterations)
    client_key = _hmac(salted_password, b"Client Key")
    return client_key, hashlib.sha256(client_key).digest(), _hmac(salted_password, b"Server Key")


# --------------------------------------------------------------------------------------------------------
# Verifiers
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScramVerifier:
    """A SCRAM-SHA-256 secret as stored in pg_authid.rolpassword (keys are left out of repr())."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int):
            raise TypeError("iterations must be an int")
        if not 1 <= self.iterations <= _MAX_ITERATIONS:
            raise ValueError(f"iteration count must be between 1 and {_MAX_ITERATIONS}")
        if not self.salt:
            raise ValueError("salt must not be empty")
        for name, key in (("StoredKey", self.stored_key), ("ServerKey", self.server_key)):
            if len(key) != KEY_LEN:
                raise ValueError(f"{name} must be {KEY_LEN} bytes, got {len(key)}")

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Parse 'SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>'.

        Raises ValueError naming the faulty part; the message never echoes key material.
        """
        fmt = "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
        if not isinstance(text, str):
            raise ValueError(f"SCRAM verifier must be a str of the form {fmt}")
        parts = text.split("$")
        if len(parts) != 3:
            raise ValueError(f"SCRAM verifier must have three '$'-separated parts: {fmt}")
        scheme, iter_salt, keys = parts
        if scheme != SCRAM_SHA_256:
            shown = scheme if len(scheme) <= 20 else scheme[:20] + "..."
            raise ValueError(f"unsupported verifier scheme {shown!r}, expected {SCRAM_SHA_256!r}")
        iter_str, sep, salt_str = iter_salt.partition(":")
        if not sep:
            raise ValueError(f"SCRAM verifier is missing the ':' between iteration count and salt: {fmt}")
        if not (iter_str.isascii() and iter_str.isdigit()):
            raise ValueError("SCRAM verifier iteration count must be a positive decimal integer")
        iterations = int(iter_str) if len(iter_str) <= 10 else 0
        if not 1 <= iterations <= _MAX_ITERATIONS:
            raise ValueError(f"SCRAM verifier iteration count must be between 1 and {_MAX_ITERATIONS}")
        try:
            salt = _b64decode(salt_str)
        except ValueError:
            raise ValueError("SCRAM verifier salt is not valid base64") from None
        if not salt:
            raise ValueError("SCRAM verifier salt is empty")
        stored_str, sep, server_str = keys.partition(":")
        if not sep:
            raise ValueError(f"SCRAM verifier is missing the ':' between StoredKey and ServerKey: {fmt}")
        decoded: list[bytes] = []
        for name, value in (("StoredKey", stored_str), ("ServerKey", server_str)):
            try:
                key = _b64decode(value)
            except ValueError:
                raise ValueError(f"SCRAM verifier {name} is not valid base64") from None
            if len(key) != KEY_LEN:
                raise ValueError(f"SCRAM verifier {name} must decode to {KEY_LEN} bytes, got {len(key)}")
            decoded.append(key)
        return cls(iterations=iterations, salt=salt, stored_key=decoded[0], server_key=decoded[1])

    def __str__(self) -> str:
        keys = f"{_b64(self.stored_key)}:{_b64(self.server_key)}"
        return f"{SCRAM_SHA_256}${self.iterations}:{_b64(self.salt)}${keys}"


def make_verifier(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramVerifier:
    """Build the verifier PostgreSQL's own scram_build_secret() would store for this password."""
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError("iterations must be an int")
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be between 1 and {_MAX_ITERATIONS}")
    if salt is None:
        salt = secrets.token_bytes(SALT_LEN)
    elif not salt:
        raise ValueError("salt must not be empty")
    _, stored_key, server_key = derive_keys(password, salt, iterations)
    return ScramVerifier(iterations=iterations, salt=salt, stored_key=stored_key, server_key=server_key)


# How many configured users have each iteration count: ((count, users), ...), the profile mocks are drawn from.
IterationProfile = tuple[tuple[int, int], ...]


def mock_verifier(
    username: str, secret: bytes, *, iterations: int | IterationProfile = DEFAULT_ITERATIONS
) -> ScramVerifier:
    """A deterministic fake verifier for a user that does not exist (cf. PostgreSQL's scram_mock_salt()).

    The same username always gets the same salt and iteration count, so probing twice cannot tell a mock from
    a real user. ``iterations`` is one count, or the configured users' profile: each name then gets a count
    drawn (deterministically) in the users' own proportions, so a count used by real users is no tell.
    ``secret`` must be unguessable (say 32 random bytes) and stable across restarts and replicas;
    otherwise the salt handed out for an unknown user can be predicted or changes, giving the game away.
    The work is the same whatever the arguments (four HMACs), so it can be done for every login.
    """
    if not secret:
        raise ValueError("mock secret must not be empty")
    user = encode_text(username)
    profile = ((iterations, 1),) if isinstance(iterations, int) else iterations
    total = sum(weight for _, weight in profile)
    if total < 1:
        raise ValueError("the iteration profile must hold at least one user")
    pick = int.from_bytes(_hmac(secret, b"iterations\x00" + user)[:8], "big") * total >> 64
    chosen = profile[-1][0]
    for count, weight in profile:
        if pick < weight:
            chosen = count
            break
        pick -= weight
    return ScramVerifier(
        iterations=chosen,
        salt=_hmac(secret, b"salt\x00" + user)[:SALT_LEN],
        stored_key=_hmac(secret, b"stored-key\x00" + user),
        server_key=_hmac(secret, b"server-key\x00" + user),
    )


def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 tls-server-end-point channel binding data for a DER certificate.

    The certificate is hashed with its signature's hash algorithm, MD5 and SHA-1 being replaced by SHA-256.
    Raises ValueError when the binding is undefined (e.g. Ed25519/Ed448 signatures have no separate hash);
    the caller should then not offer SCRAM-SHA-256-PLUS.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise ValueError("not a valid DER-encoded X.509 certificate") from exc
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise ValueError("unsupported certificate signature algorithm for tls-server-end-point") from exc
    if algorithm is None:
        raise ValueError("certificate signature algorithm has no hash; tls-server-end-point is undefined")
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return digest.finalize()


# --------------------------------------------------------------------------------------------------------
# Server exchange
# --------------------------------------------------------------------------------------------------------


def _is_printable(value: bytes) -> bool:
    """RFC 5802 'printable': %x21-2B / %x2D-7E (a comma is excluded by the caller's split)."""
    return bool(value) and all(0x21 <= b <= 0x7E and b != 0x2C for b in value)


def _check_attrs(parts: list[bytes], what: str) -> None:
    """Every SCRAM attribute must look like <ALPHA>=<value>."""
    for part in parts:
        if len(part) < 2 or part[1:2] != b"=" or not (0x41 <= part[0] <= 0x5A or 0x61 <= part[0] <= 0x7A):
            raise AuthFailed("malformed", f"invalid attribute in {what}")


class _Stage(Enum):
    EXPECT_CLIENT_FIRST = 1
    EXPECT_CLIENT_FINAL = 2
    FINISHED = 3  # succeeded or failed: nothing more is accepted


class ScramServerExchange:
    """One SCRAM-SHA-256(-PLUS) exchange for one client connection."""

    def __init__(
        self,
        verifier: ScramVerifier | None,
        *,
        username: str,
        mock_secret: bytes,
        channel_binding: bytes | None = None,
        mock_iterations: int | IterationProfile = DEFAULT_ITERATIONS,
    ) -> None:
        """``verifier`` None means the user is unknown: a mock exchange runs and fails at the very end.

        ``channel_binding`` is tls_server_end_point() of the proxy's certificate when the client session
        is on TLS (then SCRAM-SHA-256-PLUS is offered), else None. ``mock_iterations`` should be the
        configured users' iteration profile so unknown users are indistinguishable.
        The mock verifier is made for known users too, here, so every step costs the same for both.
        """
        if channel_binding is not None and not channel_binding:
            raise ValueError("channel_binding data must not be empty")
        if not mock_secret:  # checked for known users too, so a misconfiguration shows up at once
            raise ValueError("mock secret must not be empty")
        mock = mock_verifier(username, mock_secret, iterations=mock_iterations)
        self._doomed = verifier is None
        self._verifier = mock if verifier is None else verifier
        self._cbind_data = channel_binding
        self._stage = _Stage.EXPECT_CLIENT_FIRST
        self._use_plus = False
        self._cbind_flag = b""
        self._client_first_bare = b""
        self._server_first = b""
        self._nonce = b""
        self._succeeded = False

    # -- public API ------------------------------------------------------------------------------------

    def mechanisms(self) -> list[str]:
        """SASL mechanisms to advertise in AuthenticationSASL, preferred first."""
        if self._cbind_data is not None:
            return [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        return [SCRAM_SHA_256]

    @property
    def succeeded(self) -> bool:
        """True once client_final() has accepted the client's proof."""
        return self._succeeded

    @property
    def channel_bound(self) -> bool:
        """True when the (successful) exchange used SCRAM-SHA-256-PLUS, i.e. the TLS channel is bound."""
        return self._succeeded and self._use_plus

    def client_first(self, mechanism: str, data: bytes) -> bytes:
        """Take the SASLInitialResponse (mechanism name and client-first-message); return server-first.

        An absent initial response (length -1) must be passed as b"" and is rejected: libpq and every
        other driver send it, and PostgreSQL's empty-challenge round trip is not worth the extra state.
        """
        self._expect(_Stage.EXPECT_CLIENT_FIRST)
        try:
            server_first = self._client_first(mechanism, data)
        except AuthFailed:
            self._stage = _Stage.FINISHED
            raise
        self._stage = _Stage.EXPECT_CLIENT_FINAL
        return server_first

    def client_final(self, data: bytes) -> bytes:
        """Take the SASLResponse (client-final-message); return server-final ('v=...') or raise AuthFailed."""
        self._expect(_Stage.EXPECT_CLIENT_FINAL)
        self._stage = _Stage.FINISHED  # success or failure, this exchange is over
        server_final = self._client_final(data)
        self._succeeded = True
        return server_final

    # -- internals -------------------------------------------------------------------------------------

    def _expect(self, stage: _Stage) -> None:
        if self._stage is not stage:
            self._stage = _Stage.FINISHED
            raise AuthFailed("malformed", "SCRAM message received out of order")

    def _client_first(self, mechanism: str, data: bytes) -> bytes:
        if mechanism == SCRAM_SHA_256_PLUS and self._cbind_data is not None:
            self._use_plus = True
        elif mechanism == SCRAM_SHA_256:
            self._use_plus = False
        else:
            raise AuthFailed("bad_mechanism", "client selected a SASL mechanism that was not offered")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise AuthFailed("malformed", "client-first-message is not bytes")
        data = bytes(data)
        if not data:
            raise AuthFailed("malformed", "empty client-first-message")
        if b"\x00" in data:
            raise AuthFailed("malformed", "NUL byte in client-first-message")

        # gs2-header: gs2-cbind-flag "," [authzid] ","
        flag, sep, rest = data.partition(b",")
        if not sep:
            raise AuthFailed("malformed", "client-first-message has no GS2 header")
        if flag == b"n":
            if self._use_plus:
                raise AuthFailed("channel_binding", "client selected PLUS but sent no channel binding")
        elif flag == b"y":
            if self._use_plus:
                raise AuthFailed("channel_binding", "client selected PLUS but sent no channel binding")
            if self._cbind_data is not None:
                raise AuthFailed(
                    "channel_binding",
                    "client thinks the server does not support channel binding, but it does (downgrade?)",
                )
        elif flag.startswith(b"p="):
            if not self._use_plus:
                raise AuthFailed("channel_binding", "client selected SCRAM-SHA-256 but sent channel binding")
            if flag[2:] != CHANNEL_BINDING_TYPE.encode():
                raise AuthFailed("channel_binding", "unsupported channel binding type")
        else:
            raise AuthFailed("malformed", "unexpected GS2 channel binding flag")
        authzid, sep, bare = rest.partition(b",")
        if not sep:
            raise AuthFailed("malformed", "GS2 header is not terminated")
        if authzid:
            raise AuthFailed("malformed", "authorization identity (authzid) is not supported")

        # client-first-message-bare: [reserved-mext ","] username "," nonce ["," extensions]
        parts = bare.split(b",")
        _check_attrs(parts, "client-first-message")
        if parts[0].startswith(b"m="):
            raise AuthFailed("malformed", "client requires an unsupported SCRAM extension")
        if len(parts) < 2 or not parts[0].startswith(b"n=") or not parts[1].startswith(b"r="):
            raise AuthFailed("malformed", "client-first-message must start with n= and r=")
        # parts[0]: the SCRAM username is ignored, like PostgreSQL (libpq sends "n=").
        client_nonce = parts[1][2:]
        if not _is_printable(client_nonce):
            raise AuthFailed("malformed", "client nonce is empty or not printable")

        self._cbind_flag = flag[:1]
        self._client_first_bare = bare
        self._nonce = client_nonce + self._new_server_nonce()
        self._server_first = b"r=%s,s=%s,i=%d" % (
            self._nonce,
            base64.b64encode(self._verifier.salt),
            self._verifier.iterations,
        )
        return self._server_first

    def _new_server_nonce(self) -> bytes:
        """Fresh random server nonce (overridden only by known-answer tests)."""
        return base64.b64encode(secrets.token_bytes(RAW_NONCE_LEN))

    def _client_final(self, data: bytes) -> bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise AuthFailed("malformed", "client-final-message is not bytes")
        data = bytes(data)
        if b"\x00" in data:
            raise AuthFailed("malformed", "NUL byte in client-final-message")

        # client-final-message: "c=" cbind "," "r=" nonce ["," extensions] "," "p=" proof
        parts = data.split(b",")
        _check_attrs(parts, "client-final-message")
        if (
            len(parts) < 3
            or not parts[0].startswith(b"c=")
            or not parts[1].startswith(b"r=")
            or not parts[-1].startswith(b"p=")
        ):
            raise AuthFailed("malformed", "client-final-message must be c=...,r=...,p=...")
        cbind = parts[0][2:]
        final_nonce = parts[1][2:]
        try:
            proof = _b64decode(parts[-1][2:])
        except ValueError:
            raise AuthFailed("malformed", "client proof is not valid base64") from None
        if len(proof) != KEY_LEN:
            raise AuthFailed("malformed", "client proof has the wrong length")
        without_proof = data[: len(data) - len(parts[-1]) - 1]

        if self._use_plus:
            assert self._cbind_data is not None
            expected = base64.b64encode(_CBIND_PLUS_HEADER + self._cbind_data)
            if not hmac.compare_digest(cbind, expected):
                raise AuthFailed("channel_binding", "channel binding data does not match the TLS certificate")
        elif not (
            (cbind == _CBIND_N and self._cbind_flag == b"n")
            or (cbind == _CBIND_Y and self._cbind_flag == b"y")
        ):
            raise AuthFailed(
                "channel_binding", "unexpected channel binding attribute in client-final-message"
            )

        if not hmac.compare_digest(final_nonce, self._nonce):
            raise AuthFailed("malformed", "client-final nonce does not match")

        # Verify the proof even for an unknown user, so both failures cost the same.
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))
        client_signature = _hmac(self._verifier.stored_key, auth_message)
        client_key = _xor(proof, client_signature)
        proof_ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), self._verifier.stored_key)
        if self._doomed:
            raise AuthFailed("unknown_user", "no such user (mock exchange)")
        if not proof_ok:
            raise AuthFailed("bad_proof", "password authentication failed")
        return b"v=" + base64.b64encode(_hmac(self._verifier.server_key, auth_message))
