"""The operator's verbs: start, stop, status, restart, and run in the foreground.

Exit statuses follow the LSB init-script conventions: ``start`` on a running
daemon and ``stop`` on a stopped one succeed; ``status`` answers 0 running,
1 dead with a pidfile left, 3 not running, 4 cannot tell.

A daemon is the process holding the lock, never merely the pid in a file:
``stop`` checks that it still holds the lock right before each signal, and
waits for that very process (and its workers) to be gone, judged by pid and
start time -- not for the lock to be free, which a concurrent ``start`` may
take at any moment.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from reverserd import (
    detach,
    handover,
    keeper,
    launch,
    logs,
    loops,
    notify,
    privileges,
    recorded,
    reloading,
    signals,
    status_report,
)
from reverserd.config import DEFAULT_UMASK, Config
from reverserd.errors import UserError, os_reason
from reverserd.pidfile import (
    Claim,
    DaemonState,
    Inspection,
    Liveness,
    Owners,
    Process,
    ReloadTurn,
    RunFiles,
    RunLock,
    describe_stale_pid,
    find_process,
    holds_open,
    inspect,
    process_uid,
    read_state,
)
from reverserd.privileges import Account
from reverserd.status_report import Survey
from reverserd.wording import count

STATUS_RUNNING = 0
STATUS_DEAD = 1
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4
RELOAD_NOT_RUNNING = 7  # LSB: "program is not running", for an action other than status

POLL_INTERVAL = 0.01
MAX_GENERATIONS = 3  # stopped by one stop: a reload under way, and one more for good measure
DEATH_PATIENCE = 5.0
REFRESH_PATIENCE = 1.0
VERDICT_GRACE = 2.0  # seconds past a reload's deadline for the daemon to write why it failed


def say(message: str) -> None:
    print(f"reverserd {message}", flush=True)


def warn(message: str) -> None:
    print(f"reverserd: {message}", file=sys.stderr, flush=True)


def start(config: Config) -> int:
    """Detach a daemon and return once it serves, or say why it could not."""
    loop = loops.loop_factory(config.loop)
    supervision = notify.Supervision.from_environment(config.ready_fd)
    jail = launch.plan_jail(config)
    rundir = launch.run_directory(config)
    _check_run_directory(rundir)
    account = launch.account_from_options(config)
    files = _run_files(config, account)
    umask = DEFAULT_UMASK if config.umask is None else config.umask
    os.umask(umask)
    privileges.ensure_pidfile_directory(files.pidfile.parent, account)
    _warn_if_shared(files.pidfile.parent, account)
    files.check_usable()
    if config.successor is not None:
        claimed: Claim | int = _inherited_claim(files, config)
    else:
        claimed = _claim(files, config.start_timeout)
    if isinstance(claimed, int):
        supervision.already_running(claimed)
        say(f"already running: pid {claimed}")
        return 0
    try:
        if config.successor is None:
            _remove_stale_files(claimed)
            if jail is not None:
                claimed.listen_for_reloads()
        logs.install(_open_daemon_log(config, account), config.log_level,
                     config.log_format or "full")
        prepared = launch.prepare(config, claimed, jail, loop, supervision,
                                  _reloader("start", config))
        spawned = detach.spawn(
            lambda reporter: _serve_as_daemon(prepared, claimed, reporter),
            detach.Detachment(rundir, umask,
                              [*prepared.keep_fds(), *claimed.keep_fds(), *logs.open_fds()],
                              logs.log_file_stream()),
        )
    except BaseException:
        claimed.release()
        raise
    claimed.lock.close()
    claimed.close_reload_socket()
    prepared.close()
    supervision.close()  # the daemon has its own copies
    return _report_start(files, detach.await_report(spawned, config.start_timeout),
                         config, account)


def _serve_as_daemon(prepared: launch.Launch, claim: Claim,
                     reporter: detach.Reporter) -> None:
    logs.capture_stdio_and_crashes()
    try:
        prepared.enter(claim)
    except BaseException:
        claim.release()
        raise
    prepared.serve(claim, on_ready=reporter.ready)


def _reloader(verb: str, config: Config) -> reloading.Reloader:
    return reloading.Reloader(verb, config.layers, config.start_timeout,
                              jailed=config.chroot is not None)


def _inherited_claim(files: RunFiles, config: Config) -> Claim:
    """The run files of the generation this one succeeds: its lock, passed on;
    the pidfile stays the predecessor's until this generation takes over."""
    assert config.successor is not None
    offer = config.successor.offer
    if offer.lock_fd is None:
        raise UserError("the daemon being reloaded has no pidfile; this one cannot have one")
    claim = Claim(files, RunLock.inherited(files.lock, offer.lock_fd), offer.reloads + 1)
    claim.owns_files = False
    claim.reload_socket = offer.reload_socket
    return claim


