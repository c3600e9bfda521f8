"""Connection policy: how many connections a serving process takes, and which it closes.

One object per serving process decides, for every listener at once:

- **the cap** (``--max-connections``): at the cap every listener stops
  accepting, so newcomers wait in the kernel's queue instead of being
  refused; below it, accepting resumes. One log line per episode. The
  few a burst brings in before accepting stops (the standard loop
  accepts in small batches) wait too, unread, and are served first as
  connections close.
- **per peer** (``--max-connections-per-peer``): a client address over its
  share is closed as soon as it is accepted.
- **idle and slow clients** (``--idle-timeout``): a connection that completes
  no line for that long is closed; bytes without a line end do not count, so
  a slow-loris client is cut too.
- **clients that do not read** (``--write-timeout``): a connection whose
  peer has taken none of its replies for that long is aborted.
- **accept failures** (out of descriptors or memory): existing connections
  go on, accepting pauses and resumes by itself, and the log gets at most
  one line per listener every ``ACCEPT_LOG_INTERVAL`` seconds. Running out
  of descriptors is seen coming: the kernel hands out the lowest free
  number, so a new connection numbered within ``FD_HEADROOM`` of the
  open-file limit means the table is all but full. Accepting pauses then,
  before any accept fails (uvloop would otherwise accept and reset every
  waiting client), and resumes once a probe finds room again.

Timers cost nothing per line: ``sweep`` runs about once a second and
compares each connection's counters with what the last sweep saw.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import ipaddress
import logging
import os
import resource
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reverserd.limits import (
    DEFAULT_COMPACT_AFTER,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_PEER,
    DEFAULT_PROXY_FROM,
    DEFAULT_WRITE_TIMEOUT,
)
from reverserd.pidfile import Activity

if TYPE_CHECKING:
    from reverserd.listening import ListeningService
    from reverserd.protocol import LineHandler

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 1.0  # seconds between two looks at every connection
ACCEPT_LOG_INTERVAL = 10.0  # at most one accept-failure line per listener this often
EPISODE_GAP = 10.0  # a cap reached again this soon after the last is the same episode
SPARE_DESCRIPTORS = 32  # kept free beyond those open at start: logs, pipes, accepts in flight
FD_HEADROOM = 16  # a connection numbered this close to the open-file limit pauses accepting
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
CLOSE_REASONS = ("idle", "write-timeout", "per-peer", "line-too-long")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a serving process holds each connection to (see the module's docstring)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    proxy_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = DEFAULT_PROXY_FROM
    compact_after: int = DEFAULT_COMPACT_AFTER  # open connections before compact transports


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one; returns (before, after).

    A soft limit below the hard one only protects against leaks, and a
    server that caps its connections does not leak them; the default
    soft limit of 1024 would otherwise be reached long before the cap.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, hard


def descriptors_in_use() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own descriptor


def descriptor_ceiling() -> int:
    """The descriptor number from which the table counts as all but full."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_HEADROOM


def lowest_free_descriptor() -> int | None:
    """The number the next descriptor would get; ``None`` when none is left.

    An eventfd is the probe: it needs no file, so it works inside a chroot.
    """
    try:
        probe = os.eventfd(0, os.EFD_CLOEXEC)
    except OSError:
        return None
    os.close(probe)
    return probe


def has_room_below(ceiling: int) -> bool:
    """Whether fewer than ``ceiling`` descriptors are open now.

    Counted where /proc can be read: the lowest free number may be a hole
    in an otherwise full table. Inside a chroot without /proc, that number
    is all there is to go by. Only called while accepting is paused for
    want of descriptors, about once a second.
    """
    try:
        return descriptors_in_use() < ceiling
    except FileNotFoundError:  # no /proc here (a chroot)
        free = lowest_free_descriptor()
        return free is not None and free < ceiling
    except OSError:  # not even one descriptor to list them with
        return False


