#!/usr/bin/env python3
"""Soak reverserd: well-behaved and hostile clients, signals and killed workers at once.

``make soak`` runs it for 60 s; ``make test`` runs a 15 s version (tests/e2e/test_soak.py).
It starts a real daemon with two workers and small limits in a temporary directory, so the
hostile load reaches the limits within seconds, and then, all against 127.0.0.1:

- well-behaved clients: pipelining (many lines per write), request–response (one line, wait
  for its reply), connection churn (connect, a line, ``quit``, end of file). Every reply is
  checked byte for byte against replies worked out here, independently of reverserd's code:
  ASCII reversed bytewise, valid UTF-8 by ``\\X`` grapheme clusters (the ``regex``
  package), anything else bytewise; lines end in LF or CRLF;
- hostile clients: slow-loris (a byte every 0.5 s, never a line end), non-readers (send,
  never read), idle hoarders (up to every worker's connection cap, held), over-long lines,
  invalid UTF-8 and random bytes (the last two read and check their replies too);
- SIGUSR1 and SIGUSR2 to the main process in turn, one a second, and a worker killed with
  SIGKILL every 10 s (SIGHUP reloads: a new main process every time, which this soak's
  per-process figures cannot follow; tests/e2e/test_reload.py covers reloads under load).

It then checks that every well-behaved line was answered correctly (a line lost on a killed
worker's connection is excused, wrong bytes never are), that memory did not grow after
warm-up, that every process's descriptors return to their baseline once the clients are
gone, and that the log holds no traceback and stays short. It prints its figures as a table
(``--json``: as JSON) and exits 1 if any check failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import pathlib
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

try:
    import regex
except ImportError:  # a test-only dependency
    sys.exit("soak.py needs the regex package: pip install -e '.[test]' (make soak does)")

# The daemon, and the limits the hostile load is meant to reach quickly. LIMIT_OPTIONS are
# the connection and worker limits; --no-limits leaves them out (the defaults then apply,
# and the checks of the limits are skipped).
WORKERS = 2
MAX_CONNECTIONS = 300  # per serving process
IDLE_TIMEOUT = 3.0
# Longer than the idle timeout: a non-reader's lines stop when it stalls, so it looks idle
# first, and must still be cut while its replies wait to be read.
WRITE_TIMEOUT = 4.0
WORKER_TIMEOUT = 5.0
MAX_LINE_LENGTH = 4096
DAEMON_OPTIONS = ["--workers", str(WORKERS), "--port", "0",
                  "--max-line-length", str(MAX_LINE_LENGTH)]
LIMIT_OPTIONS = ["--max-connections", str(MAX_CONNECTIONS),
                 "--idle-timeout", f"{IDLE_TIMEOUT:g}",
                 "--write-timeout", f"{WRITE_TIMEOUT:g}",
                 "--worker-timeout", f"{WORKER_TIMEOUT:g}"]

# The load. Sized so that the harness and the daemon share this machine's cores without
# starving each other: the daemon must keep up, or its latency would be ours.
PIPELINERS, PIPELINE_BATCH, PIPELINE_PAUSE = 2, 100, 0.02
REQUESTERS, REQUEST_PAUSE = 4, 0.005
CHURNERS, CHURN_PAUSE = 2, 0.05
INVALID_SENDERS, RANDOM_SENDERS, GARBAGE_PAUSE = 1, 1, 0.05
SLOW_LORIS, SLOW_LORIS_INTERVAL = 20, 0.5
NON_READERS, NON_READER_CHUNK, NON_READER_BUDGET = 8, 16384, 256 << 20
HOARDERS = MAX_CONNECTIONS * WORKERS + 20  # every worker's cap, and some waiting beyond it
HOSTILE_RAMP = (0.5, 1.5)  # hostile clients start over this span of seconds into the load
OVERLONG_INTERVAL = 2.0
SIGNAL_INTERVAL = 1.0
KILL_INTERVAL = 10.0
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

# The checks.
RSS_GROWTH_LIMIT = 0.10
LOG_LINE_LIMIT = 500  # "a few hundred"; a flood is thousands of lines a second
FD_DEADLINE = 15.0  # for the daemon's descriptors to return to their baseline
SLACK = 3.0  # beyond a timeout: the daemon's once-a-second sweep, and a loaded machine
REPLY_DEADLINE = 20.0  # no reply in this long: the line is unanswered
CONNECT_DEADLINE = 10.0
OVERLONG_DEADLINE = 5.0  # an over-long line must have closed its connection by then
REPLACEMENT_DEADLINE = 10.0
STOP_DEADLINE = 60.0

HOST = "127.0.0.1"
REVERSERD = str(pathlib.Path(sys.executable).parent / "reverserd")
STARTED = re.compile(r"^reverserd started: pid (\d+), listening on 127\.0\.0\.1:(\d+)$",
                     re.MULTILINE)
WORKER_LINE = re.compile(r"^reverserd worker (\d+): pid (\d+), up [^,]+"
                         r"(?:, restarted (\d+) times?)?(?:, last: (.*))?$", re.MULTILINE)
CLOSED_LINE = re.compile(r"^reverserd closed by limits: (.*)$", re.MULTILINE)
LOOP_NAME = re.compile(r" starting: .*?(\w+) loop")
GRAPHEME = regex.compile(r"\X")
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def reversal(line: bytes) -> bytes:
    """What reverserd must answer to ``line``, worked out without its code."""
    if line.isascii():
        return line[::-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return line[::-1]
    return "".join(reversed(GRAPHEME.findall(text))).encode("utf-8")


def replies(payload: bytes) -> tuple[bytes, int]:
    """The replies to every line of ``payload`` (which ends in LF), and how many lines."""
    answers = []
    for line in payload.split(b"\n")[:-1]:
        ending = b"\n"
        if line.endswith(b"\r"):
            line, ending = line[:-1], b"\r\n"
        answers.append(reversal(line) + ending)
    return b"".join(answers), len(answers)


# -- what the clients send ---------------------------------------------------------------

WORDS = ("soak", "reverse", "line", "daemon", "worker", "kernel", "queue", "pipe", "42",
         "hello,", "world.", "tab\there", "(parens)", "-", "QUIT", "quit?")
TEXTS = ("noe\u0308l", "Ünïcödé", "日本語のテキスト", "한국어 문장", "Привет, мир",
         "مرحبا بالعالم", "שָׁלוֹם", "Ελληνικά", "ñandú", "e\u0301te\u0301",
         "Z\u0351\u036ba\u0310lgo", "ﬁne ﬂow", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
         "\U0001F469\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466",
         "\U0001F1EB\U0001F1F7\U0001F1E9\U0001F1EA", "\U0001F44D\U0001F3FD\U0001F44B\U0001F3FF",
         "\U0001F3F3\ufe0f\u200d\U0001F308", "1\ufe0f\u20e3#\ufe0f\u20e3")
INVALID = (b"\xff", b"\xfe\xfe", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80",
           b"\xf8\x88\x80\x80\x80", b"\xf4\x90\x80\x80")


@dataclasses.dataclass(frozen=True)
class Line:
    """A line as sent (with its line end) and the reply it must get."""

    wire: bytes
    reply: bytes


def make_line(rng: random.Random, kind: str) -> Line:
    """One line of ``kind``: "ascii", "text" (non-ASCII UTF-8) or "invalid" (not UTF-8)."""
    while True:
        if kind == "ascii" and rng.random() < 0.05:  # long, but within the limit
            content = rng.randbytes(rng.randint(1000, MAX_LINE_LENGTH))
            content = bytes(32 + byte % 95 for byte in content)
        else:
            pieces = [rng.choice(WORDS).encode() for _ in range(rng.randint(0, 12))]
            if kind in ("text", "invalid"):
                pieces += [rng.choice(TEXTS).encode() for _ in range(rng.randint(1, 6))]
            if kind == "invalid":
                pieces += [rng.choice(INVALID) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.05:
                pieces.append(b"mid\rCR")  # a CR that is part of the line
            rng.shuffle(pieces)
            content = b" ".join(pieces)
        if content in (b"quit",) or content.endswith(b"\r") or b"\n" in content:
            continue
        ending = b"\r\n" if rng.random() < 0.4 else b"\n"
        return Line(content + ending, reversal(content) + ending)


def make_pool(seed: int, kinds: Iterable[tuple[str, int]]) -> list[Line]:
    rng = random.Random(seed)
    return [make_line(rng, kind) for kind, count in kinds for _ in range(count)]


def random_payload(rng: random.Random) -> bytes:
    """Random bytes ending in LF, with no line that is a command or over the limit."""
    while True:
        payload = rng.randbytes(rng.randint(1, 4000)) + b"\n"
        lines = payload.split(b"\n")
        if all(len(line) <= MAX_LINE_LENGTH and line.rstrip(b"\r") != b"quit"
               for line in lines):
            return payload


# -- the harness's connections ------------------------------------------------------------

Batch = Callable[[random.Random], tuple[bytes, bytes, int]]  # payload, replies, lines


class Client(asyncio.Protocol):
    """One harness connection: the bytes it received, and how and when it ended."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.ended = False
        self.ended_at = 0.0
        self.how = ""  # how it ended: "end of file", or the error
        self.paused = False  # our writes are waiting for the daemon to read
        self.paused_at = 0.0
        self.port = 0
        self.opened = 0.0
        self.served_at = 0.0  # when its first line was answered
        self._changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._changed.set()

    def eof_received(self) -> None:
        self.how = self.how or "end of file"

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.ended_at = time.monotonic()
        if exc is not None and not self.how:
            self.how = f"{type(exc).__name__}: {exc}"
        self.how = self.how or "closed"
        self._changed.set()

    def pause_writing(self) -> None:
        self.paused = True
        self.paused_at = time.monotonic()

    def resume_writing(self) -> None:
        self.paused = False
        self._changed.set()

    async def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``ready()`` (checked at each event), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.ended:
            self.transport.write(data)

    def close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.ended:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


