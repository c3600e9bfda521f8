"""Helpers for end-to-end tests: a real reverserd process, real sockets, polling."""

from __future__ import annotations

import os
import pathlib
import re
import select
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable

import pytest

BIN = pathlib.Path(sys.executable).parent
REVERSERD = str(BIN / "reverserd")
DEADLINE = 15.0
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


SYSTEM_PYTHON = pathlib.Path("/usr/bin/python3")  # Debian's own, a Makefile prerequisite
RUN_WITH_THIS_VIRTUALENV = (
    "import site, sys; site.addsitedir(sys.argv.pop(1)); "
    "from reverserd.entry import command; command()"
)


def system_python_reverserd() -> list[str]:
    """A command running this reverserd on Debian's own Python, whose
    standard library may be older than the virtualenv's (Debian 12 has
    3.11.2): the virtualenv's packages serve a Python of the same minor
    version. Fails when it cannot run as root (CI), skips otherwise."""
    found = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=DEADLINE, check=False) \
        if SYSTEM_PYTHON.exists() else None
    if found is None or found.stdout.strip() != str(sys.version_info[:2]):
        reason = f"{SYSTEM_PYTHON} is missing or not Python {sys.version_info[0]}." \
                 f"{sys.version_info[1]}"
        if os.geteuid() == 0 and found is None:
            pytest.fail(f"{reason}: run 'make test', which installs it")
        pytest.skip(reason)
    return [str(SYSTEM_PYTHON), "-c", RUN_WITH_THIS_VIRTUALENV, sysconfig.get_paths()["purelib"]]


def wait_until(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> object:
    """Poll ``condition`` until it returns something true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class ReverserdProcess:
    """A reverserd child whose stdout (its log, in the foreground) is collected."""

    def __init__(self, args: list[str], cwd: pathlib.Path, env: dict[str, str],
                 own_group: bool = False) -> None:
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            process_group=0 if own_group else None,
        )
        self.pid = self.popen.pid
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with self._lock:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def log(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def wait_for_log(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            for line in self.log:
                match = regex.search(line)
                if match:
                    return match
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"reverserd exited ({self.popen.returncode}) before logging {pattern!r}; "
                    f"log: {self.log}; stderr: {self.stderr()}"
                )
            return None

        return wait_until(found, f"log line {pattern!r}", timeout)  # type: ignore[return-value]

    def wait_until_serving(self) -> int:
        """Block until the first ``listening on`` log line; return its port."""
        return int(self.wait_for_log(LISTENING.pattern).group(1))

    @property
    def port(self) -> int:
        return self.wait_until_serving()

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """Signal every process in the group at once, as a terminal's Ctrl-C does;
        the process must have been started with ``own_group``."""
        os.killpg(self.pid, signum)

    def wait(self, timeout: float = DEADLINE) -> int:
        status = self.popen.wait(timeout)
        self._reader.join(timeout)
        return status

    def stderr(self) -> str:
        if self.popen.poll() is None or self.popen.stderr is None:
            return ""
        return self.popen.stderr.read().decode("utf-8", "replace")

    def end(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait()
        self._reader.join(DEADLINE)  # closing stdout under the reading thread makes it raise
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def connect(port: int, timeout: float = DEADLINE) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_unix(path: pathlib.Path, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Read ``size`` bytes, failing if the peer closes first."""
    chunks, received = [], 0
    while received < size:
        chunk = sock.recv(min(size - received, 1 << 20))
        if not chunk:
            raise AssertionError(f"connection closed after {received} of {size} bytes")
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def receive_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (the socket's timeout bounds it)."""
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def small_buffered_client(port: int) -> socket.socket:
    """A connected socket with small kernel buffers, so it stalls quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", port))
    return sock


def send_until_stalled(sock: socket.socket, line: bytes, budget: int) -> int:
    """Send ``line`` over and over without reading until the peer stops taking
    data (no room for 2 s) or ``budget`` bytes are out; returns bytes sent."""
    batch = memoryview(line * 1024)
    sent = 0
    deadline = time.monotonic() + 60
    sock.setblocking(False)
    try:
        while sent < budget and time.monotonic() < deadline:
            try:
                sent += sock.send(batch[sent % len(batch):])  # one continuous stream
            except BlockingIOError:
                _, writable, _ = select.select([], [sock], [], 2.0)
                if not writable:
                    break
    finally:
        sock.setblocking(True)
        sock.settimeout(DEADLINE)
    return sent
