"""The client session state machine: its login (proxy/login.py: startup, TLS, SCRAM, the tenant identity), then its
first server and the relay through the server connections the pool lends it (for the whole session, or per
transaction with automatic pinning); no I/O."""

from __future__ import annotations

import enum
import re
import secrets
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from proxy import admission, agent, errors, hiddennames, replicas, skipping, unsynced
from proxy.actions import (
    AcquireServer,
    AcquireSlot,
    Action,
    AgentAdmission,
    AnswerWithheld,
    AwaitAdmission,
    BatchWithoutSync,
    CancelQuery,
    CloseClient,
    ConnectBackend,
    CopyInHeld,
    KeepServer,
    LastLineGuarded,
    LimitReached,
    Login,
    RelayToClient,
    RelayToServer,
    ReleaseServer,
    ReleaseSlot,
    RunDecision,
    SendClient,
    SessionPinned,
    SessionUnpinned,
    StartRelay,
    TerminateBackend,
    WatchLimits,
)
from proxy.auth.throttle import AuthThrottle
from proxy.cancel import SessionCancels, client_key, new_cancel_key
from proxy.config import AgentConfig, BackendConfig, Config, TenantConfig, UserConfig
from proxy.confirming import Awaiting
from proxy.decidedin import DecidedIn, sent_text
from proxy.errors import PgError
from proxy.heldbounds import ADDING as HELD_ADDING
from proxy.heldbounds import refusal as held_refusal
from proxy.limits import (
    IDLE_IN_TRANSACTION_TIMEOUT,
    MAX_CLIENT_CONNECTIONS,
    MAX_CONCURRENT_QUERIES,
    REPLICA_STATEMENT_TIMEOUT,
    STATEMENT_TIMEOUT,
    ConnectionCounts,
    Limits,
    ResultMeter,
    StatementBytesClaim,
    bounded_message,
    clamped_timeout,
    milliseconds,
    resolve,
    seconds,
)
from proxy.limits import server_request as limits_server_request
from proxy.login import ClientLogin, LoggedIn, LoginState, SessionError, SessionInfo, next_state, unreadable
from proxy.pgnames import protocol_key, protocol_name
from proxy.policy import timeouts
from proxy.policy.cache import Pending
from proxy.policy.implicit import declares_reg_parameter
from proxy.policy.model import (
    DEALLOCATE,
    DECLARES_CURSOR,
    DISCARD_ALL,
    EMPTY_CONTEXT,
    HOLD_CURSOR,
    SESSION_STATEMENTS,
    SQL_PREPARE,
    UNSEEN_SCHEMA,
    Allow,
    Change,
    Decision,
    Deny,
    Rewrite,
    SessionContext,
    TenantPolicy,
)
from proxy.policy.rules import deny
from proxy.policy.schema import as_missing
from proxy.policy.settings import identifier, set_config_statement
from proxy.pooling import ServerRequest, server_request
from proxy.portalbounds import OPENING as PORTAL_OPENING
from proxy.portalbounds import OpenPortals
from proxy.protocol import messages as m
from proxy.protocol.messages import bind_statement, query_message, query_text
from proxy.protocol.stream import HOLD, FramingError, GuardHit, Message, MessageStream, refused
from proxy.reasons import CloseReason
from proxy.reported import SharedStatus, reset_to_default, shared_status
from proxy.resets import Restoring, resets, restoring
from proxy.sequences import DISCARD as DISCARD_SEQUENCES
from proxy.sequences import SequenceMarks
from proxy.server import ServerConnection
from proxy.sessionstate import HELD_LOCKS_QUERY, SessionState
from proxy.settingbounds import entries as setting_entries
from proxy.settingbounds import refusal as settings_refusal
from proxy.settingbounds import sizes as setting_sizes
from proxy.sqlruns import NOTHING, ProtocolRuns, Runs, sql_runs
from proxy.statements import (
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    PARSE_COMPLETE,
    RESPONSES,
    ClientTexts,
    CursorTexts,
    SqlPrepared,
    Statements,
    forgets,
    joined,
    own_cursors,
    renamed_shrink,
    render,
)
from proxy.stmtkind import statement_kind
from proxy.stmtnames import FORGETS_ALL, ServerNames
from proxy.subxacts import OPS as SAVEPOINT_OPS
from proxy.subxacts import Savepoints
from proxy.tenancy import backend_context, parsing_violation, shares_database
from proxy.tracking import _MAX_PENDING, Request, RequestTracker
from proxy.unknownnames import ClosedFlight, Flight, Flights, UnknownNames

_MAX_SUBXACT_STATEMENTS = 1000  # prepared statements that set, release or roll back to a savepoint, remembered
# Denials sent to the backend and not yet answered: at most this many, holding at most this many bytes (a pipelined
# burst past either loses only its oldest messages' wording, see _on_error_response).
_MAX_PENDING_DENIALS = 65536
# `_closed_statement`'s context record of a statement whose changes were never recorded (SessionState.lost): a Close
# PostgreSQL skips puts the name back as lost, never as a statement without changes (red team 21v F1)
_LOST_RECORD: Any = object()
_MAX_DENIAL_BYTES = 1 << 20
_DENIAL_OVERHEAD = 200  # bytes an entry costs besides its message: the marker key, the PgError, the dict slot
_MAX_MEMO_BODY = 64 * 1024  # a longer Parse is not memoized (its body would stay held until the next Parse)
_IDLE_MEMO_BYTES = 1024  # ... and one longer than this not while the session holds no server (_idle_memos)
# A message begun takes no server until it is whole, or this much of it came (a large message is flowing: it is
# forwarded as it comes, client_message_timeout bounding it); meanwhile it waits in ClientSession._unread.
_EARLY_BYTES = 64 * 1024
# What the tracker records for a Query or Parse the codec cannot read (the client gets PostgreSQL's 08P01).
_MALFORMED = deny("malformed_message", "malformed message")
_REG_PARAMETER = deny("reg_parameter_type", "a parameter may not be declared of an object-identifier type "
                      "(regclass, regtype...) or of a type that is not built in in the Parse message")
_DENIAL_MARKER = re.compile(rb"pgtenant_denied_[0-9a-f]{16}")
# Messages that end a request (the backend answers each with ReadyForQuery): a Query, a Sync, a FunctionCall.
_REQUEST_ENDS = frozenset({m.QUERY, m.SYNC, m.FUNCTION_CALL})
_CLIENT_INTERCEPT = frozenset({m.TERMINATE})  # (one for all sessions: a frozenset is 216 bytes)
# A logged-in client's message types PostgreSQL would end the session for: refused by the proxy at their type byte,
# never forwarded (red team 9s2 M1: a server's FATAL for one came after the server went to another client).
_REFUSED_TYPES = frozenset(range(256)) - m.SESSION_TYPES
# ... and those PostgreSQL reads with its small message limit (a longer one: it closes the connection, unseen)
_SMALL_TYPES = frozenset(b"CDEHScfX")
# Startup parameters that are the server connection's own (its pool key's context), never a client setting.
_SERVER_OWN = frozenset({"client_encoding"})
# A denial answered when the statement runs (`_denied_at_run`): PostgreSQL fails a CLOSE of a cursor it does not have
# at Execute (34000), naming the marker; the denial stays for the statement's next run.
_AT_RUN = "CLOSE "
_DENIED_TEXT = "pgtenant_denied_"  # a Parse whose text is a denial marker fails in the backend (see _error_marker)
# A result cut off (limits): backend messages that still reach the client (the rest is swallowed to ReadyForQuery).
_CUT_KEEPS = frozenset({m.READY_FOR_QUERY, m.ERROR_RESPONSE, m.PARAMETER_STATUS, m.NOTIFICATION_RESPONSE,
                        m.NOTICE_RESPONSE})
# Every message type a backend sends once logged in (the rest of a cut result may be any of them).
_BACKEND_TYPES = frozenset(b"123ACDEGHIKNSTVWZcdnstv")
# Sent after a result was cut off in a transaction block the server completed: fails it, as the client's failed.
_CUT_STATEMENT = "pgtenant_result_cut_off"
# The backend messages that carry text besides errors and notices (`_names_back`): once the session has sent a
# reserved name, one of them holding one is withheld (the last line, `_last_line`). A result's are cut as a result
# limit cuts one; a ParameterStatus or NotificationResponse (asynchronous: no result of the client's) is dropped.
_RESULT_TEXT = frozenset({m.DATA_ROW, m.ROW_DESCRIPTION, m.COMMAND_COMPLETE, m.COPY_DATA, ord("V")})
_ASYNC_TEXT = frozenset({m.PARAMETER_STATUS, m.NOTIFICATION_RESPONSE})
_GUARDED = _RESULT_TEXT | _ASYNC_TEXT
_STATEMENT_ENDS = frozenset({m.COMMAND_COMPLETE, m.ERROR_RESPONSE, m.EMPTY_QUERY_RESPONSE, m.PORTAL_SUSPENDED})
# What `_withholding` swallows unread (when no handler wants it): a large one is dropped as it arrives, never held
# whole (MessageStream.guard's `drop`, red team 9a7 H5).
_CUT_UNREAD = _BACKEND_TYPES - _ASYNC_TEXT - _STATEMENT_ENDS - {m.NOTICE_RESPONSE, m.READY_FOR_QUERY}
_WITHHELD_KIND = {m.DATA_ROW: "data_row", m.ROW_DESCRIPTION: "row_description", m.COMMAND_COMPLETE: "command_complete",
                  m.COPY_DATA: "copy_data", ord("V"): "function_call_response", m.PARAMETER_STATUS: "parameter_status",
                  m.NOTIFICATION_RESPONSE: "notification_response"}

# (kind, sql) -> Decision, where kind is "query" (simple Query) or "parse" (Parse message); or a Pending when the
# decision is to be made off the event loop (the session then holds the message, see RunDecision).
Decide = Callable[[str, str], Decision | Pending]
# A session context -> the decision function for it (with a `current` method: the policy token).
Contextual = Callable[[SessionContext], Decide]


def _settings_diff(applied: dict[str, str], desired: dict[str, str]) -> str:
    """The statements taking a server from settings `applied` to `desired` (name -> statement): RESETs, then SETs."""
    parts = [f"RESET {'.'.join(identifier(p) for p in name.split('.'))}" for name in applied if name not in desired]
    parts += [text for name, text in desired.items() if applied.get(name) != text]
    return "; ".join(parts)


def _undecided(_kind: str, _sql: str) -> Decision:
    """The gate before a policy is attached: never called (the gate handlers come with the policy)."""
    return deny("internal_error", "no tenant policy is attached to this session")


_ADMISSION = Pending.__new__(Pending)  # a _Held's `pending` while it waits for its admission, not for a decision
_SWALLOWED = PgError(errors.SUCCESSFUL_COMPLETION, "")  # a denial marker's error that is not relayed (see _admitted)


def _denial_size(message: str) -> int:
    """The bytes a pending denial holds (its message; the hint is the rule's shared text)."""
    return _DENIAL_OVERHEAD + len(message)


@dataclass(slots=True)
class _Held:
    """A Query or Parse waiting for its decision, and the client's bytes received after it."""

    type: int
    body: bytes
    sql: str
    pending: Pending
    token: object = None  # a Parse: the policy token its memo is keyed by
    parse: m.Parse | None = None
    after: list[bytes] = field(default_factory=list)
    open_batch: bool = False  # (the agent profile) a Query that came after extended messages without their Sync


class State(enum.Enum):
    LOGIN = "login"  # startup and authentication: the session's ClientLogin (proxy/login.py) reads the client
    CONNECTING = "connecting"  # authenticated; waiting for the first server connection
    READY = "ready"  # relaying, holding a server connection
    IDLE = "idle"  # transaction pooling: between transactions, holding no server connection
    WAITING = "waiting"  # transaction pooling: the client sent a request, the pool has not lent a server yet
    ADMIN = "admin"  # the admin console: simple queries answered by the proxy itself
    CLOSED = "closed"


class Event(enum.Enum):
    AUTH_OK = "auth_ok"
    ADMIN_OK = "admin_ok"
    SERVER_ATTACHED = "server_attached"
    SERVER_REFUSED = "server_refused"
    SERVER_RELEASED = "server_released"
    REQUEST = "request"
    TIMEOUT = "timeout"
    CLOSE = "close"


# The whole state machine as data: (state, event) -> next state. Anything else is a protocol violation.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.LOGIN, Event.AUTH_OK): State.CONNECTING,  # the login handed a tenant's user over (login.LoggedIn)
    (State.LOGIN, Event.ADMIN_OK): State.ADMIN,
    (State.CONNECTING, Event.SERVER_ATTACHED): State.READY,
    (State.CONNECTING, Event.SERVER_REFUSED): State.CLOSED,
    (State.READY, Event.SERVER_RELEASED): State.IDLE,
    (State.IDLE, Event.REQUEST): State.WAITING,
    (State.WAITING, Event.SERVER_ATTACHED): State.READY,
    (State.WAITING, Event.SERVER_REFUSED): State.IDLE,
}
TRANSITIONS[(State.CONNECTING, Event.TIMEOUT)] = State.CLOSED  # the startup deadline (the login has its own rows)
for _s in State:
    TRANSITIONS[(_s, Event.CLOSE)] = State.CLOSED
_NOTHING_TOLD = shared_status({})  # ClientSession._client_status before its startup answer
_NO_EXECUTES = ()
# What a portal runs, taken when it is bound (review 18b F2: a statement of the same name Parsed again before the
# Execute -- the unnamed one, or a named one Closed -- is not what the portal runs): (its savepoint ops, whether it
# is a RESET sent as a SET, its changes to the session's context).
NotedPortal = tuple[tuple[tuple[str, str], ...] | None, bool, tuple[Change, ...] | None]
_NO_PORTALS: dict[bytes, NotedPortal] = {}  # `_portals` while none is noted (never written: `_bound_portal` makes one)
# The note of a portal whose name a SQL DECLARE sent may have taken (red team 20a F2): its Execute is refused until the
# DECLARE's request ends without an error (PostgreSQL's portal is then the SQL cursor: no note), a Bind of the name,
# or the transaction's end. (An object of its own: compared by identity.)
_UNKNOWN_PORTAL: NotedPortal = (None, False, None)
_MAX_DECLARING = 64  # requests of SQL DECLAREs of noted names awaited per session; past it their names stay unknown
_MAX_PORTALS = 1000  # portals noted per session (the oldest go)
_NO_RETAGS = ()  # ClientSession._retags with none
# The answers that end an extended message's (ParseComplete ... PortalSuspended: skipping.Owed.completed), but for
# CommandComplete (the session's own handler tells it).
_EXTENDED_ENDS = (PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE, ord("n"), ord("T"), ord("I"), ord("s"))
_ANSWER_WITHHELD = deny("answer_withheld", "the server's answer was withheld")  # (hiddennames: last-line check)
def _statement_words(statement: str) -> str:
    """How an error names prepared statement `statement` (a protocol name; "" the unnamed one)."""
    return f'prepared statement "{statement}"' if statement else "the unnamed prepared statement"


_NO_NAMES = frozenset()  # ClientSession._reset_names with none
_RESET_TAG = b"RESET\x00"
_NO_CLOSES = ()  # ClientSession._agent_closing with none
_MAX_AGENT_CLOSES = 4096  # ClientSession._executes of a session whose results are not metered
_READY = State.READY  # read on every client read: a module constant, not an attribute of the enum class


class ParsingMismatch(Exception):
    """The backend now reads SQL text differently from the policy engine: the session must end."""


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A session as plain data, for the I/O layer's reload and the admin console (never a live reference)."""

    session_id: str
    user: str | None
    tenant: str | None
    application_name: str | None
    client_address: str
    tls: bool
    state: str
    tx_status: str
    admin: bool


