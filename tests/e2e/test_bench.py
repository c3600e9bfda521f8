"""``make bench`` keeps working: the whole benchmark, run for about a second of load."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH_PYTHON = os.environ.get("REVERSERD_BENCH_PYTHON")
PEERS = ("twistd CRLF", "twistd LF")
SERVERS = ("reverserd asyncio", "reverserd uvloop", "reverserd asyncio ×2 workers")
NUMBER = r"[\d,]+"
LOAD = rf"{NUMBER} \[\d+% / \d+%\]"  # figure [client CPU / server CPU]
BESIDE_HOSTILE = rf"{NUMBER} \({NUMBER} hostile lines/s\)"
NONE = "—"  # a twistd whose replies to that load would be wrong
# row: (twistd CRLF's cell, twistd LF's cell, every reverserd's cell)
ROWS = {
    "pipelined CRLF lines/s, 1 conn": (LOAD, NONE, LOAD),
    "pipelined CRLF lines/s, 50 conns": (LOAD, NONE, LOAD),
    "pipelined LF lines/s, 1 conn": (NONE, LOAD, LOAD),
    "pipelined LF lines/s, 50 conns": (NONE, LOAD, LOAD),
    "pipelined LF lines/s, Cyrillic, CJK, ASCII, 1 conn": (NONE, NONE, LOAD),
    "pipelined LF lines/s, multi-code-point clusters, 1 conn": (NONE, NONE, LOAD),
    "requests/s, 50 conns": (NONE, LOAD, LOAD),
    "new conns/s": (NONE, LOAD, LOAD),
    "new conns per server CPU-second": (NONE, NUMBER, NUMBER),
    "p50 µs": (NONE, NUMBER, NUMBER),
    "p99 µs": (NONE, NUMBER, NUMBER),
    "p99 µs beside 1 conn pipelining 8 KiB lines, 30 marks per letter":
        (NONE, BESIDE_HOSTILE, BESIDE_HOSTILE),
    "bytes per idle conn (200)": (NONE, NUMBER, NUMBER),
}


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
                    r"Twisted .+, uvloop .+, regex .+$", lines[0]), lines[0]
    header = lines.index(next(line for line in lines if line.startswith("| measure |")))
    assert lines[header] == ("| measure | " + " | ".join(PEERS) + " | "
                             + " | ".join(f"{name} | ratio" for name in SERVERS) + " |")
    rows = lines[header + 2:lines.index("", header)]
    for (label, (crlf, lf, ours)), row in zip(ROWS.items(), rows, strict=True):
        assert re.fullmatch(rf"\| {re.escape(label)} \| {crlf} \| {lf}"
                            + rf" \| {ours} \| \d+\.\d\d×" * len(SERVERS) + r" \|", row), row
    assert f"{NONE}: not measured, as the replies would be wrong" in result.stdout
    assert "ratio: for every pipelined row, to twistd CRLF" in result.stdout
    assert re.search(r"^\| twistd -y / kill \| 0\.\d{3} s \| \d\.\d{3} s \|$", result.stdout,
                     re.MULTILINE)
    assert re.search(r"^\| reverserd start / stop \| 0\.\d{3} s \| \d\.\d{3} s \|$",
                     result.stdout, re.MULTILINE)