def _report_start(files: RunFiles, report: detach.Report, config: Config,
                  account: Account | None) -> int:
    pid = "?" if report.pid is None else str(report.pid)
    if report.outcome is detach.Outcome.READY:
        say(f"started: pid {pid}{_listening(report.addresses)}")
        if config.successor is None:
            try:
                recorded.write(files, config.layers, reader=account)
            except UserError as error:
                warn(f"warning: {error}; restart and reload will not know the options "
                     "given now")
        return 0
    if report.outcome is detach.Outcome.TIMED_OUT and report.pid is not None:
        _signal(report.pid, signal.SIGKILL)
    if config.successor is None:
        _clean_up_after_death(files)
    if report.outcome is detach.Outcome.FAILED:
        raise UserError(report.message)
    who = "the daemon" if config.successor is None else "the new generation"
    if report.outcome is detach.Outcome.TIMED_OUT:
        raise UserError(f"{who} (pid {pid}) was not serving after "
                        f"{config.start_timeout:g} s; killed it")
    log_hint = f"; its log may say why: {config.daemon_logfile}" if config.daemon_logfile else ""
    raise UserError(f"{who} (pid {pid}) died during start-up without a word{log_hint}")


def _clean_up_after_death(files: RunFiles) -> None:
    """Wait for a failed daemon to be gone, then remove what it left."""
    lock = _wait_for_lock(files, DEATH_PATIENCE)
    if lock is None:
        raise UserError(f"the daemon did not exit after failing to start; {files.lock} "
                        "is still held")
    claim = Claim(files, lock)
    try:
        claim.remove_stale_files()
    finally:
        claim.release()


def stop(config: Config) -> int:
    """SIGTERM the daemon, wait for it and its workers to be gone, SIGKILL what lingers."""
    files = _run_files(config, privileges.resolve(config.user, config.group))
    found = _inspect(files)
    if found.liveness is Liveness.ABSENT:
        say(f"is not running (no pidfile at {files.pidfile})")
        return 0
    if found.liveness is Liveness.STALE:
        lock = RunLock.try_acquire(files.lock, files.owners)
        if lock is not None:
            claim = Claim(files, lock)
            _remove_stale_files(claim)
            claim.release()
        say("is not running")
        return 0
    stopped: list[int] = []
    generation = -1
    while len(stopped) < MAX_GENERATIONS and (target := _daemon(files, config.stop_timeout)):
        daemon, state = target
        if stopped and (state is None or state.reloads <= generation):
            break  # not a reload's new generation: a start that came meanwhile
        generation = -1 if state is None else state.reloads
        stopped.append(_end(files, daemon, state, config.stop_timeout))
    if not stopped:
        say("is not running")
        return 0
    say(f"stopped: pid {stopped[0]}" + "".join(f", then its new generation, pid {pid}"
                                               for pid in stopped[1:]))
    return 0


def _end(files: RunFiles, daemon: Process, state: DaemonState | None, timeout: float) -> int:
    """Stop ``daemon`` and its workers; its pid. A reload under way may have
    passed the lock on meanwhile: the caller looks again."""
    workers = _workers(daemon, state)
    stopping = state is not None and state.stopping  # a second SIGTERM would cut it short
    killed = _end_daemon(files, daemon, timeout, stopping)
    _end_workers(workers, timeout)
    if killed:
        _remove_files_left_behind(files)
    return daemon.pid


