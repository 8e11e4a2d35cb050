# C types for relay.py when Cython compiles it (setup.py); the .py stays the source of truth.

import cython

cdef unsigned long long _BYTES_FLUSH

from proxy.actions cimport Relay
from proxy.audit cimport AuditLog
from proxy.metrics cimport QueryRecorder, TenantStats
from proxy.session cimport ClientSession
from proxy.tracking cimport Request

@cython.locals(n=Py_ssize_t)
cpdef Py_ssize_t write_chunks(transport, list chunks) except -1

cdef class _SocketEvents:
    cdef public object owner

cdef class ClientRelay(_SocketEvents):
    cdef public unsigned long long bytes_in, bytes_out, bytes_flushed
    cdef public object client, server
    cdef public TenantStats stats
    cdef public ClientSession session
    cdef public QueryRecorder recorder
    cdef public bint metrics_enabled
    cdef public AuditLog audit  # None when the audit log is off
    cdef public str audit_prefix
    cdef public object end_user
    cpdef data_received(self, data)
    cpdef from_server(self, bytes data)
    @cython.locals(relay=Relay)
    cdef Py_ssize_t _forward(self, list actions, type kind, transport) except -1
    @cython.locals(duration=double, total="unsigned long long", audit=AuditLog)
    cpdef request_done(self, Request req)

cdef class ServerRelay(_SocketEvents):
    cdef public ClientRelay relay
