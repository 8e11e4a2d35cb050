"""SessionState: a session's context as decisions assume it and as the backend's answers confirm it."""

from __future__ import annotations

from dataclasses import replace

from proxy.policy.model import (
    COMMIT,
    DEALLOCATE,
    DISCARD_ALL,
    DISCARD_TEMP,
    DROP_TEMP,
    EMPTY_CONTEXT,
    EXPORT_SNAPSHOT,
    RELEASE,
    ROLLBACK,
    ROLLBACK_TO,
    SAVEPOINT,
    SET_PATH,
    TEMP_TABLE,
    TEMP_VIEW,
    Change,
    Deny,
    SessionContext,
)
from proxy.policy.settings import marked_entry
from proxy.sessionstate import SessionState


def create(name: str, at: int = 0, **kw: object) -> Change:
    return Change(at, TEMP_TABLE, name, **kw)  # type: ignore[arg-type]


def tx(op: str, at: int = 0, name: str = "") -> Change:
    return Change(at, op, name)


class Wire:
    """Drives a SessionState the way ClientSession does: requests in order, answered in order."""

    def __init__(self) -> None:
        self.state = SessionState()
        self.sent: list[object] = []

    def query(self, *changes: Change) -> object:
        request = object()
        self.sent.append(request)
        self.state.query(request, 0, changes)
        return request

    def answer(self, completions: int, status: bytes = b"I", error: bool = False, tags: tuple[bytes, ...] = ()) -> None:
        request = self.sent.pop(0)
        for done in range(1, completions + 1):
            self.state.completed(request, done, tags[done - 1] if done <= len(tags) else b"X")
        if error:
            self.state.failed(request, completions)
        self.state.ready(request, status)


def tables(ctx: SessionContext) -> set[str]:
    return set(ctx.temp_tables)


def test_a_create_counts_before_its_answer_and_after_it() -> None:
    w = Wire()
    w.query(create("t"))
    assert tables(w.state.belief) == {"t"} and w.state.current is EMPTY_CONTEXT  # decided, not yet answered
    w.answer(1)
    assert tables(w.state.current) == tables(w.state.committed) == tables(w.state.belief) == {"t"}
    w.query(Change(0, DROP_TEMP, "t"))
    w.answer(1)
    # no temporary relation left; a statement SQL PREPAREd before the CREATE or the DROP is to be prepared again
    assert w.state.belief == replace(EMPTY_CONTEXT, reprepare=frozenset())


def test_an_error_outside_a_transaction_block_takes_back_the_whole_request() -> None:
    w = Wire()
    w.query(create("a", 0), create("b", 1))  # CREATE a; CREATE b; SELECT 1/0
    w.answer(2, b"I", error=True)
    assert w.state.belief is EMPTY_CONTEXT and w.state.idle
    w.query(create("a"))
    w.answer(1)
    w.query(create("a"))  # already exists: the error leaves the first one in place
    w.answer(0, b"I", error=True)
    assert tables(w.state.belief) == {"a"}


def test_rollback_and_commit_of_a_transaction_block() -> None:
    w = Wire()
    w.query(create("keep"))
    w.answer(1)
    w.query(create("gone"))  # after BEGIN (not recorded: nothing follows from it)
    w.answer(1, b"T")
    w.query(Change(0, DROP_TEMP, "keep"))
    w.answer(1, b"T")
    assert tables(w.state.belief) == {"gone"}
    w.query(tx(ROLLBACK))
    w.answer(1, b"I", tags=(b"ROLLBACK\x00",))
    assert tables(w.state.belief) == {"keep"}
    w.query(create("new"))
    w.answer(1, b"T")
    w.query(tx(COMMIT))
    w.answer(1, b"I", tags=(b"COMMIT\x00",))
    assert tables(w.state.committed) == {"keep", "new"}


def test_commit_of_a_failed_transaction_is_a_rollback() -> None:
    w = Wire()
    w.query(create("t"))
    w.answer(1, b"T")
    w.query()  # SELECT 1/0
    w.answer(0, b"E", error=True)
    w.query(tx(COMMIT))
    w.answer(1, b"I", tags=(b"ROLLBACK\x00",))
    assert w.state.belief is EMPTY_CONTEXT


