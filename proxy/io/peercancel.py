"""Forwarded cancels between stateless replicas (I/O layer): the peer port that receives them and the sender that
finds the owning instance's address in the registry and passes a CancelRequest on."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg

from proxy import instancekey
from proxy.auth.prelogin import PreloginLimiter
from proxy.config import RegistryConfig
from proxy.logs import LogLimiter, get_logger
from proxy.registrydb import HELD_SLOTS, INSTANCE_LOCK, with_tcp_timeouts

log = get_logger("pgtenant.peers")

TIMEOUT = 5.0  # seconds a sender gives an exchange, and a receiver its answer (the frame: registry.peer_frame_timeout)
MISSING_FOR = 5.0  # seconds a slot no instance held stays unlooked-up (a new instance is found after that)
LOOKUP_QUEUE = 4  # slots whose cancels may wait for the registry lookup under way; more are dropped (LookupBusy)
LIVE_FOR = 60.0  # seconds a slot the registry showed held counts as live (its lookups go first, never LookupBusy)
RELOOK_AFTER = 1.0  # seconds: a slot whose cached instance gave no genuine answer is looked up again at most this often
_clock = time.monotonic
DEFAULTS = RegistryConfig()  # (the peer port's caps: proxy.config's defaults)
# (process id, key proof) -> whether a session of this instance had that key (and its cancel was passed on)
Cancel = Callable[[int, bytes], Awaitable[bool]]
Claim = Callable[[], tuple[int | None, int | None]]  # this instance's (slot, claim id) in the registry now
Where = tuple[str, int, int]  # an instance's peer address and claim id


class LookupBusy(Exception):
    """Cancels of more than LOOKUP_QUEUE slots already wait for a registry lookup: this one is dropped (red team 9b
    N5)."""


def advertised_host(advertise: str | None, peer_host: str) -> str:
    """The address other instances reach this one's peer port at (the config requires advertise_host when peer_host
    is a wildcard: proxy.config)."""
    return advertise or peer_host


def no_slot_problem(bits: int) -> str:
    return ("registry: no instance slot could be claimed (is the registry reachable? are all "
            f"{1 << bits} slots held? see registry.instance_bits)")


class PeerCancelServer:
    """The peer port: one exchange per connection (challenge, request, answer; proxy/instancekey.py); a request for
    this instance's slot and claim is cancelled here as a local CancelRequest (never passed on again). Anyone can
    connect to it, so the connections still waiting for their authenticated frame are capped in all and per address
    (over a cap the oldest waiting one, of the newcomer's address first, is closed to make room: a genuine sender
    sends its frame one round trip after the opening) and one whose frame has not arrived within
    `limits.peer_frame_timeout` is closed; a flood of half-open connections used to hold a descriptor each for that
    long, without bound. Authenticated exchanges are not counted: only instances knowing peer_secret start them,
    each sender at most FORWARD_IN_FLIGHT per destination (proxy.cancel)."""

    def __init__(self, host: str, port: int, shared: bytes, cancel_here: Cancel, claim: Claim,
                 refused: Callable[[str], None] = lambda _reason: None,
                 limits: RegistryConfig = DEFAULTS) -> None:
        self.host, self.port = host, port
        self.shared = shared
        self.cancel_here = cancel_here
        self.claim = claim
        self.refused = refused  # counts and logs (rate-limited) what the port refused: anyone can connect to it
        self.frame_timeout = limits.peer_frame_timeout
        self.gate = PreloginLimiter(limits.peer_max_connections_per_address, limits.peer_max_connections)
        self._open: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}  # connection -> its handler
        self.server: asyncio.AbstractServer | None = None

    def __len__(self) -> int:
        """Connections open on the peer port."""
        return len(self._open)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = int(self.server.sockets[0].getsockname()[1])
        log.info("peer_listening", address=f"{self.host}:{self.port}")

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Whether a new connection may stay (closing the connections that make room for it)."""
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        victims, limit = self.gate.admit(writer, address)
        for victim, _ in victims:
            self._drop(victim)  # type: ignore[arg-type]
            self.refused("evicted")
        if limit is not None:  # (never: every place is held by a connection still waiting, which can make room)
            self.refused("full")
            writer.transport.abort()
            return False
        self._open[writer] = asyncio.current_task()
        return True

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        task = self._open.pop(writer, None)
        writer.transport.abort()
        if task is not None:
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            return
        try:
            opening = instancekey.hello()
            challenge = opening[len(instancekey.MAGIC):]
            writer.write(opening)
            frame = await asyncio.wait_for(reader.readexactly(instancekey.REQUEST_LEN), self.frame_timeout)
            checked = instancekey.check_request(self.shared, challenge, frame, *self.claim())
            if isinstance(checked, str):
                self.refused(checked)
                return
            self.gate.done(writer)  # genuine: no longer waiting, never closed to make room (its senders bound them)
            if not checked.mine:  # a stale address or claim: the sender looks the slot up again
                status = instancekey.STALE
            else:
                found = await self.cancel_here(checked.process_id, checked.proof)
                status = instancekey.FOUND if found else instancekey.UNKNOWN
            writer.write(instancekey.answer(self.shared, challenge, frame, status))
            await asyncio.wait_for(writer.drain(), TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            self.refused(type(exc).__name__)
        except asyncio.CancelledError:
            if writer in self._open:  # (evicted: _drop counted it; otherwise the server is closing)
                raise
        finally:
            self.gate.done(writer)
            self._open.pop(writer, None)
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self._open):
            self._drop(writer)


