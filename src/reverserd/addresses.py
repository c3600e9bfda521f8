"""How socket addresses are written in logs and messages."""

from __future__ import annotations


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets so the port stays readable."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_sockaddr(address: object) -> str:
    """A socket address as ``getpeername`` returns it (IPv4, IPv6, Unix)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return format_address(str(address[0]), address[1])
    if address is None:
        return "?"
    if address in ("", b""):  # an unnamed Unix socket: every client of one
        return "a local client"
    return str(address)
