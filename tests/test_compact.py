"""``CompactTransport`` on real loopback sockets and the standard event loop.

A protocol must not be able to tell it from asyncio's own socket transport,
so each behaviour a protocol sees is checked against both: where the two
disagree, asyncio's is the one that is right.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import random
import resource
import socket
import struct
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from reverserd import Reverser, TCPServer
from reverserd.compact import CompactTransport
from reverserd.policy import ConnectionPolicy, Limits
from tests.test_policy import until

DEADLINE = 10.0
SMALL_BUFFER = 4096  # kernel buffers this small fill after a few tens of KiB
CHUNK = 16 * 1024
MAX_CHUNKS = 2000  # 32 MiB: far beyond what any kernel buffer holds
LOOP_TURNS = 5  # enough for the selector to report a ready socket and its callback to run
KINDS = ["compact", "asyncio"]

LoopErrors = list[dict[str, Any]]


async def turns(count: int = LOOP_TURNS) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def record_loop_errors() -> LoopErrors:
    """What reaches the running loop's exception handler from now on."""
    errors: LoopErrors = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: errors.append(context))
    return errors


def run(scenario: Callable[[], Awaitable[None]]) -> LoopErrors:
    """Run ``scenario`` on a fresh standard loop; return what reached its exception
    handler, so that an exception no one was meant to see fails the test."""
    errors: LoopErrors = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, asyncio.SelectorEventLoop)
        loop.set_exception_handler(lambda loop, context: errors.append(context))
        await scenario()

    asyncio.run(main())
    return errors


class Recorder(asyncio.Protocol):
    """Every call a transport makes, in order, with the write buffer's size at
    the time for the flow-control calls."""

    def __init__(self, keep_open: bool = False) -> None:
        self.keep_open = keep_open
        self.transport: asyncio.Transport | None = None
        self.events: list[tuple[str, object]] = []
        self.received = bytearray()

    def calls(self, name: str) -> list[object]:
        return [argument for event, argument in self.events if event == name]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.events.append(("made", None))

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.events.append(("data", len(data)))

    def eof_received(self) -> bool | None:
        self.events.append(("eof", None))
        return True if self.keep_open else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.events.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.events.append(("resume", self.transport.get_write_buffer_size()))


