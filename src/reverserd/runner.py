"""The life of a running application: start, serve until a signal, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
from collections.abc import Iterator

from reverserd import __version__
from reverserd.errors import UserError
from reverserd.service import Application

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ApplicationFailed(UserError):
    """The application raised while starting or stopping; the traceback is in the log."""


def run(application: Application) -> None:
    """Bind, then serve ``application`` until SIGTERM or SIGINT; then stop it.

    Binding happens before the event loop exists, so a later step can give
    up root (or fork) in between without a loop crossing it.
    """
    log.info("reverserd %s starting: Python %s, pid %d, application %s",
             __version__, platform.python_version(), os.getpid(), application.name)
    application.privileged_start_service()
    try:
        asyncio.run(serve(application))
    finally:
        log.info("stopped")


async def serve(application: Application) -> None:
    """Start ``application``, wait for a stop signal, stop it gracefully."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_stop_signal(signum: int) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop_requested.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_stop_signal, signum)
    try:
        with _reported(application, "failed to start"):
            await application.start_service()
        await stop_requested.wait()
        with _reported(application, "did not stop cleanly"):
            await application.stop_service()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


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
