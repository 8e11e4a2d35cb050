# cython: language_level=3
"""Compiled versions of named hot-path functions and classes; each module they replace ends with a hook.

The Python modules are the reference: each name here answers exactly as the one it replaces (the differential
tests in tests/unit/test_speedups.py run both on the same inputs), and `proxy/_accel.py` decides whether they are
used. Nothing here imports a module that has a hook at load time (that would be an import cycle): the names they
share are bound by `_bind()` on first use.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp, memcpy

cdef extern from "string.h":
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)

cdef extern from *:
    """
    #ifndef PGTENANT_BUILT_FROM
    #define PGTENANT_BUILT_FROM ""
    #endif
    """
    const char *PGTENANT_BUILT_FROM

# What this build was compiled from: setup.py passes proxy._accel.source_hash() (checked at import).
BUILT_FROM = PGTENANT_BUILT_FROM.decode("ascii")

# --- names and numbers shared with the Python modules, bound on first use ------------------------------------

cdef bint _bound = False
cdef object Message, HOLD, FramingError, GuardHit, refused, Rewrite, _BY_KEYWORD, _statement_kind_general
cdef object Allow, Deny, Template, UNLIMITED, decide, shape_text, from_decision, _cstring, DecodeError
cdef object ErrorCut


cdef int _bind() except -1:
    global _bound, Message, HOLD, FramingError, GuardHit, refused, Rewrite, _BY_KEYWORD, _statement_kind_general
    global Allow, Deny, Template, UNLIMITED, decide, shape_text, from_decision, _cstring, DecodeError
    global _COPY_RUN, _REFUSED, _SMALL_LIMIT, _GUARD_STREAM, _GUARD_CARRY, _MAX_LITERALS, _LONG_TEXT, _ENTRY_OVERHEAD, _ENTRY_SHARE
    global _MAX_STATEMENTS, _MAX_PENDING, _MAX_EXTRA, MAX_TEXT, SHORT_TEXT, MAX_HELD, _MAX_COPY_ENDS
    global _ENDED_BY_QUERY, _CLOSED_BY_SYNC, _JOINED
    global ErrorCut, _ERROR_CUT
    from proxy.policy import cache, shape
    from proxy.protocol import errcut
    from proxy.policy.engine import UNLIMITED, decide
    from proxy.policy.model import Allow, Deny, Rewrite
    from proxy.protocol import stream
    from proxy.protocol.messages import DecodeError, _cstring
    from proxy.stmtkind import _BY_KEYWORD
    from proxy.stmtkind import _statement_kind as _statement_kind_general
    from proxy import tracking
    Message, HOLD, FramingError, _COPY_RUN = stream.Message, stream.HOLD, stream.FramingError, stream._COPY_RUN
    refused, _REFUSED, _SMALL_LIMIT = stream.refused, stream._REFUSED, stream.SMALL_LIMIT
    GuardHit, _GUARD_STREAM, _GUARD_CARRY = stream.GuardHit, stream.GUARD_STREAM, stream.GUARD_CARRY
    ErrorCut, _ERROR_CUT = errcut.ErrorCut, errcut.ERROR_CUT
    Template, from_decision, shape_text, _MAX_LITERALS = shape.Template, shape.from_decision, shape.text, \
        shape._MAX_LITERALS
    _LONG_TEXT, _ENTRY_OVERHEAD, _ENTRY_SHARE = cache._LONG_TEXT, cache._ENTRY_OVERHEAD, cache._ENTRY_SHARE
    _MAX_STATEMENTS, _MAX_PENDING, _MAX_EXTRA = tracking._MAX_STATEMENTS, tracking._MAX_PENDING, tracking._MAX_EXTRA
    MAX_TEXT, SHORT_TEXT, MAX_HELD = tracking.MAX_TEXT, tracking.SHORT_TEXT, tracking.MAX_HELD
    _MAX_COPY_ENDS = tracking._MAX_COPY_ENDS
    _ENDED_BY_QUERY, _CLOSED_BY_SYNC, _JOINED = tracking._ENDED_BY_QUERY, tracking._CLOSED_BY_SYNC, tracking._JOINED
    _bound = True
    return 0


# --- proxy.protocol.stream ----------------------------------------------------------------------------------

cdef Py_ssize_t _COPY_RUN  # the numbers are the Python modules' own, bound by _bind()
cdef unsigned char _REFUSED
cdef Py_ssize_t _SMALL_LIMIT
cdef Py_ssize_t _GUARD_STREAM
cdef Py_ssize_t _GUARD_CARRY
cdef Py_ssize_t _ERROR_CUT


cdef inline object _run(bytes buf, const unsigned char *p, Py_ssize_t start, Py_ssize_t end):
    if end - start < _COPY_RUN:
        return PyBytes_FromStringAndSize(<const char *>p + start, end - start)
    return memoryview(buf)[start:end]


cdef dict _SHARED = {}  # role tables and type lists: sessions use the same few, one copy of each (as stream.py)


cdef bytes _shared(bytes key):
    return _SHARED.setdefault(key, key)


cdef bytes _NO_ROLES = _shared(bytes(256))


cdef class MessageStream:
    """proxy.protocol.stream.MessageStream: the header read with C byte arithmetic, bodies copied from a C pointer."""

    cdef bytes _role
    cdef list _table
    cdef object _intercept
    cdef object _refuse
    cdef object _small_types
    cdef bytes _small
    cdef bytes _types
    cdef object _guard
    cdef bytes _guarded
    cdef bytes _needle
    cdef object _leaks
    cdef bytes _drop
    cdef bint _dropping
    cdef bytes _tail
    cdef int _stype
    cdef bytes _buf
    cdef list _parts
    cdef Py_ssize_t _parts_len, _want, _skip
    cdef object _cut
    cdef public Py_ssize_t max_length
    cdef public bint limit_all
    cdef public bint cut_errors
    cdef public Py_ssize_t begun

    def __init__(self, *, intercept=frozenset(), max_length=1 << 30, limit_all=True, cut_errors=False):
        if not _bound:
            _bind()
        self._role = _NO_ROLES
        self._table = []
        self._types = b""
        self._intercept = frozenset()
        self._refuse = frozenset()
        self._small_types = frozenset()
        self._small = _NO_ROLES
        self._guard = None
        self._guarded = _NO_ROLES
        self._needle = b""
        self._leaks = None
        self._drop = _NO_ROLES
        self._dropping = False
        self._tail = b""
        self._stype = -1
        self.intercept = intercept
        self.max_length = max_length
        self.limit_all = limit_all
        self.cut_errors = cut_errors
        self._buf = b""
        self._skip = 0
        self._cut = None
        self._parts = []
        self._parts_len = 0
        self._want = 0
        self.begun = 0

    @property
    def intercept(self):
        return self._intercept

    @intercept.setter
    def intercept(self, types):
        self._intercept = frozenset(types)
        self._build_roles()

    @property
    def refuse(self):
        return self._refuse

    @refuse.setter
    def refuse(self, types):
        self._refuse = frozenset(types)
        self._build_roles()

    @property
    def small(self):
        return self._small_types

    @small.setter
    def small(self, types):
        self._small_types = frozenset(types)
        table = bytearray(256)
        for t in self._small_types:
            table[t] = 1
        self._small = _shared(bytes(table))

    @property
    def handlers(self):
        return dict(zip(self._types, self._table, strict=True))

    @handlers.setter
    def handlers(self, handlers):
        self._table = list(handlers.values())
        self._types = _shared(bytes(handlers))
        self._build_roles()

    def guard(self, guard, types=frozenset(), needle=b"", leaks=None, drop=frozenset()):
        table = bytearray(256)
        for t in types:
            table[t] = 1
        self._guard, self._guarded, self._needle = guard, _shared(bytes(table)), bytes(needle)
        self._leaks = leaks
        table = bytearray(256)
        for t in drop:
            table[t] = 1
        self._drop = _shared(bytes(table))

    cdef _build_roles(self):
        role = bytearray(256)
        for t in self._refuse:
            role[t] = _REFUSED
        for n, t in enumerate(self._types):
            role[t] = 2 + n
        for t in self._intercept:
            role[t] = 1
        self._role = _shared(bytes(role))

    @property
    def pending(self):
        return len(self._buf) + self._parts_len + len(self._tail)

    @property
    def unfinished(self):
        return len(self._buf) + self._parts_len + self._skip + len(self._tail)

    cdef object _streamed(self, int t, bytes window, Py_ssize_t left):
        leaks = self._leaks
        if leaks is not None and leaks(window):
            raise GuardHit(t)
        if not left:
            self._tail, self._stype = b"", -1
            return window
        cdef Py_ssize_t cut = PyBytes_GET_SIZE(window) - _GUARD_CARRY
        if cut <= 0:
            self._tail = window
            return b""
        self._tail = window[cut:]
        return _run(window, <const unsigned char *>PyBytes_AS_STRING(window), 0, cut)

    cpdef list feed(self, data):
        cdef list out = []
        cdef Py_ssize_t n, pos, run_start, end, length, max_length, held
        cdef unsigned char t, r
        cdef bytes buf
        cdef const unsigned char *p
        cdef const unsigned char *role
        cdef const unsigned char *guarded
        cdef const char *needle
        cdef Py_ssize_t needle_len
        cdef bint limit_all, g
        cdef Py_ssize_t take
        if self._stype >= 0:  # (a guarded message streamed: see `guard`)
            take = min(len(data), self._skip)
            self._skip -= take
            if self._dropping:  # (nothing of it goes out or stays)
                piece = b""
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
        held = PyBytes_GET_SIZE(self._buf)
        buf = self._buf + data if self._buf else bytes(data)
        n = PyBytes_GET_SIZE(buf)
        p = <const unsigned char *>PyBytes_AS_STRING(buf)
        role = <const unsigned char *>PyBytes_AS_STRING(self._role)
        table = self._table
        max_length = self.max_length
        limit_all = self.limit_all
        guard = self._guard
        guarded = <const unsigned char *>PyBytes_AS_STRING(self._guarded if guard is not None else _NO_ROLES)
        needle = PyBytes_AS_STRING(self._needle)
        needle_len = PyBytes_GET_SIZE(self._needle)
        pos = 0
        run_start = 0
        while n - pos >= 5:
            t = p[pos]
            length = ((<Py_ssize_t>p[pos + 1] << 24) | (<Py_ssize_t>p[pos + 2] << 16)
                      | (<Py_ssize_t>p[pos + 3] << 8) | <Py_ssize_t>p[pos + 4])
            if length < 4:
                if role[t] == _REFUSED:
                    raise refused(t)
                raise FramingError(f"invalid message length {length}", length)
            end = pos + 1 + length
            r = role[t]
            g = guarded[t]
            if r or g:
                if r == _REFUSED:
                    raise refused(t)
                if length > max_length:
                    raise FramingError("message too large", length, too_large=True)
                if length > _SMALL_LIMIT and (<const unsigned char *>PyBytes_AS_STRING(self._small))[t]:
                    raise FramingError(f"invalid message length {length}", length)
                if end > n or ((t == 69 or t == 78) and length > _ERROR_CUT + 4 and self.cut_errors):  # (E, N: cut)
                    if end > n and g and not r and length > _GUARD_STREAM and (
                            (<const unsigned char *>PyBytes_AS_STRING(self._drop))[t] or self._leaks is not None):
                        if run_start < pos:
                            out.append(_run(buf, p, run_start, pos))
                        self._skip, self._stype = end - n, t
                        if (<const unsigned char *>PyBytes_AS_STRING(self._drop))[t]:
                            self._dropping = True
                        else:
                            piece = self._streamed(t, PyBytes_FromStringAndSize(<const char *>p + pos + 5,
                                                                                n - pos - 5), end - n)
                            out.append(PyBytes_FromStringAndSize(<const char *>p + pos, 5))
                            if piece:
                                out.append(piece)
                        if pos or not held:
                            self.begun += 1
                        pos = run_start = n
                    break
                if r == 1:
                    if run_start < pos:
                        out.append(_run(buf, p, run_start, pos))
                    out.append(Message(t, PyBytes_FromStringAndSize(<const char *>p + pos + 5, length - 4)))
                    run_start = end
                elif g and not r and (<const unsigned char *>PyBytes_AS_STRING(self._drop))[t]:  # (dropped unread)
                    if run_start < pos:
                        out.append(_run(buf, p, run_start, pos))
                    run_start = end
                else:
                    if g and (needle_len == 0 or memmem(p + pos + 5, <size_t>(length - 4), needle,
                                                         <size_t>needle_len) != NULL):
                        replacement = guard(t, PyBytes_FromStringAndSize(<const char *>p + pos + 5, length - 4))
                        guard = self._guard
                        guarded = <const unsigned char *>PyBytes_AS_STRING(
                            self._guarded if guard is not None else _NO_ROLES)
                        needle = PyBytes_AS_STRING(self._needle)
                        needle_len = PyBytes_GET_SIZE(self._needle)
                    elif r:
                        replacement = table[r - 2](PyBytes_FromStringAndSize(<const char *>p + pos + 5, length - 4))
                    else:
                        replacement = None
                    if replacement is not None:
                        if run_start < pos:
                            out.append(_run(buf, p, run_start, pos))
                        if replacement is HOLD:
                            self._buf = PyBytes_FromStringAndSize(<const char *>p + end, n - end)
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
                out.append(_run(buf, p, run_start, pos))
        if pos < n:
            if role[p[pos]] == _REFUSED:  # (a header begun: refused at its type byte, as PostgreSQL does)
                raise refused(p[pos])
            if pos or not held:
                self.begun += 1
        if n - pos >= 5:
            # An incomplete held-back message: keep its pieces until its known length has arrived.
            length = ((<Py_ssize_t>p[pos + 1] << 24) | (<Py_ssize_t>p[pos + 2] << 16)
                      | (<Py_ssize_t>p[pos + 3] << 8) | <Py_ssize_t>p[pos + 4])
            self._want = length + 1
            self._buf = b""
            if (p[pos] == 69 or p[pos] == 78) and length > _ERROR_CUT + 4 and self.cut_errors:  # (never held whole)
                self._cut, self._parts_len = ErrorCut(p[pos]), 5
                return out + self.feed(PyBytes_FromStringAndSize(<const char *>p + pos + 5, n - pos - 5))
            self._parts, self._parts_len = [PyBytes_FromStringAndSize(<const char *>p + pos, n - pos)], n - pos
        else:
            self._buf = PyBytes_FromStringAndSize(<const char *>p + pos, n - pos) if pos < n else b""
        return out


# --- proxy.protocol.messages --------------------------------------------------------------------------------

cpdef bytes query_message(str sql):
    """proxy.protocol.messages.query_message: one allocation and a copy."""
    cdef bytes text = sql.encode()
    cdef Py_ssize_t n = PyBytes_GET_SIZE(text)
    if n > 0x7FFFFFFF - 5:
        raise OverflowError("query text too long")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + 6)
    cdef unsigned char *q = <unsigned char *>PyBytes_AS_STRING(out)
    cdef unsigned long length = <unsigned long>(n + 5)
    q[0] = 81  # 'Q'
    q[1] = (length >> 24) & 0xFF
    q[2] = (length >> 16) & 0xFF
    q[3] = (length >> 8) & 0xFF
    q[4] = length & 0xFF
    memcpy(q + 5, PyBytes_AS_STRING(text), <size_t>n)
    q[n + 5] = 0
    return out


cpdef str query_text(bytes body):
    """proxy.protocol.messages.query_text: the usual case (one string and its NUL) decoded in place."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    if not _bound:
        _bind()
    if n and (<const unsigned char *>PyBytes_AS_STRING(body))[n - 1] == 0:
        try:
            sql = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(body), n - 1, NULL)
        except UnicodeDecodeError:
            pass  # the exact error comes from the general path
        else:
            if "\x00" not in sql:
                return sql
    sql, pos = _cstring(body, 0)
    if pos != n:
        raise DecodeError("invalid message format")  # PostgreSQL's pq_getmsgend
    return sql


