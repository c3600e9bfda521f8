"""The name ps and pgrep show: reverserd, or the application's process_name."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

from tests.e2e.daemons import DaemonDirectory
from tests.e2e.support import DEADLINE


def comm(pid: int) -> str:
    return subprocess.run(["ps", "-o", "comm=", "-p", str(pid)], capture_output=True,
                          text=True, check=True, timeout=DEADLINE).stdout.strip()


def pgrep(name: str) -> set[int]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True,
                           check=False, timeout=DEADLINE).stdout
    return {int(pid) for pid in found.split()}


def test_a_daemon_started_with_python_m_is_still_reverserd(daemons: DaemonDirectory) -> None:
    result = subprocess.run([sys.executable, "-m", "reverserd", "start", "--port", "0"],
                            cwd=daemons.path, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=DEADLINE, check=False)
    daemons.remember(result.stdout)
    assert result.returncode == 0, result
    (pid,) = daemons.pids
    assert comm(pid) == "reverserd"
    assert pid in pgrep("reverserd")
    daemons.stop()


def test_the_application_names_its_process(reverserd, tmp_path: pathlib.Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "from reverserd import Application, Reverser, TCPServer\n"
        "application = Application('named', process_name='my-reverser-with-a-long-name')\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
    )
    process = reverserd("-n", "-y", str(app), command=[sys.executable, "-m", "reverserd"])
    process.wait_until_serving()
    assert comm(process.pid) == "my-reverser-wit", "the kernel keeps 15 bytes"
    assert process.pid in pgrep("my-reverser-wit")
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
