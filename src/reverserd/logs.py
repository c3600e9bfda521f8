"""Logging set-up: one line per event, to stdout, a log file or syslog.

Handlers are opened by the launcher, before the daemon detaches, so an
unwritable log is reported to the shell; their file descriptors are then
kept open through the detach (``open_fds``).

A log file that fails -- a full disk, an I/O error, the file deleted, its
directory removed -- never hurts serving: records that cannot be written are
counted, not retried, and the count is logged once writing works again.
"""

from __future__ import annotations

import datetime
import errno
import io
import itertools
import logging
import logging.handlers
import math
import os
import pathlib
import signal
import socket
import stat
import sys
import threading
import time
import types

from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SHORT_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the supervisor's logger stamps lines
# full: today's lines; short: no timestamp; journal: short, each line led by its priority.
LOG_FORMATS = ("full", "short", "journal")
# sd-daemon(3)'s prefixes, which journald turns into each line's priority.
JOURNAL_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                      (logging.INFO, 6))
JOURNAL_DEBUG = 7
CHECK_INTERVAL = 1.0  # seconds between looks at the file under the log's name
CREATE_MODE = 0o640  # before the umask: the log names clients, others need not read it
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY

log = logging.getLogger(__name__)


def iso_time(created: float) -> str:
    """ISO 8601 local time with milliseconds and UTC offset."""
    return datetime.datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


class IsoFormatter(logging.Formatter):
    """ISO 8601 local time with milliseconds and UTC offset.

    The offset makes lines from machines or seasons with different clocks
    comparable; milliseconds order the events of one busy second.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)


class JournalFormatter(logging.Formatter):
    """Lines for journald's stdout stream: ``<6>INFO name: message``.

    Every line of a multi-line record (a traceback) carries the prefix,
    since journald reads each line as an entry of its own.
    """

    def __init__(self) -> None:
        super().__init__(SHORT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        priority = next((value for level, value in JOURNAL_PRIORITIES
                         if record.levelno >= level), JOURNAL_DEBUG)
        return "\n".join(f"<{priority}>{line}"
                         for line in super().format(record).split("\n"))


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of one of ``LOG_FORMATS``."""
    if log_format == "journal":
        return JournalFormatter()
    if log_format == "short":
        return logging.Formatter(SHORT_FORMAT)
    return IsoFormatter(FORMAT)


