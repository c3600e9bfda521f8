"""The connection policy, in-process on real loopback sockets, and what a
server holds for each connection.

Timeouts are driven by calling ``sweep`` with the times the test chooses,
so nothing here waits for a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from reverserd import Reverser, TCPServer, listening
from reverserd.policy import (
    ACCEPT_LOG_INTERVAL,
    AcceptFailures,
    ConnectionPolicy,
    Limits,
    connection_cap,
    raise_descriptor_limit,
)

DEADLINE = 10.0


async def until(condition: Callable[[], object], what: str) -> None:
    """Let the loop run until ``condition`` holds, or fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def serving(limits: Limits) -> AsyncIterator[tuple[TCPServer, ConnectionPolicy]]:
    server = TCPServer(0, Reverser)
    policy = ConnectionPolicy(limits)
    server.policy = policy
    await server.start_service()
    try:
        yield server, policy
    finally:
        await server.stop_service()


async def connect(server: TCPServer, source: str = "127.0.0.1"
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*server.address, local_addr=(source, 0))


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line + b"\n")
    return await asyncio.wait_for(reader.readline(), DEADLINE)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed: end of file, or a reset (it closed with our
    bytes unread), or a broken pipe (we wrote on after its end of file and its reset)."""
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_at_the_cap_newcomers_wait_in_the_queue_and_are_served_once_one_closes() -> None:
    async def scenario() -> None:
        async with serving(Limits(max_connections=3)) as (server, policy):
            served = [await connect(server) for _ in range(3)]
            for reader, writer in served:
                assert await ask(reader, writer, b"abc") == b"cba\n"
            assert policy.at_cap and server._server is None
            waiting = await connect(server)  # the kernel completes the handshake
            waiting[1].write(b"queued\n")
            await asyncio.sleep(0.2)  # a margin to show the absence of a reply
            assert not waiting[0].at_eof() and len(server.connections()) == 3
            served[0][1].close()
            assert await asyncio.wait_for(waiting[0].readline(), DEADLINE) == b"deueuq\n"
            await until(lambda: policy.open == 3, "three open connections")
            assert policy.pauses == 2  # at three, then again once the waiting one came in
            for _, writer in [*served[1:], waiting]:
                writer.close()
            await until(lambda: policy.open == 0, "every connection to close")
            assert not policy.at_cap and server._server is not None
    run(scenario)


def test_reaching_the_cap_again_soon_is_the_same_episode_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving(Limits(max_connections=1)) as (server, policy):
            for _ in range(3):
                reader, writer = await connect(server)
                assert await ask(reader, writer, b"ab") == b"ba\n"
                writer.close()
                await until(lambda: policy.open == 0, "the connection to close")
            assert policy.pauses == 3
    with caplog.at_level(logging.INFO, "reverserd.policy"):
        run(scenario)
    assert [record.message for record in caplog.records if record.levelname == "WARNING"] \
        == ["reached the cap of 1 connections: not accepting until some close (newcomers "
            "wait in the kernel's queue)"]


def test_an_address_over_its_share_is_closed_and_counted_and_others_are_not() -> None:
    async def scenario() -> None:
        async with serving(Limits(max_connections_per_peer=2)) as (server, policy):
            first = [await connect(server) for _ in range(2)]
            reader, _ = await connect(server)
            assert await closed_by_server(reader)
            other_reader, other_writer = await connect(server, "127.0.0.2")
            assert await ask(other_reader, other_writer, b"xy") == b"yx\n"
            await until(lambda: policy.closed["per-peer"] == 1, "the refusal to be counted")
            first[0][1].close()
            await until(lambda: policy.open == 2, "the first to close")
            reader, writer = await connect(server)
            assert await ask(reader, writer, b"again") == b"niaga\n"
            assert policy.counts() == {"per-peer": 1}
            for _, open_writer in [first[1], (other_reader, other_writer), (reader, writer)]:
                open_writer.close()
    run(scenario)


def test_idle_and_slow_loris_connections_are_closed_but_busy_ones_are_not() -> None:
    async def scenario() -> None:
        async with serving(Limits(idle_timeout=5)) as (server, policy):
            idle = await connect(server)
            loris = await connect(server)
            busy = await connect(server)
            await until(lambda: policy.open == 3, "three connections")
            start = asyncio.get_running_loop().time()
            for second in range(1, 8):
                loris[1].write(b"x")  # bytes, but never a whole line
                assert await ask(*busy, b"ok") == b"ko\n"
                policy.sweep(start + second)
            assert await closed_by_server(idle[0])
            assert await closed_by_server(loris[0])
            assert await ask(*busy, b"still") == b"llits\n"
            await until(lambda: policy.closed["idle"] == 2, "two idle closures")
            busy[1].close()
    run(scenario)


@contextlib.asynccontextmanager
async def one_served_one_waiting(server: TCPServer, policy: ConnectionPolicy) -> AsyncIterator[
        tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter],
              tuple[asyncio.StreamReader, asyncio.StreamWriter], float]]:
    """Two connections accepted in one batch at a cap of one: the second waits its
    turn. Gives both and the loop's time once the second was accepted."""
    # Both handshakes complete before the loop runs again, so one wake-up accepts both.
    first, second = (socket.create_connection(server.address) for _ in range(2))
    await until(lambda: policy.open == 2, "both connections to be accepted")
    accepted = asyncio.get_running_loop().time()
    assert [policy.waiting(handler) for handler in server.connections()] == [False, True]
    streams = [await asyncio.open_connection(sock=sock) for sock in (first, second)]
    try:
        yield streams[0], streams[1], accepted
    finally:
        for _, writer in streams:
            writer.close()


