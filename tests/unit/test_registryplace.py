"""A database-strategy tenant served from the registry's database is a config error (red team 8b F2/F3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.auth.scram import make_verifier
from proxy.config import Config, ConfigError, parse_config
from proxy.registryplace import check, registry_target

# A resolver standing in for DNS: db and db.internal are one server, other.example is another.
NAMES = {"db": {"10.0.0.5"}, "db.internal": {"10.0.0.5"}, "other.example": {"10.0.0.9"},
         "localhost": {"127.0.0.1", "::1"}, "proxyhost": {"10.0.0.2"}}


def resolve(host: str) -> set[str]:
    return NAMES.get(host, {host})


def config(tmp_path: Path, dsn: str, backend: dict, tenants: dict) -> Config:
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw")}"\n')
    return parse_config({
        "secrets_file": "s.toml", "backends": {"main": backend}, "tenants": tenants,
        "users": {"alice": {"tenant": next(iter(tenants))}}, "registry": {"dsn": dsn},
    }, base=tmp_path)


def run(cfg: Config, env: dict[str, str] | None = None) -> None:
    # 10.0.0.3: an address of another interface of this host (its name resolves to 10.0.0.2 only)
    check(cfg, resolve, env=env or {}, hostname="proxyhost", local=lambda address: address == "10.0.0.3")


@pytest.mark.parametrize(("dsn", "backend"), [
    ("host=db dbname=reg user=r", {"host": "db"}),
    ("host=db.internal port=5432 dbname=reg", {"host": "db"}),  # another name of the same address
    ("postgresql://r@db:5432/reg", {"host": "10.0.0.5"}),  # a URI; the backend by address
    ("host=/var/run/postgresql dbname=reg", {"host": "127.0.0.1"}),  # the socket and loopback of this host
    ("host=localhost dbname=reg", {"host": "proxyhost"}),  # loopback and this host's own address
    ("host=other.example,db port=6000,5432 dbname=reg", {"host": "db"}),  # libpq's host list: the second
    ("host=db user=reg", {"host": "db"}),  # no dbname: libpq uses the user's name
    # red team 9b N6: what libpq connects to is hostaddr; mapped loopback, unspecified and any interface are here
    ("host=registry.invalid hostaddr=10.0.0.5 dbname=reg", {"host": "db"}),
    ("host=::ffff:127.0.0.1 dbname=reg", {"host": "127.0.0.1"}),
    ("host=0.0.0.0 dbname=reg", {"host": "localhost"}),
    ("host=:: dbname=reg", {"host": "127.0.0.1"}),
    ("host=10.0.0.3 dbname=reg", {"host": "127.0.0.1"}),
])
def test_a_database_tenant_in_the_registrys_database_is_refused(tmp_path: Path, dsn: str, backend: dict) -> None:
    cfg = config(tmp_path, dsn, backend, {"acme": {"strategy": "shared", "database": "reg", "tenant_id": "acme"},
                                          "initech": {"strategy": "database", "database": "reg"}})
    with pytest.raises(ConfigError, match=r"tenants\.initech: a database-strategy tenant may not be served from the "
                       r"registry's database \(database 'reg' of backend main"):
        run(cfg)


@pytest.mark.parametrize(("dsn", "backend", "database"), [
    ("host=db dbname=reg", {"host": "db"}, "initech"),  # another database of the same server
    ("host=db dbname=reg", {"host": "other.example"}, "reg"),  # the same name on another server
    ("host=db port=6432 dbname=reg", {"host": "db"}, "reg"),  # another port: another server
    ("host=db dbname=Reg", {"host": "db"}, "reg"),  # database names are case-sensitive
])
def test_other_placements_are_allowed(tmp_path: Path, dsn: str, backend: dict, database: str) -> None:
    run(config(tmp_path, dsn, backend, {"initech": {"strategy": "database", "database": database}}))


def test_shared_and_schema_tenants_may_share_the_registrys_database(tmp_path: Path) -> None:
    """Their policies refuse advisory locks and LISTEN/NOTIFY, and hide the registry's schema."""
    run(config(tmp_path, "host=db dbname=reg", {"host": "db"},
               {"acme": {"strategy": "shared", "database": "reg", "tenant_id": "acme"},
                "globex": {"strategy": "schema", "database": "reg", "schema": "globex"}}))


def test_libpq_defaults_fill_in_what_the_dsn_leaves_out() -> None:
    assert registry_target("dbname=reg", {"PGHOST": "db", "PGPORT": "6000"}) == (["db"], [6000], "reg")
    assert registry_target("host=a,b port=1,2 user=u", {}) == (["a", "b"], [1, 2], "u")
    assert registry_target("", {"PGDATABASE": "x"}) == ([""], [5432], "x")


def test_a_service_is_read_from_the_service_file_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    """Red team 9b N6: `service=` hid the host, port and database the service file gives."""
    services = tmp_path / "pg_service.conf"
    services.write_text("[reg]\nhost=db\nport=5432\ndbname=reg\n")
    tenants = {"initech": {"strategy": "database", "database": "reg"}}
    with pytest.raises(ConfigError, match=r"tenants\.initech: a database-strategy tenant may not be served"):
        run(config(tmp_path, "service=reg", {"host": "db"}, tenants), {"PGSERVICEFILE": str(services)})
    run(config(tmp_path, "service=reg dbname=other", {"host": "db"}, tenants), {"PGSERVICEFILE": str(services)})
    with pytest.raises(ConfigError, match=r"registry\.dsn: service 'nope' is not defined"):
        run(config(tmp_path, "service=nope", {"host": "db"}, tenants), {"PGSERVICEFILE": str(services)})
    run(config(tmp_path, "service=nope", {"host": "db"},  # no database tenant: nothing to check
               {"acme": {"strategy": "shared", "database": "reg", "tenant_id": "acme"}}),
        {"PGSERVICEFILE": str(services)})


def test_this_hosts_own_addresses_are_found_by_binding() -> None:
    from proxy.registryplace import bindable
    assert bindable("127.0.0.1") and not bindable("192.0.2.254") and not bindable("not an address")
