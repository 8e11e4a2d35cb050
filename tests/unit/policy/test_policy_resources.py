"""The memory settings' caps (red team 7 F4): values read as PostgreSQL reads them, the config's maximums checked
when loaded, and none reachable through startup parameters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from policy_corpus import POLICIES

from proxy.config import ConfigError, LimitsConfig, parse_config
from proxy.policy import Allow, Deny, decide
from proxy.policy.resources import CAPPED, memory_kb, reading


@pytest.mark.parametrize(("text", "kb"), [
    ("256MB", 262144), (" 1 GB ", 1048576), ("64", 64), ("1.5MB", 1536), ("2048kB", 2048), ("1024B", 1),
    ("1TB", 1024.0**3), ("1e3", 1000), ("-1", -1),
    ("1gb", None), ("1 gigabyte", None), ("0x10", None), ("", None), ("inf", None), ("MB", None),
])
def test_memory_values_read_as_postgresql_reads_them(text: str, kb: float | None) -> None:
    assert memory_kb(text) == kb


def test_temp_buffers_unitless_values_are_8kb_blocks() -> None:
    assert reading("temp_buffers", "1024") == 8192 and reading("temp_buffers", "8MB") == 8192
    assert reading("work_mem", "1024") == 1024


def test_every_capped_setting_has_a_readable_default_maximum() -> None:
    caps = LimitsConfig().setting_caps()
    assert set(caps) == set(CAPPED)
    assert all(reading(name, value) is not None for name, value in caps.items())


def test_a_policy_without_caps_caps_nothing() -> None:
    uncapped = dataclasses.replace(POLICIES["shared"], setting_caps={})
    assert isinstance(decide(uncapped, "SET work_mem = '64GB'"), Allow)
    assert isinstance(decide(POLICIES["shared"], "SET work_mem = '64GB'"), Deny)


def test_a_lower_operator_maximum_is_the_limit() -> None:
    policy = dataclasses.replace(POLICIES["database"], setting_caps={**POLICIES["database"].setting_caps,
                                                                     "work_mem": "16MB"})
    assert isinstance(decide(policy, "SET work_mem = '16MB'"), Allow)
    denied = decide(policy, "SET work_mem = '17MB'")
    assert isinstance(denied, Deny) and denied.rule == "setting_limit" and "limits.max_work_mem" in denied.message
    assert "at most 16MB" in denied.message


def _load(tmp_path: Path, **sections: dict) -> object:
    (tmp_path / "s.toml").write_text("")
    raw = {"backends": {"main": {}}, "tenants": {"acme": {"strategy": "database", "database": "acme"}}, **sections}
    return parse_config({"secrets_file": "s.toml", **raw}, base=tmp_path)


@pytest.mark.parametrize(("limits", "message"), [
    ({"max_work_mem": "lots"}, "limits.max_work_mem: must be a value of work_mem PostgreSQL reads"),
    ({"max_work_mem": "-1MB"}, "limits.max_work_mem: must be a value of work_mem PostgreSQL reads"),
    ({"max_hash_mem_multiplier": -1.0}, "limits.max_hash_mem_multiplier: must be a value"),
    ({"temp_file_limit": "5 gigs"}, "limits.temp_file_limit: must be a size such as '5GB'"),
])
def test_bad_maximums_name_their_key(tmp_path: Path, limits: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, limits=limits)
    assert str(exc.value).startswith(message), str(exc.value)


def test_maximums_and_temp_file_limit_are_read(tmp_path: Path) -> None:
    config = _load(tmp_path, limits={"max_work_mem": "1GB", "max_parallel_workers_per_gather": 0,
                                     "temp_file_limit": "-1"})
    assert config.limits.setting_caps()["work_mem"] == "1GB"  # type: ignore[attr-defined]
    assert config.limits.setting_caps()["max_parallel_workers_per_gather"] == "0"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["work_mem", "Hash_Mem_Multiplier", "temp_file_limit"])
def test_capped_settings_are_never_startup_parameters(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, startup={"allowed_parameters": [name]})
    assert str(exc.value).startswith(f"startup.allowed_parameters: {name.lower()} is capped"), str(exc.value)
