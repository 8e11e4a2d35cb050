"""Builds pgtenant's optional compiled hot path: each module with a `.pxd` beside it is also compiled by Cython.

The `.py` stays the one source of truth (Cython's pure-Python mode; the `.pxd` only adds C types), so the
compiled and the pure build run the same code. A missing compiler or Cython leaves a pure-Python install
that works the same, only slower; `PGTENANT_PURE_BUILD=1` asks for that on purpose. `proxy/_accel.py`
decides at import time which build of each module runs (see its docstring).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from proxy._accel import MANIFEST, accelerated_sources, source_hash  # noqa: E402  # one definition of each

DIRECTIVES = {"language_level": 3, "annotation_typing": False}


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
            (target / MANIFEST.name).write_text(text)


def ext_modules() -> list:
    if os.environ.get("PGTENANT_PURE_BUILD") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("pgtenant: Cython is not available; using pure Python", file=sys.stderr)
        return []
    modules = []
    for py in accelerated_sources():  # one at a time: a module Cython rejects stays pure, the others still compile
        try:
            modules += cythonize([str(py.relative_to(ROOT))], compiler_directives=DIRECTIVES, quiet=True)
        except Exception as exc:  # the import-time check (proxy/_accel.py) then reports it as pure
            print(f"pgtenant: Cython failed on {py} ({exc}); it stays pure Python", file=sys.stderr)
    return modules


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
