"""The PROXY header parser against a small encoder of its own, examples and fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reverserd.proxy_header import (
    MAX_HEADER_BYTES,
    MAX_V1_BYTES,
    ProxyHeader,
    ProxyHeaderError,
    parse,
)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAPPED = str(ipaddress.IPv6Address("::ffff:192.0.2.1"))  # how this Python spells it
Address = tuple[str, int] | str | None
Example = tuple[bytes, Address, Address]  # a header, and the source and destination it names


# ---- an encoder, written from the spec independently of the parser ----

def v1(protocol: str, *words: object) -> bytes:
    return " ".join(["PROXY", protocol, *map(str, words)]).encode("ascii") + b"\r\n"


def v2(command: int, family: int, body: bytes, version: int = 2) -> bytes:
    return SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(body)) + body


def v1_tcp4(source: str = "192.0.2.1", destination: str = "198.51.100.2",
            source_port: object = 1234, destination_port: object = 80) -> bytes:
    return v1("TCP4", source, destination, source_port, destination_port)


@st.composite
def spellings(draw: st.DrawFn, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Any way inet_pton would read the address: zeros kept or not, one run of zero groups
    as "::", the last 32 bits dotted, any case."""
    if address.version == 4:
        return str(address)
    dotted = draw(st.booleans())
    values = struct.unpack("!8H", address.packed)[: 6 if dotted else 8]
    groups = [format(value, draw(st.sampled_from(["x", "04x"]))) for value in values]
    runs = [(start, end) for start in range(len(values))
            for end in range(start + 1, len(values) + 1) if not any(values[start:end])]
    if draw(st.booleans()) and runs:
        start, end = draw(st.sampled_from(runs))
        text = ":".join(groups[:start]) + "::" + ":".join(groups[end:])
    else:
        text = ":".join(groups)
    if dotted:
        text += "" if text.endswith(":") else ":"
        text += str(ipaddress.IPv4Address(address.packed[12:]))
    return text.upper() if draw(st.booleans()) else text


ports = st.integers(0, 0xFFFF)
tlvs = st.binary(max_size=64)
# Random addresses seldom hold the runs of zeros that "::" stands for.
addresses = {4: st.ip_addresses(v=4),
             6: st.ip_addresses(v=6) | st.lists(st.sampled_from([0, 0, 1, 0xFFFF]) | ports,
                                                min_size=8, max_size=8).map(
                 lambda values: ipaddress.IPv6Address(struct.pack("!8H", *values)))}


@st.composite
def v1_tcp(draw: st.DrawFn) -> Example:
    version = draw(st.sampled_from([4, 6]))
    source, destination = draw(addresses[version]), draw(addresses[version])
    source_port, destination_port = draw(ports), draw(ports)
    header = v1(f"TCP{version}", draw(spellings(source)), draw(spellings(destination)),
                source_port, destination_port)
    assume(len(header) <= MAX_V1_BYTES)  # long IPv6 spellings may not fit together
    return header, (str(source), source_port), (str(destination), destination_port)


v1_unknown = st.text(st.characters(min_codepoint=1, max_codepoint=127, exclude_characters="\r\n"),
                     max_size=MAX_V1_BYTES - len("PROXY UNKNOWN \r\n")).map(
    lambda rest: (b"PROXY UNKNOWN" + (b" " + rest.encode() if rest else b"") + b"\r\n", None, None))


@st.composite
def v2_inet(draw: st.DrawFn) -> Example:
    version = draw(st.sampled_from([4, 6]))
    source, destination = draw(addresses[version]), draw(addresses[version])
    source_port, destination_port = draw(ports), draw(ports)
    family = (0x10 if version == 4 else 0x20) | draw(st.sampled_from([1, 2]))
    body = source.packed + destination.packed + struct.pack("!HH", source_port, destination_port)
    return (v2(1, family, body + draw(tlvs)),
            (str(source), source_port), (str(destination), destination_port))


unix_paths = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"])).filter(
    lambda path: len(path.encode()) <= 108)


@st.composite
def v2_unix(draw: st.DrawFn) -> Example:
    source, destination = draw(unix_paths), draw(unix_paths)
    body = b"".join(path.encode().ljust(108, b"\0") for path in (source, destination))
    return v2(1, draw(st.sampled_from([0x31, 0x32])), body + draw(tlvs)), source, destination


