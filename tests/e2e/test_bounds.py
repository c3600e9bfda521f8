"""Every input has a bound: the real ``reverserd`` refuses what is out of it
with one line and the right exit status, at once, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
from collections.abc import Callable

import pytest

from tests.e2e.daemons import DaemonDirectory
from tests.e2e.support import ReverserdProcess

#: A value just out of each numeric option's range, and the range the message names.
OUT_OF_RANGE = [
    ("--port", "65536", "from 0 to 65535"),
    ("--backlog", "0", "from 1 to 65535"),
    ("--backlog", "65536", "from 1 to 65535"),
    ("--max-line-length", "16777217", "from 1 to 16777216"),
    ("--shutdown-timeout", "86401", "0 to 86400"),
    ("--start-timeout", "0", "above 0, up to 86400"),
    ("--start-timeout", "1e308", "above 0, up to 86400"),
    ("--start-timeout", "nan", "above 0, up to 86400"),
    ("--stop-timeout", "inf", "0 to 86400"),
    ("--stop-timeout", "-1", "0 to 86400"),
    ("--log-max-bytes", str(2**40 + 1), "from 0 to 1099511627776"),
    ("--log-backups", "0", "from 1 to 1000"),
    ("--log-backups", "1001", "from 1 to 1000"),
    ("--workers", "257", "from 1 to 256"),
    ("--worker-timeout", "0.5", "1 to 86400"),
    ("--max-connections", "0", "from 1 to 1000000"),
    ("--max-connections", "1000001", "from 1 to 1000000"),
    ("--max-connections-per-peer", "1000001", "from 0 to 1000000"),
    ("--compact-after", "-1", "from 0 to 1000000"),
    ("--compact-after", "1000001", "from 0 to 1000000"),
    ("--idle-timeout", "0.5", "0 (off) or 1 to 86400"),
    ("--idle-timeout", "86401", "0 (off) or 1 to 86400"),
    ("--write-timeout", "0", "1 to 86400"),
    ("--umask", "1000", "from 000 to 777"),
]


def assert_one_line(result: subprocess.CompletedProcess[str], status: int,
                    message: str) -> None:
    assert (result.returncode, result.stdout, result.stderr) == (
        status, "", f"reverserd: {message}\n"), result


def assert_nothing_started(daemons: DaemonDirectory, *keep: str) -> None:
    leftovers = {path.name for path in daemons.path.iterdir()} - set(keep)
    assert not leftovers & {"reverserd.pid", "reverserd.pid.lock", "reverserd.pid.state"}, \
        leftovers


@pytest.mark.parametrize(("option", "value", "span"), OUT_OF_RANGE,
                         ids=[f"{option}={value}" for option, value, _ in OUT_OF_RANGE])
def test_a_number_out_of_range_is_one_line_exit_2(daemons: DaemonDirectory, option: str,
                                                  value: str, span: str) -> None:
    result = daemons.run("start", "--port", "0", option, value)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert re.fullmatch(rf"reverserd: argument (-\w/)?{re.escape(option)}: expected .*"
                        rf"{re.escape(span)}, got '{re.escape(value)}'\n", result.stderr), result
    assert_nothing_started(daemons)


def test_the_same_range_holds_in_the_config_file(daemons: DaemonDirectory) -> None:
    config = daemons.path / "reverserd.toml"
    config.write_text("port = 0\nstart-timeout = 1e308\n")
    assert_one_line(daemons.run("--config", str(config), "start"), 2,
                    f"{config}: key 'start-timeout': expected a number of seconds, above 0, "
                    "up to 86400, got '1e+308'")
    assert_nothing_started(daemons, "reverserd.toml")


def test_every_bound_is_accepted(daemons: DaemonDirectory) -> None:
    """The highest value of each range is valid: ``status`` (nothing runs) says so."""
    result = daemons.run(
        "status", "--port", "65535", "--backlog", "65535", "--max-line-length", "16777216",
        "--shutdown-timeout", "86400", "--start-timeout", "86400", "--stop-timeout", "86400",
        "--log-max-bytes", str(2**40), "--log-backups", "1000", "--workers", "256",
        "--worker-timeout", "86400", "--max-connections", "1000000",
        "--max-connections-per-peer", "1000000", "--idle-timeout", "0",
        "--compact-after", "1000000", "--write-timeout", "86400",
        "--interface", ".".join(["a" * 63] * 3 + ["a" * 61]))
    assert (result.returncode, result.stderr) == (3, ""), result


def test_help_shows_the_ranges(daemons: DaemonDirectory) -> None:
    result = daemons.run("--help")
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    for shown in ("--max-connections N at this many", "(1 to 1000000; default: 10000)",
                  "(0 (off) or 1 to 86400; default: 300)", "(1 to 65535; default: 1024)",
                  "(above 0, up to 86400; default: 10)",
                  "limits (per serving process; with --workers, per worker):"):
        assert shown in text


def test_a_64_character_interface_label_is_one_line_exit_2(daemons: DaemonDirectory) -> None:
    label = "a" * 64
    result = daemons.run("start", "--port", "0", "--interface", f"{label}.example")
    assert_one_line(result, 2, "argument --interface: expected an IP address or a host name "
                    "(labels of 1 to 63 letters, digits or '-', 253 characters in all), got "
                    f"'{'a' * 60}'... (72 characters)")
    assert_nothing_started(daemons)


def test_the_backlog_reaches_the_listening_socket(
        reverserd: Callable[..., ReverserdProcess]) -> None:
    server = reverserd("--foreground", "--port", "0", "--backlog", "7")
    port = server.wait_until_serving()
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                               text=True, check=True).stdout.split()
    assert listening[0] == "LISTEN" and listening[2] == "7", listening  # Send-Q: the backlog


def test_a_config_file_that_is_a_fifo_is_refused_at_once(daemons: DaemonDirectory) -> None:
    fifo = daemons.path / "reverserd.toml"
    os.mkfifo(fifo)
    began = time.monotonic()
    result = daemons.run("--config", str(fifo), "start", timeout=10)
    assert time.monotonic() - began < 10
    assert_one_line(result, 1, f"cannot read config file {fifo}: it is a FIFO")
    assert_nothing_started(daemons, "reverserd.toml")


def test_a_config_file_over_1_mb_is_refused(daemons: DaemonDirectory) -> None:
    config = daemons.path / "reverserd.toml"
    config.write_text("port = 0\n" + "#" * (1 << 20) + "\n")
    assert_one_line(daemons.run("--config", str(config), "start"), 1,
                    f"cannot read config file {config}: it is larger than 1048576 bytes")
    assert_nothing_started(daemons, "reverserd.toml")


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000, "{a=" * 5000 + "1" + "}" * 5000],
                         ids=["arrays", "tables"])
def test_a_config_file_nested_5000_deep_is_one_line_exit_2(daemons: DaemonDirectory,
                                                           value: str) -> None:
    config = daemons.path / "reverserd.toml"
    config.write_text(f"port = {value}\n")
    assert_one_line(daemons.run("--config", str(config), "start"), 2,
                    f"{config}: not valid TOML: nested too deeply")
    assert_nothing_started(daemons, "reverserd.toml")


def test_a_long_string_in_the_config_file_is_one_line_exit_2(daemons: DaemonDirectory) -> None:
    config = daemons.path / "reverserd.toml"
    config.write_text(f"port = 0\npidfile = '{'p' * 900_000}'\n")
    assert_one_line(daemons.run("--config", str(config), "start"), 2,
                    f"{config}: key 'pidfile': expected a path of 1 to 4096 bytes without "
                    f"NUL, got '{'p' * 60}'... (900000 characters)")
    assert_nothing_started(daemons, "reverserd.toml")


def saved_reverser(port: int = 2323, **changes: object) -> dict[str, object]:
    server = {"type": "reverserd.TCPServer", "name": "reverser",
              "state": {"port": port, "interface": "127.0.0.1", "backlog": 128,
                        "handler": "reverserd.Reverser", "max_line_length": 16384,
                        "shutdown_timeout": 5.0, "lines_served": 0}}
    application = {"name": "Reverser", "uid": None, "gid": None, "process_name": None,
                   "services": [server], **changes}
    return {"format": "reverserd-state", "version": 1, "application": application}


def test_a_state_file_over_10_mb_is_refused(daemons: DaemonDirectory) -> None:
    path = daemons.path / "Reverser-shutdown.json"
    path.write_text(json.dumps(saved_reverser(0)) + " " * (10 << 20))
    assert_one_line(daemons.run("start", "-f", str(path)), 1,
                    f"cannot load state file {path}: it is larger than 10485760 bytes")
    assert_nothing_started(daemons, path.name)


def test_a_9_mb_string_in_a_state_file_is_one_line(daemons: DaemonDirectory) -> None:
    path = daemons.path / "Reverser-shutdown.json"
    path.write_text(json.dumps(saved_reverser(0, name="n" * (9 << 20))))
    assert_one_line(daemons.run("start", "-f", str(path)), 1,
                    f"cannot load state file {path}: application: 'name' must be a string "
                    f"of at most 255 characters, not \"{'n' * 60}\"... (9437184 characters)")
    assert_nothing_started(daemons, path.name)


def test_a_state_file_that_is_a_fifo_is_refused_at_once(daemons: DaemonDirectory) -> None:
    fifo = daemons.path / "Reverser-shutdown.json"
    os.mkfifo(fifo)
    assert_one_line(daemons.run("start", "-f", str(fifo), timeout=10), 1,
                    f"cannot load state file {fifo}: it is a FIFO")
    assert_nothing_started(daemons, fifo.name)


DEEP_APP = textwrap.dedent("""\
    from reverserd import Application, MultiService, Reverser, TCPServer

    application = Application("deep")
    parent = application
    for level in range({depth}):
        group = MultiService()
        group.name = f"g{{level}}"
        group.set_service_parent(parent)
        parent = group
    TCPServer(0, Reverser).set_service_parent(parent)
""")


@pytest.mark.parametrize("depth", [65, 3000])
def test_a_tree_too_deep_to_save_fails_at_start_with_one_line(daemons: DaemonDirectory,
                                                              depth: int) -> None:
    app = daemons.path / "deep.py"
    app.write_text(DEEP_APP.format(depth=depth))
    result = daemons.run("start", "-y", str(app), "--save")
    assert_one_line(result, 1, "service 'g64' cannot be saved: services nested more than 64 "
                    "deep could not be restored")
    assert_nothing_started(daemons, "deep.py", "reverserd.log")


def test_a_tree_64_deep_is_saved_at_stop_and_runs_again(daemons: DaemonDirectory) -> None:
    app = daemons.path / "deep.py"
    app.write_text(DEEP_APP.format(depth=63))
    started = daemons.run("start", "-y", str(app), "--save")
    assert started.returncode == 0, started
    daemons.stop()
    saved = daemons.path / "deep-shutdown.json"
    again = daemons.run("start", "-y", str(app), "-f", str(saved))
    assert again.returncode == 0, again
    daemons.stop()
