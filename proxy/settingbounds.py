"""The bounds on the settings a session keeps for the settings replay ([pool] max_session_settings and
max_session_setting_bytes): the denial of a statement that would take it past them; pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from proxy.policy.model import DISCARD_ALL, RESET_SETTINGS, SETTING, Change, Deny
from proxy.policy.rules import deny

_ALL = ("*", "")  # RESET ALL / DISCARD ALL, as the session's unsettled settings record it


def size(name: str, text: str) -> int:
    """The bytes a kept setting counts: its name and the statement that replays it (UTF-8)."""
    return (len(name) if name.isascii() else len(name.encode())) + (
        len(text) if text.isascii() else len(text.encode()))


def entries(changes: Iterable[Change], sets_only: bool = False) -> list[tuple[str, str]]:
    """The (name, replay statement) entries `changes` add to a session's unsettled settings ("" = RESET, ("*", ""):
    RESET ALL or DISCARD ALL); `sets_only`: the SETs alone (what a statement bound and not yet run may add)."""
    out: list[tuple[str, str]] = []
    for change in changes:
        op = change.op
        if op == SETTING:
            if change.shown or not sets_only:
                out.append((change.name, change.shown or ""))
        elif op in (RESET_SETTINGS, DISCARD_ALL) and not sets_only:
            out.append(_ALL)
    return out


def sizes(kept: Mapping[str, str]) -> dict[str, int]:
    """The size of each kept setting (name -> replay statement), as `measure` takes them."""
    return {name: size(name, text) for name, text in kept.items()}


def measure(kept: Mapping[str, int], startup: Mapping[str, str],
            unsettled: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """(settings, bytes) the session holds: the larger of what it keeps once `unsettled` (its SETs and RESETs since
    its settings were last settled, in order) is settled onto `kept` (their `sizes`; as ClientSession._settle does:
    a RESET drops a setting, a value equal to the startup one is not kept) and of the unsettled entries themselves
    (held until then, a RESET's name too)."""
    settled = dict(kept)
    pending: dict[str, int] = {}
    for name, text in unsettled:
        if name == "*":
            settled.clear()
            pending.clear()
            pending["*"] = 1
            continue
        pending.pop(name, None)
        pending[name] = size(name, text)
        if not text or startup.get(name) == text:
            settled.pop(name, None)
        else:
            settled[name] = pending[name]
    return max(len(settled), len(pending)), max(sum(settled.values()), sum(pending.values()))


def refusal(kept: Mapping[str, int], startup: Mapping[str, str], unsettled: tuple[tuple[str, str], ...],
            added: list[tuple[str, str]], max_settings: int, max_bytes: int) -> Deny | None:
    """The denial of a statement adding entries `added` to a session that keeps `kept` (their `sizes`; settled,
    beyond its `startup` settings) and has `unsettled` on top (a statement parsed and not run yet among them:
    counted until the ReadyForQuery of its batch): when it sets a setting and the session would then hold more than
    `max_settings` settings or `max_bytes` bytes of them (a statement that only resets is never refused)."""
    name = next((n for n, text in reversed(added) if text), None)
    if name is None:
        return None
    count, total = measure(kept, startup, (*unsettled, *added))
    if count > max_settings:
        return deny("session_settings_limit", f'setting "{name}" would take this session past [pool] '
                    f"max_session_settings = {max_settings} (it would keep {count} settings)")
    if total > max_bytes:
        return deny("session_settings_limit", f'setting "{name}" would take this session past [pool] '
                    f"max_session_setting_bytes = {max_bytes} (it would keep {total} bytes of settings)")
    return None
