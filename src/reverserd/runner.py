"""The life of a bound application: serve until a signal, then stop.

Shared by the foreground and the daemon; the caller binds the ports first
(``privileged_start_service``), so no event loop exists before a fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import pathlib
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

from reverserd import __version__, logs, passing, persist, reloading, signals
from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason
from reverserd.graphemes import segmenter
from reverserd.handover import Outcome, Succeeding
from reverserd.listening import lines_served, listening_addresses, listening_services, release_all
from reverserd.loops import LoopFactory, standard_loop
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
from reverserd.signals import (
    HANDLED_SIGNALS,
    REFRESH_SIGNAL,
    RELOAD_SIGNAL,
    REOPEN_SIGNALS,
    STOP_SIGNALS,
)
from reverserd.wording import count

log = logging.getLogger(__name__)


PYTHON_VERSION = "{}.{}.{}".format(*sys.version_info)  # what platform gives, without its import
ReadyCallback = Callable[[tuple[str, ...]], None]
TickCallback = Callable[[], None]


class Supervise(Protocol):
    """Runs worker processes in place of serving here (see ``workers``)."""

    @property
    def workers(self) -> int: ...

    def run(self, on_ready: ReadyCallback | None, limits: Limits,
            reload: reloading.Reload | None = None,
            take_over: Callable[[], None] | None = None,
            receiving: list[passing.Receiving] | None = None) -> None: ...

    def refresh_state(self) -> None: ...


class ApplicationFailed(UserError):
    """The application raised while starting or stopping; the traceback is in the log."""


@dataclasses.dataclass(frozen=True)
class Generations:
    """How this generation of the daemon starts the next (``reloader``), and
    the one it takes over from, if it is a new generation (``successor``)."""

    reloader: reloading.Reloader | None = None
    successor: Succeeding | None = None


def take_over(successor: Succeeding, claim: Claim | None, application: Application) -> None:
    """Become the daemon in place of the predecessor, which agreed: the
    pidfile names this process from now on, and the sockets are its own."""
    if not successor.may_take_over():
        raise UserError(f"pid {successor.offer.predecessor} began to stop during the reload; "
                        "not taking over")
    if claim is not None:
        claim.predecessor = successor.offer.predecessor
        try:
            claim.take_over()
        except OSError as error:
            raise UserError(f"cannot write the pidfile {claim.files.pidfile}: "
                            f"{os_reason(error)}") from None
    for server in listening_services(application):
        server.take_ownership()
    log.info("took over from pid %d", successor.offer.predecessor)


def run(application: Application, claim: Claim | None = None,
        on_ready: ReadyCallback | None = None,
        save_to: DirectoryHandle | None = None,
        loop: tuple[str, LoopFactory] = ("asyncio", standard_loop),
        supervisor: Supervise | None = None, limits: Limits | None = None,
        supervision: Supervision | None = None,
        generations: Generations | None = None) -> None:
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

    ``generations`` makes SIGHUP reload (see ``reloading``), and makes a new
    generation take over from its predecessor before it accepts.
    """
    loop_name, loop_factory = loop
    log.info("reverserd %s starting: Python %s, pid %d, application %s, %s loop%s, %s",
             __version__, PYTHON_VERSION, os.getpid(), application.name,
             loop_name, "" if supervisor is None else f", {supervisor.workers} workers",
             segmenter())
    before, after = raise_descriptor_limit()
    if after > before:
        log.info("raised the open-file limit from %d to %d", before, after)
    limits = limits or Limits()
    limits = dataclasses.replace(limits, max_connections=connection_cap(limits.max_connections))
    policy = ConnectionPolicy(limits)

    stopping = False
    supervision = supervision or Supervision()
    announced = False
    generations = generations or Generations()
    reload = None
    if generations.reloader is not None:
        reload = reloading.Reload(
            generations.reloader, application, claim, supervision,
            save_state=None if save_to is None
            else functools.partial(_save, application, save_to))
    successor = generations.successor
    supervision.silent_until_named = successor is not None

    def take_over_and_say_so() -> None:
        assert successor is not None
        take_over(successor, claim, application)
        try:
            write_state()
        except OSError as error:
            assert claim is not None
            raise UserError(f"cannot write the state file {claim.files.state}: "
                            f"{os_reason(error)}") from None

    def write_state() -> None:
        if claim is not None:
            claim.write_state(listening_addresses(application), lines_served(application),
                              closed=policy.counts(), paused=policy.pauses, stopping=stopping,
                              activity=policy.activity())

    def refresh_quietly() -> None:
        try:
            write_state()
        except OSError as error:
            log.warning("cannot write the state file: %s", os_reason(error))

    def mark_stopping() -> None:
        nonlocal stopping
        stopping = True
        supervision.stopping(f"stopping: {count(policy.open, 'connection')} open")
        try:
            write_state()
        except OSError as error:
            log.warning("cannot write the state file: %s", os_reason(error))

    receiving: list[passing.Receiving] = []  # held while it runs

    def predecessor_let_go() -> None:
        """Say so in the state file: ``reload`` returns once it reads it."""
        if claim is not None:
            claim.predecessor = 0
            if supervisor is None:
                refresh_quietly()
            else:
                supervisor.refresh_state()

    def ready(addresses: tuple[str, ...]) -> None:
        nonlocal announced
        announced = True
        if successor is None:
            supervision.ready(addresses)
        elif successor.taken():  # and the predecessor tells systemd (MAINPID=)
            receiving.append(passing.Receiving(successor, application, supervision,
                                               watch=supervisor is None))
            receiving[-1].on_done = predecessor_let_go
        if on_ready is not None:
            on_ready(addresses)

    def announce(addresses: tuple[str, ...]) -> None:
        if successor is None:
            write_state()  # a new generation wrote it as it took over
        ready(addresses)

    try:
        logs.raise_if_unwritable()  # a daemon whose log takes nothing must not start
        if supervisor is not None:
            supervisor.run(ready, limits, reload,
                           None if successor is None else take_over_and_say_so, receiving)
        else:
            with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
                loop_runner.run(serve(
                    application, announce, write_state, policy, on_stop=mark_stopping,
                    watchdog=supervision, reload=reload,
                    take_over=None if successor is None else take_over_and_say_so))
            if reload is not None:
                reload.finish()
        if save_to is not None and (claim is None or claim.owns_files):
            _save(application, save_to)
    finally:
        release_all(application)
        if claim is not None:
            claim.release()
        if announced:
            supervision.status("stopped")
        handed_to = None if reload is None or reload.reloader.keeper is not None \
            else reload.handed_to  # (a keeper outlives every generation)
        log.info("stopped" if handed_to is None else f"stopped; pid {handed_to} serves")


