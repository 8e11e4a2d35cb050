"""Authentication core without I/O: SCRAM server for clients, backend auth client, failed-login throttle."""

from proxy.auth.backend import BackendAuthenticator, BackendAuthError
from proxy.auth.scram import (
    AuthFailed,
    ScramServerExchange,
    ScramVerifier,
    make_verifier,
    mock_verifier,
    tls_server_end_point,
)
from proxy.auth.throttle import AuthThrottle

__all__ = [
    "AuthFailed",
    "AuthThrottle",
    "BackendAuthError",
    "BackendAuthenticator",
    "ScramServerExchange",
    "ScramVerifier",
    "make_verifier",
    "mock_verifier",
    "tls_server_end_point",
]
