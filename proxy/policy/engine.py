"""Decides allow / rewrite / deny for a tenant's SQL text (one Query or Parse message string)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from time import perf_counter
from typing import Any

from pglast.parser import ParseError

from proxy.policy import (
    aclinput,
    agent,
    classify,
    context,
    estimates,
    functions,
    hiding,
    implicit,
    nametypes,
    readonly,
    rewrite,
    schema,
    settings,
    timeouts,
)
from proxy.policy.catalog import may_name_filtered
from proxy.policy.context import refusal
from proxy.policy.guards import may_need_guard
from proxy.policy.model import (
    ADMIT,
    DECLARES_CURSOR,
    EXPORT_SNAPSHOT,
    MAY_SET_SEQUENCES,
    MAY_USE_SEQUENCES,
    PIN,
    READ_ONLY,
    REAPPLY_CONTEXT,
    SESSION_STATEMENTS,
    SESSION_STATEMENTS_MARKER,
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
from proxy.policy.rules import Denied, deny, fail
from proxy.policy.sqltext import Edit, TextError, apply_edits, quote_literal
from proxy.policy.tree import Node, Statement, TreeTooLarge, const_text, parse
from proxy.policy.verify import Unverified, check_coverage, intended_json, reads_of, verify_rewrite
from proxy.policy.walk import COPY_FROM, TARGET, TRUNCATE, Analysis, analyze


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one Query/Parse string may ask of the engine (config `limits.max_statements_per_query` and
    `limits.max_parse_tree_nodes`, where the defaults are): past either, it is denied with 54001 before it is
    walked."""

    max_statements: int
    max_nodes: int
    max_temp_relations: int = 1 << 62  # config `limits.max_temp_relations`: SessionContext.temp_relations


UNLIMITED = Limits(max_statements=1 << 62, max_nodes=1 << 62)
_UNSEEN = frozenset({UNSEEN_SCHEMA})
_MAX_DETAIL = 200  # characters of a parser message quoted in a denial (it may quote a token of any length)


def decide(
    policy: TenantPolicy, sql: str, timings: dict[str, float] | None = None, limits: Limits = UNLIMITED,
    edits: list[Edit] | None = None,
) -> Decision:
    """Decide one Query/Parse string. Never raises: anything unexpected is a Deny (fail closed).

    With `timings`, the seconds spent in each stage are added under "gate", "rewrite" and "verify". With `edits`, the
    edits the rewrite made of the text (of a Deny's `before`, for a Deny) are added there.
    """
    renamed = None
    try:
        renamed = hiding.rename(policy, sql)  # hidden schemas: PostgreSQL answers as for missing ones
        if renamed is not None:
            sql = renamed.sql
            edits = []
        decision = _decide(policy, sql, timings if timings is not None else {}, limits, edits)
    except hiding.Unrenamed as exc:
        decision = deny("rewrite_unverified", f"the tenant filter could not be verified: {exc}")
    except Denied as exc:
        decision = exc.decision
    except RecursionError:
        return deny("statement_too_complex", "the statement is nested too deeply to be checked")
    except MemoryError:
        return deny("statement_too_large", "the statement needs more memory to check than pgtenant allows")
    except Exception as exc:  # fail closed on any defect
        return deny("internal_error", f"could not decide the statement ({type(exc).__name__})")
    if type(decision) is Deny and decision.position:  # a byte offset + 1: PostgreSQL counts characters
        at = len(sql.encode("utf-8")[: decision.position - 1].decode("utf-8", "ignore")) + 1 + decision.shift
        decision = replace(decision, position=at, shift=0)
    if renamed is not None:
        decision = _renamed_back(decision, renamed, edits or ())
    return decision