def tcp_pair(small_buffers: bool = False) -> tuple[socket.socket, socket.socket]:
    """A connected loopback pair: the transport's end and the peer's, non-blocking.

    ``small_buffers`` shrinks the transport's send buffer and the peer's
    receive buffer before connecting, so that a peer that does not read
    leaves writes in the transport's own buffer after little data.
    """
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.socket()
        if small_buffers:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        peer.connect(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    peer.setblocking(False)
    return ours, peer


async def serve(kind: str, sock: socket.socket, protocol: asyncio.Protocol) -> asyncio.Transport:
    """``sock``'s connection, with ``protocol`` told of it, on the transport of ``kind``."""
    loop = asyncio.get_running_loop()
    if kind == "compact":
        compact = CompactTransport(loop, sock, protocol)
        protocol.connection_made(compact)  # as the server does: the constructor does not
        return compact
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    return transport


@dataclasses.dataclass
class Link:
    transport: asyncio.Transport
    ours: socket.socket  # the transport's socket itself, for looking at it from outside
    peer: socket.socket


@contextlib.asynccontextmanager
async def connected(kind: str, protocol: asyncio.Protocol,
                    small_buffers: bool = False) -> AsyncIterator[Link]:
    ours, peer = tcp_pair(small_buffers)
    with peer:
        try:
            transport = await serve(kind, ours, protocol)
        except BaseException:
            ours.close()
            raise
        try:
            yield Link(transport, ours, peer)
        finally:
            if ours.fileno() != -1:  # asyncio's own raises if aborted once it closed itself
                transport.abort()
                await turns(1)  # its connection_lost, which closes the socket


async def receive(peer: socket.socket, count: int | None = None) -> bytes:
    """What the peer reads: ``count`` bytes, or everything up to the end of file."""
    loop = asyncio.get_running_loop()
    data = bytearray()

    async def read() -> None:
        while count is None or len(data) < count:
            chunk = await loop.sock_recv(peer, 256 * 1024)
            if not chunk:
                return
            data.extend(chunk)

    await asyncio.wait_for(read(), DEADLINE)
    return bytes(data)


async def at_end_of_file(peer: socket.socket) -> bool:
    """Whether the peer's next read is the end of file (not data, not a reset)."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(peer, 1), DEADLINE) == b""


def fill(transport: asyncio.Transport, beyond: int, rng: random.Random) -> bytes:
    """Write until the transport holds more than ``beyond`` bytes of its own; return
    every byte written. The peer must not be reading meanwhile."""
    written = bytearray()
    for _ in range(MAX_CHUNKS):
        chunk = rng.randbytes(CHUNK)
        transport.write(chunk)
        written += chunk
        if transport.is_closing():
            raise AssertionError(f"the transport closed after {len(written)} bytes written")
        if transport.get_write_buffer_size() > beyond:
            return bytes(written)
    raise AssertionError(f"the kernel took {len(written)} bytes without the buffer growing")


def reset_by_peer(peer: socket.socket) -> None:
    """Close with a reset instead of an end of file."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def peeked(sock: socket.socket) -> bytes:
    """What waits in ``sock``'s receive queue, left there."""
    try:
        return sock.recv(1024, socket.MSG_PEEK)
    except BlockingIOError:
        return b""


# Data, and the write buffer.


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_go_both_ways_and_the_kernel_taking_a_write_leaves_no_buffer(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol) as link:
            await asyncio.get_running_loop().sock_sendall(link.peer, b"from the peer")
            await until(lambda: protocol.received == b"from the peer", "the peer's bytes")
            link.transport.write(b"to ")
            link.transport.write(bytearray(b"the "))
            link.transport.write(memoryview(b"peer"))
            assert link.transport.get_write_buffer_size() == 0
            assert await receive(link.peer, 11) == b"to the peer"
            assert protocol.calls("made") == [None]
            assert protocol.calls("pause") == protocol.calls("lost") == []
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_write_refuses_text_and_ignores_empty_bytes(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol) as link:
            with pytest.raises(TypeError, match="bytes-like object, not 'str'"):
                link.transport.write("text")  # type: ignore[arg-type]
            link.transport.write(b"")
            assert link.transport.get_write_buffer_size() == 0
            assert not link.transport.is_closing()
            link.transport.write(b"only this")
            link.transport.close()
            assert await receive(link.peer) == b"only this"
            await until(lambda: protocol.calls("lost"), "connection_lost")
            assert protocol.calls("lost") == [None]
    assert run(scenario) == []


# Flow control.


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("limits", "expected"), [
    (None, (16 * 1024, 64 * 1024)),
    ((40_000, 10_000), (10_000, 40_000)),
    ((20_000, None), (5_000, 20_000)),
], ids=["default", "both-set", "high-set"])
def test_a_peer_that_does_not_read_pauses_the_protocol_once_and_resumes_it_once(
    kind: str, limits: tuple[int, int | None] | None, expected: tuple[int, int],
) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol, small_buffers=True) as link:
            transport = link.transport
            if limits is not None:
                transport.set_write_buffer_limits(high=limits[0], low=limits[1])
            assert transport.get_write_buffer_limits() == expected
            low, high = expected
            written = bytearray()
            rng = random.Random(1)
            for _ in range(MAX_CHUNKS):
                # Each write up to the one that passes the high-water mark.
                assert protocol.calls("pause") == []
                chunk = rng.randbytes(CHUNK)
                transport.write(chunk)
                written += chunk
                if transport.get_write_buffer_size() > high:
                    break
            pauses = protocol.calls("pause")
            assert pauses == [transport.get_write_buffer_size()]
            for _ in range(4):  # a protocol that goes on writing is not told twice
                chunk = rng.randbytes(CHUNK)
                transport.write(chunk)
                written += chunk
            await turns()
            assert len(protocol.calls("pause")) == 1
            assert protocol.calls("resume") == []

            assert await receive(link.peer, len(written)) == written
            [resumed_at] = protocol.calls("resume")
            assert isinstance(resumed_at, int) and resumed_at <= low
            assert transport.get_write_buffer_size() == 0
            assert [event for event, _ in protocol.events] == ["made", "pause", "resume"]
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_lowering_the_high_water_mark_under_a_full_buffer_pauses_the_protocol_at_once(
    kind: str,
) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol, small_buffers=True) as link:
            transport = link.transport
            written = fill(transport, 0, random.Random(2))
            buffered = transport.get_write_buffer_size()
            assert 0 < buffered <= 64 * 1024 and protocol.calls("pause") == []
            transport.set_write_buffer_limits(high=buffered - 1, low=0)
            assert protocol.calls("pause") == [buffered]
            assert await receive(link.peer, len(written)) == written
            assert protocol.calls("resume") == [0]
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_write_buffer_limits_refuse_a_high_mark_below_the_low_one(kind: str) -> None:
    async def scenario() -> None:
        async with connected(kind, Recorder()) as link:
            with pytest.raises(ValueError, match="must be >="):
                link.transport.set_write_buffer_limits(high=10, low=20)
            with pytest.raises(ValueError, match="must be >="):
                link.transport.set_write_buffer_limits(low=-1)
            assert link.transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_pause_writing_is_reported_and_the_connection_goes_on(kind: str) -> None:
    """asyncio only reports it: the protocol failed, not the connection."""
    failure = RuntimeError("cannot pause")

    class FailsToPause(Recorder):
        def pause_writing(self) -> None:
            super().pause_writing()
            raise failure

    async def scenario() -> None:
        errors = record_loop_errors()
        protocol = FailsToPause()
        async with connected(kind, protocol, small_buffers=True) as link:
            written = fill(link.transport, 64 * 1024, random.Random(3))
            assert len(errors) == 1
            assert errors[0]["exception"] is failure
            assert errors[0]["transport"] is link.transport
            assert errors[0]["protocol"] is protocol
            assert not link.transport.is_closing()
            assert await receive(link.peer, len(written)) == written
            assert len(protocol.calls("resume")) == 1
            link.transport.close()
            assert await at_end_of_file(link.peer)
            await until(lambda: protocol.calls("lost"), "connection_lost")
            assert protocol.calls("lost") == [None]
            assert len(errors) == 1
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_resume_writing_is_reported_and_every_byte_is_still_sent(kind: str) -> None:
    """asyncio only reports it: the bytes still buffered below the low-water mark
    are sent all the same."""
    failure = RuntimeError("cannot resume")

    class FailsToResume(Recorder):
        def resume_writing(self) -> None:
            super().resume_writing()
            raise failure

    async def scenario() -> None:
        errors = record_loop_errors()
        protocol = FailsToResume()
        async with connected(kind, protocol, small_buffers=True) as link:
            written = fill(link.transport, 64 * 1024, random.Random(4))
            received = await receive(link.peer, len(written))
            count, expected = len(received), len(written)
            assert count == expected  # fewer: the bytes still buffered were dropped
            assert received == written
            assert [context["exception"] for context in errors] == [failure]
            assert not link.transport.is_closing()
            assert protocol.calls("lost") == []
            link.transport.write(b"and more")
            assert await receive(link.peer, 8) == b"and more"
    assert run(scenario) == []


