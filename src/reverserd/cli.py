"""The ``reverserd`` command: options to a ``Config``, a verb to an action,
errors to one line."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from reverserd import (
    __version__,
    activation,
    config,
    config_file,
    control,
    descriptions,
    endpoints,
    handover,
    loops,
    notify,
    recorded,
    signals,
)
from reverserd.errors import UsageError, UserError, os_reason
from reverserd.graphemes import segmenter
from reverserd.logs import LEVELS
from reverserd.pidfile import RunFiles

ACTIONS: dict[str, Callable[[config.Config], int]] = {
    "run": control.run_foreground,
    "start": control.start,
    "stop": control.stop,
    "status": control.status,
    "restart": control.restart,
    "reload": control.reload,
}
DAEMON_VERBS = ("start", "stop", "status", "restart", "reload")
#: Options that make no sense in a config file: they choose what to do, not how.
NOT_IN_CONFIG_FILE = frozenset({"help", "version", "config", "foreground", "ready_fd", "json"})
#: Options a recorded command line does not pass on to a restart or reload.
NOT_REPLAYED = frozenset({"verb", "help", "version", "foreground", "ready_fd", "json"})
#: Verbs that start from the options the daemon was started with.
REPLAYING_VERBS = ("restart", "reload")
#: Options naming files, made absolute as soon as parsed: a recorded command
#: line keeps its meaning when replayed from another directory.
PATH_OPTIONS = ("config", "application_file", "state_file", "pidfile", "rundir", "logfile",
                "chroot")
#: Options that exclude each other; a command-line one overrides the config file's.
EXCLUSIVE = (("logfile", "syslog"),)
#: Options that, given on a later command line, replace an earlier one's others.
REPLACES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    *((pair, pair) for pair in EXCLUSIVE),
    (("listen",), ("port", "interface")), (("port", "interface"), ("listen",)))
REVERSER_OPTIONS = ("port", "interface", "listen", "backlog", "max_line_length",
                    "shutdown_timeout")
MAX_LISTENERS = 64
SERVING_VERBS = ("run", "start", "restart")
STDOUT = pathlib.Path("-")
VERB_HELP = ("run: serve in the foreground (same as --foreground); start: detach a daemon "
             "and return once it serves (the default with -y or -f, as with twistd); stop: "
             "end it gracefully; status: say whether it runs (LSB exit codes); restart: "
             "stop, then start; reload: start a new generation on the same sockets, "
             "then retire the old one (also SIGHUP); restart and reload reuse the options "
             "the daemon was started with, overridden by those given")
Value = TypeVar("Value")
LIMITS_GROUP = "limits (per serving process; with --workers, per worker)"


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


class _Listeners(argparse.Action):
    """``--listen``, once per listener; a config file gives a list."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        given = getattr(namespace, self.dest)
        listeners = [] if not isinstance(given, list) else given
        if len(listeners) >= MAX_LISTENERS:
            raise argparse.ArgumentError(self, f"at most {MAX_LISTENERS} listeners")
        setattr(namespace, self.dest, [*listeners, values])

    @staticmethod
    def parse_item(text: str, base: pathlib.Path | None = None) -> endpoints.Endpoint:
        """One description; a relative path in it is taken from ``base``."""
        return descriptions.parse(text, base)


def _add_number(group: argparse._ArgumentGroup, *names: str,
                parse: config.WholeNumber | config.Seconds, default: float, metavar: str,
                help: str) -> None:
    """A numeric option whose help ends with its range and default."""
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    group.add_argument(*names, type=_option_type(parse), default=default, metavar=metavar,
                       help=f"{help} ({parse.range}; default: {shown})")


