"""Worker processes: copies of the application serving the same ports, under one main process.

The main process binds one listening socket per worker and port
(``SO_REUSEPORT``) while still privileged, and keeps them all open for its
whole life. A worker serves its own sockets; when it dies, the connections
the kernel already queued on them are not reset, because the main process
still holds the sockets, and the replacement worker serves them. The main
process never runs an event loop: it waits for signals with
``sigtimedwait``, so nothing it does can be held up by a busy worker.

Workers tell the main process they serve (``READY_SIGNAL``) and that they
wrote their counts (lines, connections closed by a limit, accept pauses)
into shared memory (``COUNTED_SIGNAL``); the main process adds the counts up
for ``status`` and for the saved state. Each worker also stamps a heartbeat
there once a second from its event loop: a worker whose loop is stuck, or
which was stopped, goes silent, and after ``--worker-timeout`` seconds the
main process kills it and starts another.

Workers never hold the run lock: when the main process dies, however it
dies, the lock is free and the next ``start`` can take over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import mmap
import os
import pathlib
import select
import signal
import socket
import struct
import time
from collections.abc import Callable

from reverserd import logs, runner, signals, wording
from reverserd.errors import UserError
from reverserd.handover import Offer
from reverserd.limits import DEFAULT_WORKER_TIMEOUT
from reverserd.listening import listening_addresses, listening_services
from reverserd.loops import LoopFactory
from reverserd.notify import Supervision
from reverserd.passing import Passing, Receiving, bound_key
from reverserd.pidfile import Activity, Claim, WorkerState
from reverserd.policy import CLOSE_REASONS, SWEEP_INTERVAL, ConnectionPolicy, Limits
from reverserd.process_name import end_with_parent, set_process_name
from reverserd.reloading import POLL_INTERVAL, Reload, socket_key
from reverserd.service import Application

log = logging.getLogger(__name__)

READY_SIGNAL = signal.SIGRTMIN
COUNTED_SIGNAL = signal.SIGRTMIN + 1
# The main process's second stop signal, passed on: a worker stops at once only on this, not
# on a second SIGTERM (a supervisor signalling the whole group sends it one beside the main's).
STOP_NOW_SIGNAL = signal.SIGRTMIN + 2
# A new generation's workers start their services, say so, then wait for this to accept:
# the main process sends it once it has taken over from the last generation.
ACCEPT_SIGNAL = signal.SIGRTMIN + 3
SUPERVISED_SIGNALS = (signal.SIGCHLD, *signals.HANDLED_SIGNALS, READY_SIGNAL, COUNTED_SIGNAL,
                      STOP_NOW_SIGNAL, ACCEPT_SIGNAL)
ACCEPT_PATIENCE = 1.0  # seconds between two looks at the main process while waiting to accept
REQUEST_INTERVAL = 0.1  # seconds between two looks at the reload socket (with --chroot)
FIRST_RETRY = 0.1  # seconds before the second restart in a row; the first is at once
LONGEST_RETRY = 5.0
STEADY_AFTER = 10.0  # a worker that served this long resets the backoff
GIVE_UP_AFTER = 5  # quick deaths in a row of one worker before the daemon gives up
COUNT_PATIENCE = 0.5
COUNT = struct.Struct("=Q")


class WorkersFailed(runner.ApplicationFailed):
    """Workers kept dying; the daemon stopped rather than loop for ever."""


class SharedCounts:
    """Counts and heartbeats per worker slot, in memory the workers share.

    A slot's counts are the lines each server answered, then the
    connections closed for each of ``CLOSE_REASONS``, then ``TOTALS`` (accept
    pauses, connections accepted, handler errors), all since its worker
    started, and last the connections it has open now; the main process
    adds the counts of workers that died to ``retired``, all but the last.
    Heartbeats are ``CLOCK_MONOTONIC`` nanoseconds, a clock all processes share.
    """

    TOTALS = ("pauses", "accepted", "handler_errors")

    def __init__(self, slots: int, servers: int) -> None:
        self.servers = servers
        self.width = servers + len(CLOSE_REASONS) + len(self.TOTALS) + 1
        self.memory = mmap.mmap(-1, max(1, slots * self.width) * COUNT.size)
        self.beats = mmap.mmap(-1, max(1, slots) * COUNT.size)
        self.retired = [0] * self.width

    def write(self, slot: int, counts: list[int]) -> None:
        for index, value in enumerate(counts):
            COUNT.pack_into(self.memory, (slot * self.width + index) * COUNT.size, value)

    def read(self, slot: int) -> list[int]:
        return [COUNT.unpack_from(self.memory, (slot * self.width + index) * COUNT.size)[0]
                for index in range(self.width)]

    def retire(self, slot: int) -> None:
        """A dead worker's counts stay in the totals; its connections are gone."""
        *counted, _ = self.read(slot)
        self.retired = [old + new for old, new in zip(self.retired, [*counted, 0])]
        self.write(slot, [0] * self.width)

    def totals(self, slots: int) -> list[int]:
        totals = list(self.retired)
        for slot in range(slots):
            totals = [old + new for old, new in zip(totals, self.read(slot))]
        return totals

    def beat(self, slot: int) -> None:
        COUNT.pack_into(self.beats, slot * COUNT.size, time.monotonic_ns())

    def silence(self, slot: int) -> float:
        """Seconds since the slot's worker last stamped its heartbeat."""
        stamped: int = COUNT.unpack_from(self.beats, slot * COUNT.size)[0]
        return (time.monotonic_ns() - stamped) / 1e9