# Closing.


@pytest.mark.parametrize("kind", KINDS)
def test_close_sends_every_buffered_byte_before_the_end_of_file(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol, small_buffers=True) as link:
            transport = link.transport
            written = fill(transport, 0, random.Random(5))
            transport.close()
            assert transport.is_closing() and not transport.is_reading()
            await turns()
            assert protocol.calls("lost") == []  # the buffer is still waiting for the peer
            assert transport.get_extra_info("socket").fileno() != -1
            assert await receive(link.peer) == written  # all of it, then the end of file
            await until(lambda: protocol.calls("lost"), "connection_lost")
            await turns()
            assert protocol.events[-1] == ("lost", None)
            assert protocol.calls("lost") == [None]
            assert transport.get_extra_info("socket").fileno() == -1
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_close_stops_reading_at_once(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol) as link:
            link.peer.send(b"too late")
            await until(lambda: peeked(link.ours) == b"too late", "the bytes to arrive")
            link.transport.close()
            await until(lambda: protocol.calls("lost"), "connection_lost")
            await turns()
            assert protocol.received == b""
            assert protocol.events == [("made", None), ("lost", None)]
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_closing_twice_or_aborting_after_close_loses_the_connection_once(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol) as link:
            link.transport.close()
            link.transport.close()
            link.transport.abort()
            await until(lambda: protocol.calls("lost"), "connection_lost")
            await turns()
            assert protocol.calls("lost") == [None]
            assert await at_end_of_file(link.peer)
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_abort_discards_the_buffer_and_closes_the_descriptor(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol, small_buffers=True) as link:
            transport = link.transport
            written = fill(transport, 0, random.Random(6))
            buffered = transport.get_write_buffer_size()
            transport.abort()
            assert transport.is_closing() and not transport.is_reading()
            assert transport.get_write_buffer_size() == 0
            transport.write(b"after abort")  # dropped without a word, as asyncio does
            await until(lambda: protocol.calls("lost"), "connection_lost")
            await turns()
            assert protocol.calls("lost") == [None]
            assert link.ours.fileno() == -1
            received = await receive(link.peer)
            assert received == written[:len(written) - buffered]
    assert run(scenario) == []


