"""Connection limits, descriptor limits and accept failures, on a real reverserd."""

from __future__ import annotations

import pathlib
import re
import select
import socket
import subprocess
import textwrap
from collections.abc import Callable

import pytest

from tests.e2e.daemons import DaemonDirectory
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    ReverserdProcess,
    connect,
    receive_until_closed,
    system_python_reverserd,
    wait_until,
)

Start = Callable[..., ReverserdProcess]

# An application that takes every free descriptor once it serves, leaving
# SPARE, so accepting fails with EMFILE; the line `release` gives them back,
# as does a timer of RELEASE_AFTER seconds when SPARE is 0 (no line can come).
FD_HOG_APP = textwrap.dedent("""
    import asyncio
    import os
    from reverserd import Application, Reverser, Service, TCPServer

    SPARE = {spare}
    RELEASE_AFTER = 8.0
    held = []

    def release():
        while held:
            os.close(held.pop())

    class Hog(Service):
        async def start_service(self):
            await super().start_service()
            try:
                while True:
                    held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            for _ in range(SPARE):
                os.close(held.pop())
            if not SPARE:
                asyncio.get_running_loop().call_later(RELEASE_AFTER, release)

    class Releasing(Reverser):
        def handle_release(self):
            release()
            return "released"

    application = Application("hog")
    TCPServer(0, Releasing, "127.0.0.1").set_service_parent(application)
    Hog().set_service_parent(application)
""")


