"""The ``reverserd`` command: options to a ``Config``, a verb to an action,
errors to one line."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from reverserd import __version__, config, control
from reverserd.errors import UsageError, UserError
from reverserd.logs import LEVELS

ACTIONS: dict[str, Callable[[config.Config], int]] = {
    "run": control.run_foreground,
    "start": control.start,
    "stop": control.stop,
    "status": control.status,
    "restart": control.restart,
}
DAEMON_VERBS = ("start", "stop", "status", "restart")
VERB_HELP = ("run: serve in the foreground (same as --foreground); start: detach a daemon "
             "and return once it serves; stop: end it gracefully; status: say whether it "
             "runs (LSB exit codes); restart: stop, then start")
Value = TypeVar("Value")


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as one line (usage stays in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _option_type(parse: Callable[[str], Value]) -> Callable[[str], Value]:
    """Adapt a ``config`` validator so argparse shows its message verbatim."""

    def convert(text: str) -> Value:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    """One flat parser, so an option means the same before or after the verb."""
    defaults = config.Config()
    parser = _Parser(
        prog="reverserd",
        allow_abbrev=False,
        description="Serve the line-reversing protocol (or any application file) "
        "as a well-behaved Unix service.",
    )
    parser.add_argument("verb", nargs="?", choices=tuple(ACTIONS), help=VERB_HELP)
    parser.add_argument("-n", "--foreground", action="store_true",
                        help="stay attached to the terminal and log to stdout")
    parser.add_argument("-y", "--python", dest="application_file", type=pathlib.Path,
                        metavar="FILE",
                        help="run the module-level 'application' of this Python file "
                        "instead of the built-in reverser")
    _add_reverser_options(parser, defaults)
    _add_daemon_options(parser, defaults)
    _add_log_options(parser, defaults)
    parser.add_argument("--version", action="version", version=f"reverserd {__version__}")
    return parser


def _add_reverser_options(parser: argparse.ArgumentParser, defaults: config.Config) -> None:
    group = parser.add_argument_group("the built-in reverser")
    group.add_argument("--port", type=_option_type(config.parse_port), default=defaults.port,
                       help="TCP port; 0 picks a free one (default: %(default)s)")
    group.add_argument("--interface", default=defaults.interface, metavar="ADDRESS",
                       help="address to listen on (default: %(default)s)")
    group.add_argument("--max-line-length", type=_option_type(config.parse_positive_int),
                       default=defaults.max_line_length, metavar="BYTES",
                       help="a connection sending a longer line is closed "
                       "(default: %(default)s)")
    group.add_argument("--shutdown-timeout", type=_option_type(config.parse_seconds),
                       default=defaults.shutdown_timeout, metavar="SECONDS",
                       help="at stop, how long connections may take to answer what they "
                       "received (default: %(default)s)")


def _add_daemon_options(parser: argparse.ArgumentParser, defaults: config.Config) -> None:
    group = parser.add_argument_group("the daemon")
    group.add_argument("--pidfile", type=pathlib.Path, metavar="PATH",
                       help=f"pidfile; its lock and state files sit next to it (default: "
                       f"{config.DEFAULT_PIDFILE} in the current directory; in the "
                       "foreground, none)")
    group.add_argument("--rundir", type=pathlib.Path, metavar="DIR",
                       help="directory the daemon runs in (default: the current one)")
    group.add_argument("--umask", type=_option_type(config.parse_umask), metavar="OCTAL",
                       help="file-creation mask (default: "
                       f"{config.DEFAULT_UMASK:03o} for a daemon; unchanged in the "
                       "foreground)")
    group.add_argument("--start-timeout", type=_option_type(config.parse_seconds),
                       default=defaults.start_timeout, metavar="SECONDS",
                       help="how long start waits for the daemon to serve before killing "
                       "it (default: %(default)s)")
    group.add_argument("--stop-timeout", type=_option_type(config.parse_seconds),
                       default=defaults.stop_timeout, metavar="SECONDS",
                       help="how long stop waits after SIGTERM before SIGKILL "
                       "(default: %(default)s)")


def _add_log_options(parser: argparse.ArgumentParser, defaults: config.Config) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("--log-level", type=_option_type(config.parse_log_level),
                       default=defaults.log_level, metavar="LEVEL",
                       help=f"one of {', '.join(LEVELS)} (default: %(default)s)")
    destination = group.add_mutually_exclusive_group()
    destination.add_argument("--logfile", type=pathlib.Path, metavar="PATH",
                             help=f"log file (default: {config.DEFAULT_LOGFILE_NAME} next "
                             "to the pidfile; in the foreground, stdout)")
    destination.add_argument("--syslog", action="store_true",
                             help="log to the system logger instead of a file")
    group.add_argument("--log-max-bytes", type=_option_type(config.parse_byte_count),
                       default=defaults.log_max_bytes, metavar="BYTES",
                       help="rotate the log file at this size; 0 never rotates (for an "
                       "external logrotate and SIGUSR1) (default: %(default)s)")
    group.add_argument("--log-backups", type=_option_type(config.parse_positive_int),
                       default=defaults.log_backups, metavar="COUNT",
                       help="rotated log files kept (default: %(default)s)")
    group.add_argument("--syslog-prefix", default=defaults.syslog_prefix, metavar="IDENT",
                       help="syslog ident (default: %(default)s)")
    group.add_argument("--syslog-address", default=defaults.syslog_address, metavar="PATH",
                       help="the system logger's socket (default: %(default)s)")


def parse_command(argv: Sequence[str] | None = None) -> tuple[str, config.Config]:
    """Turn a command line into a verb and a validated ``Config``."""
    parser = build_parser()
    options = parser.parse_args(argv)
    verb = options.verb
    if options.foreground:
        if verb not in (None, "run"):
            raise UsageError(f"--foreground cannot be combined with {verb}")
        verb = "run"
    if verb is None:
        parser.print_usage(sys.stderr)
        raise UsageError(f"give a verb ({', '.join(ACTIONS)}) or --foreground")
    pidfile = options.pidfile
    if pidfile is None and verb in DAEMON_VERBS:
        pidfile = pathlib.Path(config.DEFAULT_PIDFILE)
    return verb, config.Config(
        port=options.port,
        interface=options.interface,
        max_line_length=options.max_line_length,
        shutdown_timeout=options.shutdown_timeout,
        log_level=options.log_level,
        application_file=options.application_file,
        pidfile=_absolute(pidfile),
        rundir=_absolute(options.rundir),
        umask=options.umask,
        logfile=_absolute(options.logfile),
        log_max_bytes=options.log_max_bytes,
        log_backups=options.log_backups,
        syslog=options.syslog,
        syslog_prefix=options.syslog_prefix,
        syslog_address=options.syslog_address,
        start_timeout=options.start_timeout,
        stop_timeout=options.stop_timeout,
    )


def _absolute(path: pathlib.Path | None) -> pathlib.Path | None:
    return None if path is None else path.absolute()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        verb, settings = parse_command(argv)
        return ACTIONS[verb](settings)
    except UserError as error:
        print(f"reverserd: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
