"""Sockets a supervisor bound for us: systemd's socket activation (``sd_listen_fds(3)``).

The supervisor passes ``LISTEN_FDS`` descriptors from 3 on, names them in
``LISTEN_FDNAMES`` (optional) and says in ``LISTEN_PID`` which process they
are for: a child that inherited the variables by mistake must not take them.
They are read once, in the process that was started with them, and the
variables are removed then, so workers and any program the daemon starts
never misread them.
"""

from __future__ import annotations

import dataclasses
import os
import socket

from reverserd.errors import UserError

FIRST_FD = 3  # SD_LISTEN_FDS_START
MAX_FDS = 1024  # more than any unit passes; bounds a corrupt LISTEN_FDS
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclasses.dataclass(frozen=True)
class InheritedSocket:
    index: int
    name: str
    socket: socket.socket


_taken: list[InheritedSocket] | None = None


def inherited_sockets() -> list[InheritedSocket]:
    """The listening sockets this process was started with; read on first call."""
    global _taken
    if _taken is None:
        _taken = _take(dict(os.environ))
        for variable in VARIABLES:
            os.environ.pop(variable, None)
    return _taken


def provide(passed: list[InheritedSocket]) -> None:
    """The sockets systemd passed to the first generation of the daemon, as a
    reload hands them on: to this process they are its own, as if passed to it."""
    global _taken
    _taken = passed


def _take(environment: dict[str, str]) -> list[InheritedSocket]:
    pid, count = environment.get("LISTEN_PID"), environment.get("LISTEN_FDS")
    if pid is None or count is None or pid != str(os.getpid()):
        return []
    if not (count.isascii() and count.isdigit() and len(count) <= 5 and int(count) <= MAX_FDS):
        raise UserError(f"LISTEN_FDS={count[:20]!r} is not a number of sockets from 0 "
                        f"to {MAX_FDS}")
    names = environment.get("LISTEN_FDNAMES", "").split(":")
    taken = []
    for index in range(int(count)):
        name = names[index] if index < len(names) and names[index] else "unknown"
        taken.append(InheritedSocket(index, name, _adopt(FIRST_FD + index, index)))
    return taken


def _adopt(fd: int, index: int) -> socket.socket:
    """A socket object for an inherited descriptor, checked to be one we can serve."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise UserError(f"inherited descriptor {fd} (LISTEN_FDS index {index}) is not a "
                        f"socket: {os.strerror(error.errno or 0).lower()}") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise UserError(f"inherited descriptor {fd} (LISTEN_FDS index {index}) is not a "
                        "listening stream socket")
    os.set_inheritable(fd, False)
    sock.setblocking(False)
    return sock
