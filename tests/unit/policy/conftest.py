"""Parametrizes `fixture_case` over every case of tests/fixtures/policy/*.txt."""

from __future__ import annotations

import pytest
from policy_corpus import load_cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fixture_case" in metafunc.fixturenames:
        cases = load_cases()
        metafunc.parametrize("fixture_case", cases, ids=[c.id for c in cases])
