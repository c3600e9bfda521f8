"""``haproxy:`` listeners: the PROXY protocol header, from a real HAProxy and written by hand."""

from __future__ import annotations

import pathlib
import re
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.haproxy import HAProxy
from tests.e2e.support import (
    ReverserdProcess,
    connect,
    receive_exactly,
    receive_until_closed,
)

PROXIED = re.compile(r"listening on proxied 127\.0\.0\.1:(\d+)$")
PLAIN = re.compile(r"listening on 127\.0\.0\.1:(\d+)$")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER_DEADLINE = 5.0  # seconds a proxied connection may take to send its header
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d [A-Z]+ \S+: ")
PROMPTLY = 4.0  # a header known to be wrong is refused well before that deadline


@pytest.fixture
def haproxy(tmp_path: pathlib.Path) -> Iterator[Callable[[int, str], HAProxy]]:
    """Start a real HAProxy sending ``send-proxy*`` to a port; each is ended at teardown."""
    started: list[HAProxy] = []

    def start(backend_port: int, send_proxy: str) -> HAProxy:
        directory = tmp_path / f"haproxy-{len(started)}"
        directory.mkdir()
        proxy = HAProxy(directory, backend_port, send_proxy)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.end()


def proxied(reverserd: Callable[..., ReverserdProcess], *extra: str) -> ReverserdProcess:
    return reverserd("--foreground", "--listen", "haproxy:tcp:0", "--log-level", "debug",
                     *extra)


def proxied_port(process: ReverserdProcess) -> int:
    return int(process.wait_for_log(PROXIED.pattern).group(1))


def own_address(sock: socket.socket) -> str:
    """The test socket's own address as reverserd writes addresses: ``host:port``."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def about(address: str) -> str:
    """A pattern for ``address`` in a log line, not a prefix of a longer port."""
    return re.escape(address) + r"(?!\d)"


def lines_about(process: ReverserdProcess, address: str) -> list[str]:
    pattern = re.compile(about(address))
    return [line for line in process.log if pattern.search(line)]


def v2_header(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    """A binary (version 2) PROXY header: version 2, ``command``, ``family`` and what follows."""
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def v2_tcp4(source: str, source_port: int, tlvs: bytes = b"") -> bytes:
    addresses = (socket.inet_pton(socket.AF_INET, source)
                 + socket.inet_pton(socket.AF_INET, "127.0.0.1")
                 + struct.pack("!HH", source_port, 2323))
    return v2_header(0x1, 0x11, addresses, tlvs)


def v2_tcp6(source: str, source_port: int) -> bytes:
    addresses = (socket.inet_pton(socket.AF_INET6, source)
                 + socket.inet_pton(socket.AF_INET6, "::1")
                 + struct.pack("!HH", source_port, 2323))
    return v2_header(0x1, 0x21, addresses)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


V2_LOCAL = v2_header(0x0, 0x00, b"")
V2_TLVS = (tlv(0x01, b"h2")  # PP2_TYPE_ALPN
           + tlv(0x02, b"reverser.example")  # PP2_TYPE_AUTHORITY
           + tlv(0x04, b"\x00" * 5)  # PP2_TYPE_NOOP
           + tlv(0xE0, b"custom\xff\x00bytes"))  # a type for private use

# (header, the client address reverserd should log; None: the test socket's own)
HEADERS = {
    "v1-tcp4": (b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 2323\r\n", "192.0.2.7:5555"),
    "v1-tcp6": (b"PROXY TCP6 2001:db8::1 ::1 5555 2323\r\n", "[2001:db8::1]:5555"),
    "v1-unknown": (b"PROXY UNKNOWN\r\n", None),
    "v2-tcp4": (v2_tcp4("192.0.2.7", 5555), "192.0.2.7:5555"),
    "v2-tcp6": (v2_tcp6("2001:db8::1", 5555), "[2001:db8::1]:5555"),
    "v2-local": (V2_LOCAL, None),
    "v2-tcp4-with-tlvs": (v2_tcp4("192.0.2.7", 5555, V2_TLVS), "192.0.2.7:5555"),
}


def send_byte_by_byte(sock: socket.socket, data: bytes) -> None:
    """Send one byte per segment (``connect`` sets TCP_NODELAY), checking between them that
    nothing comes back before the last one: no answer, no close while the line is incomplete."""
    for index in range(len(data)):
        if index:
            readable, _, _ = select.select([sock], [], [], 0.002)
            assert not readable, f"reverserd answered or closed after {index} bytes"
        sock.sendall(data[index:index + 1])


def closed_with_nothing_back(sock: socket.socket, timeout: float = PROMPTLY) -> bytes:
    """What the peer sent before closing (a reset counts as a close), within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return receive_until_closed(sock)
    except ConnectionResetError:
        return b""
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {timeout} s") from None


