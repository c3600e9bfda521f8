"""``--loop``: the same service on either event loop, and a clear refusal without uvloop."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.daemons import DaemonDirectory
from tests.e2e.support import connect, receive_until_closed

pytest.importorskip("uvloop")  # make test installs the extra; both loops are then tested

WITHOUT_UVLOOP = ("import sys; sys.modules['uvloop'] = None; "
                  "from reverserd.cli import command; command()")


@pytest.mark.parametrize(("option", "loop"), [("asyncio", "asyncio"), ("uvloop", "uvloop"),
                                              ("auto", "uvloop")])
def test_each_loop_serves_and_is_named_in_the_log(daemons: DaemonDirectory, option: str,
                                                  loop: str) -> None:
    daemon = daemons.start("--loop", option)
    with connect(daemon.port) as sock:
        sock.sendall(b"plain ascii\nd\xc3\xa9j\xc3\xa0 vu\r\nquit\n")
        assert receive_until_closed(sock) == b"iicsa nialp\nuv \xc3\xa0j\xc3\xa9d\r\n"
    daemons.stop()
    assert f"application Reverser, {loop} loop" in daemons.log_lines()[0]


def test_uvloop_without_uvloop_installed_fails_before_anything_starts(
        daemons: DaemonDirectory) -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_UVLOOP, "start", "--port", "0",
                             "--loop", "uvloop"], cwd=daemons.path, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, check=False, timeout=30)
    assert result.returncode == 1, result
    assert result.stderr == ("reverserd: --loop uvloop: uvloop is not installed "
                             "(pip install 'reverserd[uvloop]')\n")
    assert not daemons.pidfile.exists() and not daemons.logfile.exists()


def test_auto_without_uvloop_serves_on_the_standard_loop(daemons: DaemonDirectory) -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_UVLOOP, "start", "--port", "0"],
                            cwd=daemons.path, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=False, timeout=30)
    assert result.returncode == 0, result
    daemons.remember(result.stdout)
    daemons.stop()
    assert "application Reverser, asyncio loop" in daemons.log_lines()[0]


def test_an_unknown_loop_is_a_usage_error(daemons: DaemonDirectory) -> None:
    result = daemons.run("start", "--loop", "trio")
    assert result.returncode == 2
    assert "argument --loop: invalid choice: 'trio'" in result.stderr
    assert result.stderr.count("\n") == 1