def _renamed_back(decision: Decision, renamed: hiding.Renamed, edits: list[Edit] | tuple[()]) -> Decision:
    """The decision on a renamed text (hiding.py): sent renamed, with the names to write back in PostgreSQL's answer;
    a refusal of the proxy's own names and places what the client wrote. A hidden schema's and a missing one's
    alike (both renamed: red team 9a8 N2); carrying UNSEEN_SCHEMA: the session's last line guards from then on (red
    team 9a6 G3)."""
    if type(decision) is Allow:
        return Rewrite(renamed.sql, (hiding.RULE,), decision.effects | _UNSEEN, decision.changes,
                       names=renamed.names, moved=renamed.moved)
    if type(decision) is Rewrite:
        return replace(decision, rules=(*decision.rules, hiding.RULE), names=renamed.names,
                       moved=renamed.moves(decision.sql, edits), effects=decision.effects | _UNSEEN)
    assert type(decision) is Deny
    position = hiding.position_back(decision.position, renamed.moved) if decision.position else 0
    before = decision.before  # the statements run first were sent renamed too: their answers name the client's
    if before is not None:
        before = replace(before, names=renamed.names, moved=renamed.moves(before.sql, edits),
                         effects=before.effects | _UNSEEN)
    return replace(decision, message=hiding.restored(decision.message, renamed.names),
                   hint=hiding.restored(decision.hint, renamed.names), position=position, before=before)


def _decide(policy: TenantPolicy, sql: str, timings: dict[str, float], limits: Limits,
            edits: list[Edit] | None = None) -> Decision:
    t0 = perf_counter()
    if "\x00" in sql:
        raise fail("parse_error", "the query text contains a NUL byte")
    data = sql.encode("utf-8")
    try:
        original_json, doc, statements = parse(sql, len(data), limits.max_nodes)
    except ParseError as exc:
        detail = str(exc)
        if len(detail) > _MAX_DETAIL:
            detail = detail[:_MAX_DETAIL] + "..."
        raise fail("parse_error", f"syntax error: {detail}") from None
    except TreeTooLarge as exc:
        raise fail(
            "statement_too_large",
            f"the statement's parse tree has {exc.nodes} nodes, more than the limit of {limits.max_nodes}",
        ) from None
    count = len(statements)
    if count > limits.max_statements:
        raise fail(
            "too_many_statements",
            f"the query string has {count} statements, more than the limit of {limits.max_statements}",
        )
    plan = rewrite.Plan()
    effects: set[str] = set()
    changes: list[Change] = []
    current = policy
    policies: list[TenantPolicy] = []  # the policy each statement is decided and verified under
    each: list[frozenset[str]] = []  # the effects of each statement (the agent profile's single-statement rule)
    hidden: tuple[int, Deny] | None = None  # the first statement naming a hidden schema, answered as a missing one
    for index, stmt in enumerate(statements):
        try:
            stmt_effects, stmt_changes = _decide_statement(current, data, stmt, plan, index)
            if REAPPLY_CONTEXT in stmt_effects and index != count - 1:
                raise fail("context_reset_not_last", "DISCARD ALL / RESET ALL must be the last statement")
            after = _after(current.context, stmt_changes, limits.max_temp_relations)
        except Denied as exc:
            if not schema.as_missing(exc.decision):
                if count == 1:
                    raise
                return replace(exc.decision, statement=(index + 1, count))
            # A missing schema is PostgreSQL's to answer, after the proxy has decided the whole string: a later
            # refusal of the proxy's own comes first, so for a hidden one too.
            hidden = hidden or (index, exc.decision)
            each.append(_admitted_as_missing(policy, stmt))
            stmt_changes = context.statement_changes(stmt.kind, stmt.body, index)  # as if the schema were missing
            if stmt_changes and index != count - 1:
                try:
                    current = current.with_context(_after(current.context, stmt_changes, limits.max_temp_relations))
                except Denied as past:
                    return replace(past.decision, statement=(index + 1, count))
            continue
        effects |= stmt_effects
        if stmt.kind == "DeclareCursorStmt":
            effects.add(DECLARES_CURSOR)
        each.append(stmt_effects)
        policies.append(current)
        if stmt_changes:
            changes += stmt_changes
            if index != count - 1:  # the later statements see what this one does to the session
                current = current.with_context(after)
    if policy.agent_max_rows is not None:
        agent.single_admitted(each)
    if hidden is not None:
        return _answered_as_missing(policy, data, statements, *hidden, limits, edits)
    if readonly.verdict([stmt.node for stmt in statements], reached=policy.reached):  # (before the rewrite's mutations)
        effects.add(READ_ONLY)
    t1 = perf_counter()
    timings["gate"] = timings.get("gate", 0.0) + (t1 - t0)
    nodes = [stmt.node for stmt in statements]
    if not plan.edits:
        _check_capped(policy, nodes, statements)
        try:
            low = sql.lower()
            if plan.verify or may_need_guard(low) or any(may_name_filtered(p, low) for p in _distinct(policies)):
                for p, node in zip(policies, nodes, strict=True):
                    check_coverage(p, node)
        except Unverified as exc:
            raise fail("rewrite_unverified", str(exc)) from None
        finally:
            timings["verify"] = timings.get("verify", 0.0) + (perf_counter() - t1)
        return Allow(frozenset(effects), tuple(changes))
    try:
        new_sql = apply_edits(data, plan.edits)
        explain = (estimates.explain_text(policy, data, statements, plan.edits)
                   if ADMIT in effects and policy.strategy == "shared" else None)
        reads = [reads_of(stmt.node) for stmt in statements] if "catalog_filter" in plan.rules else None
        rewrite.mutate_all(plan)
        t2 = perf_counter()
        timings["rewrite"] = timings.get("rewrite", 0.0) + (t2 - t1)
        intended = intended_json(original_json, doc, plan.splices, plan.full_dump)
        verify_rewrite(list(zip(policies, nodes, strict=True)), intended, new_sql, reads)
        _check_capped(policy, nodes, statements)
        timings["verify"] = timings.get("verify", 0.0) + (perf_counter() - t2)
    except (Unverified, TextError, ParseError) as exc:
        raise fail("rewrite_unverified", f"the tenant filter could not be verified: {exc}") from None
    if SESSION_STATEMENTS in plan.rules and (
        SESSION_STATEMENTS_MARKER in sql or new_sql.count(SESSION_STATEMENTS_MARKER) != plan.session_lists
    ):  # the session fills in the list where the marker is: only where the policy put it (a client's name or value
        # the rewrite re-quotes, e.g. an identifier spelled with U& escapes, must not become one: fail closed)
        raise fail("reserved_statement_name", f"the text {SESSION_STATEMENTS_MARKER} is reserved for the proxy")
    if edits is not None:
        edits.extend(plan.edits)
    return Rewrite(new_sql, tuple(plan.rules), frozenset(effects), tuple(changes), explain=explain)


