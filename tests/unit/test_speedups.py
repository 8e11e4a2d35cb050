"""The compiled speed-ups (proxy/_speedups.pyx) answer exactly as the Python they replace: every hooked name, run
both ways on the same inputs (the Python module is run again as written, without its hook)."""

from __future__ import annotations

import importlib.util
import os
import struct
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import _accel
from proxy._accel import speedups
from proxy.config import RoutingConfig
from proxy.policy.model import READ_ONLY, Allow, Deny, Rewrite, TenantPolicy
from proxy.protocol import messages as m

# Every speed-up: (module, the name it replaces there, its name in the extension).
HOOKED = [
    ("proxy.protocol.stream", "MessageStream", "MessageStream"),
    ("proxy.protocol.messages", "query_text", "query_text"),
    ("proxy.protocol.messages", "query_message", "query_message"),
    ("proxy.policy.shape", "split", "split"),
    ("proxy.policy.cache", "DecisionCache", "DecisionCache"),
    ("proxy.stmtkind", "statement_kind", "statement_kind"),
    ("proxy.tracking", "Request", "Request"),
    ("proxy.tracking", "new_request", "new_request"),
    ("proxy.tracking", "tag_rows", "tag_rows"),
    ("proxy.tracking", "RequestTracker", "RequestTracker"),
    ("proxy.replicas", "read_only_request", "read_only_request"),
    ("proxy.replicas", "lone_query_text", "lone_query_text"),
    ("proxy.replicas", "request_route", "request_route"),
    ("proxy.replicas", "resume", "resume"),
    ("proxy.replicas", "kept", "kept"),
]
PURE_RUN = os.environ.get("PGTENANT_PURE") == "1"
compiled = pytest.mark.skipif(speedups is None, reason=f"the speed-ups do not run here ({_accel.status()})")


@contextmanager
def _no_speedups() -> Iterator[None]:
    with mock.patch.object(_accel, "speedups", None):
        yield


_pure_modules: dict[str, ModuleType] = {}


def pure(module: str) -> ModuleType:
    """`module` as written: its source run again under another name, its hook finding no speed-ups."""
    if module not in _pure_modules:
        origin = importlib.util.find_spec(module).origin  # type: ignore[union-attr]
        spec = importlib.util.spec_from_file_location(f"_pure_{module.replace('.', '_')}", origin)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded  # dataclasses look their module up
        with _no_speedups():
            spec.loader.exec_module(loaded)
        _pure_modules[module] = loaded
    return _pure_modules[module]


def both(module: str, name: str) -> tuple[Any, Any]:
    """(the Python name as written, the name the module runs)."""
    return getattr(pure(module), name), getattr(importlib.import_module(module), name)


# --- which build runs ------------------------------------------------------------------------------------------


def test_every_hook_is_listed_here() -> None:
    """A module with a hook is hashed into the build and tested here; nothing else is."""
    hooked = {m for m, _, _ in HOOKED}
    assert set(_accel.status()) == hooked
    if speedups is not None:
        provided = {n for n in dir(speedups) if not n.startswith("_") and n != "BUILT_FROM"}
        assert provided == {attr for _, _, attr in HOOKED}, "every speed-up is hooked and tested"


@compiled
def test_the_hooks_put_the_compiled_names_in_place() -> None:
    for module, name, attr in HOOKED:
        assert getattr(importlib.import_module(module), name) is getattr(speedups, attr), (module, name)
        assert getattr(pure(module), name) is not getattr(speedups, attr), (module, name)


@pytest.mark.skipif(not PURE_RUN, reason="only in the PGTENANT_PURE=1 run")
def test_pure_run_runs_the_python() -> None:
    assert speedups is None
    assert set(_accel.status().values()) == {"pure: PGTENANT_PURE=1"}
    for module, name, _ in HOOKED:
        assert getattr(importlib.import_module(module), name).__module__ == module


def test_the_python_of_every_hooked_name_is_at_hand() -> None:
    """The differential tests below compare with the modules as written (their hooks finding nothing)."""
    for module, name, _ in HOOKED:
        assert getattr(pure(module), name).__module__ == pure(module).__name__


# --- proxy.protocol.stream.MessageStream ----------------------------------------------------------------------

_TYPES = b"QPBSCZDEdTXzy"


def _frame(t: int, body: bytes) -> bytes:
    return bytes((t,)) + struct.pack("!I", len(body) + 4) + body


