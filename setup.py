"""Builds pgtenant's optional compiled hot path: each module with a `.pxd` beside it is also compiled by Cython.

The `.py` stays the one source of truth (Cython's pure-Python mode; the `.pxd` only adds C types), so the
compiled and the pure build run the same code. A missing compiler or Cython leaves a pure-Python install
that works the same, only slower; `PGTENANT_PURE_BUILD=1` asks for that on purpose. `proxy/_accel.py`
decides at import time which build of each module runs (see its docstring).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
MANIFEST = "_accel_manifest.json"  # in the proxy package: module -> hash of the sources it was compiled from
DIRECTIVES = {"language_level": 3, "annotation_typing": False}


def accelerated() -> list[Path]:
    """The `.py` files that have a `.pxd` beside them (relative to the project root)."""
    return sorted(p.with_suffix(".py").relative_to(ROOT) for p in (ROOT / "proxy").rglob("*.pxd"))


def source_hash(py: Path) -> str:
    """What a compiled module was built from: its `.py` and its `.pxd`."""
    digest = hashlib.sha256()
    for part in (py, py.with_suffix(".pxd")):
        digest.update(part.read_bytes())
    return digest.hexdigest()


def module_name(py: Path) -> str:
    return ".".join(py.with_suffix("").parts)


class OptionalBuildExt(build_ext):
    """Compiles what it can; a module that fails to compile stays pure Python (with a warning), never an error."""

    def run(self) -> None:
        self.built: dict[str, str] = {}
        try:
            super().run()
        except Exception as exc:  # e.g. no C compiler at all
            print(f"pgtenant: compiled hot path not built ({exc}); using pure Python", file=sys.stderr)
        self._write_manifest()

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"pgtenant: {ext.name} not compiled ({exc}); using pure Python", file=sys.stderr)
            return
        py = Path(*ext.name.split(".")).with_suffix(".py")
        self.built[ext.name] = source_hash(ROOT / py)

    def _write_manifest(self) -> None:
        text = json.dumps(self.built, indent=1, sort_keys=True) + "\n"
        targets = [ROOT / "proxy"] if self.inplace else [Path(self.build_lib) / "proxy"]
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            (target / MANIFEST).write_text(text)


def ext_modules() -> list:
    if os.environ.get("PGTENANT_PURE_BUILD") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("pgtenant: Cython is not available; using pure Python", file=sys.stderr)
        return []
    modules = []
    for py in accelerated():  # one at a time: a module Cython rejects stays pure, the others still compile
        try:
            modules += cythonize([str(py)], compiler_directives=DIRECTIVES, quiet=True)
        except Exception as exc:  # the import-time check (proxy/_accel.py) then reports it as pure
            print(f"pgtenant: Cython failed on {py} ({exc}); it stays pure Python", file=sys.stderr)
    return modules


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
