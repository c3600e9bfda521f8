"""Run files in a directory other users may write, such as /tmp, as root would run them.

The other local user is ``nobody``: files are given to it with ``chown``, and
a process of its own holds a lock, as an attacker's would.
"""

from __future__ import annotations

import grp
import os
import pathlib
import pwd
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.daemons import STARTED, DaemonDirectory, is_alive
from tests.e2e.support import DEADLINE, connect, receive_until_closed

NOBODY = pwd.getpwnam("nobody")
OTHER_GROUP = grp.getgrgid(NOBODY.pw_gid)
UNTRUSTED = "who is not root, this user, the daemon's user or the directory's owner"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as in CI")



@pytest.fixture
def shared(daemons: DaemonDirectory) -> pathlib.Path:
    """A sticky directory everyone may write, like /tmp."""
    path = daemons.path / "shared"
    path.mkdir()
    path.chmod(0o1777)
    return path


def warning(directory: pathlib.Path) -> str:
    return (f"reverserd: warning: {directory} is writable by other users; run files there "
            "can be tampered with (use a directory of its own, e.g. /run/reverserd)\n")


def planted(path: pathlib.Path, content: bytes = b"") -> pathlib.Path:
    """A file made in advance by the other user."""
    path.write_bytes(content)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


def talk(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"shared\nquit\n")
        return receive_until_closed(sock)


@pytest.mark.parametrize(("mode", "group", "warned"), [
    (0o1777, 0, True),
    (0o770, OTHER_GROUP.gr_gid, True),
    (0o770, 0, False),  # writable by the daemon's own group only
    (0o755, OTHER_GROUP.gr_gid, False),
])
def test_a_run_directory_others_may_write_gets_a_warning(
        daemons: DaemonDirectory, mode: int, group: int, warned: bool) -> None:
    run = daemons.path / "run"
    run.mkdir()
    os.chown(run, 0, group)
    run.chmod(mode)
    result = daemons.run("start", "--port", "0", "--pidfile", str(run / "reverserd.pid"))
    assert result.returncode == 0, result
    assert result.stderr == (warning(run) if warned else ""), result
    assert STARTED.search(result.stdout), result
    assert daemons.run("stop", "--pidfile", str(run / "reverserd.pid")).returncode == 0


def test_a_state_file_planted_under_the_temporary_name_is_never_used(
        daemons: DaemonDirectory, shared: pathlib.Path) -> None:
    """The other user keeps the planted file open, to rewrite the state file
    later, should the daemon ever rename it into place."""
    trap = planted(shared / ".reverserd.pid.state.tmp")
    with open(trap, "r+b") as kept_open:
        daemon = daemons.start("--pidfile", str(shared / "reverserd.pid"))
        kept_open.write(f'{{"pid": {daemon.pid}, "started": 0, '
                        f'"addresses": ["6.6.6.6:666"]}}'.encode())
        kept_open.flush()
        state = shared / "reverserd.pid.state"
        assert state.stat().st_uid == 0
        assert state.stat().st_ino != os.fstat(kept_open.fileno()).st_ino
        status = daemons.run("status", "--pidfile", str(shared / "reverserd.pid"))
    assert status.returncode == 0, status
    assert status.stdout.startswith(f"reverserd running: pid {daemon.pid}, listening on "
                                    f"127.0.0.1:{daemon.port}, "), status
    assert trap.stat().st_uid == NOBODY.pw_uid, "their file is left to them"
    assert talk(daemon.port) == b"derahs\n"
    daemons.run("stop", "--pidfile", str(shared / "reverserd.pid"))


def test_a_state_file_the_daemon_does_not_own_is_not_believed(
        daemons: DaemonDirectory) -> None:
    daemon = daemons.start()
    state = daemons.path / "reverserd.pid.state"
    forged = planted(daemons.path / "forged",
                     f'{{"pid": {daemon.pid}, "started": 0, "addresses": ["6.6.6.6:666"], '
                     '"lines_served": 666}'.encode())
    os.replace(forged, state)
    status = daemons.run("status")
    assert (status.returncode, status.stdout, status.stderr) == (
        0, f"reverserd running: pid {daemon.pid} (ignoring state file {state}: owned by uid "
           f"{NOBODY.pw_uid}, who is not root, as the daemon is)\n", "")
    assert "6.6.6.6" not in status.stdout
    assert daemons.stop().stdout == f"reverserd stopped: pid {daemon.pid}\n"


