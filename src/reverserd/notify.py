"""Telling the supervisor how reverserd is doing: systemd's notification
socket (``sd_notify(3)``, spoken without libsystemd) and s6's readiness
descriptor (``--ready-fd``).

Both are taken from the environment and the command line before the
application loads: the variables are removed then, so neither the
application nor anything it runs mistakes systemd's messages for its own,
and the socket is connected while its path is still reachable (before a
chroot). Nothing here ever raises into serving: a supervisor that stopped
listening costs one warning, and reverserd goes on.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import MutableMapping

from reverserd.errors import os_reason

log = logging.getLogger(__name__)

NOTIFY_VARIABLE = "NOTIFY_SOCKET"
WATCHDOG_VARIABLES = ("WATCHDOG_USEC", "WATCHDOG_PID")
MAX_SOCKET_PATH_BYTES = 107  # sun_path holds 108 bytes, the closing NUL included
MAX_STATUS_BYTES = 1024  # systemctl shows one line; a longer STATUS= is cut
MAX_WATCHDOG_USEC = 2**63 - 1  # systemd's own USEC_INFINITY - 1
MIN_WATCHDOG_INTERVAL = 0.01  # seconds: a tiny WatchdogSec= must not turn into a busy loop


def _warn(message: str) -> None:
    """Before logging is set up, a warning can only go to stderr."""
    print(f"reverserd: warning: {message}", file=sys.stderr, flush=True)


class Notifier:
    """A connected, close-on-exec, non-blocking datagram socket to systemd.

    ``started_as`` is the pid systemd started: a daemon that detached sends
    ``MAINPID=`` with its readiness, so systemd follows the right process.
    """

    def __init__(self, address: str, watchdog_usec: int | None, started_as: int) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.started_as = started_as
        self.watchdog_interval = (None if watchdog_usec is None
                                  else max(MIN_WATCHDOG_INTERVAL, watchdog_usec / 2e6))
        self._warned = False
        self._socket: socket.socket | None = None
        self._failure = ""
        target = "\0" + address[1:] if address.startswith("@") else address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                             | socket.SOCK_NONBLOCK)
        try:
            sock.connect(target)
        except OSError as error:
            sock.close()
            self._failure = os_reason(error)
            return
        self._socket = sock

    @property
    def fd(self) -> int | None:
        return None if self._socket is None else self._socket.fileno()

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=value`` lines; whether systemd got it."""
        message = "\n".join(fields).encode("utf-8", "replace")
        if self._socket is None:
            self._report(self._failure or "the socket is closed")
            return False
        try:
            self._socket.send(message)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                self._report("its queue is full; message dropped")
            else:
                self._report(os_reason(error))
            return False
        return True

    def _report(self, reason: str) -> None:
        if self._warned:
            log.debug("cannot notify systemd at %s: %s", self.address, reason)
            return
        self._warned = True
        log.warning("cannot notify systemd at %s: %s; serving on without it", self.address,
                    reason)

    def ready(self, status: str) -> None:
        fields = ["READY=1", _status(status)]
        if os.getpid() != self.started_as:
            fields.append(f"MAINPID={os.getpid()}")
        self.send(*fields)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str) -> str:
    """``STATUS=text`` on one line, cut to ``MAX_STATUS_BYTES``."""
    line = " ".join(text.splitlines())
    encoded = line.encode("utf-8", "replace")
    if len(encoded) > MAX_STATUS_BYTES:
        line = encoded[:MAX_STATUS_BYTES - 3].decode("utf-8", "ignore") + "..."
    return f"STATUS={line}"


def notifier_from_environment(environ: MutableMapping[str, str] | None = None,
                              ) -> Notifier | None:
    """systemd's notification socket, if the environment names one.

    ``NOTIFY_SOCKET`` and the watchdog's variables are removed, once read.
    A watchdog meant for another process (``WATCHDOG_PID``) is not ours to
    feed. A value that cannot be right is ignored with a warning.
    """
    environ = os.environ if environ is None else environ
    address = environ.pop(NOTIFY_VARIABLE, None)
    watchdog_usec, watchdog_pid = (environ.pop(name, None) for name in WATCHDOG_VARIABLES)
    if not address:
        return None
    if not (address.startswith(("/", "@"))):
        _warn(f"ignoring {NOTIFY_VARIABLE}={address!r}: neither a path nor an abstract "
              "socket name (@...)")
        return None
    if len(os.fsencode(address)) > MAX_SOCKET_PATH_BYTES:
        _warn(f"ignoring {NOTIFY_VARIABLE}: longer than {MAX_SOCKET_PATH_BYTES} bytes")
        return None
    return Notifier(address, _watchdog_usec(watchdog_usec, watchdog_pid), os.getpid())


