"""Load generators for the benchmark: one process, one epoll loop, no threads.

Every request is built before the clock starts and every reply is checked
by comparing bytes with the reply it must be. Pipelined lines cost the
client little (big buffers, ``memcmp``); one-line requests and new
connections cost a Python client more than a fast server, so those loads
run in ``bench_client`` (C), built by ``make bench``, and so does the
hostile client that pipelines beside the one-line requests. Each generator
returns what it measured together with the CPU time the client itself used,
so a reader can see whether the client or the server was the limit.
"""

from __future__ import annotations

import dataclasses
import pathlib
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

LINE_LENGTH = 64
LINES_PER_BATCH = 1024
PIPELINE_WINDOW = 256 * 1024
Address = tuple[str, int]
COMPILED_CLIENT = pathlib.Path(sys.executable).parent / "bench_client"


def make_line(number: int, end: bytes = b"\n") -> bytes:
    """A distinct 64-byte ASCII line: letters and digits, then ``end`` (LF or CRLF)."""
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    text = bytes(alphabet[(number * 7 + i) % len(alphabet)]
                 for i in range(LINE_LENGTH - len(end)))
    return text + end


def reply_to(line: bytes) -> bytes:
    """An ASCII line reversed, ended as it was."""
    end = b"\r\n" if line.endswith(b"\r\n") else b"\n"
    return line[:-len(end)][::-1] + end


@dataclasses.dataclass(frozen=True)
class Batch:
    """Lines sent over and over, and the replies they must get, built before the
    clock starts so that checking a reply is one ``memcmp``."""

    lines: bytes
    replies_twice: bytes  # the replies twice over: any window of len(lines) bytes, at any offset

    @classmethod
    def of(cls, lines: list[bytes], reply: Callable[[bytes], bytes]) -> Batch:
        replies = b"".join(map(reply, lines))
        if len(replies) != len(b"".join(lines)):
            raise ValueError("a reply must be as long as its line")
        return cls(b"".join(lines), replies + replies)


LINES = [make_line(number) for number in range(LINES_PER_BATCH)]
ASCII_LF = Batch.of(LINES, reply_to)
ASCII_CRLF = Batch.of([make_line(number, b"\r\n") for number in range(LINES_PER_BATCH)],
                      reply_to)


class WrongReply(Exception):
    """The server answered with bytes other than the reversed lines."""


@dataclasses.dataclass
class Measured:
    """One run of one load: how much was done, in how long, at what client cost."""

    count: int
    seconds: float
    client_cpu: float
    p50: float | None = None  # seconds from a request to its reply, when measured
    p99: float | None = None
    hostile_lines: int | None = None  # replies the hostile client got, when there was one

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def _connect_all(address: Address, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(address, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def pipelined(address: Address, connections: int, seconds: float,
              batch: Batch = ASCII_LF) -> Measured:
    """Lines/s with up to ``PIPELINE_WINDOW`` bytes in flight per connection."""
    cpu_before = time.process_time()
    count, elapsed = _pipelined(address, connections, seconds, batch)
    return Measured(count, elapsed, time.process_time() - cpu_before)


def _pipelined(address: Address, connections: int, seconds: float,
               lines: Batch) -> tuple[int, float]:
    sockets = _connect_all(address, connections)
    poller = select.epoll()
    sent = {sock.fileno(): 0 for sock in sockets}
    received = dict.fromkeys(sent, 0)
    by_fd = {sock.fileno(): sock for sock in sockets}
    batch = memoryview(lines.lines)
    period = len(lines.lines)
    replies_twice = lines.replies_twice
    buffer = bytearray(period)

    def send_more(fd: int) -> None:
        sock = by_fd[fd]
        while sent[fd] - received[fd] < PIPELINE_WINDOW:
            try:
                sent[fd] += sock.send(batch[sent[fd] % period:])
            except BlockingIOError:
                return

    try:
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
            send_more(fd)
        start = time.perf_counter()
        deadline = start + seconds
        total = 0
        while time.perf_counter() < deadline:
            for fd, _ in poller.poll(1.0):
                size = by_fd[fd].recv_into(buffer)
                if size == 0:
                    raise WrongReply("the server closed a pipelined connection")
                offset = received[fd] % period
                # bytes compare with memcmp; memoryviews compare slowly
                if buffer[:size] != replies_twice[offset:offset + size]:
                    raise WrongReply(f"wrong bytes at offset {received[fd]}")
                received[fd] += size
                total += size
                send_more(fd)
        elapsed = time.perf_counter() - start
    finally:
        poller.close()
        for sock in sockets:
            sock.close()
    return total // LINE_LENGTH, elapsed


def request_response(address: Address, connections: int, seconds: float) -> Measured:
    """Requests/s and latencies with one line at a time on each connection."""
    return _compiled_client("rr", address, connections, seconds)


def request_response_beside(address: Address, connections: int, seconds: float,
                            hostile: Batch, checked: bool) -> Measured:
    """Requests/s and latencies with one line at a time on each connection, while
    one more connection pipelines ``hostile`` lines the whole time: what one
    client's costly lines do to everyone else. Its replies are compared with the
    batch's when ``checked`` (a server that cannot answer them right is still
    loaded by them)."""
    with tempfile.TemporaryDirectory() as directory:
        lines = pathlib.Path(directory, "lines")
        lines.write_bytes(hostile.lines)
        extra = [str(lines)]
        if checked:
            replies = pathlib.Path(directory, "replies")
            replies.write_bytes(hostile.replies_twice[:len(hostile.lines)])
            extra.append(str(replies))
        return _compiled_client("rr", address, connections, seconds, extra)


def new_connections(address: Address, concurrency: int, seconds: float) -> Measured:
    """Connections/s, each: connect, send one line and ``quit``, read to EOF."""
    return _compiled_client("new", address, concurrency, seconds)


def _compiled_client(load: str, address: Address, connections: int,
                     seconds: float, extra: list[str] | None = None) -> Measured:
    """Run ``bench_client`` (C): these loads cost a Python client more than the server."""
    done = subprocess.run([str(COMPILED_CLIENT), load, str(address[1]), str(connections),
                           str(seconds), *(extra or [])],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise WrongReply(done.stderr.strip() or f"bench_client exited with {done.returncode}")
    words = done.stdout.split()
    fields = {name: float(value) for name, value in zip(words[::2], words[1::2])}
    hostile = int(fields["hostile_lines"]) if "hostile_lines" in fields else None
    return Measured(int(fields["count"]), fields["seconds"], fields["cpu"],
                    fields["p50"] / 1e6, fields["p99"] / 1e6, hostile)


def hold_idle(address: Address, count: int) -> list[socket.socket]:
    """``count`` connections, each proven served by one answered line, then idle."""
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(address, timeout=10))
        for sock in sockets:
            sock.sendall(LINES[0])
        for sock in sockets:
            data = b""
            while len(data) < LINE_LENGTH:
                chunk = sock.recv(LINE_LENGTH - len(data))
                if not chunk:
                    raise WrongReply("the server closed an idle connection")
                data += chunk
            if data != reply_to(LINES[0]):
                raise WrongReply("wrong reply on an idle connection")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
