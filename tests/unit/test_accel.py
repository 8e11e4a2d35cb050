"""The compiled hot path: which build runs, that an edited source is never shadowed by an older build, and
that `PGTENANT_PURE=1` runs the Python sources (`make test` runs the unit suite once more that way)."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import proxy
from proxy import _accel

ROOT = Path(proxy.__file__).resolve().parent.parent
ACCELERATED = sorted(".".join(p.with_suffix("").relative_to(ROOT).parts) for p in (ROOT / "proxy").rglob("*.pxd"))
PURE = os.environ.get("PGTENANT_PURE") == "1"


def _status_in(cwd: Path, env: dict[str, str] | None = None) -> dict[str, list[str]]:
    """{module: [status, file]} as a fresh interpreter started in `cwd` sees them."""
    code = (
        "import importlib, json, proxy\n"
        "from proxy import _accel\n"
        "print(json.dumps({m: [s, importlib.import_module(m).__file__] for m, s in _accel.status().items()}))\n"
    )
    base = {k: v for k, v in os.environ.items() if k != "PGTENANT_PURE"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env={**base, **(env or {}), "PYTHONPATH": str(cwd)},
        capture_output=True, text=True, check=True, timeout=60,
    )
    return json.loads(out.stdout)


def test_every_module_with_a_pxd_is_reported() -> None:
    assert ACCELERATED, "the hot path has modules to compile"
    assert sorted(_accel.status()) == ACCELERATED


@pytest.mark.skipif(PURE, reason="this run imports the Python sources on purpose")
def test_ci_runs_the_compiled_build() -> None:
    """CI machines have a C compiler: there the suite must exercise the build that production runs."""
    status = _accel.status()
    if os.environ.get("CI") != "true" and set(status.values()) != {"compiled"}:
        pytest.skip(f"not built here (no C compiler?): {status}")
    assert set(status.values()) == {"compiled"}, status
    for module in ACCELERATED:
        assert not importlib.import_module(module).__file__.endswith(".py")


@pytest.mark.skipif(not PURE, reason="only in the PGTENANT_PURE=1 run")
def test_pure_run_imports_the_sources() -> None:
    import proxy.protocol.stream
    import proxy.session
    import proxy.tracking

    assert set(_accel.status().values()) == {"pure: PGTENANT_PURE=1"}
    for module in (proxy.protocol.stream, proxy.session, proxy.tracking):
        assert module.__file__.endswith(".py")


def test_an_edited_source_is_never_shadowed_by_its_older_build(tmp_path: Path) -> None:
    if set(_accel.status().values()) != {"compiled"}:
        pytest.skip("needs the compiled build")
    shutil.copytree(ROOT / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    before = _status_in(tmp_path)
    assert {m: s for m, (s, _) in before.items()} == dict.fromkeys(ACCELERATED, "compiled")
    assert all(not f.endswith(".py") for _, f in before.values())

    edited = tmp_path / "proxy" / "tracking.py"
    edited.write_text(edited.read_text() + "\n# edited after the build\n")
    after = _status_in(tmp_path)
    assert after["proxy.tracking"][0].startswith("pure: the compiled build is older than its source")
    assert after["proxy.tracking"][1] == str(edited)
    for module in ACCELERATED:  # they share C types: all of them fall back together
        assert after[module][1].endswith(".py")
        if module != "proxy.tracking":
            assert after[module][0] == "pure: the compiled modules run together, and proxy.tracking runs pure"

    pure = _status_in(tmp_path, {"PGTENANT_PURE": "1"})
    assert all(s == "pure: PGTENANT_PURE=1" and f.endswith(".py") for s, f in pure.values())


def test_without_a_manifest_nothing_compiled_runs(tmp_path: Path) -> None:
    """A build whose origin is unknown (no manifest) is never trusted."""
    shutil.copytree(ROOT / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "proxy" / "_accel_manifest.json").unlink(missing_ok=True)
    status = _status_in(tmp_path)
    assert all(s == "pure: not compiled" and f.endswith(".py") for s, f in status.values())


def test_a_compiled_file_without_a_pxd_is_never_imported(tmp_path: Path) -> None:
    """A module that was compiled once and no longer is (its .pxd removed) runs from its .py."""
    shutil.copytree(ROOT / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    stray = tmp_path / "proxy" / f"errors{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    stray.write_bytes(b"not a shared object")  # importing it would fail loudly
    code = "import proxy.errors as k; print(k.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == str(tmp_path / "proxy" / "errors.py")