def _answered_as_missing(policy: TenantPolicy, data: bytes, statements: list[Statement], index: int, denial: Deny,
                         limits: Limits, edits: list[Edit] | None = None) -> Deny:
    """A hidden schema answered as a missing one, also in when (the DDL phase oracle): a statement PostgreSQL
    analyzes only when it runs is refused when it runs (`Deny.at_run`), and the statements of a Query before the
    refused one run first (`Deny.before`: decided as a Query of their own; if that fails, nothing runs). An agent's
    string gets here only when none of its statements is admitted by its estimate (`agent.single_admitted`)."""
    count = len(statements)
    if statements[index].kind not in classify.ANALYZED_AT_PARSE:
        denial = replace(denial, at_run=True)
    if count == 1:
        return denial
    denial = replace(denial, statement=(index + 1, count))
    if index == 0:
        return denial
    text = data[: statements[index].start].decode("utf-8")
    before = decide(policy, text, limits=limits, edits=edits)
    if type(before) is Deny:
        return denial
    if type(before) is Allow:
        before = Rewrite(text, (), before.effects, before.changes)
    return replace(denial, before=before)


def _admitted_as_missing(policy: TenantPolicy, stmt: Statement) -> frozenset[str]:
    """An agent's statement naming a hidden schema: admitted by its estimate as it would be were the schema missing."""
    if policy.agent_max_rows is None:
        return frozenset()
    return agent.admission(policy, stmt.kind, stmt.node, analyze(stmt.node))


