"""The signals an operator or a supervisor sends reverserd, and holding them
until they can be handled.

This module imports nothing slow: the command holds these signals as its
very first step (``entry``), so that one sent while reverserd is still
starting waits, blocked, instead of killing it with its default action, and
takes effect once the event loop handles it.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REOPEN_SIGNALS = (signal.SIGUSR1, signal.SIGHUP)
REFRESH_SIGNAL = signal.SIGUSR2
HANDLED_SIGNALS = (*STOP_SIGNALS, *REOPEN_SIGNALS, REFRESH_SIGNAL)


def hold() -> None:
    """Keep the handled signals pending until ``release``; a fork inherits this."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)


def release() -> None:
    """Deliver what was held, to whatever handles each signal now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
