"""Daemon mode as an operator sees it: start, status, stop, restart, stale pidfiles."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import threading

from tests.e2e.daemons import (
    ALREADY,
    STARTED,
    DaemonDirectory,
    is_alive,
    process_state,
    reverserd_processes_in,
    wait_until_dead,
)
from tests.e2e.support import (
    REVERSERD,
    connect,
    receive_exactly,
    receive_until_closed,
    send_until_stalled,
    small_buffered_client,
    wait_until,
)

UPTIME = r"up (\d+d)?(\d+h)?(\d+m)?\d+s"


def exchange(port: int, line: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(line + b"\nquit\n")
        return receive_until_closed(sock)


def test_start_detaches_a_daemon_that_serves(daemons: DaemonDirectory) -> None:
    daemon = daemons.start()
    assert exchange(daemon.port, b"detached") == b"dehcated\n"
    assert daemons.pidfile.read_text() == f"{daemon.pid}\n"
    assert os.getsid(daemon.pid) not in (os.getsid(0), daemon.pid)  # no session, no tty
    assert os.readlink(f"/proc/{daemon.pid}/fd/0") == os.devnull
    for fd in (1, 2):
        assert os.readlink(f"/proc/{daemon.pid}/fd/{fd}") == str(daemons.logfile)
    assert os.readlink(f"/proc/{daemon.pid}/cwd") == str(daemons.path)
    status = pathlib.Path(f"/proc/{daemon.pid}/status").read_text()
    assert "Umask:\t0077" in status
    assert oct(daemons.pidfile.stat().st_mode & 0o777) == oct(0o600)


def test_status_reports_what_the_daemon_says(daemons: DaemonDirectory) -> None:
    daemon = daemons.start()
    status = daemons.run("status")
    assert status.returncode == 0
    assert re.fullmatch(rf"reverserd running: pid {daemon.pid}, listening on "
                        rf"127\.0\.0\.1:{daemon.port}, {UPTIME}, 0 lines served\n",
                        status.stdout), status


def test_status_counts_the_lines_served_up_to_now(daemons: DaemonDirectory) -> None:
    daemon = daemons.start()
    with connect(daemon.port) as sock:
        sock.sendall(b"one\ntwo\nthree\n")
        assert receive_exactly(sock, 14) == b"eno\nowt\neerht\n"
        status = daemons.run("status")  # the connection is still open
    assert status.stdout.endswith(", 3 lines served\n"), status


def test_stop_ends_the_daemon_and_removes_its_files(daemons: DaemonDirectory) -> None:
    daemon = daemons.start()
    stop = daemons.stop()
    assert stop.stdout == f"reverserd stopped: pid {daemon.pid}\n"
    assert not is_alive(daemon.pid)
    assert sorted(path.name for path in daemons.path.iterdir()) == [
        "reverserd.log", "reverserd.pid.options"]  # the options stay for a restart
    assert daemons.log_lines()[-1].endswith("INFO reverserd.runner: stopped")
    assert "received SIGTERM, stopping" in daemons.log()
    status = daemons.run("status")
    assert (status.returncode, status.stdout) == (
        3, f"reverserd not running (no pidfile at {daemons.pidfile})\n")
    again = daemons.run("stop")
    assert (again.returncode, again.stdout) == (
        0, f"reverserd is not running (no pidfile at {daemons.pidfile})\n")


def test_start_with_a_live_daemon_leaves_it_alone(daemons: DaemonDirectory) -> None:
    daemon = daemons.start()
    before = daemons.pidfile.stat()
    again = daemons.run("start", "--port", "0")
    assert (again.returncode, again.stdout, again.stderr) == (
        0, f"reverserd already running: pid {daemon.pid}\n", "")
    after = daemons.pidfile.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert reverserd_processes_in(daemons.path) == [daemon.pid]


def test_rundir_umask_and_pidfile_follow_the_options(daemons: DaemonDirectory) -> None:
    (daemons.path / "work").mkdir()
    (daemons.path / "run").mkdir()
    daemon = daemons.start("--rundir", "work", "--umask", "027",
                           "--pidfile", "run/served.pid")
    assert os.readlink(f"/proc/{daemon.pid}/cwd") == str(daemons.path / "work")
    assert "Umask:\t0027" in pathlib.Path(f"/proc/{daemon.pid}/status").read_text()
    assert (daemons.path / "run/served.pid").read_text() == f"{daemon.pid}\n"
    assert (daemons.path / "run/reverserd.log").exists()  # next to the pidfile
    assert not daemons.pidfile.exists()
    status = daemons.run("status", "--pidfile", "run/served.pid")
    assert status.returncode == 0 and f"pid {daemon.pid}" in status.stdout
    assert daemons.run("stop", "--pidfile", "run/served.pid").returncode == 0
    assert not (daemons.path / "run/served.pid").exists()


def test_after_kill_9_status_says_dead_and_start_recovers(daemons: DaemonDirectory) -> None:
    first = daemons.start()
    os.kill(first.pid, signal.SIGKILL)
    wait_until_dead(first.pid)
    status = daemons.run("status")
    assert (status.returncode, status.stdout) == (
        1, f"reverserd dead, stale pidfile (pid {first.pid})\n")
    second = daemons.start()
    assert second.pid != first.pid
    assert daemons.pidfile.read_text() == f"{second.pid}\n"
    assert exchange(second.port, b"again") == b"niaga\n"


def test_a_stale_pidfile_naming_another_process_is_never_signalled(
    daemons: DaemonDirectory,
) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        daemons.pidfile.write_text(f"{bystander.pid}\n")
        status = daemons.run("status")
        assert (status.returncode, status.stdout) == (
            1, f"reverserd dead, stale pidfile (pid {bystander.pid})\n")
        stop = daemons.run("stop")
        assert (stop.returncode, stop.stdout) == (0, "reverserd is not running\n")
        assert "removing stale pidfile" in stop.stderr
        daemons.pidfile.write_text(f"{bystander.pid}\n")
        start = daemons.run("start", "--port", "0")
        assert start.returncode == 0, start
        assert re.fullmatch(rf"reverserd: removing stale pidfile {daemons.pidfile} "
                            rf"\(pid {bystander.pid} now belongs to another process\)\n",
                            start.stderr)
        daemons.stop()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_ten_concurrent_starts_leave_exactly_one_daemon(daemons: DaemonDirectory) -> None:
    starts = [
        subprocess.Popen([REVERSERD, "start", "--port", "0"], cwd=daemons.path,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(10)
    ]
    outputs = [start.communicate(timeout=60) for start in starts]
    for (stdout, _), start in zip(outputs, starts):
        daemons.remember(stdout)
        assert start.returncode == 0, outputs
    started = [STARTED.search(stdout) for stdout, _ in outputs]
    already = [ALREADY.search(stdout) for stdout, _ in outputs]
    assert sum(match is not None for match in started) == 1, outputs
    pids = {int(match.group(1)) for match in (*started, *already) if match}
    assert len(pids) == 1 and all(a or s for a, s in zip(already, started)), outputs
    assert reverserd_processes_in(daemons.path) == list(pids)


def test_restart_replaces_the_daemon_and_starts_a_stopped_one(
    daemons: DaemonDirectory,
) -> None:
    first = daemons.start()
    restart = daemons.run("restart", "--port", "0")
    assert restart.returncode == 0, restart
    match = STARTED.search(restart.stdout)
    assert match and f"reverserd stopped: pid {first.pid}" in restart.stdout
    assert not is_alive(first.pid)
    assert int(match.group(1)) != first.pid
    daemons.stop()
    cold = daemons.run("restart", "--port", "0")
    assert cold.returncode == 0 and "reverserd is not running" in cold.stdout
    assert STARTED.search(cold.stdout)


def test_stop_answers_every_line_received_before_it(daemons: DaemonDirectory) -> None:
    daemon = daemons.start()
    lines = [f"client {{}} line {number}".encode() for number in range(20000)]
    clients = [connect(daemon.port) for _ in range(4)]
    received: dict[int, bytes] = {}

    def drain(index: int) -> None:
        received[index] = receive_until_closed(clients[index])

    readers = [threading.Thread(target=drain, args=(index,)) for index in range(4)]
    expected = {}
    for index, client in enumerate(clients):
        client.sendall(b"warm up\n")
        assert receive_exactly(client, 8) == b"pu mraw\n"
        batch = [line.replace(b"{}", str(index).encode()) for line in lines]
        expected[index] = b"".join(line[::-1] + b"\n" for line in batch)
        client.sendall(b"".join(line + b"\n" for line in batch))
    for reader in readers:
        reader.start()
    daemons.stop()
    for reader in readers:
        reader.join(30)
    for client in clients:
        client.close()
    assert received == expected
    assert daemons.log_lines()[-1].endswith("stopped")
    assert not daemons.pidfile.exists()


def test_stop_kills_a_daemon_that_outlives_the_stop_timeout(
    daemons: DaemonDirectory,
) -> None:
    daemon = daemons.start("--shutdown-timeout", "60")
    with small_buffered_client(daemon.port) as stuck:
        send_until_stalled(stuck, b"never read\n", 256 * 1024 * 1024)
        stop = daemons.run("stop", "--stop-timeout", "0.5")
    assert stop.returncode == 0, stop
    assert stop.stderr == f"reverserd: pid {daemon.pid} did not stop within 0.5 s; killed it\n"
    assert stop.stdout == f"reverserd stopped: pid {daemon.pid}\n"
    wait_until_dead(daemon.pid)
    assert not daemons.pidfile.exists()
    assert daemons.run("status").returncode == 3


def test_status_cannot_tell_without_permission(daemons: DaemonDirectory) -> None:
    private = daemons.path / "private"
    private.mkdir(mode=0o700)
    (private / "reverserd.pid").write_text("12345\n")
    (private / "reverserd.pid").chmod(0)
    command = [REVERSERD, "status", "--pidfile", str(private / "reverserd.pid")]
    if os.geteuid() == 0:  # root reads anything: take away its file-permission powers
        dropped = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={dropped}", f"--bounding-set={dropped}", *command]
    status = subprocess.run(command, capture_output=True, text=True, timeout=15,
                            stdin=subprocess.DEVNULL, check=False)
    assert status.returncode == 4, status
    assert status.stdout == (f"reverserd status unknown: permission denied "
                             f"({private / 'reverserd.pid'})\n")


def test_stop_never_signals_a_pid_that_does_not_hold_the_lock(
    daemons: DaemonDirectory,
) -> None:
    daemon = daemons.start()
    with subprocess.Popen(["sleep", "60"]) as bystander:
        try:
            daemons.pidfile.write_text(f"{bystander.pid}\n")  # tampered with
            stop = daemons.run("stop", "--stop-timeout", "0.5")
            assert stop.returncode == 1
            assert stop.stderr == (f"reverserd: {daemons.pidfile}.lock is held, but "
                                   f"{daemons.pidfile} names no process holding it; "
                                   "not signalling anyone\n")
            assert bystander.poll() is None
            assert is_alive(daemon.pid)
        finally:
            bystander.kill()


def test_a_pidfile_naming_a_zombie_is_stale(daemons: DaemonDirectory) -> None:
    with subprocess.Popen(["sleep", "60"]) as dead:
        dead.kill()
        os.waitid(os.P_PID, dead.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
        daemons.pidfile.write_text(f"{dead.pid}\n")
        status = daemons.run("status")
        assert (status.returncode, status.stdout) == (
            1, f"reverserd dead, stale pidfile (pid {dead.pid})\n")
        start = daemons.run("start", "--port", "0")
        assert start.returncode == 0, start
        assert start.stderr == (f"reverserd: removing stale pidfile {daemons.pidfile} "
                                f"(pid {dead.pid} is a dead process not yet reaped)\n")
        assert STARTED.search(start.stdout)


def test_stop_returns_once_the_lock_is_free_even_if_nobody_reaps_the_process(
        daemons: DaemonDirectory) -> None:
    """The serving process here is this test's child, left unreaped: it stays a
    zombie after it exits, and ``stop`` must not wait for it to vanish."""
    with subprocess.Popen([REVERSERD, "--foreground", "--port", "0", "--pidfile",
                           str(daemons.pidfile)], cwd=daemons.path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as serving:
        wait_until(lambda: daemons.run("status").returncode == 0, "the server to serve")
        result = daemons.run("stop", "--stop-timeout", "60", timeout=20)
        assert (result.returncode, result.stdout) == (0, f"reverserd stopped: pid {serving.pid}\n")
        os.waitid(os.P_PID, serving.pid, os.WEXITED | os.WNOWAIT)
        assert process_state(serving.pid) == "Z"
