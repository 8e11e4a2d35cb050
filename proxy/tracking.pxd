# C types for tracking.py when Cython compiles it (setup.py); the .py stays the source of truth.

import cython

from proxy.stmtkind cimport statement_kind

cdef Py_ssize_t _MAX_STATEMENTS, _MAX_PENDING, _MAX_EXTRA

cdef class Request:
    cdef public double start, end
    cdef public str kind, sql, outcome
    cdef public object decision, sqlstate, extra
    cdef public object rows  # a Python int: PostgreSQL counts rows in 64 bits, unsigned
    cdef public bint closed_by_sync
    cdef public Py_ssize_t extra_dropped, held

@cython.locals(req=Request)
cpdef Request new_request(double start, str kind=*, str sql=*, decision=*)

cpdef str clip(str text, Py_ssize_t limit)

@cython.locals(end=Py_ssize_t, start=Py_ssize_t, i=Py_ssize_t, n="long long")
cpdef object tag_rows(bytes tag)

cdef class RequestTracker:
    cdef public object clock, on_done, pending
    cdef public Py_ssize_t dropped, held
    cdef object _batch
    cdef dict _statements
    cdef public bint copy_in
    cdef Py_ssize_t _swallowed_syncs
    cdef void _push(self, Request req)
    cdef Request _batch_request(self)
    @cython.locals(limit=Py_ssize_t, size=Py_ssize_t, rewritten=str)
    cdef tuple _keep(self, Request req, str sql, decision)
    @cython.locals(old=tuple, statements=dict)
    cdef void _name(self, str name, str kind, str sql) except *
    cdef void _more(self, Request req, str sql, decision) except *
    cpdef void on_query(self, str sql, decision)
    cpdef void on_function_call(self, decision)
    cpdef void on_parse(self, str name, str sql, decision, kind=*)
    cpdef void on_bind(self, str statement)
    cpdef void on_close_statement(self, str name)
    cpdef void on_sync(self)
    cpdef void on_copy_in(self)
    cpdef void on_copy_end(self)
    @cython.locals(head=Request)
    cpdef void on_error(self, sqlstate, bint denied=*)
    @cython.locals(head=Request, rows=object)
    cpdef void on_command_complete(self, bytes tag)
    @cython.locals(req=Request)
    cpdef on_ready(self)
