"""sd_notify and s6 readiness, against real sockets and pipes."""

from __future__ import annotations

import fcntl
import logging
import os
import pathlib
import socket
from collections.abc import Iterator

import pytest

from reverserd import notify


@pytest.fixture
def systemd(tmp_path: pathlib.Path) -> Iterator[socket.socket]:
    """systemd's end: a datagram socket at ``tmp_path/notify``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listening:
        listening.bind(str(tmp_path / "notify"))
        listening.settimeout(5)
        yield listening


def test_the_environment_is_read_once_and_cleared(tmp_path: pathlib.Path,
                                                   systemd: socket.socket) -> None:
    environ = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "3000000",
               "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = notify.notifier_from_environment(environ)
    assert environ == {"PATH": "/bin"}
    assert notifier is not None and notifier.watchdog_interval == 1.5
    try:
        assert notifier.fd is not None
        assert fcntl.fcntl(notifier.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.get_blocking(notifier.fd) is False
        notifier.ready("listening on 127.0.0.1:2323")
        assert systemd.recv(4096) == b"READY=1\nSTATUS=listening on 127.0.0.1:2323"
    finally:
        notifier.close()
    assert notify.notifier_from_environment(environ) is None


def test_a_process_other_than_the_one_started_names_itself(
        tmp_path: pathlib.Path, systemd: socket.socket) -> None:
    notifier = notify.Notifier(str(tmp_path / "notify"), None, started_as=os.getpid() + 1)
    notifier.ready("listening on x")
    assert systemd.recv(4096) == f"READY=1\nSTATUS=listening on x\nMAINPID={os.getpid()}".encode()
    notifier.close()


def test_an_abstract_address(tmp_path: pathlib.Path) -> None:
    name = f"reverserd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listening:
        listening.bind("\0" + name)
        listening.settimeout(5)
        notifier = notify.notifier_from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier is not None
        notify.Supervision(notifier).stopping("stopping: 3 connections open")
        assert listening.recv(4096) == b"STOPPING=1\nSTATUS=stopping: 3 connections open"
        notifier.close()


@pytest.mark.parametrize(("environ", "interval"), [
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),  # someone else's watchdog
    ({"WATCHDOG_USEC": "1000000"}, 0.5),
    ({"WATCHDOG_USEC": "10"}, notify.MIN_WATCHDOG_INTERVAL),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "1e6"}, None),
    ({"WATCHDOG_USEC": "+1000000"}, None),
    ({"WATCHDOG_USEC": " 1000000"}, None),
    ({"WATCHDOG_USEC": "1_000_000"}, None),
    ({"WATCHDOG_USEC": "\uff11\uff10\uff10\uff10"}, None),  # full-width digits
    ({"WATCHDOG_USEC": "9" * 30}, None),
    ({}, None)])
def test_the_watchdog_interval(tmp_path: pathlib.Path, systemd: socket.socket,
                               environ: dict[str, str], interval: float | None) -> None:
    notifier = notify.notifier_from_environment(
        {"NOTIFY_SOCKET": str(tmp_path / "notify"), **environ})
    assert notifier is not None
    assert notifier.watchdog_interval == interval
    notifier.close()


@pytest.mark.parametrize("address", ["relative/path", "x" * 200, "/" + "x" * 107])
def test_an_impossible_address_is_ignored_with_a_warning(
        address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert notify.notifier_from_environment({"NOTIFY_SOCKET": address}) is None
    assert capsys.readouterr().err.startswith("reverserd: warning: ignoring NOTIFY_SOCKET")


def test_a_failed_send_warns_once_and_never_raises(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listening.bind(str(tmp_path / "notify"))
    supervision = notify.Supervision(notify.Notifier(str(tmp_path / "notify"), 1000, 1))
    listening.close()  # systemd went away
    with caplog.at_level(logging.DEBUG, logger="reverserd.notify"):
        for _ in range(3):
            supervision.ping()
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0].getMessage()
    missing = notify.Notifier(str(tmp_path / "nowhere"), None, 1)
    assert missing.fd is None and missing.send("READY=1") is False


def test_a_full_queue_drops_the_message_instead_of_blocking(
        tmp_path: pathlib.Path, systemd: socket.socket) -> None:
    notifier = notify.Notifier(str(tmp_path / "notify"), None, 1)
    sent = [notifier.send("WATCHDOG=1") for _ in range(10_000)]  # nobody reads them
    assert sent[0] and not sent[-1]
    notifier.close()


def test_status_is_one_line_and_capped() -> None:
    assert notify._status("a\nb") == "STATUS=a b"
    long = notify._status("é" * 2000)
    assert len(long.encode()) <= len("STATUS=") + notify.MAX_STATUS_BYTES
    assert long.endswith("...")


def test_the_ready_descriptor_gets_a_newline_then_is_closed() -> None:
    read_end, write_end = os.pipe()
    ready = notify.ReadyDescriptor(write_end)
    assert not os.get_inheritable(write_end)
    notify.Supervision(ready_descriptor=ready).ready(("127.0.0.1:1",))
    assert os.read(read_end, 16) == b"\n"
    assert os.read(read_end, 16) == b""  # closed: s6 sees end of file
    ready.ready()  # a second time is nothing
    os.close(read_end)


def test_a_full_readiness_pipe_costs_a_warning_not_a_hang(
        caplog: pytest.LogCaptureFixture) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass  # nobody reads: the pipe is full
    os.set_blocking(write_end, True)
    with caplog.at_level(logging.WARNING, logger="reverserd.notify"):
        notify.ReadyDescriptor(write_end).ready()
    assert "cannot write readiness to file descriptor" in caplog.text
    os.close(read_end)


def test_the_ready_descriptor_is_checked() -> None:
    read_end, write_end = os.pipe()
    try:
        notify.check_ready_fd(write_end)
        with pytest.raises(ValueError, match="open for reading only"):
            notify.check_ready_fd(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    with pytest.raises(ValueError, match=f"file descriptor {write_end} is not open"):
        notify.check_ready_fd(write_end)


def test_nothing_asked_nothing_done() -> None:
    supervision = notify.Supervision()
    supervision.ready(("a",))
    supervision.ping()
    supervision.stopping("x")
    assert supervision.keep_fds() == [] and supervision.watchdog_interval is None