def _daemon(files: RunFiles, timeout: float) -> tuple[Process, DaemonState | None] | None:
    """The process holding the lock, proven through /proc, and its state.

    A pidfile is only trusted when the process it names holds the lock file
    open: a stale pidfile naming someone else's process is never signalled.
    ``None`` once nobody holds the lock any more.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = _inspect(files)
        if found.liveness in (Liveness.ABSENT, Liveness.STALE):
            return None
        if found.pid is not None:
            process = find_process(found.pid)  # its start time, before it proves itself
            if process is not None and holds_open(found.pid, files.lock) is not False:
                return process, found.state
        if time.monotonic() > deadline:
            raise UserError(f"{files.lock} is held, but {files.pidfile} names no process "
                            "holding it; not signalling anyone")
        time.sleep(POLL_INTERVAL)


def _workers(daemon: Process, state: DaemonState | None) -> list[Process]:
    """The daemon's worker processes, as its state file names them, each
    recorded before any signal so that its exit can be told from pid reuse."""
    found = []
    for worker in state.workers if state is not None else ():
        process = find_process(worker.pid)
        if process is not None and process.parent == daemon.pid:
            found.append(process)
    return found


def _end_daemon(files: RunFiles, daemon: Process, timeout: float, stopping: bool) -> bool:
    """SIGTERM (unless it is ``stopping`` already), then SIGKILL after
    ``timeout``; whether it took SIGKILL.

    Each signal goes out only while the process still holds the lock: one
    that let go of it is stopping by itself, and is only waited for.
    """
    def holds_the_lock() -> bool:
        return holds_open(daemon.pid, files.lock) is not False

    if (stopping or _send(daemon, signal.SIGTERM, holds_the_lock)) \
            and not _wait_until_gone([daemon], timeout) \
            and _send(daemon, signal.SIGKILL, holds_the_lock):
        warn(f"pid {daemon.pid} did not stop within {timeout:g} s; killed it")
        if not _wait_until_gone([daemon], DEATH_PATIENCE):
            raise UserError(f"pid {daemon.pid} did not die after SIGKILL")
        return True
    if not _wait_until_gone([daemon], DEATH_PATIENCE):
        raise UserError(f"pid {daemon.pid} let go of {files.lock} but did not exit within "
                        f"{DEATH_PATIENCE:g} s; not signalling it")
    return False


def _end_workers(workers: Sequence[Process], timeout: float) -> None:
    """Wait for the workers to follow their main process; SIGKILL those that do not."""
    if _wait_until_gone(workers, timeout):
        return
    killed = [worker for worker in workers if _send(worker, signal.SIGKILL)]
    if killed:
        pids = ", ".join(str(worker.pid) for worker in killed)
        warn(f"worker {'pid' if len(killed) == 1 else 'pids'} {pids} did not stop within "
             f"{timeout:g} s of the main process; killed {'it' if len(killed) == 1 else 'them'}")
    if not _wait_until_gone(workers, DEATH_PATIENCE):
        raise UserError(f"worker pids {', '.join(str(worker.pid) for worker in workers)} "
                        "did not die after SIGKILL")


def _send(process: Process, signum: int, still_wanted: Callable[[], bool] = lambda: True,
          ) -> bool:
    """Signal ``process`` if it has not exited and ``still_wanted()``; whether it was sent.

    The pidfd pins the process: once its start time matches, the checks and
    the signal concern the same process, even should its pid be reused.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return False
    except OSError as error:
        raise UserError(f"cannot signal pid {process.pid}: {os_reason(error)}") from None
    try:
        if process.is_gone() or not still_wanted():
            return False
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        return False
    except OSError as error:
        raise UserError(f"cannot signal pid {process.pid}: {os_reason(error)}") from None
    finally:
        os.close(pidfd)
    return True


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except OSError as error:
        raise UserError(f"cannot signal pid {pid}: {os_reason(error)}") from None


