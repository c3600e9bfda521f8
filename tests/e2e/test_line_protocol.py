"""What a client of the built-in reverser sees, over real sockets and real nc."""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
from collections.abc import Callable

import pytest

from tests.e2e.support import (
    DEADLINE,
    ReverserdProcess,
    connect,
    receive_exactly,
    receive_until_closed,
    send_until_stalled,
    small_buffered_client,
)


@pytest.fixture(params=[(), ("--loop", "asyncio", "--compact-after", "0")],
                ids=["default", "compact"])
def server(reverserd: Callable[..., ReverserdProcess],
           request: pytest.FixtureRequest) -> ReverserdProcess:
    """The built-in reverser in the foreground, debug logging on: as it starts by
    default, and with every connection on the compact transport."""
    process = reverserd("--foreground", "--port", "0", "--log-level", "debug", *request.param)
    process.wait_until_serving()
    return process


@pytest.fixture
def nc() -> str:
    """The real netcat (OpenBSD's, for ``-N``), which ``make test`` installs."""
    path = shutil.which("nc")
    if path is None:
        pytest.fail("nc is not installed: 'make test' installs the netcat-openbsd package")
    return path


def test_nc_hello_then_quit(server: ReverserdProcess, nc: str) -> None:
    result = subprocess.run([nc, "127.0.0.1", str(server.port)], input=b"hello\nquit\n",
                            capture_output=True, timeout=DEADLINE)
    assert result.stdout == b"olleh\n"


def test_nc_last_line_without_newline_is_answered_at_eof(server: ReverserdProcess,
                                                         nc: str) -> None:
    result = subprocess.run([nc, "-N", "127.0.0.1", str(server.port)], input=b"abc",
                            capture_output=True, timeout=DEADLINE)
    assert result.stdout == b"cba\n"


def test_nc_last_line_ending_in_a_cr_is_answered_with_crlf_at_eof(server: ReverserdProcess,
                                                                  nc: str) -> None:
    result = subprocess.run([nc, "-N", "127.0.0.1", str(server.port)], input=b"ab\rc\nabc\r",
                            capture_output=True, timeout=DEADLINE)
    assert result.stdout == b"c\rba\ncba\r\n"


def test_nc_localhost_finds_the_server(server: ReverserdProcess, nc: str) -> None:
    result = subprocess.run([nc, "localhost", str(server.port)], input=b"local\nquit\n",
                            capture_output=True, timeout=DEADLINE)
    assert result.stdout == b"lacol\n"


def test_telnet_session_reverses_and_quits(server: ReverserdProcess) -> None:
    telnet = shutil.which("telnet")
    if telnet is None:
        pytest.fail("telnet is not installed: 'make test' installs the telnet package")
    with subprocess.Popen([telnet, "127.0.0.1", str(server.port)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as session:
        assert session.stdin and session.stdout and session.stderr
        session.stdin.write("noe\u0308l\nquit\n".encode())
        session.stdin.flush()  # stdin stays open: telnet ends when the server closes
        session.wait(timeout=DEADLINE)
        stdout, stderr = session.stdout.read(), session.stderr.read()
    assert stdout.endswith("\nle\u0308on\n".encode()), stdout
    assert b"Connection closed by foreign host." in stderr


def test_replies_keep_each_lines_ending(server: ReverserdProcess) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"telnet\r\nnc\n\r\n\nmixed\r\n")
        expected = b"tenlet\r\ncn\n\r\n\ndexim\r\n"
        assert receive_exactly(sock, len(expected)) == expected


def test_unicode_is_reversed_by_grapheme(server: ReverserdProcess) -> None:
    line = "noe\u0308l \U0001F468\u200D\U0001F469\u200D\U0001F467 \U0001F1EB\U0001F1F7"
    expected = "\U0001F1EB\U0001F1F7 \U0001F468\u200D\U0001F469\u200D\U0001F467 le\u0308on"
    with connect(server.port) as sock:
        sock.sendall(line.encode() + b"\n" + b"\xff\xfeab\n")
        reply = expected.encode() + b"\n" + b"ba\xfe\xff\n"
        assert receive_exactly(sock, len(reply)) == reply


def test_quit_closes_after_earlier_replies_and_ignores_later_lines(
    server: ReverserdProcess,
) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"one\r\ntwo\nquit\r\nthree\n")
        assert receive_until_closed(sock) == b"eno\r\nowt\n"


@pytest.mark.parametrize("line", [b"QUIT", b"quit ", b"handle_quit", b"__init__",
                                  b"_commands", b"line_received", b"abort", b"serve"])
def test_only_command_names_dispatch(server: ReverserdProcess, line: bytes) -> None:
    with connect(server.port) as sock:
        sock.sendall(line + b"\nquit\n")
        assert receive_until_closed(sock) == line[::-1] + b"\n"


def test_many_lines_in_one_segment_are_all_answered_in_order(server: ReverserdProcess) -> None:
    lines = [f"line {number:06d} {'x' * (number % 50)}".encode() for number in range(20000)]
    expected = b"".join(line[::-1] + b"\n" for line in lines)
    with connect(server.port) as sock:
        sock.sendall(b"".join(line + b"\n" for line in lines))
        assert receive_exactly(sock, len(expected)) == expected