def is_journal_stream(fd: int, environ: dict[str, str] | None = None) -> bool:
    """Whether ``fd`` is the stream systemd connected to the journal
    (``JOURNAL_STREAM=device:inode``, see systemd.exec(5)): then journald
    stamps each line, and reads a priority prefix."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isascii() and device.isdigit() and inode.isascii() and inode.isdigit()):
        return False
    try:
        found = os.fstat(fd)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


class Refused(OSError):
    """Something under the log's name that must not be written: not a
    regular file (a FIFO would block, a device or socket is no log), or a
    file someone else owns (in a shared directory, they would read the log)."""

    def __init__(self, path: pathlib.Path, reason: str) -> None:
        super().__init__(f"refusing log file {path}: {reason}")


def _kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _identity(found: os.stat_result) -> tuple[int, int]:
    return found.st_dev, found.st_ino


def _is_null_device(found: os.stat_result) -> bool:
    try:
        return stat.S_ISCHR(found.st_mode) and found.st_rdev == os.stat(os.devnull).st_rdev
    except OSError:
        return False  # in a chroot without /dev/null


class LogFile(logging.Handler):
    """A log file that rotates by size, follows its name and survives failures.

    Each record is one ``write`` on an ``O_APPEND`` descriptor, so worker
    processes sharing the file never split each other's lines. About once a
    second (``tick``, or the next record) it looks at the file under its
    name: a deleted file (no links left) or another file there (replaced,
    or rotated by another worker) is reopened by name; a removed directory is
    created again, as it was, or waited for. A moved file with nothing in
    its place is kept: whoever moved it signals when to reopen (logrotate).

    A failed write is not reported through ``handleError``: its traceback
    would go to stderr, which in a daemon is this very file. The record is
    counted as lost instead, later records are only counted, and one more
    write is tried a second later; once one works, a line says how many
    records were lost, when, and why.

    Once the file owns the process's stdout and stderr (in a daemon), each
    reopen or rotation points descriptors 1 and 2 at the new file as well, so
    output from C code or child processes follows the log. The file is
    reached through its directory's descriptor, so rotating and reopening
    still work inside a chroot (where a removed directory cannot be made
    again: its path means something else there).
    """

    owns_stdio = False

    def __init__(self, path: pathlib.Path, max_bytes: int, backups: int,
                 allowed_owners: frozenset[int] | None = None) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.allowed_owners = allowed_owners
        self.fd = -1
        self.written = False  # whether any line ever reached the file
        self.lost = 0  # records lost since the last line that was written
        self.failure: str | None = None  # why writing stopped, while it does
        self._lost_from = self._lost_until = 0.0
        self._partial = False  # the file ends inside a line a failed write began
        self._identity = (0, 0)
        self._next_check = time.monotonic() + CHECK_INTERVAL
        self._directory_path = pathlib.Path(os.path.abspath(path.parent))
        self._root = _identity(os.stat("/"))
        self.directory = DirectoryHandle(path.parent)
        try:
            self._directory_found = os.fstat(self.directory.fd)
            fd, found = self._open()
        except BaseException:
            self.close()
            raise
        self._adopt(fd, found)
        self.discards = _is_null_device(found)
        if self.discards:  # /dev/null: nothing to rotate or follow
            self.max_bytes = 0
            self._next_check = math.inf

    @property
    def name_in_directory(self) -> str:
        return self.path.name

    def _open(self) -> tuple[int, os.stat_result]:
        """The file under the log's name, opened for appending, or ``Refused``.

        ``O_NOFOLLOW`` refuses a symlink, ``O_NONBLOCK`` keeps a FIFO from
        blocking the open; whatever was opened is then checked by its
        descriptor, so it cannot change between the check and the use.
        """
        try:
            fd = self.directory.open(self.name_in_directory, OPEN_FLAGS, CREATE_MODE)
        except OSError:
            try:
                there = self.directory.lstat(self.name_in_directory)
            except OSError:
                there = None
            if there is not None and not stat.S_ISREG(there.st_mode):
                raise Refused(self.path, f"it is {_kind(there.st_mode)}") from None
            raise
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode) and not _is_null_device(found):
                raise Refused(self.path, f"it is {_kind(found.st_mode)}")
            if stat.S_ISREG(found.st_mode) and self.allowed_owners is not None \
                    and found.st_uid not in self.allowed_owners:
                raise Refused(self.path, f"owned by uid {found.st_uid}, not by root or "
                                         "the daemon's user")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd, found

    def _adopt(self, fd: int, found: os.stat_result) -> None:
        self._close_file()
        self.fd = fd
        self._identity = _identity(found)
        if self.owns_stdio:
            for stdio in (1, 2):
                os.dup2(fd, stdio)

    def _close_file(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._check(now)
        if self.failure is not None:
            self._lose(record.created)
            return
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)  # a bad format string: the caller's bug, not the disk's
            return
        try:
            if self.max_bytes and self._is_full(len(data)):
                self._make_room(len(data))
            self._write(data)
        except OSError as error:
            self._fail(error)
            self._lose(record.created)

    def _write(self, data: bytes) -> None:
        """One ``write`` for the whole line; a short one (the disk just
        filled) gets one more try, which then says why."""
        if self._partial:
            data = b"\n" + data
        written = os.write(self.fd, data)
        if written < len(data):
            self._partial = True
            if os.write(self.fd, data[written:]) < len(data) - written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._partial = False
        self.written = True

    def _is_full(self, needed: int) -> bool:
        """Whether ``needed`` more bytes would take the file past its maximum
        size; the size is the file's own, whichever process wrote last (an
        empty file takes a record of any size)."""
        size = os.lseek(self.fd, 0, os.SEEK_END)
        return size > 0 and size + needed > self.max_bytes

    def _lose(self, created: float) -> None:
        if not self.lost:
            self._lost_from = created
        self._lost_until = created
        self.lost += 1

    def _fail(self, error: OSError) -> None:
        if self.failure is None:
            self.failure = os_reason(error)

    def tick(self) -> None:
        """Look at the file if a second has passed: cheap enough for every
        turn of an event loop, and a no-op in between."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self.acquire()
        try:
            self._check(now)
        finally:
            self.release()

    def _check(self, now: float) -> None:
        """Follow the name if the file was deleted or replaced; while
        failing, try once to write again (the count of records lost)."""
        self._next_check = now + CHECK_INTERVAL
        try:
            if self.fd < 0 or self._replaced():
                self._reopen()
        except OSError as error:
            self._fail(error)
            return
        if self.failure is not None:
            self._recover()

    def _replaced(self) -> bool:
        if os.fstat(self.fd).st_nlink == 0:
            return True
        under_name = self.directory.lstat(self.name_in_directory)
        return under_name is not None and _identity(under_name) != self._identity

    def _recover(self) -> None:
        """Try writing again: the count of records lost, if any."""
        try:
            if self.lost:
                self._write(self._lost_line())
                self.lost = 0
            self.failure = None
        except OSError as error:
            self._fail(error)

    def _lost_line(self) -> bytes:
        count = self.lost
        record = logging.LogRecord(
            log.name, logging.WARNING, __file__, 0,
            "%d log record%s lost between %s and %s: %s",
            (count, "" if count == 1 else "s", iso_time(self._lost_from),
             iso_time(self._lost_until), self.failure), None)
        return (self.format(record) + "\n").encode("utf-8", "backslashreplace")

    def _reopen(self) -> None:
        """Open the file by name again, in its directory made again if removed.

        On failure the old file is closed all the same: the log goes where
        its name says, or nowhere, counted.
        """
        self._close_file()
        try:
            opened = self._open()
        except FileNotFoundError:
            if os.fstat(self.directory.fd).st_nlink > 0:
                raise
            self._replace_directory()
            opened = self._open()
        self._adopt(*opened)

    def _replace_directory(self) -> None:
        """The removed log directory, by its path: as it now is, or made
        again with the mode and owner it had (when this process may)."""
        if _identity(os.stat("/")) != self._root:
            raise FileNotFoundError(errno.ENOENT, "the log directory was removed")
        try:
            directory = DirectoryHandle(self._directory_path)
        except FileNotFoundError:
            mode = stat.S_IMODE(self._directory_found.st_mode)
            os.makedirs(self._directory_path, mode)
            directory = DirectoryHandle(self._directory_path)
            _restore(directory.fd, mode, self._directory_found)
        owner = os.fstat(directory.fd).st_uid
        if owner != self._directory_found.st_uid and self.allowed_owners is not None \
                and owner not in self.allowed_owners:
            directory.close()
            raise Refused(self.path, f"its directory is owned by uid {owner}, not by root "
                                     "or the daemon's user")
        self.directory.close()
        self.directory = directory

    def _make_room(self, needed: int) -> None:
        """Rotate, unless another process did already: then follow it.

        Worker processes share the log file; the first to find it full
        rotates it, and the others, finding a new file under the name, move
        to it instead of rotating again.
        """
        under_name = self.directory.lstat(self.name_in_directory)
        if under_name is not None and _identity(under_name) != self._identity:
            self._reopen()
            if not self._is_full(needed):
                return
        self._rotate()

    def _rotate(self) -> None:
        """Shift ``log.1`` … to ``log.2`` …, then the log to ``log.1``."""
        name = self.name_in_directory
        names = [name, *(f"{name}.{number}" for number in range(1, self.backups + 1))]
        for older, newer in reversed(list(itertools.pairwise(names))):
            if self.directory.lstat(older) is not None:
                self.directory.replace(older, newer)
        self._reopen()

    def reopen(self) -> None:
        """Reopen by name now (SIGUSR1, SIGHUP); raises ``OSError`` if that
        fails, after which records are counted and reopening retried."""
        self.acquire()
        try:
            if self.discards:
                return
            self._next_check = time.monotonic() + CHECK_INTERVAL
            try:
                self._reopen()
            except OSError as error:
                self._fail(error)
                raise
            if self.failure is not None:
                self._recover()
        finally:
            self.release()

    def hand_over(self, uid: int, gid: int) -> None:
        """Give the file to the account the daemon will run as, so it can
        still reopen and rotate it."""
        if self.fd >= 0 and not self.discards:
            os.fchown(self.fd, uid, gid)
        if self.allowed_owners is not None:
            self.allowed_owners |= {uid}

    def close(self) -> None:
        self.acquire()
        try:
            self._close_file()
            self.directory.close()
        finally:
            self.release()
        super().close()


