"""What the kernel holds for a connection, for the write timeout to judge by.

A client that reads nothing leaves replies in two places: the transport's
buffer, and the kernel's send queue (megabytes, with autotuning). Only the
kernel can say whether the peer is taking any of it, and only a reset
(``SO_LINGER`` of zero) frees that queue at once: a plain close leaves it
queued behind a FIN for as long as the peer keeps its window shut.

Each function takes the socket a transport reports (the standard loop's
or uvloop's stand-in: both pass socket options through) and answers
``None`` where the kernel cannot tell (not TCP).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Protocol

TCP_INFO_SIZE = 136  # up to and including tcpi_bytes_received
BYTES_ACKED = struct.Struct("=Q")
BYTES_ACKED_OFFSET = 120  # tcpi_bytes_acked in Linux's struct tcp_info (Linux 4.1+)
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # linger on, for 0 seconds


class SocketLike(Protocol):
    def fileno(self) -> int: ...

    def getsockopt(self, level: int, option: int, size: int) -> bytes: ...

    def setsockopt(self, level: int, option: int, value: bytes) -> None: ...


def bytes_acked(sock: SocketLike) -> int | None:
    """Bytes the peer's kernel has acknowledged so far: it stops growing once
    the peer's application stops reading and its window closes."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < BYTES_ACKED_OFFSET + BYTES_ACKED.size:
        return None
    acked: int = BYTES_ACKED.unpack_from(info, BYTES_ACKED_OFFSET)[0]
    return acked


def unacknowledged(sock: SocketLike) -> int | None:
    """Bytes in the kernel's send queue the peer has not acknowledged (SIOCOUTQ)."""
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4))
    except (OSError, ValueError):  # ValueError: closed already (its fileno is -1)
        return None
    queued: int = struct.unpack("i", answer)[0]
    return queued


def reset_on_close(sock: SocketLike) -> None:
    """Make the coming close a reset that drops whatever is still queued."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
    except OSError:
        pass  # closed already: nothing left to drop