def build_parser(directory: pathlib.Path | None = None) -> argparse.ArgumentParser:
    """One flat parser, so an option means the same before or after the verb;
    relative paths in ``--listen`` are taken from ``directory`` (a recorded
    command line's), by default the current one."""
    defaults = config.Config()
    parser = _Parser(
        prog="reverserd",
        allow_abbrev=False,
        description="Serve the line-reversing protocol (or any application file) "
        "as a well-behaved Unix service.",
    )
    parser.add_argument("verb", nargs="?", choices=tuple(ACTIONS), help=VERB_HELP)
    parser.add_argument("-n", "--foreground", "--nodaemon", action="store_true",
                        help="stay attached to the terminal and log to stdout")
    parser.add_argument("--config", type=_option_type(config.parse_path), metavar="FILE",
                        help="read options from this TOML file (keys: the long option "
                        "names); options given here override it")
    parser.add_argument("--json", action="store_true",
                        help="with status: one JSON object on stdout (keys: see README)")
    _add_application_options(parser)
    _add_reverser_options(parser, defaults, directory)
    _add_daemon_options(parser, defaults)
    _add_account_options(parser)
    _add_log_options(parser, defaults)
    _add_limit_options(parser, defaults)
    _add_performance_options(parser, defaults)
    parser.add_argument("--version", action="version",
                        version=f"reverserd {__version__}, {segmenter()}")
    return parser


def _add_application_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the application")
    path = _option_type(config.parse_path)
    group.add_argument("-y", "--python", dest="application_file", type=path,
                       metavar="FILE",
                       help="run the module-level 'application' of this Python file "
                       "instead of the built-in reverser")
    group.add_argument("-f", "--file", dest="state_file", type=path, metavar="FILE",
                       help="run the application saved in this state file "
                       "(<Name>-shutdown.json); with -y, the file's application as saved "
                       "there; implies --save")
    saving = group.add_mutually_exclusive_group()
    saving.add_argument("--save", dest="save", action="store_const", const=True,
                        help="at stop, save the application's state to "
                        "<Name>-shutdown.json in the run directory (default: only "
                        "with --file)")
    saving.add_argument("-o", "--no-save", "--no_save", dest="save", action="store_const",
                        const=False, help="do not save the application's state at stop")


def _add_reverser_options(parser: argparse.ArgumentParser, defaults: config.Config,
                          directory: pathlib.Path | None) -> None:
    group = parser.add_argument_group("the built-in reverser")
    group.add_argument("--listen", action=_Listeners,
                       type=_option_type(functools.partial(_Listeners.parse_item,
                                                           base=directory)),
                       default=[], metavar="DESCRIPTION",
                       help="listen here; repeat for more (tcp:PORT[:interface=ADDR], "
                       "tcp6:PORT, unix:PATH[:mode=660], ssl:PORT:privateKey=FILE, "
                       "systemd:index=N|name=NAME, haproxy:<any of these>; see README). "
                       "Default: --port and --interface, or every socket systemd passed")
    _add_number(group, "--port", parse=config.parse_port, default=defaults.port,
                metavar="PORT", help="TCP port when no --listen is given; 0 picks a free one")
    group.add_argument("--interface", type=_option_type(config.parse_interface),
                       default=defaults.interface, metavar="ADDRESS",
                       help="IP address or host name to listen on when no --listen is "
                       "given (default: %(default)s)")
    group.add_argument("--proxy-from", type=_option_type(config.parse_proxy_from),
                       default=defaults.proxy_from, metavar="CIDR[,CIDR...]",
                       help="who may send the PROXY header a haproxy: listener requires; "
                       "a connection from elsewhere is closed (default: 127.0.0.0/8,::1)")
    _add_number(group, "--backlog", parse=config.parse_backlog, default=defaults.backlog,
                metavar="N", help="connections the kernel queues until they are accepted; "
                "it caps this at net.core.somaxconn")
    _add_number(group, "--max-line-length", parse=config.parse_max_line_length,
                default=defaults.max_line_length, metavar="BYTES",
                help="a connection sending a longer line is closed")
    _add_number(group, "--shutdown-timeout", parse=config.parse_shutdown_timeout,
                default=defaults.shutdown_timeout, metavar="SECONDS",
                help="at stop, how long connections may take to answer what they received")


