"""``--workers N``: worker processes under one main process, seen from outside."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import textwrap
import threading
import time

import pytest

from reverserd.pidfile import holds_open
from tests.e2e.daemons import Daemon, DaemonDirectory, is_alive, process_state, wait_until_dead
from tests.e2e.support import DEADLINE, connect, receive_until_closed, wait_until

WORKER_LINE = re.compile(r"^reverserd worker (\d+): pid (\d+), up [^,]+"
                         r"(?:, restarted (\d+) times?)?(?:, last: .*)?$", re.MULTILINE)


def workers_of(daemons: DaemonDirectory) -> dict[int, tuple[int, int]]:
    """``status``'s worker lines: number -> (pid, restarts)."""
    result = daemons.run("status")
    assert result.returncode == 0, result
    return {int(number): (int(pid), int(restarts or 0))
            for number, pid, restarts in WORKER_LINE.findall(result.stdout)}


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[1])


def exchange(port: int, line: bytes = b"abc") -> bytes:
    with connect(port) as sock:
        sock.sendall(line + b"\nquit\n")
        return receive_until_closed(sock)


def test_status_lists_the_workers_each_a_named_child_serving_the_port(
        daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2")
    workers = workers_of(daemons)
    assert sorted(workers) == [1, 2]
    for number, (pid, restarts) in workers.items():
        assert restarts == 0
        assert parent_of(pid) == daemon.pid
        with open(f"/proc/{pid}/comm") as comm:
            assert comm.read().strip() == f"reverserd-{number}"
    for _ in range(20):
        assert exchange(daemon.port) == b"cba\n"
    assert re.search(r"INFO reverserd\.workers: 2 workers serving: pids \d+, \d+$",
                     daemons.log(), re.MULTILINE)


def test_status_adds_up_the_lines_every_worker_served(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2")
    for _ in range(30):
        assert exchange(daemon.port) == b"cba\n"
    result = daemons.run("status")
    assert ", 30 lines served" in result.stdout, result


def test_workers_auto_starts_one_per_cpu(daemons: DaemonDirectory) -> None:
    daemons.start("--workers", "auto")
    assert len(workers_of(daemons)) == len(os.sched_getaffinity(0))


def keep_connecting(port: int, stop: threading.Event, outcomes: list[str]) -> None:
    """One connection after another, each a full exchange, until ``stop``."""
    deadline = time.monotonic() + DEADLINE
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            reply = exchange(port, b"still there")
        except OSError as error:
            outcomes.append(errno.errorcode.get(error.errno or 0, repr(error)))
        else:
            outcomes.append("ok" if reply == b"ereht llits\n" else f"wrong reply {reply!r}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_a_killed_worker_is_replaced_while_the_port_keeps_serving(
        daemons: DaemonDirectory, signum: signal.Signals) -> None:
    """SIGTERM lets the worker finish what it holds: not one connection fails.
    SIGKILL can only lose the connections that worker was serving at that
    instant (at most one per client here); none is ever refused."""
    daemon = daemons.start("--workers", "2")
    victim, _ = workers_of(daemons)[1]
    stop = threading.Event()
    outcomes: list[str] = []
    clients = [threading.Thread(target=keep_connecting, args=(daemon.port, stop, outcomes))
               for _ in range(4)]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: len(outcomes) > 200, "traffic before the kill")
        os.kill(victim, signum)
        wait_until_dead(victim)
        wait_until(lambda: workers_of(daemons).get(1, (victim, 0))[0] != victim,
                   "a new worker 1")
        before = len(outcomes)
        wait_until(lambda: len(outcomes) > before + 200, "traffic after the restart")
    finally:
        stop.set()
        for client in clients:
            client.join()
    failed = [outcome for outcome in outcomes if outcome != "ok"]
    if signum == signal.SIGTERM:
        assert failed == []
    else:
        assert len(failed) <= len(clients) and "ECONNREFUSED" not in failed, failed
    replacement, restarts = workers_of(daemons)[1]
    assert restarts == 1 and parent_of(replacement) == daemon.pid
    how = "was killed by SIGKILL" if signum == signal.SIGKILL else "exited with status 0"
    assert re.search(rf"WARNING reverserd\.workers: worker 1 \(pid {victim}\) {how}; "
                     r"restarting it in 0\.0 s$", daemons.log(), re.MULTILINE)


def test_stop_stops_every_worker_gracefully_and_frees_the_lock(
        daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2")
    pids = [pid for pid, _ in workers_of(daemons).values()]
    with connect(daemon.port) as waiting:
        waiting.sendall(b"answered before the stop\n")
        assert waiting.recv(100) == b"pots eht erofeb derewsna\n"
        result = daemons.stop()
        assert result.stdout == f"reverserd stopped: pid {daemon.pid}\n"
        assert receive_until_closed(waiting) == b""
    for pid in pids:
        assert process_state(pid) in (None, "Z")
    assert not is_alive(daemon.pid)
    assert daemons.run("status").returncode == 3
    log = daemons.log()
    assert "INFO reverserd.workers: received SIGTERM, stopping 2 workers" in log
    assert len(re.findall(r"INFO reverserd\.workers: worker \d \(pid \d+\) exited with status 0$",
                          log, re.MULTILINE)) == 2


FAILING_APP = textwrap.dedent("""\
    from reverserd import Application, Reverser, TCPServer


    class Picky(TCPServer):
        async def start_service(self):
            await super().start_service()
            raise RuntimeError("no serving in a worker")


    application = Application("picky")
    Picky(0, Reverser).set_service_parent(application)
""")


def test_workers_dying_at_start_up_make_start_fail_with_a_clear_line(
        daemons: DaemonDirectory) -> None:
    (daemons.path / "picky.py").write_text(FAILING_APP)
    result = daemons.run("start", "-y", "picky.py", "--workers", "2")
    assert result.returncode == 1, result
    assert re.fullmatch(r"reverserd: worker \d \(pid \d+\) exited with status 1 during "
                        r"start-up; the log says more\n", result.stderr), result.stderr
    assert re.search(r"ERROR reverserd\.workers: worker \d \(pid \d+\) exited with status 1 "
                     r"during start-up; giving up: stopping the daemon$",
                     daemons.log(), re.MULTILINE)
    assert "RuntimeError: no serving in a worker" in daemons.log()
    assert daemons.run("status").returncode == 3
    assert not daemons.pidfile.exists()


def test_a_worker_that_keeps_dying_makes_the_daemon_give_up(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2")
    for round_number in range(6):
        pid, restarts = workers_of(daemons)[2]
        assert restarts == round_number
        os.kill(pid, signal.SIGKILL)
        wait_until_dead(pid)
        if round_number < 5:
            wait_until(lambda dead=pid: workers_of(daemons).get(2, (dead, 0))[0] != dead,
                       "worker 2 to be restarted")
    wait_until_dead(daemon.pid)
    assert re.search(r"ERROR reverserd\.workers: worker 2 \(pid \d+\) was killed by SIGKILL, "
                     r"its 6th quick death in a row; giving up: stopping the daemon$",
                     daemons.log(), re.MULTILINE)
    delays = re.findall(r"worker 2 \(pid \d+\) was killed by SIGKILL; restarting it in "
                        r"(\d+\.\d) s$", daemons.log(), re.MULTILINE)
    assert delays == ["0.0", "0.1", "0.2", "0.4", "0.8"]
    assert daemons.run("status").returncode == 3


def test_the_foreground_with_workers_stops_on_ctrl_c(reverserd) -> None:  # type: ignore[no-untyped-def]
    process = reverserd("--foreground", "--port", "0", "--workers", "2")
    process.wait_for_log(r"2 workers serving: pids (\d+), (\d+)$")
    port = process.wait_until_serving()
    assert exchange(port) == b"cba\n"
    process.signal(signal.SIGINT)
    assert process.wait() == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


def test_workers_must_be_a_count_or_auto(daemons: DaemonDirectory) -> None:
    for bad in ("0", "two", "-1", "257"):
        result = daemons.run("start", "--workers", bad)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1 and "--workers" in result.stderr, result.stderr


def test_one_worker_means_no_worker_processes(daemons: DaemonDirectory) -> None:
    daemon: Daemon = daemons.start("--workers", "1")
    assert workers_of(daemons) == {}
    assert exchange(daemon.port) == b"cba\n"


def test_workers_share_a_rotating_log_without_losing_or_mixing_lines(
        daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2", "--log-level", "debug", "--log-max-bytes", "3000",
                           "--log-backups", "100")
    for _ in range(150):
        assert exchange(daemon.port) == b"cba\n"
    daemons.stop()
    files = sorted(daemons.path.glob("reverserd.log*"))
    assert len(files) > 5
    lines = [line for path in files for line in path.read_text().splitlines()]
    opened = [line for line in lines if re.search(r"DEBUG reverserd\.protocol: connection "
                                                  r"from 127\.0\.0\.1:\d+$", line)]
    closed = [line for line in lines if line.endswith(" closed")]
    assert len(opened) == len(closed) == 150
    longest = max(len(line) + 1 for line in lines)
    for path in files:
        assert path.stat().st_size <= 3000 + longest, path


def test_saved_state_counts_the_lines_of_every_worker_across_restarts(
        daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2", "--save")
    for _ in range(7):
        assert exchange(daemon.port) == b"cba\n"
    daemons.stop()
    state = json.loads((daemons.path / "Reverser-shutdown.json").read_text())
    assert state["application"]["services"][0]["state"]["lines_served"] == 7
    again = daemons.start("-f", "Reverser-shutdown.json", "--workers", "2")
    assert again.port == daemon.port
    assert exchange(again.port) == b"cba\n"
    assert ", 8 lines served" in daemons.run("status").stdout
    daemons.stop()
    state = json.loads((daemons.path / "Reverser-shutdown.json").read_text())
    assert state["application"]["services"][0]["state"]["lines_served"] == 8


def test_only_the_main_process_holds_the_lock(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2")
    lock = daemons.path / "reverserd.pid.lock"
    assert holds_open(daemon.pid, lock)
    assert not any(holds_open(pid, lock) for pid, _ in workers_of(daemons).values())


def test_workers_end_when_the_main_process_is_killed(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2")
    pids = [pid for pid, _ in workers_of(daemons).values()]
    os.kill(daemon.pid, signal.SIGKILL)
    for pid in pids:
        wait_until_dead(pid)
    assert daemons.run("status").returncode == 1  # the pidfile is left, its lock is free


def test_a_stopped_worker_never_keeps_the_lock_once_the_main_process_died(
        daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2")
    stopped, _ = workers_of(daemons)[1]
    os.kill(stopped, signal.SIGSTOP)
    os.kill(daemon.pid, signal.SIGKILL)
    wait_until_dead(stopped)  # killed with its parent even while stopped
    assert daemons.run("status").returncode == 1
    assert exchange(daemons.start("--workers", "2").port) == b"cba\n"


def test_a_worker_without_heartbeat_is_killed_and_replaced(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2", "--worker-timeout", "1")
    wedged, _ = workers_of(daemons)[2]
    os.kill(wedged, signal.SIGSTOP)
    wait_until(lambda: workers_of(daemons).get(2, (wedged, 0))[0] != wedged,
               "worker 2 to be replaced")
    status = daemons.run("status").stdout
    assert re.search(r"^reverserd worker 2: pid \d+, up \S+, restarted 1 time, last: killed "
                     r"after \d+ s without a heartbeat$", status, re.MULTILINE), status
    wait_until_dead(wedged)
    replies = [exchange(daemon.port) for _ in range(40)]  # none lands on the wedged one
    assert replies == [b"cba\n"] * 40
    lines = [line for line in daemons.log_lines() if "without a heartbeat" in line]
    assert len(lines) == 1 and re.search(
        rf"WARNING reverserd\.workers: worker 2 \(pid {wedged}\) killed after \d+ s without "
        r"a heartbeat; restarting it in 0\.0 s$", lines[0]), lines


def test_stop_returns_only_once_every_worker_is_gone_even_a_stopped_one(
        daemons: DaemonDirectory) -> None:
    daemons.start("--workers", "2", "--stop-timeout", "2")
    pids = [pid for pid, _ in workers_of(daemons).values()]
    os.kill(pids[0], signal.SIGSTOP)
    result = daemons.run("stop")
    assert result.returncode == 0, result
    assert not any(is_alive(pid) for pid in pids)
    assert daemons.run("status").returncode == 3


def test_sigusr1_to_the_main_process_makes_every_worker_reopen_the_log(
        daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2", "--log-level", "debug")
    moved = daemons.path / "moved.log"
    daemons.logfile.rename(moved)
    os.kill(daemon.pid, signal.SIGUSR1)
    wait_until(lambda: daemons.logfile.exists()
               and daemons.log().count("INFO reverserd.runner: log file reopened") == 3,
               "the main process and both workers to reopen the log")
    for _ in range(10):
        assert exchange(daemon.port) == b"cba\n"
    daemons.stop()
    assert len(re.findall(r"DEBUG reverserd\.protocol: connection from 127\.0\.0\.1:\d+ "
                          r"closed$", daemons.log(), re.MULTILINE)) == 10
    assert "connection from" not in moved.read_text()
