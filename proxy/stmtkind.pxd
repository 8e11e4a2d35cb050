# C types for stmtkind.py when Cython compiles it (setup.py); the .py stays the source of truth.
import cython

@cython.locals(n=Py_ssize_t, j=Py_ssize_t, c=cython.Py_UCS4, table=dict, word=str)
cpdef str statement_kind(str sql)