def _check_capped(policy: TenantPolicy, nodes: list[Node], statements: list[Statement]) -> None:
    """The agent profile's row cap, checked on the statements as they are sent (the verifier's last word). A SHOW
    the proxy answers with a SELECT (a search_path read-back) is one row, or one per setting for SHOW ALL: no cap."""
    if policy.agent_max_rows is not None and not all(
        agent.capped(n, policy.agent_max_rows) for n, st in zip(nodes, statements, strict=True)
        if st.kind != "VariableShowStmt"
    ):
        raise fail("rewrite_unverified", f"a query is not limited to {policy.agent_max_rows} rows")


def _after(context: SessionContext, changes: list[Change], limit: int) -> SessionContext:
    """The session's context after a statement's changes (refused past what a session may hold)."""
    if not changes:
        return context
    after, denied = refusal(context, changes, limit)
    if denied is not None:
        raise Denied(denied)
    return after


def _show(policy: TenantPolicy, data: bytes, stmt: Statement, name: str, plan: rewrite.Plan) -> None:
    """SHOW search_path / statement_timeout / ALL print the client's own values where PostgreSQL has others."""
    path = settings.path_read_at_run_time(policy)
    if name == "search_path" and path:
        _located(rewrite.show_value, policy, data, stmt, "search_path", settings.RESULT_PATH_SQL, plan)
    elif name == timeouts.NAME:
        value = timeouts.read_expression(policy, "pgt_r.v")
        if value is not None:
            _located(rewrite.show_value, policy, data, stmt, timeouts.NAME, value, plan, timeouts.SHOWN_RULE)
    elif name == "all":
        timeout = timeouts.read_expression(policy, f"pg_catalog.current_setting('{timeouts.NAME}')")
        if path or timeout is not None:
            _located(rewrite.show_all, policy, data, stmt, settings.CURRENT_PATH_SQL if path else None, timeout, plan)


def _distinct(policies: list[TenantPolicy]) -> list[TenantPolicy]:
    return policies if len(policies) < 2 or policies[0] is policies[-1] else list(dict.fromkeys(policies))


def _steady(policy: TenantPolicy, analysis: Any) -> bool:
    """Whether every relation name a PREPARE's statement writes unqualified is a CTE's or a `pg_…` system relation's
    (none of the session's temporary relations): PostgreSQL resolves them alike on any search_path
    (`SessionContext.steady`)."""
    temps = policy.temp_tables | policy.temp_views
    for ref in analysis.refs:
        rv = ref.rv
        if ref.cte or rv.get("schemaname") is not None:
            continue
        name = str(rv.get("relname", ""))
        if not name.startswith("pg_") or name in temps:
            return False
    return True


def _check_prepared_here(policy: TenantPolicy, kind: str, body: Node) -> None:
    """Refuse an EXECUTE (also under EXPLAIN or CREATE TABLE AS) of a statement not prepared in the session's
    current name resolution (`SessionContext.reprepare`)."""
    fresh = policy.context.reprepare
    if fresh is None:
        return
    execute = body if kind == "ExecuteStmt" else (
        (body.get("query") or {}).get("ExecuteStmt") if kind in ("ExplainStmt", "CreateTableAsStmt") else None)
    if execute is not None and execute.get("name") not in fresh and execute.get("name") not in policy.context.steady:
        raise fail("prepared_elsewhere", f'prepared statement "{execute.get("name")}" was prepared before a temporary '
                   "relation was made or dropped or the search_path changed; it is not run in this context")


