"""reverserd as a runit service: scripts/runit under a real runsv, driven with sv, logged by svlogd.

The shipped directory is copied into tmp_path unchanged; only its ./conf is written, which the
run files read (see service_dirs): REVERSERD becomes the virtualenv's reverserd instead of
/usr/local/bin/reverserd, REVERSERD_OPTIONS becomes --port 0 (any free port, read back from the
log) and REVERSERD_LOGDIR a directory in tmp_path instead of /var/log/reverserd. One test adds
a ./finish to the copy (runsv runs it with the exit code of ./run), because sv status never says
how the service's process exited.

The reload tests hold the pid runsv watches to its word: after ``sv hup`` a new generation of
reverserd serves, while the first process stays as the one runsv knows (the keeper). The
functions that follow a reload through the log and the process tree are shared with the s6 and
supervisord tests, which check the same under their own supervisor.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import signal
import socket
import typing
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.service_dirs import (
    SCRIPTS,
    Process,
    RunitService,
    check_run_file,
    command_line,
    exchange,
    process_stat,
    processes_in,
    refuses,
)
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    connect,
    port_is_free,
    receive_exactly,
    receive_until_closed,
    wait_until,
)

SVLOGD_LINE = re.compile(r"(\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d\.\d{5}) (.*)")
SHORT_RECORD = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) reverserd[\w.]*: .+")
ISO_8601 = re.compile(r"\d{4}-\d\d-\d\d[T _]\d\d:\d\d")
# What generations log as they reload, whichever of reverserd's loggers says it.
RELOADED = re.compile(r" reverserd[\w.]*: reloaded: pid (\d+) \N{RIGHTWARDS ARROW} (\d+); ")
LAUNCHED = re.compile(r" reverserd[\w.]*: new generation starting \(launcher pid (\d+)\)$")
CARRIED = r" reverserd[\w.]*: took over (\d+) connections? from pid {}$"
TOOK_OVER = re.compile(r" reverserd[\w.]*: took over from pid (\d+)$")
KEEPING = re.compile(r" reverserd[\w.]*: serving from pid (\d+) on; "
                     r"this process stays to pass signals on$")
TROUBLE = re.compile(r"\b(?:WARNING|ERROR|CRITICAL) reverserd")

Log = Callable[[], list[str]]


@pytest.fixture
def runit(tmp_path: pathlib.Path) -> Iterator[RunitService]:
    """A copy of scripts/runit; the test starts runsv, and teardown ends it by its pid."""
    service = RunitService(tmp_path)
    try:
        yield service
    finally:
        service.end()


def ask(sock: socket.socket, line: bytes) -> bytes:
    """One line over a connection that stays open, and its reply."""
    sock.sendall(line)
    return receive_exactly(sock, len(line))


def served_and_closed(port: int) -> bool:
    """A new connection is answered, and once the client is done the server closes its end:
    a connection still closing would otherwise be counted among those a reload carries."""
    with connect(port) as sock:
        reply = ask(sock, b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        return reply == b"olleh\n" and receive_until_closed(sock) == b""


def process_tree() -> dict[int, int]:
    """The parent of every process there is."""
    parents = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone while listed
            continue
        parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, zombies included: a child nobody collected is left over."""
    parents = process_tree()
    below: set[int] = set()
    frontier = [pid]
    while frontier:  # bounded: each pid joins ``below`` once
        parent = frontier.pop()
        children = {child for child, of in parents.items() if of == parent} - below
        below |= children
        frontier.extend(children)
    return below


def vanished(process: Process) -> bool:
    """Gone from /proc altogether; a zombie is still there (nobody collected its status)."""
    stat = process_stat(process.pid)
    return stat is None or stat[1] != process.started


def wait_for_handover(log: Log, old: int, connections: int) -> int:
    """Wait until generation ``old`` logs that it handed over and the new one that it took
    over from it, with the connections open then; the new generation's pid."""
    carried = re.compile(CARRIED.format(old))

    def handed_over() -> tuple[int, int] | None:
        lines = log()
        new = next((int(match.group(2)) for match in map(RELOADED.search, lines)
                    if match and int(match.group(1)) == old), None)
        took = any(match and int(match.group(1)) == old for match in map(TOOK_OVER.search, lines))
        count = next((int(match.group(1)) for match in map(carried.search, lines) if match), None)
        return (new, count) if new is not None and took and count is not None else None

    try:
        found = wait_until(handed_over, f"pid {old} to hand over to a new generation")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}; the log: {log()}") from None
    new, count = typing.cast(tuple[int, int], found)
    assert count == connections, [line for line in log() if "took over" in line]
    return new