@dataclasses.dataclass
class Stream:
    """The figures of one kind of client whose every reply is checked."""

    connections: int = 0
    connect_failures: int = 0
    sent: int = 0
    answered: int = 0
    excused: int = 0  # unanswered on a connection cut by a worker the soak killed
    unanswered: int = 0  # unanswered otherwise
    wrong: int = 0  # lines whose reply differed, or bytes nobody asked for
    cut: int = 0  # connections cut by a killed worker
    slowest: float = 0.0  # seconds, the longest a batch's replies (churn: a visit) took
    slowest_at: float = 0.0  # when that was, in seconds since the load began
    problems: list[str] = dataclasses.field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 5:
            self.problems.append(text)


@dataclasses.dataclass
class Hostile:
    """The figures of one kind of hostile client."""

    connections: int = 0
    connect_failures: int = 0
    served: int = 0  # got the reply to its first line (accepted, then)
    closed: int = 0  # closed by the daemon (not by a kill)
    cut: int = 0  # closed by a worker the soak killed
    wrong: int = 0  # wrong reply to its first line
    bytes_sent: int = 0
    lifetimes: list[float] = dataclasses.field(default_factory=list)  # to the daemon's close
    longest_open: float = 0.0  # the longest any was still held at the end without a close
    most_held: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        figures = dataclasses.asdict(self)
        lifetimes = figures.pop("lifetimes")
        figures["median_lifetime"] = round(statistics.median(lifetimes), 2) if lifetimes else None
        figures["max_lifetime"] = round(max(lifetimes), 2) if lifetimes else None
        figures["longest_open"] = round(self.longest_open, 2)
        return figures

    def problem(self, text: str) -> None:
        if len(self.problems) < 5:
            self.problems.append(text)


@dataclasses.dataclass(frozen=True)
class Kill:
    """A worker the soak killed, and the client ports it was serving then."""

    at: float
    slot: int
    pid: int
    ports: frozenset[int]


# -- the daemon's processes, from /proc ----------------------------------------------------

def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found += (int(child) for child in listing.read().split())
    return sorted(found)


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descriptors(pid: int) -> list[str]:
    """What each of ``pid``'s descriptors refers to ("socket:[INODE]", a path, …).

    A descriptor open throughout the listing is always in it; one opened or closed
    meanwhile may or may not be.
    """
    targets = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets


