"""The control plane under faults: stop racing start, wedged workers, FIFOs for run files."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import socket
import subprocess

import pytest

from tests.e2e.daemons import ALREADY, STARTED, DaemonDirectory, is_alive, wait_until_dead
from tests.e2e.support import DEADLINE, REVERSERD, wait_until

WORKER_PIDS = re.compile(r"^reverserd worker \d+: pid (\d+)", re.MULTILINE)
RUN_FILES = {"pidfile": ("pidfile", ""), "lock": ("lock file", ".lock"),
             "state": ("state file", ".state")}


def launch(daemons: DaemonDirectory, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([REVERSERD, *args], cwd=daemons.path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def serving_pid(daemons: DaemonDirectory) -> int:
    """The pid of the daemon serving now, started if none is."""
    result = daemons.run("start", "--port", "0")
    assert result.returncode == 0, result
    match = STARTED.search(result.stdout) or ALREADY.search(result.stdout)
    assert match, result
    return int(match.group(1))


def test_stop_racing_start_reports_the_daemon_it_stopped(daemons: DaemonDirectory) -> None:
    """Once its daemon is gone, ``stop`` is done, whoever holds the lock by then.

    The stop timeout is beyond the deadline on purpose: a ``stop`` that waited
    for the lock to be free, which the concurrent ``start`` takes, would not
    return in time.
    """
    for _ in range(10):
        old = serving_pid(daemons)
        stopping = launch(daemons, "stop", "--stop-timeout", "60")
        starting = launch(daemons, "start", "--port", "0")
        stop_output = stopping.communicate(timeout=DEADLINE)
        start_output = starting.communicate(timeout=DEADLINE)
        daemons.remember(start_output[0])
        assert (stopping.returncode, *stop_output) == (
            0, f"reverserd stopped: pid {old}\n", ""), stop_output
        assert not is_alive(old)
        assert starting.returncode == 0, start_output
        assert STARTED.search(start_output[0]) or ALREADY.search(start_output[0]), start_output
    daemons.stop()


def workers_of(daemons: DaemonDirectory) -> list[int]:
    status = daemons.run("status")
    assert status.returncode == 0, status
    pids = [int(pid) for pid in WORKER_PIDS.findall(status.stdout)]
    daemons.pids.update(pids)  # killed at teardown should the test fail
    return pids


def test_stop_returns_once_every_worker_is_gone(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--workers", "2")
    workers = workers_of(daemons)
    assert len(workers) == 2
    assert daemons.stop().stdout == f"reverserd stopped: pid {daemon.pid}\n"
    assert [pid for pid in (daemon.pid, *workers) if is_alive(pid)] == []


def test_stop_kills_a_wedged_worker_the_main_process_left_behind(
        daemons: DaemonDirectory) -> None:
    """A stopped worker ignores SIGTERM, so the main process cannot end it and
    takes SIGKILL itself; the worker must not outlive ``stop`` for all that."""
    daemon = daemons.start("--workers", "2")
    wedged, _ = workers_of(daemons)
    os.kill(wedged, signal.SIGSTOP)
    stop = daemons.run("stop", "--stop-timeout", "1")
    assert (stop.returncode, stop.stdout) == (0, f"reverserd stopped: pid {daemon.pid}\n"), stop
    assert all(line.startswith("reverserd: ") for line in stop.stderr.splitlines()), stop
    assert not is_alive(wedged)
    assert not is_alive(daemon.pid)
    status = daemons.run("status")
    assert (status.returncode, status.stdout) == (
        3, f"reverserd not running (no pidfile at {daemons.pidfile})\n")


def make_fifo(path: pathlib.Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


@pytest.mark.parametrize("which", sorted(set(RUN_FILES) - {"state"}))
def test_a_fifo_for_a_run_file_is_refused_at_once_by_every_verb(
        daemons: DaemonDirectory, which: str) -> None:
    """A FIFO would block whoever opens it to read until a writer comes."""
    kind, suffix = RUN_FILES[which]
    path = daemons.path / f"reverserd.pid{suffix}"
    make_fifo(path)
    refusal = f"refusing {kind} {path}: it is not a regular file"
    status = daemons.run("status", timeout=DEADLINE)
    assert (status.returncode, status.stdout, status.stderr) == (
        4, f"reverserd status unknown: {refusal}\n", "")
    for verb in ("stop", "restart", "start"):
        result = daemons.run(verb, "--port", "0", timeout=DEADLINE)
        assert (result.returncode, result.stdout, result.stderr) == (
            1, "", f"reverserd: {refusal}\n"), result


def test_a_fifo_for_the_state_file_of_a_running_daemon_is_ignored_and_stop_still_works(
        daemons: DaemonDirectory) -> None:
    kind, suffix = RUN_FILES["state"]
    path = daemons.path / f"reverserd.pid{suffix}"
    daemon = daemons.start()
    wait_until(path.exists, "the state file")
    make_fifo(path)
    status = daemons.run("status", timeout=DEADLINE)
    assert (status.returncode, status.stdout) == (
        0, f"reverserd running: pid {daemon.pid} (ignoring {kind} {path}: it is not a "
           "regular file)\n"), status
    stop = daemons.run("stop", timeout=DEADLINE)
    assert (stop.returncode, stop.stdout) == (0, f"reverserd stopped: pid {daemon.pid}\n"), stop
    wait_until_dead(daemon.pid)
    assert not path.exists()  # removed with the other run files at stop


def stuck_client(port: int) -> socket.socket:
    """A connection that takes no replies, once the server has stopped reading from it.

    The server reads while it can still write; it stops for good once its
    replies fill every buffer on the way. A send that has waited half a
    second shows that (the server pauses no other way for that long).
    """
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", port))
    stuck.settimeout(0.5)
    with contextlib.suppress(TimeoutError):
        for _ in range(64 * 1024):  # at most 64 MiB
            stuck.sendall(b"x" * 1023 + b"\n")
        raise AssertionError("the server kept reading 64 MiB that nobody took the replies to")
    return stuck


def test_a_start_during_a_graceful_stop_waits_for_it_and_starts_another(
        daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--shutdown-timeout", "3")
    stuck = stuck_client(daemon.port)  # the graceful stop waits --shutdown-timeout for it
    os.kill(daemon.pid, signal.SIGTERM)
    wait_until(lambda: daemons.run("status").stdout.startswith(
        f"reverserd stopping: pid {daemon.pid}"), "status to say stopping")
    assert daemons.run("status").returncode == 0
    result = daemons.run("start", "--port", "0")
    assert result.returncode == 0, result
    started = STARTED.search(result.stdout)
    assert started and int(started.group(1)) != daemon.pid, result
    assert not is_alive(daemon.pid)
    stuck.close()