def _wait_until_gone(processes: Sequence[Process], timeout: float) -> bool:
    """Whether every one of ``processes`` exited within ``timeout`` (a zombie
    nobody reaped counts as gone: it holds nothing any more)."""
    deadline = time.monotonic() + timeout
    while not all(process.is_gone() for process in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _remove_files_left_behind(files: RunFiles) -> None:
    """Remove what a killed daemon could not, unless a new daemon holds the
    lock already: the files are its own then."""
    lock = RunLock.try_acquire(files.lock, files.owners)
    if lock is None:
        return
    claim = Claim(files, lock)
    try:
        claim.remove_stale_files()
    finally:
        claim.release()


def status(config: Config) -> int:
    """Say whether the daemon runs, and what it says about itself if it does:
    as lines for a person, or with ``--json`` as one object for a program."""
    try:
        survey = _survey(_run_files(config, privileges.resolve(config.user, config.group)))
    except UserError as error:
        survey = Survey("unknown", STATUS_UNKNOWN, config.pidfile, detail=str(error))
    if config.json:
        print(status_report.to_json(survey), flush=True)
    else:
        _say_status(survey)
    return survey.exit_status


def _survey(files: RunFiles) -> Survey:
    try:
        found = inspect(files)
    except OSError as error:
        return Survey("unknown", STATUS_UNKNOWN, files.pidfile,
                      detail=f"{os_reason(error)} ({files.pidfile})")
    if found.liveness is Liveness.STOPPING and found.state is not None:
        return Survey("running", STATUS_RUNNING, files.pidfile, found.pid, found.state,
                      stopping=True)
    if found.liveness is Liveness.RUNNING:
        state = None if found.state is None else _fresh_state(files, found.state)
        return Survey("running", STATUS_RUNNING, files.pidfile, found.pid, state,
                      detail=found.ignored)
    if found.liveness is Liveness.STARTING:
        return Survey("starting", STATUS_RUNNING, files.pidfile, found.pid)
    if found.liveness is Liveness.STALE:
        return Survey("dead", STATUS_DEAD, files.pidfile, found.pid,
                      detail=describe_stale_pid(found.pid))
    return Survey("stopped", STATUS_NOT_RUNNING, files.pidfile)


def _say_status(survey: Survey) -> None:
    state = survey.daemon
    if survey.state == "unknown":
        say(f"status unknown: {survey.detail}")
    elif survey.stopping and state is not None:
        say(f"stopping: pid {survey.pid}{_listening(state.addresses)}")
    elif survey.state == "running" and state is not None:
        reloads = f", reloaded {count(state.reloads, 'time')}" if state.reloads else ""
        say(f"running: pid {state.pid}{_listening(state.addresses)}, "
            f"up {format_duration(state.uptime())}, {count(state.lines_served, 'line')} served"
            f"{reloads}")
        if state.reload_error:
            say(f"last reload failed: {state.reload_error}")
        limits = _limits(state)
        if limits:
            say(f"closed by limits: {limits}")
        for worker in state.workers:
            restarts = f", restarted {count(worker.restarts, 'time')}" if worker.restarts else ""
            last = f", last: {worker.last_exit}" if worker.last_exit else ""
            say(f"worker {worker.number}: pid {worker.pid}, "
                f"up {format_duration(max(0.0, time.time() - worker.started))}{restarts}{last}")
    elif survey.state == "running":
        say(f"running: pid {survey.pid} ({survey.detail})")
    elif survey.state == "starting":
        say(f"starting: pid {survey.pid or '?'}")
    elif survey.state == "dead":
        say(f"dead, stale pidfile (pid {survey.pid or '?'})")
    else:
        say(f"not running (no pidfile at {survey.pidfile})")


def _limits(state: DaemonState) -> str:
    """``2 idle, 1 write-timeout, 3 accept pauses``; empty when no limit acted."""
    closed = [f"{number} {reason}" for reason, number in state.closed.items() if number]
    if not state.paused:
        return ", ".join(closed)
    return ", ".join([*(closed or ["none"]), count(state.paused, "accept pause")])


def _fresh_state(files: RunFiles, state: DaemonState) -> DaemonState:
    """Ask the daemon to rewrite its state file (SIGUSR2) and wait briefly for
    it, so the line count is the current one; the last one written if the
    daemon may not be signalled or does not answer in time."""
    asked = time.time()
    daemon = find_process(state.pid)
    if daemon is None:
        return state
    try:
        if not _send(daemon, signals.REFRESH_SIGNAL,
                     lambda: holds_open(state.pid, files.lock) is True):
            return state
    except UserError:
        return state
    owners = Owners.of_daemon(process_uid(state.pid))
    deadline = time.monotonic() + REFRESH_PATIENCE
    while time.monotonic() < deadline:
        try:
            fresh = read_state(files.state, owners)
        except (OSError, UserError):
            return state  # replaced meanwhile by something not to be read
        if fresh is not None and fresh.pid == state.pid and fresh.refreshed >= asked:
            return fresh
        time.sleep(POLL_INTERVAL)
    return state


def _listening(addresses: tuple[str, ...]) -> str:
    return f", listening on {', '.join(addresses)}" if addresses else ""


def format_duration(seconds: float) -> str:
    """``3m12s``, ``2h0m5s``, ``1d3h0m0s``: leading zero units left out."""
    whole = int(seconds)
    parts = [(whole // 86400, "d"), (whole // 3600 % 24, "h"), (whole // 60 % 60, "m"),
             (whole % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return "".join(f"{value}{unit}" for value, unit in parts)


def restart(config: Config) -> int:
    """Stop, then start with the options the daemon was started with (as
    overridden on this command line), from the directory it was started in."""
    if config.layers:
        directory = config.layers[0].directory
        try:
            os.chdir(directory)
        except OSError as error:
            raise UserError(f"cannot go back to {directory}, where the daemon was started: "
                            f"{os_reason(error)}") from None
    account = launch.account_from_options(config)
    privileges.ensure_pidfile_directory(_run_files(config, account).pidfile.parent,
                                        account)  # before the stop, not after
    stop(config)
    return start(config)


def reload(config: Config) -> int:
    """Have the daemon start a new generation on its sockets, and wait until
    it serves; say why not if it cannot."""
    account = privileges.resolve(config.user, config.group)
    files = _run_files(config, account)
    patience = config.start_timeout + handover.SUCCESSOR_GRACE
    with ReloadTurn(files.lock, files.owners, patience):
        return _reload(files, config, account, patience)


def _reload(files: RunFiles, config: Config, account: Account | None,
            patience: float) -> int:
    target = None
    if _inspect(files).liveness not in (Liveness.ABSENT, Liveness.STALE):
        target = _daemon(files, config.stop_timeout)
    if target is None:
        say("not running")
        return RELOAD_NOT_RUNNING
    daemon, state = target
    if state is None or state.stopping:
        raise UserError(f"pid {daemon.pid} is {'stopping' if state else 'still starting'}; "
                        "not reloading")
    account = privileges.account_of_process(process_uid(daemon.pid), account)
    try:  # the new generation writes the pidfile: say so now, not after the patience
        privileges.ensure_pidfile_directory(files.pidfile.parent, account)
    except UserError as error:
        raise UserError(f"reload failed: {error}; pid {daemon.pid} serves on") from None
    previous = recorded.read(files)
    _record_changes(files, config, previous, account)
    asked = time.time()
    try:
        if config.chroot is not None:
            _start_successor(files, config, daemon.pid, patience)
        elif not _send(daemon, signals.RELOAD_SIGNAL,
                       lambda: holds_open(daemon.pid, files.lock) is not False):
            raise UserError(f"pid {daemon.pid} exited before the reload")
        successor = _await_successor(files, daemon, asked, patience)
    except BaseException:
        _record_changes(files, config, previous, account, undo=True)
        raise
    say(f"reloaded: pid {daemon.pid} \N{RIGHTWARDS ARROW} {successor}")
    return 0


def _start_successor(files: RunFiles, config: Config, daemon: int, patience: float) -> None:
    """Start the new generation of a daemon confined to a chroot, which
    cannot start it itself: from here, outside the jail, connected to the
    daemon's reload socket, through which it makes its offer."""
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        channel.settimeout(patience)
        try:
            channel.connect(str(files.reload_socket))
        except OSError as error:
            raise UserError(f"cannot reach the daemon at {files.reload_socket}: "
                            f"{os_reason(error)}") from None
        directory = config.layers[0].directory if config.layers else None
        try:
            launcher = subprocess.run(
                [*handover.program(), "start"], cwd=directory, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=patience, check=False,
                env={**os.environ, handover.ENVIRONMENT_VARIABLE: str(channel.fileno())},
                pass_fds=(channel.fileno(),))
        except (OSError, subprocess.TimeoutExpired) as error:
            raise UserError(f"cannot start the new generation: {error}") from None
    finally:
        channel.close()
    if launcher.returncode != 0:
        reason = (launcher.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise UserError(f"reload failed: {reason.removeprefix('reverserd: ')}; "
                        f"pid {daemon} serves on")


def _record_changes(files: RunFiles, config: Config, previous: tuple[recorded.Layer, ...],
                    daemon_account: Account | None, undo: bool = False) -> None:
    """Record the options this ``reload`` changes, for the new generation to
    read (and for later restarts); ``undo`` puts the record back as it was."""
    if config.layers != previous:
        recorded.write(files, previous if undo else config.layers, reader=daemon_account)


def _await_successor(files: RunFiles, daemon: Process, asked: float, patience: float) -> int:
    """The pid of the generation that took over from ``daemon``; the reason as
    a ``UserError`` if the reload failed."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        found = _inspect(files)
        state = found.state
        if state is not None and state.pid == daemon.pid and state.reload_deadline:
            deadline = max(deadline, time.monotonic() + state.reload_deadline - time.time()
                           + VERDICT_GRACE)  # the daemon gives up later: wait for its word
        if found.pid is not None and found.pid != daemon.pid and state is not None \
                and state.pid == found.pid and found.liveness is Liveness.RUNNING \
                and state.predecessor != daemon.pid:  # the old one accepts no more
            return found.pid
        if state is not None and state.pid == daemon.pid and state.reload_failed_at >= asked:
            raise UserError(f"reload failed: {state.reload_error}; pid {daemon.pid} serves on")
        if daemon.is_gone() and found.pid in (daemon.pid, None) \
                and found.liveness in (Liveness.ABSENT, Liveness.STALE):
            raise UserError(f"pid {daemon.pid} stopped during the reload")
        time.sleep(POLL_INTERVAL)
    raise UserError(f"reload failed: no new generation took over within {patience:g} s")


def run_foreground(config: Config) -> int:
    """Serve attached to the terminal; the pidfile only when one is asked for."""
    loop = loops.loop_factory(config.loop)
    supervision = notify.Supervision.from_environment(config.ready_fd)
    jail = launch.plan_jail(config)
    if config.rundir is not None:
        _check_run_directory(config.rundir)
    account = launch.account_from_options(config)
    if config.umask is not None:
        os.umask(config.umask)
    claim = None
    if config.pidfile is not None:
        files = _run_files(config, account)
        privileges.ensure_pidfile_directory(files.pidfile.parent, account)
        _warn_if_shared(files.pidfile.parent, account)
        files.check_usable()
        if config.successor is not None:
            claim = _inherited_claim(files, config)
        else:
            claimed = _claim(files, config.start_timeout)
            if isinstance(claimed, int):
                raise UserError(f"already running: pid {claimed}")
            claim = claimed
    elif config.successor is not None and config.successor.offer.lock_fd is not None:
        raise UserError("the daemon being reloaded has a pidfile; this one needs it too")
    try:
        if claim is not None and config.successor is None:
            _remove_stale_files(claim)
        handler, log_format = _open_foreground_log(config, account)
        logs.install(handler, config.log_level, log_format)
        reloader = _reloader("run", config)
        reloader.follow_keeper(keeper.named_by_environment())
        # Under runit, s6 or supervisord (not systemd, which follows MAINPID=), the
        # first generation stays as the process they watch.
        reloader.keeps_pid = config.successor is None and supervision.notifier is None
        prepared = launch.prepare(config, claim, jail, loop, supervision, reloader)
        if config.rundir is not None:
            os.chdir(config.rundir)
        prepared.enter(claim)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    def record(addresses: tuple[str, ...]) -> None:
        if claim is not None and config.successor is None:
            try:
                recorded.write(claim.files, config.layers, claim.directory)
            except UserError as error:
                logging.getLogger(__name__).warning(
                    "%s; restart and reload will not know the options given now", error)

    try:
        prepared.serve(claim, on_ready=record)
    finally:
        prepared.close()
    return reloader.exit_status


def _check_run_directory(path: pathlib.Path) -> None:
    try:
        found = path.stat()
    except FileNotFoundError:
        raise UserError(f"cannot use run directory {path}: no such directory") from None
    except OSError as error:
        raise UserError(f"cannot use run directory {path}: {os_reason(error)}") from None
    if not stat.S_ISDIR(found.st_mode):
        raise UserError(f"cannot use run directory {path}: not a directory")


def _warn_if_shared(directory: pathlib.Path, account: Account | None) -> None:
    """Warn of a run directory others may write: they could plant or remove
    run files there (those they own are refused, but a daemon refusing to
    start is the least harm they can do)."""
    try:
        found = directory.stat()
    except OSError:
        return  # check_usable says why
    group = os.getegid() if account is None else account.gid
    if found.st_mode & stat.S_IWOTH or (found.st_mode & stat.S_IWGRP and found.st_gid != group):
        warn(f"warning: {directory} is writable by other users; run files there can be "
             "tampered with (use a directory of its own, e.g. /run/reverserd)")


def _run_files(config: Config, account: Account | None) -> RunFiles:
    assert config.pidfile is not None, "the command line sets a daemon's pidfile"
    return RunFiles(config.pidfile, Owners.of_account(None if account is None else account.uid))


def _inspect(files: RunFiles) -> Inspection:
    try:
        return inspect(files)
    except OSError as error:
        raise UserError(f"cannot read {files.pidfile}: {os_reason(error)}") from None


def _claim(files: RunFiles, timeout: float) -> Claim | int:
    """The lock, or the pid of the daemon already serving with it.

    Whoever holds the lock but is not serving yet is another ``start`` racing
    this one: wait for it to serve or to fail, and take over if it fails. A
    daemon that is stopping is waited for too, then replaced: reporting it
    as running would leave nothing running a moment later.
    """
    deadline = time.monotonic() + timeout
    while True:
        lock = RunLock.try_acquire(files.lock, files.owners)
        if lock is not None:
            return Claim(files, lock)
        found = _inspect(files)
        if found.liveness is Liveness.RUNNING and found.pid is not None:
            return found.pid
        if time.monotonic() > deadline:
            if found.liveness is Liveness.STOPPING:
                raise UserError(f"reverserd (pid {found.pid}) was still stopping after "
                                f"{timeout:g} s")
            raise UserError(f"another reverserd holds {files.lock} but was not serving "
                            f"after {timeout:g} s")
        time.sleep(POLL_INTERVAL)


def _wait_for_lock(files: RunFiles, timeout: float) -> RunLock | None:
    """The lock, once whoever holds it is gone; ``None`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (lock := RunLock.try_acquire(files.lock, files.owners)) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_INTERVAL)
    return lock


def _remove_stale_files(claim: Claim) -> None:
    reason = claim.remove_stale_files()
    if reason is not None:
        warn(f"removing stale pidfile {claim.files.pidfile} ({reason})")


def _open_daemon_log(config: Config, account: Account | None) -> logging.Handler:
    if config.syslog:
        return logs.open_syslog(config.syslog_prefix, config.syslog_address)
    logfile = config.daemon_logfile
    assert logfile is not None
    if logfile != pathlib.Path(os.devnull):  # discarding needs no directory of its own
        privileges.ensure_directory(logfile.parent, account, "its log file")
    owners = Owners.of_account(None if account is None else account.uid)
    return logs.open_log_file(logfile, config.log_max_bytes, config.log_backups,
                              allowed_owners=owners.uids)


def _open_foreground_log(config: Config, account: Account | None,
                         ) -> tuple[logging.Handler, str]:
    """The log's handler and layout: by default ``full``, but ``journal``
    when stdout goes to systemd's journal, which stamps lines itself."""
    if config.syslog or config.logfile is not None:
        return _open_daemon_log(config, account), config.log_format or "full"
    automatic = "journal" if logs.is_journal_stream(1) else "full"
    return logs.open_stdout(), config.log_format or automatic
