"""The files that tell whether a daemon runs: its pidfile, lock and state.

``reverserd.pid``
    The pid, for operators and their tools; written through lockfile's
    ``TimeoutPIDLockFile``. On its own it can lie: it survives ``kill -9``
    and its pid may be reused by another program.
``reverserd.pid.lock``
    An ``flock`` held for the daemon's whole life. The kernel drops it when
    the process dies, however it dies, so this lock -- not the pid -- says
    whether the daemon lives. ``flock`` (unlike ``lockf``) belongs to the
    open file, so ``start`` takes it before forking and the daemon keeps it.
``reverserd.pid.state``
    What the daemon reports once it serves: pid, start time, addresses.
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import json
import os
import pathlib
import stat
import time

import lockfile
from daemon.pidfile import TimeoutPIDLockFile

from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The three files of one daemon, named after its pidfile."""

    pidfile: pathlib.Path

    @property
    def lock(self) -> pathlib.Path:
        return self.pidfile.with_name(self.pidfile.name + ".lock")

    @property
    def state(self) -> pathlib.Path:
        return self.pidfile.with_name(self.pidfile.name + ".state")

    def check_usable(self) -> None:
        """Refuse a pidfile path that could only be misused, before anything runs.

        A symlink could make the daemon write or delete a file elsewhere; a
        directory or device is never a pidfile.
        """
        directory = self.pidfile.parent
        if not directory.is_dir():
            raise UserError(f"cannot use pidfile {self.pidfile}: "
                            f"directory {directory} does not exist")
        for path in (self.pidfile, self.lock, self.state):
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue
            except OSError as error:
                raise UserError(f"cannot use pidfile {path}: {os_reason(error)}") from None
            if stat.S_ISLNK(mode):
                raise UserError(f"refusing pidfile {path}: it is a symbolic link")
            if not stat.S_ISREG(mode):
                raise UserError(f"refusing pidfile {path}: it is not a regular file")


