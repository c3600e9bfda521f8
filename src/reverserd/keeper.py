"""Keeping the pid a supervisor watches through reloads of ``reverserd run``.

runit, s6 and supervisord watch the process they started: its exit is the
service's end. A reload serves on from a new process, so the first
generation, once it has handed over, stays on as the *keeper*: it serves
nothing and holds no socket, passes every signal on to the generation
serving now, and exits with that generation's status once it ends.

Each generation is started by the one before it. The keeper is their
subreaper, so a generation whose parent handed over and exited becomes the
keeper's child; and each generation names its successor, once it has taken
over, through a pipe the keeper reads (``KEEPER_VARIABLE``).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal

from reverserd import signals

log = logging.getLogger(__name__)

KEEPER_VARIABLE = "REVERSERD_KEEPER_FD"
WAITED_FOR = (*signals.HANDLED_SIGNALS, signal.SIGQUIT)
PR_SET_CHILD_SUBREAPER = 36
WAKE_INTERVAL = 1.0  # seconds: the pipe is read at least this often
PIPE_BYTES = 4096

_libc = ctypes.CDLL(None, use_errno=True)


class Keeper:
    """The pipe through which generations name their successors."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.announced = b""

    @classmethod
    def adopt_orphans(cls) -> Keeper:
        """Become the subreaper of the generations to come, and open the pipe."""
        if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot become a subreaper")
        return cls()


    def latest(self, current: int) -> int:
        """The last generation named through the pipe, else ``current``."""
        try:
            while chunk := os.read(self.read_fd, PIPE_BYTES):
                self.announced = (self.announced + chunk)[-PIPE_BYTES:]
        except BlockingIOError:
            pass
        named = [line for line in self.announced.split(b"\n")[:-1] if line.isdigit()]
        return int(named[-1]) if named else current

    async def keep(self, generation: int) -> int:
        """Wait, in the event loop, for ``generation`` and those after it to
        end; the exit status to leave with (128 + N after signal N).

        The loop's own signal handlers (see ``runner.serve``) pass signals on
        meanwhile: set up once, in the main thread, whichever thread of the
        process the kernel hands a signal to, and never reset between serving
        and keeping, so no signal finds this process without a handler. The
        generation serving is watched through a pidfd (uvloop keeps SIGCHLD
        for itself), and children are reaped at least every ``WAKE_INTERVAL``.
        """
        os.close(self.write_fd)
        self.write_fd = -1
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[int] = loop.create_future()
        watched = [-1, 0]  # a pidfd of the generation serving now, and its pid
        log.info("serving from pid %d on; this process stays to pass signals on", generation)

        def unwatch() -> None:
            if watched[0] >= 0:
                loop.remove_reader(watched[0])
                os.close(watched[0])
            watched[:] = [-1, 0]

        def look() -> None:
            current = self.latest(generation)
            status = self._reap(current)
            if status is not None:
                unwatch()
                if not ended.done():
                    ended.set_result(status)
            elif watched[1] != current:
                unwatch()
                try:
                    watched[:] = [os.pidfd_open(current), current]
                except ProcessLookupError:
                    return  # gone: the next look reaps it
                loop.add_reader(watched[0], look)

        def again() -> None:
            look()
            if not ended.done():
                loop.call_later(WAKE_INTERVAL, again)

        loop.add_signal_handler(signal.SIGQUIT, self.forward, signal.SIGQUIT, generation)
        again()
        try:
            return await ended
        finally:
            unwatch()
            loop.remove_signal_handler(signal.SIGQUIT)

    def keep_waiting(self, generation: int) -> int:
        """``keep`` for a main process without an event loop (``--workers``),
        whose main thread has the signals blocked: wait with ``sigtimedwait``,
        and take as well those another thread caught (``signals.take``)."""
        os.close(self.write_fd)
        self.write_fd = -1
        signal.pthread_sigmask(signal.SIG_BLOCK, (*WAITED_FOR, signal.SIGCHLD))
        log.info("serving from pid %d on; this process stays to pass signals on", generation)
        while True:
            info = signal.sigtimedwait((*WAITED_FOR, signal.SIGCHLD), WAKE_INTERVAL)
            for signum in [*([] if info is None else [info.si_signo]), *signals.take()]:
                if signum != signal.SIGCHLD:
                    self.forward(signum, generation)
            status = self._reap(self.latest(generation))
            if status is not None:
                return status

    def forward(self, signum: int, generation: int) -> None:
        """Pass ``signum`` on to the generation serving now."""
        try:
            os.kill(self.latest(generation), signum)
        except ProcessLookupError:
            pass  # it ended a moment ago: its SIGCHLD is on the way

    def _reap(self, current: int) -> int | None:
        """Collect ended children; the status to exit with once ``current``
        ended and named no successor."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid == 0:
                return None
            if pid == current and self.latest(current) == current:
                if os.WIFSIGNALED(status):
                    return 128 + os.WTERMSIG(status)
                return os.waitstatus_to_exitcode(status)


def environment(fd: int, keeper: int) -> dict[str, str]:
    """How a generation finds the keeper: its pipe (``fd``) and its pid."""
    return {KEEPER_VARIABLE: f"{fd}:{keeper}"}


def named_by_environment() -> tuple[int, int, int] | None:
    """The keeper's pipe, its pid and a pidfd of it, passed on by the last
    generation; removed from the environment. A generation ends with the
    keeper: the supervisor counts the service dead once the pid it watches is."""
    fd, _, pid = os.environ.pop(KEEPER_VARIABLE, "").partition(":")
    if not (fd.isdigit() and pid.isdigit()):
        return None
    try:
        os.set_inheritable(int(fd), False)
        return int(fd), int(pid), os.pidfd_open(int(pid))
    except OSError:
        return None


def name_successor(fd: int, successor: int) -> None:
    """Tell the keeper which generation serves now."""
    try:
        os.write(fd, f"{successor}\n".encode())
    except OSError as error:
        log.warning("cannot tell the keeping process about pid %d: %s", successor, error)
