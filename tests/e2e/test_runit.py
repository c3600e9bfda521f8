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
import signal
from collections.abc import Iterator

import pytest

from tests.e2e.service_dirs import (
    SCRIPTS,
    Process,
    RunitService,
    check_run_file,
    command_line,
    exchange,
    processes_in,
    refuses,
)
from tests.e2e.support import DEADLINE, REVERSERD, wait_until

SVLOGD_LINE = re.compile(r"(\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d\.\d{5}) (.*)")
SHORT_RECORD = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) reverserd[\w.]*: .+")
ISO_8601 = re.compile(r"\d{4}-\d\d-\d\d[T _]\d\d:\d\d")


@pytest.fixture
def runit(tmp_path: pathlib.Path) -> Iterator[RunitService]:
    """A copy of scripts/runit; the test starts runsv, and teardown ends it by its pid."""
    service = RunitService(tmp_path)
    try:
        yield service
    finally:
        service.end()


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
