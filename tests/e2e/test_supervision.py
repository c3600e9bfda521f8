"""What a supervisor sees of reverserd: sd_notify datagrams, s6's readiness
descriptor, signals held from the first instant, and log lines without a
second timestamp."""

from __future__ import annotations

import json
import os
import pathlib
import re
import select
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.daemons import DaemonDirectory, is_alive
from tests.e2e.notify_socket import NotifySocket
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    ReverserdProcess,
    connect,
    port_is_free,
    receive_exactly,
    wait_until,
)
from tests.e2e.test_control_plane import stuck_client
from tests.e2e.test_status_json import FRAGILE_APP

HELD = (signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
SLOW_APP = (
    "import pathlib, time\n"
    "from reverserd import Application, Reverser, TCPServer\n"
    "pathlib.Path('loading').touch()\n"
    "time.sleep(1)  # a slow import: signals arrive while reverserd is still starting\n"
    "application = Application('slow')\n"
    "TCPServer(0, Reverser).set_service_parent(application)\n"
)


@pytest.fixture
def notify_socket(tmp_path: pathlib.Path) -> Iterator[NotifySocket]:
    with NotifySocket(tmp_path) as listening:
        yield listening


def echoes(port: int) -> bool:
    with connect(port) as sock:
        sock.sendall(b"hello\r\n")
        return receive_exactly(sock, 7) == b"olleh\r\n"


def signal_set(pid: int, field: str) -> set[int]:
    """The signals ``pid`` blocks (``SigBlk``) or catches (``SigCgt``) now, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(f"{field}:"))
    mask = int(line.split()[1], 16)
    return {number for number in range(1, 65) if mask >> (number - 1) & 1}


# --- sd_notify ---------------------------------------------------------------------------

def test_with_workers_only_the_main_process_notifies(
        reverserd: Callable[..., ReverserdProcess], notify_socket: NotifySocket) -> None:
    process = reverserd("run", "--port", "0", "--workers", "2",
                        env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "200000"})
    ready = notify_socket.wait_for("READY", "1")[0]
    port = process.wait_until_serving()
    assert ready.fields["STATUS"] == f"listening on 127.0.0.1:{port}"
    assert echoes(port)
    pings = notify_socket.wait_for("WATCHDOG", "1", count=4)
    assert all(ping.arrived >= ready.arrived for ping in pings)
    gaps = [later.arrived - earlier.arrived for earlier, later in zip(pings, pings[1:])]
    assert 0.05 <= statistics.median(gaps) <= 0.2, gaps
    process.signal(signal.SIGTERM)
    stopping = notify_socket.wait_for("STOPPING", "1")[0]
    assert stopping.fields["STATUS"] == "stopping: 2 workers"
    assert process.wait() == 0
    notify_socket.wait_for("STATUS", "stopped")
    senders = {notification.pid for notification in notify_socket.received}
    assert senders == {process.pid}, notify_socket.received
    assert len(notify_socket.with_field("READY")) == 1


STALLING_APP = (
    "import time\n"
    "from reverserd import Application, Reverser, TCPServer\n"
    "class Stalling(Reverser):\n"
    "    def line_received(self, line):\n"
    "        if line == b'stall':\n"
    "            time.sleep(1.5)  # a bug that holds the event loop\n"
    "        return super().line_received(line)\n"
    "application = Application('stalling')\n"
    "TCPServer(0, Stalling).set_service_parent(application)\n"
)


def test_a_stuck_event_loop_stops_the_watchdog_pings(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess],
        notify_socket: NotifySocket) -> None:
    (tmp_path / "stalling.py").write_text(STALLING_APP)
    process = reverserd("run", "-y", "stalling.py",
                        env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "200000"})
    port = process.wait_until_serving()
    before = len(notify_socket.wait_for("WATCHDOG", "1", count=3))
    with connect(port) as sock:
        sock.sendall(b"stall\n")
        assert receive_exactly(sock, 6) == b"llats\n"
    pings = notify_socket.wait_for("WATCHDOG", "1", count=before + 3)
    gaps = [later.arrived - earlier.arrived for earlier, later in zip(pings, pings[1:])]
    assert max(gaps) >= 1.2, gaps  # none while the loop was held, for 1.5 s
    assert sorted(gaps)[len(gaps) // 2] < 0.5, gaps  # and every 0.1 s otherwise
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_a_detached_daemon_names_itself_with_mainpid(
        daemons: DaemonDirectory, notify_socket: NotifySocket) -> None:
    daemon = daemons.start(env={"NOTIFY_SOCKET": notify_socket.address})
    ready = notify_socket.wait_for("READY", "1")[0]
    assert ready.fields["MAINPID"] == str(daemon.pid)
    assert ready.pid == daemon.pid
    again = daemons.run("start", env={"NOTIFY_SOCKET": notify_socket.address})
    assert again.stdout == f"reverserd already running: pid {daemon.pid}\n"
    second = notify_socket.wait_for("READY", "1", count=2)[1]
    assert second.fields == {"READY": "1", "STATUS": f"already running as pid {daemon.pid}",
                             "MAINPID": str(daemon.pid)}
    daemons.stop()
    assert notify_socket.wait_for("STOPPING", "1")[0].pid == daemon.pid


def test_in_the_foreground_mainpid_is_left_out_and_stopping_counts_connections(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess]) -> None:
    with NotifySocket(tmp_path, abstract=True) as abstract:
        process = reverserd("run", "--port", "0", env={"NOTIFY_SOCKET": abstract.address})
        ready = abstract.wait_for("READY", "1")[0]
        assert "MAINPID" not in ready.fields and ready.pid == process.pid
        with connect(process.wait_until_serving()) as sock:
            sock.sendall(b"held open\n")
            receive_exactly(sock, 10)
            process.signal(signal.SIGTERM)
            stopping = abstract.wait_for("STOPPING", "1")[0]
        assert stopping.fields["STATUS"] == "stopping: 1 connection open"
        assert process.wait() == 0
        assert abstract.wait_for("STATUS", "stopped")


def test_a_notify_socket_nobody_listens_on_costs_one_warning(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess]) -> None:
    process = reverserd("run", "--port", "0", "--log-format", "short",
                        env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock"),
                             "WATCHDOG_USEC": "50000"})
    assert echoes(process.wait_until_serving())
    process.wait_for_log("cannot notify systemd at .*gone.sock")
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    warnings = [line for line in process.log if line.startswith("WARNING")]
    assert len(warnings) == 1, process.log


# --- --ready-fd ------------------------------------------------------------------------

def read_ready_pipe(fd: int) -> bytes:
    """What the write end's holders sent, until every one of them closed it."""
    received = b""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.1)
        if readable:
            chunk = os.read(fd, 64)
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"the readiness pipe is still open; got {received!r}")


