# C types for metrics.py when Cython compiles it (setup.py); the .py stays the source of truth.

cdef class QueryRecorder:
    cdef tuple _bounds
    cdef Py_ssize_t _width
    cdef public dict series
    cdef public object rows
    cpdef void record(self, str kind, str outcome, double seconds, rows)

cdef class TenantStats:
    cdef public unsigned long long queries, errors, denied
    cdef public object rows  # a Python int (64-bit unsigned row counts add up past 2^64)
    cdef public object latencies
