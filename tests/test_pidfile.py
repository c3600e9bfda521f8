"""The run files: who holds the lock, when a pidfile is stale, what is left behind."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from reverserd.errors import UserError
from reverserd.pidfile import (
    Claim,
    DaemonState,
    Liveness,
    Owners,
    RunFileRefused,
    RunFiles,
    RunLock,
    WorkerState,
    describe_stale_pid,
    find_process,
    holds_open,
    inspect,
    lock_is_held,
    process_uid,
    read_pid,
    read_state,
)

HOLDER = """\
import pathlib, sys
from reverserd.pidfile import Owners, RunLock
lock = RunLock.try_acquire(pathlib.Path(sys.argv[1]), Owners.of_account(None))
print("held" if lock else "refused", flush=True)
sys.stdin.read()
"""
NOBODY = 65534
OURS = Owners.of_account(None)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")


@pytest.fixture
def files(tmp_path: pathlib.Path) -> RunFiles:
    return RunFiles(tmp_path / "reverserd.pid")


@pytest.fixture
def holder(files: RunFiles) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock until its stdin closes."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(files.lock)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait()


def test_the_lock_excludes_everyone_else(files: RunFiles) -> None:
    lock = RunLock.try_acquire(files.lock, OURS)
    assert lock is not None
    assert RunLock.try_acquire(files.lock, OURS) is None
    assert lock_is_held(files.lock, OURS)
    lock.release()
    assert not files.lock.exists()
    assert not lock_is_held(files.lock, OURS)


def test_the_kernel_frees_the_lock_when_its_holder_is_killed(
    files: RunFiles, holder: subprocess.Popen[str],
) -> None:
    assert lock_is_held(files.lock, OURS)
    assert RunLock.try_acquire(files.lock, OURS) is None
    holder.kill()
    holder.wait()
    assert not lock_is_held(files.lock, OURS)
    lock = RunLock.try_acquire(files.lock, OURS)
    assert lock is not None
    lock.release()


def test_a_lock_on_a_replaced_file_is_not_the_lock(files: RunFiles) -> None:
    old = RunLock.try_acquire(files.lock, OURS)
    assert old is not None
    files.lock.rename(files.lock.with_name("moved-away"))
    new = RunLock.try_acquire(files.lock, OURS)
    assert new is not None  # a new file: the old lock does not guard this path any more
    assert os.fstat(new.fd).st_ino == files.lock.stat().st_ino
    old.close()
    new.release()


@pytest.mark.parametrize(("content", "pid"),
                         [("123\n", 123), ("456", 456), ("", None), ("abc\n", None),
                          ("0\n", None), ("-5\n", None)])
def test_read_pid(files: RunFiles, content: str, pid: int | None) -> None:
    files.pidfile.write_text(content)
    assert read_pid(files.pidfile, OURS) == pid


def test_read_pid_of_a_missing_pidfile(files: RunFiles) -> None:
    assert read_pid(files.pidfile, OURS) is None


def test_state_is_written_whole_and_read_back(files: RunFiles) -> None:
    state = DaemonState(42, 1_700_000_000.5, ("127.0.0.1:2323", "[::1]:2323"))
    files.state.write_bytes(state.to_json())
    assert read_state(files.state, OURS) == state
    assert [path.name for path in files.state.parent.iterdir()] == [files.state.name]


@pytest.mark.parametrize("content", ["", "{", "[]", '{"pid": 1}',
                                     '{"pid": "x", "started": 0, "addresses": []}'])
def test_a_damaged_state_file_reads_as_none(files: RunFiles, content: str) -> None:
    files.state.write_text(content)
    assert read_state(files.state, OURS) is None


def test_inspect_absent_stale_starting_running(
    files: RunFiles, holder: subprocess.Popen[str],
) -> None:
    assert inspect(files).liveness is Liveness.STARTING
    files.pidfile.write_text(f"{holder.pid}\n")
    assert inspect(files).liveness is Liveness.STARTING
    files.state.write_bytes(DaemonState(holder.pid, 0.0, ()).to_json())
    found = inspect(files)
    assert (found.liveness, found.pid) == (Liveness.RUNNING, holder.pid)
    holder.kill()
    holder.wait()
    assert inspect(files).liveness is Liveness.STALE
    files.pidfile.unlink()
    assert inspect(files).liveness is Liveness.ABSENT


def test_holds_open_tells_whose_pid_it_is(files: RunFiles,
                                          holder: subprocess.Popen[str]) -> None:
    assert holds_open(holder.pid, files.lock) is True
    with subprocess.Popen(["sleep", "60"]) as bystander:
        try:
            assert holds_open(bystander.pid, files.lock) is False
        finally:
            bystander.kill()


def test_why_a_pid_is_stale() -> None:
    assert describe_stale_pid(None) == "no valid pid in it"
    with subprocess.Popen(["sleep", "60"]) as bystander:
        assert describe_stale_pid(bystander.pid) == \
            f"pid {bystander.pid} now belongs to another process"
        bystander.kill()
        os.waitid(os.P_PID, bystander.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
        assert describe_stale_pid(bystander.pid) == \
            f"pid {bystander.pid} is a dead process not yet reaped"
    assert describe_stale_pid(bystander.pid) == f"pid {bystander.pid} is gone"


def test_unusable_pidfile_paths_are_refused(files: RunFiles, tmp_path: pathlib.Path) -> None:
    files.check_usable()
    files.pidfile.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="is a symbolic link"):
        files.check_usable()
    files.pidfile.unlink()
    files.lock.mkdir()
    with pytest.raises(UserError, match="not a regular file"):
        files.check_usable()
    with pytest.raises(UserError, match="does not exist"):
        RunFiles(tmp_path / "missing" / "x.pid").check_usable()


def test_a_claim_writes_and_removes_every_file(files: RunFiles) -> None:
    lock = RunLock.try_acquire(files.lock, OURS)
    assert lock is not None
    claim = Claim(files, lock)
    claim.write_pidfile()
    claim.write_state(("127.0.0.1:1",), 7)
    assert read_pid(files.pidfile, OURS) == os.getpid()
    found = inspect(files)
    assert found.liveness is Liveness.RUNNING
    assert found.state is not None
    assert (found.state.addresses, found.state.lines_served) == (("127.0.0.1:1",), 7)
    claim.release()
    assert list(files.pidfile.parent.iterdir()) == []


def test_stale_files_are_removed_with_the_reason(files: RunFiles) -> None:
    files.pidfile.write_text("garbage\n")
    files.state.write_bytes(DaemonState(1, 0.0, ()).to_json())
    lock = RunLock.try_acquire(files.lock, OURS)
    assert lock is not None
    claim = Claim(files, lock)
    assert claim.remove_stale_files() == "no valid pid in it"
    assert claim.remove_stale_files() is None
    claim.release()
    assert list(files.pidfile.parent.iterdir()) == []


@pytest.mark.parametrize("which", ["pidfile", "lock", "state"])
def test_a_fifo_in_place_of_a_run_file_is_refused_without_blocking(
        files: RunFiles, which: str) -> None:
    """Opening a FIFO for reading blocks until a writer comes: never here."""
    path = getattr(files, which)
    os.mkfifo(path)
    with pytest.raises(UserError, match="not a regular file"):
        files.check_usable()
    kind = {"pidfile": "pidfile", "lock": "lock file", "state": "state file"}[which]
    refusal = f"refusing {kind} {path}: it is not a regular file"
    with pytest.raises(RunFileRefused, match=refusal):
        {"pidfile": lambda: read_pid(path, OURS),
         "lock": lambda: lock_is_held(path, OURS),
         "state": lambda: read_state(path, OURS)}[which]()
    if which == "lock":
        with pytest.raises(RunFileRefused, match=refusal):
            RunLock.try_acquire(path, OURS)


def test_read_pid_reads_a_bounded_first_line(files: RunFiles) -> None:
    files.pidfile.write_text("123\n" + "x" * 10_000_000)
    assert read_pid(files.pidfile, OURS) == 123
    files.pidfile.write_text("9" * 30 + "\n")
    assert read_pid(files.pidfile, OURS) is None, "no pid is that large"
    files.pidfile.write_text("1" * 100)
    assert read_pid(files.pidfile, OURS) is None, "no line end within the limit"


def test_every_state_field_round_trips(files: RunFiles) -> None:
    state = DaemonState(42, 1_700_000_000.5, ("127.0.0.1:2323",), 7, 1_700_000_001.0,
                        (WorkerState(1, 43, 1_700_000_000.0, 2,
                                     "killed after 30 s without a heartbeat"),),
                        {"idle": 2, "write-timeout": 1}, 3)
    files.state.write_bytes(state.to_json())
    assert read_state(files.state, OURS) == state


def test_a_state_file_of_an_older_version_still_reads(files: RunFiles) -> None:
    files.state.write_text(json.dumps({
        "pid": 42, "started": 1.0, "addresses": ["127.0.0.1:1"], "lines_served": 3,
        "refreshed": 2.0, "workers": [{"number": 1, "pid": 43, "started": 1.0, "restarts": 0}]}))
    state = read_state(files.state, OURS)
    assert state is not None
    assert (state.closed, state.paused, state.workers[0].last_exit) == ({}, 0, "")


@pytest.mark.parametrize("content", [
    '{"pid": 1, "started": 1e999, "addresses": []}',
    '{"pid": 1, "started": NaN, "addresses": []}',
    '{"pid": 99999999999999999999, "started": 0, "addresses": []}',
    '{"pid": 1, "started": 0, "addresses": [["nested"]]}',
    '{"pid": 1, "started": 0, "addresses": [], "closed": {"idle": "many"}}',
    "[" * 100_000 + "]" * 100_000,
    '{"pid": 1, "started": 0, "addresses": ["' + "x" * (1 << 20) + '"]}',
])
def test_a_state_file_out_of_bounds_reads_as_none(files: RunFiles, content: str) -> None:
    files.state.write_text(content)
    assert read_state(files.state, OURS) is None


def test_a_symlink_in_place_of_a_run_file_is_not_followed(files: RunFiles,
                                                           tmp_path: pathlib.Path) -> None:
    (tmp_path / "elsewhere").write_text("1\n")
    files.pidfile.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunFileRefused, match="it is a symbolic link"):
        read_pid(files.pidfile, OURS)


@needs_root
def test_run_files_of_an_untrusted_owner_are_refused_naming_the_owner(
        files: RunFiles) -> None:
    files.lock.touch()
    os.chown(files.lock, NOBODY, NOBODY)
    refusal = (rf"refusing lock file {files.lock}: owned by uid {NOBODY}, who is not root, "
               "this user, the daemon's user or the directory's owner")
    for attempt in (files.check_usable, lambda: lock_is_held(files.lock, OURS),
                    lambda: RunLock.try_acquire(files.lock, OURS)):
        with pytest.raises(RunFileRefused, match=refusal):
            attempt()
    assert lock_is_held(files.lock, Owners.of_account(NOBODY)) is False, \
        "the daemon's own user may own it"


@needs_root
def test_the_directory_owner_is_trusted(tmp_path: pathlib.Path) -> None:
    """They could replace any file in their directory anyway."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    pidfile = theirs / "reverserd.pid"
    pidfile.write_text("123\n")
    os.chown(pidfile, NOBODY, NOBODY)
    assert read_pid(pidfile, OURS) == 123


