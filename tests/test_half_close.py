"""A connection that closes after its replies sends the end of the stream right
behind the last reply, on asyncio's transport and the compact one alike.

Each test asks the handler to close and then, before the event loop turns
again, reads the peer's end to its end of file. A close alone would send the
end of file only once the loop turns (when it closes the socket): the read
would run into its deadline.
"""

from __future__ import annotations

import socket

import pytest

from reverserd import Reverser
from tests.test_compact import KINDS, connected, reset_by_peer, run

DEADLINE = 5.0


def read_to_end_now(peer: socket.socket) -> bytes:
    """Everything the peer reads up to its end of file, without the loop turning."""
    peer.setblocking(True)
    peer.settimeout(DEADLINE)
    data = bytearray()
    try:
        while chunk := peer.recv(4096):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"no end of file after {bytes(data)!r}") from None
    return bytes(data)


@pytest.mark.parametrize("kind", KINDS)
def test_quit_sends_the_end_of_file_with_the_last_replies(kind: str) -> None:
    async def scenario() -> None:
        handler = Reverser()
        async with connected(kind, handler) as link:
            handler.data_received(b"abc\r\nxyz\nquit\n")
            assert read_to_end_now(link.peer) == b"cba\r\nzyx\n"
            assert link.transport.is_closing()
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_an_idle_close_sends_the_end_of_file_at_once(kind: str) -> None:
    async def scenario() -> None:
        handler = Reverser()
        async with connected(kind, handler) as link:
            handler.close_for("idle")
            assert read_to_end_now(link.peer) == b""
            assert link.transport.is_closing() and handler.close_reason == "idle"
    assert run(scenario) == []


@pytest.mark.parametrize("kind", KINDS)
def test_quit_from_a_peer_already_gone_closes_without_an_error(kind: str) -> None:
    async def scenario() -> None:
        handler = Reverser()
        async with connected(kind, handler) as link:
            reset_by_peer(link.peer)
            handler.data_received(b"quit\n")  # the half-close meets the reset
            assert link.transport.is_closing()
    assert run(scenario) == []