def test_savepoints() -> None:
    w = Wire()
    w.query(create("a", 0), tx(SAVEPOINT, 1, "s"), create("b", 2))
    w.answer(3, b"T")
    w.query(tx(ROLLBACK_TO, 0, "s"), create("c", 1), tx(SAVEPOINT, 2, "s2"), create("d", 3), tx(RELEASE, 4, "s2"))
    w.answer(5, b"T")
    assert tables(w.state.current) == {"a", "c", "d"}
    w.query(tx(ROLLBACK_TO, 0, "s"))
    w.answer(1, b"T")
    assert tables(w.state.current) == {"a"}
    w.query(tx(COMMIT))
    w.answer(1, b"I", tags=(b"COMMIT\x00",))
    assert tables(w.state.committed) == {"a"}


def test_a_savepoint_set_while_idle_holds_the_empty_context() -> None:
    w = Wire()
    w.query(tx(SAVEPOINT, 0, "psql_svp"))  # ignored: nothing to take back yet
    assert w.state.idle and not w.state.requests
    w.sent.pop(0)  # (its answer reaches a state with nothing pending)
    w.query(create("t"))
    w.answer(1, b"T")
    w.query(tx(ROLLBACK_TO, 0, "psql_svp"))
    w.answer(1, b"T")
    assert w.state.current == EMPTY_CONTEXT


def test_error_after_some_statements_of_a_request_in_a_block() -> None:
    """Inside a block: the statements before the error happened (until the block is rolled back)."""
    w = Wire()
    w.query(tx(SAVEPOINT, 0, "s"), create("t", 1), create("u", 3))  # SAVEPOINT; CREATE t; SELECT 1/0; CREATE u
    w.answer(2, b"E", error=True)
    assert tables(w.state.current) == {"t"} and tables(w.state.belief) == {"t"}
    w.query(tx(ROLLBACK_TO, 0, "s"))
    w.answer(1, b"T")
    assert w.state.current == EMPTY_CONTEXT


def test_set_local_ends_with_the_transaction_and_on_commit_drop_tables_with_the_commit() -> None:
    w = Wire()
    w.query(Change(0, SET_PATH, path=("a",)), Change(1, SET_PATH, path=("b",), flag=True),
            create("tmp", 2, flag=True))
    assert w.state.belief.effective() == (("b",), None)
    w.answer(3, b"T")
    w.query(tx(COMMIT))
    w.answer(1, b"I", tags=(b"COMMIT\x00",))
    assert w.state.belief.effective() == (("a",), None) and tables(w.state.belief) == set()
    w.query(create("tmp2", flag=True))  # outside a block: dropped at the end of its own statement
    w.answer(1, b"I")
    assert tables(w.state.belief) == set()


def _run(state: SessionState, request: object, position: int, name: str) -> Deny | None:
    """A Bind of `name` and, unless it is refused, the Execute of its portal (statement `position` of `request`)."""
    denied = state.bind(name)
    if denied is None:
        state.execute(request, position, state.statements.get(name, ()))
    return denied


def test_extended_protocol_parse_then_bind() -> None:
    """A Parse's changes count at once (a pipelined Parse INSERT after Parse CREATE sees the table); a Bind records
    them for the answer; a Parse never bound is forgotten at the end of its request."""
    state = SessionState()
    state.parse("", (create("t"),))
    assert tables(state.belief) == {"t"}
    request = object()
    _run(state, request, 0, "")
    state.completed(request, 1, b"CREATE TABLE\x00")
    state.ready(request, b"I")
    assert tables(state.committed) == {"t"}
    state.parse("S_1", (Change(0, TEMP_VIEW, "v"),))
    other = object()
    state.ready(other, b"I")  # that request never bound S_1
    assert state.belief.temp_views == frozenset()
    later = object()
    _run(state, later, 3, "S_1")  # S_1 run later, fourth statement of its request
    assert state.belief.temp_views == {"v"}
    state.completed(later, 3, b"SELECT 1\x00")
    state.failed(later, 3)  # the fourth statement failed
    state.ready(later, b"I")
    assert state.belief.temp_views == frozenset() and tables(state.belief) == {"t"}
    state.close("S_1")
    state.parse("", ())
    discard = object()
    state.query(discard, 0, (Change(0, DISCARD_TEMP),))
    assert not state.belief.temp_tables and state.belief.temp_relations == 1  # locked until its transaction ends
    state.ready(discard, b"I")
    assert state.belief == replace(EMPTY_CONTEXT, reprepare=frozenset())  # (SQL PREPAREs before it: prepared again)


