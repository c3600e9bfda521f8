"""What a connection gets through before its first line: a PROXY header, a TLS handshake.

Both happen once per connection, in a short task of their own, with a
deadline; the line handler takes the connection only once they are done,
so its per-line path knows nothing of them. Until then the handler holds
the bare transport, which is all ``request_stop``, ``abort`` and the
connection policy's sweep need of it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import cast

from reverserd.endpoints import TLS_HANDSHAKE_TIMEOUT
from reverserd.errors import os_reason
from reverserd.protocol import LineHandler
from reverserd.proxy_header import MAX_HEADER_BYTES, ProxyHeader, ProxyHeaderError, parse

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 5.0
EARLY_BYTES = 64 * 1024  # read ahead of the handler (a TLS client's hello); then paused
Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


class PreambleFailed(Exception):
    """The connection is closed: the message says why, for one log line.

    A balancer that sends no header, or a bad one, is misconfigured: the
    operator is told (info). A client that vanishes or fails its handshake
    is everyday noise from scanners and dropped links (debug).
    """

    def __init__(self, reason: str, level: int = logging.DEBUG) -> None:
        super().__init__(reason)
        self.level = level


def may_send_header(peer: object, networks: Networks) -> bool:
    """Whether ``peer`` (a ``getpeername`` result) is a balancer we trust.

    A peer on a Unix socket is a process of this machine, let in by the
    socket file's mode: trusted as the balancer that file is there for.
    """
    if isinstance(peer, str | bytes):
        return True
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class Opening(asyncio.Protocol):
    """The connection's protocol from its accept until the handler takes it.

    It is in place before the first byte can be read (uvloop starts
    reading an accepted connection whatever the callback asks), reads the
    PROXY header if one is due, and keeps what follows for whoever comes
    next: the TLS layer or the handler.
    """

    def __init__(self, transport: asyncio.Transport, proxied: bool) -> None:
        self.transport = transport
        self.received = b""
        self.ended = False
        self.lost = False
        self.header: asyncio.Future[ProxyHeader | None] = \
            asyncio.get_running_loop().create_future()
        if not proxied:
            self.header.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if not self.header.done():
            try:
                header = parse(self.received[:MAX_HEADER_BYTES])
            except ProxyHeaderError as error:
                self.header.set_exception(PreambleFailed(f"bad PROXY header: {error}",
                                                         logging.INFO))
                return
            if header is None:
                return
            self.received = self.received[header.length:]
            self.header.set_result(header)
        if len(self.received) >= EARLY_BYTES:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.ended = True
        self._fail("the connection ended before its PROXY header")
        return True  # closed by whoever awaits the header

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = self.lost = True
        self._fail("the connection was lost before its PROXY header")

    def _fail(self, reason: str) -> None:
        if not self.header.done():
            self.header.set_exception(PreambleFailed(reason))

    def drop(self, handler: LineHandler) -> None:
        """Close the connection before ``handler`` took it, and tell the handler, so
        its listener and the connection policy forget it."""
        if not self.header.cancel() and not self.header.cancelled():
            self.header.exception()  # a failure nobody will await: seen, not logged
        self.transport.abort()
        handler.connection_lost(None)

    def take(self) -> bytes:
        received, self.received = self.received, b""
        return received


class _Handover(asyncio.Protocol):
    """The handler's stand-in during the handshake, which gives way at the first chance.

    The TLS layer reads the client's first bytes, and maybe its end, as
    soon as the handshake is over, before the task awaiting the handshake
    runs. Once the TLS layer has closed, a reply written from that task
    would be dropped: a client that sends a line and closes at once would
    get nothing. So the handler takes the connection right then, from the
    TLS layer's first call, with the transport that layer makes for it.
    ``_get_app_transport`` is not public API, but asyncio's TLS layer and
    uvloop's both have it; without it, what comes is kept and handed over
    when the handshake's task runs (a line sent with its end unanswered).
    """

    def __init__(self, handler: LineHandler) -> None:
        self.handler = handler
        self.tls_layer: asyncio.BaseProtocol | None = None
        self.transport: asyncio.Transport | None = None  # once the handler has it
        self.received: list[bytes] = []
        self.ended = False
        self.lost: tuple[Exception | None] | None = None

    def _take_over(self) -> bool:
        if self.transport is None:
            app_transport = getattr(self.tls_layer, "_get_app_transport", None)
            if app_transport is None:
                return False
            self.hand_over(app_transport())
        return True

    def hand_over(self, transport: asyncio.Transport) -> None:
        """Give the handler its transport, and what came meanwhile."""
        if self.transport is not None:
            return
        self.transport = transport
        transport.set_protocol(self.handler)
        self.handler.connection_made(transport)
        for data in self.received:
            self.handler.data_received(data)
        if self.ended:
            self.handler.eof_received()
        if self.lost is not None:
            self.handler.connection_lost(self.lost[0])

    def data_received(self, data: bytes) -> None:
        if self._take_over():
            self.handler.data_received(data)
        else:
            self.received.append(data)

    def eof_received(self) -> None:
        if self._take_over():
            self.handler.eof_received()
        else:
            self.ended = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.handler.connection_lost(exc)
        else:
            self.lost = (exc,)


async def start_tls(transport: asyncio.Transport, context: ssl.SSLContext,
                    opening: Opening, handler: LineHandler) -> None:
    """Do the handshake, then give the handler the TLS transport.

    What ``opening`` read (after a PROXY header) is the start of the
    handshake: it goes to the TLS layer before the socket is read again.
    """
    loop = asyncio.get_running_loop()
    handover = _Handover(handler)
    handshake = loop.create_task(loop.start_tls(
        transport, handover, context, server_side=True,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT))
    handshake.add_done_callback(_seen)  # its failure is told once, below, not again
    # start_tls puts its TLS layer in place on its first step and has it
    # read from the turn after; uvloop's leaves a paused transport paused.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    if opening.lost:  # before the TLS layer was in place: nothing would ever tell it
        handshake.cancel()
        raise PreambleFailed("TLS handshake failed: the connection was lost")
    handover.tls_layer = tls_layer = transport.get_protocol()
    received = opening.take()
    if received and tls_layer is not None and not transport.is_closing():
        _feed(tls_layer, received)
    if not transport.is_closing():
        transport.resume_reading()
    try:
        # The TLS layer's own timeout cannot fire once its transport is gone.
        tls_transport = await asyncio.wait_for(handshake, TLS_HANDSHAKE_TIMEOUT + 1)
    except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
        if handover.transport is not None:
            return  # the handler has it, and has been told how it ended
        raise PreambleFailed(f"TLS handshake failed: {_reason(error)}") from None
    if tls_transport is not None:
        handover.hand_over(tls_transport)
    elif handover.transport is None:  # closed under it (a stop, a limit)
        raise PreambleFailed("TLS handshake failed: the connection was closed")


def _seen(task: asyncio.Task[asyncio.BaseTransport | None]) -> None:
    if not task.cancelled():
        task.exception()


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Give ``data`` to a protocol as if read from its transport."""
    if isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)
        return
    buffered = cast(asyncio.BufferedProtocol, protocol)  # asyncio's and uvloop's TLS layers
    view = memoryview(data)
    while view:
        buffer = memoryview(buffered.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        buffered.buffer_updated(size)
        view = view[size:]


def _reason(error: BaseException) -> str:
    """One phrase, the same whichever loop raised it (some raise without a message)."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    if isinstance(error, OSError) and error.errno:
        return os_reason(error)
    if isinstance(error, ConnectionResetError):
        return "connection reset by peer"
    return str(error) or type(error).__name__


async def _header(opening: Opening) -> ProxyHeader | None:
    try:
        return await asyncio.wait_for(opening.header, HEADER_TIMEOUT)
    except TimeoutError:
        raise PreambleFailed(f"no PROXY header within {HEADER_TIMEOUT:g} s",
                             logging.INFO) from None


async def open_connection(handler: LineHandler, transport: asyncio.Transport,
                          opening: Opening, context: ssl.SSLContext | None,
                          admit_client: Callable[[LineHandler], bool] | None = None) -> None:
    """Take ``transport`` through its preamble and hand it to ``handler``.

    A connection that fails on the way is closed, with one log line (see
    ``PreambleFailed``), and the handler told its connection is lost.
    ``admit_client`` (the per-peer limit) is asked once a PROXY header
    has named the client, before anything of the client's is served.
    """
    transport.resume_reading()  # paused if it waited for its turn under the cap
    try:
        header = await _header(opening)
        if opening.lost:
            raise PreambleFailed("the connection was lost before it was served")
        if header is not None and header.source is not None:
            handler.client = header.source
        if admit_client is not None and not admit_client(handler):
            opening.drop(handler)
            return
        if context is not None:
            if opening.ended:
                raise PreambleFailed("TLS handshake failed: the client closed the connection")
            await start_tls(transport, context, opening, handler)
            return
    except PreambleFailed as error:
        log.log(error.level, "closing connection from %s: %s", handler.peer, error)
        opening.drop(handler)
        return
    transport.set_protocol(handler)
    handler.connection_made(transport)
    received = opening.take()
    if received:
        handler.data_received(received)
    if opening.ended:
        handler.eof_received()
        transport.close()
    else:
        transport.resume_reading()
