"""What SQL runs by name (EXECUTE, FETCH, MOVE) and the protocol-level portals it must not run (rt9a11 C1); pure.

PostgreSQL runs a statement prepared by a Parse message by SQL `EXECUTE name` (also under EXPLAIN and CREATE TABLE
AS), and a portal made by a Bind message by SQL `FETCH` / `MOVE name`, as it runs one prepared by SQL PREPARE or
opened by DECLARE. The proxy follows what a protocol-level statement or portal changes in the session (a
search_path, a setting, a temporary relation) only at its Bind and Execute, never at such a SQL reference: so a
Query, a Parse and a Bind that would run one by SQL is refused (rule `protocol_name_by_sql`). Names are keyed as
PostgreSQL keys them (pgnames): a portal by the first 63 bytes of its Bind's name, a SQL name as the scanner cut it.

A portal's name is held from its Bind until its transaction ends with nothing in flight (a Close or a Bind that
failed leaves it held: refusing more is the safe side). What each protocol statement and portal runs by SQL is
held too (a Parse of `FETCH c` bound before portal `c` is: the Bind of `c` is refused; a statement's or portal's
entry only grows while it may still be the server's). Bounded: past _MAX_PORTALS portal names every name may be a
protocol portal until the transaction ends, and past _MAX_STATEMENTS named statements that run others by SQL a new
one's Parse is refused (nothing is forgotten early).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from proxy.pgnames import sql_identifier

Runs = tuple[frozenset[str], frozenset[bytes]]  # (prepared statements EXECUTEd, portals FETCHed / MOVEd), as keyed
NOTHING: Runs = (frozenset(), frozenset())
# A text can run a statement or a portal by name only where one of these keywords stands (in ASCII letters, any case).
_WORDS = ("execute", "fetch", "move")
_MAX_TEXTS = 512  # texts whose runs are remembered (a driver's FETCH FORWARD n FROM "c" repeats)
_MAX_PORTALS = 4096  # named portal names held per session; past it, every name may be one (refusing more)
_MAX_STATEMENTS = 4096  # named statements whose text runs others by SQL, per session; past it, such a Parse is refused


def sql_runs(sql: str) -> Runs:
    """The prepared statements and portals `sql` runs by SQL name (NOTHING when it names none or does not parse:
    PostgreSQL runs nothing of it then)."""
    low = sql.lower()  # (a substring test of the lower-cased text: ~0.2 us for a 90-character text, a regex ~1-2 us)
    if _WORDS[0] not in low and _WORDS[1] not in low and _WORDS[2] not in low:
        return NOTHING
    return _parsed(sql)


@lru_cache(maxsize=_MAX_TEXTS)
def _parsed(sql: str) -> Runs:
    try:
        tree = json.loads(parse_sql_json(sql))
    except (ParseError, ValueError):
        return NOTHING
    statements: set[str] = set()
    portals: set[bytes] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            run = node.get("ExecuteStmt")
            if isinstance(run, dict) and run.get("name"):
                statements.add(sql_identifier(str(run["name"])))
            fetch = node.get("FetchStmt")
            if isinstance(fetch, dict) and fetch.get("portalname"):
                portals.add(sql_identifier(str(fetch["portalname"])).encode("utf-8", "surrogatepass"))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if not statements and not portals:
        return NOTHING
    return frozenset(statements), frozenset(portals)


class ProtocolRuns:
    """One session's named protocol portals (by `pgnames.protocol_key`) and what its protocol-level statements (by
    `pgnames.protocol_name`) and portals run by SQL."""

    __slots__ = ("crowded", "portals", "running", "statements")

    def __init__(self) -> None:
        self.portals: set[bytes] = set()  # named portals bound since the last transaction end with nothing in flight
        self.crowded = False  # more of them than _MAX_PORTALS: any portal name may be one
        self.statements: dict[str, Runs] = {}  # prepared statement -> what its text runs by SQL (only if any)
        self.running: Runs = NOTHING  # what the portals bound since then may run by SQL when executed

    def parsed(self, name: str, runs: Runs) -> bool:
        """A Parse of statement `name` decided (not one the server refuses as a duplicate): the unnamed statement is
        replaced; a named one's entry grows (it may be a Parse PostgreSQL refuses, the old statement staying).
        False when it is a new name past _MAX_STATEMENTS (its Parse is refused: no entry is ever dropped)."""
        if not name:
            if runs is NOTHING:
                self.statements.pop(name, None)
            else:
                self.statements[name] = runs
        elif runs is not NOTHING:
            old = self.statements.get(name)
            if old is None and len(self.statements) >= _MAX_STATEMENTS:
                return False
            self.statements[name] = runs if old is None else _union(old, runs)
        return True

    def bind(self, portal: bytes, statement: str) -> Runs:
        """A Bind of `statement` to `portal`: what the portal runs by SQL (counted in `running` until the transaction
        ends: a Bind that fails leaves the old portal)."""
        if portal and portal not in self.portals:
            if len(self.portals) >= _MAX_PORTALS:
                self.crowded = True
            else:
                self.portals.add(portal)
        runs = self.statements.get(statement, NOTHING)
        if runs is not NOTHING:
            self.running = _union(self.running, runs)
        return runs

    def portal(self, name: bytes) -> bool:
        """Whether `name` may be a protocol portal now."""
        return self.crowded or name in self.portals

    def ended(self) -> None:
        """Every transaction sent has ended: no portal is left."""
        self.portals.clear()
        self.crowded = False
        self.running = NOTHING


def _union(a: Runs, b: Runs) -> Runs:
    if a is NOTHING:
        return b
    return a[0] | b[0], a[1] | b[1]
