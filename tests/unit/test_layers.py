"""The module graph: the pure core never imports the I/O layer, and the I/O layer never reaches into session state."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parents[2] / "proxy"
# The pure core: state machines, codec, authentication exchanges, policy, the tenant registry.
CORE = ("login.py", "session.py", "dbadefault.py", "server.py", "actions.py", "registry.py", "sessionstate.py",
        "decidedin.py", "tracking.py", "startup.py", "tenancy.py", "errors.py", "stmtkind.py", "statements.py",
        "skipping.py", "subxacts.py", "settingbounds.py", "confirming.py", "pooling.py", "cancel.py", "supervisor.py",
        "clusterview.py", "policy", "protocol", "auth")
IO_MODULES = ("asyncio", "socket", "ssl", "selectors", "proxy.io", "proxy.relay", "proxy.httpd", "proxy.ops")
# Modules outside proxy/io/ that start the I/O layer: the command line and the demo.
ENTRY_POINTS = ("cli.py", "demo.py")
# What the I/O layer may call on a ClientSession: its inputs (events) and its plain-data view; never a field.
SESSION_EVENTS = frozenset({
    "client_data", "server_data", "tls_done", "server_attached", "server_refused", "server_closed", "timeout",
    "decision_ready", "enable_policy", "report_requests", "reconfigure", "revoke", "row", "close",
    "cancel_done", "cancel_requested", "limits_tick", "slot_granted", "slot_refused", "server_taken",
    "server_resumed", "may_resume", "resume_route", "resume_turn", "read_kept", "guarded",
})


def modules(*names: str) -> list[Path]:
    out: list[Path] = []
    for name in names:
        path = PROXY / name
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (also under TYPE_CHECKING or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def reaches(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("path", modules(*CORE), ids=lambda p: str(p.relative_to(PROXY)))
def test_the_core_imports_no_io(path: Path) -> None:
    assert reaches(imports(path), IO_MODULES) == []


def test_only_the_io_layer_and_entry_points_import_it() -> None:
    importers = sorted(
        str(path.relative_to(PROXY)) for path in modules(".")
        if path.parent != PROXY / "io" and reaches(imports(path), ("proxy.io",))
    )
    assert importers == sorted(ENTRY_POINTS)


def test_ops_sees_the_proxy_only_through_its_snapshot() -> None:
    """ops.py gets plain data rows from the listener: no import of the I/O layer, no client or pool objects."""
    tree = ast.parse((PROXY / "ops.py").read_text())
    assert reaches(imports(PROXY / "ops.py"), ("proxy.io", "proxy.relay")) == []
    reached = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert reached.isdisjoint({"pool", "links", "transport", "registry", "policies", "throttle", "stopping"})


def session_reads(path: Path) -> list[str]:
    """Attributes used on a ClientSession (`session.x`, `self.session.x`) that are not one of its events."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        named = (isinstance(owner, ast.Name) and owner.id == "session") or (
            isinstance(owner, ast.Attribute) and owner.attr == "session")
        if named and node.attr not in SESSION_EVENTS:
            out.append(f"{path.name}:{node.lineno}: session.{node.attr}")
    return out


def test_the_io_layer_never_reads_or_writes_session_fields() -> None:
    assert [line for path in [*modules("io"), PROXY / "relay.py"] for line in session_reads(path)] == []


def test_the_field_scan_sees_a_field_read(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f(self):\n    return self.session.info.tenant, self.session.client_data(b'')\n")
    assert session_reads(probe) == ["probe.py:2: session.info"]
