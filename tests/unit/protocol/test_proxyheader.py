"""The PROXY protocol v2 header decoder: addresses, LOCAL, TLVs skipped, and every kind of bad input refused."""

from __future__ import annotations

import random
import struct

import pytest

from proxy.protocol.proxyheader import (
    LOCAL,
    MAX_LENGTH,
    PROXY,
    SIGNATURE,
    ProxyHeaderError,
    decode,
    encode,
    starts_like,
)

STARTUP = struct.pack("!II", 8, 80877103)  # an SSLRequest: what follows the header


def test_ipv4_source_and_the_bytes_after_it() -> None:
    header = encode(("203.0.113.7", 50123), ("10.0.0.1", 6432))
    got = decode(header + STARTUP)
    assert got is not None
    assert (got.command, got.source, got.destination) == (PROXY, ("203.0.113.7", 50123), ("10.0.0.1", 6432))
    assert (header + STARTUP)[got.length:] == STARTUP


def test_ipv6_source_and_ipv4_mapped() -> None:
    got = decode(encode(("2001:db8::5", 1), ("2001:db8::1", 2)))
    assert got is not None and got.source == ("2001:db8::5", 1)
    mapped = decode(encode(("::ffff:198.51.100.4", 3), ("::1", 4)))
    assert mapped is not None and mapped.source == ("198.51.100.4", 3)


def test_tlvs_are_skipped() -> None:
    tlvs = bytes([0xEA, 0, 5]) + b"vpce1" + bytes([0x04, 0, 0])  # AWS's VPC endpoint id, a NOOP
    header = encode(("192.0.2.9", 7), ("192.0.2.1", 8), tlvs=tlvs)
    got = decode(header + b"rest")
    assert got is not None and got.source == ("192.0.2.9", 7) and got.length == len(header)


def test_local_command_keeps_the_connections_address() -> None:
    got = decode(encode(None) + STARTUP)
    assert got is not None and (got.command, got.source, got.length) == (LOCAL, None, 16)


@pytest.mark.parametrize("family", [0x00, 0x30])  # AF_UNSPEC, AF_UNIX: no address to use
def test_families_without_an_ip_address(family: int) -> None:
    body = bytes(216 if family == 0x30 else 0)
    got = decode(SIGNATURE + bytes([0x21, family | 1]) + struct.pack("!H", len(body)) + body)
    assert got is not None and got.command == PROXY and got.source is None


def test_truncated_headers_ask_for_more() -> None:
    header = encode(("2001:db8::5", 1), ("2001:db8::1", 2), tlvs=b"\x04\x00\x01x")
    for n in range(len(header)):
        assert decode(header[:n]) is None, n
    assert decode(header) is not None


@pytest.mark.parametrize(("data", "says"), [
    (struct.pack("!II", 8, 80877103), "signature"),  # a client speaking PostgreSQL directly
    (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4), "signature"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "version 1"),
    (SIGNATURE + bytes([0x11, 0x11]) + struct.pack("!H", 12) + bytes(12), "version 1"),
    (SIGNATURE + bytes([0x22, 0x11]) + struct.pack("!H", 12) + bytes(12), "command"),
    (SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", MAX_LENGTH + 1), "at most"),
    (SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 0xFFFF), "at most"),
    (SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 4) + bytes(4), "needs 12"),
    (SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", 12) + bytes(12), "needs 36"),
    (SIGNATURE + bytes([0x21, 0x41]) + struct.pack("!H", 12) + bytes(12), "family"),
    (SIGNATURE + bytes([0x21, 0x12]) + struct.pack("!H", 12) + bytes(12), "stream"),
])
def test_bad_headers_are_refused(data: bytes, says: str) -> None:
    with pytest.raises(ProxyHeaderError, match=says):
        decode(data)


def test_starts_like() -> None:
    assert starts_like(SIGNATURE[:3]) and starts_like(SIGNATURE + b"x") and starts_like(b"PROX")
    assert not starts_like(b"") and not starts_like(STARTUP) and not starts_like(b"\r\n\r\x01")


def test_random_bytes_never_crash() -> None:
    rng = random.Random(19)
    valid = encode(("192.0.2.9", 7), ("192.0.2.1", 8), tlvs=b"\x04\x00\x02ab")
    for _ in range(3000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[:rng.randint(0, len(data))]
        try:
            got = decode(bytes(data))
        except ProxyHeaderError:
            continue
        assert got is None or 16 <= got.length <= len(data)
