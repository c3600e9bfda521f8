"""How socket addresses are written in logs and messages."""

from __future__ import annotations


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets so the port stays readable."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_sockaddr(address: object) -> str:
    """A socket address as returned by ``getpeername`` (IPv4 or IPv6 tuple)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return format_address(str(address[0]), address[1])
    return str(address)
