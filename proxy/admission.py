"""Admission of an agent's statements by the planner's estimate: the proxy's own `EXPLAIN (FORMAT JSON)` of the
gated statement (with the client's bound parameters), read from the server's answers, and the verdict; pure."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from proxy.config import AgentConfig
from proxy.policy.model import ADMIT, Allow, Decision, Deny, Rewrite
from proxy.policy.rules import deny
from proxy.protocol import messages as m

EXPLAIN_PREFIX = "EXPLAIN (FORMAT JSON) "
NAME = "pgt_admission"  # the proxy's own statement and portal (the pgt_ prefix is refused to clients)
_BATCH, _OWN, _DONE = range(3)
_CLOSES = m.close_message(b"P", NAME) + m.close_message(b"S", NAME)


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the planner expects: the statement's total cost as it runs (with the agent's LIMIT), and the rows its
    query returns before that LIMIT."""

    cost: float
    rows: float


def needs(decision: Decision) -> bool:
    """Whether a decision's statement is admitted by its estimate first."""
    return type(decision) in (Allow, Rewrite) and ADMIT in decision.effects  # type: ignore[union-attr]


def sent_text(sql: str, decision: Decision) -> str:
    """The statement text PostgreSQL plans for `sql`'s admission under `decision` (the text it gets, but in the shared
    strategy with the tenant column read as the tenant's value: policy/estimates.py)."""
    if type(decision) is Rewrite:
        return decision.explain or decision.sql  # type: ignore[union-attr]
    return sql


def query_request(sql: str) -> bytes:
    """The EXPLAIN of a simple Query's statement."""
    return m.query_message(EXPLAIN_PREFIX + sql)


def bind_request(sql: str, param_types: bytes, bind: bytes) -> bytes:
    """The EXPLAIN of a prepared statement's text bound with the parameters of the client's Bind (body `bind`), as a
    request of its own (its statement and portal closed again; closed first too: an EXPLAIN that fails as it plans,
    `SELECT repeat('x', 5)::int`, skips the Closes after it and left its statement on the server, so that every
    later admission's Parse failed 42P05)."""
    return (_CLOSES + m.Parse(NAME, EXPLAIN_PREFIX + sql, param_types).encode() + m.bind_for(bind, NAME, NAME)
            + m.execute_message(NAME) + _CLOSES + m.SYNC_MESSAGE)


def estimate(plan: str) -> Estimate:
    """The estimate in EXPLAIN (FORMAT JSON)'s text: the top node's total cost; the rows of the node below the top
    Limit (the agent's), else of the top node."""
    top = json.loads(plan)[0]["Plan"]
    below = top["Plans"][0] if top.get("Node Type") == "Limit" and top.get("Plans") else top
    return Estimate(float(top["Total Cost"]), float(below["Plan Rows"]))