def test_a_connection_waiting_its_turn_is_not_closed_as_idle() -> None:
    """It waits as it would in the kernel's queue, where no idle clock runs: the
    sweep that closes the idle connection ahead of it must not close it too."""
    async def scenario() -> None:
        async with serving(Limits(max_connections=1, idle_timeout=2)) as (server, policy), \
                one_served_one_waiting(server, policy) as (served, waiting, accepted):
            waiting[1].write(b"queued\n")
            policy.sweep(accepted + 3)
            assert await closed_by_server(served[0])
            assert await asyncio.wait_for(waiting[0].readline(), DEADLINE) == b"deueuq\n"
            assert policy.closed["idle"] == 1
    run(scenario)


def test_the_idle_clock_of_a_connection_that_waited_starts_at_its_turn() -> None:
    async def scenario() -> None:
        async with serving(Limits(max_connections=1, idle_timeout=2)) as (server, policy), \
                one_served_one_waiting(server, policy) as (served, waiting, accepted):
            loop = asyncio.get_running_loop()
            await until(lambda: loop.time() >= accepted + 1.5, "the wait to last 1.5 s")
            served[1].close()
            await until(lambda: policy.open == 1, "the served connection to close")
            policy.sweep(accepted + 2.5)  # 2.5 s after it was accepted, under 1 s after its turn
            assert await ask(*waiting, b"late") == b"etal\n"
            assert policy.closed["idle"] == 0
    run(scenario)


class FailsToOpen(Reverser):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        raise RuntimeError("a bug in the application")


def test_a_handler_that_fails_as_a_connection_opens_costs_that_connection_only(
        caplog: pytest.LogCaptureFixture) -> None:
    """Closed and counted as a handler error, with the connection count right after:
    the cap still holds, and other connections are served."""
    async def scenario() -> None:
        server = TCPServer(0, FailsToOpen)
        policy = server.policy = ConnectionPolicy(Limits(max_connections=2))
        await server.start_service()
        try:
            for _ in range(3):
                reader, writer = await connect(server)
                assert await closed_by_server(reader)
                writer.close()
            await until(lambda: policy.handler_errors == 3, "three handler errors")
            assert policy.open == 0 and not policy.at_cap
        finally:
            await server.stop_service()
    with caplog.at_level(logging.ERROR, "reverserd.listening"):
        run(scenario)
    assert caplog.text.count("handler FailsToOpen failed as the connection from 127.0.0.1:") == 3