def _watchdog_usec(usec: str | None, pid: str | None) -> int | None:
    if usec is None:
        return None
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    digits = usec.isascii() and usec.isdigit() and len(usec) <= len(str(MAX_WATCHDOG_USEC))
    value = int(usec) if digits else 0
    if not 0 < value <= MAX_WATCHDOG_USEC:
        _warn(f"ignoring WATCHDOG_USEC={usec!r}: not a number of microseconds")
        return None
    return value


def check_ready_fd(fd: int) -> None:
    """Refuse a descriptor that is not open for writing: ``ValueError`` says why."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        raise ValueError(f"file descriptor {fd} is not open") from None
    if flags & os.O_ACCMODE == os.O_RDONLY:
        raise ValueError(f"file descriptor {fd} is open for reading only")


class ReadyDescriptor:
    """s6's ``notification-fd``: one newline once serving, then closed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_inheritable(fd, False)  # the application's programs must not hold it open

    def ready(self) -> None:
        if self.fd < 0:
            return
        try:
            os.set_blocking(self.fd, False)  # a reader that never reads must not stop the loop
            os.write(self.fd, b"\n")
        except OSError as error:
            log.warning("cannot write readiness to file descriptor %d: %s", self.fd,
                        os_reason(error))
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass  # closed by someone else: nothing is left to release
            self.fd = -1


@dataclasses.dataclass
class Supervision:
    """Whatever the supervisor asked to be told; empty when it asked nothing."""

    notifier: Notifier | None = None
    ready_descriptor: ReadyDescriptor | None = None
    # A new generation is not systemd's main process until its predecessor says
    # MAINPID=: anything it sent before would be dropped (NotifyAccess=main).
    silent_until_named: bool = False

    @classmethod
    def from_environment(cls, ready_fd: int | None) -> Supervision:
        return cls(notifier_from_environment(),
                   None if ready_fd is None else ReadyDescriptor(ready_fd))

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1``; ``None`` without a watchdog."""
        return None if self.notifier is None else self.notifier.watchdog_interval

    def ready(self, addresses: tuple[str, ...]) -> None:
        if self.notifier is not None:
            where = ", ".join(addresses) or "no address"
            self.notifier.ready(f"listening on {where}")
        if self.ready_descriptor is not None:
            self.ready_descriptor.ready()

    def already_running(self, pid: int) -> None:
        """``start`` found a daemon serving: that one is ready, and systemd should follow it."""
        if self.notifier is not None:
            self.notifier.send("READY=1", _status(f"already running as pid {pid}"),
                               f"MAINPID={pid}")
        if self.ready_descriptor is not None:
            self.ready_descriptor.ready()

    def stopping(self, status: str) -> None:
        if self.notifier is not None:
            self.notifier.send("STOPPING=1", _status(status))

    def status(self, status: str) -> None:
        if self.notifier is not None:
            self.notifier.send(_status(status))

    def ping(self) -> None:
        if self.notifier is not None and not self.silent_until_named:
            self.notifier.send("WATCHDOG=1")

    def named(self) -> None:
        """The predecessor told systemd this process is the main one now."""
        self.silent_until_named = False

    def reloading(self) -> None:
        """A reload began: systemd waits for the next ``READY=1``."""
        if self.notifier is not None:
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={now}", _status("reloading"))

    def reload_failed(self, reason: str) -> None:
        """The reload failed and this generation serves on: ready again."""
        if self.notifier is not None:
            self.notifier.send("READY=1", _status(f"reload failed: {reason}"))

    def hand_over(self, successor: int) -> None:
        """The next generation serves: systemd follows it from now on, and
        this one, which stops, says nothing more."""
        if self.notifier is not None:
            self.notifier.send(f"MAINPID={successor}", "READY=1",
                               _status(f"reloaded: pid {successor} serves"))
        self.close()
        self.notifier = self.ready_descriptor = None

    def successor_environment(self) -> dict[str, str]:
        """What the next generation needs to speak to systemd in turn
        (without ``WATCHDOG_PID``: it is not this pid's any more)."""
        if self.notifier is None:
            return {}
        environment = {NOTIFY_VARIABLE: self.notifier.address}
        if self.notifier.watchdog_usec is not None:
            environment["WATCHDOG_USEC"] = str(self.notifier.watchdog_usec)
        return environment

    def keep_fds(self) -> list[int]:
        """Descriptors the serving process needs, to keep through a detach."""
        fds = []
        if self.notifier is not None and self.notifier.fd is not None:
            fds.append(self.notifier.fd)
        if self.ready_descriptor is not None and self.ready_descriptor.fd >= 0:
            fds.append(self.ready_descriptor.fd)
        return fds

    def close(self) -> None:
        """Let go without a word: in workers, and in the launcher once the daemon has its copies."""
        if self.notifier is not None:
            self.notifier.close()
        if self.ready_descriptor is not None:
            self.ready_descriptor.close()
