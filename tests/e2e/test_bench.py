"""``make bench`` keeps working: the whole benchmark, run for about a second of load."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH_PYTHON = os.environ.get("REVERSERD_BENCH_PYTHON")
ROWS = ("pipelined lines/s, 1 conn", "pipelined lines/s, 50 conns", "requests/s, 50 conns",
        "new conns/s", "new conns per server CPU-second", "p50 µs", "p99 µs",
        "bytes per idle conn (200)")
SERVERS = ("twistd", "reverserd asyncio", "reverserd uvloop", "reverserd asyncio ×2 workers")


@pytest.mark.skipif(not BENCH_PYTHON, reason="make test passes the benchmark's virtualenv")
def test_the_benchmark_compares_every_server_on_every_figure() -> None:
    assert BENCH_PYTHON is not None
    result = subprocess.run(
        [BENCH_PYTHON, "scripts/bench.py", "--seconds", "0.07", "--rounds", "1", "--idle",
         "200", "--start-stop-rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
        check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.match(r"machine: .+, \d+ CPUs, Linux .+, Python 3\.\d+\.\d+; reverserd .+, "
                    r"Twisted .+, uvloop .+$", lines[0]), lines[0]
    header = next(line for line in lines if line.startswith("| measure |"))
    assert header == ("| measure | twistd | " + " | ".join(f"{name} | ratio"
                                                          for name in SERVERS[1:]) + " |")
    number = r"[\d,]+(?: \[\d+% / \d+%\])?"
    for row in ROWS:
        line = next((line for line in lines if line.startswith(f"| {row} |")), None)
        assert line is not None, f"no row {row!r} in\n{result.stdout}"
        assert re.fullmatch(rf"\| {re.escape(row)} \| {number}"
                            + rf" \| {number} \| \d+\.\d\d×" * 3 + r" \|", line), line
    assert re.search(r"^\| twistd -y / kill \| 0\.\d{3} s \| \d\.\d{3} s \|$", result.stdout,
                     re.MULTILINE)
    assert re.search(r"^\| reverserd start / stop \| 0\.\d{3} s \| \d\.\d{3} s \|$",
                     result.stdout, re.MULTILINE)
