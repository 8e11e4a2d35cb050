"""Policies and the fixture-file loader for the policy engine tests (tests/fixtures/policy/*.txt)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from proxy.policy import TenantPolicy
from proxy.policy.model import SessionContext

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "policy"

_SCOPED = {
    ("sales", "orders"): "tenant_id",
    ("sales", "customers"): "tenant_id",
    ("sales", "order_items"): "tenant_id",
    ("public", "events"): "tenant_id",
}
_SHARED = TenantPolicy(
    tenant="acme",
    strategy="shared",
    tenant_value="acme",
    scoped_tables=_SCOPED,
    rls_tables=frozenset(_SCOPED),  # forced RLS on every scoped table, as `pgtenant provision` leaves it
    search_path=("sales", "public"),
    extra_allowed_functions=frozenset({"public.fiscal_quarter"}),
    denied_functions=frozenset({"pg_sleep_for"}),
    foreign_schemas=frozenset({"tenant_globex"}),  # another tenant's schema in the same database
)
_SCHEMA = TenantPolicy(tenant="acme", strategy="schema", tenant_schema="tenant_acme", shared_schemas=("ref",))
_DATABASE = TenantPolicy(tenant="acme", strategy="database")

POLICIES: dict[str, TenantPolicy] = {
    "shared": _SHARED,
    "shared_rw": dataclasses.replace(_SHARED, allow_writes=True),
    "shared_noddl": dataclasses.replace(_SHARED, allow_ddl_temp=False),
    "shared_fence": dataclasses.replace(_SHARED, fence=True, rls_tables=frozenset()),
    "schema": _SCHEMA,
    "schema_rw": dataclasses.replace(_SCHEMA, allow_writes=True),
    "database": _DATABASE,
    "database_rw": dataclasses.replace(_DATABASE, allow_writes=True),
}


@dataclass(frozen=True)
class Case:
    """One fixture: input SQL for a named policy and the expected decision."""

    file: str
    name: str
    policy: str
    sql: str
    expect: str  # "allow" | "rewrite" | "deny"
    effects: tuple[str, ...] = ()
    sqlstate: str = ""
    rule: str = ""
    rewritten: str = ""
    context: str = ""  # the session's context: `temp_tables=a,b temp_views=v search_path=s,pg_temp shown=...`

    @property
    def id(self) -> str:
        return f"{self.file}:{self.name}"


def parse_context(text: str) -> SessionContext:
    """A `-- context:` directive: space-separated key=value, lists comma-separated (shown= takes the rest)."""
    fields: dict[str, object] = {}
    rest = text.strip()
    if "shown=" in rest:
        rest, shown = rest.split("shown=", 1)
        fields["shown"] = shown
    for item in rest.split():
        key, value = item.split("=", 1)
        values = tuple(v for v in value.split(",") if v)
        if key in ("temp_tables", "temp_views"):
            fields[key] = frozenset(values)
        elif key == "search_path":
            fields["path"] = values
        else:
            raise ValueError(f"unknown context key {key!r}")
    return SessionContext(**fields)  # type: ignore[arg-type]


def case_policy(case: Case) -> TenantPolicy:
    """The policy a case is decided under: its named policy, in its session context."""
    policy = POLICIES[case.policy]
    return policy.with_context(parse_context(case.context)) if case.context else policy


_DIRECTIVE = re.compile(r"^-- (name|policy|context|expect|note):\s*(.*)$")


def parse_fixture_text(file: str, text: str) -> list[Case]:
    """Parse blocks of `-- name:` / `-- policy:` / SQL / `-- expect:` [/ expected SQL]."""
    cases: list[Case] = []
    block: dict[str, str] = {}
    sql_lines: list[str] = []
    out_lines: list[str] = []
    state = "outside"

    def finish() -> None:
        if not block:
            return
        expect = block["expect"].split()
        kind = expect[0]
        common = dict(file=file, name=block["name"], policy=block["policy"], sql="\n".join(sql_lines).strip("\n"),
                      context=block.get("context", ""))
        if kind == "deny":
            cases.append(Case(**common, expect="deny", sqlstate=expect[1], rule=expect[2]))
        elif kind == "allow":
            cases.append(Case(**common, expect="allow", effects=tuple(expect[1:])))
        elif kind == "rewrite":
            rewritten = "\n".join(out_lines).strip("\n")
            cases.append(Case(**common, expect="rewrite", effects=tuple(expect[1:]), rewritten=rewritten))
        else:
            raise ValueError(f"{file}: case {block['name']}: unknown expectation {kind!r}")

    for line in text.splitlines():
        m = _DIRECTIVE.match(line)
        if m and m.group(1) == "name":
            finish()
            block, sql_lines, out_lines, state = {"name": m.group(2).strip()}, [], [], "header"
        elif m and state == "header" and m.group(1) in ("policy", "note", "context"):
            block[m.group(1)] = m.group(2).strip()
            if m.group(1) == "policy":
                state = "sql"
        elif m and state == "sql" and m.group(1) == "context" and not sql_lines:
            block["context"] = m.group(2).strip()
        elif m and state == "sql" and m.group(1) == "expect":
            block["expect"] = m.group(2).strip()
            state = "after"
        elif state == "sql":
            sql_lines.append(line)
        elif state == "after":
            out_lines.append(line)
    finish()
    return cases


def load_cases() -> list[Case]:
    """Every case of every fixture file, in file order."""
    cases: list[Case] = []
    for path in sorted(FIXTURE_DIR.glob("*.txt")):
        cases.extend(parse_fixture_text(path.name, path.read_text(encoding="utf-8")))
    return cases