@st.composite
def _conversation(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Messages (a broken length now and then), cut into reads at arbitrary points."""
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        t = draw(st.sampled_from(_TYPES))
        body = draw(st.binary(max_size=40) | st.integers(0, 12000).map(lambda n: b"x" * n))
        parts.append(_frame(t, body) if draw(st.integers(0, 30)) else bytes((t,)) + struct.pack("!I", 2))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return data, cuts


def _stream_run(module: ModuleType, cls: type, data: bytes, cuts: list[int], intercept: frozenset[int],
                handled: dict[int, str], max_length: int, limit_all: bool,
                refuse: frozenset[int] = frozenset(),
                guard: tuple[frozenset[int], bytes, str] | None = None, cut_errors: bool = False) -> list[object]:
    """What a stream class makes of the reads: the items (runs as bytes), the pending counts, the error."""
    events: list[object] = []

    def handler(kind: str) -> Callable[[bytes], object]:
        def handle(body: bytes) -> object:
            events.append(("handled", kind, body))
            if kind == "replace":
                return b"<" + body[:3] + b">"
            if kind == "hold" and len(events) % 3 == 0:
                return module.HOLD
            return None
        return handle

    stream = cls(intercept=intercept, max_length=max_length, limit_all=limit_all, cut_errors=cut_errors)
    stream.handlers = {t: handler(kind) for t, kind in handled.items()}
    stream.refuse = refuse
    stream.small = frozenset(b"dS")
    if guard is not None:
        types, needle, kind = guard

        def guarding(t: int, body: bytes) -> object:
            events.append(("guarded", t, body))
            if kind == "replace":
                return b"[" + body[:3] + b"]"
            if kind == "drop":
                return b""
            if kind == "hold" and len(events) % 3 == 0:
                return module.HOLD
            return None

        stream.guard(guarding, types, needle)
    reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)] + [b""]
    try:
        for read in reads:
            for item in stream.feed(read):
                if type(item).__name__ == "Message":
                    events.append(("message", item.type, item.body))
                else:
                    events.append(("run", bytes(item)))
            events.append(("pending", stream.pending, stream.unfinished, stream.begun))
    except Exception as exc:
        events.append(("error", type(exc).__name__, str(exc), exc.length, exc.too_large))
    events.append(("intercept", stream.intercept, sorted(stream.handlers), stream.refuse))
    return events


@compiled
@settings(max_examples=1500, deadline=None)
@given(_conversation(), st.frozensets(st.sampled_from(_TYPES)),
       st.dictionaries(st.sampled_from(_TYPES), st.sampled_from(["observe", "replace", "hold"]), max_size=3),
       st.sampled_from([1 << 30, 5000, 20]), st.booleans(), st.frozensets(st.sampled_from(b"zyQd")))
def test_message_stream(conversation: tuple[bytes, list[int]], intercept: frozenset[int], handled: dict[int, str],
                        max_length: int, limit_all: bool, refuse: frozenset[int]) -> None:
    data, cuts = conversation
    py, fast = both("proxy.protocol.stream", "MessageStream")
    stream = importlib.import_module("proxy.protocol.stream")
    expected = _stream_run(pure("proxy.protocol.stream"), py, data, cuts, intercept, handled, max_length, limit_all,
                           refuse)
    assert _stream_run(stream, fast, data, cuts, intercept, handled, max_length, limit_all, refuse) == expected


@st.composite
def _errors_conversation(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """ErrorResponses (fields up to past ERROR_CUT, multibyte text, a body without its terminator now and then)
    among other messages, cut into reads at arbitrary points."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        t = draw(st.sampled_from(b"ENDZ"))
        if t not in b"EN":
            parts.append(_frame(t, draw(st.binary(max_size=20))))
            continue
        body = b""
        for code in draw(st.lists(st.sampled_from(b"SCMDHP"), min_size=1, max_size=5)):
            size = draw(st.sampled_from([0, 5, 2047, 2048, 2049, 70_000, 140_000]))
            text = draw(st.sampled_from(["x", "é", "€", "𝄞"])) * (size // 3 + 1)
            body += bytes((code,)) + text.encode()[: size + draw(st.integers(0, 3))] + b"\x00"
        parts.append(_frame(t, body + (b"\x00" if draw(st.integers(0, 8)) else b"")))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return data, cuts


@compiled
@settings(max_examples=300, deadline=None)
@given(_errors_conversation(), st.frozensets(st.sampled_from(b"ENDZ")),
       st.dictionaries(st.sampled_from(b"ENDZ"), st.sampled_from(["observe", "replace", "hold"]), max_size=2))
def test_message_stream_cuts_a_large_error_alike(conversation: tuple[bytes, list[int]], intercept: frozenset[int],
                                                 handled: dict[int, str]) -> None:
    """Red team 9a8 N3: a held ErrorResponse (or NoticeResponse) past ERROR_CUT is cut as it arrives, the same in
    both builds."""
    data, cuts = conversation
    py, fast = both("proxy.protocol.stream", "MessageStream")
    stream = importlib.import_module("proxy.protocol.stream")
    expected = _stream_run(pure("proxy.protocol.stream"), py, data, cuts, intercept, handled, 1 << 30, False,
                           cut_errors=True)
    assert _stream_run(stream, fast, data, cuts, intercept, handled, 1 << 30, False, cut_errors=True) == expected


@pytest.mark.parametrize("kind", [b"E", b"N"])
def test_message_stream_cuts_a_large_error_as_it_arrives(kind: bytes) -> None:
    """... never holding more than a field's FIELD_LIMIT bytes of it; the error's other fields kept, each field cut
    at a character boundary; what follows it is framed as before; a frontend stream (cut_errors off) cuts nothing.
    A NoticeResponse alike (the session reads it too)."""
    from proxy.protocol.errcut import ERROR_CUT, FIELD_LIMIT
    fields = {"S": "ERROR", "C": "22P02", "M": 'invalid input syntax: "' + "é" * 3_000_000 + '"', "P": "8"}
    error = m.encode_error_fields(kind, fields)
    data = error + m.ready_for_query(b"I")
    for cls in {pure("proxy.protocol.stream").MessageStream,
                importlib.import_module("proxy.protocol.stream").MessageStream}:
        stream = cls(limit_all=False, cut_errors=True)
        seen: list[bytes] = []
        stream.handlers = {kind[0]: lambda body, seen=seen: seen.append(body)}  # type: ignore[misc]
        reads = [data[at : at + 65536] for at in range(0, len(data), 65536)]
        tracemalloc.start()
        out = [bytes(x) for read in reads for x in stream.feed(read)]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1_000_000, peak  # (bytes: the error is 6,000,000)
        got = b"".join(out)
        assert len(seen) == 1 and len(seen[0]) <= ERROR_CUT
        cut = m.decode_error_fields(seen[0])
        assert (cut["S"], cut["C"], cut["P"]) == ("ERROR", "22P02", "8")
        assert cut["M"].startswith('invalid input syntax: "éé') and cut["M"].endswith("é…")
        assert len(cut["M"].encode()) <= FIELD_LIMIT + 3
        assert got == m.frame(kind, seen[0]) + m.ready_for_query(b"I") and stream.pending == 0
        plain = cls(limit_all=False)
        plain.handlers = {kind[0]: lambda body: None}
        assert b"".join(bytes(x) for x in plain.feed(data)) == data


@compiled
@settings(max_examples=1500, deadline=None)
@given(_conversation(), st.frozensets(st.sampled_from(_TYPES)),
       st.dictionaries(st.sampled_from(_TYPES), st.sampled_from(["observe", "replace", "hold"]), max_size=3),
       st.sampled_from([1 << 30, 5000, 20]), st.booleans(),
       st.tuples(st.frozensets(st.sampled_from(_TYPES)), st.sampled_from([b"", b"x", b"xxxx", b"\x00\x01"]),
                 st.sampled_from(["observe", "replace", "drop", "hold"])))
def test_message_stream_guarded(conversation: tuple[bytes, list[int]], intercept: frozenset[int],
                                handled: dict[int, str], max_length: int, limit_all: bool,
                                guard: tuple[frozenset[int], bytes, str]) -> None:
    """A guard (the hidden schemas' last line, MessageStream.guard): the same messages given to it, whole, in
    place of their handler, with the same answers, in both builds."""
    data, cuts = conversation
    py, fast = both("proxy.protocol.stream", "MessageStream")
    stream = importlib.import_module("proxy.protocol.stream")
    expected = _stream_run(pure("proxy.protocol.stream"), py, data, cuts, intercept, handled, max_length, limit_all,
                           guard=guard)
    assert _stream_run(stream, fast, data, cuts, intercept, handled, max_length, limit_all, guard=guard) == expected


def test_message_stream_guard_sees_whole_messages_holding_its_needle() -> None:
    """The guard sees each whole message of its types holding the needle (one split over reads too), in place of
    the handler; the others pass as raw runs; without a guard nothing is looked at."""
    from proxy.protocol.stream import MessageStream
    seen: list[tuple[int, bytes]] = []
    handled: list[bytes] = []

    def guard(t: int, body: bytes) -> bytes | None:
        seen.append((t, body))
        return b"!"

    stream = MessageStream(limit_all=False)
    stream.handlers = {ord("C"): lambda body: handled.append(body)}  # type: ignore[dict-item,func-returns-value]
    stream.guard(guard, frozenset(b"DC"), b"pg_9")
    row = _frame(ord("D"), b"\x00\x01" + b"a" * 9000 + b"pg_9zz")
    data = _frame(ord("D"), b"plain") + row + _frame(ord("C"), b"SELECT pg_9") + _frame(ord("C"), b"SELECT 1")
    out = b"".join(bytes(x) for x in stream.feed(data[:4000]) + stream.feed(data[4000:]))
    assert seen == [(ord("D"), row[5:]), (ord("C"), b"SELECT pg_9")]
    assert handled == [b"SELECT 1"]  # (the guard took the other's place)
    assert out == _frame(ord("D"), b"plain") + b"!!" + _frame(ord("C"), b"SELECT 1")
    stream.guard(None)
    assert b"".join(bytes(x) for x in stream.feed(row)) == row and len(seen) == 2


_NAME = b"pg_9" + b"abcdefghijklmnopqrstuvwx"  # a reserved name's shape: 28 bytes, the longest there is


@st.composite
def _large_conversation(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Messages, some past GUARD_STREAM, some holding a reserved name (anywhere: at a read's edge too), cut into
    reads at arbitrary points."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        t = draw(st.sampled_from(b"DdCZ"))
        size = draw(st.sampled_from([0, 30, 4000, 65536 - 4, 65536 - 3, 70000, 200000]))
        body = bytearray(b"-" * size)
        if draw(st.booleans()):
            at = draw(st.integers(0, size))
            body[at:at] = _NAME if draw(st.integers(0, 3)) else _NAME[:-1]  # (a look-alike, one byte short)
        parts.append(_frame(t, bytes(body)))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return data, cuts


def _leaks_run(cls: type, data: bytes, cuts: list[int], handled: frozenset[int], drop: frozenset[int] = frozenset(),
               with_leaks: bool = True) -> list[object]:
    """What a stream class makes of the reads with a guard and its `leaks` (and `drop`): items, windows asked,
    pending, error."""
    events: list[object] = []

    def leaks(window: bytes) -> bool:
        events.append(("leaks", window))
        return _NAME in window

    def guarding(t: int, body: bytes) -> object:
        events.append(("guarded", t, body))
        return b"!" if _NAME in body else None

    stream = cls(limit_all=False)
    stream.handlers = {t: (lambda body: events.append(("handled", body))) for t in handled}
    stream.guard(guarding, frozenset(b"Dd"), b"pg_9", leaks if with_leaks else None, drop)
    reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)] + [b""]
    try:
        for read in reads:
            for item in stream.feed(read):
                events.append(("run", bytes(item)))
            events.append(("pending", stream.pending, stream.unfinished, stream.begun))
    except Exception as exc:
        events.append(("error", type(exc).__name__, str(exc), getattr(exc, "type", None)))
    return events


@compiled
@settings(max_examples=400, deadline=None)
@given(_large_conversation(), st.frozensets(st.sampled_from(b"DC")), st.frozensets(st.sampled_from(b"dC")),
       st.booleans())
def test_message_stream_guard_streams_alike(conversation: tuple[bytes, list[int]], handled: frozenset[int],
                                            drop: frozenset[int], with_leaks: bool) -> None:
    """A guard with `leaks` (or without) and `drop`: large guarded messages streamed, scanned and held back, or
    dropped, alike in both builds."""
    data, cuts = conversation
    py, fast = both("proxy.protocol.stream", "MessageStream")
    assert (_leaks_run(fast, data, cuts, handled, drop, with_leaks)
            == _leaks_run(py, data, cuts, handled, drop, with_leaks))


@settings(max_examples=400, deadline=None)
@given(_large_conversation())
def test_message_stream_guard_streams_and_sees_every_name(conversation: tuple[bytes, list[int]]) -> None:
    """Whatever the reads: what goes out is the stream itself (a whole message holding a name replaced), never a
    reserved name; a large guarded message goes in pieces (at most GUARD_STREAM + GUARD_CARRY bytes pending); a
    name in one streamed ends the stream (GuardHit) with none of it out."""
    stream_module = pure("proxy.protocol.stream")
    for cls in {stream_module.MessageStream, importlib.import_module("proxy.protocol.stream").MessageStream}:
        data, cuts = conversation
        events = _leaks_run(cls, data, cuts, frozenset())
        out = b"".join(e[1] for e in events if e[0] == "run")  # type: ignore[index,misc]
        assert all(e[1] <= stream_module.GUARD_STREAM + stream_module.GUARD_CARRY + 5
                   for e in events if e[0] == "pending")  # type: ignore[index,operator]
        raws, pos = [], 0
        while pos < len(data):
            length = struct.unpack_from("!I", data, pos + 1)[0]
            raws.append(data[pos : pos + 1 + length])
            pos += 1 + length
        shown = [b"!" if raw[0] in b"Dd" and _NAME in raw else raw for raw in raws]
        hit = [e for e in events if e[0] == "error"]
        if not hit:
            assert out == b"".join(shown)
            continue
        assert hit[0][1] == "GuardHit"  # type: ignore[index]
        done = k = 0
        while k < len(shown) and out.startswith(shown[k], done):  # (what went out: whole messages, then part of one)
            done += len(shown[k])
            k += 1
        rest = out[done:]
        if rest:  # (part of a message went out: none of a guarded one's name)
            raw = raws[k]
            assert raw.startswith(rest) and not (raw[0] in b"Dd" and 0 <= raw.find(_NAME) < len(rest))


def test_message_stream_guard_streams_a_large_message_in_pieces() -> None:
    """Past GUARD_STREAM a guarded message not yet whole goes out piece by piece as it arrives (the last
    GUARD_CARRY bytes of each held back), in both builds; a name split across two reads is caught (GuardHit)."""
    for cls in {pure("proxy.protocol.stream").MessageStream,
                importlib.import_module("proxy.protocol.stream").MessageStream}:
        windows: list[bytes] = []
        stream = cls(limit_all=False)
        stream.guard(lambda t, body: b"!", frozenset(b"D"), b"pg_9",
                     lambda w, seen=windows: seen.append(w) or _NAME in w)  # type: ignore[func-returns-value,misc]
        row = _frame(ord("D"), b"x" * 1_000_000)
        got = b""
        for at in range(0, len(row), 65536):
            got += b"".join(bytes(x) for x in stream.feed(row[at : at + 65536]))
            assert stream.pending <= 27
            if at + 65536 < len(row):
                assert len(got) >= at + 65536 - 27  # (all of it out but the held-back end)
        assert got == row and stream.pending == 0 and stream.unfinished == 0
        assert len(windows) == 16
        split = _frame(ord("D"), b"y" * 100_000 + _NAME + b"y" * 100_000)
        cut = 5 + 100_000 + 10  # (the name's first 10 bytes in the first read, the rest in the second)
        first = b"".join(bytes(x) for x in stream.feed(split[:cut]))
        assert b"pg_9" not in first and len(first) == cut - 27
        with pytest.raises(Exception) as caught:  # (the build's own GuardHit: checked by name)
            stream.feed(split[cut:])
        assert type(caught.value).__name__ == "GuardHit" and caught.value.type == ord("D")  # type: ignore[attr-defined]


def test_message_stream_guard_holds_a_small_or_whole_message() -> None:
    """A guarded message up to GUARD_STREAM, or one arrived whole, is still held whole and given to the guard
    (today's cut: replaced, none of it out), in both builds."""
    for cls in {pure("proxy.protocol.stream").MessageStream,
                importlib.import_module("proxy.protocol.stream").MessageStream}:
        stream = cls(limit_all=False)
        stream.guard(lambda t, body: b"!", frozenset(b"D"), b"pg_9",
                     lambda w: _NAME in w)
        small = _frame(ord("D"), b"z" * 60_000 + _NAME)
        assert b"".join(bytes(x) for x in stream.feed(small[:30_000])) == b""
        assert b"".join(bytes(x) for x in stream.feed(small[30_000:])) == b"!"
        large = _frame(ord("D"), b"z" * 600_000 + _NAME)
        assert b"".join(bytes(x) for x in stream.feed(large)) == b"!"


@settings(max_examples=300, deadline=None)
@given(_large_conversation(), st.booleans())
def test_message_stream_guard_drops_what_it_would_swallow(conversation: tuple[bytes, list[int]],
                                                          with_leaks: bool) -> None:
    """A large guarded message of a `drop` type not yet whole is dropped as it arrives (a cut result's rest, red team
    9a7 H5): nothing of it is held (pending stays below GUARD_STREAM + GUARD_CARRY + 5 bytes, with `leaks` or
    without); one that arrived whole is still given to the guard. Both builds."""
    stream_module = pure("proxy.protocol.stream")
    for cls in {stream_module.MessageStream, importlib.import_module("proxy.protocol.stream").MessageStream}:
        data, cuts = conversation
        drop = frozenset(b"d" if with_leaks else b"Dd")  # (without `leaks` a large D of no `drop` is held whole)
        events = _leaks_run(cls, data, cuts, frozenset(), drop, with_leaks)
        assert all(e[1] <= stream_module.GUARD_STREAM + stream_module.GUARD_CARRY + 5
                   for e in events if e[0] == "pending")  # type: ignore[index,operator]
        hit = [e for e in events if e[0] == "error"]
        assert not hit or hit[0][1] == "GuardHit"  # type: ignore[index]


def test_message_stream_guard_drops_a_large_message_it_would_swallow() -> None:
    """Small DataRows and a 1 MB one of a `drop` type fed in 64 KiB reads while every type is guarded (the cut's
    swallowing): nothing of them goes out, nothing is held past the read (pending 0), the guard never sees them; the
    CommandComplete after them is framed and given to the guard as before. Both builds (red team 9a7 H5: the large
    row was held whole; H1: each small one was a call of the guard)."""
    for cls in {pure("proxy.protocol.stream").MessageStream,
                importlib.import_module("proxy.protocol.stream").MessageStream}:
        seen: list[tuple[int, int]] = []
        stream = cls(limit_all=False)
        stream.guard(lambda t, body, seen=seen: seen.append((t, len(body))) or b"",  # type: ignore[func-returns-value]
                     frozenset(b"DCZ"), b"", None, frozenset(b"D"))
        data = (_frame(ord("D"), b"pg_9") * 30_000 + _frame(ord("D"), b"x" * 1_000_000)
                + _frame(ord("C"), b"SELECT 2\0") + _frame(ord("Z"), b"I"))
        got = b""
        for at in range(0, len(data), 65536):
            got += b"".join(bytes(x) for x in stream.feed(data[at : at + 65536]))
            assert stream.pending <= 9  # (at most a small row begun: 9 bytes)
        assert got == b"" and stream.pending == 0 and stream.unfinished == 0
        assert seen == [(ord("C"), 9), (ord("Z"), 1)]

@compiled
def test_message_stream_runs_keep_their_types() -> None:
    """A long run is a view of the read, a short one a copy; a whole read is passed on as it is."""
    py, fast = both("proxy.protocol.stream", "MessageStream")
    long_run = _frame(ord("D"), b"x" * 5000)
    for cls in (py, fast):
        data = long_run + _frame(ord("X"), b"")
        out = cls(intercept=frozenset(b"X")).feed(data)
        assert type(out[0]) is memoryview and bytes(out[0]) == long_run
        whole = _frame(ord("D"), b"abc")
        assert cls().feed(whole)[0] is whole


# --- the functions ---------------------------------------------------------------------------------------------

_SHAPE_ALPHABET = "0123456789 .,_-/*()=<>+aZ$'\"\\\n\x00é"
_SQL = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 4711",
    "SELECT * FROM orders WHERE id IN (1, 2, 3) ORDER BY 1 LIMIT 10 OFFSET 20",
    "SELECT x1, 1.5, 2e3 FROM t", "SELECT 1 -- 2", "SELECT 1 /* 2 */", "UPDATE t SET a = a + 1 WHERE id = 3",
    "SELECT a FROM t WHERE id IN (" + ", ".join(str(i) for i in range(900)) + ")",  # past the shared key buffer
    "SELECT " + ", ".join(str(i) for i in range(1001)),  # past the literal limit
    "select 7", "\ud800 1",
]


@compiled
@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=_SHAPE_ALPHABET, max_size=40) | st.sampled_from(_SQL) | st.text(max_size=30))
def test_split(sql: str) -> None:
    py, fast = both("proxy.policy.shape", "split")
    assert fast(sql) == py(sql)


