"""The docs stay true: their links resolve, their pgtenant commands exist, the runnable ones run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _code_lines() -> list[tuple[Path, str]]:
    out = []
    for doc in DOCS:
        for block in re.findall(r"```(?:sh|bash)\n(.*?)```", doc.read_text(), re.S):
            out += [(doc, line.strip()) for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return out


def test_relative_links_resolve() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_every_pgtenant_subcommand_in_docs_exists() -> None:
    parser = build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for doc in DOCS:
        for sub in re.findall(r"`pgtenant ([a-z-]+)", doc.read_text()):
            assert sub in subcommands, f"{doc.name} mentions unknown subcommand {sub}"


def test_make_targets_in_docs_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    for doc, line in _code_lines():
        if line.startswith("make "):
            assert line.split()[1] in targets, f"{doc.name}: {line}"


@pytest.mark.parametrize(
    "line", [line for _, line in _code_lines() if line.startswith(("pgtenant check-config", "echo -n"))]
)
def test_runnable_doc_commands(line: str) -> None:
    # Run with this interpreter's pgtenant entry point, from the repository root, as a user would.
    if line.startswith("echo -n"):
        password, _, command = line[len("echo -n ") :].partition(" | ")
        stdin = shlex.split(password)[0]
    else:
        command, stdin = line, ""
    args = shlex.split(command)
    assert args[0] == "pgtenant"
    res = subprocess.run([sys.executable, "-m", "proxy", *args[1:]], input=stdin, capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    if "passwd" in args:
        assert re.fullmatch(r'\w+ = "SCRAM-SHA-256\$4096:[^"]+"\n', res.stdout)
