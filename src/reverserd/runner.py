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

from reverserd import __version__, logs, persist, signals
from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason
from reverserd.listening import lines_served, listening_addresses, listening_services, release_all
from reverserd.loops import LoopFactory
from reverserd.notify import Supervision
from reverserd.pidfile import Claim
from reverserd.policy import (
    SWEEP_INTERVAL,
    ConnectionPolicy,
    Limits,
    connection_cap,
    raise_descriptor_limit,
)
from reverserd.service import Application
from reverserd.signals import HANDLED_SIGNALS, REFRESH_SIGNAL, REOPEN_SIGNALS, STOP_SIGNALS
from reverserd.wording import count

log = logging.getLogger(__name__)


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
        supervisor: Supervise | None = None, limits: Limits | None = None,
        supervision: Supervision | None = None) -> None:
    """Serve ``application`` until SIGTERM or SIGINT, then stop it gracefully.

    ``claim``'s state file is written once the application serves, and
    again on SIGUSR2 (``status`` asks for the latest line count that way).
    After a clean stop the application's state is saved into ``save_to``.
    The claim's files are removed before ``stopped`` is logged, so that line
    really is the last word. With a ``supervisor``, this process leaves the
    serving to worker processes and only looks after them.

    The open-file limit is raised here, and the connection cap fitted to it,
    once for the whole daemon (workers inherit both).

    ``supervision`` is told when serving starts and stops (systemd's
    notifications, s6's readiness descriptor), before ``on_ready``: a
    detached daemon's launcher exits at ``on_ready``, and systemd must know
    the daemon's pid by then.
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
    supervision = supervision or Supervision()
    announced = False

    def write_state() -> None:
        if claim is not None:
            claim.write_state(listening_addresses(application), lines_served(application),
                              closed=policy.counts(), paused=policy.pauses, stopping=stopping,
                              activity=policy.activity())

    def mark_stopping() -> None:
        nonlocal stopping
        stopping = True
        supervision.stopping(f"stopping: {count(policy.open, 'connection')} open")
        try:
            write_state()
        except OSError as error:
            log.warning("cannot write the state file: %s", os_reason(error))

    def ready(addresses: tuple[str, ...]) -> None:
        nonlocal announced
        announced = True
        supervision.ready(addresses)
        if on_ready is not None:
            on_ready(addresses)

    def announce(addresses: tuple[str, ...]) -> None:
        write_state()
        ready(addresses)

    try:
        logs.raise_if_unwritable()  # a daemon whose log takes nothing must not start
        if supervisor is not None:
            supervisor.run(ready, limits)
        else:
            with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
                loop_runner.run(serve(application, announce, write_state, policy,
                                      on_stop=mark_stopping, watchdog=supervision))
        if save_to is not None:
            _save(application, save_to)
    finally:
        release_all(application)
        if claim is not None:
            claim.release()
        if announced:
            supervision.status("stopped")
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
                on_stop: Callable[[], None] | None = None,
                watchdog: Supervision | None = None,
                stop_now_signal: int | None = None) -> None:
    """Start ``application``, wait for a stop signal, stop it gracefully.

    A second stop signal cancels the graceful stop: connections still busy
    are closed at once. SIGUSR2, once serving, calls ``on_refresh``. Every
    listener of the tree answers to ``policy``; once serving, about once a
    second, the policy sweeps the connections, the log checks its file,
    and ``on_tick`` runs (a worker's heartbeat); ``watchdog`` is pinged at
    its own interval: all from the event loop, so a stuck loop stops them
    all. ``on_stop`` runs when a graceful stop begins.

    Signals that came while starting (deferred or blocked until now, see ``signals``)
    are handled here, each once serving: a stop signal stops right after
    ``on_ready``, a SIGUSR2 refreshes then.

    With ``stop_now_signal`` (a worker's), only that signal cuts a graceful
    stop short: a supervisor signalling the whole process group and the
    main process passing the stop on are one request, not two.
    """
    loop = asyncio.get_running_loop()
    policy = policy or ConnectionPolicy()
    for server in listening_services(application):
        server.policy = policy
    loop.set_exception_handler(policy.on_loop_exception)
    ticking: asyncio.TimerHandle | None = None
    pinging: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal ticking
        ticking = loop.call_later(SWEEP_INTERVAL, tick)
        policy.sweep(loop.time())
        logs.tick()
        if on_tick is not None:
            on_tick()

    ping_interval = None if watchdog is None else watchdog.watchdog_interval

    def ping() -> None:
        nonlocal pinging
        assert watchdog is not None and ping_interval is not None
        pinging = loop.call_later(ping_interval, ping)
        watchdog.ping()

    handled = (*HANDLED_SIGNALS, *(() if stop_now_signal is None else (stop_now_signal,)))
    stop_requested = asyncio.Event()
    stopping: asyncio.Task[None] | None = None
    forced = False

    def on_stop_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stop_requested.is_set():
            log.info("received %s, stopping%s", name,
                     "" if serving.is_set() else " once started")
            stop_requested.set()
        elif stop_now_signal is None:
            stop_now(f"{name} again")

    def stop_now(what: str) -> None:
        nonlocal forced
        if stopping is not None and not stopping.done():
            log.warning("received %s, stopping now", what)
            forced = True
            stopping.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_stop_signal, signum)
    if stop_now_signal is not None:
        loop.add_signal_handler(stop_now_signal, stop_now, "the main process's order")
    for signum in REOPEN_SIGNALS:
        loop.add_signal_handler(signum, reopen_log, signum)
    serving = asyncio.Event()
    refresh_pending = False

    def refresh() -> None:
        if on_refresh is not None:
            try:
                on_refresh()
            except OSError as error:
                log.warning("cannot refresh the state file: %s", os_reason(error))

    def on_refresh_signal() -> None:
        nonlocal refresh_pending
        if serving.is_set():
            refresh()
        else:
            refresh_pending = True

    loop.add_signal_handler(REFRESH_SIGNAL, on_refresh_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    signals.redeliver()
    try:
        with _reported(application, "failed to start"):
            await application.start_service()
        try:
            serving.set()
            tick()
            if on_ready is not None:
                on_ready(listening_addresses(application))
            if ping_interval is not None:
                ping()
            if refresh_pending:
                refresh()
            await stop_requested.wait()
            if on_stop is not None:
                on_stop()
        finally:
            stopping = loop.create_task(application.stop_service())
            with _reported(application, "did not stop cleanly"):
                try:
                    await stopping
                except asyncio.CancelledError:
                    if not forced:
                        raise
    finally:
        for timer in (ticking, pinging):
            if timer is not None:
                timer.cancel()
        for signum in handled:
            loop.remove_signal_handler(signum)


def reopen_log(signum: int) -> None:
    if logs.installed_log_file() is None:
        log.info("received %s; no log file to reopen (logging to stdout or syslog)",
                 signal.Signals(signum).name)
        return
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
