"""``reverserd status --json``: one object a monitoring tool can read, with
the same exit statuses as the lines for people."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
from typing import Any

import pytest

from tests.e2e.daemons import DaemonDirectory, wait_until_dead
from tests.e2e.support import REVERSERD, connect, receive_exactly, wait_until
from tests.e2e.test_control_plane import stuck_client

KEYS = {"state", "stopping", "pid", "pidfile", "addresses", "started", "started_unix",
        "uptime_seconds", "lines_served", "connections_open", "connections_accepted",
        "closed", "accept_pauses", "handler_errors", "workers", "reloads",
        "last_reload_error", "detail"}
FRAGILE_APP = (
    "from reverserd import Application, Reverser, TCPServer\n"
    "class Fragile(Reverser):\n"
    "    def line_received(self, line):\n"
    "        if line == b'boom':\n"
    "            raise RuntimeError('boom')\n"
    "        return super().line_received(line)\n"
    "application = Application('fragile')\n"
    "TCPServer(0, Fragile, max_line_length=16).set_service_parent(application)\n"
)


def status(daemons: DaemonDirectory) -> tuple[int, dict[str, Any]]:
    result = daemons.run("status", "--json")
    assert result.stderr == "" and result.stdout.count("\n") == 1, result
    document = json.loads(result.stdout)
    assert set(document) == KEYS, document
    return result.returncode, document


def closed_at_once(port: int, data: bytes) -> bool:
    with connect(port) as sock:
        sock.sendall(data)
        try:
            return sock.recv(64) == b""
        except ConnectionResetError:
            return True


@pytest.mark.parametrize("workers", [1, 2])
def test_a_running_daemon_reports_its_connections_and_failures(
        daemons: DaemonDirectory, workers: int) -> None:
    (daemons.path / "fragile.py").write_text(FRAGILE_APP)
    result = daemons.run("start", "-y", "fragile.py", "--workers", str(workers))
    assert result.returncode == 0, result
    pid, port = map(int, re.search(r"pid (\d+), listening on 127\.0\.0\.1:(\d+)",
                                   result.stdout).groups())
    kept = [connect(port), connect(port)]
    try:
        for sock in kept:
            sock.sendall(b"hello\n")
            assert receive_exactly(sock, 6) == b"olleh\n"
        assert closed_at_once(port, b"x" * 40 + b"\n")
        assert closed_at_once(port, b"boom\n")
        code, found = status(daemons)
        assert code == 0
        assert (found["state"], found["stopping"], found["pid"]) == ("running", False, pid)
        assert found["pidfile"] == str(daemons.pidfile)
        assert found["addresses"] == [f"127.0.0.1:{port}"]
        assert found["lines_served"] == 2
        assert (found["connections_open"], found["connections_accepted"]) == (2, 4)
        assert found["closed"] == {"idle": 0, "write_timeout": 0, "per_peer": 0,
                                   "line_too_long": 1}
        assert found["handler_errors"] == 1
        assert 0 <= found["uptime_seconds"] < 60 and re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", found["started"])
        assert len(found["workers"]) == (workers if workers > 1 else 0)
        for number, worker in enumerate(found["workers"], 1):
            assert (worker["number"], worker["restarts"], worker["last_exit"]) == (number, 0,
                                                                                    None)
            assert worker["uptime_seconds"] >= 0 and os.path.exists(f"/proc/{worker['pid']}")
    finally:
        for sock in kept:
            sock.close()
    wait_until(lambda: status(daemons)[1]["connections_open"] == 0,
               "the closed connections to be counted")
    if workers > 1:
        os.kill(found["workers"][0]["pid"], signal.SIGKILL)
        wait_until(lambda: status(daemons)[1]["workers"][0]["restarts"] == 1,
                   "the worker to be replaced")
        _, after = status(daemons)
        assert after["workers"][0]["last_exit"] == "was killed by SIGKILL"
        assert (after["connections_accepted"], after["handler_errors"]) == (4, 1)
    daemons.stop()


def test_stopped_dead_and_starting(daemons: DaemonDirectory) -> None:
    code, found = status(daemons)
    assert (code, found["state"], found["pid"], found["lines_served"], found["workers"]) == (
        3, "stopped", None, None, [])
    assert found["pidfile"] == str(daemons.pidfile)

    gone = subprocess.Popen(["true"])
    gone.wait()
    daemons.pidfile.write_text(f"{gone.pid}\n")
    code, found = status(daemons)
    assert (code, found["state"], found["pid"]) == (1, "dead", gone.pid)
    assert found["detail"] == f"pid {gone.pid} is gone"
    daemons.pidfile.unlink()

    (daemons.path / "slow.py").write_text(
        "import asyncio\n"
        "from reverserd import Application, Reverser, Service, TCPServer\n"
        "class SlowStart(Service):\n"
        "    async def start_service(self):\n"
        "        await asyncio.sleep(2)\n"
        "        await super().start_service()\n"
        "application = Application('slow-start')\n"
        "SlowStart().set_service_parent(application)\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n")
    starting = subprocess.Popen([REVERSERD, "start", "-y", "slow.py"], cwd=daemons.path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # First the launcher holds the lock (pid still unknown), then the daemon has
        # written its pidfile and waits two seconds in start_service.
        seen = wait_until(lambda: (lambda found: found if found[1]["pid"] is not None
                                   or found[1]["state"] not in ("stopped", "starting")
                                   else None)(status(daemons)), "the daemon's pid")
        code, found = seen  # type: ignore[misc]
        assert (code, found["state"], found["addresses"]) == (0, "starting", [])
    finally:
        output, _ = starting.communicate(timeout=30)
        daemons.remember(output)
    assert starting.returncode == 0, output
    daemons.stop()


def test_a_stopping_daemon_says_so(daemons: DaemonDirectory) -> None:
    daemon = daemons.start("--shutdown-timeout", "30")
    stuck = stuck_client(daemon.port)  # the graceful stop waits for it to take its replies
    try:
        os.kill(daemon.pid, signal.SIGTERM)
        wait_until(lambda: status(daemons)[1]["stopping"], "the stop to begin")
        code, found = status(daemons)
        assert (code, found["state"], found["pid"]) == (0, "running", daemon.pid)
        assert found["connections_open"] == 1
    finally:
        stuck.close()
    wait_until_dead(daemon.pid)


def test_json_is_refused_for_other_verbs_and_keeps_unknown_apart(
        daemons: DaemonDirectory, tmp_path: pathlib.Path) -> None:
    result = daemons.run("start", "--json")
    assert (result.returncode, result.stderr) == (2, "reverserd: --json goes with status\n")
    unreadable = tmp_path / "closed"
    unreadable.mkdir()
    with socket.socket(socket.AF_UNIX) as planted:
        planted.bind(str(unreadable / "reverserd.pid"))
        result = daemons.run("status", "--json", "--pidfile", str(unreadable / "reverserd.pid"))
    document = json.loads(result.stdout)
    assert (result.returncode, document["state"]) == (4, "unknown")
    assert document["detail"]