def test_idle_ignores_transaction_boundaries() -> None:
    state = SessionState()
    state.query(object(), 0, (tx(SAVEPOINT, 0, "x"), tx(COMMIT, 1)))
    assert state.idle and not state.requests


def test_parameter_status_shows_the_clients_value() -> None:
    """PostgreSQL reports the search_path the proxy sent it: its first entry carries the client's value."""
    state = SessionState()
    shown = 'globex, public, "Mixed"'
    assert state.parameter_status(f'{marked_entry(shown)}, public, "Mixed"') == shown
    assert state.parameter_status(marked_entry("")) == ""
    assert state.parameter_status('"public"') == '"public"'  # the tenant's default, as the startup packet had it
    assert state.parameter_status('public, "Mixed"') == 'public, "Mixed"'  # nothing dropped
    assert state.parameter_status("pg_pgtenant_path_zz, public") == "pg_pgtenant_path_zz, public"  # not hex


def test_temp_relations_count_indexes_sequences_and_drops_until_the_transaction_ends() -> None:
    """PostgreSQL locks what a transaction creates or drops until it ends: a drop counts until then."""
    w = Wire()
    w.query(create("a", 0, relations=3), create("b", 1), Change(2, TEMP_VIEW, "v"))
    w.answer(3, b"T")
    assert w.state.current.temp_relations == 5
    w.query(tx(SAVEPOINT, 0, "s"), Change(1, DROP_TEMP, "a"), create("c", 2), tx(RELEASE, 3, "s"))
    w.answer(4, b"T")
    assert w.state.current.temp_relations == 6 and tables(w.state.current) == {"b", "c"}
    w.query(tx(SAVEPOINT, 0, "s2"), Change(1, DISCARD_TEMP))
    w.answer(2, b"T")
    assert w.state.current.temp_relations == 6 and not tables(w.state.current)
    w.query(tx(ROLLBACK_TO, 0, "s2"))  # the subtransaction's locks go with it
    w.answer(1, b"T")
    assert w.state.current.temp_relations == 6 and tables(w.state.current) == {"b", "c"}
    w.query(tx(COMMIT))
    w.answer(1, b"I", tags=(b"COMMIT\x00",))
    assert w.state.committed.temp_relations == 3  # b, c, v


def test_a_bind_past_the_temp_relation_limit_is_refused() -> None:
    """A prepared CREATE TEMP and DROP decided once can run again and again in one transaction: each Bind counts."""
    state = SessionState()
    state.max_temp_relations = 3
    state.parse("create", (create("t"),))
    state.parse("drop", (Change(0, DROP_TEMP, "t"),))
    request = object()
    runs = 0
    while (denied := _run(state, request, 2 * runs, "create")) is None and runs < 10:
        assert _run(state, request, 2 * runs + 1, "drop") is None
        runs += 1
    assert denied is not None and (denied.sqlstate, denied.rule) == ("53400", "temp_relation_limit")
    assert "limits.max_temp_relations = 3" in denied.message and runs == 3  # three creates ran, all dropped
    state.ready(request, b"I")  # the transaction ended: its drops no longer count
    assert state.belief.temp_relations == 0 and _run(state, object(), 0, "create") is None


def test_a_prepared_export_runs_once_per_transaction() -> None:
    state = SessionState()
    state.parse("ex", (Change(0, EXPORT_SNAPSHOT),))
    request = object()
    assert _run(state, request, 0, "ex") is None  # its own Parse does not count as a run
    denied = _run(state, request, 1, "ex")
    assert denied is not None and (denied.sqlstate, denied.rule) == ("0A000", "snapshot_export_once")
    state.ready(request, b"I")
    assert _run(state, object(), 0, "ex") is None  # a new transaction


