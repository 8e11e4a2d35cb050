"""Keeps the proxy's tenants and users current with the registry: LISTEN on its own connection, reconnect on loss."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import psycopg

from proxy.logs import get_logger
from proxy.registrydb import CHANNEL, CLAIM_SLOT, INSTANCE_LOCK, SELECT_VERSION, TRY_SLOT

log = get_logger("pgtenant.registry")

# Seconds between round trips on an otherwise silent LISTEN connection: a connection lost without a word (a
# network partition) is noticed within this, and the next one reloads what was missed meanwhile.
PING_INTERVAL = 5.0
CONNECT_TIMEOUT = 5


class RegistryWatch:
    """One LISTEN connection to the registry; every NOTIFY (and every reconnect, which may have missed some) asks
    for a reload through `reload` (the SIGHUP path: the same validation and revocation). Changes arriving while a
    reload runs are folded into the next one."""

    def __init__(self, dsn: str, reconnect_delay: float, reload: Callable[[], Awaitable[tuple[bool, str]]],
                 peer: tuple[str, int, int] | None = None, applied: Callable[[], int | None] = lambda: None) -> None:
        self.dsn = dsn
        self.applied = applied  # the registry change number of the config in force
        self.reconnect_delay = reconnect_delay
        self.reload = reload
        self.connected = False
        # Stateless replicas: (advertised host, peer port, instance bits); the slot this instance holds (its lock
        # lives with the LISTEN connection), claimed on the first connection and held again on every reconnect.
        self.peer = peer
        self.slot: int | None = None
        self.claim: int | None = None  # the slot's claim id in the registry (forwarded cancels name it)
        self.claimed = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._apply())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.connected = False

    async def _apply(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                ok, message = await self.reload()
            except Exception as exc:  # the reload reports its own failures; this is a bug's last line
                log.error("registry_reload_failed", problem=str(exc) or type(exc).__name__)
                continue
            (log.info if ok else log.error)("registry_applied" if ok else "registry_rejected", result=message)

    async def _listen(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="pgtenant-listen")
            except (psycopg.Error, OSError) as exc:
                self._lost(str(exc).strip())
                await asyncio.sleep(self.reconnect_delay)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if self.peer is not None:
                        await self._claim(conn)
                    self.connected = True
                    log.info("registry_listening")
                    # Changes made before LISTEN (since the config was read at start, or while the connection was
                    # down) were not announced to us.
                    row = await (await conn.execute(SELECT_VERSION)).fetchone()
                    if row is None or row[0] != self.applied():
                        self._dirty.set()
                    await self._receive(conn)
            except (psycopg.Error, OSError) as exc:
                self._lost(str(exc).strip())
                await asyncio.sleep(self.reconnect_delay)

    async def _receive(self, conn: psycopg.AsyncConnection) -> None:
        while True:
            async for _ in conn.notifies(timeout=PING_INTERVAL):
                self._dirty.set()
            await conn.execute("SELECT 1")  # silent for PING_INTERVAL: is the connection still there?

    async def _claim(self, conn: psycopg.AsyncConnection) -> None:
        """Hold an instance slot (after a reconnect: this instance's own again, its sessions' keys carry it) and say
        where its peer port is."""
        assert self.peer is not None
        host, port, bits = self.peer
        for slot in [self.slot] if self.slot is not None else range(1 << bits):
            row = await (await conn.execute(TRY_SLOT, (INSTANCE_LOCK, slot))).fetchone()
            if row and row[0]:
                self.slot = slot
                claimed = await (await conn.execute(CLAIM_SLOT, (slot, host, port))).fetchone()
                self.claim = None if claimed is None else int(claimed[0])
                log.info("instance_slot", slot=slot, peer=f"{host}:{port}")
                break
        else:
            if self.slot is None:
                log.error("instance_slot_unavailable",
                          problem=f"all {1 << bits} instance slots are held (raise registry.instance_bits)")
            else:
                log.error("instance_slot_lost", slot=self.slot, problem="another instance holds this one's slot "
                          "since its registry connection was down: cancels of this instance's sessions landing "
                          "elsewhere reach that one (and are ignored there)")
        self.claimed.set()

    def _lost(self, problem: str) -> None:
        if self.connected or problem:
            log.warning("registry_connection_lost" if self.connected else "registry_unreachable", problem=problem)
        self.connected = False
