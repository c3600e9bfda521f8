"""Logging set-up: one line per event, with a time an operator can sort on."""

from __future__ import annotations

import datetime
import logging
import sys

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class IsoFormatter(logging.Formatter):
    """ISO 8601 local time with milliseconds and UTC offset.

    The offset makes lines from machines or seasons with different clocks
    comparable; milliseconds order the events of one busy second.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.datetime.fromtimestamp(record.created).astimezone()
        return moment.isoformat(timespec="milliseconds")


def log_to_stdout(level: str) -> None:
    """Send every ``reverserd`` log record at ``level`` or above to stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(IsoFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