def _add_daemon_options(parser: argparse.ArgumentParser, defaults: config.Config) -> None:
    group = parser.add_argument_group("the daemon")
    path = _option_type(config.parse_path)
    group.add_argument("--pidfile", type=path, metavar="PATH",
                       help=f"pidfile; its lock and state files sit next to it (default: "
                       f"{config.DEFAULT_PIDFILE} in the current directory; in the "
                       "foreground, none)")
    group.add_argument("-d", "--rundir", type=path, metavar="DIR",
                       help="directory the daemon runs in and saves its state to "
                       "(default: the current one; with --chroot, the jail's root)")
    group.add_argument("--umask", type=_option_type(config.parse_umask), metavar="OCTAL",
                       help="file-creation mask (default: "
                       f"{config.DEFAULT_UMASK:03o} for a daemon; unchanged in the "
                       "foreground)")
    _add_number(group, "--start-timeout", parse=config.parse_start_timeout,
                default=defaults.start_timeout, metavar="SECONDS",
                help="how long start waits for the daemon to serve before killing it")
    _add_number(group, "--stop-timeout", parse=config.parse_stop_timeout,
                default=defaults.stop_timeout, metavar="SECONDS",
                help="how long stop waits after SIGTERM before SIGKILL")
    group.add_argument("--ready-fd", type=_option_type(config.parse_ready_fd), metavar="FD",
                       help="once every listener serves, write a newline to this open "
                       "descriptor and close it (s6's notification-fd; 3 or above)")


def _add_account_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("privileges (when started as root)")
    account = _option_type(config.parse_account)
    group.add_argument("-u", "--user", "--uid", dest="user", type=account, metavar="NAME|UID",
                       help="once the ports are bound, run as this user, with its groups "
                       "(default: the application's uid, else stay as started)")
    group.add_argument("-g", "--group", "--gid", dest="group", type=account,
                       metavar="NAME|GID",
                       help="run with this group (default: the application's gid, else "
                       "the user's primary group)")
    group.add_argument("--chroot", type=_option_type(config.parse_path), metavar="DIR",
                       help="once the application is loaded and its ports bound, confine "
                       "the daemon to DIR; run files keep the paths given here")


def _add_log_options(parser: argparse.ArgumentParser, defaults: config.Config) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("--log-level", type=_option_type(config.parse_log_level),
                       default=defaults.log_level, metavar="LEVEL",
                       help=f"one of {', '.join(LEVELS)} (default: %(default)s)")
    group.add_argument("--log-format", type=_option_type(config.parse_log_format),
                       metavar="FORMAT",
                       help="full: with a timestamp; short: without (for svlogd, s6-log "
                       "and multilog, which stamp lines themselves); journal: "
                       "short, led by sd-daemon priorities such as <6> (default: full, "
                       "journal when stdout goes to systemd's journal; syslog has its own)")
    destination = group.add_mutually_exclusive_group()
    destination.add_argument("-l", "--logfile", type=_option_type(config.parse_path),
                             metavar="PATH",
                             help=f"log file (default: {config.DEFAULT_LOGFILE_NAME} next "
                             "to the pidfile; in the foreground, stdout, also asked for "
                             "with '-')")
    destination.add_argument("--syslog", action="store_true",
                             help="log to the system logger instead of a file")
    _add_number(group, "--log-max-bytes", parse=config.parse_log_max_bytes,
                default=defaults.log_max_bytes, metavar="BYTES",
                help="rotate the log file at this size; 0 never rotates (for an external "
                "logrotate and SIGUSR1)")
    _add_number(group, "--log-backups", parse=config.parse_log_backups,
                default=defaults.log_backups, metavar="COUNT",
                help="rotated log files kept")
    group.add_argument("--syslog-prefix", "--prefix",
                       type=_option_type(config.parse_syslog_prefix),
                       default=defaults.syslog_prefix, metavar="IDENT",
                       help=f"syslog ident, at most {config.MAX_SYSLOG_IDENT} characters "
                       "(default: %(default)s)")
    group.add_argument("--syslog-address", type=_option_type(config.parse_syslog_address),
                       default=defaults.syslog_address, metavar="PATH",
                       help="the system logger's socket (default: %(default)s)")