def reads_catalogs(plan: str) -> bool:
    """Whether an EXPLAIN (FORMAT JSON) plan scans a system catalog (a relation named pg_*): its estimates come from
    statistics over every tenant's objects (red team 6 F5: relations per schema OID, times a known factor), so a
    refusal does not show them."""
    nodes = [json.loads(plan)[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if not isinstance(node, dict) or str(node.get("Relation Name", "")).startswith("pg_"):
            return True  # (a plan it cannot read is treated as one that reads a catalog: no value shown)
        children = node.get("Plans", [])
        nodes += children if isinstance(children, list) else [None]
    return False


def verdict(found: Estimate, limits: AgentConfig, show: bool) -> Deny | None:
    """The refusal of a statement whose estimate is above a limit (None: admitted). `show`: the message gives the
    value (not in the shared strategy, where estimates count every tenant's rows)."""
    if limits.max_cost and found.cost > limits.max_cost:
        value = f" at {found.cost:.0f}" if show else ""
        return deny("agent_estimate", f"the planner estimates the statement's cost{value}, above agent.max_cost = "
                    f"{limits.max_cost:g}")
    if limits.max_estimated_rows and found.rows > limits.max_estimated_rows:
        value = f" {found.rows:.0f}" if show else " more"
        return deny("agent_estimate", f"the planner estimates the query returns{value} rows (before the agent's "
                    f"LIMIT), above agent.max_estimated_rows = {limits.max_estimated_rows:g}")
    return None


MAX_ANSWER = 1 << 20  # bytes of the EXPLAIN's plan (a DataRow) or error read at most: past it, nothing is held


@dataclass(slots=True)
class Admission:
    """One held statement's admission: the request to send, then the server's answers as they come. A Sync goes
    first: it ends whatever the client's batch holds before the held message (`open_batch`: the session saw such
    messages, the EXPLAIN waits for nothing else; a Close or Describe it does not follow may be there too), and
    the answers up to its ReadyForQuery are the client's (that ReadyForQuery aside).

    The answers are read as a stream (red team 9a8 N0: re-joining the buffer on every read cost CPU quadratic in a
    large plan's size): the client's messages pass on as their bytes arrive, the EXPLAIN's own are dropped as they
    arrive but its plan, its error and the ReadyForQuery, which are held up to `MAX_ANSWER` bytes; a plan or error
    past it is dropped too and the admission is `too_large`."""

    request: bytes
    decision: Decision | None = None  # a Query's decision (the Bind's statement was decided at its Parse)
    open_batch: bool = False
    started: float = 0.0
    stage: int = -1  # -1: not sent yet
    buf: bytearray = field(default_factory=bytearray)  # the message being held (from its type byte), or its header
    plan: str | None = None
    error: dict[str, str] | None = None
    batch_failed: bool = False  # the client's batch failed before the held Bind
    too_large: bool = False  # the plan or error was past MAX_ANSWER (dropped)
    skip: int = 0  # bytes of the current message still to pass on (`passing`) or drop, unheld
    passing: bool = False

    def start(self, now: float) -> bytes:
        """What goes to the server now."""
        self.started = now
        self.stage = _BATCH
        return m.SYNC_MESSAGE + self.request

    @property
    def sent(self) -> bool:
        return self.stage >= 0

    def feed(self, data: bytes) -> tuple[bytes, bool, bytes]:
        """Server bytes: (the client's part, done, the bytes after the admission's last answer)."""
        client = bytearray()
        buf, pos, n = self.buf, 0, len(data)
        while pos < n:
            if self.skip:  # inside a message passed on or dropped as it arrives
                take = min(self.skip, n - pos)
                if self.passing:
                    client += data[pos:pos + take]
                pos += take
                self.skip -= take
                continue
            if len(buf) < 5:  # a message's header
                take = min(5 - len(buf), n - pos)
                buf += data[pos:pos + take]
                pos += take
                if len(buf) < 5:
                    break
                if not self._header(client):
                    continue
            total = 1 + int.from_bytes(buf[1:5], "big")  # (the type byte, then the length counting itself)
            take = min(total - len(buf), n - pos)
            buf += data[pos:pos + take]
            pos += take
            if len(buf) == total and self._held(bytes(buf[5:])):
                return bytes(client), True, data[pos:]
        return bytes(client), False, b""

    def _header(self, client: bytearray) -> bool:
        """A message's header in `buf`: whether the message is held (else it passes on or is dropped unheld)."""
        buf = self.buf
        type_, length = buf[0], int.from_bytes(buf[1:5], "big")
        if length < 4:
            raise m.DecodeError(f"invalid message length {length}")
        if self.stage == _BATCH:
            held = type_ == m.READY_FOR_QUERY  # (the Sync the proxy added)
            self.passing = not held
            if type_ == m.ERROR_RESPONSE:
                self.batch_failed = True
        elif type_ == m.READY_FOR_QUERY:
            held, self.passing = True, False
        else:
            self.passing = type_ in (m.NOTIFICATION_RESPONSE, m.PARAMETER_STATUS)
            held = not self.too_large and ((type_ == m.DATA_ROW and self.plan is None)
                                           or (type_ == m.ERROR_RESPONSE and self.error is None))
            if held and length - 4 > MAX_ANSWER:
                held, self.too_large = False, True
        if held:
            if type_ == m.READY_FOR_QUERY and length != 5:
                raise m.DecodeError(f"invalid ReadyForQuery length {length}")
            return True
        if self.passing:
            client += buf
        buf.clear()
        self.skip = length - 4
        return False

    def _held(self, body: bytes) -> bool:
        """A held message complete (its body): whether the admission is done."""
        type_ = self.buf[0]
        self.buf.clear()
        if type_ == m.READY_FOR_QUERY:
            if self.stage == _BATCH:  # the batch goes on after the admission
                self.stage = _OWN
                return False
            self.stage = _DONE
            return True
        if type_ == m.DATA_ROW:
            values = m.decode_data_row(body)
            self.plan = values[0].decode() if values and values[0] is not None else None
        else:
            self.error = m.decode_error_fields(body)
        return False