# --- proxy.policy.shape -------------------------------------------------------------------------------------

cdef Py_ssize_t _MAX_LITERALS
cdef Py_ssize_t _SCRATCH_SIZE = 4096
cdef bytearray _scratch = bytearray(_SCRATCH_SIZE)  # the key buffer (a scan runs to its end without yielding)


cdef inline bint _word_or_dot(int c):
    """[A-Za-z0-9_.]: what may not touch an integer literal."""
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95 or c == 46


cpdef split(str sql):
    """proxy.policy.shape.split as one pass over the characters, the key written as it goes (a NUL where each
    literal was): the same answers as the regular expression."""
    cdef Py_ssize_t n = len(sql), i, j, k
    cdef int c, prev
    cdef bytes raw
    cdef bytearray key
    cdef const unsigned char *p
    cdef unsigned char *q
    if not _bound:
        _bind()
    try:
        raw = sql.encode("utf-8")  # the characters, just as many bytes when all are ASCII
    except UnicodeEncodeError:  # a lone surrogate: not plain
        return None
    if PyBytes_GET_SIZE(raw) != n:
        return None
    p = <const unsigned char *>PyBytes_AS_STRING(raw)
    # the key is never longer than the text: the shared scratch buffer, or one of its own for a longer text (not
    # kept: one huge statement must not pin its size)
    key = _scratch if n <= _SCRATCH_SIZE else bytearray(n)
    q = <unsigned char *>(<char *>key)
    k = 0
    literals = []
    prev = 0  # the character before position i (0 at the start)
    i = 0
    while i < n:
        c = p[i]
        if c == 39 or c == 34 or c == 36 or c == 92:  # ' " $ \
            return None
        if (c == 45 or c == 47) and i + 1 < n and p[i + 1] == (45 if c == 45 else 42):  # -- or /*
            return None
        if 48 <= c <= 57 and not _word_or_dot(prev):
            j = i + 1
            while j < n and 48 <= p[j] <= 57:
                j += 1
            if j == n or not _word_or_dot(p[j]):
                literals.append(sql[i:j])
                if len(literals) > _MAX_LITERALS:
                    return None
                q[k] = 0
                k += 1
            else:
                while i < j:
                    q[k] = p[i]
                    k += 1
                    i += 1
            prev = p[j - 1]
            i = j
            continue
        q[k] = c
        k += 1
        prev = c
        i += 1
    if not literals:
        return None
    return (<char *>q)[:k].decode("ascii"), literals


