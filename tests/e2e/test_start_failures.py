"""``start`` tells the truth: every failure is one line, exit 1, nothing left behind."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import textwrap

import pytest

from tests.e2e.daemons import DaemonDirectory, is_alive, reverserd_processes_in
from tests.e2e.support import DEADLINE, REVERSERD, wait_until

FAILING_APP = textwrap.dedent("""\
    import os
    import time

    from reverserd import Application, Service


    class Failing(Service):
        async def start_service(self):
            how = os.environ["FAIL_HOW"]
            if how == "raise":
                raise RuntimeError("the database is down")
            if how == "vanish":
                os._exit(3)
            if how == "hang":
                time.sleep(600)
            await super().start_service()


    application = Application("failing")
    Failing().set_service_parent(application)
""")


def assert_nothing_left_behind(daemons: DaemonDirectory) -> None:
    leftovers = {path.name for path in daemons.path.iterdir()}
    assert not leftovers & {"reverserd.pid", "reverserd.pid.lock", "reverserd.pid.state"}
    # start has reported the failure; the failed daemon may still be on its way out
    wait_until(lambda: reverserd_processes_in(daemons.path) == [], "the failed daemon to exit")


def assert_one_line_failure(result, status: int, message: str) -> None:
    assert result.returncode == status, result
    assert result.stdout == ""
    assert result.stderr == f"reverserd: {message}\n"


@pytest.fixture
def failing_app(daemons: DaemonDirectory) -> pathlib.Path:
    path = daemons.path / "failing.py"
    path.write_text(FAILING_APP)
    return path


def test_port_in_use(daemons: DaemonDirectory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = daemons.run("start", "--port", str(port))
    assert_one_line_failure(result, 1, f"cannot listen on 127.0.0.1:{port}: "
                            "address already in use")
    assert_nothing_left_behind(daemons)


def test_application_raising_in_start_service(daemons: DaemonDirectory,
                                              failing_app: pathlib.Path) -> None:
    result = daemons.run("start", "-y", failing_app.name, env={"FAIL_HOW": "raise"})
    assert_one_line_failure(result, 1, "application failing failed to start: "
                            "RuntimeError: the database is down")
    assert_nothing_left_behind(daemons)
    log = daemons.log()
    assert "Traceback" in log and "the database is down" in log
    assert daemons.log_lines()[-1].endswith("stopped")


def test_a_daemon_dying_without_a_word_does_not_hang_start(
    daemons: DaemonDirectory, failing_app: pathlib.Path,
) -> None:
    result = daemons.run("start", "-y", failing_app.name, "--start-timeout", "600",
                         env={"FAIL_HOW": "vanish"})
    assert result.returncode == 1, result
    assert re.fullmatch(r"reverserd: the daemon \(pid \d+\) died during start-up without a "
                        rf"word; its log may say why: {daemons.logfile}\n", result.stderr)
    assert_nothing_left_behind(daemons)


def test_a_daemon_not_serving_within_the_start_timeout_is_killed(
    daemons: DaemonDirectory, failing_app: pathlib.Path,
) -> None:
    result = daemons.run("start", "-y", failing_app.name, "--start-timeout", "1",
                         env={"FAIL_HOW": "hang"})
    assert result.returncode == 1, result
    match = re.fullmatch(r"reverserd: the daemon \(pid (\d+)\) was not serving after 1 s; "
                         r"killed it\n", result.stderr)
    assert match, result.stderr
    assert not is_alive(int(match.group(1)))
    assert_nothing_left_behind(daemons)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--logfile", "missing/x.log"],
         "cannot open log file {dir}/missing/x.log: no such file or directory"),
        (["--logfile", "."], "refusing log file {dir}: it is a directory"),
        (["--pidfile", "missing/x.pid"],
         "cannot use pidfile {dir}/missing/x.pid: directory {dir}/missing does not exist"),
        (["--rundir", "missing"], "cannot use run directory {dir}/missing: no such directory"),
    ],
)
def test_unusable_paths(daemons: DaemonDirectory, args: list[str], message: str) -> None:
    result = daemons.run("start", "--port", "0", *args)
    assert_one_line_failure(result, 1, message.format(dir=daemons.path))
    assert_nothing_left_behind(daemons)


@pytest.mark.parametrize("option", ["--pidfile", "--logfile"])
def test_unwritable_directories(daemons: DaemonDirectory, option: str) -> None:
    """/sys refuses new files even to root, so this runs the same as any user."""
    result = daemons.run("start", "--port", "0", option, "/sys/reverserd-test")
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and "/sys/reverserd-test" in result.stderr
    assert re.search(r": (permission denied|read-only file system)\n$", result.stderr)
    assert_nothing_left_behind(daemons)


def test_pidfile_that_is_a_symlink_is_refused(daemons: DaemonDirectory) -> None:
    target = daemons.path / "elsewhere"
    target.write_text("precious\n")
    daemons.pidfile.symlink_to(target)
    result = daemons.run("start", "--port", "0")
    assert_one_line_failure(result, 1, f"refusing pidfile {daemons.pidfile}: "
                            "it is a symbolic link")
    assert target.read_text() == "precious\n"
    assert reverserd_processes_in(daemons.path) == []


def test_pidfile_that_is_a_directory_is_refused(daemons: DaemonDirectory) -> None:
    daemons.pidfile.mkdir()
    result = daemons.run("start", "--port", "0")
    assert_one_line_failure(result, 1, f"refusing pidfile {daemons.pidfile}: "
                            "it is not a regular file")
    assert daemons.pidfile.is_dir()
    assert reverserd_processes_in(daemons.path) == []


def test_bad_umask_is_a_usage_error(daemons: DaemonDirectory) -> None:
    result = daemons.run("start", "--umask", "0999")
    assert result.returncode == 2
    assert result.stderr == ("reverserd: argument --umask: expected an octal mask from "
                             "000 to 777, got '0999'\n")
    assert_nothing_left_behind(daemons)


def test_stop_during_start_up_ends_the_half_started_daemon(
    daemons: DaemonDirectory, failing_app: pathlib.Path,
) -> None:
    launcher = subprocess.Popen(
        [REVERSERD, "start", "-y", failing_app.name, "--start-timeout", "600"],
        cwd=daemons.path, env={**os.environ, "FAIL_HOW": "hang"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def starting() -> re.Match[str] | None:
            status = daemons.run("status")
            return re.fullmatch(r"reverserd starting: pid (\d+)\n", status.stdout) \
                if status.returncode == 0 else None

        match = wait_until(starting, "status to say the daemon is starting")
        pid = int(match.group(1))  # type: ignore[union-attr]
        daemons.pids.add(pid)
        stop = daemons.run("stop", "--stop-timeout", "0.5")
        assert stop.returncode == 0, stop
        assert stop.stdout == f"reverserd stopped: pid {pid}\n"
        _, launcher_error = launcher.communicate(timeout=DEADLINE)
    finally:
        launcher.kill()
        launcher.wait()
    assert launcher.returncode == 1
    assert f"the daemon (pid {pid}) died during start-up without a word" in launcher_error
    assert not is_alive(pid)
    assert_nothing_left_behind(daemons)