def connection_cap(wanted: int) -> int:
    """The most connections the open-file limit leaves room for, at most ``wanted``.

    Warns, naming both numbers, when the limit is too low for ``wanted``.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        room = soft - descriptors_in_use() - SPARE_DESCRIPTORS
    except OSError:
        room = soft - SPARE_DESCRIPTORS
    if soft == resource.RLIM_INFINITY or wanted <= room:
        return wanted
    allowed = max(1, room)
    log.warning("--max-connections %d needs more descriptors than the open-file limit "
                "of %d allows; serving at most %d connections at once (raise the hard "
                "limit: ulimit -Hn, or LimitNOFILE= under systemd)", wanted, soft, allowed)
    return allowed


class AcceptFailures:
    """Counts failed accepts per listener and logs them at most every 10 s."""

    def __init__(self) -> None:
        self._unreported: collections.Counter[str] = collections.Counter()
        self._last_logged: dict[str, float] = {}

    def record(self, where: str, reason: str, now: float) -> None:
        self._unreported[where] += 1
        if now - self._last_logged.get(where, -ACCEPT_LOG_INTERVAL) >= ACCEPT_LOG_INTERVAL:
            count = self._unreported.pop(where)
            self._last_logged[where] = now
            log.warning("cannot accept connections on %s: %s (%d time%s since the last "
                        "report); accepting paused, retried every second", where, reason,
                        count, "" if count == 1 else "s")


class ConnectionPolicy:
    """The limits of one serving process, applied to every listener it has."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.max_connections = self.limits.max_connections
        self.open = 0
        self.accepted = 0
        self.handler_errors = 0
        self.closed: collections.Counter[str] = collections.Counter()
        self.pauses = 0
        self.accept_failures = AcceptFailures()
        self._per_peer: dict[str, int] = {}
        # Accepted over the cap, oldest first, and what starts each once its turn comes.
        self._waiting: dict[LineHandler, Callable[[], None]] = {}
        self._listeners: list[ListeningService] = []
        self.at_cap = False
        self.starved = False  # out of descriptors (or memory): paused until a probe finds room
        self.fd_ceiling = descriptor_ceiling()
        self._episode_ended = -EPISODE_GAP

    @property
    def may_accept(self) -> bool:
        return not (self.at_cap or self.starved)

    def attach(self, listener: ListeningService) -> None:
        self._listeners.append(listener)
        if not self.may_accept:
            listener.pause_accepting()

    def detach(self, listener: ListeningService) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def admit(self, handler: LineHandler, now: float, listener: ListeningService,
              on_turn: Callable[[], None] | None = None) -> bool:
        """Count a new connection; ``False`` when its peer has too many already.

        Over the cap, it waits: ``on_turn`` (by default, reading again) is
        called once a connection closes and its turn has come; ``waiting``
        tells the caller.
        """
        transport = handler.transport
        assert transport is not None, "admitted once connected"
        self.open += 1
        self.accepted += 1
        handler.watched_since(now)
        if self.open >= self.max_connections and not self.at_cap:
            self._pause(now)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.fileno() >= self.fd_ceiling:
            self.starve(listener.where, f"fewer than {FD_HEADROOM} descriptors are left "
                        f"below the open-file limit of {self.fd_ceiling + FD_HEADROOM}", now)
        if self.open > self.max_connections:
            transport.pause_reading()  # it waits its turn, as it would have in the queue
            self._waiting[handler] = on_turn or transport.resume_reading
        return listener.endpoint.proxied or not self.limits.max_connections_per_peer \
            or self.admit_peer(handler)

    def waiting(self, handler: LineHandler) -> bool:
        return handler in self._waiting

    def admit_peer(self, handler: LineHandler) -> bool:
        """Count a connection against its client's share; ``False`` when over it.

        Behind a balancer, only once the PROXY header has named the client.
        Unix-socket clients have no address to tell them apart: not counted.
        """
        per_peer = self.limits.max_connections_per_peer
        if not per_peer:
            return True
        peer = handler.peer_address
        if not isinstance(peer, tuple) or not peer:
            return True
        key = str(peer[0])
        handler.peer_key = key
        self._per_peer[key] = held = self._per_peer.get(key, 0) + 1
        if held > per_peer:
            handler.close_reason = "per-peer"
            log.debug("closing connection from %s: it has %d connections already, "
                      "the most one address may hold", handler.peer, per_peer)
            return False
        return True

    def release(self, handler: LineHandler, now: float) -> None:
        """Forget a closed connection; serve a waiting one, or resume accepting
        once below the cap."""
        self.open -= 1
        self._waiting.pop(handler, None)
        while self._waiting and self.open - len(self._waiting) < self.max_connections:
            waiting = next(iter(self._waiting))
            on_turn = self._waiting.pop(waiting)
            if waiting.transport is not None:
                waiting.watched_since(now)  # accepted only now, as far as its clocks go
                on_turn()
        key = handler.peer_key
        if key is not None:
            left = self._per_peer[key] - 1
            if left:
                self._per_peer[key] = left
            else:
                del self._per_peer[key]
        if handler.close_reason is not None:
            self.closed[handler.close_reason] += 1
        if handler.failed:
            self.handler_errors += 1
        if self.at_cap and self.open < self.max_connections:
            self.at_cap = False
            self._episode_ended = now
            log.debug("below the cap of %d connections again: accepting", self.max_connections)
            self._resume_all()

    def _pause(self, now: float) -> None:
        self.at_cap = True
        self.pauses += 1
        if now - self._episode_ended >= EPISODE_GAP:
            log.warning("reached the cap of %d connections: not accepting until some "
                        "close (newcomers wait in the kernel's queue)", self.max_connections)
        self._pause_all()

    def starve(self, where: str, reason: str, now: float) -> None:
        """Stop accepting for want of descriptors or memory; ``sweep`` resumes."""
        self.accept_failures.record(where, reason, now)
        if not self.starved:
            self.starved = True
            self.pauses += 1
            self._pause_all()

    def _pause_all(self) -> None:
        for listener in self._listeners:
            listener.pause_accepting()

    def _resume_all(self) -> None:
        for listener in self._listeners:
            listener.resume_accepting()

    def sweep(self, now: float) -> None:
        """Close idle and slow connections; pause accepting when no descriptor
        is left (uvloop would accept and reset every client without a word),
        and resume once there is room."""
        if self.starved and has_room_below(self.fd_ceiling):
            self.starved = False
            self._resume_all()
        elif not self.starved and self._listeners and lowest_free_descriptor() is None:
            self.starve(", ".join(listener.where for listener in self._listeners),
                        "no descriptor is left (too many open files)", now)
        idle_timeout = self.limits.idle_timeout
        write_timeout = self.limits.write_timeout
        for listener in self._listeners:
            listener.check_accepting(self, now)
            for handler in listener.connections():
                if handler in self._waiting:  # as in the kernel's queue: no clock runs
                    continue
                try:
                    reason = handler.overdue(now, idle_timeout, write_timeout)
                except Exception:  # a bug: that connection goes, the others are still swept
                    log.exception("cannot tell whether the connection from %s is overdue; "
                                  "closing it", handler.peer)
                    handler.abort()
                    continue
                if reason is not None:
                    handler.close_for(reason)

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop,
                          context: dict[str, Any]) -> None:
        """The event loop's exception handler: accept failures become one
        counted line every 10 s, without a traceback; the rest as usual."""
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in RESOURCE_ERRORS \
                and "accept" in context.get("message", ""):
            where = self._listener_at(context.get("socket"))
            # Not from in here: asyncio still has to finish with the listener
            # whose accept failed, which ``starve`` would close under it.
            loop.call_soon(self.starve, where, os.strerror(error.errno).lower(), loop.time())
            return
        if isinstance(error, ValueError) and "_start_serving" in context.get("message", ""):
            # asyncio's own retry, a second after a failed accept, of a
            # listener that ``starve`` closed meanwhile: it is served anew on resume.
            return
        loop.default_exception_handler(context)

    def _listener_at(self, sock: object) -> str:
        fileno = getattr(sock, "fileno", lambda: -1)()
        for listener in self._listeners:
            if listener.accepts_on(fileno):
                return listener.where
        return "a listener"

    def counts(self) -> dict[str, int]:
        """Connections closed by a limit so far, by reason."""
        return {reason: self.closed[reason] for reason in CLOSE_REASONS if self.closed[reason]}

    def activity(self) -> Activity:
        return Activity(self.open, self.accepted, self.handler_errors)