# --- proxy.policy.cache -------------------------------------------------------------------------------------

from hashlib import blake2b as _blake2b
from sys import getsizeof as _getsizeof

cdef Py_ssize_t _LONG_TEXT, _ENTRY_OVERHEAD, _ENTRY_SHARE


cdef text_key(str sql):
    """proxy.policy.cache.text_key."""
    if len(sql) <= _LONG_TEXT:
        return sql
    return _blake2b(sql.encode("utf-8", "surrogatepass"), digest_size=20).digest()


cdef Py_ssize_t entry_size(key, value) except -1:
    """proxy.policy.cache.entry_size."""
    cdef Py_ssize_t size = _ENTRY_OVERHEAD + _getsizeof(key)
    kind = type(value)
    if kind is Rewrite:
        size += _getsizeof(value.sql)
    elif kind is Deny:
        size += _getsizeof(value.message)
        if value.before is not None:
            size += _getsizeof(value.before.sql)
    elif kind is Template:
        for piece in value.pieces:
            size += _getsizeof(piece)
    return size


cdef inline bint _parse_error(decision):
    return type(decision) is Deny and decision.rule == "parse_error"


cdef class _Entry:
    cdef public object value
    cdef public long long seq
    cdef public Py_ssize_t size

    def __init__(self, value, long long seq, Py_ssize_t size):
        self.value = value
        self.seq = seq
        self.size = size


