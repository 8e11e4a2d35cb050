# C types for cache.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython

cdef class DecisionCache:
    cdef public Py_ssize_t maxsize
    cdef public unsigned long long hits, misses
    cdef dict _data, _shapes
    @cython.locals(data=dict, shapes=dict, key=tuple, skey=tuple, parts=tuple)
    cpdef cached(self, policy, str sql)
    cpdef decide_miss(self, policy, str sql, timings=*)
    cdef void _store(self, dict data, tuple key, object value) except *

cdef class Gate:
    cdef public DecisionCache cache
    cdef public object observe, owner, policy
    cdef public str tenant
