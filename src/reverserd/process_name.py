"""The name ``ps -o comm`` and ``pgrep`` show for the serving process.

Started as ``python -m reverserd`` the kernel calls the process ``python3``;
``prctl(PR_SET_NAME)`` renames it (15 bytes at most, the kernel's limit).
"""

from __future__ import annotations

import ctypes

DEFAULT = "reverserd"
PR_SET_NAME = 15
MAX_BYTES = 15

_libc = ctypes.CDLL(None, use_errno=True)  # the C library python itself links


def set_process_name(name: str) -> None:
    """Rename this process; a name the kernel refuses is not worth failing for."""
    _libc.prctl(PR_SET_NAME, name.encode("utf-8")[:MAX_BYTES], 0, 0, 0)