def _decide_statement(
    policy: TenantPolicy, data: bytes, stmt: Statement, plan: rewrite.Plan, index: int
) -> tuple[frozenset[str], list[Change]]:
    kind, body = stmt.kind, stmt.body
    if policy.agent_max_rows is not None:
        agent.check_statement(policy, kind, body)
    effects = classify.gate(policy, kind, body)
    if kind == "ExecuteStmt":  # a SQL prepared statement may write (its PREPARE pinned the session, not its runs)
        effects |= {MAY_SET_SEQUENCES}
    _check_prepared_here(policy, kind, body)
    changes = context.statement_changes(kind, body, index)
    if kind == "VariableSetStmt":
        args = body.get("args") or ()
        row_security_on = body.get("name", "").lower() == "row_security" and len(args) == 1 and (
            settings.row_security_off(policy, const_text(args[0])))
        if row_security_on:
            _located(rewrite.replace_literal, policy, data, stmt, args[0], "on", plan, ROW_SECURITY_KEPT)
        change = None
        if body.get("name", "").lower() == "search_path":
            change, kept = settings.search_path_change(policy, body, index)
            if kept is not None and change is not None and change.shown is not None:
                _located(rewrite.set_arguments, policy, data, stmt, kept, change.shown, plan)
            if change is not None:
                changes.append(change)
        text = data[stmt.start : stmt.end].decode("utf-8")
        shown = timeouts.set_change(policy, body, index)
        if shown is not None:
            changes.append(shown)
        clamp = timeouts.set_value(policy, body)
        if clamp is not None:  # above the user's statement_timeout limit: PostgreSQL gets the limit
            _located(rewrite.replace_literal, policy, data, stmt, clamp[0], clamp[1], plan, timeouts.RULE)
            text = timeouts.set_statement(clamp[1])
        changes += settings.session_setting(body, index, text, change, row_security_on)
        return effects, changes
    if kind == "VariableShowStmt":
        _show(policy, data, stmt, body.get("name", "").lower(), plan)
        return effects, changes
    if kind == "DropStmt":
        _located(rewrite.qualify_drop, policy, data, stmt, plan)
        plan.verify = True
        return effects, changes
    if kind == "FetchStmt":  # a cursor's query runs at each FETCH / MOVE (a view's nextval() with it)
        return effects | {MAY_USE_SEQUENCES}, changes
    if kind == "ConstraintsSetStmt":  # SET CONSTRAINTS s.c: PostgreSQL looks the schema up (red team 9a G11)
        schema.check_constraint_names(policy, body)
    if kind not in classify.WALKED:
        return effects, changes
    analysis = analyze(stmt.node)
    if nametypes.may_name(analysis):
        nametypes.check(stmt.node)
    nametypes.check_acl_input(stmt.node, analysis)
    new_table = implicit.new_table_query(kind, body)
    if new_table is not None:
        implicit.check_new_table(stmt.node, new_table)
    aclinput.check(stmt.node, analysis)  # `relacl @> '{…}'`, `'…' = ANY (nspacl)`, …: the value is read as aclitem
    schema.check_cross_database(analysis)
    classify.check_references(policy, analysis)
    select = body if kind == "SelectStmt" else None
    if functions.check(policy, analysis, select):
        # an admitted routine reached without a call (`o.f`, an operator, a cast, an overload) leaves on the server
        # what a call of it would: the session pins as for that call (context.call_changes)
        changes.append(Change(index, PIN, "function"))
    try:
        schema.check_schemas(policy, analysis)  # last: a hidden schema is refused as a missing one would be, no sooner
    except Denied as exc:
        raise Denied(_placed(policy, data, stmt, analysis, plan, exc.decision)) from None
    if kind == "ViewStmt":
        _located(rewrite.wrap_view, policy, data, stmt, plan)
    since = plan.object_guards
    try:
        rewrite.plan(policy, data, stmt, analysis, plan)
        if policy.agent_max_rows is not None:
            agent.cap(policy, data, stmt, policy.agent_max_rows, plan)
    except TextError as exc:
        raise fail("rewrite_unverified", f"could not locate a reference in the text: {exc}") from None
    if kind == "PrepareStmt" and not rewrite.explain_opaque(policy, analysis, plan, since):
        changes = [replace(c, flag=True) if c.op == SQL_PREPARE else c for c in changes]
    if kind == "PrepareStmt" and _steady(policy, analysis):
        changes = [replace(c, steady=True) if c.op == SQL_PREPARE else c for c in changes]
    for call in analysis.calls:
        setting = settings.set_config_setting(call, select)
        literal = None
        if setting == "row_security" and settings.row_security_off(policy, settings.literal_arg(call, 1)):
            _located(rewrite.replace_literal, policy, data, stmt, _below_casts(call.args[1]), "on", plan,
                     ROW_SECURITY_KEPT)
            literal = "on"
        if setting == timeouts.NAME and policy.statement_timeout_ms:
            literal = timeouts.clamped(policy, settings.literal_arg(call, 1))
            if literal is not None:
                _located(rewrite.replace_literal, policy, data, stmt, _below_casts(call.args[1]), literal, plan,
                         timeouts.RULE)
            if context.runs_now(kind):
                shown = timeouts.set_config_change(call, settings.literal_arg(call, 1), index)
                changes.append(shown)
                if literal is not None and call.holder is not None:  # set_config() returns the value as now set
                    _located(rewrite.call_result, policy, data, stmt, call.holder[call.key],
                             f"{quote_literal(shown.shown or '')}::pg_catalog.text", plan, timeouts.SHOWN_RULE)
        elif call.holder is not None and timeouts.reads_timeout(call):
            value = timeouts.read_expression(policy, "pgt_r.v")
            if value is not None:
                _located(rewrite.call_result, policy, data, stmt, call.holder[call.key], value, plan,
                         timeouts.SHOWN_RULE)
        if call.names[-1] == "pg_export_snapshot":
            changes.append(Change(index, EXPORT_SNAPSHOT))
        if setting == "search_path":
            change, literal = settings.set_config_path(policy, call, index)
            if literal is not None:
                _located(rewrite.replace_literal, policy, data, stmt, _below_casts(call.args[1]), literal, plan)
                _located(rewrite.call_result, policy, data, stmt, call.holder[call.key],
                         f"{quote_literal(change.shown or '')}::pg_catalog.text", plan)
            changes.append(change)
        elif (settings.path_read_at_run_time(policy) and call.holder is not None
              and settings.reads_search_path(call) is not None):  # search_path's value, or a computed name's
            _located(rewrite.call_result, policy, data, stmt, call.holder[call.key], settings.RESULT_PATH_SQL, plan)
        if setting is not None:
            held = settings.set_config_change(call, setting, index, literal)
            if held is not None:
                changes.append(context.deferred_setting(kind, held))
        else:
            changes += context.call_changes(call, index)
    effects |= context.sequence_effects(analysis.refs, analysis.calls)
    if any(ref.role in WRITES for ref in analysis.refs):
        plan.verify = True  # the write rule: verified whatever names the statement uses
        effects |= {MAY_SET_SEQUENCES}
    elif kind in classify.CREATES:
        plan.verify = True
    if policy.agent_max_rows is not None:
        effects |= agent.admission(policy, kind, stmt.node, analysis, rewrite.adds_catalog_guard(plan, since))
    return effects, changes


