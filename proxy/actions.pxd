# C types for actions.py when Cython compiles it (setup.py); the .py stays the source of truth.

cdef class RelayToServer:
    cdef public list chunks

cdef class RelayToClient:
    cdef public list chunks
