"""Every client-visible error and notice in one registry: SQLSTATE, severity, message template and hint."""

from __future__ import annotations

from dataclasses import dataclass, field
from string import Formatter
from typing import TYPE_CHECKING

from proxy.protocol.messages import encode_error_fields

if TYPE_CHECKING:
    from proxy.policy.model import Deny

# SQLSTATEs, with PostgreSQL's names (errcodes.txt). The only place in proxy/ a SQLSTATE is written: a test
# (tests/unit/test_errors.py) scans the tree for SQLSTATE literals elsewhere.
SUCCESSFUL_COMPLETION = "00000"
WARNING = "01000"
SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION = "08001"
CONNECTION_FAILURE = "08006"
PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"
INVALID_SQL_STATEMENT_NAME = "26000"
CHARACTER_NOT_IN_REPERTOIRE = "22021"
INVALID_PARAMETER_VALUE = "22023"
READ_ONLY_SQL_TRANSACTION = "25006"
INVALID_AUTHORIZATION_SPECIFICATION = "28000"
INVALID_SCHEMA_NAME = "3F000"
INVALID_PASSWORD = "28P01"
INVALID_CATALOG_NAME = "3D000"
UNDEFINED_TABLE = "42P01"
INSUFFICIENT_PRIVILEGE = "42501"
SYNTAX_ERROR = "42601"
DUPLICATE_PSTATEMENT = "42P05"
DUPLICATE_CURSOR = "42P03"
INVALID_CURSOR_NAME = "34000"
UNDEFINED_OBJECT = "42704"
OUT_OF_MEMORY = "53200"
TOO_MANY_CONNECTIONS = "53300"
CONFIGURATION_LIMIT_EXCEEDED = "53400"
PROGRAM_LIMIT_EXCEEDED = "54000"
STATEMENT_TOO_COMPLEX = "54001"
QUERY_CANCELED = "57014"
IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "25P03"
ADMIN_SHUTDOWN = "57P01"
CANNOT_CONNECT_NOW = "57P03"
INTERNAL_ERROR = "XX000"

# a hidden schema read as a missing one: 3F000, 42P01, and 42704 for a TABLESAMPLE method (policy/schema.py)
_AS_POSTGRESQL = frozenset({CHARACTER_NOT_IN_REPERTOIRE, INVALID_SCHEMA_NAME, UNDEFINED_OBJECT, UNDEFINED_TABLE})
# and, of the rule answering a hidden schema as a missing one only, 22023 for a named setting's value in one
# (`invalid value for parameter …`, policy/settings.py value_as_missing)
_AS_POSTGRESQL_MISSING = ("foreign_schema", frozenset({INVALID_PARAMETER_VALUE}))
_NOTICE_SEVERITIES = frozenset({"NOTICE", "WARNING", "INFO", "LOG", "DEBUG"})