@compiled
def test_split_after_a_long_text() -> None:
    """The shared key buffer holds nothing of an earlier, longer text."""
    py, fast = both("proxy.policy.shape", "split")
    for sql in ["SELECT 1234567 FROM abcdefgh WHERE x = 1", "SELECT 7", _SQL[6], "SELECT 8"]:
        assert fast(sql) == py(sql)


@compiled
@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=20) | st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass") + b"\x00"))
def test_query_text(body: bytes) -> None:
    py, fast = both("proxy.protocol.messages", "query_text")
    assert _outcome(fast, body) == _outcome(py, body)


def _outcome(function: Callable[..., Any], *args: Any) -> object:
    """What a call returns, or the name and text of what it raises."""
    try:
        return function(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)


@compiled
@given(st.text(max_size=300))
def test_query_message(sql: str) -> None:
    py, fast = both("proxy.protocol.messages", "query_message")
    assert fast(sql) == py(sql)


@compiled
@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=30) | st.sampled_from(["SELECT 1", "with x", "  /* c */ (select", "insert", "Ǆelete",
                                                  "update\u00e9", "_x", "", "-- c\nDELETE", "SeLeCt"]))
def test_statement_kind(sql: str) -> None:
    py, fast = both("proxy.stmtkind", "statement_kind")
    assert fast(sql) == py(sql)


