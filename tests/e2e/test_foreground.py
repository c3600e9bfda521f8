"""Foreground mode: start-up, the log, graceful stop, and the command line."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import pytest

from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    ReverserdProcess,
    connect,
    receive_exactly,
    receive_until_closed,
    send_until_stalled,
    small_buffered_client,
)

ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([REVERSERD, *args], capture_output=True, text=True,
                          timeout=DEADLINE, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_with_exit_0_and_stopped_last(
    server: ReverserdProcess, signum: int,
) -> None:
    server.signal(signum)
    assert server.wait() == 0
    assert server.log[-1].endswith("INFO reverserd.runner: stopped")
    server.wait_for_log(rf"received {signal.Signals(signum).name}, stopping")
    assert server.stderr() == ""


def test_log_lines_carry_iso_time_level_and_logger(server: ReverserdProcess) -> None:
    first = server.log[0]
    assert re.fullmatch(
        rf"{ISO_TIME} INFO reverserd\.runner: reverserd \d+\.\d+\.\d+ starting: "
        rf"Python 3\.\d+\.\d+, pid {server.pid}, application Reverser, "
        r"(asyncio|uvloop) loop, compiled segmenter", first
    ), first
    server.wait_for_log(rf"^{ISO_TIME} INFO reverserd\.listening: listening on "
                        rf"127\.0\.0\.1:{server.port}$")


def test_lines_received_before_the_signal_are_answered_and_flushed(
    reverserd,
) -> None:
    process = reverserd("-n", "--port", "0")
    lines = [f"pending line {number}".encode() for number in range(5000)]
    expected = b"".join(line[::-1] + b"\n" for line in lines)
    with connect(process.port) as idle, connect(process.port) as busy:
        busy.sendall(b"warm up\n")
        assert receive_exactly(busy, 8) == b"pu mraw\n"
        busy.sendall(b"".join(line + b"\n" for line in lines))
        process.signal(signal.SIGTERM)
        assert receive_until_closed(busy) == expected
        assert receive_until_closed(idle) == b""
    assert process.wait() == 0
    assert process.log[-1].endswith("stopped")
    assert not [line for line in process.log if "still busy" in line]


def test_connections_still_busy_after_the_grace_period_are_closed(reverserd) -> None:
    process = reverserd("-n", "--port", "0", "--shutdown-timeout", "0.5")
    with small_buffered_client(process.port) as stuck:
        send_until_stalled(stuck, b"never read\n", 256 * 1024 * 1024)
        process.signal(signal.SIGTERM)
        assert process.wait() == 0
    process_log = "\n".join(process.log)
    assert "closing 1 connection(s) still busy after 0.5 s" in process_log
    assert process.log[-1].endswith("stopped")


def test_port_in_use_is_one_line_and_exit_1(reverserd) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = reverserd("--foreground", "--port", str(port))
        assert process.wait() == 1
        assert process.stderr() == (
            f"reverserd: cannot listen on 127.0.0.1:{port}: address already in use\n"
        )


def test_unknown_interface_is_one_line_and_exit_1() -> None:
    result = run_cli("-n", "--port", "0", "--interface", "no-such-host.invalid")
    assert result.returncode == 1
    assert result.stderr.startswith("reverserd: cannot listen on no-such-host.invalid:0: ")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "abc"], "--port"),
        (["--port", "-1"], "--port"),
        (["--max-line-length", "0"], "--max-line-length"),
        (["--shutdown-timeout", "soon"], "--shutdown-timeout"),
        (["--shutdown-timeout", "nan"], "--shutdown-timeout"),
        (["--log-level", "loud"], "--log-level"),
        (["--no-such-option"], "--no-such-option"),
        (["launch"], "verb"),
        (["--umask", "0800"], "--umask"),
        (["--log-max-bytes", "-5"], "--log-max-bytes"),
        (["--log-backups", "0"], "--log-backups"),
        (["--stop-timeout", "-1"], "--stop-timeout"),
        (["--logfile", "x.log", "--syslog"], "--syslog"),
        (["stop"], "--foreground"),
    ],
)
def test_bad_values_are_one_line_naming_the_option_and_exit_2(args: list[str],
                                                              option: str) -> None:
    result = run_cli("--foreground", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert option in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_no_verb_and_no_foreground_prints_usage_and_exit_2() -> None:
    result = run_cli("--port", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: reverserd")
    assert result.stderr.rstrip().endswith(
        "reverserd: give a verb (run, start, stop, status, restart, reload) or --foreground")


@pytest.mark.parametrize("args", [["--port", "0", "run"], ["run", "--port", "0"],
                                  ["--port", "0", "-n"]])
def test_options_mean_the_same_before_or_after_the_verb(reverserd, args: list[str]) -> None:
    process = reverserd(*args, "--max-line-length", "4")
    with connect(process.port) as sock:
        sock.sendall(b"abcd\nabcde\n")
        assert receive_until_closed(sock) == b"dcba\n"


def test_help_and_version() -> None:
    help_text = run_cli("--help")
    assert help_text.returncode == 0
    for option in ("--foreground", "--port", "--interface", "--max-line-length",
                   "--shutdown-timeout", "--log-level", "--version", "--pidfile", "--rundir",
                   "--umask", "--start-timeout", "--stop-timeout", "--logfile",
                   "--log-max-bytes", "--log-backups", "--syslog", "--syslog-prefix",
                   "start", "stop", "status", "restart"):
        assert option in help_text.stdout
    from reverserd import __version__
    assert run_cli("--version").stdout == f"reverserd {__version__}, compiled segmenter\n"


def test_python_dash_m_runs_the_same_program(reverserd) -> None:
    process = reverserd("-n", "--port", "0", command=[sys.executable, "-m", "reverserd"])
    with connect(process.port) as sock:
        sock.sendall(b"module\nquit\n")
        assert receive_until_closed(sock) == b"eludom\n"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_no_pidfile_unless_asked_for(reverserd, tmp_path) -> None:
    process = reverserd("-n", "--port", "0")
    process.wait_until_serving()
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert list(tmp_path.iterdir()) == []


def test_pidfile_in_the_foreground_makes_status_and_stop_work(reverserd, tmp_path) -> None:
    process = reverserd("run", "--port", "0", "--pidfile", "fg.pid")
    port = process.wait_until_serving()
    assert (tmp_path / "fg.pid").read_text() == f"{process.pid}\n"
    status = run_cli("status", "--pidfile", str(tmp_path / "fg.pid"))
    assert status.returncode == 0
    assert f"reverserd running: pid {process.pid}, listening on 127.0.0.1:{port}, up " \
        in status.stdout
    stop = run_cli("stop", "--pidfile", str(tmp_path / "fg.pid"))
    assert stop.stdout == f"reverserd stopped: pid {process.pid}\n"
    assert process.wait() == 0
    assert process.log[-1].endswith("stopped")
    # pidfile, lock and state file are removed; the options stay for a restart
    assert [path.name for path in tmp_path.iterdir()] == ["fg.pid.options"]


def test_a_second_foreground_with_the_same_pidfile_is_refused(reverserd, tmp_path) -> None:
    first = reverserd("-n", "--port", "0", "--pidfile", "fg.pid")
    first.wait_until_serving()
    second = reverserd("-n", "--port", "0", "--pidfile", "fg.pid")
    assert second.wait() == 1
    assert second.stderr() == f"reverserd: already running: pid {first.pid}\n"
    assert (tmp_path / "fg.pid").read_text() == f"{first.pid}\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_forces_the_stop(reverserd, signum: int) -> None:
    process = reverserd("-n", "--port", "0", "--shutdown-timeout", "600")
    name = signal.Signals(signum).name
    with small_buffered_client(process.port) as stuck:
        send_until_stalled(stuck, b"never read\n", 256 * 1024 * 1024)
        process.signal(signum)
        process.wait_for_log(rf"received {name}, stopping$")
        process.signal(signum)
        assert process.wait() == 0
    process.wait_for_log(rf"WARNING reverserd\.runner: received {name} again, stopping now$")
    process.wait_for_log(r"closing 1 connection\(s\) at once: stop forced")
    assert process.log[-1].endswith("stopped")
