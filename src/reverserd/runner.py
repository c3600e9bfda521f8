"""The life of a running application: start, serve until a signal, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import signal

from reverserd import __version__
from reverserd.errors import UserError
from reverserd.service import Application

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupFailed(UserError):
    """The application raised while starting; its traceback is in the log."""


def run(application: Application) -> None:
    """Bind, then serve ``application`` until SIGTERM or SIGINT; then stop it.

    Binding happens before the event loop exists, so a later step can give
    up root (or fork) in between without a loop crossing it.
    """
    log.info("reverserd %s starting: Python %s, pid %d, application %s",
             __version__, platform.python_version(), os.getpid(), application.name)
    application.privileged_start_service()
    asyncio.run(serve(application))
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
        try:
            await application.start_service()
        except UserError:
            raise
        except Exception as error:
            log.exception("application %s failed to start", application.name)
            raise StartupFailed(
                f"application {application.name} failed to start: "
                f"{type(error).__name__}: {error}"
            ) from None
        await stop_requested.wait()
        await application.stop_service()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