def test_one_line_split_over_many_segments(server: ReverserdProcess) -> None:
    with connect(server.port) as sock:
        for byte in b"split across segments\r":
            sock.sendall(bytes([byte]))
        sock.sendall(b"\nnext\n")
        expected = b"stnemges ssorca tilps\r\ntxen\n"
        assert receive_exactly(sock, len(expected)) == expected


def test_eof_after_an_unterminated_line(server: ReverserdProcess) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"first\nlast")
        sock.shutdown(socket.SHUT_WR)
        assert receive_until_closed(sock) == b"tsrif\ntsal\n"


def test_a_line_of_exactly_the_limit_is_answered(reverserd) -> None:
    process = reverserd("-n", "--port", "0", "--max-line-length", "100")
    with connect(process.port) as sock:
        sock.sendall(b"a" * 99 + b"b\r\n")
        assert receive_exactly(sock, 102) == b"b" + b"a" * 99 + b"\r\n"


@pytest.mark.parametrize("tail", [b"\n", b""], ids=["complete", "no-line-end"])
def test_an_over_long_line_closes_only_that_connection(server: ReverserdProcess,
                                                      tail: bytes) -> None:
    with connect(server.port) as other, connect(server.port) as sock:
        sock.sendall(b"fine\n")
        assert receive_exactly(sock, 5) == b"enif\n"
        try:
            sock.sendall(b"y" * 16385 + tail)
        except ConnectionError:
            pass  # the server may close while the line is still arriving
        assert receive_until_closed(sock) == b""
        server.wait_for_log(r"DEBUG reverserd\.protocol: closing connection from .*: line of "
                            r"\d+ bytes exceeds|more than 16384 bytes")
        other.sendall(b"still here\n")
        assert receive_exactly(other, 11) == b"ereh llits\n"


def test_long_line_limit_counts_bytes_waiting_for_a_line_end(reverserd) -> None:
    process = reverserd("-n", "--port", "0", "--max-line-length", "10", "--log-level", "debug")
    with connect(process.port) as sock:
        sock.sendall(b"0123456789\n")
        assert receive_exactly(sock, 11) == b"9876543210\n"
        sock.sendall(b"0123456789A")
        assert receive_until_closed(sock) == b""
    process.wait_for_log(r"more than 10 bytes without a line end")


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_cannot_make_the_server_buffer_without_bound(
    server: ReverserdProcess,
) -> None:
    line = b"0123456789abcdef" * 4 + b"\n"
    budget = 256 * 1024 * 1024
    rss_before = rss_kib(server.pid)
    with small_buffered_client(server.port) as greedy:
        sent = send_until_stalled(greedy, line, budget)
        assert sent < budget, "the server kept reading from a client that never reads"
        assert rss_kib(server.pid) - rss_before < 64 * 1024

        with connect(server.port) as other:
            other.sendall(b"others are served\n")
            assert receive_exactly(other, 18) == b"devres era srehto\n"

        complete_lines = sent // len(line)
        expected = line[-2::-1] + b"\n"
        received = receive_exactly(greedy, complete_lines * len(expected))
        assert received == expected * complete_lines


def test_handler_exception_closes_only_that_connection(reverserd, tmp_path) -> None:
    app = tmp_path / "fragile.py"
    app.write_text(
        "from reverserd import Application, Reverser, TCPServer\n"
        "class Fragile(Reverser):\n"
        "    def handle_boom(self):\n"
        "        raise RuntimeError('boom requested')\n"
        "application = Application('fragile')\n"
        "TCPServer(0, Fragile).set_service_parent(application)\n"
    )
    process = reverserd("-n", "-y", str(app))
    with connect(process.port) as bystander, connect(process.port) as victim:
        victim.sendall(b"before\nboom\nafter\n")
        assert receive_until_closed(victim) == b"erofeb\n"
        process.wait_for_log(r"ERROR reverserd\.protocol: handler Fragile failed")
        process.wait_for_log(r"RuntimeError: boom requested")
        bystander.sendall(b"ok\n")
        assert receive_exactly(bystander, 3) == b"ko\n"
    with connect(process.port) as newcomer:
        newcomer.sendall(b"new\n")
        assert receive_exactly(newcomer, 4) == b"wen\n"


def test_connection_open_and_close_are_logged_at_debug(server: ReverserdProcess) -> None:
    with connect(server.port) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(b"quit\n")
        assert receive_until_closed(sock) == b""
    server.wait_for_log(rf"DEBUG reverserd\.protocol: connection from 127\.0\.0\.1:{local_port}$")
    server.wait_for_log(rf"connection from 127\.0\.0\.1:{local_port} closed")


def test_a_reset_peer_does_not_disturb_the_server(server: ReverserdProcess) -> None:
    sock = connect(server.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.sendall(b"x" * 1000)
    sock.close()
    with connect(server.port) as other:
        other.sendall(b"abc\n")
        assert receive_exactly(other, 4) == b"cba\n"
    assert server.popen.poll() is None