def _with_view(name: str = "vc") -> SessionState:
    state = SessionState()
    request = object()
    state.query(request, 0, (Change(0, TEMP_VIEW, name),))
    state.completed(request, 1, b"CREATE VIEW\x00")
    state.ready(request, b"I")
    assert state.belief.temp_views == {name}
    return state


def test_a_removal_parsed_counts_only_once_executed() -> None:
    """Red team 9a9 R3: a Parse of DROP VIEW vc / DISCARD TEMP / DISCARD ALL never run leaves vc in the context the
    rest of the batch is decided in (bound but not executed, or closed, alike); its Execute counts it."""
    for removal in (Change(0, DROP_TEMP, "vc"), Change(0, DISCARD_TEMP)):
        state = _with_view()
        state.parse("d", (removal,))
        assert state.belief.temp_views == {"vc"}  # parsed only
        assert state.bind("d") is None
        assert state.belief.temp_views == {"vc"}  # bound, not executed
        state.close("d")
        assert state.belief.temp_views == {"vc"}
        state.parse("d", (removal,))
        request = object()
        state.execute(request, 0, state.statements["d"])
        assert state.belief.temp_views == frozenset()  # executed: the rest of the request is decided without vc
        state.completed(request, 1, b"DROP VIEW\x00")
        state.ready(request, b"I")
        assert state.belief.temp_views == frozenset()


def test_a_search_path_change_parsed_counts_only_once_executed() -> None:
    """An unbound set_config / SET search_path does not move the path the batch is decided on."""
    state = SessionState()
    state.parse("p", (Change(0, SET_PATH, path=("pg_catalog",)),))
    assert state.belief is EMPTY_CONTEXT
    request = object()
    state.execute(request, 0, state.statements["p"])
    assert state.belief.path == ("pg_catalog",)
    state.failed(request, 0)
    state.ready(request, b"I")
    assert state.belief is EMPTY_CONTEXT


def test_a_create_parsed_counts_at_once_but_never_replaces_a_relation() -> None:
    """A CREATE TEMP parsed counts at once (the stricter direction) but never turns the view vc into a table nor
    the other way round (PostgreSQL refuses the name taken; a temporary table is decided more freely)."""
    state = _with_view()
    state.parse("c", (create("vc"),))
    assert state.belief.temp_views == {"vc"} and not state.belief.temp_tables
    state.parse("t", (create("t"),))
    assert state.belief.temp_views == {"vc"} and tables(state.belief) == {"t"}


def _recomputed(state: SessionState) -> SessionContext:
    """The belief as `current` with every change in flight applied in order (what it must equal)."""
    belief = state.current
    for request in state.requests:
        for _, change in request.changes:
            if change.op not in (ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK_TO):
                belief = belief.apply(change)
    return EMPTY_CONTEXT if belief == EMPTY_CONTEXT else belief


def test_a_pipeline_is_followed_in_linear_work_and_the_belief_stays_right(monkeypatch) -> None:
    """Red team 9s7 S1: each ReadyForQuery worked the belief out again from every request in flight (2,000 pipelined
    SETs: 30 s of the event loop, quadratic); it is left as it is unless something made it stale. Counted in calls
    of `_apply`, never timed."""
    import proxy.sessionstate as sessionstate

    calls = [0]
    original = sessionstate._apply

    def counted(context: SessionContext, changes: tuple[Change, ...]) -> SessionContext:
        calls[0] += 1
        return original(context, changes)

    monkeypatch.setattr(sessionstate, "_apply", counted)
    w = Wire()
    n = 200
    for i in range(n):
        w.query(Change(0, "setting", "rt.k", shown=f"SET rt.k = '{i}'"))
    for _ in range(n):
        w.answer(1, tags=(b"SET",))
        assert w.state.belief == _recomputed(w.state)
    assert calls[0] < 3 * n
    # what makes it stale still works it out again: a failure, a speculative Parse, a SET LOCAL's end
    w.query(Change(0, "setting", "rt.a", shown="SET rt.a = '1'"))
    w.query(Change(0, "setting", "rt.b", shown="SET rt.b = '1'"))
    w.answer(0, error=True)
    assert w.state.belief == _recomputed(w.state) and ("rt.a", "SET rt.a = '1'") not in w.state.belief.settings
    w.answer(1, tags=(b"SET",))
    assert w.state.belief == _recomputed(w.state) and ("rt.b", "SET rt.b = '1'") in w.state.belief.settings
    w.state.parse("s1", (create("t_spec"),))
    assert "t_spec" in w.state.belief.temp_tables
    w.query(Change(0, "setting", "rt.c", shown="SET rt.c = '1'"))
    w.answer(1, tags=(b"SET",))
    assert "t_spec" not in w.state.belief.temp_tables and w.state.belief == _recomputed(w.state)
    w.query(Change(0, SET_PATH, path=("a",), flag=True))
    w.query(Change(0, "setting", "rt.d", shown="SET rt.d = '1'"))
    w.answer(1, tags=(b"SET",))
    assert w.state.belief.local is None and w.state.belief == _recomputed(w.state)


