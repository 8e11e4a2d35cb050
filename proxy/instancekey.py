"""Stateless replicas' cancel keys and forwarded cancels (data): which instance a process id names, and the
authenticated frame one instance sends another to pass a CancelRequest on. Pure."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

PROCESS_ID_BITS = 31  # BackendKeyData's process id is an Int32, positive like PostgreSQL's
MAX_INSTANCE_BITS = 10


@dataclass(frozen=True, slots=True)
class InstanceSpace:
    """Process ids name the instance that gave them: their top `bits` bits are its slot (claimed in the registry),
    at the same place whatever the instance's worker count (the worker index takes the low bits, proxy.cancel), so
    instances of 1 and of N workers read each other's keys alike. The secret key stays 32 random bits: only the
    process id carries routing, as PgBouncer's peer_id does."""

    slot: int = 0
    bits: int = 0

    @property
    def shift(self) -> int:
        return PROCESS_ID_BITS - self.bits

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
        """`process_id` (a worker's: its low bits name the worker) with this instance's slot put in its top bits."""
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


# --- the forwarded cancel: one exchange from instance to instance ----------------------------------------------------
#
# The receiver opens with a fresh challenge; the sender's request is MAC'd over it (a captured request is worth
# nothing on another connection: no nonce memory to flush, no clock to trust; red team 8b F6); it names the slot and
# the claim (the registry row's `since`) it expects to reach (a stale address answers STALE or nothing: the sender
# looks the slot up again; F8) and carries the process id with a proof of the secret key, never the key itself; the
# answer is MAC'd over the challenge and the request (an impostor at an old address cannot fake it).

MAGIC = b"PGT2"
CHALLENGE_LEN = 16
HELLO_LEN = len(MAGIC) + CHALLENGE_LEN
PROOF_LEN = 16
_REQUEST = struct.Struct(f"!4sHqI{PROOF_LEN}s16s")  # magic, slot, claim, process id, key proof, sender's nonce
REQUEST_LEN = _REQUEST.size + 32  # + HMAC-SHA256 under the shared secret, over the challenge and the body
ANSWER_LEN = 1 + 32  # status + HMAC-SHA256 over the challenge, the request and the status
FOUND, UNKNOWN, STALE = b"K", b"U", b"S"  # cancelled here / no session has that key here / not this slot's claim
MIN_SECRET_LEN = 32


def _mac(shared: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(shared, b"".join((label, *parts)), hashlib.sha256).digest()


def key_proof(shared: bytes, process_id: int, secret_key: bytes) -> bytes:
    """What stands for a cancel key between instances: the receiver compares it with its own session's key's proof;
    an eavesdropper cannot turn it into a CancelRequest (red team 8b F8: the key travelled in clear)."""
    return _mac(shared, b"pgtenant key", struct.pack("!I", process_id), secret_key)[:PROOF_LEN]


def hello(challenge: bytes | None = None) -> bytes:
    """The receiver's opening: a fresh challenge the request must be MAC'd over."""
    return MAGIC + (challenge or secrets.token_bytes(CHALLENGE_LEN))


def challenge_of(opening: bytes) -> bytes | None:
    return opening[len(MAGIC):] if len(opening) == HELLO_LEN and opening.startswith(MAGIC) else None


def request(shared: bytes, challenge: bytes, slot: int, claim: int, process_id: int, secret_key: bytes,
            nonce: bytes | None = None) -> bytes:
    """The sender's frame: cancel the session of (process id, secret key) at the instance of `slot` under `claim`."""
    body = _REQUEST.pack(MAGIC, slot, claim, process_id, key_proof(shared, process_id, secret_key),
                         nonce or secrets.token_bytes(16))
    return body + _mac(shared, b"pgtenant ask", challenge, body)


@dataclass(frozen=True, slots=True)
class Ask:
    """A request that passed its MAC: whether it is for this instance's claim, and what it names."""

    mine: bool
    process_id: int
    proof: bytes


def check_request(shared: bytes, challenge: bytes, frame: bytes, slot: int | None, claim: int | None) -> Ask | str:
    """The checked request (`mine` False: it expects another slot or claim, answered STALE); else why it was
    refused (no answer)."""
    if len(frame) != REQUEST_LEN:
        return "bad_length"
    body, mac = frame[:_REQUEST.size], frame[_REQUEST.size:]
    if not hmac.compare_digest(mac, _mac(shared, b"pgtenant ask", challenge, body)):
        return "bad_mac"
    magic, to_slot, to_claim, process_id, proof, _ = _REQUEST.unpack(body)
    if magic != MAGIC:
        return "bad_magic"
    return Ask(to_slot == slot and to_claim == claim, process_id, proof)


def answer(shared: bytes, challenge: bytes, frame: bytes, status: bytes) -> bytes:
    return status + _mac(shared, b"pgtenant answer", challenge, frame, status)


def check_answer(shared: bytes, challenge: bytes, frame: bytes, reply: bytes) -> bytes | None:
    """The status of a genuine answer (FOUND, UNKNOWN, STALE); None for anything else (an impostor's `K`)."""
    if len(reply) != ANSWER_LEN or reply[:1] not in (FOUND, UNKNOWN, STALE):
        return None
    status = reply[:1]
    return status if hmac.compare_digest(reply[1:], _mac(shared, b"pgtenant answer", challenge, frame, status)) \
        else None
