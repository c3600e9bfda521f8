"""The listening socket ``start_server`` gets on the standard loop: what it accepts
knows its family and type without converting the kernel's numbers again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import socket
import tempfile
from collections.abc import Iterator

import pytest

from reverserd import accepting


@contextlib.contextmanager
def listener(family: socket.AddressFamily) -> Iterator[tuple[socket.socket, object]]:
    """A bound, listening socket of ``family`` and the address to reach it at."""
    with tempfile.TemporaryDirectory() as directory:
        # TCP named as the server's own getaddrinfo names it: asyncio sets TCP_NODELAY then
        proto = 0 if family == socket.AF_UNIX else socket.IPPROTO_TCP
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        with sock:
            if family == socket.AF_UNIX:
                address: object = str(pathlib.Path(directory, "socket"))
                sock.bind(address)
            else:
                sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
                address = sock.getsockname()[:2]
            sock.listen(8)
            yield sock, address


def conversions(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every number ``socket`` turns into an enum member from now on."""
    made: list[object] = []
    convert = socket._intenum_converter  # type: ignore[attr-defined]

    def counted(value: int, enum_class: type) -> object:
        made.append(value)
        return convert(value, enum_class)

    monkeypatch.setattr(socket, "_intenum_converter", counted)
    return made


def set_options(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every socket option any ``socket.socket`` sets from now on."""
    made: list[tuple[int, int]] = []
    set_option = socket.socket.setsockopt

    def counted(sock: socket.socket, level: int, option: int, *value: object) -> None:
        made.append((level, option))
        set_option(sock, level, option, *value)  # type: ignore[call-overload]

    monkeypatch.setattr(socket.socket, "setsockopt", counted)
    return made


FAMILIES = [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_accepted_sockets_know_their_family_and_type_as_the_kernel_says(
        family: socket.AddressFamily, monkeypatch: pytest.MonkeyPatch) -> None:
    with listener(family) as (bound, address):
        duplicate = accepting.duplicate(bound)
        with duplicate, socket.socket(family, socket.SOCK_STREAM) as client:
            assert duplicate.fileno() != bound.fileno()
            assert os.path.samestat(os.fstat(duplicate.fileno()), os.fstat(bound.fileno()))
            client.connect(address)
            made = conversions(monkeypatch)
            connection, _ = duplicate.accept()
            with connection:
                assert made == []  # neither accept nor these reads converted a number
                assert connection.family is family
                assert connection.type is socket.SOCK_STREAM
                assert duplicate.family is family and duplicate.type is socket.SOCK_STREAM
                assert made == []
                kernel_family = connection.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
                kernel_type = connection.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
                assert (kernel_family, kernel_type) == (family, socket.SOCK_STREAM)
                assert isinstance(connection, socket.socket)
                client.sendall(b"through")
                assert connection.recv(16) == b"through"


def test_the_standard_loop_accepts_through_it_and_sets_no_delay_on_tcp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio turns Nagle's algorithm off for TCP only, deciding by the family and
    type it reads: the accepted connection must have both right, and have it off
    from the listening socket, with no system call of asyncio's for it."""
    async def scenario() -> None:
        with listener(socket.AF_INET) as (bound, address):
            accepted: list[asyncio.StreamWriter] = []
            server = await asyncio.start_server(
                lambda reader, writer: accepted.append(writer),
                sock=accepting.duplicate(bound))
            async with server:
                with socket.create_connection(address):  # the kernel accepts it at once
                    made = conversions(monkeypatch)
                    options_set = set_options(monkeypatch)
                    for _ in range(100):
                        if accepted:
                            break
                        await asyncio.sleep(0.01)
                    assert accepted, "the connection was not accepted in a second"
                    assert made == []  # asyncio's accept and its TCP_NODELAY test converted none
                    assert options_set == []  # asyncio set no TCP_NODELAY of its own
                    sock = accepted[0].get_extra_info("socket")
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    accepted[0].close()
    asyncio.run(scenario())