def _add_limit_options(parser: argparse.ArgumentParser, defaults: config.Config) -> None:
    group = parser.add_argument_group(LIMITS_GROUP)
    _add_number(group, "--max-connections", parse=config.parse_max_connections,
                default=defaults.max_connections, metavar="N",
                help="at this many open connections, stop accepting (newcomers wait in "
                "the kernel's queue) until one closes; lowered, with a warning, to what "
                "the open-file limit allows")
    _add_number(group, "--max-connections-per-peer",
                parse=config.parse_max_connections_per_peer,
                default=defaults.max_connections_per_peer, metavar="N",
                help="connections one client address may hold open; one more is closed "
                "as soon as it is accepted; 0: no limit")
    _add_number(group, "--idle-timeout", parse=config.parse_idle_timeout,
                default=defaults.idle_timeout, metavar="SECONDS",
                help="close a connection that completes no line for this long (bytes "
                "without a line end do not count)")
    _add_number(group, "--write-timeout", parse=config.parse_write_timeout,
                default=defaults.write_timeout, metavar="SECONDS",
                help="reset a connection whose client has not taken its replies for "
                "this long")


def _add_performance_options(parser: argparse.ArgumentParser,
                              defaults: config.Config) -> None:
    group = parser.add_argument_group("performance")
    group.add_argument("--loop", choices=loops.CHOICES, default=defaults.loop,
                       help="event loop: uvloop (pip install 'reverserd[uvloop]'), the "
                       "standard asyncio one, or auto: uvloop when installed "
                       "(default: %(default)s)")
    group.add_argument("--workers", type=_option_type(config.parse_workers),
                       default=defaults.workers, metavar="N|auto",
                       help="worker processes sharing the ports (SO_REUSEPORT) under one "
                       f"main process; auto: one per CPU (1 to {config.MAX_WORKERS} or auto; "
                       "default: %(default)s)")
    _add_number(group, "--worker-timeout", parse=config.parse_worker_timeout,
                default=defaults.worker_timeout, metavar="SECONDS",
                help="with --workers, a worker silent (no heartbeat) this long is killed "
                "and replaced")
    _add_number(group, "--compact-after", parse=config.parse_compact_after,
                default=defaults.compact_after, metavar="N",
                help="once this many connections are open, serve each further one with "
                "reverserd's compact transport: about half the memory, a little more work "
                "to accept (standard loop; TCP, IPv6 and Unix listeners without TLS or "
                "PROXY header); 0: every connection")


def config_file_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option a config file may set, by its key: its first long name."""
    keys = {}
    for action in parser._actions:  # argparse offers no public way to list them
        long_names = [name[2:] for name in action.option_strings if name.startswith("--")]
        if long_names and action.dest not in NOT_IN_CONFIG_FILE:
            keys[long_names[0]] = action
    return keys


class _Unset:
    """Stands for an option not given on the command line."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()


def _given(parser: argparse.ArgumentParser, dests: set[str], argv: Sequence[str] | None,
           directory: str | None = None) -> argparse.Namespace:
    """What one command line sets (``UNSET`` elsewhere); with ``directory``
    (a recorded one's), its relative paths taken from there. This command
    line's own stay as given, so that messages name them as the operator did,
    unless it replays recorded ones (``restart`` starts from their directory)."""
    given = parser.parse_args(argv, namespace=argparse.Namespace(
        **dict.fromkeys(dests, UNSET)))
    if directory is None and given.verb not in REPLAYING_VERBS:
        return given
    for dest in PATH_OPTIONS:
        value = getattr(given, dest)
        if isinstance(value, pathlib.Path) and value != STDOUT:
            setattr(given, dest, pathlib.Path(directory or os.getcwd(), value))
    return given


