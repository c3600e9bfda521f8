"""``reverserd reload`` wherever the daemon may run: with workers, as nobody, in a chroot,
on sockets systemd passed, with ``--save``, on a Unix socket."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.daemons import (
    STARTED,
    DaemonDirectory,
    is_alive,
    kill_if_reverserd,
    reverserd_processes_in,
    wait_until_dead,
)
from tests.e2e.haproxy import LISTEN_STATE, free_port, listening_inodes
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    ReverserdProcess,
    connect,
    connect_unix,
    port_is_free,
    receive_exactly,
    receive_until_closed,
    wait_until,
)
from tests.e2e.test_reload import RELOADED, Tally, one_connection_per_line
from tests.e2e.test_socket_activation import PASSED_ON, SOCKET_ACTIVATE, bound
from tests.e2e.test_workers import parent_of, workers_of

NOBODY = pwd.getpwnam("nobody")
STATE = "Reverser-shutdown.json"
DEFAULT_PORT = 2323  # where reverserd listens when nothing says otherwise

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as in CI")


@pytest.fixture
def generations(daemons: DaemonDirectory) -> Iterator[DaemonDirectory]:
    """``daemons``, whose teardown also kills every reverserd still working in
    the test's directory or below: generations a reload started, whatever
    pidfile names them, and their workers."""
    yield daemons
    for pid in reverserd_processes_in(daemons.path, below=True):
        kill_if_reverserd(pid)


def reload(daemons: DaemonDirectory, *args: str) -> tuple[int, int]:
    """``reverserd reload ARGS``, which must succeed: the old pid and the new one."""
    result = daemons.run("reload", *args)
    match = RELOADED.fullmatch(result.stdout)
    assert (result.returncode, result.stderr) == (0, "") and match, result
    old, new = int(match.group(1)), int(match.group(2))
    assert old != new
    return old, new


def status_json(daemons: DaemonDirectory, *args: str) -> dict[str, Any]:
    result = daemons.run("status", "--json", *args)
    assert result.returncode == 0, result
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def exchange(port: int, line: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(line + b"\nquit\n")
        return receive_until_closed(sock)


def send_lines(port: int, count: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"ab\n" * count + b"quit\n")
        assert receive_until_closed(sock) == b"ba\n" * count


def lines_served(daemons: DaemonDirectory) -> int:
    status = daemons.run("status")
    match = re.search(r", (\d+) lines? served", status.stdout)
    assert status.returncode == 0 and match, status
    return int(match.group(1))


def saved_lines(path: pathlib.Path) -> int:
    state = json.loads(path.read_text())
    return int(state["application"]["services"][0]["state"]["lines_served"])


def uids_of(pid: int) -> list[int]:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(number) for number in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


def listening_rows(port: int) -> set[str]:
    """The inodes of every socket of any process listening on TCP ``port`` (IPv4)."""
    found = set()
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for row in table:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == LISTEN_STATE:
                found.add(fields[9])
    return found


def free_privileged_port() -> int:
    """A port below 1024 nothing listens on: tried by binding it."""
    for port in range(990, 900, -1):
        if port_is_free(port):
            return port
    raise AssertionError("no free port between 901 and 990")


class Traffic:
    """Clients in threads, each connecting, sending a line and ``quit`` again
    and again; what they saw is in ``tally``."""

    def __init__(self, connect_to: Callable[[], socket.socket], clients: int,
                 seconds: float) -> None:
        self.tally = Tally(clients)
        self.done = threading.Event()
        deadline = time.monotonic() + seconds
        self.threads = [threading.Thread(target=one_connection_per_line,
                                         args=(connect_to, client, self.tally, self.done,
                                               deadline))
                        for client in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def progress(self, what: str) -> None:
        """Wait until every client has been served again since now."""
        before = self.tally.snapshot()
        wait_until(lambda: all(now > then for now, then in zip(self.tally.snapshot(), before)),
                   f"every client to be served {what}", timeout=10)

    def finish(self) -> int:
        """Stop the clients; how many lines were answered in all."""
        self.done.set()
        for thread in self.threads:
            thread.join(DEADLINE)
            assert not thread.is_alive(), "a client thread did not finish"
        return sum(self.tally.snapshot())


# --- workers ----------------------------------------------------------------------------


def test_workers_are_replaced_by_a_new_set_while_clients_keep_connecting(
        generations: DaemonDirectory) -> None:
    daemons = generations
    daemon = daemons.start("--workers", "2")
    workers = workers_of(daemons)
    assert sorted(workers) == [1, 2]
    main, seen = daemon.pid, {daemon.pid, *(pid for pid, _ in workers.values())}
    with Traffic(lambda: connect(daemon.port, timeout=10), clients=3, seconds=40) as traffic:
        traffic.progress("before the first reload")
        for number in range(3):
            old_workers = [pid for pid, _ in workers.values()]
            old, main = reload(daemons)
            assert old not in old_workers and main not in seen
            assert daemons.pidfile.read_text() == f"{main}\n"
            workers = workers_of(daemons)
            assert sorted(workers) == [1, 2], workers
            new_workers = {pid for pid, _ in workers.values()}
            assert len(new_workers) == 2 and not new_workers & seen, (new_workers, seen)
            assert all(parent_of(pid) == main for pid in new_workers)
            seen |= {main, *new_workers}
            for pid in (old, *old_workers):
                wait_until_dead(pid)
            traffic.progress(f"after reload {number + 1}")
        answered = traffic.finish()
    assert (traffic.tally.refused, traffic.tally.reset, traffic.tally.problems) == (0, 0, [])
    assert answered > 9, traffic.tally.exchanges
    assert status_json(daemons)["reloads"] == 3
    assert sorted(reverserd_processes_in(daemons.path)) == sorted([main, *new_workers])
    assert exchange(daemon.port, b"last") == b"tsal\n"


def test_a_reload_gives_workers_to_a_daemon_that_had_none_and_takes_them_back(
        generations: DaemonDirectory) -> None:
    daemons = generations
    daemon = daemons.start()
    assert workers_of(daemons) == {}
    result = daemons.run("reload", "--workers", "2")
    assert result.returncode == 0 and RELOADED.fullmatch(result.stdout), result
    main = int(daemons.pidfile.read_text())
    workers = workers_of(daemons)
    assert sorted(workers) == [1, 2] and all(parent_of(pid) == main for pid, _ in workers.values())
    for number in range(6):
        assert exchange(daemon.port, f"line {number}".encode()) == f"{number} enil\n".encode()
    result = daemons.run("reload", "--workers", "1")
    assert result.returncode == 0 and RELOADED.fullmatch(result.stdout), result
    assert exchange(daemon.port, b"back to one") == b"eno ot kcab\n"


# --- giving up root -------------------------------------------------------------------

LAUNCHER = """#!{python}
import site
import sys
site.addsitedir({site_packages!r})
from reverserd.entry import command
sys.exit(command())
"""


def runs_as_nobody(program: str) -> bool:
    """Whether user nobody can run ``program --version``."""
    try:
        result = subprocess.run([program, "--version"], user=NOBODY.pw_uid, group=NOBODY.pw_gid,
                                extra_groups=[], cwd="/", capture_output=True, timeout=DEADLINE,
                                stdin=subprocess.DEVNULL, check=False)
    except PermissionError:
        return False
    return result.returncode == 0


@pytest.fixture
def reachable() -> Iterator[DaemonDirectory]:
    """A directory user nobody can reach by its path (pytest's own are
    root's alone), where every reverserd left is killed at teardown."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="reverserd-reload-"))
    path.chmod(0o755)
    daemons = DaemonDirectory(path)
    try:
        yield daemons
    finally:
        for pid in reverserd_processes_in(path, below=True, also=str(path / "bin" / "reverserd")):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path)


