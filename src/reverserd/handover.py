"""Passing a serving daemon on to its next generation, with no moment of refusal.

A reload starts the next generation as a fresh ``reverserd`` process (see
``program``), which reads code, application file, configuration and
certificates anew. The generation serving now (the *predecessor*) hands it, over a Unix
socket pair and with ``SCM_RIGHTS``, the very listening sockets it serves
and the run lock: nothing is closed and bound again, so the kernel keeps
queueing clients throughout, and the lock is never free. Then::

    predecessor -> successor   offer: pid, reloads so far, options, lock, sockets
    successor -> predecessor   {"pid": N}          once detached (so it can be killed)
    successor -> predecessor   {"serving": N}      every service started, not accepting yet
                               {"failed": reason}  ... or the one-line reason it cannot
    predecessor -> successor   {"take": true}      the predecessor stops writing run files
                               {"take": false}     ... or refuses: it is stopping
    successor                  replaces the pidfile and state file, accepts
    successor -> predecessor   {"taken": N, "kept": [...]}   and the listeners it kept

and only then does the predecessor stop accepting. It passes on each of its
connections once every reply is sent (the start of a line read and not yet
ended goes with it)::

    predecessor -> successor   {"connections": [[key, partial line, client], ...]}
                               + their descriptors, as many messages as needed
    predecessor -> successor   {"done": true, "lines": {...}}   (lines answered since a
                                                             --save state was taken)

and answers what the others (TLS, or too busy to settle in time) already
sent, as at a graceful stop. A successor that fails, hangs or is refused
changes nothing: it never accepted, never wrote a run file, and the
predecessor still holds everything it held. One that dies between "take" and
"taken" leaves the predecessor to claim the run files back and serve on.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from reverserd.activation import InheritedSocket
from reverserd.errors import UserError, os_reason

log = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "REVERSERD_HANDOVER_FD"
MESSAGE_BYTES = 1 << 16  # an offer names a few dozen sockets and a command line
FDS_PER_MESSAGE = 250  # the kernel takes at most 253 descriptors in one SCM_RIGHTS
MAX_FDS = 4096
OFFER_PATIENCE = 10.0  # seconds a successor waits for its offer
ANSWER_PATIENCE = 10.0  # seconds a successor waits for "take"
SUCCESSOR_GRACE = 5.0  # beyond its --start-timeout, for a successor's own launcher to report


class HandoverError(UserError):
    """The handover channel broke or carried something no reverserd sends."""


def _send(channel: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode("utf-8")
    if len(data) > MESSAGE_BYTES:
        raise HandoverError("the handover message is too large")
    if fds:
        socket.send_fds(channel, [data], list(fds))
    else:
        channel.send(data)


def _readable(channel: socket.socket, timeout: float = 0) -> bool:
    """Whether a message waits (``poll``: a daemon's descriptors go past select's 1024)."""
    poller = select.poll()
    poller.register(channel, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _receive(channel: socket.socket, timeout: float) -> tuple[dict[str, Any], list[int]]:
    if not _readable(channel, timeout):
        raise HandoverError(f"no word from the other generation within {timeout:g} s")
    data, fds, _, _ = socket.recv_fds(channel, MESSAGE_BYTES, FDS_PER_MESSAGE)
    if not data:
        for fd in fds:
            os.close(fd)
        raise HandoverError("the other generation went away during the reload")
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        for fd in fds:
            os.close(fd)
        raise HandoverError("the handover channel carried something unreadable")
    return message, fds


@dataclasses.dataclass(frozen=True)
class PassedConnection:
    """A client connection changing generations: its listener's key, the
    start of a line it sent, the client a PROXY header named."""

    key: str
    partial: bytes
    client: object
    sock: socket.socket


@dataclasses.dataclass
class Handed:
    """The descriptors a predecessor hands on: the run lock (none for a
    foreground daemon without a pidfile), its listening sockets, the sockets
    systemd passed it, and the socket ``reload`` reaches a jailed daemon by."""

    lock_fd: int | None
    sockets: list[tuple[PassedSocket, socket.socket]]
    activated: Sequence[InheritedSocket] = ()
    reload_socket: socket.socket | None = None

    def header(self) -> dict[str, Any]:
        return {"lock": self.lock_fd is not None,
                "sockets": [[name.slot, name.key, name.bound_key] for name, _ in self.sockets],
                "activated": [[passed.index, passed.name] for passed in self.activated],
                "reload_socket": self.reload_socket is not None}

    def fds(self) -> list[int]:
        return [*(() if self.lock_fd is None else (self.lock_fd,)),
                *(sock.fileno() for _, sock in self.sockets),
                *(passed.socket.fileno() for passed in self.activated),
                *(() if self.reload_socket is None else (self.reload_socket.fileno(),))]


@dataclasses.dataclass(frozen=True)
class PassedSocket:
    """One listening socket handed over: the worker slot it serves (0 without
    workers), the key of the endpoint it was bound for, and the key of the
    address it got (another where ``port=0`` turned into a port)."""

    slot: int
    key: str
    bound_key: str


@dataclasses.dataclass
class Offer:
    """What a predecessor hands its successor."""

    predecessor: int
    reloads: int
    verb: str
    layers: list[dict[str, Any]]
    lock_fd: int | None  # none for a foreground daemon without a pidfile
    sockets: dict[PassedSocket, list[socket.socket]]
    state_file: str | None = None  # with --save: the application as it was at the reload
    activated: list[InheritedSocket] = dataclasses.field(default_factory=list)
    reload_socket: socket.socket | None = None
    kept: set[str] = dataclasses.field(default_factory=set)  # keys of those taken, slot 0

    def take_socket(self, slot: int, key: str) -> socket.socket | None:
        """The socket passed for ``key`` in worker slot ``slot``, once: bound for
        that endpoint, else bound to that address (a saved state names the
        port that ``port=0`` turned into)."""
        for by_bound_address in (False, True):
            for passed, sockets in self.sockets.items():
                if passed.slot == slot and sockets \
                        and (passed.bound_key if by_bound_address else passed.key) == key:
                    if slot == 0:
                        self.kept.add(passed.key)
                    return sockets.pop(0)
        return None

    def close_unused(self) -> None:
        """Close the sockets no listener of the new generation took: when the
        predecessor lets go of its copies, those listeners stop."""
        for sockets in self.sockets.values():
            for sock in sockets:
                sock.close()
        self.sockets.clear()


class Succeeding:
    """The successor's end: the offer, then the handshake at readiness."""

    def __init__(self, channel: socket.socket, offer: Offer) -> None:
        self.channel = channel
        self.offer = offer

    def keep_fds(self) -> list[int]:
        return [self.channel.fileno()] if self.channel.fileno() >= 0 else []

    def detached(self) -> None:
        """Tell the predecessor this process's pid: the one to kill should it hang."""
        _send(self.channel, {"pid": os.getpid()})

    def failed(self, reason: str) -> None:
        """Tell the predecessor why this generation will not serve."""
        try:
            _send(self.channel, {"failed": reason[:1000]})
        except OSError:
            pass  # gone: it sees the channel close

    def may_take_over(self) -> bool:
        """Ask to take over now that every service started; whether the predecessor agreed."""
        _send(self.channel, {"serving": os.getpid()})
        answer, fds = _receive(self.channel, ANSWER_PATIENCE)
        for fd in fds:
            os.close(fd)
        return answer.get("take") is True

    def taken(self) -> bool:
        """Tell the predecessor this generation accepts and owns the run files;
        whether it heard (and will pass its connections on)."""
        try:
            _send(self.channel, {"taken": os.getpid(), "kept": sorted(self.offer.kept)})
        except OSError:
            self.close()  # gone already: nothing of its own is left to hand over
            return False
        self.channel.setblocking(False)
        return True

    def receive(self) -> Received:
        """What the predecessor sent since the last call (never waits)."""
        received = Received()
        try:
            while _readable(self.channel):
                message, fds = _receive(self.channel, 0)
                received.heard = True
                if isinstance(message.get("lines"), dict):
                    received.lines = {str(key): int(number)
                                      for key, number in message["lines"].items()}
                    received.over = True
                if message.get("done") is True or received.over:
                    for fd in fds:
                        os.close(fd)
                    received.done = True
                    if received.over:
                        break
                else:
                    received.connections.extend(_connections_from(message, fds))
        except HandoverError:
            received.over = True  # the predecessor is gone: nothing more will come
        except (OSError, AttributeError, ValueError) as error:
            log.warning("the last generation stopped passing connections: %s", error)
            received.over = True
        return received

    def close(self) -> None:
        self.channel.close()


