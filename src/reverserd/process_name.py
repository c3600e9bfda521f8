"""The name ``ps -o comm`` and ``pgrep`` show for the serving process.

Started as ``python -m reverserd`` the kernel calls the process ``python3``;
``prctl(PR_SET_NAME)`` renames it (15 bytes at most, the kernel's limit).
A worker process also asks, through the same call, to be told when the
process that started it dies.
"""

from __future__ import annotations

import ctypes
import signal

DEFAULT = "reverserd"
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
MAX_BYTES = 15

_libc = ctypes.CDLL(None, use_errno=True)  # the C library python itself links


def set_process_name(name: str) -> None:
    """Rename this process; a name the kernel refuses is not worth failing for."""
    _libc.prctl(PR_SET_NAME, name.encode("utf-8")[:MAX_BYTES], 0, 0, 0)


def end_with_parent() -> None:
    """Have the kernel kill this process when its parent dies, so a worker
    never outlives the main process that owns the pidfile. SIGKILL, not
    SIGTERM: a stopped or wedged worker would never act on a SIGTERM, and
    the main process only dies without stopping its workers when it is
    killed itself."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
