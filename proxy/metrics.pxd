# C types for metrics.py when Cython compiles it (setup.py); the .py stays the source of truth.

import cython

cdef Py_ssize_t _WINDOW

cdef class LatencySeries:
    cdef unsigned long long[:] counts
    cdef public double total

cdef class QueryRecorder:
    cdef tuple _bounds
    cdef LatencySeries _last
    cdef str _last_kind, _last_outcome
    cdef public dict series
    cdef public object rows
    @cython.locals(series=LatencySeries, bounds=tuple, i=Py_ssize_t, n=Py_ssize_t)
    cpdef void record(self, str kind, str outcome, double seconds, rows)

cdef class TenantStats:
    cdef public unsigned long long queries, errors, denied
    cdef public object rows  # a Python int (64-bit unsigned row counts add up past 2^64)
    cdef double[:] _ring
    cdef Py_ssize_t _next, _count
    cpdef void add_latency(self, double seconds)
