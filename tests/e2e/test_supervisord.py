"""scripts/supervisord/reverserd.conf under the real ``supervisord``, driven by ``supervisorctl``.

Each test writes a minimal supervisord.conf into its directory (control socket, supervisord's
own log and pidfile there too) that includes a copy of the shipped program section with only
these substitutions: /usr/local/bin/reverserd becomes the virtualenv's reverserd (the one
under test), /var/log/supervisor/reverserd.log a log in the test's directory, and
``--port 2323`` becomes ``--port 0``, so that every start takes a free port; the port is read
back from the ``listening on`` line the new process logs. supervisord runs in the foreground
(``-n``) as the test's child and is ended by its pid with SIGTERM, which makes it stop
reverserd the way the section says.

``supervisorctl signal HUP reverserd`` reloads: a new generation serves, while the process
supervisord started stays RUNNING under the same pid (the keeper, which passes signals on to
the generation serving now); the reload tests share test_runit's way of following the
generations through the log and /proc.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import textwrap
from collections.abc import Iterator

import pytest

from tests.e2e.daemons import is_alive, kill_if_reverserd, wait_until_dead
from tests.e2e.support import DEADLINE, REVERSERD, connect, receive_until_closed, wait_until
from tests.e2e.test_control_plane import stuck_client
from tests.e2e.test_runit import Generations, reload_and_check

SHIPPED = pathlib.Path(__file__).parents[2] / "scripts" / "supervisord" / "reverserd.conf"
SUPERVISORD = "/usr/bin/supervisord"
SUPERVISORCTL = "/usr/bin/supervisorctl"
STATUS = re.compile(r"^reverserd\s+([A-Z]+)\s*(?:pid (\d+),)?", re.MULTILINE)
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d [A-Z]+ \S+: ")
UPTIME = re.compile(r"^reverserd\s+RUNNING\s+pid \d+, uptime (\d+):(\d\d):(\d\d)$", re.MULTILINE)
STOP_WAIT = 20.0  # seconds; more than the section's stopwaitsecs


class Supervisord:
    """A supervisord child running the shipped program section, and its supervisorctl."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.program_log = root / "reverserd.log"
        self.own_log = root / "supervisord.log"
        self.config = root / "supervisord.conf"
        self.pids: set[int] = set()  # every reverserd pid supervisorctl reported
        section = SHIPPED.read_text()
        for shipped, here in (("/usr/local/bin/reverserd", REVERSERD),
                              ("/var/log/supervisor/reverserd.log", str(self.program_log)),
                              ("--port 2323", "--port 0")):
            assert shipped in section, f"{SHIPPED} no longer says {shipped}"
            section = section.replace(shipped, here)
        (root / "reverserd.conf").write_text(section)
        self.config.write_text(textwrap.dedent(f"""\
            [unix_http_server]
            file={root}/ctl.sock
            chmod=0700

            [supervisord]
            logfile={self.own_log}
            pidfile={root}/supervisord.pid
            childlogdir={root}
            nodaemon=true

            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

            [supervisorctl]
            serverurl=unix://{root}/ctl.sock

            [include]
            files={root}/reverserd.conf
            """))
        with open(root / "supervisord.out", "wb") as output:
            self.popen = subprocess.Popen([SUPERVISORD, "-n", "-c", str(self.config)],
                                          cwd=root, stdin=subprocess.DEVNULL, stdout=output,
                                          stderr=subprocess.STDOUT)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SUPERVISORCTL, "-c", str(self.config), *args], cwd=self.root,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=DEADLINE + STOP_WAIT, check=False)

    def status(self) -> tuple[str, int | None]:
        """reverserd's state as ``supervisorctl status`` reports it, and its pid if running."""
        result = self.ctl("status", "reverserd")
        match = STATUS.search(result.stdout)
        if match is None:  # supervisord not answering yet
            return "", None
        pid = int(match.group(2)) if match.group(2) else None
        if pid is not None:
            self.pids.add(pid)
        return match.group(1), pid

    def wait_running(self, replacing: int | None = None) -> int:
        """The pid of reverserd once supervisord says it is RUNNING (a pid other than
        ``replacing``)."""
        def running() -> int | None:
            if self.popen.poll() is not None:
                raise AssertionError(f"supervisord exited: {self.output()}")
            state, pid = self.status()
            if state in ("BACKOFF", "FATAL"):  # it failed to start: say why
                raise AssertionError(f"reverserd is {state}: {self.program_log.read_text()}")
            return pid if state == "RUNNING" and pid != replacing else None
        return wait_until(running, "reverserd to be RUNNING")  # type: ignore[return-value]

    def lines_of(self, pid: int) -> list[str]:
        """The lines the reverserd process ``pid`` wrote in the captured log."""
        lines = self.program_log.read_text().splitlines()
        start = next(index for index, line in enumerate(lines)
                     if re.search(rf" starting: .*, pid {pid},", line))
        end = next((index for index in range(start + 1, len(lines))
                    if " starting: " in lines[index]), len(lines))
        return lines[start:end]

    def port_of(self, pid: int) -> int:
        def listening() -> int | None:
            for line in self.lines_of(pid):
                if match := re.search(r" listening on 127\.0\.0\.1:(\d+)$", line):
                    return int(match.group(1))
            return None
        return wait_until(listening, f"pid {pid} to log its port")  # type: ignore[return-value]

    def output(self) -> str:
        return (self.root / "supervisord.out").read_text(errors="replace")

    def children(self) -> set[int]:
        """The processes supervisord started that are still there."""
        found = set()
        for entry in pathlib.Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:  # gone while listed
                continue
            if int(fields[1]) == self.popen.pid:
                found.add(int(entry.name))
        return found

    def end(self) -> None:
        """SIGTERM supervisord and wait for it; SIGKILL what outlives that (ours only)."""
        if self.popen.poll() is None:
            self.pids |= self.children()
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        for pid in self.pids:
            kill_if_reverserd(pid)