def _layered(dests: set[str], layers: Sequence[recorded.Layer],
             now: argparse.Namespace) -> argparse.Namespace:
    """The recorded command lines, then this one, each option overriding the last layer's."""
    merged = argparse.Namespace(**dict.fromkeys(dests, UNSET), verb=now.verb)
    for layer in layers:
        try:
            given = _given(build_parser(pathlib.Path(layer.directory)), dests,
                           layer.arguments, layer.directory)
        except UsageError as error:
            raise UsageError(f"the recorded command line {' '.join(layer.arguments)!r} is "
                             f"no longer valid: {error}") from None
        _override(merged, given, dests - NOT_REPLAYED)
    _override(merged, now, dests)
    return merged


def _override(merged: argparse.Namespace, given: argparse.Namespace, dests: set[str]) -> None:
    """Lay ``given`` over ``merged``: each option it sets replaces the one
    before, and so does it any recorded option that says the same thing
    another way (``--logfile`` a ``--syslog``, ``--listen`` a ``--port``)."""
    for given_dests, replaced in REPLACES:
        if any(getattr(given, dest) is not UNSET for dest in given_dests):
            for dest in replaced:
                setattr(merged, dest, UNSET)
    for dest in dests:
        value = getattr(given, dest)
        if value is not UNSET:
            setattr(merged, dest, value)


def _changes_options(given: argparse.Namespace, dests: set[str]) -> bool:
    """Whether a command line sets more than which daemon it speaks to."""
    return any(getattr(given, dest) is not UNSET for dest in dests - NOT_REPLAYED - {"pidfile"})


def parse_options(argv: Sequence[str] | None = None,
                  layers: Sequence[recorded.Layer] = ()) -> argparse.Namespace:
    """The command line over the recorded ones (``layers``) over the config
    file over the defaults, checked."""
    parser = build_parser()
    dests = {action.dest for action in parser._actions if action.dest != "verb"}
    given = _given(parser, dests, argv)
    if layers:
        given = _layered(dests, layers, given)
    from_file: dict[str, object] = {}
    if given.config is not UNSET:
        from_file = config_file.read(given.config.absolute(), config_file_keys(parser))
    _settle_exclusive_options(given, from_file, given.config)
    _warn_of_ignored_reverser_options(given, from_file)
    options = argparse.Namespace(verb=given.verb)
    options.tcp_given = any(getattr(given, dest) is not UNSET or dest in from_file
                            for dest in ("port", "interface"))
    for dest in dests:
        value = getattr(given, dest)
        if value is UNSET:
            value = from_file.get(dest, parser.get_default(dest))
        setattr(options, dest, value)
    return options


def _warn_of_ignored_reverser_options(given: argparse.Namespace,
                                      from_file: dict[str, object]) -> None:
    """An application from ``-y`` or ``-f`` brings its own ports: say so when
    the built-in reverser's options are given with it, instead of silently
    serving elsewhere than asked."""
    source = next((value for value in (given.application_file, given.state_file,
                                       from_file.get("application_file"),
                                       from_file.get("state_file"))
                   if value is not UNSET and value is not None), None)
    if source is None:
        _warn_of_ignored_tcp_options(given, from_file)
        return
    ignored = [f"--{dest.replace('_', '-')}" for dest in REVERSER_OPTIONS
               if getattr(given, dest) is not UNSET]
    if ignored:
        print(f"reverserd: ignoring {', '.join(ignored)}: the application from {source} "
              "has its own settings", file=sys.stderr, flush=True)


