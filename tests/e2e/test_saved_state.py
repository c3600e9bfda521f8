"""Saved state as an operator uses it: save at stop, run again from the file."""

from __future__ import annotations

import json
import pathlib
import re

from tests.e2e.daemons import DaemonDirectory
from tests.e2e.support import connect, receive_exactly, receive_until_closed

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
STATE = "Reverser-shutdown.json"


def send_lines(port: int, count: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"ab\n" * count + b"quit\n")
        assert receive_until_closed(sock) == b"ba\n" * count


def lines_served(status: str) -> int:
    match = re.search(r", (\d+) lines? served\n$", status)
    assert match, status
    return int(match.group(1))


def test_a_restart_from_the_state_file_keeps_counting(daemons: DaemonDirectory) -> None:
    first = daemons.start("--save")
    send_lines(first.port, 3)
    assert lines_served(daemons.run("status").stdout) == 3
    daemons.stop()
    assert re.search(r"stopped listening on 127\.0\.0\.1:\d+; 3 lines served in all\n",
                     daemons.log())
    assert f"saved the application's state to {daemons.path / STATE}\n" in daemons.log()
    saved = json.loads((daemons.path / STATE).read_text())
    assert saved["application"]["name"] == "Reverser"
    assert saved["application"]["services"][0]["state"]["lines_served"] == 3

    second = daemons.start("-f", STATE)  # the port it listened on, from the file
    assert second.pid != first.pid
    assert second.port == first.port
    send_lines(second.port, 2)
    assert lines_served(daemons.run("status").stdout) == 5
    daemons.stop()
    assert "5 lines served in all" in daemons.log()
    assert json.loads((daemons.path / STATE).read_text())[
        "application"]["services"][0]["state"]["lines_served"] == 5


def test_saving_follows_twistd_defaults(daemons: DaemonDirectory) -> None:
    daemons.start()
    daemons.stop()
    assert not (daemons.path / STATE).exists(), "the built-in app saves only with --save"
    daemons.start("--save")
    daemons.stop()
    before = (daemons.path / STATE).read_text()
    send = daemons.start("-f", STATE, "--no-save")
    send_lines(send.port, 1)
    daemons.stop()
    assert (daemons.path / STATE).read_text() == before, "--no-save keeps the file as it was"
    send = daemons.start("-f", STATE)
    send_lines(send.port, 1)
    daemons.stop()
    assert (daemons.path / STATE).read_text() != before, "-f saves by default"


def test_the_state_goes_to_the_run_directory(daemons: DaemonDirectory) -> None:
    rundir = daemons.path / "run"
    rundir.mkdir()
    daemons.start("--save", "--rundir", str(rundir))
    daemons.stop()
    assert (rundir / STATE).is_file()
    assert not (daemons.path / STATE).exists()
    assert [p.name for p in rundir.iterdir()] == [STATE], "no temporary file is left"


def test_a_state_file_naming_os_system_runs_nothing(daemons: DaemonDirectory) -> None:
    daemons.start("--save")
    daemons.stop()
    marker = daemons.path / "pwned"
    saved = json.loads((daemons.path / STATE).read_text())
    saved["application"]["services"][0] = {
        "type": "os.system", "name": "x", "state": {"command": f"touch {marker}"},
    }
    tampered = daemons.path / "tampered.json"
    tampered.write_text(json.dumps(saved))
    result = daemons.run("start", "-f", str(tampered))
    assert result.returncode == 1
    assert result.stderr == (
        f"reverserd: cannot load state file {tampered}: application.services[0]: 'type' "
        "names 'os.system', which is not a restorable Service (only @restorable classes "
        "of reverserd or of the file given with -y can be named)\n")
    assert not marker.exists()
    assert daemons.run("status").returncode == 3


def test_a_truncated_state_file_is_refused_and_left_alone(daemons: DaemonDirectory) -> None:
    daemons.start("--save")
    daemons.stop()
    path = daemons.path / STATE
    path.write_bytes(path.read_bytes()[:100])
    before = path.read_bytes(), path.stat().st_mtime_ns
    for verb in ("start", "run"):
        result = daemons.run(verb, "-f", STATE)
        assert result.returncode == 1
        assert re.fullmatch(rf"reverserd: cannot load state file {re.escape(str(path))}: "
                            r"not valid JSON \(.*\); is it truncated\?\n", result.stderr)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_an_application_file_with_classes_of_its_own_round_trips(
        daemons: DaemonDirectory) -> None:
    app = str(EXAMPLES / "reverse_app.py")
    env = {"REVERSE_APP_PORT": "0"}
    first = daemons.run("start", "-y", app, "--save", env=env)
    assert first.returncode == 0, first
    port = int(re.search(r"127\.0\.0\.1:(\d+)", first.stdout).group(1))  # type: ignore[union-attr]
    with connect(port) as sock:
        sock.sendall(b"shout\nab\n")
        assert receive_exactly(sock, 16) == b"OK, SHOUTING\nBA\n"
    daemons.stop()
    state = daemons.path / "reverse-shutdown.json"
    assert json.loads(state.read_text())["application"]["services"][0]["state"][
        "handler"] == "reverse.ShoutingReverser"

    alone = daemons.run("start", "-f", str(state))
    assert alone.returncode == 1
    assert "'handler' names 'reverse.ShoutingReverser', which is not a restorable" in \
        alone.stderr

    again = daemons.run("start", "-y", app, "-f", str(state))
    assert again.returncode == 0, again
    assert lines_served(daemons.run("status").stdout) == 2
    daemons.stop()

    other = daemons.run("start", "-y", str(EXAMPLES / "time_app.py"), "-f", str(state))
    assert other.returncode == 1
    assert other.stderr == (f"reverserd: cannot load state file {state}: it holds "
                            "application 'reverse', not 'time-reverser' of "
                            f"{EXAMPLES / 'time_app.py'}\n")


def test_saving_an_application_that_cannot_be_saved_fails_at_start(
        daemons: DaemonDirectory) -> None:
    app = daemons.path / "app.py"
    app.write_text(
        "from reverserd import Application, Reverser, Service, TCPServer\n"
        "class Plain(Service):\n"
        "    pass\n"
        "application = Application('plain')\n"
        "Plain().set_service_parent(application)\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
    )
    result = daemons.run("start", "-y", str(app), "--save")
    assert result.returncode == 1
    assert result.stderr == ("reverserd: service 'Plain' cannot be saved: its class Plain "
                             "is not @restorable\n")
    assert daemons.run("start", "-y", str(app)).returncode == 0
    daemons.stop()


def test_without_a_verb_a_state_file_starts_a_daemon_as_with_twistd(
        daemons: DaemonDirectory) -> None:
    first = daemons.start("--save")
    daemons.stop()
    result = daemons.run("-f", STATE)
    assert result.returncode == 0, result
    assert re.fullmatch(rf"reverserd started: pid \d+, listening on 127\.0\.0\.1:{first.port}\n",
                        result.stdout), result
    assert daemons.run("status").returncode == 0
    daemons.stop()
