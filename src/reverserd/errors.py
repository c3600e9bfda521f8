"""Failures the operator can fix, reported as one line instead of a traceback."""

from __future__ import annotations

import os


class UserError(Exception):
    """A startup problem caused by the environment or the options given."""

    exit_status = 1


class UsageError(UserError):
    """The command line itself is wrong (argparse's convention: exit 2)."""

    exit_status = 2


def os_reason(error: OSError) -> str:
    """An OS error as the lower-case phrase that ends a one-line message."""
    return os.strerror(error.errno).lower() if error.errno else str(error)
