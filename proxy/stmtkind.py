"""A statement's kind for metrics and audit (bounded label values), from its leading keyword; pure."""

from __future__ import annotations

from proxy._accel import speedups
from proxy.memory import text_cache

KINDS = ("select", "insert", "update", "delete", "copy", "ddl", "utility", "other")

_BY_KEYWORD = {
    "select": "select", "with": "select", "values": "select", "table": "select", "fetch": "select",
    "declare": "select", "move": "select",
    "insert": "insert", "update": "update", "merge": "update", "delete": "delete", "copy": "copy",
    "create": "ddl", "alter": "ddl", "drop": "ddl", "truncate": "ddl", "comment": "ddl", "grant": "ddl",
    "revoke": "ddl", "reindex": "ddl", "cluster": "ddl", "refresh": "ddl", "security": "ddl",
    "begin": "utility", "start": "utility", "commit": "utility", "end": "utility", "rollback": "utility",
    "abort": "utility", "savepoint": "utility", "release": "utility", "set": "utility", "reset": "utility",
    "show": "utility", "discard": "utility", "prepare": "utility", "execute": "utility",
    "deallocate": "utility", "close": "utility", "listen": "utility", "unlisten": "utility",
    "notify": "utility", "explain": "utility", "analyze": "utility", "vacuum": "utility", "lock": "utility",
    "checkpoint": "utility", "load": "utility", "do": "utility", "call": "utility",
}
_BY_KEYWORD.update({word.upper(): kind for word, kind in _BY_KEYWORD.items()})  # found without .lower()


def statement_kind(sql: str) -> str:
    """Kind of the first statement in `sql`: skips blanks, comments and opening parentheses."""
    n = len(sql)
    j = 0
    while j < n:  # the usual case: a keyword right at the start, decided without the cache (most texts are new)
        c = ord(sql[j])
        if not (65 <= c <= 90 or 97 <= c <= 122 or c == 95):  # [A-Za-z_]
            break
        j += 1
    if j and (j == n or ord(sql[j]) < 128):  # a whole word (no letter of another alphabet goes on with it)
        word = sql[:j]
        kind = _BY_KEYWORD.get(word)
        return kind if kind is not None else _BY_KEYWORD.get(word.lower(), "other")
    return _statement_kind(sql)


@text_cache(4096)  # a long text is computed, not kept: 4096 x 2 KB at most
def _statement_kind(sql: str) -> str:
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace() or c == "(":
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            break
    j = i
    while j < n and (sql[j].isalpha() or sql[j] == "_"):
        j += 1
    if j == i:
        return "other"
    return _BY_KEYWORD.get(sql[i:j].lower(), "other")


if speedups is not None:  # the compiled build of these names (proxy/_speedups.pyx, proxy/_accel.py)
    statement_kind = speedups.statement_kind
