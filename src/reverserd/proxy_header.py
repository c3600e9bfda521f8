"""The PROXY protocol header (versions 1 and 2) a load balancer puts before a client's bytes.

Behind HAProxy and its kin every connection comes from the balancer, so the
real client is only known from this header.  Parsing is kept apart from the
sockets so that the connection code can feed it its growing buffer and learn
early, from a prefix, whether to wait, to go on, or to hang up.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Callable, Iterable

MAX_V1_BYTES = 107  # the spec's limit, CRLF included
MAX_HEADER_BYTES = 4096  # our cap for a v2 header (16-byte fixed part + addresses + TLVs)

_V1_PREFIX = b"PROXY "
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED_BYTES = 16
# Family and transport byte -> bytes of addresses that must follow.  The
# transport (stream or datagram) does not change how the addresses read.
_V2_ADDRESS_BYTES = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_V2_ADDRESS_LAYOUTS = {1: struct.Struct("!4s4sHH"), 2: struct.Struct("!16s16sHH"),
                       3: struct.Struct("108s108s")}
# ipaddress also reads IPv6 scopes ("fe80::1%eth0"), which no sender writes.
_IP_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")


class ProxyHeaderError(ValueError):
    """malformed or too long: the connection must be closed"""


@dataclasses.dataclass(frozen=True)
class ProxyHeader:
    """Who the balancer says is talking, and where the application's own bytes begin.

    ``source`` is the client as ``(ip, port)``, or a path for a v2 AF_UNIX
    connection; None for LOCAL, UNKNOWN or UNSPEC headers, which mean the
    connection's real peer counts.  ``destination`` reads the same way.
    ``length`` is the size of the header, so the caller knows what to drop.
    """

    source: tuple[str, int] | str | None
    destination: tuple[str, int] | str | None
    length: int


def parse(data: bytes) -> ProxyHeader | None:
    """None while `data` is a strict prefix of a header that may still turn out valid;
    a ProxyHeader once whole; raises ProxyHeaderError as soon as it cannot become valid
    (never guess: bytes that begin neither signature are an error at once).

    The caller re-parses its growing buffer, so each call reads at most the
    header's first 107 (v1) or 4096 (v2) bytes, whatever follows.
    """
    if _V2_SIGNATURE.startswith(data[: len(_V2_SIGNATURE)]):
        return _parse_v2(data) if len(data) >= len(_V2_SIGNATURE) else None
    if not _V1_PREFIX.startswith(data[: len(_V1_PREFIX)]):
        raise ProxyHeaderError(f"not a PROXY header: it begins {data[:16]!r}")
    return _parse_v1(data)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    """Check each fixed byte as soon as it arrives, so a bad header is refused unread."""
    if len(data) == len(_V2_SIGNATURE):
        return None
    # Bytes 13 and 14 (one-based) are version and command, family and transport; 15-16 a length.
    version, command = divmod(data[12], 16)
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2: version {version}, expected 2")
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2: unknown command {command}")
    local = command == 0  # a health check from the balancer itself: its addresses mean nothing
    if len(data) == 13:
        return None
    family = data[13]
    if not local and family not in _V2_ADDRESS_BYTES:
        raise ProxyHeaderError(f"PROXY v2: unknown family and transport {family:#04x}")
    if len(data) < _V2_FIXED_BYTES:
        return None
    length = _V2_FIXED_BYTES + int.from_bytes(data[14:16], "big")
    if length > MAX_HEADER_BYTES:
        raise ProxyHeaderError(f"PROXY v2: a {length}-byte header, over {MAX_HEADER_BYTES}")
    address_bytes = 0 if local else _V2_ADDRESS_BYTES[family]
    if length < _V2_FIXED_BYTES + address_bytes:
        raise ProxyHeaderError(f"PROXY v2: {length - _V2_FIXED_BYTES} bytes leave no room"
                               f" for {address_bytes} bytes of addresses")
    if len(data) < length:
        return None
    if address_bytes == 0:
        return ProxyHeader(None, None, length)
    fields = _V2_ADDRESS_LAYOUTS[family >> 4].unpack_from(data, _V2_FIXED_BYTES)
    if family >> 4 == 3:
        source_path, destination_path = (_unix_path(raw) for raw in fields)
        return ProxyHeader(source_path, destination_path, length)
    source_ip, destination_ip, source_port, destination_port = fields
    return ProxyHeader((str(ipaddress.ip_address(source_ip)), source_port),
                       (str(ipaddress.ip_address(destination_ip)), destination_port), length)


def _unix_path(raw: bytes) -> str:
    """Read a padded sun_path as C does, and as Python spells paths that are not UTF-8."""
    return raw.partition(b"\0")[0].decode("utf-8", "surrogateescape")


@dataclasses.dataclass(frozen=True)
class _Word:
    """One space-separated word of a v1 line, and how an unfinished one might still end.

    Among the ``endings`` tried must be the shortest that makes the word valid
    (an empty one if it is already), so that a prefix is refused exactly when
    nothing could complete it within the line's 107 bytes.
    """

    valid: Callable[[str], bool]
    endings: Callable[[str], Iterable[str]]

    def shortest_ending(self, start: str) -> int:
        """How many characters ``start`` still needs, at least, to be this word."""
        fits = [len(ending) for ending in self.endings(start) if self.valid(start + ending)]
        if not fits:
            raise ProxyHeaderError(f"PROXY v1: {start!r} cannot begin a valid word there")
        return min(fits)


def _one_of(*choices: str) -> _Word:
    return _Word(lambda text: text in choices,
                 lambda start: [word[len(start) :] for word in choices if word.startswith(start)])


def _is_ip(version: int) -> Callable[[str], bool]:
    def valid(text: str) -> bool:
        try:
            return set(text) <= _IP_CHARACTERS and ipaddress.ip_address(text).version == version
        except ValueError:
            return False

    return valid


def _ipv4_ending(start: str) -> str:
    """Zeros finish any dotted quad that began well, and nothing shorter does."""
    octets = start.split(".")
    return ("0" if octets[-1] == "" else "") + ".0" * (4 - len(octets))


def _is_port(text: str) -> bool:
    return text.isdigit() and (text == "0" or text[0] != "0") and int(text) <= 0xFFFF


_PORT = _Word(_is_port, lambda start: ("", "0"))
_IPV4 = _Word(_is_ip(4), lambda start: (_ipv4_ending(start),))
# A group to finish, a "::" to close, or an IPv4 tail ("::ffff:1.2.3.4").
_IPV6 = _Word(_is_ip(6), lambda start: ("", "0", ":", "::",
                                        _ipv4_ending(start.rpartition(":")[2])))
_V1_START = (_one_of("PROXY"), _one_of("TCP4", "TCP6", "UNKNOWN"))
_V1_ADDRESSES = {"TCP4": (_IPV4, _IPV4, _PORT, _PORT), "TCP6": (_IPV6, _IPV6, _PORT, _PORT)}


def _parse_v1(data: bytes) -> ProxyHeader | None:
    """Find the line within 107 bytes, refuse bytes no header holds, then read its words."""
    window = data[:MAX_V1_BYTES]
    newline = window.find(b"\n")
    if newline < 0 and len(window) == MAX_V1_BYTES:
        raise ProxyHeaderError(f"PROXY v1: no CRLF within {MAX_V1_BYTES} bytes")
    if newline >= 0 and window[newline - 1 : newline] != b"\r":
        raise ProxyHeaderError("PROXY v1: LF without CR")
    # A CR at the end of what came so far can only be the CRLF's, so the line is complete.
    ended = newline >= 0 or window.endswith(b"\r")
    line = window[: newline - 1] if newline >= 0 else window.removesuffix(b"\r")
    if not line.isascii() or b"\r" in line or b"\0" in line:
        raise ProxyHeaderError(f"PROXY v1: a stray CR, NUL or non-ASCII byte in {line!r}")
    header = _read_v1(line.decode("ascii"), ended)
    return header if newline >= 0 else None


def _read_v1(text: str, ended: bool) -> ProxyHeader | None:
    """Read a line that has ended, or check that an unfinished one could still end valid."""
    words = text.split(" ")
    shapes = _V1_START + _V1_ADDRESSES.get(words[1] if len(words) > 1 else "", ())
    if words[1:2] == ["UNKNOWN"]:
        words = words[:2]  # what follows UNKNOWN is anything, and ignored
    *done, last = words
    if len(words) > len(shapes) or not all(
            shape.valid(word) for shape, word in zip(shapes, done, strict=False)):
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not a valid header")
    missing = shapes[len(done)].shortest_ending(last)
    to_come = shapes[len(words) :]
    if ended and (missing or to_come):
        raise ProxyHeaderError(f"PROXY v1: {text!r} ends too early")
    if not ended:
        # Even the shortest words yet to come, with their spaces and the CRLF, must fit.
        least = len(text) + missing + sum(1 + shape.shortest_ending("") for shape in to_come)
        if least + 2 > MAX_V1_BYTES:
            raise ProxyHeaderError(f"PROXY v1: {text!r} cannot end within {MAX_V1_BYTES} bytes")
        return None
    length = len(text) + 2
    if words[1] == "UNKNOWN":
        return ProxyHeader(None, None, length)
    source, destination = (str(ipaddress.ip_address(word)) for word in words[2:4])
    return ProxyHeader((source, int(words[4])), (destination, int(words[5])), length)
