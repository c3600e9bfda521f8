"""``restart`` and ``reload`` bring a daemon back with the options it was
started with (kept in ``reverserd.pid.options``), changed only where the
command line says so."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import stat
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.daemons import Daemon, DaemonDirectory, is_alive, wait_until_dead
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    connect,
    port_is_free,
    receive_exactly,
    receive_until_closed,
)

DEFAULT_PORT = 2323  # where a daemon that forgot its --port 0 would come back
ANY_STARTED = re.compile(r"^reverserd started: pid (\d+), listening on (.+)$", re.MULTILINE)
RELOADED = re.compile(r"^reverserd reloaded: pid (\d+) \u2192 (\d+)$", re.MULTILINE)
WHERE_APP = """\
import os

from reverserd import Application, Reverser, listen


class Where(Reverser):
    def handle_where(self):
        return os.getcwd()


application = Application("where")
listen("tcp:0", Where).set_service_parent(application)
"""


def started_on(daemons: DaemonDirectory,
               result: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    """The pid a ``start`` or ``restart`` reported, and where it said it listens."""
    match = ANY_STARTED.search(result.stdout)
    if match:
        daemons.pids.add(int(match.group(1)))
    assert result.returncode == 0, result
    assert match, result
    return int(match.group(1)), match.group(2)


def started(daemons: DaemonDirectory, result: subprocess.CompletedProcess[str]) -> Daemon:
    """The daemon a ``start`` or ``restart`` reported serving on one TCP port."""
    pid, where = started_on(daemons, result)
    port = re.fullmatch(r"127\.0\.0\.1:(\d+)", where)
    assert port, result
    return Daemon(pid, int(port.group(1)))


def reloaded(daemons: DaemonDirectory, result: subprocess.CompletedProcess[str],
             old: int) -> int:
    """The new generation's pid, once the old one has handed over and gone."""
    match = RELOADED.search(result.stdout)
    if match:
        daemons.pids.add(int(match.group(2)))
    assert result.returncode == 0, result
    assert match, result
    assert int(match.group(1)) == old
    new = int(match.group(2))
    wait_until_dead(old)
    return new


