# C types for shape.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython


cdef bint _word_or_dot(int c)

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, last=Py_ssize_t, prev=cython.int, c=cython.int,
               gaps=list, literals=list, raw=bytes, p="const char*")
cpdef split_scan(str sql)
