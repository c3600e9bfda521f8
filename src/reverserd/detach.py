"""Becoming a daemon with python-daemon's ``DaemonContext``, and saying how it went.

Whoever calls ``DaemonContext.open()`` exits as soon as it has forked, knowing
nothing. So the launcher forks first; its child opens the context, and the
daemon it turns into reports over a pipe, one line per message::

    pid N            right after detaching (so a hung daemon can be killed)
    ready ["A", ...] serving, on these addresses (JSON: a Unix socket path,
                     ``tls 127.0.0.1:2324``, may hold spaces)
    error MESSAGE    start-up failed; the daemon cleaned up and is exiting

The launcher closes its own copy of the write end straight after forking,
so a daemon that dies without a word yields end-of-file, never a hang.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import pathlib
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO

import daemon

from reverserd.errors import UserError
from reverserd.signals import block as block_signals

log = logging.getLogger(__name__)

IGNORED_SIGNALS = {signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None}


class Reporter:
    """The daemon's end of the status pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        return self._fd

    def _send(self, line: str) -> None:
        if self._fd < 0:
            return
        message = " ".join(line.split("\n")) + "\n"
        try:
            os.write(self._fd, message.encode("utf-8", "replace"))
        except OSError:
            self.close()  # the launcher is gone (killed?): nobody is listening

    def pid(self) -> None:
        self._send(f"pid {os.getpid()}")

    def ready(self, addresses: tuple[str, ...]) -> None:
        self._send(f"ready {json.dumps(addresses)}")
        self.close()

    def error(self, message: str) -> None:
        self._send(f"error {message}")
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


DaemonBody = Callable[[Reporter], None]


@dataclasses.dataclass(frozen=True)
class Detachment:
    """How to detach: where to run, with which mask, keeping which files open."""

    rundir: pathlib.Path
    umask: int
    keep_fds: Sequence[int]
    output: IO[str] | None


@dataclasses.dataclass
class Spawned:
    """The launcher's view of a daemon on its way: the child and the pipe."""

    child: int
    status_fd: int


def spawn(body: DaemonBody, how: Detachment) -> Spawned:
    """Fork; the child detaches and runs ``body``; the launcher gets the pipe.

    ``body`` runs in the daemon once detached, with the stop and log-reopen
    signals blocked until the event loop handles them: a ``stop`` arriving
    during start-up waits instead of killing a half-started daemon.
    """
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        os._exit(_become_daemon(body, how, Reporter(write_fd)))
    os.close(write_fd)
    return Spawned(child, read_fd)


def _become_daemon(body: DaemonBody, how: Detachment, reporter: Reporter) -> int:
    block_signals()
    try:
        context = daemon.DaemonContext(
            detach_process=True,
            working_directory=str(how.rundir),
            umask=how.umask,
            files_preserve=[*how.keep_fds, reporter.fd],
            stdin=open(os.devnull),  # noqa: SIM115 -- lives as long as the daemon
            stdout=how.output,
            stderr=how.output,
            signal_map=IGNORED_SIGNALS,
        )
        context.open()
    except Exception as error:
        reporter.error(f"cannot become a daemon: {error}")
        return 1
    reporter.pid()
    try:
        body(reporter)
    except UserError as error:
        reporter.error(str(error))
        return error.exit_status
    except BaseException as error:
        log.exception("the daemon failed")
        reporter.error(f"the daemon failed: {type(error).__name__}: {error}")
        return 1
    finally:
        logging.shutdown()
    return 0


class Outcome(enum.Enum):
    READY = "ready"
    FAILED = "failed"
    SILENT_DEATH = "silent death"
    TIMED_OUT = "timed out"


@dataclasses.dataclass(frozen=True)
class Report:
    outcome: Outcome
    pid: int | None
    addresses: tuple[str, ...] = ()
    message: str = ""


def await_report(spawned: Spawned, timeout: float) -> Report:
    """Read the daemon's report, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    received = b""
    pid = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Report(Outcome.TIMED_OUT, pid)
            readable, _, _ = select.select([spawned.status_fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(spawned.status_fd, 4096)
            if not chunk:
                return Report(Outcome.SILENT_DEATH, pid)
            received += chunk
            *lines, received = received.split(b"\n")
            for line in lines:
                kind, _, rest = line.decode("utf-8", "replace").partition(" ")
                if kind == "pid":
                    pid = int(rest)
                elif kind == "ready":
                    return Report(Outcome.READY, pid, _addresses(rest))
                elif kind == "error":
                    return Report(Outcome.FAILED, pid, message=rest)
    finally:
        os.close(spawned.status_fd)
        _reap(spawned.child)


def _addresses(text: str) -> tuple[str, ...]:
    try:
        addresses = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(addresses, list):
        return ()
    return tuple(str(address) for address in addresses)


def _reap(child: int, patience: float = 2.0) -> None:
    """Collect the intermediate child, which exits as soon as the daemon forks
    off; one stuck before that point is killed."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if os.waitpid(child, os.WNOHANG) != (0, 0):
            return
        time.sleep(0.01)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
