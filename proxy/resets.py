"""RESET of a client's startup setting sent to PostgreSQL as a SET of the client's startup value (PostgreSQL resets
to the value its server connection started with: a pooled server's, never the client's); pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast import split
from pglast.parser import ParseError

from proxy.policy.model import RESET_SETTINGS, SETTING, Change
from proxy.policy.settings import identifier

# The form of the proxy's own startup statements (settings.set_config_statement): name and value, both literals.
_STARTUP = re.compile(r"SELECT pg_catalog\.set_config\('((?:[^']|'')*)', ('(?:[^']|'')*'), false\)", re.DOTALL)
_RESET = re.compile(r"(?i)reset\s")  # (a statement's slice starts at its first keyword)
_RESET_ALL = re.compile(r"(?i)reset\s+all\Z")
# Settings a quoted SET value does not give as set_config() does (a list whose entries are quoted: the whole value
# would be one entry): their RESET stays PostgreSQL's, the startup value coming back with the transaction's end.
_LIST_QUOTED = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"})


@dataclass(frozen=True, slots=True)
class Restoring:
    """What goes to PostgreSQL instead: `sql`, the session's `changes` (each RESET recorded as the SET of the startup
    value it now is), the statements whose CommandComplete `SET` the client gets as `RESET` (their indexes in the
    string), and those of the proxy's own SETs after a RESET ALL, whose CommandCompletes the client never sees."""

    sql: str
    changes: tuple[Change, ...]
    retagged: tuple[int, ...]
    swallowed: tuple[int, ...]


def set_statement(startup: str) -> str | None:
    """The SET statement giving what startup statement `startup` gives (None: not one of that form)."""
    found = _STARTUP.fullmatch(startup)
    if found is None:
        return None
    name = found.group(1).replace("''", "'").lower()
    if name in _LIST_QUOTED:
        return None
    return f"SET {'.'.join(identifier(p) for p in name.split('.'))} TO {found.group(2)}"


def resets(changes: tuple[Change, ...], startup: dict[str, str]) -> bool:
    """Whether a statement with `changes` resets one of the client's startup settings (`startup`: name in lower
    case -> the statement setting it): RESET name, SET name TO DEFAULT, RESET ALL."""
    return any((c.op == SETTING and c.shown is None and c.name in startup) or c.op == RESET_SETTINGS
               for c in changes)


def restoring(sql: str, changes: tuple[Change, ...], startup: dict[str, str], *,
              extended: bool = False) -> Restoring | None:
    """`sql` (what PostgreSQL would get) with each RESET of a startup setting replaced by the SET of the startup
    value, and a RESET ALL followed by the SETs of every startup value (the policy lets RESET ALL only end a query
    string; not in a Parse, `extended`: one statement only); None when nothing is to be replaced, or it cannot be (a
    setting whose value a SET would not give as it was given, a text whose statements cannot be told apart)."""
    targets = {c.at for c in changes if (c.op == SETTING and c.shown is None and c.name in startup)
               or (c.op == RESET_SETTINGS and startup)}
    if not targets:
        return None
    try:
        slices = split(sql, with_parser=True, only_slices=True)
    except ParseError:
        return None
    out: list[str] = []
    at = 0
    kept = [c for c in changes if c.at not in targets or c.op != SETTING]
    added: list[Change] = []
    retagged: list[int] = []
    swallowed: list[int] = []
    for index, piece in enumerate(slices):
        if index not in targets:
            continue
        text = sql[piece]
        if _RESET_ALL.match(text):
            sets = [set_statement(s) for s in startup.values()]
            if extended or None in sets or index != len(slices) - 1:
                return None
            out += [sql[at:piece.stop], "; ", "; ".join(sets)]  # type: ignore[arg-type]
            added += [Change(index, SETTING, name, shown=s) for name, s in startup.items()]
            swallowed += range(index + 1, index + 1 + len(sets))
        else:
            named = [c for c in changes if c.at == index and c.op == SETTING]
            if len(named) != 1 or named[0].shown is not None or named[0].name not in startup:
                return None
            name = named[0].name
            replacement = set_statement(startup[name])
            if replacement is None:
                return None
            out += [sql[at:piece.start], replacement]
            added.append(Change(index, SETTING, name, shown=startup[name]))
            if _RESET.match(text):
                retagged.append(index)
        at = piece.stop
    out.append(sql[at:])
    return Restoring("".join(out), tuple(sorted(kept + added, key=lambda c: c.at)), tuple(retagged),
                     tuple(swallowed))
