"""scripts/logrotate/reverserd under the real ``logrotate``, against a real daemon.

The shipped file is installed into the test's directory with only its paths rewritten, so
that nothing under /var/log or /run is touched: /var/log/reverserd/ becomes the test's log
directory, /run/reverserd/reverserd.pid the test's pidfile, and /usr/local/bin/reverserd the
virtualenv's reverserd (the one under test). ``logrotate -f`` forces a rotation whatever the
file's schedule says, and ``-s`` keeps its state file in the test's directory.

logrotate refuses a log directory writable by group or others, so the directories made here
are 0755.
"""

from __future__ import annotations

import collections
import gzip
import os
import pathlib
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.daemons import STARTED, DaemonDirectory
from tests.e2e.support import DEADLINE, REVERSERD, connect, receive_until_closed, wait_until

SHIPPED = pathlib.Path(__file__).parents[2] / "scripts" / "logrotate" / "reverserd"
LOGROTATE = "/usr/sbin/logrotate"
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d [A-Z]+ \S+: ")
CONNECTION = re.compile(r" DEBUG reverserd\.protocol: connection from 127\.0\.0\.1:(\d+)"
                        r"( closed)?$")
ROTATIONS = 3
# Mode given to the live log before each rotation. The daemon (umask 077) would create a log
# 0600; a new log with this mode was made by logrotate's `create`, which copies the old mode.
MARKED_MODE = 0o640
CONNECTIONS_BETWEEN = 10  # connections the daemon logs between two rotations, at least
MAX_CONNECTIONS = 20_000
CLIENT_TIME_LIMIT = 40.0  # seconds
# A process that writes the name of each signal it receives, and otherwise waits.
BYSTANDER = """\
import signal, time
for signum in (signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(signum, lambda number, frame: print(signal.Signals(number).name, flush=True))
print("ready", flush=True)
time.sleep(60)
"""


def directory(path: pathlib.Path) -> pathlib.Path:
    path.mkdir()
    path.chmod(0o755)  # the umask may have made it otherwise; logrotate needs this
    return path


class Installation:
    """The shipped logrotate file, and a daemon placed where it expects one."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.log_directory = directory(root / "log")
        self.run_directory = directory(root / "run")
        self.log = self.log_directory / "reverserd.log"
        self.pidfile = self.run_directory / "reverserd.pid"
        self.state = root / "logrotate.state"
        self.config = root / "logrotate.conf"
        text = SHIPPED.read_text()
        for shipped, here in (("/var/log/reverserd/", f"{self.log_directory}/"),
                              ("/run/reverserd/", f"{self.run_directory}/"),
                              ("/usr/local/bin/reverserd", REVERSERD)):
            assert shipped in text, f"{SHIPPED} no longer names {shipped}"
            text = text.replace(shipped, here)
        self.config.write_text(text)
        self.config.chmod(0o644)

    def rotate(self) -> subprocess.CompletedProcess[str]:
        """One forced rotation, as root's cron would run it: /bin/sh scripts, a bare PATH."""
        return subprocess.run(
            [LOGROTATE, "-f", "-s", str(self.state), str(self.config)],
            cwd="/", env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/"},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE,
            check=False,
        )

    def files(self) -> list[str]:
        return sorted(path.name for path in self.log_directory.iterdir())


@pytest.fixture
def installation(tmp_path: pathlib.Path) -> Installation:
    if not os.path.exists(LOGROTATE) and os.geteuid() != 0:
        pytest.skip("logrotate is not installed")
    return Installation(tmp_path)


@pytest.fixture
def daemon(installation: Installation, daemons: DaemonDirectory) -> Iterator[tuple[int, int]]:
    """A daemon logging a line per connection event, with its own rotation off; its pid
    and port. Stopped with ``reverserd stop`` (then killed by its pid if still alive)."""
    result = daemons.run("start", "--pidfile", str(installation.pidfile),
                         "--logfile", str(installation.log), "--log-max-bytes", "0",
                         "--port", "0", "--log-level", "debug")
    assert result.returncode == 0, result
    match = STARTED.search(result.stdout)
    assert match, result
    try:
        yield int(match.group(1)), int(match.group(2))
    finally:
        daemons.run("stop", "--pidfile", str(installation.pidfile))


