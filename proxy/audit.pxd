# C types for audit.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython

from proxy.tracking cimport Request

cpdef tuple decision_fields(decision)

cdef class AuditLog:
    cdef public bint redact, _owned, _flush_scheduled
    cdef public object _lock, _out
    cdef public long long _second
    cdef public str _head
    @cython.locals(extra=list)
    cpdef void request(self, str prefix, end_user, Request req) except *
    @cython.locals(micros="long long")
    cpdef void statement(self, str prefix, end_user, str kind, str decision, rule, str outcome, sqlstate,
                         double seconds, rows, str sql, rewritten, Py_ssize_t statements, more) except *
    @cython.locals(now=double)
    cdef str _head_now(self)
    cdef void _write(self, str line) except *
