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
``reverserd.pid.options``
    The command lines the daemon was started with, which ``restart`` and
    ``reload`` use again; kept after a stop.
``reverserd.pid.reload``
    With ``--chroot``: a Unix socket (root's only) through which ``reload``,
    from outside the jail, asks the daemon for its sockets.

These files may sit in a directory other users can write, such as /tmp, so
none is taken on trust: each is opened without following a symbolic link and
without blocking (a FIFO in its place must hang nobody), read up to a small
limit, and refused, by name, unless it is a regular file owned by someone
who may speak for the daemon (``Owners``).
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import fcntl
import json
import math
import os
import pathlib
import socket
import stat
import struct
import time
from typing import Any

import lockfile
from daemon.pidfile import TimeoutPIDLockFile

from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason

OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PIDFILE_BYTES = 64  # a pid and a newline, with room to spare
STATE_BYTES = 1 << 20  # a state file names a few addresses and workers: far less than this
PID_MAX_LIMIT = 4_194_304  # Linux never hands out a larger pid
RELOAD_BACKLOG = 4
HANDOVER_RETRIES = 50
RELOAD_TURN_POLL = 0.05  # seconds between two tries of a reload waiting for its turn
HANDOVER_PAUSE = 0.002  # seconds: a reload rewrites pidfile and state file within about 1 ms


class RunFileRefused(UserError):
    """A run file that is not what a daemon would have left there.

    ``owner`` is set when the file was refused for its owner alone.
    """

    def __init__(self, kind: str, path: pathlib.Path, reason: str,
                 owner: int | None = None) -> None:
        super().__init__(f"refusing {kind} {path}: {reason}")
        self.kind = kind
        self.path = path
        self.reason = reason
        self.owner = owner


@dataclasses.dataclass(frozen=True)
class Owners:
    """Who may own a run file.

    A file owned by anyone else may have been planted by them in a shared
    directory, to make ``status`` lie or to hold the lock; it is refused.
    The directory's owner, when trusted, is so because they may replace any
    file in it anyway.
    """

    uids: frozenset[int]
    who: str  # how a refusal names the trusted owners
    directory_owner: bool = False

    @classmethod
    def of_account(cls, uid: int | None) -> Owners:
        """Root, whoever runs this command, the daemon's ``--user`` and the
        directory's owner: for the pidfile and the lock file."""
        uids = {0, os.geteuid()} | (set() if uid is None else {uid})
        return cls(frozenset(uids),
                   "root, this user, the daemon's user or the directory's owner", True)

    @classmethod
    def of_daemon(cls, uid: int | None) -> Owners:
        """Root and the account the lock holder runs as: for the state file,
        which the daemon writes once it has given up root."""
        if uid is None or uid == 0:
            return cls(frozenset({0}), "root, as the daemon is")
        return cls(frozenset({0, uid}), f"root or the daemon's user (uid {uid})")

    def check(self, kind: str, path: pathlib.Path, found: os.stat_result) -> None:
        """Refuse ``path`` unless ``found``, its status, is a regular file of ours."""
        if stat.S_ISLNK(found.st_mode):
            raise RunFileRefused(kind, path, "it is a symbolic link")
        if not stat.S_ISREG(found.st_mode):
            raise RunFileRefused(kind, path, "it is not a regular file")
        if found.st_uid in self.uids:
            return
        if self.directory_owner and found.st_uid == _directory_owner(path):
            return
        raise RunFileRefused(kind, path, f"owned by uid {found.st_uid}, who is not {self.who}",
                             found.st_uid)


def _directory_owner(path: pathlib.Path) -> int | None:
    try:
        return path.parent.stat().st_uid
    except OSError:
        return None


def open_run_file(kind: str, path: pathlib.Path, owners: Owners,
                  directory: DirectoryHandle | None = None) -> int | None:
    """A descriptor to read ``path`` through (by name in ``directory`` if
    given: inside a chroot), once it proved acceptable; ``None`` when there
    is no such file. Never blocks, never follows a link."""
    try:
        if directory is None:
            fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
        else:
            fd = directory.open(path.name, os.O_RDONLY | OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RunFileRefused(kind, path, "it is a symbolic link") from None
        raise
    try:
        owners.check(kind, path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_run_file(kind: str, path: pathlib.Path, owners: Owners, limit: int,
                  directory: DirectoryHandle | None = None) -> bytes | None:
    """Up to ``limit`` bytes of ``path``; ``None`` when there is no such file."""
    fd = open_run_file(kind, path, owners, directory)
    if fd is None:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The three files of one daemon, named after its pidfile, and who may own them."""

    pidfile: pathlib.Path
    owners: Owners = dataclasses.field(default_factory=lambda: Owners.of_account(None))

    @property
    def lock(self) -> pathlib.Path:
        return self.pidfile.with_name(self.pidfile.name + ".lock")

    @property
    def state(self) -> pathlib.Path:
        return self.pidfile.with_name(self.pidfile.name + ".state")

    @property
    def options(self) -> pathlib.Path:
        return self.pidfile.with_name(self.pidfile.name + ".options")

    @property
    def reload_socket(self) -> pathlib.Path:
        return self.pidfile.with_name(self.pidfile.name + ".reload")

    def check_usable(self) -> None:
        """Refuse a pidfile path that could only be misused, before anything runs.

        A symlink could make the daemon write or delete a file elsewhere; a
        directory or device is never a pidfile; a file another user owns may
        have been planted.
        """
        directory = self.pidfile.parent
        if not directory.is_dir():
            raise UserError(f"cannot use pidfile {self.pidfile}: "
                            f"directory {directory} does not exist")
        for kind, path in (("pidfile", self.pidfile), ("lock file", self.lock),
                           ("state file", self.state), ("options file", self.options)):
            try:
                found = path.lstat()
            except FileNotFoundError:
                continue
            except OSError as error:
                raise UserError(f"cannot use pidfile {path}: {os_reason(error)}") from None
            self.owners.check(kind, path, found)


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
    def inherited(cls, path: pathlib.Path, fd: int) -> RunLock:
        """The lock a predecessor passed on: the same open file, so the lock
        was never free; refused unless it is the lock file at ``path``."""
        try:
            directory = DirectoryHandle(path.parent)
        except OSError as error:
            os.close(fd)
            raise UserError(f"cannot open the directory of {path}: {os_reason(error)}") from None
        on_disk = directory.lstat(path.name)
        held = os.fstat(fd)
        if on_disk is None or (held.st_dev, held.st_ino) != (on_disk.st_dev, on_disk.st_ino):
            os.close(fd)
            directory.close()
            raise UserError(f"the lock passed on is not {path}: the pidfile cannot change "
                            "in a reload")
        os.set_inheritable(fd, False)
        return cls(directory, path.name, fd)

    @classmethod
    def try_acquire(cls, path: pathlib.Path, owners: Owners) -> RunLock | None:
        """The lock, or ``None`` when someone else holds it.

        A lock file ``owners`` refuse is refused at once, held or not: its
        owner could remove it and so let a second daemon start. The holder
        unlinks the file on release, so a lock taken on a file that was
        unlinked meanwhile is worthless: take it again on the new file.
        """
        try:
            directory = DirectoryHandle(path.parent)
        except OSError as error:
            raise UserError(f"cannot create lock file {path} (next to the pidfile): "
                            f"{os_reason(error)}") from None
        try:
            for _ in range(100):
                fd = cls._open(directory, path, owners)
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
        except BaseException:
            directory.close()
            raise
        directory.close()
        raise UserError(f"cannot take lock file {path}: it keeps being replaced")

    @staticmethod
    def _open(directory: DirectoryHandle, path: pathlib.Path, owners: Owners) -> int:
        try:
            fd = directory.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise RunFileRefused("lock file", path, "it is a symbolic link") from None
            if error.errno in (errno.EISDIR, errno.ENXIO):
                raise RunFileRefused("lock file", path, "it is not a regular file") from None
            raise UserError(f"cannot create lock file {path} (next to the pidfile): "
                            f"{os_reason(error)}") from None
        try:
            owners.check("lock file", path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

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


class ReloadTurn:
    """One ``reload`` command at a time for a daemon.

    A reload that comes while another is under way would be folded into
    it, and the options it records would wait for the next. So each
    ``reload`` command holds an open-file-description lock (``F_OFD_SETLK``)
    on the lock file while it lasts: the daemon's ``flock`` and this lock
    never conflict, and closing another descriptor of the file (as
    ``inspect`` does) does not drop it, as it would a ``lockf``.
    """

    WHOLE_FILE = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # struct flock

    def __init__(self, path: pathlib.Path, owners: Owners, patience: float) -> None:
        self.fd = -1
        try:
            self.fd = os.open(path, os.O_RDWR | OPEN_FLAGS)
            owners.check("lock file", path, os.fstat(self.fd))
        except FileNotFoundError:
            return  # nothing runs: no reload to wait for
        except OSError as error:
            self.close()
            if error.errno == errno.ELOOP:
                raise RunFileRefused("lock file", path, "it is a symbolic link") from None
            raise UserError(f"cannot open {path}: {os_reason(error)}") from None
        except BaseException:
            self.close()
            raise
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, self.WHOLE_FILE)
                return
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    return  # a file system without such locks: reloads go unqueued
            if time.monotonic() > deadline:
                self.close()
                raise UserError(f"another reload has been under way for {patience:g} s; "
                                "not reloading")
            time.sleep(RELOAD_TURN_POLL)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ReloadTurn:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def lock_is_held(path: pathlib.Path, owners: Owners) -> bool:
    """Whether a live process holds the lock (``PermissionError`` if we may not look).

    A shared, non-blocking probe: it never waits, and while it lasts (a few
    microseconds) a competing ``start`` simply tries again.
    """
    fd = open_run_file("lock file", path, owners)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_pid(path: pathlib.Path, owners: Owners) -> int | None:
    """The pid in a pidfile; ``None`` when there is no file or no pid in it."""
    content = read_run_file("pidfile", path, owners, PIDFILE_BYTES)
    if content is None:
        return None
    first_line = content.strip().split(b"\n", 1)[0]
    if not first_line.isdigit():
        return None
    pid = int(first_line)
    return pid if 0 < pid <= PID_MAX_LIMIT else None


@dataclasses.dataclass(frozen=True)
class WorkerState:
    """One worker process of a daemon with ``--workers``.

    ``last_exit`` says how its previous process ended, when that is worth
    telling (``killed after 30 s without a heartbeat``).
    """

    number: int
    pid: int
    started: float
    restarts: int = 0
    last_exit: str = ""


@dataclasses.dataclass(frozen=True)
class Activity:
    """Connections open now and accepted so far, and connections whose
    handler raised: what ``status`` reports beside the lines served."""

    connections_open: int = 0
    connections_accepted: int = 0
    handler_errors: int = 0


@dataclasses.dataclass(frozen=True)
class DaemonState:
    """What a serving daemon says about itself.

    ``refreshed`` is when the daemon last wrote it: ``status`` asks for a
    fresh copy (SIGUSR2) and waits for this to move past its request.
    ``closed`` counts the connections a limit closed, by reason (``idle``,
    ``write-timeout``, ...); ``paused`` the times accepting paused.
    ``stopping`` says a graceful stop has begun: a ``start`` meanwhile waits
    for the daemon to be gone, then starts another, instead of reporting it
    as running. ``reloads`` counts the generations before this one;
    ``reload_error`` is why the last reload failed, at ``reload_failed_at``
    (what ``reload`` waits for besides a new pid); ``predecessor`` is the
    generation this one took over from, while that one may still accept.
    ``reload_deadline`` is when a reload under way is given up, so that
    ``reload`` waits for the daemon's verdict however long it allows.
    """

    pid: int
    started: float
    addresses: tuple[str, ...]
    lines_served: int = 0
    refreshed: float = 0.0
    workers: tuple[WorkerState, ...] = ()
    closed: dict[str, int] = dataclasses.field(default_factory=dict)
    paused: int = 0
    stopping: bool = False
    activity: Activity = Activity()
    reloads: int = 0
    reload_error: str = ""
    reload_failed_at: float = 0.0
    predecessor: int = 0
    reload_deadline: float = 0.0

    def uptime(self) -> float:
        return max(0.0, time.time() - self.started)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode("utf-8")


def read_state(path: pathlib.Path, owners: Owners) -> DaemonState | None:
    """The daemon's state file; ``None`` when it is missing, damaged or too big.

    A file written by an older version lacks the newer fields, which default.
    """
    content = read_run_file("state file", path, owners, STATE_BYTES + 1)
    if content is None or len(content) > STATE_BYTES:
        return None
    try:
        return _state_from(json.loads(content))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None  # written by something else: no report


def _state_from(fields: Any) -> DaemonState:
    return DaemonState(_pid(fields["pid"]), _moment(fields["started"]),
                       tuple(_text(address) for address in fields["addresses"]),
                       int(fields.get("lines_served", 0)),
                       _moment(fields.get("refreshed", 0.0)),
                       tuple(_worker_from(worker) for worker in fields.get("workers", ())),
                       {_text(reason): int(number)
                        for reason, number in fields.get("closed", {}).items()},
                       int(fields.get("paused", 0)),
                       fields.get("stopping", False) is True,
                       _activity_from(fields.get("activity", {})),
                       int(fields.get("reloads", 0)),
                       _text(fields.get("reload_error", "")),
                       _moment(fields.get("reload_failed_at", 0.0)),
                       int(fields.get("predecessor", 0)),
                       _moment(fields.get("reload_deadline", 0.0)))


def _activity_from(fields: Any) -> Activity:
    return Activity(*(int(fields.get(field.name, 0))
                      for field in dataclasses.fields(Activity)))


def _worker_from(fields: Any) -> WorkerState:
    return WorkerState(int(fields["number"]), _pid(fields["pid"]), _moment(fields["started"]),
                       int(fields["restarts"]), _text(fields.get("last_exit", "")))


def _pid(value: Any) -> int:
    pid = int(value)
    if not 0 < pid <= PID_MAX_LIMIT:
        raise ValueError(f"not a pid: {pid}")
    return pid


def _moment(value: Any) -> float:
    moment = float(value)
    if not math.isfinite(moment):
        raise ValueError(f"not a time: {moment}")
    return moment


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not text: {value!r}")
    return value


class Liveness(enum.Enum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"
    STALE = "stale"
    ABSENT = "absent"


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What the run files say, judged by the lock.

    ``ignored`` says why a running daemon's state file was not believed
    (``state`` is then ``None``).
    """

    liveness: Liveness
    pid: int | None = None
    state: DaemonState | None = None
    ignored: str = ""


def inspect(files: RunFiles) -> Inspection:
    """Whether a daemon runs, from its files; ``PermissionError`` if unreadable,
    ``RunFileRefused`` for a file that cannot be the daemon's.

    The state file is believed only when the process holding the lock, or
    root, owns it: anyone else who wrote it could make it say anything. One
    refused while a proven daemon holds the lock is ignored, not fatal, so
    that ``stop`` still stops it.
    """
    held = lock_is_held(files.lock, files.owners)
    pid = read_pid(files.pidfile, files.owners)
    if not held:
        if os.path.lexists(files.pidfile):
            return Inspection(Liveness.STALE, pid)
        return Inspection(Liveness.ABSENT)
    for _ in range(HANDOVER_RETRIES):
        if pid is None or holds_open(pid, files.lock) is False:
            return Inspection(Liveness.STARTING, pid)
        try:
            state = read_state(files.state, Owners.of_daemon(process_uid(pid)))
        except RunFileRefused as refusal:  # planted, or not a file: the lock still tells
            return Inspection(Liveness.RUNNING, pid,
                              ignored=f"ignoring {refusal.kind} {refusal.path}: "
                              f"{refusal.reason}")
        if state is not None and state.pid == pid:
            return Inspection(Liveness.STOPPING if state.stopping else Liveness.RUNNING, pid,
                              state)
        if state is None or holds_open(state.pid, files.lock) is not True:
            break
        # A reload: the next generation rewrites the pidfile, then the state
        # file, a moment apart; read both again rather than report "starting".
        time.sleep(HANDOVER_PAUSE)
        pid = read_pid(files.pidfile, files.owners)
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


@dataclasses.dataclass(frozen=True)
class Process:
    """One process, told apart from a later one given the same pid by its
    start time (clock ticks after boot, as /proc gives it)."""

    pid: int
    parent: int
    started: int

    def is_gone(self) -> bool:
        """Whether it exited: no such pid, a zombie, or the pid reused."""
        now = find_process(self.pid)
        return now is None or now.started != self.started


def _process_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat from the third (the state) on; ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:
            return status.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped while read
        return None


def find_process(pid: int) -> Process | None:
    """The live process ``pid`` is now; ``None`` if there is none, or a zombie."""
    fields = _process_fields(pid)
    if fields is None or fields[0] == b"Z":
        return None
    return Process(pid, int(fields[1]), int(fields[19]))


def process_uid(pid: int) -> int | None:
    """The effective uid of ``pid``; ``None`` if it is gone or hidden.

    Read from /proc/PID/status: /proc/PID itself is owned by root for a
    process that switched from root to another user.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[2])
    except OSError:
        pass  # then no state file but root's is believed
    return None


def describe_stale_pid(pid: int | None) -> str:
    """Why a pid in a pidfile whose lock is free is not our daemon."""
    if pid is None:
        return "no valid pid in it"
    try:
        fields = _process_fields(pid)
    except OSError:
        return f"pid {pid} is not a running reverserd"
    if fields is None:
        return f"pid {pid} is gone"
    if fields[0] == b"Z":
        return f"pid {pid} is a dead process not yet reaped"
    return f"pid {pid} now belongs to another process"


class Claim:
    """A daemon's hold on its run files, from the lock to the state file.

    ``release`` undoes everything in reverse order; it is safe to call at any
    stage, so a start-up failure leaves no file behind. Once the pidfile is
    written, every file is reached through the lock's directory handle, so
    all of this works unchanged inside a chroot.
    """

    def __init__(self, files: RunFiles, lock: RunLock, reloads: int = 0) -> None:
        self.files = files
        self.lock = lock
        self.reloads = reloads
        self.reload_failure: tuple[float, str] = (0.0, "")
        self.reload_deadline = 0.0  # while a reload is under way
        self.owns_files = True  # False once handed over, or until a new generation takes over
        self.reload_socket: socket.socket | None = None
        self.predecessor = 0  # while the generation this one took over from still accepts
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
            reason = describe_stale_pid(read_pid(self.files.pidfile, self.files.owners))
        for path in (self.files.pidfile, self.files.state):
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise UserError(f"cannot remove stale {path}: {os_reason(error)}") from None
        return reason

    def hand_over(self, uid: int, gid: int) -> None:
        """Give the lock file to the account the daemon will run as."""
        os.fchown(self.lock.fd, uid, gid)

    def listen_for_reloads(self) -> None:
        """Listen on the reload socket, which only root may connect to: the
        way ``reload`` reaches a daemon confined to a chroot, which could not
        start its successor itself."""
        name = self.files.reload_socket.name
        found = self.directory.lstat(name)
        if found is not None and not stat.S_ISSOCK(found.st_mode):
            raise UserError(f"cannot listen on {self.files.reload_socket}: the path exists "
                            "and is not a socket")
        self.directory.unlink(name)  # left by a daemon that is gone: we hold the lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        umask = os.umask(0o177)
        try:
            sock.bind(f"/proc/self/fd/{self.directory.fd}/{name}")
            sock.listen(RELOAD_BACKLOG)
        except OSError as error:
            sock.close()
            raise UserError(f"cannot listen on {self.files.reload_socket}: "
                            f"{os_reason(error)}") from None
        finally:
            os.umask(umask)
        sock.setblocking(False)
        self.reload_socket = sock

    def keep_fds(self) -> list[int]:
        """Descriptors a daemon must inherit to go on holding its run files."""
        fds = self.lock.keep_fds()
        if self.reload_socket is not None:
            fds.append(self.reload_socket.fileno())
        return fds

    def close_reload_socket(self) -> None:
        if self.reload_socket is not None:
            self.reload_socket.close()
            self.reload_socket = None

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

    def take_over(self) -> None:
        """Put this process's pid in the pidfile its predecessor wrote, in one
        rename: at no moment is there no pidfile, or half of one."""
        self.directory.write_atomically(self.files.pidfile.name, f"{os.getpid()}\n".encode())
        self.owns_files = self._wrote_pidfile = True

    def hand_over_to_successor(self) -> None:
        """The next generation owns the run files from now on: this one
        neither writes nor removes them any more, and at release only closes
        the lock (which the successor holds through the same open file)."""
        self.owns_files = self._wrote_pidfile = False

    def write_state(self, addresses: tuple[str, ...], lines_served: int,
                    workers: tuple[WorkerState, ...] = (),
                    closed: dict[str, int] | None = None, paused: int = 0,
                    stopping: bool = False, activity: Activity | None = None) -> None:
        """Say the daemon serves (first call) or refresh what it says."""
        if not self.owns_files:
            return
        now = time.time()
        if self._serving_since is None:
            self._serving_since = now
        state = DaemonState(os.getpid(), self._serving_since, addresses, lines_served, now,
                            workers, dict(closed or {}), paused, stopping,
                            activity or Activity(), self.reloads, self.reload_failure[1],
                            self.reload_failure[0], self.predecessor, self.reload_deadline)
        self.directory.write_atomically(self.files.state.name, state.to_json())

    def release(self) -> None:
        if not self.owns_files:
            self.close_reload_socket()
            self.lock.close()
            return
        if self.directory.fd >= 0:
            if self.reload_socket is not None:
                self.directory.unlink(self.files.reload_socket.name)
            self.close_reload_socket()
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
