"""systemd's end of ``sd_notify(3)``, for tests: a datagram socket that records what it hears.

systemd reads a service's notifications (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``STOPPING=1``: newline-separated assignments, one datagram each) from the AF_UNIX datagram
socket it names in ``NOTIFY_SOCKET``. With ``NotifyAccess=main`` it believes only datagrams
whose sender, as the kernel vouches for it (``SCM_CREDENTIALS``), is the main process. So
this socket keeps, for every datagram, its fields, when it arrived and the sender's pid:
enough to check readiness, watchdog timing and who spoke, without systemd running.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import secrets
import select
import socket
import struct
import threading
import time

from tests.e2e.support import DEADLINE, wait_until

UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
DATAGRAM_MAX = 65536  # far above what systemd itself reads (a pipe buffer's worth)
POLL_INTERVAL = 0.05  # how often the receiving thread looks whether it should stop
LIFETIME = 600.0  # the receiving thread gives up after this long whatever happens
MAX_DATAGRAMS = 100_000  # a runaway sender cannot grow the record without bound


@dataclasses.dataclass(frozen=True)
class Notification:
    """One datagram: its assignments, when it came (``time.monotonic``) and who sent it."""

    raw: bytes
    arrived: float
    pid: int | None

    @property
    def fields(self) -> dict[str, str]:
        """Its ``NAME=VALUE`` lines; a line without ``=`` (which systemd ignores) is left out."""
        found = {}
        for line in self.raw.decode("utf-8", "replace").split("\n"):
            name, equals, value = line.partition("=")
            if equals:
                found[name] = value
        return found

    @property
    def malformed(self) -> list[str]:
        """Lines systemd would not understand: no ``=``, or no name before it."""
        lines = self.raw.decode("utf-8", "replace").split("\n")
        return [line for line in lines if line and (not line.partition("=")[1] or
                                                    line.startswith("="))]


class NotifySocket:
    """A listening ``NOTIFY_SOCKET``: a file in ``directory``, or in the abstract namespace.

    Use as a context manager, or call ``close``: the receiving thread then stops and the
    socket file is removed.
    """

    def __init__(self, directory: pathlib.Path, abstract: bool = False) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._path: pathlib.Path | None = None
        try:
            if abstract:
                # A leading "@" in NOTIFY_SOCKET means a name in the abstract namespace,
                # where the kernel wants a NUL byte instead.
                self.address = f"@reverserd-notify-{os.getpid()}-{secrets.token_hex(8)}"
                self._socket.bind("\0" + self.address[1:])
            else:
                self._path = directory / "notify.sock"
                self._socket.bind(str(self._path))
                self.address = str(self._path)
            # The kernel then attaches the sender's pid to every datagram, as systemd asks it to.
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        except BaseException:
            self._socket.close()
            raise
        self._received: list[Notification] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        ancillary = socket.CMSG_SPACE(UCRED.size)
        give_up = time.monotonic() + LIFETIME
        count = 0
        while (not self._stop.is_set() and time.monotonic() < give_up
               and count < MAX_DATAGRAMS):
            readable, _, _ = select.select([self._socket], [], [], POLL_INTERVAL)
            if not readable:
                continue
            data, controls, _, _ = self._socket.recvmsg(DATAGRAM_MAX, ancillary)
            arrived = time.monotonic()
            pid = None
            for level, kind, payload in controls:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    pid = UCRED.unpack(payload[:UCRED.size])[0]
            with self._lock:
                self._received.append(Notification(data, arrived, pid))
            count += 1

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)
        self._socket.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)

    @property
    def received(self) -> list[Notification]:
        """Every datagram so far, oldest first."""
        with self._lock:
            return list(self._received)

    def with_field(self, name: str, value: str | None = None) -> list[Notification]:
        """The datagrams that set ``name`` (to ``value``, if given), oldest first."""
        return [notification for notification in self.received
                if name in notification.fields
                and (value is None or notification.fields[name] == value)]

    def wait_for(self, name: str, value: str | None = None, count: int = 1,
                 timeout: float = DEADLINE) -> list[Notification]:
        """Block until ``count`` datagrams set ``name`` (to ``value``); return them all."""
        what = f"{count} notification(s) with {name}" + ("" if value is None else f"={value}")

        def arrived() -> list[Notification] | None:
            found = self.with_field(name, value)
            return found if len(found) >= count else None

        try:
            return wait_until(arrived, what, timeout)  # type: ignore[return-value]
        except AssertionError as error:
            raise AssertionError(f"{error}; received: {self.received}") from None
