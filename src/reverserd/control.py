"""The operator's verbs: start, stop, status, restart, and run in the foreground.

Exit statuses follow the LSB init-script conventions: ``start`` on a running
daemon and ``stop`` on a stopped one succeed; ``status`` answers 0 running,
1 dead with a pidfile left, 3 not running, 4 cannot tell.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import stat
import sys
import time

from reverserd import detach, launch, logs, loops, privileges, runner
from reverserd.config import DEFAULT_UMASK, Config
from reverserd.errors import UserError, os_reason
from reverserd.pidfile import (
    Claim,
    DaemonState,
    Inspection,
    Liveness,
    RunFiles,
    RunLock,
    holds_open,
    inspect,
    read_state,
)
from reverserd.privileges import Account

STATUS_RUNNING = 0
STATUS_DEAD = 1
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4

POLL_INTERVAL = 0.01
DEATH_PATIENCE = 5.0
REFRESH_PATIENCE = 1.0


def say(message: str) -> None:
    print(f"reverserd {message}", flush=True)


def warn(message: str) -> None:
    print(f"reverserd: {message}", file=sys.stderr, flush=True)


def start(config: Config) -> int:
    """Detach a daemon and return once it serves, or say why it could not."""
    files = _run_files(config)
    loop = loops.loop_factory(config.loop)
    jail = launch.plan_jail(config)
    rundir = launch.run_directory(config)
    _check_run_directory(rundir)
    account = launch.account_from_options(config)
    umask = DEFAULT_UMASK if config.umask is None else config.umask
    os.umask(umask)
    privileges.ensure_directory(files.pidfile.parent, account, "its pidfile and lock file")
    files.check_usable()
    claimed = _claim(files, config.start_timeout)
    if isinstance(claimed, int):
        say(f"already running: pid {claimed}")
        return 0
    try:
        _remove_stale_files(claimed)
        logs.install(_open_daemon_log(config, account), config.log_level)
        prepared = launch.prepare(config, claimed, jail, loop)
        spawned = detach.spawn(
            lambda reporter: _serve_as_daemon(prepared, claimed, reporter),
            detach.Detachment(rundir, umask,
                              [*prepared.keep_fds(), *claimed.lock.keep_fds(),
                               *logs.open_fds()],
                              logs.log_file_stream()),
        )
    except BaseException:
        claimed.release()
        raise
    claimed.lock.close()
    prepared.close()
    return _report_start(files, detach.await_report(spawned, config.start_timeout),
                         config)


def _serve_as_daemon(prepared: launch.Launch, claim: Claim,
                     reporter: detach.Reporter) -> None:
    logs.capture_stdio_and_crashes()
    try:
        prepared.enter(claim)
    except BaseException:
        claim.release()
        raise
    prepared.serve(claim, on_ready=reporter.ready)


def _report_start(files: RunFiles, report: detach.Report, config: Config) -> int:
    pid = "?" if report.pid is None else str(report.pid)
    if report.outcome is detach.Outcome.READY:
        say(f"started: pid {pid}{_listening(report.addresses)}")
        return 0
    if report.outcome is detach.Outcome.TIMED_OUT and report.pid is not None:
        _signal(report.pid, signal.SIGKILL)
    _clean_up_after_death(files)
    if report.outcome is detach.Outcome.FAILED:
        raise UserError(report.message)
    if report.outcome is detach.Outcome.TIMED_OUT:
        raise UserError(f"the daemon (pid {pid}) was not serving after "
                        f"{config.start_timeout:g} s; killed it")
    log_hint = f"; its log may say why: {config.daemon_logfile}" if config.daemon_logfile else ""
    raise UserError(f"the daemon (pid {pid}) died during start-up without a word{log_hint}")


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
    """SIGTERM the daemon, wait for it to be gone, SIGKILL it if it lingers."""
    files = _run_files(config)
    found = _inspect(files)
    if found.liveness is Liveness.ABSENT:
        say("is not running")
        return 0
    if found.liveness is Liveness.STALE:
        lock = RunLock.try_acquire(files.lock)
        if lock is not None:
            claim = Claim(files, lock)
            _remove_stale_files(claim)
            claim.release()
        say("is not running")
        return 0
    pid = _daemon_pid(files, config.stop_timeout)
    if pid is None:
        say("is not running")
        return 0
    _signal(pid, signal.SIGTERM)
    if not _wait_until_gone(files, config.stop_timeout):
        _signal(pid, signal.SIGKILL)
        warn(f"pid {pid} did not stop within {config.stop_timeout:g} s; killed it")
        _clean_up_after_death(files)
    say(f"stopped: pid {pid}")
    return 0


def _daemon_pid(files: RunFiles, timeout: float) -> int | None:
    """The pid of the process holding the lock, proven through /proc.

    A pidfile is only trusted when the process it names holds the lock file
    open: a stale pidfile naming someone else's process is never signalled.
    ``None`` once nobody holds the lock any more.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = _inspect(files)
        if found.liveness in (Liveness.ABSENT, Liveness.STALE):
            return None
        if found.pid is not None and holds_open(found.pid, files.lock) is not False:
            return found.pid
        if time.monotonic() > deadline:
            raise UserError(f"{files.lock} is held, but {files.pidfile} names no process "
                            "holding it; not signalling anyone")
        time.sleep(POLL_INTERVAL)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except OSError as error:
        raise UserError(f"cannot signal pid {pid}: {os_reason(error)}") from None


