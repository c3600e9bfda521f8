"""Benchmark reverserd against twistd serving the classic reverse app, in one run.

Run by ``make bench``, which builds a separate virtualenv holding Twisted and
uvloop. Every server runs as its own process on 127.0.0.1; a one-worker
server is pinned to CPU 0 and this client to CPU 1. Each figure is the
median of ``--rounds`` runs, and the servers take turns within a round, so
a slow minute of the machine hurts them all alike. The client's CPU use is
shown beside the server's: a figure whose client is near 100 % measures
the client, not the server.
"""

from __future__ import annotations

import argparse
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

CLIENT_CPU = {1}
LOADS: dict[str, Callable[[tuple[str, int], float], load.Measured]] = {
    "pipelined lines/s, 1 conn": lambda address, seconds: load.pipelined(address, 1, seconds),
    "pipelined lines/s, 50 conns": lambda address, seconds: load.pipelined(address, 50, seconds),
    "requests/s, 50 conns": lambda address, seconds: load.request_response(address, 50, seconds),
    "new conns/s": lambda address, seconds: load.new_connections(address, 32, seconds),
}
LATENCY_LOAD = "requests/s, 50 conns"


def main() -> int:
    options = _parse()
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, CLIENT_CPU)
    contenders = [servers.twistd(), servers.reverserd("asyncio"), servers.reverserd("uvloop"),
                  servers.reverserd("asyncio", workers=2)]
    print(_machine(), flush=True)
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    latencies: dict[tuple[str, str], list[float]] = {}
    try:
        for server in contenders:
            server.start()
        for round_number in range(options.rounds):
            order = contenders[round_number % len(contenders):] + \
                contenders[:round_number % len(contenders)]
            for label, run in LOADS.items():
                for server in order:
                    before = server.cpu()
                    measured = run(server.address, options.seconds)
                    server_cpu = (server.cpu() - before) / measured.seconds
                    results.setdefault((label, server.name), []).append(
                        (measured.rate, measured.client_cpu / measured.seconds, server_cpu))
                    if measured.p50 is not None and measured.p99 is not None:
                        latencies.setdefault(("p50 µs", server.name), []).append(
                            measured.p50 * 1e6)
                        latencies.setdefault(("p99 µs", server.name), []).append(
                            measured.p99 * 1e6)
            print(f"round {round_number + 1} of {options.rounds} done", file=sys.stderr,
                  flush=True)
    finally:
        for server in contenders:
            server.stop()
    memory_runs: dict[str, list[float]] = {}
    for _ in range(options.rounds):
        for server in contenders:
            memory_runs.setdefault(server.name, []).append(
                _bytes_per_idle_connection(server, options.idle))
    memory = {name: statistics.median(runs) for name, runs in memory_runs.items()}
    timings = _start_stop_timings(options.start_stop_rounds)
    print(_table(contenders, results, latencies, memory, options.idle))
    print()
    print(_timing_table(timings))
    return 0


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="length of each load run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each load per server; figures are medians "
                        "(default: %(default)s)")
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
                         for name in ("reverserd", "Twisted", "uvloop"))
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


def _cell(samples: list[tuple[float, float, float]]) -> tuple[float, str]:
    rate = statistics.median(sample[0] for sample in samples)
    client = statistics.median(sample[1] for sample in samples)
    server = statistics.median(sample[2] for sample in samples)
    return rate, f"{rate:,.0f} [{client:.0%} / {server:.0%}]"


def _per_server_cpu(samples: list[tuple[float, float, float]]) -> float:
    """What the server could do with a whole CPU, for loads the client limits."""
    return statistics.median(rate / server for rate, _, server in samples if server > 0)


def _table(contenders: list[servers.Server],
           results: dict[tuple[str, str], list[tuple[float, float, float]]],
           latencies: dict[tuple[str, str], list[float]],
           memory: dict[str, float], idle: int) -> str:
    peer, *ours = contenders
    header = ["measure", peer.name]
    for server in ours:
        header += [server.name, "ratio"]
    rows = [header, ["---"] + ["---:"] * (len(header) - 1)]
    for label in LOADS:
        base, text = _cell(results[(label, peer.name)])
        row = [label, text]
        for server in ours:
            value, text = _cell(results[(label, server.name)])
            row += [text, f"{value / base:.2f}×"]
        rows.append(row)
    label = "new conns/s"
    base = _per_server_cpu(results[(label, peer.name)])
    row = ["new conns per server CPU-second", f"{base:,.0f}"]
    for server in ours:
        value = _per_server_cpu(results[(label, server.name)])
        row += [f"{value:,.0f}", f"{value / base:.2f}×"]
    rows.append(row)
    for label in ("p50 µs", "p99 µs"):
        base = statistics.median(latencies[(label, peer.name)])
        row = [label, f"{base:,.0f}"]
        for server in ours:
            value = statistics.median(latencies[(label, server.name)])
            row += [f"{value:,.0f}", f"{value / base:.2f}×"]
        rows.append(row)
    label = f"bytes per idle conn ({idle:,})"
    row = [label, f"{memory[peer.name]:,.0f}"]
    for server in ours:
        row += [f"{memory[server.name]:,.0f}", f"{memory[server.name] / memory[peer.name]:.2f}×"]
    rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


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