@pytest.mark.parametrize("how", [["run"], ["run", "--workers", "2"], ["start"]])
def test_ready_fd_gets_one_newline_once_serving_then_closes(
        daemons: DaemonDirectory, how: list[str]) -> None:
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [REVERSERD, *how, "--port", "0", "--pidfile", str(daemons.pidfile),
         "--ready-fd", str(write_end)], cwd=daemons.path, pass_fds=(write_end,),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.close(write_end)
    try:
        readable, _, _ = select.select([read_end], [], [], DEADLINE)
        assert readable and os.read(read_end, 64) == b"\n"
        # Ready means serving: the port answers the moment the newline arrives.
        found = json.loads(daemons.run("status", "--json").stdout)
        assert found["state"] == "running"
        assert echoes(int(found["addresses"][0].rsplit(":", 1)[1]))
        assert read_ready_pipe(read_end) == b""  # written once, then closed by every process
        if how == ["start"]:
            assert process.wait(DEADLINE) == 0
            daemons.remember(process.stdout.read() if process.stdout else "")
            daemons.stop()
        else:
            process.send_signal(signal.SIGTERM)
            assert process.wait(DEADLINE) == 0
    finally:
        os.close(read_end)
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_start_finding_a_daemon_serving_reports_it_ready(daemons: DaemonDirectory) -> None:
    daemon = daemons.start()
    read_end, write_end = os.pipe()
    try:
        again = subprocess.run([REVERSERD, "start", "--ready-fd", str(write_end)],
                               cwd=daemons.path, pass_fds=(write_end,), capture_output=True,
                               text=True, timeout=DEADLINE, check=False)
        os.close(write_end)
        assert again.stdout == f"reverserd already running: pid {daemon.pid}\n"
        assert read_ready_pipe(read_end) == b"\n"
    finally:
        os.close(read_end)
    daemons.stop()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["run", "--ready-fd", "9"], "file descriptor 9 is not open"),
     (["run", "--ready-fd", "1"], "expected a file descriptor number from 3 to"),
     (["run", "--ready-fd", "three"], "expected a file descriptor number"),
     (["status", "--ready-fd", "0"], "expected a file descriptor number"),
     (["stop", "--json"], "--json goes with status")])