def status(config: Config) -> int:
    files = _run_files(config)
    try:
        found = inspect(files)
    except OSError as error:
        say(f"status unknown: {os_reason(error)} ({files.pidfile})")
        return STATUS_UNKNOWN
    if found.liveness is Liveness.RUNNING and found.state is not None:
        state = _fresh_state(files, found.state)
        say(f"running: pid {state.pid}{_listening(state.addresses)}, "
            f"up {format_duration(state.uptime())}, {count(state.lines_served, 'line')} served")
        for worker in state.workers:
            restarts = f", restarted {count(worker.restarts, 'time')}" if worker.restarts else ""
            say(f"worker {worker.number}: pid {worker.pid}, "
                f"up {format_duration(max(0.0, time.time() - worker.started))}{restarts}")
        return STATUS_RUNNING
    if found.liveness is Liveness.STARTING:
        say(f"starting: pid {found.pid or '?'}")
        return STATUS_RUNNING
    if found.liveness is Liveness.STALE:
        say(f"dead, stale pidfile (pid {found.pid or '?'})")
        return STATUS_DEAD
    say("not running")
    return STATUS_NOT_RUNNING


def _fresh_state(files: RunFiles, state: DaemonState) -> DaemonState:
    """Ask the daemon to rewrite its state file (SIGUSR2) and wait briefly for
    it, so the line count is the current one; the last one written if the
    daemon may not be signalled or does not answer in time."""
    asked = time.time()
    if holds_open(state.pid, files.lock) is not True:
        return state
    try:
        os.kill(state.pid, runner.REFRESH_SIGNAL)
    except OSError:
        return state
    deadline = time.monotonic() + REFRESH_PATIENCE
    while time.monotonic() < deadline:
        fresh = read_state(files.state)
        if fresh is not None and fresh.pid == state.pid and fresh.refreshed >= asked:
            return fresh
        time.sleep(POLL_INTERVAL)
    return state


def _listening(addresses: tuple[str, ...]) -> str:
    return f", listening on {', '.join(addresses)}" if addresses else ""


