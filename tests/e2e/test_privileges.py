"""Giving up root and confinement: --user, --group, --chroot, as root would run them."""

from __future__ import annotations

import grp
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.e2e.daemons import STARTED, DaemonDirectory, is_alive, wait_until_dead
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    connect,
    port_is_free,
    receive_until_closed,
    wait_until,
)

NOBODY = pwd.getpwnam("nobody")
PRIVILEGED_PORT = 1023

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as in CI")


def without(*capabilities: str) -> list[str]:
    """A command prefix that takes capabilities away from root's programs."""
    dropped = ",".join(f"-{name}" for name in capabilities)
    return ["setpriv", f"--inh-caps={dropped}", f"--bounding-set={dropped}"]


def ids_of(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups lines of /proc/PID/status."""
    found = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(number) for number in value.split()]
    return found


def nobody_ids() -> dict[str, list[int]]:
    return {"Uid": [NOBODY.pw_uid] * 4, "Gid": [NOBODY.pw_gid] * 4,
            "Groups": sorted(set(os.getgrouplist("nobody", NOBODY.pw_gid)))}


def talk(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"root\nquit\n")
        return receive_until_closed(sock)


def owner(path: pathlib.Path) -> tuple[int, int]:
    found = path.stat()
    return found.st_uid, found.st_gid


@needs_root
def test_nobody_on_a_privileged_port_keeps_its_files_usable(daemons: DaemonDirectory) -> None:
    if not port_is_free(PRIVILEGED_PORT):
        pytest.skip(f"port {PRIVILEGED_PORT} is taken on this machine")
    run, logs = daemons.path / "run", daemons.path / "logs"
    pidfile, logfile = run / "reverserd.pid", logs / "reverserd.log"
    result = daemons.run("start", "--port", str(PRIVILEGED_PORT), "--user", "nobody",
                         "--pidfile", str(pidfile), "--logfile", str(logfile))
    assert result.returncode == 0, result
    started = STARTED.search(result.stdout)
    assert started, result
    pid = int(started.group(1))
    assert ids_of(pid) == nobody_ids()
    assert talk(PRIVILEGED_PORT) == b"toor\n"
    nobody = (NOBODY.pw_uid, NOBODY.pw_gid)
    assert owner(run) == owner(logs) == owner(pidfile) == owner(logfile) == nobody

    logfile.rename(logs / "reverserd.log.1")
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: logfile.exists() and "log file reopened" in logfile.read_text(),
               "the log reopened by the unprivileged daemon")
    assert owner(logfile) == nobody

    stop = daemons.run("stop", "--pidfile", str(pidfile))
    assert stop.returncode == 0, stop
    assert not is_alive(pid)
    # pidfile, lock and state file are all removed; the options stay for a restart
    assert [path.name for path in run.iterdir()] == ["reverserd.pid.options"]
    assert logfile.read_text().endswith("INFO reverserd.runner: stopped\n")


@needs_root
def test_nobody_may_discard_its_log_into_dev_null(daemons: DaemonDirectory) -> None:
    pidfile = daemons.path / "run" / "reverserd.pid"
    before = os.stat(os.devnull)
    result = daemons.run("start", "--port", "0", "--user", "nobody", "--pidfile", str(pidfile),
                         "--logfile", os.devnull)
    assert result.returncode == 0, result
    started = STARTED.search(result.stdout)
    assert started, result
    assert ids_of(int(started.group(1))) == nobody_ids()
    after = os.stat(os.devnull)
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid,
                                                           before.st_mode)
    stop = daemons.run("stop", "--pidfile", str(pidfile), "--user", "nobody")
    assert stop.returncode == 0, stop


@needs_root
def test_nobody_in_the_foreground(reverserd, tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run"
    process = reverserd("-n", "--port", "0", "-u", "nobody", "--pidfile",
                        str(run / "fg.pid"))
    process.wait_until_serving()
    assert ids_of(process.pid) == nobody_ids()
    assert (run / "fg.pid").read_text() == f"{process.pid}\n"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert [path.name for path in run.iterdir()] == ["fg.pid.options"]


@needs_root
def test_a_group_alone_keeps_the_uid_and_drops_other_groups(reverserd) -> None:
    nogroup = grp.getgrgid(NOBODY.pw_gid)
    process = reverserd("-n", "--port", "0", "-g", nogroup.gr_name)
    process.wait_until_serving()
    assert ids_of(process.pid) == {"Uid": [0] * 4, "Gid": [nogroup.gr_gid] * 4,
                                   "Groups": [nogroup.gr_gid]}


@needs_root
def test_the_application_names_the_account_when_no_option_does(reverserd, tmp_path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "from reverserd import Application, Reverser, TCPServer\n"
        f"application = Application('mine', uid={NOBODY.pw_uid}, gid={NOBODY.pw_gid})\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
    )
    process = reverserd("-n", "-y", str(app))
    assert talk(process.port) == b"toor\n"
    assert ids_of(process.pid) == nobody_ids()


@needs_root
def test_a_directory_the_user_cannot_write_is_refused(daemons: DaemonDirectory) -> None:
    locked = daemons.path / "root-only"
    locked.mkdir(mode=0o755)
    result = daemons.run("start", "--port", "0", "--user", "nobody",
                         "--pidfile", str(locked / "reverserd.pid"))
    assert result.returncode == 1
    assert result.stderr == (f"reverserd: directory {locked} is not writable by user nobody, "
                             "which the daemon runs as; it needs it for its pidfile and "
                             "lock file\n")
    assert list(locked.iterdir()) == []
    log_result = daemons.run("start", "--port", "0", "--user", "nobody", "--pidfile",
                             str(daemons.path / "mine" / "r.pid"), "--logfile",
                             str(locked / "r.log"))
    assert log_result.returncode == 1
    assert f"directory {locked} is not writable by user nobody" in log_result.stderr
    assert list(locked.iterdir()) == []
    assert not (daemons.path / "mine" / "r.pid").exists()


@needs_root
@pytest.mark.parametrize(("option", "message"), [
    (["--user", "nobody"], "cannot switch to user nobody: only root can"),
    (["--chroot", "."], "cannot chroot to {path}: only root can"),
])
def test_without_root_powers_the_switch_is_refused(daemons: DaemonDirectory,
                                                    option: list[str], message: str) -> None:
    command = [*without("setuid", "setgid", "sys_chroot"), REVERSERD, "start", "--port", "0",
               *option]
    result = subprocess.run(command, cwd=daemons.path, capture_output=True, text=True,
                            timeout=15, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 1, result
    assert result.stderr == f"reverserd: {message.format(path=daemons.path)}\n"
    assert list(daemons.path.iterdir()) == []


@pytest.mark.parametrize("name", ["no-such-user-here", "\uff10"])  # a full-width zero, not root
def test_an_unknown_user_is_one_line(daemons: DaemonDirectory, name: str) -> None:
    result = daemons.run("start", "--port", "0", "--user", name)
    assert (result.returncode, result.stderr) == (1, f"reverserd: unknown user {name!r}\n")
    group = daemons.run("start", "--port", "0", "--group", name)
    assert (group.returncode, group.stderr) == (1, f"reverserd: unknown group {name!r}\n")


@needs_root
def test_the_classic_jail(daemons: DaemonDirectory) -> None:
    jail = daemons.path / "jail"
    (jail / "run").mkdir(parents=True)
    os.chown(jail / "run", NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(daemons.path, NOBODY.pw_uid, NOBODY.pw_gid)
    daemon = daemons.start("--chroot", "jail", "--rundir", "jail/run", "--user", "nobody",
                           "--save")
    assert os.readlink(f"/proc/{daemon.pid}/root") == str(jail)
    assert os.readlink(f"/proc/{daemon.pid}/cwd") == str(jail / "run")
    assert ids_of(daemon.pid) == nobody_ids()
    assert talk(daemon.port) == b"toor\n"

    status = daemons.run("status")
    assert status.returncode == 0
    assert status.stdout.endswith(", 1 line served\n"), status

    daemons.logfile.rename(daemons.path / "reverserd.log.1")
    os.kill(daemon.pid, signal.SIGUSR1)
    wait_until(lambda: daemons.logfile.exists() and "log file reopened" in daemons.log(),
               "the log reopened from inside the jail")

    daemons.stop()
    wait_until_dead(daemon.pid)
    assert sorted(p.name for p in daemons.path.iterdir()) == [
        "jail", "reverserd.log", "reverserd.log.1", "reverserd.pid.options"]
    assert [p.name for p in (jail / "run").iterdir()] == ["Reverser-shutdown.json"]
    assert f"saved the application's state to {jail / 'run' / 'Reverser-shutdown.json'}" in \
        daemons.log()


@needs_root
def test_chroot_alone_runs_in_the_jail_root(daemons: DaemonDirectory) -> None:
    jail = daemons.path / "jail"
    jail.mkdir()
    daemon = daemons.start("--chroot", str(jail))
    assert os.readlink(f"/proc/{daemon.pid}/root") == str(jail)
    assert os.readlink(f"/proc/{daemon.pid}/cwd") == str(jail)
    assert ids_of(daemon.pid)["Uid"] == [0] * 4
    assert talk(daemon.port) == b"toor\n"
    daemons.stop()
    assert list(jail.iterdir()) == []


@needs_root
@pytest.mark.parametrize(("args", "message"), [
    (["--chroot", "absent"], "cannot chroot to {dir}/absent: no such directory"),
    (["--chroot", "jail", "--rundir", "."],
     "run directory {dir} is outside the chroot {dir}/jail"),
])
def test_a_chroot_that_cannot_work_is_refused(daemons: DaemonDirectory, args: list[str],
                                              message: str) -> None:
    (daemons.path / "jail").mkdir()
    result = daemons.run("start", "--port", "0", *args)
    assert result.returncode == 1
    assert result.stderr == f"reverserd: {message.format(dir=daemons.path)}\n"
    assert sorted(p.name for p in daemons.path.iterdir()) == ["jail"]


@pytest.fixture
def shared_directory() -> Iterator[pathlib.Path]:
    """A directory anyone may use, outside pytest's root-only temporary tree."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="reverserd-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


@needs_root
def test_a_real_unprivileged_user_cannot_become_another(
        shared_directory: pathlib.Path) -> None:
    as_nobody = ["setpriv", "--reuid", str(NOBODY.pw_uid), "--regid", str(NOBODY.pw_gid),
                 "--clear-groups"]
    probe = subprocess.run([*as_nobody, REVERSERD, "--version"], capture_output=True,
                           timeout=15, check=False, cwd="/")
    if probe.returncode != 0:
        pytest.skip("user nobody cannot run this virtualenv's Python")
    shared = shared_directory
    for args, message in [(["--user", "root"], "cannot switch to user root: only root can"),
                          (["--group", "root"], "cannot switch to group root: only root can")]:
        result = subprocess.run([*as_nobody, REVERSERD, "start", "--port", "0", *args],
                                cwd=shared, capture_output=True, text=True, timeout=15,
                                stdin=subprocess.DEVNULL, check=False)
        assert (result.returncode, result.stderr) == (1, f"reverserd: {message}\n")
    assert list(shared.iterdir()) == []
    private = shared / "private"
    private.mkdir(mode=0o700)
    untraversable = subprocess.run([*as_nobody, REVERSERD, "start", "--rundir", "private/x"],
                                   cwd=shared, capture_output=True, text=True, timeout=15,
                                   stdin=subprocess.DEVNULL, check=False)
    assert (untraversable.returncode, untraversable.stderr) == (
        1, f"reverserd: cannot use run directory {private / 'x'}: permission denied\n")


@needs_root
def test_a_unix_socket_belongs_to_the_account_and_is_removed_by_it(
        reverserd, tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chown(run, NOBODY.pw_uid, NOBODY.pw_gid)  # as /run/reverserd would be
    path = run / "r.sock"
    process = reverserd("-n", "--listen", f"unix:{path}", "-u", "nobody")
    process.wait_for_log(rf"listening on unix:{path}$")
    status = path.stat()
    assert (status.st_uid, status.st_gid, status.st_mode & 0o777) == (
        NOBODY.pw_uid, NOBODY.pw_gid, 0o660)
    assert ids_of(process.pid) == nobody_ids()
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert not path.exists()


@needs_root
def test_a_socket_file_the_account_cannot_remove_is_named_and_replaced_next_time(
        reverserd, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.sock"  # in a directory only root may write
    for attempt in range(2):
        process = reverserd("-n", "--listen", f"unix:{path}", "-u", "nobody")
        process.wait_for_log(rf"listening on unix:{path}$")
        process.signal(signal.SIGTERM)
        assert process.wait() == 0, attempt
        process.wait_for_log(rf"WARNING .*cannot remove the socket file {path}: permission "
                             "denied")
        assert path.exists()


@needs_root
def test_a_unix_socket_outside_the_jail_is_bound_before_and_removed_after(
        daemons: DaemonDirectory) -> None:
    jail = daemons.path / "jail"
    jail.mkdir()
    outside = daemons.path / "public"
    outside.mkdir()
    path = outside / "r.sock"
    started = daemons.run("start", "--chroot", str(jail), "--listen", f"unix:{path}")
    assert started.returncode == 0, started
    pid = int(started.stdout.split("pid ")[1].split(",")[0])
    daemons.pids.add(pid)
    assert os.readlink(f"/proc/{pid}/root") == str(jail)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(DEADLINE)
        client.connect(str(path))
        client.sendall(b"jailed\nquit\n")
        assert receive_until_closed(client) == b"deliaj\n"
    daemons.stop()
    wait_until_dead(pid)
    assert list(outside.iterdir()) == []
