"""Where the registry lives against where tenants are served: no database tenant in the registry's database."""

from __future__ import annotations

import configparser
import getpass
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from proxy.config import Config, ConfigError

# A database-strategy tenant may take advisory locks and LISTEN/NOTIFY in its own database. Served from the
# registry's database it could hold the instance slots' locks (new instances cannot start) and NOTIFY the registry's
# channel (every proxy reloads): red team 8b F2/F3. So such a config is refused, comparing the registry DSN's
# server (host and port as resolved, libpq's defaults filled in) and database with each database tenant's.

LOCAL = "local"  # a Unix-domain socket, a loopback address, or an address of this host: one server per port here
Resolve = Callable[[str], set[str]]
Here = Callable[[str], bool]  # whether an IP address is one of this host's (any interface)


def addresses(host: str) -> set[str]:
    """The IP addresses `host` resolves to (blocking); its name alone when it does not resolve."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return {host.lower()}


def bindable(address: str) -> bool:
    """Whether `address` is one of this host's own (a socket can be bound to it): every interface, not only those
    the host name resolves to (red team 9b N6)."""
    try:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
        return True
    except (OSError, ValueError, UnicodeError):
        return False


def _service(name: str, env: Mapping[str, str]) -> dict[str, str]:
    """The parameters of libpq's connection service `name` (PGSERVICEFILE or ~/.pg_service.conf, then
    PGSYSCONFDIR/pg_service.conf); ConfigError when no file this can read defines it."""
    files = [Path(env["PGSERVICEFILE"]) if env.get("PGSERVICEFILE") else Path("~/.pg_service.conf").expanduser()]
    if env.get("PGSYSCONFDIR"):
        files.append(Path(env["PGSYSCONFDIR"]) / "pg_service.conf")
    for file in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(file, encoding="utf-8")
        except (OSError, configparser.Error, UnicodeError):
            continue
        if parser.has_section(name):
            return {k: v for k, v in parser.items(name) if v}
    raise ConfigError(f"registry.dsn: service {name!r} is not defined in a service file pgtenant can read "
                      f"({', '.join(str(f) for f in files)}): give host, port and dbname in the DSN (or set "
                      "PGSERVICEFILE), so that the registry's placement can be checked")


def registry_target(dsn: str, env: Mapping[str, str] | None = None) -> tuple[list[str], list[int], str]:
    """The registry DSN's hosts, ports and database, with libpq's defaults (a `service`'s parameters, PGHOST,
    PGPORT, PGDATABASE, PGUSER, the Unix-domain socket, 5432, the user's name) where it gives none. libpq connects to
    `hostaddr` when given (`host` then only names the server for TLS and authentication): so does this."""
    env = os.environ if env is None else env
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v not in (None, "")}
    service = params.get("service") or env.get("PGSERVICE")
    if service:
        params = {**_service(str(service), env), **params}
    hosts = str(params.get("hostaddr") or params.get("host") or env.get("PGHOSTADDR") or env.get("PGHOST") or "")
    ports = str(params.get("port") or env.get("PGPORT") or "5432")
    user = str(params.get("user") or env.get("PGUSER") or getpass.getuser())
    dbname = str(params.get("dbname") or env.get("PGDATABASE") or user)
    return hosts.split(","), [int(p) if p else 5432 for p in ports.split(",")], dbname


def _servers(hosts: Iterable[str], ports: list[int], resolve: Resolve, here: set[str],
             local: Here) -> set[tuple[str, int]]:
    """(address, port) of each host (libpq pairs the i-th host with the i-th port, or all with a single one)."""
    out: set[tuple[str, int]] = set()
    for i, host in enumerate(hosts):
        port = ports[i] if len(ports) > 1 and i < len(ports) else ports[0]
        if not host or host.startswith(("/", "@")):
            out.add((LOCAL, port))
            continue
        for address in resolve(host):
            out.add((LOCAL if _is_local(address, here, local) else address, port))
    return out


def _is_local(address: str, here: set[str], local: Here) -> bool:
    """Loopback (also IPv4-mapped: ::ffff:127.0.0.1), unspecified (0.0.0.0 and :: connect to this host), an address
    the host name resolves to, or one of any interface of this host."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address in ("localhost",)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if any(a.is_loopback or a.is_unspecified for a in (ip, mapped) if a is not None):
        return True
    return address in here or str(ip) in here or local(str(mapped or ip))


def check(config: Config, resolve: Resolve = addresses, *, dsn: str | None = None,
          env: Mapping[str, str] | None = None, hostname: str | None = None, local: Here = bindable) -> None:
    """ConfigError naming the first database-strategy tenant served from the registry's database (`dsn`, else the
    config's registry.dsn)."""
    dsn = dsn or config.registry.dsn
    if not dsn:
        return
    if not any(t.strategy == "database" for t in config.tenants.values()):
        return
    try:
        hosts, ports, dbname = registry_target(dsn, env)
    except ConfigError:
        raise
    except Exception as exc:  # a DSN libpq cannot parse: connecting to it reports that
        raise ConfigError(f"registry.dsn: not a valid connection string ({type(exc).__name__})") from None
    suspects = [t for t in config.tenants.values() if t.strategy == "database" and t.database == dbname]
    if not suspects:
        return
    here = resolve(hostname if hostname is not None else socket.gethostname())
    registry = _servers(hosts, ports, resolve, here, local)
    for tenant in suspects:
        backend = config.backend_for(tenant)
        if registry & _servers([backend.host], [backend.port], resolve, here, local):
            raise ConfigError(
                f"tenants.{tenant.name}: a database-strategy tenant may not be served from the registry's database "
                f"(database {dbname!r} of backend {backend.describe()} is the registry's): its sessions "
                "could take the instance slots' advisory locks and NOTIFY the registry's channel; put the registry "
                "in a database of its own")