def count(number: int, noun: str) -> str:
    """``1 line``, ``2 lines``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def format_duration(seconds: float) -> str:
    """``3m12s``, ``2h0m5s``, ``1d3h0m0s``: leading zero units left out."""
    whole = int(seconds)
    parts = [(whole // 86400, "d"), (whole // 3600 % 24, "h"), (whole // 60 % 60, "m"),
             (whole % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return "".join(f"{value}{unit}" for value, unit in parts)


def restart(config: Config) -> int:
    stop(config)
    return start(config)


def run_foreground(config: Config) -> int:
    """Serve attached to the terminal; the pidfile only when one is asked for."""
    loop = loops.loop_factory(config.loop)
    jail = launch.plan_jail(config)
    if config.rundir is not None:
        _check_run_directory(config.rundir)
    account = launch.account_from_options(config)
    if config.umask is not None:
        os.umask(config.umask)
    claim = None
    if config.pidfile is not None:
        files = RunFiles(config.pidfile)
        privileges.ensure_directory(files.pidfile.parent, account, "its pidfile and lock file")
        files.check_usable()
        claimed = _claim(files, config.start_timeout)
        if isinstance(claimed, int):
            raise UserError(f"already running: pid {claimed}")
        claim = claimed
    try:
        if claim is not None:
            _remove_stale_files(claim)
        logs.install(_open_foreground_log(config, account), config.log_level)
        prepared = launch.prepare(config, claim, jail, loop)
        if config.rundir is not None:
            os.chdir(config.rundir)
        prepared.enter(claim)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    try:
        prepared.serve(claim)
    finally:
        prepared.close()
    return 0


def _check_run_directory(path: pathlib.Path) -> None:
    try:
        found = path.stat()
    except FileNotFoundError:
        raise UserError(f"cannot use run directory {path}: no such directory") from None
    except OSError as error:
        raise UserError(f"cannot use run directory {path}: {os_reason(error)}") from None
    if not stat.S_ISDIR(found.st_mode):
        raise UserError(f"cannot use run directory {path}: not a directory")


def _run_files(config: Config) -> RunFiles:
    assert config.pidfile is not None, "the command line sets a daemon's pidfile"
    return RunFiles(config.pidfile)


def _inspect(files: RunFiles) -> Inspection:
    try:
        return inspect(files)
    except OSError as error:
        raise UserError(f"cannot read {files.pidfile}: {os_reason(error)}") from None


def _claim(files: RunFiles, timeout: float) -> Claim | int:
    """The lock, or the pid of the daemon already serving with it.

    Whoever holds the lock but is not serving yet is another ``start`` racing
    this one: wait for it to serve or to fail, and take over if it fails.
    """
    deadline = time.monotonic() + timeout
    while True:
        lock = RunLock.try_acquire(files.lock)
        if lock is not None:
            return Claim(files, lock)
        found = _inspect(files)
        if found.liveness is Liveness.RUNNING and found.pid is not None:
            return found.pid
        if time.monotonic() > deadline:
            raise UserError(f"another reverserd holds {files.lock} but was not serving "
                            f"after {timeout:g} s")
        time.sleep(POLL_INTERVAL)


def _wait_for_lock(files: RunFiles, timeout: float) -> RunLock | None:
    """The lock, once whoever holds it is gone; ``None`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (lock := RunLock.try_acquire(files.lock)) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_INTERVAL)
    return lock


def _wait_until_gone(files: RunFiles, timeout: float) -> bool:
    """Whether the lock holder died within ``timeout`` (judged by the lock, so a
    dead daemon not yet reaped counts as gone)."""
    deadline = time.monotonic() + timeout
    while _inspect(files).liveness in (Liveness.RUNNING, Liveness.STARTING):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _remove_stale_files(claim: Claim) -> None:
    reason = claim.remove_stale_files()
    if reason is not None:
        warn(f"removing stale pidfile {claim.files.pidfile} ({reason})")


def _open_daemon_log(config: Config, account: Account | None) -> logging.Handler:
    if config.syslog:
        return logs.open_syslog(config.syslog_prefix, config.syslog_address)
    logfile = config.daemon_logfile
    assert logfile is not None
    privileges.ensure_directory(logfile.parent, account, "its log file")
    return logs.open_log_file(logfile, config.log_max_bytes, config.log_backups)


def _open_foreground_log(config: Config, account: Account | None) -> logging.Handler:
    if config.syslog or config.logfile is not None:
        return _open_daemon_log(config, account)
    return logs.open_stdout()