def test_bad_ready_fd_is_one_line_and_exit_2(
        daemons: DaemonDirectory, arguments: list[str], message: str) -> None:
    result = daemons.run(*arguments)
    assert result.returncode == 2, result
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_read_only_ready_fd_is_refused(tmp_path: pathlib.Path) -> None:
    read_end, write_end = os.pipe()
    try:
        result = subprocess.run([REVERSERD, "run", "--ready-fd", str(read_end)], cwd=tmp_path,
                                pass_fds=(read_end,), capture_output=True, text=True,
                                timeout=DEADLINE, check=False)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 2
    assert f"file descriptor {read_end} is open for reading only" in result.stderr


def test_ready_fd_goes_with_serving_verbs_only(tmp_path: pathlib.Path) -> None:
    read_end, write_end = os.pipe()
    try:
        result = subprocess.run([REVERSERD, "status", "--ready-fd", str(write_end)],
                                cwd=tmp_path, pass_fds=(write_end,), capture_output=True,
                                text=True, timeout=DEADLINE, check=False)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert (result.returncode, result.stderr) == (
        2, "reverserd: --ready-fd goes with run, start, restart, not status\n")


# --- signals while starting ------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2])
def test_a_signal_while_starting_neither_kills_nor_is_lost(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess],
        signum: signal.Signals) -> None:
    (tmp_path / "slow.py").write_text(SLOW_APP)
    process = reverserd("run", "-y", "slow.py", "--pidfile", "reverserd.pid")
    wait_until((tmp_path / "loading").exists, "the application to load")
    process.signal(signum)
    assert echoes(process.wait_until_serving())
    if signum == signal.SIGUSR2:
        # The refresh came before there was a state file to refresh: it is written once serving.
        wait_until((tmp_path / "reverserd.pid.state").exists, "the state file")
    else:
        process.wait_for_log(f"received {signum.name}; no log file to reopen")
    assert process.popen.poll() is None
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


THREADED_APP = (
    "import threading, time\n"
    "from reverserd import Application, Reverser, TCPServer\n"
    "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    "application = Application('threaded')\n"
    "TCPServer(0, Reverser).set_service_parent(application)\n"
)


def kept(tmp_path: pathlib.Path,
         reverserd: Callable[..., ReverserdProcess]) -> tuple[ReverserdProcess, int, int]:
    """``run`` of an application with a thread of its own, reloaded once: the
    process (now the keeper), the new generation's pid and the port."""
    (tmp_path / "threaded.py").write_text(THREADED_APP)
    process = reverserd("run", "-y", "threaded.py")
    port = process.wait_until_serving()
    process.signal(signal.SIGHUP)
    successor = int(process.wait_for_log(r"serving from pid (\d+)")[1])
    return process, successor, port


def test_the_keeper_passes_every_signal_on_whichever_thread_gets_it(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess]) -> None:
    process, successor, port = kept(tmp_path, reverserd)
    for _ in range(300):  # the application's thread is as likely to be handed each as any
        process.signal(signal.SIGUSR2)
        process.signal(signal.SIGUSR1)
    assert echoes(port)
    assert process.popen.poll() is None and is_alive(successor)
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert not is_alive(successor)


def test_a_generation_ends_with_the_keeper(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess]) -> None:
    process, successor, port = kept(tmp_path, reverserd)
    process.popen.kill()  # a supervisor's last resort: the service is dead for it
    process.wait()
    wait_until(lambda: not is_alive(successor), "the generation to follow its keeper")
    assert port_is_free(port)


