"""Every option reverserd takes: its default and what makes a value valid."""

from __future__ import annotations

import dataclasses
import pathlib

from reverserd.internet import DEFAULT_SHUTDOWN_TIMEOUT
from reverserd.logs import LEVELS
from reverserd.protocol import DEFAULT_MAX_LINE_LENGTH

DEFAULT_PORT = 2323
DEFAULT_INTERFACE = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Config:
    """One run's settings, validated before anything starts."""

    port: int = DEFAULT_PORT
    interface: str = DEFAULT_INTERFACE
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    log_level: str = "info"
    application_file: pathlib.Path | None = None


def parse_port(text: str) -> int:
    """A TCP port; 0 asks the kernel for any free one."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise ValueError(f"expected a port number from 0 to 65535, got {text!r}")
    return int(text)


def parse_positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"expected a number of seconds, 0 or more, got {text!r}")
    return seconds


def parse_log_level(text: str) -> str:
    level = text.lower()
    if level not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}, got {text!r}")
    return level
