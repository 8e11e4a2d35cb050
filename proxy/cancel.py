"""Cancel keys: the ones pgtenant hands to clients (the worker process that serves a session is in the process id's
low bits) and the map from a key onto the session it names; pure and bounded."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from proxy import instancekey
from proxy.auth.prelogin import address_key

PROCESS_ID_BITS = 31  # BackendKeyData's process id is an Int32; PostgreSQL's are positive, and so are ours


@dataclass(frozen=True, slots=True)
class KeySpace:
    """How process ids name worker processes: the low `bits` bits of a process id are the index of the worker that
    gave it (none with one worker). The secret key's 32 bits stay wholly random: only the process id, which
    PostgreSQL's own cancel keys reveal too (it is the backend's pid), carries routing (PgBouncer's peer_id)."""

    index: int = 0
    count: int = 1

    @property
    def bits(self) -> int:
        return (self.count - 1).bit_length()

    def new_process_id(self) -> int:
        """A fresh process id naming this worker: random above the worker bits, never 0."""
        bits = self.bits
        while True:
            pid = (secrets.randbits(PROCESS_ID_BITS - bits) << bits) | self.index
            if pid:
                return pid

    def worker_of(self, process_id: int) -> int | None:
        """The index of the worker that gave `process_id`; None if no worker of this proxy could have."""
        if not 0 < process_id < 1 << PROCESS_ID_BITS:
            return None
        index = process_id & ((1 << self.bits) - 1)
        return index if index < self.count else None


_space = KeySpace()


def use_key_space(space: KeySpace) -> None:
    """This process is worker `space.index` of `space.count` (set once at a worker's start)."""
    global _space
    if not 0 <= space.index < space.count:
        raise ValueError(f"worker index {space.index} out of 0..{space.count - 1}")
    _space = space


def key_space() -> KeySpace:
    return _space


SECRET_LEN_3_0 = 4  # protocol 3.0's BackendKeyData: an Int32 process id and 4 secret bytes
SECRET_LEN_3_2 = 32  # protocol 3.2 (PostgreSQL 18) allows up to 256; PostgreSQL 18 itself gives 32


def new_cancel_key() -> tuple[int, bytes]:
    """A client's cancel key: (process id naming this worker, and this instance when stateless replicas share a
    registry (proxy.instancekey: its slot sits in the top bits), SECRET_LEN_3_2 random secret bytes: `client_key`
    gives a protocol 3.0 client the first 4)."""
    while True:
        pid = instancekey.space().carry(_space.new_process_id())
        if pid:
            return pid, secrets.token_bytes(SECRET_LEN_3_2)


def client_key(key: tuple[int, bytes], protocol_minor: int) -> tuple[int, bytes]:
    """The key as a client of protocol 3.`protocol_minor` is given it (and names it in its CancelRequests)."""
    pid, secret = key
    return pid, secret if protocol_minor >= 2 else secret[:SECRET_LEN_3_0]


class CancelRegistry:
    """Client (process id, secret) -> the session it was given to (a cancel is forwarded to the server that session
    holds when the CancelRequest arrives, if any). Keyed by the whole key: process ids keep only 25-26 random bits, so
    two sessions of one process may share one (thousands of sessions: likely); neither ever overwrites, finds or
    unregisters the other (red team 9b N4; PgBouncer also matches the whole key)."""

    def __init__(self) -> None:
        self._by_pid: dict[int, list[tuple[bytes, object]]] = {}

    def register(self, process_id: int, secret_key: bytes, target: object) -> None:
        entries = self._by_pid.setdefault(process_id, [])
        entries[:] = [(secret, had) for secret, had in entries if secret != secret_key]  # (the same key given anew)
        entries.append((secret_key, target))

    def unregister(self, process_id: int, secret_key: bytes) -> None:
        entries = [(secret, had) for secret, had in self._by_pid.get(process_id, ()) if secret != secret_key]
        if entries:
            self._by_pid[process_id] = entries
        else:
            self._by_pid.pop(process_id, None)

    def lookup(self, process_id: int, secret_key: bytes) -> object | None:
        found = None
        for secret, target in self._by_pid.get(process_id, ()):
            if hmac.compare_digest(secret, secret_key):
                found = target
        return found

    def lookup_proof(self, process_id: int, proof: bytes, shared: bytes) -> object | None:
        """The session whose key's proof (proxy.instancekey.key_proof: what another instance forwards instead of the
        key) is `proof`."""
        found = None
        for secret, target in self._by_pid.get(process_id, ()):
            if hmac.compare_digest(instancekey.key_proof(shared, process_id, secret), proof):
                found = target
        return found

    def __contains__(self, process_id: int) -> bool:
        return process_id in self._by_pid


FORWARD_RATE = 20.0  # cancels a second one client address may have passed to other instances, after a burst of
FORWARD_BURST = 50.0
FORWARD_ADDRESSES = 4096  # addresses remembered (the least recently seen is forgotten: it gets a fresh burst)
FORWARD_TOTAL_RATE = 200.0  # cancels a second all client addresses together may have passed on, after a burst of
FORWARD_TOTAL_BURST = 400.0
FORWARD_IN_FLIGHT = 16  # exchanges with one instance (slot) at a time; more are dropped
# While the overall budget is below this share of its burst, each source (an address's /24, or /64 for IPv6) may
# have one cancel passed on per FORWARD_QUIET seconds: many addresses each under their own rate drained the overall
# budget, and a victim's one cancel was dropped with the flood's (red team 9b2 P2).
FORWARD_SHORT = 0.5
FORWARD_QUIET = 1.0
# Meanwhile a source one of whose passed cancels the owning instance answered "no session has that key" (a guessed
# key: anyone's flood gets nothing else) waits FORWARD_WRONG_FOR seconds instead: with more sources than the overall
# rate (~200 /24s, each sending every second) a flood still emptied the budget (red team 9b2 P2's residue); now it
# takes FORWARD_TOTAL_RATE * FORWARD_WRONG_FOR (12,000) sources. Remembered for FORWARD_WRONG_SOURCES sources: only
# passed cancels are answered, at most FORWARD_TOTAL_RATE a second, so none is forgotten within FORWARD_WRONG_FOR.
FORWARD_WRONG_FOR = 60.0
FORWARD_WRONG_SOURCES = 16384


def source_of(address: str) -> str:
    """The source a client address counts under in the overall forward budget: its /24 (IPv4, IPv4-mapped too) or
    /64 (IPv6), the block one party typically holds; anything else (a unix socket) as itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


class ForwardLimiter:
    """Limits on CancelRequests passed to another instance: anyone can send them, and each costs a connection and an
    exchange with that instance (red team 8b F4/F6). A token bucket per client address as pgtenant sees it (an IPv6
    one per /64: red team 9b3 F7; behind a balancer that hides client addresses, one bucket is everyone's:
    docs/operations.md "Stateless replicas"), one over all addresses (fair: while it is short, one cancel a second
    per source, source_of, and one a minute for a source whose cancels named no session lately), and a cap on
    exchanges in flight per destination slot (red team 9b N1). Cancels naming a slot no instance holds are answered
    by the sender's negative cache and never charged here. Pure: the caller passes the time."""

    def __init__(self, rate: float = FORWARD_RATE, burst: float = FORWARD_BURST,
                 addresses: int = FORWARD_ADDRESSES, total_rate: float = FORWARD_TOTAL_RATE,
                 total_burst: float = FORWARD_TOTAL_BURST, in_flight: int = FORWARD_IN_FLIGHT) -> None:
        self.rate, self.burst, self.addresses = rate, burst, addresses
        self.total_rate, self.total_burst, self.in_flight = total_rate, total_burst, in_flight
        self._buckets: dict[str, tuple[float, float]] = {}  # address_key -> (tokens, when), least recently seen first
        self._total: tuple[float, float] | None = None  # (tokens, when) over all addresses
        self._sources: dict[str, float] = {}  # source (source_of) -> when one of its cancels was last passed on
        self._flying: dict[int, int] = {}  # slot -> exchanges under way
        self._wrong: dict[str, float] = {}  # source -> when one of its passed cancels named no session, oldest first

    def allow(self, address: str, now: float) -> bool:
        """Whether a cancel from `address` may be passed on now (charged to its bucket and the total if so)."""
        key = address_key(address)  # (an IPv6 client's /64, as the login limits count it: red team 9b3 F7)
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        total, total_last = self._total or (self.total_burst, now)
        total = min(self.total_burst, total + (now - total_last) * self.total_rate)
        source = source_of(address)
        # The overall budget short: only a source none of whose cancels was passed on lately (red team 9b2 P2).
        fair = total >= self.total_burst * FORWARD_SHORT or (
            self._sources.get(source, now - FORWARD_QUIET) <= now - FORWARD_QUIET
            and self._wrong.get(source, now - FORWARD_WRONG_FOR) <= now - FORWARD_WRONG_FOR)
        allowed = tokens >= 1.0 and total >= 1.0 and fair
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        self._total = (total - 1.0 if allowed else total, now)
        if len(self._buckets) > self.addresses:
            del self._buckets[next(iter(self._buckets))]
        if allowed:
            self._sources.pop(source, None)
            self._sources[source] = now
            if len(self._sources) > self.addresses:
                del self._sources[next(iter(self._sources))]
        return allowed

    def wrong(self, address: str, now: float) -> None:
        """A cancel from `address` passed on was answered "no session has that key" by the instance owning it."""
        source = source_of(address)
        self._wrong.pop(source, None)
        self._wrong[source] = now
        if len(self._wrong) > FORWARD_WRONG_SOURCES:
            del self._wrong[next(iter(self._wrong))]

    def begin(self, slot: int) -> bool:
        """Whether an exchange with `slot`'s instance may start (then `end(slot)` once it is over)."""
        flying = self._flying.get(slot, 0)
        if flying >= self.in_flight:
            return False
        self._flying[slot] = flying + 1
        return True

    def end(self, slot: int) -> None:
        flying = self._flying.pop(slot, 0) - 1
        if flying > 0:
            self._flying[slot] = flying


# A session's own CancelRequests (red team 9s6 F4: ~600 a second from one session, each a PostgreSQL fork): one is
# forwarded for a running request; another for the same request only once CANCEL_REPEAT_AFTER seconds have passed
# since (PostgreSQL ignores a cancel that reaches a backend still reading the request's bytes: a later one must still
# reach it); none when the session runs nothing (PostgreSQL ignores it then); and at most CANCEL_RATE a second after a
# burst of CANCEL_BURST (a session running request after request). The rest are dropped, counted by reason.
CANCEL_REPEAT_AFTER = 1.0
CANCEL_RATE = 10.0
CANCEL_BURST = 10.0


class SessionCancels:
    """Which of one session's CancelRequests are forwarded to its server (see CANCEL_REPEAT_AFTER); pure: the caller
    passes the time and the session's running request (an opaque object, None: nothing running)."""

    __slots__ = ("_at", "_last", "_tokens", "_tokens_at")

    def __init__(self) -> None:
        self._last: object = None  # the request the last forwarded cancel was for
        self._at = 0.0  # when it was forwarded
        self._tokens = CANCEL_BURST
        self._tokens_at: float | None = None

    def check(self, request: object, now: float) -> str | None:
        """None: forward this cancel (charged); else why it is dropped: "no_request", "repeat", "throttled"."""
        if request is None:
            return "no_request"
        if request is self._last and now - self._at < CANCEL_REPEAT_AFTER:
            return "repeat"
        last = now if self._tokens_at is None else self._tokens_at
        tokens = min(CANCEL_BURST, self._tokens + (now - last) * CANCEL_RATE)
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return "throttled"
        self._tokens = tokens - 1.0
        self._last, self._at = request, now
        return None
