# C types for actions.py when Cython compiles it (setup.py); the .py stays the source of truth.

cdef class Relay:
    cdef public list chunks

cdef class RelayToServer(Relay):
    pass

cdef class RelayToClient(Relay):
    pass
