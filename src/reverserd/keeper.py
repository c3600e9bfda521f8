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

import ctypes
import logging
import os
import signal

from reverserd import signals

log = logging.getLogger(__name__)

KEEPER_VARIABLE = "REVERSERD_KEEPER_FD"
PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (*signals.HANDLED_SIGNALS, signal.SIGQUIT)
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

    def keep(self, generation: int) -> int:
        """Pass signals on to ``generation`` and those after it until the last
        one ends; the exit status to leave with (128 + N after signal N)."""
        os.close(self.write_fd)
        signal.pthread_sigmask(signal.SIG_BLOCK, (*FORWARDED, signal.SIGCHLD))
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)  # blocked: waited for, never acted on
        log.info("serving from pid %d on; this process stays to pass signals on", generation)
        current = generation
        while True:
            info = signal.sigtimedwait((*FORWARDED, signal.SIGCHLD), WAKE_INTERVAL)
            current = self.latest(current)
            if info is not None and info.si_signo != signal.SIGCHLD:
                try:
                    os.kill(current, info.si_signo)
                except ProcessLookupError:
                    pass  # it ended a moment ago: its SIGCHLD is on the way
            ended = self._reap(current)
            if ended is not None:
                return ended

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
