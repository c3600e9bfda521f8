"""LineHandler rules that are easiest to see in-process, on real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reverserd import LineHandler, Reverser, TCPServer, protocol, reverse
from reverserd.errors import UserError


class Commands(Reverser):
    label = "not callable"
    handle_label = "not callable either"

    def handle_time(self) -> str:
        return "noon"

    def handle_x2_y(self) -> bytes:
        return b"raw"

    def handle_Upper(self) -> str:  # capitals never dispatch
        return "unreachable"

    def handle_(self) -> str:
        return "unreachable"


def test_command_table_holds_only_lowercase_handle_methods() -> None:
    assert Commands._commands == {b"quit": "handle_quit", b"time": "handle_time",
                                  b"x2_y": "handle_x2_y"}
    assert Reverser._commands == {b"quit": "handle_quit"}
    assert LineHandler._commands == {b"quit": "handle_quit"}


async def exchange(handler: type[LineHandler], *chunks: bytes,
                   **server_options: object) -> bytes:
    """Send ``chunks`` (each its own write) to a fresh server; return all it answers."""
    server = TCPServer(0, handler, **server_options)  # type: ignore[arg-type]
    await server.start_service()
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        writer.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await server.stop_service()
    return reply


def test_command_replies_keep_the_line_ending() -> None:
    reply = asyncio.run(exchange(Commands, b"time\r\nx2_y\nUpper\nhandle_time\n"))
    assert reply == b"noon\r\nraw\nreppU\nemit_eldnah\n"


class CountingWrites(Reverser):
    writes: ClassVar[list[bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.Transport)
        real_write = transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            CountingWrites.writes.append(bytes(data))
            real_write(data)

        transport.write = counted  # type: ignore[method-assign]


def test_replies_to_one_read_are_written_together() -> None:
    lines = b"".join(b"line %d\n" % number for number in range(200))
    reply = asyncio.run(exchange(CountingWrites, lines))
    assert reply == b"".join((b"line %d" % number)[::-1] + b"\n" for number in range(200))
    assert CountingWrites.writes == [reply]


def test_max_line_length_option_overrides_the_class_default() -> None:
    reply = asyncio.run(exchange(Reverser, b"abc\nabcd\nnot answered\n", max_line_length=3))
    assert reply == b"cba\n"


def test_binding_a_taken_port_is_a_user_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = TCPServer(port, Reverser)
        with pytest.raises(UserError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "
                                            "address already in use$"):
            server.privileged_start_service()


def test_port_zero_reports_the_port_bound_and_releases_it_on_stop() -> None:
    server = TCPServer(0, Reverser)
    server.privileged_start_service()
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    asyncio.run(server.stop_service())
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_ipv6_loopback_is_served_and_written_in_brackets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    reply = asyncio.run(exchange(Reverser, b"six\n", interface="::1"))
    assert reply == b"xis\n"
    assert "listening on [::1]:" in caplog.text
    assert "connection from [::1]:" in caplog.text


def expected_replies(stream: bytes) -> bytes:
    """The reverser's answer to ``stream``, written from the protocol's rules."""
    *lines, last = stream.split(b"\n")
    if last:
        lines.append(last)
    out = []
    for line in lines:
        ending = b"\r\n" if line.endswith(b"\r") else b"\n"
        out.append(reverse(line.removesuffix(b"\r")) + ending)
    return b"".join(out)


def not_a_command(line: bytes) -> bool:
    return line.removesuffix(b"\r") != b"quit"


lines_without_commands = st.one_of(
    # invalid UTF-8 is answered line by line, valid text and ASCII a block at a time
    st.lists(st.binary(max_size=40).filter(lambda line: b"\n" not in line and
                                           not_a_command(line)), max_size=20),
    st.lists(st.text(st.sampled_from("ab z\r~0"), max_size=30).map(str.encode).filter(
        not_a_command), max_size=30),
    st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).map(
        lambda text: text.replace("\n", "").encode()), max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(lines_without_commands, st.data())
def test_any_chunking_of_any_lines_is_answered_completely_and_in_order(
    lines: list[bytes], data: st.DataObject,
) -> None:
    endings = data.draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(lines),
                                 max_size=len(lines)))
    stream = b"".join(line + ending for line, ending in zip(lines, endings))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)])]
    assert asyncio.run(exchange(Reverser, *chunks)) == expected_replies(stream)


def test_a_block_of_ascii_lines_stops_at_quit_as_line_by_line_would() -> None:
    reply = asyncio.run(exchange(Reverser, b"ab\ncd\nquit\nnever answered\n"))
    assert reply == b"ba\ndc\n"


def test_a_too_long_line_inside_an_ascii_block_closes_after_the_lines_before_it() -> None:
    stream = b"abc\n" + b"x" * 11 + b"\nlate\n"
    reply = asyncio.run(exchange(Reverser, stream, max_line_length=10))
    assert reply == b"cba\n"


class LineByLine(Reverser):
    """The same replies, never a block at a time (``line_received`` is its own)."""

    def line_received(self, line: bytes) -> bytes:
        return reverse(line)


any_line = st.one_of(
    st.binary(max_size=30),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).map(str.encode),
    st.lists(st.sampled_from(["\u0301", "\u094d", "\u0915", "\u200d", "\U0001F468", "\r",
                              "\U0001F1EB", "\u1100", "\u1161", "\u0600", "a"]),
             max_size=20).map(lambda chars: "".join(chars).encode()),
    st.sampled_from([b"quit", b"x" * 41, "\u0915".encode() * 14]),  # a command, over the limit
).map(lambda line: line.replace(b"\n", b""))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(any_line, st.sampled_from([b"\n", b"\r\n"])), max_size=20),
       st.data())
def test_every_block_path_answers_as_the_line_by_line_path_does(
    lines: list[tuple[bytes, bytes]], data: st.DataObject,
) -> None:
    stream = b"".join(line + ending for line, ending in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)])]
    assert asyncio.run(exchange(Reverser, *chunks, max_line_length=40)) == asyncio.run(
        exchange(LineByLine, *chunks, max_line_length=40))


class Shouting(Reverser):
    def line_received(self, line: bytes) -> bytes:
        return line.upper()


def test_a_subclass_that_answers_differently_is_never_answered_by_the_block_path() -> None:
    reply = asyncio.run(exchange(Shouting, b"".join(b"line %d\n" % n for n in range(50))))
    assert reply == b"".join(b"LINE %d\n" % n for n in range(50))


@pytest.mark.parametrize("text", [
    "plain ASCII",
    "telnet's CRLF\r",
    "Кириллица и 中文",
    "क्षत्रिय Vie\u0302\u0323t \u1100\u1161\u11a8 \U0001F468\u200D\U0001F469 \U0001F1EB\U0001F1F7",
])
def test_valid_text_of_every_kind_takes_no_step_per_line(
        monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    calls = []
    real_reverse = protocol.reverse

    def counted_reverse(line: bytes) -> bytes:
        calls.append(line)
        return real_reverse(line)

    monkeypatch.setattr(protocol, "reverse", counted_reverse)
    lines = b"".join(f"{text} {number}\n".encode() for number in range(100))
    mixed_ends = lines + b"an LF line\n" + b"a CRLF line\r\n"
    for stream in (lines, mixed_ends):
        assert asyncio.run(exchange(Reverser, stream)) == expected_replies(stream)
    assert calls == []
    invalid = lines + b"not UTF-8 \xff\n"
    assert asyncio.run(exchange(Reverser, invalid)) == expected_replies(invalid)
    assert len(calls) == 101  # that block, line by line


class AskedForBlocks(Reverser):
    asked: ClassVar[list[int]] = []  # the lines of each read answer_block was asked for

    def answer_block(self, data: bytes, start: int, end: int) -> tuple[bytes, int] | None:
        AskedForBlocks.asked.append(data.count(b"\n", start, end + 1))
        return super().answer_block(data, start, end)


def test_a_read_of_one_line_is_answered_on_its_own_and_of_more_as_a_block() -> None:
    async def one_read_at_a_time() -> None:
        server = TCPServer(0, AskedForBlocks)
        await server.start_service()
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            for read in (b"one line\n", b"telnet's line\r\n", b"two\nlines\r\n", b"quit\n"):
                writer.write(read)  # each waits for the replies to the one before it
                replies = expected_replies(read.removesuffix(b"quit\n"))
                assert await asyncio.wait_for(reader.readexactly(len(replies)), 10) == replies
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        finally:
            await server.stop_service()

    AskedForBlocks.asked.clear()
    asyncio.run(one_read_at_a_time())
    assert AskedForBlocks.asked == [2]


class Slow(LineHandler):
    """Takes at least half a millisecond a line, and notes each loop turn's lines."""

    turns: ClassVar[list[int]] = []

    def line_received(self, line: bytes) -> bytes:
        started = time.perf_counter()
        while time.perf_counter() - started < 0.0005:
            pass
        Slow.turns[-1] += 1
        return line


