"""A real HAProxy in front of reverserd, sending the PROXY protocol header as it does in production.

HAProxy is started in the foreground (``-db``) with a configuration written for one test, and is
ended by its pid. Readiness is read from the kernel (a listening socket held by HAProxy's pid)
rather than probed with a connection: a probe would make HAProxy open a connection to reverserd,
and that stray connection would show in the log the tests read.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import textwrap

from tests.e2e.support import DEADLINE, wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp
BIND_ATTEMPTS = 5  # a free port can be taken between choosing it and HAProxy binding it


def free_port() -> int:
    """A port nothing listens on right now on 127.0.0.1 (another process may take it later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets ``pid`` has open."""
    inodes = set()
    try:
        descriptors = list(pathlib.Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:  # the process is gone
        return inodes
    for descriptor in descriptors:
        try:
            target = os.readlink(descriptor)
        except OSError:  # closed while listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def listening_inodes(pid: int, port: int) -> set[str]:
    """The inodes of the sockets ``pid`` holds listening on TCP ``port`` (IPv4)."""
    inodes = socket_inodes(pid)
    found = set()
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for row in table:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == LISTEN_STATE and fields[9] in inodes:
                found.add(fields[9])
    return found


def listens_on(pid: int, port: int) -> bool:
    """Whether ``pid`` holds a socket listening on TCP ``port`` (IPv4)."""
    return bool(listening_inodes(pid, port))


def configuration(front_port: int, backend_port: int, send_proxy: str) -> str:
    """One TCP frontend on 127.0.0.1, one backend server: reverserd, sent ``send_proxy``."""
    return textwrap.dedent(f"""\
        global
            maxconn 64
            nbthread 1
            log stdout format raw local0

        defaults
            mode tcp
            log global
            option tcplog
            timeout connect 5s
            timeout client 30s
            timeout server 30s

        frontend front
            bind 127.0.0.1:{front_port}
            default_backend reverserd

        backend reverserd
            server reverserd 127.0.0.1:{backend_port} {send_proxy}
        """)


class HAProxy:
    """A HAProxy child in the foreground; its output goes to a file beside its config."""

    def __init__(self, directory: pathlib.Path, backend_port: int, send_proxy: str) -> None:
        self.directory = directory
        self.config = directory / "haproxy.cfg"
        self.output_path = directory / "haproxy.out"
        self.popen: subprocess.Popen[bytes] | None = None
        self.port = 0
        for _ in range(BIND_ATTEMPTS):
            self.port = free_port()
            self.config.write_text(configuration(self.port, backend_port, send_proxy))
            if self._start():
                return
        raise AssertionError(f"haproxy did not start in {BIND_ATTEMPTS} attempts: {self.output()}")

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def _start(self) -> bool:
        """Start HAProxy; True once it listens, False if it exited (its port was taken)."""
        with open(self.output_path, "wb") as output:
            self.popen = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)], cwd=self.directory,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )
        popen = self.popen

        def settled() -> str | None:
            if popen.poll() is not None:
                return "exited"
            return "listening" if listens_on(popen.pid, self.port) else None

        if wait_until(settled, f"haproxy to listen on 127.0.0.1:{self.port}") == "listening":
            return True
        if "cannot bind socket" not in self.output():
            raise AssertionError(f"haproxy exited ({popen.returncode}): {self.output()}")
        return False

    def output(self) -> str:
        """What HAProxy wrote so far: its warnings, errors and connection log."""
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def end(self) -> None:
        """End HAProxy by its pid: SIGTERM, then SIGKILL if it lingers."""
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        os.kill(popen.pid, signal.SIGTERM)
        try:
            popen.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(popen.pid, signal.SIGKILL)
            popen.wait()
