"""reverserd as an s6 service: scripts/s6 under a real s6-supervise, driven with s6-svc.

Readiness is reverserd's own: it writes to the descriptor ./notification-fd names once it
serves, and s6-svwait -U waits for that.

The shipped directory is copied into tmp_path unchanged; only its ./conf is written, which the
run files read (see service_dirs): REVERSERD becomes the virtualenv's reverserd instead of
/usr/local/bin/reverserd, REVERSERD_OPTIONS becomes --port 0 (any free port, read back from the
log) or an application file's options, and REVERSERD_LOGDIR a directory in tmp_path instead of
/var/log/reverserd.

A reload (``s6-svc -h``) must look like nothing to s6: the process it watches stays (the
keeper, which passes signals on to the generation serving now), up and ready since the same
moment; the reload tests share test_runit's way of following the generations.
"""

from __future__ import annotations

import pathlib
import re
import time
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
from tests.e2e.test_runit import TOOK_OVER, Generations, reload_and_check

S6_LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9})  (.*)")
SHORT_RECORD = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) reverserd[\w.]*: .+")
ISO_8601 = re.compile(r"\d{4}-\d\d-\d\d[T _]\d\d:\d\d")
WATCHED = ("up", "ready", "pid", "updownsince", "readysince")  # s6-svstat -o, for reloads
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


def test_s6_svc_h_reloads_behind_the_pid_s6_watches(s6: S6Service) -> None:
    """The pid, and the moments s6 saw the service come up and become ready (TAI64N labels,
    a restart renews both), are the same after each reload."""
    s6.start()
    keeper = s6.ready()
    generations = Generations(s6.log, keeper, s6.track)
    reload_and_check(generations, lambda: s6.svc("-h"), s6.port_of(keeper),
                     lambda: s6.svstat(*WATCHED))
    assert s6.svstat("up", "ready", "pid") == ["true", "true", str(keeper)]


def test_s6_svc_d_after_reloads_ends_the_keeper_and_every_generation(s6: S6Service) -> None:
    s6.start()
    keeper = s6.ready()
    port = s6.port_of(keeper)
    generations = Generations(s6.log, keeper, s6.track)
    for _ in range(2):
        generations.reload(lambda: s6.svc("-h"))
    last = generations.serving.pid
    s6.svc("-d")
    assert s6.svwait("-D").returncode == 0
    # The keeper's exit status is that of the generation serving last: 0 after its
    # graceful stop, and no signal killed the keeper.
    assert s6.svstat("up", "exitcode", "signal") == ["false", "0", "NA"]
    assert s6.stopped_gracefully(last)
    generations.all_ended(port)


def test_s6_sees_it_up_and_ready_all_through_reloads(s6: S6Service) -> None:
    """What s6 says while a reload happens is what s6-svwait, s6-rc and the services depending
    on this one go by: not once down, restarting or unready. Readiness is not announced again
    (the new generations are not the process s6 watches); it simply holds. With the log
    service, every generation's lines go through the same pipe to s6-log."""
    s6.start(logged=True)
    keeper = s6.ready()
    before = s6.svstat(*WATCHED)
    samples: list[list[str]] = []

    def reload_while_watching() -> None:
        def handovers() -> int:
            return sum(1 for line in s6.log() if TOOK_OVER.search(line))

        done = handovers()
        s6.svc("-h")
        deadline = time.monotonic() + DEADLINE
        for _ in range(10000):  # each s6-svstat takes a few milliseconds
            samples.append(s6.svstat(*WATCHED))
            if handovers() > done or time.monotonic() > deadline:
                break
        samples.append(s6.svstat(*WATCHED))

    generations = Generations(s6.log, keeper, s6.track)
    for _ in range(2):
        generations.reload(reload_while_watching)
        generations.only_the_serving_one_below_the_keeper()
    assert len(samples) >= 4
    assert [sample for sample in samples if sample != before] == []
    assert s6.svwait("-U", timeout_ms=1000).returncode == 0
    assert exchange(s6.port_of(generations.serving.pid)) == b"olleh\n"
    assert all(S6_LOG_LINE.fullmatch(line) for line in s6.log())
