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
# A protocol name's last bytes that its cut at 63 bytes left of a character (1 to 3 bytes, not valid UTF-8): each is
# kept in the key as a character of this private-use block (U+F780..U+F7FF, one per byte 0x80..0xFF), so the key is
# text and tells the bytes PostgreSQL keeps (`server_bytes`). Such a key is longer than 63 bytes: no uncut name has it.
_CUT_BYTE = 0xF700


def protocol_key(raw: bytes) -> bytes:
    """PostgreSQL's key of a statement or portal name as a message's raw bytes: its first 63 (a portal noted under
    its whole name was missed by an Execute naming it with other bytes past them: red team 9s7 P1)."""
    return raw[:NAMEDATALEN - 1]


def protocol_name(name: str) -> str:
    """PostgreSQL's key of a statement or portal name as a protocol message sends it: its first 63 bytes (the bytes
    of a character they cut in two kept as private-use characters, see `_CUT_BYTE`)."""
    if len(name) <= _SHORT:
        return name
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) < NAMEDATALEN:
        return name
    raw = raw[:NAMEDATALEN - 1]
    for cut in range(4):
        try:
            head = raw[:len(raw) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return head + "".join(chr(_CUT_BYTE + byte) for byte in raw[len(raw) - cut:])
    return raw.decode("utf-8", "replace")


def cut(key: str) -> bool:
    """Whether `key` (a `protocol_name`) ends in a character its cut left in part."""
    return len(key) > _SHORT and _CUT_BYTE + 0x80 <= ord(key[-1]) <= _CUT_BYTE + 0xFF


def server_bytes(key: str) -> bytes:
    """The bytes PostgreSQL keeps a statement or portal under, of its `protocol_name` key."""
    if not cut(key):
        return key.encode("utf-8", "surrogatepass")
    head = key.rstrip("".join(chr(_CUT_BYTE + byte) for byte in range(0x80, 0x100)))
    return head.encode("utf-8", "surrogatepass") + bytes(ord(c) - _CUT_BYTE for c in key[len(head):])


def shown(key: str) -> str:
    """A `protocol_name` key as the client is shown it (a character its cut left in part: U+FFFD)."""
    return server_bytes(key).decode("utf-8", "replace") if cut(key) else key


def sql_identifier(name: str) -> str:
    """PostgreSQL's key of a statement, portal or cursor name written in SQL (an identifier the scanner truncated):
    its longest prefix of whole characters within 63 bytes."""
    if len(name) <= _SHORT:
        return name
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) < NAMEDATALEN:
        return name
    return raw[:NAMEDATALEN - 1].decode("utf-8", "ignore")