cdef class _Part:
    cdef public str tenant
    cdef public dict data, shapes
    cdef public Py_ssize_t entries, held

    def __init__(self, str tenant):
        self.tenant = tenant
        self.data = {}
        self.shapes = {}
        self.entries = 0
        self.held = 0


cdef class DecisionCache:
    """proxy.policy.cache.DecisionCache, with C fields and C calls between its methods."""

    cdef public Py_ssize_t maxsize, max_bytes, entries, held
    cdef public unsigned long long hits, misses
    cdef long long _clock
    cdef dict _parts

    def __init__(self, Py_ssize_t maxsize=10_000, Py_ssize_t max_bytes=64 << 20):
        if not _bound:
            _bind()
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.entries = 0
        self.held = 0
        self._clock = 0
        self._parts = {}

    def __len__(self):
        return self.entries

    def tenant_usage(self, str tenant):
        part = self._parts.get(tenant)
        if part is None:
            return 0, 0
        return (<_Part>part).entries, (<_Part>part).held

    cpdef cached(self, policy, str sql):
        cdef _Part part
        cdef _Entry found, entry
        cdef tuple key, skey
        found_part = self._parts.get(policy.tenant)
        if found_part is None:
            return None
        part = found_part
        cache_id = policy.cache_id
        if len(sql) <= _LONG_TEXT:
            parts = split(sql)
            if parts is not None:
                skey = (cache_id, (<tuple>parts)[0])
                by_key = part.shapes.get(skey)
                if by_key is not None and (<_Entry>by_key).value is not None:
                    found = by_key
                    self._touch(part.shapes, skey, found)
                    self.hits += 1
                    by_shape = found.value
                    return by_shape if type(by_shape) is Allow else by_shape.fill((<tuple>parts)[1])
            key = (cache_id, sql)
        else:
            key = (cache_id, text_key(sql))
        by_text = part.data.get(key)
        if by_text is None:
            return None
        entry = by_text
        self._touch(part.data, key, entry)
        self.hits += 1
        return entry.value

    cdef _touch(self, dict data, tuple key, _Entry entry):
        if self._clock - entry.seq > (self.maxsize - 1) // 2:
            self._clock += 1
            entry.seq = self._clock
            del data[key]
            data[key] = entry

    def get_or_decide(self, policy, str sql, timings=None, limits=None):
        found = self.cached(policy, sql)
        if found is not None:
            return found
        return self.decide_miss(policy, sql, timings, UNLIMITED if limits is None else limits)

    cpdef decide_miss(self, policy, str sql, timings=None, limits=None):
        cdef _Part part
        if limits is None:
            limits = UNLIMITED
        self.misses += 1
        parts = split(sql) if len(sql) <= _LONG_TEXT else None
        if parts is not None:
            key, literals = parts
            skey = (policy.cache_id, key)
            part = self._part(policy.tenant)
            if skey not in part.shapes:
                text = shape_text(key)
                decision = decide(policy, text, timings, limits)
                by_shape = from_decision(text, len(literals), decision)
                if by_shape is not None or not _parse_error(decision):
                    self._store(part, part.shapes, skey, key, by_shape)
                if by_shape is not None:
                    return by_shape if isinstance(by_shape, Allow) else by_shape.fill(literals)
                timings = None
        decision = decide(policy, sql, timings, limits)
        self.store(policy, sql, decision)
        return decision

    cpdef store(self, policy, str sql, decision):
        cdef _Part part
        if _parse_error(decision):
            return
        part = self._part(policy.tenant)
        key = text_key(sql)
        self._store(part, part.data, (policy.cache_id, key), key, decision)

    cdef _Part _part(self, str tenant):
        part = self._parts.get(tenant)
        if part is None:
            part = self._parts[tenant] = _Part(tenant)
        return part

    cdef _store(self, _Part part, dict data, tuple key, text, value):
        cdef Py_ssize_t size = entry_size(text, value)
        if size > self.max_bytes // _ENTRY_SHARE:
            return
        old = data.pop(key, None)
        if old is not None:
            self._forget(part, old)
        self._clock += 1
        data[key] = _Entry(value, self._clock, size)
        part.entries += 1
        part.held += size
        self.entries += 1
        self.held += size
        while self.entries > self.maxsize or self.held > self.max_bytes:
            self._evict(part)

    cdef _forget(self, _Part part, _Entry entry):
        part.entries -= 1
        part.held -= entry.size
        self.entries -= 1
        self.held -= entry.size

    cdef _evict(self, _Part storing):
        cdef bint by_bytes = self.held > self.max_bytes
        cdef _Part victim = storing, part
        for candidate in self._parts.values():
            part = candidate
            if (part.held > victim.held) if by_bytes else (part.entries > victim.entries):
                victim = part
        data, shapes = victim.data, victim.shapes
        if shapes and (not data or (<_Entry>next(iter(shapes.values()))).seq < (<_Entry>next(iter(data.values()))).seq):
            data = shapes
        key = next(iter(data))
        self._forget(victim, data.pop(key))

    def clear(self):
        self._parts.clear()
        self.entries = 0
        self.held = 0


