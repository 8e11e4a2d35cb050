"""Throwaway TLS material (a test CA plus server/client certificates) written to PEM files via trustme."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trustme

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ClientCert:
    """A client certificate (CN = ``name``) and its private key, signed by the test CA."""

    name: str
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a CA certificate and a server certificate/key pair it signed (all PEM)."""

    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    clients: dict[str, ClientCert] = field(default_factory=dict)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (PostgreSQL refuses group/world-readable keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def make_certs(
    directory: Path | str,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    *,
    client_names: Sequence[str] = (),
) -> TlsFiles:
    """Create ``ca.pem``, ``server.pem`` and ``server.key`` (plus ``client-<name>.*``) in ``directory``.

    The server certificate carries every entry of ``hostnames`` as a subjectAltName (IP addresses
    become IP SANs), so ``sslmode=verify-full`` works for ``localhost`` and ``127.0.0.1``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="pgtenant test CA")
    server = ca.issue_cert(*hostnames, common_name=hostnames[0] if hostnames else None)

    ca_file = out / "ca.pem"
    cert_file = out / "server.pem"
    key_file = out / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    _write_private(key_file, server.private_key_pem.bytes())

    clients: dict[str, ClientCert] = {}
    for name in client_names:
        leaf = ca.issue_cert(f"{name}.client.invalid", common_name=name)
        c_cert = out / f"client-{name}.pem"
        c_key = out / f"client-{name}.key"
        c_cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        _write_private(c_key, leaf.private_key_pem.bytes())
        clients[name] = ClientCert(name=name, cert_file=c_cert, key_file=c_key)

    return TlsFiles(directory=out, ca_file=ca_file, cert_file=cert_file, key_file=key_file, clients=clients)