v2_local = st.builds(lambda family, body: (v2(0, family, body), None, None),
                     st.integers(0, 255), st.binary(max_size=300))
v2_unspec = tlvs.map(lambda body: (v2(1, 0x00, body), None, None))
headers = st.one_of(v1_tcp(), v1_unknown, v2_inet(), v2_unix(), v2_local, v2_unspec)


# ---- valid headers ----

@given(headers, st.binary())
def test_a_header_reads_back_and_says_where_the_data_starts(example: Example,
                                                            data: bytes) -> None:
    header, source, destination = example
    parsed = parse(header + data)
    assert parsed == ProxyHeader(source, destination, len(header))
    assert (header + data)[parsed.length :] == data


@given(headers)
def test_every_strict_prefix_of_a_header_is_unfinished(example: Example) -> None:
    header = example[0]
    assert [end for end in range(len(header)) if parse(header[:end]) is not None] == []


@pytest.mark.parametrize(("header", "source", "destination"), [
    (v1_tcp4("0.0.0.0", "255.255.255.255", 0, 65535), ("0.0.0.0", 0), ("255.255.255.255", 65535)),
    (v1("TCP6", "::FFFF:192.0.2.1", "2001:DB8:0:0:0:0:0:1", 1, 2),
     (MAPPED, 1), ("2001:db8::1", 2)),
    (v1("UNKNOWN"), None, None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None, None),
    (v2(1, 0x21, bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1]) + bytes(16) + bytes(4)),
     (MAPPED, 0), ("::", 0)),  # IPv4-mapped stays IPv6
    (v2(1, 0x31, b"/run/a\0garbage".ljust(108, b"\0") + b"\xff".ljust(108, b"\0")),
     "/run/a", "\udcff"),  # a path ends at its NUL; bytes that are not UTF-8 are escaped
    (v2(0, 0x11, b""), None, None),  # LOCAL needs no addresses
    (v2(1, 0x11, bytes(MAX_HEADER_BYTES - 16)), ("0.0.0.0", 0), ("0.0.0.0", 0)),
])
def test_examples(header: bytes, source: Address, destination: Address) -> None:
    assert parse(header + b"after") == ProxyHeader(source, destination, len(header))


def test_the_longest_v1_line_fits_and_may_wait_for_its_lf() -> None:
    longest = b"PROXY UNKNOWN " + b"x" * (MAX_V1_BYTES - 16) + b"\r\n"
    assert len(longest) == MAX_V1_BYTES
    assert parse(longest[:-1]) is None
    assert parse(longest) == ProxyHeader(None, None, MAX_V1_BYTES)


# ---- malformed headers ----