@pytest.fixture
def supervisord(tmp_path: pathlib.Path) -> Iterator[Supervisord]:
    if not os.path.exists(SUPERVISORD) and os.geteuid() != 0:
        pytest.skip("supervisor is not installed")
    running = Supervisord(tmp_path)
    try:
        yield running
    finally:
        running.end()


def reverses(port: int) -> bool:
    with connect(port) as sock:
        sock.sendall(b"hello\nquit\n")
        return receive_until_closed(sock) == b"olleh\n"


def stopped_gracefully(supervisord: Supervisord, pid: int) -> bool:
    lines = supervisord.lines_of(pid)
    return (any(line.endswith(" INFO reverserd.runner: received SIGTERM, stopping")
                for line in lines)
            and lines[-1].endswith(" INFO reverserd.runner: stopped"))


def test_supervisorctl_stops_starts_and_restarts_it(supervisord: Supervisord) -> None:
    first = supervisord.wait_running()
    assert reverses(supervisord.port_of(first))
    result = supervisord.ctl("status")
    assert result.returncode == 0, result
    assert re.search(rf"^reverserd\s+RUNNING\s+pid {first},", result.stdout, re.MULTILINE)

    result = supervisord.ctl("stop", "reverserd")
    assert (result.returncode, result.stdout) == (0, "reverserd: stopped\n"), result
    assert supervisord.status() == ("STOPPED", None)
    assert not is_alive(first)
    assert stopped_gracefully(supervisord, first)
    assert "stopped: reverserd (exit status 0)" in supervisord.own_log.read_text()

    result = supervisord.ctl("start", "reverserd")
    assert (result.returncode, result.stdout) == (0, "reverserd: started\n"), result
    state, second = supervisord.status()
    assert state == "RUNNING" and second not in (None, first)
    assert second is not None and reverses(supervisord.port_of(second))

    result = supervisord.ctl("restart", "reverserd")
    assert result.returncode == 0, result
    assert result.stdout == "reverserd: stopped\nreverserd: started\n", result
    state, third = supervisord.status()
    assert state == "RUNNING" and third not in (None, first, second)
    assert third is not None and reverses(supervisord.port_of(third))
    assert not is_alive(second) and stopped_gracefully(supervisord, second)

    # Stopping supervisord stops reverserd gracefully too, leaving no process behind.
    supervisord.end()
    assert supervisord.popen.returncode == 0, supervisord.output()
    assert not [pid for pid in supervisord.pids if is_alive(pid)]
    assert stopped_gracefully(supervisord, third)

    # supervisord writes the program's output as it came: reverserd's own lines, each
    # stamped by reverserd, with nothing added.
    lines = supervisord.program_log.read_text().splitlines()
    assert len(lines) >= 3 * 5
    assert not [line for line in lines if not LOG_RECORD.match(line)]