def _placed(policy: TenantPolicy, data: bytes, stmt: Statement, analysis: Analysis, plan: rewrite.Plan,
            denial: Deny) -> Deny:
    """PostgreSQL places a missing schema in the text it is sent: what the rewrite writes before the name (a view's
    wrapper, EXPLAIN's COSTS OFF, a tenant filter, earlier statements' rewrites) counts, so a hidden one's position
    counts it too (`Deny.shift`). The statement's rewrite is planned as if the name were missing, then dropped."""
    if not denial.position:
        return denial
    trial = rewrite.Plan()
    try:
        if stmt.kind == "ViewStmt":
            rewrite.wrap_view(policy, data, stmt, trial)
        rewrite.plan(policy, data, stmt, analysis, trial)
    except (Denied, TextError):
        pass  # what it planned up to there is what counts
    at = denial.position - 1
    shift = 0
    for e in (*plan.edits, *trial.edits):
        if e.end <= at:
            shift += len(e.text) - len(data[e.start : e.end].decode("utf-8", "ignore"))
    return replace(denial, shift=shift)


WRITES = frozenset({TARGET, COPY_FROM, TRUNCATE})
ROW_SECURITY_KEPT = "row_security_kept"  # rewrite rule: row_security off reaches PostgreSQL as on (shared)


def _below_casts(node: Node) -> Node:
    while "TypeCast" in node:
        node = node["TypeCast"]["arg"]
    return node


def _located(edit: Callable[..., None], *args: Any) -> None:
    """Run a rewrite step that finds its place in the text; a text it cannot read is refused."""
    try:
        edit(*args)
    except TextError as exc:
        raise fail("rewrite_unverified", f"could not locate the statement's parts in the text: {exc}") from None