def ask(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"closed before answering {line!r}"
        reply += chunk
    return reply


def answered(port: int, line: bytes = b"abc", timeout: float = 1.0) -> bool:
    """Whether a new connection gets its line answered within ``timeout``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            return ask(sock, line) == line[::-1] + b"\n"
    except (OSError, AssertionError):
        return False


def limited(nofile: str) -> list[str]:
    """A command running reverserd under the open-file limit ``soft:hard``."""
    return ["prlimit", f"--nofile={nofile}", REVERSERD]


def open_file_limits(pid: int) -> tuple[int, int]:
    text = pathlib.Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", text, re.MULTILINE)
    assert match, text
    return int(match.group(1)), int(match.group(2))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_out_of_descriptors_accepting_pauses_logs_once_and_resumes_by_itself(
        reverserd: Start, tmp_path: pathlib.Path, loop: str) -> None:
    (tmp_path / "hog.py").write_text(FD_HOG_APP.format(spare=2))
    process = reverserd("--foreground", "--loop", loop, "-y", "hog.py",
                        command=limited("512:512"))
    port = process.wait_until_serving()
    process.wait_for_log(r"serving at most \d+ connections")  # the cap fitted to 512
    kept = connect(port)
    assert ask(kept, b"kept") == b"tpek\n"
    waiting = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        sock.sendall(b"queued\n")
        waiting.append(sock)
    process.wait_for_log(r"WARNING reverserd\.policy: cannot accept connections on "
                         r"127\.0\.0\.1:\d+: ")
    for _ in range(30):  # the connection it has keeps being served meanwhile
        assert ask(kept, b"still") == b"llits\n"
    assert ask(kept, b"release") == b"released\n"
    for sock in waiting:  # they waited in the kernel's queue, none was reset
        assert sock.recv(100) == b"deueuq\n"
    assert answered(port)
    failure_lines = [line for line in process.log if "cannot accept" in line]
    assert 1 <= len(failure_lines) <= 2, process.log  # one per listener every 10 s
    assert not any("Traceback" in line or "Errno" in line for line in process.log)
    for sock in [kept, *waiting]:
        sock.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_application_that_takes_every_descriptor_pauses_accepting_until_it_gives_back(
        reverserd: Start, tmp_path: pathlib.Path, loop: str) -> None:
    (tmp_path / "hog.py").write_text(FD_HOG_APP.format(spare=0))
    process = reverserd("--foreground", "--loop", loop, "-y", "hog.py",
                        command=limited("512:512"))
    port = process.wait_until_serving()
    process.wait_for_log(r"cannot accept connections on 127\.0\.0\.1:\d+: no descriptor is "
                         r"left")
    waiting = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        sock.sendall(b"queued\n")
        waiting.append(sock)
    for sock in waiting:  # served once the timer gives the descriptors back; none reset
        assert sock.recv(100) == b"deueuq\n"
        sock.close()
    assert not any("Traceback" in line for line in process.log)


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(reverserd: Start) -> None:
    process = reverserd("--foreground", "--port", "0", command=limited("256:4096"))
    process.wait_until_serving()
    process.wait_for_log(r"raised the open-file limit from 256 to 4096$")
    assert open_file_limits(process.pid) == (4096, 4096)
    process.wait_for_log(r"--max-connections 10000 needs more descriptors than the "
                         r"open-file limit of 4096 allows")  # the raised one, not 256


def test_a_descriptor_limit_too_low_for_the_cap_is_a_warning_naming_both(
        reverserd: Start) -> None:
    process = reverserd("--foreground", "--port", "0", "--max-connections", "500",
                        command=limited("100:100"))
    process.wait_until_serving()
    match = process.wait_for_log(r"WARNING .*--max-connections 500 needs more descriptors "
                                 r"than the open-file limit of 100 allows; serving at most "
                                 r"(\d+) connections")
    assert 0 < int(match.group(1)) < 100


@pytest.mark.parametrize("serving", ["asyncio", "compact"])
def test_at_the_cap_newcomers_wait_and_are_served_when_one_quits(reverserd: Start,
                                                                serving: str) -> None:
    process = reverserd("--foreground", "--port", "0", "--max-connections", "2",
                        *SERVING[serving])
    port = process.wait_until_serving()
    first, second = connect(port), connect(port)
    assert ask(first, b"one") == b"eno\n" and ask(second, b"two") == b"owt\n"
    third = connect(port)  # the kernel's queue holds it
    third.sendall(b"three\n")
    third.settimeout(0.3)
    with pytest.raises(TimeoutError):
        third.recv(100)
    first.sendall(b"quit\n")
    assert receive_until_closed(first) == b""
    third.settimeout(DEADLINE)
    assert third.recv(100) == b"eerht\n"
    cap_lines = [line for line in process.log if "reached the cap" in line]
    assert len(cap_lines) == 1 and "cap of 2 connections" in cap_lines[0]
    for sock in (first, second, third):
        sock.close()


#: How each kind of connection is served: by the loop's own transport, or by the compact one.
SERVING = {"asyncio": ("--loop", "asyncio"), "uvloop": ("--loop", "uvloop"),
           "compact": ("--loop", "asyncio", "--compact-after", "0")}


@pytest.mark.parametrize(("serving", "python"), [
    ("asyncio", "virtualenv"), ("uvloop", "virtualenv"), ("asyncio", "system"),
    ("compact", "virtualenv"), ("compact", "system")])
def test_a_burst_is_served_at_most_cap_at_a_time_and_none_is_reset(
        reverserd: Start, serving: str, python: str) -> None:
    """Also on Debian's own Python, whose older asyncio read a connection
    paused as it was accepted."""
    command = system_python_reverserd() if python == "system" else None
    process = reverserd("--foreground", "--port", "0", *SERVING[serving],
                        "--max-connections", "5", command=command)
    port = process.wait_until_serving()
    clients = []
    for number in range(200):
        sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        sock.sendall(b"%d\n" % number)
        clients.append((sock, b"%d\n" % number))
    unanswered = dict(clients)
    while unanswered:
        readable, _, _ = select.select(list(unanswered), [], [], DEADLINE)
        assert readable, f"{len(unanswered)} clients waited {DEADLINE} s for a turn"
        assert len(readable) <= 5, f"{len(readable)} served at once under a cap of 5"
        for sock in readable:
            line = unanswered.pop(sock)
            assert sock.recv(100) == line[-2::-1] + b"\n"  # not reset, answered
            sock.close()
    assert not any("Traceback" in line for line in process.log)


def listen_backlog(port: int) -> int:
    """The backlog the kernel applies to the listening socket on ``port`` (ss's Send-Q)."""
    lines = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                           text=True, check=True).stdout.split()
    return int(lines[2])


@pytest.mark.parametrize(("asked", "applied"), [("77", 77), (None, 1024)])
def test_the_backlog_option_sets_the_listen_queue(reverserd: Start, asked: str | None,
                                                 applied: int) -> None:
    process = reverserd("--foreground", "--port", "0",
                        *(("--backlog", asked) if asked else ()))
    assert listen_backlog(process.wait_until_serving()) == applied


def test_a_backlog_over_somaxconn_is_capped_and_logged(reverserd: Start) -> None:
    somaxconn = int(pathlib.Path("/proc/sys/net/core/somaxconn").read_text())
    if somaxconn >= 65535:
        pytest.skip("net.core.somaxconn is at its maximum: nothing to cap")
    process = reverserd("--foreground", "--port", "0", "--backlog", "65535")
    port = process.wait_until_serving()
    process.wait_for_log(f"listen backlog 65535 capped at the kernel's net.core.somaxconn, "
                         f"{somaxconn}")
    assert listen_backlog(port) == somaxconn


@pytest.mark.parametrize("serving", ["asyncio", "compact"])
def test_idle_slow_and_non_reading_clients_are_closed_and_counted_in_status(
        daemons: DaemonDirectory, serving: str) -> None:
    daemon = daemons.start("--idle-timeout", "1", "--write-timeout", "1",
                           "--log-level", "debug", *SERVING[serving])
    idle = connect(daemon.port)
    loris = connect(daemon.port)
    loris.sendall(b"no line end")
    non_reader = socket.create_connection(("127.0.0.1", daemon.port))
    non_reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    non_reader.setblocking(False)
    chunk = b"x" * 1000 + b"\n"

    def stalled() -> bool:
        try:
            while True:
                non_reader.send(chunk * 64)
        except BlockingIOError:
            return False
        except OSError:
            return True  # aborted by the server

    wait_until(stalled, "the non-reading client to be aborted", timeout=60)
    for sock in (idle, loris):
        sock.settimeout(DEADLINE)
        try:
            assert receive_until_closed(sock) == b""
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset is a close too
    result = daemons.run("status")
    assert result.returncode == 0, result
    assert re.search(r"closed by limits: 2 idle, 1 write-timeout", result.stdout), result
    log = daemons.log()
    assert log.count(": idle") == 2 and log.count(": write-timeout") == 1, log
    assert answered(daemon.port)
    for sock in (idle, loris, non_reader):
        sock.close()