class Clients:
    """Connections made one after another from a thread, each answered and closed with
    ``quit``, until told to stop (or a count or time limit is reached). The local port of
    each connection is what the daemon's log names it by."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ports: list[int] = []
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="clients", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + CLIENT_TIME_LIMIT
        try:
            while (not self._stop.is_set() and len(self.ports) < MAX_CONNECTIONS
                   and time.monotonic() < deadline):
                with connect(self.port) as sock:
                    local_port = sock.getsockname()[1]
                    sock.sendall(b"abc\nquit\n")
                    reply = receive_until_closed(sock)
                assert reply == b"cba\n", reply
                with self._lock:
                    self.ports.append(local_port)
        except BaseException as error:  # reported by the test's thread, in stop()
            self.failure = error

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.ports)

    def wait_for_more(self, count: int) -> None:
        """Wait until ``count`` more connections are done than now."""
        target = self.count + count

        def done() -> bool:
            if self.failure is not None or not self._thread.is_alive():
                raise AssertionError(f"the clients stopped early: {self.failure!r}")
            return self.count >= target

        wait_until(done, f"{count} more connections")

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive(), "the clients did not stop"
        if self.failure is not None:
            raise AssertionError("a client failed") from self.failure
        return list(self.ports)


def file_identity(path: pathlib.Path | str) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


def open_files(pid: int) -> set[tuple[int, int]]:
    """What files ``pid`` has open, by device and inode."""
    found = set()
    for descriptor in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.add(file_identity(descriptor))
        except OSError:  # closed while listed
            continue
    return found


def read_log(path: pathlib.Path) -> list[str]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as compressed:
            return compressed.read().splitlines()
    return path.read_text(encoding="utf-8").splitlines()


def test_rotation_with_create_loses_no_line_and_the_daemon_follows(
    installation: Installation, daemon: tuple[int, int],
) -> None:
    pid, port = daemon
    clients = Clients(port)
    try:
        clients.wait_for_more(CONNECTIONS_BETWEEN)
        for _ in range(ROTATIONS):
            installation.log.chmod(MARKED_MODE)
            old = file_identity(installation.log)
            assert old in open_files(pid)
            result = installation.rotate()
            assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
            found = os.stat(installation.log)
            new = found.st_dev, found.st_ino
            assert new != old
            assert stat.S_IMODE(found.st_mode) == MARKED_MODE, oct(found.st_mode)
            wait_until(lambda new=new, old=old: new in (files := open_files(pid))
                       and old not in files, "the daemon to write to the new log alone")
            wait_until(lambda: "log file reopened" in installation.log.read_text(),
                       "the daemon's line saying it reopened the log")
            clients.wait_for_more(CONNECTIONS_BETWEEN)
            assert file_identity(installation.log) == new  # nothing but logrotate made it
    finally:
        ports = clients.stop()

    with connect(port) as sock:  # still serving after every rotation
        ports.append(sock.getsockname()[1])
        sock.sendall(b"hello\nquit\n")
        assert receive_until_closed(sock) == b"olleh\n"
    result = subprocess.run([REVERSERD, "stop", "--pidfile", str(installation.pidfile)],
                            capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert result.returncode == 0, result

    # delaycompress: the newest rotated file stays plain, older ones are compressed.
    names = ["reverserd.log", "reverserd.log.1",
             *(f"reverserd.log.{number}.gz" for number in range(2, ROTATIONS + 1))]
    assert installation.files() == sorted(names)
    lines = [line for name in reversed(names)  # oldest first
             for line in read_log(installation.log_directory / name)]
    assert not [line for line in lines if not LOG_RECORD.match(line)]  # none cut in two
    assert lines[-1].endswith(" INFO reverserd.runner: stopped")
    stamps = [line.split(" ", 1)[0] for line in lines]
    assert stamps == sorted(stamps)  # the files, oldest first, are one log in order

    opened: collections.Counter[int] = collections.Counter()
    closed: collections.Counter[int] = collections.Counter()
    for line in lines:
        if match := CONNECTION.search(line):
            (closed if match.group(2) else opened)[int(match.group(1))] += 1
    expected = collections.Counter(ports)
    assert len(ports) > (ROTATIONS + 1) * CONNECTIONS_BETWEEN
    assert not expected - opened and not expected - closed, "lines lost"
    assert not opened - expected and not closed - expected, "lines doubled"
    assert sum(" received SIGUSR1, reopening the log file" in line for line in lines) \
        == ROTATIONS


def test_without_a_running_daemon_rotation_signals_nothing(
    installation: Installation, tmp_path: pathlib.Path,
) -> None:
    installation.log.write_text("a line from before\n")
    result = installation.rotate()  # no pidfile at all
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert installation.files() == ["reverserd.log", "reverserd.log.1"]

    # A stale pidfile naming a live process that is not reverserd, which says which
    # signals reach it. After the rotation, a SIGUSR2 of the test's own marks the end:
    # a SIGUSR1 sent before it would be pending first, and is handled first.
    said = tmp_path / "bystander.out"
    with open(said, "w") as output:
        bystander = subprocess.Popen([sys.executable, "-c", BYSTANDER],
                                     stdin=subprocess.DEVNULL, stdout=output)
    try:
        wait_until(lambda: said.read_text() == "ready\n", "the bystander to be ready")
        installation.pidfile.write_text(f"{bystander.pid}\n")
        installation.log.write_text("another line\n")
        result = installation.rotate()
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
        assert installation.files() == ["reverserd.log", "reverserd.log.1",
                                        "reverserd.log.2.gz"]
        os.kill(bystander.pid, signal.SIGUSR2)
        wait_until(lambda: "SIGUSR2" in said.read_text(), "the bystander's SIGUSR2")
        assert said.read_text() == "ready\nSIGUSR2\n"
        assert bystander.poll() is None
    finally:
        if bystander.poll() is None:
            os.kill(bystander.pid, signal.SIGKILL)
        bystander.wait(DEADLINE)