@dataclasses.dataclass
class Worker:
    slot: int
    pid: int = 0
    started: float = 0.0
    ready: bool = False
    restarts: int = 0
    quick_deaths: int = 0
    restart_at: float | None = None  # monotonic time of a planned restart
    killed_for: str = ""  # why the main process killed it, until it is reaped
    last_exit: str = ""  # how the previous worker of this slot ended, for status

    @property
    def number(self) -> int:
        return self.slot + 1


def bind_worker_sockets(application: Application, count: int,
                        offer: Offer | None = None) -> list[list[socket.socket]]:
    """The sockets of every worker slot: slot 0 has the ones bound first.

    A new generation takes the last generation's sockets of each slot it
    had (``offer``), and binds only the others. Needs
    ``ListeningService.reuse_port`` set before the first bind.
    """
    servers = listening_services(application)
    first = [server.listening_socket for server in servers]
    slots = [[sock for sock in first if sock is not None]]
    try:
        for slot in range(1, count):
            slots.append([])
            for server in servers:
                passed = None if offer is None else offer.take_socket(slot, socket_key(server))
                slots[-1].append(passed or server.bind_replica())
    except BaseException:
        for sockets in slots[1:]:
            for sock in sockets:
                sock.close()
        raise
    return slots


class Supervisor:
    """The main process of a daemon with workers."""

    def __init__(self, application: Application, sockets: list[list[socket.socket]],
                 claim: Claim | None, loop_factory: LoopFactory,
                 worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
                 supervision: Supervision | None = None) -> None:
        self.application = application
        self.sockets = sockets
        self.claim = claim
        self.loop_factory = loop_factory
        self.worker_timeout = worker_timeout
        self.limits = Limits()
        self.servers = listening_services(application)
        self.baseline = [server.lines_served for server in self.servers]
        self.counts = SharedCounts(len(sockets), len(self.servers))
        self.slots = [Worker(slot) for slot in range(len(sockets))]
        self.stopping = False
        self.announced = False
        self.waiting_for_counts: set[int] = set()
        self.counts_deadline = 0.0
        self.supervision = supervision or Supervision()
        self.next_ping: float | None = None  # monotonic time of the next WATCHDOG=1
        self.refresh_pending = False  # a SIGUSR2 that came before every worker served
        self.reload: Reload | None = None
        self.reload_pending = False  # a SIGHUP that came before every worker served
        self.reload_after_counts = False  # a SIGHUP waiting for the workers' counts
        self.passing: Passing | None = None
        self.take_over: Callable[[], None] | None = None  # a new generation's, at readiness
        self.receiving: list[Receiving] = []  # the last generation's word, once taken over

    @property
    def workers(self) -> int:
        return len(self.slots)

    def run(self, on_ready: runner.ReadyCallback | None, limits: Limits,
            reload: Reload | None = None, take_over: Callable[[], None] | None = None,
            receiving: list[Receiving] | None = None) -> None:
        """Start the workers, keep them going, stop them all on SIGTERM.

        On SIGHUP, ``reload`` starts the next generation, and the workers
        stop gracefully once it has taken over. ``take_over`` is a new
        generation's: its workers accept only once it has run.
        """
        self.limits = limits
        self.reload = reload
        self.take_over = take_over
        self.receiving = receiving if receiving is not None else []
        if reload is not None:
            reload.worker_sockets = self.sockets[1:]
            reload.count_lines = self._lines_with_counts
            if reload.save_state is not None:
                reload.save_state = functools.partial(self._save_with_counts, reload.save_state)
        signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISED_SIGNALS)
        signals.redeliver()  # what came while starting, now for sigtimedwait
        for worker in self.slots:
            self._start(worker)
        while not self.stopping or self._alive():
            info = signal.sigtimedwait(SUPERVISED_SIGNALS, self._timeout())
            if info is not None:
                self._on_signal(info.si_signo, info.si_pid, on_ready)
            self._on_timer()  # even when signals come faster than the timeout
        if reload is not None:
            reload.finish()  # with the counts of workers, before they are added for good
        self._add_counts_to_application()
        if reload is not None and reload.handed_to is not None \
                and reload.reloader.keeper is not None:
            reload.reloader.exit_status = reload.reloader.keeper.keep_waiting(reload.handed_to)

    def _alive(self) -> list[Worker]:
        return [worker for worker in self.slots if worker.pid]

    def _timeout(self) -> float:
        now = time.monotonic()
        moments = [worker.restart_at for worker in self.slots
                   if worker.restart_at is not None]
        if self.waiting_for_counts:
            moments.append(self.counts_deadline)
        if self.next_ping is not None:
            moments.append(self.next_ping)
        if (self.reload is not None and self.reload.under_way) or self.passing is not None \
                or self.receiving:
            moments.append(now + POLL_INTERVAL)
        elif self.reload is not None and self.reload.reload_socket is not None:
            moments.append(now + REQUEST_INTERVAL)
        return max(0.0, min(moments, default=now + SWEEP_INTERVAL) - now)

    def _on_timer(self) -> None:
        logs.tick()
        self._kill_the_silent()
        now = time.monotonic()
        interval = self.supervision.watchdog_interval
        if self.next_ping is not None and interval is not None and self.next_ping <= now:
            self.next_ping = now + interval
            self.supervision.ping()
        for worker in self.slots:
            if worker.restart_at is not None and worker.restart_at <= now:
                worker.restart_at = None
                if not self.stopping:
                    self._start(worker)
        if self.waiting_for_counts and self.counts_deadline <= now:
            self.waiting_for_counts.clear()
            self._counted()
        self._move_reload_on()
        self._hear_from_predecessor()

    def _move_reload_on(self) -> None:
        if self.reload is None:
            return
        watch = self.reload.reloader.keeper_watch
        if watch >= 0 and not self.stopping and select.select([watch], [], [], 0)[0]:
            self._stop_for(f"the process keeping the pid (pid {self.reload.reloader.keeper_pid})"
                           " is gone")
        requested = self.reload.accept_request()
        if requested is not None:
            if self.stopping or not self.announced:
                requested.close()
            else:
                self.reload.request(requested)
                self._write_state()
        outcome = self.reload.poll(self.stopping)
        if outcome is not None and outcome.successor is None:
            self._write_state()  # with why the reload failed
        elif outcome is not None:
            self.passing, self.reload.passing = self.reload.passing, None
            self.reload.close_reload_socket()
            self._stop_for("the new generation took over")  # the workers stop accepting first
        if self.passing is not None and self.passing.step():  # the workers keep theirs
            self.passing = None

    def _kill_the_silent(self) -> None:
        """SIGKILL a serving worker whose heartbeat stopped: its loop is stuck,
        or it was stopped, and the clients the kernel gives it would hang."""
        for worker in self.slots:
            if worker.pid and worker.ready and not worker.killed_for:
                silence = self.counts.silence(worker.slot)
                if silence >= self.worker_timeout:
                    worker.killed_for = f"killed after {silence:.0f} s without a heartbeat"
                    try:
                        os.kill(worker.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass  # died a moment ago; its SIGCHLD is on the way

    def _on_signal(self, signum: int, sender: int,
                   on_ready: runner.ReadyCallback | None) -> None:
        reload = self.reload
        if signum in signals.HANDLED_SIGNALS and reload is not None and reload.passes_on(signum):
            return
        if signum == signal.SIGCHLD:
            self._reap()
        elif signum == READY_SIGNAL:
            self._on_ready(sender, on_ready)
        elif signum == COUNTED_SIGNAL:
            self.waiting_for_counts.discard(sender)
            if not self.waiting_for_counts:
                self._counted()
        elif signum in signals.STOP_SIGNALS:
            self._stop(signal.Signals(signum))
        elif signum in signals.REOPEN_SIGNALS:
            runner.reopen_log(signum)
            self._forward(signum)
        elif signum == signals.RELOAD_SIGNAL:
            self._on_reload_signal()
        elif signum == signals.REFRESH_SIGNAL:
            if self.announced:
                self._refresh()
            else:
                self.refresh_pending = True

    def _on_reload_signal(self) -> None:
        if self.reload is None or self.stopping:
            log.info("received SIGHUP%s; not reloading", " while stopping" if self.stopping
                     else "")
            return
        if not self.announced:
            self.reload_pending = True
            return
        if self.reload.save_state is not None and not self.reload_after_counts:
            self.reload_after_counts = True  # the state saved for the next generation has them
            self._refresh()
            if not self.waiting_for_counts:
                self._counted()
            return
        runner.reopen_log(signals.RELOAD_SIGNAL, quiet=True)
        failed = self.reload.request() is not None
        self._write_state()  # why it failed, or when it is given up
        if not failed:
            self._forward(signals.REOPEN_SIGNALS[0])  # the workers' logs, reopened too

    def _counted(self) -> None:
        """Every worker wrote its counts (or was given up on)."""
        self._write_state()
        if self.reload_after_counts:
            self._on_reload_signal()
            self.reload_after_counts = False

    def _refresh(self) -> None:
        self.waiting_for_counts = {worker.pid for worker in self._alive() if worker.ready}
        self.counts_deadline = time.monotonic() + COUNT_PATIENCE
        self._forward(signals.REFRESH_SIGNAL)

    def _on_ready(self, pid: int, on_ready: runner.ReadyCallback | None) -> None:
        for worker in self.slots:
            if worker.pid == pid:
                worker.ready = True
        if not self.announced and all(worker.ready for worker in self.slots):
            if self.take_over is not None:
                self.take_over()  # writes the state file
                for server in self.servers:
                    server.hold_accepting = False  # workers started from now on accept at once
                self._forward(ACCEPT_SIGNAL)
            self.announced = True
            log.info("%d workers serving: pids %s", self.workers,
                     ", ".join(str(worker.pid) for worker in self.slots))
            self._write_state()
            if on_ready is not None:
                on_ready(listening_addresses(self.application))
            if self.supervision.watchdog_interval is not None:
                self.next_ping = time.monotonic()  # systemd watches from readiness on
            if self.refresh_pending:
                self._refresh()
            if self.reload_pending:
                self._on_reload_signal()
        elif self.announced:
            self._write_state()

    def _stop(self, signum: signal.Signals) -> None:
        if self.stopping:
            log.warning("received %s again, telling the workers to stop now", signum.name)
            self._forward(STOP_NOW_SIGNAL)
            return
        self._stop_for(f"received {signum.name}")

    def _stop_for(self, reason: str) -> None:
        log.info("%s, stopping %d workers", reason, len(self._alive()))
        self.stopping = True
        self.supervision.stopping(f"stopping: {wording.count(len(self._alive()), 'worker')}")
        self._write_state()
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int) -> None:
        for worker in self._alive():
            try:
                os.kill(worker.pid, signum)
            except ProcessLookupError:
                pass  # died a moment ago; its SIGCHLD is on the way

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for worker in self.slots:
                if worker.pid == pid:
                    self._on_death(worker, status)

    def _on_death(self, worker: Worker, status: int) -> None:
        worker.last_exit = worker.killed_for or _describe_exit(status)
        how = f"(pid {worker.pid}) {worker.last_exit}"
        lived = time.time() - worker.started
        was_ready = worker.ready
        worker.pid, worker.ready, worker.killed_for = 0, False, ""
        self.counts.retire(worker.slot)
        if self.stopping:
            log.info("worker %d %s", worker.number, how)
            return
        if not self.announced:
            self._give_up(f"worker {worker.number} {how} during start-up")
        worker.quick_deaths = 1 if was_ready and lived >= STEADY_AFTER else worker.quick_deaths + 1
        if worker.quick_deaths > GIVE_UP_AFTER:
            self._give_up(f"worker {worker.number} {how}, its {worker.quick_deaths}th quick "
                          "death in a row")
        delay = 0.0 if worker.quick_deaths == 1 else min(
            LONGEST_RETRY, FIRST_RETRY * 2 ** (worker.quick_deaths - 2))
        log.warning("worker %d %s; restarting it in %.1f s", worker.number, how, delay)
        worker.restart_at = time.monotonic() + delay
        self._write_state()

    def _give_up(self, why: str) -> None:
        log.error("%s; giving up: stopping the daemon", why)
        self.stopping = True
        self._forward(signal.SIGTERM)
        while self._alive():
            self._reap()  # a SIGCHLD already taken may stand for several deaths
            if self._alive():
                signal.sigtimedwait((signal.SIGCHLD,), 1.0)
        raise WorkersFailed(f"{why}; the log says more")

    def _start(self, worker: Worker) -> None:
        if worker.started:
            worker.restarts += 1
        worker.started = time.time()
        worker.ready = False
        pid = os.fork()
        if pid == 0:
            os._exit(self._serve_in_worker(worker.slot))
        worker.pid = pid

    def _serve_in_worker(self, slot: int) -> int:
        """The whole life of a worker process; never returns into the main's code."""
        try:
            end_with_parent()
            self.supervision.close()  # only the main process speaks to the supervisor
            main = os.getppid()
            if self.claim is not None:
                self.claim.lock.close()  # only the main process holds the lock
            for other, sockets in enumerate(self.sockets):
                if other != slot:
                    for sock in sockets:
                        sock.close()
            for server, sock in zip(self.servers, self.sockets[slot]):
                server.use_socket(sock)
            set_process_name(f"{self.application.process_name or 'reverserd'}-{slot + 1}")
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGCHLD, READY_SIGNAL,
                                                        COUNTED_SIGNAL))

            policy = ConnectionPolicy(self.limits)

            def write_counts() -> None:
                self.counts.write(slot, [
                    *(server.lines_served - before
                      for server, before in zip(self.servers, self.baseline)),
                    *(policy.closed[reason] for reason in CLOSE_REASONS),
                    policy.pauses, policy.accepted, policy.handler_errors, policy.open])

            def report_counts() -> None:
                write_counts()
                os.kill(main, COUNTED_SIGNAL)

            def wait_to_accept() -> None:
                """A new generation's worker: started, but accepting only once the
                main process took over from the last generation."""
                os.kill(main, READY_SIGNAL)
                while signal.sigtimedwait((ACCEPT_SIGNAL,), ACCEPT_PATIENCE) is None:
                    if os.getppid() != main:
                        raise UserError("the main process went away before it took over")

            held = any(server.hold_accepting for server in self.servers)
            with asyncio.Runner(loop_factory=self.loop_factory) as loop_runner:
                loop_runner.run(runner.serve(self.application,
                                             None if held
                                             else lambda _: os.kill(main, READY_SIGNAL),
                                             report_counts, policy,
                                             lambda: self.counts.beat(slot),
                                             stop_now_signal=STOP_NOW_SIGNAL,
                                             take_over=wait_to_accept if held else None))
            write_counts()
            return 0
        except runner.ApplicationFailed:
            return 1  # the traceback is logged already
        except BaseException:
            log.exception("worker %d failed", slot + 1)
            return 1
        finally:
            logging.shutdown()

    def refresh_state(self) -> None:
        """Rewrite the state file now (the counts are those last reported)."""
        self._write_state()

    def _lines_with_counts(self) -> dict[str, int]:
        """Lines served by each listener, by key, the workers' included."""
        lines: dict[str, int] = {}
        for server, extra in zip(self.servers, self.counts.totals(self.workers)):
            lines.setdefault(bound_key(server), server.lines_served + extra)
        return lines

    def _hear_from_predecessor(self) -> None:
        """The last generation's word, once this one took over: the lines its
        workers answered after saving the state this one started from."""
        for receiving in self.receiving:
            if receiving.on_lines != self._add_lines_to_baseline:
                receiving.on_lines = self._add_lines_to_baseline
            receiving.poll()
        self.receiving[:] = [receiving for receiving in self.receiving if not receiving.over]

    def _add_lines_to_baseline(self, lines: dict[str, int]) -> None:
        for index, server in enumerate(self.servers):
            number = lines.pop(bound_key(server), 0)
            if number > 0:
                self.baseline[index] += number
                server.add_lines_served(number)

    def _save_with_counts(self, save: Callable[[], pathlib.Path]) -> pathlib.Path:
        """Save the application's state with the workers' counts so far in it."""
        totals = self.counts.totals(self.workers)
        for server, extra in zip(self.servers, totals):
            server.add_lines_served(extra)
        try:
            return save()
        finally:
            for server, extra in zip(self.servers, totals):
                server.add_lines_served(-extra)

    def _add_counts_to_application(self) -> None:
        for server, extra in zip(self.servers, self.counts.totals(self.workers)):
            server.add_lines_served(extra)

    def _write_state(self) -> None:
        if self.claim is None or not self.announced:
            return
        totals = self.counts.totals(self.workers)
        lines = totals[:len(self.servers)]
        closed = totals[len(self.servers):len(self.servers) + len(CLOSE_REASONS)]
        paused, accepted, handler_errors, connections_open = totals[-4:]
        workers = tuple(WorkerState(worker.number, worker.pid, worker.started, worker.restarts,
                                    worker.last_exit)
                        for worker in self.slots if worker.pid)
        try:
            self.claim.write_state(listening_addresses(self.application),
                                   sum(self.baseline) + sum(lines), workers,
                                   closed={reason: count for reason, count
                                           in zip(CLOSE_REASONS, closed) if count},
                                   paused=paused, stopping=self.stopping,
                                   activity=Activity(connections_open, accepted,
                                                     handler_errors))
        except OSError as error:
            log.warning("cannot write the state file: %s", error)


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