# --- proxy.stmtkind -----------------------------------------------------------------------------------------

cpdef str statement_kind(str sql):
    """proxy.stmtkind.statement_kind: the leading keyword read without the cache."""
    cdef Py_ssize_t n = len(sql), j = 0
    cdef Py_UCS4 c
    if not _bound:
        _bind()
    while j < n:
        c = sql[j]
        if not (65 <= c <= 90 or 97 <= c <= 122 or c == 95):  # [A-Za-z_]
            break
        j += 1
    if j and (j == n or <Py_UCS4>sql[j] < 128):
        word = sql[:j]
        kind = (<dict>_BY_KEYWORD).get(word)
        return kind if kind is not None else (<dict>_BY_KEYWORD).get(word.lower(), "other")
    return _statement_kind_general(sql)


# --- proxy.tracking -----------------------------------------------------------------------------------------

from collections import deque as _deque

cdef Py_ssize_t _MAX_STATEMENTS, _MAX_PENDING, _MAX_EXTRA, MAX_TEXT, SHORT_TEXT, MAX_HELD, _MAX_COPY_ENDS
cdef int _ENDED_BY_QUERY, _CLOSED_BY_SYNC, _JOINED


cdef class Request:
    """proxy.tracking.Request, with C fields."""

    cdef public double start, end
    cdef public str kind, sql, outcome
    cdef public object decision, sqlstate, extra
    cdef public object rows  # a Python int: PostgreSQL counts rows in 64 bits, unsigned
    cdef public bint closed_by_sync, ended_by_query
    cdef public Py_ssize_t extra_dropped, held

    @property
    def duration(self):
        return self.end - self.start

    @property
    def statements(self):
        return 1 + (len(self.extra) if self.extra is not None else 0) + self.extra_dropped

    def more(self, str sql, decision):
        if self.extra is None:
            self.extra = []
        if len(self.extra) < _MAX_EXTRA:
            self.extra.append((sql, decision))
        else:
            self.extra_dropped += 1


cpdef Request new_request(double start, str kind="other", str sql="", decision=None):
    """proxy.tracking.new_request."""
    cdef Request req = Request.__new__(Request)
    if not _bound:
        _bind()
    req.start = start
    req.kind = kind
    req.sql = sql
    req.decision = decision
    req.outcome = "ok"
    req.sqlstate = None
    req.rows = 0
    req.end = 0.0
    req.extra = None
    req.extra_dropped = 0
    req.held = 0
    req.closed_by_sync = False
    req.ended_by_query = False
    return req


cdef Py_ssize_t _index(pending, Request req):
    """proxy.tracking._index."""
    cdef Py_ssize_t i = 0
    for r in pending:
        if r is req:
            return i
        i += 1
    return -1


cdef str clip(str text, Py_ssize_t limit):
    """proxy.tracking.clip."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text)} characters]"


cpdef object tag_rows(bytes tag):
    """proxy.tracking.tag_rows: the digits read from a C pointer."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(tag)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(tag), start, i
    cdef long long n = 0
    while end and p[end - 1] == 0:
        end -= 1
    start = end
    while start and 48 <= p[start - 1] <= 57:
        start -= 1
    if start == end or (start and p[start - 1] != 32):
        return 0
    if end - start > 18:  # past what a C long long holds: let Python's int read it
        return int(tag[start:end])
    for i in range(start, end):
        n = n * 10 + (p[i] - 48)
    return n