def test_rollback_targets_hold_a_savepoint_sent_in_the_same_write() -> None:
    """What a rollback in flight may take the session back to (rt9a10 A2): the transaction's start, and the context
    at each savepoint -- also one sent and not yet answered, with what was sent before it (a `SET LOCAL
    search_path` there), which a Bind sent after a `ROLLBACK TO` it is checked in."""
    w = Wire()
    w.query(tx(SAVEPOINT, 0, "a"))
    w.answer(1, b"T")
    w.query(Change(0, SET_PATH, path=("information_schema", "public"), flag=True), tx(SAVEPOINT, 1, "s"),
            Change(2, SET_PATH, path=("public",), flag=True), tx(ROLLBACK_TO, 3, "s"))
    targets = w.state.rollback_targets()
    assert [t.effective()[0] for t in targets] == [None, ("information_schema", "public")]  # (a: set while idle)
    assert w.state.ending()


def test_no_statement_record_is_dropped_to_make_room() -> None:
    """Red team 21p F3: the records of 1,000 statements' changes dropped the oldest for the 1,001st (1,000 named +
    the unnamed one, all held by PostgreSQL): a prepared set_config of search_path then ran unfollowed. They hold
    [pool] max_session_statements + 1; a Parse past that records nothing and its name's Binds are refused (lost)
    until it is Parsed again with room or closed; a Parse the server never got (`unparsed`) takes no place."""
    state = SessionState()
    path = Change(0, SET_PATH, path=("information_schema", "globex"))
    filler = (Change(0, SAVEPOINT, "a"),)
    state.parse("s", (path,))
    for k in range(999):
        state.parse(f"f{k}", filler)
    state.parse("", filler)
    assert state.statements["s"] == (path,) and not state.lost_bind("s") and len(state.statements) == 1001
    state.parse("g", filler)  # past the bound: nothing dropped for it
    assert state.statements["s"] == (path,) and "g" not in state.statements and state.lost_bind("g")
    assert not state.idle
    state.close("f0")
    state.parse("g", filler)  # parsed again with room: recorded, bound as any other
    assert state.statements["g"] == filler and not state.lost_bind("g")
    state.parse("h", filler)
    assert state.lost_bind("h")
    state.parse("h", ())  # a statement without changes under the name: nothing to follow
    assert not state.lost_bind("h")
    state.close("g")
    state.parse("r", filler)
    state.unparsed("r")  # refused before the server: no record, no place taken, no name lost
    assert "r" not in state.statements and not state.lost_bind("r") and len(state.statements) == 1000


def test_a_smaller_bound_holds_as_many_records_as_the_server_may_hold() -> None:
    """The records' bound is the session's ([pool] max_session_statements + the unnamed one, set by the session)."""
    state = SessionState()
    state.max_statements = 3
    for name in ("a", "b", ""):
        state.parse(name, (Change(0, SAVEPOINT, "x"),))
    state.parse("c", (Change(0, SAVEPOINT, "x"),))
    assert set(state.statements) == {"a", "b", ""} and state.lost_bind("c") and not state.lost_bind("a")