class Generations:
    """The processes of one supervised reverserd through its reloads, as its log and /proc
    tell: the keeper (the process the supervisor started and watches), every generation that
    served after it, and every process that started one."""

    def __init__(self, log: Log, keeper: int, track: Callable[[int], None]) -> None:
        self.log = log
        self.track = track
        first = Process.of(keeper)
        assert first is not None, f"pid {keeper} is gone"
        self.keeper = first
        self.serving = first
        self.seen = {keeper: first}

    def reload(self, command: Callable[[], None], connections: int = 0) -> Process:
        """Run the supervisor's reload command; once the new generation serves, return it."""
        old = self.serving.pid
        command()
        new = wait_for_handover(self.log, old, connections)
        self.note(new)
        for match in map(LAUNCHED.search, self.log()):
            if match:
                self.note(int(match.group(1)))
        assert new in self.seen and self.seen[new].alive(), f"pid {new} is not running"
        self.serving = self.seen[new]
        return self.serving

    def keeper_passes_signals_to(self, pid: int) -> None:
        """Wait for the keeper's word that it stays, passing signals on to ``pid``."""
        wait_until(lambda: any(match and int(match.group(1)) == pid
                               for match in map(KEEPING.search, self.log())),
                   f"the keeper to log that pid {pid} serves")

    def note(self, pid: int) -> None:
        self.track(pid)  # for teardown, should the test fail before they end
        process = Process.of(pid)
        if process is not None:
            self.seen.setdefault(pid, process)

    def only_the_serving_one_below_the_keeper(self) -> None:
        """Once a reload is done, nothing is left under the keeper but the generation serving
        now: the one before it has ended and was collected, and the new one (started by the
        one before, whatever its parent was) is now the keeper's child."""
        expected = {self.serving.pid}

        def settled() -> bool:
            return descendants(self.keeper.pid) == expected

        try:
            wait_until(settled, f"only pid {self.serving.pid} below the keeper")
        except AssertionError:
            left = {pid: command_line(pid) for pid in descendants(self.keeper.pid)}
            raise AssertionError(f"below keeper {self.keeper.pid}: {left}; "
                                 f"expected only {self.serving.pid}") from None
        assert process_tree().get(self.serving.pid) == self.keeper.pid

    def all_ended(self, port: int) -> None:
        """After the supervisor's stop: not one process of any generation is left, the port
        is free, and nothing went wrong on the way."""
        def left() -> dict[int, list[str]]:
            return {process.pid: command_line(process.pid)
                    for process in self.seen.values() if not vanished(process)}

        try:
            wait_until(lambda: not left(), f"every one of {sorted(self.seen)} to end")
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}; still there: {left()}") from None
        assert port_is_free(port)
        assert not [line for line in self.log() if TROUBLE.search(line)]


def reload_and_check(generations: Generations, reload: Callable[[], None], port: int,
                     supervisor_view: Callable[[], object]) -> None:
    """Reload twice with one connection open across both. After each reload: the supervisor
    sees the very same process (``supervisor_view`` is unchanged: same pid, never
    restarted), the keeper said so after the first, the old connection still gets its
    answers, a new one is served, and below the keeper only the new generation is left."""
    before = supervisor_view()
    with connect(port) as held:
        assert ask(held, b"before\n") == b"erofeb\n"
        for reload_number in (1, 2):
            generation = generations.reload(reload, connections=1)
            if reload_number == 1:
                generations.keeper_passes_signals_to(generation.pid)
            assert ask(held, b"after %d\n" % reload_number) == b"%d retfa\n" % reload_number
            assert served_and_closed(port)
            generations.only_the_serving_one_below_the_keeper()
            assert supervisor_view() == before, f"after reload {reload_number}"
            assert generations.keeper.alive() and generation.alive()
    assert len({process.pid for process in generations.seen.values()}) >= 3


@pytest.mark.parametrize("name", ["run", "log/run"])
def test_the_shipped_run_files_are_executable_posix_sh(name: str) -> None:
    check_run_file(SCRIPTS / "runit" / name)


def test_sv_status_shows_the_server_itself(runit: RunitService) -> None:
    """The run file execs reverserd, so the pid runsv watches (and signals) is the server's."""
    runit.start()
    pid = runit.serving()
    arguments = command_line(pid)
    assert REVERSERD in arguments
    assert arguments[arguments.index(REVERSERD) + 1:] == [
        "run", "--log-format", "short", "--port", "0"]
    assert exchange(runit.port_of(pid)) == b"olleh\n"


def test_sv_restart_brings_a_new_server_after_a_graceful_stop(runit: RunitService) -> None:
    runit.start()
    pid = runit.serving()
    old = Process.of(pid)
    assert runit.sv("restart").returncode == 0
    new = runit.serving(other_than=pid)
    assert old is not None and not old.alive()
    wait_until(lambda: runit.stopped_gracefully(pid), f"pid {pid} to log a graceful stop")
    assert exchange(runit.port_of(new)) == b"olleh\n"


def test_sv_down_stops_it_gracefully_and_sv_up_starts_it_again(runit: RunitService) -> None:
    runit.start()
    pid = runit.serving()
    port = runit.port_of(pid)
    assert runit.sv("down").returncode == 0
    wait_until(lambda: re.fullmatch(rf"down: {re.escape(str(runit.path))}: \d+s, normally up",
                                    runit.status()),
               "sv status to show the service down")
    wait_until(lambda: runit.stopped_gracefully(pid), f"pid {pid} to log a graceful stop")
    assert refuses(port)
    assert runit.sv("up").returncode == 0
    new = runit.serving(other_than=pid)
    assert exchange(runit.port_of(new)) == b"olleh\n"


