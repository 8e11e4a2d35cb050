"""Walks message boundaries in a byte stream: runs of untouched messages pass as raw slices, chosen ones stop."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy._accel import speedups
from proxy.protocol.errcut import ERROR_CUT, ErrorCut

_LEN = struct.Struct("!I")
_unpack_len = _LEN.unpack_from

ALL_TYPES = frozenset(range(256))  # intercept every message (startup, authentication): one set for all streams


@dataclass(frozen=True, slots=True)
class Message:
    """A whole message held back from the raw run for the session to act on."""

    type: int
    body: bytes

    def raw(self) -> bytes:
        return bytes((self.type,)) + _LEN.pack(len(self.body) + 4) + self.body


class FramingError(Exception):
    """The stream broke the framing rules (bad length, oversized message, a message type it refuses)."""

    def __init__(self, message: str, length: int = 0, too_large: bool = False) -> None:
        super().__init__(message)
        self.length = length
        self.too_large = too_large


_ERROR, _NOTICE = ord("E"), ord("N")  # a held Error/NoticeResponse past ERROR_CUT is cut as it arrives (errcut.py)
_REFUSED = 255  # the role of a refused type (handler roles are 2 + n for at most 253 handlers)
# PostgreSQL's PQ_SMALL_MESSAGE_LIMIT: a longer message of a type it reads with that limit (Sync, Flush, Close,
# Describe, Execute, CopyDone, CopyFail...) makes it close the connection without a word, after answering what came
# before it.
SMALL_LIMIT = 10_000


def refused(t: int) -> FramingError:
    """A message of type `t` the stream refuses (`MessageStream.refuse`): PostgreSQL's words for it."""
    return FramingError(f"invalid frontend message type {t}")


class GuardHit(FramingError):
    """A guarded message streamed piece by piece (`MessageStream.guard`'s `leaks`) held a reserved name after its
    first bytes were forwarded: it cannot be replaced, the session must end (`type`: the message's type)."""

    def __init__(self, type_: int) -> None:
        super().__init__("a streamed message held a reserved name")
        self.type = type_


# A guarded message longer than GUARD_STREAM that has not arrived whole is streamed (with `leaks`), never held: its
# pieces are scanned as they come, the last GUARD_CARRY bytes of each held back and scanned again with the next (a
# reserved name, pg_9 + 24 letters = 28 bytes, split across reads is still seen, and none of it is forwarded).
GUARD_STREAM = 65536
GUARD_CARRY = 27


class _Hold:
    """The type of HOLD."""


# What a handler returns to stop the stream at its message: the runs before it are returned, the message itself is
# the handler's to keep, and every byte after it waits (unframed) for the next `feed`, which frames it first.
HOLD = _Hold()

# A handler sees a whole message of its type without stopping the run (one call per message, given the body);
# it may return bytes to put in the message's place, or HOLD.
Handler = Callable[[bytes], "bytes | _Hold | None"]
# A guard (`MessageStream.guard`) sees a whole message of a guarded type holding its needle, given its type and body,
# in place of the type's handler; it answers as a handler does.
Guard = Callable[[int, bytes], "bytes | _Hold | None"]


_COPY_RUN = 4096  # a run of raw messages shorter than this is copied, a longer one is a view of the read


def _run(buf: bytes, start: int, end: int) -> bytes | memoryview:
    """buf[start:end] to forward: a copy when short (cheaper than a view), a memoryview when long (no copy)."""
    if end - start < _COPY_RUN:
        return buf[start:end]
    return memoryview(buf)[start:end]


_SHARED: dict[bytes, bytes] = {}  # role tables and type lists: sessions use the same few, one copy of each


def _shared(key: bytes) -> bytes:
    """The one copy of `key` (a role table or type list: a few hundred bytes that every session would repeat)."""
    return _SHARED.setdefault(key, key)


_NO_ROLES = _shared(bytes(256))