async def lines_per_turn(handler: type[LineHandler], stream: bytes) -> list[int]:
    """Answer ``stream`` in one write, and count the lines answered in each loop turn."""
    handler.turns.clear()  # type: ignore[attr-defined]

    async def count_turns() -> None:
        while True:
            handler.turns.append(0)  # type: ignore[attr-defined]
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    try:
        assert await exchange(handler, stream) == stream
    finally:
        counter.cancel()
    return [count for count in handler.turns if count]  # type: ignore[attr-defined]


def test_lines_answered_one_by_one_share_the_loop_a_few_milliseconds_at_a_time() -> None:
    turns = asyncio.run(lines_per_turn(Slow, b"x\n" * 400))
    assert sum(turns) == 400
    assert max(turns) <= protocol.TURN_SECONDS / 0.0005 + protocol.TURN_CHECK


class Counting(Reverser):
    turns: ClassVar[list[int]] = []

    def answer_block(self, data: bytes, start: int, end: int) -> tuple[bytes, int] | None:
        answered = super().answer_block(data, start, end)
        if answered is not None:
            Counting.turns[-1] += answered[1]
        return answered


def test_a_big_read_is_answered_a_part_at_a_time() -> None:
    line = "क्ष".encode() * 5 + b"\n"  # its own reversal
    stream = line * (4 * protocol.TURN_BYTES // len(line))
    turns = asyncio.run(lines_per_turn(Counting, stream))
    assert sum(turns) == stream.count(b"\n")
    assert max(turns) <= protocol.TURN_BYTES // len(line)


def test_many_short_ascii_lines_are_answered_a_part_at_a_time() -> None:
    stream = b"x\n" * (8 * protocol.ASCII_TURN_LINES)  # each line its own reversal
    turns = asyncio.run(lines_per_turn(Counting, stream))
    assert sum(turns) == stream.count(b"\n")
    assert max(turns) <= protocol.ASCII_TURN_LINES


def test_a_connection_makes_no_task_and_its_lines_no_log_call(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="reverserd.protocol")

    async def hold_connections() -> tuple[int, int]:
        server = TCPServer(0, Reverser)
        await server.start_service()
        tasks_before = len(asyncio.all_tasks())
        streams = [await asyncio.open_connection(*server.address) for _ in range(20)]
        for _, writer in streams:
            writer.write(b"".join(b"line %d\n" % number for number in range(50)))
        for reader, _ in streams:
            await reader.readexactly(sum(len(b"line %d\n" % n) for n in range(50)))
        tasks_during = len(asyncio.all_tasks())
        for _, writer in streams:
            writer.close()
        await server.stop_service()
        return tasks_before, tasks_during

    tasks_before, tasks_during = asyncio.run(hold_connections())
    assert tasks_during == tasks_before
    per_connection = [record.getMessage().split(" from ")[0]
                      for record in caplog.records if record.name == "reverserd.protocol"]
    assert per_connection == ["connection"] * 40  # its opening and its closing, 1,000 lines