def test_idle_timeout_zero_never_closes() -> None:
    async def scenario() -> None:
        async with serving(Limits(idle_timeout=0)) as (server, policy):
            reader, writer = await connect(server)
            await until(lambda: policy.open == 1, "the connection")
            policy.sweep(asyncio.get_running_loop().time() + 86_400)
            assert await ask(reader, writer, b"up") == b"pu\n"
            writer.close()
    run(scenario)


def stuff(sock: socket.socket, budget: int = 64 << 20) -> None:
    """Send lines without reading until the server stops taking them."""
    sock.setblocking(False)
    chunk = b"0123456789" * 100 + b"\n"
    sent = 0
    with contextlib.suppress(BlockingIOError):
        while sent < budget:
            sent += sock.send(chunk * 64)


@pytest.mark.parametrize("then_quit", [False, True])
def test_a_peer_that_takes_no_replies_is_aborted_after_the_write_timeout(
        then_quit: bool) -> None:
    async def scenario() -> None:
        async with serving(Limits(write_timeout=3, idle_timeout=0)) as (server, policy):
            stalled = socket.create_connection(server.address)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader, writer = await connect(server)
            await until(lambda: policy.open == 2, "two connections")
            handler = next(h for h in server.connections()
                           if h.transport is not None and h.transport.get_extra_info(
                               "peername") == stalled.getsockname())
            for _ in range(50):
                stuff(stalled)
                if then_quit:
                    with contextlib.suppress(BlockingIOError):
                        stalled.send(b"quit\n")
                await asyncio.sleep(0.02)
                if handler.transport and handler.transport.get_write_buffer_size():
                    break
            assert handler.transport and handler.transport.get_write_buffer_size() > 0
            start = asyncio.get_running_loop().time()
            for second in range(1, 5):
                assert await ask(reader, writer, b"fine") == b"enif\n"
                policy.sweep(start + second)
            await until(lambda: policy.closed["write-timeout"] == 1, "the abort")
            assert policy.open == 1 and await ask(reader, writer, b"ok") == b"ko\n"
            stalled.close()
            writer.close()
    run(scenario)