# The peer's end of file.


@pytest.mark.parametrize("kind", KINDS)
def test_the_peers_end_of_file_closes_the_transport_when_eof_received_says_so(
    kind: str,
) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol) as link:
            link.peer.send(b"last words")
            link.peer.shutdown(socket.SHUT_WR)
            await until(lambda: protocol.calls("lost"), "connection_lost")
            await turns()
            assert protocol.received == b"last words"
            assert [event for event, _ in protocol.events] == ["made", "data", "eof", "lost"]
            assert protocol.calls("lost") == [None]
            assert link.transport.is_closing()
            assert await at_end_of_file(link.peer)
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_eof_received_returning_true_keeps_the_transport_open_for_writing(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder(keep_open=True)
        async with connected(kind, protocol) as link:
            link.peer.shutdown(socket.SHUT_WR)
            await until(lambda: protocol.calls("eof"), "eof_received")
            await turns()
            # Told once: the socket, readable for good now, is no longer watched.
            assert protocol.calls("eof") == [None]
            assert protocol.calls("lost") == []
            assert not link.transport.is_closing()
            link.transport.write(b"still heard")
            assert await receive(link.peer, 11) == b"still heard"
            link.transport.close()
            assert await at_end_of_file(link.peer)
            await until(lambda: protocol.calls("lost"), "connection_lost")
            await turns()
            assert [event for event, _ in protocol.events] == ["made", "eof", "lost"]
            assert protocol.calls("lost") == [None]
    assert run(scenario) == []


# Our end of file.


@pytest.mark.parametrize("kind", KINDS)
def test_write_eof_ends_what_the_peer_reads_but_not_what_it_sends(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol) as link:
            transport = link.transport
            assert transport.can_write_eof()
            transport.write(b"all I say")
            transport.write_eof()
            transport.write_eof()  # once is enough; twice is no error
            assert await receive(link.peer) == b"all I say"
            with pytest.raises(RuntimeError, match="after write_eof"):
                transport.write(b"more")
            with pytest.raises(RuntimeError, match="after write_eof"):
                transport.write(b"")
            assert not transport.is_closing() and transport.is_reading()
            link.peer.send(b"the peer goes on")
            await until(lambda: protocol.received == b"the peer goes on", "the peer's bytes")
            link.peer.shutdown(socket.SHUT_WR)
            await until(lambda: protocol.calls("lost"), "connection_lost")
            assert [event for event, _ in protocol.events][-2:] == ["eof", "lost"]
            assert protocol.calls("lost") == [None]
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_write_eof_with_buffered_data_comes_after_all_of_it(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol, small_buffers=True) as link:
            written = fill(link.transport, 0, random.Random(7))
            link.transport.write_eof()
            assert link.transport.get_write_buffer_size() > 0
            assert await receive(link.peer) == written
            assert not link.transport.is_closing()
            assert protocol.calls("lost") == []
    assert run(scenario) == []


# Pausing reads.


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_is_received_while_reading_is_paused_and_all_of_it_once_resumed(
    kind: str,
) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol) as link:
            transport = link.transport
            assert transport.is_reading()
            transport.pause_reading()
            transport.pause_reading()
            assert not transport.is_reading()
            link.peer.send(b"held back")
            # Waiting in the socket: only the pause keeps it from the protocol.
            await until(lambda: peeked(link.ours) == b"held back", "the bytes to arrive")
            await turns()
            assert protocol.received == b""
            transport.resume_reading()
            assert transport.is_reading()
            await until(lambda: protocol.received == b"held back", "the held bytes")
            transport.resume_reading()
            link.peer.send(b", then more")
            await until(lambda: protocol.received == b"held back, then more", "more bytes")
            assert protocol.calls("lost") == []
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_closing_while_reading_is_paused_closes_without_reading(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol) as link:
            link.transport.pause_reading()
            link.peer.send(b"unread")
            await until(lambda: peeked(link.ours) == b"unread", "the bytes to arrive")
            link.transport.close()
            link.transport.resume_reading()  # too late: nothing more is read
            assert not link.transport.is_reading()
            await until(lambda: protocol.calls("lost"), "connection_lost")
            await turns()
            assert protocol.received == b""
            assert protocol.calls("lost") == [None]
            assert link.ours.fileno() == -1
    assert run(scenario) == []


