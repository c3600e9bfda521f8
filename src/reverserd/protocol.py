"""Line protocols: framing, commands, backpressure, and the reversing protocol.

``LineHandler`` serves one connection as an ``asyncio.Protocol``: each
chunk the transport reads is answered by a single ``write``, with no
coroutine, task or future per line or even per connection. When the peer
stops reading and the transport's buffer fills, reading pauses, so a client
that never reads stalls only itself. A chunk too big to answer in one turn
of the event loop is answered over several, reading paused meanwhile, so no
client's text holds up the others' replies. Subclasses give
``line_received`` for ordinary lines and ``handle_<name>`` methods for
command lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from reverserd.addresses import format_sockaddr
from reverserd.graphemes import prepare
from reverserd.kernel_queues import bytes_acked, reset_on_close, unacknowledged
from reverserd.persist import restorable
from reverserd.reversal import reverse, reverse_read

log = logging.getLogger(__name__)

LF = b"\n"
CR = b"\r"
CRLF = b"\r\n"
DEFAULT_MAX_LINE_LENGTH = 16384
FIRST_BYTES_GRACE = 0.1  # seconds, at stop, for a connection that has sent nothing yet
# One turn of the event loop answers at most this much of a connection's
# input: whole lines up to TURN_BYTES of text, or ASCII_TURN_LINES lines of
# ASCII (whose cost is mostly per line), and lines answered one by one for at
# most TURN_SECONDS (checked every TURN_CHECK lines), so that whatever a
# client sends, the others wait a few milliseconds at most.
TURN_BYTES = 16 * 1024
ASCII_TURN_LINES = 8192
TURN_SECONDS = 0.004
TURN_CHECK = 32
COMMAND_NAME = re.compile(r"[a-z][a-z0-9_]*")


class LineTooLong(Exception):
    """A peer sent more than ``max_line_length`` bytes without a line end."""


def _command_table(handler_class: type) -> dict[bytes, str]:
    """Map each command line a client may send to the method it runs.

    Built once per class from its ``handle_`` methods; a line is only ever
    used as a key here, so no client text can reach any other attribute.
    """
    table = {}
    for attribute in dir(handler_class):
        name = attribute.removeprefix("handle_")
        is_command = name != attribute and COMMAND_NAME.fullmatch(name)
        if is_command and callable(getattr(handler_class, attribute)):
            table[name.encode("ascii")] = attribute
    return table


def _turn_length(data: bytes, start: int) -> int:
    """How many bytes of ``data[start:]``, more than ``TURN_BYTES``, one turn answers."""
    size = len(data) - start
    if not data.isascii():
        return TURN_BYTES
    lines = data.count(LF, start)
    return size if lines <= ASCII_TURN_LINES else size * ASCII_TURN_LINES // lines


def _command_lines(commands: dict[bytes, str]) -> frozenset[bytes]:
    """Every command line as splitting a block at LF leaves it: with its CR or without."""
    return frozenset([*commands, *(name + CR for name in commands)])


class LineHandler(asyncio.Protocol):
    """One connection of a line-based protocol.

    A line ends in LF or CRLF; the CR is not part of it, and each reply ends
    the way its line did. A last line cut short by EOF is still answered.
    A line longer than ``max_line_length`` closes the connection, so memory
    per connection stays bounded while a line end is awaited.

    Slots keep an idle connection small; a subclass that wants attributes
    of its own simply gets a ``__dict__`` as usual.
    """

    __slots__ = (
        "_closing",
        "_held",
        "_kernel_checked",
        "_limit",
        "_partial",
        "_pending",
        "_progress_seen",
        "_quiet_since",
        "_stalled_since",
        "_stopping",
        "_taken_seen",
        "_writing_paused",
        "client",
        "close_reason",
        "failed",
        "lines_answered",
        "lines_unanswered",
        "on_closed",
        "peer_key",
        "transport",
    )

    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    _commands: ClassVar[dict[bytes, str]] = {}
    _command_lines: ClassVar[frozenset[bytes]] = frozenset()  # as split at LF: CR or not

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._commands = _command_table(cls)
        cls._command_lines = _command_lines(cls._commands)

    def __init__(self, max_line_length: int | None = None,
                 on_closed: Callable[[LineHandler], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.lines_answered = 0
        self.lines_unanswered = 0  # lines that got no reply: they still count as activity
        self.on_closed = on_closed
        self.close_reason: str | None = None  # the limit that closed it, if one did
        self.failed = False  # its code raised: counted for status as a handler error
        self.peer_key: str | None = None  # the address counted against a per-peer limit
        self.client: object = None  # the client's address a PROXY header gave, if any
        self._limit = self.max_line_length if max_line_length is None else max_line_length
        self._partial = b""
        # Read, not yet answered from the offset on, and the length of a turn
        # of it (decided once a read); reading is paused meanwhile.
        self._pending: tuple[bytes, int, int] | None = None
        self._writing_paused = False
        self._closing = False
        self._stopping = False
        self._held = False  # reading for good: to be passed to the daemon's next generation

    @property
    def peer(self) -> str:
        """The client's address, for log lines (formatted only when asked)."""
        return format_sockaddr(self.peer_address)

    @property
    def peer_address(self) -> object:
        """The client's address: from the PROXY header if there was one."""
        if self.client is not None or self.transport is None:
            return self.client
        try:
            return self.transport.get_extra_info("peername")
        except (OSError, ValueError):  # uvloop's, once the connection is gone
            return None

    def line_received(self, line: bytes) -> bytes | None:
        """The reply to ``line`` (without its line end), or ``None`` for none."""
        return None

    @classmethod
    def prepare(cls) -> None:
        """Do, before the first client, the work the first line would otherwise wait for."""

    def answer_block(self, data: bytes, start: int, end: int) -> tuple[bytes, int] | None:
        """The replies to the lines of ``data[start:end + 1]``, all at once, or ``None``.

        ``data[end]`` is the last LF of the lines to answer now. A subclass
        may answer a common case here without a Python step per line: the
        replies joined, each with its line end, and how many lines they
        answer. ``None`` (the default) answers line by line. Asked only for
        reads of two lines or more: one line costs less on its own.
        """
        return None

    def handle_quit(self) -> None:
        """Close this connection once earlier replies are flushed."""
        self.lose_connection()

    def lose_connection(self) -> None:
        """Stop reading; close once every reply so far has been sent."""
        self._closing = True

    def hold(self) -> None:
        """Read nothing more: this connection goes to the next generation of
        the daemon once its replies are sent (see ``passable``)."""
        self._held = True
        if self.transport is not None:
            self.transport.pause_reading()

    @property
    def passable(self) -> bool:
        """Whether the connection can change hands now without a byte lost:
        held, every reply sent, nothing read and unanswered but the start of
        a line (``partial_line``), and its own protocol (past a PROXY header)."""
        transport = self.transport
        return (self._held and self._pending is None and not self._closing
                and not self._stopping and transport is not None
                and not transport.is_closing() and transport.get_protocol() is self
                and transport.get_write_buffer_size() == 0)

    @property
    def partial_line(self) -> bytes:
        return self._partial

    def resume_line(self, partial: bytes) -> None:
        """Go on from the start of a line the last generation read (before any byte is read)."""
        self._partial = partial

    def request_stop(self) -> None:
        """Finish the lines already received, then close (server shutdown).

        Shutting the read side makes the kernel report end-of-file once the
        bytes it already holds for us are read, which draws the line between
        lines to answer and lines that came too late. A connection that has
        sent nothing yet was most likely accepted a moment ago, its first line
        on its way: it gets ``FIRST_BYTES_GRACE`` seconds for it
        (a worker stopped alone then drops none of the connections it had
        just taken).
        """
        if self._stopping or self.transport is None:
            return
        self._stopping = True
        self._held = False
        if self._pending is None:
            self.transport.resume_reading()
        if self.lines_answered or self._partial:  # it has sent something already
            self._shut_reading()
        else:
            asyncio.get_running_loop().call_later(FIRST_BYTES_GRACE, self._shut_reading)

    def _shut_reading(self) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # uvloop's stand-in socket refuses shutdown(); a duplicate descriptor
            # reaches the same connection with either loop.
            with contextlib.suppress(OSError), \
                    socket.socket(fileno=os.dup(sock.fileno())) as connection:
                connection.shutdown(socket.SHUT_RD)  # OSError: closed, or the peer is gone

    def abort(self) -> None:
        """Drop the connection now, discarding unsent replies."""
        if self.transport is not None:
            self.transport.abort()

    def watched_since(self, now: float) -> None:
        """Start the idle and write clocks (see ``overdue``)."""
        self._progress_seen = 0
        self._quiet_since = self._stalled_since = now
        self._taken_seen = -1
        self._kernel_checked = False

    def overdue(self, now: float, idle_timeout: float, write_timeout: float) -> str | None:
        """Which limit, if any, this connection has outlasted; called about once a second.

        Write: replies are waiting and the peer's kernel has acknowledged
        nothing new for ``write_timeout`` seconds: the peer takes nothing.
        Replies wait in the transport's buffer (then the kernel is asked each
        sweep), or only in the kernel's send queue (asked once the
        connection has been quiet that long: a quiet one adds no replies).
        Such a connection is not idle, whatever it sends: reading pauses
        while the peer does not read. Idle: no line completed for
        ``idle_timeout`` seconds (0: never).
        """
        transport = self.transport
        assert transport is not None
        buffered = transport.get_write_buffer_size()
        if buffered:
            sock = transport.get_extra_info("socket")
            acked = None if sock is None else bytes_acked(sock)
            taken = buffered if acked is None else acked  # not TCP: the buffer's moves
            if taken != self._taken_seen:
                self._taken_seen = taken
                self._stalled_since = now
            elif now - self._stalled_since >= write_timeout:
                return "write-timeout"
            self._quiet_since = now
            return None
        self._stalled_since = now
        progress = self.lines_answered + self.lines_unanswered
        if progress != self._progress_seen:
            self._progress_seen = progress
            self._quiet_since = now
            self._kernel_checked = False
            return None
        quiet = now - self._quiet_since
        if quiet >= write_timeout and not self._kernel_checked:
            self._kernel_checked = True
            sock = transport.get_extra_info("socket")
            if sock is not None and (unacknowledged(sock) or 0) > 0:
                return "write-timeout"
        if idle_timeout and quiet >= idle_timeout and not self._closing:
            return "idle"
        return None

    def close_for(self, reason: str) -> None:
        """Close on a limit: an idle one after its last replies; a stalled one
        at once, with a reset, so the kernel drops what it queued for it."""
        transport = self.transport
        if transport is None or self.close_reason is not None:
            return
        self.close_reason = reason
        log.debug("closing connection from %s: %s", self.peer, reason)
        if reason == "idle":
            self.lose_connection()
            close_after_replies(transport)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            reset_on_close(sock)
        transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's do not subclass it
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connection from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if log.isEnabledFor(logging.DEBUG):
            if exc is None:
                log.debug("connection from %s closed", self.peer)
            else:
                log.debug("connection from %s lost: %s", self.peer, exc)
        self._pending = None
        if self.on_closed is not None:
            self.on_closed(self)

    def pause_writing(self) -> None:
        """The peer is not keeping up: read and answer nothing more until it does."""
        assert self.transport is not None
        self._writing_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self._writing_paused = False
        if self._closing:
            return
        if self._pending is None:
            if not self._held:
                self.transport.resume_reading()
        else:
            asyncio.get_running_loop().call_soon(self._answer_pending)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._pending is not None:  # reading was paused, but a loop may still deliver
            pending, start, _ = self._pending
            self._pending = (pending[start:] + data, 0, 0)
        else:
            self._respond(data)

    def eof_received(self) -> None:
        """Answer an unfinished last line; returning ``None`` closes the transport."""
        while self._pending is not None and not self._closing:  # everything read, now
            pending, self._pending = self._pending, None
            self._respond(*pending)
        if self._partial and not self._closing:
            if self._stopping:
                log.debug("dropping an unfinished line from %s at shutdown", self.peer)
            else:
                self._respond(LF)

    def _answer_pending(self) -> None:
        """Answer the next turn's worth of what was read and not yet answered."""
        pending = self._pending
        transport = self.transport
        if pending is None or transport is None or transport.is_closing() \
                or self._writing_paused:
            return
        self._pending = None
        self._respond(*pending)
        if self._pending is None and not self._closing and not self._writing_paused \
                and not self._held:
            transport.resume_reading()

    def _respond(self, data: bytes, start: int = 0, turn: int = 0) -> None:
        """Answer the lines ``data[start:]`` completes, or a turn's worth, with a single write.

        Replies to the lines before a failing one are still sent; the
        failure closes only this connection. What a turn leaves unanswered
        waits, reading paused, for the next turn (or for the peer to read).
        """
        transport = self.transport
        assert transport is not None
        replies: list[bytes] = []
        try:
            self._answer(data, start, turn, replies)
        except LineTooLong as error:
            log.debug("closing connection from %s: %s", self.peer, error)
            self.close_reason = "line-too-long"
            self._closing = True
        except Exception:
            log.exception("handler %s failed on input from %s; closing that connection",
                          type(self).__name__, self.peer)
            self.failed = True
            self._closing = True
        if replies:
            transport.write(b"".join(replies))
        if self._closing:
            self._pending = None
            close_after_replies(transport)
        elif self._pending is not None:
            transport.pause_reading()
            if not self._writing_paused:
                asyncio.get_running_loop().call_soon(self._answer_pending)

    def _answer(self, data: bytes, start: int, turn: int, replies: list[bytes]) -> None:
        """Append to ``replies`` the answers to the lines ``data[start:]`` completes,
        a turn's worth (``turn`` bytes, or 0: not decided yet); the rest waits in
        ``_pending``, with no copy of it made."""
        if self._partial:
            data, start, turn = self._partial + data[start:], 0, 0
        stop = len(data)
        if not turn:
            turn = stop - start if stop - start <= TURN_BYTES else _turn_length(data, start)
        if start + turn < stop:
            cut = data.rfind(LF, start, start + turn)
            if cut < 0:
                cut = data.find(LF, start + turn)  # a single line longer than a turn
            if 0 <= cut < stop - 1:
                self._pending = (data, cut + 1, turn)
                stop = cut + 1
        end = data.rfind(LF, start, stop)
        if end < 0:
            self._partial = data[start:stop]
        else:
            self._partial = data[end + 1:stop]
            if data.find(LF, start, end) < 0:  # one line: cheaper on its own than as a block
                self._answer_lines((data[start:end],), replies)
            else:
                answers = self.answer_block(data, start, end)
                if answers is None:
                    lines = data[start:end].split(LF)
                    if len(lines) <= TURN_CHECK:
                        self._answer_lines(lines, replies)
                    else:
                        self._answer_each(lines, replies)
                else:
                    reply, count = answers
                    self.lines_answered += count
                    replies.append(reply)
        if len(self._partial) > self._limit and not self._closing:
            self._check_partial()

    def _answer_each(self, lines: list[bytes], replies: list[bytes]) -> None:
        """Answer ``lines``, more than one check's worth, one by one, for a turn's
        worth of time at most."""
        deadline = time.perf_counter() + TURN_SECONDS
        for first in range(0, len(lines), TURN_CHECK):
            if first and time.perf_counter() > deadline:
                self._defer(lines[first:])
                return
            if not self._answer_lines(lines[first:first + TURN_CHECK], replies):
                return

    def _answer_lines(self, lines: Sequence[bytes], replies: list[bytes]) -> bool:
        """Answer ``lines`` one by one; ``False`` once a line has closed the connection."""
        limit = self._limit
        commands = self._commands
        for line in lines:
            if line[-1:] == CR:
                line = line[:-1]
                ending = CRLF
            else:
                ending = LF
            if len(line) > limit:
                raise LineTooLong(f"line of {len(line)} bytes exceeds the limit of {limit}")
            command = commands.get(line)
            reply = self._run_command(command) if command else self.line_received(line)
            if reply is not None:
                replies += (reply, ending)
                self.lines_answered += 1
            else:
                self.lines_unanswered += 1
            if self._closing:
                return False
        return True

    def _defer(self, lines: list[bytes]) -> None:
        """Leave ``lines`` (and the unfinished line after them) to the next turn."""
        rest = LF.join([*lines, self._partial])
        if self._pending is not None:
            pending, start, _ = self._pending
            rest += pending[start:]
        self._pending = (rest, 0, 0)
        self._partial = b""

    def _check_partial(self) -> None:
        """Refuse an unfinished line longer than the limit (its CR not counted)."""
        partial = self._partial
        allowed = self._limit + (1 if partial[-1:] == CR else 0)
        if len(partial) > allowed:
            raise LineTooLong(f"more than {self._limit} bytes without a line end")

    def _run_command(self, method_name: str) -> bytes | None:
        reply: str | bytes | None = getattr(self, method_name)()
        if isinstance(reply, str):
            return reply.encode("utf-8")
        return reply