class ClientSession:
    """One client connection's protocol state. Feed it bytes and events; it returns actions."""

    # Slots, not a per-instance dict (~1 KB less per session: an instance dict of more than 30 keys is not shared).
    # An attribute missing here still works (in `__dict__`); tests/unit/test_session_pooling.py says to add it.
    __slots__ = (
        "__dict__", "_admission", "_agent_bytes", "_agent_closing", "_agent_statements", "_answered", "_applied",
        "_asking_locks", "_bind_refusal", "_binds", "_cancel_done_at", "_cancelling", "_cancels",
        "_client_status", "_client_texts", "_contextual", "_copy_held", "_copy_since", "_counted", "_cursors", "_cut",
        "_cut_ends", "_cut_inject",
        "_cut_ran",
        "_decided_in", "_decisive", "_declaring", "_declaring_portals", "_denial_bytes", "_denials", "_done",
        "_executes", "_ext_open", "_ext_since",
        "_fed_since_cancel", "_flights",
        "_flushed", "_forgets_at", "_forgotten", "_gate_slot", "_gated", "_held", "_held_ready", "_held_rest",
        "_hidden",
        "_idle_check", "_journal", "_last_ready", "_limit_actions", "_limit_inner", "_live", "_meter", "_names",
        "_notices", "_open_batch", "_open_portals", "_override_sizes", "_overrides", "_owed", "_paged",
        "_parse_memo", "_parse_shrink", "_pins", "_policy_token", "_portal_counts", "_portals", "_prepared_in",
        "_prepares",
        "_released", "_replay_buf", "_replay_error", "_replayed", "_replaying", "_reset_names", "_results",
        "_retags", "_route_plain", "_runs", "_scope",
        "_sequences", "_settling", "_slot_held",
        "_slot_queue", "_sql_prepared", "_stall", "_startup_settings", "_startup_status", "_stash", "_statement_memo",
        "_statement_of", "_sticky", "_subxact_statements", "_subxacts", "_syncs",
        "_timed_out", "_timed_out_at", "_tracking",
        "_tx_status", "_unknown", "_unread", "_unread_since", "_unsynced", "_waiting", "_withheld", "_withheld_ends",
        "agent", "backend", "backend_fatal", "backend_parameters",
        "backend_stream", "clock", "config", "connections", "context", "decide", "end_user",
        "frontend", "info", "limits", "login", "on_decision", "pooled", "process_id", "report_rewrites", "request",
        "revoked", "routing", "secret_key", "server", "state", "statements", "tenant", "tracker", "user_config",
    )

    def __init__(
        self,
        config: Config,
        *,
        session_id: str,
        client_address: str,
        throttle: AuthThrottle,
        clock: Callable[[], float],
        tls_available: bool,
        channel_binding: Callable[[], bytes | None] = lambda: None,
        on_decision: Callable[[str, str, Decision], None] | None = None,
        on_request_done: Callable[[Request], None] | None = None,
        report_rewrites: bool = False,
        connections: ConnectionCounts | None = None,
    ) -> None:
        self.config = config
        self.state = State.LOGIN
        self.info = SessionInfo(session_id=session_id, client_address=client_address)
        self._tx_status = self.info.tx_status  # the last ReadyForQuery's status, mirrored in info
        self.clock = clock
        self.user_config: UserConfig | None = None
        self.agent: AgentConfig | None = None  # the agent profile's limits (an agent user's session)
        self.tenant: TenantConfig | None = None
        self.backend: BackendConfig | None = None
        self.backend_parameters: dict[str, str] = {}
        # Our own cancel key for this client: an unguessable secret; the process id names this worker process.
        self.process_id, self.secret_key = new_cancel_key()
        # Startup and authentication (then the admin console's reads); dropped when a tenant's user is handed over.
        self.login: ClientLogin | None = ClientLogin(
            config, self.info, key=(self.process_id, self.secret_key), throttle=throttle, clock=clock,
            tls_available=tls_available, channel_binding=channel_binding)
        self.frontend = MessageStream(intercept=_CLIENT_INTERCEPT, max_length=config.limits.max_message_length)
        self.backend_stream = MessageStream(limit_all=False, cut_errors=True)
        self.decide: Decide = _undecided  # replaced by enable_policy, which also installs the gate handlers
        self._policy_token: Callable[[], object] = lambda: None
        # The last allowed/rewritten Parse: (body, policy token, name, sql, kind, decision, bytes to forward).
        self._parse_memo: tuple[bytes, object, str, str, str, Decision, bytes | None] | None = None
        self._parse_shrink = 0  # the Parse just decided: Statements.parse's `shrink` (statements.renamed_shrink)
        self._prepared_in: DecidedIn | None = None  # each statement's decision context, with a contextual policy
        self.on_decision = on_decision
        self.report_rewrites = report_rewrites  # rewrites are only logged at debug level: not reported unless asked
        self.tracker = RequestTracker(clock, on_request_done)
        self._names: ServerNames | None = None  # without Statements: the names the server has (from a named Parse)
        # The named protocol portals and what protocol statements and portals run by SQL (from the first of either):
        # SQL EXECUTE / FETCH / MOVE of a protocol-level statement or portal is refused (proxy/sqlruns.py, rt9a11 C1).
        self._runs: ProtocolRuns | None = None
        # Session pooling without the statement maps: the answers the server owes, to tell an error that makes it
        # skip to Sync (a Query too) from a Query's (skipping.py; statements.py's ledger knows it itself).
        self._owed: skipping.Owed | None = None
        # What the message being handled did to the records of statements and portals (hidden names, client texts),
        # as the steps that take it back if the server fails or skips that message (red team 9a3 J1, J6).
        self._journal: list[Callable[[], None]] | None = None
        # The statement names whose latest Parse or Close PostgreSQL skipped or failed: their Binds are refused until a
        # Parse of the name is sent again and not skipped (proxy/unknownnames.py, review 19a F1).
        self._unknown: UnknownNames | None = None
        # the savepoint statements forgotten past _MAX_SUBXACT_STATEMENTS: Binds refused until Parsed again (issue 18)
        self._forgotten: UnknownNames | None = None
        self._flights: Flights | None = None  # statement names' Parses and Closes in flight (red team 9a12)
        self._syncs = 0  # Syncs the client sent: its extended batches
        # One handler per observed message type: the stream calls it with the body (the hot path).
        self.backend_stream.handlers = self._backend_own()
        self._gated = False  # the policy's gate handlers are installed (enable_policy)
        # Denied statements are replaced by a unique marker that makes the backend fail at the same
        # position; its error is swapped for ours on the way back (ordering and transaction state stay
        # exactly PostgreSQL's, with pipelining too).
        self._denials: dict[bytes, PgError] = {}
        self._denial_bytes = 0
        self._cursors: CursorTexts | None = None  # the client's texts of rewritten DECLAREs (pg_cursors)
        self._hidden: hiddennames.InFlight | None = None  # reserved schema names sent, per request (hiddennames.py)
        # The transaction's savepoints (subxacts.py: which portals a ROLLBACK TO drops), once one was sent, and the
        # prepared statements that set, release or roll back to one (a Bind runs them): name -> (op, savepoint)
        self._subxacts: Savepoints | None = None
        # The SQL PREPAREs of Query strings awaiting PostgreSQL's answer: their records are settled by it (K6 in flight)
        self._prepares: Awaiting | None = None
        self._subxact_statements: dict[str, tuple[tuple[str, str], ...]] = {}
        # A Query or Parse waiting for a decision made off the event loop (RunDecision), and the bytes received
        # after it: nothing after it is framed or forwarded until `decision_ready`.
        self._held: _Held | None = None
        self.end_user: str | None = None  # a claim from the startup packet (pgtenant.end_user), for the audit
        self.revoked: PgError | None = None  # set by a reload that removed this user
        # The session's own context (temporary relations, search_path), followed through its transactions; the
        # decision function is swapped for one that decides in that context while it is not the empty one.
        self.context = SessionState()
        self.context.max_temp_relations = config.limits.max_temp_relations
        # (as many statements' changes as PostgreSQL may hold: the named ones the bound allows + the unnamed one)
        self.context.max_statements = max(1, config.pool.max_session_statements) + 1
        self._tracking = False  # the context needs following (SessionState.idle is false)
        self._binds = 0  # Binds since the last Sync
        self._results = 0  # Executes since the last Sync or Query: the position of the next statement in its request
        # Portals bound to a statement followed by position, not executed yet (raw portal name -> statement)
        self._portals: dict[bytes, NotedPortal] = _NO_PORTALS  # type: ignore[assignment]
        self._declaring: list[tuple[object, list[bytes]]] | None = None  # (request, noted names its DECLAREs take)
        self._declaring_portals: dict[bytes, frozenset[bytes]] | None = None  # portal -> the cursors it DECLAREs
        self._open_portals = OpenPortals()  # the portals and cursors open: [pool] max_session_portals
        self._done = 0  # CommandCompletes of the request being answered
        self._contextual: Contextual | None = None
        self._decided_in: object = None  # the context `decide` was last chosen for
        self._decisive: object = EMPTY_CONTEXT  # the part of it decisions depend on (SessionContext.for_decisions)
        self.backend_fatal = False  # the backend sent FATAL/PANIC: its close needs no error of ours
        # --- pooling: the server connection the session holds (None between transactions), what it asked for,
        # what it sent while it held none, the settings replay, the pins.
        self.server: ServerConnection | None = None
        self.request: ServerRequest | None = None  # built at login
        self.routing: replicas.Routed | None = None  # read replicas: where each request may go (login)
        self._meter: ResultMeter | None = None  # the result being relayed, if results are limited (read just below)
        self.pooled = False  # transaction pooling: the server goes back to the pool between transactions
        self.frontend.handlers = self._frontend_tracked()
        self._waiting: list[bytes | memoryview] = []  # gated client bytes for the server the session waits for
        self._answered = False  # the client has had its startup answer (ParameterStatus, key, ReadyForQuery)
        self._idle_check = False  # a ReadyForQuery 'I' arrived: see what the session holds once the read is relayed
        self._replaying = 0  # ReadyForQuerys of the proxy's own statements still to swallow (the settings replay)
        self._replay_buf = b""
        self._replay_error: bytes | None = None
        self._replayed: dict[str, str] = {}  # what the server's settings are once the replay succeeds
        self._startup_settings: dict[str, str] = {}  # the client's startup parameters, as statements setting them
        self._overrides: dict[str, str] = {}  # the client's session SETs (beyond its startup settings) until settled
        self._override_sizes: tuple[dict[str, str], dict[str, int]] | None = None  # (_overrides, their sizes)
        self._applied: dict[str, str] = {}  # the held server's settings as of the last settle
        self._client_status: dict[str, str] = _NOTHING_TOLD  # the ParameterStatus values the client has been told
        self._startup_status: dict[str, str] | None = None  # those its startup parameters set (what a RESET shows)
        self._flushed = False  # a Flush was relayed since the last Sync (its batch is open)
        self._unsynced = False  # ... and (transaction pooling) the I/O layer was told so (BatchWithoutSync)
        self._ext_open = False  # an extended message was relayed since the last Sync or Query (red team 9s4 N1)
        self._ext_since = 0.0  # ... the last read either way while the server is held for it (_awaiting_sync)
        self._paged = False  # ... an Execute with a row count was among it (its portal may go on)
        self._copy_since = 0.0  # the client's last byte in a COPY FROM STDIN (or its CopyInResponse): _copy_waited
        self._copy_held = False  # transaction pooling: the I/O layer was told the server is held by one (CopyInHeld)
        self._settling = False  # the proxy's own Sync ends a flushed batch (proxy/unsynced.py): its answer is ours
        self._stash = b""  # what the client sent meanwhile (its server may change once that Sync is answered)
        self._pins: tuple[str, ...] = ()  # why the session keeps its server (transaction pooling)
        self._sequences = SequenceMarks()  # where its writes may have left currval()/lastval() state
        # RESETs of startup settings sent as SETs of the startup values (proxy/resets.py): per request in flight,
        # the CommandCompletes (by position) answered as RESET, or swallowed (b""); the statements that are such SETs
        self._retags: list[tuple[object, dict[int, bytes]]] = _NO_RETAGS  # type: ignore[assignment]
        self._reset_names: set[str] = _NO_NAMES  # type: ignore[assignment]
        self._asking_locks = False  # the replay in flight is the advisory locks question (_ask_locks)
        self._unread = b""  # transaction pooling: what the client sent while the session held no server, unread
        self._sticky = False  # transaction pooling: the released server is kept for the session (KeepServer)
        self._route_plain = False  # no agent profile, no default_transaction_isolation setting: `_plain_routing`
        self._statement_of = self._statement_text  # (bound once: routing passes it with every request it judges)
        self._stall: tuple[int, float] | None = None  # a message begun with a server held: (frontend.begun, seen at)
        self.statements: Statements | None = None  # the client's prepared statements (enable_statements)
        self._forgets_at: int | None = None  # the decided Query's/Parse's statement that runs DEALLOCATE/DISCARD ALL
        self._live = False  # the decided Parse reads pg_prepared_statements (Statements renders it at each use)
        self._client_texts: ClientTexts | None = None  # without Statements: the client's texts of rewritten statements
        self._sql_prepared: SqlPrepared | None = None  # the SQL PREPAREs forwarded (bounded; their client texts)
        self._scope: tuple[object, str] = (EMPTY_CONTEXT, "")  # the context and its statement scope
        self._statement_memo: tuple[bytes | None, m.Parse | None] = (None, None)  # the last Parse, decoded
        self._notices: list[bytes] = []  # a new server's startup notices, for the client's startup answer
        # --- per-tenant limits (proxy/limits.py; see the section "limits" below)
        self.connections = connections if connections is not None else ConnectionCounts()
        self.limits: Limits | None = None  # set at login when any limit applies to the user
        self._counted = False  # counted in `connections` (uncounted when the session ends)
        # ... the Executes' portals (None: a Query) not yet ended (a deque once results are metered: 600 bytes)
        self._executes: deque[str | None] = _NO_EXECUTES  # type: ignore[assignment]
        self._portal_counts: dict[str, tuple[int, int]] = {}  # suspended portals' (rows, bytes) so far
        self._cut: str | None = None  # the limit a result is being cut off for (until its ReadyForQuery)
        self._cut_inject = 0  # 1: a failing statement is to be sent (the server's transaction fails too), 2: sent
        self._cut_ends = 0  # statements ended (completed or failed) since the cut, up to its ReadyForQuery
        self._cut_ran = False  # ... and one after the cut one completed: the rest of the request ran on the server
        self._cancelling = False  # a CancelQuery is in flight: the request's ReadyForQuery waits for it
        self._cancels: SessionCancels | None = None  # its client's CancelRequests' limits (made at the first one)
        # The last line's cut of a result holding a reserved name (`_last_line`): 0 none, 1 swallowing up to the
        # request's ReadyForQuery, 2 (the server's block still open) a failing statement sent, 3 and a statement
        # after the cut one completed (the session ends at the ReadyForQuery), 4 the session is to end.
        self._withheld = 0
        self._withheld_ends = 0  # statements ended since the cut (the first is the cut one's own)
        self._held_ready: bytes | None = None  # that ReadyForQuery's status
        self._held_rest: list[bytes] = []  # what the server sent after it (pipelined requests), relayed after it
        self._timed_out: object = None  # the request the watchdog canceled (its 57014 is ours)
        self._timed_out_at = 0.0  # when the watchdog first canceled it (limits.cancel_grace runs from then)
        self._unread_since: float | None = None  # since when the client has taken none of its pending output
        self._fed_since_cancel = False  # the client sent more of that request after the cancel (it may run again)
        self._cancel_done_at = 0.0  # when the last cancel was acted on (a batch open past it: idle in transaction)
        self._last_ready = 0.0  # when the last ReadyForQuery arrived (idle in transaction since)
        self._limit_actions: list[Action] = []  # actions a backend handler produced, run after the read
        self._limit_inner: dict[int, Callable[[bytes], bytes | None]] = {}  # the handlers the limits' wrap
        self._gate_slot = False  # max_concurrent_queries: the next request waits for a turn (AcquireSlot)
        self._slot_held = False  # the session's request or transaction has its turn
        self._slot_queue: list[bytes] = []  # what the client sent while the session waits for its turn
        # --- the agent profile: a statement held for the proxy's EXPLAIN of it (proxy/admission.py), the prepared
        # statements whose Binds are admitted (name -> the text the server has, its parameter types), a batch open.
        self._admission: admission.Admission | None = None
        self._agent_statements: dict[str, tuple[str, bytes]] = {}
        self._agent_bytes = 0  # their texts' length
        self._agent_closing: list[list] = _NO_CLOSES  # type: ignore[assignment]  # [name, text, request] closed, unsure
        self._open_batch = False
        self._released: bytes | None = None  # the Bind being released after its admission
        self._bind_refusal: PgError | None = None  # its refusal

    def _backend_own(self) -> dict[int, Callable[[bytes], bytes | None]]:
        """The session's own backend handlers (built when needed: a table kept per session costs memory)."""
        own: dict[int, Callable[[bytes], bytes | None]] = {
            m.READY_FOR_QUERY: self._on_ready_for_query,
            m.COMMAND_COMPLETE: self._on_command_complete,
            m.EMPTY_QUERY_RESPONSE: self._on_result_end,
            m.PORTAL_SUSPENDED: self._on_result_end,
            m.ERROR_RESPONSE: self._on_error_response,
            m.NOTICE_RESPONSE: self._on_notice_response,
            m.PARAMETER_STATUS: self._on_parameter_status,
            m.COPY_IN_RESPONSE: self._on_copy_in_response,
        }
        if self._names is not None:
            own[PARSE_COMPLETE] = self._on_parse_complete
            own[CLOSE_COMPLETE] = self._on_close_complete
        owed = self._owed
        if owed is not None:  # (the ends of extended messages' answers: skipping.py)
            for type_ in _EXTENDED_ENDS:
                inner = own.get(type_)
                own[type_] = _before(owed.completed, inner) if inner is not None else owed.completed
        return own

    def _frontend_tracked(self) -> dict[int, Callable[[bytes], bytes | None]]:
        """The request tracking's frontend handlers (built when needed, like `_backend_own`)."""
        tracked: dict[int, Callable[[bytes], bytes | None]] = {
            m.BIND: self._on_bind,
            m.SYNC: self._on_sync,
            m.CLOSE: self._on_close,
            m.COPY_DONE: self._on_copy_end,
            m.COPY_FAIL: self._on_copy_end,
        }
        # A request may begin with any of these (each opens one in the tracker); a Flush may end a batch that the
        # proxy's own Sync then ends (_settle_unsynced), in both pool modes.
        tracked.update({m.DESCRIBE: self._on_describe, m.EXECUTE: self._on_execute, m.FLUSH: self._on_flush})
        for type_ in (m.BIND, m.CLOSE, m.DESCRIBE, m.EXECUTE):  # (an open batch held for its Sync: _awaiting_sync)
            tracked[type_] = _before(self._ext_sent, tracked[type_])
        if self._meter is not None:  # (limits: results counted per portal, see _limit_portals)
            tracked.update({m.BIND: _before(self._meter_bind, tracked[m.BIND]),
                            m.EXECUTE: _before(self._meter_execute, tracked.get(m.EXECUTE))})
        if self._owed is not None:  # (what the server will owe for each: skipping.py; with statement maps, _Follow's)
            tracked[m.DESCRIBE] = _before(self._owe_extended, tracked.get(m.DESCRIBE))
            for type_ in (m.BIND, m.CLOSE):
                tracked[type_] = self._owing(tracked.get(type_))
            tracked[m.EXECUTE] = _before(self._owe_execute, tracked.get(m.EXECUTE))
            tracked[m.SYNC] = _before(self._owe_sync, tracked[m.SYNC])
        return tracked

    def _gates(self) -> dict[int, Callable[[bytes], object]]:
        """The policy's frontend handlers, once enable_policy has installed them."""
        if not self._gated:
            return {}
        query = self._gate_query if self._meter is None else _before(self._meter_query, self._gate_query)
        parse = self._gate_parse if self.statements is not None else self._session_parse
        call: Callable[[bytes], object] = self._gate_function_call
        query, parse = _before(self._ext_ended, query), _before(self._ext_sent, parse)  # (_awaiting_sync)
        if self._owed is not None:  # (what the server will owe for each: skipping.py)
            query, call = _before(self._owe_query, query), _before(self._owe_query, call)
            parse = self._owing(parse)
        return {m.QUERY: query, m.PARSE: parse, m.FUNCTION_CALL: call}

    def enable_policy(self, decide: Decide, policy_token: Callable[[], object] = lambda: None,
                      contextual: Contextual | None = None) -> None:
        """Route every Query, Parse and FunctionCall through `decide` from now on. They are observed, not held
        back: an allowed one stays inside its run of raw bytes, only a rewrite or a denial replaces it.

        `policy_token` returns an object that changes whenever `decide` may answer differently (the tenant's
        policy, replaced by a reload): a Parse repeated byte for byte under the same token reuses its outcome.
        `contextual(context)` gives the decision function for the session's context (whose `current()` is its
        policy token); without it the context is followed but decisions do not depend on it.
        """
        self.decide = decide
        self._policy_token = policy_token
        self._contextual = contextual
        self._prepared_in = None if contextual is None else DecidedIn()
        self._decided_in = self.context.belief
        self._decisive = self.context.belief.for_decisions()
        if contextual is not None and self._decisive is not EMPTY_CONTEXT:  # (a startup statement_timeout shown)
            self.decide = contextual(self._decisive)
            self._policy_token = self.decide.current  # type: ignore[attr-defined]
        self._parse_memo = None
        self._gated = True
        self.frontend.handlers = {**self._frontend_tracked(), **self._gates()}
        if self.statements is not None:
            self._follow_statements()

    # --- protocol-level prepared statements and the statement cache (proxy/statements.py) ----------------

    def enable_statements(self, prepared: dict[str, int], *, cache: bool, cache_size: int = 500,
                          cache_bytes: int = 4 << 20) -> None:
        """Keep the client's prepared statements here and give them content-derived names on the server (whose
        statement map is `prepared`); `cache`: repeated unnamed Parses become server-side statements too."""
        max_named, max_bytes, max_listing = session_statement_limits(self.config)
        self._owed = None  # (the statement maps' ledger knows what is owed)
        self.statements = Statements(error_marker=self._error_marker, cache=cache, cache_size=cache_size,
                                     cache_bytes=cache_bytes, max_named=max_named, max_bytes=max_bytes,
                                     max_listing=max_listing)
        self.statements.tenant_budget = self._tenant_statement_bytes()
        self.statements.attach(prepared)
        self.context.renamed = True  # (a SQL DEALLOCATE no longer reaches the client's protocol statements)
        self._follow_statements()

    def _tenant_statement_bytes(self) -> StatementBytesClaim | None:
        """This session's part of its tenant's bound on kept statement text ([pool] max_tenant_statement_bytes)."""
        if self.tenant is None:
            return None
        return StatementBytesClaim(self.connections.statement_bytes, self.tenant.name,
                                   lambda: self.config.pool.max_tenant_statement_bytes)

    def _follow_statements(self) -> None:
        """Route every message with an answer through the statement maps and the response ledger."""
        st = self.statements
        assert st is not None
        front = {**self._frontend_tracked(), **self._gates()}
        f = _Follow(self, st, front)
        copy_end = f.on_copy_end
        front.update({m.QUERY: f.on_query, m.PARSE: f.on_parse, m.FUNCTION_CALL: f.on_call, m.BIND: f.on_bind,
                      m.CLOSE: f.on_close, m.SYNC: f.on_sync, m.EXECUTE: f.on_execute, m.DESCRIBE: f.on_describe,
                      m.COPY_DONE: copy_end, m.COPY_FAIL: copy_end})
        self.frontend.handlers = front
        back = self._backend_own()
        respond = st.respond
        for type_ in RESPONSES:
            answer = _ErrorAnswer if type_ == m.ERROR_RESPONSE else _Answer
            back[type_] = answer(respond, type_, back.get(type_), self)
        self.backend_stream.handlers = back
        if self._limit_inner:  # (the limits' handlers stay the outermost)
            self._limit_stream()

    def _statement_parse(self, body: bytes, out: bytes | None) -> bytes | None:
        """A Parse as the gate forwards it (None: as it is), given to the statement maps."""
        st = self.statements
        assert st is not None
        resets, self._forgets_at = self._forgets_at is not None, None
        key = out if out is not None else body
        memo = self._statement_memo  # the same Parse again (drivers send the same unnamed one again and again)
        if memo[0] == key:
            parse = memo[1]
        else:
            try:
                parse = m.Parse.decode(out[5:] if out is not None else body)
            except m.DecodeError:
                parse = None
            if len(key) <= _MAX_MEMO_BODY:
                self._statement_memo = (key, parse)
        live, self._live = self._live, False
        if parse is None or parse.sql.startswith(_DENIED_TEXT):  # fails in the backend: nothing is made
            st.passthrough(m.PARSE, out if out is not None else m.frame(b"P", body))
            return out
        text = None
        if out is not None and parse.name:  # rewritten: the client's own text, for pg_prepared_statements
            decided = self._parse_memo  # (the gate's decode of it, when it memoized it)
            if decided is not None and decided[0] is body:
                text = decided[3]
            else:
                try:
                    text = m.Parse.decode(body).sql
                except m.DecodeError:
                    text = None
        shrink, self._parse_shrink = self._parse_shrink, 0
        name = protocol_name(parse.name)
        edited = st.parse(name, parse.sql, parse.param_types, self._statement_scope(), resets,
                          live, text, shrink if text is not None else 0)
        if name and name not in st.named:  # refused (past the session's bounds) or skipped: nothing is made
            self.context.unparsed(name)
        return out if edited is None else edited

    def _duplicate_parse(self, name: str, body: bytes) -> bytes | None:
        """A Parse of a statement name the session has: it fails as PostgreSQL fails it (42P05, the batch skipped to
        Sync) and the old statement stays, so none of its records (tracker, context, agent, sequences) is replaced:
        neither gated nor recorded, the statement maps answer it."""
        st = self.statements
        assert st is not None
        self.tracker.on_parse("", "", None)
        return st.parse(name, "", b"", self._statement_scope())

    # --- session pooling: the statement names the server has (proxy/stmtnames.py, red team round 6 F8) --------

    def _session_parse(self, body: bytes) -> object:
        """A Parse where the client's names reach the server (no Statements): one of a name the server has fails
        there with 42P05 and the old statement stays, so it is answered so here, its text neither decided nor
        recorded (the session's records of the name stay the old statement's); every Parse is followed to its
        answer from the first named one on."""
        names = self._names
        if names is None:
            if body[:1] == b"\x00":
                return self._gate_parse(body)
            names = self._follow_names()
        sent = m.parse_name(body)
        name = protocol_name(sent)  # (the server's key of it: red team 9a5 F5)
        if name and (names.taken(name) or name in self.context.belief.prepared
                     or name in self.context.current.prepared):
            self.tracker.on_parse("", "", None)
            marker = self._error_marker(errors.prepared_statement_exists(name=sent))
            return m.Parse(sent, marker, b"\x00\x00").encode()
        if name:  # past the session's bounds on named statements (every one counted alike: red team 9a3 J6b)
            start = body.find(b"\x00") + 1
            refused = self._session_texts().refusal(name, max(body.find(b"\x00", start) - start, 0))
            if refused is not None:
                self.tracker.on_parse("", "", None)
                return m.Parse(sent, self._error_marker(refused), b"\x00\x00").encode()
        out = self._gate_parse(body)
        if out is not HOLD:
            names.parse(name, self.tracker.pending[-1])
        return out

    def _follow_names(self) -> ServerNames:
        """Follow the statement names from now on (the backend handlers of their answers installed)."""
        names = self._names = ServerNames()
        self.backend_stream.handlers = self._backend_own()
        if self._limit_inner:  # (the limits' handlers stay the outermost)
            self._limit_stream()
        return names

    def _names_close(self, name: str | None) -> None:
        """A Close while names are followed: the statement's records go at its CloseComplete (a Close the server
        skips, an error earlier in its batch, leaves the statement there)."""
        assert self._names is not None
        self.tracker.on_bind("")  # (opens the request the Close is part of, as a Bind would)
        self._open_batch = True  # (an agent's admission waits for that request's Sync, see _on_request_message)
        self._names.close(name, self.tracker.pending[-1])
        if name and self._client_texts is not None:
            self._client_texts.sent_close(name)

    def _names_deallocated(self, changes: tuple[Change, ...]) -> None:
        """A statement with DEALLOCATEs was sent: each name goes at its CommandComplete in the request sent."""
        assert self._names is not None
        for change in changes:
            if change.op == DEALLOCATE and change.name:
                self._names.deallocate(change.name, self.tracker.pending[-1])

    def _on_parse_complete(self, _body: bytes) -> None:
        pending = self.tracker.pending
        assert self._names is not None
        self._names.parse_complete(pending[0] if pending else None)

    def _on_close_complete(self, _body: bytes) -> None:
        pending = self.tracker.pending
        assert self._names is not None
        name = self._names.close_complete(pending[0] if pending else None)
        if name is not None:
            self._closed_statement(name)
            if self._hidden is not None and self._hidden.statements:  # (red team 9a5 F3)
                self._hidden.forget([name])

    def _names_ended(self, request: object) -> None:
        """`request` failed or ended: the Parses of it the server did not confirm leave no client text."""
        assert self._names is not None
        gone = self._names.ended(request)
        texts = self._client_texts
        if texts is not None:
            if self._owed is None:  # (else each Parse's journal took its text back, restoring an older one: J6)
                for name in gone:
                    texts.close(name)
            texts.close_skipped(self._names.closing())

    def _listing(self, declaring: str | None = None) -> str:
        """The session's prepared statements for the pg_prepared_statements wrapper; where the client's names reach
        the server as they are, only the client's texts of those the policy rewrote (`_client_text`). With
        `declaring`, the client's text of a string that declares cursors: its own entry for the pg_cursors wrapper."""
        if declaring is not None:
            return joined(self._listing(), own_cursors(declaring))
        if self.statements is not None:
            listing = self.statements.listing()
        else:
            listing = self._client_texts.listing() if self._client_texts is not None else "[]"
        prepared = self._sql_prepared
        if prepared is not None:
            listing = joined(listing, prepared.listing())
        return listing if self._cursors is None else joined(listing, self._cursors.listing())

    def _bound_prepares(self, sql: str, decision: Allow | Rewrite,
                        awaiting: list[tuple[int, object]] | None = None) -> Decision:
        """A statement with SQL PREPAREs (`sql`: the client's text): refused past the session's bounds on them
        (each keeps its whole forwarded text on the server, with the listing when it reads pg_prepared_statements:
        a tenant must not fill the server's memory), else recorded with the client's text where it was rewritten."""
        names = [c.name for c in decision.changes if c.op == SQL_PREPARE]
        if not names:
            return decision
        store = self._sql_prepared
        if store is None:
            store = self._sql_prepared = SqlPrepared(*session_statement_limits(self.config))
        rewritten = isinstance(decision, Rewrite)
        size = len(decision.sql) if rewritten else len(sql)  # type: ignore[union-attr]
        if rewritten and decision.names:  # a hidden schema's reserved names count as its spelling (red team 9a3)
            size -= sum(added for _, _, added in decision.moved)  # type: ignore[union-attr]
        if rewritten and SESSION_STATEMENTS in decision.rules:
            size += len(self._listing())
        held = self.context.belief.prepared
        past = store.refusal(names, size, held)
        if past is not None:
            name, key, limit = past
            return deny("sql_prepare_limit", f'prepared statement "{name}" would take this session past [pool] '
                        f"{key} = {limit}")
        # PostgreSQL refuses a PREPARE of a name the session is known to hold (42P05: SQL PREPAREd, or a protocol
        # statement on a server that keeps the client's names; confirmed, nothing in flight frees it) unless a
        # DEALLOCATE / DISCARD ALL before it in the statement frees it: that name's record (the client's text the
        # listing shows) stays as it is (red team 9a4 K6). A protocol statement's name freed so goes from ClientTexts
        # at the DEALLOCATE's CommandComplete. A name only in flight is recorded as before (see docs/security.md).
        taken = set(held & self.context.current.prepared)
        texts, names_ = self._client_texts, self._names
        if texts is not None and names_ is not None:
            taken.update(n for n in texts.texts if n in names_.confirmed and names_.taken(n) and n not in texts.closing)
        new: list[str] = []
        tokens: list[object] | None = None if awaiting is None else []
        for change in decision.changes:
            if change.op == DISCARD_ALL or (change.op == DEALLOCATE and not change.name):
                taken.clear()
            elif change.op == DEALLOCATE:
                taken.discard(change.name)
            elif change.op == SQL_PREPARE and change.name not in taken:
                new.append(change.name)
                taken.add(change.name)
                if awaiting is not None and tokens is not None:  # (a Query's: settled by its answer, K6 in flight)
                    token = object()
                    tokens.append(token)
                    awaiting.append((change.at, token))
        store.prepared(new, sql if rewritten else None, size, held, tokens)
        return decision

    def _prepares_sent(self, first: int, prepares: list[tuple[int, object]]) -> None:
        """A Query's SQL PREPAREs (statement `first` + at of its request) await PostgreSQL's answer: one it refuses
        (42P05: a PREPARE or Parse of the name still in flight before it succeeded) leaves the name's record as it
        was (`SqlPrepared.settled`)."""
        pending = self.tracker.pending
        if not pending:
            return
        if self._prepares is None:
            self._prepares = Awaiting()
        for at, token in prepares:
            self._prepares.sent(pending[-1], first + at, token)

    def _prepares_settled(self, tokens: list[object], ok: bool) -> None:
        """PostgreSQL ran (`ok`) or refused or skipped the SQL PREPAREs of `tokens`: their records follow."""
        store = self._sql_prepared
        if store is not None:
            for token in tokens:
                store.settled(token, ok)

    def _client_text(self, name: str, sql: str, rewritten: bool) -> None:
        """A named Parse of the client's text `sql` forwarded to a server that keeps the client's names: counted
        toward the session's bounds, and when the policy rewrote it, `sql` is what pg_prepared_statements shows."""
        if self._sql_prepared is not None:  # a SQL PREPAREd statement's text of that name is gone with it
            self._sql_prepared.forget(name)
        texts = self._session_texts()
        old = texts.texts.get(name)
        texts.parse(name, sql if rewritten else None, len(sql))
        self._journaled(partial(_restore_text, texts, name, old))  # (taken back if PostgreSQL skips the Parse: J6)

    def _session_texts(self) -> ClientTexts:
        """The session's record of its named statements' client texts (session pooling: `ClientTexts`)."""
        texts = self._client_texts
        if texts is None:
            texts = self._client_texts = ClientTexts(*session_statement_limits(self.config))
            texts.tenant_budget = self._tenant_statement_bytes()
        return texts

    def _statement_scope(self) -> str:
        """What a statement's meaning depends on besides its text: the session's context (search_path, temporary
        relations that shadow tables), as the statement names on servers include it."""
        belief = self.context.belief
        scope = self._scope
        if scope[0] is not belief:
            key = (belief.path, belief.local, sorted(belief.temp_tables), sorted(belief.temp_views))  # names resolve by
            scope = self._scope = (belief, "" if key == (None, None, [], []) else repr(key))
        return scope[1]

    def _statement_query(self, body: bytes, out: bytes | None) -> bytes | None:
        """A Query as the gate forwards it: it ends the unnamed statement; DEALLOCATE ALL / DISCARD ALL forget every
        statement; DDL closes the cache's statements (their plans could fail with 0A000)."""
        st = self.statements
        assert st is not None
        at, self._forgets_at = self._forgets_at, None
        try:
            sql = query_text(out[5:] if out is not None else body)
        except m.DecodeError:
            st.query()
            return out
        instead = st.deallocate(sql)
        if instead is not None:  # SQL DEALLOCATE of a statement only the proxy has (psqlODBC's _PLAN statements)
            pending = self.tracker.pending
            if pending:  # (its answer frees the statement's record: SessionState.renamed)
                self.context.maps_deallocate(pending[-1], st.deallocated)
            return query_message(instead)
        st.query(reset=at is not None or forgets(sql), at=at or 0)
        if st.cache and statement_kind(sql) == "ddl":
            closes = st.invalidate()
            if closes:
                return (out if out is not None else m.frame(b"Q", body)) + closes
        return out


    def row(self) -> SessionRow:
        """What the session is now, as plain data."""
        info, login = self.info, self.login
        state = login.state.value if login is not None and self.state is State.LOGIN else self.state.value
        if self._sticky:  # (its server is kept for it, idle in the pool: between requests, as an idle session)
            state = State.IDLE.value
        return SessionRow(info.session_id, info.user, info.tenant, info.application_name, info.client_address,
                          info.tls, state, info.tx_status.decode(), login is not None and login.is_admin)

    def reconfigure(self, config: Config) -> None:
        """Event: a reload installed `config`; the session decides under it from now on, and routes its next requests
        by its user's new routing (red team 9s8 F3: a session kept its login's; one that logged in under route
        "primary" keeps the primary until it reconnects — the safe side)."""
        self.config = config
        if self.login is not None:
            self.login.config = config
        user = self.info.user
        if self.routing is not None and user in config.users:
            self.routing.reconfigure(replicas.routing_of(config, user))

    def revoke(self, error: PgError) -> list[Action]:
        """Event: a reload removed or moved this session's user. A session between requests ends now (FATAL, as
        PostgreSQL's own termination arrives unasked: nothing more reaches it, not a NOTIFY; red team 9b3 F3). One
        with requests on its server ends now too, its backend process terminated (what it pipelined must not run; a
        CancelRequest would stop only the running statement: 9b3 F1); a message held for its decision is dropped
        (9b3 F2). Logging in or waiting for a server: it ends at its next step (`revoked` is looked at there)."""
        self.revoked = error
        if self.state is State.IDLE or self.state is State.ADMIN:
            self._close()
            return [CloseClient(error, CloseReason.USER_REMOVED)]
        if self.state is not _READY:
            return []
        server = self.server
        busy = (bool(self.tracker.pending) or self._replaying or self._settling or bool(self.frontend.unfinished)
                or self._admission is not None)
        if server is None or self._sticky or not busy:
            released = self._close_server(CloseReason.USER_REMOVED)
        else:  # (never back to the pool; no cancel first: the next pipelined statement would run at once)
            released = [TerminateBackend(server.backend, server.database, server.process_id, server.secret_key),
                        *self._give_back(reusable=False, reset=True, reason=CloseReason.USER_REMOVED)]
        self._held = None  # (never relayed: its decision, if it still arrives, finds the session closed)
        self._close()
        return [*released, CloseClient(error, CloseReason.USER_REMOVED)]

    def _revoked_now(self) -> list[Action]:
        """A held message's decision or admission arrived after a reload revoked the user: it is dropped with what
        came after it, nothing reaches the server (red team 9b3 F2)."""
        assert self.revoked is not None
        released = self._close_server(CloseReason.USER_REMOVED)
        self._held = None
        self._close()
        return [*released, CloseClient(self.revoked, CloseReason.USER_REMOVED)]

    # --- state machine plumbing ------------------------------------------------------------

    def _transition(self, event: Event) -> None:
        self.state = next_state(TRANSITIONS, self.state, event)

    def _close(self) -> None:
        """The session ends (CLOSE is a row of every state: this never raises)."""
        self._transition(Event.CLOSE)

    def _fail(self, exc: SessionError) -> list[Action]:
        self._close()
        return [CloseClient(exc.error, exc.reason)]

    # --- inputs ----------------------------------------------------------------------------

    def client_data(self, data: bytes) -> list[Action]:
        """Bytes from the client socket."""
        try:
            if self.state is _READY:  # the hot path (every read while relaying): READY's handler, called directly
                if self.tracker.copy_in:  # (any byte of the client's in a COPY FROM STDIN: it is not idle)
                    self._copy_since = self.clock()
                if self.routing is not None and self.routing.watching:
                    self._watch_writes(data)
                return self._relay_from_client(data)
            handler = _ON_DATA.get(self.state)
            if handler is None:  # TLS_HANDSHAKE / CONNECTING: the client must wait for our answer
                raise SessionError(
                    errors.protocol_violation(f"unexpected data from client during {self.state.value}"),
                    CloseReason.UNEXPECTED_DATA,
                )
            return handler(self, data)
        except (SessionError, FramingError, m.DecodeError) as exc:
            return self._rejected(exc)

    def _rejected(self, exc: SessionError | FramingError | m.DecodeError) -> list[Action]:
        """What the client sent cannot be read: the session ends with the error PostgreSQL would send, and its server
        is closed: the read stopped where it broke, part of a message before that point may have reached the server
        and the rest never will (red team 9s2 M1: reusable, it took the next client's bytes for that rest)."""
        failed = unreadable(exc, self.frontend.max_length)  # (the login reads through a stream of its own)
        return [*self._close_server(failed.reason, broken=True), *self._fail(failed)]

    def _ignore(self, _data: bytes) -> list[Action]:
        """A read after the session closed: nothing to do."""
        return []

    def guarded(self) -> bool:
        """Whether the backend stream's guard is on (the first schema the tenant cannot see was named): each result
        message holding "pg_9" then costs a Python call, so a large read is worth yielding the loop after
        (ServerLink.data_received, red team 9a7 H1)."""
        return self._hidden is not None and self._hidden.guarded

    def server_data(self, data: bytes) -> list[Action]:
        """Bytes from the server connection the session holds."""
        if self._replaying:
            return self._replay_data(data)
        if self._held_ready is not None:  # (limits: behind a ReadyForQuery held for a cancel, see cancel_done)
            self._held_rest.append(bytes(data))
            return []
        if self._admission is not None:
            return self._admission_data(data)
        out = self._relay_server(data)
        self._sync_wait(out)
        if self.pooled and self._copy_held is not self._copying():
            out.append(self._copy_changed())
        if self._settling:
            return out
        if self._flushed:  # a batch ended with a Flush: once answered in full it may need its server no more
            return out + self._settle_unsynced()
        if self._stash:
            data, self._stash = self._stash, b""
            return out + self.client_data(data)
        return out

    def _relay_server(self, data: bytes) -> list[Action]:
        try:
            chunks = self.backend_stream.feed(data)
        except ParsingMismatch as exc:
            return self._end_with_server(errors.backend_settings_unsafe(str(exc)), CloseReason.PARSING_MISMATCH)
        except GuardHit as exc:  # (the last line, mid-message: no error can take the place of bytes forwarded)
            self._close()
            reason = CloseReason.ANSWER_WITHHELD
            return [AnswerWithheld(f"{_WITHHELD_KIND[exc.type]}_mid_message"),
                    *self._give_back(reusable=False, reset=True, reason=reason), CloseClient(None, reason)]
        except FramingError as exc:
            return self._end_with_server(errors.protocol_violation(f"backend: {exc}"), CloseReason.BACKEND_FRAMING)
        if self._limit_actions or self._cut_inject & 1 or self._withheld == 4:  # (what a cut request's end needs)
            return self._limit_after(chunks)
        if self.statements is not None:
            again = self.statements.take_server()  # a batch sent again (a stale cached plan)
            if again:
                return [RelayToClient(chunks), RelayToServer([again])]
        if self._idle_check:
            return self._at_idle(chunks)
        return [RelayToClient(chunks)]

    def _end_with_server(self, error: PgError, reason: CloseReason) -> list[Action]:
        """The server connection cannot be trusted any more: it is closed, and the session ends with `error`."""
        self._close()
        return [*self._give_back(reusable=False, reset=True, reason=reason), CloseClient(error, reason)]

    def tls_done(self) -> list[Action]:
        """Event: the client's TLS handshake completed (only a login asks for one)."""
        if self.state is State.LOGIN and self.login is not None:
            return self._login_step(self.login.tls_done())
        return self._fail(SessionError(errors.protocol_violation(f"unexpected tls_done in state {self.state.value}"),
                                       CloseReason.UNEXPECTED_TLS_DONE))

    def server_attached(self, server: ServerConnection, notices: Sequence[bytes] = ()) -> list[Action]:
        """Event: the pool lent the session `server` (READY, idle; `notices`: a new server's startup notices). The
        session sends it the settings replay (answers swallowed), then what the client sent meanwhile; the first
        attach answers the client's startup once the replay is done (a backend that would read SQL differently
        from the policy engine ends the session instead: fail closed)."""
        first = self.state is State.CONNECTING
        if first:
            for name, value in server.status.items():
                problem = parsing_violation(name, value)
                if problem is not None:
                    self._transition(Event.SERVER_REFUSED)
                    reason = CloseReason.PARSING_MISMATCH
                    return [ReleaseServer(reusable=False, reset=True, reason=reason),
                            CloseClient(errors.backend_settings_unsafe(problem), reason)]
        if not first and server.replica is not None and self.routing is not None and self.agent is None:
            rerouted = self._rerouted()
            if rerouted is not None:
                return rerouted
        try:
            self._transition(Event.SERVER_ATTACHED)
        except SessionError as exc:
            return [ReleaseServer(reusable=True, reset=True), *self._fail(exc)]
        self.server = server
        if self.routing is not None:
            self.routing.attached(server.replica, self.pooled)
        if self.statements is not None:
            self.statements.attach(server.prepared)  # type: ignore[arg-type]
        else:
            cache, size, size_bytes = statement_settings(self.config)
            if self.pooled or cache:  # the client's statements are kept here and prepared on each server
                self.enable_statements(server.prepared, cache=cache, cache_size=size,  # type: ignore[arg-type]
                                       cache_bytes=size_bytes)
        desired = self._desired()
        replay = _settings_diff(server.settings, desired)
        discard = self._sequences.attached(server)
        if discard:
            replay = f"{discard}; {replay}" if replay else discard
        out: list[bytes | memoryview] = []
        if replay:
            self._replaying, self._replay_buf, self._replay_error, self._replayed = 1, b"", None, desired
            out.append(query_message(replay))
        else:
            self._applied = desired
        out += self._waiting
        self._waiting = []
        more: list[Action] = []
        if self._unread:  # what the client sent meanwhile, read now that its statements can be placed
            unread, self._unread = self._unread, b""
            try:
                more = self._relay_from_client(unread)
            except (SessionError, FramingError, m.DecodeError) as exc:  # (its server goes back as the session ends)
                return self._rejected(exc)
            while more and type(more[0]) is RelayToServer:  # one write with the replay
                out += more.pop(0).chunks  # type: ignore[union-attr]
        actions: list[Action] = [RelayToServer(out)] if out else []
        actions += more
        if first:
            self._notices = list(notices)
            if not replay:
                actions += self._startup_answer()
                if self.pooled and not out:  # nothing to do yet: the server goes back at once
                    actions += self._at_idle([])[1:]
        if self._admission is not None:  # a statement held for its admission waited for this server
            actions += self._admission_start()
        return actions

    def _startup_answer(self) -> list[Action]:
        """The end of the client's startup: the server's ParameterStatus values with the client's settings applied
        (as the client set them), our cancel key, ReadyForQuery; then the session relays."""
        assert self.server is not None
        self._answered = True
        out = bytearray()
        for notice in self._notices:
            out += notice
        self._notices = []
        told = dict(self._client_status)
        for name, value in self.server.status.items():
            shown = self.context.parameter_status(value) if name == "search_path" else value
            told[name] = shown
            out += m.parameter_status(name, shown)
        self._client_status = shared_status(told)  # (one dict for the sessions told the same: see _told)
        startup = {k: v for k, v in told.items() if k.lower() in self._startup_settings}
        self._startup_status = shared_status(startup) if startup else None
        out += m.backend_key_data(*self._client_key())
        out += m.ready_for_query(b"I")
        return [SendClient(bytes(out)), StartRelay()]

    def server_refused(self, error: PgError, reason: CloseReason) -> list[Action]:
        """Event: the pool has no server for the session (its wait timed out, the backend cannot be reached). At
        login the client is closed with `error`; later each request the client sent meanwhile is answered with
        `error` and ReadyForQuery, as a failed implicit transaction (the session stays usable), unless an extended
        batch without its Sync is among them: then the session ends with `error`."""
        if self.state is State.CONNECTING:  # at login, as PostgreSQL's own refusals: FATAL
            self._transition(Event.SERVER_REFUSED)
            return [CloseClient(replace(error, severity="FATAL") if error.severity == "ERROR" else error, reason)]
        if self.state is not State.WAITING:
            return []
        self._transition(Event.SERVER_REFUSED)
        waiting, self._waiting = self._waiting, []
        ends = sum(t in _REQUEST_ENDS for t, _, _ in m.split_messages(b"".join(bytes(c) for c in waiting))[0])
        if self._unread:  # unread: every request in it ends (a batch without its Sync closes the session)
            unread, self._unread = self._unread, b""
            messages, used = m.split_messages(unread)
            if waiting or used != len(unread) or not messages or messages[-1][0] not in _REQUEST_ENDS:
                self._close()
                return [CloseClient(error, reason)]
            answer = (error.encode() + m.ready_for_query(b"I")) * sum(t in _REQUEST_ENDS for t, _, _ in messages)
            return [RelayToClient([answer])]
        if ends != len(self.tracker.pending) or self._held is not None:
            self._close()
            return [CloseClient(error, reason)]
        answer = (error.encode() + m.ready_for_query(b"I")) * ends
        return [RelayToClient(self.backend_stream.feed(answer))]

    def server_closed(self, error: PgError | None = None) -> list[Action]:
        """Event: the server connection the session held closed (`error`: why, when the proxy closed it); after the
        backend's own FATAL its word is the last."""
        self.server = None
        if self.backend_fatal:
            return [CloseClient(None, CloseReason.SERVER_FATAL)]
        return [CloseClient(error or errors.server_closed(), CloseReason.SERVER_CLOSED)]

    # --- pooling: settings replay, pins, release ---------------------------------------------

    def _desired(self) -> dict[str, str]:
        """The settings the client expects its server to have: its startup ones, then its session SETs."""
        return {**self._startup_settings, **self._overrides} if self._overrides else dict(self._startup_settings)

    def _settle(self) -> dict[str, str] | None:
        """Between transactions, nothing in flight: fold the session SETs confirmed since the last settle into the
        client's settings; the statement text setting the held server to them when it differs (else None)."""
        changed = self.context.current.settings
        if not changed:
            return None
        applied, overrides = dict(self._applied), dict(self._overrides)
        for name, text in changed:
            if name == "*":  # RESET ALL / DISCARD ALL: the server's own defaults, the client's startup settings
                applied, overrides = {}, {}
            elif not text:  # RESET: the server's default; the client expects its startup value
                applied.pop(name, None)
                overrides.pop(name, None)
            else:
                applied[name] = overrides[name] = text
        self._overrides = {k: v for k, v in overrides.items() if self._startup_settings.get(k) != v}
        self._plain_routing()
        self._applied = applied
        self.context.settle_settings(())
        self._context_changed()
        return self._desired()

    def _at_idle(self, chunks: list) -> list[Action]:
        """A ReadyForQuery 'I' was relayed: with nothing in flight, the session's settings are settled (replayed on
        the held server when it keeps it), its pins counted, and in transaction pooling the server goes back to
        the pool unless the session is pinned."""
        self._idle_check = False
        actions: list[Action] = [RelayToClient(chunks)]
        if (self.state is not _READY or self.tracker.pending or self._held is not None or self.frontend.unfinished
                or self._replaying or (self.statements is not None and not self.statements.idle) or self.backend_fatal
                or self._skipping_to_sync()):
            return actions  # (a server that sent a FATAL is ending: it stays here until it closed, never lent again;
            # one skipping to the client's Sync stays held until that Sync: _skipping_to_sync)
        if self.pooled and self.context.lock_activity and not self.context.current.pin_reasons():
            return actions + self._ask_locks()
        desired = self._settle()
        pins = self._pin_reasons()
        if self.pooled:
            actions += self._pin_actions(pins)
            if not pins:
                if self._may_keep(desired):
                    self._sticky = True
                    routing = self.routing  # (its release's part for read-your-writes: a write ends now; nothing
                    if routing is not None and (routing.wrote or routing.watching):  # to do after reads alone)
                        routing.released(self.server.replica, self.clock)  # type: ignore[union-attr]
                    return [*actions, KeepServer()]
                return actions + self._release()
        if desired is not None and desired != self._applied:
            replay = _settings_diff(self._applied, desired)
            self._replaying, self._replay_buf, self._replay_error, self._replayed = 1, b"", None, desired
            actions.append(RelayToServer([query_message(replay)]))
        return actions

    def _sequences_front(self, chunks: list, busy: bool) -> list:
        """The client's `chunks` about to reach a server that may hold another session's sequence state: DISCARD
        SEQUENCES goes in front of them when a statement among them calls currval()/lastval() before the session
        used that server (proxy/sequences.py), its answers swallowed as the settings replay's are; the client gets
        PostgreSQL's 55000, as on a new connection."""
        server = self.server
        if not self._sequences.forwarded(busy, self._tx_status == b"E") or server is None or self.state is not _READY:
            return chunks
        self._sequences.discarded(server)
        if not self._replaying:
            self._replay_buf, self._replay_error, self._replayed = b"", None, self._applied
        self._replaying += 1
        return [query_message(DISCARD_SEQUENCES), *chunks]

    def _idle_memos(self) -> None:
        """Holding no server, the session keeps its last Parse's memos only when they are small: a long one would
        stay held while it idles (up to 64 KB of body, its text again, its rewrite); its next use is decided again."""
        memo = self._parse_memo
        if memo is not None and len(memo[0]) + len(memo[6] or b"") > _IDLE_MEMO_BYTES:
            self._parse_memo = None
        key = self._statement_memo[0]
        if key is not None and len(key) > _IDLE_MEMO_BYTES:
            self._statement_memo = (None, None)

    def _pin_reasons(self) -> tuple[str, ...]:
        reasons = self.context.current.pin_reasons()
        if self.context.locks_kept and "advisory_lock" not in reasons:
            return (*reasons, "advisory_lock")
        return reasons

    def _ask_locks(self) -> list[Action]:
        """Before a server on which the session called advisory lock functions goes back: ask it whether it holds
        session advisory locks (the proxy's count cannot follow a call run per row, or through EXECUTE, a cursor,
        a view); the answer comes through the replay path (`_replay_data`), then the session is idle again."""
        self.context.lock_activity = self.context.locks_kept = False  # (a row of the answer sets it again)
        self._asking_locks = True
        self._replaying, self._replay_buf, self._replay_error, self._replayed = 1, b"", None, self._applied
        return [RelayToServer([query_message(HELD_LOCKS_QUERY)])]

    def _pin_actions(self, pins: tuple[str, ...]) -> list[Action]:
        """Metrics: the reasons the session is newly pinned for, or its unpinning."""
        old, self._pins = self._pins, pins
        if pins == old:
            return []
        out: list[Action] = [SessionPinned(r) for r in pins if r not in old]
        if old and not pins:
            out.append(SessionUnpinned(old))
        return out

    def _release(self) -> list[Action]:
        """Transaction pooling, at ReadyForQuery 'I' with nothing in flight and no pin: the server goes back."""
        self._transition(Event.SERVER_RELEASED)
        self._idle_memos()
        return self._give_back(reusable=True, reset=False)

    # --- sticky servers (docs/pinning.md): a released server stays with the session while nobody needs it -------

    def _may_keep(self, desired: dict[str, str] | None) -> bool:
        """At the release: whether the session may keep its server (KeepServer) instead of giving it back: its
        settings are on it as they are (no replay due), and no request of the client's waits already (held while the
        proxy's own Sync ended a Flush-ended batch: it is judged again after the release, and a kept server would be
        written to behind the pool's back). A routed session keeps its replica's or primary's server as any other
        (its next request runs there only if the router could choose it: `resume_route`); a session that needs a
        turn per request (max_concurrent_queries) keeps it too (its turn is given back at this ReadyForQuery all
        the same; it resumes only when a turn is free at once: `resume_turn`)."""
        return (self.config.pool.sticky_servers and not self._stash
                and (desired is None or desired == self._applied))

    def read_kept(self, data: bytes) -> tuple[bytes, bool] | None:
        """Client bytes while the session's server is kept for it, before anything reads them: kept here (None)
        while no whole first message is in (a message begun takes no server, the kept one neither: red team 9s F2);
        then all of them, with whether they may resume it (False: a type the session is refused for, read with no
        server)."""
        early = self._unread + data if self._unread else data
        try:
            whole = _whole_first(early, self.frontend.max_length)
        except FramingError:
            self._unread = b""
            return early, False
        if not whole:
            self._unread = early
            return None
        self._unread = b""
        return early, True

    def may_resume(self) -> bool:
        """Whether the session has a server kept for it (its next request may run there if the pool lets it)."""
        return self._sticky

    def resume_turn(self) -> tuple[str, int] | None:
        """max_concurrent_queries: (tenant, limit) of the turn the session's next request needs before it runs, else
        None. With a server kept, the request resumes it only when that turn is free now (the session then takes it
        synchronously): a server held while its request waits for a turn could be the one a turn holder waits for."""
        limits = self.limits
        if not self._gate_slot or limits is None or limits.max_concurrent_queries is None:
            return None
        return limits.tenant, limits.max_concurrent_queries

    def resume_route(self, data: bytes) -> AcquireServer | None:
        """A routed session with a server kept for it: what it would ask the pool for the request `data` begins (its
        Route judged as for an acquire, `_route_of`), which the pool checks the kept server against (the router's
        choice: that replica, or the primary); None when the session is not routed."""
        routing = self.routing
        if routing is None or not self._sticky:
            return None
        if self._route_plain:  # (_route_of's usual case, without its call; the usual Route is the same object at
            return replicas.resume(routing, data, self.decide, self._statement_of, self.request,  # every read:
                                   AcquireServer)  # its ask is kept, routing.asked)
        assert self.request is not None
        routing.judged = len(data)
        route = self._route_of(data)
        asked = routing.asked
        if asked is not None and asked[0] is route and asked[1] is self.request:
            return asked[2]  # type: ignore[return-value]
        ask = AcquireServer(self.request, route)
        routing.asked = (route, self.request, ask)
        return ask

    def server_resumed(self) -> list[Action]:
        """Event: the session holds the server kept for it again (its next request is about to be read): no replay,
        no statement placement, no sequence discard, since nobody else has used that server meanwhile."""
        self._sticky = False
        routing, server = self.routing, self.server
        if routing is not None and server is not None and (server.replica is None or routing.watching):
            routing.attached(server.replica, self.pooled)  # (a replica's: watching stays off, as the keep left it)
        return []

    def server_taken(self) -> list[Action]:
        """Event: the pool took back the server kept for the session (someone needed it, a timer or a reload closed
        it, or the session's next request asks the pool anew): what the release at its ReadyForQuery 'I' did is done
        now (the session is between requests: nothing of its own is in flight to that server)."""
        if not self._sticky:
            return []
        self._sticky = False
        if self.routing is not None:  # (its release's routing part was done at the keep; a request judged for the
            self.routing.wrote = False  # kept server since, `resume_route`, is judged again when it asks the pool)
        self._release()  # (its ReleaseServer is not run: the pool has the server already)
        return []

    def _give_back(self, *, reusable: bool, reset: bool, reason: CloseReason | None = None,
                   busy: bool = False) -> list[Action]:
        """The server leaves the session: it records the settings the session left on it. One the client is sending
        a message to (begun, not complete) is never reusable, whoever gives it back: the rest of that message would
        reach its next holder as messages of their own (red team 9s F1), or swallow the pool's reset (9s2 L1: a
        settings replay that failed gave it back reusable mid-message)."""
        server, self.server = self.server, None
        self._sticky = False
        if server is None:
            return []
        if reusable and (self.frontend.unfinished or self._skipping_to_sync()):
            reusable = False
        if self.statements is not None:
            self.statements.detach()
        self._flushed = self._unsynced = self._ext_open = False  # (the I/O layer stops counting it at the release)
        self._sequences.released(server)
        if self.routing is not None:
            self.routing.released(server.replica, self.clock)
        server.settings = dict(self._applied)
        self._applied = {}
        return [ReleaseServer(reusable=reusable, reset=reset, reason=reason, busy=busy)]

    def _skipping_to_sync(self) -> bool:
        """The server's last answer was an ErrorResponse to an extended message and the client's Sync has not been
        sent since: PostgreSQL discards every message up to a Sync (red team 9s4 H1). Such a server is never given
        back reusable nor released between requests: it stays with its session until that Sync (the session's next
        messages are the ones skipped, as on a direct connection), and is closed if the session ends first."""
        st, owed = self.statements, self._owed
        if st is not None:
            return st.skipping
        return owed is not None and owed.skipping

    def _close_server(self, reason: CloseReason, *, broken: bool = False) -> list[Action]:
        """The session ends: its server goes back to the pool, reusable when it is between transactions with
        nothing in flight (and the client's stream did not `broken` off), reset unless transaction pooling left
        nothing on it."""
        if self.server is None:
            return []
        idle = (not broken and self._tx_status == b"I" and not self.tracker.pending and self._held is None
                and not self._replaying and not self.frontend.unfinished and not self._skipping_to_sync()
                and (self.statements is None or self.statements.idle))
        if idle:
            self._settle()
        # (settings are recorded on it: the next client's diff; advisory locks not asked for: reset)
        clean = self.pooled and not self._pin_reasons() and not self.context.lock_activity
        # a statement still running (the client left mid-statement) is cancelled before the server closes
        busy = not idle and bool(self.tracker.pending or self._held is not None or self._replaying)
        return self._give_back(reusable=idle, reset=not (idle and clean), reason=reason, busy=busy)

    def _replay_data(self, data: bytes) -> list[Action]:
        """The answers to the proxy's own statements (the settings replay): swallowed, but for the ParameterStatus
        values the client has not been told (a setting it changed may show); then the session relays again."""
        server = self.server
        assert server is not None
        messages, used = m.split_messages(self._replay_buf + data if self._replay_buf else data)
        buf = self._replay_buf + data if self._replay_buf else data
        out = bytearray()
        end = 0
        for type_, body, stop in messages:
            end = stop
            if type_ == m.PARAMETER_STATUS:
                name, value = m.decode_parameter_status(body)
                problem = parsing_violation(name, value)
                if problem is not None:
                    return self._end_with_server(errors.backend_settings_unsafe(problem), CloseReason.PARSING_MISMATCH)
                server.status[name] = value
                shown = self.context.parameter_status(value) if name == "search_path" else value
                if self._answered and self._client_status.get(name) != shown:
                    self._told(name, shown)
                    out += m.parameter_status(name, shown)
            elif type_ == m.ERROR_RESPONSE:
                self._replay_error = body
            elif type_ == m.DATA_ROW and self._asking_locks:  # (a replayed set_config() has rows too)
                self.context.locks_kept = True
            elif type_ == m.NOTIFICATION_RESPONSE:  # a LISTENing session's notification: the client's
                out += m.frame(b"A", body)
            elif type_ == m.READY_FOR_QUERY:
                self._replaying -= 1
                if not self._replaying:
                    break
        rest = buf[end:] if not self._replaying else b""
        self._replay_buf = buf[used:] if self._replaying else b""
        actions: list[Action] = [SendClient(bytes(out))] if out else []
        if self._replaying:
            return actions
        self._asking_locks = False
        if self._replay_error is not None:
            fields = m.decode_error_fields(self._replay_error)
            self._replay_error = None
            self._close()
            if not self._answered:  # a startup parameter the server refuses: PostgreSQL's own FATAL, as at login
                error, reason = errors.backend_error(fields), CloseReason.STARTUP_PARAMETER
            else:
                error, reason = errors.settings_not_restored(fields.get("M", "")), CloseReason.SETTINGS_REPLAY
            return [*self._give_back(reusable=True, reset=True, reason=reason), CloseClient(error, reason)]
        self._applied = self._replayed
        if not self._answered:
            actions += self._startup_answer()
        if self._admission is not None:
            actions += self._admission_start()
        if self.pooled and not self.tracker.pending:
            self._idle_check = True  # nothing the client sent is waiting: the server may go back
        if rest or self._idle_check:
            return actions + self.server_data(rest)
        return actions

    def report_requests(self, on_done: Callable[[Request], None]) -> None:
        """Event: from now on every answered request goes to `on_done` (the relay's recorder)."""
        self.tracker.on_done = on_done

    def timeout(self) -> list[Action]:
        """The startup/authentication deadline passed."""
        if self.state is State.LOGIN and self.login is not None:
            return self._login_step(self.login.timeout())
        if (self.state, Event.TIMEOUT) not in TRANSITIONS:  # logged in (or gone): no deadline
            return []
        self._transition(Event.TIMEOUT)
        return [CloseClient(errors.startup_timeout(), CloseReason.STARTUP_TIMEOUT)]

    # --- the login (proxy/login.py) and the hand-over ------------------------------------------

    def _login_data(self, data: bytes) -> list[Action]:
        assert self.login is not None
        return self._login_step(self.login.data(data))

    def _login_step(self, actions: list[Action]) -> list[Action]:
        """What the login answered, and where it is: refused (the session ends), the admin console, or a tenant's
        user authenticated (the session takes over: its first server)."""
        login = self.login
        assert login is not None
        if login.state is LoginState.CLOSED:
            self._close()
        elif login.state is LoginState.ADMIN and self.state is State.LOGIN:
            self._transition(Event.ADMIN_OK)
        elif login.state is LoginState.AUTHENTICATED:
            assert login.logged_in is not None
            self.login = None  # (done with: an idle session holds no login state)
            return self._logged_in(login.logged_in, actions)
        return actions

    def _logged_in(self, who: LoggedIn, actions: list[Action]) -> list[Action]:
        """Event: the login authenticated a tenant's user and accepted its database and startup parameters (its
        answer: `actions`): its limits apply, then the session asks for its first server (ConnectBackend)."""
        self._transition(Event.AUTH_OK)
        assert self.info.user is not None
        user = self.info.user
        self.user_config, self.tenant, self.backend, self.agent = who.user_config, who.tenant, who.backend, who.agent
        self.backend_parameters = who.parameters
        self.end_user = who.end_user
        self.request = self._server_request()
        limited = self._apply_limits(user)
        if self.state is State.CLOSED:  # refused by a limit
            return [*actions, *limited]
        actions += limited
        if self.agent is not None:
            self.request = agent.server_request(self.request, self.agent)
        timeout_ms = self._limited_timeout()
        self.frontend.refuse, self.frontend.small = _REFUSED_TYPES, _SMALL_TYPES
        self.pooled = self.request.mode == "transaction"
        self.routing = replicas.routed(self.config, user)
        if not self.pooled and not statement_settings(self.config)[0]:  # no statement maps: answers owed followed
            self._owed = skipping.Owed()
            self.backend_stream.handlers = self._backend_own()
            if self._limit_inner:  # (the limits' handlers stay the outermost)
                self._limit_stream()
        self.frontend.handlers = self._frontend_tracked()  # (with what the login set up)
        if self._meter is not None:
            self._limit_portals()
        actions.append(ConnectBackend(
            self._login(), self.tenant.name, self.backend, self.tenant.database, self.request,
            self._client_key(), self.end_user, self.agent, timeout_ms,
            self.routing.login() if self.routing is not None else None,
        ))
        return actions

    def _client_key(self) -> tuple[int, bytes]:
        """The cancel key as this client's protocol version has it (3.2: the whole secret)."""
        return client_key((self.process_id, self.secret_key), self.info.protocol_minor)

    def _login(self) -> Login:
        assert self.info.user is not None
        return Login(self.info.user, self.info.application_name, self.info.tls)

    def _server_request(self) -> ServerRequest:
        """What the session asks the pool for (proxy/pooling.py). A server starts with the tenant context,
        client_encoding UTF8 and the idle-in-transaction default only; the client's allowed startup parameters are
        its settings, set on whichever server it gets (`_startup_settings`, replayed as a diff against
        `server.settings`)."""
        assert self.tenant is not None
        request = server_request(self.config, self.tenant.name)
        own = {k.lower() for k in backend_context(self.tenant)} | _SERVER_OWN  # (the client may set the rest)
        self._startup_settings = {k.lower(): set_config_statement(k, v) for k, v in self.backend_parameters.items()
                                  if k.lower() not in own}
        self._plain_routing()
        return request

    def _plain_routing(self) -> None:
        """Whether a routed session's requests are routed by request_route alone (`_route_plain`, read at each resume
        of its kept server): no agent profile, no default_transaction_isolation among its startup settings or
        session SETs (`_route_of`'s other cases). Run wherever those are set: the login, `_settle`."""
        self._route_plain = self.agent is None and replicas.ISOLATION not in self._overrides and (
            replicas.ISOLATION not in self._startup_settings)

    # --- relay -----------------------------------------------------------------------------

    def _relay_from_client(self, data: bytes) -> list[Action]:
        if self._settling:  # the proxy's own Sync is answered first (the server may change: see server_data)
            self._stash += data
            return []
        if self._gate_slot:  # max_concurrent_queries: a request begins, it needs a turn
            return self._wait_for_slot(data, self._relay_from_client)
        if self._held is not None:  # a decision is being made: keep the bytes, in order, for decision_ready
            self._held.after.append(data)
            return []
        if self.revoked is not None:  # a reload removed or moved this user: nothing more reaches the backend
            released = self._close_server(CloseReason.USER_REMOVED)
            self._close()
            return [*released, CloseClient(self.revoked, CloseReason.USER_REMOVED)]
        if self._timed_out is not None:  # statement_timeout: what follows a cancel may run a statement again
            self._fed_since_cancel = True
        watch = self._sequences.foreign  # (the held server may hold another session's sequence state)
        busy = watch and bool(self.tracker.pending)
        chunks = self.frontend.feed(data)
        if self.tracker.dropped:  # past the tracker's bound: no answer may be matched to a request any more
            return self._too_many_in_flight()
        for i, item in enumerate(chunks):
            if isinstance(item, Message):  # only Terminate is held back
                actions: list[Action] = []
                if i and self.server is not None:  # requests in flight: the server is not reusable
                    actions = [RelayToServer(chunks[:i]), *self._give_back(
                        reusable=False, reset=True, reason=CloseReason.CLIENT_TERMINATE)]
                else:  # (a request sent with the goodbye while holding no server is not sent anywhere)
                    actions = self._close_server(CloseReason.CLIENT_TERMINATE)
                self._close()
                return [*actions, CloseClient(None, CloseReason.CLIENT_TERMINATE)]
        if watch and self._sequences.foreign:
            chunks = self._sequences_front(chunks, busy)
        if self._held is not None:  # the stream stopped at a message whose decision is made elsewhere
            if self._admission is not None:  # (or its admission by the planner's estimate, on the server)
                out = [RelayToServer(chunks), *self._statement_answers(), AwaitAdmission(), *self._admission_start()]
            else:
                out = [RelayToServer(chunks), RunDecision(self._held.pending), *self._statement_answers()]
        elif self.statements is not None:
            out = [RelayToServer(chunks), *self._statement_answers()]
        else:
            out = [RelayToServer(chunks)]
        self._sync_wait(out)
        if self.pooled and self._copy_held is not self._copying():
            out.append(self._copy_changed())
        if (self.pooled and self.server is not None and not self.tracker.pending) or self._flushed:
            out += self._idle_after_read()
        return out

    def _too_many_in_flight(self) -> list[Action]:
        """The client has more requests in flight than the tracker follows (tracking._MAX_PENDING): it dropped the
        oldest one's attribution, so the answers to come could be matched against the wrong request (red team 21p
        F1: a ROLLBACK TO PostgreSQL never ran taken as run). The session ends (FATAL 54000) before any answer is
        read; nothing of this read reaches the server, which is closed, not reused (requests still run on it)."""
        released = self._close_server(CloseReason.REQUESTS_IN_FLIGHT, broken=True)
        self._close()
        return [*released, CloseClient(errors.too_many_in_flight(limit=_MAX_PENDING), CloseReason.REQUESTS_IN_FLIGHT)]

    def _idle_after_read(self) -> list[Action]:
        """Transaction pooling, after a client read that PostgreSQL answers with nothing (red team 9s3 R1): CopyData,
        CopyDone or CopyFail outside COPY (PostgreSQL ignores them) left nothing in flight, and a lone Flush opened a
        batch that ran nothing; no server answer would ever come to run the release check, so the server stayed held
        (another tenant got 53300 on a budget of one). The server is idle at 'I': it goes back (or is kept) as at a
        ReadyForQuery; a lone Flush's batch is ended by the proxy's own Sync (_settle_unsynced), as an answered one."""
        if not self.pooled or self.server is None or self.state is not _READY:
            return []
        st = self.statements
        if self._flushed:
            return self._settle_unsynced() if st is not None and st.idle and not self._settling else []
        if (self._tx_status != b"I" or self._settling or self._cancelling or self._cut is not None
                or self._timed_out is not None or self._admission is not None):
            return []
        return [a for a in self._at_idle([]) if not isinstance(a, RelayToClient)]

    def _statement_answers(self) -> list[Action]:
        """The fake answers (to messages the server never saw) whose turn has come."""
        st = self.statements
        fakes = st.take_client() if st is not None else b""
        return [SendClient(fakes)] if fakes else []


    def decision_ready(self, decision: Decision) -> list[Action]:
        """The decision for the held message (RunDecision) arrived: forward the message or what replaces it, then
        go on with the bytes received after it (which may hold again)."""
        held = self._held
        if held is None or self.state not in (_READY, State.IDLE, State.WAITING):
            return []
        if self.revoked is not None:
            return self._revoked_now()
        self._held = None
        if held.type == m.QUERY and (self._runs is not None or self._names is not None):
            decision = self._query_runs(held.sql, decision)
        watch = self._sequences.foreign
        busy = watch and bool(self.tracker.pending)
        if held.type == m.QUERY and self.agent is not None and admission.needs(decision):
            self._admit(m.QUERY, held.body, held.sql, admission.query_request(admission.sent_text(held.sql, decision)),
                        decision, held.open_batch)
            self._held.after = held.after  # type: ignore[union-attr]
            return [AwaitAdmission(), *self._admission_start()]
        if held.type == m.QUERY:
            out = self._query_decided(held.sql, decision)
            if self.statements is not None:
                out = self._statement_query(held.body, out)
        else:
            out = self._parse_decided(held.body, held.token, held.parse, decision)
            if self.statements is not None:
                out = self._statement_parse(held.body, out)
            elif self._names is not None:
                self._names.parse(protocol_name(held.parse.name), self.tracker.pending[-1])
            if self._journal is not None:
                self._tag_journal()
        raw = out if out is not None else m.frame(bytes((held.type,)), held.body)
        if self.state is _READY:
            sent = self._sequences_front([raw], busy) if watch and self._sequences.foreign else [raw]
            return [RelayToServer(sent), *self.client_data(b"".join(held.after))]
        self._waiting.append(raw)
        return self._detached(self.client_data(b"".join(held.after)))

    def _detached_data(self, data: bytes) -> list[Action]:
        """Client bytes while the session holds no server (transaction pooling): kept unread for the server the
        session asks the pool for (the statement maps place a Parse or Bind by what that server has), but for a
        Terminate, which needs no server."""
        if self._gate_slot:
            return self._wait_for_slot(data, self._detached_data)
        if self.statements is None or (data[:1] == b"X" and not self._unread) or self._held is not None:
            return self._detached(self._relay_from_client(data))
        self._unread += data
        if self.state is not State.IDLE or not _whole_first(self._unread, self.frontend.max_length):
            return []  # (a message begun and not complete takes no server: red team 9s F2)
        self._transition(Event.REQUEST)
        return [self._acquire()]

    def _detached(self, actions: list[Action]) -> list[Action]:
        """`actions` of a read while the session holds no server: what is for the server waits for it (bounded: the
        connection does not read the client while the pool is asked), the first of it asks the pool."""
        out: list[Action] = []
        for action in actions:
            if type(action) is RelayToServer:
                self._waiting += [c if type(c) is bytes else bytes(c) for c in action.chunks]
            else:
                out.append(action)
        if self._waiting and self.state is State.IDLE:
            self._transition(Event.REQUEST)
            out.append(self._acquire())
        return out

    def _acquire(self) -> AcquireServer:
        """Ask the pool for a server; a routed session says whether what waits for it provably only reads (an
        agent-profile session's requests always do: the proxy refuses its writes, its servers are read-only)."""
        assert self.request is not None
        if self.routing is None:
            return AcquireServer(self.request)
        data = b"".join([*self._waiting, self._unread]) if self._waiting else self._unread
        self.routing.judged = len(data)
        return AcquireServer(self.request, self._route_of(data))

    def _route_of(self, data: bytes) -> replicas.Route:
        """The Route of the request(s) in `data` (the routing's bookkeeping of it, Routed.route, done)."""
        routing = self.routing
        assert routing is not None
        isolation = self._overrides.get(replicas.ISOLATION) or self._startup_settings.get(replicas.ISOLATION)
        if isolation is not None and replicas.serializable(isolation):  # (a standby refuses SERIALIZABLE ones)
            return routing.route(False)
        if self.agent is not None:
            return routing.route(True)
        return replicas.request_route(routing, data, self.decide, self._statement_of)

    # --- read replicas (proxy/replicas.py) -----------------------------------------------------

    def _statement_text(self, name: str) -> str | None:
        """The SQL text of the client's prepared statement `name` ("": the unnamed one), if the session keeps it."""
        st = self.statements
        s = (st.named.get(name) if name else st.unnamed) if st is not None else None
        return s.sql if s is not None else None

    def _rerouted(self) -> list[Action] | None:
        """A replica lent for a read-only request while the client sent more that may write (a pipelined batch): it
        goes back unused and the primary is asked for, so the batch runs where its least-permissive request may."""
        assert self.routing is not None
        data = b"".join([*self._waiting, self._unread]) if self._waiting else self._unread
        if len(data) == self.routing.judged or replicas.read_only_request(data, self._statement_of):
            return None
        self._transition(Event.SERVER_ATTACHED)
        self._transition(Event.SERVER_RELEASED)
        self._transition(Event.REQUEST)
        return [ReleaseServer(reusable=True, reset=False), self._acquire()]

    def _watch_writes(self, data: bytes) -> None:
        """Client bytes for the primary server held since a request that wrote nothing: whether they may write (a
        read-write transaction that only read is no write for read-your-writes; a read cut across reads counts)."""
        assert self.routing is not None
        self.routing.sent(not replicas.read_only_request(data, self._statement_of, replicas.writes_nothing_sql))

    def _hold(self, type_: int, body: bytes, sql: str, pending: Pending, token: object = None,
              parse: m.Parse | None = None) -> object:
        """Stop at this message until its decision arrives (what the stream handler returns)."""
        self._held = _Held(type_, body, sql, pending, token, parse)
        return HOLD

    def _admin_data(self, data: bytes) -> list[Action]:
        """The admin console: its login reads the queries (proxy/login.py), unless a reload removed the user."""
        if self.revoked is not None:
            self._close()
            return [CloseClient(self.revoked, CloseReason.USER_REMOVED)]
        return self._login_data(data)

    def _gate_query(self, body: bytes) -> object:
        """Apply the policy to a Query: None forwards it as it is, else the bytes to forward in its place (or HOLD
        while its decision is made elsewhere)."""
        try:
            sql = query_text(body)
        except m.InvalidText:
            return self._deny_invalid_text(m.QUERY, body)
        except m.DecodeError as exc:  # PostgreSQL: ERROR 08P01, the session goes on
            self.tracker.on_query("", _MALFORMED)
            return query_message(self._error_marker(errors.malformed_message(str(exc))))
        routing = self.routing
        memo = routing.memo if routing is not None else None
        if memo is not None:  # (the decision the session's routing looked up for this Query: replicas.request_route)
            routing.memo = None  # type: ignore[union-attr]
        decision = memo[1] if memo is not None and memo[0] == sql and memo[2] is self.decide else self.decide(
            "query", sql)
        if self._runs is not None or self._names is not None:
            decision = self._query_runs(sql, decision)
        open_batch = False
        if self.agent is not None:
            open_batch, self._open_batch = self._open_batch, False  # (a Query ends an open batch)
        if type(decision) is Pending:
            held = self._hold(m.QUERY, body, sql, decision)
            self._held.open_batch = open_batch  # type: ignore[union-attr]
            return held
        if self.agent is not None and admission.needs(decision):
            return self._admit(m.QUERY, body, sql, admission.query_request(admission.sent_text(sql, decision)),
                               decision, open_batch)
        return self._query_decided(sql, decision)

    def _query_decided(self, sql: str, decision: Decision) -> bytes | None:
        if type(decision) is Deny and decision.before is not None:  # what runs before a hidden schema's refusal
            self._report("query", sql, decision)
            before = decision.before
            marker = self._deny_marker(replace(decision, before=None))
            decision = Rewrite(f"{before.sql}\n;{_AT_RUN}{marker}", before.rules, before.effects, before.changes,
                               names=before.names, moved=before.moved)
        restored = None
        prepares: list[tuple[int, object]] = []
        if type(decision) is not Deny and decision.changes:
            decision = self._bound_prepares(sql, decision, prepares)
            if type(decision) is not Deny:
                decision = self._bound_settings(decision)
            if type(decision) is not Deny:
                decision = self._bound_held(decision)
            if type(decision) is not Deny and self._startup_settings and resets(decision.changes,
                                                                                 self._startup_settings):
                decision, restored = self._restoring(sql, decision)
        self.tracker.on_query(sql, decision)
        if self._portals and type(decision) is not Deny:
            declared = sql_runs(sql)[2]
            if declared:
                self._declares_sent(declared)
        first, self._results = self._results, 0
        self._binds = 0
        if self._hidden is not None:
            ran = bool(self._hidden.statements) and self._executed_statements(
                sql, sent=decision.sql if type(decision) is Rewrite else None)
            if not ran and not (type(decision) is Rewrite and decision.names):
                self._joined_plain()
        if type(decision) is not Deny and decision.changes:
            self._savepoints_sent(first, tuple((c.at, c.op, c.name) for c in decision.changes))
            if prepares:
                self._prepares_sent(first, prepares)
        if restored is not None and (restored.retagged or restored.swallowed):
            self._retag({first + i: _RESET_TAG for i in restored.retagged} |
                        {first + i: b"" for i in restored.swallowed})
        if type(decision) is Allow:
            if decision.effects:
                self._sequences.ran(decision.effects)
                if DECLARES_CURSOR in decision.effects:
                    self._declared(sql, None, decision)
                if UNSEEN_SCHEMA in decision.effects:  # (a missing schema named: guarded as a hidden one, G3)
                    self._remember_names(decision)
            if decision.changes:
                self._query_changes(first, decision.changes)
                self._forgets_at = _forgets_at(decision.changes, self.statements)
            return None
        self._report("query", sql, decision)
        if isinstance(decision, Rewrite):
            if decision.names or UNSEEN_SCHEMA in decision.effects:
                self._remember_names(decision)
            if decision.effects:
                self._sequences.ran(decision.effects)
            if decision.changes:
                self._query_changes(first, decision.changes)
                self._forgets_at = _forgets_at(decision.changes, self.statements)
            out = decision.sql
            declares = DECLARES_CURSOR in decision.effects
            if SESSION_STATEMENTS in decision.rules:  # reads pg_prepared_statements: the session's own list
                out = render(out, self._listing(sql if declares else None))
            if declares:
                self._declared(out, sql, decision)
            return query_message(out)
        return query_message(self._deny_marker(decision))

    # --- SQL EXECUTE / FETCH / MOVE of a protocol-level statement or portal (proxy/sqlruns.py, rt9a11 C1) ------

    def _query_runs(self, sql: str, decision: Decision) -> Decision:
        """A Query that runs a protocol-level statement or portal by SQL is refused whole (what that statement or
        portal changes in the session would go unfollowed); else `decision`."""
        if type(decision) is Pending or (type(decision) is Deny and decision.before is None):
            return decision  # (a Pending is checked when it is decided: decision_ready)
        refused = self._protocol_refusal(sql_runs(sql))
        return decision if refused is None else refused

    def _protocol_refusal(self, runs: Runs) -> Deny | None:
        """The refusal of a text that runs `runs` by SQL when one of them may be a protocol-level statement (where the
        client's statement names reach the server: session pooling without the statement maps) or portal whose
        decision carries a change or is unknown (one decided without a change runs by SQL: review 19a F2)."""
        statements, portals = runs[0], runs[1]
        names = self._names
        held = self._runs
        if statements and names is not None:
            for name in sorted(statements):
                if names.may_have(name) and (held is None or not held.quiet(name)):
                    return deny("protocol_name_by_sql", f'prepared statement "{name}" was made by a Parse message '
                                "that changes the session's state: SQL EXECUTE does not run it")
        if portals and held is not None:
            for portal in sorted(portals):
                if held.portal(portal):
                    return deny("protocol_name_by_sql", f'portal "{portal.decode("utf-8", "replace")}" was made by '
                                "a Bind message of a statement that changes the session's state: SQL FETCH and MOVE "
                                "do not run it")
        return None

    def _parse_runs(self, name: str, sql: str, decision: Decision) -> Deny | None:
        """A Parse of statement `name` (text `sql`) decided `decision`: whether that carries a change, and what it
        runs by SQL, are held for its Binds; its refusal when it runs a protocol-level statement or portal with
        changes now, or when it has changes and a portal bound earlier runs `name` by SQL EXECUTE."""
        runs = sql_runs(sql)
        held = self._runs
        if held is None:
            held = self._runs = ProtocolRuns()
        quiet = type(decision) is not Deny and not decision.changes
        was = held.decided.get(name)
        if not held.parsed(name, runs, quiet):
            return deny("protocol_name_by_sql", f'prepared statement "{name}": the session has too many prepared '
                        "statements that run others by SQL EXECUTE, FETCH or MOVE")
        if held.decided.get(name) is not was:  # (taken back if PostgreSQL fails or skips the Parse: review 19a F1)
            self._journaled(partial(_restore, held.decided, name, was))
        refused = self._protocol_refusal(runs) if runs is not NOTHING else None
        if refused is None and name and not quiet and self._names is not None and name in held.running[0]:
            refused = deny("protocol_name_by_sql", f'prepared statement "{name}" is run by SQL EXECUTE in a portal '
                           "bound earlier: a statement made by a Parse message that changes the session's state is "
                           "not run by SQL")
        return refused

    def _bind_runs(self, portal: bytes, statement: str) -> Deny | None:
        """A Bind of `statement` to `portal` (its `protocol_key`): a portal of a statement not known to be change-free
        (nor sent with reserved names) is held; its refusal when it would run a protocol-level statement or portal
        with changes by SQL, or when it has changes and a portal bound earlier runs it by SQL FETCH / MOVE."""
        held = self._runs
        if held is None:
            held = self._runs = ProtocolRuns()
        quiet = held.quiet(statement) and (self._hidden is None or statement not in self._hidden.statements)
        runs = held.bind(portal, statement, quiet)
        if runs is None:
            return deny("protocol_name_by_sql", f'portal "{portal.decode("utf-8", "replace")}": the transaction has '
                        "too many portals of statements that change the session's state")
        if runs[2] or (self._declaring_portals and portal in self._declaring_portals):
            self._declaring_portal(portal, runs[2])
        refused = self._protocol_refusal(runs) if runs is not NOTHING else None
        if refused is None and portal and not quiet and portal in held.running[1]:
            refused = deny("protocol_name_by_sql", f'portal "{portal.decode("utf-8", "replace")}" is run by SQL '
                           "FETCH or MOVE in a portal bound earlier: a portal made by a Bind message is not run by SQL")
        return refused

    def _declaring_portal(self, portal: bytes, declared: frozenset[bytes]) -> None:
        """Portal `portal` is bound to a statement that DECLAREs the cursors `declared` (none: no longer) when its
        Execute runs; past _MAX_PORTALS such portals in a transaction, those names are unknown from now on."""
        declaring = self._declaring_portals
        if not declared:
            if declaring:
                declaring.pop(portal, None)
            return
        if declaring is None:
            declaring = self._declaring_portals = {}
        if portal in declaring or len(declaring) < _MAX_PORTALS:
            declaring[portal] = declared
        elif self._portals:
            self._declares_sent(declared, False)

    def _declares_sent(self, declared: frozenset[bytes], awaited: bool = True) -> None:
        """A Query or an Execute that DECLAREs the cursors `declared` is sent: a noted portal of one of those names
        becomes unknown (PostgreSQL fails the DECLARE if it still has the portal, else the cursor takes the name: red
        team 20a F2's `CLOSE c`, `DECLARE c`, `Execute c`); `awaited`: once its request ends without an error, the
        names have no note (the cursor is PostgreSQL's)."""
        portals = self._portals
        taken = [name for name in declared if name in portals]
        if not taken:
            return
        for name in taken:
            portals[name] = _UNKNOWN_PORTAL
        pending = self.tracker.pending
        if awaited and pending:
            if self._declaring is None:
                self._declaring = []
            if len(self._declaring) < _MAX_DECLARING:  # (past it, the names stay unknown: refusing more)
                self._declaring.append((pending[-1], taken))

    def _declares_ended(self, request: object, status: bytes) -> None:
        """Request `request` ended (ReadyForQuery `status`): the names its DECLAREs took have no note if it ended
        without an error (else they stay unknown until bound again or the transaction ends)."""
        declaring = self._declaring
        assert declaring is not None
        kept = []
        for entry in declaring:
            if entry[0] is not request:
                kept.append(entry)
            elif status != b"E":
                portals = self._portals
                for name in entry[1]:
                    if portals.get(name) is _UNKNOWN_PORTAL:
                        del portals[name]
        self._declaring = kept or None

    def _gate_parse(self, body: bytes) -> object:
        """Apply the policy to a Parse (a Parse repeated byte for byte under the same policy reuses its outcome)."""
        memo = self._parse_memo
        token = self._policy_token()
        if memo is not None and memo[1] is token and memo[0] == body and (  # the same Parse again (unnamed, mostly)
                self._parse_runs(memo[2], memo[3], memo[5]) is None) and (  # (else refused: decided below)
                self.agent is None or self._agent_parse(memo[2], memo[3], m.Parse.decode(body).param_types,
                                                        memo[5]) is None):
            _, _, name, sql, kind, decision, out = memo
            self._parse_sent(name)
            self.tracker.on_parse(name, sql, decision, kind)
            if self._prepared_in is not None:
                self._decided_where(name, sql, decision)
            if self._reset_names:
                self._reset_names.discard(name)
            if name and (self._client_texts is not None or self._sql_prepared is not None or out is not None) and \
                    self.statements is None:
                self._client_text(name, sql, out is not None)
            self._sequences.parsed(name, decision.effects)
            if out is not None and self.report_rewrites:  # a memo holds an Allow (out None) or a Rewrite
                self._report("parse", sql, decision)
            if self._hidden is not None or (out is not None and decision.names):  # (guarded by its first decision)
                self._remember_names(decision, name)
            if DECLARES_CURSOR in decision.effects:  # (a memo holds no text rendered with the session's lists)
                self._declared(sql if out is None else decision.sql, None if out is None else sql, decision)
            if self._tracking:  # (a decision with changes is never memoized)
                self._parse_changes(name, ())
            if out is not None and name and self.statements is not None:
                self._parse_shrink = renamed_shrink(decision, sql)
            return out
        try:
            parse = m.Parse.decode(body)
        except m.InvalidText:
            return self._deny_invalid_text(m.PARSE, body)
        except m.DecodeError as exc:  # PostgreSQL: ERROR 08P01, skip to Sync, the session goes on
            self.tracker.on_parse("", "", _MALFORMED)
            marker = self._error_marker(errors.malformed_message(str(exc)))
            return m.Parse(marker, marker, b"\x00\x00").encode()  # named: the unnamed statement stays
        if self.statements is not None and len(body) <= _MAX_MEMO_BODY:  # the statement maps read this decode too
            self._statement_memo = (body, parse)  # (one decode per Parse, its strings held once)
        if parse.param_types != b"\x00\x00" and declares_reg_parameter(parse.param_types):
            decision = _REG_PARAMETER  # its values would be names read and printed without a guard
        else:
            decision = self.decide("parse", parse.sql)
        if type(decision) is Pending:
            return self._hold(m.PARSE, body, parse.sql, decision, token, parse)
        return self._parse_decided(body, token, parse, decision)

    def _parse_decided(self, body: bytes, token: object, parse: m.Parse, decision: Decision) -> bytes | None:
        name = protocol_name(parse.name)  # the records' key of it, the server's (red team 9a5 F5)
        self._parse_sent(name)
        refused = self._parse_runs(name, parse.sql, decision)
        if refused is not None and type(decision) is not Deny:
            decision = refused
        if self._reset_names:
            self._reset_names.discard(name)
        if type(decision) is not Deny and decision.changes:
            decision = self._bound_prepares(parse.sql, decision)
            if type(decision) is not Deny:  # (its addition counts from its Parse on: refused here, not only at Bind)
                decision = self._bound_held(decision, True)
            if type(decision) is not Deny and self._startup_settings and resets(decision.changes,
                                                                                 self._startup_settings):
                decision, restored = self._restoring(parse.sql, decision, extended=True)
                if restored is not None and restored.retagged:
                    if not self._reset_names:
                        self._reset_names = set()
                    self._reset_names.add(name)
        kind = statement_kind(parse.sql)
        self.tracker.on_parse(name, parse.sql, decision, kind)
        if self._prepared_in is not None:
            self._decided_where(name, parse.sql, decision)
        if type(decision) is not Deny and decision.changes and any(c.op in SAVEPOINT_OPS for c in decision.changes):
            self._subxact_noted(name, tuple((c.op, c.name) for c in decision.changes if c.op in SAVEPOINT_OPS))
        elif self._subxact_statements:
            self._subxact_statements.pop(name, None)
        if self.agent is not None:
            refused = self._agent_parse(name, parse.sql, parse.param_types, decision)
            if refused is not None:
                if self._tracking:
                    self._parse_changes(name, ())
                return m.Parse(parse.name, self._error_marker(refused), parse.param_types).encode()
        memo = len(body) <= _MAX_MEMO_BODY
        if type(decision) is Allow:
            if (self._client_texts is not None or self._sql_prepared is not None) and name and \
                    self.statements is None:
                self._client_text(name, parse.sql, False)
            if DECLARES_CURSOR in decision.effects:
                self._declared(parse.sql, None, decision)
            if self._hidden is not None or UNSEEN_SCHEMA in decision.effects:  # (earlier reserved names go: 9a2 H2)
                self._remember_names(decision, name)
                if self._hidden.statements:
                    self._executed_statements(parse.sql, name)
            self._parsed(body, token, name, parse.sql, kind, decision, None, memo)
            return None
        self._report("parse", parse.sql, decision)
        if self._hidden is not None or (isinstance(decision, Rewrite) and (
                decision.names or UNSEEN_SCHEMA in decision.effects)):
            self._remember_names(decision, name)
        if isinstance(decision, Rewrite):
            sql = decision.sql
            if name and self.statements is None:
                self._client_text(name, parse.sql, True)
            if SESSION_STATEMENTS in decision.rules:  # reads pg_prepared_statements: see `_statement_parse`
                memo = False
                if self.statements is None:
                    sql = render(sql, self._listing(parse.sql if DECLARES_CURSOR in decision.effects else None))
                else:
                    self._live = True
            if DECLARES_CURSOR in decision.effects:
                self._declared(sql, parse.sql, decision)
            out = m.Parse(parse.name, sql, parse.param_types).encode()
            self._parsed(body, token, name, parse.sql, kind, decision, out, memo)
            if name and self.statements is not None:
                self._parse_shrink = renamed_shrink(decision, parse.sql)
            return out
        if self._tracking:
            self._parse_changes(name, ())
        if decision.statement is not None and as_missing(decision):  # PostgreSQL's Parse refuses several first
            return m.Parse(parse.name, self._error_marker(errors.multiple_commands()), parse.param_types).encode()
        if decision.at_run:
            return self._denied_at_run(parse, decision)
        return m.Parse(parse.name, self._deny_marker(decision), parse.param_types).encode()

    def _parse_sent(self, name: str) -> None:
        """A Parse of statement `name` is sent: the name is known again, unless PostgreSQL skips or fails it."""
        if self._unknown is not None:
            self._unknown.sent(name)
        if self._forgotten is not None:
            self._forgotten.sent(name)
        self._journaled(self._flight(Flight(name, self._lost_name), True))

    def _flight(self, flight: Flight, parse: bool) -> Flight:
        """`flight`, the journal step of a Parse (`parse`) or Close of a statement name (called if it is skipped or
        fails), followed while in flight (`Flights`: a Bind in a later batch before it is answered, red team 9a12)."""
        flights = self._flights
        if flights is None:
            flights = self._flights = Flights()
        flights.sent(flight, self._syncs, parse)
        return flight

    def _lost_name(self, name: str) -> None:
        """A Parse or Close of statement `name` was skipped or failed: PostgreSQL may have an older statement under
        it than the one recorded (review 19a F1): its Binds are refused until it is Parsed again."""
        unknown = self._unknown
        if unknown is None:
            unknown = self._unknown = UnknownNames()
        unknown.lost(name)

    def _subxact_noted(self, name: str, ops: tuple[tuple[str, str], ...]) -> None:
        """Prepared statement `name` sets, releases or rolls back to savepoints (`ops`): remembered for its Binds.
        Past _MAX_SUBXACT_STATEMENTS the oldest is forgotten and its name becomes unknown: its Binds are refused until
        it is Parsed again (issue 18: run unfollowed, its SAVEPOINTs went past [pool] max_session_savepoints)."""
        held = self._subxact_statements
        if name not in held and len(held) >= _MAX_SUBXACT_STATEMENTS:
            oldest = next(iter(held))
            del held[oldest]
            self._open_portals.followed = False  # (then no ROLLBACK TO frees a portal: it may not be the one sent)
            if self._forgotten is None:
                self._forgotten = UnknownNames()
            self._forgotten.lost(oldest)
        held[name] = ops

    def _close_lost(self, flight: ClosedFlight) -> None:
        """A Close of a statement name that PostgreSQL skipped (or failed): it keeps the statement it had, the one the
        records the Close took were of (`flight.records`: put back; None: the records go at CloseComplete, none
        were taken) — unless a Parse or Close of the name was sent since: then PostgreSQL's statement is not provably
        that one, the name is unknown (review 19a F1)."""
        name = flight.name
        assert isinstance(name, str)
        if self._flights is None or not self._flights.latest_is(flight):
            self._lost_name(name)
            return
        if flight.records is None:
            return
        kept, changes, decided, text, subxact = flight.records  # type: ignore[misc]
        if subxact is not None:
            self._subxact_noted(name, subxact)
        if kept is not None:
            self.tracker.on_close_undone(name, kept)
        if changes is _LOST_RECORD:
            self.context.lose(name)
        elif changes is not None:
            self.context.parse(name, changes)
            self._context_changed()
        if decided is not None and self._prepared_in is not None:
            self._prepared_in.parsed(name, *decided)
        if text is not None and self._client_texts is not None:
            self._client_texts.parse(name, *text)

    def _decided_where(self, name: str, sql: str, decision: Decision) -> None:
        """Statement `name` (text `sql`) was decided now: in what context, for its Binds (red team 9a9 R1)."""
        assert self._prepared_in is not None
        decide = self.decide
        key_for = getattr(decide, "policy_for", None)
        key = key_for(sql) if key_for is not None else self._policy_token()
        self._prepared_in.parsed(name, decide, key, sql, sent_text(decision), self._decisive)

    def _bound_elsewhere(self, statement: str) -> PgError | None:
        """A Bind of `statement` in a context other than its Parse's: None when its text is decided alike now."""
        assert self._prepared_in is not None
        decide = self.decide
        key_for = getattr(decide, "policy_for", None)
        return self._prepared_in.bound(statement, decide,
                                       key_for if key_for is not None else lambda _sql: self._policy_token(),
                                       partial(decide, "parse"), self._decisive)

    def _bound_moved(self, statement: str) -> PgError | None:
        """A Bind of `statement` whose names PostgreSQL may resolve otherwise than when it was decided: a SQL
        PREPAREd one not prepared since the last change of name resolution (`SessionContext.reprepare`, as a SQL
        EXECUTE of it; rt9a10 A1: a protocol Bind of it was not checked), or any decided in another context than the
        transaction's start while a rollback or transaction end is not yet answered (rt9a10 A2)."""
        state = self.context
        belief = state.belief
        if (belief.reprepare is not None and statement in belief.prepared and statement not in belief.reprepare
                and statement not in belief.steady):
            return errors.prepared_in_other_context(
                statement=_statement_words(statement),
                change="a temporary relation was made or dropped or the search_path changed")
        if self._prepared_in is None or not state.requests or not state.ending():
            return None
        found = self._prepared_in.records.get(statement)
        if found is None:
            return None
        _, _, sql, sent, _ = found
        gate = getattr(self.decide, "gate", self.decide)
        with_context = getattr(gate, "with_context", None)
        # Where the rollback may take the session back to: the transaction's start, a savepoint's context. The text
        # decided there must send what was sent (else PostgreSQL, analysing it again there, runs what was not).
        for target in state.rollback_targets():
            if with_context is None or sent_text(with_context(target.for_decisions())("parse", sql)) != sent:
                return errors.prepared_in_other_context(
                    statement=_statement_words(statement),
                    change="a rollback or a transaction's end was sent, not yet answered")
        return None

    def _denied_at_run(self, parse: m.Parse, decision: Deny) -> bytes:
        """A statement PostgreSQL analyzes only when it runs, naming a hidden schema: its Parse succeeds and each run
        fails (CLOSE of a cursor named by the marker), as PostgreSQL answers a missing schema (`Deny.at_run`)."""
        if parse.name and self.statements is None:
            self._client_text(protocol_name(parse.name), parse.sql, True)
        return m.Parse(parse.name, _AT_RUN + self._deny_marker(decision), parse.param_types).encode()

    def _parsed(self, body: bytes, token: object, name: str, sql: str, kind: str, decision: Allow | Rewrite,
                out: bytes | None, memo: bool = True) -> None:
        """Memoize an allowed or rewritten Parse (if `memo`: not too long), unless it changes the session (then
        follow that)."""
        self._sequences.parsed(name, decision.effects)
        changes = decision.changes
        if changes:
            self._parse_changes(name, changes)
            self._forgets_at = _forgets_at(changes, self.statements)
            return
        self._parse_memo = (body, token, name, sql, kind, decision, out) if memo else None
        if self._tracking:
            self._parse_changes(name, ())

    # --- the bounds on the settings a session keeps (proxy/settingbounds.py) ----------------------------------

    def _bound_settings(self, decision: Allow | Rewrite) -> Decision:
        """A statement setting session settings: refused (54000, rule session_settings_limit) when the session would
        keep more of them than [pool] max_session_settings / max_session_setting_bytes (the proxy holds each and
        sets it again on every server it hands the session: red team 9s7 S1)."""
        added = setting_entries(decision.changes)
        if not added:
            return decision
        pool = self.config.pool
        denied = settings_refusal(self._kept_sizes(), self._startup_settings, self.context.belief.settings, added,
                                  pool.max_session_settings, pool.max_session_setting_bytes)
        return decision if denied is None else denied

    def _kept_sizes(self) -> dict[str, int]:
        """The sizes of the settings the session keeps (worked out again only when they changed)."""
        cached = self._override_sizes
        if cached is None or cached[0] is not self._overrides:
            cached = self._override_sizes = (self._overrides, setting_sizes(self._overrides))
        return cached[1]

    def _bound_settings_bind(self, statement: str) -> Deny | None:
        """A Bind of a prepared statement that sets session settings: the denial when running it would take the
        session past its bounds (see `_bound_settings`), counting the SETs of the portals bound and not yet run."""
        statements = self.context.statements
        changes = statements.get(statement)
        if not changes:
            return None
        added = setting_entries(changes)
        if not added:
            return None
        pending = [e for noted in self._portals.values() if noted[2] for e in setting_entries(noted[2], True)]
        pool = self.config.pool
        return settings_refusal(self._kept_sizes(), self._startup_settings, (*self.context.belief.settings, *pending),
                                added, pool.max_session_settings, pool.max_session_setting_bytes)

    # --- the bounds on held cursors, LISTEN channels and savepoints (proxy/heldbounds.py) ---------------------

    def _bound_held(self, decision: Allow | Rewrite, parse: bool = False) -> Decision:
        """A string (or a Parse) declaring WITH HOLD cursors, listening or setting savepoints: refused (54000) when it
        would take the session past [pool] max_session_cursors / max_session_listens / max_session_savepoints (the
        proxy follows each one: red team 9s8 F4, 40,000 of them cost seconds of the event loop every session shares).
        A Parse is counted against the belief, which holds what the Parses before it added (review 19b F3: 20,000
        Parses without a Sync, none bound, grew it past the bound checked only at Bind)."""
        changes = tuple((c.op, c.name) for c in decision.changes)
        if any(c.op in HELD_ADDING for c in decision.changes):
            denied = self._held_refusal(changes, ())
            if denied is not None:
                return denied
        if parse:  # (a Parse opens and closes nothing: its Bind counts, its Execute frees, review 20 F1/F3)
            return decision
        level = 0 if self._subxacts is None or any(op in SAVEPOINT_OPS for op, _ in changes) else self._subxacts.top()
        denied = self._open_portals.changes(changes, self.context.belief.cursors, self.config.pool.max_session_portals,
                                            level=level)  # (0: kept to the end, after a savepoint op in the string)
        return decision if denied is None else denied

    def _bound_held_bind(self, statement: str) -> Deny | None:
        """A Bind of a prepared statement that declares a WITH HOLD cursor, listens or sets a savepoint: the denial
        when running it would take the session past its bounds (see `_bound_held`), counting the portals bound and
        not yet run."""
        changes = self.context.statements.get(statement) if self._tracking else None
        subxact = self._subxact_statements.get(statement) if self._subxact_statements else None
        ops = [(c.op, c.name) for c in changes or ()] if not subxact else list(subxact)
        if not any(op in HELD_ADDING for op, _ in ops):
            return None
        pending: list[tuple[str, str]] = []
        for noted_subxact, _, noted in self._portals.values():
            if noted_subxact:
                pending += noted_subxact
            elif noted:
                pending += ((c.op, c.name) for c in noted)
        return self._held_refusal(tuple(ops), tuple(pending))

    def _bound_open(self, statement: str, body: bytes) -> Deny | None:
        """A Bind: refused when its portal, or the cursor its prepared DECLARE opens (again, once closed), would take
        the session past [pool] max_session_portals (red team 20s M0: each open portal keeps its executor state on
        the server, ~24 KB, 9.5 GB at 400,000 from one login; M1: a sort each)."""
        changes = self.context.statements.get(statement) if self._tracking else None
        if not changes and body[:1] == b"\x00" and not self._open_portals.closers:  # (the usual Bind: the unnamed
            return None  # portal, never counted, opening nothing, no Execute of it to free at)
        held, limit = self.context.belief.cursors, self.config.pool.max_session_portals
        level = self._subxacts.top() if self._subxacts is not None else 0  # (F2: a ROLLBACK TO drops it)
        if changes and any(c.op in PORTAL_OPENING for c in changes):
            denied = self._open_portals.changes(((c.op, c.name) for c in changes), held, limit, False, level)
            if denied is not None:
                return denied
        portal = protocol_name(bytes(body[:body.index(b"\x00")]).decode("utf-8", "replace"))
        denied = self._open_portals.bind(portal, held, limit, level)
        if denied is None and (changes or self._open_portals.closers):
            self._open_portals.bound(portal, ((c.op, c.name) for c in changes or ()))  # (its Execute frees: F1)
        return denied

    def _open_refusal(self, statement: str, denied: Deny) -> str:
        """The marker a Bind refused past max_session_portals is sent under: one per batch, reported once.
        PostgreSQL fails the first and skips the rest of the batch to its Sync; a marker each (25,000 Binds in a
        batch) pushed the first one's error, the one that comes, out of the bounded denials: the client got
        26000 "prepared statement ... does not exist", and the proxy spent a report per Bind."""
        last = self._open_portals.refused
        if last is not None and last[0] == self._syncs:
            return last[1]
        self._report("bind", statement, denied)
        marker = self._deny_marker(denied)
        self._open_portals.refused = (self._syncs, marker)
        return marker

    def _held_refusal(self, ops: tuple[tuple[str, str], ...], pending: tuple[tuple[str, str], ...]) -> Deny | None:
        belief = self.context.belief
        stack = self._subxacts.belief if self._subxacts is not None else ()
        pool = self.config.pool
        return held_refusal(belief.cursors, belief.listening, stack, (*pending, *ops), pool.max_session_cursors,
                            pool.max_session_listens, pool.max_session_savepoints)

    # --- RESET of a startup setting (proxy/resets.py) --------------------------------------------------------

    def _restoring(self, sql: str, decision: Allow | Rewrite, extended: bool = False) -> tuple[Decision,
                                                                                            Restoring | None]:
        """A statement resetting some of the client's startup settings: PostgreSQL gets the SETs of the startup
        values instead (it would reset them to its server's own), so that the client sees them at once, also inside
        its transaction; the session's records take them as set (the server has them)."""
        text = decision.sql if type(decision) is Rewrite else sql
        restored = restoring(text, decision.changes, self._startup_settings, extended=extended)
        if restored is None:
            return decision, None
        rules = decision.rules if type(decision) is Rewrite else ()
        return Rewrite(restored.sql, rules, decision.effects, restored.changes), restored

    def _retag(self, tags: dict[int, bytes]) -> None:
        """The CommandCompletes of the request just sent (by position) the client gets otherwise (b"": none)."""
        pending = self.tracker.pending
        request = pending[-1] if pending else None
        if self._retags and self._retags[-1][0] is request:
            self._retags[-1][1].update(tags)
            return
        if not self._retags:
            self._retags = []
        self._retags.append((request, tags))

    def _retagged(self) -> bytes | None:
        """What the client gets for the CommandComplete arriving (None: the server's)."""
        pending = self.tracker.pending
        request = pending[0] if pending else None
        for of, tags in self._retags:
            if of is request:
                return tags.get(self._done)
        return None

    # --- the agent profile: admission by the planner's estimate (proxy/admission.py) ----------------------------

    def _agent_parse(self, name: str, sql: str, param_types: bytes, decision: Decision) -> PgError | None:
        """An agent's Parse: its Binds are admitted by their estimate when its statement runs a query (the texts
        kept for that are bounded by [pool] max_session_statements and max_session_statement_bytes: past them the
        Parse fails, as one past PostgreSQL's memory would)."""
        self._open_batch = True
        statements = self._agent_statements
        old = statements.pop(name, None)
        if old is not None:
            self._agent_bytes -= len(old[0])
        if not admission.needs(decision):
            return None
        text = admission.sent_text(sql, decision)
        limit, max_bytes, _ = session_statement_limits(self.config)
        if len(statements) >= limit:
            return errors.session_statements_limit(name=name, key="max_session_statements", limit=limit)
        if self._agent_bytes + len(text) > max_bytes:
            return errors.session_statements_limit(name=name, key="max_session_statement_bytes", limit=max_bytes)
        statements[name] = (text, param_types)
        self._agent_bytes += len(text)
        return None

    def _agent_close(self, name: str) -> None:
        """A Close of an agent's statement the statement maps answer (transaction pooling): its admission text goes
        only once its request ended without an error. After an error earlier in the batch the Close was skipped and
        the statement stays (the maps keep it): its Binds must still be admitted."""
        record = self._agent_statements.get(name)
        if record is None:
            return
        if not self._agent_closing:
            self._agent_closing = []
        elif len(self._agent_closing) >= _MAX_AGENT_CLOSES:  # (kept longer: its next Bind is admitted, harmless)
            del self._agent_closing[0]
        self._agent_closing.append([name, record, None])

    def _agent_closes_sent(self) -> None:
        """A Sync: the Closes since the last one are in its request."""
        request = self.tracker.pending[-1] if self.tracker.pending else None
        for entry in self._agent_closing:
            if entry[2] is None:
                entry[2] = request

    def _agent_closes_ended(self, request: object) -> None:
        """`request` ended: the admission texts its Closes closed go if it ended without an error."""
        kept = []
        for entry in self._agent_closing:
            name, record, of = entry
            if of is not request:
                kept.append(entry)
            elif request.outcome == "ok" and self._agent_statements.get(name) is record:  # type: ignore[attr-defined]
                del self._agent_statements[name]
                self._agent_bytes -= len(record[0])
        self._agent_closing = kept if kept else _NO_CLOSES  # type: ignore[assignment]

    def _admit(self, type_: int, body: bytes, sql: str, request: bytes, decision: Decision | None = None,
               open_batch: bool | None = None) -> object:
        """Hold a Query or Bind until the proxy's EXPLAIN of its statement has answered (a stream handler's HOLD)."""
        self._held = _Held(type_, body, sql, _ADMISSION)
        batch = self._open_batch if open_batch is None else open_batch
        self._admission = admission.Admission(request, decision, open_batch=batch)
        return HOLD

    def _admission_start(self) -> list[Action]:
        """Send the held statement's EXPLAIN once the server has answered every request before it (the rest of an
        open batch aside: a Sync ends it first)."""
        adm = self._admission
        if adm is None or adm.sent:
            return []
        if self.state is State.IDLE and self.request is not None:  # transaction pooling: the EXPLAIN needs a server
            self._transition(Event.REQUEST)
            return [self._acquire()]
        if self.server is None or self.state is not _READY or self._replaying or len(self.tracker.pending) > (
                adm.open_batch):
            return []
        return [RelayToServer([adm.start(self.clock())])]

    def _admission_data(self, data: bytes) -> list[Action]:
        """Server bytes while a statement is held for its admission: the answers before its EXPLAIN are relayed,
        the EXPLAIN's are read; then the statement goes on (or is refused)."""
        adm = self._admission
        assert adm is not None
        if not adm.sent:
            return self._relay_server(data) + self._admission_start()
        try:
            client, done, rest = adm.feed(data)
        except m.DecodeError as exc:
            return self._end_with_server(errors.protocol_violation(f"backend: {exc}"), CloseReason.BACKEND_FRAMING)
        actions = self._relay_server(client) if client else []
        if not done:
            return actions
        self._admission = None
        if self.revoked is not None:  # (a reload revoked the user meanwhile: the statement is not sent)
            return actions + self._revoked_now()
        actions += self._admitted(adm)
        if rest:
            actions += self.server_data(rest)
        return actions

    def _estimates_own(self) -> bool:
        """Whether the planner's estimates of the tenant's statements count its own rows only (an admission refusal
        may then print them): not `TenantPolicy.estimates_shared` (the shared strategy, a database tenant whose
        database others share: red team 9a7 H2); without a policy, by the config alike."""
        if self.tenant is None:
            return False
        policy = self._policy_token()
        if isinstance(policy, TenantPolicy):
            return not policy.estimates_shared
        return self.tenant.strategy == "database" and not shares_database(self.config, self.tenant)

    def _admitted(self, adm: admission.Admission) -> list[Action]:
        """The held statement's EXPLAIN answered: forward it, or its refusal in its place (an EXPLAIN that failed is
        the statement's own error: it would have failed the same way)."""
        held = self._held
        assert held is not None and self.agent is not None
        self._held = None
        refusal: PgError | None = None
        found: admission.Estimate | None = None
        if adm.too_large:  # (its plan or error was dropped unread: red team 9a8 N0)
            refusal = errors.admission_too_large(limit=admission.MAX_ANSWER)
        elif adm.error is not None:
            sent = self._admission_names(adm, held)
            if sent:  # the statement named a hidden schema: its error names the client's
                hiddennames.fields_back(adm.error, sent, held.sql.lower())
            if sent or self._hidden is not None:  # (the last line: no reserved name sent reaches the client)
                refusal = self._admission_withheld(adm.error, sent)
            if refusal is None:
                refusal = errors.admission_failed(adm.error, len(admission.EXPLAIN_PREFIX))
        elif adm.plan is not None:
            try:
                found = admission.estimate(adm.plan)
            except (ValueError, KeyError, IndexError, TypeError):
                refusal = errors.admission_failed({"C": errors.INTERNAL_ERROR, "M": "unreadable plan"}, 0)
            else:
                denied = admission.verdict(found, self.agent, self._estimates_own() and
                                           not admission.reads_catalogs(adm.plan))
                if denied is not None:
                    self._report("admission", held.sql, denied)
                    refusal = errors.policy_denied(denied)
        outcome = ("failed" if adm.error is not None and not adm.too_large else "refused" if refusal is not None
                   else "admitted")
        actions: list[Action] = [AgentAdmission(held.sql, outcome, found.cost if found else None,
                                                found.rows if found else None, self.agent.max_rows,
                                                self.clock() - adm.started)]
        if held.type == m.QUERY:
            assert adm.decision is not None
            if refusal is None:
                out = self._query_decided(held.sql, adm.decision)
            else:
                self.tracker.on_query(held.sql, adm.decision)
                self._binds = self._results = 0
                out = query_message(self._error_marker(refusal))
            if self.statements is not None:
                out = self._statement_query(held.body, out)
            raw = out if out is not None else m.frame(b"Q", held.body)
        else:
            self._released, self._bind_refusal = held.body, None if adm.batch_failed else refusal
            out = self.frontend.handlers[m.BIND](held.body)
            raw = out if type(out) is bytes else m.frame(b"B", held.body)
            if adm.batch_failed:  # a statement that fails ahead of it: the server skips the rest of the batch, as it
                marker = self._error_marker(_SWALLOWED)  # would have (that error is the proxy's, not relayed)
                raw = m.Parse(marker, marker, b"\x00\x00").encode() + raw
        return [*actions, RelayToServer([raw]), *self.client_data(b"".join(held.after))]

    # --- the session's context (proxy/sessionstate.py) ---------------------------------------------

    def _query_changes(self, first: int, changes: tuple[Change, ...]) -> None:
        pending = self.tracker.pending
        self.context.query(pending[-1] if pending else None, first, changes)
        self._context_changed()
        if self._names is not None:
            self._names_deallocated(changes)

    def _parse_changes(self, name: str, changes: tuple[Change, ...]) -> None:
        self.context.parse(name, changes)
        self._context_changed()
        if changes and self._prepared_in is not None:  # its own changes are not a change its Bind must check
            decide = self.decide
            key_for = getattr(decide, "policy_for", None)
            self._prepared_in.settled(name, decide, key_for if key_for is not None else lambda _s: self._policy_token(),
                                      self._decisive)
        if changes and self._names is not None:  # (run in its request: its DEALLOCATE's answer comes in it)
            self._names_deallocated(changes)

    def _context_changed(self) -> None:
        """Follow the context while it is not idle, and decide in what it now is (what decisions depend on)."""
        self._tracking = not self.context.idle
        belief = self.context.belief
        if belief is not self._decided_in:
            decisive = belief.for_decisions()
            self._decided_in = belief
            if self._contextual is not None and decisive != self._decisive:
                self._decisive = decisive
                decide = self._contextual(decisive)
                self.decide = decide
                self._policy_token = decide.current  # type: ignore[attr-defined]

    def _gate_function_call(self, body: bytes) -> bytes:
        """FunctionCall invokes any function by OID, around every SQL-level check: never allowed."""
        decision = deny("function_call_message", "the FunctionCall protocol message is not allowed through pgtenant")
        self.tracker.on_function_call(decision)
        self._report("function_call", "", decision)
        return query_message(self._deny_marker(decision))

    def _deny_invalid_text(self, type_: int, body: bytes) -> bytes:
        """PostgreSQL answers invalid UTF-8 with 22021 and keeps the session; so do we (the text is never
        forwarded)."""
        decision = deny("invalid_utf8", 'invalid byte sequence for encoding "UTF8"')
        if type_ == m.QUERY:
            self.tracker.on_query("", decision)
            return query_message(self._deny_marker(decision))
        name = m.parse_name(body)
        self.tracker.on_parse(protocol_name(name), "", decision)
        return m.Parse(name, self._deny_marker(decision), b"\x00\x00").encode()

    def _report(self, kind: str, sql: str, decision: Decision) -> None:
        """Tell `on_decision` of a denial, and of a rewrite when `report_rewrites` is set (debug logging)."""
        if self.on_decision is not None and (self.report_rewrites or type(decision) is not Rewrite):
            self.on_decision(kind, sql, decision)

    def _deny_marker(self, decision: Decision) -> str:
        assert isinstance(decision, Deny)
        return self._error_marker(errors.policy_denied(decision))

    def _error_marker(self, err: PgError) -> str:
        """A statement that fails in the backend where the original would have; its error is replaced by `err`."""
        marker = "pgtenant_denied_" + secrets.token_hex(8)
        denials = self._denials
        self._denial_bytes += _denial_size(err.message)
        while denials and (len(denials) >= _MAX_PENDING_DENIALS or self._denial_bytes > _MAX_DENIAL_BYTES):
            self._denial_bytes -= _denial_size(denials.pop(next(iter(denials))).message)
        denials[marker.encode()] = err
        return marker

    # --- per-message handlers (the frontend and backend streams call them with the message body) ------

    def _on_bind(self, body: bytes) -> object:
        statement = bind_statement(body)
        if statement:
            statement = protocol_name(statement)
        if self.agent is not None and self._released is not body:
            found = self._agent_statements.get(statement or "")
            if found is not None:
                try:
                    request = admission.bind_request(found[0], found[1], body)
                except (ValueError, struct.error) as exc:  # its parameters cannot be read: refused, not run
                    self._released, self._bind_refusal = body, errors.malformed_message(f"malformed Bind: {exc}")
                else:
                    return self._admit(m.BIND, body, found[0], request)
            self._open_batch = True
        out = None
        if statement is not None:
            self.tracker.on_bind(statement)
            if (self._unknown is not None and self._unknown.unknown(statement)) or (  # (review 19a F1)
                    self._flights is not None and self._flights.bind_unsafe(
                        statement, self._syncs, self._names is not None and statement in self._names.confirmed)):
                out = m.bind_renamed(body, self._error_marker(errors.statement_not_known(name=statement)))
            elif self._forgotten is not None and self._forgotten.unknown(statement):  # (issue 18)
                out = m.bind_renamed(body, self._error_marker(errors.savepoint_statement_forgotten(
                    name=statement, limit=_MAX_SUBXACT_STATEMENTS)))
            elif self.context.lost_bind(statement):  # its changes are not remembered: never run unfollowed (rt21p F3)
                out = m.bind_renamed(body, self._error_marker(errors.statement_not_followed(
                    name=statement, limit=self.context.max_statements)))
            if body[:1] != b"\x00" or (self._runs is not None and self._runs.statements) or self._declaring_portals:
                # (a named portal, statements that run by SQL, or portals that DECLARE: else the unnamed portal's
                # Bind runs nothing by SQL and is never held, _bind_runs' None)
                denied = self._bind_runs(protocol_key(body[:body.index(b"\x00")]), statement)
                if denied is not None:  # the backend fails to find the marker statement; its error becomes ours
                    self._report("bind", statement, denied)
                    out = m.bind_renamed(body, self._deny_marker(denied))
            if out is None and self._prepared_in is not None and self._prepared_in.records:
                refused = self._bound_elsewhere(statement)
                if refused is not None:  # the backend fails to find the marker statement; its error becomes ours
                    out = m.bind_renamed(body, self._error_marker(refused))
            if out is None:
                refused = self._bound_moved(statement)
                if refused is not None:
                    out = m.bind_renamed(body, self._error_marker(refused))
            if self._hidden is not None:
                self._bound_names(statement, body)
            self._sequences.bound(statement)
            if self._tracking or self._subxact_statements:
                denied = self.context.bind(statement) if self._tracking else None
                if denied is None and self._tracking:
                    denied = self._bound_settings_bind(statement)
                if denied is None:
                    denied = self._bound_held_bind(statement)
                if denied is not None:  # the backend fails to find the marker statement; its error becomes ours
                    self._report("bind", statement, denied)
                    out = m.bind_renamed(body, self._deny_marker(denied))
            if out is None:
                denied = self._bound_open(statement, body)
                if denied is not None:  # (red team 20s M0: each open portal keeps its executor state on the server)
                    out = m.bind_renamed(body, self._open_refusal(statement, denied))
            if out is None and ((self._subxact_statements and statement in self._subxact_statements) or
                                (self._reset_names and statement in self._reset_names) or
                                (self._tracking and statement in self.context.statements)):
                refusal = self._bound_portal(body, statement)
                if refusal is not None:
                    out = m.bind_renamed(body, self._error_marker(refusal))
            elif self._portals:  # (any Bind of the name replaces PostgreSQL's portal: its note goes, red team 20a F2)
                self._portal_noted(protocol_key(body[:body.index(b"\x00")]), None)
        if self._released is body:
            self._released = None
            if self._bind_refusal is not None:  # the backend fails to find the marker statement: our refusal
                out = m.bind_renamed(body, self._error_marker(self._bind_refusal))
                self._bind_refusal = None
        self._binds += 1
        return out

    def _bound_portal(self, body: bytes, statement: str) -> PgError | None:
        """A Bind of `statement`, whose running the session follows by its position: noted for its portal's Execute
        (what a request's k-th CommandComplete answers is its k-th Execute, not its k-th Bind). Never forgotten
        while its transaction lasts (review 17 F1: an evicted or overwritten note let a temporary table or a SET run
        unrecorded, the server given back reusable with it): past _MAX_PORTALS noted portals, or a named portal
        noted already (PostgreSQL refuses it, 42P03, unless a ROLLBACK TO dropped it), the Bind is refused."""
        portals = self._portals
        name = protocol_key(body[:body.index(b"\x00")])
        if name and portals.get(name, _UNKNOWN_PORTAL) is not _UNKNOWN_PORTAL:  # (an unknown one: PostgreSQL judges)
            return errors.portal_noted(name=name.decode(errors="replace"))
        if name not in portals and len(portals) >= _MAX_PORTALS:
            return errors.too_many_noted_portals(limit=_MAX_PORTALS)
        self._portal_noted(name, (self._subxact_statements.get(statement) if self._subxact_statements else None,
                                  bool(self._reset_names and statement in self._reset_names),
                                  self.context.statements.get(statement)))
        return None

    def _portal_noted(self, name: bytes, noted: NotedPortal | None) -> None:
        """Portal `name`'s note becomes `noted` (None: it has none) as the Bind, Execute or Close P being handled is
        sent; taken back if PostgreSQL fails or skips that message, whose portal then stays as it was (red team 20a
        F1/F2: the notes follow PostgreSQL's portals, not the client's messages)."""
        portals = self._portals
        if noted is None:
            old = portals.pop(name, None) if portals else None
            if old is None:
                return
        else:
            if portals is _NO_PORTALS:
                portals = self._portals = {}
            old = portals.get(name)
            portals[name] = noted
        self._journaled(partial(self._portal_back, name, old))

    def _portal_back(self, name: bytes, old: NotedPortal | None) -> None:
        """A journal step: portal `name`'s note as it was before a message PostgreSQL failed or skipped."""
        portals = self._portals
        if old is None:
            if portals:
                portals.pop(name, None)
            return
        if portals is _NO_PORTALS:
            portals = self._portals = {}
        portals[name] = old

    def _executed(self, noted: NotedPortal) -> None:
        """The Execute of a portal noted by `_bound_portal` (what its statement was when it was bound): statement
        `_results` of its request, followed to its CommandComplete (savepoints, a RESET's tag, the session's
        context)."""
        position = self._results
        subxact, reset, changes = noted
        if subxact:
            self._savepoints_sent(position, tuple((0, op, name) for op, name in subxact))
        if reset:  # a RESET sent as a SET: its tag is RESET
            self._retag({position: _RESET_TAG})
        if changes:  # (noted while followed; the session may look idle now: its statement was Parsed again)
            pending = self.tracker.pending
            self.context.execute(pending[-1] if pending else None, position, changes)
            self._context_changed()

    def _on_sync(self, _body: bytes) -> None:
        self.tracker.on_sync()
        self._syncs += 1
        if self._names is not None:
            self._names.batch += 1
        if self._agent_closing:
            self._agent_closes_sent()
        self._binds = self._results = 0
        self._flushed = self._paged = self._ext_open = False
        self._open_batch = False

    def _on_close(self, body: bytes) -> bytes | None:
        found = m.target(body)
        name = found[1] if found is not None and found[0] == b"S" else None
        if name:
            name = protocol_name(name)
        flight = None
        if name is not None:  # (skipped: PostgreSQL keeps the statement, its records stay or are put back)
            flight = ClosedFlight(name, self._close_lost)
            self._journaled(self._flight(flight, False))
        if found is not None and found[0] == b"P":
            self._open_portals.close(protocol_name(found[1]))
            if self._portals:  # (skipped: the portal stays, red team 20a F1)
                self._portal_noted(protocol_key(body[1:-1]), None)
        if self._hidden is not None and found is not None and found[0] == b"P" and self._hidden.portals:
            portal = protocol_name(found[1])
            old = self._hidden.portals.pop(portal, None)
            if old is not None:  # (taken back if PostgreSQL skips the Close: red team 9a3 J1b)
                self._journaled(partial(_restore, self._hidden.portals, portal, old))
        if self._names is not None:  # its records go with the name once the server says so (_on_close_complete)
            if flight is not None and self._subxact_statements and name in self._subxact_statements:
                # (but its savepoint ops at once, put back if skipped: closes pipelined free room, issue 18)
                flight.records = (None, None, None, None, self._subxact_statements.pop(name))
            self._names_close(name)
            return None
        if name is not None and self._hidden is not None and name in self._hidden.statements:  # (red team 9a5 F3)
            old = self._hidden.statements.pop(name)
            self._journaled(partial(_restore, self._hidden.statements, name, old))
        if flight is not None:
            flight.records = self._closed_statement(name)  # type: ignore[arg-type]
        return None

    def _closed_statement(self, name: str) -> tuple[Any, Any, Any, Any, Any]:
        """Prepared statement `name` is closed: the session's records of it go (the agent's admission text once its
        request ended without an error, where the Close is not confirmed by the server's answer). Returns what
        went (the tracker's, the context's, the decision context's, the client text, its savepoint ops; put back by
        `_close_lost`)."""
        kept = self.tracker.on_close_statement(name)
        subxact = self._subxact_statements.pop(name, None) if self._subxact_statements else None  # (issue 18)
        changes = decided = text = None
        if self._agent_statements:
            if self._names is None:
                self._agent_close(name)
            else:
                old = self._agent_statements.pop(name, None)
                self._agent_bytes -= len(old[0]) if old is not None else 0
        if self._tracking:
            changes = self.context.statements.get(name)
            if changes is None and self.context.lost_bind(name):
                changes = _LOST_RECORD  # (put back as lost if PostgreSQL skips the Close: red team 21v F1)
            self.context.close(name)
            self._context_changed()
        if self._prepared_in is not None:
            decided = self._prepared_in.records.get(name)
            self._prepared_in.closed(name)
        if self._client_texts is not None:
            text = self._client_texts.texts.get(name)
            self._client_texts.close(name)
        return kept, changes, decided, text, subxact

    def _on_copy_end(self, _body: bytes) -> None:
        if self._owed is not None and not self.tracker.copy_in:
            self._owed.copy_end()
        self.tracker.on_copy_end()

    def _on_ready_for_query(self, body: bytes) -> bytes | None:
        if self._owed is not None:
            self._owed.ready()
        if body != self._tx_status:  # the status changes rarely; setting it is not free
            self._tx_status = body[:1]
            self.info.tx_status = self._tx_status
        request = self.tracker.on_ready()
        self._done = 0
        open_portals = self._open_portals
        if open_portals.names or open_portals.freed or open_portals.closers or open_portals.levels:
            # (else ready changes nothing: test_portalbounds' idle case)
            open_portals.ready(body[:1], not self.tracker.pending)
        if self._declaring and request is not None:
            self._declares_ended(request, body[:1])
        if (self._portals or self._declaring_portals or self._declaring) and body[:1] == b"I" and \
                not self.tracker.pending:  # (no portal outlives its transaction)
            if self._portals:
                self._portals = _NO_PORTALS  # type: ignore[assignment]
            if self._declaring_portals:
                self._declaring_portals = None
            if self._declaring:
                self._declaring = None
        if self._runs is not None and body[:1] == b"I" and not self.tracker.pending:
            self._runs.ended()
        if self._retags:
            self._retags = [entry for entry in self._retags if entry[0] is not request] or _NO_RETAGS  # type: ignore[assignment]
        if self._cursors is not None and body[:1] == b"I":
            self._cursors.ended()
        if self._hidden is not None and body[:1] == b"I" and self._hidden.portals:
            self._hidden.ended(self.tracker.pending)
        if self._subxacts is not None:
            self._subxacts.ready(self.tracker.pending, body[:1] == b"I")
        if self._prepares is not None and self._prepares.requests:
            self._prepares_settled(self._prepares.ready(self.tracker.pending), False)
        if self._names is not None and self._names.ledger and request is not None:
            self._names_ended(request)
        if self._agent_closing and request is not None:
            self._agent_closes_ended(request)
        if self._tracking:
            self.context.ready(request, body[:1])
            self._context_changed()
            if body == b"I":
                self._idle_check = True  # settle settings, count pins, release (see _at_idle)
        elif self.pooled and body == b"I":
            self._idle_check = True
        if self._settling:  # the answer to the proxy's own Sync (_settle_unsynced): not the client's
            self._settling = False
            return b""
        return None

    def _on_result_end(self, _body: bytes) -> None:
        """An EmptyQueryResponse or PortalSuspended: the answer to an Execute (or an empty Query), no statement's
        CommandComplete; the next one answers the request's next statement."""
        self._done += 1

    def _on_command_complete(self, body: bytes) -> bytes | None:
        if self._owed is not None:
            self._owed.completed()
        out = None
        if self._retags:
            tag = self._retagged()
            if tag is not None:
                if not tag:  # the proxy's own statement (a startup value set again after a RESET ALL)
                    self._done += 1
                    return b""
                body, out = tag, m.frame(b"C", tag)
        self.tracker.on_command_complete(body)
        self._done += 1
        if self._subxacts is not None and self._subxacts.ops:
            self._savepoints_completed()
        if self._prepares is not None and self._prepares.requests:
            pending = self.tracker.pending
            self._prepares_settled(self._prepares.completed(pending[0] if pending else None, self._done), True)
        if self._names is not None and body[:1] == b"D":  # (DEALLOCATE, DISCARD ALL)
            pending = self.tracker.pending
            gone = self._names.command_complete(body, pending[0] if pending else None)
            if self._client_texts is not None:  # (the client's text goes with the server's statement)
                if body in FORGETS_ALL:
                    self._client_texts.clear()
                elif gone is not None:
                    self._client_texts.close(gone)
            if self._hidden is not None and self._hidden.statements:  # (red team 9a5 F3)
                if body in FORGETS_ALL:
                    self._hidden.forget(None, self._names.parsing())
                elif gone is not None:
                    self._hidden.forget([gone])
        if self._tracking:
            pending = self.tracker.pending
            self.context.completed(pending[0] if pending else None, self._done, body)
        return out

    def _on_parameter_status(self, body: bytes) -> bytes | None:
        name, value = m.decode_parameter_status(body)
        problem = parsing_violation(name, value)
        if problem is not None:  # e.g. RESET client_encoding to a client-only server default
            raise ParsingMismatch(problem)
        if self.server is not None:
            self.server.status[name] = value  # what the next client of this server is told at its startup
        if name == "search_path" and self._tracking:  # PostgreSQL 18 reports it: the client sees its own value
            shown = self.context.parameter_status(value)
            if shown != value:
                self._told(name, shown)
                return m.parameter_status(name, shown)
        elif name.lower() in self._startup_settings and reset_to_default(name.lower(), self.context.current.settings):
            shown = (self._startup_status or {}).get(name, value)  # (a RESET of a startup setting: its value)
            if shown != value:
                if self._client_status.get(name) == shown:
                    return b""
                self._told(name, shown)
                return m.parameter_status(name, shown)
        if self._client_status.get(name) == value:  # PostgreSQL reports a setting only when its value changed
            return b""
        self._told(name, value)
        return None

    def _told(self, name: str, value: str) -> None:
        """The client is told `name` = `value` (its own copy of the values told, once they differ from others')."""
        status = self._client_status
        if type(status) is SharedStatus:
            status = self._client_status = dict(status)
        status[name] = value

    def _on_request_message(self, _body: bytes) -> None:
        """A Describe, Execute or Flush is part of a request in flight (in transaction pooling the server stays)."""
        self.tracker.on_bind("")  # opens the extended request unless one is open, as a Bind would
        self._open_batch = True  # (what an agent's admission waits for: the batch is ended by its Sync)

    def _on_describe(self, body: bytes) -> bytes | None:
        """A Describe, part of a request in flight; of a statement name held unknown (review 19a F1) it is refused as
        its Bind is (statement_not_known): PostgreSQL would describe the statement it has, not the one recorded."""
        self.tracker.on_bind("")  # (as _on_request_message: inlined, every Describe)
        self._open_batch = True
        if self._unknown is None or body[:1] != b"S":
            return None
        found = m.target(body)
        name = protocol_name(found[1]) if found is not None else None
        if name is None or not self._unknown.unknown(name):
            return None
        return m.frame(b"D", b"S" + self._error_marker(errors.statement_not_known(name=name)).encode() + b"\x00")

    def _on_execute(self, body: bytes) -> bytes | None:
        """An Execute (with a row count, its portal may be suspended and go on): the next statement of its request
        (answered by one CommandComplete, EmptyQueryResponse or PortalSuspended)."""
        self._on_request_message(body)
        if body[-4:] != b"\x00\x00\x00\x00":
            self._paged = True
        out = None
        if self._open_portals.closers:  # a prepared CLOSE / CLOSE ALL / COMMIT / ROLLBACK frees (review 20 F1)
            portal = protocol_name(bytes(body[:max(body.find(b"\x00"), 0)]).decode("utf-8", "replace"))
            self._open_portals.executed(portal, self.context.belief.cursors, self.config.pool.max_session_portals)
        if self._portals:  # (failed or skipped, the portal is PostgreSQL's as it was: its note too, red team 20a F1)
            name = protocol_key(body[:max(body.find(b"\x00"), 0)])
            noted = self._portals.get(name)
            if noted is _UNKNOWN_PORTAL:  # the marker portal PostgreSQL does not have: its 34000 becomes ours
                marker = self._error_marker(errors.portal_not_known(name=name.decode(errors="replace")))
                out = m.frame(b"E", marker.encode() + body[max(body.find(b"\x00"), 0):])
            elif noted is not None:
                self._portal_noted(name, None)
                self._executed(noted)
                if self.statements is None:  # (with the statement maps, _Follow.on_execute tags it)
                    self._tag_journal()
            if self._declaring_portals and self._portals:
                declared = self._declaring_portals.get(name)
                if declared:
                    self._declares_sent(declared)
        self._results += 1
        return out

    def _settle_unsynced(self) -> list[Action]:
        """A batch ended with a Flush and answered in full, outside a transaction block (asyncpg's prepare(),
        psycopg's pipeline fetch): when it holds nothing on the server (unsynced.settles) the proxy ends it with a
        Sync of its own, as if the client had sent it (tracking, turns, the watchdog), its ReadyForQuery not
        relayed. In both pool modes the max_concurrent_queries turn is not kept by an idle prepared session, nor is
        it timed by the statement_timeout watchdog (red team 9r F9); the implicit transaction PostgreSQL opened for
        the Parse ends (with the locks its parse analysis took), as the client's own Sync would end it, and nothing
        ran in it. In transaction pooling, at 'I' the server goes back as after any request, and what the client
        sends next is judged again (routing: a write after a prepare() on a replica goes to the primary, F7)."""
        pending, st, server = self.tracker.pending, self.statements, self.server
        if (self.state is not _READY or server is None or (st is not None and not st.idle) or len(pending) != 1
                or self._tx_status != b"I" or self._replaying or self._held is not None
                or self._admission is not None or self.frontend.unfinished or self._cancelling or self._cut is not None
                or self._timed_out is not None or self._skipping_to_sync() or not unsynced.settles(
                    pending[0], binds=self._binds, paged=self._paged, replica=server.replica is not None)):
            return []
        self._settling = True
        chunks = self.frontend.feed(m.SYNC_MESSAGE)  # (its handlers run as for the client's own Sync)
        return [RelayToServer(chunks), self._unsynced_changed()] if self.pooled else [RelayToServer(chunks)]

    def _on_flush(self, body: bytes) -> None:
        """A Flush; in transaction pooling the server stays held until the batch's Sync (BatchWithoutSync). The
        answers of what was sent before it are coming (_coming)."""
        self._on_request_message(body)
        self._flushed = True
        if self.statements is not None:
            self.statements.flush()
        elif self._owed is not None:
            self._owed.flush()

    def _awaiting_sync(self) -> bool:
        """The session holds its server for a batch that waits for the client's Sync: a Flush was sent, or any
        extended message without a Sync or Query after it, or an error left the server skipping to that Sync."""
        return self.server is not None and (self._flushed or self._ext_open or self._skipping_to_sync())

    def _sync_wait(self, out: list[Action]) -> None:
        """After a read either way (either pool mode): a batch waiting for the client's Sync is timed from it
        (_batch_waited), and in transaction pooling the I/O layer is told when such a wait begins or ends
        (BatchWithoutSync: counted; in session pooling the server is the session's anyway)."""
        awaiting = self._awaiting_sync()
        if awaiting:
            self._ext_since = self.clock()
        if awaiting is not self._unsynced:
            self._unsynced = awaiting
            if self.pooled:
                out.append(BatchWithoutSync(awaiting))

    def _ext_sent(self, _body: bytes) -> None:
        """A Parse, Bind, Describe, Execute, Close or Flush was relayed: its batch is open until a Sync or Query."""
        self._ext_open = True

    def _ext_ended(self, _body: bytes) -> None:
        """A Query: PostgreSQL ends the open batch's implicit transaction with it (unless it skips it)."""
        self._ext_open = False

    def _copying(self) -> bool:
        """The session holds its server for a COPY FROM STDIN: the server answered CopyInResponse and waits for the
        client's CopyData, CopyDone or CopyFail (the request is unanswered)."""
        return self.server is not None and self.tracker.copy_in and bool(self.tracker.pending)

    def _copy_changed(self) -> Action:
        """The session's server is held by a COPY FROM STDIN, or no longer (the I/O layer counts it)."""
        self._copy_held = held = self._copying()
        return CopyInHeld(held)

    def _unsynced_changed(self) -> Action:
        """The client's batch waits for its Sync with the server held, or no longer (the I/O layer counts it)."""
        self._unsynced = held = self._awaiting_sync()
        return BatchWithoutSync(held)

    def _on_copy_in_response(self, _body: bytes) -> None:
        self._copy_since = self.clock()  # (the client's COPY FROM STDIN is timed from here: _copy_waited)
        if self._owed is not None:
            self._owed.copy_in()
        joined = self.tracker.on_copy_in()
        if joined:
            self._copy_joined(joined)

    def _copy_joined(self, joined: list[Request]) -> None:
        """The requests the tracker joined to the head when its COPY IN began (Syncs the server swallows, and what
        followed the COPY in the head's batch, red team 9a4 K3): their records become the head's."""
        head = self.tracker.pending[0]
        hidden = self._hidden
        for request in joined:
            if hidden is not None:
                entries = hidden.requests.pop(request, None)
                if entries:
                    hidden.requests.setdefault(head, []).extend(entries)
                if hidden.plain_first is request:
                    hidden.plain_first = head
            if self._names is not None:
                for entry in self._names.ledger:
                    if entry[2] is request:
                        entry[2] = head
            offset = head.statements - request.statements  # (its statements were appended to the head's)
            if self._tracking:
                if request.sql:  # (what followed the COPY in the head's batch: it runs)
                    self.context.joined(request, head, offset)
                else:
                    self.context.skipped(request)
            if self._retags:
                self._retags_joined(request, head, offset)

    def _retags_joined(self, request: Request, head: Request, offset: int) -> None:
        """`request`'s retagged CommandCompletes (`_retag`) become `head`'s, from position `offset` on."""
        moved: dict[int, bytes] = {}
        kept = []
        for of, tags in self._retags:
            if of is request:
                moved.update({pos + offset: tag for pos, tag in tags.items()})
            else:
                kept.append((of, tags))
        if moved:
            for of, tags in kept:
                if of is head:
                    tags.update(moved)
                    break
            else:
                kept.insert(0, (head, moved))
        self._retags = kept or _NO_RETAGS  # type: ignore[assignment]

    def _on_error_response(self, body: bytes) -> bytes | None:
        if m.error_is_fatal(body):  # the backend ends the session itself
            self.backend_fatal = True
        if self._prepares is not None and self._prepares.requests and self.tracker.pending:
            self._prepares_settled(self._prepares.failed(self.tracker.pending[0]), False)
        st, owed = self.statements, self._owed
        if st is not None:
            if st.skips_to_sync():
                self._skipped()  # (the records of what failed go once the ledger has read it: _ErrorAnswer)
        elif owed is not None:
            journals = owed.failed()
            if journals is not None:
                self._skipped()
                if journals:
                    self._undo_records(journals)
        if self._names is not None and self._names.ledger and self.tracker.pending:  # the rest of it is skipped
            self._names_ended(self.tracker.pending[0])
        if b"pgtenant_denied_" in body:
            found = _DENIAL_MARKER.search(body)
            if found is not None:
                marker = found.group(0)
                err = self._denials.pop(marker, None)
                at_run = b"C34000\x00" in body and b'cursor "' + marker + b'" does not exist' in body
                if err is not None:
                    if at_run:  # a statement denied when it runs may run again
                        self._denials[marker] = err
                    else:
                        self._denial_bytes -= _denial_size(err.message)
                if err is None and (at_run or (b"C42601\x00" in body and b'at or near "' + marker + b'"' in body)):
                    # The exact failure of a marker statement whose entry was evicted (a pipelined burst
                    # of denials): still our denial, never the backend's syntax error naming the marker.
                    err = errors.denial_evicted()
                if err is _SWALLOWED:
                    return b""
                if err is not None:
                    self.tracker.on_error(err.sqlstate, denied=True)
                    if self._tracking:
                        self._context_failed()
                    return err.encode()
        if b"\x00RImportSnapshot\x00" in body:  # SET TRANSACTION SNAPSHOT failed: one answer for every reason
            err = errors.snapshot_not_imported()
            self.tracker.on_error(err.sqlstate)
            if self._tracking:
                self._context_failed()
            return err.encode()
        out = self._names_back(b"E", body) if self._hidden is not None else None
        self.tracker.on_error(m.error_sqlstate(body))
        if self._tracking:
            self._context_failed()
        return out

    def _skipped(self) -> None:
        """An error in an extended message: the server skips what was sent after it up to the next Sync, a Query
        too, so the requests the tracker joins to the head never run: their records go (red team 9a3 J8)."""
        joined = self.tracker.on_skipped()
        for request in joined:
            if self._names is not None:
                self._names.ended(request)
            if self._tracking:
                self.context.skipped(request)
            if self._retags:
                self._retags = [entry for entry in self._retags if entry[0] is not request] or _NO_RETAGS  # type: ignore[assignment]

    def _owe_extended(self, _body: bytes) -> None:
        self._owed.extended()  # type: ignore[union-attr]

    def _owing(self, inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        """A Parse, Bind or Close handler: owed an answer, its records tagged (skipping.Owed)."""
        def handler(body: bytes) -> Any:
            self._owed.extended()  # type: ignore[union-attr]
            out = inner(body) if inner is not None else None
            if self._journal is not None and out is not HOLD:
                self._tag_journal()
            return out

        return handler

    def _journaled(self, undo: Callable[[], None]) -> None:
        """A step taking back what the message being handled did to a record (`_journal`)."""
        if self._journal is None:
            self._journal = [undo]
        else:
            self._journal.append(undo)

    def _tag_journal(self) -> None:
        """The message just handled is sent: its records are taken back if the server fails or skips it (the
        statement maps' ledger or skipping.Owed tells), at once if its batch failed already."""
        journal, self._journal = self._journal, None
        if journal is None:
            return
        st, owed = self.statements, self._owed
        tagged = st.tag(journal) if st is not None else owed is None or owed.tag(journal)
        if not tagged:
            _undo(journal)

    def _undo_records(self, journals: list[Any]) -> None:
        """The messages of `journals` (the last first) failed or were skipped: their records are taken back."""
        for journal in journals:
            _undo(journal)

    def _owe_execute(self, body: bytes) -> None:
        self._owed.extended()  # type: ignore[union-attr]
        if self._hidden is not None:
            self._executed_names(body)

    def _owe_query(self, _body: bytes) -> None:
        self._owed.query()  # type: ignore[union-attr]

    def _owe_sync(self, _body: bytes) -> None:
        if not self.tracker.copy_in:  # (one the backend reads)
            self._owed.sync()  # type: ignore[union-attr]

    def _on_notice_response(self, body: bytes) -> bytes | None:
        return self._names_back(b"N", body) if self._hidden is not None else None

    def _remember_names(self, decision: Decision, statement: str | None = None) -> None:
        """A statement sent with reserved schema names (policy/hiding.py), or a Parse of `statement` (then with none
        too: the name's earlier ones go): PostgreSQL's answers to this request, or to the statement's Bind/Execute,
        name them."""
        if self._hidden is None:
            self._hidden = hiddennames.InFlight()
        names = decision.names if type(decision) is Rewrite else ()
        if not self._hidden.guarded and (names or (type(decision) is not Deny and UNSEEN_SCHEMA in decision.effects)):
            # (the first schema the tenant cannot see named, hidden or missing, both sent renamed (red team 9a8
            # N2): the last line guards results from now on, red team 9a6 G3)
            self._hidden.guarded = True
            self.backend_stream.guard(self._last_line, _GUARDED, hiddennames.NEEDLE, self._leaks_sent)
            self._limit_actions.append(LastLineGuarded())  # (logged after the server's next read)
        if names:
            self._hidden.sending(names)
        if statement is not None:
            statements = self._hidden.statements
            old = statements.get(statement)
            if not names:  # (its request's entry says so: not mapped through another's moves, hiddennames.py)
                statements.pop(statement, None)
            else:
                statements[statement] = (names, decision.moved)  # type: ignore[union-attr]
            if old is not None or names:  # (taken back if PostgreSQL skips the Parse: red team 9a3 J1)
                self._journaled(partial(_restore, statements, statement, old))
        pending = self.tracker.pending
        if pending and names:
            self._hidden.add(pending[-1], names, decision.moved, pending)  # type: ignore[union-attr]
        elif pending:
            self._hidden.plain(pending[-1])

    def _executed_statements(self, sql: str, statement: str | None = None, sent: str | None = None) -> bool:
        """A Query (or a Parse of `statement`) that runs prepared statements sent with reserved names by SQL EXECUTE:
        its answers (or its Bind/Execute's) name them, as a Bind/Execute of those statements is answered (red team
        9a4 K5)."""
        hidden = self._hidden
        assert hidden is not None
        if self.statements is not None:  # (the client's protocol statements are not on the server under its names)
            return False
        run = hiddennames.executed(sql, hidden.statements, sent)
        if not run:
            return False
        if statement is not None:
            statements = hidden.statements
            self._journaled(partial(_restore, statements, statement, statements.get(statement)))
            statements[statement] = run[0]
            return True
        pending = self.tracker.pending
        for executed in run:
            hidden.running(pending[-1], executed, pending)
        return True

    def _joined_plain(self) -> None:
        """A Query naming nothing hidden, sent in an extended batch that carries reserved names (an Execute of a
        renamed statement's portal before it, without a Sync: PostgreSQL answers both in one request): its error is
        mapped through no other statement's moves (as an Execute of a plain portal, J7)."""
        hidden = self._hidden
        assert hidden is not None
        pending = self.tracker.pending
        if pending and pending[-1] in hidden.requests:
            hidden.plain(pending[-1])

    def _declared(self, sent: str, client: str | None, decision: Allow | Rewrite) -> None:
        """A string that declares cursors, sent as `sent` (`client`: the client's text of a rewrite, None when sent
        as written): pg_cursors lists the client's text (policy/catalog.py)."""
        if self._cursors is None:
            self._cursors = CursorTexts()
            if self.statements is not None:
                self.statements.cursors = self._cursors
        grown = sum(added for _, _, added in decision.moved) if type(decision) is Rewrite else 0
        self._cursors.add(sent, client, any(c.op == HOLD_CURSOR for c in decision.changes), grown)

    def _admission_names(self, adm: admission.Admission, held: _Held) -> list[tuple[Any, Any]]:
        """The reserved names of a held statement's EXPLAIN (its positions count the EXPLAIN prefix too)."""
        found: Any = None
        if type(adm.decision) is Rewrite and adm.decision.names:
            found = (adm.decision.names, adm.decision.moved)
        elif held.type == m.BIND and self._hidden is not None:
            found = self._hidden.statements.get(protocol_name(bind_statement(held.body) or ""))
        if found is None:
            return []
        prefix = len(admission.EXPLAIN_PREFIX)
        return [(found[0], tuple((start + prefix, end + prefix, added) for start, end, added in found[1]))]

    def _admission_withheld(self, error: dict[str, str], sent: list[tuple[Any, Any]]) -> PgError | None:
        """The refusal withholding an admission EXPLAIN's error that still holds a reserved name the session sent."""
        text = "\x00".join(error.values()).encode()
        if (self._hidden is not None and self._hidden.leaks(text)) or any(
                reserved.encode() in text for names, _ in sent for reserved, _ in names):
            return errors.policy_denied(_ANSWER_WITHHELD)
        return None

    def _bound_names(self, statement: str, body: bytes) -> None:
        """A Bind of a statement: its request's answers name the reserved names it was Parsed with, and those of the
        portal's Executes (in this request or a later one of the transaction: `_executed_names`); a statement Parsed
        without any: then no other statement's moves apply to its answers (red team 9a2 H2)."""
        hidden = self._hidden
        assert hidden is not None
        pending = self.tracker.pending
        request = pending[-1] if pending else None
        if not hidden.portals and statement not in hidden.statements:  # (the common case: nothing to carry)
            if request is not None:
                hidden.plain(request)
            return
        portal = protocol_name(body[:body.index(b"\x00")].decode("utf-8", "replace"))
        old = hidden.portals.get(portal)
        found = hidden.bound(portal, statement, request, self._subxacts.top() if self._subxacts is not None else 0)
        if old is not None or found is not None:  # (taken back if PostgreSQL skips the Bind: red team 9a3 J1b)
            self._journaled(partial(_restore, hidden.portals, portal, old))
        if request is not None:
            if found is not None:
                hidden.carry(request, found, pending)
            else:
                hidden.plain(request)

    def _savepoints_sent(self, first: int, changes: tuple[tuple[int, str, str], ...]) -> None:
        """A Query's statements (or a Bind's portal, statement `first` of its request) set, release or roll back to
        savepoints: followed to their CommandComplete (subxacts.py, red team 9a3 J2)."""
        pending = self.tracker.pending
        if not pending:
            return
        for at, op, name in changes:
            if op in SAVEPOINT_OPS:
                if self._subxacts is None:
                    self._subxacts = Savepoints()
                self._subxacts.sent(pending[-1], first + at, op, name)

    def _savepoints_completed(self) -> None:
        """A CommandComplete: a savepoint op it confirms; the portals a confirmed ROLLBACK TO dropped lose their
        records (PostgreSQL dropped them: red team 9a3 J2)."""
        subxacts = self._subxacts
        assert subxacts is not None
        pending = self.tracker.pending
        aborted = subxacts.completed(pending[0] if pending else None, self._done)
        if aborted and self._open_portals.levels:  # (max_session_portals: what it dropped frees room, review 20 F2)
            self._open_portals.rolled_back(partial(subxacts.dropped, aborted=aborted))
        if aborted and self._hidden is not None and self._hidden.portals:
            self._hidden.rolled_back(partial(subxacts.dropped, aborted=aborted))

    def _executed_names(self, body: bytes) -> None:
        """An Execute: of a portal bound to a statement sent with reserved names, its request's answers name them
        (a utility statement is analyzed when its portal runs, maybe after a Sync: red team 9a2 H1); of any other
        portal, they are mapped through no other statement's moves (red team 9a3 J7: one bound in an earlier request
        to a statement sent as written)."""
        hidden = self._hidden
        assert hidden is not None
        end = body.find(b"\x00")
        found = hidden.portals.get(protocol_name(body[:max(end, 0)].decode("utf-8", "replace"))) if hidden.portals \
            else None
        self.tracker.on_bind("")  # (opens the extended request unless one is open, as a Bind would)
        pending = self.tracker.pending
        if found is None:
            hidden.plain(pending[-1])
        else:
            hidden.carry(pending[-1], found[0], pending)

    def _names_back(self, type_byte: bytes, body: bytes) -> bytes | None:
        """An answer naming a reserved schema name as a schema: the client's name in its place, unless the client's
        own text of the request being answered has it. Last line: an answer that still holds a reserved name the
        session sent (whatever the reason: a request the proxy no longer knows, red team 9a2 H3) is withheld."""
        hidden = self._hidden
        assert hidden is not None
        head = self.tracker.pending[0] if self.tracker.pending else None
        sent = hidden.of(head) if head is not None else []
        out = None
        if sent:
            written = "\n".join([head.sql, *(sql for sql, _ in head.extra or ())]).lower()  # type: ignore[union-attr]
            out = hiddennames.written_back(type_byte, body, sent, written)
        if hidden.leaks(body if out is None else out):
            self._limit_actions.append(AnswerWithheld("error_response" if type_byte == b"E" else "notice_response"))
            return (errors.policy_denied(_ANSWER_WITHHELD) if type_byte == b"E" else errors.notice_withheld()).encode()
        return out

    def _leaks_sent(self, piece: bytes) -> bool:
        """The backend stream's `leaks` (`MessageStream.guard`): whether a piece of a large guarded message streamed
        piece by piece holds a reserved name the session sent (a hit ends the session: `_relay_server`)."""
        hidden = self._hidden
        return hidden is not None and hidden.leaks(piece)

    def _last_line(self, type_: int, body: bytes) -> Any:
        """The backend stream's guard (`MessageStream.guard`), set once the session sent a reserved name: a message
        of `_GUARDED` holding "pg_9". One that still holds a reserved name the session sent (after its handler:
        `InFlight.leaks`) never reaches the client: a result is cut as a result limit cuts one (the answer_withheld
        error in its place, the rest of the request swallowed up to its ReadyForQuery, its handlers still run), a
        ParameterStatus or NotificationResponse is dropped. While a result is cut the guard sees every message."""
        inner = self.backend_stream.handlers.get(type_)
        if self._withheld:
            return self._withholding(type_, body, inner)
        hidden = self._hidden
        assert hidden is not None
        if not hidden.leaks(body):
            return inner(body) if inner is not None else None
        out = inner(body) if inner is not None else None
        if out is HOLD or (out is not None and not hidden.leaks(out)):  # (swallowed, or the proxy's own message)
            return out
        self._limit_actions.append(AnswerWithheld(_WITHHELD_KIND[type_]))
        if type_ in _ASYNC_TEXT:
            return b""
        err = errors.policy_denied(_ANSWER_WITHHELD)
        self.tracker.on_error(err.sqlstate)
        if self._tracking:
            self._context_failed()
        self._withheld = 1
        self._withheld_ends = int(type_ == m.COMMAND_COMPLETE)  # (the cut statement's own end: not one after it)
        self.backend_stream.guard(self._last_line, _BACKEND_TYPES, b"", drop=_CUT_UNREAD)
        return err.encode()

    def _withholding(self, type_: int, body: bytes, inner: Callable[[bytes], Any] | None) -> Any:
        """A message after a withheld result, up to its request's ReadyForQuery: swallowed once its handler ran
        (an asynchronous ParameterStatus, NotificationResponse or NoticeResponse is relayed, checked as ever). At
        the ReadyForQuery of a transaction block the server still has open (status 'T': the client was told the
        statement failed), a failing statement is sent first, as for a cut result; where that cannot be done in
        order (another request in flight) or a statement after the cut one completed, the session ends."""
        if type_ == m.READY_FOR_QUERY:
            if self._withheld == 1 and body[:1] == b"T":
                if len(self.tracker.pending) > 1:
                    self._withheld = 4
                else:
                    self._withheld = 2
                    self._limit_actions.append(RelayToServer([query_message(_CUT_STATEMENT)]))
                    return b""  # (the request's own end: the failing statement's ReadyForQuery ends it)
            if self._withheld == 3:
                self._withheld = 4
            if self._withheld != 4:
                self._withheld = 0
                self.backend_stream.guard(self._last_line, _GUARDED, hiddennames.NEEDLE, self._leaks_sent)
            return inner(body) if inner is not None else None
        out = inner(body) if inner is not None else None
        if type_ in _ASYNC_TEXT:
            hidden = self._hidden
            assert hidden is not None
            if out is not HOLD and hidden.leaks(body if out is None else out):  # type: ignore[arg-type]
                self._limit_actions.append(AnswerWithheld(_WITHHELD_KIND[type_]))
                return b""
            return out
        if type_ == m.NOTICE_RESPONSE or out is HOLD:
            return out
        if type_ in _STATEMENT_ENDS and self._withheld == 1:
            if type_ == m.COMMAND_COMPLETE and self._withheld_ends:
                self._withheld = 3  # (a statement after the cut one ran: the client was told the request failed)
            self._withheld_ends += 1
        return b""

    def _context_failed(self) -> None:
        pending = self.tracker.pending
        self.context.failed(pending[0] if pending else None, self._done)

    # --- per-tenant limits (proxy/limits.py) ---------------------------------------------------

    def _apply_limits(self, user: str) -> list[Action]:
        """At login: the user's limits. Over max_client_connections the login is refused (53300) before any backend
        is used; a statement_timeout becomes a startup setting of the client (its own when lower); results are
        metered only when limited (the relay's hot path is untouched otherwise). What to add to the login's
        actions: the refusal, or the watchdog."""
        limits = resolve(self.config, user)
        if not limits.any:
            return []
        self.limits = limits
        refused = self.connections.admit(limits)
        if refused is not None:
            err, cap = refused
            self._close()
            reason = CloseReason.MAX_CLIENT_CONNECTIONS
            return [LimitReached(limits.tenant, user, MAX_CLIENT_CONNECTIONS, cap), CloseClient(err, reason)]
        self._counted = True
        if limits.statement_timeout is not None:
            asked = next((v for k, v in self.backend_parameters.items() if k.lower() == "statement_timeout"), None)
            cap = limits.statement_timeout  # (an agent's server has its own, lower or not: never raised by this)
            if self.agent is not None:
                cap = min(cap, self.agent.statement_timeout)
            if asked is not None:  # (else the servers' own startup value: the limit, or a DBA's lower default)
                value = clamped_timeout(asked, cap)
                self._startup_settings["statement_timeout"] = set_config_statement("statement_timeout", value)
                self._plain_routing()
                start = timeouts.startup_context(asked, value) if self.agent is None else None
                if start is not None:  # asked for more than the limit at startup: shown what it asked for
                    self.context.start(start)
                    self._tracking = True
        if limits.cuts_results:
            self._meter = ResultMeter(limits.max_result_rows, limits.max_result_bytes)
            self._executes = deque()
        if limits.max_concurrent_queries is not None:
            self._gate_slot = True
        if limits.relayed:
            self._limit_stream()
        return [WatchLimits(limits.tick)] if limits.watched else []

    def _limited_timeout(self) -> int:
        """Under a statement_timeout limit, the server enforces it too: the session's servers start with it (RESET
        returns there) and its policy sends a larger SET as the limit. The limit in ms (0: none)."""
        limit = self.limits.statement_timeout if self.limits is not None else None
        if limit is None:
            return 0
        self.request = limits_server_request(self.request, limit)
        return milliseconds(limit)

    def _limit_stream(self) -> None:
        """Wrap the backend handlers (outermost) with the limits': ReadyForQuery and ErrorResponse always; with a
        result limit every message type, so that a result being cut off is swallowed up to its ReadyForQuery."""
        inner = dict(self.backend_stream.handlers)
        self._limit_inner = inner
        out = dict(inner)
        out[m.READY_FOR_QUERY] = self._limit_ready
        out[m.ERROR_RESPONSE] = self._limit_error
        if self._meter is not None:
            for type_ in _BACKEND_TYPES - _CUT_KEEPS:
                out[type_] = self._cutter(type_, inner.get(type_))
            out[m.DATA_ROW] = out[m.COPY_DATA] = self._limit_row
            if self._meter.max_bytes >= 0:  # (red team 7 F9: an error's or notice's text is result bytes too)
                out[m.ERROR_RESPONSE] = self._bounded(b"E", out[m.ERROR_RESPONSE], counted=False)
                out[m.NOTICE_RESPONSE] = self._bounded(b"N", out.get(m.NOTICE_RESPONSE), counted=True)
        self.backend_stream.handlers = out

    def _bounded(self, type_byte: bytes, handler: Callable[[bytes], bytes | None] | None,
                 counted: bool) -> Callable[[bytes], bytes | None]:
        """max_result_bytes: a server's ErrorResponse/NoticeResponse relayed as is is cut to what is left of the
        result's bytes (limits.bounded_message); a notice counts towards them (an error ends the result)."""
        meter = self._meter
        assert meter is not None

        def bounded(body: bytes) -> bytes | None:
            left = meter.left()
            out = handler(body) if handler is not None else None
            if out is not None:  # (dropped in a cut result, held, or the proxy's own message)
                return out
            cut = bounded_message(type_byte, body, left)
            if counted:
                meter.bytes += len(body) + 5 if cut is None else len(cut)
            return cut

        return bounded

    def _cutter(self, type_: int, inner: Callable[[bytes], bytes | None] | None) -> Callable[[bytes], bytes | None]:
        """The handler of a message type while results are limited: as before, but dropped while a result is cut
        off (its bookkeeping still done); CommandComplete and EmptyQueryResponse end a result."""
        ends = type_ in (m.COMMAND_COMPLETE, m.EMPTY_QUERY_RESPONSE)
        meter = self._meter
        assert meter is not None

        suspends = type_ == m.PORTAL_SUSPENDED

        def handler(body: bytes) -> bytes | None:
            if self._cut is None:
                if ends or suspends:
                    self._result_ended(suspends)
                return inner(body) if inner is not None else None
            if ends or suspends:
                self._cut_end(ends)
            if inner is not None:
                inner(body)
            return b""

        return handler

    def _cut_end(self, completed: bool) -> None:
        """A statement ended in a request being cut off: past the cut one, a completed statement ran on the
        server although the client was told the request failed (the session must end, see _ready)."""
        if completed and self._cut_ends:
            self._cut_ran = True
        self._cut_ends += 1

    def _limit_portals(self) -> None:
        """Results limited: Bind and Execute are followed (max_result_rows counts per portal over its suspended
        Executes, whatever runs between them; enable_policy follows Query)."""
        self.frontend.handlers = self._frontend_tracked()  # (which wraps them while `_meter` is set)

    def _meter_query(self, _body: bytes) -> None:
        self._executes.append(None)

    def _meter_bind(self, body: bytes) -> None:
        """A Bind (re)defines its portal: its count starts again."""
        if self._portal_counts:
            self._portal_counts.pop(protocol_name(bytes(body[:body.index(b"\x00")]).decode("utf-8", "replace")), None)

    def _meter_execute(self, body: bytes) -> None:
        name = protocol_name(bytes(body[:body.index(b"\x00")]).decode("utf-8", "replace"))
        self._executes.append(name)
        if len(self._executes) == 1:
            self._resume(name)

    def _resume(self, name: str | None) -> None:
        """The result of `name`'s Execute comes next: its meter goes on from the portal's count so far."""
        meter = self._meter
        assert meter is not None
        meter.rows, meter.bytes = self._portal_counts.get(name, (0, 0)) if name is not None else (0, 0)

    def _result_ended(self, suspended: bool) -> None:
        """A CommandComplete / EmptyQueryResponse (the result ended) or a PortalSuspended (its portal's count is
        kept for its next Execute); the next Execute's result goes on from its portal's count."""
        meter = self._meter
        assert meter is not None
        executes = self._executes
        if executes and executes[0] is not None:
            name = executes.popleft()
            if suspended:
                self._portal_counts[name] = (meter.rows, meter.bytes)
            else:
                self._portal_counts.pop(name, None)
            meter.reset()
            if executes:
                self._resume(executes[0])
            return
        meter.reset()  # a statement of a Query

    def _results_gone(self) -> None:
        """An error: the rest of the request is skipped (its transaction failed: no portal can run again)."""
        assert self._meter is not None
        self._meter.reset()
        while self._executes and self._executes[0] is not None:
            self._executes.popleft()
        self._portal_counts.clear()

    def _limit_row(self, body: bytes) -> bytes | None:
        """A DataRow or CopyData: counted; the one past the limit is replaced by the error that cuts the result."""
        if self._cut is not None:
            return b""
        assert self._meter is not None
        limit = self._meter.add(len(body) + 5)
        if limit is None:
            return None
        assert self.limits is not None
        value = getattr(self.limits, limit)
        self._cut = limit
        err = errors.limit_result(limit, value)
        self.tracker.on_error(err.sqlstate)
        if self._tracking:
            self._context_failed()
        self._limit_actions.append(LimitReached(self.limits.tenant, self.limits.user, limit, value))
        if len(self.tracker.pending) == 1 and not self._cancelling:  # (pipelined requests: it runs to its end)
            self._cancelling = True
            self._limit_actions.append(CancelQuery())
        return err.encode()

    def _limit_error(self, body: bytes) -> bytes | None:
        """An ErrorResponse: swallowed in a result being cut off; the 57014 of the watchdog's cancel is ours."""
        inner = self._limit_inner.get(m.ERROR_RESPONSE)
        out = inner(body) if inner is not None else None
        if self._cut is not None:
            if b"C57014\x00" in body and self.limits is not None and self.limits.watched:
                self._answers_watchdog(body)  # (the server's own timeout ended the request being cut)
            self._cut_end(False)
            return b""
        if self._meter is not None:
            self._results_gone()
        if b"C57014\x00" in body and self.limits is not None and self.limits.watched and self._answers_watchdog(body):
            timeout, which = self._watchdog_timeout(self.limits)
            assert timeout is not None
            if which == REPLICA_STATEMENT_TIMEOUT:
                return errors.limit_replica_statement_timeout(seconds(timeout)).encode()
            if which == "agent":
                return errors.limit_agent_statement_timeout(seconds(timeout)).encode()
            return errors.limit_statement_timeout(seconds(timeout)).encode()
        return out

    def _watchdog_timeout(self, limits: Limits) -> tuple[float | None, str]:
        """The watchdog's timeout for a request on the session's server, and whose limit it is (Limits.timeout_on:
        on a replica, replica_statement_timeout when lower)."""
        server = self.server
        return limits.timeout_on(server is not None and server.replica is not None)

    def _answers_watchdog(self, body: bytes) -> bool:
        """A 57014 under a statement_timeout limit: True when it answers the watchdog's cancel (the proxy's message
        replaces it); the server's own timeout (it never has more than the limit) is counted as the limit's."""
        assert self.limits is not None
        pending = self.tracker.pending
        if self._timed_out is not None and (not pending or pending[0] is self._timed_out):
            return True
        if b"statement timeout" in body and self.limits.watchdog_timeout is not None:
            self._limit_actions.append(LimitReached(self.limits.tenant, self.limits.user, STATEMENT_TIMEOUT,
                                                    self.limits.watchdog_timeout))
        return False

    def _limit_ready(self, body: bytes) -> bytes | None:
        """A ReadyForQuery: held while a cancel is in flight (so that it cannot reach the client's next query)."""
        if self._cancelling:  # (what follows it waits too: the stream stops here, see server_data)
            self._held_ready = bytes(body)
            return HOLD  # type: ignore[return-value]
        return self._ready(body)

    def _ready(self, body: bytes) -> bytes | None:
        """The end of a request under limits. A result cut off inside a transaction block whose statement the server
        finished (its status 'T'): a failing statement is sent so that the server's transaction fails as the
        client's did (its answers swallowed); with further requests in flight that cannot be done in order, and
        the session ends instead."""
        self._last_ready = self.clock()
        inner = self._limit_inner[m.READY_FOR_QUERY]
        if self._cut is not None:
            if self._cut_inject == 0 and (self._cut_ran or body[:1] == b"T"):
                self._cut_inject = 3 if self._cut_ran or len(self.tracker.pending) > 1 else 1
                return b""
            self._cut, self._cut_inject, self._cut_ends = None, 0, 0
            self._results_gone()
        elif self._meter is not None:
            if self._executes and self._executes[0] is None:  # a Query's end
                self._executes.popleft()
            if body[:1] == b"I":  # no transaction: no portal left
                self._portal_counts.clear()
        out = inner(body)
        if self._timed_out is not None:  # (the canceled request ended)
            pending = self.tracker.pending
            if not pending or pending[0] is not self._timed_out:
                self._timed_out = None
        if self._slot_held and body[:1] == b"I" and not self.tracker.pending and self._held is None:
            self._limit_actions.append(self._release_slot())
        return out

    def _release_slot(self) -> ReleaseSlot:
        """The request or transaction ended (ReadyForQuery 'I', nothing in flight): the turn goes back."""
        assert self.limits is not None and self.limits.max_concurrent_queries is not None
        self._slot_held, self._gate_slot = False, True
        return ReleaseSlot(self.limits.tenant, self.limits.max_concurrent_queries)

    def _wait_for_slot(self, data: bytes, handler: Callable[[bytes], list[Action]]) -> list[Action]:
        """A request begins without a turn: its bytes wait for `slot_granted` (a goodbye needs no turn)."""
        limits = self.limits
        assert limits is not None and limits.max_concurrent_queries is not None
        if not self._slot_queue and data[:1] == b"X":
            self._gate_slot = False
            return handler(data)
        self._slot_queue.append(data)
        if len(self._slot_queue) > 1:
            return []
        return [AcquireSlot(limits.tenant, limits.max_concurrent_queries, limits.query_wait_timeout)]

    def slot_granted(self) -> list[Action]:
        """Event: the request's turn came (AcquireSlot); what the client sent meanwhile goes on."""
        self._slot_held, self._gate_slot = True, False
        data, self._slot_queue = b"".join(self._slot_queue), []
        if self.state is State.CLOSED:
            return [self._release_slot()]
        return self.client_data(data) if data else []

    def slot_refused(self) -> list[Action]:
        """Event: no turn within query_wait_timeout: each request the client sent meanwhile is answered with the
        error (53300) and ReadyForQuery, as a failed implicit transaction (nothing ran); a batch without its Sync
        ends the session with the error."""
        limits = self.limits
        assert limits is not None and limits.max_concurrent_queries is not None
        data, self._slot_queue = b"".join(self._slot_queue), []
        err = errors.limit_concurrency(limits.tenant, limits.max_concurrent_queries,
                                       seconds(limits.query_wait_timeout))
        reached = LimitReached(limits.tenant, limits.user, MAX_CONCURRENT_QUERIES, limits.max_concurrent_queries)
        messages, used = m.split_messages(data)
        if used != len(data) or not messages or messages[-1][0] not in _REQUEST_ENDS:
            reason = CloseReason.MAX_CONCURRENT_QUERIES
            released = self._close_server(reason)
            self._close()
            return [reached, *released, CloseClient(replace(err, severity="FATAL"), reason)]
        ends = sum(t in _REQUEST_ENDS for t, _, _ in messages)
        return [reached, RelayToClient([(err.encode() + m.ready_for_query(b"I")) * ends])]

    def _limit_after(self, chunks: list) -> list[Action]:
        """The end of a read whose handlers asked for more than the relay (see server_data)."""
        more, self._limit_actions = self._limit_actions, []
        if self._withheld == 4:  # (the last line: a withheld result that cannot be left as the client was told)
            self._withheld = 0
            released = self._give_back(reusable=False, reset=True, reason=CloseReason.RESULT_CUT)
            self._close()
            err = replace(errors.policy_denied(_ANSWER_WITHHELD), severity="FATAL")
            return [RelayToClient(chunks), *more, *released, CloseClient(err, CloseReason.RESULT_CUT)]
        if self._cut_inject == 1:
            self._cut_inject = 2
            more.append(RelayToServer([query_message(_CUT_STATEMENT)]))
        elif self._cut_inject == 3:
            assert self._cut is not None and self.limits is not None
            value = getattr(self.limits, self._cut)
            ran = self._cut_ran
            err = (errors.limit_result_ran if ran else errors.limit_result)(self._cut, value)
            released = self._give_back(reusable=False, reset=True, reason=CloseReason.RESULT_CUT)
            self._close()
            return [RelayToClient(chunks), *more, *released, CloseClient(replace(err, severity="FATAL"),
                                                                        CloseReason.RESULT_CUT)]
        tail = self._at_idle(chunks) if self._idle_check else [RelayToClient(chunks)]
        return [tail[0], *more, *tail[1:]]

    def cancel_requested(self, now: float) -> str | None:
        """Event: a client's CancelRequest for this session, which holds a server: None to forward it, else why it
        is dropped (proxy.cancel.SessionCancels; the request it is for: the oldest unanswered one)."""
        if self._cancels is None:
            self._cancels = SessionCancels()
        pending = self.tracker.pending
        return self._cancels.check(pending[0] if pending else None, now)

    def cancel_done(self) -> list[Action]:
        """Event: the CancelQuery has been acted on by the backend; a ReadyForQuery held meanwhile goes on."""
        self._cancelling = False
        self._cancel_done_at = self.clock()
        held, self._held_ready = self._held_ready, None
        if held is None or self.state is not _READY:
            return []
        out = self._ready(held)
        chunks = [m.ready_for_query(held) if out is None else out]
        if self._limit_actions or self._cut_inject:
            actions = self._limit_after(chunks)
        else:
            actions = self._at_idle(chunks) if self._idle_check else [RelayToClient(chunks)]
        rest, self._held_rest = b"".join(self._held_rest), []
        if self.state is _READY and (rest or self.backend_stream.pending):  # the pipelined requests' answers
            actions += self.server_data(rest)
        return actions

    def limits_tick(self) -> list[Action]:
        """Event (every WatchLimits period): a request past statement_timeout is canceled (whatever the client set
        the server's timeout to), also while its result is being cut, and again whenever the client sent more of
        it after the last cancel (a batch left open without its Sync: a cancel that reached a server waiting for
        the next message did nothing); a transaction idle past idle_in_transaction_timeout ends the session
        (25P03 FATAL, as PostgreSQL's idle_in_transaction_session_timeout; the server is closed, not reused)."""
        limits = self.limits
        if limits is None or self.state is not _READY or self.server is None or self._replaying:
            return []
        now = self.clock()
        pending = self.tracker.pending
        idle = limits.idle_in_transaction_timeout
        if pending:
            timeout, which = self._watchdog_timeout(limits)
            head = pending[0]
            if timeout is None or now - head.start < timeout:
                return []
            first = head is not self._timed_out
            grace = self.config.limits.cancel_grace
            # (the server has the whole request: the head is not the open batch; a later one — even a lone Parse
            # after its Sync — does not stop the grace, review 17 F2)
            if (not first and now - self._timed_out_at >= grace and (len(pending) > 1 or not self._awaiting_sync())
                    and not self._copying()):
                return self._cancel_unheeded(which, timeout, grace)
            if self._cancelling:
                return []
            if not first and not self._fed_since_cancel:
                # The batch is open without its Sync and the server, canceled, waits for the client: in the batch's
                # transaction, idle (PostgreSQL arms its own idle timeout only at a ReadyForQuery).
                if idle is not None and not head.closed_by_sync and now - self._cancel_done_at >= idle:
                    return self._idle_timeout(limits, idle)
                return []
            self._timed_out, self._fed_since_cancel, self._cancelling = head, False, True
            if first:
                self._timed_out_at = now
            limit = REPLICA_STATEMENT_TIMEOUT if which == REPLICA_STATEMENT_TIMEOUT else STATEMENT_TIMEOUT
            reached = [LimitReached(limits.tenant, limits.user, limit, timeout)] if first else []
            return [*reached, CancelQuery()]
        if (idle is not None and self._tx_status != b"I" and self._held is None and not self.frontend.unfinished
                and now - self._last_ready >= idle):
            return self._idle_timeout(limits, idle)
        return []

    def _cancel_unheeded(self, which: str, timeout: float, grace: float) -> list[Action]:
        """The watchdog's cancel has not ended the request within limits.cancel_grace, though the server has all of
        it (nothing waits for the client): PostgreSQL acts on no cancel while it is blocked writing a result the
        client does not read (red team 9s6 F1/F3). The server is closed at once (not drained: the backend then fails
        its write and exits, releasing its snapshot, its place in pool_size and max_db_connections, and a replica's
        replay), and the session ends with the limit's 57014 as FATAL: the client's result is cut mid-stream and, in
        session pooling, its server's session state is gone, so no ReadyForQuery could truthfully follow."""
        reason = CloseReason.STATEMENT_TIMEOUT
        released = self._give_back(reusable=False, reset=True, reason=reason)
        self._close()
        limit = {REPLICA_STATEMENT_TIMEOUT: REPLICA_STATEMENT_TIMEOUT, "agent": "agent statement_timeout"}.get(
            which, STATEMENT_TIMEOUT)
        error = errors.limit_statement_timeout_unheeded(limit=limit, seconds=seconds(timeout), grace=seconds(grace))
        return [*released, CloseClient(error, reason, unread=True)]

    def _idle_timeout(self, limits: Limits, idle: float) -> list[Action]:
        """idle_in_transaction_timeout passed: the session ends (25P03), its server closed, not reused."""
        reason = CloseReason.IDLE_IN_TRANSACTION_TIMEOUT
        released = self._close_server(reason)
        self._close()
        return [LimitReached(limits.tenant, limits.user, IDLE_IN_TRANSACTION_TIMEOUT, idle), *released,
                CloseClient(errors.limit_idle_in_transaction(seconds(idle)), reason)]

    def _batch_waited(self, reading_paused: bool = False) -> list[Action] | None:
        """Either pool mode: a server held for a batch waiting for the client's Sync, with no byte either way
        for idle_in_transaction_timeout (the user's or tenant's limit, else the global [limits] one), ends the
        session (25P03), the server closed (red team 9s4 N1: PostgreSQL times no batch waiting for its Sync; its
        idle_in_transaction_session_timeout starts only at a ReadyForQuery; red team 9s7 L1: in session pooling
        too, the batch's implicit transaction held its locks on a shared table for good). A client owed an answer
        it asked for (_coming: an Execute's, or with no statement maps any, with a Flush, Sync or Query sent after
        it) is not idle (its statement runs); an answer with no Flush or Sync after its message PostgreSQL sends
        only when the client asks, so such a batch is timed from the last byte either way, an Execute's run
        included, also after an earlier Flush was answered (the L1 residual: P/B/E/Flush answered, then B/E
        without a Flush was never timed). A batch whose bytes the proxy does not read meanwhile (`reading_paused`:
        the server takes none, say a Parse waits for a lock) is not idle either (as a COPY, _copy_waited)."""
        if (self._sticky or self._held is not None or self.state is not _READY or self._replaying or self._settling
                or self._coming()):
            return None
        if reading_paused:
            self._ext_since = self.clock()
            return None
        idle = self._idle_bound()
        if not idle or self.clock() - self._ext_since < idle:
            return None
        return self._idle_held_end(idle, errors.limit_idle_in_transaction(seconds(idle)))

    def _coming(self) -> bool:
        """The server owes an answer the client asked for (a Flush, Sync or Query sent after its message): an
        Execute's (statement maps), or any (no statement maps: session pooling without the statement cache,
        skipping.Owed); its statement may run. An answer owed with no Flush or Sync after its message is not coming:
        PostgreSQL sends it when the client asks, and a client that does not is idle (red team 9s7 L1 residual)."""
        st = self.statements
        if st is not None:
            return st.running()
        return self._owed is not None and self._owed.coming()

    def _copy_waited(self, reading_paused: bool) -> list[Action] | None:
        """Either pool mode: a COPY FROM STDIN (_copying) with no byte from the client for idle_in_transaction_timeout
        (the user's or tenant's limit, else the global [limits] one) ends the session (25P03), the server closed
        (red team 9s5: PostgreSQL times nothing in a COPY IN, its idle_in_transaction_session_timeout starts only at a
        ReadyForQuery, so an idle COPY held its server, and its place in max_db_connections, for ever). A COPY whose
        client keeps sending, however slowly, is never ended, nor one whose bytes the proxy does not read meanwhile
        (`reading_paused`: the server is not taking them, say its COPY waits for a row lock; it is not idle)."""
        if (not self._copying() or self._held is not None or self.state is not _READY or self._replaying
                or self._settling):
            return None
        if reading_paused:
            self._copy_since = self.clock()
            return None
        idle = self._idle_bound()
        if not idle or self.clock() - self._copy_since < idle:
            return None
        return self._idle_held_end(idle, errors.limit_idle_in_copy(seconds(idle)))

    def _idle_bound(self) -> float | None:
        """idle_in_transaction_timeout for a wait the server does not time: the user's or tenant's, else the global."""
        limits = self.limits
        idle = limits.idle_in_transaction_timeout if limits is not None else None
        return idle or self.config.limits.idle_in_transaction_timeout

    def _idle_held_end(self, idle: float, error: PgError) -> list[Action]:
        """A wait for the client past `idle` ends the session with `error` (25P03); the server is closed."""
        assert self.tenant is not None and self.info.user is not None
        reason = CloseReason.IDLE_IN_TRANSACTION_TIMEOUT
        released = self._close_server(reason, broken=True)  # (never reused: a batch or a COPY is open on it)
        self._close()
        return [LimitReached(self.tenant.name, self.info.user, IDLE_IN_TRANSACTION_TIMEOUT, idle), *released,
                CloseClient(error, reason)]

    def _unread_waited(self, now: float, unread: bool) -> list[Action] | None:
        """Either pool mode: a session holding a server whose client took none of its pending output (`unread`, the
        I/O layer's fact: its write buffer full and not a byte of it written since the last tick) for
        client_write_timeout (on a replica's server at most [routing] max_replica_lag) ends, its server closed: the
        backend, blocked writing, held its snapshot, its slot, a replica's replay (red team 9s6 F3) and, listening,
        PostgreSQL's NOTIFY queue (F2). A client that reads, however slowly, is never ended here."""
        server = self.server
        bound = self.config.pool.client_write_timeout
        if not unread or not bound or server is None or self.state is not _READY:
            self._unread_since = None
            return None
        if server.replica is not None:
            bound = min(bound, self.config.routing.max_replica_lag)
        if self._unread_since is None:
            self._unread_since = now
            return None
        if now - self._unread_since < bound:
            return None
        reason = CloseReason.CLIENT_WRITE_TIMEOUT
        released = self._give_back(reusable=False, reset=True, reason=reason)
        self._close()
        return [*released, CloseClient(errors.client_write_timeout(seconds=seconds(bound)), reason, unread=True)]

    def message_tick(self, now: float, reading_paused: bool = False, unread: bool = False) -> list[Action]:
        """The clock (about once a second): in transaction pooling, a message the client began while the session
        holds a server and has not completed within client_message_timeout of its first bytes seen here ends the
        session (08P01) and its server is closed (red team 9s F2: a stalled half message held the server from every
        other client, and its place in pool_size and max_db_connections). Whatever client_message_timeout is, a COPY
        FROM STDIN or a batch waiting for its Sync (either pool mode), idle past idle_in_transaction_timeout, ends
        the session (_copy_waited, _batch_waited); `reading_paused`: the I/O layer does not read the client now. Either
        pool mode, a client that takes none of its pending output (`unread`) ends the session (_unread_waited)."""
        waited = self._unread_waited(now, unread)
        if waited is not None:
            return waited
        timeout = self.config.pool.client_message_timeout
        frontend = self.frontend
        if self.tracker.copy_in:
            waited = self._copy_waited(reading_paused)
            if waited is not None:
                return waited
        # (a half message: transaction pooling's client_message_timeout; session pooling has none, the batch's bound)
        if self._unsynced and self.server is not None and not (frontend.unfinished and self.pooled):
            waited = self._batch_waited(reading_paused)
            if waited is not None:
                return waited
        if (not timeout or not self.pooled or self.server is None or self._sticky or self._held is not None
                or self.state is not _READY or not frontend.unfinished):
            self._stall = None
            return []
        stall = self._stall
        if stall is None or stall[0] != frontend.begun:  # (another message than last time: its clock starts)
            self._stall = (frontend.begun, now)
            return []
        if now - stall[1] < timeout:
            return []
        reason = CloseReason.CLIENT_MESSAGE_TIMEOUT
        released = self._close_server(reason, broken=True)
        self._close()
        return [*released, CloseClient(errors.client_message_timeout(seconds=seconds(timeout)), reason)]

    def close(self) -> list[Action]:
        """Event: the client connection is gone; the server the session holds goes back to the pool."""
        if self.login is not None:
            self.login.close()
        if self._counted:
            self._counted = False
            assert self.limits is not None
            self.connections.release(self.limits)
        released = self._close_server(CloseReason.CLIENT_GONE)
        if self._slot_held:
            released.append(self._release_slot())
        for kept in (self.statements, self._client_texts):
            if kept is not None and isinstance(kept.tenant_budget, StatementBytesClaim):
                kept.tenant_budget.release()  # the tenant's bound on kept statement text: this session's share
        self._close()
        return released


# What a read from the client does, per state (a state without a handler expects no data: 08P01). One table for
# every session (a table of bound methods in each was 1 KB per session).
_ON_DATA: dict[State, Callable[[ClientSession, bytes], list[Action]]] = {
    State.LOGIN: ClientSession._login_data,
    State.READY: ClientSession._relay_from_client,
    State.IDLE: ClientSession._detached_data,
    State.WAITING: ClientSession._detached_data,
    State.ADMIN: ClientSession._admin_data,
    State.CLOSED: ClientSession._ignore,
}


def _whole_first(data: bytes, max_length: int) -> bool:
    """Whether `data` (a client's bytes from a message boundary, read while its session holds no server) may take
    one: its first message is whole, or _EARLY_BYTES of it came. What the session would be ended for anyway raises
    FramingError here, before any server is taken: a type PostgreSQL refuses, a broken or oversized length."""
    n = len(data)
    if not n:
        return False
    if data[0] in _REFUSED_TYPES:
        raise refused(data[0])
    if n < 5:
        return False
    length = int.from_bytes(data[1:5])
    if length < 4:
        raise FramingError(f"invalid message length {length}", length)
    if length > max_length:
        raise FramingError("message too large", length, too_large=True)
    return n > length or n >= _EARLY_BYTES


def _forgets_at(changes: tuple[Change, ...], statements: Statements | None) -> int | None:
    """(With the session's statement maps) the index of the first statement that deallocates every prepared
    statement (DEALLOCATE ALL, DISCARD ALL), from the policy's parse: in whatever form, wherever in a Query."""
    if statements is None:
        return None
    for change in changes:
        if change.op == DISCARD_ALL or (change.op == DEALLOCATE and not change.name):
            return change.at
    return None


def _before(own: Callable[[bytes], None], inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """A frontend handler that calls `own`, then `inner` (whose answer it returns)."""
    if inner is None:
        def first(body: bytes) -> None:
            own(body)

        return first

    def handler(body: bytes) -> Any:
        own(body)
        return inner(body)

    return handler


def statement_settings(config: Config) -> tuple[bool, int, int]:
    """[pool] statement_cache, statement_cache_size, statement_cache_bytes."""
    pool = config.pool
    return pool.statement_cache, pool.statement_cache_size, pool.statement_cache_bytes


def session_statement_limits(config: Config) -> tuple[int, int, int]:
    """[pool] max_session_statements, max_session_statement_bytes, max_statements_listing_bytes."""
    pool = config.pool
    return pool.max_session_statements, pool.max_session_statement_bytes, pool.max_statements_listing_bytes


class _Follow:
    """The frontend handlers of a session whose statements are followed (`_follow_statements`): the handlers they
    wrap (the policy's gates, the request tracking), then the statement maps. (A slotted object with bound
    methods: closures with their cells were twice the bytes, for every session. The handlers it wraps are held as
    functions of (session, body): the class's own functions, shared, where they are the session's methods.)"""

    __slots__ = ("bind", "close", "copy_end", "describe", "execute", "gate_call", "gate_parse", "gate_query",
                 "session", "st", "sync")

    def __init__(self, session: ClientSession, st: Statements,
                 front: dict[int, Callable[[bytes], object]]) -> None:
        self.session = session
        self.st = st
        self.gate_query, self.gate_parse = _unbound(session, front.get(m.QUERY)), _unbound(session, front.get(m.PARSE))
        self.gate_call = _unbound(session, front.get(m.FUNCTION_CALL))
        self.bind, self.close = _unbound(session, front[m.BIND]), _unbound(session, front[m.CLOSE])
        self.sync, self.copy_end = _unbound(session, front[m.SYNC]), _unbound(session, front[m.COPY_DONE])
        self.describe = _unbound(session, front.get(m.DESCRIBE))  # (transaction pooling)
        self.execute = _unbound(session, front.get(m.EXECUTE))

    def on_query(self, body: bytes) -> object:
        gate = self.gate_query
        out = gate(self.session, body) if gate is not None else None
        if out is HOLD:
            return out
        return self.session._statement_query(body, out)  # type: ignore[arg-type]

    def on_parse(self, body: bytes) -> object:
        name = protocol_name(m.parse_name(body))
        if name and name in self.st.named:  # PostgreSQL: 42P05, the old statement stays (red team round 6 F8)
            return self.session._duplicate_parse(name, body)
        gate = self.gate_parse
        session = self.session
        out = gate(session, body) if gate is not None else None
        if out is HOLD:
            return out
        out = session._statement_parse(body, out)  # type: ignore[arg-type]
        if session._journal is not None:
            session._tag_journal()
        return out

    def on_call(self, body: bytes) -> object:
        gate = self.gate_call
        out = gate(self.session, body) if gate is not None else None
        self.st.query()
        return out

    def on_bind(self, body: bytes) -> object:
        out = self.bind(self.session, body)
        if out is HOLD:  # the agent profile's admission (its release comes back here)
            return out
        if out is not None:  # renamed to a denial marker: fails in the backend as it is
            self.st.passthrough(m.BIND, out)  # type: ignore[arg-type]
        else:
            out = self.st.bind(body)
        if self.session._journal is not None:
            self.session._tag_journal()
        return out

    def on_describe(self, body: bytes) -> bytes | None:
        out = self.describe(self.session, body) if self.describe is not None else None
        if out is not None:  # renamed to an error marker (an unknown name): fails in the backend as it is
            self.st.passthrough(m.DESCRIBE, out)
            return out  # type: ignore[no-any-return]
        return self.st.describe(body)

    def on_close(self, body: bytes) -> bytes | None:
        self.close(self.session, body)
        out = self.st.close(body)
        if self.session._journal is not None:
            self.session._tag_journal()
        return out

    def on_sync(self, body: bytes) -> None:
        self.sync(self.session, body)
        if not self.session.tracker.copy_in:  # (one the backend reads: it ignores those in a COPY IN)
            self.st.sync()

    def on_execute(self, body: bytes) -> bytes | None:
        out = self.execute(self.session, body) if self.execute is not None else None
        if self.session._hidden is not None:
            self.session._executed_names(body)
        self.st.execute(body if out is None else out[5:])
        if self.session._journal is not None:  # (a portal's note taken back if the Execute fails or is skipped)
            self.session._tag_journal()
        return out

    def on_copy_end(self, body: bytes) -> None:
        self.copy_end(self.session, body)
        self.st.copy_end()


def _unbound(session: ClientSession, handler: Callable[[bytes], Any] | None) -> Callable[[Any, bytes], Any] | None:
    """`handler`, a frontend or backend handler of `session`, as a function of (session, body): the class's own
    function when it is a method of the session (shared by every session; a bound method held costs each 64 bytes),
    else one that calls it."""
    if handler is None:
        return None
    if getattr(handler, "__self__", None) is session:
        return handler.__func__  # type: ignore[attr-defined,no-any-return]
    return lambda _session, body: handler(body)


class _Answer:
    """The backend handler of one message type once statements are followed: the session's own (if any), then
    the ledger. (A slotted object: a closure with its cells, or a partial, is three times the bytes, and every
    session holds eleven; the session's own handler is held as a function of (session, body), see `_unbound`.)"""

    __slots__ = ("inner", "respond", "session", "type")

    def __init__(self, respond: Callable[..., bytes | None], type_: int,
                 inner: Callable[[bytes], bytes | None] | None, session: ClientSession) -> None:
        self.respond = respond
        self.type = type_
        self.inner = _unbound(session, inner)
        self.session = session

    def __call__(self, body: bytes) -> bytes | None:
        inner = self.inner
        if inner is None:
            return self.respond(self.type, body)
        return self.respond(self.type, body, inner(self.session, body))


class _ErrorAnswer(_Answer):
    """ErrorResponse's `_Answer`: then the records of the messages the ledger found failed or skipped go."""

    __slots__ = ()

    def __call__(self, body: bytes) -> bytes | None:
        out = super().__call__(body)
        session = self.session
        st = session.statements
        if st is not None and st.undone:
            undone, st.undone = st.undone, []
            session._undo_records(undone)
        return out


def _restore(mapping: dict[str, Any], key: str, old: Any) -> None:
    """`mapping[key]` as it was (`old`; None: absent)."""
    if old is None:
        mapping.pop(key, None)
    else:
        mapping[key] = old


def _restore_text(texts: ClientTexts, name: str, old: tuple[str | None, int] | None) -> None:
    """The client text entry `name` as it was (`old`: the client's text if rewritten and its length; None: absent)."""
    if old is None:
        texts.close(name)
    else:
        texts.parse(name, *old)


def _undo(journal: list[Callable[[], None]]) -> None:
    """The steps of one message's journal, the last first."""
    for step in reversed(journal):
        step()
