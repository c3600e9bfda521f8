"""The log file: each record one line, and failures that never reach the caller.

Real files throughout; a full disk is a small tmpfs (mounting needs root, as
in CI), a file size limit is set in a child process.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from reverserd import logs
from reverserd.errors import UserError
from tests.conftest import fill
from tests.e2e.support import wait_until

LOST = re.compile(r"^\S+ WARNING reverserd\.logs: (\d+) log records? lost between (\S+) and "
                  r"(\S+): (.+)$")


@pytest.fixture
def checking_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the file at every record instead of once a second, so tests
    need not wait; one test keeps the real interval."""
    monkeypatch.setattr(logs, "CHECK_INTERVAL", 0.0)


class Log:
    """A log file opened as reverserd opens it, and a logger writing only to it."""

    def __init__(self, path: pathlib.Path, max_bytes: int = 0, backups: int = 1,
                 allowed_owners: frozenset[int] | None = None) -> None:
        self.path = path
        self.handler = logs.open_log_file(path, max_bytes, backups, allowed_owners)
        self.logger = logging.getLogger(f"test.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)

    def __call__(self, message: str) -> None:
        self.logger.info("%s", message)

    def lines(self, path: pathlib.Path | None = None) -> list[str]:
        return (path or self.path).read_text().splitlines()

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()


@pytest.fixture
def opened() -> Iterator[list[Log]]:
    """Logs opened by a test, closed after it."""
    made: list[Log] = []
    yield made
    for log in made:
        log.close()


def open_log(opened: list[Log], path: pathlib.Path, **options: int) -> Log:
    log = Log(path, **options)
    opened.append(log)
    return log


def messages(lines: list[str]) -> list[str]:
    return [line.split(": ", 1)[1] for line in lines]


def test_each_record_is_one_line_appended_to_what_was_there(
        opened: list[Log], tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("from before\n")
    log = open_log(opened, path)
    log("one")
    log("two\nlines")
    lines = log.lines()
    assert lines[0] == "from before"
    assert re.fullmatch(r"\S+ INFO test\.\d+: one", lines[1]), lines
    assert messages(lines[2:3]) == ["two"] and lines[3:] == ["lines"]


def test_a_new_log_file_is_not_readable_by_others(opened: list[Log],
                                                  tmp_path: pathlib.Path) -> None:
    previous = os.umask(0o022)
    try:
        open_log(opened, tmp_path / "x.log")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "x.log").stat().st_mode) == 0o640


def test_a_deleted_log_file_is_reopened_by_name_within_a_second(
        opened: list[Log], tmp_path: pathlib.Path) -> None:
    log = open_log(opened, tmp_path / "x.log")
    log("before")
    log.path.unlink()
    deleted = time.monotonic()
    wait_until(lambda: log.handler.tick() or log.path.exists(), "the log to be made again",
               timeout=2.0)
    assert time.monotonic() - deleted < 1.5
    log("after")
    assert messages(log.lines()) == ["after"]


def test_a_record_after_a_deletion_reopens_the_file_without_a_tick(
        opened: list[Log], tmp_path: pathlib.Path, checking_always: None) -> None:
    log = open_log(opened, tmp_path / "x.log")
    log.path.unlink()
    log("after")
    assert messages(log.lines()) == ["after"]


def test_a_replaced_log_file_is_followed_and_the_old_one_let_go(
        opened: list[Log], tmp_path: pathlib.Path, checking_always: None) -> None:
    log = open_log(opened, tmp_path / "x.log")
    log("before")
    log.path.rename(tmp_path / "x.log.old")
    log.path.write_text("")
    log("after")
    assert messages(log.lines()) == ["after"]
    assert messages(log.lines(tmp_path / "x.log.old")) == ["before"]


def test_a_moved_log_file_with_nothing_in_its_place_is_kept_until_reopened(
        opened: list[Log], tmp_path: pathlib.Path, checking_always: None) -> None:
    log = open_log(opened, tmp_path / "x.log")
    moved = tmp_path / "x.log.1"
    log.path.rename(moved)
    log("still to the moved file")
    assert not log.path.exists()
    log.handler.reopen()
    log("to the new file")
    assert messages(log.lines(moved)) == ["still to the moved file"]
    assert messages(log.lines()) == ["to the new file"]


