# C types for stream.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython

cdef bint _COMPILED
cdef Py_ssize_t _COPY_RUN

cdef object _run(bytes buf, const char* p, Py_ssize_t start, Py_ssize_t end)

cdef class MessageStream:
    cdef bytes _role
    cdef list _table
    cdef object _intercept, _handlers
    cdef bytes _buf
    cdef list _parts
    cdef Py_ssize_t _parts_len, _want, _skip
    cdef public Py_ssize_t max_length
    cdef public bint limit_all

    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, run_start=Py_ssize_t, end=Py_ssize_t, length=Py_ssize_t,
                   t=cython.uchar, r=cython.uchar, buf=bytes, p="const char*", role=bytes, table=list, out=list,
                   max_length=Py_ssize_t, limit_all=bint)
    cpdef list feed(self, data)
