"""The shipped systemd units, scripts/systemd/reverserd.{service,socket}, checked for real.

No systemd runs as PID 1 here, so the units are checked in parts:

- ``systemd-analyze verify`` and ``systemd-analyze security --offline`` read the unit files
  as they are shipped, copied unchanged into a directory laid out as a root file system
  (``--root``) that holds the system's own units (for targets such as sysinit.target) and, at
  /usr/local/bin/reverserd, a copy of the venv's reverserd script: verify checks that the
  program ExecStart names exists and is executable.
- The service's ExecStart line runs under ``systemd-socket-activate``, which passes a
  listening socket as reverserd.socket would, with ``NOTIFY_SOCKET`` pointing at a socket of
  the test's own (tests/e2e/notify_socket.py) and ``WATCHDOG_USEC`` set, as systemd sets them.
- The service's ExecReload line runs, as systemd runs it for ``systemctl reload``, while that
  service serves; the test process then stands where systemd stands as the reaper of the
  service's processes (a child subreaper), so that the new main process, orphaned when the
  old one exits, becomes its child and its exit status can be checked.

Substitutions in the ExecStart and ExecReload lines, and only these:
/usr/local/bin/reverserd becomes the venv's reverserd, since that is where it is installed
here; the pidfile /run/reverserd/reverserd.pid moves into the test's directory, since
systemd's RuntimeDirectory= is not there to make /run/reverserd; $REVERSERD_OPTIONS (empty
unless /etc/default/reverserd sets it) becomes each test's options. The socket's address
keeps its host, with a free port in place of 2323.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from tests.e2e.daemons import is_alive, kill_if_reverserd
from tests.e2e.haproxy import free_port, socket_inodes
from tests.e2e.notify_socket import Notification, NotifySocket
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    ReverserdProcess,
    connect,
    receive_exactly,
    wait_until,
)
from tests.e2e.test_socket_activation import PASSED_ON, bound, exchange

UNITS = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "systemd"
SERVICE = UNITS / "reverserd.service"
SOCKET = UNITS / "reverserd.socket"
INSTALLED = "/usr/local/bin/reverserd"
RUN_PIDFILE = "/run/reverserd/reverserd.pid"
OPTIONS_VARIABLE = "$REVERSERD_OPTIONS"
WATCHDOG_USEC = 600_000
PING_GAP = WATCHDOG_USEC / 2 / 1_000_000  # seconds: reverserd pings every half of it
LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp and tcp6
# sd-daemon(3) priorities of the levels reverserd logs at.
PRIORITIES = {"DEBUG": "7", "INFO": "6", "WARNING": "4", "ERROR": "3", "CRITICAL": "2"}
FULL_RECORD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "
                         r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) reverserd[.\w]*: ")
JOURNAL_RECORD = re.compile(r"<(\d)>(DEBUG|INFO|WARNING|ERROR|CRITICAL) reverserd[.\w]*: ")
# Runs a command in its own pid after setting variables only known then: NAME=pid (its pid,
# which the command keeps) or NAME=stdout (the device and inode of its stdout, as systemd
# writes JOURNAL_STREAM).
LAUNCHER = (
    "import os, sys\n"
    "stdout = os.fstat(1)\n"
    "known = {'pid': str(os.getpid()), 'stdout': f'{stdout.st_dev}:{stdout.st_ino}'}\n"
    "for setting in filter(None, sys.argv[1].split(',')):\n"
    "    name, _, what = setting.partition('=')\n"
    "    os.environ[name] = known[what]\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")

Start = Callable[..., ReverserdProcess]


def program(name: str) -> str:
    """A systemd program's path. Missing, the test is skipped, but not as root: CI runs as
    root after installing systemd, so there a missing program is a failure."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin")
    if found is None:
        if os.geteuid() != 0:
            pytest.skip(f"{name} is not installed")
        return f"/usr/bin/{name}"
    return found