def exchange_through_header(port: int, header: bytes = HEADERS["v1-tcp4"][0]) -> bytes:
    """A well-behaved proxied client: the header, one line, ``quit``; returns the reply."""
    with connect(port) as sock:
        sock.sendall(header + b"still served\nquit\n")
        return receive_until_closed(sock)


def assert_one_line_about(process: ReverserdProcess, address: str, sync_port: int,
                          proxied_sync: bool) -> str:
    """Exactly one log line says why the connection from ``address`` was closed (beside the
    debug lines every connection has); a later connection on ``sync_port``, once its own line
    shows up, proves every line about the earlier one was written."""
    process.wait_for_log(about(address))
    with connect(sync_port) as sync:
        port = sync.getsockname()[1]
        if proxied_sync:  # the header's address is logged; the socket's port keeps it unique
            sync.sendall(f"PROXY TCP4 192.0.2.9 127.0.0.1 {port} 2323\r\n".encode())
            sync_address = f"192.0.2.9:{port}"
        else:
            sync_address = f"127.0.0.1:{port}"
        sync.sendall(b"sync\nquit\n")
        assert receive_until_closed(sync) == b"cnys\n"
        process.wait_for_log(f"connection from {about(sync_address)}")
    lifecycle = re.compile(rf"DEBUG \S+: connection from {about(address)}( closed| lost: .*)?$")
    lines = [line for line in lines_about(process, address) if not lifecycle.search(line)]
    assert len(lines) == 1, lines_about(process, address)
    assert_clean_log(process)
    return lines[0]


def assert_clean_log(process: ReverserdProcess) -> None:
    """Every log line is one whole record (no traceback spilling over), none an error."""
    unexpected = [line for line in process.log
                  if not LOG_RECORD.match(line) or re.search(r" (ERROR|CRITICAL) ", line)]
    assert not unexpected, unexpected


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2",
                                        "send-proxy-v2 proxy-v2-options crc32c"],
                         ids=["v1", "v2", "v2-with-crc32c-tlv"])
def test_clients_through_haproxy_are_answered_and_logged_by_their_own_address(
        reverserd, haproxy, send_proxy: str) -> None:
    process = proxied(reverserd)
    proxy = haproxy(proxied_port(process), send_proxy)
    with connect(proxy.port) as first, connect(proxy.port) as second:
        first.sendall(b"hello\r\n")
        second.sendall(b"world\n")
        assert receive_exactly(first, 7) == b"olleh\r\n"
        assert receive_exactly(second, 6) == b"dlrow\n"
        first.sendall(b"abc\nde\r\nquit\n")
        second.sendall(b"caf\xc3\xa9\r\nquit\n")
        # Everything that ever reaches a client: its own lines reversed, no header bytes.
        assert receive_until_closed(first) == b"cba\ned\r\n"
        assert receive_until_closed(second) == b"\xc3\xa9fac\r\n"
        clients = {own_address(first), own_address(second)}
    for address in clients:
        process.wait_for_log(f"connection from {about(address)}")
    logged = set(re.findall(r"connection from (127\.0\.0\.1:\d+)", "\n".join(process.log)))
    assert logged == clients, (logged, clients, proxy.output())
    assert_clean_log(process)


@pytest.mark.parametrize("delivery", ["one-send", "byte-by-byte"])
@pytest.mark.parametrize("name", list(HEADERS))
def test_a_valid_header_is_consumed_and_its_client_address_logged(
        reverserd, name: str, delivery: str) -> None:
    header, client = HEADERS[name]
    process = proxied(reverserd)
    with connect(proxied_port(process)) as sock:
        if delivery == "one-send":
            sock.sendall(header + b"hello\n")
        else:
            send_byte_by_byte(sock, header + b"hello\n")
        assert receive_exactly(sock, 6) == b"olleh\n"
        sock.sendall(b"ab\r\nquit\n")
        assert receive_until_closed(sock) == b"ba\r\n"
        address = client or own_address(sock)
    process.wait_for_log(f"connection from {about(address)}")
    assert_clean_log(process)