def close_after_replies(transport: asyncio.Transport) -> None:
    """Close once the replies written so far are sent, with the end of the stream
    right behind them.

    A half-close (``write_eof``) sends the end of the stream, a FIN, as soon as
    the last reply has left, as twistd does; ``close`` alone sends it a turn of
    the loop later, when the socket is closed. A client that reads to the end
    then gets both at once, and is woken once instead of twice: that wake-up
    is most of what a short connection costs the server's kernel.
    """
    try:
        transport.write_eof()
    except (NotImplementedError, OSError):  # no half-close (TLS; asking can_write_eof()
        pass  # costs a call), or the peer is gone already: close alone ends it
    transport.close()


LineHandler._commands = _command_table(LineHandler)
LineHandler._command_lines = _command_lines(LineHandler._commands)


@restorable
class Reverser(LineHandler):
    """Answers every line with its reversal (see ``reverse``)."""

    __slots__ = ()
    state_type = "reverserd.Reverser"
    _reverses_blocks: ClassVar[bool] = True  # False once a subclass answers otherwise

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._reverses_blocks = cls.line_received is Reverser.line_received

    @classmethod
    def prepare(cls) -> None:
        prepare()

    def line_received(self, line: bytes) -> bytes:
        return reverse(line)

    def answer_block(self, data: bytes, start: int, end: int) -> tuple[bytes, int] | None:
        """Reverse every line of a block at once (see ``reverse_read``).

        Only where that is exactly what ``line_received`` would do line by
        line: no command line in the block, no line over the limit, and
        ``line_received`` not overridden.
        """
        if not self._reverses_blocks:
            return None
        # no copy when the block is all of ``data``
        return reverse_read(data[start:end + 1], self._limit, self._commands,
                            self._command_lines)