@compiled
@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=30) | st.lists(st.sampled_from([b"SELECT", b"INSERT", b" ", b"0", b"7", b"12", b"\x00",
                                                           b"x", b"18446744073709551617"]), max_size=8).map(b"".join))
def test_tag_rows(tag: bytes) -> None:
    py, fast = both("proxy.tracking", "tag_rows")
    assert fast(tag) == py(tag)


# --- the classes: the same calls on both, the same state after each -------------------------------------------

_LONG = ["SELECT '" + "y" * 70_000 + "'", "INSERT " + "z" * 300]
_DECISIONS = st.sampled_from([None, Allow(), Deny("42501", "no", "", "r"), Rewrite("SELECT 2", ("r",)),
                              Rewrite("R" * 70_000, ("r",))])
_TEXTS = st.sampled_from(["SELECT 1", "insert into t values (1)", "", "BEGIN", *_LONG]) | st.text(max_size=8)
_NAMES = st.sampled_from(["", "s1", "s2", "P0_1"])
_TRACKER_CALLS = st.lists(st.one_of(
    st.tuples(st.just("on_query"), _TEXTS, _DECISIONS),
    st.tuples(st.just("on_function_call"), _DECISIONS),
    st.tuples(st.just("on_parse"), _NAMES, _TEXTS, _DECISIONS),
    st.tuples(st.just("on_parse"), _NAMES, _TEXTS, _DECISIONS, st.sampled_from(["select", "ddl"])),
    st.tuples(st.just("on_bind"), _NAMES),
    st.tuples(st.just("on_close_statement"), _NAMES),
    st.tuples(st.just("on_close_undone"), _NAMES, st.tuples(st.sampled_from(["select", "ddl"]), _TEXTS)),
    st.tuples(st.sampled_from(["on_sync", "on_copy_in", "on_copy_end", "on_ready", "on_ready", "on_skipped"])),
    st.tuples(st.just("on_error"), st.sampled_from([None, "23505"]), st.booleans()),
    st.tuples(st.just("on_command_complete"), st.sampled_from([b"SELECT 3\x00", b"INSERT 0 18446744073709551615\x00",
                                                               b"BEGIN\x00"])),
), max_size=40)


