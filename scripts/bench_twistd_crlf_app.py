"""The classic Twisted reverse server with ``LineReceiver``'s own line end, CRLF.

What telnet sends; nc's LF lines are never answered (the LF app,
``bench_twistd_app.py``, serves those). Otherwise the same app: each line
answered with its reversal, ``quit`` closes. The port comes from
``BENCH_PORT``; it listens on 127.0.0.1 only.
"""

import os

from twisted.application import internet, service
from twisted.internet import protocol
from twisted.protocols import basic


class Reverse(basic.LineReceiver):
    def lineReceived(self, line):
        if line == b"quit":
            self.transport.loseConnection()
        else:
            self.sendLine(line[::-1])


factory = protocol.ServerFactory.forProtocol(Reverse)
application = service.Application("reverse")
internet.TCPServer(int(os.environ["BENCH_PORT"]), factory,
                   interface="127.0.0.1").setServiceParent(application)