def test_sv_term_stops_it_gracefully_and_runsv_starts_it_again(runit: RunitService) -> None:
    """The service is still wanted up, so runsv restarts what SIGTERM stopped."""
    runit.start()
    pid = runit.serving()
    assert runit.sv("term").returncode == 0
    new = runit.serving(other_than=pid)
    wait_until(lambda: runit.stopped_gracefully(pid), f"pid {pid} to log a graceful stop")
    assert exchange(runit.port_of(new)) == b"olleh\n"


def test_a_killed_server_is_started_again(runit: RunitService) -> None:
    runit.start()
    pid = runit.serving()
    os.kill(pid, signal.SIGKILL)
    new = runit.serving(other_than=pid)
    assert exchange(runit.port_of(new)) == b"olleh\n"
    assert not any("stopped" in line for line in runit.run_of(pid))


def test_svlogd_stamps_each_line_once(runit: RunitService) -> None:
    """reverserd leaves its own timestamp out (--log-format short): svlogd's is the only one."""
    assert not runit.logdir.exists()  # log/run makes it
    runit.start()
    pid = runit.serving()
    assert exchange(runit.port_of(pid)) == b"olleh\n"
    assert runit.sv("restart").returncode == 0
    new = runit.serving(other_than=pid)
    wait_until(lambda: runit.stopped_gracefully(pid), f"pid {pid} to log a graceful stop")
    lines = runit.log()
    assert len(runit.run_of(pid)) >= 4 and runit.run_of(new)
    for line in lines:
        stamped = SVLOGD_LINE.fullmatch(line)
        assert stamped, line
        assert SHORT_RECORD.fullmatch(stamped.group(2)), line
        assert not ISO_8601.search(stamped.group(2)), line


def test_what_reverserd_writes_to_stderr_reaches_the_log(runit: RunitService) -> None:
    """The run file joins stderr to stdout: a refused option is read in the log, not lost."""
    runit.write_conf("--port 0 --no-such-option")
    runit.start()

    def refusal() -> str | None:
        for line in runit.log():
            if "reverserd" in line and line.endswith("--no-such-option"):
                return line
        return None

    line: str = wait_until(refusal, "the refusal in the log")  # type: ignore[assignment]
    assert SVLOGD_LINE.fullmatch(line), line


def test_sv_exit_ends_reverserd_gracefully_and_runsv_with_it(runit: RunitService) -> None:
    """What runsvdir does when the service is removed: nothing of it may stay behind."""
    runit.start()
    pid = runit.serving()
    server = Process.of(pid)
    assert server is not None
    assert runit.sv("exit").returncode == 0
    (supervisor,) = runit.children
    assert supervisor.wait(DEADLINE) == 0
    assert not server.alive()
    assert runit.stopped_gracefully(pid)
    assert not processes_in(runit.root)


def runit_view(runit: RunitService) -> tuple[int | None, str, bytes]:
    """What runsv knows of the service: the pid sv status shows, supervise/pid, and the
    binary supervise/status, whose first 12 bytes stamp the start that sv status counts the
    uptime from (a restart restamps it)."""
    supervise = runit.path / "supervise"
    return (runit.server(), supervise.joinpath("pid").read_text().strip(),
            supervise.joinpath("status").read_bytes())


def test_sv_hup_reloads_behind_the_pid_runsv_watches(runit: RunitService) -> None:
    runit.start()
    keeper = runit.serving()
    generations = Generations(runit.log, keeper, runit.track)
    reload_and_check(generations, lambda: sv_ok(runit, "hup"), runit.port_of(keeper),
                     lambda: runit_view(runit))
    assert runit.status().startswith(f"run: {runit.path}: (pid {keeper}) ")


def sv_ok(runit: RunitService, command: str) -> None:
    result = runit.sv(command)
    assert result.returncode == 0, result


def test_sv_down_after_reloads_ends_the_keeper_and_every_generation(
        runit: RunitService) -> None:
    """runsv passes ./finish the exit code of the process it watched: the keeper's, which
    is the exit code of the generation serving last."""
    finished = runit.root / "finished"
    finish = runit.path / "finish"
    finish.write_text(f'#!/bin/sh\necho "$1 $2" >{shlex.quote(str(finished))}\n')
    finish.chmod(0o755)
    runit.start()
    keeper = runit.serving()
    port = runit.port_of(keeper)
    generations = Generations(runit.log, keeper, runit.track)
    for _ in range(2):
        generations.reload(lambda: sv_ok(runit, "hup"))
    last = generations.serving.pid
    sv_ok(runit, "down")
    wait_until(lambda: re.fullmatch(rf"down: {re.escape(str(runit.path))}: \d+s, normally up",
                                    runit.status()),
               "sv status to show the service down")
    wait_until(finished.exists, "runsv to run ./finish")
    assert finished.read_text() == "0 0\n"  # exit code 0, not killed by a signal
    assert runit.stopped_gracefully(last)
    generations.all_ended(port)
