"""The servers the benchmark compares, each started as a real process on 127.0.0.1.

Two twistd processes serve the classic reverse app (``bench_twistd_app.py``),
one with ``LineReceiver``'s own line end, CRLF, and one with LF: each answers
only its own (Twisted comes from the benchmark's own virtualenv, never from
reverserd's dependencies).
reverserd serves its built-in reverser, which answers both. Every server
gets its own free port and, when asked, is pinned to one CPU so the client
can have the other.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

SCRIPTS = pathlib.Path(__file__).resolve().parent
TWISTD_APP = SCRIPTS / "bench_twistd_app.py"
TWISTD_LINE_ENDS = {b"\n": ("twistd LF", "LF"), b"\r\n": ("twistd CRLF", "CRLF")}
BIN = pathlib.Path(sys.executable).parent
START_PATIENCE = 20.0
ALL_CPUS = set(range(os.cpu_count() or 1))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.01)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def gone(pid: int) -> bool:
    """No such process, or only a zombie left for a slow reaper."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


@dataclasses.dataclass
class Server:
    """A running server: where it listens, which processes do the serving, and
    which lines it answers right."""

    name: str
    command: list[str]  # without the port: twistd reads it from BENCH_PORT
    pin: set[int] | None
    workers: int = 1
    line_end: bytes | None = None  # the only line end answered; None: LF and CRLF
    by_cluster: bool = True  # False: reverses bytes, so non-ASCII text gets wrong replies
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        env = dict(os.environ, BENCH_PORT=str(self.port), **self.env)
        cpus = ",".join(map(str, sorted(self.pin or os.sched_getaffinity(0) | ALL_CPUS)))
        command = self.command if self.name.startswith("twistd") else [
            *self.command, "--port", str(self.port)]
        self.process = subprocess.Popen(
            ["taskset", "--cpu-list", cpus, *command],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_until(lambda: accepts(self.port) or self.process.poll() is not None,
                   START_PATIENCE, f"{self.name} to serve")
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.process.returncode}")
        if self.workers > 1:
            wait_until(lambda: len(children(self.process.pid)) >= self.workers,
                       START_PATIENCE, f"{self.name}'s workers")

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def serving_pids(self) -> list[int]:
        assert self.process is not None
        return children(self.process.pid) if self.workers > 1 else [self.process.pid]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.serving_pids())

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.serving_pids())

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def twistd(line_end: bytes = b"\n") -> Server:
    name, setting = TWISTD_LINE_ENDS[line_end]
    return Server(name, [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile",
                         os.devnull, "--python", str(TWISTD_APP)], pin={0}, line_end=line_end,
                  by_cluster=False, env={"BENCH_LINE_END": setting})


def reverserd(loop: str, workers: int = 1) -> Server:
    name = f"reverserd {loop}" + (f" ×{workers} workers" if workers > 1 else "")
    # twistd has no connection cap: the memory load holds 10,010 idle connections, so
    # reverserd's cap goes as high as the descriptors allow, as twistd's does.
    command = [str(BIN / "reverserd"), "--foreground", "--log-level", "error",
               "--loop", loop, "--workers", str(workers), "--max-connections", "1000000"]
    return Server(name, command, pin={0} if workers == 1 else None, workers=workers)
