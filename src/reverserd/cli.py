"""The ``reverserd`` command: options to a ``Config``, errors to one line."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from reverserd import __version__, application, config, runner
from reverserd.errors import UsageError, UserError
from reverserd.logs import LEVELS, log_to_stdout

VERBS = ("run",)
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
    parser.add_argument("verb", nargs="?", choices=VERBS,
                        help="run: serve in the foreground (same as --foreground)")
    parser.add_argument("-n", "--foreground", action="store_true",
                        help="stay attached to the terminal and log to stdout")
    parser.add_argument("-y", "--python", dest="application_file", type=pathlib.Path,
                        metavar="FILE",
                        help="run the module-level 'application' of this Python file "
                        "instead of the built-in reverser")
    parser.add_argument("--port", type=_option_type(config.parse_port), default=defaults.port,
                        help="TCP port of the built-in reverser; 0 picks a free one "
                        "(default: %(default)s)")
    parser.add_argument("--interface", default=defaults.interface, metavar="ADDRESS",
                        help="address the built-in reverser listens on (default: %(default)s)")
    parser.add_argument("--max-line-length", type=_option_type(config.parse_positive_int),
                        default=defaults.max_line_length, metavar="BYTES",
                        help="the built-in reverser closes a connection that sends a "
                        "longer line (default: %(default)s)")
    parser.add_argument("--shutdown-timeout", type=_option_type(config.parse_seconds),
                        default=defaults.shutdown_timeout, metavar="SECONDS",
                        help="at stop, how long the built-in reverser's connections may "
                        "take to answer what they received (default: %(default)s)")
    parser.add_argument("--log-level", type=_option_type(config.parse_log_level),
                        default=defaults.log_level, metavar="LEVEL",
                        help=f"one of {', '.join(LEVELS)} (default: %(default)s)")
    parser.add_argument("--version", action="version", version=f"reverserd {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> config.Config:
    """Turn a command line into a validated ``Config``."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.verb is None and not options.foreground:
        parser.print_usage(sys.stderr)
        raise UsageError("give a verb (run) or --foreground")
    return config.Config(
        port=options.port,
        interface=options.interface,
        max_line_length=options.max_line_length,
        shutdown_timeout=options.shutdown_timeout,
        log_level=options.log_level,
        application_file=options.application_file,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        settings = parse_config(argv)
        log_to_stdout(settings.log_level)
        runner.run(application.load(settings))
    except UserError as error:
        print(f"reverserd: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
    return 0