cdef class RequestTracker:
    """proxy.tracking.RequestTracker, with C fields and C calls between its methods."""

    cdef public object clock, on_done, pending
    cdef public Py_ssize_t dropped, owed_dropped, held
    cdef public bint copy_in
    cdef bint _skipping
    cdef Request _batch
    cdef dict _statements
    cdef object _copy_ends
    cdef bytearray _shapes
    cdef Py_ssize_t _shape_at

    def __init__(self, clock, on_done=None):
        if not _bound:
            _bind()
        self.clock = clock
        self.on_done = on_done
        self.pending = ()  # (as tracking.py: a deque only while requests are in flight)
        self._batch = None
        self._skipping = False
        self._statements = {}
        self.copy_in = False
        self._copy_ends = None
        self.dropped = 0
        self.owed_dropped = 0
        self.held = 0
        self._shapes = None
        self._shape_at = 0

    cdef _push(self, Request req):
        cdef Request old
        if not self.pending:
            self.pending = _deque()
        elif len(self.pending) >= _MAX_PENDING:
            old = <Request>self.pending.popleft()
            self.held -= old.held
            self.dropped += 1
            self.owed_dropped += 1
            if self._shapes is None:
                self._shapes = bytearray()
            self._shapes.append((_ENDED_BY_QUERY if old.ended_by_query else 0)
                                | (_CLOSED_BY_SYNC if old.closed_by_sync else 0))
        self.pending.append(req)

    cdef Py_ssize_t _dropped_head(self):
        cdef bytearray shapes = self._shapes
        cdef Py_ssize_t at = self._shape_at
        while shapes[at] & _JOINED:
            at += 1
        self._shape_at = at
        return at

    cdef list _skipped_dropped(self):
        """proxy.tracking.RequestTracker._skipped_dropped."""
        cdef bytearray shapes = self._shapes
        cdef Py_ssize_t at = self._dropped_head(), i
        cdef int shape
        cdef Request req
        cdef list joined = []
        if not shapes[at] & _ENDED_BY_QUERY:
            return joined
        shapes[at] = _JOINED
        self.owed_dropped -= 1
        for i in range(at + 1, len(shapes)):
            shape = shapes[i]
            if not shape & _JOINED:
                if shape & _CLOSED_BY_SYNC:
                    return joined
                shapes[i] = _JOINED
                self.owed_dropped -= 1
        pending = self.pending
        while pending and pending[0] is not self._batch and not (<Request>pending[0]).closed_by_sync:
            req = <Request>pending.popleft()
            self.held -= req.held
            joined.append(req)
        if not pending:
            self._batch = None
            self._batch_request()
            self._skipping = True
        elif pending[0] is self._batch:
            self._skipping = True
        if not self.owed_dropped:
            self._shapes = None
            self._shape_at = 0
        return joined

    cdef tuple _keep(self, Request req, str sql, decision):
        cdef Py_ssize_t limit = MAX_TEXT if self.held < MAX_HELD else SHORT_TEXT, size
        cdef str rewritten
        if len(sql) > limit:
            sql = clip(sql, limit)
        size = len(sql)
        if type(decision) is Rewrite:
            rewritten = decision.sql
            if len(rewritten) > limit:
                decision = Rewrite(clip(rewritten, limit), decision.rules, decision.effects)
                rewritten = decision.sql
            size += len(rewritten)
        req.held += size
        self.held += size
        return sql, decision

    cdef _name(self, str name, str kind, str sql):
        cdef dict statements = self._statements
        old = statements.pop(name, None)
        if old is not None:
            self.held -= len((<tuple>old)[1])
        if len(sql) > MAX_TEXT:
            sql = clip(sql, MAX_TEXT)
        while statements and (len(statements) >= _MAX_STATEMENTS or self.held + len(sql) > MAX_HELD):
            self.held -= len((<tuple>statements.pop(next(iter(statements))))[1])
        if len(sql) > SHORT_TEXT and self.held + len(sql) > MAX_HELD:
            sql = clip(sql, SHORT_TEXT)
        statements[name] = (kind, sql)
        self.held += len(sql)

    cdef Request _batch_request(self):
        if self._batch is None:
            self._batch = new_request(self.clock())
            self._push(self._batch)
        return self._batch

    cpdef on_query(self, str sql, decision):
        cdef Request batch, req
        if self._batch is not None and not self.copy_in:
            batch = self._batch
            if self._skipping:
                if not batch.sql:
                    batch.sql, batch.decision = self._keep(batch, sql, decision)
                else:
                    self._more(batch, sql, decision)
                return
            self._batch = None
            batch.ended_by_query = True
            if not batch.sql:
                kind = statement_kind(sql)
                batch.sql, batch.decision = self._keep(batch, sql, decision)
                batch.kind = kind
            else:
                self._more(batch, sql, decision)
            return
        self._batch = None
        req = new_request(self.clock(), statement_kind(sql))
        req.sql, req.decision = self._keep(req, sql, decision)
        self._push(req)

    cdef _more(self, Request req, str sql, decision):
        if req.extra is not None and len(req.extra) >= _MAX_EXTRA:
            req.extra_dropped += 1
            return
        sql, decision = self._keep(req, sql, decision)
        req.more(sql, decision)

    cpdef on_function_call(self, decision):
        cdef Request batch = self._batch
        if batch is not None and not self.copy_in:
            if not self._skipping:
                self._batch = None
                batch.ended_by_query = True
            if batch.decision is None:
                batch.decision = decision
            return
        self._batch = None
        self._push(new_request(self.clock(), "other", "", decision))

    cpdef on_parse(self, str name, str sql, decision, kind=None):
        cdef Request req = self._batch_request()
        if kind is None:
            kind = statement_kind(sql)
        if name:
            self._name(name, kind, sql)
        if not req.sql:
            req.sql, req.decision = self._keep(req, sql, decision)
            req.kind = kind
        else:
            self._more(req, sql, decision)

    cpdef on_bind(self, str statement):
        cdef Request req = self._batch
        if req is None:
            req = self._batch_request()
        if not req.sql:
            found = self._statements.get(statement)
            if found is not None:
                req.kind, req.sql = found

    cpdef on_close_statement(self, str name):
        old = self._statements.pop(name, None)
        if old is not None:
            self.held -= len((<tuple>old)[1])
        return old

    cpdef on_close_undone(self, str name, tuple old):
        self._name(name, old[0], old[1])

    cpdef on_sync(self):
        cdef Request req
        if self.copy_in:
            return
        req = self._batch
        if req is None:
            req = self._batch_request()
        req.closed_by_sync = True
        self._batch = None
        self._skipping = False

    cpdef list on_skipped(self):
        """proxy.tracking.RequestTracker.on_skipped."""
        cdef Request head, req
        cdef list joined = []
        if self.owed_dropped:  # (as tracking.py)
            return self._skipped_dropped()
        pending = self.pending
        if not pending:
            return joined
        head = pending[0]
        if head is self._batch:
            self._skipping = True
            return joined
        if not head.ended_by_query:
            return joined
        head.ended_by_query = False
        while len(pending) > 1:
            req = pending[1]
            del pending[1]
            joined.append(req)
            self.held -= req.held
            if not head.sql:
                head.kind = req.kind
                head.sql, head.decision = self._keep(head, req.sql, req.decision)
            elif req.sql:
                self._more(head, req.sql, req.decision)
            for sql, decision in req.extra or ():
                self._more(head, sql, decision)
            head.extra_dropped += req.extra_dropped
            if req.closed_by_sync:
                head.closed_by_sync = True
                return joined
        self._batch = head
        self._skipping = True
        return joined

    cpdef list on_copy_in(self):
        """proxy.tracking.RequestTracker.on_copy_in."""
        cdef Request head, req
        cdef Py_ssize_t last = -1, i
        cdef bint batch_open = False
        cdef list joined = []
        pending = self.pending
        if not pending:
            self.copy_in = True
            return joined
        head = pending[0]
        ends = self._copy_ends
        while ends:
            req, batch_open = ends.popleft()
            last = _index(pending, req)
            if last >= 0:
                break
        if last < 0:
            self.copy_in = True
            last = len(pending) - 1
            if last and pending[last] is self._batch:
                last -= 1
        elif batch_open:
            if not last:
                return joined
            last -= 1
        for i in range(last):
            joined.append(self._join(head, 1))
        if head.closed_by_sync:
            head.closed_by_sync = False
            if len(pending) > 1:
                req = self._join(head, 1)
                joined.append(req)
                if req is self._batch:
                    self._batch = head
                elif req.closed_by_sync:
                    head.closed_by_sync = True
                else:
                    head.ended_by_query = True
            else:
                self._batch = head
        return joined

    cdef Request _join(self, Request head, Py_ssize_t i):
        cdef Request req = self.pending[i]
        pending = self.pending
        del pending[i]
        self.held -= req.held
        if req.sql:
            if not head.sql:
                head.kind = req.kind
                head.sql, head.decision = self._keep(head, req.sql, req.decision)
            else:
                self._more(head, req.sql, req.decision)
        for sql, decision in req.extra or ():
            self._more(head, sql, decision)
        head.extra_dropped += req.extra_dropped
        return req

    cpdef on_copy_end(self):
        if self.copy_in:
            self.copy_in = False
        elif self.pending:
            ends = self._copy_ends
            if ends is None:
                ends = self._copy_ends = _deque(maxlen=_MAX_COPY_ENDS)
            ends.append((self.pending[-1], self._batch is not None))

    cpdef on_error(self, sqlstate, bint denied=False):
        cdef Request head
        if self.pending:
            head = self.pending[0]
            if head.outcome == "ok":
                head.outcome = "denied" if denied else "error"
                head.sqlstate = sqlstate

    cpdef on_command_complete(self, bytes tag):
        cdef Request head
        if self.pending:
            rows = tag_rows(tag)
            if rows:
                head = self.pending[0]
                head.rows += rows

    cpdef on_ready(self):
        cdef Request req
        if self.owed_dropped:  # (as tracking.py)
            self._dropped_head()
            self._shape_at += 1
            self.owed_dropped -= 1
            if not self.owed_dropped:
                self._shapes = None
                self._shape_at = 0
            elif self._shape_at >= 4096 and 2 * self._shape_at >= len(self._shapes):
                del self._shapes[:self._shape_at]
                self._shape_at = 0
            return None
        if not self.pending:
            return None
        req = self.pending.popleft()
        if not self.pending:
            self.pending = ()
            self._copy_ends = None
        self.held -= req.held
        if req is self._batch:
            self._batch = None
            self._skipping = False
        req.end = self.clock()
        if self.on_done is not None:
            self.on_done(req)
        return req


