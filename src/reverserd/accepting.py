"""A listening socket for the standard event loop whose accepted connections know
their family and type.

``socket.socket.family`` and ``.type`` turn the kernel's number into an
enum member on every read, and the standard loop reads four of them per
accepted connection: two as ``accept`` makes the connection's socket, two
as the transport decides on ``TCP_NODELAY``. Each is four Python calls,
together about a tenth of what a new connection costs the server. The
listening socket given to ``start_server`` here is a ``socket.socket``
subclass that holds both as plain class attributes, and gives each
connection it accepts a class that does the same. They are the very enum
members the properties would return. ``TCP_NODELAY`` comes from the
listening socket (see ``duplicate``).
"""

from __future__ import annotations

import functools
import os
import socket


@functools.cache
def _listening(family: socket.AddressFamily, kind: socket.SocketKind) -> type[socket.socket]:
    """The listening class for ``family`` and ``kind``, made once each."""
    known = {"__slots__": (), "family": family, "type": kind}
    accepted = type("AcceptedSocket", (socket.socket,), known)
    return type("ListeningSocket", (_Accepting,), {**known, "_accepted": accepted})


class _Accepting(socket.socket):
    __slots__ = ()
    _accepted: type[socket.socket]

    def accept(self) -> tuple[socket.socket, object]:
        connection, address = super().accept()
        connection.__class__ = self._accepted  # the same layout: only the class attributes differ
        return connection, address


def duplicate(sock: socket.socket) -> socket.socket:
    """A duplicate of the listening socket ``sock``, accepting as described above.

    asyncio turns Nagle's algorithm off on every TCP connection it accepts,
    one system call each. Set once on the listening socket instead, the
    kernel gives each accepted connection the setting; the duplicate then
    names its protocol 0, TCP all the same for a stream socket, which
    asyncio leaves alone.
    """
    proto = sock.proto
    if proto == socket.IPPROTO_TCP:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            proto = 0
        except OSError:  # asyncio sets it per connection, as it always did
            pass
    fd = os.dup(sock.fileno())
    try:
        return _listening(sock.family, sock.type)(sock.family, sock.type, proto, fileno=fd)
    except BaseException:
        os.close(fd)
        raise
