"""Which build runs: the compiled speed-ups only with the sources they were built from, never beside an older
build's compiled modules, and the Python as written with `PGTENANT_PURE=1` (`make test` runs the unit suite once
more that way). tests/unit/test_speedups.py holds the two builds to the same answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import proxy
from proxy import _accel

ROOT = Path(proxy.__file__).resolve().parent.parent
PURE = os.environ.get("PGTENANT_PURE") == "1"
COMPILED = set(_accel.status().values()) == {"compiled"}
_PROBE = (
    "import json, proxy.protocol.stream as s, proxy.tracking as t\n"
    "from proxy import _accel\n"
    "statuses = sorted(set(_accel.status().values()))\n"
    "print(json.dumps([statuses, s.MessageStream.__module__, t.RequestTracker.__module__]))"
)


def _run_in(tree: Path, env: dict[str, str] | None = None, unbuilt: bool = False) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "PGTENANT_PURE"}
    env = {**base, **(env or {}), "PYTHONPATH": str(tree)}
    code = ("import sys\nsys.modules['proxy._speedups'] = None\n" if unbuilt else "") + _PROBE  # None: not importable
    return subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=60)


def _probe(tree: Path, env: dict[str, str] | None = None, unbuilt: bool = False) -> list[object]:
    """[the statuses, the module of MessageStream, the module of RequestTracker] in a fresh interpreter."""
    out = _run_in(tree, env, unbuilt)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    return tmp_path


PYTHON = [["pure: PGTENANT_PURE=1"], "proxy.protocol.stream", "proxy.tracking"]


@pytest.mark.skipif(PURE, reason="this run imports the Python sources on purpose")
def test_ci_runs_the_compiled_build() -> None:
    """CI machines have a C compiler: there the suite must exercise the build that production runs."""
    if os.environ.get("CI") != "true" and not COMPILED:
        pytest.skip(f"not built here (no C compiler?): {_accel.status()}")
    assert COMPILED, _accel.status()
    assert _accel.speedups is not None


def test_every_module_with_a_hook_is_hashed(tmp_path: Path) -> None:
    """A module that gains a hook is part of what a build is made from; others are not."""
    package = tmp_path / "proxy"
    package.mkdir()
    (package / "_speedups.pyx").write_text("# the extension\n")
    (package / "plain.py").write_text("x = 1\n")
    before = _accel.source_hash(package)
    (package / "plain.py").write_text("x = 2\n")
    assert _accel.source_hash(package) == before
    (package / "hooked.py").write_text(f"{_accel.HOOK}\n\nx = 1\n")
    assert _accel.hooked_sources(package) == [package / "hooked.py"]
    assert _accel.source_hash(package) != before


@pytest.mark.skipif(not COMPILED, reason="needs the compiled build")
def test_an_edited_source_never_runs_with_an_older_build(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    assert _probe(tree) == [["compiled"], "proxy._speedups", "proxy._speedups"]
    assert _probe(tree, {"PGTENANT_PURE": "1"}) == PYTHON
    older = [["pure: the compiled build is older than its sources (rebuild: make venv)"], "proxy.protocol.stream",
             "proxy.tracking"]
    for edited in (tree / "proxy" / "tracking.py", tree / "proxy" / "_speedups.pyx"):
        original = edited.read_text()
        edited.write_text(original + "\n# edited after the build\n")
        assert _probe(tree) == older, edited
        edited.write_text(original)
    assert _probe(tree)[0] == ["compiled"]


def test_without_a_build_the_python_runs() -> None:
    assert _probe(ROOT, unbuilt=True) == [["pure: not compiled"], "proxy.protocol.stream", "proxy.tracking"]
    assert _probe(ROOT, {"PGTENANT_PURE": "1"}, unbuilt=True) == PYTHON


def test_an_older_builds_compiled_module_is_refused(tmp_path: Path) -> None:
    """A module compiled whole by an older build would be imported instead of its `.py`: pgtenant refuses to start
    beside one (setup.py deletes them)."""
    tree = _copy(tmp_path)
    stray = tree / "proxy" / "protocol" / f"stream{EXTENSION_SUFFIXES[0]}"
    stray.write_bytes(b"not a shared object")
    out = _run_in(tree)
    assert out.returncode != 0
    assert "stale compiled modules would shadow their sources (proxy/protocol/stream" in out.stderr
    assert "make venv" in out.stderr
