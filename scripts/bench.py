"""Benchmark reverserd against twistd serving the classic reverse app, in one run.

Run by ``make bench``, which builds a separate virtualenv holding Twisted,
uvloop and regex. Lines end LF (what nc sends) or CRLF (what telnet sends);
a ``LineReceiver`` answers only one line end, so twistd runs twice, once
with each. Replies to non-ASCII text are checked against grapheme clusters
computed by regex (``bench_text``), never by reverserd, so a wrong reply
stops the run instead of posting a figure; twistd reverses bytes, so it is
not measured on text. Every server runs as its own process on 127.0.0.1; a
one-worker server is pinned to CPU 0 and this client to CPU 1. Each figure
is the median of ``--rounds`` runs, and the servers take turns within a
round, so a slow minute of the machine hurts them all alike; every other
round runs them in reverse order, so that no server always follows another:
a server run right after another's new-connections load measured about 7 %
fewer connections than when run first, whichever server it was (that load
leaves tens of thousands of sockets in TIME_WAIT, the likely cause). The client's
CPU use is shown beside the server's: a figure whose client is near 100 %
measures the client, not the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import bench_load as load
import bench_servers as servers
import bench_text as text

CLIENT_CPU = {1}
TWISTD_CRLF, TWISTD_LF = "twistd CRLF", "twistd LF"
NOT_MEASURED = "—"
HOSTILE_LINE_LENGTH = 8192
SINGLE_CODE_POINT = load.Batch.of(text.single_code_point_lines(load.LINES_PER_BATCH),
                                  text.reply_to)
MULTI_CODE_POINT = load.Batch.of(text.multi_code_point_lines(load.LINES_PER_BATCH),
                                 text.reply_to)
# a window's worth (bench_client needs at least that), each line a different text
HOSTILE = load.Batch.of(
    text.combining_mark_lines(load.PIPELINE_WINDOW // HOSTILE_LINE_LENGTH, HOSTILE_LINE_LENGTH),
    text.reply_to)


@dataclasses.dataclass(frozen=True)
class Load:
    """One load, the lines it sends, and the twistd figure its ratio divides by:
    the classic app's (CRLF) for every pipelined load, so every pipelined row
    compares with the same peer."""

    label: str
    run: Callable[[servers.Server, float], load.Measured]
    ratio_to: tuple[str, str]  # (load label, twistd server name)
    line_end: bytes = b"\n"
    text: bool = False  # non-ASCII text: a server that reverses bytes answers it wrong

    def answered_by(self, server: servers.Server) -> bool:
        return (server.line_end in (None, self.line_end)
                and (server.by_cluster or not self.text))


def _pipelined(connections: int, batch: load.Batch) -> Callable[[servers.Server, float],
                                                                 load.Measured]:
    return lambda server, seconds: load.pipelined(server.address, connections, seconds, batch)


CRLF_1, CRLF_50 = "pipelined CRLF lines/s, 1 conn", "pipelined CRLF lines/s, 50 conns"
REQUESTS, NEW = "requests/s, 50 conns", "new conns/s"
LOADS = [
    Load(CRLF_1, _pipelined(1, load.ASCII_CRLF), (CRLF_1, TWISTD_CRLF), b"\r\n"),
    Load(CRLF_50, _pipelined(50, load.ASCII_CRLF), (CRLF_50, TWISTD_CRLF), b"\r\n"),
    Load("pipelined LF lines/s, 1 conn", _pipelined(1, load.ASCII_LF), (CRLF_1, TWISTD_CRLF)),
    Load("pipelined LF lines/s, 50 conns", _pipelined(50, load.ASCII_LF),
         (CRLF_50, TWISTD_CRLF)),
    Load("pipelined LF lines/s, Cyrillic, CJK, ASCII, 1 conn",
         _pipelined(1, SINGLE_CODE_POINT), (CRLF_1, TWISTD_CRLF), text=True),
    Load("pipelined LF lines/s, multi-code-point clusters, 1 conn",
         _pipelined(1, MULTI_CODE_POINT), (CRLF_1, TWISTD_CRLF), text=True),
    Load(REQUESTS, lambda server, seconds: load.request_response(server.address, 50, seconds),
         (REQUESTS, TWISTD_LF)),
    Load(NEW, lambda server, seconds: load.new_connections(server.address, 32, seconds),
         (NEW, TWISTD_LF)),
]
# Latency only: the requests load again while one more client pipelines long lines
# of letters each carrying 30 combining marks, text that is slow to segment; its
# replies are checked wherever they can be right.
BESIDE_HOSTILE = "p99 µs beside 1 conn pipelining 8 KiB lines, 30 marks per letter"
FAIRNESS = Load(BESIDE_HOSTILE, lambda server, seconds: load.request_response_beside(
    server.address, 50, seconds, HOSTILE, checked=server.by_cluster),
    (BESIDE_HOSTILE, TWISTD_LF))


@dataclasses.dataclass(frozen=True)
class Sample:
    """One run of one load on one server."""

    measured: load.Measured
    server_cpu: float  # the server's CPU seconds per second of the run


Results = dict[tuple[str, str], list[Sample]]


def main() -> int:
    options = _parse()
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, CLIENT_CPU)
    contenders = [servers.twistd(b"\r\n"), servers.twistd(b"\n"), servers.reverserd("asyncio"),
                  servers.reverserd("uvloop"), servers.reverserd("asyncio", workers=2)]
    print(_machine(), flush=True)
    results: Results = {}
    try:
        for server in contenders:
            server.start()
        for round_number in range(options.rounds):
            order = contenders if round_number % 2 == 0 else contenders[::-1]
            for each in [*LOADS, FAIRNESS]:
                for server in order:
                    if not each.answered_by(server):
                        continue
                    before = server.cpu()
                    measured = each.run(server, options.seconds)
                    results.setdefault((each.label, server.name), []).append(
                        Sample(measured, (server.cpu() - before) / measured.seconds))
            print(f"round {round_number + 1} of {options.rounds} done", file=sys.stderr,
                  flush=True)
    finally:
        for server in contenders:
            server.stop()
    memory_runs: dict[str, list[float]] = {}
    for _ in range(options.rounds):
        for server in contenders:
            if server.line_end != b"\r\n":  # the idle connections' one line ends LF
                memory_runs.setdefault(server.name, []).append(
                    _bytes_per_idle_connection(server, options.idle))
    memory = {name: statistics.median(runs) for name, runs in memory_runs.items()}
    timings = _start_stop_timings(options.start_stop_rounds)
    print(_table(contenders, results, memory, options.idle))
    print()
    print(_timing_table(timings))
    return 0


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="length of each load run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="runs of each load per server, every other one in reverse "
                        "order; figures are medians (default: %(default)s)")
    parser.add_argument("--idle", type=int, default=10_000,
                        help="idle connections for the memory figure (default: %(default)s)")
    parser.add_argument("--start-stop-rounds", type=int, default=10,
                        help="starts and stops timed per server (default: %(default)s)")
    return parser.parse_args()


def _machine() -> str:
    model = "unknown CPU"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}"
                         for name in ("reverserd", "Twisted", "uvloop", "regex"))
    return (f"machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}; {versions}\n"
            "one-worker servers pinned to CPU 0, the client to CPU 1; "
            "cells: figure [client CPU / server CPU]")


def _bytes_per_idle_connection(server: servers.Server, count: int) -> float:
    """RSS growth per connection, on a fresh process: memory freed by earlier
    loads would otherwise be reused and hide the cost."""
    server.start()
    held = []
    try:
        held += load.hold_idle(server.address, 10)
        before = server.rss()
        held += load.hold_idle(server.address, count)
        after = server.rss()
    finally:
        for sock in held:
            sock.close()
        server.stop()
    return (after - before) / count


def _start_stop_timings(rounds: int) -> dict[str, tuple[float, float]]:
    """Median seconds for a daemon start (until serving) and stop (until gone)."""
    timings: dict[str, tuple[list[float], list[float]]] = {"twistd": ([], []),
                                                            "reverserd": ([], [])}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(rounds):
            for name, (starts, stops) in timings.items():
                start, stop = _time_daemon(name, pathlib.Path(directory))
                starts.append(start)
                stops.append(stop)
    return {name: (statistics.median(starts), statistics.median(stops))
            for name, (starts, stops) in timings.items()}


def _time_daemon(name: str, directory: pathlib.Path) -> tuple[float, float]:
    port = servers.free_port()
    pidfile = directory / f"{name}.pid"
    logfile = directory / f"{name}.log"
    env = dict(os.environ, BENCH_PORT=str(port))
    if name == "twistd":
        start = [str(servers.BIN / "twistd"), "--pidfile", str(pidfile), "--logfile",
                 str(logfile), "--python", str(servers.TWISTD_APP)]
    else:
        start = [str(servers.BIN / "reverserd"), "start", "--port", str(port),
                 "--pidfile", str(pidfile), "--logfile", str(logfile), "--loop", "asyncio"]
    began = time.perf_counter()
    subprocess.run(start, env=env, check=True, stdout=subprocess.DEVNULL)
    started = time.perf_counter() - began
    if not servers.accepts(port):
        raise RuntimeError(f"{name} start returned before it served")
    pid = int(pidfile.read_text())
    began = time.perf_counter()
    if name == "twistd":
        os.kill(pid, 15)
        servers.wait_until(lambda: servers.gone(pid), 30, "twistd to exit")
    else:
        subprocess.run([str(servers.BIN / "reverserd"), "stop", "--pidfile", str(pidfile)],
                       check=True, stdout=subprocess.DEVNULL)
    stopped = time.perf_counter() - began
    if not servers.gone(pid):
        raise RuntimeError(f"{name} stop returned before the process was gone")
    return started, stopped


Summary = Callable[[list[Sample]], tuple[float, str]]


def _cell(samples: list[Sample]) -> tuple[float, str]:
    rate = statistics.median(sample.measured.rate for sample in samples)
    client = statistics.median(sample.measured.client_cpu / sample.measured.seconds
                               for sample in samples)
    server = statistics.median(sample.server_cpu for sample in samples)
    return rate, f"{rate:,.0f} [{client:.0%} / {server:.0%}]"


def _per_server_cpu(samples: list[Sample]) -> tuple[float, str]:
    """What the server could do with a whole CPU, for loads the client limits."""
    value = statistics.median(sample.measured.rate / sample.server_cpu for sample in samples
                              if sample.server_cpu > 0)
    return value, f"{value:,.0f}"


def _microseconds(samples: list[Sample],
                  quantile: Callable[[load.Measured], float | None]) -> float:
    return statistics.median(value for sample in samples
                             if (value := quantile(sample.measured)) is not None) * 1e6


def _p50(samples: list[Sample]) -> tuple[float, str]:
    value = _microseconds(samples, lambda measured: measured.p50)
    return value, f"{value:,.0f}"


def _p99(samples: list[Sample]) -> tuple[float, str]:
    value = _microseconds(samples, lambda measured: measured.p99)
    return value, f"{value:,.0f}"


def _p99_beside_hostile(samples: list[Sample]) -> tuple[float, str]:
    """The p99, and how fast the hostile client was answered meanwhile: a server
    that starved it would otherwise post a good figure."""
    value = _microseconds(samples, lambda measured: measured.p99)
    hostile = statistics.median((sample.measured.hostile_lines or 0) / sample.measured.seconds
                                for sample in samples)
    return value, f"{value:,.0f} ({hostile:,.0f} hostile lines/s)"


def _table(contenders: list[servers.Server], results: Results, memory: dict[str, float],
           idle: int) -> str:
    peers = [server for server in contenders if not server.by_cluster]
    ours = [server for server in contenders if server.by_cluster]
    header = ["measure", *(peer.name for peer in peers)]
    for server in ours:
        header += [server.name, "ratio"]
    rows = [header, ["---"] + ["---:"] * (len(header) - 1)]

    def row(label: str, measured: str, summary: Summary, ratio_to: tuple[str, str]) -> None:
        cells = [label]
        for peer in peers:
            samples = results.get((measured, peer.name))
            cells.append(summary(samples)[1] if samples else NOT_MEASURED)
        base = summary(results[ratio_to])[0]
        for server in ours:
            value, shown = summary(results[(measured, server.name)])
            cells += [shown, f"{value / base:.2f}×"]
        rows.append(cells)

    for each in LOADS:
        row(each.label, each.label, _cell, each.ratio_to)
    row("new conns per server CPU-second", NEW, _per_server_cpu, (NEW, TWISTD_LF))
    row("p50 µs", REQUESTS, _p50, (REQUESTS, TWISTD_LF))
    row("p99 µs", REQUESTS, _p99, (REQUESTS, TWISTD_LF))
    row(FAIRNESS.label, FAIRNESS.label, _p99_beside_hostile, FAIRNESS.ratio_to)
    cells = [f"bytes per idle conn ({idle:,})"]
    cells += [f"{memory[peer.name]:,.0f}" if peer.name in memory else NOT_MEASURED
              for peer in peers]
    for server in ours:
        cells += [f"{memory[server.name]:,.0f}",
                  f"{memory[server.name] / memory[TWISTD_LF]:.2f}×"]
    rows.append(cells)
    return "\n".join(["| " + " | ".join(cells) + " |" for cells in rows] + [
        "",
        f"{NOT_MEASURED}: not measured, as the replies would be wrong: twistd CRLF waits for "
        "CRLF, twistd LF keeps the CR in a CRLF line, and both reverse bytes, which garbles "
        "non-ASCII text.",
        "ratio: for every pipelined row, to twistd CRLF (LineReceiver's own line end) over "
        "as many connections; otherwise to twistd LF on the same row."])


def _timing_table(timings: dict[str, tuple[float, float]]) -> str:
    twistd_start, twistd_stop = timings["twistd"]
    start, stop = timings["reverserd"]
    return "\n".join([
        "| daemon | start (until serving) | stop (until gone) |",
        "|---|---:|---:|",
        f"| twistd -y / kill | {twistd_start:.3f} s | {twistd_stop:.3f} s |",
        f"| reverserd start / stop | {start:.3f} s | {stop:.3f} s |",
        f"| reverserd / twistd | {start / twistd_start:.2f}× | (kill only signals) |",
    ])


if __name__ == "__main__":
    sys.exit(main())
