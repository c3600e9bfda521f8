"""The run files: who holds the lock, when a pidfile is stale, what is left behind."""

from __future__ import annotations

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
    RunFiles,
    RunLock,
    describe_stale_pid,
    holds_open,
    inspect,
    lock_is_held,
    read_pid,
    read_state,
)

HOLDER = """\
import pathlib, sys
from reverserd.pidfile import RunLock
lock = RunLock.try_acquire(pathlib.Path(sys.argv[1]))
print("held" if lock else "refused", flush=True)
sys.stdin.read()
"""


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
    lock = RunLock.try_acquire(files.lock)
    assert lock is not None
    assert RunLock.try_acquire(files.lock) is None
    assert lock_is_held(files.lock)
    lock.release()
    assert not files.lock.exists()
    assert not lock_is_held(files.lock)


def test_the_kernel_frees_the_lock_when_its_holder_is_killed(
    files: RunFiles, holder: subprocess.Popen[str],
) -> None:
    assert lock_is_held(files.lock)
    assert RunLock.try_acquire(files.lock) is None
    holder.kill()
    holder.wait()
    assert not lock_is_held(files.lock)
    lock = RunLock.try_acquire(files.lock)
    assert lock is not None
    lock.release()


def test_a_lock_on_a_replaced_file_is_not_the_lock(files: RunFiles) -> None:
    old = RunLock.try_acquire(files.lock)
    assert old is not None
    files.lock.rename(files.lock.with_name("moved-away"))
    new = RunLock.try_acquire(files.lock)
    assert new is not None  # a new file: the old lock does not guard this path any more
    assert os.fstat(new.fd).st_ino == files.lock.stat().st_ino
    old.close()
    new.release()


@pytest.mark.parametrize(("content", "pid"),
                         [("123\n", 123), ("456", 456), ("", None), ("abc\n", None),
                          ("0\n", None), ("-5\n", None)])
def test_read_pid(files: RunFiles, content: str, pid: int | None) -> None:
    files.pidfile.write_text(content)
    assert read_pid(files.pidfile) == pid


def test_read_pid_of_a_missing_pidfile(files: RunFiles) -> None:
    assert read_pid(files.pidfile) is None


def test_state_is_written_whole_and_read_back(files: RunFiles) -> None:
    state = DaemonState(42, 1_700_000_000.5, ("127.0.0.1:2323", "[::1]:2323"))
    files.state.write_bytes(state.to_json())
    assert read_state(files.state) == state
    assert [path.name for path in files.state.parent.iterdir()] == [files.state.name]


@pytest.mark.parametrize("content", ["", "{", "[]", '{"pid": 1}',
                                     '{"pid": "x", "started": 0, "addresses": []}'])
def test_a_damaged_state_file_reads_as_none(files: RunFiles, content: str) -> None:
    files.state.write_text(content)
    assert read_state(files.state) is None


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
    lock = RunLock.try_acquire(files.lock)
    assert lock is not None
    claim = Claim(files, lock)
    claim.write_pidfile()
    claim.write_state(("127.0.0.1:1",), 7)
    assert read_pid(files.pidfile) == os.getpid()
    found = inspect(files)
    assert found.liveness is Liveness.RUNNING
    assert found.state is not None
    assert (found.state.addresses, found.state.lines_served) == (("127.0.0.1:1",), 7)
    claim.release()
    assert list(files.pidfile.parent.iterdir()) == []


def test_stale_files_are_removed_with_the_reason(files: RunFiles) -> None:
    files.pidfile.write_text("garbage\n")
    files.state.write_bytes(DaemonState(1, 0.0, ()).to_json())
    lock = RunLock.try_acquire(files.lock)
    assert lock is not None
    claim = Claim(files, lock)
    assert claim.remove_stale_files() == "no valid pid in it"
    assert claim.remove_stale_files() is None
    claim.release()
    assert list(files.pidfile.parent.iterdir()) == []
