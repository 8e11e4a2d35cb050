# C types for cache.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython

from proxy.policy.shape cimport split

cdef class _Entry:
    cdef public object value
    cdef public long long seq

cdef class DecisionCache:
    cdef public Py_ssize_t maxsize
    cdef public unsigned long long hits, misses
    cdef long long _clock
    cdef dict _data, _shapes
    @cython.locals(key=tuple, skey=tuple, parts=tuple, entry=_Entry)
    cpdef cached(self, policy, str sql)
    cdef void _touch(self, dict data, tuple key, _Entry entry) except *
    cpdef decide_miss(self, policy, str sql, timings=*)
    cdef void _store(self, dict data, tuple key, object value) except *

cdef class Gate:
    cdef public DecisionCache cache
    cdef public object observe, owner, policy
    cdef public str tenant
    @cython.locals(policies=dict)
    cpdef current(self)
    cpdef decide_for(self, policy, str sql)
