"""``--listen DESCRIPTION``: tcp, tcp6 and unix listeners side by side, each
reached by the client an operator would use, and descriptions that are refused."""

from __future__ import annotations

import pathlib
import re
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Callable

import pytest

from tests.e2e.daemons import wait_until_dead
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    ReverserdProcess,
    port_is_free,
    receive_until_closed,
    wait_until,
)

# One line per listener at start; ``stopped listening on`` at stop does not match.
LISTENING_LINE = re.compile(r": listening on (.+)$")
TCP = re.compile(r"127\.0\.0\.1:(\d+)")
TCP6 = re.compile(r"\[::1\]:(\d+)")
STARTED_PID = re.compile(r"^reverserd started: pid (\d+)", re.MULTILINE)

# LF and CRLF line ends are both kept; text is reversed by character, not by byte.
REQUEST = "hello\r\nhéllo wörld\nplain\nquit\n".encode()
ANSWER = "olleh\r\ndlröw olléh\nnialp\n".encode()


def client(name: str) -> str:
    """A real client program, which ``make test`` installs."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: 'make test' installs it")
    return path


def talk_with(command: list[str], request: bytes = REQUEST) -> bytes:
    """What ``command`` (a client reading stdin) prints when fed ``request``."""
    result = subprocess.run(command, input=request, capture_output=True, timeout=DEADLINE,
                            check=False)
    assert result.returncode == 0, result
    return result.stdout


def nc_tcp(port: int, request: bytes = REQUEST) -> bytes:
    return talk_with([client("nc"), "-N", "127.0.0.1", str(port)], request)


def nc_unix(path: str | pathlib.Path, request: bytes = REQUEST) -> bytes:
    return talk_with([client("nc"), "-N", "-U", str(path)], request)


def socat_tcp6(port: int, request: bytes = REQUEST) -> bytes:
    # -t 5: after stdin ends, wait for the server's answers (it closes on quit)
    return talk_with([client("socat"), "-t", "5", "-", f"TCP6:[::1]:{port}"], request)


def listening(process: ReverserdProcess, count: int) -> list[str]:
    """The addresses of the first ``count`` ``listening on`` log lines, in order."""

    def found() -> list[str] | None:
        addresses = [match.group(1) for line in process.log
                     if (match := LISTENING_LINE.search(line))]
        if len(addresses) >= count:
            return addresses[:count]
        if process.popen.poll() is not None:
            raise AssertionError(f"reverserd exited ({process.popen.returncode}) after "
                                 f"{addresses}; log: {process.log}; stderr: "
                                 f"{process.stderr()}")
        return None

    return wait_until(found, f"{count} 'listening on' log lines")  # type: ignore[return-value]


def port_of(pattern: re.Pattern[str], address: str) -> int:
    match = pattern.fullmatch(address)
    assert match, f"{address!r} does not match {pattern.pattern}"
    return int(match.group(1))


def stop(process: ReverserdProcess) -> None:
    """A graceful stop, which must succeed."""
    process.signal(signal.SIGTERM)
    assert process.wait() == 0, process.stderr()


def run_cli(cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``reverserd ARGS`` expected to fail before serving, bounded in time."""
    return subprocess.run([REVERSERD, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=DEADLINE, stdin=subprocess.DEVNULL, check=False)


def assert_one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The single stderr line of a refused start, after checking the exit status."""
    assert result.returncode == status, result
    assert result.stderr.startswith("reverserd: "), result
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result
    assert "Traceback" not in result.stderr + result.stdout, result
    return result.stderr


def unix_socket_held_by_us(path: pathlib.Path) -> socket.socket:
    """A listening AF_UNIX socket of this test's own at ``path``: a live server."""
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(str(path))
    holder.listen()
    return holder


@pytest.fixture
def three(reverserd: Callable[..., ReverserdProcess],
          tmp_path: pathlib.Path) -> tuple[ReverserdProcess, list[str], pathlib.Path]:
    """One process serving tcp, tcp6 and unix listeners at once."""
    path = tmp_path / "three.sock"
    process = reverserd("--foreground", "--listen", "tcp:0", "--listen", "tcp6:0",
                        "--listen", f"unix:{path}", "--log-level", "debug")
    return process, listening(process, 3), path


def test_one_listening_line_per_listener_in_the_order_given(three) -> None:
    _, addresses, path = three
    port_of(TCP, addresses[0])
    port_of(TCP6, addresses[1])
    assert addresses[2] == f"unix:{path}"


def test_tcp_listener_answers_nc(three) -> None:
    _, addresses, _ = three
    assert nc_tcp(port_of(TCP, addresses[0])) == ANSWER


def test_tcp6_listener_answers_socat(three) -> None:
    _, addresses, _ = three
    assert socat_tcp6(port_of(TCP6, addresses[1])) == ANSWER


def test_tcp6_listener_answers_a_raw_ipv6_socket(three) -> None:
    _, addresses, _ = three
    port = port_of(TCP6, addresses[1])
    with socket.create_connection(("::1", port), timeout=DEADLINE) as sock:
        assert sock.family == socket.AF_INET6
        sock.sendall(REQUEST)
        assert receive_until_closed(sock) == ANSWER


def test_unix_listener_answers_nc_dash_u(three) -> None:
    _, _, path = three
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert nc_unix(path) == ANSWER


def test_unix_listener_answers_socat(three) -> None:
    _, _, path = three
    assert talk_with([client("socat"), "-t", "5", "-", f"UNIX-CONNECT:{path}"]) == ANSWER


def test_all_three_stop_gracefully_together(three) -> None:
    process, _, path = three
    stop(process)
    assert process.log[-1].endswith("stopped")
    assert not path.exists()


def test_tcp6_is_ipv6_only(reverserd) -> None:
    process = reverserd("--foreground", "--listen", "tcp6:0")
    (address,) = listening(process, 1)
    port = port_of(TCP6, address)
    assert socat_tcp6(port) == ANSWER
    assert port_is_free(port), "the IPv6 listener holds nothing on IPv4"
    with pytest.raises(ConnectionRefusedError), \
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE):
        pass