def _request(req: Any) -> tuple[object, ...]:
    return (req.start, req.end, req.kind, req.sql, req.decision, req.outcome, req.sqlstate, req.rows, req.extra,
            req.extra_dropped, req.held, req.closed_by_sync, req.ended_by_query, req.statements, req.duration)


def _tracker_run(cls: type, calls: list[tuple[Any, ...]]) -> list[object]:
    now = [0.0]
    done: list[Any] = []

    def clock() -> float:
        now[0] += 0.5
        return now[0]

    tracker = cls(clock, done.append)
    log: list[object] = []
    for name, *args in calls:
        result = getattr(tracker, name)(*args)
        if type(result) is list:  # (on_skipped: the requests joined to the head)
            result = tuple(_request(r) for r in result)
        elif result is not None and type(result) is not tuple:  # (on_close_statement: the kind and text it took)
            result = _request(result)
        log.append((name, result, [_request(r) for r in done],
                    [_request(r) for r in tracker.pending], tracker.held, tracker.dropped, tracker.owed_dropped,
                    tracker.copy_in))
        done.clear()
    return log


@compiled
@settings(max_examples=400, deadline=None)
@given(_TRACKER_CALLS)
def test_request_tracker(calls: list[tuple[Any, ...]]) -> None:
    py, fast = both("proxy.tracking", "RequestTracker")
    assert _tracker_run(fast, calls) == _tracker_run(py, calls)


@compiled
@given(st.floats(allow_nan=False), st.sampled_from(["select", "other"]), _TEXTS, _DECISIONS,
       st.lists(st.tuples(_TEXTS, _DECISIONS), max_size=3))
def test_new_request(start: float, kind: str, sql: str, decision: Any, more: list[tuple[str, Any]]) -> None:
    tracking, fast = pure("proxy.tracking"), importlib.import_module("proxy.tracking")
    made = [module.new_request(start, kind, sql, decision) for module in (tracking, fast)]
    for req in made:
        for text, further in more:
            req.more(text, further)
    assert type(made[1]) is speedups.Request
    assert _request(made[1]) == _request(made[0])
    assert _request(fast.new_request(start)) == _request(tracking.new_request(start))


_POLICIES = [TenantPolicy(tenant="initech", strategy="database"),
             TenantPolicy(tenant="acme", strategy="shared", tenant_value="acme",
                          scoped_tables={("public", "orders"): "tenant_id"})]
_CACHE_SQL = st.sampled_from([
    "SELECT * FROM orders WHERE id = {}", "SELECT {} FROM orders", "SELECT * FROM orders WHERE note = '{}'",
    "SELEC {}", "SELECT * FROM pg_class WHERE oid = {}::regclass", "SELECT * FROM orders -- {}",
    "SELECT * FROM orders WHERE id IN (" + ", ".join(["{0}"] * 1400) + ")",  # a long text: kept under its digest
])
_CACHE_CALLS = st.lists(st.tuples(
    st.sampled_from(["cached", "get_or_decide", "get_or_decide", "decide_miss", "store", "clear", "usage"]),
    st.integers(0, 1), _CACHE_SQL, st.integers(0, 3)), max_size=25)


def _cache_run(cls: type, maxsize: int, max_bytes: int, calls: list[tuple[str, int, str, int]]) -> list[object]:
    cache = cls(maxsize, max_bytes)
    log: list[object] = []
    for name, which, template, literal in calls:
        policy, sql = _POLICIES[which], template.format(literal)
        if name == "clear":
            result: object = cache.clear()
        elif name == "usage":
            result = [cache.tenant_usage(p.tenant) for p in _POLICIES]
        elif name == "store":
            result = cache.store(policy, sql, Deny("42501", "x" * literal * 5000, "", "r"))
        else:
            result = getattr(cache, name)(policy, sql)
        log.append((name, result, len(cache), cache.entries, cache.held, cache.hits, cache.misses))
    return log


@compiled
@settings(max_examples=150, deadline=None)
@given(st.sampled_from([1, 2, 3, 10_000]), st.sampled_from([64 << 20, 300_000, 3000]), _CACHE_CALLS)
def test_decision_cache(maxsize: int, max_bytes: int, calls: list[tuple[str, int, str, int]]) -> None:
    py, fast = both("proxy.policy.cache", "DecisionCache")
    assert _cache_run(fast, maxsize, max_bytes, calls) == _cache_run(py, maxsize, max_bytes, calls)


# --- proxy.replicas.read_only_request --------------------------------------------------------------------------

_ROUTED_SQL = [
    "SELECT 1", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", "SELECT a FROM t WHERE id = 42",
    "DELETE FROM t", "INSERT INTO t VALUES (1)", "UPDATE t SET a = 2 WHERE id = 7", "BEGIN READ ONLY", "BEGIN",
    "BEGIN READ ONLY, READ WRITE", "COMMIT", "SELECT nextval('s')", "SELECT * FROM t FOR UPDATE", "not sql at all",
    "", "SHOW search_path", "SET work_mem = '1MB'", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "SELECT 1; DELETE FROM t", "SELECT 'é'", "select\u00a0é", "SELECT varchar(10) 'x'",
    "SELECT " + "1 + " * 600 + "1",  # past the length a text is kept under as itself (a digest then)
    "SELECT 1" + " " * 17_000,  # past MAX_JUDGED: never judged
]
_NAMES = [b"", b"s1", b"s2", b"\xff", b"\xfe", "é".encode()]