# Errors.


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("buffered", [False, True], ids=["reading", "writing"])
def test_a_reset_by_the_peer_loses_the_connection_with_the_error_once(
    kind: str, buffered: bool,
) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol, small_buffers=True) as link:
            if buffered:
                fill(link.transport, 0, random.Random(8))
            reset_by_peer(link.peer)
            await until(lambda: protocol.calls("lost"), "connection_lost")
            await turns()
            [error] = protocol.calls("lost")
            assert isinstance(error, (ConnectionResetError, BrokenPipeError))
            assert link.transport.is_closing()
            assert link.transport.get_write_buffer_size() == 0
            assert link.ours.fileno() == -1
            link.transport.write(b"to no one")  # dropped, not raised
    assert run(scenario) == []


class FailsOn(Recorder):
    """A protocol whose ``data_received`` or ``eof_received`` raises."""

    def __init__(self, callback: str, error: BaseException) -> None:
        super().__init__()
        self.callback = callback
        self.error = error

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.callback == "data_received":
            raise self.error

    def eof_received(self) -> bool | None:
        super().eof_received()
        if self.callback == "eof_received":
            raise self.error
        return None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("callback", ["data_received", "eof_received"])
def test_a_protocol_that_raises_is_reported_to_the_loop_and_its_connection_closes(
    kind: str, callback: str,
) -> None:
    async def scenario() -> None:
        errors = record_loop_errors()
        error = ValueError("the protocol's bug")
        protocol = FailsOn(callback, error)
        async with connected(kind, protocol) as link:
            link.peer.send(b"trigger")
            if callback == "eof_received":
                link.peer.shutdown(socket.SHUT_WR)
            await until(lambda: errors, "the error's report")
            [context] = errors
            assert context["exception"] is error
            assert context["transport"] is link.transport
            assert context["protocol"] is protocol
            assert link.transport.is_closing()
            await until(lambda: protocol.calls("lost"), "connection_lost")
            await turns()
            assert protocol.calls("lost") == [error]
            assert await at_end_of_file(link.peer)
            assert len(errors) == 1
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_error_from_data_received_closes_the_connection_too(kind: str) -> None:
    """asyncio catches every exception but SystemExit and KeyboardInterrupt there;
    one that is not an ``Exception`` must not leave the connection half alive."""
    async def scenario() -> None:
        errors = record_loop_errors()
        error = asyncio.CancelledError()
        protocol = FailsOn("data_received", error)
        async with connected(kind, protocol) as link:
            link.peer.send(b"trigger")
            await until(lambda: errors, "the error's report")
            assert [context["exception"] for context in errors] == [error]
            assert link.transport.is_closing()
            await until(lambda: protocol.calls("lost"), "connection_lost")
            assert protocol.calls("lost") == [error]
            assert await at_end_of_file(link.peer)
    assert run(scenario) == []


# Extra information.


