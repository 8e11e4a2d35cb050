"""The client's schema names written back in PostgreSQL's answers to statements sent with reserved ones (hiding.py)."""

from __future__ import annotations

import re

from proxy.protocol import messages as m

# A reserved name (policy/hiding.py: pg_, a digit, more) where PostgreSQL names a schema: as a qualifier (`"r.t"`,
# `r.f()`, `r.+`) or alone (`schema "r" does not exist`). No schema PostgreSQL can have is named so, so a name in
# that place comes from the statement the proxy renamed (or from the client's own text: then it stays).
_RESERVED = re.compile(r'(?<![A-Za-z0-9_$])pg_[0-9][a-z0-9]*(?=\.)|(?<=schema ")pg_[0-9][a-z0-9]*(?=")')
# The answers that name a missing schema: class 42 (undefined relation, function, type, ...), 3F (invalid schema
# name), 0A (cross-database reference), and notices/warnings (`IF EXISTS`: "… does not exist, skipping"). Values a
# statement computes (class 22, 23, P0 …) are never rewritten.
_CLASSES = frozenset({"42", "3F", "0A", "00", "01"})
_KEPT_FIELDS = frozenset("SVCPFLRp")  # severity, code, position, file, line, routine, internal position
MAX_NAMES = 4096  # reserved names a session remembers (the oldest go first)


def remember(names: dict[str, str], pairs: tuple[tuple[str, str], ...]) -> None:
    """Add a decision's (reserved, client name) pairs to a session's map."""
    for reserved, name in pairs:
        if reserved not in names:
            if len(names) >= MAX_NAMES:
                del names[next(iter(names))]
            names[reserved] = name


def written_back(type_byte: bytes, body: bytes, names: dict[str, str], written: str) -> bytes | None:
    """The ErrorResponse/NoticeResponse `body` with each reserved schema name replaced by the client's, framed; None
    when nothing changes. A reserved name the client wrote itself (`written`, lower-cased) stays."""
    if b"pg_" not in body or (m.error_sqlstate(body) or "")[:2] not in _CLASSES:
        return None
    fields = m.decode_error_fields(body)
    return m.encode_error_fields(type_byte, fields) if fields_back(fields, names, written) else None


def fields_back(fields: dict[str, str], names: dict[str, str], written: str) -> bool:
    """`written_back` on decoded fields, in place; whether any changed."""
    if fields.get("C", "")[:2] not in _CLASSES:
        return False
    changed = False

    def back(found: re.Match[str]) -> str:
        nonlocal changed
        reserved = found.group(0)
        name = names.get(reserved)
        if name is None or reserved in written:
            return reserved
        changed = True
        return name

    for code, value in fields.items():
        if code not in _KEPT_FIELDS and "pg_" in value:
            fields[code] = _RESERVED.sub(back, value)
    return changed
