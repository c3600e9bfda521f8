"""Listener descriptions, in Twisted's endpoint grammar, made into endpoints.

A description is ``prefix:positional:key=value:...``; a backslash makes the
next character plain (``tcp6:2323:interface=\\:\\:1``). Each prefix has its
arguments, each with a range; a description that breaks any of them is one
``DescriptionError`` quoting it. Relative paths are taken from a base
directory: the working directory on the command line, the file's own
directory in a config file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
from collections.abc import Callable
from typing import TypeVar

from reverserd import activation, config
from reverserd.endpoints import (
    DEFAULT_UNIX_MODE,
    DOMAINS,
    Endpoint,
    ProxiedEndpoint,
    SystemdEndpoint,
    TCPEndpoint,
    TLSEndpoint,
    UnixEndpoint,
)

MAX_DESCRIPTION = 8192
Value = TypeVar("Value")


class DescriptionError(ValueError):
    """A description that names no endpoint; the message quotes it."""


def split(text: str) -> tuple[str, list[str], dict[str, str]]:
    """The prefix, the positional arguments and the ``key=value`` ones.

    An unescaped ``=`` makes an argument a keyword one; backslashes are
    taken away, so what remains is each argument's own text.
    """
    fields: list[list[tuple[str, bool]]] = [[]]
    characters = iter(text)
    for character in characters:
        if character == "\\":
            following = next(characters, None)
            if following is None:
                raise ValueError("it ends with a lone backslash")
            fields[-1].append((following, True))
        elif character == ":":
            fields.append([])
        else:
            fields[-1].append((character, False))
    prefix, *arguments = ("".join(c for c, _ in field) for field in fields)
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for field, argument in zip(fields[1:], arguments):
        at = next((i for i, (c, escaped) in enumerate(field) if c == "=" and not escaped), None)
        if at is None:
            positional.append(argument)
            continue
        key, value = argument[:at], argument[at + 1:]
        if key in keywords:
            raise ValueError(f"key {key!r} is given twice")
        keywords[key] = value
    return prefix, positional, keywords


def parse(text: str, base: pathlib.Path | None = None) -> Endpoint:
    """The endpoint ``text`` describes; relative paths are taken from ``base``
    (the working directory if ``None``). Raises ``DescriptionError``."""
    if len(text) > MAX_DESCRIPTION:
        raise DescriptionError(f"bad listener {_as_typed(text)}: over {MAX_DESCRIPTION} "
                               "characters")
    try:
        return _parse(text, base or pathlib.Path.cwd())
    except ValueError as error:
        raise DescriptionError(f"bad listener {_as_typed(text)}: {error}") from None


def _as_typed(text: str) -> str:
    """A description quoted as the user wrote it (backslashes single), cut short;
    control characters escaped, so the message stays one line."""
    shown = text if len(text) <= 200 else text[:200] + "..."
    return f"'{shown}'" if shown.isprintable() else repr(shown)


def _parse(text: str, base: pathlib.Path) -> Endpoint:
    prefix, _, rest = text.partition(":")
    if prefix == "haproxy":
        inner = _parse(rest, base)
        if isinstance(inner, ProxiedEndpoint):
            raise ValueError("haproxy: is given twice")
        return ProxiedEndpoint(inner)
    prefix, positional, keywords = split(text)
    make = PREFIXES.get(prefix)
    if make is None:
        raise ValueError(f"unknown prefix {prefix!r} (expected one of "
                         f"{', '.join([*PREFIXES, 'haproxy'])})")
    return make(_Arguments(prefix, positional, keywords, base))


@dataclasses.dataclass
class _Arguments:
    """The arguments of one description, each taken once by name or position."""

    prefix: str
    positional: list[str]
    keywords: dict[str, str]
    base: pathlib.Path

    def take(self, key: str, required: bool = False) -> str | None:
        if key in self.keywords:
            return self.keywords.pop(key)
        if self.positional:
            return self.positional.pop(0)
        if required:
            raise ValueError(f"{self.prefix}: needs {key}")
        return None

    def keyword(self, key: str) -> str | None:
        return self.keywords.pop(key, None)

    def done(self) -> None:
        if self.positional:
            raise ValueError(f"unexpected argument {self.positional[0]!r}")
        if self.keywords:
            raise ValueError(f"unknown key {next(iter(self.keywords))!r} for {self.prefix}:")

    def path(self, key: str, required: bool = False) -> pathlib.Path | None:
        text = self.take(key, required) if required else self.keyword(key)
        if text is None:
            return None
        if not text.isprintable():
            raise ValueError(f"{key}: expected a path without control characters (a newline "
                             "in it would forge log lines)")
        return pathlib.Path(os.path.normpath(self.base / _checked(config.parse_path, key, text)))

    def checked(self, parse: Callable[[str], Value], key: str, value: str | None) -> Value | None:
        """``value`` (a keyword's or a positional one) through ``parse``, or ``None``."""
        return None if value is None else _checked(parse, key, value)


def _checked(parse: Callable[[str], Value], key: str, text: str) -> Value:
    """One argument through the command line's own validator, its message naming the key."""
    try:
        return parse(text)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


parse_index = config.WholeNumber("an index", 0, activation.MAX_FDS - 1)


def _interface(text: str | None, default: str, ipv6_only: bool) -> str:
    if text is None:
        return default
    interface = _checked(config.parse_interface, "interface", text)
    if ipv6_only and ":" not in interface and _is_ip(interface):
        raise ValueError(f"interface: tcp6 listens on IPv6 only, got {text!r}")
    return interface


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _tcp(arguments: _Arguments, ipv6_only: bool = False) -> TCPEndpoint:
    port = arguments.checked(config.parse_port, "port", arguments.take("port", required=True))
    interface = _interface(arguments.keyword("interface"), "::1" if ipv6_only else "127.0.0.1",
                           ipv6_only)
    backlog = arguments.checked(config.parse_backlog, "backlog", arguments.keyword("backlog"))
    assert port is not None
    return TCPEndpoint(port, interface, backlog, ipv6_only)


def _tcp4(arguments: _Arguments) -> TCPEndpoint:
    endpoint = _tcp(arguments)
    arguments.done()
    return endpoint


def _tcp6(arguments: _Arguments) -> TCPEndpoint:
    endpoint = _tcp(arguments, ipv6_only=True)
    arguments.done()
    return endpoint


def _unix(arguments: _Arguments) -> UnixEndpoint:
    path = arguments.path("address", required=True)
    assert path is not None
    if len(os.fsencode(str(path))) > config.MAX_SOCKET_PATH_BYTES:
        raise ValueError(f"a Unix socket path is at most {config.MAX_SOCKET_PATH_BYTES} bytes, "
                         f"and {str(path)!r} is longer")
    mode = arguments.checked(config.parse_mode, "mode", arguments.keyword("mode"))
    backlog = arguments.checked(config.parse_backlog, "backlog", arguments.keyword("backlog"))
    arguments.done()
    return UnixEndpoint(path, DEFAULT_UNIX_MODE if mode is None else mode, backlog)


def _ssl(arguments: _Arguments) -> TLSEndpoint:
    tcp = _tcp(arguments)
    private_key = arguments.path("privateKey")
    if private_key is None:
        raise ValueError("ssl: needs privateKey=FILE")
    cert_key = arguments.path("certKey")
    chain = arguments.path("extraCertChain")
    arguments.done()
    return TLSEndpoint(tcp, private_key, cert_key, chain)


def _systemd(arguments: _Arguments) -> SystemdEndpoint:
    index = arguments.checked(parse_index, "index", arguments.keyword("index"))
    name = arguments.keyword("name")
    domain = arguments.keyword("domain")
    arguments.done()
    if (index is None) == (name is None):
        raise ValueError("systemd: needs either index=N or name=NAME")
    if name is not None and not 0 < len(name) <= 255:
        raise ValueError("name: expected 1 to 255 characters")
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"domain: expected one of {', '.join(DOMAINS)}, got {domain!r}")
    return SystemdEndpoint(index, name, domain)


PREFIXES: dict[str, Callable[[_Arguments], Endpoint]] = {
    "tcp": _tcp4, "tcp6": _tcp6, "unix": _unix, "ssl": _ssl, "systemd": _systemd,
}


def check_distinct(endpoints: list[Endpoint]) -> None:
    """Refuse two endpoints on one address, naming both."""
    seen: dict[object, Endpoint] = {}
    for endpoint in endpoints:
        key = endpoint.address_key()
        if key in seen:
            raise DescriptionError(f"listeners {_as_typed(seen[key].description)} and "
                                   f"{_as_typed(endpoint.description)} are on the same address")
        seen[key] = endpoint