@dataclass(frozen=True, slots=True)
class PgError(Exception):
    """An error the proxy reports to a client as an ErrorResponse (a notice as a NoticeResponse)."""

    sqlstate: str
    message: str
    severity: str = "ERROR"
    detail: str | None = None
    hint: str | None = None
    position: int = 0  # 1-based character position in the client's query text (0: none)

    def __str__(self) -> str:
        return f"{self.severity} {self.sqlstate}: {self.message}"

    def fields(self) -> dict[str, str]:
        out = {"S": self.severity, "V": self.severity, "C": self.sqlstate, "M": self.message}
        if self.detail:
            out["D"] = self.detail
        if self.hint:
            out["H"] = self.hint
        if self.position:
            out["P"] = str(self.position)
        return out

    def encode(self) -> bytes:
        """The full ErrorResponse message ('E'), or NoticeResponse ('N') for a notice's severity."""
        return encode_error_fields(b"N" if self.severity in _NOTICE_SEVERITIES else b"E", self.fields())


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One registered error. Calling it fills the `{field}`s of its message (and detail, hint) from its arguments,
    positional ones in the order the fields first appear: `auth_failed("bob")`."""

    name: str
    sqlstate: str
    severity: str
    message: str
    hint: str | None = None
    detail: str | None = None
    fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names: list[str] = []
        for text in (self.message, self.detail, self.hint):
            for _, name, _, _ in Formatter().parse(text or ""):
                if name and name not in names:
                    names.append(name)
        object.__setattr__(self, "fields", tuple(names))

    def __call__(self, *args: object, **values: object) -> PgError:
        if len(args) > len(self.fields):
            raise TypeError(f"{self.name}() takes {len(self.fields)} arguments")
        values.update(zip(self.fields, args, strict=False))
        return PgError(
            self.sqlstate,
            self.message.format(**values),
            self.severity,
            detail=self.detail.format(**values) if self.detail else None,
            hint=self.hint.format(**values) if self.hint else None,
        )


# name -> spec: every error pgtenant itself reports to a client (the policy's rule ids and their SQLSTATEs and
# hints are in proxy/policy/rules.py, rendered by `policy_denied` below).
REGISTRY: dict[str, ErrorSpec] = {}


def _register(name: str, sqlstate: str, severity: str, message: str, hint: str | None = None,
              detail: str | None = None) -> ErrorSpec:
    spec = REGISTRY[name] = ErrorSpec(name, sqlstate, severity, message, hint, detail)
    return spec


# --- the connection and its messages -----------------------------------------------------

protocol_violation = _register("protocol_violation", PROTOCOL_VIOLATION, "FATAL", "{message}")
# A message PostgreSQL cannot read either (its pq_getmsg* errors): ERROR, the session goes on.
malformed_message = _register("malformed_message", PROTOCOL_VIOLATION, "ERROR", "{message}")
# Bytes pipelined after an SSLRequest/GSSENCRequest (CVE-2021-23222): PostgreSQL's words.
unencrypted_data_after = _register(
    "unencrypted_data_after", PROTOCOL_VIOLATION, "FATAL", "received unencrypted data after {request}",
    detail="This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.",
)
message_too_large = _register(
    "message_too_large", PROGRAM_LIMIT_EXCEEDED, "FATAL",
    "message of {length} bytes exceeds pgtenant's limit of {limit} bytes",
    hint="Raise limits.max_message_length in the pgtenant configuration if this is legitimate.",
)
unsupported_protocol = _register(
    "unsupported_protocol", FEATURE_NOT_SUPPORTED, "FATAL",
    "unsupported frontend protocol {major}.{minor}: server supports 3.0",
)
bad_startup_options = _register("bad_startup_options", PROTOCOL_VIOLATION, "FATAL", "invalid startup options: {reason}")
startup_timeout = _register("startup_timeout", CONNECTION_FAILURE, "FATAL", "canceling authentication due to timeout")
internal_error = _register(
    "internal_error", INTERNAL_ERROR, "FATAL", "internal error in pgtenant; the connection is closed"
)
admin_shutdown = _register(
    "admin_shutdown", ADMIN_SHUTDOWN, "FATAL", "terminating connection due to administrator command"
)

# --- login ------------------------------------------------------------------------------

no_user = _register("no_user", INVALID_AUTHORIZATION_SPECIFICATION, "FATAL",
                    "no PostgreSQL user name specified in startup packet")
# The same text for unknown users and wrong passwords, as PostgreSQL does.
auth_failed = _register("auth_failed", INVALID_PASSWORD, "FATAL", 'password authentication failed for user "{user}"')
_auth_throttled = _register(
    "auth_throttled", INVALID_PASSWORD, "FATAL",
    'too many failed authentication attempts for user "{user}"; login refused, try again in {seconds} seconds',
    hint="Failed logins are limited per user and client address (pgtenant limits.max_auth_failures).",
)
_prelogin_cap = _register(
    "prelogin_cap", TOO_MANY_CONNECTIONS, "FATAL", "too many connections {what} {where}; {then}",
    hint="pgtenant limits connections that have not logged in yet (limits.max_prelogin_connections*).",
)
tls_required = _register(
    "tls_required", INVALID_AUTHORIZATION_SPECIFICATION, "FATAL", "pgtenant accepts only TLS connections",
    hint="Connect with sslmode=require (or verify-full).",
)
# Never say whether the database exists elsewhere.
database_not_allowed = _register("database_not_allowed", INVALID_CATALOG_NAME, "FATAL",
                                 'database "{name}" does not exist')
_startup_parameter_not_allowed = _register(
    "startup_parameter_not_allowed", INSUFFICIENT_PRIVILEGE, "FATAL", '{where} "{name}" is not allowed by pgtenant',
    hint="Remove it from the connection settings, or add it to "
    "startup.allowed_parameters in the pgtenant configuration if it is safe.",
)
_agent_startup_setting = _register(
    "agent_startup_setting", INSUFFICIENT_PRIVILEGE, "FATAL",
    'pgtenant: startup parameter "{name}" is pinned by the agent profile (rule agent_setting)',
    hint="Agent users' connections are read-only with the agent's statement_timeout; remove it from the "
    "connection settings.",
)
# `pgtenant mcp` (its application_name) with a login of the default profile: refused after authentication.
mcp_door_not_agent = _register(
    "mcp_door_not_agent", INSUFFICIENT_PRIVILEGE, "FATAL",
    'pgtenant: the MCP door (application_name "{application}") logs in only as a user with profile = "agent"; '
    'user "{user}" has the default profile',
    hint='Give `pgtenant mcp` a login of its own with profile = "agent" ([users.<name>] in the pgtenant '
    "configuration): its queries are then read-only at both ends, capped at agent.max_rows, admitted by the "
    "planner's estimate and timed by agent.statement_timeout.",
)
replication_not_allowed = _register(
    "replication_not_allowed", INSUFFICIENT_PRIVILEGE, "FATAL",
    "replication connections are not allowed through pgtenant",
)
# pgtenant's own connection limit (PostgreSQL's SQLSTATE and words, and whose limit it is).
too_many_clients = _register(
    "too_many_clients", TOO_MANY_CONNECTIONS, "FATAL",
    "sorry, too many clients already: pgtenant accepts at most {limit} client connections",
    hint="The limit is limits.max_client_connections in the pgtenant configuration; try again later.",
)
user_removed = _register("user_removed", INVALID_AUTHORIZATION_SPECIFICATION, "FATAL",
                         'role "{user}" is no longer allowed to connect')
client_encoding_not_utf8 = _register(
    "client_encoding_not_utf8", FEATURE_NOT_SUPPORTED, "FATAL",
    'client_encoding "{value}" is not supported by pgtenant; only UTF8 is',
    hint="Connect with client_encoding=UTF8 (the default of most drivers).",
)

# --- the backend ------------------------------------------------------------------------

backend_unreachable = _register(
    "backend_unreachable", SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION, "FATAL",
    'pgtenant could not connect to backend "{target}": {reason}',
    hint="The database behind pgtenant is unavailable; try again later or contact the operator.",
)
# The backend's own SQLSTATE, detail and hint (`backend_refused`); this one when it sent no SQLSTATE.
_backend_refused = _register(
    "backend_refused", SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION, "FATAL",
    'pgtenant could not connect to backend "{target}": {message}',
)
# No server for a client within query_wait_timeout: 53300 (class 53, insufficient resources), as PostgreSQL answers
# when it is out of connection slots; nothing ran, so a retry is safe (57014 would read as a canceled statement).
# Transaction pooling: a client began a message while its session held a server and did not complete it in time
# (red team 9s F2: the server was held from the pool meanwhile).
client_message_timeout = _register(
    "client_message_timeout", PROTOCOL_VIOLATION, "FATAL",
    "terminating connection: a message begun was not completed within client_message_timeout ({seconds} s)",
    hint="pgtenant lends a server connection to a client for each request; a client that stops in the middle of a "
    "message holds it from every other client. Raise pool.client_message_timeout if large messages arrive slowly.",
)
# Either pool mode: the client read nothing of the results pending for it for client_write_timeout while its session
# held a server (red team 9s6: the server, blocked writing, kept its snapshot, its slot, a replica's replay, and a
# LISTEN session PostgreSQL's NOTIFY queue). The client is not reading: it will most likely never see this.
client_write_timeout = _register(
    "client_write_timeout", CONNECTION_FAILURE, "FATAL",
    "terminating connection: the client read nothing of its pending results for {seconds} s (pgtenant "
    "client_write_timeout)",
    hint="Read results and notifications as they arrive; a slow reader is never cut, one that stops reading is.",
)
pool_wait_timeout = _register(
    "pool_wait_timeout", TOO_MANY_CONNECTIONS, "ERROR",
    'pgtenant: no server connection for tenant "{tenant}" within query_wait_timeout ({seconds} s); '
    "its pool_size is {pool_size}",
    hint="Every server of the tenant's pool (or of its database's max_db_connections) was busy; retry later, or "
    "raise pool_size (pool.pool_size or tenants.{tenant}.pool_size), reserve_pool, max_db_connections or "
    "pool.query_wait_timeout in the pgtenant configuration.",
)
# route = "replica" with replica_fallback = "refuse" and no replica fit to serve: nothing ran, a retry is safe; 57P03
# (cannot connect now) as PostgreSQL answers while a server is not ready for connections.
no_healthy_replica = _register(
    "no_healthy_replica", CANNOT_CONNECT_NOW, "ERROR",
    'pgtenant: no healthy replica for tenant "{tenant}" (route = "replica", replica_fallback = "refuse")',
    hint="Every replica of its backend is down or lags more than max_replica_lag ({seconds} s); retry later, or "
    "set replica_fallback = \"primary\" in the pgtenant configuration.",
)
# A CancelRequest for a session whose requests wait for a server: they never ran, and are answered as PostgreSQL
# answers a cancelled statement.
query_canceled = _register("query_canceled", QUERY_CANCELED, "ERROR", "canceling statement due to user request")
tenant_reconfigured = _register(
    "tenant_reconfigured", ADMIN_SHUTDOWN, "FATAL",
    'terminating connection: the configuration of tenant "{tenant}" changed while it waited for a server',
    hint="Reconnect.",
)
server_closed = _register("server_closed", CONNECTION_FAILURE, "FATAL", "the backend connection closed unexpectedly")
# The poller found a replica down (its probes failed or timed out: hung, partitioned) while a session's request ran
# on one of its servers: the server is closed and the session ends as for a lost server (08006; its request's answer
# cannot be made up in order). Nothing it ran there wrote (a replica is read-only): a retry is safe and goes elsewhere.
replica_down = _register(
    "replica_down", CONNECTION_FAILURE, "FATAL",
    'pgtenant: replica "{replica}" of backend "{backend}" stopped answering; the request running there was ended',
    hint="Nothing it ran there wrote (a replica is read-only): reconnect and retry; reads go to a healthy server.",
)
settings_not_restored = _register(
    "settings_not_restored", CONNECTION_FAILURE, "FATAL",
    "pgtenant closed the session: the server connection it got refused the session's settings ({message})",
    hint="A setting the session made earlier is not accepted any more; reconnect.",
)
# Stateless replicas: another instance took this one's slot while its registry connection was down (red team 9b N3).
instance_slot_lost = _register(
    "instance_slot_lost", CANNOT_CONNECT_NOW, "FATAL",
    "this pgtenant instance cannot accept logins now: another instance holds its instance slot",
    hint="Connect again: the load balancer sends new connections to a ready instance.",
)
tenant_unavailable = _register(
    "tenant_unavailable", CANNOT_CONNECT_NOW, "FATAL",
    'tenant "{tenant}" is not available: its database does not enforce the tenant boundary',
    hint="The operator must fix the database (see the pgtenant log, `pgtenant provision`).",
)
backend_settings_unsafe = _register(
    "backend_settings_unsafe", CONNECTION_FAILURE, "FATAL",
    "pgtenant closed the session: {problem}, so SQL would not be read the way pgtenant checks it",
    hint="The operator must not override standard_conforming_strings or client_encoding for pgtenant's roles.",
)

# --- statements -------------------------------------------------------------------------

# A denial whose wording a pipelined burst of denials evicted (session.py): still ours, never the backend's.
denial_evicted = _register("denial_evicted", INSUFFICIENT_PRIVILEGE, "ERROR",
                           "pgtenant: statement denied by the tenant policy")
# A server notice still naming a hidden schema's reserved name (proxy/hiddennames.py's last-line check; an error is
# the rule answer_withheld of proxy/policy/rules.py): withheld, never relayed.
notice_withheld = _register("notice_withheld", WARNING, "WARNING",
                            "pgtenant: a server notice was withheld (rule answer_withheld)")
# A statement refused by the tenant policy (a Deny) reads so, with its rule's SQLSTATE and hint (the rule ids are
# in proxy/policy/rules.py); `statement` names the statement of a string of several.
POLICY_DENIED = "pgtenant: {statement}{detail} (rule {rule})"
POLICY_DENIED_STATEMENT = "statement {index} of {count}: "
# A Parse of several statements, one naming a hidden schema: PostgreSQL refuses several statements before it looks a
# name up, so it is its answer for a missing schema there (session.py).
multiple_commands = _register("multiple_commands", SYNTAX_ERROR, "ERROR",
                              "cannot insert multiple commands into a prepared statement")
# Protocol-level prepared statements are kept by pgtenant (proxy/statements.py): PostgreSQL's own answers.
prepared_statement_exists = _register("prepared_statement_exists", DUPLICATE_PSTATEMENT, "ERROR",
                                      'prepared statement "{name}" already exists')
prepared_statement_missing = _register("prepared_statement_missing", INVALID_SQL_STATEMENT_NAME, "ERROR",
                                       'prepared statement "{name}" does not exist')
# A named statement past what the proxy keeps for one session (PostgreSQL would run out of memory): the Parse fails,
# the session goes on.
session_statements_limit = _register(
    "session_statements_limit", OUT_OF_MEMORY, "ERROR",
    'out of memory: prepared statement "{name}" would take this session past [pool] {key} = {limit}',
    hint="Close (or DEALLOCATE) prepared statements the session no longer uses.")
# A named statement past what the proxy keeps for all the sessions of one tenant together (proxy/limits.py).
tenant_statements_limit = _register(
    "tenant_statements_limit", OUT_OF_MEMORY, "ERROR",
    'out of memory: prepared statement "{name}" would take tenant "{tenant}" past [pool] max_tenant_statement_bytes'
    ' = {limit} (the statement text pgtenant keeps for all its sessions)',
    hint="Close (or DEALLOCATE) prepared statements the tenant's sessions no longer use, or close idle sessions.")
unnamed_statement_missing = _register("unnamed_statement_missing", INVALID_SQL_STATEMENT_NAME, "ERROR",
                                      "unnamed prepared statement does not exist")

# --- per-tenant limits (proxy/limits.py) ---------------------------------------------------

# Over a tenant's or user's max_client_connections: PostgreSQL's words for a role's connection limit, and whose.
limit_connections = _register(
    "limit_connections", TOO_MANY_CONNECTIONS, "FATAL",
    'too many connections for {whose} "{name}": pgtenant max_client_connections is {limit}',
    hint="Close idle connections of this {whose}, or raise {key}.max_client_connections in the pgtenant "
    "configuration.",
)
# No turn within query_wait_timeout under max_concurrent_queries: nothing ran, a retry is safe.
limit_concurrency = _register(
    "limit_concurrency", TOO_MANY_CONNECTIONS, "ERROR",
    'pgtenant: tenant "{tenant}" already runs max_concurrent_queries = {limit} queries; this one waited '
    "query_wait_timeout ({seconds} s) for its turn",
    hint="Retry later, or raise tenants.{tenant}.max_concurrent_queries or query_wait_timeout.",
)
# The proxy's watchdog canceled a statement past the limit (PostgreSQL's own words, and whose limit it is).
limit_statement_timeout = _register(
    "limit_statement_timeout", QUERY_CANCELED, "ERROR",
    "canceling statement due to statement timeout (pgtenant statement_timeout is {seconds} s)",
    hint="Narrow the query, or ask the operator to raise statement_timeout for this tenant or user.",
)
# ... the agent profile's own statement_timeout (agent.statement_timeout, lower than any tenant/user limit).
limit_agent_statement_timeout = _register(
    "limit_agent_statement_timeout", QUERY_CANCELED, "ERROR",
    "canceling statement due to statement timeout (pgtenant agent statement_timeout is {seconds} s)",
    hint="Narrow the query (a WHERE on an indexed column, aggregate first, fewer joins), or ask the operator to "
    "raise agent.statement_timeout for this login.",
)
# A Bind whose statement changes the session (a SET, a temporary relation, a savepoint) the session could not note
# for its portal's Execute (review 17 F1): refused rather than run unrecorded.
too_many_noted_portals = _register(
    "too_many_noted_portals", PROGRAM_LIMIT_EXCEEDED, "ERROR",
    "pgtenant: more than {limit} portals of statements that change the session are bound and not yet run",
    hint="Execute or close the portals bound earlier (or end the transaction) before binding more.",
)
# A prepared statement decided in another session context than its Bind's, whose text is decided otherwise now
# (red team 9a9 R1: PostgreSQL re-analyses it at the Bind, with names that may resolve elsewhere).
prepared_in_other_context = _register(
    "prepared_in_other_context", FEATURE_NOT_SUPPORTED, "ERROR",
    "pgtenant: {statement} was prepared before {change}, and is not run in the session's context now",
    hint="Prepare the statement again (Parse it again), then bind it.",
)
portal_noted = _register(
    "portal_noted", DUPLICATE_CURSOR, "ERROR",
    'portal "{name}" already exists',
    hint="Close the portal before binding it again.",
)
# An Execute of a portal whose name a SQL DECLARE sent in its transaction may have taken (red team 20a F2): the
# proxy does not know whether PostgreSQL runs the protocol portal (and its change) or a SQL cursor; refused until the
# name is bound again or the transaction ends.
portal_not_known = _register(
    "portal_not_known", INVALID_CURSOR_NAME, "ERROR",
    'portal "{name}" is not known to be the one PostgreSQL has after a SQL DECLARE of its name; bind it again',
    hint="Bind the portal again (or run the cursor by SQL FETCH), or end the transaction.",
)
# A Bind of a prepared statement whose latest Parse or Close PostgreSQL skipped (an error earlier in its batch, review
# 19a F1): PostgreSQL may still have an older statement of that name than the one the proxy decided; refused until a
# Parse of the name is confirmed.
statement_not_known = _register(
    "statement_not_known", INVALID_SQL_STATEMENT_NAME, "ERROR",
    'prepared statement "{name}" is not known to be the one PostgreSQL has after an error earlier in its batch; '
    "Parse it again",
    hint="Parse the statement again (the Parse sent after the error was skipped), then bind it.",
)
# A Bind of a prepared SAVEPOINT / RELEASE / ROLLBACK TO statement the session forgot (past the open ones it
# remembers, issue 18): run, it would not be followed ([pool] max_session_savepoints); refused until Parsed again.
savepoint_statement_forgotten = _register(
    "savepoint_statement_forgotten", INVALID_SQL_STATEMENT_NAME, "ERROR",
    'prepared statement "{name}" sets, releases or rolls back to a savepoint and was forgotten (the session '
    "remembers {limit} such statements not closed); Parse it again",
    hint="Close the prepared savepoint statements no longer used; Parse this one again, then bind it.",
)
# A Bind of a prepared statement whose changes to the session the proxy does not remember (a Parse past the records'
# bound, [pool] max_session_statements + the unnamed one): refused, never run unfollowed (red team 21p F3).
statement_not_followed = _register(
    "statement_not_followed", PROGRAM_LIMIT_EXCEEDED, "ERROR",
    'pgtenant: prepared statement "{name}" changes the session and was parsed past the {limit} statements whose '
    "changes this session keeps; it cannot be run",
    hint="Close prepared statements the session no longer uses, then Parse this one again.",
)
# More requests (Queries, batches to their Sync) sent and not yet answered than the session follows (the request
# tracker's bound): the connection ends before an answer is matched against the wrong request (red team 21p F1).
too_many_in_flight = _register(
    "too_many_in_flight", PROGRAM_LIMIT_EXCEEDED, "FATAL",
    "pgtenant: more than {limit} requests in flight: read answers before sending more",
    hint="Read the server's answers as you send (a pipeline or batch needs no more than a few thousand unanswered "
         "requests).",
)
# An agent's statement whose admission EXPLAIN answered a plan or error past admission.MAX_ANSWER (red team 9a8 N0):
# not admitted, and that answer was never held.
admission_too_large = _register(
    "admission_too_large", PROGRAM_LIMIT_EXCEEDED, "ERROR",
    "pgtenant: the agent's statement is too large to admit: its plan (or error) exceeds {limit} bytes",
    hint="Send a shorter statement: a long literal is quoted whole in its plan.",
)
# ... a tenant's or user's replica_statement_timeout, for a request running on a replica (the watchdog's only).
limit_replica_statement_timeout = _register(
    "limit_replica_statement_timeout", QUERY_CANCELED, "ERROR",
    "canceling statement due to statement timeout (pgtenant replica_statement_timeout is {seconds} s)",
    hint="Narrow the query, or ask the operator to raise replica_statement_timeout for this tenant or user (on a "
    "replica a long query can hold back replay for every tenant).",
)
# PostgreSQL's idle_in_transaction_session_timeout, enforced by the proxy.
limit_idle_in_transaction = _register(
    "limit_idle_in_transaction", IDLE_IN_TRANSACTION_SESSION_TIMEOUT, "FATAL",
    "terminating connection due to idle-in-transaction timeout (pgtenant idle_in_transaction_timeout is "
    "{seconds} s)",
)
# ... and inside a COPY FROM STDIN, where PostgreSQL times nothing: no byte from the client for that long.
limit_idle_in_copy = _register(
    "limit_idle_in_copy", IDLE_IN_TRANSACTION_SESSION_TIMEOUT, "FATAL",
    "terminating connection due to idle COPY FROM STDIN: no data from the client for {seconds} s (pgtenant "
    "idle_in_transaction_timeout)",
    hint="Send the COPY's data without pausing that long, and end it with CopyDone (or CopyFail), or ask the "
    "operator to raise idle_in_transaction_timeout.",
)
# The watchdog's cancel did not end the statement within limits.cancel_grace (PostgreSQL acts on no cancel while it
# is blocked writing a result the client does not read, red team 9s6 F1/F3): the proxy closed the server itself.
limit_statement_timeout_unheeded = _register(
    "limit_statement_timeout_unheeded", QUERY_CANCELED, "FATAL",
    "terminating connection due to statement timeout (pgtenant {limit} is {seconds} s): the statement did not stop "
    "within {grace} s of its cancel",
    hint="Read results as they arrive (PostgreSQL cannot stop a statement while the client leaves its result "
    "unread), or narrow the query.",
)
# A result past max_result_rows / max_result_bytes: cut off, the statement failed (54000 program_limit_exceeded).
limit_result = _register(
    "limit_result", PROGRAM_LIMIT_EXCEEDED, "ERROR",
    "pgtenant: the result exceeds {limit} = {value}; it was cut off and the statement failed",
    hint="Add a LIMIT or a narrower WHERE clause, read the rows with a cursor in smaller FETCHes, or ask the "
    "operator to raise {limit}.",
)

# A result cut off while later statements of the same request (a Query's, a batch's up to its Sync) ran on the
# server: the client cannot be told the request failed as PostgreSQL would (they ran, may have committed).
limit_result_ran = _register(
    "limit_result_ran", PROGRAM_LIMIT_EXCEEDED, "FATAL",
    "pgtenant: the result exceeds {limit} = {value}; it was cut off, but the statements after it in the same "
    "request ran on the server (and may have committed): the connection is closed",
    hint="Check what the rest of the request changed before sending it again; send statements that change data "
    "in their own requests, or add a LIMIT to the query.",
)

# --- the admin console ------------------------------------------------------------------

admin_reloaded = _register("admin_reloaded", SUCCESSFUL_COMPLETION, "NOTICE", "{message}")
admin_no_client = _register("admin_no_client", UNDEFINED_OBJECT, "ERROR", "no client with session id {session_id}")
admin_unknown_command = _register(
    "admin_unknown_command", SYNTAX_ERROR, "ERROR", "pgtenant admin console: unknown command",
    hint="Commands: SHOW TENANTS | CLIENTS | SERVERS | POOLS | STATS | CONFIG, RELOAD, KILL_CLIENT <session id>, "
    "UNLOCK <user>.",
)


def auth_throttled(user: str, retry_after: float) -> PgError:
    # The same for unknown and real users: the budgets count both alike.
    return _auth_throttled(user, max(1, round(retry_after)))


def too_many_waiting(limit: str) -> PgError:
    return _prelogin_cap("waiting to log in", _where(limit), "the oldest waiting connection is closed")


def too_many_logging_in(limit: str) -> PgError:
    return _prelogin_cap("logging in", _where(limit), "try again in a moment")


def _where(limit: str) -> str:
    return "from this address" if limit == "address" else "in all"


def startup_parameter_not_allowed(name: str, via_options: bool) -> PgError:
    return _startup_parameter_not_allowed("startup option -c" if via_options else "startup parameter", name)


def admission_failed(fields: dict[str, str], shift: int) -> PgError:
    """The error of the proxy's EXPLAIN of an agent's statement (proxy/admission.py): the statement's own (it fails
    the same way), its position moved back by the EXPLAIN prefix."""
    position = int(fields.get("P", "0") or 0) - shift
    return PgError(fields.get("C") or INTERNAL_ERROR, fields.get("M", "error"), "ERROR", detail=fields.get("D"),
                   hint=fields.get("H"), position=position if position > 0 else 0)


def agent_startup_setting(name: str) -> PgError:
    return _agent_startup_setting(name=name)


def backend_error(fields: dict[str, str]) -> PgError:
    """The fields of an ErrorResponse the backend sent during the proxy's login (its SQLSTATE reaches the client)."""
    return PgError(fields.get("C") or _backend_refused.sqlstate, fields.get("M", "error"), "FATAL",
                   detail=fields.get("D"), hint=fields.get("H"))


