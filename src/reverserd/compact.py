"""A transport of reverserd's own for a connection on the standard event loop, in
half the memory of asyncio's.

asyncio's socket transport keeps, for every connection, an attribute
dictionary, a dictionary of extra information with the socket wrapped and
both addresses looked up in advance, a weak reference in the loop's table
of transports and a write buffer: about 1 KB of an idle connection's 1.9.
``CompactTransport`` keeps the socket, its protocol and a few flags in
slots, looks the addresses up only when asked (and keeps them then), and
makes its write buffer only when the kernel's is full. It reads and writes
through the loop's public ``add_reader`` and ``add_writer``, and behaves as
asyncio's transport does: the same flow control, end-of-file handling,
closing after the last write, and error reporting.

A connection accepted by ``start_server`` moves to one by
``CompactTransport.take_over``: its socket is duplicated, and asyncio's
transport, before it has read a byte or watched the socket, is aborted.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any, cast

MAX_READ = 256 * 1024  # bytes per recv, as asyncio's transports read
HIGH_WATER = 64 * 1024  # asyncio's default write-buffer limits
UNKNOWN = object()  # an address not looked up yet

_DETACHED = asyncio.Protocol()  # what asyncio's transport tells once aborted: no one


class CompactTransport(asyncio.Transport):
    """A stream socket's transport: a slotted object, addresses looked up when asked."""

    __slots__ = (
        "_buffer",
        "_closing",
        "_eof_written",
        "_high_water",
        "_lost",
        "_low_water",
        "_loop",
        "_paused",
        "_peername",
        "_protocol",
        "_protocol_paused",
        "_sock",
        "_sockname",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.BaseProtocol) -> None:
        # Not BaseTransport.__init__: its dictionary of extra information is never used.
        self._loop = loop
        self._sock = sock
        self._protocol = cast(asyncio.Protocol, protocol)
        self._buffer: bytearray | None = None  # made once the kernel takes less than a write
        self._closing = False
        self._lost = False  # connection_lost is scheduled: nothing more is read or written
        self._paused = False
        self._eof_written = False
        self._protocol_paused = False
        self._high_water = HIGH_WATER
        self._low_water = HIGH_WATER // 4
        self._peername: Any = UNKNOWN
        self._sockname: Any = UNKNOWN
        loop.add_reader(sock.fileno(), self._read_ready)

    @classmethod
    def take_over(cls, transport: asyncio.Transport, protocol: asyncio.BaseProtocol,
                  family: int) -> CompactTransport:
        """Serve ``transport``'s connection with a compact transport from now on.

        Called as ``start_server`` hands the connection over, before asyncio's
        transport has read a byte or watched its socket: it is aborted, which
        closes its descriptor only, and never watches it (its first watch is
        queued and skipped once it is closing). The duplicate shares the
        socket, non-blocking already; the connection goes on untouched.
        """
        original = transport.get_extra_info("socket")
        sock = socket.socket(family, socket.SOCK_STREAM, 0, os.dup(original.fileno()))
        sock.setblocking(False)
        transport.set_protocol(_DETACHED)
        transport.abort()
        return cls(asyncio.get_running_loop(), sock, protocol)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "peername":
            if self._peername is UNKNOWN:
                self._peername = self._address(socket.socket.getpeername)
            return self._peername
        if name == "sockname":
            if self._sockname is UNKNOWN:
                self._sockname = self._address(socket.socket.getsockname)
            return self._sockname
        return default

    def _address(self, look_up: Any) -> Any:
        try:
            return look_up(self._sock)
        except OSError:  # gone already: asyncio's transport would have had it from the start
            return None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._loop.remove_reader(self._sock.fileno())

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop.add_reader(self._sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        if self._lost:  # closed by a callback that ran before this one, in the same turn
            return
        try:
            data = self._sock.recv(MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._force_close(error)
            return
        try:
            if data:
                self._protocol.data_received(data)
                return
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as error:  # as asyncio's transport: even a cancellation
            called = "data_received" if data else "eof_received"
            self._fatal_error(error, f"Fatal error: protocol.{called}() call failed.")
            return
        if keep_open:
            self._loop.remove_reader(self._sock.fileno())  # kept open to write
        else:
            self.close()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._lost:
            return
        if self._buffer is None:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._force_close(error)
                return
            if sent == len(data):
                return
            self._buffer = bytearray(memoryview(data)[sent:])
            self._loop.add_writer(self._sock.fileno(), self._write_ready)
        else:
            self._buffer += data
        self._pause_protocol_if_full()

    def _write_ready(self) -> None:
        buffer = self._buffer
        assert buffer is not None, "watched for writing only while replies wait"
        try:
            sent = self._sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._force_close(error)
            return
        del buffer[:sent]
        if self._protocol_paused and len(buffer) <= self._low_water:
            self._protocol_paused = False
            self._tell_protocol(self._protocol.resume_writing)
        if buffer or self._lost:  # more to send, or resume_writing closed it at once
            return
        self._buffer = None
        self._loop.remove_writer(self._sock.fileno())
        if self._closing:
            self._lose(None)
        elif self._eof_written:
            self._shut_writing()

    def _pause_protocol_if_full(self) -> None:
        if self._protocol_paused or self.get_write_buffer_size() <= self._high_water:
            return
        self._protocol_paused = True
        self._tell_protocol(self._protocol.pause_writing)

    def _tell_protocol(self, callback: Callable[[], object]) -> None:
        """Pause or resume the protocol's writing; a failure is reported, and the
        connection goes on, as asyncio's transport does."""
        try:
            callback()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as error:
            self._loop.call_exception_handler({
                "message": f"protocol.{callback.__name__}() failed", "exception": error,
                "transport": self, "protocol": self._protocol})

    def get_write_buffer_size(self) -> int:
        return 0 if self._buffer is None else len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._pause_protocol_if_full()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        if self._buffer is None:
            self._shut_writing()

    def _shut_writing(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            self._force_close(error)

    def close(self) -> None:
        """Stop reading; close once every write so far is sent."""
        if self._closing:
            return
        self._closing = True
        if not self._paused:
            self._loop.remove_reader(self._sock.fileno())
        if self._buffer is None:
            self._lose(None)

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, error: BaseException | None) -> None:
        if self._lost:
            return
        if self._buffer is not None:
            self._buffer = None
            self._loop.remove_writer(self._sock.fileno())
        if not self._closing:
            self._closing = True
            if not self._paused:
                self._loop.remove_reader(self._sock.fileno())
        self._lose(error)

    def _fatal_error(self, error: BaseException, message: str) -> None:
        """A protocol's exception: reported as asyncio reports it, then the connection
        closes (a socket's error only closes it, as asyncio's transport does)."""
        self._loop.call_exception_handler({
            "message": message, "exception": error, "transport": self,
            "protocol": self._protocol})
        self._force_close(error)

    def _lose(self, error: BaseException | None) -> None:
        self._lost = True
        self._loop.call_soon(self._connection_lost, error)

    def _connection_lost(self, error: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(error)  # type: ignore[arg-type]  # as asyncio: any error
        finally:
            self._sock.close()
            self._protocol = _DETACHED  # no cycle left with a protocol that keeps its transport
