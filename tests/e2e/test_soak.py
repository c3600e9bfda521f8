"""``make soak`` for 15 s: the daemon holds under hostile clients, signals and killed workers.

The soak itself (scripts/soak.py) drives a real daemon with two workers; this test runs its
short version and asserts the figures it reports, so ``make test`` guards the daemon's
limits and recovery, and ``make soak`` keeps working. It runs the standard asyncio loop, the
one a plain ``pip install`` gives (``make soak`` takes uvloop when installed).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECONDS = 15
pytestmark = pytest.mark.timeout(180)  # the first test also runs the soak, about 20 s


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "scripts/soak.py", "--seconds", str(SECONDS), "--json",
         "--loop", "asyncio"],
        cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=150,
        check=False)
    assert result.returncode in (0, 1) and result.stdout, result.stderr
    figures = json.loads(result.stdout)
    assert (result.returncode == 0) == figures["passed"]
    return figures


def test_every_check_of_the_soak_passes(report: dict[str, Any]) -> None:
    failed = [f"{check['name']}: {check['detail']}" for check in report["checks"]
              if not check["passed"]]
    assert failed == []
    assert {check["name"] for check in report["checks"]} >= {
        "lines", "rss", "fds", "log-tracebacks", "log-lines", "daemon", "restarts",
        "over-long", "slow-loris", "hoarders", "non-readers"}


def test_every_well_behaved_line_is_answered_correctly(report: dict[str, Any]) -> None:
    for name, stream in report["clients"].items():
        assert stream["answered"] > 0, name
        assert stream["wrong"] == 0, (name, stream["problems"])
        assert stream["unanswered"] == 0, (name, stream["problems"])
        assert stream["connect_failures"] == 0, name
        assert stream["answered"] + stream["excused"] == stream["sent"], name
    assert len(report["kills"]) >= 1  # so the excused lines are a killed worker's


def test_the_hostile_clients_reach_the_limits_and_are_closed(report: dict[str, Any]) -> None:
    closed = report["closed_by_limits"]  # as `reverserd status` counts them
    assert closed.get("accept pauses", 0) > 0  # the hoarders filled a worker's cap
    assert closed.get("idle", 0) > 0 and closed.get("write-timeout", 0) > 0
    hostile = report["hostile"]
    for name in ("slow-loris", "hoarders", "non-readers", "over-long lines"):
        assert hostile[name]["closed"] > 0, name
        assert hostile[name]["wrong"] == 0, name


def test_memory_and_descriptors_come_back(report: dict[str, Any]) -> None:
    assert report["rss"]["growth"] < 0.10
    assert report["rss"]["main_growth"] < 0.10
    assert report["fds"]["returned"], report["fds"]


def test_the_log_stays_short_and_free_of_tracebacks(report: dict[str, Any]) -> None:
    assert report["log"]["tracebacks"] == 0
    assert report["log"]["lines"] <= report["log"]["limit"]
