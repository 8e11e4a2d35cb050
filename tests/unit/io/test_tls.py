"""The client TLS context's suites (proxy.io.tls)."""

from __future__ import annotations

import ssl

from proxy.io.tls import TLS12_CIPHERS


def test_tls12_suites_are_forward_secret_aead_only() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers(TLS12_CIPHERS)
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["name"].startswith("ECDHE-") for c in tls12)
    assert "ECDHE-ECDSA-AES256-SHA384" not in {c["name"] for c in ctx.get_ciphers()}
