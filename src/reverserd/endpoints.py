"""Where a service listens: one ``Endpoint`` kind per description prefix.

An endpoint binds its socket while the process is still privileged (or
adopts one a supervisor bound), says how it is shown in the log, how
worker processes share it and what it leaves on disk, and what an
accepted connection must get through before its lines are served: a TLS
handshake, a PROXY header. ``descriptions`` makes them from text, and
each writes its own description back (saved state, messages).

Unlike Twisted, TCP listens on loopback unless told otherwise: every
interface has to be asked for (``interface=0.0.0.0``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import pathlib
import re
import socket
import ssl
import stat
import struct
import tempfile

from reverserd import activation
from reverserd.addresses import format_address, format_sockaddr
from reverserd.errors import UserError, os_reason

log = logging.getLogger(__name__)

DEFAULT_UNIX_MODE = 0o660
MAX_KEY_FILE_BYTES = 1024 * 1024
TLS_HANDSHAKE_TIMEOUT = 10.0
CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*",
                         re.DOTALL)
# struct tcp_info: for a listening socket, tcpi_sacked holds the accept queue's length.
TCP_INFO_BYTES = 32
LISTEN_BACKLOG_OFFSET = 28
PLAIN = frozenset(":=\\")


def escape(text: str) -> str:
    """``text`` as one argument of a description."""
    return "".join("\\" + c if c in PLAIN else c for c in text)


class Endpoint:
    """One place to listen; see the module's docstring."""

    proxied = False  # a PROXY header comes first on every connection

    @property
    def description(self) -> str:
        """The text that makes this endpoint again (saved state, messages)."""
        raise NotImplementedError

    def bind(self, backlog: int, reuse_port: bool) -> socket.socket:
        raise NotImplementedError

    def replica(self, sock: socket.socket, backlog: int) -> socket.socket:
        """Another socket for a worker process: by default the same one, shared."""
        return sock.dup()

    def adopt(self, sock: socket.socket) -> socket.socket:
        """Serve ``sock``, which an earlier generation bound here, as if bound
        now: what ``bind`` reads (TLS keys) is read afresh."""
        return sock

    def label(self, sock: socket.socket | None) -> str:
        """How the log and ``status`` name it: the real port once bound."""
        raise NotImplementedError

    def queue_length(self, sock: socket.socket, backlog: int) -> int:
        """The accept queue's length, given again to ``listen`` once
        ``start_server`` has set its own."""
        return backlog

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS settings read at ``bind``; ``None`` for plain text."""
        return None

    def kept_fds(self) -> list[int]:
        """Descriptors besides the socket that must survive a detach."""
        return []

    def hand_over(self, uid: int, gid: int) -> None:
        """Give what ``bind`` created on disk to the account the daemon runs as."""

    def release(self) -> None:
        """Undo what ``bind`` left on disk, just before the socket is closed."""

    def address_key(self) -> object:
        """Two endpoints with equal keys would listen on the same address."""
        return self.description

    def handover_key(self) -> str:
        """Which socket of the last generation a reload gives this endpoint:
        one bound for an endpoint with the same key."""
        return repr(self.address_key())

    def with_port(self, port: int) -> Endpoint:
        """The same endpoint on ``port``, what port 0 turned into (saved state)."""
        return self


@dataclasses.dataclass(frozen=True)
class TCPEndpoint(Endpoint):
    port: int
    interface: str = "127.0.0.1"
    backlog: int | None = None
    ipv6_only: bool = False

    @property
    def description(self) -> str:
        prefix = "tcp6" if self.ipv6_only else "tcp"
        backlog = "" if self.backlog is None else f":backlog={self.backlog}"
        return f"{prefix}:{self.port}:interface={escape(self.interface)}{backlog}"

    def bind(self, backlog: int, reuse_port: bool) -> socket.socket:
        return bind_tcp(self.interface, self.port, self.backlog or backlog, reuse_port,
                        self.ipv6_only)

    def replica(self, sock: socket.socket, backlog: int) -> socket.socket:
        """A socket of its own on the same port (``SO_REUSEPORT``): the kernel
        spreads new connections over the workers. One bound without it (by
        a generation without workers, which a reload gave workers) bars any
        other on its port: the workers share it."""
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            return sock.dup()
        return bind_tcp(self.interface, sock.getsockname()[1], self.backlog or backlog, True,
                        self.ipv6_only)

    def queue_length(self, sock: socket.socket, backlog: int) -> int:
        return self.backlog or backlog

    def label(self, sock: socket.socket | None) -> str:
        if sock is None:
            return format_address(self.interface, self.port)
        return format_sockaddr(sock.getsockname())

    def address_key(self) -> object:
        if self.port == 0:
            return object()  # a free port each: never the same address
        return self._address()

    def _address(self) -> tuple[str, str, int]:
        try:
            host = str(ipaddress.ip_address(self.interface))
        except ValueError:
            host = self.interface.lower()
        return ("tcp", host, self.port)

    def handover_key(self) -> str:
        """Port 0 included: the port it turned into is kept across reloads."""
        return repr(self._address())

    def with_port(self, port: int) -> TCPEndpoint:
        return dataclasses.replace(self, port=port)


@dataclasses.dataclass(frozen=True)
class UnixEndpoint(Endpoint):
    """A Unix socket file, with exactly ``mode`` whatever the umask.

    The directory stays open from ``bind`` on, so the file can be removed
    at stop even from inside a chroot jail it lies outside of.
    """

    path: pathlib.Path
    mode: int = DEFAULT_UNIX_MODE
    backlog: int | None = None
    _bound: list[tuple[int, tuple[int, int]]] = dataclasses.field(
        default_factory=list, compare=False, repr=False)  # (directory fd, (device, inode))

    @property
    def description(self) -> str:
        backlog = "" if self.backlog is None else f":backlog={self.backlog}"
        return f"unix:{escape(str(self.path))}:mode={self.mode:o}{backlog}"

    def bind(self, backlog: int, reuse_port: bool) -> socket.socket:
        where = self.label(None)
        self._clear_stale(where)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        directory = -1
        try:
            directory = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            umask = os.umask(0o777)  # no moment with more rights than asked for
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(umask)
            os.chmod(self.path, self.mode)
            sock.listen(self.backlog or backlog)
            status = os.stat(self.path)
        except OSError as error:
            sock.close()
            if directory >= 0:
                os.close(directory)
            raise UserError(f"cannot listen on {where}: {os_reason(error)}") from None
        self._bound.append((directory, (status.st_dev, status.st_ino)))
        sock.setblocking(False)
        return sock

    def _clear_stale(self, where: str) -> None:
        """Remove a socket file no server answers on; refuse anything else."""
        try:
            status = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as error:
            raise UserError(f"cannot listen on {where}: {os_reason(error)}") from None
        if not stat.S_ISSOCK(status.st_mode):
            raise UserError(f"cannot listen on {where}: the path exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.setblocking(False)
            try:
                probe.connect(str(self.path))
            except ConnectionRefusedError:
                pass  # left by a server that is gone
            except BlockingIOError:  # a live server whose queue is full
                raise UserError(f"cannot listen on {where}: address already in use") from None
            except OSError as error:
                raise UserError(f"cannot listen on {where}: {os_reason(error)}") from None
            else:
                raise UserError(f"cannot listen on {where}: address already in use")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def label(self, sock: socket.socket | None) -> str:
        return f"unix:{self.path}"

    def hand_over(self, uid: int, gid: int) -> None:
        try:
            os.chown(self.path, uid, gid)
        except OSError as error:
            raise UserError(f"cannot give {self.label(None)} to the daemon's account: "
                            f"{os_reason(error)}") from None

    def queue_length(self, sock: socket.socket, backlog: int) -> int:
        return self.backlog or backlog

    def release(self) -> None:
        """Remove the socket file, unless another has taken its place.

        Called while the listening socket is still open: it holds the
        file's inode, so a file found there with that inode is ours.
        """
        while self._bound:
            directory, identity = self._bound.pop()
            try:
                status = os.stat(self.path.name, dir_fd=directory, follow_symlinks=False)
                if (status.st_dev, status.st_ino) == identity:
                    os.unlink(self.path.name, dir_fd=directory)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warning("cannot remove the socket file %s: %s (the next start replaces "
                            "it)", self.path, os_reason(error))
            finally:
                os.close(directory)

    def kept_fds(self) -> list[int]:
        return [directory for directory, _ in self._bound]

    def adopt(self, sock: socket.socket) -> socket.socket:
        """Take on removing the socket file at stop, as its binder would: the
        file at the path now is the one the socket was bound to. Its mode
        becomes the one asked for now (a reload may have changed it)."""
        try:
            directory = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise UserError(f"cannot listen on {self.label(None)}: {os_reason(error)}") from None
        try:
            status = os.stat(self.path.name, dir_fd=directory, follow_symlinks=False)
        except OSError:
            os.close(directory)  # removed meanwhile: nothing left to remove at stop
            return sock
        if stat.S_ISSOCK(status.st_mode) and stat.S_IMODE(status.st_mode) != self.mode:
            try:
                os.chmod(self.path.name, self.mode, dir_fd=directory)
            except OSError as error:
                os.close(directory)
                raise UserError(f"cannot set the mode of {self.path} to {self.mode:o}: "
                                f"{os_reason(error)}") from None
        self._bound.append((directory, (status.st_dev, status.st_ino)))
        return sock

    def address_key(self) -> object:
        return ("unix", os.path.normpath(self.path))


def _tls_reason(error: ssl.SSLError) -> str:
    """OpenSSL's reason for refusing a key, as words: its own are codes."""
    if error.reason == "KEY_VALUES_MISMATCH":
        return "the key is not the certificate's"
    if error.reason is None and "PEM lib" in str(error):
        return "it is not an unencrypted private key in PEM form"
    return str(error.reason or error).replace("_", " ").lower()