def _warn_of_ignored_tcp_options(given: argparse.Namespace,
                                 from_file: dict[str, object]) -> None:
    """``--port`` and ``--interface`` are the short form used without ``--listen``."""
    if given.listen is UNSET and "listen" not in from_file:
        return
    ignored = [f"--{dest}" for dest in ("port", "interface")
               if getattr(given, dest) is not UNSET or dest in from_file]
    if ignored:
        print(f"reverserd: ignoring {', '.join(ignored)}: --listen says where to listen",
              file=sys.stderr, flush=True)


def _settle_exclusive_options(given: argparse.Namespace, from_file: dict[str, object],
                              path: object) -> None:
    """Let a command-line option replace the config file's opposite one; two
    opposites in the file itself are an error naming both."""
    for pair in EXCLUSIVE:
        if any(getattr(given, dest) is not UNSET for dest in pair):
            for dest in pair:
                from_file.pop(dest, None)
        elif all(dest in from_file for dest in pair):
            keys = " and ".join(repr(dest.replace("_", "-")) for dest in pair)
            raise UsageError(f"{path}: keys {keys} exclude each other")


def _replayed_layers(argv: Sequence[str] | None,
                     successor: handover.Succeeding | None,
                     ) -> tuple[tuple[recorded.Layer, ...], recorded.Layer | None]:
    """The command lines recorded for the daemon this one restarts, reloads
    or succeeds, and this one's own when it changes any option."""
    parser = build_parser()
    dests = {action.dest for action in parser._actions if action.dest != "verb"}
    arguments = sys.argv[1:] if argv is None else list(argv)
    now = _given(parser, dests, arguments)
    starts_afresh = successor is None and now.verb not in REPLAYING_VERBS
    own = recorded.Layer.of_this_process(arguments) \
        if starts_afresh or _changes_options(now, dests) else None
    if successor is not None:
        return recorded.layers_from_json(successor.offer.layers), own
    if now.verb not in REPLAYING_VERBS:
        return (), own
    pidfile = pathlib.Path(config.DEFAULT_PIDFILE) if now.pidfile is UNSET else now.pidfile
    return recorded.read(RunFiles(pidfile.absolute())), own


def parse_command(argv: Sequence[str] | None = None,
                  successor: handover.Succeeding | None = None,
                  ) -> tuple[str, config.Config]:
    """Turn a command line into a verb and a validated ``Config``."""
    replayed, own = _replayed_layers(argv, successor)
    options = parse_options(argv, replayed)
    layers = (*replayed, *(() if own is None else (own,)))
    verb = options.verb
    if options.foreground:
        if verb not in (None, "run"):
            raise UsageError(f"--foreground cannot be combined with {verb}")
        verb = "run"
    if verb is None and (options.application_file or options.state_file):
        verb = "start"  # as ``twistd -y app.py`` and ``twistd -f app.tap`` daemonize
    if verb is None:
        build_parser().print_usage(sys.stderr)
        raise UsageError(f"give a verb ({', '.join(ACTIONS)}) or --foreground")
    if successor is not None and successor.offer.verb != verb:
        raise UsageError(f"the daemon being reloaded runs with {successor.offer.verb}, not "
                         f"{verb}: a foreground daemon inside --chroot is restarted, not "
                         "reloaded from outside")
    if options.json and verb != "status":
        raise UsageError("--json goes with status")
    if options.ready_fd is not None and verb not in SERVING_VERBS:
        raise UsageError(f"--ready-fd goes with {', '.join(SERVING_VERBS)}, not {verb}")
    if options.ready_fd is not None:
        try:
            notify.check_ready_fd(options.ready_fd)
        except ValueError as error:
            raise UsageError(f"argument --ready-fd: {error}") from None
    logfile = options.logfile
    if logfile == STDOUT:
        if verb != "run":
            raise UsageError("--logfile - (stdout) needs --foreground: a daemon has no "
                             "terminal")
        logfile = None
    pidfile = options.pidfile
    if pidfile is None and verb in DAEMON_VERBS:
        pidfile = pathlib.Path(config.DEFAULT_PIDFILE)
    return verb, config.Config(
        port=options.port,
        interface=options.interface,
        listen=_listeners(verb, options),
        proxy_from=options.proxy_from,
        max_line_length=options.max_line_length,
        shutdown_timeout=options.shutdown_timeout,
        log_level=options.log_level,
        log_format=options.log_format,
        application_file=options.application_file,
        state_file=_absolute(options.state_file) if successor is None
        or successor.offer.state_file is None else pathlib.Path(successor.offer.state_file),
        save=options.save,
        pidfile=_absolute(pidfile),
        rundir=_absolute(options.rundir),
        umask=options.umask,
        logfile=_absolute(logfile),
        log_max_bytes=options.log_max_bytes,
        log_backups=options.log_backups,
        syslog=options.syslog,
        syslog_prefix=options.syslog_prefix,
        syslog_address=options.syslog_address,
        start_timeout=options.start_timeout,
        stop_timeout=options.stop_timeout,
        user=options.user,
        group=options.group,
        chroot=_absolute(options.chroot),
        loop=options.loop,
        workers=options.workers,
        worker_timeout=options.worker_timeout,
        backlog=options.backlog,
        max_connections=options.max_connections,
        max_connections_per_peer=options.max_connections_per_peer,
        compact_after=options.compact_after,
        idle_timeout=options.idle_timeout,
        write_timeout=options.write_timeout,
        ready_fd=options.ready_fd,
        json=options.json,
        layers=layers,
        successor=successor,
    )