def _restore(fd: int, mode: int, was: os.stat_result) -> None:
    """Give a directory made again its old mode (past the umask) and owner,
    as far as this process may."""
    try:
        os.fchmod(fd, mode)
        if (was.st_uid, was.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, was.st_uid, was.st_gid)
    except PermissionError:
        pass


class SyslogHandler(logging.handlers.SysLogHandler):
    """Syslog with ``prefix[pid]:`` as ident, the pid read when each record
    is sent (a handler opened before detaching must name the daemon)."""

    def __init__(self, prefix: str, address: str) -> None:
        super().__init__(address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prefix}[{os.getpid()}]: {super().format(record)}"


def open_log_file(path: pathlib.Path, max_bytes: int, backups: int,
                  allowed_owners: frozenset[int] | None = None) -> LogFile:
    """The log file at ``path``: a regular file (of one of ``allowed_owners``,
    if given) or ``/dev/null``, to discard the log; anything else is refused.

    A file size limit (``ulimit -f``) would kill the process with SIGXFSZ
    at the first write past it; ignored, it is a failed write like a full
    disk.
    """
    try:
        handler = LogFile(path, max_bytes, backups, allowed_owners)
    except Refused as refusal:
        raise UserError(str(refusal)) from None
    except OSError as error:
        raise UserError(f"cannot open log file {path}: {os_reason(error)}") from None
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    handler.setFormatter(IsoFormatter(FORMAT))
    return handler


