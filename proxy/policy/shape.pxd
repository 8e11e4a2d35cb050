# C types for shape.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython
from cpython.object cimport PyObject_GenericSetAttr

cdef extern from *:
    """
    /* object.__new__(t) for a class with __slots__ and no __init__ work: its tp_alloc, as object_new calls it */
    static CYTHON_INLINE PyObject *pgtenant_new_object(PyObject *t) { return ((PyTypeObject *)t)->tp_alloc((PyTypeObject *)t, 0); }
    """
    object new_object "pgtenant_new_object"(object t)


cdef bint _word_or_dot(int c)

cdef Py_ssize_t _MAX_LITERALS, _SCRATCH_SIZE
cdef bytearray _scratch

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, k=Py_ssize_t, prev=cython.int, c=cython.int,
               literals=list, raw=bytes, key=bytearray, p="const char*", q="char*")
cpdef split_scan(str sql)
cpdef split(str sql)
cpdef new_rewrite(str sql, tuple rules, frozenset effects, tuple changes)