def assert_line_limit(port: int, limit: int) -> None:
    """A line of ``limit`` bytes is answered; one byte more closes the connection."""
    longest = (b"abcdefghijklmnopqrstuvwxyz" * 4)[:limit]
    with connect(port) as sock:
        sock.sendall(longest + b"\n")
        assert receive_exactly(sock, limit + 1) == longest[::-1] + b"\n"
        sock.sendall(b"x" * (limit + 1) + b"\n")
        assert receive_until_closed(sock) == b"", f"a {limit + 1}-byte line is refused"


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, all different (held together while chosen)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def refuses(port: int) -> bool:
    """Whether nothing listens on ``port`` any more (a daemon moved away from it)."""
    try:
        connect(port, timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def two_places(tmp_path: pathlib.Path) -> Iterator[tuple[DaemonDirectory, DaemonDirectory]]:
    """Directory A, where the daemon is started, and B, from which it is restarted."""
    places = []
    for name in ("A", "B"):
        (tmp_path / name).mkdir()
        places.append(DaemonDirectory(tmp_path / name))
    try:
        yield places[0], places[1]
    finally:
        for place in places:
            place.end()


def test_restart_with_no_options_replays_port_0_and_the_line_limit(
        daemons: DaemonDirectory) -> None:
    first = daemons.start("--max-line-length", "10")
    assert_line_limit(first.port, 10)
    again = started(daemons, daemons.run("restart"))
    assert again.pid != first.pid and not is_alive(first.pid)
    assert again.port != DEFAULT_PORT, "--port 0 was replayed, not forgotten"
    assert_line_limit(again.port, 10)
    status = daemons.run("status")
    assert status.stdout.startswith(
        f"reverserd running: pid {again.pid}, listening on 127.0.0.1:{again.port}, "), status


def test_an_option_given_to_restart_overrides_the_record_and_is_kept(
        daemons: DaemonDirectory) -> None:
    first_port, second_port = free_ports(2)
    first = started(daemons, daemons.run("start", "--port", str(first_port),
                                         "--max-line-length", "8"))
    assert first.port == first_port
    moved = started(daemons, daemons.run("restart", "--port", str(second_port)))
    assert moved.port == second_port
    assert refuses(first_port)
    assert_line_limit(second_port, 8)
    again = started(daemons, daemons.run("restart"))
    assert again.port == second_port, "the override was recorded"
    assert again.pid != moved.pid
    assert_line_limit(second_port, 8)


def test_restart_of_a_stopped_daemon_uses_its_last_options(daemons: DaemonDirectory) -> None:
    first = daemons.start("--max-line-length", "6")
    daemons.stop()
    assert not daemons.pidfile.exists()
    result = daemons.run("restart")
    again = started(daemons, result)
    assert again.pid != first.pid
    assert again.port != DEFAULT_PORT
    assert_line_limit(again.port, 6)


def test_restart_from_elsewhere_runs_the_daemon_as_it_was_started(
        two_places: tuple[DaemonDirectory, DaemonDirectory]) -> None:
    origin, elsewhere = two_places
    (origin.path / "app.py").write_text(WHERE_APP)
    (origin.path / "logs").mkdir()
    first = started(origin, origin.run("start", "-y", "app.py", "--logfile", "logs/x.log"))
    log = origin.path / "logs" / "x.log"
    assert f"pid {first.pid}, application where" in log.read_text()

    again = started(elsewhere, elsewhere.run("restart", "--pidfile", str(origin.pidfile)))
    assert again.pid != first.pid and not is_alive(first.pid)
    assert os.readlink(f"/proc/{again.pid}/cwd") == str(origin.path)
    with connect(again.port) as sock:
        sock.sendall(b"where\nabc\n")
        sock.shutdown(socket.SHUT_WR)
        assert receive_until_closed(sock) == f"{origin.path}\ncba\n".encode()
    assert f"pid {again.pid}, application where" in log.read_text()
    assert origin.pidfile.read_text().strip() == str(again.pid)
    assert list(elsewhere.path.iterdir()) == [], "nothing is made where restart ran"


def test_restart_from_elsewhere_keeps_a_relative_unix_socket_where_it_was(
        two_places: tuple[DaemonDirectory, DaemonDirectory]) -> None:
    origin, elsewhere = two_places
    socket_path = origin.path / "r.sock"
    _, where = started_on(origin, origin.run("start", "--listen", "unix:r.sock"))
    assert where == f"unix:{socket_path}"
    assert stat.S_ISSOCK(socket_path.lstat().st_mode)

    _, where = started_on(elsewhere, elsewhere.run("restart", "--pidfile", str(origin.pidfile)))
    assert where == f"unix:{socket_path}", "the path means what it meant at start"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(str(socket_path))
        sock.sendall(b"abc\n")
        assert receive_exactly(sock, 4) == b"cba\n"
    assert not (elsewhere.path / "r.sock").exists()


def test_reload_applies_a_changed_option_and_a_failed_one_changes_nothing(
        daemons: DaemonDirectory, tmp_path: pathlib.Path) -> None:
    first = daemons.start("--max-line-length", "10")
    assert_line_limit(first.port, 10)
    second = reloaded(daemons, daemons.run("reload", "--max-line-length", "5"), first.pid)
    assert_line_limit(first.port, 5)

    third = started(daemons, daemons.run("restart"))
    assert third.pid != second and not is_alive(second)
    assert_line_limit(third.port, 5)

    record = (daemons.path / "reverserd.pid.options").read_bytes()
    unusable = tmp_path / "missing" / "x.sock"
    failed = daemons.run("reload", "--listen", f"unix:{unusable}")
    assert failed.returncode == 1, failed
    assert re.search(rf"^reverserd: reload failed: .*; pid {third.pid} serves on\n\Z",
                     failed.stderr, re.MULTILINE), failed
    assert (daemons.path / "reverserd.pid.options").read_bytes() == record
    assert daemons.pidfile.read_text().strip() == str(third.pid)
    assert_line_limit(third.port, 5)

    fourth = started(daemons, daemons.run("restart"))
    assert fourth.port != DEFAULT_PORT
    assert_line_limit(fourth.port, 5)
    assert not unusable.parent.exists()


def test_reload_and_restart_read_the_config_file_again(daemons: DaemonDirectory) -> None:
    settings = daemons.path / "cfg.toml"
    settings.write_text("port = 0\nmax-line-length = 10\n")
    first = started(daemons, daemons.run("start", "--config", "cfg.toml"))
    assert_line_limit(first.port, 10)

    settings.write_text("port = 0\nmax-line-length = 4\n")
    reloaded(daemons, daemons.run("reload"), first.pid)
    assert_line_limit(first.port, 4)

    settings.write_text("port = 0\nmax-line-length = 3\n")
    again = started(daemons, daemons.run("restart"))
    assert_line_limit(again.port, 3)


def test_a_readiness_descriptor_is_not_asked_of_a_later_restart_or_reload(
        daemons: DaemonDirectory) -> None:
    """Only the supervisor that started the daemon passed that descriptor; an
    operator's ``restart`` or ``reload`` has none."""
    readable, writable = os.pipe()
    try:
        try:
            result = subprocess.run(
                [REVERSERD, "start", "--port", "0", "--ready-fd", str(writable)],
                cwd=daemons.path, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                timeout=DEADLINE, check=False, pass_fds=(writable,))
        finally:
            os.close(writable)
        first = started(daemons, result)
        assert os.read(readable, 16) == b"\n"
    finally:
        os.close(readable)
    assert not port_is_free(first.port)
    second = reloaded(daemons, daemons.run("reload"), first.pid)
    assert daemons.pidfile.read_text().strip() == str(second)
    again = started(daemons, daemons.run("restart"))
    assert again.port != DEFAULT_PORT
    with connect(again.port) as sock:
        sock.sendall(b"ready\n")
        assert receive_exactly(sock, 6) == b"ydaer\n"
