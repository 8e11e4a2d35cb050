"""Operating a running proxy: readiness, live reload, and the admin console's view of it (I/O layer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from proxy.admin import Rows
from proxy.config import Config, ConfigError, load_config
from proxy.logs import get_logger
from proxy.metrics import Metrics, TenantStats
from proxy.pooling import PoolRow
from proxy.session import SessionRow

log = get_logger("pgtenant.ops")

# What a reload did: applied; rejected for what the config file or the registry's rows say (the old config stays);
# or the registry could not be read (a registry change's reload is tried again: io/registrywatch.py).
ReloadStatus = Literal["applied", "rejected", "unreachable"]


@dataclass(frozen=True, slots=True)
class ClientRow:
    """A client connection as plain data: its session and the socket's figures."""

    session: SessionRow
    age_s: float
    bytes_in: int
    bytes_out: int
    via: str | None = None  # the trusted load balancer whose PROXY header gave the session's address


@dataclass(frozen=True, slots=True)
class ServerRow:
    """A server connection as plain data."""

    backend: str
    role: str
    database: str
    backend_pid: int
    tls: bool
    state: str
    client_id: str | None
    age_s: float
    tenant: str = ""  # the tenant whose pool it is in
    replica: str | None = None  # a read replica's server: the replica's name (None: the primary)
    lag_s: float | None = None  # that replica's lag behind its primary (its last probe), seconds


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The running proxy as plain data, taken when asked."""

    listening: bool
    pending: list[str]  # tenants without a policy yet
    clients: list[ClientRow]
    servers: list[ServerRow]
    pools: list[PoolRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Running:
    """What ops may read of and do to the running proxy (the listener passes these in): reads return plain data."""

    config: Callable[[], Config]
    snapshot: Callable[[], Snapshot]
    prepare_tenant: Callable[[str], list[str]]  # blocking: run off the loop
    apply_config: Callable[[Config], list[str]]  # blocking: run off the loop
    kill: Callable[[str], bool]  # end a session by id (the console's KILL_CLIENT)
    unlock: Callable[[str], int]  # forget a user's failed logins (the console's UNLOCK)
    metrics: Metrics
    load: Callable[[], Config] | None = None  # blocking: the config anew (file and registry); None: the file's
    registry_connected: Callable[[], bool] | None = None  # the registry's LISTEN connection is up (None: no registry)
    registry_current: Callable[[], bool] | None = None  # no registry change is known to be unapplied (RegistryWatch)
    apply_changes: Callable[[Config], list[str]] | None = None  # blocking: apply_config preparing changed tenants only
    instance_slot: Callable[[], bool] | None = None  # stateless replicas: the slot its keys carry is held (peer_port)
    registry_rejected: Callable[[], Mapping[str, str]] | None = None  # registry rows the load in force rejected alone
    loaded_applied: Callable[[], None] | None = None  # what `load` returned last is now in force (registrystore.Loader)


class Ops:
    """Everything an operator can ask of or do to the running proxy."""

    def __init__(self, proxy: Running) -> None:
        self.proxy = proxy
        self.per_tenant: dict[str, TenantStats] = {}
        self.started = time.time()
        self._reload_lock = asyncio.Lock()
        self._ready_cache: tuple[float, bool, dict[str, object]] | None = None

    # --- readiness ------------------------------------------------------------------------

    async def ready(self) -> tuple[bool, dict[str, object]]:
        now = time.monotonic()
        if self._ready_cache is not None and now - self._ready_cache[0] < 1.0:
            return self._ready_cache[1], self._ready_cache[2]
        proxy = self.proxy
        detail: dict[str, object] = {"listening": proxy.snapshot().listening}
        backends: dict[str, bool] = {}
        for name, b in proxy.config().backends.items():
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(b.host, b.port), min(2.0, b.connect_timeout))
                writer.close()
                backends[name] = True
            except (TimeoutError, OSError):
                backends[name] = False
        detail["backends"] = backends
        pending = proxy.snapshot().pending
        detail["tenants_pending"] = pending
        registry = proxy.registry_connected() if proxy.registry_connected is not None else True
        if proxy.registry_connected is not None:
            detail["registry"] = registry
        if proxy.registry_current is not None:
            detail["registry_current"] = proxy.registry_current()
            registry = registry and bool(detail["registry_current"])
        if proxy.registry_rejected is not None:  # (shown, not a reason to drain: the rest of the registry applied)
            detail["registry_rejected"] = sorted(proxy.registry_rejected())
        if proxy.instance_slot is not None:
            detail["instance_slot"] = proxy.instance_slot()
            registry = registry and bool(detail["instance_slot"])
        ok = bool(detail["listening"]) and all(backends.values()) and not pending and registry
        if pending and all(backends.values()):
            # Backends are back: try to prepare the tenants that were waiting for them.
            for name in pending:
                try:
                    await asyncio.get_running_loop().run_in_executor(None, proxy.prepare_tenant, name)
                except Exception as exc:
                    log.warning("tenant_pending", tenant=name, reason=str(exc))
            detail["tenants_pending"] = proxy.snapshot().pending
            ok = not detail["tenants_pending"] and bool(detail["listening"]) and registry
        self._ready_cache = (now, ok, detail)
        return ok, detail

    # --- reload ----------------------------------------------------------------------------

    async def reload_changes(self) -> tuple[ReloadStatus, str]:
        """A registry change: reload as SIGHUP does, but prepare again only the tenants whose config changed. A
        registry that could not be read is `unreachable` (not logged here: the watch retries and logs it once)."""
        return await self._reload(changes_only=True)

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file (and the registry); on any error keep the old one and say why."""
        status, message = await self._reload(changes_only=False)
        if status == "unreachable":
            log.error("reload_rejected", problem=message)
            message = f"reload rejected, old configuration stays in force: {message}"
        return status == "applied", message

    async def _reload(self, *, changes_only: bool) -> tuple[ReloadStatus, str]:
        proxy = self.proxy
        source = proxy.config().source
        if source is None:
            return "rejected", "the configuration was not loaded from a file"
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            try:
                load = proxy.load or (lambda: load_config(source))
                new: Config = await loop.run_in_executor(None, load)
            except ConfigError as exc:
                return self._rejected(str(exc))
            except Exception as exc:  # the registry could not be read (registrystore.RegistryError): not the rows
                proxy.metrics.config_reloaded(False)
                return "unreachable", str(exc)
            try:
                apply = proxy.apply_changes if changes_only and proxy.apply_changes is not None else proxy.apply_config
                problems = await loop.run_in_executor(None, apply, new)
            except Exception as exc:
                return self._rejected(str(exc))
            if problems:
                return self._rejected("; ".join(problems))
            if proxy.load is not None and proxy.loaded_applied is not None:
                proxy.loaded_applied()  # (only now: a refused apply is not what the next load starts from)
            proxy.metrics.config_reloaded(True)
            rejected = self._rows_rejected()
            log.info("reloaded", tenants=len(new.tenants), users=len(new.users),
                     **({} if new.registry_version is None else {"registry_version": new.registry_version}),
                     **({"rows_rejected": len(rejected)} if rejected else {}))
            return "applied", (f"configuration reloaded: {len(new.tenants)} tenant(s), {len(new.users)} user(s)"
                               + (f"; {len(rejected)} registry row(s) rejected" if rejected else ""))

    def _rows_rejected(self) -> Mapping[str, str]:
        """The registry rows the load just rejected alone (each logged: the rest of the registry applied)."""
        rejected = self.proxy.registry_rejected() if self.proxy.registry_rejected is not None else {}
        for row, problem in rejected.items():
            log.error("registry_row_rejected", row=row, problem=problem)
        self.proxy.metrics.registry_rejected(len(rejected))
        return rejected

    def _rejected(self, problem: str) -> tuple[ReloadStatus, str]:
        self.proxy.metrics.config_reloaded(False)
        log.error("reload_rejected", problem=problem)
        return "rejected", f"reload rejected, old configuration stays in force: {problem}"

    # --- admin console (proxy.admin.AdminContext) ----------------------------------------

    def tenant_stats(self, tenant: str) -> TenantStats:
        st = self.per_tenant.get(tenant)
        if st is None:
            st = self.per_tenant[tenant] = TenantStats()
        return st

    def tenants(self) -> tuple[Sequence[str], Rows]:
        cfg = self.proxy.config()
        snap = self.proxy.snapshot()
        rows: Rows = []
        for t in cfg.tenants.values():
            clients = sum(1 for c in snap.clients if c.session.tenant == t.name)
            rows.append((t.name, t.strategy, t.backend, t.database, cfg.backend_for(t).user,
                         "pending" if t.name in snap.pending else "ready", clients))
        return ("tenant", "strategy", "backend", "database", "backend_role", "state", "clients"), rows

    def clients(self) -> tuple[Sequence[str], Rows]:
        rows: Rows = []
        for c in self.proxy.snapshot().clients:
            s = c.session
            rows.append((s.session_id, s.user, s.tenant, s.application_name, s.client_address,
                         "tls" if s.tls else "plain", s.state, s.tx_status, round(c.age_s, 1), c.bytes_in,
                         c.bytes_out, c.via))
        return ("id", "user", "tenant", "application_name", "address", "transport", "state", "tx", "age_s",
                "bytes_in", "bytes_out", "via"), rows

    def servers(self) -> tuple[Sequence[str], Rows]:
        rows: Rows = [(s.tenant, s.backend, s.role, s.database, s.backend_pid, s.client_id, "tls" if s.tls else "plain",
                       s.state, round(s.age_s, 1), "replica" if s.replica else "primary",
                       None if s.lag_s is None else round(s.lag_s, 3)) for s in self.proxy.snapshot().servers]
        return ("pool", "backend", "role", "database", "backend_pid", "client_id", "transport", "state", "age_s",
                "server_role", "lag_s"), rows

    def pools(self) -> tuple[Sequence[str], Rows]:
        rows: Rows = [(p.tenant, p.backend, p.database, p.role, p.mode, p.cl_active, p.cl_waiting, p.sv_active,
                       p.sv_idle, p.sv_pinned, p.sv_used, p.sv_connecting, round(p.maxwait, 1), p.size)
                      for p in sorted(self.proxy.snapshot().pools, key=lambda p: (p.tenant, p.database, p.role))]
        return ("tenant", "backend", "database", "role", "pool_mode", "cl_active", "cl_waiting", "sv_active", "sv_idle",
                "sv_pinned", "sv_used", "sv_connecting", "maxwait_s", "pool_size"), rows

    def stats(self) -> tuple[Sequence[str], Rows]:
        rows: Rows = []
        for name, st in sorted(self.per_tenant.items()):
            p50, p95, p99 = st.quantiles()
            def fmt(v):
                return (None if v is None else round(v, 3))
            rows.append((name, st.queries, st.errors, st.denied, st.rows, fmt(p50), fmt(p95), fmt(p99)))
        return ("tenant", "queries", "errors", "denied", "rows", "p50_ms", "p95_ms", "p99_ms"), rows

    def config_rows(self) -> tuple[Sequence[str], Rows]:
        cfg = self.proxy.config()
        rows: Rows = [
            ("listen", f"{cfg.listen.host}:{cfg.listen.port}"),
            ("tls.enabled", cfg.tls.enabled), ("tls.require", cfg.tls.require),
            ("limits.max_message_length", cfg.limits.max_message_length),
            ("limits.startup_timeout", cfg.limits.startup_timeout),
            ("limits.shutdown_timeout", cfg.limits.shutdown_timeout),
            ("metrics", f"{cfg.metrics.host}:{cfg.metrics.port}" if cfg.metrics.enabled else "off"),
            ("audit", "on" if cfg.audit.enabled else "off"), ("audit.redact", cfg.audit.redact),
            ("preflight.enforce", cfg.preflight.enforce),
            ("tenants", len(cfg.tenants)), ("users", len(cfg.users)), ("backends", len(cfg.backends)),
            ("source", str(cfg.source)),
            ("registry_version", cfg.registry_version),  # None: no registry, the file alone
        ]
        return ("key", "value"), rows

    def reload_now(self) -> str:
        """Synchronous entry for the console: schedule the reload and report that it started."""
        asyncio.get_running_loop().create_task(self.reload())
        return "reload started; see the log (and SHOW CONFIG) for the result"

    def kill_client(self, session_id: str) -> bool:
        return self.proxy.kill(session_id)


    def unlock(self, user: str) -> int:
        """Forget the failed logins of ``user`` (the console's UNLOCK); how many budget entries went."""
        return self.proxy.unlock(user)


class AdminView:
    """Adapts Ops to proxy.admin.AdminContext."""

    def __init__(self, ops: Ops) -> None:
        self.ops = ops
        self.tenants = ops.tenants
        self.clients = ops.clients
        self.servers = ops.servers
        self.pools = ops.pools
        self.stats = ops.stats
        self.config_rows = ops.config_rows
        self.reload = ops.reload_now
        self.kill_client = ops.kill_client
        self.unlock = ops.unlock
