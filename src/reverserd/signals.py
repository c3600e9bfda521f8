"""The signals an operator or a supervisor sends reverserd, and keeping the
ones that arrive before they can be handled.

This module imports nothing slow: the command defers these signals as its
very first step (``entry``), so that one sent while reverserd is still
starting is remembered instead of killing it with its default action, and
takes effect once the event loop handles it. They are caught, not blocked:
a program the application starts meanwhile gets the default dispositions
and an empty signal mask, as any program expects.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REOPEN_SIGNALS = (signal.SIGUSR1,)
RELOAD_SIGNAL = signal.SIGHUP
REFRESH_SIGNAL = signal.SIGUSR2
HANDLED_SIGNALS = (*STOP_SIGNALS, *REOPEN_SIGNALS, RELOAD_SIGNAL, REFRESH_SIGNAL)

_pending: list[int] = []  # caught while deferring: each signal once, in order of arrival


def defer() -> None:
    """Remember the handled signals until ``redeliver`` or ``release``.

    A second stop signal while deferring stops at once (``KeyboardInterrupt``):
    a start-up that hangs can still be interrupted, as a second Ctrl-C would.
    """
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _remember)


def _remember(signum: int, frame: FrameType | None) -> None:
    if signum in STOP_SIGNALS and any(pending in STOP_SIGNALS for pending in _pending):
        restore_defaults()
        raise KeyboardInterrupt
    if signum not in _pending:
        _pending.append(signum)


def restore_defaults() -> None:
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                      else signal.SIG_DFL)


def redeliver() -> None:
    """Send each remembered signal again, to whatever handles it now."""
    pending = list(_pending)
    _pending.clear()
    for signum in pending:
        os.kill(os.getpid(), signum)


def take() -> list[int]:
    """The remembered signals, forgotten: a process now waiting for them
    otherwise (``sigtimedwait``) acts on those another thread caught."""
    pending = list(_pending)
    _pending.clear()
    return pending


def release() -> None:
    """For a process that will not serve: the default dispositions back, and
    what came meanwhile delivered to them."""
    restore_defaults()
    redeliver()


def block() -> None:
    """Keep the handled signals pending in the kernel until ``unblock``; a fork inherits this."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
