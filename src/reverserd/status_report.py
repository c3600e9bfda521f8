"""What ``status`` found, and its JSON form for monitoring tools.

The JSON keys are a promise: README lists them, each is always present
(``null`` when it cannot be known, such as counts of a daemon that is not
running), and new keys may be added but none renamed or removed.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

from reverserd.logs import iso_time
from reverserd.pidfile import DaemonState, WorkerState
from reverserd.policy import CLOSE_REASONS

STATES = ("running", "starting", "dead", "stopped", "unknown")


@dataclasses.dataclass(frozen=True)
class Survey:
    """One look at the run files: ``state`` is one of ``STATES``.

    ``detail`` says why the state is unknown, or what stopped ``status``
    from believing a running daemon's state file.
    """

    state: str
    exit_status: int
    pidfile: pathlib.Path | None
    pid: int | None = None
    daemon: DaemonState | None = None
    stopping: bool = False
    detail: str = ""


def to_json(survey: Survey, now: float | None = None) -> str:
    """One line: the survey as a JSON object."""
    now = time.time() if now is None else now
    daemon = survey.daemon
    document: dict[str, object] = {
        "state": survey.state,
        "stopping": survey.stopping,
        "pid": survey.pid,
        "pidfile": None if survey.pidfile is None else str(survey.pidfile),
        "addresses": [] if daemon is None else list(daemon.addresses),
        "started": None if daemon is None else iso_time(daemon.started),
        "started_unix": None if daemon is None else daemon.started,
        "uptime_seconds": None if daemon is None else _since(daemon.started, now),
        "lines_served": None if daemon is None else daemon.lines_served,
        "connections_open": None if daemon is None else daemon.activity.connections_open,
        "connections_accepted": (None if daemon is None
                                 else daemon.activity.connections_accepted),
        "closed": None if daemon is None else {
            reason.replace("-", "_"): daemon.closed.get(reason, 0) for reason in CLOSE_REASONS},
        "accept_pauses": None if daemon is None else daemon.paused,
        "handler_errors": None if daemon is None else daemon.activity.handler_errors,
        "workers": [] if daemon is None else [_worker(worker, now) for worker in daemon.workers],
        "reloads": None if daemon is None else daemon.reloads,
        "last_reload_error": None if daemon is None else daemon.reload_error or None,
        "detail": survey.detail or None,
    }
    return json.dumps(document, ensure_ascii=False)


def _worker(worker: WorkerState, now: float) -> dict[str, object]:
    return {
        "number": worker.number,
        "pid": worker.pid,
        "started": iso_time(worker.started),
        "uptime_seconds": _since(worker.started, now),
        "restarts": worker.restarts,
        "last_exit": worker.last_exit or None,
    }


def _since(moment: float, now: float) -> float:
    return round(max(0.0, now - moment), 3)