def test_a_confirmed_deallocate_or_discard_all_frees_the_records() -> None:
    """Review 21 F2: DEALLOCATE, DEALLOCATE ALL and DISCARD ALL never dropped the statements' records (nor lost
    names): a session that prepares and deallocates (psycopg's prepared-statement cache) filled them, and every later
    statement with changes was refused at Bind (past 4,096 lost names, every Bind). Once PostgreSQL answers one, the
    records of what it deallocated go; one it skips (an error before it) frees nothing."""
    w = Wire()
    w.state.max_statements = 3
    filler = (Change(0, SAVEPOINT, "x"),)
    for name in ("a", "b", ""):
        w.state.parse(name, filler)
    w.state.parse("c", filler)
    assert w.state.lost_bind("c")
    w.query(tx(DEALLOCATE, 0, "a"))
    w.answer(0, error=True)  # skipped: nothing freed
    assert set(w.state.statements) == {"a", "b", ""}
    w.query(tx(DEALLOCATE, 0, "a"))
    w.answer(1, tags=(b"DEALLOCATE",))
    assert set(w.state.statements) == {"b", ""}
    w.state.parse("c", filler)
    assert not w.state.lost_bind("c") and set(w.state.statements) == {"b", "c", ""}
    w.state.parse("d", filler)
    assert w.state.lost_bind("d")
    w.query(tx(DEALLOCATE, 0, ""))  # DEALLOCATE ALL: every named one (the unnamed statement's record stays)
    w.answer(1, tags=(b"DEALLOCATE ALL",))
    assert set(w.state.statements) == {""} and not w.state.lost_bind("d")
    w.state.parse("e", filler)
    w.state.parse("f", filler)
    w.state.parse("g", filler)
    assert w.state.lost_bind("g")
    w.query(tx(DISCARD_ALL, 0))
    w.answer(1, tags=(b"DISCARD ALL",))
    assert set(w.state.statements) == {""} and not w.state.lost_bind("g")


def test_a_deallocate_frees_only_the_records_made_before_it_was_sent() -> None:
    """Red team 22p G1: a Parse sent behind a DEALLOCATE / DEALLOCATE ALL / DISCARD ALL in the same write runs after
    it and makes a statement PostgreSQL keeps: the answer frees only the records made before it was sent."""
    path = (Change(0, SAVEPOINT, "x"),)
    for forget in (tx(DEALLOCATE, 0, "s"), tx(DEALLOCATE, 0, ""), tx(DISCARD_ALL, 0)):
        w = Wire()
        w.state.parse("s", path)
        w.state.parse("old", path)
        w.query(forget)
        w.state.parse("s", path)  # (behind it: the same name again)
        w.state.parse("t", path)  # (behind it: a new name)
        w.answer(1, tags=(b"DEALLOCATE",))
        assert w.state.statements.get("s") == path and w.state.statements.get("t") == path
        assert ("old" in w.state.statements) == (forget.name == "s")


def test_under_statement_maps_only_the_maps_deallocate_frees_a_record() -> None:
    """Red team 22p G2: under the statement maps a SQL DEALLOCATE PostgreSQL runs reaches its SQL statement of that
    name, never the client's protocol one: nothing freed, unless the maps sent it in place of the client's."""
    path = (Change(0, SAVEPOINT, "x"),)
    w = Wire()
    w.state.renamed = True
    w.state.parse("x", path)
    w.query(tx(DEALLOCATE, 0, "x"))
    w.answer(1, tags=(b"DEALLOCATE",))
    assert w.state.statements.get("x") == path
    w.state.maps_deallocate(w.query(tx(DEALLOCATE, 0, "x")), "y")  # (red team 22v V1: the maps read another name)
    w.answer(1, tags=(b"DEALLOCATE",))
    assert w.state.statements.get("x") == path
    w.state.maps_deallocate(w.query(tx(DEALLOCATE, 0, "x")), "x")
    w.answer(1, tags=(b"DEALLOCATE",))
    assert "x" not in w.state.statements
    w.state.parse("y", path)
    w.query(tx(DISCARD_ALL, 0))  # (the maps forget every statement too: consistent)
    w.answer(1, tags=(b"DISCARD ALL",))
    assert "y" not in w.state.statements
