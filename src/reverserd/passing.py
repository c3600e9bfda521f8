"""A generation's open connections, moving to the next one once it took over.

The old generation holds each connection (it reads nothing more) and passes
it on as soon as every reply to it is sent, with the start of a line it read
and not yet answered; the new one serves it from there, so a client that
keeps one connection open notices nothing (see ``handover`` for the
messages). With ``--save``, the old generation's last word is the lines it
answered since it saved the state the new one started from.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from reverserd.handover import PassedConnection, Succeeding, Succession
from reverserd.listening import ListeningService, listening_services
from reverserd.notify import Supervision
from reverserd.protocol import LineHandler
from reverserd.service import Application
from reverserd.wording import count

log = logging.getLogger(__name__)

PASS_PATIENCE = 2.0  # seconds a busy connection gets to settle before it finishes here
MAX_PASSED_PARTIAL = 16 * 1024  # bytes of an unfinished line a passed connection takes along


def bound_key(server: ListeningService) -> str:
    """The key of the address ``server`` got: its endpoint's, with the port
    ``port=0`` turned into (what a saved state names)."""
    port = server.listened_port
    endpoint = server.endpoint if port is None else server.endpoint.with_port(port)
    return endpoint.handover_key()


def lines_by_key(application: Application) -> dict[str, int]:
    """Lines served so far by each listener, by the address it got (the
    first of listeners on one address)."""
    lines: dict[str, int] = {}
    for server in listening_services(application):
        lines.setdefault(bound_key(server), server.lines_served)
    return lines


class Passing:
    """This generation's connections, going to the next one as each settles.

    Created once the successor took over: nothing is accepted or read here
    any more. ``step`` passes every connection that can change hands without
    a byte lost; those still busy after ``PASS_PATIENCE`` (and TLS ones)
    finish here, as at a graceful stop.
    """

    def __init__(self, succession: Succession, application: Application) -> None:
        self.succession = succession
        self.servers = listening_services(application)
        self.deadline = time.monotonic() + PASS_PATIENCE
        self.passed = 0
        for server in self.servers:
            server.hold_connections()

    def step(self) -> bool:
        """Pass what can be passed now; whether passing is over."""
        handlers: list[tuple[ListeningService, LineHandler]] = []
        connections = []
        for server in self.servers:
            key = bound_key(server)
            for handler in server.passable_connections():
                if len(handler.partial_line) > MAX_PASSED_PARTIAL:
                    continue  # in the middle of a long line: it finishes here
                handlers.append((server, handler))
                connections.append(PassedConnection(key, handler.partial_line, handler.client,
                                                    server.duplicate(handler)))
        sent = self.succession.pass_connections(connections)
        for passed in connections:
            passed.sock.close()
        for server, handler in handlers[:sent]:
            server.forget_passed(handler)
        self.passed += sent
        left = sum(server.holds_connections() for server in self.servers)
        if sent == len(connections) and left and time.monotonic() < self.deadline:
            return False
        self.succession.finish_passing()
        log.info("passed %s to the new generation%s", count(self.passed, "connection"),
                 f"; {count(left, 'other')} finish here" if left else "")
        return True


def add_lines(servers: dict[str, ListeningService], lines: dict[str, int]) -> None:
    """Count the ``lines`` the last generation answered after it saved its
    state for this one, on the listeners with the same keys."""
    for key, number in lines.items():
        if key in servers and number > 0:
            servers[key].add_lines_served(number)


class Receiving:
    """The new generation's end of ``Passing``: each connection passed on is
    served by the listener on the same address, from where it was left."""

    def __init__(self, successor: Succeeding, application: Application,
                 supervision: Supervision, watch: bool = True) -> None:
        self.successor = successor
        self.supervision = supervision
        self.loop = asyncio.get_running_loop() if watch else None
        self.servers: dict[str, ListeningService] = {}
        for server in listening_services(application):
            self.servers.setdefault(bound_key(server), server)
        self.adopting: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references
        self.received = 0
        self.done = False
        self.on_done: Callable[[], None] = lambda: None  # the predecessor accepts no more
        self.on_lines: Callable[[dict[str, int]], None] = functools.partial(
            add_lines, self.servers)
        if self.loop is not None:
            self.loop.add_reader(successor.channel.fileno(), self.poll)

    @property
    def over(self) -> bool:
        return self.successor.channel.fileno() < 0

    def poll(self) -> None:
        """Take what came; without an event loop (a main process with
        workers, which takes no connection), the caller polls."""
        received = self.successor.receive()
        if received.heard:
            self.supervision.named()  # the predecessor sent MAINPID= before anything else
        for connection in received.connections:
            server = self.servers.get(connection.key)
            if server is None or self.loop is None:  # its listener is gone from here
                connection.sock.close()
                continue
            self.received += 1
            task = self.loop.create_task(server.adopt_connection(
                connection.sock, connection.partial, connection.client))
            self.adopting.add(task)
            task.add_done_callback(self.adopting.discard)
        if (received.done or received.over) and not self.done:
            self.done = True
            self.on_done()
            log.info("took over %s from pid %d", count(self.received, "connection"),
                     self.successor.offer.predecessor)
        self.on_lines(received.lines)
        if received.over:
            if self.loop is not None:
                self.loop.remove_reader(self.successor.channel.fileno())
            self.successor.close()
