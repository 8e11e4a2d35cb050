"""The state machines are data: every state change goes through a transition table, every row is fired, and the
docs' diagrams are the tables'."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from proxy import diagrams, login, pooling, server, session
from proxy.auth import backend
from proxy.auth.throttle import AuthThrottle
from proxy.config import parse_config
from proxy.reasons import CloseReason
from tests.support.sessions import attach, make_config
from tests.support.sessions import login as log_in

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "proxy"
# Assignments to a `.state` that is not a protocol state machine: the demo's saved state (a file).
NOT_MACHINES = {"demo.py"}
ALLOWED_IN = {"_transition", "__init__"}  # the transition function, and the constructor's first state


def state_assignments(path: Path, root: Path = PROXY) -> list[str]:
    """`x.state = ...` / `x._state = ...` outside a transition function or constructor."""
    out: list[str] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            targets: list[ast.expr] = []
            if isinstance(child, ast.Assign):
                targets = child.targets
            elif isinstance(child, (ast.AugAssign, ast.AnnAssign)):
                targets = [child.target]
            for target in targets:
                for t in ast.walk(target):
                    if isinstance(t, ast.Attribute) and t.attr in ("state", "_state") and function not in ALLOWED_IN:
                        out.append(f"{path.relative_to(root)}:{t.lineno} in {function or '<module>'}")
            visit(child, name)

    visit(ast.parse(path.read_text()), "")
    return out


def test_no_state_is_assigned_outside_a_transition_function() -> None:
    found = [line for path in sorted(PROXY.rglob("*.py")) if str(path.relative_to(PROXY)) not in NOT_MACHINES
             for line in state_assignments(path)]
    assert found == []


def test_the_scan_finds_a_direct_assignment(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("class A:\n    def close(self):\n        self.state = 1\n    def _transition(self, e):\n"
                     "        self.state = e\n")
    assert state_assignments(probe, tmp_path) == ["probe.py:3 in close"]


@pytest.mark.parametrize(("source", "events"), [("login.py", login.LoginEvent), ("session.py", session.Event),
                                               ("server.py", server.ServerEvent), ("pooling.py", pooling.Event),
                                               ("auth/backend.py", backend._Event)])
def test_every_event_is_fired(source: str, events: type) -> None:
    """Each event of a table is fired somewhere outside the table itself (no dead rows)."""
    source = (PROXY / source).read_text()
    body = source.split("TRANSITIONS:", 1)[1].split("\n\n\n", 1)[1]  # the code after the table
    prefix = events.__name__
    assert [e.name for e in events if f"{prefix}.{e.name}" not in body] == []


def test_an_unexpected_pair_is_a_protocol_violation(tmp_path: Path) -> None:
    config = parse_config({"backends": {"main": {}}, "tenants": {}, "users": {}}, base=tmp_path)
    s = session.ClientSession(config, session_id="s", client_address="a", throttle=AuthThrottle(max_failures=2),
                              clock=lambda: 0.0, tls_available=False)
    actions = s.tls_done()  # TLS_DONE in the login's STARTUP: no such row
    assert s.state is session.State.CLOSED and actions[0].error.sqlstate == "08P01"
    assert s.row().state == "closed" and actions[0].reason is CloseReason.UNEXPECTED_TLS_DONE


def test_an_event_the_relay_has_no_row_for_is_a_protocol_violation(tmp_path: Path) -> None:
    """tls_done once the login handed over: the session's own table has no such row either."""
    s = session.ClientSession(make_config(tmp_path), session_id="s", client_address="a", throttle=AuthThrottle(),
                              clock=lambda: 0.0, tls_available=True)
    log_in(s)
    attach(s)
    assert s.login is None and s.state is session.State.READY
    actions = s.tls_done()
    assert s.state is session.State.CLOSED and actions[-1].error.sqlstate == "08P01"
    assert actions[-1].error.message == "unexpected tls_done in state ready"


def test_the_docs_diagrams_are_the_tables() -> None:
    """docs/architecture.md holds `python -m proxy.diagrams`'s output as it is."""
    assert diagrams.markdown() in (ROOT / "docs" / "architecture.md").read_text()