class LookupFailed(Exception):
    """The registry could not be read (the lookup says nothing about the slot)."""


class LookupTurns:
    """One registry lookup at a time; lookups of live slots (`first`) take their turn before the others (anyone can
    keep lookups of free slots waiting: red team 9b2 P1)."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: tuple[collections.deque[asyncio.Future[None]], ...] = (collections.deque(), collections.deque())

    @contextlib.asynccontextmanager
    async def turn(self, first: bool) -> AsyncIterator[None]:
        if self._busy:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting[0 if first else 1].append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed the turn as it was cancelled: pass it on
                    self._next()
                raise
        self._busy = True
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        for waiting in self._waiting:
            while waiting:
                waiter = waiting.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # (the turn passes straight on: _busy stays set)
                    return
        self._busy = False


class PeerCancelSender:
    """Passes CancelRequests for other instances' sessions on: the slot's address and claim from the registry
    (cached until an exchange with it fails or is answered STALE: then looked up again, once, and replaced only by what
    the registry answers), one exchange under the shared secret."""

    def __init__(self, dsn: str, shared: bytes) -> None:
        self.dsn = with_tcp_timeouts(dsn)
        self.shared = shared
        self._where: dict[int, Where] = {}
        # Slots no instance held at the last lookup, until when that answer stands; one lookup at a time. Anyone can
        # send CancelRequests naming an unused slot: each used to open a registry connection (a SCRAM login), and
        # ~130 a second stalled the event loop (red team 8b F1).
        self._missing: dict[int, float] = {}
        self._looked_up: dict[int, float] = {}  # when each slot's address was last read from the registry
        self._found: dict[int, float] = {}  # when a lookup last found an instance holding each slot
        self._turns = LookupTurns()
        # Slots not live (see _live) whose lookup is under way or waits (-> how many cancels wait for it): anyone can
        # make cancels wait, so at most LOOKUP_QUEUE such slots wait besides the one looked up (a slot's cancels all
        # wait for its one lookup). Live slots are never refused and go first (red team 9b2 P1).
        self._queued: dict[int, int] = {}
        self._log_limit = LogLimiter()  # (anyone can send CancelRequests naming a slot whose instance fails)

    def _live(self, slot: int) -> bool:
        """Whether an instance holds `slot` as far as this sender knows (cached, or found within LIVE_FOR): only the
        registry makes a slot live, so a flood naming free slots cannot."""
        return slot in self._where or self._found.get(slot, -LIVE_FOR) + LIVE_FOR > _clock()

    async def find(self, slot: int, stale: Where | None = None) -> Where | None:
        """The address and claim of `slot`'s instance (cached, or read from the registry); None if none holds it.
        With `stale` (the cached entry that gave no genuine answer, or a genuine UNKNOWN), read the registry even
        though it is cached; the entry is replaced only by the registry's answer (a failed lookup keeps it).
        LookupBusy when it needs a lookup for a slot not live and cancels of LOOKUP_QUEUE other such slots already
        wait for one: with many free slots (instance_bits 10) anyone could queue cancels without bound behind the one
        lookup at a time, holding every other cancel needing a lookup for minutes (red team 9b N5)."""
        found = self._where.get(slot)
        if stale is None and (found is not None or self._missing.get(slot, 0.0) > _clock()):
            return found
        live = self._live(slot)
        if not live:
            if slot not in self._queued and len(self._queued) > LOOKUP_QUEUE:
                raise LookupBusy(slot)
            self._queued[slot] = self._queued.get(slot, 0) + 1
        try:
            async with self._turns.turn(first=live):
                found = self._where.get(slot)
                if stale is None and (found is not None or self._missing.get(slot, 0.0) > _clock()):
                    return found
                if stale is not None and found != stale:  # another cancel's lookup answered meanwhile
                    return found
                return await self._look_up(slot, keep=found)
        finally:
            if not live:
                if self._queued[slot] == 1:
                    del self._queued[slot]
                else:
                    self._queued[slot] -= 1

    async def _look_up(self, slot: int, keep: Where | None) -> Where | None:
        """Read `slot` from the registry (the caller holds the turn); if the read fails, `keep` stays (or, with none,
        the slot counts as missing for MISSING_FOR)."""
        self._looked_up[slot] = _clock()
        try:
            async with asyncio.timeout(TIMEOUT):  # (a lookup hanging on a silent registry path holds the queue)
                found = await self._query(slot)
        except (TimeoutError, LookupFailed) as exc:
            if isinstance(exc, TimeoutError):
                log.warning("peer_lookup_failed", slot=slot, error="timed out")
            if keep is None:
                self._missing[slot] = _clock() + MISSING_FOR
            return keep
        if found is None:  # (no longer live either)
            self._where.pop(slot, None)
            self._found.pop(slot, None)
            self._missing[slot] = _clock() + MISSING_FOR
        else:
            self._where[slot] = found
            self._found[slot] = _clock()
            self._missing.pop(slot, None)
        return found

    def missing(self, slot: int) -> bool:
        """Whether no instance held `slot` at the last lookup (recently)."""
        return self._missing.get(slot, 0.0) > _clock()

    async def _query(self, slot: int) -> Where | None:
        """`slot`'s instance, from a read of every held slot: the others are learned too (`_learn`)."""
        held = await self._held_slots(slot)
        self._learn({other: where for other, where in held.items() if other != slot})
        return held.get(slot)

    def _learn(self, held: dict[int, Where]) -> None:
        """What a lookup read of slots it was not asked about: each becomes live (cached, never `busy`), so a new
        instance's cancels need no lookup of their own, which a flood naming free slots could keep from ever getting
        a place in the queue (red team 9b3 F5). A slot missing from it is left alone (its own lookup drops it)."""
        now = _clock()
        for slot, where in held.items():
            self._where[slot] = where
            self._found[slot] = now
            self._missing.pop(slot, None)

    async def _held_slots(self, slot: int) -> dict[int, Where]:
        """Every slot an instance holds now (one registry session, one query); `slot`: the one asked for (logs)."""
        try:
            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5,
                                                              application_name="pgtenant-peers") as conn:
                rows = await (await conn.execute(HELD_SLOTS, (INSTANCE_LOCK,))).fetchall()
        except (psycopg.Error, OSError) as exc:
            log.warning("peer_lookup_failed", slot=slot, error=str(exc).strip())
            raise LookupFailed(slot) from exc
        return {int(row[0]): (str(row[1]), int(row[2]), int(row[3])) for row in rows}

    async def send(self, slot: int, process_id: int, secret_key: bytes) -> bytes | None:
        """The answer of the instance of `slot` (instancekey.FOUND: it had the session and acted on the cancel;
        UNKNOWN: no session of it has that key); None if no instance of the slot answered genuinely."""
        where = await self.find(slot)
        status = None if where is None else await self._exchange(where, slot, process_id, secret_key)
        # Gone, replaced, or an impostor there: look again (not for every cancel: anyone can send them, and a lookup
        # is a registry login). Also on a genuine UNKNOWN: its instance may have lost the slot without knowing it yet
        # (its registry connection down) while the session is the slot's new owner's (red team 9b N3). The cached
        # entry is never dropped before the registry answered: anyone can make an instance answer UNKNOWN (a random
        # key) while keeping lookups busy, which dropped every later cancel for a live slot (red team 9b2 P1).
        if where is not None and status in (None, instancekey.STALE, instancekey.UNKNOWN) \
                and self._looked_up.get(slot, 0.0) + RELOOK_AFTER <= _clock():
            try:
                fresh = await self.find(slot, stale=where)
            except LookupBusy:
                fresh = None
            if fresh is not None and fresh != where:
                status = await self._exchange(fresh, slot, process_id, secret_key)
        return status

    async def _exchange(self, where: Where, slot: int, process_id: int, secret_key: bytes) -> bytes | None:
        host, port, claim = where
        writer = None
        try:
            async with asyncio.timeout(TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
                challenge = instancekey.challenge_of(await reader.readexactly(instancekey.HELLO_LEN))
                if challenge is None:
                    raise ConnectionError("not a pgtenant peer port")
                frame = instancekey.request(self.shared, challenge, slot, claim, process_id, secret_key)
                writer.write(frame)
                await writer.drain()
                reply = await reader.readexactly(instancekey.ANSWER_LEN)
                status = instancekey.check_answer(self.shared, challenge, frame, reply)
                if status is None:
                    raise ConnectionError("no genuine answer")
                return status
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            dropped = self._log_limit.allow(time.monotonic())
            if dropped is not None:
                log.warning("cancel_forward_failed", slot=slot, peer=f"{host}:{port}",
                            error=str(exc) or type(exc).__name__, **({"suppressed_before": dropped} if dropped else {}))
            return None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
