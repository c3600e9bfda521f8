"""`make run`, the first command of README.md, serves on 127.0.0.1:2323."""

from __future__ import annotations

import os
import pathlib
import signal

import pytest

from tests.e2e.support import connect, port_is_free, receive_until_closed

ROOT = pathlib.Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def test_make_run_serves_on_2323_and_stops_cleanly(reverserd) -> None:
    if not port_is_free(2323):
        pytest.skip("port 2323 is taken on this machine (is `make run` already running?)")
    outer_make = {"MAKEFLAGS": "", "MFLAGS": "", "MAKELEVEL": "0"}  # when run by `make test`
    make = reverserd("--no-print-directory", "-C", str(ROOT), "run",
                     command=["make"], env=outer_make)
    make.wait_for_log(r"INFO reverserd\.listening: listening on 127\.0\.0\.1:2323$",
                      timeout=300)
    with connect(2323) as sock:
        sock.sendall(b"hello\nquit\n")
        assert receive_until_closed(sock) == b"olleh\n"
    (server_pid,) = children(make.pid)
    os.kill(server_pid, signal.SIGTERM)
    assert make.wait() == 0
    assert make.log[-1].endswith("INFO reverserd.runner: stopped")
