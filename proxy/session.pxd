# C types for session.py when Cython compiles it (setup.py); the .py stays the source of truth.

import cython

from proxy.actions cimport RelayToClient, RelayToServer
from proxy.protocol.messages cimport bind_statement, query_message, query_text
from proxy.protocol.stream cimport MessageStream
from proxy.tracking cimport RequestTracker

cdef class ClientSession:
    cdef public object config, state, info, throttle, clock, channel_binding
    cdef public bint tls_available, is_admin, report_rewrites, _auth_pending, _challenged, backend_fatal
    cdef public object user_config, tenant, backend, backend_parameters, scram, process_id, secret_key
    cdef public bytes _startup_buf, _tx_status
    cdef public MessageStream _auth_stream, frontend, backend_stream
    cdef public object decide, _policy_token, _parse_memo, on_decision
    cdef public RequestTracker tracker
    cdef public dict _frontend_tracked, _denials
    cdef public Py_ssize_t _denial_bytes
    cdef public object _held
    cdef public object end_user, revoked
    cdef public object context, _contextual, _decided_in
    cdef public bint _tracking
    cdef public Py_ssize_t _binds, _done
    cpdef list client_data(self, data)
    cpdef list server_data(self, data)
    cpdef list _relay_from_client(self, data)