HELD_TAKE_OVER_APP = (
    "import asyncio, os, pathlib\n"
    "from reverserd import Application, Reverser, TCPServer\n"
    "class Held(TCPServer):\n"
    "    async def begin_accepting(self):\n"
    "        # a new generation that took over the pidfile, not yet confirmed\n"
    "        if self.hold_accepting and pathlib.Path('hold').exists():\n"
    "            pathlib.Path('held.new').write_text(str(os.getpid()))\n"
    "            os.rename('held.new', 'held')\n"
    "            for _ in range(3000):\n"
    "                if pathlib.Path('die').exists():\n"
    "                    os._exit(3)\n"
    "                if pathlib.Path('release').exists():\n"
    "                    break\n"
    "                await asyncio.sleep(0.01)\n"
    "        await super().begin_accepting()\n"
    "application = Application('held')\n"
    "Held(0, Reverser).set_service_parent(application)\n"
)


@pytest.mark.parametrize("outcome", ["release", "die"])
def test_a_stop_signal_during_a_take_over_stops_whichever_generation_serves_after(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess],
        outcome: str) -> None:
    (tmp_path / "held.py").write_text(HELD_TAKE_OVER_APP)
    process = reverserd("run", "-y", "held.py")
    port = process.wait_until_serving()
    (tmp_path / "hold").touch()
    process.signal(signal.SIGHUP)
    wait_until((tmp_path / "held").exists, "the new generation to take over")
    successor = int((tmp_path / "held").read_text())
    process.signal(signal.SIGTERM)  # a supervisor's: it knows the first pid only
    (tmp_path / outcome).touch()
    assert process.wait() == 0
    assert not is_alive(successor)
    assert port_is_free(port)
    log = "\n".join(process.log)
    if outcome == "release":
        assert f"passing SIGTERM, received during the take-over, on to pid {successor}" in log
    else:
        assert "reload failed" in log
        assert f"passing SIGTERM, received during the take-over, on to pid {process.pid}" in log


def test_a_sighup_while_starting_reloads_once_serving(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess]) -> None:
    (tmp_path / "slow.py").write_text(SLOW_APP)
    process = reverserd("run", "-y", "slow.py")
    wait_until((tmp_path / "loading").exists, "the application to load")
    process.signal(signal.SIGHUP)
    port = process.wait_until_serving()
    process.wait_for_log(f"took over from pid {process.pid}")
    assert echoes(port)
    assert process.popen.poll() is None  # the pid a supervisor watches stays
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_starting_stops_right_after_start_up(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess],
        notify_socket: NotifySocket, signum: signal.Signals) -> None:
    (tmp_path / "slow.py").write_text(SLOW_APP)
    process = reverserd("run", "-y", "slow.py", env={"NOTIFY_SOCKET": notify_socket.address})
    wait_until((tmp_path / "loading").exists, "the application to load")
    process.signal(signum)
    assert process.wait() == 0
    log = "\n".join(process.log)
    assert re.search(rf"listening on .*\n.*received {signum.name}, stopping", log), log
    assert log.endswith("INFO reverserd.runner: stopped")
    ready = notify_socket.wait_for("READY", "1")[0]
    assert notify_socket.wait_for("STOPPING", "1")[0].arrived >= ready.arrived


def test_signals_are_deferred_from_the_command_s_first_step(
        reverserd: Callable[..., ReverserdProcess]) -> None:
    process = reverserd("run", "--port", "0")
    wait_until(lambda: set(HELD) <= signal_set(process.pid, "SigCgt"),
               "the signals to be caught")
    process.signal(signal.SIGUSR1)
    assert echoes(process.wait_until_serving())
    process.wait_for_log("received SIGUSR1; no log file to reopen")
    assert not set(HELD) & signal_set(process.pid, "SigBlk")
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_a_second_stop_signal_while_starting_stops_at_once(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess]) -> None:
    (tmp_path / "hang.py").write_text(SLOW_APP.replace("time.sleep(1)", "time.sleep(60)"))
    process = reverserd("run", "-y", "hang.py", "--pidfile", "reverserd.pid")
    wait_until((tmp_path / "loading").exists, "the application to load")
    process.signal(signal.SIGTERM)
    process.signal(signal.SIGINT)
    assert process.wait() == 130  # long before the 60 s start-up would have ended
    assert not any("listening on" in line for line in process.log)
    assert not (tmp_path / "reverserd.pid").exists()