@pytest.fixture
def foreign_lock(shared: pathlib.Path) -> Iterator[subprocess.Popen[str]]:
    """A lock file in ``shared`` the other user made, and a process of theirs holding it."""
    lock = planted(shared / "reverserd.pid.lock")
    fd = os.open(lock, os.O_RDWR)
    try:
        holder = subprocess.Popen(["sh", "-c", f"flock -x {fd} && echo held && exec cat"],
                                  pass_fds=(fd,), user=NOBODY.pw_uid, group=NOBODY.pw_gid,
                                  extra_groups=[], cwd="/", stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
    finally:
        os.close(fd)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    yield holder
    holder.kill()
    holder.wait()


def test_a_lock_another_user_holds_neither_fools_status_nor_blocks_start(
        daemons: DaemonDirectory, shared: pathlib.Path,
        foreign_lock: subprocess.Popen[str]) -> None:
    pidfile = shared / "reverserd.pid"
    refusal = (f"refusing lock file {shared / 'reverserd.pid.lock'}: owned by uid "
               f"{NOBODY.pw_uid}, {UNTRUSTED}")
    status = daemons.run("status", "--pidfile", str(pidfile))
    assert (status.returncode, status.stdout) == (4, f"reverserd status unknown: {refusal}\n")
    start = daemons.run("start", "--port", "0", "--pidfile", str(pidfile),
                        "--start-timeout", "600", timeout=DEADLINE)
    assert (start.returncode, start.stdout, start.stderr) == (
        1, "", warning(shared) + f"reverserd: {refusal}\n"), start
    stop = daemons.run("stop", "--pidfile", str(pidfile), timeout=DEADLINE)
    assert (stop.returncode, stop.stderr) == (1, f"reverserd: {refusal}\n"), stop
    assert foreign_lock.poll() is None, "their process is never signalled"


@pytest.mark.parametrize("name", ["reverserd.pid", "reverserd.pid.state"])
def test_a_run_file_another_user_made_is_refused(daemons: DaemonDirectory,
                                                 shared: pathlib.Path, name: str) -> None:
    kind = "pidfile" if name.endswith(".pid") else "state file"
    planted(shared / name, b"1\n")
    result = daemons.run("start", "--port", "0", "--pidfile", str(shared / "reverserd.pid"))
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", warning(shared) + f"reverserd: refusing {kind} {shared / name}: owned by uid "
                                 f"{NOBODY.pw_uid}, {UNTRUSTED}\n"), result


def test_a_log_file_another_user_made_is_refused(daemons: DaemonDirectory,
                                                 shared: pathlib.Path) -> None:
    log = planted(shared / "reverserd.log")
    result = daemons.run("start", "--port", "0", "--pidfile", str(shared / "reverserd.pid"))
    assert result.returncode == 1, result
    assert result.stderr.startswith(warning(shared)), result
    refusal = result.stderr[len(warning(shared)):]
    assert refusal.startswith(f"reverserd: refusing log file {log}: owned by uid "
                              f"{NOBODY.pw_uid}"), result
    assert refusal.count("\n") == 1, result
    assert log.read_bytes() == b"", "nothing was logged to them"


def test_the_daemons_own_user_is_trusted_once_named(daemons: DaemonDirectory,
                                                    shared: pathlib.Path) -> None:
    """A daemon run as nobody in /tmp leaves files nobody owns, like the
    other user's: ``status`` and ``stop`` believe them given its ``--user``."""
    pidfile = str(shared / "reverserd.pid")
    daemon = daemons.start("--user", "nobody", "--pidfile", pidfile)
    refused = daemons.run("status", "--pidfile", pidfile)
    assert refused.returncode == 4 and "refusing lock file" in refused.stdout, refused
    status = daemons.run("status", "--pidfile", pidfile, "--user", "nobody")
    assert status.returncode == 0, status
    assert status.stdout.startswith(f"reverserd running: pid {daemon.pid}, listening on "
                                    f"127.0.0.1:{daemon.port}, "), status
    stop = daemons.run("stop", "--pidfile", pidfile, "--user", "nobody")
    assert (stop.returncode, stop.stdout) == (0, f"reverserd stopped: pid {daemon.pid}\n")
    assert not is_alive(daemon.pid)
