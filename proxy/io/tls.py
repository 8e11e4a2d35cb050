"""TLS contexts: the proxy's server side toward clients, the client side toward backends, channel binding."""

from __future__ import annotations

import ssl

from proxy.auth.scram import tls_server_end_point
from proxy.config import BackendConfig, Config

# TLS 1.2 suites clients may use (TLS 1.3's own suites are all AEAD): forward-secret ECDHE with AES-GCM or
# ChaCha20-Poly1305 only, as Mozilla's "intermediate" profile; no CBC, RSA key exchange, SHA-1 MACs.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384"


def client_ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.tls.enabled:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    assert config.tls.cert_file and config.tls.key_file
    ctx.load_cert_chain(str(config.tls.cert_file), str(config.tls.key_file))
    return ctx


def own_channel_binding(config: Config) -> bytes | None:
    """tls-server-end-point data for the proxy's own certificate (first cert in the file)."""
    if not (config.tls.enabled and config.tls.channel_binding):
        return None
    assert config.tls.cert_file
    pem = config.tls.cert_file.read_text()
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return tls_server_end_point(ssl.PEM_cert_to_DER_cert(pem[start:end]))


def backend_ssl_context(backend: BackendConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if backend.sslmode in ("verify-ca", "verify-full"):
        assert backend.sslrootcert
        ctx.load_verify_locations(str(backend.sslrootcert))
        ctx.check_hostname = backend.sslmode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