@pytest.mark.parametrize("kind", KINDS)
def test_extra_info_names_the_socket_and_both_addresses_even_after_closing(kind: str) -> None:
    async def scenario() -> None:
        protocol = Recorder()
        async with connected(kind, protocol) as link:
            transport = link.transport
            fileno = link.ours.fileno()
            assert transport.get_extra_info("socket").fileno() == fileno
            assert transport.get_extra_info("peername") == link.peer.getsockname()
            assert transport.get_extra_info("sockname") == link.peer.getpeername()
            assert transport.get_extra_info("no such thing") is None
            assert transport.get_extra_info("no such thing", "fallback") == "fallback"
            transport.close()
            await until(lambda: protocol.calls("lost"), "connection_lost")
            assert transport.get_extra_info("socket").fileno() == -1
            assert transport.get_extra_info("peername") == link.peer.getsockname()
            assert transport.get_extra_info("sockname") == link.peer.getpeername()
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_the_peers_address_is_known_to_connection_lost_after_a_close(kind: str) -> None:
    """Never asked for before: a protocol may look it up only to log the closing."""
    class NamesItsPeer(Recorder):
        def connection_lost(self, exc: Exception | None) -> None:
            assert self.transport is not None
            self.events.append(("peer", self.transport.get_extra_info("peername")))
            super().connection_lost(exc)

    async def scenario() -> None:
        protocol = NamesItsPeer()
        async with connected(kind, protocol) as link:
            link.transport.close()
            await until(lambda: protocol.calls("lost"), "connection_lost")
            assert protocol.calls("peer") == [link.peer.getsockname()]
    assert run(scenario) == []


# Taking over the connections a server accepts.


def transports_of_asyncio() -> list[asyncio.BaseTransport]:
    """asyncio's socket transports still alive once the garbage is collected."""
    gc.collect()
    return [thing for thing in gc.get_objects()
            if type(thing).__name__ == "_SelectorSocketTransport"]


def served_on(port: int) -> Callable[[asyncio.BaseTransport], bool]:
    """Whether a transport is a server's end of a connection to ``port``."""
    return lambda transport: transport.get_extra_info("sockname")[1] == port


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def answered_then_closed(address: tuple[str, int]) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write("héllo\r\nabc\nquit\n".encode())
        return await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()
        await writer.wait_closed()


def test_compact_after_zero_serves_every_connection_on_a_compact_transport() -> None:
    async def scenario() -> None:
        descriptors = open_descriptors()
        server = TCPServer(0, Reverser)
        server.policy = ConnectionPolicy(Limits(compact_after=0))
        await server.start_service()
        try:
            port = server.address[1]
            clients = [await asyncio.open_connection(*server.address) for _ in range(3)]
            await until(lambda: len(server.connections()) == 3, "three connections")
            assert [type(handler.transport) for handler in server.connections()] == \
                [CompactTransport] * 3
            # asyncio's transport of each, aborted, is gone: only the clients' own are left.
            await until(lambda: not any(map(served_on(port), transports_of_asyncio())),
                        "asyncio's server-side transports to be freed")
            assert [transport.get_extra_info("peername")[1]
                    for transport in transports_of_asyncio()] == [port] * 3
            for _, writer in clients:
                writer.write("héllo\r\nabc\nquit\n".encode())
            for reader, writer in clients:
                assert await asyncio.wait_for(reader.read(), DEADLINE) == \
                    b"oll\xc3\xa9h\r\ncba\n"
                writer.close()
                await writer.wait_closed()
            del clients, reader, writer
            await until(lambda: not server.connections(), "every connection to close")
            assert server.policy.open == 0
        finally:
            await server.stop_service()
        assert not any(map(served_on(port), transports_of_asyncio()))
        await until(lambda: open_descriptors() == descriptors,
                    f"the {descriptors} descriptors open at first, and no more")
    # An asyncio transport collected while still open closes its socket too, but
    # says so: each one must have been closed by the take-over itself.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert run(scenario) == []
    assert [str(warning.message) for warning in caught
            if issubclass(warning.category, ResourceWarning)] == []


def test_only_connections_past_compact_after_get_a_compact_transport() -> None:
    async def scenario() -> None:
        server = TCPServer(0, Reverser)
        server.policy = ConnectionPolicy(Limits(compact_after=2))
        await server.start_service()
        clients = []
        try:
            for _ in range(3):
                clients.append(await asyncio.open_connection(*server.address))
                await until(lambda: len(server.connections()) == len(clients),
                            f"connection {len(clients)}")
            kinds = [type(handler.transport).__name__ for handler in server.connections()]
            assert kinds == ["_SelectorSocketTransport", "_SelectorSocketTransport",
                             "CompactTransport"]
            for _, writer in clients:
                writer.close()
                await writer.wait_closed()
            assert await answered_then_closed(server.address) == b"oll\xc3\xa9h\r\ncba\n"
        finally:
            await server.stop_service()
    assert run(scenario) == []