@needs_root
def test_a_state_file_not_owned_by_the_lock_holder_is_ignored(
        files: RunFiles, holder: subprocess.Popen[str]) -> None:
    files.pidfile.write_text(f"{holder.pid}\n")
    files.state.write_bytes(DaemonState(holder.pid, 0.0, ("6.6.6.6:666",)).to_json())
    os.chown(files.state, NOBODY, NOBODY)
    found = inspect(files)
    assert (found.liveness, found.pid, found.state) == (Liveness.RUNNING, holder.pid, None)
    assert found.ignored == (f"ignoring state file {files.state}: owned by uid {NOBODY}, "
                             "who is not root, as the daemon is")
    os.chown(files.state, 0, 0)
    assert inspect(files).state is not None


def test_the_lock_holder_owner_and_root_may_own_the_state_file() -> None:
    assert Owners.of_daemon(NOBODY).uids == {0, NOBODY}
    assert Owners.of_daemon(0).uids == Owners.of_daemon(None).uids == {0}
    assert process_uid(os.getpid()) == os.geteuid()


def test_a_process_is_gone_once_a_zombie_or_its_pid_is_reused() -> None:
    with subprocess.Popen(["sleep", "60"]) as child:
        process = find_process(child.pid)
        assert process is not None and process.parent == os.getpid()
        assert not process.is_gone()
        reused = dataclasses.replace(process, started=process.started - 1)
        assert reused.is_gone(), "another start time: another process with that pid"
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
        assert process.is_gone()
        assert find_process(child.pid) is None
