"""``reverserd reload`` and SIGHUP on a detached daemon: a new generation takes the
same sockets, the pidfile and the open connections, and a broken one changes nothing."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import signal
import socket
import ssl
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.certificates import make_certificate
from tests.e2e.daemons import (
    ALREADY,
    STARTED,
    DaemonDirectory,
    is_alive,
    kill_if_reverserd,
    reverserd_processes_in,
    wait_until_dead,
)
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    connect,
    connect_unix,
    port_is_free,
    receive_exactly,
    receive_until_closed,
    wait_until,
)

ARROW = "\N{RIGHTWARDS ARROW}"
RELOADED = re.compile(rf"reverserd reloaded: pid (\d+) {ARROW} (\d+)\n")
UPTIME = r"up (\d+d)?(\d+h)?(\d+m)?\d+s"
GENERATION_STARTING = re.compile(r"INFO reverserd\.runner: reverserd \S+ starting: .*, pid (\d+),")
STARTED_ON = re.compile(r"^reverserd started: pid (\d+), listening on (.+)$", re.MULTILINE)

# Every character here is one grapheme, so reversing code points is what reverserd does.
TEXTS = ("héllo wörld", "日本語", "plain ascii", "Ünïcode ✓ 42")

GOOD_APPLICATION = (
    "from reverserd import Application, Reverser, TCPServer\n"
    "application = Application('good')\n"
    "TCPServer(0, Reverser).set_service_parent(application)\n"
)


@pytest.fixture
def generations(daemons: DaemonDirectory) -> Iterator[DaemonDirectory]:
    """``daemons``, whose teardown also kills every reverserd still running in
    the test's directory: generations a reload started (or failed to start)
    that neither ``start`` reported nor the pidfile names any more."""
    yield daemons
    for pid in reverserd_processes_in(daemons.path):
        kill_if_reverserd(pid)


def reload(daemons: DaemonDirectory) -> tuple[int, int]:
    """Run ``reverserd reload`` and require success; the old pid and the new one."""
    result = daemons.run("reload")
    match = RELOADED.fullmatch(result.stdout)
    assert (result.returncode, result.stderr) == (0, "") and match, result
    return int(match.group(1)), int(match.group(2))


def pidfile_pid(daemons: DaemonDirectory) -> int:
    return int(daemons.pidfile.read_text())


def status_json(daemons: DaemonDirectory) -> dict[str, Any]:
    result = daemons.run("status", "--json")
    assert result.returncode == 0, result
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def exchange(port: int, line: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(line + b"\nquit\n")
        return receive_until_closed(sock)


def line_for(sequence: int, tag: str) -> tuple[bytes, bytes]:
    """A line for a client to send (every third one ends in CRLF) and the reply
    it must get: reversed, ending as the line did."""
    text = f"{tag} {sequence} {TEXTS[sequence % len(TEXTS)]}"
    ending = b"\r\n" if sequence % 3 == 0 else b"\n"
    return text.encode() + ending, text[::-1].encode() + ending


def server_unread(port: int, client_port: int) -> int | None:
    """Bytes the kernel holds for the server side of the connection from
    ``client_port`` to ``port`` that reverserd has not read yet."""
    loopback = f"{struct.unpack('=I', socket.inet_aton('127.0.0.1'))[0]:08X}"  # as the kernel
    wanted = (f"{loopback}:{port:04X}", f"{loopback}:{client_port:04X}")
    for row in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if (fields[1], fields[2]) == wanted:
            return int(fields[4].split(":")[1], 16)
    return None


# --- the plain reload -------------------------------------------------------------------


def test_reload_hands_the_port_and_pidfile_to_a_new_generation(
    generations: DaemonDirectory,
) -> None:
    daemons = generations
    daemon = daemons.start()
    result = daemons.run("reload")
    match = RELOADED.fullmatch(result.stdout)
    assert (result.returncode, result.stderr) == (0, "") and match, result
    new = int(match.group(2))
    assert new != daemon.pid
    assert result.stdout == f"reverserd reloaded: pid {daemon.pid} {ARROW} {new}\n"
    assert daemons.pidfile.read_text() == f"{new}\n"
    wait_until_dead(daemon.pid)
    assert exchange(daemon.port, b"reloaded") == b"dedaoler\n"  # only the new one is left
    assert reverserd_processes_in(daemons.path) == [new]
    assert f"reloaded: pid {daemon.pid} {ARROW} {new}" in daemons.log()
    assert f"took over from pid {daemon.pid}" in daemons.log()
    status = daemons.run("status")
    assert status.returncode == 0
    assert re.fullmatch(rf"reverserd running: pid {new}, listening on 127\.0\.0\.1:{daemon.port}"
                        rf", {UPTIME}, \d+ lines? served, reloaded 1 time\n",
                        status.stdout), status
    report = status_json(daemons)
    assert (report["state"], report["pid"], report["reloads"], report["last_reload_error"]) == (
        "running", new, 1, None)
    assert report["addresses"] == [f"127.0.0.1:{daemon.port}"]

    old, newer = reload(daemons)
    assert old == new and newer not in (new, daemon.pid)
    assert daemons.pidfile.read_text() == f"{newer}\n"
    wait_until_dead(new)
    assert exchange(daemon.port, b"twice") == b"eciwt\n"
    assert status_json(daemons)["reloads"] == 2
    assert daemons.run("status").stdout.endswith(", reloaded 2 times\n")


def test_reload_without_a_daemon_says_not_running_and_exits_7(
    generations: DaemonDirectory,
) -> None:
    daemons = generations
    nothing = daemons.run("reload")
    assert (nothing.returncode, nothing.stdout) == (7, "reverserd not running\n"), nothing
    daemons.start()
    daemons.stop()
    stopped = daemons.run("reload")  # the options of the stopped daemon are still recorded
    assert (stopped.returncode, stopped.stdout) == (7, "reverserd not running\n"), stopped
    assert reverserd_processes_in(daemons.path) == []
    daemon = daemons.start()
    os.kill(daemon.pid, signal.SIGKILL)
    wait_until_dead(daemon.pid)
    stale = daemons.run("reload")
    assert (stale.returncode, stale.stdout) == (7, "reverserd not running\n"), stale
    assert reverserd_processes_in(daemons.path) == []
    assert port_is_free(daemon.port)


# --- signals --------------------------------------------------------------------------


def test_sighup_to_the_daemon_reloads_it(generations: DaemonDirectory) -> None:
    daemons = generations
    daemon = daemons.start()
    os.kill(daemon.pid, signal.SIGHUP)

    def successor() -> int | None:
        try:
            pid = pidfile_pid(daemons)
        except (OSError, ValueError):
            return None
        return pid if pid != daemon.pid and is_alive(pid) else None

    new = wait_until(successor, "the pidfile to name a new generation")
    wait_until_dead(daemon.pid)
    assert exchange(daemon.port, b"hangup") == b"pugnah\n"
    assert daemons.pidfile.read_text() == f"{new}\n"
    assert f"took over from pid {daemon.pid}" in daemons.log()
    report = status_json(daemons)
    assert (report["pid"], report["reloads"]) == (new, 1)
    assert reverserd_processes_in(daemons.path) == [new]


def test_sigusr1_only_reopens_the_log_of_a_reloaded_daemon(
    generations: DaemonDirectory,
) -> None:
    daemons = generations
    daemon = daemons.start()
    _, pid = reload(daemons)
    wait_until_dead(daemon.pid)
    rotated = daemons.path / "reverserd.log.1"
    daemons.logfile.rename(rotated)
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: daemons.logfile.exists() and "log file reopened" in daemons.log(),
               "the log file to be reopened")
    assert "received SIGUSR1, reopening the log file" in rotated.read_text()
    assert exchange(daemon.port, b"same pid") == b"dip emas\n"
    assert daemons.pidfile.read_text() == f"{pid}\n"
    assert reverserd_processes_in(daemons.path) == [pid]
    assert status_json(daemons)["reloads"] == 1
    for text in (rotated.read_text(), daemons.log()):
        assert "reloading" not in text.split("received SIGUSR1")[-1]


# --- no client notices ----------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """What the clients saw during the reloads, shared by their threads."""

    clients: int
    refused: int = 0
    reset: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    exchanges: list[int] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.exchanges = [0] * self.clients

    def served(self, client: int) -> None:
        with self.lock:
            self.exchanges[client] += 1

    def failed(self, client: int, error: BaseException | str) -> None:
        with self.lock:
            if isinstance(error, ConnectionRefusedError):
                self.refused += 1
            elif isinstance(error, ConnectionResetError | BrokenPipeError):
                self.reset += 1
            else:
                self.problems.append(f"client {client}: {error!r}")

    def snapshot(self) -> list[int]:
        with self.lock:
            if self.problems or self.refused or self.reset:
                raise AssertionError(f"refused {self.refused}, reset {self.reset}, "
                                     f"problems {self.problems[:5]}")
            return list(self.exchanges)


def one_connection_per_line(connect_to: Callable[[], socket.socket], client: int,
                            tally: Tally, done: threading.Event, deadline: float) -> None:
    """Connect, send one line and ``quit``, read to the end; again and again."""
    for sequence in range(1_000_000):
        if done.is_set() or time.monotonic() > deadline:
            return
        line, reply = line_for(sequence, f"one-shot {client}")
        try:
            with connect_to() as sock:
                sock.sendall(line + b"quit\n")
                answer = receive_until_closed(sock)
        except OSError as error:
            tally.failed(client, error)
            continue
        if answer != reply:
            tally.failed(client, f"sent {line!r}, got {answer!r}")
            return
        tally.served(client)


def pipelined(sock: socket.socket, client: int, burst: int, tally: Tally,
              done: threading.Event, deadline: float) -> None:
    """Through one connection: send ``burst`` lines, read their replies; again and again."""
    for round_number in range(1_000_000):
        if done.is_set() or time.monotonic() > deadline:
            return
        pairs = [line_for(round_number * burst + index, f"kept {client}")
                 for index in range(burst)]
        expected = b"".join(reply for _, reply in pairs)
        try:
            sock.sendall(b"".join(line for line, _ in pairs))
            answer = receive_exactly(sock, len(expected))
        except (OSError, AssertionError) as error:  # AssertionError: closed under us
            tally.failed(client, error)
            return
        if answer != expected:
            tally.failed(client, f"sent {pairs!r}, got {answer!r}")
            return
        tally.served(client)


class Clients:
    """Three clients connecting anew for every line and two keeping one
    connection each (one line at a time, and bursts of five), in threads."""

    ONE_SHOT = 3

    def __init__(self, connect_to: Callable[[], socket.socket], seconds: float) -> None:
        self.tally = Tally(self.ONE_SHOT + 2)
        self.done = threading.Event()
        deadline = time.monotonic() + seconds
        self.kept = [connect_to(), connect_to()]
        self.threads = [
            threading.Thread(target=one_connection_per_line,
                             args=(connect_to, client, self.tally, self.done, deadline))
            for client in range(self.ONE_SHOT)
        ] + [
            threading.Thread(target=pipelined,
                             args=(sock, self.ONE_SHOT + index, burst, self.tally, self.done,
                                   deadline))
            for index, (sock, burst) in enumerate(zip(self.kept, (1, 5)))
        ]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(DEADLINE)
        for sock in self.kept:
            sock.close()

    def progress(self, what: str) -> None:
        """Wait until every client has been served again since now."""
        before = self.tally.snapshot()

        def moved() -> bool:
            return all(now > then for now, then in zip(self.tally.snapshot(), before))

        wait_until(moved, f"every client to be served {what}", timeout=10)

    def finish(self) -> Tally:
        """Stop the threads; each kept connection is still the one it was, open to ``quit``."""
        self.done.set()
        for thread in self.threads:
            thread.join(DEADLINE)
            assert not thread.is_alive(), "a client thread did not finish"
        for sock in self.kept:
            sock.sendall(b"quit\n")
            assert receive_until_closed(sock) == b""
        return self.tally


def test_twenty_reloads_in_a_row_go_unnoticed_by_clients(generations: DaemonDirectory) -> None:
    daemons = generations
    daemon = daemons.start()
    pids = [daemon.pid]
    with Clients(lambda: connect(daemon.port, timeout=10), seconds=45) as clients:
        clients.progress("before the first reload")
        for number in range(20):
            old, new = reload(daemons)
            assert old == pids[-1] and new not in pids
            pids.append(new)
            clients.progress(f"after reload {number + 1}")
        for pid in pids[:-1]:
            wait_until_dead(pid)
        clients.progress("by the last generation alone")
        tally = clients.finish()
    assert (tally.refused, tally.reset, tally.problems) == (0, 0, [])
    assert all(count > 20 for count in tally.exchanges), tally.exchanges
    assert status_json(daemons)["reloads"] == 20
    assert reverserd_processes_in(daemons.path) == [pids[-1]]


@pytest.mark.parametrize("serving", [(), ("--loop", "asyncio", "--compact-after", "0")],
                         ids=["default", "compact"])
def test_a_line_split_across_a_reload_is_answered_whole(generations: DaemonDirectory,
                                                        serving: tuple[str, ...]) -> None:
    daemons = generations
    daemon = daemons.start(*serving)
    with connect(daemon.port) as sock:
        sock.sendall(b"first\n")
        assert receive_exactly(sock, 6) == b"tsrif\n"
        sock.sendall(b"abc")
        client_port = sock.getsockname()[1]
        wait_until(lambda: server_unread(daemon.port, client_port) == 0,
                   "reverserd to read the first half of the line")
        old, new = reload(daemons)
        wait_until_dead(old)
        wait_until(lambda: f"took over 1 connection from pid {old}" in daemons.log(),
                   "the new generation to take the connection over")
        sock.sendall(b"def\n")
        assert receive_exactly(sock, 7) == b"fedcba\n"
        sock.sendall(b"quit\n")
        assert receive_until_closed(sock) == b""
    assert pidfile_pid(daemons) == new


# --- a broken new generation ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Breakage:
    source: str  # the application file; {port} is a port the test keeps taken
    reason: str  # a pattern for the reason reload gives
    start_options: tuple[str, ...] = ()


BREAKAGES = {
    "syntax-error": Breakage("from reverserd import Application\napplication = (\n",
                             r".*/app\.py:2: syntax error: '\(' was never closed"),
    "start-service-raises": Breakage(
        "from reverserd import Application, Reverser, Service, TCPServer\n"
        "class Broken(Service):\n"
        "    async def start_service(self):\n"
        "        raise OSError('disk on fire')\n"
        "application = Application('good')\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
        "Broken().set_service_parent(application)\n",
        r"application good failed to start: OSError: disk on fire"),
    "port-taken": Breakage(
        GOOD_APPLICATION + "TCPServer({port}, Reverser).set_service_parent(application)\n",
        r"cannot listen on 127\.0\.0\.1:{port}: address already in use"),
    "start-hangs": Breakage(
        "import asyncio\n"
        "from reverserd import Application, Reverser, Service, TCPServer\n"
        "class Stuck(Service):\n"
        "    async def start_service(self):\n"
        "        await asyncio.Event().wait()\n"
        "application = Application('good')\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
        "Stuck().set_service_parent(application)\n",
        r"the new generation \(pid \d+\) was not serving after 2 s; killed it",
        ("--start-timeout", "2")),
    "load-hangs": Breakage(  # given up by the daemon, which reload waits for
        "import time\ntime.sleep(3600)\n",
        r"the new generation was not serving in time; killed it",
        ("--start-timeout", "1")),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES.values()), ids=list(BREAKAGES))
def test_a_broken_new_generation_changes_nothing(generations: DaemonDirectory,
                                                 breakage: Breakage) -> None:
    daemons = generations
    app = daemons.path / "app.py"
    app.write_text(GOOD_APPLICATION)
    started = daemons.run("start", "-y", "app.py", *breakage.start_options)
    match = STARTED.fullmatch(started.stdout.rstrip("\n"))
    assert started.returncode == 0 and match, started
    old, port = int(match.group(1)), int(match.group(2))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        app.write_text(breakage.source.replace("{port}", str(taken_port)))
        result = daemons.run("reload")
    assert (result.returncode, result.stdout) == (1, ""), result
    reason = breakage.reason.replace("{port}", str(taken_port))
    assert re.fullmatch(rf"reverserd: reload failed: {reason}; pid {old} serves on\n",
                        result.stderr), result.stderr
    assert result.stderr.count("\n") == 1
    assert exchange(port, "still the old one, héllo".encode()) == \
        "olléh ,eno dlo eht llits\n".encode()
    assert daemons.pidfile.read_text() == f"{old}\n"
    wait_until(lambda: reverserd_processes_in(daemons.path) == [old],
               "the broken generation to be gone", timeout=3)
    report = status_json(daemons)
    assert (report["pid"], report["reloads"]) == (old, 0)
    assert report["addresses"] == [f"127.0.0.1:{port}"]
    assert re.fullmatch(reason, report["last_reload_error"]), report

    app.write_text(GOOD_APPLICATION)
    same, new = reload(daemons)
    assert same == old and new != old
    wait_until_dead(old)
    assert exchange(port, b"repaired") == b"deriaper\n"
    report = status_json(daemons)
    assert (report["pid"], report["reloads"], report["last_reload_error"]) == (new, 1, None)


def versioned_application(version: str) -> str:
    """An application whose handler says which version of it answers."""
    return (
        "from reverserd import Application, LineHandler, TCPServer\n"
        "class Versioned(LineHandler):\n"
        "    def line_received(self, line):\n"
        f"        return b'{version} ' + line\n"
        "application = Application('versioned')\n"
        "TCPServer(0, Versioned).set_service_parent(application)\n"
    )


def test_a_reload_runs_the_application_file_as_it_is_now(generations: DaemonDirectory) -> None:
    """New code, on the same port, for new clients and for a connection kept open."""
    daemons = generations
    app = daemons.path / "app.py"
    app.write_text(versioned_application("v1"))
    started = daemons.run("start", "-y", "app.py")
    match = STARTED.fullmatch(started.stdout.rstrip("\n"))
    assert started.returncode == 0 and match, started
    port = int(match.group(2))
    with connect(port) as kept:
        kept.sendall(b"before\n")
        assert receive_exactly(kept, 10) == b"v1 before\n"
        app.write_text(versioned_application("v2"))
        old, _ = reload(daemons)
        wait_until_dead(old)
        assert exchange(port, b"new") == b"v2 new\n"
        kept.sendall(b"after\n")
        assert receive_exactly(kept, 9) == b"v2 after\n"


SLOW_TO_LOAD = (
    "import pathlib, time\n"
    "from reverserd import Application, Reverser, listen\n"
    "if pathlib.Path('slow').exists():\n"
    "    time.sleep(1)  # a new generation still loading when the next reload comes\n"
    "application = Application('slow')\n"
    "listen('tcp:0', Reverser).set_service_parent(application)\n"
)


def test_a_reload_during_another_waits_for_it_then_applies_its_own_options(
        generations: DaemonDirectory) -> None:
    daemons = generations
    (daemons.path / "app.py").write_text(SLOW_TO_LOAD)
    started = daemons.run("start", "-y", "app.py")
    match = STARTED.fullmatch(started.stdout.rstrip("\n"))
    assert started.returncode == 0 and match, started
    (daemons.path / "slow").touch()
    first = subprocess.Popen([REVERSERD, "reload"], cwd=daemons.path, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "received SIGHUP, reloading" in daemons.log(), "the first reload")
        second = daemons.run("reload", "--logfile", "second.log")
        out, err = first.communicate(timeout=DEADLINE)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    earlier = RELOADED.fullmatch(out)
    assert first.returncode == 0 and earlier and not err, (out, err)
    later = RELOADED.fullmatch(second.stdout)
    assert second.returncode == 0 and later, second
    assert later.group(1) == earlier.group(2)  # the generation the first reload started
    assert f"took over from pid {earlier.group(2)}" in (daemons.path / "second.log").read_text()
    assert daemons.pidfile.read_text() == f"{later.group(2)}\n"


# --- the pidfile, start and stop during reloads -----------------------------------------


def test_the_pidfile_and_status_never_lie_during_reloads(generations: DaemonDirectory) -> None:
    daemons = generations
    daemon = daemons.start()
    outcomes: list[tuple[int, int] | BaseException] = []
    lies: list[str] = []
    done = threading.Event()

    def reload_five_times() -> None:
        try:
            for _ in range(5):
                outcomes.append(reload(daemons))
        except BaseException as error:  # reported by the test, not lost in the thread
            outcomes.append(error)
        finally:
            done.set()

    def watch_pidfile() -> None:
        """Read the pidfile as fast as possible: always there, naming a live pid."""
        deadline = time.monotonic() + 60
        while not done.wait(0.001) and time.monotonic() < deadline:
            try:
                pid = pidfile_pid(daemons)
            except (OSError, ValueError) as error:
                lies.append(f"pidfile unreadable: {error!r}")
                return
            if not is_alive(pid) and pidfile_pid(daemons) == pid:
                lies.append(f"pidfile names pid {pid}, which is gone")
                return

    reloader = threading.Thread(target=reload_five_times)
    watcher = threading.Thread(target=watch_pidfile)
    statuses = starts = 0
    reloader.start()
    watcher.start()
    try:
        deadline = time.monotonic() + 45
        while not done.is_set() and time.monotonic() < deadline and not lies:
            status = daemons.run("status")
            assert status.returncode == 0 and status.stdout.startswith(
                "reverserd running: pid "), status
            statuses += 1
            if statuses % 3 == 0:
                start = daemons.run("start", "--port", "0")
                assert (start.returncode, start.stderr) == (0, ""), start
                assert ALREADY.fullmatch(start.stdout.rstrip("\n")), start
                starts += 1
    finally:
        done.set()
        reloader.join(60)
        watcher.join(DEADLINE)
    assert lies == []
    assert len(outcomes) == 5 and all(isinstance(o, tuple) for o in outcomes), outcomes
    assert statuses >= 5 and starts >= 1, (statuses, starts)
    pids = [daemon.pid, *(new for _, new in outcomes)]  # type: ignore[misc]
    for pid in pids[:-1]:
        wait_until_dead(pid)
    assert reverserd_processes_in(daemons.path) == [pids[-1]]
    stop = daemons.stop()
    assert stop.stdout == f"reverserd stopped: pid {pids[-1]}\n"
    assert reverserd_processes_in(daemons.path) == []
    assert not daemons.pidfile.exists()
    assert port_is_free(daemon.port)


def test_stop_during_a_reload_leaves_nothing_running(generations: DaemonDirectory) -> None:
    daemons = generations
    (daemons.path / "app.py").write_text(
        "import asyncio\n"
        "from reverserd import Application, Reverser, Service, TCPServer\n"
        "class Slow(Service):\n"
        "    async def start_service(self):\n"
        "        await super().start_service()\n"
        "        await asyncio.sleep(1.5)\n"
        "    async def stop_service(self):\n"
        "        await asyncio.sleep(1)  # the old generation, still there as reload looks\n"
        "        await super().stop_service()\n"
        "application = Application('slow')\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
        "Slow().set_service_parent(application)\n"
    )
    started = daemons.run("start", "-y", "app.py", "--start-timeout", "10")
    match = STARTED.fullmatch(started.stdout.rstrip("\n"))
    assert started.returncode == 0 and match, started
    old, port = int(match.group(1)), int(match.group(2))
    reloading = subprocess.Popen([REVERSERD, "reload"], cwd=daemons.path, text=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
    try:
        def successor() -> int | None:
            pids = [int(pid) for pid in GENERATION_STARTING.findall(daemons.log())]
            return pids[1] if len(pids) > 1 else None

        new = wait_until(successor, "the new generation to start starting")
        assert isinstance(new, int) and is_alive(new) and daemons.pidfile.read_text() == f"{old}\n"
        stop = daemons.run("stop")
        assert stop.returncode == 0, stop
        assert stop.stdout.startswith(f"reverserd stopped: pid {old}"), stop
        wait_until(lambda: set(reverserd_processes_in(daemons.path)) <= {reloading.pid},
                   "no daemon left", timeout=0.5)  # the slow start would end by itself later
        assert not is_alive(new)
        assert not daemons.pidfile.exists()
        assert port_is_free(port)
        try:  # the daemon it asked is gone: nothing is left to wait for
            _, reload_error = reloading.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            raise AssertionError("reload still waits 5 s after the daemon stopped") from None
    finally:
        if reloading.poll() is None:
            reloading.kill()
            reloading.communicate()
    assert reloading.returncode == 1 and re.fullmatch(r"reverserd: .+\n", reload_error), (
        reloading.returncode, reload_error)
    assert "serves on" not in reload_error, reload_error
    assert reverserd_processes_in(daemons.path) == []


# --- other listeners ------------------------------------------------------------------


def test_a_unix_socket_listener_survives_reloads(generations: DaemonDirectory) -> None:
    daemons = generations
    path = daemons.path / "reverserd.sock"
    started = daemons.run("start", "--listen", f"unix:{path}")
    match = STARTED_ON.fullmatch(started.stdout.rstrip("\n"))
    assert started.returncode == 0 and match and match.group(2) == f"unix:{path}", started
    pids = [int(match.group(1))]
    inode = path.stat().st_ino

    unix_client = functools.partial(connect_unix, path)

    with Clients(unix_client, seconds=30) as clients:
        clients.progress("before the first reload")
        for number in range(3):
            old, new = reload(daemons)
            assert old == pids[-1]
            pids.append(new)
            assert stat.S_ISSOCK(path.stat().st_mode) and path.stat().st_ino == inode
            clients.progress(f"after reload {number + 1}")
        for pid in pids[:-1]:
            wait_until_dead(pid)
        clients.progress("by the last generation alone")
        tally = clients.finish()
    assert (tally.refused, tally.reset, tally.problems) == (0, 0, [])
    assert path.stat().st_ino == inode
    daemons.stop()
    assert not path.exists()
    assert reverserd_processes_in(daemons.path) == []


def test_a_reload_applies_a_unix_socket_s_new_mode_and_removes_a_dropped_one(
        generations: DaemonDirectory) -> None:
    daemons = generations
    kept, dropped = daemons.path / "kept.sock", daemons.path / "dropped.sock"
    started = daemons.run("start", "--listen", f"unix:{kept}", "--listen", f"unix:{dropped}")
    assert started.returncode == 0, started
    assert stat.S_IMODE(kept.stat().st_mode) == 0o660
    inode = kept.stat().st_ino
    result = daemons.run("reload", "--listen", f"unix:{kept}:mode=600")
    match = RELOADED.fullmatch(result.stdout)
    assert result.returncode == 0 and match, result
    wait_until_dead(int(match.group(1)))
    assert daemons.pidfile.read_text() == f"{match.group(2)}\n"
    assert kept.stat().st_ino == inode and stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert not dropped.exists()  # the old generation, which alone served it, removed it
    with connect_unix(kept) as sock:
        sock.sendall(b"still here\nquit\n")
        assert receive_until_closed(sock) == b"ereh llits\n"
    daemons.stop()
    assert not kept.exists()


def test_a_reload_serves_the_replaced_tls_certificate(generations: DaemonDirectory) -> None:
    daemons = generations
    first = make_certificate(daemons.path / "first")
    second = make_certificate(daemons.path / "second")
    key, cert = daemons.path / "key.pem", daemons.path / "cert.pem"
    key.write_bytes(first.key.read_bytes())
    cert.write_bytes(first.cert.read_bytes())
    started = daemons.run("start", "--listen", f"ssl:0:privateKey={key}:certKey={cert}")
    match = STARTED_ON.fullmatch(started.stdout.rstrip("\n"))
    assert started.returncode == 0 and match, started
    port = int(re.fullmatch(r"tls 127\.0\.0\.1:(\d+)", match.group(2)).group(1))  # type: ignore[union-attr]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(first.cert)
    context.load_verify_locations(second.cert)

    def served_certificate() -> bytes:
        """The certificate a new client is shown, after one line goes through."""
        raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall("tls ✓\nquit\n".encode())
            assert receive_until_closed(sock) == "✓ slt\n".encode()
            der = sock.getpeercert(binary_form=True)
        assert der is not None
        return der

    def der(path: pathlib.Path) -> bytes:
        return ssl.PEM_cert_to_DER_cert(path.read_text())

    assert der(first.cert) != der(second.cert)
    assert served_certificate() == der(first.cert)
    key.write_bytes(second.key.read_bytes())
    cert.write_bytes(second.cert.read_bytes())
    assert served_certificate() == der(first.cert)  # read again only by a new generation
    old, new = reload(daemons)
    wait_until_dead(old)
    assert served_certificate() == der(second.cert)
    status = daemons.run("status")
    assert f"pid {new}, listening on tls 127.0.0.1:{port}, " in status.stdout, status
