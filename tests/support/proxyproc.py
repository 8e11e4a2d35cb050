"""Runs a real `pgtenant run` subprocess in front of a test cluster, with a generated config and secrets."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from proxy.auth.scram import make_verifier
from tests.support.pgcluster import PgCluster, free_port
from tests.support.polling import until

BACKEND_ROLE = "pgtenant_backend"
BACKEND_PASSWORD = "backend-secret"
# Tenants with their own backend role (the database then tells them apart too): tenant -> (role, password)
TENANT_ROLES: dict[str, tuple[str, str]] = {
    "globex": ("pgt_role_1", "role-1-pw"),
    "initech": ("pgt_role_2", "role-2-pw"),
}

# A database tenant of database saas, which the shared tenants acme and bigco and the schema tenant globex share
# (issue 14): its own backend role, as the preflight requires (`extra_tenants=SAAS_DATABASE_TENANT,
# extra_roles=SAAS_DATABASE_ROLE`; its user dan: `extra_users={"dan": ("hooli", "dan-pw")}`).
SAAS_DATABASE_TENANT: dict[str, dict[str, Any]] = {
    "hooli": {"strategy": "database", "database": "saas", "backend_user": "pgt_role_hooli"}}
SAAS_DATABASE_ROLE: dict[str, str] = {"pgt_role_hooli": "role-hooli-pw"}

# login user -> (tenant, password)
USERS: dict[str, tuple[str, str]] = {
    "alice": ("acme", "alice-pw"),
    "bruno": ("bigco", "bruno-pw"),
    "gina": ("globex", "gina-pw"),
    "ivan": ("initech", "ivan-pw"),
}

# Run the suite pooled: when set, every ProxyProcess writes these `[pool]` keys (a test's own `pool` keys win).
ENV_POOL_MODE = "PGTENANT_TEST_POOL_MODE"  # "session" | "transaction"
ENV_POOL_SIZE = "PGTENANT_TEST_POOL_SIZE"  # servers per pool, e.g. 2
ENV_STATEMENT_CACHE = "PGTENANT_TEST_STATEMENT_CACHE"  # "1": [pool] statement_cache = true

_verifier_cache: dict[str, str] = {}


def env_pool() -> dict[str, Any]:
    """The `[pool]` keys asked for by the environment (PGTENANT_TEST_POOL_MODE / _SIZE); {} when unset."""
    out: dict[str, Any] = {}
    if mode := os.environ.get(ENV_POOL_MODE, "").strip():
        out["pool_mode"] = mode
    if size := os.environ.get(ENV_POOL_SIZE, "").strip():
        out["pool_size"] = int(size)
    if os.environ.get(ENV_STATEMENT_CACHE, "").strip() == "1":
        out["statement_cache"] = True
    return out


def default_pool_mode() -> str:
    """The pool mode of a ProxyProcess whose own `pool` does not set one: the environment's, else the product's
    default (`[pool] pool_mode`)."""
    from proxy.config import PoolConfig

    return str(env_pool().get("pool_mode", PoolConfig().pool_mode))


def verifier(password: str) -> str:
    if password not in _verifier_cache:
        _verifier_cache[password] = str(make_verifier(password))
    return _verifier_cache[password]


def prepare_backend(cluster: PgCluster) -> None:
    """Idempotently create the backend role, the tenant databases, schema and a little data."""
    if cluster.execute("SELECT 1 FROM pg_database WHERE datname = 'initech'"):
        return
    for db in ("saas", "initech"):
        cluster.execute(f"CREATE DATABASE {db}")
    cluster.execute(
        """
        CREATE TABLE public.orders (id int PRIMARY KEY, tenant_id text NOT NULL, amount numeric NOT NULL);
        INSERT INTO public.orders SELECT g, CASE WHEN g % 3 = 0 THEN 'bigco' ELSE 'acme' END, g * 1.5
          FROM generate_series(1, 300) g;
        CREATE SCHEMA globex;
        CREATE TABLE globex.orders (id int PRIMARY KEY, amount numeric NOT NULL);
        INSERT INTO globex.orders SELECT g, g FROM generate_series(1, 40) g;
        """,
        dbname="saas",
    )
    cluster.execute(
        """
        CREATE TABLE public.orders (id int PRIMARY KEY, amount numeric NOT NULL);
        INSERT INTO public.orders SELECT g, g FROM generate_series(1, 7) g;
        """,
        dbname="initech",
    )


@dataclass
class ProxyProcess:
    """A pgtenant process; `start()` waits until its port accepts connections."""

    cluster: PgCluster
    workdir: Path
    tls: Any = None  # tests.support.certs.TlsFiles for the client side
    require_tls: bool = False
    backend_sslmode: str = "prefer"
    limits: dict[str, Any] = field(default_factory=dict)
    extra_allowed: tuple[str, ...] = ()
    preflight_enforce: bool = True
    trusted_definers: tuple[str, ...] = ()  # [preflight] trusted_definers
    # More tenants/users/roles on top of the defaults: {"tenant": {"strategy": "shared", ...}}, {"user": (tenant, pw)}
    extra_tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_users: dict[str, tuple[str, str]] = field(default_factory=dict)
    extra_roles: dict[str, str] = field(default_factory=dict)
    port: int = 0
    metrics_port: int = 0
    audit: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # more [metrics] keys
    admin_users: dict[str, str] = field(default_factory=dict)  # admin user -> password
    provision_args: tuple[str, ...] = ()  # more `pgtenant provision` options, e.g. ("--trust", "app")
    pool: dict[str, Any] = field(default_factory=dict)  # [pool] keys, over those of env_pool()
    agent: dict[str, Any] = field(default_factory=dict)  # [agent] keys
    user_keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # more [users.X] keys: {"bot": {"profile": …}}
    server: dict[str, Any] = field(default_factory=dict)  # [server] keys, e.g. {"workers": 2}
    registry: dict[str, Any] = field(default_factory=dict)  # [registry] keys (a tenant registry in PostgreSQL)
    replicas: list[dict[str, Any]] = field(default_factory=list)  # [backends.main] replicas: [{"name": …, "port": …}]
    routing: dict[str, Any] = field(default_factory=dict)  # [routing] keys
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "pgtenant.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "pgtenant.log"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        lines = [
            'secrets_file = "secrets.toml"',
            "[listen]",
            'host = "127.0.0.1"',
            f"port = {self.port}",
            "[limits]",
            *(f"{k} = {json.dumps(v)}" for k, v in self.limits.items()),
            "[startup]",
            f"allowed_parameters = {json.dumps(list(self.extra_allowed))}",
            "[logging]",
            'level = "debug"',
            "[metrics]",
            f"port = {self.metrics_port}",
            "max_tenants = 3",
            *(f"{k} = {json.dumps(v)}" for k, v in self.metrics.items()),
            "[audit]",
            *(f"{k} = {json.dumps(v)}" for k, v in self.audit.items()),
            "[admin]",
            f"users = {json.dumps(sorted(self.admin_users))}",
        ]
        pool = {**env_pool(), **self.pool}
        if pool:  # no [pool] table at all otherwise (a build without pooling refuses the table)
            lines += ["[pool]", *(f"{k} = {json.dumps(v)}" for k, v in pool.items())]
        if self.server:
            lines += ["[server]", *(f"{k} = {json.dumps(v)}" for k, v in self.server.items())]
        if self.tls is not None:
            lines += [
                "[tls]",
                f'cert_file = "{self.tls.cert_file}"',
                f'key_file = "{self.tls.key_file}"',
                f"require = {'true' if self.require_tls else 'false'}",
            ]
        lines += [
            "[backends.main]",
            f'host = "{self.cluster.host}"',
            f"port = {self.cluster.port}",
            f'user = "{BACKEND_ROLE}"',
            f'sslmode = "{self.backend_sslmode}"',
        ]
        if self.backend_sslmode.startswith("verify"):
            lines.append(f'sslrootcert = "{self.cluster.ca_file}"')
        if self.replicas:
            tables = ", ".join("{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in r.items()) + " }"
                               for r in self.replicas)
            lines.append(f"replicas = [{tables}]")
        if self.routing:
            lines += ["[routing]", *(f"{k} = {json.dumps(v)}" for k, v in self.routing.items())]
        lines += [
            "[tenants.acme]", 'strategy = "shared"', 'database = "saas"', 'tenant_id = "acme"',
            "[tenants.bigco]", 'strategy = "shared"', 'database = "saas"', 'tenant_id = "bigco"',
            "[tenants.globex]", 'strategy = "schema"', 'database = "saas"', 'schema = "globex"',
            f'backend_user = "{TENANT_ROLES["globex"][0]}"',
            "[tenants.initech]", 'strategy = "database"', 'database = "initech"', "allow_writes = true",
            f'backend_user = "{TENANT_ROLES["initech"][0]}"',
        ]
        for name, keys in self.extra_tenants.items():
            lines += [f"[tenants.{name}]", *(f"{k} = {json.dumps(v)}" for k, v in keys.items())]
        if not self.preflight_enforce or self.trusted_definers:
            lines += ["[preflight]", f"enforce = {json.dumps(self.preflight_enforce)}",
                      f"trusted_definers = {json.dumps(list(self.trusted_definers))}"]
        if self.registry:
            lines += ["[registry]", *(f"{k} = {json.dumps(v)}" for k, v in self.registry.items())]
        if self.agent:
            lines += ["[agent]", *(f"{k} = {json.dumps(v)}" for k, v in self.agent.items())]
        for user, (tenant, _) in self.users.items():
            lines += [f"[users.{user}]", f'tenant = "{tenant}"']
            lines += [f"{k} = {json.dumps(v)}" for k, v in self.user_keys.get(user, {}).items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        secrets = ["[users]"]
        secrets += [f'{u} = "{verifier(pw)}"' for u, (_, pw) in self.users.items()]
        secrets += [f'{u} = "{verifier(pw)}"' for u, pw in self.admin_users.items()]
        secrets += ["[backends]", f'main = "{BACKEND_PASSWORD}"']
        roles = {**dict(TENANT_ROLES.values()), **self.extra_roles}
        secrets += ["[roles]", *(f'{role} = "{pw}"' for role, pw in roles.items())]
        (self.workdir / "secrets.toml").write_text("\n".join(secrets) + "\n")

    def provision(self) -> None:
        """Run `pgtenant provision` with the cluster's superuser (idempotent): the command's own entry point
        (proxy.cli.main) in this process, its output captured. A subprocess cost a Python start-up and an import of
        the whole proxy per proxy started (seconds each on a loaded host); tests/integration/test_provisioning.py
        runs the command as a subprocess itself."""
        from proxy.cli import main

        self.write_config()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["provision", "--config", str(self.config_path), "--admin-dsn", self.cluster.dsn(),
                             *self.provision_args])
            except SystemExit as exc:  # argparse's refusal
                code = exc.code if isinstance(exc.code, int) else 1
        if code != 0:
            raise RuntimeError(f"pgtenant provision failed ({code}):\n{out.getvalue()}\n{err.getvalue()}")

    def start(self, timeout: float = 20.0, provision: bool = True) -> ProxyProcess:
        if provision:
            self.provision()
        self.write_config()
        listened = self.count_events("workers_listening")
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(self.config_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgtenant exited with {self.proc.returncode}:\n{self.read_log()}")
            if self.server.get("workers", 1) != 1:  # worker processes: ready once every one of them listens
                if self.count_events("workers_listening") > listened:
                    return self
                time.sleep(0.05)  # readiness poll interval, bounded by the deadline
                continue
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)  # readiness poll interval, bounded by the deadline
        raise RuntimeError(f"pgtenant did not listen within {timeout}s:\n{self.read_log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.read_log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def count_events(self, event: str) -> int:
        return sum(1 for e in self.log_events() if e.get("event") == event)

    def reload(self, expect: str, timeout: float = 20.0) -> dict[str, Any]:
        """Send SIGHUP and return the first `expect` log event (e.g. "reloaded") logged after it. Events are
        counted before the signal, so a fast proxy cannot log it before the wait starts."""
        assert self.proc is not None
        before = sum(1 for e in self.log_events() if e.get("event") == expect)
        self.proc.send_signal(signal.SIGHUP)
        sent = [time.monotonic()]

        def new_event() -> dict[str, Any] | None:
            found = [e for e in self.log_events() if e.get("event") == expect]
            if len(found) > before:
                return found[before]
            if not any(e.get("event", "").startswith("reload") for e in self.log_events()[-50:]) and \
                    time.monotonic() - sent[0] > 5.0:  # a SIGHUP taken before the proxy's handler was set: again
                sent[0] = time.monotonic()
                self.proc.send_signal(signal.SIGHUP)
            return None

        return until(new_event, timeout, interval=0.05, what=f"a new {expect} in {self.log_path}")

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def users(self) -> dict[str, tuple[str, str]]:
        return {**USERS, **self.extra_users}

    def password(self, user: str) -> str:
        return self.users[user][1]

    def dsn(self, user: str = "alice", dbname: str | None = None, **params: str | int) -> str:
        kv: dict[str, str | int] = {
            "host": "127.0.0.1", "port": self.port, "user": user, "password": self.users[user][1],
            "dbname": dbname or self.users[user][0], "sslmode": "disable", "connect_timeout": 10,
        }
        kv.update(params)
        return " ".join(f"{k}='{v!s}'" for k, v in kv.items())

    def url(self, user: str = "alice", dbname: str | None = None, **params: str | int) -> str:
        q = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
        base = f"postgresql://{user}:{quote(self.users[user][1])}@127.0.0.1:{self.port}/{dbname or self.users[user][0]}"
        return base + (f"?{q}" if q else "")

    def jdbc_url(self, user: str = "alice", **params: str | int) -> str:
        q = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in params.items())
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{self.users[user][0]}" + (f"?{q}" if q else "")


def tenants_proxy(cluster: PgCluster, workdir: Path, tenants: dict[str, dict[str, Any]],
                  roles: dict[str, str]) -> ProxyProcess:
    """A ProxyProcess with more tenants, each `{"keys": <its config keys>, "user": <its login>}` (password
    `<login>-pw`), and their own backend `roles` (role -> password)."""
    return ProxyProcess(
        cluster, workdir,
        extra_tenants={name: t["keys"] for name, t in tenants.items()},
        extra_users={t["user"]: (name, f"{t['user']}-pw") for name, t in tenants.items()},
        extra_roles=roles,
    )


def dan_proxy(cluster: PgCluster, workdir: Path, **kwargs: Any) -> ProxyProcess:
    """A ProxyProcess (not started) of the default tenants and dan, the database tenant hooli of database saas
    (`SAAS_DATABASE_TENANT`), with the backend prepared; `extra_users` given are added to dan."""
    prepare_backend(cluster)
    users = {"dan": ("hooli", "dan-pw"), **kwargs.pop("extra_users", {})}
    return ProxyProcess(cluster, workdir, backend_sslmode="disable", extra_tenants=SAAS_DATABASE_TENANT,
                        extra_roles=SAAS_DATABASE_ROLE, extra_users=users, **kwargs)


def started_per_mode(make: Callable[[str], ProxyProcess],
                     modes: tuple[str, ...] = ("transaction", "session")) -> Iterator[dict[str, ProxyProcess]]:
    """Yields `make(mode)` for each pool mode, all started; stops them after (a module fixture's `yield from`)."""
    out = {mode: make(mode) for mode in modes}
    try:
        for proxy in out.values():
            proxy.start()
        yield out
    finally:
        for proxy in out.values():
            proxy.stop()


def provisioned_per_mode(pg: PgCluster, prefix: str, schema: str, make: Callable[[str, str], ProxyProcess],
                         modes: tuple[str, ...]) -> Iterator[tuple[str, dict[str, ProxyProcess]]]:
    """A fresh database (`prefix`…) holding `schema`, provisioned once, served by `make(db, mode)` for each pool mode,
    all started; yields (database, proxies), then stops them and drops the database (a module fixture's `yield
    from`)."""
    db = pg.fresh_database(prefix)
    pg.execute(schema, dbname=db)
    proxies = {mode: make(db, mode) for mode in modes}
    try:
        proxies[modes[0]].provision()
        for proxy in proxies.values():
            proxy.start(provision=False)
        yield db, proxies
    finally:
        for proxy in proxies.values():
            proxy.stop()
        pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def provision_output(p: ProxyProcess, *args: str) -> tuple[int, str]:
    """`pgtenant provision` of `p`'s config run in this process: its exit code and its output."""
    from proxy.cli import main

    p.write_config()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["provision", "--config", str(p.config_path), "--admin-dsn", p.cluster.dsn(), *args])
    return code, out.getvalue()
