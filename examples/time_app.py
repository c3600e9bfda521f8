"""A reverser that also tells the time, served on its own port.

Run it with:  reverserd --foreground -y examples/time_app.py
then:         printf 'hello\ntime\nquit\n' | nc 127.0.0.1 2324

TIME_APP_PORT chooses another port (0: any free one, shown in the log).
"""

import datetime
import os

from reverserd import Application, Reverser, listen


class TimeReverser(Reverser):
    """Reverses lines like the built-in service; ``time`` answers the time."""

    def handle_time(self) -> str:
        return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


application = Application("time-reverser")
port = os.environ.get("TIME_APP_PORT", "2324")
listen(f"tcp:{port}", TimeReverser).set_service_parent(application)