@dataclasses.dataclass
class Received:
    """What a successor heard from its predecessor after taking over:
    connections, that passing them is ``done``, and at last (``over``) the
    lines the predecessor answered since it saved its state for the successor."""

    heard: bool = False
    connections: list[PassedConnection] = dataclasses.field(default_factory=list)
    done: bool = False
    lines: dict[str, int] = dataclasses.field(default_factory=dict)
    over: bool = False


def _connections_from(message: dict[str, Any], fds: list[int]) -> list[PassedConnection]:
    described = message.get("connections")
    if not isinstance(described, list) or len(described) != len(fds):
        for fd in fds:
            os.close(fd)
        raise HandoverError("passed connections do not match their descriptors")
    passed = []
    for (key, partial, client), fd in zip(described, fds):
        passed.append(PassedConnection(str(key), base64.b64decode(partial),
                                       tuple(client) if isinstance(client, list) else client,
                                       socket.socket(fileno=fd)))
    return passed


def from_environment() -> Succeeding | None:
    """The offer of the generation this process succeeds, if it is a successor.

    The variable is removed at once, so that nothing the application starts
    takes it for its own.
    """
    value = os.environ.pop(ENVIRONMENT_VARIABLE, None)
    if value is None:
        return None
    if not value.isdigit():
        raise HandoverError(f"{ENVIRONMENT_VARIABLE} is not a descriptor number: {value!r}")
    try:
        channel = socket.socket(fileno=int(value))
    except OSError as error:
        raise HandoverError(f"{ENVIRONMENT_VARIABLE}={value}: {error}") from None
    channel.set_inheritable(False)
    try:
        return Succeeding(channel, _receive_offer(channel))
    except BaseException:
        channel.close()
        raise


