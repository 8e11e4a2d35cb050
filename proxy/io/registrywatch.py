"""Keeps the proxy's tenants and users current with the registry: LISTEN on its own connection, reconnect on loss."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import psycopg

from proxy.logs import get_logger
from proxy.registrydb import CHANNEL, CLAIM_SLOT, INSTANCE_LOCK, TRY_SLOT, with_tcp_timeouts

if TYPE_CHECKING:
    from proxy.ops import ReloadStatus

log = get_logger("pgtenant.registry")
_clock = time.monotonic

# Seconds between round trips on an otherwise silent LISTEN connection: a connection lost without a word (a
# network partition) is noticed within this, and the next one reloads what was missed meanwhile.
PING_INTERVAL = 5.0
# Seconds the round trip may take: an overdue one is a lost connection (closed, reconnected, reloaded), so a silent
# partition is noticed within PING_INTERVAL + PING_TIMEOUT (red team 9b N2: the ping used to wait forever).
PING_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5
# A reload that could not read the registry (a blip, a failover) is tried again after RETRY_FIRST seconds, doubling
# up to RETRY_MAX, until it applies or is rejected for what the rows say (red team 8b F7).
# A reload asked for more than RELOAD_DUE seconds ago and not yet finished (a read waiting on a lock, a slow apply, a
# SIGHUP reload ahead of it) makes the config not current: /readyz answers 503 meanwhile (red team 9b2 P3).
RELOAD_DUE = 15.0
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
# While the registry stays unreachable, a failed connection attempt is logged as a warning at most once per this
# many seconds (with the number of attempts since the last line); the others at debug level.
UNREACHABLE_LOG_EVERY = 60.0


class RegistryWatch:
    """One LISTEN connection to the registry; every NOTIFY (and every reconnect, which may have missed some) asks
    for a reload through `reload` (the SIGHUP path: the same validation and revocation). Changes arriving while a
    reload runs are folded into the next one."""

    def __init__(self, dsn: str, reconnect_delay: float, reload: Callable[[], Awaitable[tuple[ReloadStatus, str]]],
                 peer: tuple[str, int, int] | None = None) -> None:
        self.dsn = with_tcp_timeouts(dsn)
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
        self._asked = 0  # reloads asked for so far (notifications, connections)
        self._done = 0  # how many of them the last finished reload (applied or rejected) answered
        self._resync = 0  # the ask of the last (re)connect: until it is answered the config may be behind
        self._failing = False  # the last reload could not read the registry (retrying)
        self._unreachable_logged: float | None = None  # when the last registry_unreachable warning was written
        self._unreachable_attempts = 0  # failed attempts since then
        self._waiting_since: float | None = None  # when the oldest reload asked for and not yet answered was asked
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def holds_slot(self) -> bool:
        """Stateless replicas: this instance holds the slot its sessions' keys carry (always true without a peer port).
        False after `instance_slot_lost` until the slot is held again: no cancel is answered for it (STALE), new
        logins are refused and /readyz answers 503 (red team 9b N3)."""
        return self.peer is None or (self.slot is not None and self.claim is not None)

    @property
    def current(self) -> bool:
        """The config in force is the registry's as far as this process can know: connected, the reload after the
        last (re)connect has run, and no reload since the last good one failed to read the registry."""
        overdue = self._waiting_since is not None and _clock() - self._waiting_since > RELOAD_DUE
        return self.connected and not self._failing and self._done >= self._resync and not overdue

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

    def _ask(self) -> int:
        if self._waiting_since is None:
            self._waiting_since = _clock()
        self._asked += 1
        self._dirty.set()
        return self._asked

    async def _apply(self) -> None:
        delay = RETRY_FIRST
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            asked, started = self._asked, _clock()
            try:
                status, message = await self.reload()
            except Exception as exc:  # the reload reports its own failures; this is a bug's last line
                status, message = "rejected", str(exc) or type(exc).__name__
                log.error("registry_reload_failed", problem=message)
            if status == "unreachable":
                # Tried again until it reads the registry: logged once, then at debug level per retry.
                (log.debug if self._failing else log.warning)("registry_behind", problem=message, retry_in_s=delay)
                self._failing = True
                with contextlib.suppress(TimeoutError):  # a reconnect or a notification tries again at once
                    await asyncio.wait_for(self._dirty.wait(), delay)
                delay = min(delay * 2, RETRY_MAX)
                self._dirty.set()
                continue
            delay = RETRY_FIRST
            self._done = max(self._done, asked)
            self._waiting_since = None if self._done >= self._asked else started  # (later asks came after it began)
            if self._failing:
                self._failing = False
                log.info("registry_caught_up")
            if status == "applied":
                if message:  # (the supervisor's slot-only watch applies nothing: no line per change)
                    log.info("registry_applied", result=message)
            else:
                log.error("registry_rejected", result=message)

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
                    # Changes committed before LISTEN (since the config was read at start, or while the connection
                    # was down) were not announced to us: reload, whatever the change numbers say. They are taken
                    # at a change's first write, not at its commit, so a lower one can commit after a higher one
                    # was applied (red team 8b F5); the reload's snapshot, taken after LISTEN, sees every commit
                    # made before it, and every later one is announced on this connection.
                    self._resync = self._ask()
                    self.connected = True
                    self._unreachable_logged, self._unreachable_attempts = None, 0
                    log.info("registry_listening")
                    await self._receive(conn)
            except (psycopg.Error, OSError) as exc:
                self._lost(str(exc).strip())
                await asyncio.sleep(self.reconnect_delay)

    async def _receive(self, conn: psycopg.AsyncConnection) -> None:
        while True:
            async for _ in conn.notifies(timeout=PING_INTERVAL):
                self._ask()
            await self._ping(conn)  # silent for PING_INTERVAL: is the connection still there?
            if self.peer is not None and self.slot is not None and self.claim is None:
                await self._claim(conn)  # the slot was lost: is it free again?

    async def _ping(self, conn: psycopg.AsyncConnection) -> None:
        """A round trip within PING_TIMEOUT, else OSError after cutting the connection's socket (the pending read then
        fails at once, as on a lost connection, instead of psycopg cancelling the query over the same dead path)."""
        ping = asyncio.ensure_future(conn.execute("SELECT 1"))
        try:
            done, _ = await asyncio.wait({ping}, timeout=PING_TIMEOUT)
            if not done:
                _cut(conn)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ping, PING_TIMEOUT)
                raise OSError(f"no answer to a round trip within {PING_TIMEOUT:g} s")
            ping.result()
        finally:
            ping.cancel()

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
            elif self.claim is not None:  # (once per loss: it is tried again after every round trip)
                self.claim = None  # its old claim is answered STALE from now on: senders look the slot up again
                log.error("instance_slot_lost", slot=self.slot, problem="another instance holds this one's slot "
                          "since its registry connection was down: cancels of this instance's sessions landing "
                          "elsewhere reach that one (and are ignored there); new logins are refused and /readyz "
                          "answers 503 until the slot is free again")
        self.claimed.set()

    def _lost(self, problem: str) -> None:
        if self.connected:
            log.warning("registry_connection_lost", problem=problem)
            self._unreachable_logged, self._unreachable_attempts = None, 0
        elif problem:
            # Every reconnect attempt fails while the registry is down: a warning for the first and then one per
            # UNREACHABLE_LOG_EVERY seconds, counting the attempts between (the rest at debug level).
            self._unreachable_attempts += 1
            now = _clock()
            last = self._unreachable_logged
            if last is None or now - last >= UNREACHABLE_LOG_EVERY:
                log.warning("registry_unreachable", problem=problem, attempts=self._unreachable_attempts)
                self._unreachable_logged, self._unreachable_attempts = now, 0
            else:
                log.debug("registry_unreachable", problem=problem)
        self.connected = False


def _cut(conn: psycopg.AsyncConnection) -> None:
    """Shut the connection's socket down (both ways) without waiting for the peer."""
    with contextlib.suppress(OSError, ValueError, psycopg.Error):
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)
