"""reverserd: a line-reversing TCP service run as a well-behaved Unix daemon.

The names an application file needs are importable from here.
"""

__version__ = "0.1.0"

from reverserd.listening import ListeningService, TCPServer, listen
from reverserd.protocol import LineHandler, Reverser
from reverserd.reversal import reverse
from reverserd.service import Application, MultiService, Service

__all__ = [
    "Application",
    "LineHandler",
    "ListeningService",
    "MultiService",
    "Reverser",
    "Service",
    "TCPServer",
    "__version__",
    "listen",
    "reverse",
]
