"""`-y FILE` runs any application file; every way it can be wrong is one line."""

from __future__ import annotations

import pathlib
import re
import signal
import socket
import subprocess

import pytest

from tests.e2e.support import DEADLINE, REVERSERD, connect, receive_until_closed, wait_until


def run_with(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([REVERSERD, "-n", "-y", str(path)], capture_output=True,
                          text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (None, r"cannot load .*/app\.py: no such file"),
        ("x = (\n", r".*/app\.py:1: syntax error: '\(' was never closed"),
        ("import no_such_module_here\n",
         r"cannot load .*/app\.py: ModuleNotFoundError: No module named 'no_such_module_here'"),
        ("x = 1\n", r".*/app\.py defines no module-level 'application'"),
        ("application = 'reverser'\n",
         r"'application' in .*/app\.py is a str, not a reverserd\.Application"),
    ],
    ids=["missing", "syntax-error", "import-error", "no-application", "wrong-type"],
)
def test_bad_application_files_are_one_line_and_exit_1(tmp_path: pathlib.Path,
                                                       source: str | None,
                                                       message: str) -> None:
    path = tmp_path / "app.py"
    if source is not None:
        path.write_text(source)
    result = run_with(path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert re.fullmatch(f"reverserd: {message}\n", result.stderr), result.stderr


def test_application_failing_to_start_is_one_line_and_exit_1(reverserd, tmp_path) -> None:
    app = tmp_path / "broken.py"
    app.write_text(
        "from reverserd import Application, Service\n"
        "class Broken(Service):\n"
        "    async def start_service(self):\n"
        "        raise OSError('disk on fire')\n"
        "application = Application('broken')\n"
        "Broken().set_service_parent(application)\n"
    )
    process = reverserd("-n", "-y", str(app))
    assert process.wait() == 1
    assert process.stderr() == ("reverserd: application broken failed to start: "
                                "OSError: disk on fire\n")
    process.wait_for_log(r"ERROR reverserd\.runner: application broken failed to start")


def test_application_failing_to_stop_is_one_line_and_exit_1(reverserd, tmp_path) -> None:
    app = tmp_path / "stubborn.py"
    app.write_text(
        "from reverserd import Application, Reverser, Service, TCPServer\n"
        "class Stubborn(Service):\n"
        "    async def stop_service(self):\n"
        "        await super().stop_service()\n"
        "        raise RuntimeError('will not stop')\n"
        "application = Application('stubborn')\n"
        "Stubborn().set_service_parent(application)\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
    )
    process = reverserd("-n", "-y", str(app))
    process.wait_until_serving()
    process.signal(signal.SIGTERM)
    assert process.wait() == 1
    assert process.stderr() == ("reverserd: application stubborn did not stop cleanly: "
                                "RuntimeError: will not stop\n")
    process.wait_for_log(r"stopped listening on 127\.0\.0\.1:")
    process.wait_for_log(r"RuntimeError: will not stop")
    assert process.log[-1].endswith("INFO reverserd.runner: stopped")


def test_an_application_with_two_ports(reverserd, tmp_path) -> None:
    app = tmp_path / "two.py"
    app.write_text(
        "from reverserd import Application, Reverser, TCPServer\n"
        "application = Application('two')\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
    )
    process = reverserd("-n", "-y", str(app))

    def both_ports() -> list[int]:
        ports = [int(line.rsplit(":", 1)[1]) for line in process.log if "listening on" in line]
        return ports if len(ports) == 2 else []

    ports = wait_until(both_ports, "two listening ports")
    assert len(set(ports)) == 2
    for port in ports:
        with connect(port) as sock:
            sock.sendall(b"ab\nquit\n")
            assert receive_until_closed(sock) == b"ba\n"


def test_a_syntax_error_in_a_module_beside_it_names_that_module(tmp_path) -> None:
    (tmp_path / "services.py").write_text("def broken(:\n    pass\n")
    path = tmp_path / "app.py"
    path.write_text("import services\n")
    result = run_with(path)
    assert result.returncode == 1
    assert result.stderr == (f"reverserd: {tmp_path / 'services.py'}:1: syntax error: "
                             "invalid syntax\n")


@pytest.mark.parametrize("verb", ["start", "restart"])
def test_an_application_file_runs_as_a_daemon(daemons, tmp_path, verb: str) -> None:
    (tmp_path / "services.py").write_text(
        "from reverserd import Reverser, TCPServer\n"
        "class Upper(Reverser):\n"
        "    def line_received(self, line):\n"
        "        return super().line_received(line).upper()\n"
        "def upper_service():\n"
        "    return TCPServer(0, Upper)\n"
    )
    (tmp_path / "app.py").write_text(
        "from reverserd import Application\n"
        "from services import upper_service\n"
        "application = Application('upper')\n"
        "upper_service().set_service_parent(application)\n"
    )
    result = daemons.run(verb, "-y", "app.py")
    assert result.returncode == 0, result
    port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)\n", result.stdout).group(1))
    with connect(port) as sock:
        sock.sendall(b"abc\nquit\n")
        assert receive_until_closed(sock) == b"CBA\n"
    assert "application upper" in daemons.log()
    restarted = daemons.run("restart", "-y", "app.py")
    assert restarted.returncode == 0, restarted
    assert re.search(r"^reverserd stopped: pid \d+\nreverserd started: pid \d+, listening on ",
                     restarted.stdout), restarted.stdout
    daemons.stop()


@pytest.mark.parametrize(
    ("source", "message"),
    [(None, "cannot load {path}: no such file"),
     ("application = 3\n", "'application' in {path} is a int, not a reverserd.Application")],
    ids=["missing", "wrong-type"],
)
def test_a_bad_application_file_fails_start_with_one_line(daemons, tmp_path, source,
                                                          message: str) -> None:
    path = tmp_path / "app.py"
    if source is not None:
        path.write_text(source)
    result = daemons.run("start", "-y", "app.py")
    assert result.returncode == 1
    assert result.stderr == "reverserd: " + message.format(path="app.py") + "\n"
    assert not daemons.pidfile.exists()


def test_an_application_file_listens_where_its_descriptions_say(reverserd, tmp_path) -> None:
    app = tmp_path / "listeners.py"
    socket_path = tmp_path / "app.sock"
    app.write_text(
        "from reverserd import Application, Reverser, TCPServer, listen\n"
        "application = Application('listeners')\n"
        "TCPServer(0, Reverser).set_service_parent(application)\n"
        f"listen({'unix:' + str(socket_path) + ':mode=600'!r}, Reverser)"
        ".set_service_parent(application)\n"
        "listen('tcp6:0', Reverser).set_service_parent(application)\n"
    )
    process = reverserd("-n", "-y", str(app))
    port = process.wait_until_serving()
    process.wait_for_log(rf"listening on unix:{re.escape(str(socket_path))}$")
    ipv6_port = int(process.wait_for_log(r"listening on \[::1\]:(\d+)$").group(1))
    assert oct(socket_path.stat().st_mode & 0o777) == oct(0o600)
    clients = [connect(port)]
    unix_client = socket.socket(socket.AF_UNIX)
    unix_client.settimeout(DEADLINE)
    unix_client.connect(str(socket_path))
    ipv6_client = socket.create_connection(("::1", ipv6_port), timeout=DEADLINE)
    clients += [unix_client, ipv6_client]
    for number, client in enumerate(clients):
        with client:
            client.sendall(f"line {number}\nquit\n".encode())
            assert receive_until_closed(client) == f"{number} enil\n".encode()
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert not socket_path.exists()