def _receive_offer(channel: socket.socket) -> Offer:
    header, fds = _receive(channel, OFFER_PATIENCE)
    try:
        passed = [PassedSocket(int(slot), str(key), str(bound_key))
                  for slot, key, bound_key in header["sockets"]]
        locked = header["lock"] is True
        activated = [(int(index), str(name)) for index, name in header.get("activated", [])]
        reachable = header.get("reload_socket") is True
        total = locked + len(passed) + len(activated) + reachable
        if total > MAX_FDS:
            raise HandoverError("the offer passes too many descriptors")
        while len(fds) < total:
            _, more = _receive(channel, OFFER_PATIENCE)
            if not more:
                raise HandoverError("the offer's descriptors did not all arrive")
            fds.extend(more)
        if len(fds) != total:
            raise HandoverError("the offer's descriptors do not match its header")
        sockets: dict[PassedSocket, list[socket.socket]] = {}
        for name, fd in zip(passed, fds[locked:]):
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            sockets.setdefault(name, []).append(sock)
        inherited = []
        for (index, label), fd in zip(activated, fds[locked + len(passed):]):
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            inherited.append(InheritedSocket(index, label, sock))
        reload_socket = None
        if reachable:
            reload_socket = socket.socket(fileno=fds[-1])
            reload_socket.setblocking(False)
        state_file = header.get("state_file")
        return Offer(int(header["pid"]), int(header["reloads"]), str(header["verb"]),
                     list(header["layers"]), fds[0] if locked else None, sockets,
                     None if state_file is None else str(state_file), inherited,
                     reload_socket)
    except (KeyError, TypeError, ValueError) as error:
        for fd in fds:
            os.close(fd)
        raise HandoverError(f"the offer is not one reverserd made: {error}") from None


