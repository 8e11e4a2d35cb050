# C types for cache.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython

from proxy.policy.shape cimport split

cdef Py_ssize_t _LONG_TEXT, _ENTRY_OVERHEAD, _ENTRY_SHARE

cpdef text_key(str sql)
@cython.locals(size=Py_ssize_t)
cpdef Py_ssize_t entry_size(key, value) except -1
cdef bint _parse_error(decision)

cdef class _Entry:
    cdef public object value
    cdef public long long seq
    cdef public Py_ssize_t size

cdef class _Part:
    cdef public str tenant
    cdef public dict data, shapes
    cdef public Py_ssize_t entries, held

cdef class DecisionCache:
    cdef public Py_ssize_t maxsize, max_bytes, entries, held
    cdef public unsigned long long hits, misses
    cdef long long _clock
    cdef dict _parts
    @cython.locals(key=tuple, skey=tuple, parts=tuple, entry=_Entry, found=_Entry, part=_Part)
    cpdef cached(self, policy, str sql)
    cdef void _touch(self, dict data, tuple key, _Entry entry) except *
    cpdef decide_miss(self, policy, str sql, timings=*, limits=*)
    @cython.locals(part=_Part)
    cpdef void store(self, policy, str sql, decision) except *
    @cython.locals(part=_Part)
    cdef _Part _part(self, str tenant)
    @cython.locals(size=Py_ssize_t, old=_Entry)
    cdef void _store(self, _Part part, dict data, tuple key, text, value) except *
    cdef void _forget(self, _Part part, _Entry entry) except *
    @cython.locals(by_bytes=bint, victim=_Part, part=_Part, data=dict, shapes=dict)
    cdef void _evict(self, _Part storing) except *

cdef class Gate:
    cdef public DecisionCache cache
    cdef public object observe, policies, policy, limits, tenant
    cdef public double allowance, stamp
    cpdef current(self)
    cpdef decide_for(self, policy, str sql)

cdef class Pending:
    cdef public Gate gate
    cdef public object policy
    cdef public str sql
