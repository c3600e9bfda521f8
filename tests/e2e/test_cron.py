"""What cron does with scripts/reverserd.cron: bring a killed daemon back."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess

import pytest

from tests.e2e.daemons import DaemonDirectory, wait_until_dead
from tests.e2e.support import DEADLINE, REVERSERD, connect, port_is_free, receive_until_closed

CRONTAB = pathlib.Path(__file__).parents[2] / "scripts" / "reverserd.cron"
DEFAULT_PORT = 2323


def read_crontab() -> tuple[dict[str, str], str]:
    """The crontab's variable assignments and its one job's command."""
    variables, commands = {}, []
    for line in CRONTAB.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"([A-Z_]+)=(\S+)", line)
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        fields = line.split(None, 5)
        assert fields[:5] == ["*"] * 5, line
        commands.append(fields[5])
    assert len(commands) == 1
    return variables, commands[0]


def run_as_cron(command: str, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a crontab command the way cron does: /bin/sh -c, a bare environment."""
    environment = {"PATH": "/usr/bin:/bin", "HOME": "/", "SHELL": "/bin/sh", **variables}
    return subprocess.run(["/bin/sh", "-c", command], env=environment, cwd="/",
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=DEADLINE, check=False)


def test_the_crontab_uses_absolute_paths() -> None:
    variables, command = read_crontab()
    assert all(value.startswith("/") for value in variables.values())
    assert all(f"${name}" in command for name in variables)
    assert "flock" not in command and command.endswith(">/dev/null")


def test_cron_brings_a_killed_daemon_back_on_the_same_port(
    daemons: DaemonDirectory,
) -> None:
    if not port_is_free(DEFAULT_PORT):
        pytest.skip(f"port {DEFAULT_PORT}, which the crontab's daemon uses, is taken")
    variables, command = read_crontab()
    variables.update(REVERSERD=REVERSERD, REVERSERD_HOME=str(daemons.path))

    first = run_as_cron(command, variables)
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    pid = int(daemons.pidfile.read_text())
    daemons.pids.add(pid)
    status = daemons.run("status")
    assert f"pid {pid}, listening on 127.0.0.1:{DEFAULT_PORT}, up " in status.stdout

    quiet = run_as_cron(command, variables)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert int(daemons.pidfile.read_text()) == pid

    os.kill(pid, signal.SIGKILL)
    wait_until_dead(pid)
    revived = run_as_cron(command, variables)
    assert revived.returncode == 0
    assert revived.stderr.startswith(f"reverserd: removing stale pidfile {daemons.pidfile} ")
    new_pid = int(daemons.pidfile.read_text())
    daemons.pids.add(new_pid)
    assert new_pid != pid
    with connect(DEFAULT_PORT) as sock:
        sock.sendall(b"back again\nquit\n")
        assert receive_until_closed(sock) == b"niaga kcab\n"
    status = daemons.run("status")
    assert f"pid {new_pid}, listening on 127.0.0.1:{DEFAULT_PORT}, up " in status.stdout
    daemons.stop()
