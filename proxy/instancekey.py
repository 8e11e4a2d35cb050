"""Stateless replicas' cancel keys and forwarded cancels (data): which instance a process id names, and the
authenticated frame one instance sends another to pass a CancelRequest on. Pure."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass

PROCESS_ID_BITS = 31  # BackendKeyData's process id is an Int32, positive like PostgreSQL's
MAX_INSTANCE_BITS = 10


@dataclass(frozen=True, slots=True)
class InstanceSpace:
    """Process ids name the instance that gave them: bits [shift, shift + bits) are its slot (claimed in the
    registry). `shift`: the bits below, kept for the worker index (worker processes, proxy.cancel). The secret key
    stays 32 random bits: only the process id carries routing, as PgBouncer's peer_id does."""

    slot: int = 0
    bits: int = 0
    shift: int = 0

    def new_process_id(self) -> int:
        """A fresh random process id carrying this instance's slot; never 0."""
        while True:
            pid = secrets.randbits(PROCESS_ID_BITS)
            if self.bits:
                mask = ((1 << self.bits) - 1) << self.shift
                pid = (pid & ~mask) | (self.slot << self.shift)
            if pid:
                return pid

    def carry(self, process_id: int) -> int:
        """`process_id` (a worker's: its low `shift` bits name the worker) with this instance's slot put in."""
        if not self.bits:
            return process_id
        mask = ((1 << self.bits) - 1) << self.shift
        return (process_id & ~mask) | (self.slot << self.shift)

    def slot_of(self, process_id: int) -> int | None:
        """The slot of the instance that gave `process_id` (None when no instance's could be: out of range)."""
        if not self.bits or not 0 < process_id < 1 << PROCESS_ID_BITS:
            return None
        return (process_id >> self.shift) & ((1 << self.bits) - 1)

    def elsewhere(self, process_id: int) -> int | None:
        """The slot of another instance whose key this is, or None when it is this instance's (or unroutable)."""
        slot = self.slot_of(process_id)
        return None if slot is None or slot == self.slot else slot


_space = InstanceSpace()


def use_space(space: InstanceSpace) -> None:
    """This process is instance `space.slot` (set once its slot is claimed, before any client is served)."""
    if not 0 <= space.bits <= MAX_INSTANCE_BITS or not 0 <= space.slot < (1 << space.bits or 1):
        raise ValueError(f"instance slot {space.slot} out of range for {space.bits} bits")
    global _space
    _space = space


def space() -> InstanceSpace:
    return _space


def new_process_id() -> int:
    """A client's cancel key process id (naming this instance when instances are in use)."""
    return _space.new_process_id()


# --- the forwarded cancel: one frame from instance to instance -----------------------------------------------------

MAGIC = b"PGTC"
_BODY = struct.Struct("!4sI4sQ16s")  # magic, process id, secret key, sender's clock (ms), nonce
FRAME_LEN = _BODY.size + 32  # + HMAC-SHA256 of the body under the shared secret
ACK = b"K"
MAX_SKEW_MS = 30_000  # a frame older (or newer) than this is refused: a replay needs a fresh one
MIN_SECRET_LEN = 32


def encode(shared: bytes, process_id: int, secret_key: bytes, now_ms: int, nonce: bytes | None = None) -> bytes:
    body = _BODY.pack(MAGIC, process_id, secret_key, now_ms, nonce or secrets.token_bytes(16))
    return body + hmac.new(shared, body, hashlib.sha256).digest()


class Verifier:
    """Checks forwarded-cancel frames: the shared secret's MAC, a fresh clock, a nonce not seen before."""

    def __init__(self, shared: bytes, remember: int = 4096) -> None:
        self.shared = shared
        self.remember = remember
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def check(self, frame: bytes, now_ms: int) -> tuple[int, bytes] | str:
        """(process id, secret key) of a good frame; else why it was refused."""
        if len(frame) != FRAME_LEN:
            return "bad_length"
        body, mac = frame[:_BODY.size], frame[_BODY.size:]
        if not hmac.compare_digest(mac, hmac.new(self.shared, body, hashlib.sha256).digest()):
            return "bad_mac"
        magic, process_id, secret_key, sent_ms, nonce = _BODY.unpack(body)
        if magic != MAGIC:
            return "bad_magic"
        if abs(now_ms - sent_ms) > MAX_SKEW_MS:
            return "stale"
        if nonce in self._seen:
            return "replayed"
        self._seen[nonce] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        return process_id, secret_key
