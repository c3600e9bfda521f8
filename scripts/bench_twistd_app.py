"""The classic Twisted reverse server, run by ``twistd -y`` as the benchmark's peer.

A ``LineReceiver`` that answers each line with its reversal and closes on
``quit``, as Twisted's own examples write it. It answers one line end
only: its own, CRLF (what telnet sends), or with ``BENCH_LINE_END=LF`` the
LF that nc sends. The port comes from ``BENCH_PORT``; it listens on
127.0.0.1 only.
"""

import os

from twisted.application import internet, service
from twisted.internet import protocol
from twisted.protocols import basic


class Reverse(basic.LineReceiver):
    if os.environ.get("BENCH_LINE_END") == "LF":
        delimiter = b"\n"

    def lineReceived(self, line):
        if line == b"quit":
            self.transport.loseConnection()
        else:
            self.sendLine(line[::-1])


factory = protocol.ServerFactory.forProtocol(Reverse)
application = service.Application("reverse")
internet.TCPServer(int(os.environ["BENCH_PORT"]), factory,
                   interface="127.0.0.1").setServiceParent(application)
