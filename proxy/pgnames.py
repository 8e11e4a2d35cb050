"""PostgreSQL's keys of prepared statement, portal and cursor names (NAMEDATALEN truncation); pure, no I/O.

PostgreSQL keeps prepared statements and portals in hash tables keyed by NAMEDATALEN bytes: a name sent in a
protocol message (Parse, Bind, Describe, Close, Execute) is kept, and looked up, by its first NAMEDATALEN - 1 = 63
bytes, cut wherever they end (a multibyte character too). A SQL identifier (`PREPARE`, `EXECUTE`, `DEALLOCATE`,
`DECLARE` ...) is truncated by the scanner at a character boundary within 63 bytes (with a NOTICE). Every record the
session keeps of such a name is keyed as PostgreSQL keys it, so two names equal in their first 63 bytes are one
statement (red team 9a5 F5, F6).
"""

from __future__ import annotations

NAMEDATALEN = 64
_SHORT = (NAMEDATALEN - 1) // 4  # names of at most this many characters are never longer than 63 bytes


def protocol_name(name: str) -> str:
    """PostgreSQL's key of a statement or portal name as a protocol message sends it: its first 63 bytes (a
    character they cut in two ends the key as U+FFFD, as the session decodes a name's invalid bytes)."""
    if len(name) <= _SHORT:
        return name
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) < NAMEDATALEN:
        return name
    return raw[:NAMEDATALEN - 1].decode("utf-8", "replace")


def sql_identifier(name: str) -> str:
    """PostgreSQL's key of a statement, portal or cursor name written in SQL (an identifier the scanner truncated):
    its longest prefix of whole characters within 63 bytes."""
    if len(name) <= _SHORT:
        return name
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) < NAMEDATALEN:
        return name
    return raw[:NAMEDATALEN - 1].decode("utf-8", "ignore")
