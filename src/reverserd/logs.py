"""Logging set-up: one line per event, to stdout, a log file or syslog.

Handlers are opened by the launcher, before the daemon detaches, so an
unwritable log is reported to the shell; their file descriptors are then
kept open through the detach (``open_fds``).
"""

from __future__ import annotations

import datetime
import io
import itertools
import logging
import logging.handlers
import os
import pathlib
import socket
import sys
import threading
import types

from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SYSLOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


class IsoFormatter(logging.Formatter):
    """ISO 8601 local time with milliseconds and UTC offset.

    The offset makes lines from machines or seasons with different clocks
    comparable; milliseconds order the events of one busy second.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.datetime.fromtimestamp(record.created).astimezone()
        return moment.isoformat(timespec="milliseconds")


class LogFile(logging.handlers.RotatingFileHandler):
    """A log file that rotates by size and can be reopened by name.

    Reopening is what an external logrotate needs after moving the file.
    Once the file owns the process's stdout and stderr (in a daemon), each
    reopen or rotation points descriptors 1 and 2 at the new file as well, so
    output from C code or child processes follows the log. The file is
    reached through its directory's descriptor, so rotating and reopening
    still work inside a chroot.
    """

    owns_stdio = False

    def __init__(self, path: pathlib.Path, max_bytes: int, backups: int) -> None:
        self.directory = DirectoryHandle(path.parent)
        try:
            super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        except BaseException:
            self.directory.close()
            raise

    @property
    def name_in_directory(self) -> str:
        return os.path.basename(self.baseFilename)

    def _open(self) -> io.TextIOWrapper:
        fd = self.directory.open(self.name_in_directory,
                                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        stream = open(fd, "a", encoding="utf-8", errors=self.errors)  # noqa: SIM115
        if self.owns_stdio:
            for stdio in (1, 2):
                os.dup2(fd, stdio)
        return stream

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """Rotate when the file grows too big, unless another process did already.

        Worker processes share the log file; the first to see it full
        rotates it, and the others, finding a new file under the name, move
        to it instead of rotating again.
        """
        if not self.directory.is_regular_file(self.name_in_directory):
            return False  # never rotate a device such as /dev/stdout, nor a lost file
        found = self.directory.lstat(self.name_in_directory)
        if self.stream is not None and found is not None \
                and os.fstat(self.stream.fileno()).st_ino != found.st_ino:
            self.stream.close()
            self.stream = self._open()
        return bool(super().shouldRollover(record))

    def doRollover(self) -> None:
        """Shift ``log.1`` … to ``log.2`` …, then the log to ``log.1``."""
        if self.stream:
            self.stream.close()
            self.stream = None
        name = self.name_in_directory
        names = [name, *(f"{name}.{number}" for number in range(1, self.backupCount + 1))]
        if self.backupCount > 0:
            for older, newer in reversed(list(itertools.pairwise(names))):
                if self.directory.lstat(older) is not None:
                    self.directory.replace(older, newer)
        self.stream = self._open()

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()

    def hand_over(self, uid: int, gid: int) -> None:
        """Give the file to the account the daemon will run as, so it can
        still reopen and rotate it."""
        if self.stream is not None:
            os.fchown(self.stream.fileno(), uid, gid)

    def close(self) -> None:
        super().close()
        self.directory.close()


class SyslogHandler(logging.handlers.SysLogHandler):
    """Syslog with ``prefix[pid]:`` as ident, the pid read when each record
    is sent (a handler opened before detaching must name the daemon)."""

    def __init__(self, prefix: str, address: str) -> None:
        super().__init__(address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prefix}[{os.getpid()}]: {super().format(record)}"


def open_log_file(path: pathlib.Path, max_bytes: int, backups: int) -> LogFile:
    try:
        handler = LogFile(path, max_bytes, backups)
    except OSError as error:
        raise UserError(f"cannot open log file {path}: {os_reason(error)}") from None
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
    handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
    return handler


def open_stdout() -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(IsoFormatter(FORMAT))
    return handler


def install(handler: logging.Handler, level: str) -> None:
    """Send every log record at ``level`` or above to ``handler`` alone."""
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
        if isinstance(handler, LogFile) and handler.stream is not None:
            fds += [handler.stream.fileno(), handler.directory.fd]
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
    """The installed log file's stream, to which a daemon's stdout and stderr go."""
    log_file = installed_log_file()
    return None if log_file is None else log_file.stream


def reopen() -> None:
    """Reopen the log file by name (after an external rotation moved it)."""
    log_file = installed_log_file()
    if log_file is not None:
        log_file.reopen()


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
