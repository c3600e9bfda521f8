"""The ``reverserd`` command's entry point, kept apart so that it runs before
anything slow is imported.

Importing the rest of reverserd takes tens of milliseconds; a supervisor's
SIGHUP or SIGTERM arriving meanwhile would find no handler and kill the
process. Deferring the signals first leaves only the interpreter's own
start-up (and the ``import re`` of the script pip writes) exposed.
"""

from __future__ import annotations

from reverserd import TYPE_CHECKING, signals

if TYPE_CHECKING:
    from typing import NoReturn


def command() -> NoReturn:
    """The console script: defer the signals, then run the command line."""
    signals.defer()
    from reverserd import cli  # imported only once the signals are deferred

    cli.command()
