"""The service directories shipped in scripts/runit and scripts/s6, under their real supervisors.

A test copies a shipped directory into its tmp_path, because runsv and s6-supervise write their
``supervise/`` (and s6's ``event/``) into the directory they run, and the shipped files must stay
untouched. The copy keeps every file's mode, so a run file shipped without its execute bit fails
here as it would on a real machine. Nothing in the shipped files is rewritten: the test writes the
directory's ``./conf``, which the run files read, and only with paths and the port:

- ``REVERSERD``: the virtualenv's reverserd, not ``/usr/local/bin/reverserd``;
- ``REVERSERD_OPTIONS``: ``--port 0`` (any free port; the log says which), or what a test needs;
- ``REVERSERD_LOGDIR``: the log directory in tmp_path, not ``/var/log/reverserd``.

The supervisor is a child of the test. At the end it gets SIGTERM by its pid (both runsv and
s6-supervise then stop their service and exit), and any reverserd or logger it started that is
still there (one it named, or any process working in the test's directory) is killed by its pid,
so nothing outlives a test, even a failing one.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass

import pytest

from tests.e2e.support import DEADLINE, REVERSERD, connect, receive_exactly, wait_until

SCRIPTS = pathlib.Path(__file__).parents[2] / "scripts"
STARTING = re.compile(r"reverserd\.runner: reverserd \S+ starting: .*\bpid (\d+)\b")
LISTENING = re.compile(r"reverserd\.listening: listening on 127\.0\.0\.1:(\d+)$")
STOPPED = re.compile(r"reverserd\.runner: stopped$")


def require(*programs: str) -> None:
    """Skip when a supervisor's program is missing, unless root (CI), who must have it."""
    missing = [program for program in programs if shutil.which(program) is None]
    if missing and os.geteuid() != 0:
        pytest.skip(f"not installed: {', '.join(missing)}")


@dataclass(frozen=True)
class Process:
    """A process known by its pid and its start time, so a reused pid is never mistaken for it."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Process | None:
        stat = process_stat(pid)
        return None if stat is None else cls(pid, stat[1])

    def alive(self) -> bool:
        """Whether this very process still runs (a zombie has finished running)."""
        stat = process_stat(self.pid)
        return stat is not None and stat[1] == self.started and stat[0] not in "ZX"

    def kill(self) -> None:
        """SIGKILL it if it is still there, and wait until it is gone."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # gone meanwhile
                return
            wait_until(lambda: not self.alive(), f"pid {self.pid} to die")


def process_stat(pid: int) -> tuple[str, int] | None:
    """The state letter and start time (clock ticks after boot) of ``pid``, None if it is gone."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def processes_in(directory: pathlib.Path) -> set[Process]:
    """The live processes working in ``directory`` or below it: what a supervisor started
    there, even one a broken run file left behind when the supervisor lost track of it."""
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = pathlib.Path(os.readlink(entry / "cwd"))
        except OSError:  # gone, or a kernel thread
            continue
        if cwd == directory or directory in cwd.parents:
            process = Process.of(int(entry.name))
            if process is not None and process.alive():
                found.add(process)
    return found


def check_run_file(path: pathlib.Path) -> None:
    """A supervisor runs ./run and ./log/run directly: without the execute bit nothing
    starts, and they must be POSIX sh that parses."""
    assert path.stat().st_mode & 0o777 == 0o755
    assert path.read_text().startswith("#!/bin/sh\n")
    checked = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True,
                             timeout=DEADLINE, check=False)
    assert (checked.returncode, checked.stderr) == (0, "")


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` runs with (empty once it is gone)."""
    try:
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def exchange(port: int, line: bytes = b"hello\n") -> bytes:
    """Send one line to 127.0.0.1:``port`` and return the reply of the same length."""
    with connect(port) as sock:
        sock.sendall(line)
        return receive_exactly(sock, len(line))


def refuses(port: int) -> bool:
    """Whether nothing accepts connections on 127.0.0.1:``port``."""
    try:
        connect(port).close()
    except ConnectionRefusedError:
        return True
    return False