# --- proxy.replicas -----------------------------------------------------------------------------------------

cdef bint _replicas_bound = False
cdef object _judged, _writes_nothing_sql, _read_only_default, _Deny, _READ_ONLY, _PRIMARY
cdef dict _verdicts
cdef Py_ssize_t _KEPT_AS_TEXT  # a text up to this long is its own key in replicas._verdicts (and is judged)


cdef int _bind_replicas() except -1:
    """proxy.replicas' names, bound apart (it imports the parser and the config: never at another module's load)."""
    global _replicas_bound, _judged, _writes_nothing_sql, _read_only_default, _verdicts, _KEPT_AS_TEXT
    global _Deny, _READ_ONLY, _PRIMARY
    from proxy import replicas
    _Deny, _READ_ONLY, _PRIMARY = replicas.Deny, replicas.READ_ONLY, replicas._PRIMARY
    _judged, _writes_nothing_sql = replicas._judged, replicas.writes_nothing_sql
    _read_only_default, _verdicts = replicas._READ_ONLY_SQL, replicas._verdicts
    _KEPT_AS_TEXT = min(replicas._MAX_KEPT, replicas.MAX_JUDGED)
    _replicas_bound = True
    return 0


cdef inline Py_ssize_t _u32(const unsigned char *p):
    return (<Py_ssize_t>p[0] << 24) | (<Py_ssize_t>p[1] << 16) | (<Py_ssize_t>p[2] << 8) | <Py_ssize_t>p[3]


cdef inline str _cstr(const unsigned char *p, Py_ssize_t start, Py_ssize_t end):
    """replicas._cstring(body, at)[0] for the body p[..end) and at = start: "" when no NUL follows."""
    cdef const unsigned char *nul = <const unsigned char *>memchr(p + start, 0, <size_t>(end - start))
    if nul == NULL:
        return ""
    return PyUnicode_DecodeUTF8(<const char *>p + start, nul - (p + start), "replace")


cdef object _judge(object sql, object judge, int mode):
    """A text's verdict: `judge(sql)` (mode 2), else read_only_sql (0) or writes_nothing_sql (1) as
    replicas._judged gives it, a verdict it kept for the text read here without a call."""
    if mode == 2:
        return judge(sql)
    if type(sql) is str and len(<str>sql) <= _KEPT_AS_TEXT:
        known = _verdicts.get(("w", sql) if mode == 1 else sql)
        if known is not None:
            return known == "y"
    return _judged(sql, mode == 1)


cdef bytes _last_parsed = None  # the last Parse text judged read-only (or not) by read_only_sql, as its bytes
cdef object _last_parsed_ok = None  # (a verdict is a function of the text: the same bytes, the same verdict)


cdef object _judge_parsed(const unsigned char *p, Py_ssize_t at, Py_ssize_t end, object judge, int mode):
    """_judge of a Parse's text p[at..its NUL): read_only_sql's verdict on the same bytes as the last Parse's is
    that one's, without decoding, hashing or looking it up (an extended-protocol client parses the same text
    request after request); any other judge, a text with no NUL or a long one, as _judge."""
    global _last_parsed, _last_parsed_ok
    cdef const unsigned char *nul = <const unsigned char *>memchr(p + at, 0, <size_t>(end - at))
    cdef Py_ssize_t n
    n = -1 if nul == NULL else nul - (p + at)
    if mode != 0 or n < 0 or n > _KEPT_AS_TEXT:  # (a longer text is not held here)
        return _judge(_cstr(p, at, end), judge, mode)
    last = _last_parsed
    if last is not None and PyBytes_GET_SIZE(last) == n and memcmp(PyBytes_AS_STRING(last), p + at, <size_t>n) == 0:
        return _last_parsed_ok
    ok = _judge(PyUnicode_DecodeUTF8(<const char *>p + at, n, "replace"), judge, mode)
    _last_parsed = PyBytes_FromStringAndSize(<const char *>p + at, n)
    _last_parsed_ok = ok
    return ok


cpdef void _forget_verdicts():
    """Drop the last-Parse memo (proxy.replicas.set_reached: what the judge counts changed)."""
    global _last_parsed, _last_parsed_ok
    _last_parsed = None
    _last_parsed_ok = None