MALFORMED = {
    "no-header": b"hello\n",
    "v1-too-long": b"PROXY TCP4 " + b"1" * 120,
    "v1-bad-address": b"PROXY TCP4 192.0.2.7 not-an-address 5555 2323\r\nhello\n",
    "v1-bad-protocol": b"PROXY SCTP 192.0.2.7 127.0.0.1 5555 2323\r\nhello\n",
    "v2-bad-version": V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12 + b"hello\n",
    "v2-bad-command": V2_SIGNATURE + b"\x2f\x11\x00\x0c" + b"\x00" * 12 + b"hello\n",
    "v2-address-too-short": V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4 + b"hello\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_missing_or_malformed_header_closes_with_nothing_back_and_one_line(
        reverserd, name: str) -> None:
    process = proxied(reverserd)
    port = proxied_port(process)
    with connect(port) as sock:
        sock.sendall(MALFORMED[name])
        assert closed_with_nothing_back(sock) == b""
        address = own_address(sock)
    assert_one_line_about(process, address, port, proxied_sync=True)
    assert process.popen.poll() is None


def test_a_silent_client_is_closed_at_the_header_deadline_while_others_are_served(
        reverserd) -> None:
    process = proxied(reverserd)
    port = proxied_port(process)
    with connect(port) as silent:
        connected = time.monotonic()
        for header, _ in HEADERS.values():
            assert exchange_through_header(port, header) == b"devres llits\n"
        assert closed_with_nothing_back(silent, timeout=2 * HEADER_DEADLINE) == b""
        waited = time.monotonic() - connected
        address = own_address(silent)
    assert HEADER_DEADLINE - 0.5 <= waited <= 2 * HEADER_DEADLINE, waited
    assert_one_line_about(process, address, port, proxied_sync=True)


def test_a_peer_outside_proxy_from_is_closed_with_nothing_back_and_one_line(
        reverserd) -> None:
    process = reverserd("--foreground", "--listen", "haproxy:tcp:0", "--listen", "tcp:0",
                        "--proxy-from", "10.0.0.0/8", "--log-level", "debug")
    port = proxied_port(process)
    plain = int(process.wait_for_log(PLAIN.pattern).group(1))
    with connect(port) as sock:
        sock.sendall(HEADERS["v1-tcp4"][0] + b"hello\n")
        assert closed_with_nothing_back(sock) == b""
        address = own_address(sock)
    assert_one_line_about(process, address, plain, proxied_sync=False)
    assert not [line for line in process.log if re.search(about("192.0.2.7:5555"), line)]


def test_a_plain_listener_beside_a_proxied_one_needs_no_header(reverserd) -> None:
    process = reverserd("--foreground", "--listen", "tcp:0", "--listen", "haproxy:tcp:0",
                        "--log-level", "debug")
    plain = int(process.wait_for_log(PLAIN.pattern).group(1))
    port = proxied_port(process)
    listening = [line for line in process.log if "listening on" in line]
    assert [PLAIN.search(line) is not None for line in listening] == [True, False], listening
    header = HEADERS["v1-tcp4"][0]
    with connect(plain) as sock:
        sock.sendall(header + b"hello\nquit\n")
        assert receive_until_closed(sock) == header[:-2][::-1] + b"\r\nolleh\n"
        address = own_address(sock)
    process.wait_for_log(f"connection from {about(address)}")
    assert exchange_through_header(port) == b"devres llits\n"
    process.wait_for_log(f"connection from {about('192.0.2.7:5555')}")
    assert_clean_log(process)



def test_the_per_peer_limit_counts_the_client_the_header_names(reverserd) -> None:
    process = proxied(reverserd, "--max-connections-per-peer", "1")
    port = proxied_port(process)
    with connect(port) as first:
        first.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 2323\r\nfirst\n")
        assert receive_exactly(first, 6) == b"tsrif\n"
        with connect(port) as same_client:  # a second connection of that client: over its share
            same_client.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5556 2323\r\nsecond\n")
            assert closed_with_nothing_back(same_client) == b""
        # Another client behind the same balancer has a share of its own.
        assert exchange_through_header(port, b"PROXY TCP4 192.0.2.8 127.0.0.1 5557 2323\r\n") \
            == b"devres llits\n"
        first.sendall(b"quit\n")
        assert receive_until_closed(first) == b""
    process.wait_for_log(r"closing connection from 192\.0\.2\.7:5556: it has 1 connections")
    assert_clean_log(process)


def test_a_balancer_on_a_unix_socket_may_send_the_header(reverserd, tmp_path) -> None:
    """A local process that may open the socket file is the balancer it is there for."""
    path = tmp_path / "proxied.sock"
    process = reverserd("--foreground", "--listen", f"haproxy:unix:{path}",
                        "--proxy-from", "10.0.0.0/8", "--log-level", "debug")
    process.wait_for_log(rf"listening on proxied unix:{re.escape(str(path))}$")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(HEADERS["v2-tcp4"][0] + b"hello\nquit\n")
        assert receive_until_closed(sock) == b"olleh\n"
    process.wait_for_log(r"connection from 192\.0\.2\.7:5555$")
    assert_clean_log(process)