class MessageStream:
    """Incremental framing for one direction of a session.

    ``feed`` returns a list whose items are either bytes-like runs to forward as they are, or
    ``Message`` objects for intercepted types.  Messages of other types are never copied or
    decoded; a large one is forwarded piece by piece as it arrives, so memory stays bounded.
    """

    __slots__ = (
        "_buf", "_cut", "_drop", "_dropping", "_guard", "_guarded", "_intercept", "_leaks", "_needle", "_parts",
        "_parts_len", "_refuse", "_role", "_skip", "_small", "_small_types", "_stype", "_table", "_tail", "_types",
        "_want", "begun", "cut_errors", "limit_all", "max_length",
    )

    def __init__(
        self,
        *,
        intercept: frozenset[int] = frozenset(),
        max_length: int = 1 << 30,
        limit_all: bool = True,
        cut_errors: bool = False,
    ) -> None:
        self._role = _NO_ROLES  # per message type: 0 pass, 1 intercept, 2 + n handler n (one index per message)
        self._table: list[Handler] = []  # the handlers, in the order of their roles
        self._types = b""  # their message types, in the same order (the handlers are kept only in `_table`)
        self._intercept: frozenset[int] = frozenset()
        self._refuse: frozenset[int] = frozenset()
        self._small_types: frozenset[int] = frozenset()
        self._small = _NO_ROLES
        self._guard: Guard | None = None  # see `guard`
        self._guarded = _NO_ROLES
        self._needle = b""
        self._leaks: Callable[[bytes], bool] | None = None
        self._drop = _NO_ROLES  # the guarded types whose large messages are dropped as they arrive (see `guard`)
        self._dropping = False  # the message streamed (`_stype`) is dropped, not forwarded
        self._tail = b""  # the held-back end of a guarded message being streamed (see GUARD_CARRY)
        self._stype = -1  # that message's type while it is streamed, else -1
        self.intercept = intercept
        self.max_length = max_length
        self.limit_all = limit_all
        self.cut_errors = cut_errors  # a server's stream: a held ErrorResponse past ERROR_CUT is cut (see `feed`)
        self._buf = b""
        self._skip = 0
        # A held-back message whose length is known: its pieces are kept and joined once, when complete,
        # so a large message arriving in many reads costs linear, not quadratic, time.
        self._parts: list[bytes] = []
        self._parts_len = 0
        self._want = 0
        self._cut: ErrorCut | None = None  # a held ErrorResponse past ERROR_CUT, cut as it arrives (`_parts` unused)
        # Messages a feed left unfinished, each counted once (when its first bytes arrived, or with them its header's
        # last): while `unfinished` stays nonzero and this does not move, the same message is still being waited for.
        self.begun = 0

    @property
    def intercept(self) -> frozenset[int]:
        """Message types held back and returned as `Message`."""
        return self._intercept

    @intercept.setter
    def intercept(self, types: frozenset[int]) -> None:
        self._intercept = frozenset(types)
        self._build_roles()

    @property
    def refuse(self) -> frozenset[int]:
        """Message types refused as soon as their type byte arrives (FramingError, nothing of them returned): a
        frontend stream's types PostgreSQL would end the session for ("invalid frontend message type"), which must
        never reach a server (red team 9s2 M1: its FATAL came after the server went to another session)."""
        return self._refuse

    @refuse.setter
    def refuse(self, types: frozenset[int]) -> None:
        self._refuse = frozenset(types)
        self._build_roles()

    @property
    def small(self) -> frozenset[int]:
        """Handled or intercepted types whose messages may be at most SMALL_LIMIT bytes long (FramingError "invalid
        message length" once the header says more): PostgreSQL closes the connection for a longer one, after the
        ReadyForQuery of what came before it, when a pooled server may serve another client (red team 9s2 M1)."""
        return self._small_types

    @small.setter
    def small(self, types: frozenset[int]) -> None:
        self._small_types = frozenset(types)
        table = bytearray(256)
        for t in self._small_types:
            table[t] = 1
        self._small = _shared(bytes(table))

    @property
    def handlers(self) -> Mapping[int, Handler]:
        """Per-type handlers, called as handler(body) without breaking the run (see `Handler`)."""
        return dict(zip(self._types, self._table, strict=True))

    @handlers.setter
    def handlers(self, handlers: Mapping[int, Handler]) -> None:
        self._table = list(handlers.values())
        self._types = _shared(bytes(handlers))
        self._build_roles()

    def guard(
        self, guard: Guard | None, types: frozenset[int] = frozenset(), needle: bytes = b"",
        leaks: Callable[[bytes], bool] | None = None, drop: frozenset[int] = frozenset(),
    ) -> None:
        """Messages of `types` whose body holds `needle` (b"": every one) are given, whole, to guard(type, body)
        in place of their handler (which the guard calls when it wants to), with the same answers as a handler's;
        their other messages go as before (a guard that sets another guard sets it from the next message on). None:
        no guard (nothing is looked at: the stream's own speed). With `leaks`, a guarded message of no handler longer
        than GUARD_STREAM and not yet whole is streamed: leaks(piece) is asked of each piece (with the held-back end
        of the one before), and a True raises GuardHit (the message begun cannot be replaced). A guarded message of a
        type in `drop` and of no handler (one the guard would swallow unread: a cut result's rest) is dropped as it
        arrives instead, whole or not, with or without `leaks`: nothing of it returned, held or given to the guard (red
        team 9a7 H5: a large one was held whole; H1: each small one cost a call of the guard)."""
        table = bytearray(256)
        for t in types:
            table[t] = 1
        self._guard, self._guarded, self._needle = guard, _shared(bytes(table)), bytes(needle)
        self._leaks = leaks
        table = bytearray(256)
        for t in drop:
            table[t] = 1
        self._drop = _shared(bytes(table))

    def _build_roles(self) -> None:
        role = bytearray(256)
        for t in self._refuse:
            role[t] = _REFUSED
        for n, t in enumerate(self._types):
            role[t] = 2 + n
        for t in self._intercept:
            role[t] = 1
        self._role = _shared(bytes(role))

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a message."""
        return len(self._buf) + self._parts_len + len(self._tail)

    @property
    def unfinished(self) -> int:
        """Bytes of a message begun and not yet complete: held back (`pending`), or still to come of one forwarded
        piece by piece (a large CopyData). Nonzero means the peer is mid-message: the connection it goes to must not
        change hands (red team 9s F1: the rest of a CopyData reached the next server as messages of their own)."""
        return len(self._buf) + self._parts_len + self._skip + len(self._tail)

    def _streamed(self, t: int, window: bytes, left: int) -> bytes | memoryview:
        """A piece of a streamed guarded message (after the held-back end of the one before), `left` bytes of it
        still to come: scanned, and what may go now returned (all of it once the message is whole)."""
        leaks = self._leaks
        if leaks is not None and leaks(window):
            raise GuardHit(t)
        if not left:
            self._tail, self._stype = b"", -1
            return window
        cut = len(window) - GUARD_CARRY
        if cut <= 0:
            self._tail = window
            return b""
        self._tail = window[cut:]
        return _run(window, 0, cut)

    def feed(self, data: bytes) -> list[bytes | memoryview | Message]:
        """Frame `data` (bytes: message bodies are slices of it), after the bytes a HOLD left unframed."""
        out: list[bytes | memoryview | Message] = []
        if self._stype >= 0:  # (a guarded message streamed: see `guard`)
            take = min(len(data), self._skip)
            self._skip -= take
            if self._dropping:  # (nothing of it goes out or stays)
                piece: bytes | memoryview = b""
                if not self._skip:
                    self._stype, self._dropping = -1, False
            else:
                piece = self._streamed(self._stype, self._tail + data[:take], self._skip)
            if self._skip:
                return [piece] if piece else out
            if piece:
                out.append(piece)
            data = data[take:]
            if not data:
                return out
        elif self._skip:
            n = len(data)
            if n <= self._skip:
                self._skip -= n
                return [data]
            out.append(memoryview(data)[: self._skip])
            data = data[self._skip :]
            self._skip = 0
        if self._cut is not None:  # (its raw bytes counted in `_parts_len`)
            take = min(len(data), self._want - self._parts_len)
            self._cut.feed(data[:take])
            self._parts_len += take
            if self._parts_len < self._want:
                return out
            data = self._cut.message() + data[take:]
            self._cut, self._parts_len, self._want = None, 0, 0
        elif self._want:
            self._parts.append(data)
            self._parts_len += len(data)
            if self._parts_len < self._want:
                return out
            data = b"".join(self._parts)
            self._parts, self._parts_len, self._want = [], 0, 0
        held = len(self._buf)  # bytes of a header begun in an earlier feed (the first message of `buf`)
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        run_start = 0
        role = self._role
        table = self._table
        max_length = self.max_length
        limit_all = self.limit_all
        guard = self._guard
        guarded = self._guarded if guard is not None else _NO_ROLES
        needle = self._needle
        while n - pos >= 5:
            t = buf[pos]
            (length,) = _unpack_len(buf, pos + 1)
            if length < 4:
                raise refused(t) if role[t] == _REFUSED else FramingError(f"invalid message length {length}", length)
            end = pos + 1 + length
            r = role[t]
            g = guarded[t]
            if r or g:
                if r == _REFUSED:
                    raise refused(t)
                if length > max_length:
                    raise FramingError("message too large", length, too_large=True)
                if length > SMALL_LIMIT and self._small[t]:
                    raise FramingError(f"invalid message length {length}", length)
                if end > n or (t in (_ERROR, _NOTICE) and length > ERROR_CUT + 4 and self.cut_errors):
                    if end > n and g and not r and length > GUARD_STREAM and (self._drop[t] or self._leaks is not None):
                        if run_start < pos:
                            out.append(_run(buf, run_start, pos))
                        self._skip, self._stype = end - n, t
                        if self._drop[t]:
                            self._dropping = True
                        else:
                            piece = self._streamed(t, buf[pos + 5 : n], end - n)
                            out.append(buf[pos : pos + 5])
                            if piece:
                                out.append(piece)
                        if pos or not held:
                            self.begun += 1
                        pos = run_start = n
                    break
                if r == 1:
                    if run_start < pos:
                        out.append(_run(buf, run_start, pos))
                    out.append(Message(t, buf[pos + 5 : end]))
                    run_start = end
                elif g and not r and self._drop[t]:  # (dropped unread: see `guard`)
                    if run_start < pos:
                        out.append(_run(buf, run_start, pos))
                    run_start = end
                else:
                    if g and buf.find(needle, pos + 5, end) >= 0:
                        replacement = guard(t, buf[pos + 5 : end])  # type: ignore[misc]
                        guard = self._guard  # (a guard may change the guard: from the next message on)
                        guarded = self._guarded if guard is not None else _NO_ROLES
                        needle = self._needle
                    elif r:
                        replacement = table[r - 2](buf[pos + 5 : end])
                    else:
                        replacement = None
                    if replacement is not None:
                        if run_start < pos:
                            out.append(_run(buf, run_start, pos))
                        if replacement is HOLD:
                            self._buf = buf[end:n]
                            if end < n:  # (what follows may be a message begun: counted, maybe once too often)
                                self.begun += 1
                            return out
                        out.append(replacement)
                        run_start = end
                pos = end
            else:
                if limit_all and length > max_length:
                    raise FramingError("message too large", length, too_large=True)
                if end > n:
                    self._skip = end - n
                    if pos or not held:
                        self.begun += 1
                    pos = n
                    break
                pos = end
        if run_start < pos:
            if run_start == 0 and pos == n:
                out.append(buf)
            else:
                out.append(_run(buf, run_start, pos))
        rest = buf[pos:n] if pos < n else b""
        if rest:
            if role[rest[0]] == _REFUSED:  # (a header begun: refused at its type byte, as PostgreSQL does)
                raise refused(rest[0])
            if pos or not held:
                self.begun += 1
        if len(rest) >= 5:
            # An incomplete held-back message: keep its pieces until its known length has arrived.
            (length,) = _unpack_len(rest, 1)
            self._want = length + 1
            self._buf = b""
            if rest[0] in (_ERROR, _NOTICE) and length > ERROR_CUT + 4 and self.cut_errors:
                self._cut, self._parts_len = ErrorCut(rest[0]), 5  # (never held whole)
                return out + self.feed(rest[5:])
            self._parts, self._parts_len = [rest], len(rest)
        else:
            self._buf = rest
        return out


if speedups is not None:  # the compiled build of these names (proxy/_speedups.pyx, proxy/_accel.py)
    MessageStream = speedups.MessageStream