class ServiceDirectory:
    """A copy of scripts/FLAVOUR supervised by a child of the test."""

    def __init__(self, flavour: str, root: pathlib.Path, options: str) -> None:
        self.shipped = SCRIPTS / flavour
        self.root = root
        self.path = root / "service"
        shutil.copytree(self.shipped, self.path)  # file modes kept
        self.logdir = root / "logs"
        self.output = root / "supervisor.out"  # the supervisors' own messages
        self.write_conf(options)
        self.children: list[subprocess.Popen[bytes]] = []
        self.seen: set[Process] = set()

    def write_conf(self, options: str) -> None:
        self.path.joinpath("conf").write_text(
            f"REVERSERD={shlex.quote(REVERSERD)}\n"
            f"REVERSERD_OPTIONS={shlex.quote(options)}\n"
            f"REVERSERD_LOGDIR={shlex.quote(str(self.logdir))}\n")

    def spawn(self, command: list[str], *, stdin: int = subprocess.DEVNULL,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start a supervisor as a child of the test; ``end`` stops it."""
        with open(self.output, "ab") as output:
            child = subprocess.Popen(command, stdin=stdin,
                                     stdout=output if stdout is None else stdout,
                                     stderr=output)
        self.children.append(child)
        return child

    def track(self, pid: int) -> None:
        """Remember a process the supervisor started, to kill it if it outlives the supervisor."""
        process = Process.of(pid)
        if process is not None:
            self.seen.add(process)

    def end(self) -> None:
        """SIGTERM each supervisor by its pid (it stops its service and exits), the last
        started first; then kill whatever they started that is still there."""
        for child in reversed(self.children):  # a service before its logger
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for process in self.seen | processes_in(self.root):
            process.kill()

    # The log: reverserd's lines, wherever the flavour puts them.

    def log_path(self) -> pathlib.Path:
        raise NotImplementedError

    def log(self) -> list[str]:
        try:
            return self.log_path().read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def run_of(self, pid: int) -> list[str]:
        """The log lines of the reverserd with this pid: from its start to the next start."""
        lines, found = [], False
        for line in self.log():
            match = STARTING.search(line)
            if match:
                if found:
                    break
                found = int(match.group(1)) == pid
            if found:
                lines.append(line)
        return lines

    def port_of(self, pid: int) -> int:
        """The port the reverserd with this pid listens on, once its log says so."""

        def port() -> int | None:
            for line in self.run_of(pid):
                match = LISTENING.search(line)
                if match:
                    return int(match.group(1))
            return None

        return wait_until(port, f"pid {pid} to log its port")  # type: ignore[return-value]

    def stopped_gracefully(self, pid: int) -> bool:
        """Whether the reverserd with this pid logged a SIGTERM, then ``stopped`` last."""
        lines = self.run_of(pid)
        return (bool(lines) and STOPPED.search(lines[-1]) is not None
                and any("received SIGTERM, stopping" in line for line in lines))


class RunitService(ServiceDirectory):
    """scripts/runit under ``runsv DIR``, which also runs ``DIR/log/run`` (svlogd) behind a pipe."""

    def __init__(self, root: pathlib.Path, options: str = "--port 0") -> None:
        require("runsv", "sv", "svlogd")
        super().__init__("runit", root, options)

    def start(self) -> None:
        self.spawn(["runsv", str(self.path)])
        for supervised in (self.path, self.path / "log"):
            wait_until(supervised.joinpath("supervise", "ok").exists,
                       f"runsv to supervise {supervised}")

    def sv(self, command: str) -> subprocess.CompletedProcess[str]:
        """``sv COMMAND DIR``, as an administrator types it."""
        return subprocess.run(["sv", command, str(self.path)], capture_output=True, text=True,
                              timeout=DEADLINE, check=False, stdin=subprocess.DEVNULL)

    def status(self) -> str:
        """The service's part of ``sv status DIR`` (the log service's comes after a ';')."""
        result = self.sv("status")
        assert result.returncode == 0, result
        return result.stdout.split(";")[0].strip()

    def server(self) -> int | None:
        """The pid ``sv status`` shows for the service, None unless it shows it running."""
        match = re.fullmatch(rf"run: {re.escape(str(self.path))}: \(pid (\d+)\) \d+s",
                             self.status())
        return int(match.group(1)) if match else None

    def serving(self, other_than: int | None = None) -> int:
        """Wait until ``sv status`` shows reverserd running (with a pid other than
        ``other_than``) and it listens; return its pid."""

        def running() -> int | None:
            pid = self.server()
            return pid if pid is not None and pid != other_than else None

        pid: int = wait_until(running, "sv status to show reverserd running")  # type: ignore[assignment]
        self.track(pid)
        self.port_of(pid)
        return pid

    def log_path(self) -> pathlib.Path:
        return self.logdir / "current"

    def end(self) -> None:
        for supervised in (self.path, self.path / "log"):
            try:
                self.track(int(supervised.joinpath("supervise", "pid").read_text()))
            except (FileNotFoundError, ValueError):  # nothing running there
                pass
        super().end()


class S6Service(ServiceDirectory):
    """scripts/s6 under ``s6-supervise DIR``; with ``logged``, ``DIR/log`` under a second
    s6-supervise reading a pipe from the first, as s6-svscan wires them."""

    def __init__(self, root: pathlib.Path, options: str = "--port 0") -> None:
        require("s6-supervise", "s6-svc", "s6-svstat", "s6-svwait", "s6-log")
        super().__init__("s6", root, options)
        self.logged = False

    def start(self, *, logged: bool = False) -> None:
        self.logged = logged
        if not logged:
            self.spawn(["s6-supervise", str(self.path)])
        else:
            reading, writing = os.pipe()
            try:
                self.spawn(["s6-supervise", str(self.path / "log")], stdin=reading)
                self.spawn(["s6-supervise", str(self.path)], stdout=writing)
            finally:
                os.close(reading)
                os.close(writing)
        for supervised in (self.path, self.path / "log") if logged else (self.path,):
            self.wait_up(supervised)

    def wait_up(self, supervised: pathlib.Path) -> None:
        """Until s6-supervise answers, s6-svc has no one to talk to."""
        wait_until(lambda: self.svstat("up", where=supervised) == ["true"],
                   f"s6-supervise to start {supervised}")

    def svc(self, *flags: str) -> None:
        result = subprocess.run(["s6-svc", *flags, str(self.path)], capture_output=True,
                                text=True, timeout=DEADLINE, check=False,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result

    def svstat(self, *fields: str, where: pathlib.Path | None = None) -> list[str]:
        """``s6-svstat -o FIELDS DIR``, split; empty while s6-supervise is not answering."""
        result = subprocess.run(["s6-svstat", "-o", ",".join(fields), str(where or self.path)],
                                capture_output=True, text=True, timeout=DEADLINE, check=False,
                                stdin=subprocess.DEVNULL)
        return result.stdout.split() if result.returncode == 0 else []

    def svwait(self, flag: str, timeout_ms: int = 10000) -> subprocess.CompletedProcess[str]:
        """``s6-svwait FLAG -t TIMEOUT DIR``: blocks until the state comes, or times out."""
        return subprocess.run(["s6-svwait", flag, "-t", str(timeout_ms), str(self.path)],
                              capture_output=True, text=True, timeout=timeout_ms / 1000 + 5,
                              check=False, stdin=subprocess.DEVNULL)

    def ready(self) -> int:
        """Wait with ``s6-svwait -U`` until reverserd says it serves; return its pid."""
        waited = self.svwait("-U")
        assert waited.returncode == 0, (waited, self.log())
        up, ready, pid = self.svstat("up", "ready", "pid")
        assert (up, ready) == ("true", "true")
        self.track(int(pid))
        return int(pid)

    def log_path(self) -> pathlib.Path:
        return self.logdir / "current" if self.logged else self.output

    def end(self) -> None:
        for supervised in (self.path, self.path / "log"):
            pid = self.svstat("pid", where=supervised)
            if pid and int(pid[0]) > 0:
                self.track(int(pid[0]))
        super().end()
