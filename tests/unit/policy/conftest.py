"""Parametrizes `fixture_case` over every case of tests/fixtures/policy/*.txt."""

from __future__ import annotations

import pytest
from policy_corpus import load_cases

from proxy.policy import hiding

hiding._SECRET = bytes(16)  # the reserved names of hidden schemas the fixtures show (each process has its own)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fixture_case" in metafunc.fixturenames:
        cases = load_cases()
        metafunc.parametrize("fixture_case", cases, ids=[c.id for c in cases])
