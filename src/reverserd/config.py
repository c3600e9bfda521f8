"""Every option reverserd takes: its default and what makes a value valid."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import pathlib
import re
from typing import TYPE_CHECKING

from reverserd import limits
from reverserd.logs import LEVELS, LOG_FORMATS
from reverserd.persist import MAX_ID, quoted
from reverserd.protocol import DEFAULT_MAX_LINE_LENGTH

if TYPE_CHECKING:  # endpoints checks interfaces with this module's parse_interface
    from reverserd.endpoints import Endpoint
    from reverserd.handover import Succeeding
    from reverserd.recorded import Layer

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORT = 2323
DEFAULT_INTERFACE = "127.0.0.1"
DEFAULT_PIDFILE = "reverserd.pid"
DEFAULT_LOGFILE_NAME = "reverserd.log"
DEFAULT_UMASK = 0o077
MAX_WORKERS = 256
MAX_DESCRIPTOR = 2**20  # Linux's largest nr_open
# What each option may be: ranges wide enough for any real use, narrow enough
# that no value can overflow a system call, a timer or memory.
MAX_LINE_LENGTH = 16 * 1024 * 1024
MAX_LOG_BYTES = 2**40
MAX_LOG_BACKUPS = 1000
MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_SOCKET_PATH_BYTES = 107  # sun_path holds 108 bytes, the closing NUL included
MAX_NAME_LENGTH = 255  # a user or group name
MAX_SYSLOG_IDENT = 64
MAX_HOST_NAME = 253
MAX_HOST_LABEL = 63
# An interface name (``eth0``, ``eth0.100``) or its index: 1 to 15 characters, dots only
# between others (the kernel refuses "." and "..", and the resolver empty labels).
IPV6_SCOPE = re.compile(r"(?=.{1,15}$)[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
HOST_LABEL = re.compile(rf"(?!-)[A-Za-z0-9-]{{1,{MAX_HOST_LABEL}}}(?<!-)")


@dataclasses.dataclass(frozen=True)
class Config:
    """One run's settings, validated before anything starts.

    Paths are absolute (the command line resolves them against the
    directory it was run in), so changing into ``rundir`` keeps their meaning.
    """

    port: int = DEFAULT_PORT
    interface: str = DEFAULT_INTERFACE
    listen: tuple[Endpoint, ...] = ()  # when empty, port and interface say where
    proxy_from: tuple[Network, ...] = limits.DEFAULT_PROXY_FROM
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    shutdown_timeout: float = limits.DEFAULT_SHUTDOWN_TIMEOUT
    log_level: str = "info"
    log_format: str | None = None  # None: full, or journal when stdout is the journal
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
    worker_timeout: float = limits.DEFAULT_WORKER_TIMEOUT
    backlog: int = limits.DEFAULT_BACKLOG
    max_connections: int = limits.DEFAULT_MAX_CONNECTIONS
    max_connections_per_peer: int = limits.DEFAULT_MAX_CONNECTIONS_PER_PEER
    compact_after: int = limits.DEFAULT_COMPACT_AFTER
    idle_timeout: float = limits.DEFAULT_IDLE_TIMEOUT
    write_timeout: float = limits.DEFAULT_WRITE_TIMEOUT
    ready_fd: int | None = None
    json: bool = False  # status: as one JSON object
    layers: tuple[Layer, ...] = ()  # the command lines these options come from
    successor: Succeeding | None = None  # the generation this process takes over from

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


@dataclasses.dataclass(frozen=True)
class WholeNumber:
    """A whole-number option's range: called with the option's text, returns
    its value or raises ``ValueError`` quoting the text."""

    what: str  # how the message names the number, e.g. "a port number"
    low: int
    high: int

    @property
    def range(self) -> str:
        return f"{self.low} to {self.high}"

    def __call__(self, text: str) -> int:
        # The length check comes first: int() of thousands of digits is slow
        # and then refuses with a message of its own.
        digits = text.lstrip("0") if text.isascii() and text.isdigit() else None
        if digits is None or len(digits) > len(str(self.high)) \
                or not self.low <= int(text) <= self.high:
            raise ValueError(f"expected {self.what} from {self.range}, got {quoted(text)}")
        return int(text)


@dataclasses.dataclass(frozen=True)
class Seconds:
    """A duration option's range, at most ``high`` (a day): called with the
    option's text, returns its value or raises ``ValueError`` quoting the
    text. NaN and infinity are refused like any value out of range."""

    low: float
    high: float = limits.MAX_SECONDS
    above_low: bool = False  # ``low`` itself is refused
    zero_is_off: bool = False  # 0 is accepted too: it turns the timeout off

    @property
    def range(self) -> str:
        span = (f"above {self.low:g}, up to {self.high:g}" if self.above_low
                else f"{self.low:g} to {self.high:g}")
        return f"0 (off) or {span}" if self.zero_is_off else span

    def __call__(self, text: str) -> float:
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        in_range = (seconds > self.low if self.above_low else seconds >= self.low) \
            and seconds <= self.high
        if not (in_range or (self.zero_is_off and seconds == 0)):
            raise ValueError(f"expected a number of seconds, {self.range}, got {quoted(text)}")
        return seconds + 0.0  # -0 as 0


parse_port = WholeNumber("a port number", 0, 65535)
parse_max_line_length = WholeNumber("a number of bytes", 1, MAX_LINE_LENGTH)
parse_log_max_bytes = WholeNumber("a number of bytes", 0, MAX_LOG_BYTES)
parse_log_backups = WholeNumber("a number", 1, MAX_LOG_BACKUPS)
parse_max_connections = WholeNumber("a number", 1, limits.MAX_CONNECTIONS)
parse_max_connections_per_peer = WholeNumber("a number", 0, limits.MAX_CONNECTIONS)
parse_compact_after = WholeNumber("a number", 0, limits.MAX_CONNECTIONS)
parse_backlog = WholeNumber("a number", 1, limits.MAX_BACKLOG)
parse_shutdown_timeout = Seconds(0)
parse_start_timeout = Seconds(0, above_low=True)  # 0 would kill every daemon it starts
parse_stop_timeout = Seconds(0)
parse_idle_timeout = Seconds(1, zero_is_off=True)
parse_write_timeout = Seconds(1)
parse_worker_timeout = Seconds(1)
_parse_descriptor = WholeNumber("a file descriptor number", 3, MAX_DESCRIPTOR)


def parse_ready_fd(text: str) -> int:
    """A descriptor number for readiness; 0 to 2 are the standard streams,
    never a readiness channel. ``check_ready_fd`` then checks that it is
    open for writing, in the process it was given to (a recorded command
    line replayed later is not)."""
    return _parse_descriptor(text)


def parse_log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {quoted(text)}")
    return text


def _octal_permissions(text: str, what: str) -> int:
    digits = text.removeprefix("0o")
    if not digits or not set(digits) <= set("01234567") or int(digits, 8) > 0o777:
        raise ValueError(f"expected an octal {what} from 000 to 777, got {quoted(text)}")
    return int(digits, 8)


def parse_umask(text: str) -> int:
    """An octal file-creation mask such as 022 or 0o077."""
    return _octal_permissions(text, "mask")


def parse_mode(text: str) -> int:
    """An octal file mode such as 660 or 0o600."""
    return _octal_permissions(text, "mode")


def parse_workers(text: str) -> int:
    """A number of worker processes, or ``auto`` for one per CPU this process
    may use (at most ``MAX_WORKERS``)."""
    if text == "auto":
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS)
    if not (text.isascii() and text.isdigit()) or len(text) > 4 \
            or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"expected 'auto' or a number from 1 to {MAX_WORKERS}, "
                         f"got {quoted(text)}")
    return int(text)


def parse_interface(text: str) -> str:
    """An address to listen on: an IPv4 or IPv6 address, or a host name.

    Checked here because the resolver's own checks end in a traceback (the
    IDNA codec's ``label too long``) or in a vague "name or service not
    known". A host name's dot-separated labels are 1 to 63 letters, digits
    or ``-``, not starting or ending with ``-``, 253 characters in all (a
    final dot aside); an IPv6 address may end with ``%`` and an interface
    name (at most 15 characters, as the kernel allows).
    """
    if "%" not in text or IPV6_SCOPE.fullmatch(text.partition("%")[2]):
        try:
            ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return text
    name = text.removesuffix(".")
    if not (len(name) <= MAX_HOST_NAME and all(map(HOST_LABEL.fullmatch, name.split(".")))):
        raise ValueError(f"expected an IP address or a host name (labels of 1 to "
                         f"{MAX_HOST_LABEL} letters, digits or '-', {MAX_HOST_NAME} "
                         f"characters in all), got {quoted(text)}")
    return text


def parse_proxy_from(text: str) -> tuple[Network, ...]:
    """Networks whose hosts may send a PROXY header: ``CIDR[,CIDR...]``."""
    parts = text.split(",")
    if len(parts) > limits.MAX_PROXY_NETWORKS:
        raise ValueError(f"expected at most {limits.MAX_PROXY_NETWORKS} networks, "
                         f"got {len(parts)}")
    networks = []
    for part in parts:
        try:
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise ValueError(f"expected networks such as 127.0.0.0/8,::1 separated by "
                             f"commas, got {quoted(part)}") from None
    return tuple(networks)


def parse_path(text: str) -> pathlib.Path:
    """A file or directory name, within what the kernel takes (``PATH_MAX``)."""
    size = len(os.fsencode(text)) if "\0" not in text else 0
    if not 0 < size <= MAX_PATH_BYTES:
        raise ValueError(f"expected a path of 1 to {MAX_PATH_BYTES} bytes without NUL, "
                         f"got {quoted(text)}")
    return pathlib.Path(text)


def parse_account(text: str) -> str:
    """A user or group: a name, or a number the kernel can take as an id."""
    if text.isascii() and text.isdigit():
        if len(text.lstrip("0")) > len(str(MAX_ID)) or int(text) > MAX_ID:
            raise ValueError(f"expected an id from 0 to {MAX_ID}, got {quoted(text)}")
    elif not 0 < len(text) <= MAX_NAME_LENGTH or "\0" in text:
        raise ValueError(f"expected a name of 1 to {MAX_NAME_LENGTH} characters or a "
                         f"number, got {quoted(text)}")
    return text


def parse_syslog_prefix(text: str) -> str:
    """A syslog ident: it starts every message, so keep it short."""
    if len(text) > MAX_SYSLOG_IDENT or "\0" in text:
        raise ValueError(f"expected an ident of at most {MAX_SYSLOG_IDENT} characters "
                         f"without NUL, got {quoted(text)}")
    return text


def parse_syslog_address(text: str) -> str:
    """The system logger's socket: a path that fits a Unix socket address."""
    size = len(os.fsencode(text)) if "\0" not in text else 0
    if not 0 < size <= MAX_SOCKET_PATH_BYTES:
        raise ValueError(f"expected a socket path of 1 to {MAX_SOCKET_PATH_BYTES} bytes "
                         f"without NUL, got {quoted(text)}")
    return text


def parse_log_level(text: str) -> str:
    level = text.lower()
    if level not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}, got {quoted(text)}")
    return level