def test_what_the_application_starts_meanwhile_gets_ordinary_signals(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess]) -> None:
    (tmp_path / "spawner.py").write_text(
        "import pathlib, subprocess\n"
        "from reverserd import Application, Reverser, TCPServer\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "pathlib.Path('child').write_text(str(child.pid))\n"
        "application = Application('spawner')\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n")
    process = reverserd("run", "-y", "spawner.py")
    child = int(wait_until(lambda: (tmp_path / "child").exists()
                           and (tmp_path / "child").read_text(), "the child"))  # type: ignore[arg-type]
    try:
        wait_until(lambda: "sleep" in pathlib.Path(f"/proc/{child}/cmdline").read_text(),
                   "the child to run sleep")
        assert not set(HELD) & (signal_set(child, "SigBlk") | signal_set(child, "SigCgt"))
    finally:
        os.kill(child, signal.SIGKILL)
    process.wait_until_serving()
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_the_entry_point_imports_nothing_slow_before_holding_signals() -> None:
    probe = ("import sys\n"
             "from reverserd.entry import command\n"
             "print(sorted(name for name in sys.modules if name.startswith(('reverserd', "
             "'asyncio', 'typing', 'argparse'))))\n")
    result = subprocess.run([str(pathlib.Path(REVERSERD).parent / "python"), "-c", probe],
                            capture_output=True, text=True, timeout=DEADLINE, check=True)
    assert result.stdout.strip() == "['reverserd', 'reverserd.entry', 'reverserd.signals']"


SLOW_STOP_APP = (
    "import asyncio\n"
    "from reverserd import Application, Reverser, Service, TCPServer\n"
    "class SlowStop(Service):\n"
    "    async def stop_service(self):\n"
    "        await asyncio.sleep(3)\n"
    "application = Application('slow-stop')\n"
    "TCPServer(0, Reverser).set_service_parent(application)\n"
    "SlowStop().set_service_parent(application)\n"
)


def test_verbs_that_do_not_serve_answer_ctrl_c_at_once(daemons: DaemonDirectory) -> None:
    (daemons.path / "slow_stop.py").write_text(SLOW_STOP_APP)
    result = daemons.run("start", "-y", "slow_stop.py")
    assert result.returncode == 0, result
    daemon = int(re.search(r"pid (\d+)", result.stdout).group(1))
    stopping = subprocess.Popen([REVERSERD, "stop"], cwd=daemons.path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: "received SIGTERM" in daemons.log(), "stop to send SIGTERM")
        stopping.send_signal(signal.SIGINT)
        assert stopping.wait(DEADLINE) == 130
        assert os.path.exists(f"/proc/{daemon}")  # stop gave up waiting, as asked
    finally:
        if stopping.poll() is None:
            stopping.kill()
            stopping.wait()
    wait_until(lambda: not os.path.exists(f"/proc/{daemon}"), "the daemon to finish stopping")


# --- log formats -----------------------------------------------------------------------

def test_short_lines_carry_no_timestamp(reverserd: Callable[..., ReverserdProcess]) -> None:
    process = reverserd("run", "--port", "0", "--log-format", "short")
    process.wait_until_serving()
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert process.log and all(re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) reverserd\.", line)
                               for line in process.log), process.log
    assert not any(ISO_TIME.search(line) for line in process.log)