def small_window_client(address: tuple[str, int]) -> socket.socket:
    """A client whose receive window is small from the handshake on."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(address)
    return client


def test_a_stalled_peer_is_reset_so_the_kernel_drops_what_it_queued() -> None:
    async def scenario() -> None:
        async with serving(Limits(write_timeout=3, idle_timeout=0)) as (server, policy):
            client = small_window_client(server.address)
            await until(lambda: policy.open == 1, "the connection")
            handler = server.connections()[0]
            assert handler.transport is not None
            for _ in range(50):
                stuff(client)
                await asyncio.sleep(0.02)
                if handler.transport.get_write_buffer_size():
                    break
            assert handler.transport.get_write_buffer_size() > 0
            start = asyncio.get_running_loop().time()
            for second in range(1, 5):
                policy.sweep(start + second)
            await until(lambda: policy.closed["write-timeout"] == 1, "the abort")
            client.setblocking(True)
            client.settimeout(DEADLINE)
            received = 0
            with pytest.raises(ConnectionResetError):  # a reset, not megabytes then EOF
                while chunk := client.recv(1 << 16):
                    received += len(chunk)
            assert received < 1 << 20
            client.close()
    run(scenario)


def test_replies_left_only_in_the_kernel_queue_count_as_untaken() -> None:
    async def scenario() -> None:
        async with serving(Limits(write_timeout=3, idle_timeout=0)) as (server, policy):
            client = small_window_client(server.address)
            client.sendall((b"x" * 999 + b"\n") * 10)  # 10 KB of replies: the kernel takes them
            await until(lambda: policy.open == 1 and server.connections()[0].lines_answered,
                        "the lines to be answered")
            handler = server.connections()[0]
            assert handler.transport is not None
            assert handler.transport.get_write_buffer_size() == 0
            start = asyncio.get_running_loop().time()
            for second in range(1, 5):
                await asyncio.sleep(0.01)
                policy.sweep(start + second)
            await until(lambda: policy.closed["write-timeout"] == 1, "the abort")
            client.close()
    run(scenario)


def test_accept_failures_are_logged_once_per_listener_every_ten_seconds(
        caplog: pytest.LogCaptureFixture) -> None:
    failures = AcceptFailures()
    with caplog.at_level(logging.WARNING, "reverserd.policy"):
        for tenth in range(250):  # 25 s of ten failures a second on one listener
            failures.record("127.0.0.1:2323", "too many open files", tenth / 10)
        failures.record("[::1]:2323", "too many open files", 1.0)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4
    assert lines[0].startswith("cannot accept connections on 127.0.0.1:2323: too many open "
                               "files (1 time since the last report)")
    assert all("(100 times since the last report)" in line for line in lines[1:3])
    assert lines[3].startswith("cannot accept connections on [::1]:2323")
    assert all(record.exc_info is None for record in caplog.records)
    assert ACCEPT_LOG_INTERVAL == 10.0


def test_the_cap_is_lowered_to_what_the_descriptor_limit_allows(
        caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        with caplog.at_level(logging.WARNING, "reverserd.policy"):
            allowed = connection_cap(10_000)
        assert 0 < allowed < 200
        assert "--max-connections 10000" in caplog.text and "limit of 200" in caplog.text
        assert connection_cap(allowed) == allowed
        assert raise_descriptor_limit() == (200, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# A writer is retired (no longer a StreamWriter) once its handler has the transport.
STREAM_KINDS = (asyncio.StreamWriter, listening._RetiredWriter, asyncio.StreamReader,
                asyncio.StreamReaderProtocol)


def stream_objects() -> dict[str, int]:
    """How many stream writers, readers and protocols exist, garbage or not."""
    counts = dict.fromkeys((kind.__name__ for kind in STREAM_KINDS), 0)
    for thing in gc.get_objects():
        for kind in STREAM_KINDS:
            if isinstance(thing, kind):
                counts[kind.__name__] += 1
    return counts


def test_an_open_connection_outlives_a_garbage_collection() -> None:
    async def scenario() -> None:
        async with serving(Limits()) as (server, _):
            reader, writer = await connect(server)
            assert await ask(reader, writer, b"before") == b"erofeb\n"
            gc.collect()
            assert await ask(reader, writer, b"after") == b"retfa\n"
            writer.close()
    run(scenario)


def test_a_connection_keeps_none_of_the_stream_objects_start_server_made() -> None:
    """Freed as soon as the handler has the connection, not by the garbage
    collector, and without closing it: they were half of an idle connection's
    memory."""
    async def scenario() -> None:
        async with serving(Limits()) as (server, policy):
            before = stream_objects()
            clients = [await connect(server) for _ in range(3)]
            for reader, writer in clients:
                assert await ask(reader, writer, b"ab") == b"ba\n"
            # Only the clients' own: one writer, reader and protocol each.
            clients_own = {"StreamWriter": 3, "StreamReader": 3, "StreamReaderProtocol": 3}
            assert stream_objects() == {kind: count + clients_own.get(kind, 0)
                                        for kind, count in before.items()}
            for reader, writer in clients:
                writer.write(b"quit\n")
                assert await closed_by_server(reader)
                writer.close()
                await writer.wait_closed()
            await until(lambda: policy.open == 0, "every connection to close")
            del clients, reader, writer
            assert stream_objects() == before
    gc.collect()
    gc.disable()
    try:
        run(scenario)
    finally:
        gc.enable()
