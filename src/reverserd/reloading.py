"""A generation starting its successor: what to run, and what to hand over.

On SIGHUP (or ``reverserd reload``, which sends it), the generation serving
now starts ``reverserd <verb>`` anew with the command lines the daemon was
started with (re-read from the options file, so the options ``reload`` just
changed apply), and offers it its sockets and lock (see ``handover``); a
daemon inside a chroot makes the same offer to the generation ``reload``
started outside, through its reload socket. Once the successor has taken
over, this generation passes its connections on (``passing``) and stops.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import signal
import socket
import struct
import time
from collections.abc import Callable, Sequence

from reverserd import activation, recorded
from reverserd.errors import UserError, os_reason
from reverserd.handover import (
    SUCCESSOR_GRACE,
    Handed,
    Outcome,
    PassedSocket,
    Succession,
)
from reverserd.keeper import Keeper, name_successor
from reverserd.keeper import environment as keeper_environment
from reverserd.listening import ListeningService, listening_services
from reverserd.notify import Supervision
from reverserd.passing import Passing, bound_key, lines_by_key
from reverserd.pidfile import Claim
from reverserd.service import Application

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.01  # seconds between two looks at a reload under way


def socket_key(server: ListeningService) -> str:
    """How a socket is matched to the new generation's listener: by the
    address its endpoint asks for (``port=0`` included, so it stays put)."""
    return server.endpoint.handover_key()


@dataclasses.dataclass
class Reloader:
    """How this generation starts the next one."""

    verb: str  # start or run: the next generation detaches as this one did
    layers: tuple[recorded.Layer, ...]
    start_timeout: float
    jailed: bool = False
    keeps_pid: bool = False  # the first generation of ``run`` under runit, s6, supervisord
    keeper_fd: int | None = None  # the keeper's pipe, to name each successor through
    keeper_pid: int = 0
    keeper_watch: int = -1  # a pidfd of the keeper: this generation ends with it
    keeper: Keeper | None = None  # this generation's own, once it reloaded
    exit_status: int = 0  # a keeper's: the last generation's

    def follow_keeper(self, found: tuple[int, int, int] | None) -> None:
        """Name successors to the keeper (``found``: its pipe, pid and a
        pidfd), and end with it."""
        if found is not None:
            self.keeper_fd, self.keeper_pid, self.keeper_watch = found

    def begin(self, application: Application, claim: Claim | None,
              worker_sockets: Sequence[Sequence[socket.socket]] = (),
              environment: dict[str, str] | None = None,
              state_file: pathlib.Path | None = None,
              requested: socket.socket | None = None) -> Succession:
        """Start the next generation and offer it everything it takes over;
        or, when ``reload`` started it (``requested``: its connection to the
        reload socket), only make the offer.

        ``worker_sockets`` are the sockets of worker slots past the first,
        in the order of the application's listeners.
        """
        layers = self._current_layers(claim)
        servers = listening_services(application)
        sockets: list[tuple[PassedSocket, socket.socket]] = []
        slots: list[Sequence[socket.socket | None]] = [
            [server.listening_socket for server in servers], *worker_sockets]
        for slot, slot_sockets in enumerate(slots):
            for server, sock in zip(servers, slot_sockets):
                if sock is not None:
                    sockets.append((PassedSocket(slot, socket_key(server), bound_key(server)),
                                    sock))
        offer = {"pid": os.getpid(), "reloads": 0 if claim is None else claim.reloads,
                 "verb": self.verb, "layers": recorded.layers_to_json(layers),
                 "state_file": None if state_file is None else str(state_file)}
        handed = Handed(None if claim is None else claim.lock.fd, sockets,
                        activation.inherited_sockets(),
                        None if claim is None else claim.reload_socket)
        patience = self.start_timeout + SUCCESSOR_GRACE
        if requested is not None:
            return Succession.requested(requested, offer, handed, patience)
        if self.jailed:
            raise UserError("a daemon inside --chroot cannot start its successor: run "
                            "'reverserd reload' from outside the jail")
        directory = layers[0].directory if layers and os.path.isdir(layers[0].directory) \
            else None
        if self.keeps_pid and self.keeper is None:
            self.keeper = Keeper.adopt_orphans()
            self.keeper_fd, self.keeper_pid = self.keeper.write_fd, os.getpid()
        keeping = {} if self.keeper_fd is None \
            else keeper_environment(self.keeper_fd, self.keeper_pid)
        return Succession.begin([self.verb], directory, offer, handed, patience,
                                {**os.environ, **(environment or {}), **keeping},
                                attached=self.verb == "run",
                                also_pass=() if self.keeper_fd is None else (self.keeper_fd,))

    def _current_layers(self, claim: Claim | None) -> tuple[recorded.Layer, ...]:
        """The recorded command lines as they are now: ``reload`` may just
        have added the options it changes."""
        if claim is None:
            return self.layers
        try:
            return recorded.read(claim.files, claim.directory) or self.layers
        except UserError as error:
            log.warning("%s; reloading with the options this generation started with", error)
            return self.layers


class Reload:
    """One generation's reloads, driven by SIGHUP and polled from its loop
    (``POLL_INTERVAL``) while one is under way."""

    def __init__(self, reloader: Reloader, application: Application, claim: Claim | None,
                 supervision: Supervision,
                 worker_sockets: Sequence[Sequence[socket.socket]] = (),
                 save_state: Callable[[], pathlib.Path] | None = None) -> None:
        self.reloader = reloader
        self.application = application
        self.save_state = save_state  # with --save: the state the next generation starts from
        self.saved_lines: dict[str, int] = {}  # lines served when it was saved, by key
        self.count_lines: Callable[[], dict[str, int]] = functools.partial(
            lines_by_key, application)  # the workers' main process counts theirs too
        self.successor_channel: Succession | None = None  # kept for the last word
        self.claim = claim
        self.supervision = supervision
        self.worker_sockets = worker_sockets
        self.succession: Succession | None = None
        self.letting_in = False  # told the successor to take over; it has not confirmed
        self.passing: Passing | None = None  # once the successor took over
        self.handed_to: int | None = None  # the successor's pid, once it took over
        self.deferred: list[int] = []  # signals for whichever generation ends up serving

    @property
    def under_way(self) -> bool:
        return self.succession is not None

    def defer(self, signum: int) -> bool:
        """Whether ``signum`` waits for the take-over under way to end.

        Under a keeper, every generation's signals are the service's (the
        supervisor knows only the keeper's pid). One that comes once the
        successor was told to take over, before it confirmed, is for the
        generation that serves after: the successor if it takes over (this
        generation is on its way out), else this one (sent to itself again).
        """
        if not self.letting_in or self.reloader.keeper_fd is None:
            return False
        self.deferred.append(signum)
        return True

    def passes_on(self, signum: int) -> bool:
        """Whether ``signum`` is for another generation: one that waits for a
        take-over's end (``defer``), or one a keeper that handed over gets
        for the generation serving now."""
        if self.defer(signum):
            return True
        if self.handed_to is None or self.reloader.keeper is None:
            return False
        self.reloader.keeper.forward(signum, self.handed_to)
        return True

    def _resend_deferred(self, pid: int) -> None:
        signums, self.deferred = self.deferred, []
        for signum in signums:
            log.info("passing %s, received during the take-over, on to pid %d",
                     signal.Signals(signum).name, pid)
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                log.warning("pid %d is gone; %s not passed on", pid, signal.Signals(signum).name)

    def request(self, requested: socket.socket | None = None) -> Outcome | None:
        """Start the next generation (``reload`` started it if ``requested``,
        the connection it made), unless one is starting already; the outcome
        if the reload failed at once."""
        how = "SIGHUP" if requested is None else "a reload request"
        if self.succession is not None or self.handed_to is not None:
            log.info("received %s; a reload is under way already", how)
            if requested is not None:
                requested.close()
            return None
        log.info("received %s, reloading: %s", how, "starting a new generation"
                 if requested is None else "offering the sockets to a new generation")
        self.supervision.reloading()
        try:
            state_file = None
            if self.save_state is not None:
                self.saved_lines = self.count_lines()
                state_file = self.save_state()
            self.succession = self.reloader.begin(self.application, self.claim,
                                                  self.worker_sockets,
                                                  self.supervision.successor_environment(),
                                                  state_file, requested)
        except UserError as error:
            if requested is not None:
                requested.close()
            return self._failed(str(error))
        if self.claim is not None:
            self.claim.reload_deadline = time.time() + self.reloader.start_timeout \
                + SUCCESSOR_GRACE
        if self.succession.launcher_pid is not None:
            log.info("new generation starting (launcher pid %d)", self.succession.launcher_pid)
        return None

    def finish(self) -> None:
        """This generation, which handed over, is ending: tell the successor
        the lines it answered since it saved its state for it."""
        channel, self.successor_channel = self.successor_channel, None
        if channel is None:
            return
        now = self.count_lines()
        channel.report_lines({key: now[key] - lines for key, lines in self.saved_lines.items()
                              if key in now and now[key] > lines})

    @property
    def reload_socket(self) -> socket.socket | None:
        return None if self.claim is None else self.claim.reload_socket

    def close_reload_socket(self) -> None:
        """The successor answers reload requests now."""
        if self.claim is not None:
            self.claim.close_reload_socket()

    def accept_request(self) -> socket.socket | None:
        """A connection to the reload socket from root or this daemon's own
        user (anyone else is turned away); ``None`` if there is none."""
        listening = None if self.claim is None else self.claim.reload_socket
        if listening is None:
            return None
        try:
            connection, _ = listening.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as error:
            log.warning("cannot accept a reload request: %s", os_reason(error))
            return None
        credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                            struct.calcsize("3i"))
        uid: int = struct.unpack("3i", credentials)[1]
        if uid not in (0, os.geteuid()):
            log.warning("turned away a reload request from uid %d", uid)
            connection.close()
            return None
        connection.setblocking(True)
        return connection

    def poll(self, stopping: bool) -> Outcome | None:
        """Move the reload on; its outcome once known. ``stopping``: this
        generation was told to stop, so a successor is sent away, not let in.

        With a ``successor`` in the outcome, the run files and sockets are
        the successor's: this generation must stop accepting and finish.
        """
        succession = self.succession
        if succession is None:
            return None
        step = succession.poll()
        if step is None:
            if not stopping or self.letting_in:
                return None
            succession.abandon("the daemon is stopping")
            return self._failed("the daemon began to stop during the reload", stopping)
        if step.failure:
            return self._failed(step.failure, stopping)
        assert step.successor is not None
        if not step.taken:
            if stopping:
                succession.answer(False)
                return self._failed("the daemon began to stop during the reload", stopping)
            self.letting_in = True
            if self.claim is not None:
                self.claim.hand_over_to_successor()
            succession.answer(True)
            return None
        for server in listening_services(self.application):
            if step.kept is None or socket_key(server) in step.kept:
                server.disown()  # a listener dropped by the reload keeps its file to remove
        self.supervision.hand_over(step.successor)
        if self.reloader.keeper_fd is not None:
            name_successor(self.reloader.keeper_fd, step.successor)
        self.handed_to = step.successor
        self.passing = Passing(succession, self.application)
        self.successor_channel = succession
        self.succession = None
        self.letting_in = False
        log.info("reloaded: pid %d \N{RIGHTWARDS ARROW} %d; this generation stops accepting "
                 "and finishes its connections", os.getpid(), step.successor)
        self._resend_deferred(step.successor)
        return step

    def _failed(self, reason: str, stopping: bool = False) -> Outcome:
        self.succession = None
        if self.claim is not None:
            self.claim.reload_deadline = 0.0
        let_in, self.letting_in = self.letting_in, False
        if let_in and self.claim is not None:
            try:
                self.claim.take_over()  # the successor died taking over: ours again
            except OSError as error:
                log.error("cannot write the pidfile back: %s", os_reason(error))
        log.error("reload failed: %s%s", reason,
                  "" if stopping else f"; pid {os.getpid()} serves on")
        self.supervision.reload_failed(reason)
        if self.claim is not None and not stopping:  # else reload says the daemon stopped
            self.claim.reload_failure = (time.time(), reason)
        self._resend_deferred(os.getpid())
        return Outcome(failure=reason)


