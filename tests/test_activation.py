"""Sockets passed by systemd: taken only by the process named, checked, variables gone."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from reverserd import activation
from reverserd.errors import UserError


@pytest.fixture
def fd3() -> Iterator[socket.socket]:
    """Descriptor 3 made a listening TCP socket, as a supervisor would pass it."""
    saved = os.dup(3) if _is_open(3) else None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        os.dup2(sock.fileno(), 3)
        os.set_inheritable(3, True)
        try:
            yield sock
        finally:
            if saved is None:
                os.close(3)
            else:
                os.dup2(saved, 3)
                os.close(saved)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def environment(pid: int, count: str, names: str | None = None) -> dict[str, str]:
    found = {"LISTEN_PID": str(pid), "LISTEN_FDS": count}
    if names is not None:
        found["LISTEN_FDNAMES"] = names
    return found


def test_sockets_meant_for_another_process_are_not_taken(fd3: socket.socket) -> None:
    assert activation._take(environment(os.getpid() + 1, "1")) == []


def test_zero_sockets_passed_is_none(fd3: socket.socket) -> None:
    assert activation._take(environment(os.getpid(), "0")) == []


@pytest.mark.parametrize("count", ["x", "-1", "1025", "9" * 50])
def test_a_bad_count_is_one_line(fd3: socket.socket, count: str) -> None:
    with pytest.raises(UserError, match="is not a number of sockets from 0 to 1024"):
        activation._take(environment(os.getpid(), count))


def test_a_passed_socket_is_named_made_close_on_exec_and_non_blocking(
        fd3: socket.socket) -> None:
    [passed] = activation._take(environment(os.getpid(), "1", "web"))
    assert (passed.index, passed.name) == (0, "web")
    assert not os.get_inheritable(3)
    assert not passed.socket.getblocking()
    assert passed.socket.getsockname() == fd3.getsockname()
    passed.socket.detach()  # the fixture closes descriptor 3


def test_a_socket_that_is_not_listening_is_refused(fd3: socket.socket) -> None:
    with socket.socket() as idle:
        os.dup2(idle.fileno(), 3)
        with pytest.raises(UserError, match="is not a listening stream socket"):
            activation._take(environment(os.getpid(), "1"))


def test_the_variables_are_removed_once_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activation, "_taken", None)
    for name, value in environment(os.getpid() + 1, "1", "web").items():
        monkeypatch.setenv(name, value)
    assert activation.inherited_sockets() == []
    assert not [name for name in os.environ if name.startswith("LISTEN_")]