def test_escaped_colons_in_a_tcp6_interface(reverserd) -> None:
    process = reverserd("--foreground", "--listen", r"tcp6:0:interface=\:\:1")
    (address,) = listening(process, 1)
    assert socat_tcp6(port_of(TCP6, address)) == ANSWER


def test_port_and_interface_still_work_without_listen(reverserd) -> None:
    process = reverserd("--foreground", "--port", "0", "--interface", "127.0.0.1")
    (address,) = listening(process, 1)
    assert nc_tcp(port_of(TCP, address)) == ANSWER


def test_with_listen_the_port_option_is_not_served(reverserd,
                                                   tmp_path: pathlib.Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused = probe.getsockname()[1]
    path = tmp_path / "only.sock"
    process = reverserd("--foreground", "--port", str(unused), "--listen", f"unix:{path}")
    assert listening(process, 1) == [f"unix:{path}"]
    assert nc_unix(path) == ANSWER
    assert port_is_free(unused)
    stop(process)
    assert [match.group(1) for line in process.log
            if (match := LISTENING_LINE.search(line))] == [f"unix:{path}"]


@pytest.mark.parametrize(("options", "umask", "mode"), [
    ([], "077", 0o660),
    ([], "000", 0o660),
    ([":mode=600"], "077", 0o600),
    ([":mode=0666"], "077", 0o666),
])
def test_unix_socket_mode_is_exactly_as_asked_whatever_the_umask(
        reverserd, tmp_path: pathlib.Path, options: list[str], umask: str, mode: int) -> None:
    path = tmp_path / "mode.sock"
    process = reverserd("--foreground", "--umask", umask,
                        "--listen", f"unix:{path}{''.join(options)}")
    listening(process, 1)
    found = path.stat().st_mode
    assert stat.S_ISSOCK(found)
    assert oct(stat.S_IMODE(found)) == oct(mode)


def test_a_stale_socket_file_is_replaced_and_served(reverserd, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # closing leaves the file, as a killed server would
    assert stat.S_ISSOCK(path.stat().st_mode)
    process = reverserd("--foreground", "--listen", f"unix:{path}")
    assert listening(process, 1) == [f"unix:{path}"]
    assert nc_unix(path) == ANSWER


def test_a_socket_a_live_server_answers_on_is_refused_and_left_alone(
        reverserd, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "live.sock"
    with unix_socket_held_by_us(path) as holder:
        inode = path.stat().st_ino
        process = reverserd("--foreground", "--listen", f"unix:{path}")
        assert process.wait() == 1
        message = process.stderr()
        assert message.count("\n") == 1 and message.startswith("reverserd: "), message
        assert "address already in use" in message
        assert "Traceback" not in message
        assert path.stat().st_ino == inode, "the live server's socket file is untouched"
        holder.settimeout(DEADLINE)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as caller:
            caller.settimeout(DEADLINE)
            caller.connect(str(path))
            accepted, _ = holder.accept()
            accepted.close()


def test_a_regular_file_at_the_socket_path_is_refused_and_left_alone(
        reverserd, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("not a socket\n")
    process = reverserd("--foreground", "--listen", f"unix:{path}")
    assert process.wait() == 1
    message = process.stderr()
    assert message.count("\n") == 1 and message.startswith("reverserd: "), message
    assert "Traceback" not in message
    assert path.read_text() == "not a socket\n"
    assert stat.S_ISREG(path.stat().st_mode)


def test_the_socket_file_is_removed_at_a_graceful_stop(reverserd,
                                                       tmp_path: pathlib.Path) -> None:
    path = tmp_path / "gone.sock"
    process = reverserd("--foreground", "--listen", f"unix:{path}")
    listening(process, 1)
    assert path.exists()
    stop(process)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("descriptions", [
    ["foo:1"],
    ["tcp:0:colour=red"],
    ["tcp:70000"],
    ["unix:{tmp}/x:mode=999"],
    ["tcp:5555", "tcp:5555"],
])
def test_a_bad_description_is_one_line_quoting_it_and_exit_2(
        tmp_path: pathlib.Path, descriptions: list[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    given = [description.format(tmp=work) for description in descriptions]
    result = run_cli(work, "--foreground", *(arg for d in given for arg in ("--listen", d)))
    message = assert_one_line(result, 2)
    assert given[-1] in message
    assert list(work.iterdir()) == []


def test_a_port_in_use_is_one_line_exit_1_and_leaves_no_socket_file(
        tmp_path: pathlib.Path) -> None:
    path = tmp_path / "first.sock"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(tmp_path, "--foreground", "--listen", f"unix:{path}",
                         "--listen", f"tcp:{port}")
    message = assert_one_line(result, 1)
    assert "address already in use" in message
    assert f"127.0.0.1:{port}" in message
    assert list(tmp_path.iterdir()) == [], "the unix socket file is not left behind"


def test_a_config_file_listen_list_with_a_path_relative_to_the_file(
        reverserd, tmp_path: pathlib.Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "reverserd.toml"
    config.write_text('listen = ["tcp:0", "unix:sock"]\n')
    process = reverserd("--config", str(config), "--foreground")
    tcp, unix = listening(process, 2)
    assert unix == f"unix:{etc / 'sock'}"
    assert nc_tcp(port_of(TCP, tcp)) == ANSWER
    assert nc_unix(etc / "sock") == ANSWER
    assert not (tmp_path / "sock").exists()
    stop(process)
    assert not (etc / "sock").exists()


def start_daemon(daemons, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """``reverserd start ARGS``, checked to have started; its output and pid (killed at
    teardown if the test fails)."""
    started = daemons.run("start", *args)
    found = STARTED_PID.search(started.stdout)
    if found:
        daemons.pids.add(int(found.group(1)))
    assert started.returncode == 0, started
    assert found, started
    return started, int(found.group(1))


def test_a_daemon_with_two_listeners_lists_both_in_status(daemons) -> None:
    path = daemons.path / "daemon.sock"
    started, pid = start_daemon(daemons, "--listen", "tcp:0", "--listen", f"unix:{path}")
    tcp = TCP.search(started.stdout)
    assert tcp, started
    port = int(tcp.group(1))
    assert f"unix:{path}" in started.stdout

    status = daemons.run("status")
    assert status.returncode == 0, status
    assert status.stdout.startswith(f"reverserd running: pid {pid}, "), status
    assert f"127.0.0.1:{port}" in status.stdout
    assert f"unix:{path}" in status.stdout

    assert nc_tcp(port) == ANSWER
    assert nc_unix(path) == ANSWER
    daemons.stop()
    wait_until_dead(pid)
    assert not path.exists()
    assert not daemons.pidfile.exists()
    assert "Traceback" not in daemons.log()


def test_start_names_listeners_whose_labels_hold_spaces(daemons) -> None:
    path = daemons.path / "with space.sock"
    started, _ = start_daemon(daemons, "--listen", "haproxy:tcp:0", "--listen", f"unix:{path}")
    assert re.search(rf"listening on proxied 127\.0\.0\.1:\d+, unix:{re.escape(str(path))}$",
                     started.stdout.strip()), started.stdout
    assert daemons.stop().returncode == 0
    assert not path.exists()
