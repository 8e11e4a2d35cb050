"""Where the registry lives against where tenants are served: no database tenant in the registry's database."""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Mapping

from psycopg.conninfo import conninfo_to_dict

from proxy.config import Config, ConfigError

# A database-strategy tenant may take advisory locks and LISTEN/NOTIFY in its own database. Served from the
# registry's database it could hold the instance slots' locks (new instances cannot start) and NOTIFY the registry's
# channel (every proxy reloads): red team 8b F2/F3. So such a config is refused, comparing the registry DSN's
# server (host and port as resolved, libpq's defaults filled in) and database with each database tenant's.

LOCAL = "local"  # a Unix-domain socket, a loopback address, or an address of this host: one server per port here
Resolve = Callable[[str], set[str]]


def addresses(host: str) -> set[str]:
    """The IP addresses `host` resolves to (blocking); its name alone when it does not resolve."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return {host.lower()}


def registry_target(dsn: str, env: Mapping[str, str] | None = None) -> tuple[list[str], list[int], str]:
    """The registry DSN's hosts, ports and database, with libpq's defaults (PGHOST, PGPORT, PGDATABASE, PGUSER, the
    Unix-domain socket, 5432, the user's name) where it gives none."""
    env = os.environ if env is None else env
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v not in (None, "")}
    hosts = str(params.get("host") or params.get("hostaddr") or env.get("PGHOST") or env.get("PGHOSTADDR") or "")
    ports = str(params.get("port") or env.get("PGPORT") or "5432")
    user = str(params.get("user") or env.get("PGUSER") or getpass.getuser())
    dbname = str(params.get("dbname") or env.get("PGDATABASE") or user)
    return hosts.split(","), [int(p) if p else 5432 for p in ports.split(",")], dbname


def _servers(hosts: Iterable[str], ports: list[int], resolve: Resolve, here: set[str]) -> set[tuple[str, int]]:
    """(address, port) of each host (libpq pairs the i-th host with the i-th port, or all with a single one)."""
    out: set[tuple[str, int]] = set()
    for i, host in enumerate(hosts):
        port = ports[i] if len(ports) > 1 and i < len(ports) else ports[0]
        if not host or host.startswith(("/", "@")):
            out.add((LOCAL, port))
            continue
        for address in resolve(host):
            out.add((LOCAL if _is_local(address, here) else address, port))
    return out


def _is_local(address: str, here: set[str]) -> bool:
    try:
        if ipaddress.ip_address(address.split("%")[0]).is_loopback:
            return True
    except ValueError:
        return address in ("localhost",)
    return address in here


def check(config: Config, resolve: Resolve = addresses, *, dsn: str | None = None,
          env: Mapping[str, str] | None = None, hostname: str | None = None) -> None:
    """ConfigError naming the first database-strategy tenant served from the registry's database (`dsn`, else the
    config's registry.dsn)."""
    dsn = dsn or config.registry.dsn
    if not dsn:
        return
    try:
        hosts, ports, dbname = registry_target(dsn, env)
    except Exception as exc:  # a DSN libpq cannot parse: connecting to it reports that
        raise ConfigError(f"registry.dsn: not a valid connection string ({type(exc).__name__})") from None
    suspects = [t for t in config.tenants.values() if t.strategy == "database" and t.database == dbname]
    if not suspects:
        return
    here = resolve(hostname if hostname is not None else socket.gethostname())
    registry = _servers(hosts, ports, resolve, here)
    for tenant in suspects:
        backend = config.backend_for(tenant)
        if registry & _servers([backend.host], [backend.port], resolve, here):
            raise ConfigError(
                f"tenants.{tenant.name}: a database-strategy tenant may not be served from the registry's database "
                f"(database {dbname!r} of backend {backend.describe()} is the registry's): its sessions "
                "could take the instance slots' advisory locks and NOTIFY the registry's channel; put the registry "
                "in a database of its own")