def tcp_sockets(pid: int) -> tuple[set[str], dict[str, int]]:
    """In ``pid``'s view: the inodes of listening TCP sockets, and inode → peer port of
    every other TCP socket (its connections)."""
    listening, peers = set(), {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[3] == TCP_LISTEN:
                    listening.add(fields[9])
                else:
                    peers[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    return listening, peers


def unix_sockets(pid: int) -> set[str]:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/unix") as rows:
        next(rows)
        return {fields[6] for fields in map(str.split, rows) if len(fields) > 6}
    return set()


def client_ports(pid: int) -> frozenset[int]:
    """The client ports of the connections ``pid`` holds."""
    peers = tcp_sockets(pid)[1]
    return frozenset(peers[target[8:-1]] for target in descriptors(pid)
                     if target.startswith("socket:[") and target[8:-1] in peers)


@dataclasses.dataclass(frozen=True)
class Descriptors:
    """A process's open descriptors, by kind."""

    kept: int  # files, pipes, event fds, Unix sockets: what a process holds for its life
    listening: int  # listening TCP sockets
    connections: int  # other sockets: TCP connections, open or being torn down

    @property
    def total(self) -> int:
        return self.kept + self.listening + self.connections

    def __str__(self) -> str:
        return f"{self.kept}+{self.listening}+{self.connections}"


def count_descriptors(pid: int) -> Descriptors:
    """``pid``'s descriptors by kind. The kept ones are always all counted, even while
    connections come and go; a connection's socket may linger, for a moment, after the
    kernel forgot its connection, so it counts among the connections."""
    listening, peers = tcp_sockets(pid)
    unix = unix_sockets(pid)
    kept = listens = connections = 0
    for target in descriptors(pid):
        inode = target[8:-1] if target.startswith("socket:[") else None
        if inode is None or inode in unix:
            kept += 1
        elif inode in listening:
            listens += 1
        else:
            connections += 1
    return Descriptors(kept, listens, connections)


# -- the soak ------------------------------------------------------------------------------

class Soak:
    """One run: the daemon, the clients, what they saw, and the report."""

    def __init__(self, seconds: float, limits: bool, loop: str | None) -> None:
        self.seconds = seconds
        self.limits = limits
        self.warmup = min(10.0, seconds / 3)
        self.options = DAEMON_OPTIONS + (LIMIT_OPTIONS if limits else []) \
            + (["--loop", loop] if loop else [])
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="reverserd-soak-"))
        self.pidfile = self.directory / "reverserd.pid"
        self.main_pid = 0
        self.port = 0
        self.stopped = False
        self.load_start = self.load_end = 0.0
        self.streams = {name: Stream() for name in (
            "pipelining", "request-response", "churn", "invalid UTF-8", "random bytes")}
        self.hostile = {name: Hostile() for name in (
            "slow-loris", "non-readers", "hoarders", "over-long lines")}
        self.kills: list[Kill] = []
        self.signals_sent: collections.Counter[str] = collections.Counter()
        self.worker_pids: set[int] = set()
        self.born: dict[int, float] = {}  # worker pid → when it was first seen
        self.fd_start: dict[int, Descriptors] = {}  # main and first workers, before the load
        self.fd_kept: dict[int, int] = {}  # worker pid → its kept descriptors once serving
        self.fd_peak = 0
        self.held = 0  # hoarders' connections now
        self.rss_warm: dict[int, int] = {}
        self.rss_end: dict[int, int] = {}
        self.ages_warm: dict[int, float] = {}
        self.ages_end: dict[int, float] = {}
        self.replacement_times: list[float] = []
        self.problems: list[str] = []
        self.pool = make_pool(1, [("ascii", 1200), ("text", 600), ("invalid", 200)])
        self.invalid_pool = make_pool(2, [("invalid", 500)])

    # -- the daemon ------------------------------------------------------------------------

    def reverserd(self, *args: str, timeout: float = STOP_DEADLINE,
                  nofile: tuple[int, int] | None = None) -> subprocess.CompletedProcess[str]:
        def limit() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        return subprocess.run(
            [REVERSERD, *args, "--pidfile", str(self.pidfile)], cwd=self.directory,
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
            check=False, preexec_fn=limit if nofile else None)

    def start(self, nofile: tuple[int, int]) -> None:
        """Start the daemon with the open-file limit the harness was given, not the one
        it raised for its own thousand connections (no thread runs yet: preexec_fn is
        safe here)."""
        result = self.reverserd("start", *self.options, nofile=nofile)
        match = STARTED.search(result.stdout)
        if result.returncode != 0 or not match:
            raise SystemExit("soak.py: the daemon did not start: "
                             + (result.stderr or result.stdout).strip())
        self.main_pid, self.port = int(match[1]), int(match[2])

    def status(self) -> str:
        return self.reverserd("status", timeout=REPLY_DEADLINE).stdout

    def stop(self) -> subprocess.CompletedProcess[str]:
        self.stopped = True
        return self.reverserd("stop")

    def daemon_alive(self) -> bool:
        """Whether the main process still runs (in our directory: not a reused pid)."""
        try:
            return os.readlink(f"/proc/{self.main_pid}/cwd") == str(self.directory) \
                and parent_of(self.main_pid) is not None
        except OSError:
            return False

    def end(self) -> None:
        """Make sure nothing this soak started outlives it: ``stop``, and if the daemon
        is still there (its pid still runs in our directory), SIGKILL it and its workers."""
        if not self.main_pid:
            return
        if not self.stopped:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()
        if self.daemon_alive():
            for pid in [*children(self.main_pid), self.main_pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def workers(self) -> list[int]:
        """The main process's children now: its workers."""
        return children(self.main_pid)

    def slots(self) -> dict[int, int]:
        """Worker number → pid, as ``status`` reports them."""
        return {int(match[1]): int(match[2]) for match in WORKER_LINE.finditer(self.status())}

    def note_workers(self) -> list[int]:
        """Workers now; a new one's kept descriptors become its baseline."""
        pids = self.workers()
        for pid in pids:
            if pid not in self.worker_pids:
                self.worker_pids.add(pid)
                self.born.setdefault(pid, time.monotonic())
                self.fd_kept.setdefault(pid, count_descriptors(pid).kept)
        return pids

    def sample_rss(self) -> tuple[dict[int, int], dict[int, float]]:
        now = time.monotonic()
        pids = self.note_workers()
        rss = {pid: rss_kib(pid) for pid in [self.main_pid, *pids]}
        return rss, {pid: now - self.born[pid] for pid in pids}

    def sample_fds(self) -> dict[int, Descriptors]:
        counts = {pid: count_descriptors(pid) for pid in [self.main_pid, *self.workers()]}
        self.fd_peak = max(self.fd_peak, sum(count.total for count in counts.values()))
        return counts

    def fds_back(self, counts: dict[int, Descriptors]) -> bool:
        """Whether every process is back to its baseline: the main process to the count
        it started with; each worker to its kept descriptors, no connection, and no more
        listening descriptors than a first worker had before the load."""
        listening = max((count.listening for pid, count in self.fd_start.items()
                         if pid != self.main_pid), default=0)
        return all(
            count.total <= self.fd_start[pid].total if pid == self.main_pid
            else count.kept <= self.fd_kept.get(pid, -1) and count.connections == 0
            and count.listening <= listening for pid, count in counts.items())

    async def kill_worker(self) -> None:
        """SIGKILL the next worker, noting the client ports it served at that moment.

        The worker is stopped (SIGSTOP) while its connections are listed, so none it
        accepts in between escapes the list.
        """
        slot = 1 + len(self.kills) % WORKERS
        pid = (await asyncio.to_thread(self.slots)).get(slot)
        if pid is None or parent_of(pid) != self.main_pid:
            self.problems.append(f"no worker {slot} to kill (status: {self.status()!r})")
            return
        os.kill(pid, signal.SIGSTOP)
        try:
            ports = client_ports(pid)
            at = time.monotonic()
        finally:
            os.kill(pid, signal.SIGKILL)
        self.kills.append(Kill(at, slot, pid, ports))
        deadline = at + REPLACEMENT_DEADLINE
        while time.monotonic() < deadline:
            replaced = [child for child in self.workers() if child not in self.worker_pids]
            if replaced and len(self.workers()) == WORKERS:
                self.replacement_times.append(time.monotonic() - at)
                new = replaced[0]
                self.born[new] = time.monotonic()
                await asyncio.sleep(1.0)  # let it settle before its baseline is taken
                self.note_workers()
                return
            await asyncio.sleep(0.05)
        self.problems.append(f"worker {slot} (pid {pid}) not replaced within "
                             f"{REPLACEMENT_DEADLINE:g} s of its kill")

    def excused(self, client: Client) -> bool:
        """Whether ``client``'s connection was on a worker the soak killed."""
        return any(kill.at >= client.opened and client.port in kill.ports
                   for kill in self.kills)

    # -- connections -----------------------------------------------------------------------

    def running(self) -> bool:
        return time.monotonic() < self.load_end

    async def connect(self, small_buffers: bool = False) -> Client | None:
        loop = asyncio.get_running_loop()
        opened = time.monotonic()  # before the kernel may hand it to a worker
        sock = socket.socket()
        sock.setblocking(False)
        if small_buffers:  # a client that does not read should stall soon, and cheaply
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, self.port)), CONNECT_DEADLINE)
            _, client = await loop.create_connection(Client, sock=sock)
        except (OSError, TimeoutError):
            sock.close()
            return None
        client.port = sock.getsockname()[1]
        client.opened = opened
        return client

    async def connect_checked(self, stream: Stream) -> Client | None:
        """A well-behaved client's connection; one that fails counts against the daemon."""
        client = await self.connect()
        if client is None:
            stream.connect_failures += 1
            stream.problem(f"could not connect within {CONNECT_DEADLINE:g} s")
            await asyncio.sleep(0.2)
        else:
            stream.connections += 1
        return client

    async def exchange(self, client: Client, stream: Stream, payload: bytes,
                       expected: bytes, count: int) -> bool:
        """Send ``count`` lines, check their replies; False once the connection is done."""
        stream.sent += count
        sent_at = time.monotonic()
        client.write(payload)
        await client.wait(lambda: len(client.received) >= len(expected) or client.ended,
                          REPLY_DEADLINE)
        got = bytes(client.received)
        if got == expected:
            stream.answered += count
            self.took(stream, sent_at)
            client.received.clear()
            return True
        self.account(client, stream, got, expected, count)
        return False

    def took(self, stream: Stream, since: float) -> None:
        now = time.monotonic()
        if now - since > stream.slowest:
            stream.slowest, stream.slowest_at = now - since, since - self.load_start

    def account(self, client: Client, stream: Stream, got: bytes, expected: bytes,
                count: int) -> None:
        """Count what a connection that went wrong answered, got wrong, or lost."""
        same = next((index for index, (mine, theirs) in enumerate(zip(got, expected))
                     if mine != theirs), min(len(got), len(expected)))
        answered = expected[:same].count(b"\n")
        stream.answered += answered
        missing = count - answered
        if same < len(got):  # bytes that are not the reply
            stream.wrong += 1
            stream.unanswered += max(0, missing - 1)
            stream.problem(f"wrong reply at byte {same}: expected "
                           f"{expected[same:same + 40]!r}, got {got[same:same + 40]!r}"
                           + (f" ({missing - 1} later lines count as unanswered)"
                              if missing > 1 else ""))
        elif client.ended and self.excused(client):
            stream.excused += missing
            stream.cut += 1
        else:
            stream.unanswered += missing
            how = client.how if client.ended else f"no reply within {REPLY_DEADLINE:g} s"
            stream.problem(f"{missing} of {count} lines unanswered ({how})")

    async def verified(self, name: str, batches: Batch, pause: float, seed: int) -> None:
        """A client that keeps a connection, sending batches and checking every reply."""
        stream, rng = self.streams[name], random.Random(seed)
        while self.running():
            client = await self.connect_checked(stream)
            if client is None:
                continue
            try:
                while self.running() and await self.exchange(client, stream, *batches(rng)):
                    await asyncio.sleep(pause)
            finally:
                client.close()

    @staticmethod
    def pool_batch(pool: list[Line], size: int) -> Batch:
        def batch(rng: random.Random) -> tuple[bytes, bytes, int]:
            lines = rng.choices(pool, k=size)
            return (b"".join(line.wire for line in lines),
                    b"".join(line.reply for line in lines), size)
        return batch

    @staticmethod
    def random_batch(rng: random.Random) -> tuple[bytes, bytes, int]:
        payload = random_payload(rng)
        return (payload, *replies(payload))

    async def churn(self, seed: int) -> None:
        """Connect, one line, ``quit``, and the daemon must close after the reply."""
        stream, rng = self.streams["churn"], random.Random(seed)
        while self.running():
            started = time.monotonic()
            client = await self.connect_checked(stream)
            if client is None:
                continue
            line = rng.choice(self.pool)
            stream.sent += 1
            try:
                client.write(line.wire + b"quit\n")
                await client.wait(lambda current=client: current.ended, REPLY_DEADLINE)
                got = bytes(client.received)
                if got == line.reply and client.ended:
                    stream.answered += 1
                    self.took(stream, started)
                else:
                    self.account(client, stream, got, line.reply, 1)
            finally:
                client.close()
            await asyncio.sleep(CHURN_PAUSE)

    # -- hostile clients -------------------------------------------------------------------

    async def hostile_connection(self, figures: Hostile, probe: bool = True,
                                 small_buffers: bool = False) -> Client | None:
        """Connect; with ``probe``, send a first line and wait (while the load lasts) for
        its reply, which also says the daemon accepted the connection."""
        client = await self.connect(small_buffers)
        if client is None:
            figures.connect_failures += 1
            await asyncio.sleep(0.2)
            return None
        figures.connections += 1
        if not probe:
            return client
        client.write(b"probe\n")
        await client.wait(lambda: len(client.received) >= 6 or client.ended,
                          max(0.0, self.load_end - time.monotonic()))
        if client.received[:6] == b"eborp\n" and len(client.received) == 6:
            figures.served += 1
            client.served_at = time.monotonic()
            client.received.clear()
            return client
        if client.received and not b"eborp\n".startswith(bytes(client.received)):
            figures.wrong += 1
            figures.problem(f"wrong reply to a first line: {bytes(client.received)!r}")
        self.ended_hostile(figures, client, 0.0)
        client.close(abort=True)
        return None

    def ended_hostile(self, figures: Hostile, client: Client, since: float) -> None:
        """Count how a hostile connection ended: by the daemon, by a kill, or still open."""
        if not client.ended:
            if since:
                figures.longest_open = max(figures.longest_open, time.monotonic() - since)
        elif self.excused(client):
            figures.cut += 1
        else:
            figures.closed += 1
            if since:
                figures.lifetimes.append(client.ended_at - since)

    async def ramp(self, number: int, of: int) -> None:
        """Hostile clients start after the well-behaved ones, spread over a second, as
        a thousand connects at once would only measure the kernel's SYN queue."""
        first, last = HOSTILE_RAMP
        await asyncio.sleep(first + (last - first) * number / of)

    async def slow_loris(self, number: int) -> None:
        """A byte every half second, never a line end: only an idle timeout ends it."""
        figures = self.hostile["slow-loris"]
        await self.ramp(number, SLOW_LORIS)
        while self.running():
            client = await self.hostile_connection(figures)
            if client is None:
                continue
            try:
                while self.running() and not client.ended:
                    client.write(b"x")
                    figures.bytes_sent += 1
                    await client.wait(lambda current=client: current.ended, SLOW_LORIS_INTERVAL)
                self.ended_hostile(figures, client, client.served_at)
            finally:
                client.close(abort=True)

    async def non_reader(self, number: int) -> None:
        """Send lines without ever reading a reply, until the daemon gives up on us."""
        figures = self.hostile["non-readers"]
        await self.ramp(number, NON_READERS)
        chunk = b"".join(b"%015d\n" % index for index in range(NON_READER_CHUNK // 16))
        while self.running():
            client = await self.hostile_connection(figures, small_buffers=True)
            if client is None:
                continue
            assert client.transport is not None
            client.transport.pause_reading()
            client.transport.set_write_buffer_limits(high=NON_READER_CHUNK)
            sent, stalled_since = 0, client.served_at
            try:
                while self.running() and not client.ended:
                    if not client.paused:
                        # Past the budget, a byte now and then still shows a reset at once.
                        client.write(chunk if sent < NON_READER_BUDGET else b"-")
                        sent += len(chunk) if sent < NON_READER_BUDGET else 1
                        if not client.paused:
                            stalled_since = time.monotonic()  # it took all we sent
                            await asyncio.sleep(0 if sent < NON_READER_BUDGET else 0.5)
                            continue
                    stalled_since = client.paused_at
                    await client.wait(lambda current=client: current.ended or not current.paused,
                                      min(0.5, max(0.0, self.load_end - time.monotonic())))
                figures.bytes_sent += sent
                self.ended_hostile(figures, client, stalled_since)
            finally:
                client.close(abort=True)

    async def hoarder(self, number: int) -> None:
        """Hold a connection doing nothing; half of them never even send a line."""
        figures = self.hostile["hoarders"]
        probe = number % 2 == 0
        await self.ramp(number, HOARDERS)
        while self.running():
            client = await self.hostile_connection(figures, probe=probe)
            if client is None:
                continue
            self.held += 1
            figures.most_held = max(figures.most_held, self.held)
            try:
                await client.wait(lambda current=client: current.ended,
                                  max(0.0, self.load_end - time.monotonic()))
                self.ended_hostile(figures, client, client.served_at)
            finally:
                self.held -= 1
                client.close(abort=True)
            await asyncio.sleep(0.2)

    async def overlong(self) -> None:
        """Every other second, a line over the limit: the daemon must close at once."""
        figures = self.hostile["over-long lines"]
        await self.ramp(0, 1)
        for number in itertools.count():
            started = time.monotonic()
            if started >= self.load_end:
                return
            client = await self.hostile_connection(figures)
            if client is not None:
                try:
                    sent_at = time.monotonic()
                    ending = b"\n" if number % 2 else b""  # a whole line, or no end in sight
                    client.write(b"y" * (MAX_LINE_LENGTH + 1000) + ending)
                    figures.bytes_sent += MAX_LINE_LENGTH + 1000 + len(ending)
                    await client.wait(lambda current=client: current.ended, OVERLONG_DEADLINE)
                    self.ended_hostile(figures, client, sent_at)
                    if client.received:
                        figures.wrong += 1
                        figures.problem(
                            f"a reply to an over-long line: {bytes(client.received[:40])!r}")
                finally:
                    client.close(abort=True)
            await asyncio.sleep(max(0.0, started + OVERLONG_INTERVAL - time.monotonic()))

    # -- signals, kills, measures ----------------------------------------------------------

    async def conduct(self) -> None:
        """Signals every second; memory at warm-up and at the end; the peak of fds."""
        cycle = itertools.cycle(SIGNALS)
        warm_at = self.load_start + self.warmup
        next_signal = self.load_start + SIGNAL_INTERVAL
        while self.running():
            now = time.monotonic()
            if not self.rss_warm and now >= warm_at:
                self.rss_warm, self.ages_warm = self.sample_rss()
            if now >= next_signal:
                if not self.daemon_alive():
                    self.problems.append(f"the main process died {now - self.load_start:.1f} s "
                                         "into the load")
                    return
                signum = next(cycle)
                os.kill(self.main_pid, signum)
                self.signals_sent[signal.Signals(signum).name] += 1
                next_signal += SIGNAL_INTERVAL
            self.sample_fds()
            events = [next_signal, self.load_end] + ([] if self.rss_warm else [warm_at])
            await asyncio.sleep(max(0.0, min(events) - time.monotonic()))
        self.rss_end, self.ages_end = self.sample_rss()

    async def killer(self) -> None:
        """A worker killed every 10 s, in turn. Kills stop a warm-up's length before the
        end, so the workers measured at the end are about as old as those measured at
        warm-up, or older."""
        next_kill = self.load_start + KILL_INTERVAL
        while next_kill <= self.load_end - self.warmup:
            await asyncio.sleep(max(0.0, next_kill - time.monotonic()))
            await self.kill_worker()
            next_kill += KILL_INTERVAL

    async def load(self) -> None:
        self.load_start = time.monotonic()
        self.load_end = self.load_start + self.seconds
        tasks = [
            *(self.verified("pipelining", self.pool_batch(self.pool, PIPELINE_BATCH),
                            PIPELINE_PAUSE, 100 + number) for number in range(PIPELINERS)),
            *(self.verified("request-response", self.pool_batch(self.pool, 1),
                            REQUEST_PAUSE, 200 + number) for number in range(REQUESTERS)),
            *(self.churn(300 + number) for number in range(CHURNERS)),
            *(self.verified("invalid UTF-8", self.pool_batch(self.invalid_pool, 20),
                            GARBAGE_PAUSE, 400 + number) for number in range(INVALID_SENDERS)),
            *(self.verified("random bytes", self.random_batch, GARBAGE_PAUSE, 500 + number)
              for number in range(RANDOM_SENDERS)),
            *(self.slow_loris(number) for number in range(SLOW_LORIS)),
            *(self.non_reader(number) for number in range(NON_READERS)),
            *(self.hoarder(number) for number in range(HOARDERS)),
            self.overlong(),
            self.conduct(),
            self.killer(),
        ]
        running = [asyncio.ensure_future(task) for task in tasks]
        done, pending = await asyncio.wait(running, timeout=self.seconds + REPLY_DEADLINE + 10)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                error = task.exception()
                self.problems.append(f"a client failed: {type(error).__name__}: {error}")
        if pending:
            self.problems.append(f"{len(pending)} clients still busy after the load; cancelled")
        await asyncio.sleep(0.1)  # the transports' closing callbacks

    async def fds_settle(self) -> tuple[dict[int, Descriptors], float | None]:
        """Poll until every process is back to its baseline descriptors; the last counts
        and how long it took (None: not within the deadline)."""
        started = time.monotonic()
        while True:
            counts = self.sample_fds()
            if self.fds_back(counts):
                return counts, time.monotonic() - started
            if time.monotonic() - started > FD_DEADLINE:
                return counts, None
            await asyncio.sleep(0.1)

    def replacements_kept(self) -> dict[int, int]:
        return {pid: kept for pid, kept in self.fd_kept.items() if pid not in self.fd_start}

    def read_log(self) -> list[str]:
        lines: list[str] = []
        for path in sorted(self.directory.glob("reverserd.log*"), reverse=True):
            lines += path.read_text(errors="replace").splitlines()
        return lines

    # -- the whole run ---------------------------------------------------------------------

    def run(self, nofile: tuple[int, int]) -> dict[str, Any]:
        self.start(nofile)
        status = self.status()
        self.note_workers()
        self.fd_start = {pid: count_descriptors(pid) for pid in [self.main_pid, *self.workers()]}
        cpu_before = os.times()
        asyncio.run(self.load())
        harness_cpu = sum(os.times()[:2]) - sum(cpu_before[:2])
        daemon_cpu = sum(cpu_seconds(pid) for pid in [self.main_pid, *self.workers()])
        final_status = self.status()
        fds_end, settled_in = asyncio.run(self.fds_settle())
        alive = self.daemon_alive()
        stop = self.stop()
        log = self.read_log()
        return self.report(status, final_status, fds_end, settled_in, alive, stop,
                           log, harness_cpu, daemon_cpu)

    def report(self, status: str, final_status: str,
               fds_end: dict[int, Descriptors], settled_in: float | None, alive: bool,
               stop: subprocess.CompletedProcess[str], log: list[str], harness_cpu: float,
               daemon_cpu: float) -> dict[str, Any]:
        checks: list[dict[str, Any]] = []

        def check(name: str, passed: bool, detail: str) -> None:
            checks.append({"name": name, "passed": bool(passed), "detail": detail})

        streams = {name: dataclasses.asdict(stream) for name, stream in self.streams.items()}
        hostile = {name: figures.figures() for name, figures in self.hostile.items()}
        lost = sum(s.unanswered + s.connect_failures for s in self.streams.values())
        wrong = sum(s.wrong for s in self.streams.values()) \
            + sum(h.wrong for h in self.hostile.values())
        quiet = [name for name, s in self.streams.items() if s.answered == 0]
        check("lines", lost == 0 and wrong == 0 and not quiet,
              f"{sum(s.sent for s in self.streams.values())} lines checked: {lost} unanswered "
              f"or refused (beyond {sum(s.excused for s in self.streams.values())} lost on "
              f"killed workers), {wrong} wrong"
              + (f"; no line answered for {', '.join(quiet)}" if quiet else ""))

        main_warm, main_end = self.rss_warm.get(self.main_pid, 0), self.rss_end.get(
            self.main_pid, 0)
        total_warm, total_end = sum(self.rss_warm.values()), sum(self.rss_end.values())
        growth = total_end / total_warm - 1 if total_warm else float("inf")
        main_growth = main_end / main_warm - 1 if main_warm else float("inf")
        young = [age for age in self.ages_end.values()
                 if age < min(self.ages_warm.values(), default=0) - 1]
        check("rss", growth < RSS_GROWTH_LIMIT and main_growth < RSS_GROWTH_LIMIT
              and total_end > 0 and not young,
              f"main + workers {total_warm / 1024:.1f} → {total_end / 1024:.1f} MiB "
              f"({growth:+.1%}), main alone {main_growth:+.1%}; limit "
              f"{RSS_GROWTH_LIMIT:+.0%}" + (f"; workers younger than at warm-up: {young}"
                                            if young else ""))

        check("fds", settled_in is not None,
              f"back to baseline {settled_in:.1f} s after the clients left" if settled_in
              is not None else f"not back within {FD_DEADLINE:g} s of the clients leaving: "
              f"(kept + listening + connections) {describe_fds(fds_end)}, before the load "
              f"{describe_fds(self.fd_start)}, kept by replacements "
              f"{self.replacements_kept()}")

        tracebacks = sum("Traceback" in line for line in log)
        check("log-tracebacks", tracebacks == 0, f"{tracebacks} tracebacks in the log")
        check("log-lines", len(log) <= LOG_LINE_LIMIT,
              f"{len(log)} log lines (limit {LOG_LINE_LIMIT})")

        check("daemon", alive and stop.returncode == 0 and not self.problems,
              f"main process {'alive' if alive else 'gone'} at the end; stop exit "
              f"{stop.returncode} {(stop.stdout + stop.stderr).strip()!r}"
              + "".join(f"; {problem}" for problem in self.problems))

        restarts = sum(int(match[3] or 0) for match in WORKER_LINE.finditer(final_status))
        lasts = [match[4] for match in WORKER_LINE.finditer(final_status) if match[4]]
        check("restarts", restarts == len(self.kills),
              f"{restarts} worker restarts for {len(self.kills)} kills"
              + (f"; last exits: {lasts}" if lasts else ""))

        overlong = self.hostile["over-long lines"]
        slowest = max(overlong.lifetimes, default=0.0)
        # A connection cut by a kill before its first line was answered counts as cut
        # without being served, so "every one ended" is: none still open.
        check("over-long", overlong.served > 0 and overlong.longest_open == 0
              and overlong.closed + overlong.cut >= overlong.served
              and slowest <= OVERLONG_DEADLINE - 1,
              f"{overlong.closed} of {overlong.served} closed by the daemon "
              f"({overlong.cut} by kills), slowest {slowest:.2f} s")
        closed = closed_by_limits(final_status)
        if self.limits:
            check("cap", closed.get("accept pauses", 0) > 0,
                  f"status: {closed or 'nothing closed by limits'}")
            for name, timeout, what in (("slow-loris", IDLE_TIMEOUT, "idle"),
                                        ("hoarders", IDLE_TIMEOUT, "idle"),
                                        ("non-readers", WRITE_TIMEOUT, "write")):
                figures = self.hostile[name]
                longest = max([*figures.lifetimes, figures.longest_open])
                check(name, figures.closed > 0 and longest <= timeout + SLACK,
                      f"{figures.closed} closed by the daemon, held at most {longest:.1f} s "
                      f"(--{what}-timeout {timeout:g} + {SLACK:g} s allowed)")

        loop = LOOP_NAME.search("\n".join(log[:5]))
        messages = collections.Counter(
            re.sub(r"\d+", "N", line.split(" ", 2)[-1]) for line in log)
        return {
            "passed": all(item["passed"] for item in checks),
            "seconds": self.seconds,
            "warmup": self.warmup,
            "options": self.options,
            "loop": loop[1] if loop else "?",
            "checks": checks,
            "clients": streams,
            "hostile": hostile,
            "kills": [{"slot": kill.slot, "pid": kill.pid, "connections": len(kill.ports),
                       "at": round(kill.at - self.load_start, 1)} for kill in self.kills],
            "replacement_seconds": [round(seconds, 3) for seconds in self.replacement_times],
            "signals": dict(self.signals_sent),
            "rss": {"warm_kib": total_warm,
                    "end_kib": total_end, "growth": round(growth, 4),
                    "main_warm_kib": main_warm, "main_end_kib": main_end,
                    "main_growth": round(main_growth, 4),
                    "workers_warm": {str(pid): [kib, round(self.ages_warm[pid], 1)]
                                     for pid, kib in self.rss_warm.items() if pid in
                                     self.ages_warm},
                    "workers_end": {str(pid): [kib, round(self.ages_end[pid], 1)]
                                    for pid, kib in self.rss_end.items() if pid in
                                    self.ages_end}},
            "fds": {"before": {str(pid): dataclasses.astuple(count)
                               for pid, count in self.fd_start.items()},
                    "kept_by_replacements": {str(pid): kept for pid, kept
                                             in self.replacements_kept().items()},
                    "end": {str(pid): dataclasses.astuple(count)
                            for pid, count in fds_end.items()},
                    "peak": self.fd_peak, "returned": settled_in is not None,
                    "seconds": None if settled_in is None else round(settled_in, 2)},
            "log": {"lines": len(log), "limit": LOG_LINE_LIMIT, "tracebacks": tracebacks,
                    "errors": sum(" ERROR " in line for line in log),
                    "warnings": sum(" WARNING " in line for line in log),
                    "common": messages.most_common(8)},
            "status": {"start": status.strip(), "end": final_status.strip()},
            "closed_by_limits": closed,
            "cpu_seconds": {"harness": round(harness_cpu, 1),
                            "daemon": round(daemon_cpu, 1)},
        }


def describe_fds(counts: dict[Any, Any]) -> str:
    return ", ".join(f"{pid}: " + ("+".join(map(str, count)) if isinstance(count, list | tuple)
                                   else str(count)) for pid, count in counts.items())


def closed_by_limits(status: str) -> dict[str, int]:
    """``status``'s line "closed by limits: 3 idle, …, 2 accept pauses" as a dict."""
    line = CLOSED_LINE.search(status)
    return {} if line is None else {
        name: int(count) for count, name in re.findall(r"(\d+) ([^,]+)", line[1])}


# -- output --------------------------------------------------------------------------------

def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                               for column, (cell, width) in enumerate(zip(row, widths,
                                                                          strict=True)))
             + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return lines


def describe(report: dict[str, Any]) -> str:
    out = [f"reverserd soak: {report['seconds']:g} s, {report['loop']} loop, "
           f"reverserd {' '.join(report['options'])}", ""]
    rows = [["well-behaved and checked", "conns", "lines sent", "answered",
             "lost on killed worker", "unanswered", "wrong", "slowest reply s (at s)"]]
    for name, stream in report["clients"].items():
        rows.append([name, f"{stream['connections']:,}", f"{stream['sent']:,}",
                     f"{stream['answered']:,}", f"{stream['excused']:,}",
                     f"{stream['unanswered'] + stream['connect_failures']:,}",
                     f"{stream['wrong']:,}",
                     f"{stream['slowest']:.2f} ({stream['slowest_at']:.0f})"])
    out += table(rows) + [""]
    rows = [["hostile", "conns", "answered 1st line", "closed by daemon", "cut by kill",
             "median / max s to close", "longest still open s", "most held at once"]]
    for name, figures in report["hostile"].items():
        median = figures["median_lifetime"]
        rows.append([name, f"{figures['connections']:,}", f"{figures['served']:,}",
                     f"{figures['closed']:,}", f"{figures['cut']:,}",
                     "-" if median is None else f"{median:.2f} / {figures['max_lifetime']:.2f}",
                     f"{figures['longest_open']:.1f}",
                     f"{figures['most_held']:,}" if figures["most_held"] else "-"])
    out += table(rows) + [""]
    rss, fds, log = report["rss"], report["fds"], report["log"]

    def workers(sample: dict[str, list[float]]) -> str:
        return " + ".join(f"{kib / 1024:.1f} ({age:g} s old)" for kib, age in sample.values())

    rows = [["memory (VmRSS), MiB", f"at warm-up ({report['warmup']:g} s)", "at the end",
             "change"],
            ["main + workers", f"{rss['warm_kib'] / 1024:.1f}", f"{rss['end_kib'] / 1024:.1f}",
             f"{rss['growth']:+.1%}"],
            ["main", f"{rss['main_warm_kib'] / 1024:.1f}", f"{rss['main_end_kib'] / 1024:.1f}",
             f"{rss['main_growth']:+.1%}"],
            ["workers", workers(rss["workers_warm"]), workers(rss["workers_end"]), ""]]
    out += table(rows)
    out += ["  Each figure sums the processes alive at that moment: a killed worker's "
            "replacement takes its place. The",
            f"  last kill comes {report['warmup']:g} s (the warm-up) before the end, so the "
            "workers measured at the end are about as",
            "  old as those measured at warm-up, or older, and have served the same load.", ""]
    returned = f"back {fds['seconds']:.1f} s after" if fds["returned"] else "NOT back when"
    out.append("descriptors (pid: kept + listening + connections): before the load "
               + describe_fds(fds["before"]) + "; kept by replacement workers "
               + ", ".join(f"{pid}: {kept}" for pid, kept in fds["kept_by_replacements"].items())
               + f"; {returned} the clients left: " + describe_fds(fds["end"])
               + f"; peak {fds['peak']:,} in all")
    out.append(f"log: {log['lines']} lines (limit {log['limit']}), {log['tracebacks']} "
               f"tracebacks, {log['errors']} errors, {log['warnings']} warnings; most common:")
    out += [f"  {count:4} × {message[:110]}" for message, count in log["common"]]
    out.append(f"signals: {report['signals']}; kills: "
               + ", ".join(f"worker {kill['slot']} (pid {kill['pid']}, {kill['connections']} "
                           f"connections) at {kill['at']:g} s" for kill in report["kills"])
               + f"; replaced in {report['replacement_seconds']} s")
    out.append(f"status at the end: {report['status']['end']!r}")
    out.append(f"CPU seconds: daemon (main + live workers) {report['cpu_seconds']['daemon']}, "
               f"harness {report['cpu_seconds']['harness']}")
    out.append("")
    for item in report["checks"]:
        out.append(f"{'PASS' if item['passed'] else 'FAIL'} {item['name']}: {item['detail']}")
    for name, stream in [*report["clients"].items(), *report["hostile"].items()]:
        out += [f"  {name}: {problem}" for problem in stream["problems"]]
    failed = sum(not item["passed"] for item in report["checks"])
    out.append(f"soak {'passed' if report['passed'] else 'FAILED'}: "
               f"{len(report['checks']) - failed} of {len(report['checks'])} checks passed")
    return "\n".join(out)


def raise_nofile() -> tuple[int, int]:
    """Raise the harness's open-file limit for its thousand connections; the one before."""
    soft, hard = before = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long the load lasts (default: 60; at least 5)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"),
                        help="the daemon's event loop (default: its own choice)")
    parser.add_argument("--no-limits", action="store_true",
                        help="start the daemon without " + " ".join(LIMIT_OPTIONS[::2])
                        + " (their defaults apply, and the checks of those limits are "
                        "skipped), to see what they change")
    parser.add_argument("--keep", action="store_true",
                        help="keep the daemon's directory (its log) and print its path")
    args = parser.parse_args()
    if not 5 <= args.seconds <= 86400:
        parser.error("--seconds must be between 5 and 86400")
    if not os.path.exists(REVERSERD):
        parser.error(f"no {REVERSERD}: run with the virtualenv's python (make soak)")
    nofile = raise_nofile()
    soak = Soak(args.seconds, not args.no_limits, args.loop)
    try:
        report = soak.run(nofile)
    finally:
        soak.end()
        if args.keep:
            print(f"the daemon's directory: {soak.directory}", file=sys.stderr)
        else:
            shutil.rmtree(soak.directory, ignore_errors=True)
    print(json.dumps(report, indent=1) if args.json else describe(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
