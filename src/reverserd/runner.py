"""The life of a bound application: serve until a signal, then stop.

Shared by the foreground and the daemon; the caller binds the ports first
(``privileged_start_service``), so no event loop exists before a fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

from reverserd import __version__, logs, persist
from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason
from reverserd.listening import lines_served, listening_addresses, listening_services, release_all
from reverserd.loops import LoopFactory
from reverserd.pidfile import Claim
from reverserd.policy import (
    SWEEP_INTERVAL,
    ConnectionPolicy,
    Limits,
    connection_cap,
    raise_descriptor_limit,
)
from reverserd.service import Application

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REOPEN_SIGNALS = (signal.SIGUSR1, signal.SIGHUP)
REFRESH_SIGNAL = signal.SIGUSR2
HANDLED_SIGNALS = (*STOP_SIGNALS, *REOPEN_SIGNALS, REFRESH_SIGNAL)

PYTHON_VERSION = "{}.{}.{}".format(*sys.version_info)  # what platform gives, without its import
ReadyCallback = Callable[[tuple[str, ...]], None]
TickCallback = Callable[[], None]


class Supervise(Protocol):
    """Runs worker processes in place of serving here (see ``workers``)."""

    @property
    def workers(self) -> int: ...

    def run(self, on_ready: ReadyCallback | None, limits: Limits) -> None: ...


class ApplicationFailed(UserError):
    """The application raised while starting or stopping; the traceback is in the log."""


def run(application: Application, claim: Claim | None = None,
        on_ready: ReadyCallback | None = None,
        save_to: DirectoryHandle | None = None,
        loop: tuple[str, LoopFactory] = ("asyncio", asyncio.new_event_loop),
        supervisor: Supervise | None = None, limits: Limits | None = None) -> None:
    """Serve ``application`` until SIGTERM or SIGINT, then stop it gracefully.

    ``claim``'s state file is written once the application serves, and
    again on SIGUSR2 (``status`` asks for the latest line count that way).
    After a clean stop the application's state is saved into ``save_to``.
    The claim's files are removed before ``stopped`` is logged, so that line
    really is the last word. With a ``supervisor``, this process leaves the
    serving to worker processes and only looks after them.

    The open-file limit is raised here, and the connection cap fitted to it,
    once for the whole daemon (workers inherit both).
    """
    loop_name, loop_factory = loop
    log.info("reverserd %s starting: Python %s, pid %d, application %s, %s loop%s",
             __version__, PYTHON_VERSION, os.getpid(), application.name,
             loop_name, "" if supervisor is None else f", {supervisor.workers} workers")
    before, after = raise_descriptor_limit()
    if after > before:
        log.info("raised the open-file limit from %d to %d", before, after)
    limits = limits or Limits()
    limits = dataclasses.replace(limits, max_connections=connection_cap(limits.max_connections))
    policy = ConnectionPolicy(limits)

    stopping = False

    def write_state() -> None:
        if claim is not None:
            claim.write_state(listening_addresses(application), lines_served(application),
                              closed=policy.counts(), paused=policy.pauses, stopping=stopping)

    def mark_stopping() -> None:
        nonlocal stopping
        stopping = True
        try:
            write_state()
        except OSError as error:
            log.warning("cannot write the state file: %s", os_reason(error))

    def announce(addresses: tuple[str, ...]) -> None:
        write_state()
        if on_ready is not None:
            on_ready(addresses)

    try:
        logs.raise_if_unwritable()  # a daemon whose log takes nothing must not start
        if supervisor is not None:
            supervisor.run(on_ready, limits)
        else:
            with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
                loop_runner.run(serve(application, announce, write_state, policy,
                                      on_stop=mark_stopping))
        if save_to is not None:
            _save(application, save_to)
    finally:
        release_all(application)
        if claim is not None:
            claim.release()
        log.info("stopped")


def _save(application: Application, directory: DirectoryHandle) -> None:
    try:
        path = persist.write_state_file(application, directory)
    except OSError as error:
        log.error("cannot save the application's state in %s: %s", directory.path,
                  os_reason(error))
        raise UserError(f"cannot save the application's state in {directory.path}: "
                        f"{os_reason(error)}") from None
    log.info("saved the application's state to %s", path)


async def serve(application: Application, on_ready: ReadyCallback | None = None,
                on_refresh: Callable[[], None] | None = None,
                policy: ConnectionPolicy | None = None,
                on_tick: TickCallback | None = None,
                on_stop: Callable[[], None] | None = None) -> None:
    """Start ``application``, wait for a stop signal, stop it gracefully.

    A second stop signal cancels the graceful stop: connections still busy
    are closed at once. SIGUSR2, once serving, calls ``on_refresh``. Every
    listener of the tree answers to ``policy``; once serving, about once a
    second, the policy sweeps the connections, the log checks its file,
    and ``on_tick`` runs (a worker's heartbeat): all from the event loop, so
    a stuck loop stops them all. ``on_stop`` runs when a graceful stop begins.
    """
    loop = asyncio.get_running_loop()
    policy = policy or ConnectionPolicy()
    for server in listening_services(application):
        server.policy = policy
    loop.set_exception_handler(policy.on_loop_exception)
    ticking: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal ticking
        ticking = loop.call_later(SWEEP_INTERVAL, tick)
        policy.sweep(loop.time())
        logs.tick()
        if on_tick is not None:
            on_tick()

    stop_requested = asyncio.Event()
    stopping: asyncio.Task[None] | None = None
    forced = False

    def on_stop_signal(signum: int) -> None:
        nonlocal forced
        name = signal.Signals(signum).name
        if not stop_requested.is_set():
            log.info("received %s, stopping", name)
            stop_requested.set()
            if on_stop is not None:
                on_stop()
        elif stopping is not None and not stopping.done():
            log.warning("received %s again, stopping now", name)
            forced = True
            stopping.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_stop_signal, signum)
    for signum in REOPEN_SIGNALS:
        loop.add_signal_handler(signum, reopen_log, signum)
    serving = asyncio.Event()

    def on_refresh_signal() -> None:
        if serving.is_set() and on_refresh is not None:
            try:
                on_refresh()
            except OSError as error:
                log.warning("cannot refresh the state file: %s", os_reason(error))

    loop.add_signal_handler(REFRESH_SIGNAL, on_refresh_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    try:
        with _reported(application, "failed to start"):
            await application.start_service()
        try:
            serving.set()
            tick()
            if on_ready is not None:
                on_ready(listening_addresses(application))
            await stop_requested.wait()
        finally:
            stopping = loop.create_task(application.stop_service())
            with _reported(application, "did not stop cleanly"):
                try:
                    await stopping
                except asyncio.CancelledError:
                    if not forced:
                        raise
    finally:
        if ticking is not None:
            ticking.cancel()
        for signum in HANDLED_SIGNALS:
            loop.remove_signal_handler(signum)


def reopen_log(signum: int) -> None:
    log.info("received %s, reopening the log file", signal.Signals(signum).name)
    try:
        logs.reopen()
    except OSError as error:
        log.error("cannot reopen the log file: %s", error)
        return
    log.info("log file reopened")


@contextlib.contextmanager
def _reported(application: Application, what: str) -> Iterator[None]:
    """Log an application's failure with its traceback; report it as one line."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        log.exception("application %s %s", application.name, what)
        raise ApplicationFailed(
            f"application {application.name} {what}: {type(error).__name__}: {error}"
        ) from None
