"""reverserd as an s6 service: scripts/s6 under a real s6-supervise, driven with s6-svc.

Readiness is reverserd's own: it writes to the descriptor ./notification-fd names once it
serves, and s6-svwait -U waits for that.

The shipped directory is copied into tmp_path unchanged; only its ./conf is written, which the
run files read (see service_dirs): REVERSERD becomes the virtualenv's reverserd instead of
/usr/local/bin/reverserd, REVERSERD_OPTIONS becomes --port 0 (any free port, read back from the
log) or an application file's options, and REVERSERD_LOGDIR a directory in tmp_path instead of
/var/log/reverserd.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import pytest

from tests.e2e.service_dirs import (
    SCRIPTS,
    Process,
    S6Service,
    check_run_file,
    command_line,
    exchange,
    processes_in,
    refuses,
)
from tests.e2e.support import DEADLINE, REVERSERD, wait_until

S6_LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9})  (.*)")
SHORT_RECORD = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) reverserd[\w.]*: .+")
ISO_8601 = re.compile(r"\d{4}-\d\d-\d\d[T _]\d\d:\d\d")
SLOW_START = 1.0  # seconds the application below takes before its listener serves

SLOW_APPLICATION = """\
import asyncio
import pathlib

from reverserd import Application, Reverser, Service, listen


class SlowStart(Service):
    async def start_service(self):
        await super().start_service()
        await asyncio.sleep({delay})
        pathlib.Path({marker!r}).write_text("started")


application = Application("slow")
SlowStart().set_service_parent(application)
listen("tcp:0", Reverser).set_service_parent(application)
"""


@pytest.fixture
def s6(tmp_path: pathlib.Path) -> Iterator[S6Service]:
    """A copy of scripts/s6; the test starts s6-supervise, and teardown ends it by its pid."""
    service = S6Service(tmp_path)
    try:
        yield service
    finally:
        service.end()


@pytest.mark.parametrize("name", ["run", "log/run"])
def test_the_shipped_run_files_are_executable_posix_sh(name: str) -> None:
    check_run_file(SCRIPTS / "s6" / name)


def test_notification_fd_names_the_descriptor_reverserd_writes_to() -> None:
    descriptor = (SCRIPTS / "s6" / "notification-fd").read_text()
    assert re.fullmatch(r"\d+\n", descriptor)
    commands = [line for line in (SCRIPTS / "s6" / "run").read_text().splitlines()
                if line.startswith("exec ") and "--ready-fd" in line]
    assert len(commands) == 1
    ready_fd = re.search(r" --ready-fd (\d+) ", commands[0])
    assert ready_fd and ready_fd.group(1) == descriptor.strip()


def test_s6_svwait_returns_once_reverserd_serves(s6: S6Service) -> None:
    s6.start()
    pid = s6.ready()
    arguments = command_line(pid)  # the pid s6 watches is the server's: the run file execs it
    assert REVERSERD in arguments
    assert arguments[arguments.index(REVERSERD) + 1:] == [
        "run", "--log-format", "short", "--ready-fd", "3", "--port", "0"]
    assert exchange(s6.port_of(pid)) == b"olleh\n"


def test_readiness_waits_until_the_application_serves(
        s6: S6Service, tmp_path: pathlib.Path) -> None:
    """With an application that takes a second to start, s6 sees it up at once but ready only
    once its listener serves: the readiness comes from reverserd, not from s6 guessing."""
    marker = tmp_path / "slept"
    application = tmp_path / "slow_app.py"
    application.write_text(SLOW_APPLICATION.format(delay=SLOW_START, marker=str(marker)))
    s6.write_conf(f"-y {application}")
    s6.start()
    wait_until(lambda: s6.svstat("up") == ["true"], "s6 to see the service up")
    early = s6.svstat("ready")
    assert not marker.exists()
    assert early == ["false"]
    pid = s6.ready()
    assert marker.exists()
    assert exchange(s6.port_of(pid)) == b"olleh\n"


def test_s6_svc_stops_starts_and_restarts_it(s6: S6Service) -> None:
    s6.start()
    pid = s6.ready()
    port = s6.port_of(pid)

    s6.svc("-d")
    assert s6.svwait("-D").returncode == 0
    assert s6.svstat("up", "exitcode") == ["false", "0"]  # SIGTERM: a graceful stop, exit 0
    wait_until(lambda: s6.stopped_gracefully(pid), f"pid {pid} to log a graceful stop")
    assert refuses(port)

    s6.svc("-u")
    started = s6.ready()
    assert started != pid
    assert exchange(s6.port_of(started)) == b"olleh\n"

    s6.svc("-r")
    wait_until(lambda: s6.svstat("pid") not in ([str(started)], ["-1"], []),
               "s6 to start a new reverserd")
    restarted = s6.ready()
    assert restarted != started
    wait_until(lambda: s6.stopped_gracefully(started), f"pid {started} to log a graceful stop")
    assert exchange(s6.port_of(restarted)) == b"olleh\n"


def test_ending_s6_supervise_ends_reverserd_gracefully(s6: S6Service) -> None:
    s6.start()
    pid = s6.ready()
    server = Process.of(pid)
    assert server is not None
    s6.svc("-d", "-x")
    (supervisor,) = s6.children
    assert supervisor.wait(DEADLINE) == 0
    assert not server.alive()
    assert s6.stopped_gracefully(pid)
    assert not processes_in(s6.root)


def test_s6_log_stamps_each_line_once(s6: S6Service) -> None:
    """reverserd leaves its own timestamp out (--log-format short): s6-log's is the only one."""
    assert not s6.logdir.exists()  # log/run makes it
    s6.start(logged=True)
    pid = s6.ready()
    assert exchange(s6.port_of(pid)) == b"olleh\n"
    s6.svc("-d")
    assert s6.svwait("-D").returncode == 0
    wait_until(lambda: s6.stopped_gracefully(pid), f"pid {pid} to log a graceful stop")
    lines = s6.log()
    assert len(lines) >= 5
    for line in lines:
        stamped = S6_LOG_LINE.fullmatch(line)
        assert stamped, line
        assert SHORT_RECORD.fullmatch(stamped.group(2)), line
        assert not ISO_8601.search(stamped.group(2)), line