def _save(application: Application, directory: DirectoryHandle) -> pathlib.Path:
    try:
        path = persist.write_state_file(application, directory)
    except OSError as error:
        log.error("cannot save the application's state in %s: %s", directory.path,
                  os_reason(error))
        raise UserError(f"cannot save the application's state in {directory.path}: "
                        f"{os_reason(error)}") from None
    log.info("saved the application's state to %s", path)
    return path


async def serve(application: Application, on_ready: ReadyCallback | None = None,
                on_refresh: Callable[[], None] | None = None,
                policy: ConnectionPolicy | None = None,
                on_tick: TickCallback | None = None,
                on_stop: Callable[[], None] | None = None,
                watchdog: Supervision | None = None,
                stop_now_signal: int | None = None,
                reload: reloading.Reload | None = None,
                take_over: Callable[[], None] | None = None) -> None:
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

    SIGHUP starts a ``reload``; once the new generation has taken over,
    this one stops as at SIGTERM. Without ``reload`` (a worker: its main
    process reloads) SIGHUP is ignored. ``take_over`` runs once every
    service started, before any listener accepts: a new generation's
    handshake with the one it replaces.
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

    def passed_on(signum: int) -> bool:
        return reload is not None and reload.passes_on(signum)

    def on_stop_signal(signum: int) -> None:
        if passed_on(signum):
            return
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
    def on_reopen_signal(signum: int) -> None:
        if not passed_on(signum):
            reopen_log(signum)

    for signum in REOPEN_SIGNALS:
        loop.add_signal_handler(signum, on_reopen_signal, signum)
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
        if passed_on(REFRESH_SIGNAL):
            return
        if serving.is_set():
            refresh()
        else:
            refresh_pending = True

    loop.add_signal_handler(REFRESH_SIGNAL, on_refresh_signal)
    reload_pending = False
    polling: asyncio.TimerHandle | None = None

    def on_reload_signal() -> None:
        nonlocal reload_pending
        if passed_on(RELOAD_SIGNAL):
            return
        if reload is None:
            log.debug("received SIGHUP; the main process reloads")
            return
        if stop_requested.is_set():
            log.info("received SIGHUP while stopping; not reloading")
            return
        if not serving.is_set():
            reload_pending = True
            return
        reopen_log(RELOAD_SIGNAL, quiet=True)
        begin_reload(None)

    def begin_reload(requested: socket.socket | None) -> None:
        assert reload is not None
        settled(reload.request(requested))
        if reload.under_way:
            refresh()  # with the reload's deadline, which reload waits for
        poll_reload()

    def poll_reload() -> None:
        nonlocal polling
        assert reload is not None
        polling = None
        settled(reload.poll(stop_requested.is_set()))
        if reload.under_way:
            polling = loop.call_later(reloading.POLL_INTERVAL, poll_reload)

    def settled(outcome: Outcome | None) -> None:
        if outcome is None:
            return
        if outcome.successor is not None:
            if reachable is not None:
                assert reload is not None
                loop.remove_reader(reachable.fileno())
                reload.close_reload_socket()
            pass_connections()
        else:
            refresh()

    def pass_connections() -> None:
        nonlocal polling
        assert reload is not None and reload.passing is not None
        polling = None
        if reload.passing.step():
            reload.passing = None
            stop_requested.set()
        else:
            polling = loop.call_later(reloading.POLL_INTERVAL, pass_connections)

    def on_reload_request() -> None:
        assert reload is not None
        requested = reload.accept_request()
        if requested is None:
            return
        if stop_requested.is_set() or not serving.is_set():
            requested.close()  # the reload command is told by the channel closing
            return
        begin_reload(requested)

    def on_keeper_gone() -> None:
        assert reload is not None
        loop.remove_reader(reload.reloader.keeper_watch)
        if not stop_requested.is_set():
            log.warning("the process keeping the pid (pid %d) is gone; stopping",
                        reload.reloader.keeper_pid)
            stop_requested.set()

    loop.add_signal_handler(RELOAD_SIGNAL, on_reload_signal)
    if reload is not None and reload.reloader.keeper_watch >= 0:
        loop.add_reader(reload.reloader.keeper_watch, on_keeper_gone)
    reachable = None if reload is None else reload.reload_socket
    if reachable is not None:
        loop.add_reader(reachable.fileno(), on_reload_request)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    signals.redeliver()
    try:
        with _reported(application, "failed to start"):
            await application.start_service()
        try:
            serving.set()
            tick()
            with _reported(application, "could not take over"):
                if take_over is not None:
                    take_over()
                for server in listening_services(application):
                    await server.begin_accepting()
            if on_ready is not None:
                on_ready(listening_addresses(application))
            if ping_interval is not None:
                ping()
            if refresh_pending:
                refresh()
            if reload_pending:
                on_reload_signal()
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
        if reload is not None and reload.handed_to is not None \
                and reload.reloader.keeper is not None:
            reload.reloader.exit_status = await reload.reloader.keeper.keep(reload.handed_to)
    finally:
        if reload is not None and reload.under_way:
            reload.poll(stopping=True)  # sends the successor away: this generation stops
        for timer in (ticking, pinging, polling):
            if timer is not None:
                timer.cancel()
        if reachable is not None and reachable.fileno() >= 0:
            loop.remove_reader(reachable.fileno())
        for signum in handled:
            loop.remove_signal_handler(signum)


def reopen_log(signum: int, quiet: bool = False) -> None:
    """Reopen the log file (after logrotate moved it); ``quiet`` when that is
    only a part of what the signal asks for."""
    if logs.installed_log_file() is None:
        if not quiet:
            log.info("received %s; no log file to reopen (logging to stdout or syslog)",
                     signal.Signals(signum).name)
        return
    if not quiet:
        log.info("received %s, reopening the log file", signal.Signals(signum).name)
    try:
        logs.reopen()
    except OSError as error:
        log.error("cannot reopen the log file: %s", error)
        return
    if not quiet:
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
