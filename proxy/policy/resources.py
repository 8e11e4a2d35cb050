"""Caps on the settings that size a backend's memory and temp files (red team 7 F4): a tenant may lower them, and raise
them up to the operator's maximum (`limits.max_work_mem` …), never beyond; temp_file_limit is the operator's alone."""

from __future__ import annotations

import math
from collections.abc import Mapping

from proxy.policy.model import TenantPolicy
from proxy.policy.rules import fail

# setting -> (config key of its maximum, kind). "memory": a size whose unit-less value is in the setting's base unit
# (kB, or temp_buffers' 8 kB blocks); "real": hash_mem_multiplier; "int": a number of workers.
CAPPED: dict[str, tuple[str, str]] = {
    "work_mem": ("max_work_mem", "memory"),
    "hash_mem_multiplier": ("max_hash_mem_multiplier", "real"),
    "maintenance_work_mem": ("max_maintenance_work_mem", "memory"),
    "logical_decoding_work_mem": ("max_logical_decoding_work_mem", "memory"),
    "temp_buffers": ("max_temp_buffers", "memory"),
    "max_parallel_workers_per_gather": ("max_parallel_workers_per_gather", "int"),
    "max_parallel_maintenance_workers": ("max_parallel_maintenance_workers", "int"),
}
# Settings only the operator sets (`pgtenant provision`: ALTER ROLE … SET temp_file_limit); PostgreSQL refuses them
# to a role that is not a superuser as well, the proxy says why first.
OPERATOR_ONLY: frozenset[str] = frozenset({"temp_file_limit"})

_BASE_KB = {"temp_buffers": 8.0}  # kB per unit-less unit; 1 for the other memory settings
_MEMORY_UNITS_KB = {"B": 1 / 1024, "kB": 1.0, "MB": 1024.0, "GB": 1024.0**2, "TB": 1024.0**3}


def memory_kb(text: str, base_kb: float = 1.0) -> float | None:
    """A memory setting in kB as PostgreSQL reads it ("256MB", "1.5 GB", "65536" in the base unit); units are
    case-sensitive as PostgreSQL's (B, kB, MB, GB, TB); None when unreadable (hexadecimal included: refused)."""
    value = text.strip()
    number = value.rstrip("BkMGT").rstrip()
    unit = value[len(number):].strip()
    n = _number(number)
    if n is None or (unit and unit not in _MEMORY_UNITS_KB):
        return None
    return n * (_MEMORY_UNITS_KB[unit] if unit else base_kb)


def _number(text: str) -> float | None:
    try:
        n = float(text.strip())
    except ValueError:
        return None
    return n if math.isfinite(n) else None


def reading(name: str, text: str) -> float | None:
    """The value `text` of capped setting `name` in comparable units (kB for sizes), None when unreadable."""
    kind = CAPPED[name][1]
    return memory_kb(text, _BASE_KB.get(name, 1.0)) if kind == "memory" else _number(text)


def valid_cap(name: str, text: str) -> bool:
    """Whether `text` is a readable maximum for `name` (config validation)."""
    value = reading(name, text)
    return value is not None and value >= 0


def check_value(policy: TenantPolicy, name: str, value: str | None) -> None:
    """Refuse setting `name` (lower case) to `value` (None: not a literal) above the tenant's cap, and any change of
    an operator-only setting."""
    if name in OPERATOR_ONLY:
        raise fail("operator_setting", f'"{name}" is set by the operator (pgtenant provision) and cannot be changed')
    cap = policy.setting_caps.get(name)
    if cap is None:
        return
    key = CAPPED[name][0]
    if value is None:
        raise fail("setting_limit", f'"{name}" can only be set to a literal value (at most {cap}, limits.{key})')
    given, most = reading(name, value), reading(name, cap)
    if given is None or most is None or given > most:
        raise fail("setting_limit", f'"{name}" may be at most {cap} (limits.{key}), not {value}')


def check_set(policy: TenantPolicy, name: str, body: Mapping[str, object], value: str | None) -> None:
    """SET / SET LOCAL of a capped setting (`value`: its one literal, else None); RESET, SET … TO DEFAULT and
    FROM CURRENT return to or keep a value the tenant did not choose."""
    if name not in CAPPED and name not in OPERATOR_ONLY:
        return
    if body.get("kind") == "VAR_SET_VALUE" or name in OPERATOR_ONLY:
        check_value(policy, name, value)
