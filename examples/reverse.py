"""The services of the classic two-file layout: a protocol and a server for it.

This module knows nothing about how it is run; ``reverse_app.py`` ties it
into an application. Both classes are ``@restorable``, so an application
built from them can be saved at stop and run again from its state file.
"""

from reverserd import LineHandler, TCPServer, reverse
from reverserd.persist import restorable


@restorable
class ShoutingReverser(LineHandler):
    """Reverses each line; ``shout`` switches this connection to upper case."""

    shouting = False

    def line_received(self, line: bytes) -> bytes:
        reply = reverse(line)
        return reply.upper() if self.shouting else reply

    def handle_shout(self) -> str:
        self.shouting = True
        return "OK, SHOUTING"


def reverse_service(port: int, interface: str = "127.0.0.1") -> TCPServer:
    """A server of ``ShoutingReverser`` on ``port``."""
    server = TCPServer(port, ShoutingReverser, interface)
    server.name = "reverse"
    return server
