"""The read replicas' poller: probes each replica and its primary on a schedule and feeds the router (replicas.py)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import psycopg

from proxy.config import BackendConfig, Config, ReplicaConfig
from proxy.dbcheck import connect_kwargs, replica_preflight
from proxy.logs import get_logger
from proxy.replicas import PRIMARY_PROBE, REPLICA_PROBE, Health, ReplicaSet, probe_targets

if TYPE_CHECKING:
    from proxy.io.pool import Pool

log = get_logger("pgtenant.replicas")


class ReplicaPoller:
    """One connection per probed server (the backend's own credentials), kept open between polls; every
    [routing] poll_interval: the primary's WAL insert position first, then every replica at once."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._conns: dict[tuple, psycopg.AsyncConnection] = {}
        self._task: asyncio.Task | None = None
        self._health: dict[tuple[str, str], Health] = {}
        # (backend, replica) -> (the config it was checked under, its start-up checks running or done, whether a
        # pass under the same check inputs stands while they run: a reload that changes none of them)
        self._checks: dict[tuple[str, str], tuple[Config, asyncio.Future[list[str]], bool]] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                await conn.close()
        self._conns.clear()

    async def _run(self) -> None:
        while True:
            config = self.pool.proxy.config
            try:
                await self.poll()
            except Exception:  # pragma: no cover - a bug of ours must not stop the polls
                log.exception("replica_poll_failed")
            await asyncio.sleep(config.routing.poll_interval)

    async def poll(self) -> None:
        """One round over every backend with replicas."""
        config = self.pool.proxy.config
        timeout = config.routing.probe_timeout
        router, clock = self.pool.router, self.pool.clock
        rounds = []
        for primary, database, replicas in probe_targets(config):
            s = router.sets.get(primary.name)
            if s is not None:
                rounds.append(self._backend(config, s, primary, database, replicas, timeout))
        await asyncio.gather(*rounds)
        now = clock()
        for backend, replica, health, lag, why in router.rows(now):
            before = self._health.get((backend, replica))
            if before is not health:
                self._health[(backend, replica)] = health
                log.info("replica_health", backend=backend, replica=replica, health=str(health),
                         was=str(before) if before else None, lag_s=None if lag is None else round(lag, 3), reason=why)

    async def _backend(self, config: Config, s: ReplicaSet, primary: BackendConfig, database: str,
                       replicas: list, timeout: float) -> None:
        clock = self.pool.clock
        try:
            sent_at, (in_recovery, lsn) = await self._probe(primary, database, PRIMARY_PROBE, timeout)
            s.primary_polled(sent_at, in_recovery, lsn)
        except Exception as exc:  # the primary's position unknown: replicas keep their last freshness
            log.debug("primary_probe_failed", backend=primary.name, error=str(exc) or type(exc).__name__)

        async def one(backend: BackendConfig, spec) -> None:  # type: ignore[no-untyped-def]
            try:
                query = spec.staleness_query or REPLICA_PROBE
                _, row = await self._probe(backend, database, query, timeout)
                if spec.staleness_query is not None:
                    s.replica_staleness(spec.name, clock(), None if row[0] is None else float(row[0]))
                else:
                    s.replica_polled(spec.name, clock(), bool(row[0]), row[1])
            except Exception as exc:
                s.replica_failed(spec.name, (str(exc).strip() or type(exc).__name__).splitlines()[0])
                self._checks.pop((s.backend, spec.name), None)  # (checked again once it answers)
                if isinstance(exc, TimeoutError):  # (its servers may hang as its probe did: red team 9r F5)
                    self.pool.replica_down(s.backend, spec.name)
                return
            problem = self._checked(config, s.backend, spec)
            if problem is not None:
                s.replica_failed(spec.name, problem)

        await asyncio.gather(*(one(b, spec) for b, spec in replicas if spec.name in s.replicas))

    def _checked(self, config: Config, backend: str, spec: ReplicaConfig) -> str | None:
        """Why replica `spec` may not serve yet under `config` (None: it passed the start-up checks the primary
        gets, dbcheck.replica_preflight): they run in a thread when it first answers, after it was down, and after
        a reload; until they pass it is down (fail closed) — but after a reload that changed nothing they check
        (`check_inputs`), its last pass stands while they run again (its reads do not fall to the primary for the
        re-check period: issue 18), and a failure takes it out as soon as they end (`_checks_done`)."""
        key = (backend, spec.name)
        entry = self._checks.get(key)
        if entry is None or entry[0] is not config:
            standing = (entry is not None and (_problem(entry[1]) is None if entry[1].done() else entry[2])
                        and check_inputs(entry[0], backend, spec) == check_inputs(config, backend, spec))
            task = asyncio.get_running_loop().run_in_executor(None, replica_preflight, config, backend, spec)
            task.add_done_callback(lambda t: self._checks_done(backend, spec.name, t))
            entry = self._checks[key] = (config, task, standing)
        if entry[2] and not entry[1].done():
            return None
        return _problem(entry[1])

    def _checks_done(self, backend: str, replica: str, task: asyncio.Future[list[str]]) -> None:
        """Log what the checks found; a replica waiting only for them is fit (or not) at once, not at the next
        poll."""
        if task.cancelled():
            return
        problems = [repr(task.exception())] if task.exception() is not None else task.result()
        for problem in problems:
            log.error("replica_preflight_failed", backend=backend, replica=replica, problem=problem)
        if not problems:
            log.info("replica_preflight_passed", backend=backend, replica=replica)
        s = self.pool.router.sets.get(backend)
        entry = self._checks.get((backend, replica))
        if s is not None and entry is not None and entry[1] is task:  # (not a check of an earlier config)
            s.replica_checked(replica, _NOT_CHECKED, _problem(task))

    async def _probe(self, backend: BackendConfig, database: str, query: str, timeout: float) -> tuple[float, tuple]:
        """(when the query was sent, its one row) on the kept connection to `backend` (opened if needed)."""
        key = (backend.name, backend.host, backend.port, backend.user, database)
        conn = self._conns.get(key)
        try:
            if conn is None or conn.closed:
                kwargs = connect_kwargs(backend, database, timeout, "pgtenant-replica-probe")
                conn = self._conns[key] = await asyncio.wait_for(
                    psycopg.AsyncConnection.connect(autocommit=True, **kwargs), timeout)  # type: ignore[arg-type]
            sent_at = self.pool.clock()
            # (not wait_for: a probe cancelled on a hung server makes psycopg try to cancel it there, up to 10 s more
            # before the replica is found down and its servers closed; the task is left to end on its own)
            task = asyncio.ensure_future(_one_row(conn, query))
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                task.add_done_callback(_ended)
                raise TimeoutError(f"the probe took longer than probe_timeout ({timeout} s)")
            return sent_at, task.result()
        except BaseException:
            self._conns.pop(key, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            raise


_NOT_CHECKED = "start-up checks (preflight) not done yet"


async def _one_row(conn: psycopg.AsyncConnection, query: str) -> tuple:
    cur = await conn.execute(query)  # type: ignore[arg-type]
    row = await cur.fetchone()
    if row is None:
        raise ValueError("the probe returned no row")
    return tuple(row)


def check_inputs(config: Config, backend: str, spec: ReplicaConfig) -> tuple:
    """What of `config` replica `spec`'s start-up checks read (dbcheck.replica_preflight): the replica, every
    backend and tenant (a database tenant's neighbours are other tenants), the limits and the [preflight] settings;
    a reload that changes none of them keeps its last pass while it is checked again."""
    return spec, backend, config.backends, config.tenants, config.limits, config.preflight


def _ended(task: asyncio.Future) -> None:
    """A timed-out probe ended (its connection is closed already): its outcome is not wanted."""
    if not task.cancelled():
        task.exception()


def _problem(task: asyncio.Future[list[str]]) -> str | None:
    """A replica's failure reason from its checks (None: they passed)."""
    if not task.done():
        return _NOT_CHECKED
    if task.cancelled() or task.exception() is not None:
        return f"preflight: {'cancelled' if task.cancelled() else repr(task.exception())}"
    problems = task.result()
    return f"preflight: {problems[0]}" if problems else None