def test_journal_lines_lead_with_their_priority(
        tmp_path: pathlib.Path, reverserd: Callable[..., ReverserdProcess]) -> None:
    (tmp_path / "fragile.py").write_text(FRAGILE_APP)
    process = reverserd("run", "-y", "fragile.py", "--log-format", "journal",
                        "--log-level", "debug",
                        env={"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    with connect(process.wait_until_serving()) as sock:
        sock.sendall(b"boom\n")
        assert sock.recv(16) == b""
    process.wait_for_log(r"^<3>ERROR .*handler Fragile failed")
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    prefixes = {line[:3] for line in process.log}
    assert prefixes == {"<3>", "<4>", "<6>", "<7>"}, process.log
    traceback = [line for line in process.log if "RuntimeError: boom" in line]
    assert traceback and all(line.startswith("<3>") for line in traceback)
    assert not any(ISO_TIME.search(line) for line in process.log)


@pytest.mark.parametrize("matching", [True, False])
def test_journal_is_the_default_when_stdout_is_the_journal_stream(
        tmp_path: pathlib.Path, matching: bool) -> None:
    out = tmp_path / "stdout"
    other = tmp_path / "other"
    other.touch()
    with open(out, "wb") as stdout:
        found = os.fstat(stdout.fileno()) if matching else os.stat(other)
        process = subprocess.Popen([REVERSERD, "run", "--port", "0"], cwd=tmp_path,
                                   stdout=stdout, stderr=subprocess.STDOUT,
                                   env={**os.environ,
                                        "JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"})
    try:
        wait_until(lambda: "listening on" in out.read_text(), "serving")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE) == 0
    lines = out.read_text().splitlines()
    if matching:
        assert all(line.startswith("<6>INFO ") for line in lines), lines
    else:
        assert all(ISO_TIME.match(line) for line in lines), lines


def test_a_daemon_logs_short_lines_to_its_file(daemons: DaemonDirectory) -> None:
    daemons.start("--log-format", "short")
    daemons.stop()
    lines = daemons.log_lines()
    assert lines and all(line.startswith(("INFO ", "WARNING ")) for line in lines), lines


def test_an_unknown_log_format_is_refused(daemons: DaemonDirectory) -> None:
    result = daemons.run("run", "--log-format", "pretty")
    assert result.returncode == 2
    assert result.stderr == ("reverserd: argument --log-format: expected one of full, short, "
                             "journal, got 'pretty'\n")


# --- a supervisor signalling the whole process group --------------------------------------

def test_a_group_wide_sigterm_keeps_the_workers_stop_graceful(
        reverserd: Callable[..., ReverserdProcess]) -> None:
    """What systemd's KillMode=control-group, supervisord's stopasgroup or a
    terminal's Ctrl-C do: every process gets the signal, and each worker a
    second one from the main process passing it on. One signal to the whole
    group, as those send it: signalling the pids one by one lets the worker with
    no client stop on the main process's word before its own signal is sent."""
    process = reverserd("run", "--port", "0", "--workers", "2", "--log-format", "short",
                        "--shutdown-timeout", "30", own_group=True)
    port = process.wait_until_serving()
    process.wait_for_log("2 workers serving")
    stuck = stuck_client(port)  # a graceful stop waits for it to take its replies
    try:
        process.signal_group(signal.SIGTERM)
        wait_until(lambda: sum("received SIGTERM, stopping" in line
                               for line in process.log) >= 3, "every process to stop")
        assert process.popen.poll() is None  # still waiting for the stuck client
    finally:
        stuck.close()
    assert process.wait() == 0
    assert not any("again" in line for line in process.log), process.log


def test_a_second_sigterm_to_the_main_process_stops_the_workers_at_once(
        reverserd: Callable[..., ReverserdProcess]) -> None:
    process = reverserd("run", "--port", "0", "--workers", "2", "--log-format", "short",
                        "--shutdown-timeout", "30")
    stuck = stuck_client(process.wait_until_serving())
    try:
        process.wait_for_log("workers serving")
        process.signal(signal.SIGTERM)
        wait_until(lambda: sum("received SIGTERM, stopping" in line
                               for line in process.log) >= 3, "every process to stop")
        process.signal(signal.SIGTERM)
        assert process.wait() == 0  # long before the 30 s the stuck client could hold it
    finally:
        stuck.close()
    assert sum("received the main process's order, stopping now" in line
               for line in process.log) >= 1, process.log


def test_a_log_reader_that_goes_away_costs_lines_not_tracebacks(tmp_path: pathlib.Path) -> None:
    process = subprocess.Popen([REVERSERD, "run", "--port", "0", "--log-level", "debug"],
                               cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    try:
        port = None
        for _ in range(20):
            found = re.search(rb"listening on 127\.0\.0\.1:(\d+)", process.stdout.readline())
            if found:
                port = int(found.group(1))
                break
        assert port is not None
        process.stdout.close()  # as `reverserd run | head` does once head has its lines
        for _ in range(3):
            assert echoes(port)  # each logs two lines nobody takes any more
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE) == 0
        assert process.stderr.read() == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
