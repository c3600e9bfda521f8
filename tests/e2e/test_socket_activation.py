"""``systemd:`` listeners and inherited sockets, under the real ``systemd-socket-activate``.

``systemd-socket-activate`` binds the sockets, waits for the first connection, then execs
reverserd in its own pid with LISTEN_PID, LISTEN_FDS (and LISTEN_FDNAMES with ``--fdname``) set,
and with only the variables named by ``-E`` (plus TERM, PATH, USER and HOME) from its own
environment. The pid started is therefore reverserd's, and is ended as such.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.e2e.haproxy import free_port, listening_inodes
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    ReverserdProcess,
    connect,
    receive_until_closed,
    wait_until,
)
from tests.e2e.test_limits import listen_backlog

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
NC = shutil.which("nc") or "/usr/bin/nc"
# Passed on to reverserd when set here, as the conftest fixture would give them.
PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "TMPDIR")
# What systemd-socket-activate itself writes on the stderr reverserd inherits.
ACTIVATOR_NOISE = re.compile(r"^(Listening on .* as \d+\.|Communication attempt on fd \d+\.|"
                             r"Execing .*)$")
LISTENING = re.compile(r"listening on (.*)$")
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d [A-Z]+ \S+: ")


def activated(reverserd: Callable[..., ReverserdProcess], addresses: list[str], *args: str,
              fdnames: list[str] | None = None) -> ReverserdProcess:
    """``reverserd run --log-level debug ARGS`` under systemd-socket-activate on ``addresses``."""
    command = [SOCKET_ACTIVATE, *(f"--listen={address}" for address in addresses)]
    if fdnames is not None:
        command.append(f"--fdname={':'.join(fdnames)}")
    for name in PASSED_ON:
        if name in os.environ:
            command += ["-E", name]
    return reverserd("run", "--log-level", "debug", *args, command=[*command, REVERSERD])


def bound(process: ReverserdProcess, port: int) -> set[str]:
    """Once the activator listens on ``port`` (before any connection): its socket's inode."""
    def listening() -> set[str]:
        if process.popen.poll() is not None:
            raise AssertionError(f"exited ({process.popen.returncode}): {process.stderr()}")
        return listening_inodes(process.pid, port)
    return wait_until(listening, f"systemd-socket-activate to listen on {port}")  # type: ignore[return-value]


def exchange(port: int, lines: bytes = b"hello\r\nworld\n") -> bytes:
    with connect(port) as sock:
        sock.sendall(lines + b"quit\n")
        return receive_until_closed(sock)


def listening_lines(process: ReverserdProcess) -> list[str]:
    return [match.group(1) for line in process.log if (match := LISTENING.search(line))]


def assert_clean_log(process: ReverserdProcess) -> None:
    """Every log line is one whole record (no traceback spilling over), none an error."""
    unexpected = [line for line in process.log
                  if not LOG_RECORD.match(line) or re.search(r" (ERROR|CRITICAL) ", line)]
    assert not unexpected, unexpected


def reverserd_errors(stderr: str) -> list[str]:
    """The lines of ``stderr`` that reverserd wrote, not the activator."""
    return [line for line in stderr.splitlines() if not ACTIVATOR_NOISE.match(line)]


def test_without_listen_the_inherited_socket_is_served_not_bound_again(reverserd) -> None:
    port = free_port()
    process = activated(reverserd, [f"127.0.0.1:{port}"])
    inherited = bound(process, port)
    assert exchange(port) == b"olleh\r\ndlrow\n"  # the first connection starts reverserd
    process.wait_for_log(rf"listening on 127\.0\.0\.1:{port}$")
    assert exchange(port, b"abc\n") == b"cba\n"
    assert listening_lines(process) == [f"127.0.0.1:{port}"]
    assert not [line for line in process.log if "already in use" in line]
    # Still the one socket the activator bound: reverserd opened no socket of its own there.
    assert listening_inodes(process.pid, port) == inherited
    assert process.popen.poll() is None
    assert_clean_log(process)


@pytest.mark.parametrize(("description", "served"),
                         [("systemd:name=b", 1), ("systemd:name=a", 0),
                          ("systemd:index=0", 0), ("systemd:index=1", 1)])
def test_one_inherited_socket_chosen_by_name_or_index(reverserd, description: str,
                                                      served: int) -> None:
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    process = activated(reverserd, [f"127.0.0.1:{port}" for port in ports],
                        "--listen", description, fdnames=["a", "b"])
    for port in ports:
        bound(process, port)
    port = ports[served]
    assert exchange(port) == b"olleh\r\ndlrow\n"
    process.wait_for_log(rf"listening on 127\.0\.0\.1:{port}$")
    assert exchange(port, b"abc\n") == b"cba\n"
    assert listening_lines(process) == [f"127.0.0.1:{port}"]
    assert_clean_log(process)


def test_an_inherited_unix_socket_is_served(reverserd, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.sock"
    process = activated(reverserd, [str(path)])

    def connected() -> socket.socket | None:
        if process.popen.poll() is not None:
            raise AssertionError(f"exited ({process.popen.returncode}): {process.stderr()}")
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(DEADLINE)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):  # not bound or not listening yet
            sock.close()
            return None
        return sock

    with wait_until(connected, f"systemd-socket-activate to listen on {path}") as first:
        first.sendall(b"hello\nquit\n")
        assert receive_until_closed(first) == b"olleh\n"
    process.wait_for_log(rf"listening on unix:{re.escape(str(path))}$")
    result = subprocess.run([NC, "-U", "-N", str(path)], input=b"ab\r\ncd\nquit\n",
                            capture_output=True, timeout=DEADLINE)
    assert (result.returncode, result.stdout) == (0, b"ba\r\ndc\n"), result
    assert listening_lines(process) == [f"unix:{path}"]
    assert_clean_log(process)


