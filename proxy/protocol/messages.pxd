# C types for messages.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython

@cython.locals(n=Py_ssize_t)
cpdef str query_text(bytes body)
cpdef bytes query_message(str sql)
