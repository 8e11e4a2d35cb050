"""Decides allow / rewrite / deny for a tenant's SQL text (one Query or Parse message string)."""

from __future__ import annotations

from collections import OrderedDict
from time import perf_counter
from typing import TypeVar

from pglast.parser import ParseError

from proxy.policy import classify, functions, rewrite, schema, shape
from proxy.policy.catalog import may_name_filtered
from proxy.policy.model import REAPPLY_CONTEXT, Allow, Decision, Deny, Rewrite, TenantPolicy
from proxy.policy.rules import Denied, deny, fail
from proxy.policy.sqltext import TextError, apply_edits
from proxy.policy.tree import Statement, parse
from proxy.policy.verify import Unverified, check_coverage, intended_json, verify_rewrite
from proxy.policy.walk import analyze

_V = TypeVar("_V")


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
            if may_name_filtered(policy, sql):
                for stmt in statements:
                    check_coverage(policy, stmt.node)
        except Unverified as exc:
            raise fail("rewrite_unverified", str(exc)) from None
        finally:
            timings["verify"] = timings.get("verify", 0.0) + (perf_counter() - t1)
        return Allow(frozenset(effects))
    try:
        new_sql = apply_edits(data, plan.edits)
        rewrite.mutate_all(plan)
        t2 = perf_counter()
        timings["rewrite"] = timings.get("rewrite", 0.0) + (t2 - t1)
        intended = intended_json(original_json, doc, plan.splices, plan.full_dump)
        verify_rewrite(policy, intended, [stmt.node for stmt in statements], new_sql)
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
    if policy.strategy == "schema":
        schema.check_schemas(policy, analysis)
    classify.check_references(policy, analysis)
    functions.check(policy, analysis)
    try:
        rewrite.plan(policy, data, stmt, analysis, plan)
    except TextError as exc:
        raise fail("rewrite_unverified", f"could not locate a reference in the text: {exc}") from None
    return effects


class DecisionCache:
    """A bounded LRU of decisions keyed by (policy, SQL text); a policy compares by value (its `cache_id`).

    Plain simple-protocol text with integer literals is keyed by its shape (`proxy.policy.shape`), so
    `... WHERE id = 1` and `... WHERE id = 2` share one entry when the shape's decision holds for both.
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[tuple[int, str], Decision] = OrderedDict()
        self._shapes: OrderedDict[tuple[int, str], shape.ShapeDecision] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data) + len(self._shapes)

    def cached(self, policy: TenantPolicy, sql: str) -> Decision | None:
        """The cached decision for (policy, sql), by text or by shape (counted as a hit), else None."""
        key = (policy.cache_id, sql)
        found = self._data.get(key)
        if found is not None:
            self._data.move_to_end(key)
            self.hits += 1
            return found
        split = shape.split(sql)
        if split is None:
            return None
        skey = (policy.cache_id, split[0])
        by_shape = self._shapes.get(skey)
        if by_shape is None:  # not seen, or seen and not usable: the text decides
            return None
        self._shapes.move_to_end(skey)
        self.hits += 1
        return by_shape if isinstance(by_shape, Allow) else by_shape.fill(split[1])

    def get_or_decide(
        self, policy: TenantPolicy, sql: str, timings: dict[str, float] | None = None
    ) -> Decision:
        """The cached decision for (policy, sql), deciding and caching it on a miss (stage times in
        `timings` on a miss only)."""
        found = self.cached(policy, sql)
        if found is not None:
            return found
        return self.decide_miss(policy, sql, timings)

    def decide_miss(self, policy: TenantPolicy, sql: str, timings: dict[str, float] | None = None) -> Decision:
        """Decide (policy, sql) after `cached()` found nothing, and cache the outcome (counted as a miss)."""
        self.misses += 1
        split = shape.split(sql)
        if split is not None:
            key, literals = split
            skey = (policy.cache_id, key)
            if skey not in self._shapes:
                text = shape.text(key)
                by_shape = shape.from_decision(text, len(literals), decide(policy, text, timings))
                self._store(self._shapes, skey, by_shape)
                if by_shape is not None:
                    return by_shape if isinstance(by_shape, Allow) else by_shape.fill(literals)
                timings = None  # the stage times are the shape's
        return self._store(self._data, (policy.cache_id, sql), decide(policy, sql, timings))

    def _store(self, data: OrderedDict[tuple[int, str], _V], key: tuple[int, str], value: _V) -> _V:
        data[key] = value
        if len(data) > self.maxsize:
            data.popitem(last=False)
        return value

    def clear(self) -> None:
        """Drop every cached decision (e.g. after a configuration reload)."""
        self._data.clear()
        self._shapes.clear()