def _listeners(verb: str, options: argparse.Namespace) -> tuple[endpoints.Endpoint, ...]:
    """The ``--listen`` endpoints; with none, and neither ``--port`` nor
    ``--interface``, every socket a supervisor passed (socket activation)."""
    listen = tuple(options.listen)
    if verb in SERVING_VERBS:
        inherited = activation.inherited_sockets()  # and the variables removed, for good
        own_listeners = options.application_file is not None or options.state_file is not None
        if not listen and not options.tcp_given and inherited and not own_listeners:
            listen = tuple(endpoints.SystemdEndpoint(index=passed.index)
                           for passed in inherited)
        elif inherited and not own_listeners and not any(
                isinstance(endpoint, endpoints.SystemdEndpoint) for endpoint in listen):
            passed = ", ".join(
                f"{passed.index} ({passed.name}, "
                f"{endpoints.SystemdEndpoint(index=passed.index).label(passed.socket)})"
                for passed in inherited)
            print(f"reverserd: not serving the socket(s) systemd passed: {passed}; "
                  f"{'--listen' if listen else '--port or --interface'} says where to listen "
                  "(--listen systemd:index=N serves one)", file=sys.stderr, flush=True)
    try:
        descriptions.check_distinct(list(listen))
    except descriptions.DescriptionError as error:
        raise UsageError(str(error)) from None
    return listen


def _absolute(path: pathlib.Path | None) -> pathlib.Path | None:
    return None if path is None else path.absolute()


def command() -> NoReturn:
    """The console script: ``main``, then an exit that skips the interpreter's teardown.

    Freeing every imported module takes about 12 ms, a tenth of a whole
    ``reverserd start``; output is flushed and logging shut down first, so
    nothing is lost by leaving at once.
    """
    status = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # nobody reads it any more: nothing to lose
            stream.flush()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    successor = None
    try:
        successor = handover.from_environment()
        if successor is not None:
            activation.provide(successor.offer.activated)
        verb, settings = parse_command(argv, successor)
        if verb != "run":
            signals.release()  # deferred only for a process that will serve in the foreground
        return ACTIONS[verb](settings)
    except UserError as error:
        print(f"reverserd: {error}", file=sys.stderr)
        if successor is not None:
            successor.failed(str(error))
        return error.exit_status
    except OSError as error:  # the environment refused something no check foresaw
        where = f": {error.filename}" if error.filename else ""
        print(f"reverserd: {os_reason(error)}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
