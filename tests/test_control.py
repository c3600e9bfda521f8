"""How the operator's verbs word things."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from reverserd import cli, control
from reverserd.control import format_duration
from reverserd.pidfile import DaemonState, WorkerState

HOLDER = """\
import pathlib, signal, sys
from reverserd.pidfile import Owners, RunLock
signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # status asks for a fresh state: no answer
lock = RunLock.try_acquire(pathlib.Path(sys.argv[1]), Owners.of_account(None))
print("held" if lock else "refused", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (192, "3m12s"), (3600, "1h0m0s"), (7205, "2h0m5s"),
     (86400 + 3 * 3600, "1d3h0m0s"), (400 * 86400, "400d0h0m0s")],
)
def test_uptime_is_compact_and_leaves_out_leading_zero_units(seconds: float,
                                                              text: str) -> None:
    assert format_duration(seconds) == text


@pytest.fixture
def pidfile(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A pidfile naming a process that holds the lock, as a daemon would."""
    path = tmp_path / "reverserd.pid"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, f"{path}.lock"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    path.write_text(f"{holder.pid}\n")
    yield path
    holder.kill()
    holder.wait()


def status_of(pidfile: pathlib.Path, state: DaemonState,
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    pidfile.with_name(pidfile.name + ".state").write_bytes(state.to_json())
    _, config = cli.parse_command(["status", "--pidfile", str(pidfile)])
    return control.status(config), capsys.readouterr().out


def test_status_tells_what_limits_did_and_how_a_worker_last_ended(
        pidfile: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = int(pidfile.read_text())
    state = DaemonState(pid, 0.0, ("127.0.0.1:1",), 5, 0.0,
                        (WorkerState(1, pid, 0.0, 1, "killed after 30 s without a heartbeat"),
                         WorkerState(2, pid, 0.0)),
                        {"idle": 2, "write-timeout": 1, "per-peer": 0}, 3)
    code, out = status_of(pidfile, state, capsys)
    assert code == 0
    assert re.fullmatch(
        rf"reverserd running: pid {pid}, listening on 127\.0\.0\.1:1, up \S+, 5 lines served\n"
        r"reverserd closed by limits: 2 idle, 1 write-timeout, 3 accept pauses\n"
        rf"reverserd worker 1: pid {pid}, up \S+, restarted 1 time, "
        r"last: killed after 30 s without a heartbeat\n"
        rf"reverserd worker 2: pid {pid}, up \S+\n", out), out


@pytest.mark.parametrize(("closed", "paused", "line"), [
    ({}, 0, None),
    ({"idle": 0}, 0, None),
    ({}, 1, "none, 1 accept pause"),
    ({"line-too-long": 1}, 0, "1 line-too-long"),
])
def test_the_limits_line_appears_only_when_a_limit_acted(
        pidfile: pathlib.Path, capsys: pytest.CaptureFixture[str],
        closed: dict[str, int], paused: int, line: str | None) -> None:
    pid = int(pidfile.read_text())
    code, out = status_of(pidfile, DaemonState(pid, 0.0, (), closed=closed, paused=paused),
                          capsys)
    assert code == 0
    limits = [text for text in out.splitlines() if "closed by limits" in text]
    assert limits == ([] if line is None else [f"reverserd closed by limits: {line}"])