def backend_refused(target: str, refusal: PgError) -> PgError:
    """The backend answered the proxy's login with an error (53300 too many clients, 57P03 starting up, 3D000...):
    the client gets its SQLSTATE, detail and hint, the message says it came from behind pgtenant."""
    text = _backend_refused(target, refusal.message).message
    return PgError(refusal.sqlstate, text, "FATAL", detail=refusal.detail, hint=refusal.hint)


def policy_denied(deny: Deny) -> PgError:
    """A statement refused by the tenant policy; the session stays usable. The message names the rule and, in a
    string of several statements, which one (`Deny.statement`). Data errors and missing objects (another tenant's
    schema is answered as a missing one) read as PostgreSQL's own, with its position."""
    if deny.sqlstate in _AS_POSTGRESQL or (deny.rule == _AS_POSTGRESQL_MISSING[0]
                                           and deny.sqlstate in _AS_POSTGRESQL_MISSING[1]):
        return PgError(deny.sqlstate, deny.message, "ERROR", hint=deny.hint or None, position=deny.position)
    where = ""
    if deny.statement is not None:
        index, count = deny.statement
        where = POLICY_DENIED_STATEMENT.format(index=index, count=count)
    text = POLICY_DENIED.format(statement=where, detail=deny.message, rule=deny.rule)
    return PgError(deny.sqlstate, text, "ERROR", hint=deny.hint or None)


def snapshot_not_imported() -> PgError:
    """Any failure of SET TRANSACTION SNAPSHOT, as one answer: PostgreSQL tells "cannot import a snapshot from a
    different database" from "invalid snapshot identifier", which finds other databases' exports by scanning ids."""
    return PgError(
        INVALID_PARAMETER_VALUE, "invalid snapshot identifier, or a snapshot that cannot be imported here",
        hint="Import a snapshot exported by a transaction of this database that is still open, first thing in a "
        "REPEATABLE READ or SERIALIZABLE transaction (pg_dump -j does).",
    )