def open_syslog(prefix: str, address: str) -> SyslogHandler:
    """A handler for the system logger, which must be listening now.

    The standard handler, like C's ``openlog``, ignores a logger that is not
    there; a daemon whose log silently vanishes is worse than one that
    refuses to start.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
        handler = SyslogHandler(prefix, address)
    except OSError as error:
        raise UserError(
            f"cannot reach the system logger at {address}: {os_reason(error)}"
        ) from None
    handler.setFormatter(logging.Formatter(SHORT_FORMAT))
    return handler


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stdout in the foreground. A reader that went away (``EPIPE``: a pipe to
    ``head``, a logger that died) costs the records it no longer takes, never a
    traceback on stderr for each of them (stderr is often the same pipe);
    other failures are reported as usual."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def open_stdout() -> logging.Handler:
    handler = StdoutHandler(sys.stdout)
    handler.setFormatter(IsoFormatter(FORMAT))
    return handler


def install(handler: logging.Handler, level: str, log_format: str | None = None) -> None:
    """Send every log record at ``level`` or above to ``handler`` alone, as
    ``log_format`` lays them out (syslog keeps its own layout)."""
    if log_format is not None and not isinstance(handler, SyslogHandler):
        handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for previous in root.handlers:
        if previous is not handler:
            previous.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)


def open_fds() -> list[int]:
    """Descriptors the installed handlers write to, to keep through a detach."""
    fds = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogFile) and handler.fd >= 0:
            fds += [handler.fd, handler.directory.fd]
        elif isinstance(handler, SyslogHandler):
            sock = getattr(handler, "socket", None)  # set by the handler, not declared
            if sock is not None:
                fds.append(sock.fileno())
    return fds


def installed_log_file() -> LogFile | None:
    """The log file records go to; ``None`` for syslog or stdout."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogFile):
            return handler
    return None


def log_file_stream() -> io.TextIOWrapper | None:
    """A stream on the installed log file, to which a daemon's stdout and
    stderr go; it does not own the descriptor, which stays the handler's."""
    log_file = installed_log_file()
    if log_file is None or log_file.fd < 0:
        return None
    return open(log_file.fd, "a", encoding="utf-8", closefd=False)  # noqa: SIM115


def reopen() -> None:
    """Reopen the log file by name (after an external rotation moved it)."""
    log_file = installed_log_file()
    if log_file is not None:
        log_file.reopen()


def tick() -> None:
    """Let the log file look at itself, about once a second: see ``LogFile``.

    Costs a clock reading, and two ``stat`` calls once a second.
    """
    log_file = installed_log_file()
    if log_file is not None:
        log_file.tick()


def raise_if_unwritable() -> None:
    """Refuse to go on when the log file has taken no record at all, so
    that ``start`` fails with the reason instead of serving with no log."""
    log_file = installed_log_file()
    if log_file is not None and not log_file.written and log_file.lost:
        raise UserError(f"cannot write log file {log_file.path}: {log_file.failure}")


class _LoggingStream(io.TextIOBase):
    """A text stream that logs each complete line it is given.

    Stands in for ``sys.stdout`` and ``sys.stderr`` in a daemon, so that a
    stray ``print`` becomes a proper log line. A write made while logging
    (logging reporting its own failure) goes to the raw descriptor instead.
    """

    def __init__(self, logger: logging.Logger, level: int, fd: int) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._fd = fd
        self._pending = ""
        self._inside = threading.local()

    def write(self, text: str) -> int:
        if getattr(self._inside, "active", False):
            os.write(self._fd, text.encode("utf-8", "replace"))
            return len(text)
        self._inside.active = True
        try:
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                self._logger.log(self._level, "%s", line)
        finally:
            self._inside.active = False
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.write("\n")

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False


def capture_stdio_and_crashes() -> None:
    """Route ``print``, stderr writes and uncaught exceptions into the log."""
    sys.stdout = _LoggingStream(logging.getLogger("stdout"), logging.INFO, 1)
    sys.stderr = _LoggingStream(logging.getLogger("stderr"), logging.ERROR, 2)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogFile):
            handler.owns_stdio = True


def _log_uncaught(kind: type[BaseException], error: BaseException,
                  trace: types.TracebackType | None) -> None:
    log.critical("uncaught exception", exc_info=(kind, error, trace))


def _log_uncaught_in_thread(arguments: threading.ExceptHookArgs) -> None:
    log.critical("uncaught exception in thread %s",
                 arguments.thread.name if arguments.thread else "?",
                 exc_info=(arguments.exc_type, arguments.exc_value or Exception(),
                           arguments.exc_traceback))
