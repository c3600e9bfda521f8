"""Listening services: bind while privileged, serve on the event loop, drain on stop.

``ListeningService`` serves one endpoint of any kind (see ``endpoints``);
``TCPServer`` is its short form for one TCP port, and ``listen`` builds one
from a description, as Twisted's ``strports.service`` does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import ssl
import sys
from collections.abc import Iterator
from typing import Any, Self

from reverserd import accepting, descriptions, preambles
from reverserd.compact import CompactTransport
from reverserd.config import MAX_LINE_LENGTH, parse_interface
from reverserd.endpoints import Endpoint, TCPEndpoint
from reverserd.errors import UserError
from reverserd.limits import DEFAULT_BACKLOG, DEFAULT_SHUTDOWN_TIMEOUT, MAX_BACKLOG, MAX_SECONDS
from reverserd.persist import StateError, StateReader, restorable, state_type
from reverserd.policy import ConnectionPolicy
from reverserd.protocol import LineHandler
from reverserd.service import MultiService, Service

log = logging.getLogger(__name__)

SOMAXCONN = "/proc/sys/net/core/somaxconn"
ABORT_GRACE = 1.0  # seconds aborted connections get to report that they are closed
ACCEPT_BATCH = 16  # connections the standard loop accepts per wake-up, before the cap is seen
STANDARD_LOOP_KEEPS_PAUSED = (3, 11, 5)  # no longer reads a transport paused before it reads


def kernel_backlog_limit() -> int | None:
    """``net.core.somaxconn``: the kernel silently caps every listen backlog to it."""
    try:
        with open(SOMAXCONN, encoding="ascii") as setting:
            return int(setting.read(32))
    except (OSError, ValueError):
        return None


@restorable
class ListeningService(Service):
    """Serves ``handler_class`` on one endpoint (TCP, IPv6, Unix, TLS, inherited,
    behind a PROXY header).

    The socket is bound in ``privileged_start_service`` so a port below 1024
    (or a key only root may read) can be taken before root is given up.
    ``stop_service`` stops accepting, lets every connection answer the lines
    it already received, and closes what is still open after
    ``shutdown_timeout`` seconds.

    ``start_server`` is given a duplicate of the bound socket, never the
    socket itself: closing that server to stop accepting for a while (at the
    connection cap, after a failed accept) then leaves the bound socket, and
    the connections queued on it, untouched until accepting resumes on a
    fresh duplicate. ``policy`` (the process's ``ConnectionPolicy``) decides
    when.

    ``lines_served`` counts the lines answered over the server's whole life,
    across restarts from a state file.
    """

    state_type = "reverserd.ListeningService"

    def __init__(
        self,
        endpoint: Endpoint,
        handler_class: type[LineHandler],
        backlog: int = DEFAULT_BACKLOG,
        *,
        max_line_length: int | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self.handler_class = handler_class
        self.backlog = backlog
        self.max_line_length = max_line_length
        self.shutdown_timeout = shutdown_timeout
        self._socket: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._accept_socket: socket.socket | None = None  # the duplicate _server accepts on
        self._accepting = False  # wanted; _server may still be starting
        self._accept_generation = 0  # so that only the latest resume's server is kept
        self._resuming: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set while serving
        self.policy: ConnectionPolicy | None = None  # the process's; a default one if unset
        self._connections: dict[LineHandler, None] = {}  # a dict for its order
        self._opening: set[asyncio.Task[None]] = set()  # PROXY headers, TLS handshakes
        self._all_closed: asyncio.Future[None] | None = None  # awaited while stopping
        self._lines_before = 0  # by connections now closed, and before a restore
        self._listened_port: int | None = None  # what port 0 turned into, kept after stop
        self.reuse_port = False
        self._queue_length = backlog  # what listen() is given again after start_server's
        self._owns_files = False  # this process bound the socket: it removes its file
        self._tls: ssl.SSLContext | None = None  # read when bound
        self._opens_first = False  # a PROXY header or a TLS handshake before the lines
        self._compact_family: int | None = None  # the socket family, where compaction serves
        self._may_read_paused = True  # the loop may read a transport paused as it was accepted
        self.hold_accepting = False  # a new generation accepts only once it takes over
        self._forget_handler = self._forget  # one bound method shared by every handler

    @property
    def lines_served(self) -> int:
        return self._lines_before + sum(
            handler.lines_answered for handler in self._connections)

    def add_lines_served(self, count: int) -> None:
        """Count lines this server's copies in worker processes answered."""
        self._lines_before += count

    def save_state(self) -> dict[str, Any]:
        """The description (with the port 0 turned into, so a restart from the
        state file comes back where clients knew it), settings and line count."""
        endpoint = self.endpoint
        if self._listened_port is not None:
            endpoint = endpoint.with_port(self._listened_port)
        return {"listen": endpoint.description, **self._saved_settings()}

    def _saved_settings(self) -> dict[str, Any]:
        handler = state_type(self.handler_class)
        if handler is None:
            raise UserError(f"service {self.name or type(self).__name__!r} cannot be saved: "
                            f"its handler {self.handler_class.__qualname__} is not @restorable")
        return {
            "backlog": self.backlog,
            "handler": handler,
            "max_line_length": self.max_line_length,
            "shutdown_timeout": self.shutdown_timeout,
            "lines_served": self.lines_served,
        }

    @classmethod
    def restore_state(cls, state: StateReader) -> Self:
        description = state.text("listen", descriptions.MAX_DESCRIPTION)
        try:
            endpoint = descriptions.parse(description)
        except descriptions.DescriptionError as error:
            raise StateError(f"{state.where}: 'listen': {error}") from None
        return cls._restored(state, endpoint)

    @classmethod
    def _restored(cls, state: StateReader, endpoint: Endpoint) -> Self:
        service = cls.__new__(cls)
        ListeningService.__init__(
            service, endpoint,
            state.restorable_class("handler", LineHandler),
            state.integer("backlog", minimum=1, maximum=MAX_BACKLOG, default=DEFAULT_BACKLOG),
            max_line_length=state.optional_integer("max_line_length", minimum=1,
                                                   maximum=MAX_LINE_LENGTH),
            shutdown_timeout=state.number("shutdown_timeout", maximum=MAX_SECONDS),
        )
        service._lines_before = state.integer("lines_served", default=0)
        return service

    @property
    def listened_port(self) -> int | None:
        """The TCP port bound, once bound (what ``port=0`` turned into)."""
        return self._listened_port

    @property
    def listening_socket(self) -> socket.socket | None:
        """The listening socket, once bound."""
        return self._socket

    def privileged_start_service(self) -> None:
        super().privileged_start_service()
        if self._socket is None:
            limit = kernel_backlog_limit()
            if limit is not None and self.backlog > limit:
                log.info("listen backlog %d capped at the kernel's net.core.somaxconn, %d",
                         self.backlog, limit)
            self._socket = self.endpoint.bind(self.backlog, self.reuse_port)
            self._owns_files = True
            self._queue_length = self.endpoint.queue_length(self._socket, self.backlog)
            if self._socket.family != socket.AF_UNIX:
                self._listened_port = self._socket.getsockname()[1]

    def bind_replica(self) -> socket.socket:
        """A listening socket for another worker: its own on the same port for
        TCP (``reuse_port``), the same one shared for the others."""
        assert self._socket is not None
        return self.endpoint.replica(self._socket, self.backlog)

    def use_socket(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (a replica, in a worker process) instead of the socket
        bound first; what binding left on disk is the main process's to remove."""
        self._socket = sock
        self._owns_files = False

    def adopt_socket(self, sock: socket.socket) -> None:
        """Serve on ``sock``, bound by an earlier generation of the daemon,
        instead of binding; its file stays the earlier generation's until
        ``take_ownership``."""
        self._socket = self.endpoint.adopt(sock)
        self._owns_files = False
        self._queue_length = self.endpoint.queue_length(sock, self.backlog)
        if sock.family != socket.AF_UNIX:
            self._listened_port = sock.getsockname()[1]

    def take_ownership(self) -> None:
        """This generation took over from the last: it removes the file at stop."""
        self._owns_files = self._socket is not None

    def disown(self) -> None:
        """The next generation serves this socket too, and owns its file:
        closing this copy must leave both alone."""
        self._owns_files = False

    def hand_over(self, uid: int, gid: int) -> None:
        """Give the socket file, if there is one, to the account the daemon runs as."""
        self.endpoint.hand_over(uid, gid)

    def kept_fds(self) -> list[int]:
        """Descriptors that must survive a detach: the socket, and the directory
        of a socket file (removed at stop even from inside a jail)."""
        if self._socket is None:
            return []
        return [self._socket.fileno(), *self.endpoint.kept_fds()]

    def release(self) -> None:
        """Remove what binding left on disk (a socket file), while the socket is
        still open; the process that owns it does, once."""
        if self._owns_files:
            self.endpoint.release()

    @property
    def where(self) -> str:
        """How logs and ``status`` name it: ``127.0.0.1:2323``, ``[::1]:2323``,
        ``unix:/run/reverserd.sock``, ``tls 0.0.0.0:2324``, ``proxied ...``."""
        return self.endpoint.label(self._socket)

    def connections(self) -> list[LineHandler]:
        """The open connections, as a list the caller may close them from."""
        return list(self._connections)

    async def start_service(self) -> None:
        if self._socket is None:
            self.privileged_start_service()
        self._loop = asyncio.get_running_loop()
        if self.policy is None:
            self.policy = ConnectionPolicy()
        self.handler_class.prepare()
        self._tls = self.endpoint.tls_context()
        self._opens_first = self.endpoint.proxied or self._tls is not None
        standard = isinstance(self._loop, asyncio.SelectorEventLoop)
        compacts = standard and not self._opens_first
        self._may_read_paused = not standard or sys.version_info < STANDARD_LOOP_KEEPS_PAUSED
        self._compact_family = self._socket.family if compacts and self._socket else None
        if not self.hold_accepting:
            self._accepting = True
            await self._accept_on_duplicate(self._accept_generation)
        self.policy.attach(self)
        await super().start_service()
        log.info("%s on %s", "ready to accept" if self.hold_accepting else "listening",
                 self.where)

    async def begin_accepting(self) -> None:
        """Accept at last, once a new generation has taken over from the last."""
        if not self.hold_accepting:
            return
        self.hold_accepting = False
        if self._loop is None or self._socket is None:
            return
        self._accepting = True
        await self._accept_on_duplicate(self._accept_generation)
        log.info("listening on %s", self.where)

    async def _accept_on_duplicate(self, generation: int) -> None:
        """Serve a fresh duplicate of the bound socket.

        The standard loop accepts as many connections per wake-up as the
        backlog it is given, and hands them to the policy only a turn or
        two later: a small batch keeps the cap from being overrun by a
        burst. ``listen`` on the bound socket then restores the queue's
        real length, which ``start_server`` set to the batch.
        """
        if generation != self._accept_generation or self._socket is None:
            return  # paused or stopped before this turn came
        if isinstance(self._loop, asyncio.SelectorEventLoop):
            accept_socket = accepting.duplicate(self._socket)
        else:
            accept_socket = self._socket.dup()
        server = await asyncio.start_server(self._adopt, sock=accept_socket,
                                            backlog=ACCEPT_BATCH)
        self._socket.listen(self._queue_length)
        if generation != self._accept_generation or not self._accepting:
            server.close()  # paused, or resumed again, while this one started
            return
        self._server, self._accept_socket = server, accept_socket

    def pause_accepting(self) -> None:
        """Stop accepting; clients keep queueing on the bound socket meanwhile.

        The standard loop may have accepted connections whose transports it
        has yet to attach to the server, and drops them silently (a reset)
        if the server is closed first: it stops watching the socket now and
        closes the server once those have been attached, a turn later.
        """
        self._accepting = False
        self._accept_generation += 1
        server, accept_socket = self._server, self._accept_socket
        self._server = self._accept_socket = None
        if server is None or accept_socket is None:
            return
        if isinstance(self._loop, asyncio.SelectorEventLoop):
            self._loop.remove_reader(accept_socket.fileno())
            self._loop.call_soon(server.close)
        else:
            server.close()

    def resume_accepting(self) -> None:
        """Accept again, unless stopping, already accepting or at the cap."""
        allowed = self.policy is None or self.policy.may_accept
        if self._accepting or self.hold_accepting or self._socket is None \
                or self._loop is None or self._all_closed is not None or not allowed:
            return
        self._accepting = True
        self._accept_generation += 1
        self._resuming = self._loop.create_task(  # held: the loop keeps only a weak reference
            self._accept_on_duplicate(self._accept_generation))

    def hold_connections(self) -> None:
        """For a reload: accept no more, read no more; each connection goes to
        the next generation as soon as it is ``passable`` (TLS ones never are:
        their encryption state cannot leave this process; they finish here)."""
        self.hold_accepting = True
        self.pause_accepting()
        if self._tls is None:
            for handler in self._connections:
                handler.hold()

    def passable_connections(self) -> list[LineHandler]:
        if self._tls is not None:
            return []
        return [handler for handler in self._connections if handler.passable]

    def holds_connections(self) -> int:
        """Connections held for the next generation, not passed on yet."""
        return 0 if self._tls is not None else len(self._connections)

    def duplicate(self, handler: LineHandler) -> socket.socket:
        """A duplicate of ``handler``'s connection, for the next generation."""
        assert handler.transport is not None
        connection = handler.transport.get_extra_info("socket")
        return socket.socket(fileno=os.dup(connection.fileno()))

    def forget_passed(self, handler: LineHandler) -> None:
        """The next generation has the connection: forget it without a word
        to the client (this descriptor closes; the connection stays open)."""
        transport = handler.transport
        assert transport is not None
        handler.on_closed = None
        self._forget(handler)
        transport.abort()

    async def adopt_connection(self, sock: socket.socket, partial: bytes,
                               client: object) -> None:
        """Serve a connection the last generation passed on, from where it left it."""
        assert self._loop is not None and self.policy is not None
        handler = self.handler_class(self.max_line_length, self._forget_handler)
        handler.client = client
        handler.resume_line(partial)
        self._connections[handler] = None
        try:
            await self._loop.connect_accepted_socket(lambda: handler, sock)
        except OSError as error:
            log.debug("cannot take over a connection: %s", error)
            self._connections.pop(handler, None)
            sock.close()
            return
        admitted = self.policy.admit(handler, self._loop.time(), self)
        if admitted and self.endpoint.proxied:
            admitted = self.policy.admit_peer(handler)
        if not admitted:
            handler.abort()
        elif self._all_closed is not None:
            handler.request_stop()

    def accepts_on(self, fileno: int) -> bool:
        return self._accept_socket is not None and self._accept_socket.fileno() == fileno

    def check_accepting(self, policy: ConnectionPolicy, now: float) -> None:
        """Revive a listener the event loop dropped: uvloop closes a server
        whose accept failed (ENOBUFS, ENOMEM) without a word, which would lock
        every new client out for good. Its duplicate socket shows it: closed."""
        if self._accept_socket is not None and self._accept_socket.fileno() == -1:
            policy.starve(self.where, "the event loop dropped the listener after a "
                          "failed accept", now)

    async def stop_service(self) -> None:
        await super().stop_service()
        if self._loop is None or self.policy is None:  # never started
            self.close_socket()
            return
        where = self.where
        self.pause_accepting()
        self.close_socket()  # from now on the kernel refuses newcomers
        self.policy.detach(self)
        try:
            await self._finish_connections()
        except asyncio.CancelledError:
            log.warning("closing %d connection(s) at once: stop forced",
                        len(self._connections))
            self._abort_all()
            raise
        served = self.lines_served
        log.info("stopped listening on %s; %d line%s served in all", where, served,
                 "" if served == 1 else "s")

    async def _finish_connections(self) -> None:
        """Let open connections answer what they hold, within the grace period.

        Loops because a connection accepted just before the listening socket
        closed may only be adopted once the loop turns; ``_adopt`` asks such
        a late one to stop at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        try:
            while self._connections:
                self._all_closed = all_closed = loop.create_future()
                for handler in list(self._connections):
                    handler.request_stop()
                try:
                    await asyncio.wait_for(asyncio.shield(all_closed),
                                           max(0.0, deadline - loop.time()))
                except TimeoutError:
                    log.warning("closing %d connection(s) still busy after %.1f s",
                                len(self._connections), self.shutdown_timeout)
                    self._abort_all()
                    await self._closed_after_abort(all_closed)
                await asyncio.sleep(0)
        finally:
            self._all_closed = None

    async def _closed_after_abort(self, all_closed: asyncio.Future[None]) -> None:
        """An aborted connection is told it is lost a turn later; one never told
        (a bug) must not hold the stop forever: it is forgotten, with a line."""
        try:
            await asyncio.wait_for(asyncio.shield(all_closed), ABORT_GRACE)
        except TimeoutError:
            log.warning("forgetting %d connection(s) not closed %.1f s after being aborted",
                        len(self._connections), ABORT_GRACE)
            for handler in list(self._connections):
                self._forget(handler)

    def _abort_all(self) -> None:
        for handler in list(self._connections):
            handler.abort()

    def close_socket(self) -> None:
        if self._socket is not None:
            if self._owns_files:
                self.release()
            self._socket.close()
            self._socket = None

    def _adopt(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Move a connection ``start_server`` accepted from its streams to a handler
        (through its preamble first: a PROXY header, a TLS handshake).

        ``start_server`` gives every connection a reader, a writer and, for a
        coroutine callback, a task and a stack of coroutine frames that live
        as long as the connection. This callback is a plain function, so no
        task is made, and the transport is handed to a ``LineHandler``
        protocol before it has read a byte: each chunk read is then answered
        by a direct call instead of by waking a waiting coroutine.

        Nothing of the streams is kept: the writer is retired (see
        ``_RetiredWriter``) and emptied, which breaks the one cycle between
        it and the stream protocol, so the streams are freed as soon as
        ``start_server``'s accepting task ends, without closing the
        transport they no longer own. Together they held about 1.6 KB per
        connection: half of what an idle one cost.

        Once ``compact_after`` connections are open, each further one moves
        on to a ``CompactTransport`` (standard loop, no preamble): asyncio's
        transport is most of what remains of an idle connection's memory.
        """
        assert self.policy is not None and self._loop is not None
        handler = self.handler_class(self.max_line_length, self._forget_handler)
        transport: asyncio.Transport = writer.transport  # type: ignore[assignment]  # a stream's
        opening = None
        if self._opens_first:
            opening = preambles.Opening(transport, self.endpoint.proxied)
            transport.set_protocol(opening)
            handler.transport = transport
            # Kept now: uvloop looks it up only when asked, a TLS transport forgets it
            # once closed, and a PROXY header replaces it with the client's.
            handler.client = handler.peer_address
        elif self._compact_family is not None \
                and self.policy.open >= self.policy.limits.compact_after:
            try:
                transport = CompactTransport.take_over(transport, handler, self._compact_family)
            except OSError as error:  # no descriptor for the duplicate: asyncio's serves it
                log.debug("serving a connection with asyncio's transport: %s", error)
                transport.set_protocol(handler)
        else:
            transport.set_protocol(handler)
        writer.__class__ = _RetiredWriter  # type: ignore[assignment]  # a writer no more
        vars(writer).clear()
        self._connections[handler] = None
        if opening is None:
            try:
                handler.connection_made(transport)
            except Exception:  # the application's bug: this connection only pays
                handler.transport = transport
                handler.failed = True
                log.exception("handler %s failed as the connection from %s opened; closing "
                              "that connection", type(handler).__name__, handler.peer)
        on_turn = None if opening is None else functools.partial(
            self._open, handler, transport, opening)
        if not self.policy.admit(handler, self._loop.time(), self, on_turn):
            if opening is None:
                transport.close()
            else:
                opening.drop(handler)
            return
        if handler.failed:  # counted, so that its closing is too
            transport.abort()
            return
        if on_turn is not None and not self.policy.waiting(handler):
            on_turn()
        if self._all_closed is not None:
            handler.request_stop()
        if self._may_read_paused and not transport.is_reading() and not transport.is_closing():
            self._loop.call_soon(_keep_paused, transport)

    def _open(self, handler: LineHandler, transport: asyncio.Transport,
              opening: preambles.Opening) -> None:
        """Start the PROXY header's read or the TLS handshake, in a task of its own:
        at once, or once a connection accepted over the cap has its turn.

        A balancer's header is taken only from the addresses ``--proxy-from``
        allows; anyone else is closed at once.
        """
        assert self.policy is not None and self._loop is not None
        if self.endpoint.proxied:
            peer = handler.peer_address
            if peer is None:  # reset before it was looked at: nothing to serve
                log.debug("closing connection from ?: gone before its PROXY header")
                opening.drop(handler)
                return
            if not preambles.may_send_header(peer, self.policy.limits.proxy_from):
                log.info("closing connection from %s: not an address --proxy-from allows to "
                         "send a PROXY header", handler.peer)
                opening.drop(handler)
                return
        task = self._loop.create_task(self._opened(handler, transport, opening))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _opened(self, handler: LineHandler, transport: asyncio.Transport,
                      opening: preambles.Opening) -> None:
        assert self.policy is not None
        admit_client = self.policy.admit_peer if self.endpoint.proxied else None
        try:
            await preambles.open_connection(handler, transport, opening, self._tls,
                                            admit_client)
        except Exception:  # a bug, not the client's doing: this connection only pays
            log.exception("cannot open the connection from %s", handler.peer)
            opening.drop(handler)

    def _forget(self, handler: LineHandler) -> None:
        if handler not in self._connections:
            return  # told twice: a TLS layer and a failed handshake both say so
        del self._connections[handler]
        self._lines_before += handler.lines_answered
        assert self.policy is not None and self._loop is not None
        self.policy.release(handler, self._loop.time())
        if not self._connections and self._all_closed is not None \
                and not self._all_closed.done():
            self._all_closed.set_result(None)


class _RetiredWriter:
    """What a ``StreamWriter`` becomes once its transport belongs to a ``LineHandler``:
    an empty object, with none of its methods.

    From Python 3.11.5 on, a ``StreamWriter`` closes its transport when it is
    collected, to save programs that forget to close their streams. Here the
    handler owns the connection and closes it itself, on every path, so a
    writer retired this way is freed with its reader and stream protocol
    while the connection goes on, with no finaliser to run. A plain class has
    a writer's layout (attributes in a ``__dict__``), so any writer can become
    one; its fields are then dropped, the stream protocol among them, so that
    no cycle waits for the garbage collector (telling the stream protocol its
    connection was lost did the same in six Python calls).
    """


def _keep_paused(transport: asyncio.Transport) -> None:
    """Pause again a transport paused as it was accepted, now that the loop
    has started reading it: uvloop starts reading once the protocol is told
    of the connection, paused or not, and so did the standard loop before
    Python 3.11.5 (Debian 12 has 3.11.2). A connection over the cap was
    otherwise served at once."""
    if not transport.is_reading() and not transport.is_closing():
        transport.resume_reading()
        transport.pause_reading()


@restorable
class TCPServer(ListeningService):
    """The short form of a ``ListeningService`` on one TCP port (``tcp:PORT``)."""

    state_type = "reverserd.TCPServer"

    def __init__(
        self,
        port: int,
        handler_class: type[LineHandler],
        interface: str = "127.0.0.1",
        backlog: int = DEFAULT_BACKLOG,
        *,
        max_line_length: int | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        super().__init__(TCPEndpoint(port, interface), handler_class, backlog,
                         max_line_length=max_line_length, shutdown_timeout=shutdown_timeout)

    @property
    def port(self) -> int:
        return self._tcp.port

    @property
    def interface(self) -> str:
        return self._tcp.interface

    @property
    def _tcp(self) -> TCPEndpoint:
        assert isinstance(self.endpoint, TCPEndpoint)
        return self.endpoint

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens; the real port once bound (``port=0``)."""
        if self._socket is None:
            return self.interface, self.port
        host, port = self._socket.getsockname()[:2]
        return host, port

    def save_state(self) -> dict[str, Any]:
        return {
            "port": self.port if self._listened_port is None else self._listened_port,
            "interface": self.interface,
            **self._saved_settings(),
        }

    @classmethod
    def restore_state(cls, state: StateReader) -> Self:
        try:
            interface = parse_interface(state.text("interface"))
        except ValueError as error:
            raise StateError(f"{state.where}: 'interface': {error}") from None
        return cls._restored(state, TCPEndpoint(state.integer("port", maximum=65535),
                                                interface))


def listen(description: str, handler_class: type[LineHandler], *,
           backlog: int = DEFAULT_BACKLOG, max_line_length: int | None = None,
           shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> ListeningService:
    """A service serving ``handler_class`` where ``description`` says
    (``tcp:2323``, ``unix:/run/app.sock``, ``haproxy:tcp:2325``...).

    Raises ``ValueError`` (``descriptions.DescriptionError``) for a bad description.
    """
    return ListeningService(descriptions.parse(description), handler_class, backlog,
                            max_line_length=max_line_length, shutdown_timeout=shutdown_timeout)


def _listening_services(service: Service) -> Iterator[ListeningService]:
    if isinstance(service, ListeningService):
        yield service
    elif isinstance(service, MultiService):
        for child in service:
            yield from _listening_services(child)


def listening_services(service: Service) -> list[ListeningService]:
    """Every listening service of a tree, in tree order."""
    return list(_listening_services(service))


def listening_addresses(service: Service) -> tuple[str, ...]:
    """Where every listening service of a tree listens, in tree order."""
    return tuple(server.where for server in _listening_services(service))


def lines_served(service: Service) -> int:
    """Lines answered by every listening service of a tree, over its life."""
    return sum(server.lines_served for server in _listening_services(service))


def kept_fds(service: Service) -> list[int]:
    """The descriptors of a service tree's listeners, which must survive a detach."""
    return [fd for server in _listening_services(service) for fd in server.kept_fds()]


def release_all(service: Service) -> None:
    """Remove every socket file the tree's listeners made and still hold open
    (a main process with workers never closes them)."""
    for server in _listening_services(service):
        server.release()