def test_a_stop_lets_reverserd_use_its_whole_shutdown_timeout(
    supervisord: Supervisord,
) -> None:
    pid = supervisord.wait_running()
    with stuck_client(supervisord.port_of(pid)):  # holds the stop for --shutdown-timeout
        result = supervisord.ctl("stop", "reverserd")
    assert (result.returncode, result.stdout) == (0, "reverserd: stopped\n"), result
    lines = supervisord.lines_of(pid)
    assert any(re.search(r" WARNING \S+: closing 1 connection\(s\) still busy after 5\.0 s$",
                         line) for line in lines), lines
    assert stopped_gracefully(supervisord, pid)
    assert "stopped: reverserd (exit status 0)" in supervisord.own_log.read_text()


def test_a_killed_server_is_started_again(supervisord: Supervisord) -> None:
    killed = supervisord.wait_running()
    assert reverses(supervisord.port_of(killed))
    os.kill(killed, signal.SIGKILL)
    wait_until_dead(killed)
    replacement = supervisord.wait_running(replacing=killed)
    assert reverses(supervisord.port_of(replacement))
    assert "exited: reverserd (terminated by SIGKILL; not expected)" \
        in supervisord.own_log.read_text()


def signal_hup(supervisord: Supervisord) -> None:
    result = supervisord.ctl("signal", "HUP", "reverserd")
    assert (result.returncode, result.stdout) == (0, "reverserd: signalled\n"), result


def uptime(supervisord: Supervisord) -> int:
    """Seconds since supervisord started reverserd, as ``supervisorctl status`` says."""
    status = supervisord.ctl("status", "reverserd").stdout
    match = UPTIME.search(status)
    assert match, status
    hours, minutes, seconds = map(int, match.groups())
    return (hours * 60 + minutes) * 60 + seconds


def supervisor_view(supervisord: Supervisord) -> tuple[object, ...]:
    """What supervisord knows of reverserd: its state and pid (status and ``supervisorctl
    pid``), and how many times it started it and saw it exit (its own log)."""
    own = supervisord.own_log.read_text()
    return (*supervisord.status(), supervisord.ctl("pid", "reverserd").stdout,
            own.count("spawned: 'reverserd'"), own.count("exited: reverserd"))


def program_lines(supervisord: Supervisord) -> list[str]:
    return supervisord.program_log.read_text().splitlines()


def test_supervisorctl_signal_hup_reloads_behind_the_pid_supervisord_watches(
        supervisord: Supervisord) -> None:
    keeper = supervisord.wait_running()
    assert supervisor_view(supervisord) == ("RUNNING", keeper, f"{keeper}\n", 1, 0)
    up = uptime(supervisord)
    generations = Generations(lambda: program_lines(supervisord), keeper, supervisord.pids.add)
    reload_and_check(generations, lambda: signal_hup(supervisord),
                     supervisord.port_of(keeper), lambda: supervisor_view(supervisord))
    assert uptime(supervisord) >= up  # counted from the one start, not from a reload


def test_supervisorctl_stop_after_reloads_ends_the_keeper_and_every_generation(
        supervisord: Supervisord) -> None:
    keeper = supervisord.wait_running()
    port = supervisord.port_of(keeper)
    generations = Generations(lambda: program_lines(supervisord), keeper, supervisord.pids.add)
    for _ in range(2):
        generations.reload(lambda: signal_hup(supervisord))
    last = generations.serving.pid
    result = supervisord.ctl("stop", "reverserd")
    assert (result.returncode, result.stdout) == (0, "reverserd: stopped\n"), result
    assert supervisord.status() == ("STOPPED", None)
    # The keeper's exit status is that of the generation serving last: 0 after its
    # graceful stop.
    assert "stopped: reverserd (exit status 0)" in supervisord.own_log.read_text()
    assert stopped_gracefully(supervisord, last)
    generations.all_ended(port)
    assert supervisord.children() == set()