def test_a_removed_log_directory_is_made_again_as_it_was(
        opened: list[Log], tmp_path: pathlib.Path, checking_always: None) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    directory.chmod(0o750)
    log = open_log(opened, directory / "x.log")
    log("before")
    shutil.rmtree(directory)
    log("after")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert messages(log.lines()) == ["after"]
    log.handler.reopen()  # by the new directory's descriptor
    log("reopened")
    assert messages(log.lines()) == ["after", "reopened"]


def test_a_directory_that_cannot_be_made_again_is_retried_until_it_can(
        opened: list[Log], tmp_path: pathlib.Path, checking_always: None,
        capfd: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "var"
    (parent / "logs").mkdir(parents=True)
    log = open_log(opened, parent / "logs" / "x.log")
    shutil.rmtree(parent)
    parent.write_text("a file where the log's directory was")
    for number in range(3):
        log(f"lost {number}")
    assert log.handler.lost == 3 and log.handler.failure == "not a directory"
    parent.unlink()
    log("back")
    lines = log.lines()
    found = LOST.match(lines[0])
    assert found and found[1] == "3" and found[4] == "not a directory", lines
    assert messages(lines[1:]) == ["back"]
    assert capfd.readouterr() == ("", "")


def test_a_full_disk_loses_records_quietly_and_counts_them(
        opened: list[Log], small_disk: pathlib.Path, checking_always: None,
        capfd: pytest.CaptureFixture[str]) -> None:
    log = open_log(opened, small_disk / "x.log")
    log("before")
    filler = fill(small_disk)
    sent = 0
    while log.handler.lost < 5:  # the file's last block may still take a few lines
        log(f"record {sent:04} end")
        sent += 1
        assert sent < 1000
    lost = log.handler.lost
    filler.unlink()
    log("after")
    lines = log.lines()
    reports = [LOST.match(line) for line in lines]
    counted = [found for found in reports if found]
    assert len(counted) == 1, lines
    assert counted[0][1] == str(lost) and counted[0][4] == "no space left on device"
    assert lines[-1].endswith(": after") and LOST.match(lines[-2]), lines
    written = sum(1 for line in lines if re.search(r": record \d{4} end$", line))
    assert written + lost == sent  # a line cut short by the full disk counts as lost
    assert capfd.readouterr() == ("", "")
    assert log.handler.lost == 0 and log.handler.failure is None


def test_while_failing_records_are_only_counted_until_the_next_check(
        opened: list[Log], small_disk: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "CHECK_INTERVAL", 3600.0)
    log = open_log(opened, small_disk / "x.log")
    filler = fill(small_disk)
    while log.handler.lost == 0:
        log("filling")
    filler.unlink()
    size = log.path.stat().st_size
    for _ in range(100):
        log("counted, not tried")
    assert log.handler.lost == 101 and log.path.stat().st_size == size
    log.handler.reopen()
    found = LOST.match(log.lines()[-1])
    assert found and found[1] == "101", log.lines()[-3:]


def test_a_failing_log_is_written_again_within_a_second_of_recovering(
        opened: list[Log], small_disk: pathlib.Path) -> None:
    log = open_log(opened, small_disk / "x.log")
    filler = fill(small_disk)
    while log.handler.lost == 0:
        log("filling")
    filler.unlink()
    freed = time.monotonic()
    wait_until(lambda: log.handler.tick() or log.handler.failure is None,
               "the log to be written again", timeout=3.0)
    assert time.monotonic() - freed < 1.5
    assert LOST.match(log.lines()[-1]), log.lines()[-3:]


RUN_WITH_FILE_SIZE_LIMIT = textwrap.dedent("""\
    import logging, pathlib, resource, sys
    from reverserd import logs
    logs.CHECK_INTERVAL = 0.0
    logs.install(logs.open_log_file(pathlib.Path(sys.argv[1]), 0, 1), "info")
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    log = logging.getLogger("limited")
    for number in range(int(sys.argv[3])):
        log.info("record %d of a fairly long line to reach the limit soon", number)
    try:
        logs.raise_if_unwritable()
    except logs.UserError as error:
        print(error)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    log.info("after")
""")


def python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child, bounded in time (a blocking open fails the test)."""
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=30, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def run_with_file_size_limit(path: pathlib.Path, limit: int,
                             records: int) -> subprocess.CompletedProcess[str]:
    return python(RUN_WITH_FILE_SIZE_LIMIT, str(path), str(limit), str(records))


def test_a_file_size_limit_loses_records_instead_of_killing_the_process(
        tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    result = run_with_file_size_limit(path, 1000, 50)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    lines = path.read_text().splitlines()
    assert path.stat().st_size > 1000
    found = [match for line in lines if (match := LOST.match(line))]
    assert len(found) == 1 and found[0][4] == "file too large", lines
    written = sum(1 for line in lines if "record" in line and not LOST.match(line))
    assert written + int(found[0][1]) == 50
    assert lines[-1].endswith("INFO limited: after")


def test_a_log_that_takes_no_line_at_all_is_an_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    result = run_with_file_size_limit(path, 0, 1)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"cannot write log file {path}: file too large\n"


def test_rotation_keeps_the_backups_asked_for(
        opened: list[Log], tmp_path: pathlib.Path) -> None:
    log = open_log(opened, tmp_path / "x.log", max_bytes=500, backups=2)
    for number in range(40):
        log(f"record {number:02}")
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["x.log", "x.log.1", "x.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 500
    assert messages(log.lines())[-1] == "record 39"


def test_a_process_sharing_the_log_follows_a_rotation_instead_of_rotating_again(
        opened: list[Log], tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    first = open_log(opened, path, max_bytes=400, backups=5)
    second = open_log(opened, path, max_bytes=400, backups=5)
    for number in range(30):
        (first if number % 2 else second)(f"record {number:02}")
    files = sorted(tmp_path.iterdir(), reverse=True)
    records = [message for file in files for message in messages(first.lines(file))]
    assert records == [f"record {number:02}" for number in range(30)]
    line = len(first.lines()[0]) + 1
    for file in files:
        assert file.stat().st_size <= 400
        if file != path:
            assert file.stat().st_size > 400 - line, f"{file.name} rotated before it was full"


def test_a_rotation_by_another_process_is_followed_within_a_second(
        opened: list[Log], tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    rotating = open_log(opened, path, max_bytes=300, backups=1)
    other = open_log(opened, path, max_bytes=300, backups=1)
    while not (tmp_path / "x.log.1").exists():
        rotating("filling")
    wait_until(lambda: other.handler.tick() or other.handler.fd >= 0
               and os.fstat(other.handler.fd).st_ino == path.stat().st_ino,
               "the other process to follow the rotation", timeout=2.0)


def test_a_failed_reopen_is_reported_to_the_caller_then_retried(
        opened: list[Log], tmp_path: pathlib.Path, checking_always: None) -> None:
    log = open_log(opened, tmp_path / "x.log")
    log.path.rename(tmp_path / "x.log.1")
    log.path.mkdir()
    with pytest.raises(OSError, match=rf"^refusing log file {re.escape(str(log.path))}: "
                                      "it is a directory$"):
        log.handler.reopen()
    log("lost")
    log.path.rmdir()
    log("back")
    lines = log.lines()
    found = LOST.match(lines[0])
    assert found and found[1] == "1", lines
    assert found[4] == f"refusing log file {log.path}: it is a directory"
    assert messages(lines[1:]) == ["back"]


@pytest.mark.parametrize("kind", ["directory", "symbolic link", "socket"])
def test_what_is_not_a_regular_file_is_refused(tmp_path: pathlib.Path, kind: str) -> None:
    path = tmp_path / "x.log"
    if kind == "directory":
        path.mkdir()
    elif kind == "symbolic link":
        (tmp_path / "target").write_text("")
        path.symlink_to(tmp_path / "target")
    else:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.close()
    with pytest.raises(UserError) as raised:
        logs.open_log_file(path, 0, 1)
    assert str(raised.value) == f"refusing log file {path}: it is a {kind}"


OPEN_A_FIFO = textwrap.dedent("""\
    import pathlib, sys
    from reverserd import logs
    try:
        logs.open_log_file(pathlib.Path(sys.argv[1]), 0, 1)
    except logs.UserError as error:
        print(error)
""")


@pytest.mark.parametrize("with_reader", [False, True])
def test_a_fifo_is_refused_at_once(tmp_path: pathlib.Path, with_reader: bool) -> None:
    path = tmp_path / "x.log"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK) if with_reader else -1
    try:
        result = python(OPEN_A_FIFO, str(path))
    finally:
        if reader >= 0:
            os.close(reader)
    assert (result.stdout, result.stderr) == (f"refusing log file {path}: it is a FIFO\n", "")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_log_file_owned_by_someone_else_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("")
    os.chown(path, 1001, 1001)
    with pytest.raises(UserError) as raised:
        logs.open_log_file(path, 0, 1, frozenset({0, os.geteuid()}))
    assert str(raised.value) == (f"refusing log file {path}: owned by uid 1001, not by root "
                                 "or the daemon's user")
    logs.open_log_file(path, 0, 1, frozenset({0, 1001})).close()
    logs.open_log_file(path, 0, 1).close()


def test_dev_null_discards_the_log(checking_always: None, opened: list[Log]) -> None:
    log = open_log(opened, pathlib.Path(os.devnull), max_bytes=10, backups=1)
    for number in range(5):
        log(f"record {number}")
    log.handler.reopen()
    log.handler.tick()
    assert log.handler.written and log.handler.lost == 0
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_emitting_to_a_failing_log_costs_no_more_than_to_a_healthy_one(
        opened: list[Log], small_disk: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Not timed (figures vary by machine): prints them, for ``pytest -s``."""
    def cost(log: Log, records: int = 20000) -> float:
        started = time.perf_counter()
        for _ in range(records):
            log.logger.debug("connection from %s:%d closed", "127.0.0.1", 54321)
        return (time.perf_counter() - started) / records * 1e6

    healthy = open_log(opened, tmp_path / "healthy.log", max_bytes=10**9)
    full = open_log(opened, small_disk / "full.log", max_bytes=10**9)
    fill(small_disk)
    directory = tmp_path / "removed"
    directory.mkdir()
    removed = open_log(opened, directory / "x.log", max_bytes=10**9)
    shutil.rmtree(directory)
    directory.write_text("in the way")
    wait_until(lambda: removed("noticed yet?") or removed.handler.lost,
               "the removed directory to be noticed", timeout=3.0)
    cost(healthy, 2000)
    figures = {"healthy": cost(healthy), "full disk": cost(full),
               "removed directory": cost(removed)}
    assert full.handler.lost >= 20000 and removed.handler.lost >= 20000
    print("\nµs per record:", ", ".join(f"{name} {value:.2f}" for name, value in figures.items()))


def _record(level: int, message: str, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("reverserd.x", level, __file__, 1, message, None,
                             exc_info)  # type: ignore[arg-type]


@pytest.mark.parametrize(("level", "prefix"), [
    (logging.CRITICAL, "<2>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"),
    (logging.INFO, "<6>"), (logging.DEBUG, "<7>")])
def test_journal_lines_carry_sd_daemon_priorities(level: int, prefix: str) -> None:
    line = logs.formatter("journal").format(_record(level, "hi"))
    assert line == f"{prefix}{logging.getLevelName(level)} reverserd.x: hi"


def test_every_line_of_a_journal_traceback_is_prefixed() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = _record(logging.ERROR, "failed", sys.exc_info())
    lines = logs.formatter("journal").format(record).split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: bad"


def test_short_and_full_lines() -> None:
    record = _record(logging.INFO, "hi")
    assert logs.formatter("short").format(record) == "INFO reverserd.x: hi"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d INFO reverserd.x: hi",
                        logs.formatter("full").format(record))


def test_journal_stream_names_a_descriptor(tmp_path: pathlib.Path) -> None:
    with open(tmp_path / "out", "w") as out:
        fd = out.fileno()
        found = os.fstat(fd)
        assert logs.is_journal_stream(fd, {"JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"})
        for value in (f"{found.st_dev}:{found.st_ino + 1}", "", "x:y", f"{found.st_dev}"):
            assert not logs.is_journal_stream(fd, {"JOURNAL_STREAM": value})
    assert not logs.is_journal_stream(fd, {"JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"})
