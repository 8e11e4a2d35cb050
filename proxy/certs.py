"""Self-signed TLS certificates for the proxy's client side (the demo, quick local set-ups).

A self-signed certificate is its own trust anchor: clients verify it with `sslmode=verify-full` and
`sslrootcert=<the certificate file>`. For production, use a certificate from your own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert_file: Path  # PEM certificate (also the `sslrootcert` clients verify it with)
    key_file: Path  # PEM private key, mode 0600


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def self_signed(
    directory: str | os.PathLike[str],
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    *,
    days: int = 30,
    common_name: str = "pgtenant",
    stem: str = "server",
) -> CertFiles:
    """Write `<stem>.pem` and `<stem>.key` (ECDSA P-256) valid for `hostnames` into `directory`.

    Every hostname becomes a subjectAltName (IP addresses as IP SANs), so `sslmode=verify-full`
    works for each of them.
    """
    if not hostnames:
        raise ValueError("at least one hostname is required")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgtenant (self-signed)"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hostnames]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file = out / f"{stem}.pem"
    key_file = out / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
    os.chmod(key_file, 0o600)
    return CertFiles(cert_file=cert_file, key_file=key_file)