def unit_settings(path: pathlib.Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's settings by section, in order (a key may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        assert not stripped.endswith("\\"), f"{path.name}: continuation lines are not read here"
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"{path.name}: a setting before any section: {line!r}"
        key, equals, value = stripped.partition("=")
        assert equals, f"{path.name}: not a setting: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(path: pathlib.Path, section: str, key: str) -> list[str]:
    return [value for name, value in unit_settings(path).get(section, []) if name == key]


def one(path: pathlib.Path, section: str, key: str) -> str:
    found = values(path, section, key)
    assert len(found) == 1, f"{path.name}: [{section}] {key}= set {len(found)} times"
    return found[0]


def exec_line(key: str) -> list[str]:
    """A shipped Exec...= line as words, with systemd's quoting (which shlex's matches for
    the plain words used here)."""
    line = one(SERVICE, "Service", key)
    assert line[0] not in "-@+!:", f"{key} has a prefix this test does not expect: {line}"
    return shlex.split(line)


def exec_start() -> list[str]:
    return exec_line("ExecStart")


def service_command(pidfile: pathlib.Path, options: Sequence[str]) -> list[str]:
    """The shipped ExecStart with the substitutions the module's docstring lists, no more."""
    return substituted(exec_start(), pidfile, options)


def reload_command(pidfile: pathlib.Path) -> list[str]:
    """The shipped ExecReload with the same substitutions as ExecStart."""
    return substituted(exec_line("ExecReload"), pidfile, ())


def substituted(words: list[str], pidfile: pathlib.Path, options: Sequence[str]) -> list[str]:
    assert words[0] == INSTALLED, words
    command = [REVERSERD]
    for previous, word in zip(words, words[1:], strict=False):
        if word == OPTIONS_VARIABLE:
            command += options
        elif previous == "--pidfile":
            assert word == RUN_PIDFILE, words
            command.append(str(pidfile))
        else:
            assert "$" not in word and "%" not in word, f"{word!r} would need expanding"
            command.append(word)
    return command


def socket_host() -> str:
    """The host of the socket unit's one ListenStream= (its port is replaced by a free one)."""
    address = one(SOCKET, "Socket", "ListenStream")
    host, colon, port = address.rpartition(":")
    assert colon and host and port.isdigit(), f"not HOST:PORT: {address}"
    return host


def listening_tcp_inodes(pid: int) -> set[str]:
    """Every TCP socket ``pid`` holds listening, IPv4 or IPv6, on any port: the service must
    serve what systemd passed, not bind reverserd's default port beside it."""
    inodes = socket_inodes(pid)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                if fields[3] == LISTEN_STATE and fields[9] in inodes:
                    found.add(fields[9])
    return found


class Service:
    """The service's command under systemd-socket-activate, which, like systemd with
    reverserd.socket, binds the socket first and starts reverserd on the first connection."""

    def __init__(self, start: Start, directory: pathlib.Path, notify: NotifySocket,
                 options: Sequence[str] = (), environment: Sequence[str] = (),
                 computed: Sequence[str] = ()) -> None:
        directory.mkdir(exist_ok=True)
        self.pidfile = directory / "reverserd.pid"
        self.port = free_port()
        self.address = f"{socket_host()}:{self.port}"
        command = [program("systemd-socket-activate"), f"--listen={self.address}",
                   "-E", f"NOTIFY_SOCKET={notify.address}",
                   "-E", f"WATCHDOG_USEC={WATCHDOG_USEC}"]
        for name in PASSED_ON:
            if name in os.environ:
                command += ["-E", name]
        for setting in environment:
            command += ["-E", setting]
        for setting in computed:
            command += ["-E", setting.partition("=")[0]]
        if computed:
            command = [sys.executable, "-c", LAUNCHER, ",".join(computed), *command]
        self.notify = notify
        self.process = start(command=[*command, *service_command(self.pidfile, options)])
        self.inherited = bound(self.process, self.port)

    @property
    def pid(self) -> int:
        return self.process.pid

    def serve_first(self) -> None:
        """The first connection: systemd-socket-activate execs reverserd, which answers."""
        assert exchange(self.port, b"hello\n") == b"olleh\n"

    def stop(self) -> None:
        """SIGTERM as systemd sends it; STOPPING=1 comes, then a clean exit."""
        sent = time.monotonic()
        self.process.signal(signal.SIGTERM)
        stopping = self.notify.wait_for("STOPPING", "1")
        assert stopping[0].arrived >= sent
        assert self.process.wait() == 0, self.process.stderr()


def assert_all_from(notify: NotifySocket, pid: int) -> None:
    """What NotifyAccess=main believes: every datagram from the main pid, each well formed."""
    received = notify.received
    assert received
    assert [notification.pid for notification in received] == [pid] * len(received), received
    assert not [n.malformed for n in received if n.malformed], received


def assert_ready(notify: NotifySocket, address: str) -> None:
    """READY=1, exactly once, and a STATUS= naming ``address`` with it or after it."""
    ready = notify.wait_for("READY", "1")[0]

    def told() -> list[str]:
        return [notification.fields["STATUS"] for notification in notify.with_field("STATUS")
                if notification.arrived >= ready.arrived
                and address in notification.fields["STATUS"]]

    wait_until(told, f"a STATUS= naming {address}")
    assert len(notify.with_field("READY")) == 1, notify.received


def children_of(pid: int, zombies: bool = False) -> list[int]:
    """The live processes whose parent is ``pid`` (and those it has not reaped yet)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:  # gone while listed
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if int(fields[1]) == pid and (zombies or fields[0] != b"Z"):
            found.append(int(entry.name))
    return found


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([program("systemd-analyze"), *args], capture_output=True, text=True,
                          timeout=DEADLINE, stdin=subprocess.DEVNULL, check=False)


def unit_tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """A root file system as after installing the units, so that verify checks the files
    shipped, unchanged, against a program where ExecStart says (module docstring)."""
    root = tmp_path / "root"
    system_units = pathlib.Path("/usr/lib/systemd/system")
    if not (system_units / "sysinit.target").exists():
        system_units = pathlib.Path("/lib/systemd/system")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    for unit in (SERVICE, SOCKET):
        shutil.copyfile(unit, installed / unit.name)
    binary = root / INSTALLED.lstrip("/")
    binary.parent.mkdir(parents=True)
    shutil.copy(REVERSERD, binary)
    return root


def verify(root: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return analyze("verify", f"--root={root}", SOCKET.name, SERVICE.name)


def microseconds(span: str) -> int:
    """A time span as systemd itself reads it, so the test judges what systemd will do."""
    result = analyze("timespan", span)
    assert result.returncode == 0, result
    return int(re.search(r"(?:μ|u)s: (\d+)", result.stdout).group(1))  # type: ignore[union-attr]


def default_seconds(help_text: str, option: str) -> float:
    """The default ``reverserd --help`` gives for a SECONDS option."""
    default = re.search(rf"^ +{option} SECONDS\s[^(]*\([^)]*default: ([\d.]+)\)", help_text,
                        re.MULTILINE)
    assert default, help_text
    return float(default.group(1))


def test_systemd_analyze_verify_accepts_both_units(tmp_path: pathlib.Path) -> None:
    result = verify(unit_tree(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not [line for line in output.splitlines() if "reverserd" in line], output


@pytest.mark.parametrize("flaw", ["unknown setting", "bad value", "no program"])
def test_verify_as_run_here_reports_a_flawed_unit(tmp_path: pathlib.Path, flaw: str) -> None:
    """The tree is complete enough that verify does look at the units: a flaw in a copy of
    the service shows up."""
    root = unit_tree(tmp_path)
    copy = root / "etc/systemd/system" / SERVICE.name
    if flaw == "unknown setting":
        copy.write_text(copy.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=10s\n"))
    elif flaw == "bad value":
        copy.write_text(copy.read_text().replace("KillMode=mixed", "KillMode=gently"))
    else:
        (root / INSTALLED.lstrip("/")).unlink()
    result = verify(root)
    output = result.stdout + result.stderr
    complaints = [line for line in output.splitlines() if SERVICE.name in line]
    assert complaints, output
    if flaw == "no program":
        assert result.returncode != 0, output
        assert INSTALLED in output, output


def test_the_service_is_confined(tmp_path: pathlib.Path) -> None:
    """systemd's own rating of the sandbox: exposure at most 2.0 of 10 ("OK")."""
    result = analyze("security", "--offline=yes", f"--root={unit_tree(tmp_path)}",
                     "--threshold=20", SERVICE.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Overall exposure level for reverserd\.service: [01]\.\d", result.stdout)


def test_the_socket_hands_one_loopback_stream_to_the_service() -> None:
    assert values(SOCKET, "Socket", "Accept") in ([], ["no"])
    assert values(SOCKET, "Socket", "Service") in ([], [SERVICE.name])  # same name by default
    assert socket_host() == "127.0.0.1"  # as reverserd itself listens when not told otherwise
    assert values(SOCKET, "Install", "WantedBy") == ["sockets.target"]
    assert exec_start()[1] == "run"  # the foreground, which Type=notify supervises
    assert not {"--listen", "--port", "--interface"} & set(exec_start())  # serves what it gets


def test_the_service_settings_fit_reverserd() -> None:
    assert one(SERVICE, "Service", "Type") == "notify"
    assert one(SERVICE, "Service", "NotifyAccess") == "main"
    assert one(SERVICE, "Service", "KillMode") == "mixed"
    assert one(SERVICE, "Service", "Restart") == "on-failure"
    assert one(SERVICE, "Service", "DynamicUser") == "yes"
    # The pidfile lies in the runtime directory systemd makes, and the working directory
    # (where --save writes) is the state directory.
    runtime = one(SERVICE, "Service", "RuntimeDirectory")
    assert pathlib.PurePath(RUN_PIDFILE).parent == pathlib.PurePath("/run", runtime)
    state = one(SERVICE, "Service", "StateDirectory")
    assert one(SERVICE, "Service", "WorkingDirectory") == f"/var/lib/{state}"
    # Every variable ExecStart uses has an empty default that the optional file overrides.
    assert one(SERVICE, "Service", "EnvironmentFile") == "-/etc/default/reverserd"
    variables = [word[1:] for word in exec_start() if word.startswith("$")]
    assert variables == [OPTIONS_VARIABLE[1:]]
    assert f"{variables[0]}=" in values(SERVICE, "Service", "Environment")
    # Stopping waits longer than reverserd's graceful stop may take by default.
    help_text = subprocess.run([REVERSERD, "--help"], capture_output=True, text=True,
                               timeout=DEADLINE, check=True).stdout
    stop_timeout = microseconds(one(SERVICE, "Service", "TimeoutStopSec"))
    assert stop_timeout >= 2 * default_seconds(help_text, "--shutdown-timeout") * 1_000_000
    assert microseconds(one(SERVICE, "Service", "WatchdogSec")) >= 2_000_000
    # systemctl reload runs reverserd's own reload, which returns once the new generation
    # serves, or fails with the reason; Type=notify-reload would need systemd 253.
    assert exec_line("ExecReload") == [INSTALLED, "reload", "--pidfile", RUN_PIDFILE]
    # systemd allows a reload TimeoutStartSec= (90 s unless set): far more than reverserd
    # waits for a new generation to serve (--start-timeout, and a little more).
    start_timeout = values(SERVICE, "Service", "TimeoutStartSec")
    allowed = microseconds(start_timeout[0]) if start_timeout else 90_000_000
    assert allowed >= 2 * default_seconds(help_text, "--start-timeout") * 1_000_000


def test_the_service_runs_under_socket_activation_and_notifies(
        reverserd: Start, tmp_path: pathlib.Path) -> None:
    with NotifySocket(tmp_path) as notify:
        service = Service(reverserd, tmp_path / "run", notify, ["--log-level", "debug"])
        service.serve_first()
        assert_ready(notify, service.address)
        assert exchange(service.port, b"abc\r\n") == b"cba\r\n"
        # The socket passed is the one served, and no other was opened.
        assert listening_tcp_inodes(service.pid) == service.inherited
        listening = [line for line in service.process.log if "listening on" in line]
        assert [line.rsplit(" ", 1)[1] for line in listening] == [service.address]
        status = subprocess.run([REVERSERD, "status", "--pidfile", str(service.pidfile)],
                                capture_output=True, text=True, timeout=DEADLINE, check=False)
        assert status.returncode == 0, status
        assert f"pid {service.pid}" in status.stdout and service.address in status.stdout
        pings = notify.wait_for("WATCHDOG", "1", count=6)
        gaps = [later.arrived - earlier.arrived for earlier, later in zip(pings, pings[1:])]
        assert 0.5 * PING_GAP <= statistics.median(gaps) <= 1.5 * PING_GAP, gaps
        service.stop()
        assert not service.pidfile.exists()
        assert_all_from(notify, service.pid)


def test_the_watchdog_pings_only_for_the_pid_systemd_names(
        reverserd: Start, tmp_path: pathlib.Path) -> None:
    """WATCHDOG_PID names the process systemd watches; another process must stay quiet.
    Both run at once, so the one named pinging several times bounds the wait."""
    (tmp_path / "named").mkdir()
    (tmp_path / "other").mkdir()
    with NotifySocket(tmp_path / "named") as named, NotifySocket(tmp_path / "other") as other:
        watched = Service(reverserd, tmp_path / "named", named, computed=["WATCHDOG_PID=pid"])
        elsewhere = Service(reverserd, tmp_path / "other", other,
                            environment=[f"WATCHDOG_PID={os.getpid()}"])
        watched.serve_first()
        elsewhere.serve_first()
        other.wait_for("READY", "1")
        named.wait_for("WATCHDOG", "1")
        # Three more pings from the one named: the other has had as long to send its own.
        named.wait_for("WATCHDOG", "1", count=len(named.with_field("WATCHDOG")) + 3)
        assert not other.with_field("WATCHDOG"), other.received
        watched.stop()
        elsewhere.stop()
        assert_all_from(named, watched.pid)


def test_an_application_never_sees_the_notify_socket(reverserd: Start,
                                                     tmp_path: pathlib.Path) -> None:
    """Code reverserd runs, and any program it starts, must not send systemd messages in
    its name."""
    seen = tmp_path / "seen.txt"
    app = tmp_path / "app.py"
    app.write_text(
        "import os\n"
        "from reverserd import Application, Reverser, Service, listen\n"
        "class Witness(Service):\n"
        "    async def start_service(self):\n"
        "        await super().start_service()\n"
        f"        with open({str(seen)!r}, 'w') as file:\n"
        "            file.write(repr(os.environ.get('NOTIFY_SOCKET')))\n"
        "application = Application('witnessed')\n"
        "listen('systemd:index=0', Reverser).set_service_parent(application)\n"
        "Witness().set_service_parent(application)\n")
    with NotifySocket(tmp_path) as notify:
        service = Service(reverserd, tmp_path / "run", notify, ["-y", str(app)])
        service.serve_first()
        notify.wait_for("READY", "1")
        assert wait_until(lambda: seen.exists() and seen.read_text(), "the witness") == "None"
        service.stop()
        assert_all_from(notify, service.pid)


def test_with_workers_only_the_main_process_notifies(reverserd: Start,
                                                     tmp_path: pathlib.Path) -> None:
    """NotifyAccess=main: systemd hears only the main process, so it alone must say that the
    workers serve, ping the watchdog, and say it stops."""
    with NotifySocket(tmp_path) as notify:
        service = Service(reverserd, tmp_path / "run", notify, ["--workers", "2"])
        service.serve_first()
        assert_ready(notify, service.address)
        workers = children_of(service.pid)  # every worker serves once READY=1 is sent
        assert len(workers) == 2, workers
        for line in (b"one\n", b"two\n", b"three\n"):
            assert exchange(service.port, line) == line[-2::-1] + b"\n"
        notify.wait_for("WATCHDOG", "1", count=3)
        service.stop()
        for pid in workers:
            wait_until(lambda pid=pid: not is_alive(pid), f"worker {pid} to end")
        assert_all_from(notify, service.pid)


def test_an_abstract_notify_socket_is_reached(reverserd: Start, tmp_path: pathlib.Path) -> None:
    """sd_notify(3): a NOTIFY_SOCKET starting with "@" is in the abstract namespace."""
    with NotifySocket(tmp_path, abstract=True) as notify:
        service = Service(reverserd, tmp_path / "run", notify)
        service.serve_first()
        assert_ready(notify, service.address)
        service.stop()
        assert_all_from(notify, service.pid)


@pytest.mark.parametrize("stream", ["stdout", "another"])
def test_the_log_takes_the_journal_format_only_on_the_journal_stream(
        reverserd: Start, tmp_path: pathlib.Path, stream: str) -> None:
    """The unit sets no log format: systemd's JOURNAL_STREAM naming reverserd's own stdout
    is what says that stdout goes to the journal. Inherited by a process whose stdout goes
    elsewhere, it must not count."""
    with NotifySocket(tmp_path) as notify:
        if stream == "stdout":
            service = Service(reverserd, tmp_path / "run", notify, ["--log-level", "debug"],
                              computed=["JOURNAL_STREAM=stdout"])
        else:
            service = Service(reverserd, tmp_path / "run", notify, ["--log-level", "debug"],
                              environment=["JOURNAL_STREAM=1:1"])
        service.serve_first()
        notify.wait_for("READY", "1")
        service.stop()
    log = [line for line in service.process.log if line.strip()]
    assert any("listening on" in line for line in log), log
    if stream == "stdout":
        records = [JOURNAL_RECORD.match(line) for line in log]
        assert all(records), log
        assert all(PRIORITIES[match.group(2)] == match.group(1)
                   for match in records if match), log
    else:
        assert all(FULL_RECORD.match(line) for line in log), log


PR_SET_CHILD_SUBREAPER = 36  # prctl(2)
RELOADED = re.compile(r"^reverserd reloaded: pid (\d+) \u2192 (\d+)$")
RELOAD_FAILED = re.compile(r"^reverserd: reload failed: (.+); pid (\d+) serves on$")


def set_child_subreaper(enabled: bool) -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants become this process's children,
    as a service's become systemd's, instead of init's."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def parent_of(pid: int) -> int:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat.rsplit(b")", 1)[1].split()[1])


def monotonic_usec() -> int:
    """The clock systemd reads MONOTONIC_USEC= against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Manager:
    """What the test keeps of systemd's part once the main process changes: it reaps the
    service's processes, learns the exit status of a main process it did not start, and at
    the end kills whatever generation is left (by the pids reloads reported and the one
    the pidfile names), so that none outlives the test."""

    def __init__(self) -> None:
        self.successors: set[int] = set()
        self.pidfiles: list[pathlib.Path] = []

    def exit_status(self, pid: int, timeout: float = DEADLINE) -> int:
        """Wait for ``pid``, a child only by adoption, to exit; its exit status."""
        def reaped() -> tuple[int] | None:
            try:
                found, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                raise AssertionError(f"pid {pid} is not the test's child: it was not handed "
                                     "to the reaper when its parent exited") from None
            return (os.waitstatus_to_exitcode(status),) if found else None

        status = wait_until(reaped, f"pid {pid} to exit", timeout)[0]  # type: ignore[index]
        self.successors.discard(pid)  # reaped: its pid may be another process's now
        return status

    def end(self) -> None:
        left = set(self.successors)
        for pidfile in self.pidfiles:
            try:
                left.add(int(pidfile.read_text().strip()))
            except (OSError, ValueError):
                pass  # no pidfile left: nothing more to end
        for pid in left:
            kill_if_reverserd(pid)
        for pid in list(self.successors):
            try:
                self.exit_status(pid)
            except AssertionError:
                pass  # not the test's child: the kill was all it could do


@pytest.fixture
def manager(reverserd: Start) -> Iterator[Manager]:
    """The test process as the reaper of the service's processes while the test runs.
    Set up after ``reverserd``, so ended first: a later generation still holding the first
    one's stdout would keep that one's log reader waiting."""
    set_child_subreaper(True)
    kept = Manager()
    try:
        yield kept
    finally:
        kept.end()
        set_child_subreaper(False)


def run_exec_reload(service: Service, directory: pathlib.Path,
                    options: Sequence[str] = ()) -> tuple[subprocess.CompletedProcess[str],
                                                          int, int]:
    """The unit's ExecReload as systemd runs it: a control process in the service's
    working ``directory``, with its environment and $MAINPID, but no NOTIFY_SOCKET
    (NotifyAccess=main gives a control process none). Returns its outcome and
    CLOCK_MONOTONIC (µs) just before and just after."""
    environment = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    environment.update(MAINPID=str(service.pid), REVERSERD_OPTIONS=" ".join(options))
    before = monotonic_usec()
    result = subprocess.run(reload_command(service.pidfile), capture_output=True, text=True,
                            cwd=directory, env=environment,
                            stdin=subprocess.DEVNULL, timeout=DEADLINE, check=False)
    return result, before, monotonic_usec()


def assert_reloading(notify: NotifySocket, pid: int, before: int, after: int) -> Notification:
    """RELOADING=1, once, from ``pid``, stamped with a CLOCK_MONOTONIC time taken while
    the reload ran."""
    reloading = notify.with_field("RELOADING")
    assert len(reloading) == 1, notify.received
    fields = reloading[0].fields
    assert reloading[0].pid == pid, notify.received
    assert fields["RELOADING"] == "1" and fields["STATUS"] == "reloading", fields
    assert fields["MONOTONIC_USEC"].isdigit(), fields
    assert before <= int(fields["MONOTONIC_USEC"]) <= after, (before, fields, after)
    return reloading[0]


def as_systemd_hears(received: list[Notification], main: int) -> tuple[
        list[Notification], list[Notification]]:
    """NotifyAccess=main: a datagram from the main pid is heard, and its MAINPID= makes
    another pid the main one; any other is dropped (systemd logs a warning for each).
    Returns those heard and those dropped."""
    heard, dropped = [], []
    for notification in received:
        if notification.pid != main:
            dropped.append(notification)
            continue
        heard.append(notification)
        if notification.fields.get("MAINPID", "").isdigit():
            main = int(notification.fields["MAINPID"])
    return heard, dropped


def answers(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    return receive_exactly(sock, len(line))


def test_exec_reload_hands_the_service_to_a_new_main_process(
        reverserd: Start, manager: Manager, tmp_path: pathlib.Path) -> None:
    """systemctl reload: the old main process says RELOADING=1, then names the new one
    (MAINPID=) and READY=1 once it serves, and exits; from then on systemd hears, watches
    and stops the new one, which serves the same socket and the same connections."""
    with NotifySocket(tmp_path) as notify:
        service = Service(reverserd, tmp_path / "run", notify)
        manager.pidfiles.append(service.pidfile)
        service.serve_first()
        assert_ready(notify, service.address)
        old = service.pid
        with connect(service.port) as early:
            assert answers(early, b"before\n") == b"erofeb\n"
            result, before, after = run_exec_reload(service, tmp_path)
            reloaded = RELOADED.match(result.stdout.rstrip("\n"))
            assert result.returncode == 0 and reloaded and not result.stderr, result
            manager.successors.add(new := int(reloaded.group(2)))
            assert int(reloaded.group(1)) == old and new != old, result
            # Back from the reload, the new generation already serves systemd's socket.
            assert service.pidfile.read_text().strip() == str(new)
            assert listening_tcp_inodes(new) == service.inherited
            reloading = assert_reloading(notify, old, before, after)
            handed = notify.wait_for("MAINPID")
            assert len(handed) == 1, notify.received
            assert handed[0].pid == old and handed[0].arrived >= reloading.arrived, handed
            assert handed[0].fields == {"MAINPID": str(new), "READY": "1",
                                        "STATUS": f"reloaded: pid {new} serves"}, handed
            # The old main process exits; the new one, orphaned, goes on.
            assert service.process.popen.wait(DEADLINE) == 0
            pings = wait_until(lambda: [n for n in notify.with_field("WATCHDOG", "1")
                                        if n.arrived > handed[0].arrived][4:],
                               "5 watchdog pings after the reload")
            assert is_alive(new) and parent_of(new) == os.getpid()
            ours = [n for n in notify.with_field("WATCHDOG") if n.arrived > handed[0].arrived]
            assert {n.pid for n in ours} == {new}, ours
            gaps = [later.arrived - earlier.arrived for earlier, later in zip(ours, ours[1:])]
            assert 0.5 * PING_GAP <= statistics.median(gaps) <= 1.5 * PING_GAP, (gaps, pings)
            # The same socket, and no other; the connection from before the reload too.
            assert listening_tcp_inodes(new) == service.inherited
            assert exchange(service.port, b"abc\n") == b"cba\n"
            assert answers(early, b"after\n") == b"retfa\n"
        assert any(f"took over from pid {old}" in line for line in service.process.log)
        # systemctl stop: SIGTERM to the main process systemd now knows.
        sent = time.monotonic()
        os.kill(new, signal.SIGTERM)
        stopping = notify.wait_for("STOPPING", "1")
        assert stopping[0].pid == new and stopping[0].arrived >= sent, stopping
        assert manager.exit_status(new) == 0
        assert not service.pidfile.exists()
    # systemd hears every datagram: the old pid's until it named the new one, the new pid's
    # after (a ping it dropped would stretch the watchdog's gap towards WatchdogSec=). Only
    # two READY=1, the start's and the reload's.
    received = notify.received
    _, dropped = as_systemd_hears(received, old)
    sequence = [(n.pid, n.raw.split(b"\n", 1)[0]) for n in received]
    assert not dropped, f"not from the main pid of the time: {dropped}; in order: {sequence}"
    assert len(notify.with_field("READY")) == 2, received
    assert not [n.malformed for n in received if n.malformed], received


def test_a_failed_exec_reload_fails_and_the_old_main_process_serves_on(
        reverserd: Start, manager: Manager, tmp_path: pathlib.Path) -> None:
    """An application file edited into one that cannot serve (it listens on an address
    taken), then systemctl reload: the reload fails with the reason, systemd hears READY=1
    with it from the same main process, which serves on as before."""
    app = tmp_path / "app.py"
    app.write_text("from reverserd import Application, Reverser, listen\n"
                   "application = Application('edited')\n"
                   "listen('systemd:index=0', Reverser).set_service_parent(application)\n")
    with NotifySocket(tmp_path) as notify, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = ["-y", str(app)]
        service = Service(reverserd, tmp_path / "run", notify, options)
        manager.pidfiles.append(service.pidfile)
        service.serve_first()
        assert_ready(notify, service.address)
        with app.open("a") as edited:
            edited.write(f"listen('tcp:{port}:interface=127.0.0.1', Reverser)"
                         ".set_service_parent(application)\n")
        with connect(service.port) as early:
            assert answers(early, b"before\n") == b"erofeb\n"
            result, before, after = run_exec_reload(service, tmp_path, options)
            failed = RELOAD_FAILED.match(result.stderr.rstrip("\n"))
            assert result.returncode == 1 and failed and not result.stdout, result
            assert int(failed.group(2)) == service.pid, result
            reason = failed.group(1)
            assert f"127.0.0.1:{port}" in reason, result
            reloading = assert_reloading(notify, service.pid, before, after)
            ready = notify.wait_for("READY", "1", count=2)[1]
            assert ready.arrived >= reloading.arrived, notify.received
            assert ready.fields == {"READY": "1", "STATUS": f"reload failed: {reason}"}, ready
            # The failed generation is gone, and reaped; the old one serves on, watched as
            # before.
            wait_until(lambda: not children_of(service.pid, zombies=True),
                       "the failed generation to end and be reaped")
            assert service.pidfile.read_text().strip() == str(service.pid)
            pings = notify.wait_for("WATCHDOG", "1",
                                    count=len(notify.with_field("WATCHDOG")) + 2)
            assert pings[-1].arrived > ready.arrived
            assert listening_tcp_inodes(service.pid) == service.inherited
            assert exchange(service.port, b"abc\n") == b"cba\n"
            assert answers(early, b"after\n") == b"retfa\n"
        service.stop()
    assert not notify.with_field("MAINPID"), notify.received
    assert len(notify.with_field("READY")) == 2, notify.received
    assert_all_from(notify, service.pid)
