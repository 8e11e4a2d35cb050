"""Chooses, once per process, whether the compiled speed-ups (`proxy/_speedups.pyx`) replace their Python names.

The model is psycopg's `_cmodule.py`: each module with a speed-up ends with a hook,
`if speedups is not None: name = speedups.name`, and runs as written when `speedups` is None: with
`PGTENANT_PURE=1`, when the extension was not built, or when it was built from other sources than the ones beside
it. setup.py compiles `source_hash()` (the `.pyx` and every module with a hook) into the extension
(`_speedups.BUILT_FROM`); an edited `.pyx`, or an edited module whose names it replaces, makes the two differ until
the next build, so a stale build never runs.
"""

from __future__ import annotations

import hashlib
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

_PACKAGE = Path(__file__).resolve().parent
HOOK = "from proxy._accel import speedups"  # the line each module with a speed-up imports its replacements with


def hooked_sources(package: Path = _PACKAGE) -> list[Path]:
    """The modules whose names the extension replaces: those with the HOOK line."""
    return sorted(py for py in package.rglob("*.py") if HOOK in py.read_text(encoding="utf-8").splitlines())


def source_hash(package: Path = _PACKAGE) -> str:
    """What a build is compiled from: `_speedups.pyx` and the hooked modules, names and contents."""
    digest = hashlib.sha256()
    for path in [package / "_speedups.pyx", *hooked_sources(package)]:
        digest.update(path.relative_to(package).as_posix().encode() + b"\x00" + path.read_bytes() + b"\x00")
    return digest.hexdigest()


def strays(package: Path = _PACKAGE) -> list[Path]:
    """Compiled files of single modules, left by an older build (which compiled whole modules): Python would import
    one instead of its `.py`."""
    return sorted(
        lib for suffix in EXTENSION_SUFFIXES for lib in package.rglob(f"*{suffix}")
        if lib.name.split(".", 1)[0] != "_speedups"
    )


def _load() -> tuple[ModuleType | None, str]:
    stale = strays()
    if stale:  # proxy/__init__.py imports this module first: no module has been imported from one of them yet
        names = ", ".join(str(p.relative_to(_PACKAGE.parent)) for p in stale)
        raise ImportError(f"pgtenant: stale compiled modules would shadow their sources ({names}): rebuild with "
                          "`make venv` (or `python setup.py build_ext --inplace`), or delete them")
    if os.environ.get("PGTENANT_PURE") == "1":
        return None, "pure: PGTENANT_PURE=1"
    try:
        from proxy import _speedups
    except ImportError:
        return None, "pure: not compiled"
    if source_hash() != _speedups.BUILT_FROM:
        return None, "pure: the compiled build is older than its sources (rebuild: make venv)"
    return _speedups, "compiled"


speedups, _status = _load()


def status() -> dict[str, str]:
    """Per hooked module, which build of its hot path runs: "compiled", or "pure: <why>" (the startup log)."""
    return {".".join(("proxy", *p.with_suffix("").relative_to(_PACKAGE).parts)): _status for p in hooked_sources()}
