"""A large ErrorResponse or NoticeResponse cut as it arrives: each field kept to FIELD_LIMIT bytes (then "…")."""

from __future__ import annotations

ERROR_CUT = 65536  # an ErrorResponse whose body is longer is cut (red team 9a8 N3: 300 MB quoted whole cost 878 MB)
FIELD_LIMIT = 2048  # bytes of one field's value kept
_TOTAL = ERROR_CUT - FIELD_LIMIT - 16  # fields kept while the cut body stays under ERROR_CUT
_ELLIPSIS = "…".encode()


class ErrorCut:
    """An ErrorResponse's (or NoticeResponse's: `type_`) body fed piece by piece; `message()` is the cut message (at
    most ERROR_CUT bytes of body): a field past FIELD_LIMIT is cut at a character boundary and ends in "…", fields
    past the total are left out."""

    __slots__ = ("_code", "_cut", "_field", "_out", "_type")

    def __init__(self, type_: int = 69) -> None:
        self._type = bytes((type_,))
        self._out = bytearray()
        self._field = bytearray()
        self._code = -1  # the field being read (-1: at a field's code byte, 0: the body's end was read)
        self._cut = False

    def feed(self, piece: bytes | memoryview) -> None:
        data = bytes(piece)
        pos, n = 0, len(data)
        while pos < n and self._code != 0:
            if self._code < 0:
                self._code = data[pos]
                pos += 1
                continue
            nul = data.find(b"\x00", pos)
            end = n if nul < 0 else nul
            room = FIELD_LIMIT - len(self._field)
            if end - pos > room:
                self._cut = True
            if room > 0:
                self._field += data[pos:pos + min(room, end - pos)]
            if nul < 0:
                return
            self._field_done()
            pos = nul + 1

    def _field_done(self) -> None:
        field = bytes(self._field)
        if self._cut:
            end = len(field)
            while end > 0 and field[end - 1] & 0xC0 == 0x80:  # (a character's continuation bytes)
                end -= 1
            if end > 0 and field[end - 1] >= 0xC0:  # (and the lead byte of that character, begun, not whole)
                end -= 1
            field = field[:end] + _ELLIPSIS
        if len(self._out) + len(field) <= _TOTAL:
            self._out += bytes((self._code,)) + field + b"\x00"
        self._field.clear()
        self._code, self._cut = -1, False

    def message(self) -> bytes:
        """The cut message, framed."""
        if self._code > 0:  # (a body without its terminator: its last field as read)
            self._field_done()
        body = bytes(self._out) + b"\x00"
        return self._type + (len(body) + 4).to_bytes(4, "big") + body
