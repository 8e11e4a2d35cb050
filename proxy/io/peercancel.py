"""Forwarded cancels between stateless replicas (I/O layer): the peer port that receives them and the sender that
finds the owning instance's address in the registry and passes a CancelRequest on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import psycopg

from proxy import instancekey
from proxy.logs import get_logger
from proxy.registrydb import FIND_SLOT, INSTANCE_LOCK

log = get_logger("pgtenant.peers")

TIMEOUT = 5.0  # seconds for a peer to read a frame, or to answer one (it waits for the backend's cancel)
MISSING_FOR = 5.0  # seconds a slot no instance held stays unlooked-up (a new instance is found after that)
_clock = time.monotonic
Cancel = Callable[[int, bytes], Awaitable[None]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class PeerCancelServer:
    """The peer port: one authenticated frame per connection, cancelled here as a local CancelRequest (never passed
    on again), then one ACK byte."""

    def __init__(self, host: str, port: int, shared: bytes, cancel_here: Cancel) -> None:
        self.host, self.port = host, port
        self.verifier = instancekey.Verifier(shared)
        self.cancel_here = cancel_here
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = int(self.server.sockets[0].getsockname()[1])
        log.info("peer_listening", address=f"{self.host}:{self.port}")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            frame = await asyncio.wait_for(reader.readexactly(instancekey.FRAME_LEN), TIMEOUT)
            checked = self.verifier.check(frame, _now_ms())
            if isinstance(checked, str):
                log.warning("peer_cancel_refused", reason=checked)
                return
            await self.cancel_here(*checked)
            writer.write(instancekey.ACK)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.warning("peer_cancel_refused", reason=type(exc).__name__)
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


class PeerCancelSender:
    """Passes CancelRequests for other instances' sessions on: the slot's address from the registry (cached until
    a send fails), one frame under the shared secret."""

    def __init__(self, dsn: str, shared: bytes) -> None:
        self.dsn = dsn
        self.shared = shared
        self._where: dict[int, tuple[str, int]] = {}
        # Slots no instance held at the last lookup, until when that answer stands; one lookup at a time. Anyone can
        # send CancelRequests naming an unused slot: each used to open a registry connection (a SCRAM login), and
        # ~130 a second stalled the event loop (red team 8b F1).
        self._missing: dict[int, float] = {}
        self._lookup = asyncio.Lock()

    async def _find(self, slot: int) -> tuple[str, int] | None:
        found = self._where.get(slot)
        if found is not None or self._missing.get(slot, 0.0) > _clock():
            return found
        async with self._lookup:
            found = self._where.get(slot)
            if found is not None or self._missing.get(slot, 0.0) > _clock():
                return found
            found = await self._query(slot)
            if found is None:
                self._missing[slot] = _clock() + MISSING_FOR
            else:
                self._where[slot] = found
            return found

    async def _query(self, slot: int) -> tuple[str, int] | None:
        try:
            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5,
                                                              application_name="pgtenant-peers") as conn:
                row = await (await conn.execute(FIND_SLOT, (slot, INSTANCE_LOCK, slot))).fetchone()
        except (psycopg.Error, OSError) as exc:
            log.warning("peer_lookup_failed", slot=slot, error=str(exc).strip())
            return None
        return None if row is None else (str(row[0]), int(row[1]))

    async def send(self, slot: int, process_id: int, secret_key: bytes) -> bool:
        """Whether the instance of `slot` took the cancel (and has acted on it)."""
        where = await self._find(slot)
        if where is None:  # (debug: anyone can send these)
            log.debug("cancel_ignored", reason="no_instance", slot=slot)
            return False
        writer = None
        try:
            async with asyncio.timeout(TIMEOUT):
                reader, writer = await asyncio.open_connection(*where)
                writer.write(instancekey.encode(self.shared, process_id, secret_key, _now_ms()))
                await writer.drain()
                ok = await reader.read(1) == instancekey.ACK
        except (TimeoutError, OSError) as exc:
            log.warning("cancel_forward_failed", slot=slot, peer=f"{where[0]}:{where[1]}",
                        error=str(exc) or type(exc).__name__)
            self._where.pop(slot, None)
            return False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        log.info("cancel_passed_to_instance", slot=slot, answered=ok)
        return ok