@dataclasses.dataclass(frozen=True)
class TLSEndpoint(Endpoint):
    """TCP with TLS 1.2 or later; key and certificates are read at ``bind``,
    while root may still read them."""

    tcp: TCPEndpoint
    private_key: pathlib.Path
    cert_key: pathlib.Path | None = None
    extra_cert_chain: pathlib.Path | None = None
    _context: list[ssl.SSLContext] = dataclasses.field(
        default_factory=list, compare=False, repr=False)

    @property
    def description(self) -> str:
        text = f"ssl:{self.tcp.port}:privateKey={escape(str(self.private_key))}"
        if self.cert_key is not None:
            text += f":certKey={escape(str(self.cert_key))}"
        if self.extra_cert_chain is not None:
            text += f":extraCertChain={escape(str(self.extra_cert_chain))}"
        text += f":interface={escape(self.tcp.interface)}"
        return text if self.tcp.backlog is None else f"{text}:backlog={self.tcp.backlog}"

    def bind(self, backlog: int, reuse_port: bool) -> socket.socket:
        if not self._context:
            self._context.append(self._load())
        return self.tcp.bind(backlog, reuse_port)

    def adopt(self, sock: socket.socket) -> socket.socket:
        if not self._context:
            self._context.append(self._load())
        return sock

    def _load(self) -> ssl.SSLContext:
        """The server's TLS settings, from the files as they are now.

        The key is read from its own file only; with ``extraCertChain``,
        the certificates (never the key) are put together in a private
        scratch file, since ``load_cert_chain`` reads only files.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
        _read_pem(self.private_key, "private key")  # readable and of a sane size
        certificate_file = self.cert_key or self.private_key
        certificates = _read_pem(certificate_file, "certificate")
        try:
            if self.extra_cert_chain is None:
                context.load_cert_chain(certificate_file, self.private_key, _no_passphrase)
            else:
                chain = _read_pem(self.extra_cert_chain, "certificate chain")
                with tempfile.TemporaryDirectory(prefix="reverserd-tls-") as scratch:
                    chain_file = pathlib.Path(scratch, "chain.pem")
                    chain_file.write_bytes(b"".join(CERTIFICATE.findall(certificates + chain)))
                    context.load_cert_chain(chain_file, self.private_key, _no_passphrase)
        except _Encrypted:
            raise UserError(f"the TLS private key {self.private_key} is encrypted: give "
                            "reverserd one without a passphrase (readable by root only; it "
                            "is read before root is given up)") from None
        except ssl.SSLError as error:
            raise UserError(f"cannot use the key {self.private_key} with the certificate "
                            f"{certificate_file}: {_tls_reason(error)}") from None
        return context

    def replica(self, sock: socket.socket, backlog: int) -> socket.socket:
        return self.tcp.replica(sock, backlog)

    def queue_length(self, sock: socket.socket, backlog: int) -> int:
        return self.tcp.queue_length(sock, backlog)

    def label(self, sock: socket.socket | None) -> str:
        return f"tls {self.tcp.label(sock)}"

    def tls_context(self) -> ssl.SSLContext | None:
        return self._context[0] if self._context else None

    def address_key(self) -> object:
        return self.tcp.address_key()

    def handover_key(self) -> str:
        return self.tcp.handover_key()

    def with_port(self, port: int) -> Endpoint:
        return dataclasses.replace(self, tcp=self.tcp.with_port(port))


class _Encrypted(Exception):
    """The private key asks for a passphrase: no daemon can type one."""


def _no_passphrase() -> str:
    raise _Encrypted


def _read_pem(path: pathlib.Path, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            content = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise UserError(f"cannot read the TLS {what} {path}: {os_reason(error)}") from None
    if len(content) > MAX_KEY_FILE_BYTES:
        raise UserError(f"cannot read the TLS {what} {path}: over {MAX_KEY_FILE_BYTES} bytes")
    return content


@dataclasses.dataclass(frozen=True)
class SystemdEndpoint(Endpoint):
    """A socket the supervisor bound and passed on (see ``activation``)."""

    index: int | None = None
    name: str | None = None
    domain: str | None = None  # INET, INET6 or UNIX, checked when given

    @property
    def description(self) -> str:
        which = f"index={self.index}" if self.name is None else f"name={escape(self.name)}"
        return f"systemd:{which}" + ("" if self.domain is None else f":domain={self.domain}")

    def bind(self, backlog: int, reuse_port: bool) -> socket.socket:
        inherited = activation.inherited_sockets()
        if not inherited:
            raise UserError(f"cannot listen on {self.description}: no socket was passed to "
                            "this process (LISTEN_FDS and LISTEN_PID are not set for it)")
        found = [passed for passed in inherited
                 if passed.index == self.index or passed.name == self.name]
        if not found:
            names = ", ".join(f"{passed.index}={passed.name}" for passed in inherited)
            raise UserError(f"cannot listen on {self.description}: the sockets passed are "
                            f"{names}")
        sock = found[0].socket
        if self.domain is not None and DOMAINS[self.domain] != sock.family:
            raise UserError(f"cannot listen on {self.description}: the socket passed is "
                            f"not {self.domain}")
        return sock

    def queue_length(self, sock: socket.socket, backlog: int) -> int:
        """The length the supervisor chose (its ``Backlog=``): read back from
        the kernel for TCP, which reports it in ``TCP_INFO``; SOMAXCONN,
        systemd's default, otherwise."""
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
            if len(info) >= TCP_INFO_BYTES:
                length: int = struct.unpack_from("I", info, LISTEN_BACKLOG_OFFSET)[0]
                if length:
                    return length
        return socket.SOMAXCONN

    def label(self, sock: socket.socket | None) -> str:
        if sock is None:
            return self.description
        if sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            return f"unix:{name.decode(errors='replace') if isinstance(name, bytes) else name}"
        return format_sockaddr(sock.getsockname())

    def address_key(self) -> object:
        return ("systemd", self.index, self.name)


