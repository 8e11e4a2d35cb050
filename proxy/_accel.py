"""Picks, per accelerated module, its compiled build or the Python source it was compiled from, at import time.

`setup.py` compiles every module that has a `.pxd` beside it and records in `_accel_manifest.json` a hash of
the sources each build came from. A compiled module is used only when that hash still matches its `.py` and
`.pxd` (so an edited source is never shadowed by a stale build); otherwise, or with `PGTENANT_PURE=1`, the
`.py` is imported. The compiled modules share C types, so they run together or not at all. `status()` says
which build runs, for the startup log and the tests.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_PACKAGE = Path(__file__).resolve().parent
MANIFEST = _PACKAGE / "_accel_manifest.json"
_status: dict[str, str] = {}  # module -> "compiled" | "pure: <why>"


def _source(module: str) -> Path:
    return _PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")


def source_hash(py: Path) -> str:
    """What a compiled module is built from: its `.py` and its `.pxd` (setup.py records this at build time)."""
    digest = hashlib.sha256()
    for part in (py, py.with_suffix(".pxd")):
        digest.update(part.read_bytes())
    return digest.hexdigest()


def accelerated_sources() -> list[Path]:
    """The `.py` files that have a `.pxd` beside them: the modules setup.py compiles."""
    return sorted(pxd.with_suffix(".py") for pxd in _PACKAGE.rglob("*.pxd"))


def _decide() -> dict[str, str]:
    try:
        built: dict[str, str] = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        built = {}
    pure = os.environ.get("PGTENANT_PURE") == "1"
    status: dict[str, str] = {}
    for py in accelerated_sources():
        module = ".".join(py.with_suffix("").relative_to(_PACKAGE.parent).parts)
        if pure:
            status[module] = "pure: PGTENANT_PURE=1"
        elif module not in built:
            status[module] = "pure: not compiled"
        elif built[module] != source_hash(_source(module)):
            status[module] = "pure: the compiled build is older than its source (rebuild: make venv)"
        else:
            status[module] = "compiled"
    broken = sorted(m for m, s in status.items() if s != "compiled")
    if broken:  # the compiled modules share C types (cimport): they run together or not at all
        for module, state in status.items():
            if state == "compiled":
                status[module] = f"pure: the compiled modules run together, and {', '.join(broken)} runs pure"
    return status


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Imports the `.py` of the modules that must not use their compiled build."""

    def __init__(self, modules: set[str]) -> None:
        self.modules = modules

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def _strays() -> set[str]:
    """Modules with a compiled file but no `.pxd` (left by an old build): never imported from that file."""
    found = set()
    for lib in (*_PACKAGE.rglob("*.so"), *_PACKAGE.rglob("*.pyd")):
        module = lib.parent / lib.name.split(".", 1)[0]
        if not module.with_suffix(".pxd").exists() and module.with_suffix(".py").exists():
            found.add(".".join(module.relative_to(_PACKAGE.parent).parts))
    return found


def install() -> None:
    """Decide once per process, before any accelerated module is imported (called from `proxy/__init__.py`)."""
    if _status:
        return
    _status.update(_decide())
    source_only = {m for m, s in _status.items() if s != "compiled"} | _strays()
    if source_only:
        sys.meta_path.insert(0, _SourceFinder(source_only))


def status() -> dict[str, str]:
    """Which build of each accelerated module this process runs."""
    return dict(_status)
