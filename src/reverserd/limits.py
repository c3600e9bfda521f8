"""The defaults of every limit a connection or worker is held to.

One place for the numbers, so the command line, the config file, the
connection policy and the workers' supervisor agree on them.
"""

from __future__ import annotations

import ipaddress

DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_MAX_CONNECTIONS_PER_PEER = 0  # off
DEFAULT_IDLE_TIMEOUT = 300.0  # seconds; 0 turns it off
DEFAULT_WRITE_TIMEOUT = 30.0
DEFAULT_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
DEFAULT_WORKER_TIMEOUT = 30.0
#: Open connections served by asyncio's own transport; those beyond, by a compact one.
DEFAULT_COMPACT_AFTER = 256
DEFAULT_SHUTDOWN_TIMEOUT = 5.0  # seconds connections get at stop to answer what they received
MAX_SECONDS = 86_400.0  # the longest any timeout may be: a day
MAX_CONNECTIONS = 1_000_000
MAX_BACKLOG = 65_535
#: Who may put a PROXY header before a connection: a balancer on this machine.
DEFAULT_PROXY_FROM = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
MAX_PROXY_NETWORKS = 64