@dataclasses.dataclass(frozen=True)
class ProxiedEndpoint(Endpoint):
    """``haproxy:``: every connection starts with a PROXY header naming the client."""

    inner: Endpoint
    proxied = True

    @property
    def description(self) -> str:
        return f"haproxy:{self.inner.description}"

    def bind(self, backlog: int, reuse_port: bool) -> socket.socket:
        return self.inner.bind(backlog, reuse_port)

    def replica(self, sock: socket.socket, backlog: int) -> socket.socket:
        return self.inner.replica(sock, backlog)

    def adopt(self, sock: socket.socket) -> socket.socket:
        return self.inner.adopt(sock)

    def label(self, sock: socket.socket | None) -> str:
        return f"proxied {self.inner.label(sock)}"

    def tls_context(self) -> ssl.SSLContext | None:
        return self.inner.tls_context()

    def hand_over(self, uid: int, gid: int) -> None:
        self.inner.hand_over(uid, gid)

    def queue_length(self, sock: socket.socket, backlog: int) -> int:
        return self.inner.queue_length(sock, backlog)

    def kept_fds(self) -> list[int]:
        return self.inner.kept_fds()

    def release(self) -> None:
        self.inner.release()

    def address_key(self) -> object:
        return self.inner.address_key()

    def handover_key(self) -> str:
        return self.inner.handover_key()

    def with_port(self, port: int) -> Endpoint:
        return ProxiedEndpoint(self.inner.with_port(port))


DOMAINS = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


def bind_tcp(interface: str, port: int, backlog: int, reuse_port: bool = False,
             ipv6_only: bool = False) -> socket.socket:
    """A non-blocking socket bound to ``interface:port`` and already listening.

    Listening straight away means clients that connect before the event loop
    runs wait in the backlog instead of being refused. With ``reuse_port``,
    several such sockets share the port and the kernel spreads new
    connections over them (one per worker process).
    """
    where = format_address(interface, port)
    family = socket.AF_INET6 if ipv6_only else socket.AF_UNSPEC
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            interface, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        reason = (error.strerror or str(error)).lower()
        raise UserError(f"cannot listen on {where}: {reason}") from None
    except UnicodeError as error:  # a host name the IDNA codec refuses
        raise UserError(f"cannot listen on {where}: invalid host name ({error})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if ipv6_only:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise UserError(f"cannot listen on {where}: {os_reason(error)}") from None
    sock.setblocking(False)
    return sock
