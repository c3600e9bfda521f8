"""Which event loop serves: the standard library's, or uvloop when asked or installed.

uvloop is an optional extra (``pip install 'reverserd[uvloop]'``); nothing
else in reverserd depends on it.
"""

from __future__ import annotations

import asyncio
import importlib
import select
from collections.abc import Callable

from reverserd.errors import UserError
from reverserd.polling import EpollSelector

CHOICES = ("auto", "asyncio", "uvloop")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str) -> tuple[str, LoopFactory]:
    """The name and maker of the loop ``--loop choice`` stands for.

    ``auto`` takes uvloop when it can be imported and the standard loop
    otherwise; ``uvloop`` without uvloop installed is a one-line error.
    """
    if choice == "asyncio":
        return "asyncio", standard_loop
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise UserError("--loop uvloop: uvloop is not installed "
                            "(pip install 'reverserd[uvloop]')") from None
        return "asyncio", standard_loop
    return "uvloop", uvloop.new_event_loop


def standard_loop() -> asyncio.AbstractEventLoop:
    """The standard library's event loop, on reverserd's epoll selector where
    there is epoll (see ``polling``)."""
    if hasattr(select, "epoll"):
        return asyncio.SelectorEventLoop(EpollSelector())
    return asyncio.new_event_loop()
