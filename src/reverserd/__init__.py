"""reverserd: a line-reversing TCP service run as a well-behaved Unix daemon.

The names an application file needs are importable from here. They are
loaded on first use, so that the command's entry point (``entry``) can hold
signals before any slow import.
"""

__version__ = "0.1.0"
TYPE_CHECKING = False  # typing itself takes milliseconds to import; type checkers know this name

if TYPE_CHECKING:
    from reverserd.listening import ListeningService, TCPServer, listen
    from reverserd.protocol import LineHandler, Reverser
    from reverserd.reversal import reverse
    from reverserd.service import Application, MultiService, Service

_HOMES = {
    "Application": "reverserd.service",
    "LineHandler": "reverserd.protocol",
    "ListeningService": "reverserd.listening",
    "MultiService": "reverserd.service",
    "Reverser": "reverserd.protocol",
    "Service": "reverserd.service",
    "TCPServer": "reverserd.listening",
    "listen": "reverserd.listening",
    "reverse": "reverserd.reversal",
}

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


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'reverserd' has no attribute {name!r}")
    value = getattr(__import__(home, fromlist=[name]), name)
    globals()[name] = value
    return value
