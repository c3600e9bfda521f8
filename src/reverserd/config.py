"""Every option reverserd takes: its default and what makes a value valid."""

from __future__ import annotations

import dataclasses
import os
import pathlib

from reverserd.internet import DEFAULT_SHUTDOWN_TIMEOUT
from reverserd.logs import LEVELS
from reverserd.protocol import DEFAULT_MAX_LINE_LENGTH

DEFAULT_PORT = 2323
DEFAULT_INTERFACE = "127.0.0.1"
DEFAULT_PIDFILE = "reverserd.pid"
DEFAULT_LOGFILE_NAME = "reverserd.log"
DEFAULT_UMASK = 0o077
MAX_WORKERS = 256


@dataclasses.dataclass(frozen=True)
class Config:
    """One run's settings, validated before anything starts.

    Paths are absolute (the command line resolves them against the
    directory it was run in), so changing into ``rundir`` keeps their meaning.
    """

    port: int = DEFAULT_PORT
    interface: str = DEFAULT_INTERFACE
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    log_level: str = "info"
    application_file: pathlib.Path | None = None
    state_file: pathlib.Path | None = None
    save: bool | None = None
    pidfile: pathlib.Path | None = None
    rundir: pathlib.Path | None = None
    umask: int | None = None
    logfile: pathlib.Path | None = None
    log_max_bytes: int = 1_000_000
    log_backups: int = 5
    syslog: bool = False
    syslog_prefix: str = "reverserd"
    syslog_address: str = "/dev/log"
    start_timeout: float = 10.0
    stop_timeout: float = 10.0
    user: str | None = None
    group: str | None = None
    chroot: pathlib.Path | None = None
    loop: str = "auto"
    workers: int = 1

    @property
    def saves_state(self) -> bool:
        """Whether ``<Name>-shutdown.json`` is written at stop: as with twistd,
        by default only for an application run from a state file."""
        return self.state_file is not None if self.save is None else self.save

    @property
    def daemon_logfile(self) -> pathlib.Path | None:
        """Where a daemon logs: the file given, else ``reverserd.log`` next to
        the pidfile; ``None`` when it logs to syslog instead."""
        if self.syslog:
            return None
        if self.logfile is not None:
            return self.logfile
        directory = self.pidfile.parent if self.pidfile else pathlib.Path.cwd()
        return directory / DEFAULT_LOGFILE_NAME


def parse_port(text: str) -> int:
    """A TCP port; 0 asks the kernel for any free one."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise ValueError(f"expected a port number from 0 to 65535, got {text!r}")
    return int(text)


def parse_umask(text: str) -> int:
    """An octal file-creation mask such as 022 or 0o077."""
    digits = text.removeprefix("0o")
    if not digits or not set(digits) <= set("01234567") or int(digits, 8) > 0o777:
        raise ValueError(f"expected an octal mask from 000 to 777, got {text!r}")
    return int(digits, 8)


def parse_byte_count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected a whole number of bytes, 0 or more, got {text!r}")
    return int(text)


def parse_positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def parse_workers(text: str) -> int:
    """A number of worker processes, or ``auto`` for one per CPU this process may use."""
    if text == "auto":
        return len(os.sched_getaffinity(0))
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"expected 'auto' or a number from 1 to {MAX_WORKERS}, got {text!r}")
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
