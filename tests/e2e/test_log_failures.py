"""A failing log never hurts serving: clients keep their answers while the log
file is deleted, its directory removed or its disk full, and the log recovers
and says how many records it lost."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
from collections.abc import Callable

from tests.conftest import fill
from tests.e2e.daemons import DaemonDirectory
from tests.e2e.support import ReverserdProcess, connect, receive_until_closed, wait_until

LOST = re.compile(r"WARNING reverserd\.logs: (\d+) log records? lost between \S+ and \S+: "
                  r"(.+)$", re.MULTILINE)


def exchange(port: int, text: bytes = b"abc") -> None:
    """One connection, one line answered: two debug records in the log."""
    with connect(port) as sock:
        sock.sendall(text + b"\nquit\n")
        assert receive_until_closed(sock) == text[::-1] + b"\n"


def read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def serving_with_log(reverserd: Callable[..., ReverserdProcess],
                     logfile: pathlib.Path) -> tuple[ReverserdProcess, int]:
    process = reverserd("--foreground", "--port", "0", "--log-level", "debug",
                        "--logfile", str(logfile))
    found = wait_until(lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)", read(logfile)),
                       "the daemon to log its port")
    assert isinstance(found, re.Match)
    return process, int(found[1])


def open_log_files(pid: int) -> list[str]:
    """What the process's descriptors point at, among log files."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if ".log" in target:
            targets.append(target)
    return targets


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and "Logging error" not in text, text


def lost_line_once_writable(port: int, logfile: pathlib.Path, what: str) -> re.Match[str]:
    """Keep clients coming (each connection logs) until the log says what it lost."""

    def recovered() -> re.Match[str] | None:
        exchange(port)
        return LOST.search(read(logfile))

    found = wait_until(recovered, what, timeout=5.0)
    assert isinstance(found, re.Match)
    return found


def test_a_deleted_log_file_is_reopened_and_let_go(
        reverserd: Callable[..., ReverserdProcess], tmp_path: pathlib.Path) -> None:
    logfile = tmp_path / "x.log"
    process, port = serving_with_log(reverserd, logfile)
    logfile.unlink()

    def reopened() -> bool:
        exchange(port)
        return logfile.exists()

    wait_until(reopened, "the log file to be made again", timeout=5.0)
    exchange(port, b"after")
    wait_until(lambda: "connection from" in read(logfile), "records in the new file")
    assert open_log_files(process.pid) == [str(logfile)], "the deleted file is let go"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert read(logfile).endswith("INFO reverserd.runner: stopped\n")
    assert_no_traceback(read(logfile), process.stderr())


def test_a_removed_log_directory_is_made_again(
        reverserd: Callable[..., ReverserdProcess], tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o750)
    logfile = directory / "x.log"
    process, port = serving_with_log(reverserd, logfile)
    shutil.rmtree(directory)

    def made_again() -> bool:
        exchange(port)
        return logfile.exists()

    wait_until(made_again, "the log directory and file to be made again", timeout=5.0)
    assert oct(directory.stat().st_mode & 0o777) == oct(0o750)
    process.signal(signal.SIGUSR1)
    wait_until(lambda: "log file reopened" in read(logfile), "the log to be reopened")
    exchange(port)
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert read(logfile).endswith("INFO reverserd.runner: stopped\n")
    assert_no_traceback(read(logfile), process.stderr())


def test_a_log_directory_that_cannot_be_made_is_waited_for_without_slowing_clients(
        reverserd: Callable[..., ReverserdProcess], tmp_path: pathlib.Path) -> None:
    parent = tmp_path / "var"
    directory = parent / "logs"
    directory.mkdir(parents=True)
    logfile = directory / "x.log"
    process, port = serving_with_log(reverserd, logfile)
    shutil.rmtree(parent)
    parent.write_text("in the way of the log directory")
    process.signal(signal.SIGUSR1)  # a reopen that cannot succeed
    for _ in range(200):
        exchange(port)
    parent.unlink()
    found = lost_line_once_writable(port, logfile, "the log to come back")
    assert int(found[1]) >= 400 and found[2] == "not a directory", found[0]
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert len(LOST.findall(read(logfile))) == 1
    assert_no_traceback(read(logfile), process.stderr())


def test_a_full_disk_loses_log_records_not_clients(
        reverserd: Callable[..., ReverserdProcess], small_disk: pathlib.Path) -> None:
    logfile = small_disk / "x.log"
    process, port = serving_with_log(reverserd, logfile)
    filler = fill(small_disk)
    for _ in range(300):
        exchange(port)
    filler.unlink()
    found = lost_line_once_writable(port, logfile, "the log to be written again")
    assert int(found[1]) >= 500 and found[2] == "no space left on device", found[0]
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    log = read(logfile)
    assert len(LOST.findall(log)) == 1 and log.endswith("INFO reverserd.runner: stopped\n")
    assert_no_traceback(log, process.stderr())


def test_start_with_a_log_that_takes_no_line_fails_with_one_line(
        daemons: DaemonDirectory, small_disk: pathlib.Path) -> None:
    fill(small_disk)
    logfile = small_disk / "x.log"
    result = daemons.run("start", "--port", "0", "--logfile", str(logfile))
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr == (f"reverserd: cannot write log file {logfile}: "
                             "no space left on device\n")
    assert not daemons.pidfile.exists()
