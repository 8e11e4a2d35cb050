"""The PROXY protocol v2 header a load balancer puts before a connection's bytes (HAProxy's spec): pure, no I/O."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # 12 bytes no PostgreSQL startup packet begins with (its length would be ~218 MB)
V1_PREFIX = b"PROXY "  # the text version 1 (not accepted: recognised only to say so)
FIXED = 16  # signature, version/command, family/transport, length
MAX_LENGTH = 4096  # bytes after the fixed part accepted (addresses are at most 216; the rest TLVs, skipped)

LOCAL, PROXY = 0x0, 0x1  # commands: LOCAL = the balancer's own connection (health check); PROXY = relayed
AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX = 0x0, 0x1, 0x2, 0x3
UNSPEC, STREAM = 0x0, 0x1  # transports (DGRAM = 0x2 is not a PostgreSQL connection)
_ADDRESS_LENGTH = {AF_UNSPEC: 0, AF_INET: 12, AF_INET6: 36, AF_UNIX: 216}


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol v2 header; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A decoded header: `source` is the client's (address, port), None when the connection's own peer stands (the
    LOCAL command, an unspecified or Unix-socket family); `length` is how many bytes the header took."""

    command: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int


def starts_like(data: bytes | bytearray) -> bool:
    """Whether `data` begins like a PROXY protocol header (v2's signature, or v1's text), as far as it goes."""
    return bool(data) and any(data[:len(p)] == p[:len(data)] for p in (SIGNATURE, V1_PREFIX))


def decode(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """The header at the start of `data`; None while more bytes are needed; ProxyHeaderError when it is not one."""
    data = bytes(data[:FIXED + MAX_LENGTH])
    if data[:len(V1_PREFIX)] == V1_PREFIX:
        raise ProxyHeaderError("PROXY protocol version 1 (text) header: only version 2 is accepted")
    n = min(len(data), len(SIGNATURE))
    if data[:n] != SIGNATURE[:n]:
        raise ProxyHeaderError("no PROXY protocol v2 signature")
    if len(data) < FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0xF
    family, transport = data[13] >> 4, data[13] & 0xF
    (length,) = struct.unpack_from("!H", data, 14)
    if version != 2:
        raise ProxyHeaderError(f"PROXY protocol version {version}: only version 2 is accepted")
    if command not in (LOCAL, PROXY):
        raise ProxyHeaderError(f"unknown PROXY protocol command {command}")
    if length > MAX_LENGTH:
        raise ProxyHeaderError(f"PROXY protocol header of {length} bytes (at most {MAX_LENGTH})")
    if len(data) < FIXED + length:
        return None
    if command == LOCAL:  # the balancer speaking for itself: the address block (if any) is ignored
        return ProxyHeader(LOCAL, None, None, FIXED + length)
    if family not in _ADDRESS_LENGTH:
        raise ProxyHeaderError(f"unknown PROXY protocol address family {family}")
    if transport not in (UNSPEC, STREAM):
        raise ProxyHeaderError(f"PROXY protocol transport {transport} is not a stream")
    need = _ADDRESS_LENGTH[family]
    if length < need:
        raise ProxyHeaderError(f"PROXY protocol address block of {length} bytes (family {family} needs {need})")
    body = data[FIXED:FIXED + need]
    if family == AF_INET:
        src, dst, sport, dport = body[0:4], body[4:8], *struct.unpack_from("!HH", body, 8)
        return ProxyHeader(PROXY, (str(ipaddress.IPv4Address(src)), sport),
                           (str(ipaddress.IPv4Address(dst)), dport), FIXED + length)
    if family == AF_INET6:
        src, dst, sport, dport = body[0:16], body[16:32], *struct.unpack_from("!HH", body, 32)
        return ProxyHeader(PROXY, (_v6(src), sport), (_v6(dst), dport), FIXED + length)
    return ProxyHeader(PROXY, None, None, FIXED + length)  # AF_UNSPEC / AF_UNIX: no IP address to use (the spec:
    # the receiver keeps the connection's own addresses)


def _v6(raw: bytes) -> str:
    """An IPv6 address as text; an IPv4-mapped one as its IPv4 address (the same client as over IPv4)."""
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)


def encode(source: tuple[str, int] | None, destination: tuple[str, int] | None = None, *,
           tlvs: bytes = b"") -> bytes:
    """A v2 header (for tests and tools): PROXY with the given addresses, or LOCAL when `source` is None."""
    if source is None:
        return SIGNATURE + struct.pack("!BBH", 0x20 | LOCAL, 0, len(tlvs)) + tlvs
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0] if destination else ("0.0.0.0" if src.version == 4 else "::"))
    family = AF_INET if src.version == 4 else AF_INET6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1] if destination else 0) + tlvs
    return SIGNATURE + struct.pack("!BBH", 0x20 | PROXY, (family << 4) | STREAM, len(body)) + body


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(given: tuple[str, ...]) -> tuple[Network, ...]:
    """`[server] proxy_protocol_from` as networks (checked when the config was read)."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in given)


def trusted(address: str, senders: tuple[Network, ...]) -> bool:
    """Whether a connection from `address` (its IPv4-mapped form as IPv4) comes from one of `senders`."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:  # a Unix-domain socket's peer: no address to match
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in senders)