@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",
    b"proxy TCP4 192.0.2.1 198.51.100.2 1234 80\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1234 80\n",
    b"PROXY UNKNOWN\n",
    b"PROXY UNKNOWN \r \r\n",
    b"PROXY UNKNOWN \0\r\n",
    b"PROXY UNKNOWN \xc3\xa9\r\n",
    b"PROXY UNKNOWN " + b"x" * (MAX_V1_BYTES - 15) + b"\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY\r\n",
    b"PROXY TCP4\r\n",
    b"PROXY TCP5 192.0.2.1 198.51.100.2 1234 80\r\n",
    b"PROXY  TCP4 192.0.2.1 198.51.100.2 1234 80\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1234 80 \r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1234\r\n",
    v1_tcp4(source="192.0.2.256"),
    v1_tcp4(source="192.0.2"),
    v1_tcp4(source="192.0.2.01"),
    v1_tcp4(source="::1"),
    v1("TCP6", "192.0.2.1", "::1", 1, 2),
    v1("TCP6", "fe80::1%eth0", "::1", 1, 2),
    v1("TCP6", "::1::", "::1", 1, 2),
    v1_tcp4(source_port=65536),
    v1_tcp4(destination_port="080"),
    v1_tcp4(destination_port="00"),
    v1_tcp4(destination_port="+80"),
    v1_tcp4(destination_port=""),
    v1("TCP6", *["ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"] * 2, 1, 2),  # 116 bytes
    SIGNATURE[:5] + b"X",
    v2(1, 0x11, bytes(12), version=1),
    v2(2, 0x11, bytes(12)),
    v2(1, 0x13, bytes(12)),
    v2(1, 0x41, bytes(12)),
    v2(1, 0x11, bytes(11)),
    v2(1, 0x21, bytes(35)),
    v2(1, 0x31, bytes(215)),
    v2(1, 0x11, bytes(MAX_HEADER_BYTES - 15)),
])
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data + b"\r\n" + bytes(200))


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 999",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 01",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
    b"PROXY TCP4 ::",
    b"PROXY TCP6 1.2",
    b"PROXY TCP6 1:2:3:4:5:6:7:8:",
    b"PROXY TCP6 ::1.2.3.4.",
    b"PROXY UNKNOWNX",
    b"PROXY UNKNOWN " + b"x" * (MAX_V1_BYTES - 16) + b"x",  # no room left for the CRLF
    # Valid words so far, but the shortest ending would take 108 bytes.
    b"PROXY TCP6 " + b"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 " * 2,
    b"PROXY\r",
    SIGNATURE + b"\x11",  # version 1
    SIGNATURE + b"\x22",  # command 2
    SIGNATURE + b"\x21\x51",  # unknown family
    SIGNATURE + b"\x21\x21\x00\x23",  # 35 bytes cannot hold two IPv6 addresses
    SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_HEADER_BYTES - 15),
])
def test_a_prefix_that_cannot_become_valid_is_refused_before_the_rest_arrives(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


@pytest.mark.parametrize("data", [
    b"", b"P", b"PROXY", b"PROXY ", b"PROXY T", b"PROXY TCP4", b"PROXY TCP4 ", b"PROXY UNKNOWN",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", b"PROXY TCP6 ::ffff:1.2.", b"PROXY TCP6 1:2:3:4:5:6:7",
    b"PROXY TCP6 1::2:",
    b"PROXY UNKNOWN " + b"x" * (MAX_V1_BYTES - 16),
    b"PROXY UNKNOWN " + b"x" * (MAX_V1_BYTES - 16) + b"\r",
    b"\r", SIGNATURE[:5], SIGNATURE, SIGNATURE + b"\x20\xff",  # LOCAL takes any family
    SIGNATURE + b"\x21\x00\x00",
    SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_HEADER_BYTES - 16),
])
def test_a_prefix_that_may_become_valid_waits(data: bytes) -> None:
    assert parse(data) is None


@given(st.sampled_from([b"PROXY ", SIGNATURE]), st.data())
def test_bytes_that_leave_both_signatures_are_refused_at_once(signature: bytes,
                                                              data: st.DataObject) -> None:
    kept = data.draw(st.integers(0, len(signature) - 1))
    wrong = data.draw(st.integers(0, 255).filter(
        lambda byte: byte != signature[kept] and not (kept == 0 and byte in b"P\r")))
    start = signature[:kept] + bytes([wrong])
    with pytest.raises(ProxyHeaderError):
        parse(start)
    with pytest.raises(ProxyHeaderError):
        parse(start + data.draw(st.binary()))


# ---- fuzzing ----

def _damage(header: bytes, at: int, byte: int, cut: int) -> bytes:
    at %= len(header)
    return (header[:at] + bytes([byte]) + header[at + 1 :])[: len(header) - cut]


junk = st.one_of(
    st.binary(),
    st.binary().map(lambda rest: b"PROXY " + rest),
    st.binary().map(lambda rest: SIGNATURE + rest),
    st.builds(_damage, headers.map(lambda example: example[0]), st.integers(0),
              st.integers(0, 255), st.integers(0, 3)),
)


@given(junk, st.binary(min_size=1))
def test_any_bytes_give_none_a_header_or_a_proxy_header_error(data: bytes, more: bytes) -> None:
    try:
        parsed = parse(data)
    except ProxyHeaderError:
        with pytest.raises(ProxyHeaderError):  # no later byte can save it
            parse(data + more)
        return
    if parsed is None:
        assert all(parse(data[:end]) is None for end in range(len(data)))
    else:
        assert isinstance(parsed, ProxyHeader)
        assert 0 < parsed.length <= len(data)
        assert parse(data[: parsed.length]) == parse(data + more) == parsed
        assert parse(data[: parsed.length - 1]) is None