class RunLock:
    """An exclusive ``flock`` on the lock file, held by whoever has ``fd`` open.

    The lock file's directory is held open too, so the lock can still be
    removed by name after a chroot.
    """

    def __init__(self, directory: DirectoryHandle, name: str, fd: int) -> None:
        self.directory = directory
        self.name = name
        self.fd = fd

    @classmethod
    def try_acquire(cls, path: pathlib.Path) -> RunLock | None:
        """The lock, or ``None`` when someone else holds it.

        The holder unlinks the file on release, so a lock taken on a file that
        was unlinked meanwhile is worthless: take it again on the new file.
        """
        try:
            directory = DirectoryHandle(path.parent)
        except OSError as error:
            raise UserError(f"cannot create lock file {path} (next to the pidfile): "
                            f"{os_reason(error)}") from None
        for _ in range(100):
            try:
                fd = directory.open(path.name, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                directory.close()
                raise UserError(f"cannot create lock file {path} (next to the pidfile): "
                                f"{os_reason(error)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                directory.close()
                return None
            on_disk = directory.lstat(path.name)
            held = os.fstat(fd)
            if on_disk is not None and (held.st_dev, held.st_ino) == (on_disk.st_dev,
                                                                       on_disk.st_ino):
                return cls(directory, path.name, fd)
            os.close(fd)
        directory.close()
        raise UserError(f"cannot take lock file {path}: it keeps being replaced")

    def keep_fds(self) -> list[int]:
        """Descriptors a daemon must inherit to go on holding this lock."""
        return [self.fd, self.directory.fd]

    def release(self) -> None:
        """Remove the file, then let go: nobody can lock the removed file after us."""
        try:
            self.directory.unlink(self.name)
        finally:
            self.close()

    def close(self) -> None:
        """Drop this process's hold; the lock lasts while another process has it open."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.directory.close()


def lock_is_held(path: pathlib.Path) -> bool:
    """Whether a live process holds the lock (``PermissionError`` if we may not look).

    A shared, non-blocking probe: it never waits, and while it lasts (a few
    microseconds) a competing ``start`` simply tries again.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_pid(path: pathlib.Path) -> int | None:
    """The pid in a pidfile; ``None`` when there is no file or no number in it."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    first_line = text.strip().split("\n", 1)[0]
    return int(first_line) if first_line.isdigit() and int(first_line) > 0 else None


@dataclasses.dataclass(frozen=True)
class WorkerState:
    """One worker process of a daemon with ``--workers``."""

    number: int
    pid: int
    started: float
    restarts: int = 0


@dataclasses.dataclass(frozen=True)
class DaemonState:
    """What a serving daemon says about itself.

    ``refreshed`` is when the daemon last wrote it: ``status`` asks for a
    fresh copy (SIGUSR2) and waits for this to move past its request.
    """

    pid: int
    started: float
    addresses: tuple[str, ...]
    lines_served: int = 0
    refreshed: float = 0.0
    workers: tuple[WorkerState, ...] = ()

    def uptime(self) -> float:
        return max(0.0, time.time() - self.started)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode("utf-8")


def read_state(path: pathlib.Path) -> DaemonState | None:
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
        return DaemonState(int(fields["pid"]), float(fields["started"]),
                           tuple(str(address) for address in fields["addresses"]),
                           int(fields.get("lines_served", 0)),
                           float(fields.get("refreshed", 0.0)),
                           tuple(WorkerState(int(worker["number"]), int(worker["pid"]),
                                             float(worker["started"]),
                                             int(worker["restarts"]))
                                 for worker in fields.get("workers", ())))
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return None  # not written yet, or written by something else: no report


class Liveness(enum.Enum):
    RUNNING = "running"
    STARTING = "starting"
    STALE = "stale"
    ABSENT = "absent"


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What the run files say, judged by the lock."""

    liveness: Liveness
    pid: int | None = None
    state: DaemonState | None = None


def inspect(files: RunFiles) -> Inspection:
    """Whether a daemon runs, from its files; ``PermissionError`` if unreadable."""
    held = lock_is_held(files.lock)
    pid = read_pid(files.pidfile)
    if not held:
        if os.path.lexists(files.pidfile):
            return Inspection(Liveness.STALE, pid)
        return Inspection(Liveness.ABSENT)
    state = read_state(files.state)
    if pid is not None and state is not None and state.pid == pid:
        return Inspection(Liveness.RUNNING, pid, state)
    return Inspection(Liveness.STARTING, pid)


def holds_open(pid: int, path: pathlib.Path) -> bool | None:
    """Whether process ``pid`` has ``path`` open; ``None`` when /proc cannot tell.

    Proves that a pid read from a pidfile belongs to the process holding the
    lock before anyone signals it.
    """
    try:
        wanted = os.stat(path, follow_symlinks=False)
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    except OSError:
        return None
    for fd in descriptors:
        try:
            found = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


def describe_stale_pid(pid: int | None) -> str:
    """Why a pid in a pidfile whose lock is free is not our daemon."""
    if pid is None:
        return "no valid pid in it"
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:
            process_state = status.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return f"pid {pid} is gone"
    except (OSError, IndexError):
        return f"pid {pid} is not a running reverserd"
    if process_state == b"Z":
        return f"pid {pid} is a dead process not yet reaped"
    return f"pid {pid} now belongs to another process"


class Claim:
    """A daemon's hold on its run files, from the lock to the state file.

    ``release`` undoes everything in reverse order; it is safe to call at any
    stage, so a start-up failure leaves no file behind. Once the pidfile is
    written, every file is reached through the lock's directory handle, so
    all of this works unchanged inside a chroot.
    """

    def __init__(self, files: RunFiles, lock: RunLock) -> None:
        self.files = files
        self.lock = lock
        self._wrote_pidfile = False
        self._serving_since: float | None = None

    @property
    def directory(self) -> DirectoryHandle:
        return self.lock.directory

    def remove_stale_files(self) -> str | None:
        """Remove what a dead daemon left; say why the pidfile was stale, if any.

        Only called with the lock held, so nothing alive owns these files.
        """
        reason = None
        if os.path.lexists(self.files.pidfile):
            reason = describe_stale_pid(read_pid(self.files.pidfile))
        for path in (self.files.pidfile, self.files.state):
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise UserError(f"cannot remove stale {path}: {os_reason(error)}") from None
        return reason

    def hand_over(self, uid: int, gid: int) -> None:
        """Give the lock file to the account the daemon will run as."""
        os.fchown(self.lock.fd, uid, gid)

    def write_pidfile(self, owner: tuple[int, int] | None = None) -> None:
        """Write this process's pid; called in the process that will serve,
        before any chroot (lockfile works with the path alone)."""
        pidfile = TimeoutPIDLockFile(str(self.files.pidfile), 0)
        try:
            pidfile.acquire()
        except lockfile.AlreadyLocked:
            raise UserError(f"cannot write pidfile {self.files.pidfile}: "
                            "it appeared while starting") from None
        except lockfile.LockFailed:
            reason = _creation_failure(self.files.pidfile)
            raise UserError(f"cannot write pidfile {self.files.pidfile}: {reason}") from None
        self._wrote_pidfile = True
        if owner is not None:
            os.chown(self.files.pidfile, *owner, follow_symlinks=False)

    def write_state(self, addresses: tuple[str, ...], lines_served: int,
                    workers: tuple[WorkerState, ...] = ()) -> None:
        """Say the daemon serves (first call) or refresh what it says."""
        now = time.time()
        if self._serving_since is None:
            self._serving_since = now
        state = DaemonState(os.getpid(), self._serving_since, addresses, lines_served, now,
                            workers)
        self.directory.write_atomically(self.files.state.name, state.to_json())

    def release(self) -> None:
        if self.directory.fd >= 0:
            self.directory.unlink(self.files.state.name)
            if self._wrote_pidfile:
                self.directory.unlink(self.files.pidfile.name)
                self._wrote_pidfile = False
        self.lock.release()


def _creation_failure(path: pathlib.Path) -> str:
    """lockfile hides the errno of a failed create; find it out again."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        return os_reason(error)
    os.close(fd)
    os.unlink(path)
    return "it could not be created"
