"""Builds pgtenant's optional compiled speed-ups: `proxy/_speedups.pyx`, one Cython extension.

The Python modules are the source of truth and run alone; the extension holds compiled versions of a few of their
names, which each module's hook puts in place at import (see `proxy/_accel.py`). The hash of the sources it is
built from is compiled into it, so an edited source never runs with an older build. A missing compiler or Cython
leaves a pure-Python install that works the same, only slower; `PGTENANT_PURE_BUILD=1` asks for that on purpose.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# An older build compiled whole modules; their files would shadow the sources (proxy/_accel.py refuses to run
# beside them, so they go before it is imported).
for stray in (*ROOT.glob("proxy/**/*.so"), *ROOT.glob("proxy/**/*.pyd")):
    if not stray.name.startswith("_speedups."):
        stray.unlink()
(ROOT / "proxy" / "_accel_manifest.json").unlink(missing_ok=True)  # that build's record of its sources
sys.path.insert(0, str(ROOT))
from proxy._accel import hooked_sources, source_hash  # noqa: E402  # one definition of what a build is made from


class OptionalBuildExt(build_ext):
    """Compiles the extension if it can; a failure leaves pure Python (with a warning), never an error."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # e.g. no C compiler at all
            print(f"pgtenant: compiled speed-ups not built ({exc}); using pure Python", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"pgtenant: {ext.name} not compiled ({exc}); using pure Python", file=sys.stderr)


def ext_modules() -> list[Extension]:
    if os.environ.get("PGTENANT_PURE_BUILD") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("pgtenant: Cython is not available; using pure Python", file=sys.stderr)
        return []
    package = ROOT / "proxy"
    extension = Extension(
        "proxy._speedups", ["proxy/_speedups.pyx"],
        define_macros=[("PGTENANT_BUILT_FROM", f'"{source_hash(package)}"')],
        # rebuilt when a hooked module changes too (the hash compiled in must be theirs)
        depends=[str(p.relative_to(ROOT)) for p in hooked_sources(package)],
    )
    try:
        return cythonize([extension], compiler_directives={"language_level": 3}, quiet=True)
    except Exception as exc:
        print(f"pgtenant: Cython failed on proxy/_speedups.pyx ({exc}); using pure Python", file=sys.stderr)
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
