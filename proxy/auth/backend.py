"""Sans-I/O client-side authentication the proxy performs toward a PostgreSQL backend."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from enum import Enum

from proxy.auth.scram import (
    CHANNEL_BINDING_TYPE,
    KEY_LEN,
    RAW_NONCE_LEN,
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    derive_keys,
    encode_text,
)
from proxy.protocol import messages as m

__all__ = ["BackendAuthError", "BackendAuthenticator"]

_UNSUPPORTED = {
    m.AUTH_KERBEROS_V5: "KerberosV5",
    m.AUTH_SCM_CREDENTIAL: "SCM credential",
    m.AUTH_GSS: "GSSAPI",
    m.AUTH_GSS_CONTINUE: "GSSAPI",
    m.AUTH_SSPI: "SSPI",
}

# DoS guard against a hostile backend: PBKDF2 runs in the caller's thread (PostgreSQL's default is 4096;
# 10 million iterations already cost seconds of CPU).
MAX_BACKEND_ITERATIONS = 10_000_000


class BackendAuthError(Exception):
    """Authentication toward the backend cannot proceed; the message is meant for logs and 08xxx errors."""


class _State(Enum):
    START = "start"  # waiting for the backend's first authentication request
    SASL_FIRST_SENT = "sasl_first_sent"  # sent SASLInitialResponse, expecting SASLContinue
    SASL_FINAL_SENT = "sasl_final_sent"  # sent client-final, expecting SASLFinal
    AWAIT_OK = "await_ok"  # credentials sent (or server signature verified), expecting AuthenticationOk
    DONE = "done"  # AuthenticationOk received


class _Event(Enum):
    PASSWORD_SENT = "password_sent"  # a cleartext or md5 password answered the backend's request
    SASL_STARTED = "sasl_started"  # AuthenticationSASL answered with SASLInitialResponse
    SASL_CONTINUED = "sasl_continued"  # AuthenticationSASLContinue answered with the client-final message
    SASL_VERIFIED = "sasl_verified"  # AuthenticationSASLFinal carried the server signature we expected
    OK = "ok"  # AuthenticationOk


# The exchange as data: (state, event) -> next state. The request handlers refuse anything else with their own
# message first (a backend skipping a step is refused before the table is asked).
TRANSITIONS: dict[tuple[_State, _Event], _State] = {
    (_State.START, _Event.PASSWORD_SENT): _State.AWAIT_OK,
    (_State.START, _Event.SASL_STARTED): _State.SASL_FIRST_SENT,
    (_State.SASL_FIRST_SENT, _Event.SASL_CONTINUED): _State.SASL_FINAL_SENT,
    (_State.SASL_FINAL_SENT, _Event.SASL_VERIFIED): _State.AWAIT_OK,
    (_State.START, _Event.OK): _State.DONE,  # trust
    (_State.AWAIT_OK, _Event.OK): _State.DONE,
}


def _escape_username(user: str) -> bytes:
    """RFC 5802 saslname escaping; PostgreSQL ignores the value, but other SCRAM servers may parse it."""
    return encode_text(user).replace(b"=", b"=3D").replace(b",", b"=2C")


class BackendAuthenticator:
    """Answers the backend's authentication requests for one server connection.

    Feed the body of every 'R' message to on_auth_request() and send what it returns. Supports trust,
    cleartext password, md5 and SCRAM-SHA-256(-PLUS); the SCRAM server signature is always verified, so a
    backend (or a man in the middle) cannot skip or fake the end of the exchange.
    """

    def __init__(self, user: str, password: str | None, *, channel_binding: bytes | None = None) -> None:
        """``channel_binding`` is tls_server_end_point() of the backend's certificate when the server
        connection uses TLS; with it, SCRAM-SHA-256-PLUS is chosen when the backend offers it.
        """
        if channel_binding is not None and not channel_binding:
            raise ValueError("channel_binding data must not be empty")
        if password is not None and "\x00" in password:
            raise ValueError("a PostgreSQL password cannot contain a NUL character")
        self._user = user
        self._password = password
        self._cbind_data = channel_binding
        self._state = _State.START
        self._method: str | None = None
        # SCRAM state
        self._gs2_header = b""
        self._client_nonce = b""
        self._client_first_bare = b""
        self._expected_server_signature = b""

    def _transition(self, event: _Event) -> None:
        nxt = TRANSITIONS.get((self._state, event))
        if nxt is None:
            raise BackendAuthError(f"backend authentication: unexpected {event.value} in state {self._state.value}")
        self._state = nxt

    @property
    def done(self) -> bool:
        """True once the backend has sent AuthenticationOk."""
        return self._state is _State.DONE

    @property
    def method(self) -> str | None:
        """The method the backend asked for: 'trust', 'password', 'md5', 'SCRAM-SHA-256[-PLUS]' (or None)."""
        return self._method

    @property
    def channel_bound(self) -> bool:
        """True when authentication completed with SCRAM-SHA-256-PLUS."""
        return self.done and self._method == SCRAM_SHA_256_PLUS

    def on_auth_request(self, body: bytes) -> bytes | None:
        """Handle one AuthenticationRequest body; return the full message to send, or None."""
        body = bytes(body)
        try:
            code, payload = m.decode_authentication(body)
        except m.DecodeError:
            raise BackendAuthError("malformed authentication request from backend (shorter than 4 bytes)") from None
        if self._state is _State.DONE:
            raise BackendAuthError(f"backend sent authentication request {code} after AuthenticationOk")

        if code == m.AUTH_OK:
            return self._on_ok(payload)
        if code == m.AUTH_CLEARTEXT:
            self._expect_start("password")
            self._method = "password"
            password = self._require_password("cleartext password authentication")
            self._transition(_Event.PASSWORD_SENT)
            return m.password_message(encode_text(password) + b"\x00")
        if code == m.AUTH_MD5:
            self._expect_start("md5")
            self._method = "md5"
            if len(payload) != 4:
                raise BackendAuthError("malformed AuthenticationMD5Password request (salt must be 4 bytes)")
            password = self._require_password("md5")
            inner = hashlib.md5(encode_text(password) + encode_text(self._user)).hexdigest().encode("ascii")
            outer = b"md5" + hashlib.md5(inner + payload).hexdigest().encode("ascii")
            self._transition(_Event.PASSWORD_SENT)
            return m.password_message(outer + b"\x00")
        if code == m.AUTH_SASL:
            self._expect_start("SASL")
            return self._on_sasl(payload)
        if code == m.AUTH_SASL_CONTINUE:
            if self._state is not _State.SASL_FIRST_SENT:
                raise BackendAuthError("backend sent an unexpected AuthenticationSASLContinue")
            return self._on_sasl_continue(payload)
        if code == m.AUTH_SASL_FINAL:
            if self._state is not _State.SASL_FINAL_SENT:
                raise BackendAuthError("backend sent an unexpected AuthenticationSASLFinal")
            self._on_sasl_final(payload)
            return None
        name = _UNSUPPORTED.get(code)
        if name is not None:
            raise BackendAuthError(
                f"backend requested {name} authentication, which the proxy does not support"
            )
        raise BackendAuthError(f"backend requested an unknown authentication method (code {code})")

    # -- helpers ---------------------------------------------------------------------------------------

    def _expect_start(self, what: str) -> None:
        if self._state is not _State.START:
            raise BackendAuthError(
                f"backend requested {what} authentication in the middle of another exchange"
            )

    def _require_password(self, what: str) -> str:
        if self._password is None:
            raise BackendAuthError(f"backend requested {what} but no password is configured")
        return self._password

    def _on_ok(self, payload: bytes) -> None:
        if self._state in (_State.SASL_FIRST_SENT, _State.SASL_FINAL_SENT):
            # Accepting this would let a fake server skip proving it knows the password (and the binding).
            raise BackendAuthError("backend sent AuthenticationOk before completing the SCRAM exchange")
        if self._state is _State.START:
            self._method = "trust"
        self._transition(_Event.OK)
        return None

    def _on_sasl(self, payload: bytes) -> bytes:
        try:
            names = m.decode_sasl_mechanisms(payload)
        except m.DecodeError as exc:
            raise BackendAuthError(f"malformed AuthenticationSASL request ({exc})") from None
        if SCRAM_SHA_256_PLUS in names and self._cbind_data is not None:
            mechanism = SCRAM_SHA_256_PLUS
            self._gs2_header = b"p=" + CHANNEL_BINDING_TYPE.encode("ascii") + b",,"
        elif SCRAM_SHA_256 in names:
            mechanism = SCRAM_SHA_256
            # 'y': we could bind but the server did not offer PLUS (a PLUS-capable server then refuses it).
            self._gs2_header = b"y,," if self._cbind_data is not None else b"n,,"
        else:
            offered = ", ".join(names) or "none"
            raise BackendAuthError(f"backend offered no supported SASL mechanism (offered: {offered})")
        self._require_password(mechanism)
        self._method = mechanism
        self._client_nonce = base64.b64encode(secrets.token_bytes(RAW_NONCE_LEN))
        self._client_first_bare = b"n=" + _escape_username(self._user) + b",r=" + self._client_nonce
        client_first = self._gs2_header + self._client_first_bare
        self._transition(_Event.SASL_STARTED)
        return m.SASLInitialResponse(mechanism, client_first).encode()

    def _on_sasl_continue(self, server_first: bytes) -> bytes:
        if server_first.startswith(b"e="):
            raise BackendAuthError(f"backend reported a SCRAM error: {_printable(server_first[2:])}")
        parts = server_first.split(b",")
        if len(parts) < 3 or parts[0][:2] != b"r=" or parts[1][:2] != b"s=" or parts[2][:2] != b"i=":
            raise BackendAuthError("malformed SCRAM server-first-message from backend")
        nonce = parts[0][2:]
        if (
            len(nonce) <= len(self._client_nonce)
            or not hmac.compare_digest(nonce[: len(self._client_nonce)], self._client_nonce)
            or not all(0x21 <= b <= 0x7E for b in nonce)
        ):
            raise BackendAuthError("invalid SCRAM response from backend (nonce mismatch)")
        try:
            salt = base64.b64decode(parts[1][2:], validate=True)
        except ValueError:
            raise BackendAuthError(
                "malformed SCRAM server-first-message from backend (invalid salt)"
            ) from None
        iter_str = parts[2][2:]
        if not salt or not iter_str.isdigit() or len(iter_str) > 10:
            raise BackendAuthError(
                "malformed SCRAM server-first-message from backend (invalid salt or iterations)"
            )
        iterations = int(iter_str)
        if not 1 <= iterations <= MAX_BACKEND_ITERATIONS:
            raise BackendAuthError(
                f"backend asked for {iterations} SCRAM iterations; "
                f"the proxy allows 1..{MAX_BACKEND_ITERATIONS}"
            )

        assert self._password is not None  # checked in _on_sasl
        client_key, stored_key, server_key = derive_keys(self._password, salt, iterations)
        cbind_input = self._gs2_header
        if self._gs2_header.startswith(b"p="):
            assert self._cbind_data is not None
            cbind_input += self._cbind_data
        without_proof = b"c=" + base64.b64encode(cbind_input) + b",r=" + nonce
        auth_message = b",".join((self._client_first_bare, server_first, without_proof))
        client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        self._expected_server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        self._transition(_Event.SASL_CONTINUED)
        return m.password_message(without_proof + b",p=" + base64.b64encode(proof))

    def _on_sasl_final(self, server_final: bytes) -> None:
        if server_final.startswith(b"e="):
            raise BackendAuthError(f"backend reported a SCRAM error: {_printable(server_final[2:])}")
        first = server_final.split(b",", 1)[0]
        if first[:2] != b"v=":
            raise BackendAuthError("malformed SCRAM server-final-message from backend")
        try:
            signature = base64.b64decode(first[2:], validate=True)
        except ValueError:
            raise BackendAuthError(
                "malformed SCRAM server-final-message from backend (invalid base64)"
            ) from None
        if len(signature) != KEY_LEN or not hmac.compare_digest(signature, self._expected_server_signature):
            raise BackendAuthError("backend's SCRAM server signature is invalid (wrong password or impostor)")
        self._transition(_Event.SASL_VERIFIED)


def _printable(raw: bytes, limit: int = 80) -> str:
    """A short log-safe rendering of backend-supplied bytes."""
    text = raw[:limit].decode("ascii", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)