def reverserd_for_nobody(directory: pathlib.Path) -> str:
    """A ``reverserd`` command user nobody can run: the virtualenv's script,
    or, when nobody cannot reach its interpreter, a script of the same name
    in ``directory`` that runs the same reverserd code (this virtualenv's
    site-packages) on the system's interpreter of the same Python version."""
    if runs_as_nobody(REVERSERD):
        return REVERSERD
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if python is None:
        pytest.skip(f"user nobody cannot run {REVERSERD}, and there is no system {version}")
    launcher = directory / "bin" / "reverserd"
    launcher.parent.mkdir()
    launcher.write_text(LAUNCHER.format(python=python,
                                        site_packages=sysconfig.get_paths()["purelib"]))
    launcher.chmod(0o755)
    if not runs_as_nobody(str(launcher)):
        pytest.skip(f"user nobody can run neither {REVERSERD} nor {python} with this "
                    "virtualenv's packages")
    return str(launcher)


@needs_root
@pytest.mark.parametrize("privileged", [False, True], ids=["port-0", "privileged-port"])
def test_a_daemon_running_as_nobody_reloads_on_the_port_it_bound_as_root(
        reachable: DaemonDirectory, privileged: bool) -> None:
    """The new generation is started by the old one, as nobody: it binds
    nothing, it only takes the socket root bound."""
    daemons = reachable
    program = reverserd_for_nobody(daemons.path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([program, *args], cwd=daemons.path, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=DEADLINE,
                              check=False)

    pidfile = daemons.path / "run" / "reverserd.pid"
    logfile = daemons.path / "logs" / "reverserd.log"
    files = ("--pidfile", str(pidfile))
    wanted = free_privileged_port() if privileged else 0
    started = run("start", "--port", str(wanted), "--user", "nobody", *files,
                  "--logfile", str(logfile))
    match = STARTED.fullmatch(started.stdout.rstrip("\n"))
    assert started.returncode == 0 and match, started
    first, port = int(match.group(1)), int(match.group(2))
    assert port == wanted or not privileged
    nobody = [NOBODY.pw_uid] * 4
    assert uids_of(first) == nobody
    sockets = listening_inodes(first, port)
    assert len(sockets) == 1

    result = run("reload", *files)
    reloaded = RELOADED.fullmatch(result.stdout)
    assert (result.returncode, result.stderr) == (0, "") and reloaded, result
    assert int(reloaded.group(1)) == first
    new = int(reloaded.group(2))
    assert new != first
    assert pidfile.read_text() == f"{new}\n"
    wait_until_dead(first)
    assert uids_of(new) == nobody
    assert listening_inodes(new, port) == sockets  # the very socket root bound: none anew
    assert listening_rows(port) == sockets
    assert exchange(port, "as nobody, é".encode()) == "é ,ydobon sa\n".encode()
    assert f"took over from pid {first}" in logfile.read_text()
    assert "cannot read" not in logfile.read_text()  # the record of options, read as nobody
    record = pidfile.with_name("reverserd.pid.options").stat()
    assert (record.st_uid, record.st_gid, stat.S_IMODE(record.st_mode)) == (0, NOBODY.pw_gid,
                                                                            0o640)
    status = run("status", "--json", *files)
    assert status.returncode == 0, status
    report = json.loads(status.stdout)
    assert (report["pid"], report["reloads"], report["addresses"]) == (
        new, 1, [f"127.0.0.1:{port}"])
    assert run("stop", *files).returncode == 0
    assert not is_alive(new)
    assert reverserd_processes_in(daemons.path, below=True, also=program) == []


@needs_root
def test_a_pidfile_directory_the_daemon_cannot_write_fails_reload_and_restart_at_once(
        reachable: DaemonDirectory) -> None:
    """Not after the whole start timeout, and never by stopping the daemon first."""
    daemons = reachable
    files = ("--pidfile", str(daemons.path / "run" / "reverserd.pid"))
    started = daemons.run("start", "--port", "0", "--user", "nobody", *files,
                          "--logfile", str(daemons.path / "logs" / "reverserd.log"))
    match = STARTED.fullmatch(started.stdout.rstrip("\n"))
    assert started.returncode == 0 and match, started
    pid, port = int(match.group(1)), int(match.group(2))
    (daemons.path / "run").chmod(0o555)
    try:
        refused = (f"directory {daemons.path / 'run'} is not writable by user nobody, "
                   "which the daemon runs as; it needs it for its pidfile and lock file")
        reloading = daemons.run("reload", *files, timeout=5)
        assert (reloading.returncode, reloading.stdout) == (1, ""), reloading
        assert reloading.stderr == f"reverserd: reload failed: {refused}; pid {pid} serves on\n"
        restarting = daemons.run("restart", *files, timeout=5)
        assert (restarting.returncode, restarting.stdout) == (1, ""), restarting
        assert restarting.stderr == f"reverserd: {refused}\n"
        assert is_alive(pid)
        assert exchange(port, b"untouched") == b"dehcuotnu\n"
    finally:
        (daemons.path / "run").chmod(0o755)
    assert daemons.run("stop", *files).returncode == 0


# --- a chroot -------------------------------------------------------------------------


@needs_root
def test_a_jailed_daemon_is_reloaded_from_outside_and_only_so(
        generations: DaemonDirectory) -> None:
    daemons = generations
    jail = daemons.path / "jail"
    rundir = jail / "run"
    rundir.mkdir(parents=True)
    os.chown(rundir, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(daemons.path, NOBODY.pw_uid, NOBODY.pw_gid)
    daemon = daemons.start("--chroot", "jail", "--rundir", "jail/run", "--user", "nobody")
    reload_socket = daemons.path / "reverserd.pid.reload"
    found = reload_socket.stat()
    assert stat.S_ISSOCK(found.st_mode) and found.st_uid == 0 and found.st_mode & 0o077 == 0

    with connect(daemon.port) as kept:
        kept.sendall(b"before\n")
        assert receive_exactly(kept, 7) == b"erofeb\n"
        old, new = reload(daemons)
        assert old == daemon.pid
        wait_until_dead(old)
        kept.sendall(b"after\n")  # served by the new generation alone now
        assert receive_exactly(kept, 6) == b"retfa\n"
        kept.sendall(b"quit\n")
        assert receive_until_closed(kept) == b""
    assert daemons.pidfile.read_text() == f"{new}\n"
    assert os.readlink(f"/proc/{new}/root") == str(jail)
    assert os.readlink(f"/proc/{new}/cwd") == str(rundir)
    assert uids_of(new) == [NOBODY.pw_uid] * 4
    assert f"took over 1 connection from pid {old}" in daemons.log()
    assert exchange(daemon.port, b"jailed") == b"deliaj\n"
    status = daemons.run("status")
    assert status.returncode == 0 and re.fullmatch(
        rf"reverserd running: pid {new}, listening on 127\.0\.0\.1:{daemon.port}, .*, "
        r"reloaded 1 time\n", status.stdout), status

    os.kill(new, signal.SIGHUP)
    refusal = re.compile(rf"ERROR reverserd\.\S+: reload failed: .*'reverserd reload'.*; "
                         rf"pid {new} serves on$", re.MULTILINE)
    wait_until(lambda: refusal.search(daemons.log()), "the jailed daemon to refuse SIGHUP")
    assert daemons.pidfile.read_text() == f"{new}\n"
    assert reverserd_processes_in(daemons.path, below=True) == [new]
    assert exchange(daemon.port, b"hangup") == b"pugnah\n"
    report = status_json(daemons)
    assert report["reloads"] == 1 and "'reverserd reload'" in report["last_reload_error"], report

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        broken = daemons.run("reload", "--listen", f"tcp:{taken_port}")
    assert (broken.returncode, broken.stdout) == (1, ""), broken
    *warnings, failure = broken.stderr.splitlines()
    # the --port 0 recorded at start is indeed ignored now that --listen is given
    assert set(warnings) <= {"reverserd: ignoring --port: --listen says where to listen"}, \
        broken.stderr
    assert re.fullmatch(rf"reverserd: reload failed: cannot listen on 127\.0\.0\.1:{taken_port}"
                        rf": address already in use; pid {new} serves on", failure), failure
    assert daemons.pidfile.read_text() == f"{new}\n"
    wait_until(lambda: reverserd_processes_in(daemons.path, below=True) == [new],
               "the broken generation to be gone", timeout=3)
    assert exchange(daemon.port, b"serves on") == b"no sevres\n"
    assert status_json(daemons)["reloads"] == 1

    same, last = reload(daemons)  # the listener given to the failed reload is forgotten
    assert same == new
    wait_until_dead(new)
    assert exchange(daemon.port, b"again") == b"niaga\n"
    assert status_json(daemons)["addresses"] == [f"127.0.0.1:{daemon.port}"]
    assert os.readlink(f"/proc/{last}/root") == str(jail)

    daemons.stop()
    wait_until_dead(last)
    assert not reload_socket.exists()
    assert reverserd_processes_in(daemons.path, below=True) == []
    assert port_is_free(daemon.port)


# --- systemd socket activation --------------------------------------------------------


def test_a_reload_keeps_serving_the_socket_systemd_passed(
        reverserd: Callable[..., ReverserdProcess], generations: DaemonDirectory) -> None:
    if not os.path.exists(SOCKET_ACTIVATE) and os.geteuid() != 0:
        pytest.skip("systemd-socket-activate is not installed")
    daemons = generations
    pidfile = daemons.path / "r.pid"
    port = free_port()
    command = [SOCKET_ACTIVATE, f"--listen=127.0.0.1:{port}"]
    for name in PASSED_ON:
        if name in os.environ:
            command += ["-E", name]
    before_default = listening_rows(DEFAULT_PORT)
    process = reverserd("run", "--pidfile", str(pidfile), command=[*command, REVERSERD])
    inherited = bound(process, port)
    assert exchange(port, b"activated") == b"detavitca\n"  # the first connection starts it
    process.wait_for_log(rf"listening on 127\.0\.0\.1:{port}$")
    before = status_json(daemons, "--pidfile", str(pidfile))
    assert (before["pid"], before["addresses"]) == (process.pid, [f"127.0.0.1:{port}"])

    old, new = reload(daemons, "--pidfile", str(pidfile))
    assert old == process.pid
    assert pidfile.read_text() == f"{new}\n"
    wait_until(lambda: not listening_inodes(old, port), "the first generation to let go")
    assert listening_inodes(new, port) == inherited  # systemd's socket, nothing bound anew
    assert listening_rows(port) == inherited
    assert exchange(port, b"reloaded") == b"dedaoler\n"
    after = status_json(daemons, "--pidfile", str(pidfile))
    assert (after["pid"], after["reloads"], after["addresses"]) == (new, 1, before["addresses"])
    assert listening_rows(DEFAULT_PORT) == before_default
    assert not [line for line in process.log if f":{DEFAULT_PORT}" in line]

    assert daemons.run("stop", "--pidfile", str(pidfile)).returncode == 0
    wait_until_dead(new)
    assert process.wait() == 0
    assert reverserd_processes_in(daemons.path, below=True) == []


# --- saved state ----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_the_saved_line_count_carries_on_across_a_reload(
        generations: DaemonDirectory, workers: list[str]) -> None:
    daemons = generations
    daemon = daemons.start("--save", *workers)
    send_lines(daemon.port, 3)
    assert lines_served(daemons) == 3
    reload(daemons)
    send_lines(daemon.port, 2)
    assert lines_served(daemons) == 5
    assert status_json(daemons)["lines_served"] == 5
    daemons.stop()
    assert saved_lines(daemons.path / STATE) == 5
    assert "5 lines served in all" in daemons.log()
    assert reverserd_processes_in(daemons.path, below=True) == []


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_every_line_answered_around_reloads_is_in_the_saved_count(
        generations: DaemonDirectory, workers: list[str]) -> None:
    """Clients keep connecting through two reloads: the old generation
    answers some of them after its successor took over, and those count too."""
    daemons = generations
    daemon = daemons.start("--save", *workers)
    with Traffic(lambda: connect(daemon.port, timeout=10), clients=3, seconds=30) as traffic:
        traffic.progress("before the first reload")
        for number in range(2):
            old, _ = reload(daemons)
            wait_until_dead(old)
            traffic.progress(f"after reload {number + 1}")
        answered = traffic.finish()
    assert (traffic.tally.refused, traffic.tally.reset, traffic.tally.problems) == (0, 0, [])
    assert lines_served(daemons) == answered
    daemons.stop()
    assert saved_lines(daemons.path / STATE) == answered


# --- a Unix socket --------------------------------------------------------------------


def test_a_unix_socket_served_by_workers_survives_reloads(generations: DaemonDirectory) -> None:
    daemons = generations
    path = daemons.path / "reverserd.sock"
    started = daemons.run("start", "--listen", f"unix:{path}", "--workers", "2")
    assert started.returncode == 0, started
    assert started.stdout.endswith(f"listening on unix:{path}\n"), started
    inode = path.stat().st_ino

    unix_client = functools.partial(connect_unix, path)

    with Traffic(unix_client, clients=3, seconds=30) as traffic:
        traffic.progress("before the first reload")
        for number in range(2):
            old, new = reload(daemons)
            assert stat.S_ISSOCK(path.stat().st_mode) and path.stat().st_ino == inode
            wait_until_dead(old)
            workers = workers_of(daemons)
            assert sorted(workers) == [1, 2] and all(
                parent_of(pid) == new for pid, _ in workers.values()), workers
            traffic.progress(f"after reload {number + 1}")
        traffic.finish()
    assert (traffic.tally.refused, traffic.tally.reset, traffic.tally.problems) == (0, 0, [])
    assert path.stat().st_ino == inode
    assert status_json(daemons)["addresses"] == [f"unix:{path}"]
    daemons.stop()
    assert not path.exists()
    assert reverserd_processes_in(daemons.path, below=True) == []

