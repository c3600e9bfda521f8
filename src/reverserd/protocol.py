"""Line protocols over asyncio streams: framing, commands, backpressure.

``LineHandler`` serves one connection. It reads in large chunks, answers
every complete line of a chunk, and writes all of that chunk's replies at
once before waiting for the peer to take them (``drain``), so a client that
never reads stalls only itself. Subclasses give ``line_received`` for
ordinary lines and ``handle_<name>`` methods for command lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from typing import ClassVar

from reverserd.addresses import format_sockaddr
from reverserd.persist import restorable
from reverserd.reversal import reverse

log = logging.getLogger(__name__)

LF = b"\n"
CRLF = b"\r\n"
DEFAULT_MAX_LINE_LENGTH = 16384
READ_SIZE = 65536
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


class LineHandler:
    """One connection of a line-based protocol.

    A line ends in LF or CRLF; the CR is not part of it, and each reply ends
    the way its line did. A last line cut short by EOF is still answered.
    A line longer than ``max_line_length`` closes the connection, so memory
    per connection stays bounded while a line end is awaited.
    """

    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    _commands: ClassVar[dict[bytes, str]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._commands = _command_table(cls)

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_line_length: int | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = format_sockaddr(writer.get_extra_info("peername"))
        if max_line_length is not None:
            self.max_line_length = max_line_length
        self._partial = b""
        self.lines_answered = 0
        self._closing = False
        self._stopping = False

    def line_received(self, line: bytes) -> bytes | None:
        """The reply to ``line`` (without its line end), or ``None`` for none."""
        return None

    def handle_quit(self) -> None:
        """Close this connection once earlier replies are flushed."""
        self.lose_connection()

    def lose_connection(self) -> None:
        """Stop reading; close once every reply so far has been sent."""
        self._closing = True

    def request_stop(self) -> None:
        """Finish the lines already received, then close (server shutdown).

        Shutting the read side makes the kernel report end-of-file once the
        bytes it already holds for us are read, which draws the line between
        lines to answer and lines that came too late.
        """
        if self._stopping:
            return
        self._stopping = True
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # the peer is gone: nothing left to read
                sock.shutdown(socket.SHUT_RD)

    def abort(self) -> None:
        """Drop the connection now, discarding unsent replies."""
        self.writer.transport.abort()

    async def serve(self) -> None:
        """Answer lines until quit, end of input, a fault, or a stop."""
        log.debug("connection from %s", self.peer)
        try:
            await self._read_loop()
        except LineTooLong as error:
            log.warning("closing connection from %s: %s", self.peer, error)
        except (ConnectionError, TimeoutError) as error:
            log.debug("connection from %s lost: %s", self.peer, error)
        except Exception:
            log.exception("handler %s failed on input from %s; closing that connection",
                          type(self).__name__, self.peer)
        finally:
            await self._close()
        log.debug("connection from %s closed", self.peer)

    async def _read_loop(self) -> None:
        read = self.reader.read
        while not self._closing:
            data = await read(READ_SIZE)
            if not data:
                self._answer_last_line()
                return
            self._respond(data)
            await self.writer.drain()

    def _answer_last_line(self) -> None:
        if self._partial and not self._stopping:
            self._respond(LF)
        elif self._partial:
            log.debug("dropping an unfinished line from %s at shutdown", self.peer)

    def _respond(self, data: bytes) -> None:
        """Answer the lines ``data`` completes with a single write.

        Replies to the lines before a failing one are still sent.
        """
        replies: list[bytes] = []
        try:
            self._answer(data, replies)
        finally:
            if replies:
                self.writer.write(b"".join(replies))
                self.lines_answered += len(replies) >> 1  # a reply and its line end each

    def _answer(self, data: bytes, replies: list[bytes]) -> None:
        """Append to ``replies`` the answers to every line ``data`` completes."""
        if self._partial:
            data = self._partial + data
        lines = data.split(LF)
        self._partial = lines.pop()
        limit = self.max_line_length
        commands = self._commands
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
                ending = CRLF
            else:
                ending = LF
            if len(line) > limit:
                raise LineTooLong(f"line of {len(line)} bytes exceeds the limit of {limit}")
            command = commands.get(line)
            reply = self._run_command(command) if command else self.line_received(line)
            if reply is not None:
                replies.append(reply)
                replies.append(ending)
            if self._closing:
                return
        self._check_partial()

    def _check_partial(self) -> None:
        partial = self._partial
        allowed = self.max_line_length + (1 if partial[-1:] == b"\r" else 0)
        if len(partial) > allowed:
            raise LineTooLong(
                f"more than {self.max_line_length} bytes without a line end"
            )

    def _run_command(self, method_name: str) -> bytes | None:
        reply: str | bytes | None = getattr(self, method_name)()
        if isinstance(reply, str):
            return reply.encode("utf-8")
        return reply

    async def _close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):  # the peer left first
            await self.writer.wait_closed()


LineHandler._commands = _command_table(LineHandler)


@restorable
class Reverser(LineHandler):
    """Answers every line with its reversal (see ``reverse``)."""

    state_type = "reverserd.Reverser"

    def line_received(self, line: bytes) -> bytes:
        return reverse(line)