def test_without_a_descriptor_to_spare_asyncios_transport_serves_the_connection() -> None:
    """The take-over needs a second descriptor for a moment: where the open-file
    limit leaves none, the connection is served as it would be below the mark."""
    async def scenario() -> None:
        server = TCPServer(0, Reverser)
        server.policy = ConnectionPolicy(Limits(compact_after=0))
        await server.start_service()
        client = socket.socket()
        client.setblocking(False)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        next_free = os.dup(client.fileno())
        os.close(next_free)
        try:
            # The accepted connection takes the last descriptor the limit allows.
            resource.setrlimit(resource.RLIMIT_NOFILE, (next_free + 1, hard))
            await asyncio.get_running_loop().sock_connect(client, server.address)
            await until(lambda: server.connections(), "the connection")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        try:
            [handler] = server.connections()
            assert type(handler.transport).__name__ == "_SelectorSocketTransport"
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(client, "héllo\r\nquit\n".encode())
            assert await asyncio.wait_for(receive_all(loop, client), DEADLINE) == \
                b"oll\xc3\xa9h\r\n"
        finally:
            client.close()
            await server.stop_service()
    # The loop's next accept, with no descriptor left, fails as well: that is all it says.
    assert {error["message"] for error in run(scenario)} <= {
        "socket.accept() out of system resource"}


async def receive_all(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    received = b""
    while chunk := await loop.sock_recv(sock, 4096):
        received += chunk
    return received


def test_by_default_a_connection_keeps_asyncios_transport() -> None:
    async def scenario() -> None:
        server = TCPServer(0, Reverser)
        await server.start_service()
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            await until(lambda: server.connections(), "the connection")
            [handler] = server.connections()
            assert not isinstance(handler.transport, CompactTransport)
            assert type(handler.transport).__name__ == "_SelectorSocketTransport"
            writer.close()
            await writer.wait_closed()
        finally:
            await server.stop_service()
    assert run(scenario) == []


# Memory.


class Watched(Reverser):
    """A handler that can be watched by a weak reference (it gets a ``__dict__``)."""


def test_a_closed_connection_is_freed_without_the_garbage_collector() -> None:
    """Both ends hold each other while the connection is open; closing must undo
    it, or every connection would wait for a collection to be freed."""
    async def converse() -> tuple[weakref.ref[Recorder], weakref.ref[socket.socket]]:
        ours, peer = tcp_pair()
        with peer:
            protocol = Recorder()
            transport = CompactTransport(asyncio.get_running_loop(), ours, protocol)
            protocol.connection_made(transport)
            peer.send(b"ping")
            await until(lambda: protocol.received == b"ping", "the peer's bytes")
            transport.write(b"pong")
            assert await receive(peer, 4) == b"pong"
            transport.close()
            await until(lambda: protocol.calls("lost"), "connection_lost")
            assert protocol.calls("lost") == [None]
        # The socket is the transport's own: it lives exactly as long as the transport.
        return weakref.ref(protocol), weakref.ref(ours)

    async def served() -> weakref.ref[Watched]:
        server = TCPServer(0, Watched)
        server.policy = ConnectionPolicy(Limits(compact_after=0))
        await server.start_service()
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            await until(lambda: server.connections(), "the connection")
            [handler] = server.connections()
            assert isinstance(handler, Watched)
            assert isinstance(handler.transport, CompactTransport)
            watched = weakref.ref(handler)
            del handler
            writer.write(b"quit\n")
            assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
            writer.close()
            await writer.wait_closed()
            await until(lambda: not server.connections(), "the connection to close")
        finally:
            await server.stop_service()
        return watched

    async def scenario() -> None:
        protocol, sock = await converse()
        await turns(1)  # the loop's last handle of the transport is dropped after it ran
        assert protocol() is None
        assert sock() is None
        handler = await served()
        await turns(1)
        assert handler() is None

    gc.collect()
    gc.disable()
    try:
        assert run(scenario) == []
    finally:
        gc.enable()