cpdef object lone_query_text(bytes data):
    """proxy.replicas.lone_query_text: the frame checked and the text decoded in place."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n < 6 or p[0] != 0x51 or p[n - 1] != 0 or _u32(p + 1) != n - 1:
        return None
    try:
        sql = PyUnicode_DecodeUTF8(<const char *>p + 5, n - 6, NULL)
    except UnicodeDecodeError:
        return None  # (messages.query_text: InvalidText, a DecodeError)
    return None if "\x00" in sql else sql  # (an inner NUL: its text ends before the frame does, a DecodeError)


cpdef object read_only_request(data, statement, judge=None):
    """proxy.replicas.read_only_request: the messages walked in place (no body copied, a name or text decoded only
    where it is judged), a kept verdict read without a call into Python."""
    cdef bytes buf = data if type(data) is bytes else bytes(data)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), pos = 0, start, end, at, name_at = 0, name_n = -1
    cdef const unsigned char *nul
    cdef unsigned char t, last = 0
    cdef int mode
    cdef set parsed = None  # the statements parsed in `data` (each read-only: any other ends the walk) past the first,
    # whose name is p[name_at..+name_n) (name_n -1: none)
    if not _replicas_bound:
        _bind_replicas()
    if not judge or judge is _read_only_default:
        mode = 0
    elif judge is _writes_nothing_sql:
        mode = 1
    else:
        mode = 2
    if n > 6 and p[0] == 0x51 and _u32(p + 1) == n - 1 and p[n - 1] == 0:  # one Query: the usual case
        return _judge(PyUnicode_DecodeUTF8(<const char *>p + 5, n - 6, "replace"), judge, mode)
    while n - pos >= 5:
        t = p[pos]
        start = pos + 5
        pos = pos + 1 + _u32(p + pos + 1)
        if pos > n:
            return False
        last = t
        end = pos if pos > start else start  # (a length under 4: an empty body)
        if t == 0x51:  # Query
            if not _judge(_cstr(p, start, end), judge, mode):
                return False
        elif t == 0x50:  # Parse
            nul = <const unsigned char *>memchr(p + start, 0, <size_t>(end - start))
            at = end if nul == NULL else nul - p + 1
            if not _judge_parsed(p, at, end, judge, mode):
                return False
            if name_n < 0:  # (the usual batch parses one statement: its name kept as bytes, no set)
                name_at, name_n = start, (0 if nul == NULL else nul - (p + start))
            else:
                if parsed is None:
                    parsed = {PyUnicode_DecodeUTF8(<const char *>p + name_at, name_n, "replace")}
                parsed.add("" if nul == NULL else PyUnicode_DecodeUTF8(
                    <const char *>p + start, nul - (p + start), "replace"))
        elif t == 0x42:  # Bind
            nul = <const unsigned char *>memchr(p + start, 0, <size_t>(end - start))
            at = start if nul == NULL else nul - p + 1
            nul = <const unsigned char *>memchr(p + at, 0, <size_t>(end - at))
            if (name_n >= 0 and nul != NULL and nul - (p + at) == name_n
                    and memcmp(p + at, p + name_at, <size_t>name_n) == 0):
                continue  # (the same bytes as the name the batch parsed: read-only)
            name = _cstr(p, at, end)
            if name_n >= 0:
                if parsed is None:
                    parsed = {PyUnicode_DecodeUTF8(<const char *>p + name_at, name_n, "replace")}
                if name in parsed:
                    continue
            text = statement(name)
            if text is None or not _judge(text, judge, mode):
                return False
        elif t != 0x45 and t != 0x44 and t != 0x53 and t != 0x48 and t != 0x43:  # Execute, Describe, Sync, Flush, Close
            return False
    return pos == n and (last == 0x51 or last == 0x53 or last == 0x48)


cpdef object request_route(routing, data, decide, statement):
    """proxy.replicas.request_route: the lone Query's text, its cached decision and its Route (Routed.route's read-only
    case inline) in one call; any other request walked by read_only_request."""
    cdef bytes buf = data if type(data) is bytes else bytes(data)
    if not _replicas_bound:
        _bind_replicas()
    sql = lone_query_text(buf)
    read_only = None
    if sql is not None:
        cached = getattr(decide, "cached", None)
        decision = cached(sql) if cached is not None else None
        if decision is not None:
            routing.memo = (sql, decision, decide)
            read_only = type(decision) is not _Deny and _READ_ONLY in decision.effects
    if read_only is None:
        read_only = read_only_request(buf, statement)
    if not read_only:
        return _route_may_write(routing, buf, statement)
    routing.read_only = True  # (Routed.route(True))
    routing.wrote = False
    return routing._routes[1]


cpdef object resume(routing, data, decide, statement, request, ask_of):
    """proxy.replicas.resume: the bytes judged, their Route and the kept ask in one call."""
    cdef bytes buf = data if type(data) is bytes else bytes(data)
    routing.judged = PyBytes_GET_SIZE(buf)
    route = request_route(routing, buf, decide, statement)
    cdef tuple asked = routing.asked
    if asked is not None and asked[0] is route and asked[1] is request:
        return asked[2]
    ask = ask_of(request, route)
    routing.asked = (route, request, ask)
    return ask


def _route_may_write(routing, bytes data, statement):
    return routing.route(False, lambda: not read_only_request(data, statement, _writes_nothing_sql))


cpdef object kept(router, backend, route, now, replica):
    """proxy.replicas.kept: the route's checks and the replica set's cached fit read in one call."""
    cdef dict sets, fits, choices
    if not _replicas_bound:
        _bind_replicas()
    routing = route.routing
    kind = routing.route
    if kind == "primary" or (kind == "auto" and not route.read_only):
        return _PRIMARY if replica is None else None
    sets = router.sets
    s = sets.get(backend)
    if s is None:
        names = []
    else:
        fits = s._fit
        fit = fits.get(routing.max_replica_lag) if route.wrote_at is None else None
        if fit is not None and now <= fit[1]:
            names = fit[0]
        else:
            names = s.candidates(now, routing.max_replica_lag, route.wrote_at, routing.max_staleness)
    if replica is not None:
        if replica not in names:
            return None
        choices = router._choices
        choice = choices.get(replica)
        return choice if choice is not None else router._choice(replica)
    if names or (kind == "replica" and routing.replica_fallback == "refuse"):
        return None
    return _PRIMARY
