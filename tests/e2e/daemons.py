"""Helpers for daemon tests: drive ``reverserd start/stop/status`` as an operator would."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import subprocess

from tests.e2e.support import DEADLINE, REVERSERD, wait_until

STARTED = re.compile(r"^reverserd started: pid (\d+), listening on 127\.0\.0\.1:(\d+)$",
                     re.MULTILINE)
ALREADY = re.compile(r"^reverserd already running: pid (\d+)$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Daemon:
    pid: int
    port: int


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``Z`` for a zombie); ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped while read
        return None


def is_alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


def wait_until_dead(pid: int) -> None:
    wait_until(lambda: not is_alive(pid), f"pid {pid} to end")


def reverserd_processes_in(directory: pathlib.Path, below: bool = False,
                           also: str = REVERSERD) -> list[int]:
    """Live reverserd processes whose working directory is ``directory`` (or,
    ``below``, anywhere under it: a chrooted generation works in its jail),
    sorted; ``also``: a further script that runs reverserd."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or not is_alive(int(entry.name)):
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        inside = cwd == str(directory) or (below and cwd.startswith(f"{directory}/"))
        if inside and (is_reverserd(int(entry.name)) or also.encode() in arguments):
            found.append(int(entry.name))
    return sorted(found)


class DaemonDirectory:
    """A directory where tests run ``reverserd VERB``; daemons they start are
    killed at teardown, by the pid ``start`` reported, if still alive, and
    so is the one the pidfile names then (a reload's new generation)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.pids: set[int] = set()

    @property
    def pidfile(self) -> pathlib.Path:
        return self.path / "reverserd.pid"

    @property
    def logfile(self) -> pathlib.Path:
        return self.path / "reverserd.log"

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [REVERSERD, *args], cwd=self.path, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=timeout, check=False,
            env={**os.environ, **(env or {})},
        )
        self.remember(result.stdout)
        return result

    def remember(self, output: str) -> None:
        for match in STARTED.finditer(output):
            self.pids.add(int(match.group(1)))

    def start(self, *args: str, env: dict[str, str] | None = None) -> Daemon:
        result = self.run("start", "--port", "0", *args, env=env)
        assert result.returncode == 0, result
        match = STARTED.search(result.stdout)
        assert match, result
        return Daemon(int(match.group(1)), int(match.group(2)))

    def stop(self) -> subprocess.CompletedProcess[str]:
        result = self.run("stop")
        assert result.returncode == 0, result
        return result

    def log(self) -> str:
        return self.logfile.read_text()

    def log_lines(self) -> list[str]:
        return self.log().splitlines()

    def end(self) -> None:
        current = 0
        if self.pidfile.is_file() and not self.pidfile.is_symlink():  # a test may plant a FIFO
            try:
                current = int(self.pidfile.read_text().strip() or 0)
            except (OSError, ValueError):
                pass
        for pid in {*self.pids, *([current] if current else [])}:
            kill_if_reverserd(pid)


def is_reverserd(pid: int) -> bool:
    """Whether ``pid`` runs reverserd of this checkout: its script, or a new
    generation a reload started as ``python -m reverserd``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as command:
            arguments = command.read().split(b"\0")
    except OSError:
        return False
    return REVERSERD.encode() in arguments or (
        os.path.dirname(arguments[0]) == os.path.dirname(REVERSERD).encode()
        and arguments[1:3] == [b"-m", b"reverserd"])


def kill_if_reverserd(pid: int) -> None:
    """SIGKILL ``pid`` if it is still a reverserd of this checkout, not a reuse of its pid."""
    if is_alive(pid) and is_reverserd(pid):
        os.kill(pid, signal.SIGKILL)