def program() -> list[str]:
    """How to run reverserd anew: as this process was run (the ``reverserd``
    script, which ``pip install`` replaces on an upgrade), else as a module
    of this interpreter."""
    script = sys.argv[0]
    if os.path.basename(script) == "reverserd" and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "reverserd"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A step of a reload, seen from the predecessor: ``successor`` is
    ``serving`` (started, asks to take over), then has ``taken`` over; or
    the reload failed, for the one-line reason ``failure``."""

    successor: int | None = None
    failure: str = ""
    taken: bool = False
    kept: frozenset[str] | None = None  # the listeners taken over (by key); None: all


class Succession:
    """The predecessor's end of one reload under way.

    ``poll`` never blocks: it is called from the event loop (or the
    ``--workers`` main process's signal loop) every few milliseconds.
    """

    def __init__(self, launcher: subprocess.Popen[bytes] | None, channel: socket.socket,
                 patience: float) -> None:
        self.launcher = launcher
        self.channel = channel
        self.deadline = time.monotonic() + patience
        self.successor: int | None = None
        self.successor_fd = -1  # a pidfd: killing it never hits a reused pid
        self.outcome: Outcome | None = None

    @classmethod
    def begin(cls, command: list[str], cwd: str | None, offer: dict[str, Any],
              handed: Handed, patience: float, environment: dict[str, str] | None = None,
              attached: bool = False, also_pass: Sequence[int] = ()) -> Succession:
        """Start the successor with ``command`` and send it the offer.

        ``attached``: it shares this process's stdout and stderr (a
        foreground daemon's log); otherwise it detaches, and they go nowhere.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = dict(os.environ if environment is None else environment)
            env[ENVIRONMENT_VARIABLE] = str(theirs.fileno())
            try:
                launcher = subprocess.Popen(
                    [*program(), *command], cwd=cwd, env=env,
                    pass_fds=(theirs.fileno(), *also_pass), stdin=subprocess.DEVNULL,
                    stdout=None if attached else subprocess.DEVNULL,
                    stderr=None if attached else subprocess.DEVNULL)
            except OSError as error:
                raise UserError(f"cannot start the new generation: {error}") from None
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(launcher, ours, patience)._offer(offer, handed)

    @classmethod
    def requested(cls, channel: socket.socket, offer: dict[str, Any], handed: Handed,
                  patience: float) -> Succession:
        """Send the offer to a successor someone else started (``reload``,
        from outside a chroot), over the connection it made."""
        return cls(None, channel, patience)._offer(offer, handed)

    def _offer(self, offer: dict[str, Any], handed: Handed) -> Succession:
        try:
            fds = handed.fds()
            _send(self.channel, {**offer, **handed.header()}, fds[:FDS_PER_MESSAGE])
            for start in range(FDS_PER_MESSAGE, len(fds), FDS_PER_MESSAGE):
                _send(self.channel, {}, fds[start:start + FDS_PER_MESSAGE])
        except (OSError, UserError) as error:
            self.abandon(f"cannot hand the sockets over: {error}")
            return self
        self.channel.settimeout(ANSWER_PATIENCE)
        return self

    @property
    def launcher_pid(self) -> int | None:
        return None if self.launcher is None else self.launcher.pid

    def poll(self) -> Outcome | None:
        """The next step once there is one; ``None`` meanwhile."""
        step = self.outcome
        if step is not None and (step.failure or step.taken):
            return step
        self.outcome = None
        try:
            while self.outcome is None and _readable(self.channel):
                message, fds = _receive(self.channel, 0)
                for fd in fds:
                    os.close(fd)
                if isinstance(message.get("pid"), int):
                    self._pin(message["pid"])
                elif isinstance(message.get("serving"), int):
                    self.successor = message["serving"]
                    self.outcome = Outcome(successor=self.successor)
                elif isinstance(message.get("taken"), int):
                    kept = message.get("kept")
                    self.outcome = Outcome(
                        successor=self.successor, taken=True,
                        kept=frozenset(str(key) for key in kept)
                        if isinstance(kept, list) else None)
                elif isinstance(message.get("failed"), str):
                    self._failed(message["failed"])
        except HandoverError:
            self._failed("")
        except OSError as error:
            self._failed(f"the handover channel failed: {os_reason(error)}")
        if self.outcome is None and time.monotonic() > self.deadline:
            self.abandon("the new generation was not serving in time; killed it")
        return self.outcome

    def _pin(self, pid: int) -> None:
        self.successor = pid
        if self.successor_fd < 0:
            try:
                self.successor_fd = os.pidfd_open(pid)
            except OSError:
                pass  # gone already

    def _failed(self, reason: str) -> None:
        """The successor gave up (``reason``), or went away without a word ("").

        Whatever is left of it is killed: a failed reload leaves nothing behind.
        """
        status = None
        if self.launcher is not None:
            try:
                status = self.launcher.wait(SUCCESSOR_GRACE)
            except subprocess.TimeoutExpired:
                self.abandon(reason or "the new generation stopped answering")
                return
        self._kill_successor()
        how = "" if status is None else f" with status {status}"
        self.outcome = Outcome(failure=reason or f"the new generation exited{how} "
                               "without a word")
        self.close()

    def _kill_successor(self) -> None:
        if self.successor_fd >= 0:
            try:
                signal.pidfd_send_signal(self.successor_fd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def pass_connections(self, connections: Sequence[PassedConnection]) -> int:
        """Send ``connections`` on, in as many messages as they need; how many
        of them (in order) the successor got: the others stay this generation's."""
        sent = 0
        try:
            while sent < len(connections):
                entries: list[list[object]] = []
                size = 0
                for passed in connections[sent:sent + FDS_PER_MESSAGE]:
                    entry: list[object] = [passed.key,
                                           base64.b64encode(passed.partial).decode("ascii"),
                                           passed.client]
                    size += len(json.dumps(entry)) + 2
                    if entries and size > MESSAGE_BYTES - 1024:
                        break
                    entries.append(entry)
                batch = connections[sent:sent + len(entries)]
                _send(self.channel, {"connections": entries},
                      [passed.sock.fileno() for passed in batch])
                sent += len(batch)
        except (OSError, UserError) as error:
            log.warning("cannot pass connections to the new generation: %s", error)
        return sent

    def finish_passing(self) -> None:
        """No more connections."""
        try:
            _send(self.channel, {"done": True})
        except OSError:
            pass  # gone: it learns that the channel closed

    def report_lines(self, lines: dict[str, int]) -> None:
        """The last word, as this generation ends: the ``lines`` it answered
        since it saved its state for the successor."""
        try:
            _send(self.channel, {"lines": lines})
        except OSError:
            pass  # gone: they are lost with it
        self.close()

    def answer(self, take: bool) -> None:
        """Let the successor take over (``True``), or send it away."""
        try:
            _send(self.channel, {"take": take})
        except OSError:
            pass  # gone: its own launcher reports that
        if not take:
            self.close()

    def abandon(self, reason: str) -> None:
        """Give up on the successor: kill it and its launcher, nothing else changes."""
        self._kill_successor()
        if self.launcher is not None:
            self.launcher.kill()
            self.launcher.wait()
        self.outcome = Outcome(failure=reason)
        self.close()

    def close(self) -> None:
        self.channel.close()
        if self.successor_fd >= 0:
            os.close(self.successor_fd)
            self.successor_fd = -1