@st.composite
def _routed_batch(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Client messages as a routed session judges them: texts that read, write or do not parse (invalid UTF-8, long
    ones), named and unnamed statements, other message types, now and then a broken length or a cut."""
    def text() -> bytes:
        raw = draw(st.sampled_from(_ROUTED_SQL) | st.text(max_size=20)).encode("utf-8", "surrogatepass")
        return raw if draw(st.integers(0, 9)) else raw + b"\xff"

    parts = []
    for _ in range(draw(st.integers(0, 6))):
        t = draw(st.sampled_from(b"QPBEDSHCFdX"))
        name = draw(st.sampled_from(_NAMES))
        if t == 0x51:
            body = text() + (b"\x00" if draw(st.integers(0, 9)) else b"")
        elif t == 0x50:
            body = name + b"\x00" + text() + b"\x00\x00\x00"
        elif t == 0x42:
            body = draw(st.sampled_from(_NAMES)) + b"\x00" + name + b"\x00\x00\x00\x00\x00\x00\x00"
        else:
            body = draw(st.sampled_from([b"", b"P\x00", b"S" + name + b"\x00", b"\x00\x00\x00\x00\x00"]))
        if not draw(st.integers(0, 12)):
            body = draw(st.binary(max_size=12))
        length = len(body) + 4 if draw(st.integers(0, 15)) else draw(st.integers(0, 40))
        parts.append(bytes((t,)) + struct.pack("!I", length) + body)
    data = b"".join(parts)
    if not draw(st.integers(0, 9)):
        data = data[:draw(st.integers(0, len(data)))]
    known = {n.decode("utf-8", "replace"): draw(st.sampled_from(_ROUTED_SQL)) for n in _NAMES if draw(st.booleans())}
    return data, known


def _judged_run(module: ModuleType, data: bytes, known: dict[str, str], judge: str) -> tuple[object, list[str]]:
    """What `module`'s read_only_request answers, and every name and text it asked about on the way."""
    asked: list[str] = []

    def statement(name: str) -> str | None:
        asked.append(f"statement {name!r}")
        return known.get(name)

    def counting(sql: str) -> object:
        asked.append(f"judge {sql!r}")
        return len(sql) % 3  # (any truthy value reads as "read-only")

    judges: dict[str, Any] = {"default": None, "read_only_sql": module.read_only_sql,
                              "writes_nothing_sql": module.writes_nothing_sql, "counting": counting}
    return _outcome(module.read_only_request, data, statement, judges[judge]), asked


@compiled
@settings(max_examples=4000, deadline=None)
@given(_routed_batch(), st.sampled_from(["default", "read_only_sql", "writes_nothing_sql", "counting"]))
def test_read_only_request(batch: tuple[bytes, dict[str, str]], judge: str) -> None:
    """The same verdict, asking for the same statements in the same order, every kept verdict read as the Python
    would (both kinds: read_only_sql's and writes_nothing_sql's)."""
    import proxy.replicas

    data, known = batch
    assert _judged_run(proxy.replicas, data, known, judge) == _judged_run(pure("proxy.replicas"), data, known, judge)


@compiled
def test_read_only_request_reads_kept_verdicts_as_the_python() -> None:
    """A write is never read-only, the second time (its verdict kept) as the first, through either judge."""
    import proxy.replicas

    py, fast = both("proxy.replicas", "read_only_request")
    pairs = ((None, None), (pure("proxy.replicas").writes_nothing_sql, proxy.replicas.writes_nothing_sql))
    for sql in ["DELETE FROM t", "BEGIN", "SELECT nextval('s')", "SELECT 1", "BEGIN; SELECT 1; COMMIT"]:
        query = _frame(0x51, sql.encode() + b"\x00")
        batch = _frame(0x50, b"\x00" + sql.encode() + b"\x00\x00\x00") + _frame(0x42, b"\x00\x00" + b"\x00" * 6) \
            + _frame(0x45, b"\x00" * 5) + _frame(0x53, b"")
        for data in (query, batch, query, batch):
            for judges in pairs:
                expected = py(data, lambda _: None, judges[0])
                assert fast(data, lambda _: None, judges[1]) is expected, (sql, data, judges)


@compiled
def test_read_only_request_the_last_parse_and_its_name() -> None:
    """The compiled walk keeps the last Parse text's verdict by its bytes and matches a Bind to the batch's one Parse
    by the name's bytes: the same verdicts as the Python's for a text again, another of the same length, a name
    that decodes as another does (both invalid UTF-8), more than one Parse."""
    import proxy.replicas

    py, fast = both("proxy.replicas", "read_only_request")
    known = {"\ufffd": "DELETE FROM t", "s1": "SELECT 1", "s2": "DELETE FROM t"}

    def batch(*parses: tuple[bytes, bytes], bind: bytes = b"") -> bytes:
        out = b"".join(_frame(0x50, name + b"\x00" + sql + b"\x00\x00\x00") for name, sql in parses)
        out += _frame(0x42, b"\x00" + bind + b"\x00" + b"\x00" * 6)
        return out + _frame(0x45, b"\x00" * 5) + _frame(0x53, b"")

    runs = [batch((b"", b"SELECT 1 + 2")), batch((b"", b"SELECT 1 + 2")), batch((b"", b"DELETE FROM t")),
            batch((b"", b"SELECT 1 + 2")), batch((b"", b"DELETE FROMt")), batch((b"", b"SELECT 1 + 2")),
            batch((b"", b"DELETE FROMt")), batch((b"", b"DELETE FROM t")), batch((b"", b"DELETE FROM t")),
            batch((b"", b"SELECT 1 + 2"), bind=b"s1"), batch((b"", b"SELECT 1 + 2"), bind=b"s2"),
            batch((b"\xff", b"SELECT 1"), bind=b"\xfe"), batch((b"s1", b"SELECT 1"), bind=b"\xfe"),
            batch((b"s1", b"SELECT 1"), bind=b"s2"), batch((b"s1", b"SELECT 1"), bind=b"s1"),
            batch((b"s1", b"SELECT 1"), (b"\xff", b"SELECT 2"), bind=b"\xfe"),
            batch((b"s1", b"SELECT 1"), (b"", b"SELECT 2"), bind=b"s1"),
            batch((b"s1", b"SELECT 1"), (b"", b"SELECT 2"), bind=b"s2"),
            batch((b"", b"SELECT 1 + 2")), batch((b"", b"SELECT 1 + 2\x00DELETE")), batch((b"", b"DELETE\x00x"))]
    for data in runs:
        for judge in (None, "w"):
            asked: list[list[str]] = [[], []]
            answers = [f(data, lambda name, a=a: a.append(name) or known.get(name),  # type: ignore[func-returns-value]
                         None if judge is None else m.writes_nothing_sql)
                       for f, a, m in ((py, asked[0], pure("proxy.replicas")), (fast, asked[1], proxy.replicas))]
            assert answers[0] is answers[1] and asked[0] == asked[1], (data, judge, answers, asked)
    assert [fast(data, lambda _: None) for data in runs[:5]] == [True, True, False, True, False]


# --- proxy.replicas.lone_query_text -----------------------------------------------------------------------------


@compiled
@settings(max_examples=3000, deadline=None)
@given(_routed_batch())
def test_lone_query_text(batch: tuple[bytes, dict[str, str]]) -> None:
    """The same text (or None) for any client bytes: one Query or not, broken lengths, cut frames, invalid UTF-8,
    an inner NUL."""
    py, fast = both("proxy.replicas", "lone_query_text")
    data = batch[0]
    assert _outcome(fast, data) == _outcome(py, data)


@compiled
def test_lone_query_text_edges() -> None:
    py, fast = both("proxy.replicas", "lone_query_text")
    for data in [_frame(0x51, b"SELECT 1\x00"), _frame(0x51, b"\x00"), _frame(0x51, b""), _frame(0x51, b"a\x00b\x00"),
                 _frame(0x51, b"\xff\x00"), _frame(0x51, b"a\x00\xff\x00"), _frame(0x51, "é".encode() + b"\x00"),
                 _frame(0x51, b"SELECT 1\x00") + _frame(0x53, b""), _frame(0x50, b"SELECT 1\x00"), b"Q", b""]:
        assert _outcome(fast, data) == _outcome(py, data), data
    assert fast(_frame(0x51, b"SELECT 1\x00")) == "SELECT 1" and fast(_frame(0x51, b"a\x00b\x00")) is None


# --- proxy.replicas.request_route -------------------------------------------------------------------------------

_DECISIONS: dict[str, object] = {
    "reads": Allow(effects=frozenset({READ_ONLY})), "writes": Allow(), "deny": Deny("42501", "no", "", "rule"),
    "rewrite reads": Rewrite("SELECT 2", ("r",), frozenset({READ_ONLY})),
}


class _Decide:
    """A session's decide function as request_route sees it: `cached(sql)` answers `decisions[sql]`, or one decision
    for every text; every call noted."""

    def __init__(self, asked: list[str], answer: str | None, by_text: dict[str, str]) -> None:
        self.asked, self.answer, self.by_text = asked, answer, by_text

    def cached(self, sql: str) -> object:
        self.asked.append(f"cached {sql!r}")
        answer = self.by_text.get(sql, self.answer)
        return None if answer is None else _DECISIONS[answer]


def _route_run(module: ModuleType, data: bytes, known: dict[str, str], answer: str | None, wrote_at: float | None,
               plain: bool) -> tuple[object, ...]:
    """What `module`'s request_route answers for `data` (a session that wrote at `wrote_at`; `plain`: a decide
    function without `cached`), the routing left as it leaves it, and every statement, text and decision it asked."""
    asked: list[str] = []

    def statement(name: str) -> str | None:
        asked.append(f"statement {name!r}")
        return known.get(name)

    routing = module.Routed(RoutingConfig(route="auto"))
    if wrote_at is not None:  # (a write released at `wrote_at`: its Routes made anew)
        routing.wrote = True
        routing.released(None, lambda: wrote_at)
    routing.wrote, routing.read_only, routing.memo = True, False, None
    decide: Any = (lambda kind, sql: None) if plain else _Decide(asked, answer, {"SELECT 1": "writes"})
    route = _outcome(module.request_route, routing, data, decide, statement)
    memo = routing.memo
    if memo is not None:
        assert memo[2] is decide
        memo = (memo[0], memo[1])
    shown = ((route.routing, route.read_only, route.wrote_at, route is routing._routes[route.read_only])
             if isinstance(route, module.Route) else route)
    return shown, routing.read_only, routing.wrote, memo, asked


_LONE_QUERY = st.builds(lambda sql, cut: (_frame(0x51, sql.encode() + b"\x00")[:cut], {}),
                        st.sampled_from(_ROUTED_SQL[:-2]), st.sampled_from([None, None, None, -1, 5]))


@compiled
@settings(max_examples=3000, deadline=None)
@given(_routed_batch() | _LONE_QUERY, st.sampled_from([None, *_DECISIONS]), st.sampled_from([None, 12.5]),
       st.booleans())
def test_request_route(batch: tuple[bytes, dict[str, str]], answer: str | None, wrote_at: float | None,
                       plain: bool) -> None:
    """The same Route (the session's kept one, made anew at each write), the same routing state (read_only,
    wrote, the decision kept for the gate), the same questions in the same order: any client bytes, a decision of
    each kind or none cached, after a write or not."""
    import proxy.replicas

    data, known = batch
    assert _route_run(proxy.replicas, data, known, answer, wrote_at, plain) == _route_run(
        pure("proxy.replicas"), data, known, answer, wrote_at, plain)


@compiled
def test_request_route_edges() -> None:
    """A lone Query judged by its cached decision (whatever its text says), else walked; a write's Route."""
    import proxy.replicas

    query = _frame(0x51, b"SELECT 1\x00")  # (its decision, by text: "writes")
    delete = _frame(0x51, b"DELETE FROM t\x00")
    batch = _frame(0x50, b"\x00SELECT 3\x00\x00\x00") + _frame(0x42, b"\x00\x00" + b"\x00" * 6) + _frame(0x53, b"")
    for data in [query, delete, batch, _frame(0x51, b"a\x00b\x00"), b""]:
        for answer in [None, *_DECISIONS]:
            for wrote_at in (None, 3.0):
                for plain in (False, True):
                    fast = _route_run(proxy.replicas, data, {}, answer, wrote_at, plain)
                    assert fast == _route_run(pure("proxy.replicas"), data, {}, answer, wrote_at, plain), (
                        data, answer, wrote_at, plain)
    # "SELECT 1" reads, yet its decision says it does not: the primary, as it said; DELETE reads as its decision says
    assert _route_run(proxy.replicas, query, {}, "reads", None, False)[:3] == (
        (RoutingConfig(route="auto"), False, None, True), False, False)  # (nor a write: it writes nothing)
    assert _route_run(proxy.replicas, delete, {}, "reads", None, False)[:3] == (
        (RoutingConfig(route="auto"), True, None, True), True, False)
    assert _route_run(proxy.replicas, delete, {}, None, 3.0, False)[:3] == (
        (RoutingConfig(route="auto"), False, 3.0, True), False, True)  # (the Route kept since that write)


# --- proxy.replicas.resume ---------------------------------------------------------------------------------------

_RESUMED = [_frame(0x51, b"SELECT 1\x00"), _frame(0x51, b"DELETE FROM t\x00"), _frame(0x51, b"SELECT 2\x00"),
            _frame(0x50, b"s1\x00SELECT 3\x00\x00\x00") + _frame(0x42, b"\x00s1\x00" + b"\x00" * 6)
            + _frame(0x53, b""), _frame(0x42, b"\x00s2\x00" + b"\x00" * 6) + _frame(0x53, b""), b"Q\x00"]


def _resume_run(module: ModuleType, steps: list[tuple[int, int, bool]]) -> list[object]:
    """`module`'s resume at each step (the request `_RESUMED[i]`, the session's server request 0 or 1, a write
    released before it or not): its ask (which one of those made, by order), the bytes judged, the Route, every ask
    made and statement asked."""
    asked: list[object] = []
    requests, made = (object(), object()), []

    def ask_of(request: object, route: object) -> object:
        made.append((requests.index(request), route))
        return ("ask", len(made))

    def statement(name: str) -> str | None:
        asked.append(name)
        return {"s2": "SELECT 4", "": "DELETE FROM t"}.get(name)

    routing = module.Routed(RoutingConfig(route="auto"))
    decide = _Decide(asked, None, {"SELECT 1": "reads", "DELETE FROM t": "writes"})
    out: list[object] = []
    for i, which, write in steps:
        if write:
            routing.wrote = True
            routing.released(None, lambda: 7.0 + len(out))
        ask = _outcome(module.resume, routing, _RESUMED[i], decide, statement, requests[which], ask_of)
        route = routing.asked[0] if routing.asked is not None else None
        out.append((ask, routing.judged, routing.read_only, routing.wrote,
                    None if route is None else (route.read_only, route.wrote_at, route is routing._routes[1])))
    return [out, [(w, (r.read_only, r.wrote_at)) for w, r in made], asked]


@compiled
@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_RESUMED) - 1), st.integers(0, 1), st.booleans()), max_size=8))
def test_resume(steps: list[tuple[int, int, bool]]) -> None:
    """The same ask object while the Route and the server request are (a new one at either's change), the same bytes
    judged and routing state, the same questions: reads, writes, batches, a write released between them or not."""
    import proxy.replicas

    assert _resume_run(proxy.replicas, steps) == _resume_run(pure("proxy.replicas"), steps)


