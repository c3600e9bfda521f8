"""The daemon's log: format, rotation, reopening, captured stderr, syslog."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import textwrap

from tests.e2e.daemons import DaemonDirectory
from tests.e2e.support import connect, receive_until_closed, wait_until

ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"

NOISY_APP = textwrap.dedent("""\
    import os
    import sys
    import threading

    from reverserd import Application, Reverser, TCPServer


    class Noisy(Reverser):
        def handle_noise(self):
            print("printed to stdout")
            print("printed to stderr", file=sys.stderr)
            os.write(2, b"written to descriptor 2\\n")
            worker = threading.Thread(target=lambda: 1 / 0, name="doomed")
            worker.start()
            worker.join()
            self.transport.write(b"done\\n")


    application = Application("noisy")
    TCPServer(0, Noisy).set_service_parent(application)
""")


def talk(port: int, *lines: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"".join(line + b"\n" for line in (*lines, b"quit")))
        return receive_until_closed(sock)


def test_log_lines_tell_the_daemon_story(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--log-level", "debug")
    assert talk(daemon.port, b"abc") == b"cba\n"
    daemons.stop()
    lines = daemons.log_lines()
    assert re.fullmatch(rf"{ISO_TIME} INFO reverserd\.runner: reverserd \d+\.\d+\.\d+ "
                        rf"starting: Python 3\.\d+\.\d+, pid {daemon.pid}, application "
                        r"Reverser, (asyncio|uvloop) loop, compiled segmenter", lines[0]), lines[0]
    expected_in_order = [
        rf"INFO reverserd\.listening: listening on 127\.0\.0\.1:{daemon.port}$",
        r"DEBUG reverserd\.protocol: connection from 127\.0\.0\.1:\d+$",
        r"DEBUG reverserd\.protocol: connection from 127\.0\.0\.1:\d+ closed$",
        r"INFO reverserd\.runner: received SIGTERM, stopping$",
        r"INFO reverserd\.runner: stopped$",
    ]
    position = 0
    for pattern in expected_in_order:
        position = next(index for index in range(position, len(lines))
                        if re.search(pattern, lines[index]))
    assert position == len(lines) - 1
    assert all(re.match(rf"{ISO_TIME} (DEBUG|INFO) ", line) for line in lines), lines


def test_the_log_rotates_by_size_keeping_the_backups_asked_for(
    daemons: DaemonDirectory,
) -> None:
    daemon = daemons.start("--log-level", "debug", "--log-max-bytes", "2000",
                           "--log-backups", "2")
    for _ in range(40):
        assert talk(daemon.port, b"rotate") == b"etator\n"
    names = sorted(path.name for path in daemons.path.glob("reverserd.log*"))
    assert names == ["reverserd.log", "reverserd.log.1", "reverserd.log.2"]
    for name in names:
        assert (daemons.path / name).stat().st_size <= 2000
    daemons.stop()
    assert daemons.log_lines()[-1].endswith("stopped")


def test_sigusr1_reopens_the_log_after_it_was_moved(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--log-max-bytes", "0")
    moved = daemons.path / "reverserd.log.old"
    daemons.logfile.rename(moved)
    os.kill(daemon.pid, signal.SIGUSR1)
    wait_until(daemons.logfile.exists, "the log file to be reopened")
    assert talk(daemon.port, b"still here") == b"ereh llits\n"
    assert int(daemons.pidfile.read_text()) == daemon.pid  # reopened, not reloaded
    daemons.stop()
    assert "received SIGUSR1, reopening the log file" in moved.read_text()
    new_log = daemons.log()
    assert "log file reopened" in new_log and new_log.rstrip().endswith("stopped")


def test_a_reload_opens_the_log_afresh_after_it_was_moved(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--log-max-bytes", "0")
    moved = daemons.path / "reverserd.log.old"
    daemons.logfile.rename(moved)
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: daemons.logfile.exists() and "took over from pid" in daemons.log(),
               "the new generation to log under the log's name")
    assert talk(daemon.port, b"still here") == b"ereh llits\n"
    daemons.stop()
    assert "received SIGHUP" not in moved.read_text()  # the log was opened afresh first
    assert "received SIGHUP, reloading" in daemons.log()
    assert f"took over from pid {daemon.pid}" in daemons.log()
    assert daemons.log().rstrip().endswith("stopped")


def test_output_and_uncaught_errors_land_in_the_log(daemons: DaemonDirectory) -> None:
    (daemons.path / "noisy.py").write_text(NOISY_APP)
    started = daemons.run("start", "-y", "noisy.py")
    assert started.returncode == 0, started
    port = int(started.stdout.rsplit(":", 1)[1])
    daemons.logfile.rename(daemons.path / "before-reopen.log")
    pid = int(daemons.pidfile.read_text())
    os.kill(pid, signal.SIGUSR1)
    wait_until(daemons.logfile.exists, "the log file to be reopened")
    assert talk(port, b"noise") == b"done\n"
    daemons.stop()
    log = daemons.log()
    assert re.search(rf"{ISO_TIME} INFO stdout: printed to stdout\n", log)
    assert re.search(rf"{ISO_TIME} ERROR stderr: printed to stderr\n", log)
    assert "\nwritten to descriptor 2\n" in log  # raw writes follow the reopened log
    assert re.search(rf"{ISO_TIME} CRITICAL reverserd\.logs: uncaught exception in thread "
                     r"doomed\nTraceback", log)
    assert "ZeroDivisionError" in log


def test_syslog_receives_each_event_with_its_priority(daemons: DaemonDirectory) -> None:
    address = daemons.path / "syslog.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(address))
        syslog.settimeout(15)
        daemon = daemons.start("--syslog", "--syslog-address", str(address),
                               "--syslog-prefix", "revtest", "--max-connections", "1")
        assert talk(daemon.port, b"at the cap") == b"pac eht ta\n"
        daemons.stop()
        messages = []
        while not messages or not messages[-1].endswith(b"stopped\x00"):
            messages.append(syslog.recv(65536))
    daemon_info = 3 * 8 + 6
    daemon_warning = 3 * 8 + 4
    assert messages[0].startswith(
        f"<{daemon_info}>revtest[{daemon.pid}]: INFO reverserd.runner: reverserd ".encode())
    assert any(message.startswith(f"<{daemon_warning}>revtest[{daemon.pid}]: WARNING "
                                  "reverserd.policy: reached the cap".encode())
               for message in messages), messages
    assert not daemons.logfile.exists()


def test_syslog_that_is_not_there_is_a_one_line_error(daemons: DaemonDirectory) -> None:
    missing = pathlib.Path(daemons.path / "no-syslog.sock")
    result = daemons.run("start", "--port", "0", "--syslog", "--syslog-address", str(missing))
    assert result.returncode == 1
    assert result.stderr == (f"reverserd: cannot reach the system logger at {missing}: "
                             "no such file or directory\n")
    assert not daemons.pidfile.exists()
