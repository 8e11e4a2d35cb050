# C types for messages.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython

cdef extern from *:
    """
    /* A Query message: 'Q', the length (int32, counting itself), the text, its terminating NUL. */
    static CYTHON_INLINE PyObject *pgtenant_query_message(PyObject *text) {
        Py_ssize_t n = PyBytes_GET_SIZE(text);
        if (n > 0x7fffffff - 5) { PyErr_SetString(PyExc_OverflowError, "query text too long"); return NULL; }
        PyObject *out = PyBytes_FromStringAndSize(NULL, n + 6);
        if (out == NULL) return NULL;
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
        unsigned long len = (unsigned long)(n + 5);
        p[0] = 'Q'; p[1] = (len >> 24) & 0xff; p[2] = (len >> 16) & 0xff; p[3] = (len >> 8) & 0xff; p[4] = len & 0xff;
        memcpy(p + 5, PyBytes_AS_STRING(text), (size_t)n);
        p[n + 5] = 0;
        return out;
    }
    """
    bytes c_query_message "pgtenant_query_message"(bytes text)

@cython.locals(n=Py_ssize_t)
cpdef str query_text(bytes body)
cpdef bytes query_message(str sql)
@cython.locals(n=Py_ssize_t, end=Py_ssize_t, stmt_end=Py_ssize_t)
cpdef str bind_statement(bytes body)