@compiled
def test_resume_edges() -> None:
    """Reads keep their ask; another server request or a write's new Routes make another."""
    import proxy.replicas

    steps = [(0, 0, False), (2, 0, False), (2, 1, False), (1, 1, False), (0, 1, True), (0, 1, False)]
    fast = _resume_run(proxy.replicas, steps)
    assert fast == _resume_run(pure("proxy.replicas"), steps)
    assert [a for a, *_ in fast[0]] == [("ask", 1), ("ask", 1), ("ask", 2), ("ask", 3), ("ask", 4), ("ask", 4)]


# --- proxy.replicas.kept -----------------------------------------------------------------------------------------

_POLLS = st.lists(st.tuples(st.sampled_from(["primary", "r1", "r2", "fail r1", "fail r2"]),
                            st.sampled_from([10.0, 11.0, 11.5, 14.0]), st.sampled_from(["0/100", "0/200", None])),
                  max_size=6)


def _kept_run(module: ModuleType, polls: list[tuple[str, float, str | None]], asks: list[tuple[Any, ...]]
              ) -> list[object]:
    """`module`'s kept for each ask (backend, route kind, read-only, wrote_at, fallback, now, kept replica) on a
    router whose replica set saw `polls`: the Choice as (replica, server, the router's own one), the fit it kept."""
    router = module.Router.__new__(module.Router)
    replica_set = module.ReplicaSet("main", {n: module.Replica(n, etl=False) for n in ("r1", "r2")}, 1.0, 2.0, 5.0)
    router.sets, router._turn, router._choices = {"main": replica_set}, 0, {}
    for what, at, lsn in polls:
        if what == "primary":
            replica_set.primary_polled(at, False, lsn or "0/50")
        elif what.startswith("fail"):
            replica_set.replica_failed(what[5:], "gone")
        else:
            replica_set.replica_polled(what, at + 0.1, lsn is not None, lsn)
    out: list[object] = []
    for backend, kind, read_only, wrote_at, fallback, now, replica in asks:
        routing = RoutingConfig(route=kind, max_replica_lag=2.0, replica_fallback=fallback)
        choice = _outcome(module.kept, router, backend, module.Route(routing, read_only, wrote_at), now, replica)
        if isinstance(choice, module.Choice):
            own = choice is module._PRIMARY or choice is router._choices.get(choice.replica)
            choice = (choice.replica, choice.server, choice.refusal, own)
        out.append((choice, {lag: (list(names), until) for lag, (names, until) in replica_set._fit.items()},
                    router._turn))
    return out