def test_workers_answer_on_the_inherited_socket(reverserd) -> None:
    port = free_port()
    process = activated(reverserd, [f"127.0.0.1:{port}"], "--workers", "2")
    inherited = bound(process, port)
    assert exchange(port) == b"olleh\r\ndlrow\n"
    process.wait_for_log(r"2 workers serving")
    lines = [f"line {number}".encode() for number in range(8)]
    sockets = [connect(port) for _ in lines]
    try:  # several connections open at once, then many one after the other
        for sock, line in zip(sockets, lines, strict=True):
            sock.sendall(line + b"\n")
        for sock, line in zip(sockets, lines, strict=True):
            sock.sendall(b"quit\n")
            assert receive_until_closed(sock) == line[::-1] + b"\n"
    finally:
        for sock in sockets:
            sock.close()
    for line in [f"one after the other {number}".encode() for number in range(20)]:
        assert exchange(port, line + b"\n") == line[::-1] + b"\n"
    assert listening_inodes(process.pid, port) == inherited
    assert process.popen.poll() is None
    assert_clean_log(process)


def test_systemd_listener_without_inherited_sockets_is_one_line_and_fails(
        tmp_path: pathlib.Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("LISTEN_")}
    result = subprocess.run([REVERSERD, "run", "--listen", "systemd:index=0"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=DEADLINE,
                            stdin=subprocess.DEVNULL)
    assert result.returncode in (1, 2), result
    assert result.stderr.count("\n") == 1, result.stderr
    assert re.search(r"systemd|inherit", result.stderr, re.IGNORECASE), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_an_unknown_systemd_name_is_one_line_and_fails(reverserd) -> None:
    port = free_port()
    process = activated(reverserd, [f"127.0.0.1:{port}"], "--listen", "systemd:name=nope",
                        fdnames=["a"])
    bound(process, port)
    with connect(port) as sock:  # starts reverserd, which cannot serve
        try:
            assert receive_until_closed(sock) == b""
        except ConnectionResetError:  # closed with the listening socket, still queued
            pass
    status = process.wait()
    stderr = process.stderr()
    errors = reverserd_errors(stderr)
    assert status != 0, stderr
    assert len(errors) == 1, stderr
    assert "nope" in errors[0], stderr
    assert "Traceback" not in stderr


def test_the_listen_variables_are_gone_and_the_socket_closes_on_exec(
        reverserd, tmp_path: pathlib.Path) -> None:
    """What a child program or an application would see once the sockets are taken."""
    seen = tmp_path / "seen.txt"
    app = tmp_path / "app.py"
    app.write_text(
        "import os\n"
        "from reverserd import Application, Reverser, Service, listen\n"
        "class Witness(Service):\n"
        "    async def start_service(self):\n"
        "        await super().start_service()\n"
        "        names = sorted(name for name in os.environ if name.startswith('LISTEN_'))\n"
        f"        with open({str(seen)!r}, 'w') as file:\n"
        "            file.write(f'{names} {os.get_inheritable(3)}')\n"
        "application = Application('witnessed')\n"
        "listen('systemd:index=0', Reverser).set_service_parent(application)\n"
        "Witness().set_service_parent(application)\n")
    port = free_port()
    process = activated(reverserd, [f"127.0.0.1:{port}"], "-y", str(app), fdnames=["web"])
    bound(process, port)
    assert exchange(port) == b"olleh\r\ndlrow\n"
    wait_until(seen.exists, "the application to start")
    assert wait_until(seen.read_text, "what it saw") == "[] False"
    assert_clean_log(process)


def test_sockets_passed_but_not_served_are_named_on_stderr(reverserd) -> None:
    port = free_port()
    process = activated(reverserd, [f"127.0.0.1:{port}"], "--port", "0")
    bound(process, port)
    with connect(port):  # starts reverserd, which serves --port instead
        process.wait_until_serving()
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert reverserd_errors(process.stderr()) == [
        f"reverserd: not serving the socket(s) systemd passed: 0 (unknown, 127.0.0.1:{port}); "
        "--port or --interface says where to listen (--listen systemd:index=N serves one)"]


def test_an_inherited_socket_keeps_the_queue_length_its_supervisor_chose(reverserd) -> None:
    """asyncio calls listen() on the socket it serves; the supervisor's backlog is given
    back, as the kernel shows it (ss's Send-Q)."""
    launcher = (
        "import os, socket, sys\n"
        "sock = socket.socket()\n"
        "sock.bind(('127.0.0.1', 0))\n"
        "sock.listen(7)\n"
        "print(sock.getsockname()[1], flush=True)\n"
        "os.dup2(sock.fileno(), 3)\n"
        "os.set_inheritable(3, True)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n")
    process = reverserd("run", command=[sys.executable, "-c", launcher, REVERSERD])
    port = int(process.wait_for_log(r"^(\d+)$").group(1))
    process.wait_for_log(rf"listening on 127\.0\.0\.1:{port}$")
    assert listen_backlog(port) == 7
    assert exchange(port, b"kept\n") == b"tpek\n"
