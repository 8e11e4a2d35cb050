"""Decides allow / rewrite / deny for a tenant's SQL text (one Query or Parse message string)."""

from __future__ import annotations

from time import perf_counter

from pglast.parser import ParseError

from proxy.policy import classify, functions, rewrite, schema
from proxy.policy.catalog import may_name_filtered
from proxy.policy.guards import may_need_guard
from proxy.policy.model import REAPPLY_CONTEXT, Allow, Decision, Deny, Rewrite, TenantPolicy
from proxy.policy.rules import Denied, deny, fail
from proxy.policy.sqltext import TextError, apply_edits
from proxy.policy.tree import Statement, parse
from proxy.policy.verify import Unverified, check_coverage, intended_json, reads_of, verify_rewrite
from proxy.policy.walk import analyze


def decide(policy: TenantPolicy, sql: str, timings: dict[str, float] | None = None) -> Decision:
    """Decide one Query/Parse string. Never raises: anything unexpected is a Deny (fail closed).

    With `timings`, the seconds spent in each stage are added under "gate", "rewrite" and "verify".
    """
    try:
        return _decide(policy, sql, timings if timings is not None else {})
    except Denied as exc:
        return exc.decision
    except RecursionError:
        return deny("statement_too_complex", "the statement is nested too deeply to be checked")
    except Exception as exc:  # fail closed on any defect
        return deny("internal_error", f"could not decide the statement ({type(exc).__name__})")


def _decide(policy: TenantPolicy, sql: str, timings: dict[str, float]) -> Decision:
    t0 = perf_counter()
    if "\x00" in sql:
        raise fail("parse_error", "the query text contains a NUL byte")
    data = sql.encode("utf-8")
    try:
        original_json, doc, statements = parse(sql, len(data))
    except ParseError as exc:
        raise fail("parse_error", f"syntax error: {exc}") from None
    plan = rewrite.Plan()
    effects: set[str] = set()
    count = len(statements)
    for index, stmt in enumerate(statements):
        try:
            stmt_effects = _decide_statement(policy, data, stmt, plan)
            if REAPPLY_CONTEXT in stmt_effects and index != count - 1:
                raise fail("context_reset_not_last", "DISCARD ALL / RESET ALL must be the last statement")
        except Denied as exc:
            if count == 1:
                raise
            d = exc.decision
            where = f"statement {index + 1} of {count}: "
            return Deny(d.sqlstate, d.message.replace("pgtenant: ", "pgtenant: " + where, 1), d.hint, d.rule)
        effects |= stmt_effects
    t1 = perf_counter()
    timings["gate"] = timings.get("gate", 0.0) + (t1 - t0)
    if not plan.edits:
        try:
            low = sql.lower()
            if may_name_filtered(policy, low) or may_need_guard(low):
                for stmt in statements:
                    check_coverage(policy, stmt.node)
        except Unverified as exc:
            raise fail("rewrite_unverified", str(exc)) from None
        finally:
            timings["verify"] = timings.get("verify", 0.0) + (perf_counter() - t1)
        return Allow(frozenset(effects))
    try:
        new_sql = apply_edits(data, plan.edits)
        reads = [reads_of(stmt.node) for stmt in statements] if "catalog_filter" in plan.rules else None
        rewrite.mutate_all(plan)
        t2 = perf_counter()
        timings["rewrite"] = timings.get("rewrite", 0.0) + (t2 - t1)
        intended = intended_json(original_json, doc, plan.splices, plan.full_dump)
        verify_rewrite(policy, intended, [stmt.node for stmt in statements], new_sql, reads)
        timings["verify"] = timings.get("verify", 0.0) + (perf_counter() - t2)
    except (Unverified, TextError, ParseError) as exc:
        raise fail("rewrite_unverified", f"the tenant filter could not be verified: {exc}") from None
    return Rewrite(new_sql, tuple(plan.rules), frozenset(effects))


def _decide_statement(policy: TenantPolicy, data: bytes, stmt: Statement, plan: rewrite.Plan) -> frozenset[str]:
    effects = classify.gate(policy, stmt.kind, stmt.body)
    if stmt.kind not in classify.WALKED:
        return effects
    analysis = analyze(stmt.node)
    schema.check_cross_database(analysis)
    schema.check_schemas(policy, analysis)
    classify.check_references(policy, analysis)
    functions.check(policy, analysis)
    try:
        rewrite.plan(policy, data, stmt, analysis, plan)
    except TextError as exc:
        raise fail("rewrite_unverified", f"could not locate a reference in the text: {exc}") from None
    return effects