@compiled
@settings(max_examples=3000, deadline=None)
@given(_POLLS, st.lists(st.tuples(
    st.sampled_from(["main", "other"]), st.sampled_from(["auto", "replica", "primary"]), st.booleans(),
    st.sampled_from([None, 9.0, 10.5, 11.2]), st.sampled_from(["primary", "refuse"]),
    st.sampled_from([10.5, 11.2, 12.0, 13.4, 14.1, 16.0, 30.0]), st.sampled_from([None, "r1", "r2", "r3"])),
    min_size=1, max_size=4))
def test_kept(polls: list[tuple[str, float, str | None]], asks: list[tuple[Any, ...]]) -> None:
    """The same Choice (the router's own object) or None, the same fit kept, no turn taken: replicas up, down,
    lagging, silent, behind a write or not; every route kind and fallback; a kept replica or the primary."""
    import proxy.replicas

    assert _kept_run(proxy.replicas, polls, asks) == _kept_run(pure("proxy.replicas"), polls, asks)


@compiled
def test_kept_edges() -> None:
    """The fit kept from an earlier request holds only until its time: a silent replica, one falling behind, a
    write to hold (read-your-writes), a replica not among the candidates, no replica set, each route kind."""
    import proxy.replicas

    caught_up = [("primary", 10.0, "0/100"), ("r1", 10.0, "0/100")]
    behind = [("primary", 10.0, "0/100"), ("primary", 11.0, "0/200"), ("r1", 11.0, "0/100"), ("r2", 11.0, "0/200")]
    read = ("main", "auto", True, None, "primary")
    asks = [
        [(*read, 10.5, "r1"), (*read, 14.1, "r1"), (*read, 16.0, "r1"), (*read, 16.0, None)],  # silent past 15.1
        [(*read, 11.2, "r1"), (*read, 11.9, "r1"), (*read, 12.1, "r1"), (*read, 12.1, "r2")],  # r1 lags past 12.0
        [(*read, 11.2, "r2"), ("main", "auto", True, 11.05, "primary", 11.2, "r2"),
         ("main", "auto", True, 10.5, "primary", 11.2, "r1"), ("main", "auto", True, 10.5, "primary", 11.2, "r2")],
        [("main", "replica", True, None, "refuse", 30.0, None), ("main", "replica", True, None, "primary", 30.0, None),
         ("main", "auto", False, None, "primary", 11.2, None), ("main", "auto", False, None, "primary", 11.2, "r2"),
         ("main", "primary", True, None, "primary", 11.2, None), ("other", "auto", True, None, "primary", 11.2, None),
         ("other", "auto", True, None, "primary", 11.2, "r1"), (*read, 11.2, "r3")],
    ]
    for polls in (caught_up, behind):
        for run in asks:
            fast = _kept_run(proxy.replicas, polls, run)
            assert fast == _kept_run(pure("proxy.replicas"), polls, run), (polls, run)
    # (what the cases are for: the kept fit stops holding at its time)
    assert _kept_run(proxy.replicas, caught_up, asks[0])[1][0] == ("r1", "r1", None, True)
    assert _kept_run(proxy.replicas, caught_up, asks[0])[2][0] is None
    assert _kept_run(proxy.replicas, behind, asks[1])[1][0] == ("r1", "r1", None, True)
    assert _kept_run(proxy.replicas, behind, asks[1])[2][0] is None
