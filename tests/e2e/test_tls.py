"""``--listen ssl:...``: TLS 1.2+ with a certificate made at test time, reached
with ``openssl s_client`` and Python's ssl module; bad clients cost others nothing."""

from __future__ import annotations

import os
import pathlib
import pwd
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import warnings
from collections.abc import Callable

import pytest

from tests.e2e.certificates import Certificate, make_certificate, openssl
from tests.e2e.support import (
    DEADLINE,
    REVERSERD,
    ReverserdProcess,
    receive_exactly,
    receive_until_closed,
    wait_until,
)

TLS_LISTENING = r"listening on tls 127\.0\.0\.1:(\d+)$"
HANDSHAKE = re.compile(r"(?i)handshake")

REQUEST = "hello\r\nhéllo wörld\nplain\nquit\n".encode()
ANSWER = "olleh\r\ndlröw olléh\nnialp\n".encode()

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as in CI")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """One throwaway key and certificate for the tests of this module."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


def ssl_description(key: pathlib.Path, cert: pathlib.Path | None = None) -> str:
    return f"ssl:0:privateKey={key}" + (f":certKey={cert}" if cert else "")


def start_tls(reverserd: Callable[..., ReverserdProcess], description: str,
              *more: str) -> tuple[ReverserdProcess, int]:
    """A foreground server on one TLS listener, debug logging on; its port."""
    process = reverserd("--foreground", "--listen", description, "--log-level", "debug", *more)
    return process, int(process.wait_for_log(TLS_LISTENING).group(1))


@pytest.fixture
def tls(reverserd: Callable[..., ReverserdProcess],
        certificate: Certificate) -> tuple[ReverserdProcess, int]:
    return start_tls(reverserd, ssl_description(certificate.key, certificate.cert))


def client_context(certificate: Certificate,
                   version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client that trusts only the test certificate, pinned to ``version`` if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certificate.cert)
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, on purpose
            context.minimum_version = version
            context.maximum_version = version
    return context


def tls_connect(port: int, context: ssl.SSLContext,
                timeout: float = DEADLINE) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:``port``, handshake done, certificate checked."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def exchange(sock: ssl.SSLSocket, payload: bytes, size: int) -> bytes:
    """Send ``payload`` while reading the answers, until ``size`` bytes came back:
    one thread, non-blocking, so neither side's buffers can deadlock the test."""
    sock.setblocking(False)
    view = memoryview(payload)
    sent, received = 0, bytearray()
    deadline = time.monotonic() + 60
    try:
        while len(received) < size:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out with {sent} bytes sent, "
                                     f"{len(received)} of {size} received")
            writing = [sock] if sent < len(payload) else []
            readable, writable, _ = select.select([sock], writing, [], 0.5)
            if writable:
                try:
                    sent += sock.send(view[sent:sent + 65536])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass  # try again when select says so
            if readable or sock.pending():
                try:
                    while len(received) < size:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise AssertionError(f"closed after {len(received)} of {size}")
                        received += chunk
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass  # everything that had arrived is read
    finally:
        sock.setblocking(True)
        sock.settimeout(DEADLINE)
    return bytes(received)


def handshake_lines(process: ReverserdProcess) -> list[str]:
    return [line for line in process.log if HANDSHAKE.search(line)]


def stop(process: ReverserdProcess) -> None:
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert "Traceback" not in "\n".join(process.log)
    assert process.stderr() == ""


def test_key_and_certificate_files_log_tls_and_answer_s_client(tls) -> None:
    process, port = tls
    process.wait_for_log(rf" INFO reverserd\.\w+: listening on tls 127\.0\.0\.1:{port}$")
    result = subprocess.run([openssl(), "s_client", "-quiet", "-connect", f"127.0.0.1:{port}"],
                            input=REQUEST, capture_output=True, timeout=DEADLINE, check=False)
    assert result.stdout == ANSWER, result


def test_a_combined_pem_alone(reverserd, certificate: Certificate) -> None:
    _, port = start_tls(reverserd, ssl_description(certificate.combined))
    with tls_connect(port, client_context(certificate)) as sock:
        sock.sendall(REQUEST)
        assert receive_until_closed(sock) == ANSWER


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["TLSv1.2", "TLSv1.3"])
def test_tls_1_2_and_1_3_are_served(tls, certificate: Certificate,
                                    version: ssl.TLSVersion) -> None:
    _, port = tls
    with tls_connect(port, client_context(certificate, version)) as sock:
        assert sock.version() == version.name.replace("_", ".")
        sock.sendall(REQUEST)
        assert receive_until_closed(sock) == ANSWER


def test_tls_1_1_is_refused(tls, certificate: Certificate) -> None:
    process, port = tls
    context = client_context(certificate, ssl.TLSVersion.TLSv1_1)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer TLS 1.1 at all
    try:
        with tls_connect(port, context) as sock:
            pytest.fail(f"the server accepted {sock.version()}")
    except ssl.SSLError as error:
        if error.reason == "NO_PROTOCOLS_AVAILABLE":
            pytest.skip("this OpenSSL will not offer TLS 1.1, so the server cannot be asked")
    except ConnectionError:
        pass  # closed without an alert: refused just the same
    with tls_connect(port, client_context(certificate)) as sock:
        sock.sendall(b"still\nquit\n")
        assert receive_until_closed(sock) == b"llits\n"
    assert "Traceback" not in "\n".join(process.log)


def test_plain_text_is_closed_with_one_debug_line_and_others_are_served(
        tls, certificate: Certificate) -> None:
    process, port = tls
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\nthis is not TLS\r\n\r\n")
        receive_until_closed(plain)  # an alert at most, then the close
    process.wait_for_log(HANDSHAKE.pattern)
    failed = handshake_lines(process)
    assert len(failed) == 1, failed
    assert " DEBUG " in failed[0], failed
    with tls_connect(port, client_context(certificate)) as sock:
        sock.sendall(REQUEST)
        assert receive_until_closed(sock) == ANSWER
    stop(process)
    assert not [line for line in process.log if " WARNING " in line or " ERROR " in line]
    assert [line for line in handshake_lines(process) if " DEBUG " not in line] == []


def test_a_silent_client_does_not_block_another(tls, certificate: Certificate) -> None:
    _, port = tls
    # the second one is served well inside the 10 s handshake timeout the first one has
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE), \
            tls_connect(port, client_context(certificate), timeout=3.0) as sock:
        sock.sendall(b"second\nquit\n")
        assert receive_until_closed(sock) == b"dnoces\n"


def test_quit_over_tls_closes(tls, certificate: Certificate) -> None:
    _, port = tls
    with tls_connect(port, client_context(certificate)) as sock:
        sock.sendall(b"abc\nquit\nnever answered\n")
        assert receive_until_closed(sock) == b"cba\n"


def test_a_long_pipelined_burst_is_answered_in_order(tls, certificate: Certificate) -> None:
    process, port = tls
    lines = [f"burst line {number:05d} héllo".encode() for number in range(20_000)]
    payload = b"".join(line + b"\n" for line in lines)
    expected = b"".join(line.decode()[::-1].encode() + b"\n" for line in lines)
    with tls_connect(port, client_context(certificate)) as sock:
        assert exchange(sock, payload, len(expected)) == expected
        sock.sendall(b"quit\n")
        assert receive_until_closed(sock) == b""
    stop(process)


def test_a_graceful_stop_answers_what_a_tls_client_sent(tls,
                                                        certificate: Certificate) -> None:
    process, port = tls
    lines = [f"pending line {number}".encode() for number in range(2000)]
    expected = b"".join(line[::-1] + b"\n" for line in lines)
    with tls_connect(port, client_context(certificate)) as sock:
        sock.sendall(b"warm up\n")
        assert receive_exactly(sock, 8) == b"pu mraw\n"
        sock.sendall(b"".join(line + b"\n" for line in lines))
        process.signal(signal.SIGTERM)
        assert receive_until_closed(sock) == expected
    assert process.wait() == 0
    assert process.log[-1].endswith("stopped")


def test_a_missing_key_file_is_one_line_exit_1_and_leaves_nothing(
        tmp_path: pathlib.Path) -> None:
    path = tmp_path / "first.sock"
    absent = tmp_path / "absent-key.pem"
    result = subprocess.run(
        [REVERSERD, "--foreground", "--listen", f"unix:{path}",
         "--listen", ssl_description(absent)],
        cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE,
        stdin=subprocess.DEVNULL, check=False,
    )
    assert result.returncode == 1, result
    assert result.stderr.startswith("reverserd: ") and result.stderr.count("\n") == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == [], "no socket file is left behind"


@needs_root
def test_a_key_only_root_may_read_with_user_nobody(reverserd, certificate: Certificate,
                                                   tmp_path: pathlib.Path) -> None:
    nobody = pwd.getpwnam("nobody")
    key = tmp_path / "root-only-key.pem"
    shutil.copyfile(certificate.key, key)
    os.chown(key, 0, 0)
    key.chmod(0o600)
    process, port = start_tls(reverserd, ssl_description(key, certificate.cert),
                              "--user", "nobody")

    def uid() -> list[int]:
        for line in pathlib.Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return [int(number) for number in line.split()[1:]]
        raise AssertionError("no Uid line")

    wait_until(lambda: uid() == [nobody.pw_uid] * 4, "the server to run as nobody")
    for _ in range(2):  # the key is not read again per connection
        with tls_connect(port, client_context(certificate)) as sock:
            sock.sendall(REQUEST)
            assert receive_until_closed(sock) == ANSWER
    stop(process)


class CappedClient(threading.Thread):
    """A TLS client that sends one line, counts its answer, and stays until told to go."""

    def __init__(self, port: int, context: ssl.SSLContext, number: int,
                 answered: threading.Semaphore) -> None:
        super().__init__(daemon=True)
        self.port, self.context, self.number, self.answered = port, context, number, answered
        self.reply = b""
        self.go = threading.Event()

    def run(self) -> None:
        try:
            with tls_connect(self.port, self.context, timeout=DEADLINE) as sock:
                sock.sendall(b"%d\n" % self.number)
                self.reply = sock.recv(100)
                self.answered.release()
                self.go.wait(DEADLINE)
        except OSError:  # still waiting for its turn when the server stopped
            pass


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_handshakes_over_the_cap_wait_for_their_turn(reverserd, certificate: Certificate,
                                                      loop: str) -> None:
    """Accepting resumes in batches, so some connections are accepted over the cap: their
    handshake waits for their turn, as a plain connection's first line does."""
    process, port = start_tls(reverserd, ssl_description(certificate.key, certificate.cert),
                              "--loop", loop, "--max-connections", "5")
    answered = threading.Semaphore(0)
    clients = [CappedClient(port, client_context(certificate), number, answered)
               for number in range(30)]
    for client in clients:
        client.start()

    def served(count: int) -> list[CappedClient]:
        for _ in range(count):
            assert answered.acquire(timeout=DEADLINE), "a client waited too long for a turn"
        assert not answered.acquire(timeout=0.5), "more served at once than the cap of 5"
        return [client for client in clients if client.reply and not client.go.is_set()]

    assert len(served(5)) == 5
    for _ in range(3):  # each one that leaves lets exactly one more in
        leaving = next(client for client in clients if client.reply and not client.go.is_set())
        leaving.go.set()
        assert len(served(1)) == 5
    for client in clients:
        assert client.reply in (b"", str(client.number)[::-1].encode() + b"\n")
        client.go.set()
    process.end()
    for client in clients:
        client.join(DEADLINE)


def test_an_encrypted_key_is_one_line_and_never_a_passphrase_prompt(
        tmp_path: pathlib.Path) -> None:
    key, cert = tmp_path / "locked.pem", tmp_path / "cert.pem"
    for command in (["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                     "-aes256", "-pass", "pass:secret", "-out", str(key)],
                    ["req", "-x509", "-key", str(key), "-passin", "pass:secret", "-out",
                     str(cert), "-days", "2", "-subj", "/CN=localhost"]):
        subprocess.run([openssl(), *command], capture_output=True, check=True, timeout=DEADLINE)
    result = subprocess.run([REVERSERD, "run", "--listen", ssl_description(key, cert)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 1, result
    assert result.stderr == (f"reverserd: the TLS private key {key} is encrypted: give "
                             "reverserd one without a passphrase (readable by root only; it "
                             "is read before root is given up)\n")


def test_an_extra_certificate_chain_is_sent_after_the_certificate(
        reverserd, tmp_path: pathlib.Path) -> None:
    """The chain file's certificates follow the server's own; its key never leaves its file."""
    issuer = make_certificate(tmp_path / "issuer")
    server = make_certificate(tmp_path / "server")
    _, port = start_tls(reverserd, f"{ssl_description(server.key, server.cert)}"
                                   f":extraCertChain={issuer.cert}")
    result = subprocess.run([openssl(), "s_client", "-showcerts", "-connect",
                             f"127.0.0.1:{port}"], input=b"quit\n", capture_output=True,
                            timeout=DEADLINE, check=False)
    sent = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                      result.stdout, re.DOTALL)
    expected = [re.search(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                          certificate.cert.read_bytes(), re.DOTALL).group(0)  # type: ignore[union-attr]
                for certificate in (server, issuer)]
    assert sent == expected, result.stdout


def tls_and_proxied_tls(reverserd, certificate: Certificate, loop: str,
                        cap: int) -> tuple[ReverserdProcess, int, int]:
    """A server with a TLS listener and one behind a balancer, under a cap of ``cap``
    connections (so a slot a connection kept would show); both ports."""
    process = reverserd("--foreground", "--loop", loop, "--max-connections", str(cap),
                        "--listen", ssl_description(certificate.key, certificate.cert),
                        "--listen", "haproxy:" + ssl_description(certificate.key,
                                                                 certificate.cert))
    port = int(process.wait_for_log(TLS_LISTENING).group(1))
    proxied = int(process.wait_for_log(r"listening on proxied tls 127\.0\.0\.1:(\d+)$").group(1))
    return process, port, proxied


def reset_mid_hello(port: int, header: bytes = b"") -> None:
    """Half a ClientHello, then a reset: the connection is gone before its handshake is."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(header + bytes.fromhex("1603010200010001fc0303") + bytes(40))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_clients_reset_during_the_handshake_free_their_slots(
        reverserd, certificate: Certificate, loop: str) -> None:
    process, port, proxied = tls_and_proxied_tls(reverserd, certificate, loop, cap=2)
    for _ in range(3):  # more than the cap, were any of them kept
        reset_mid_hello(port)
        reset_mid_hello(proxied, b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 2323\r\n")
    with tls_connect(port, client_context(certificate)) as sock:
        sock.sendall(b"served\nquit\n")
        assert receive_until_closed(sock) == b"devres\n"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0  # no connection left to wait for
    assert not [line for line in process.log if " ERROR " in line or "Traceback" in line]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_that_sends_and_closes_at_once_is_answered(
        reverserd, certificate: Certificate, loop: str) -> None:
    """socat, ``echo | openssl s_client`` and a balancer passing such a client on all
    send their lines and end the connection in one go; the replies must still reach them,
    and the slot be freed (a cap of 1 would otherwise lock the next client out)."""
    process, port, proxied = tls_and_proxied_tls(reverserd, certificate, loop, cap=1)
    for _ in range(3):
        result = subprocess.run([shutil.which("socat") or "socat", "-",
                                 f"OPENSSL:127.0.0.1:{port},verify=0"], input=b"hello\n",
                                capture_output=True, timeout=DEADLINE, check=False)
        assert result.stdout == b"olleh\n", result
        raw = socket.create_connection(("127.0.0.1", proxied), timeout=DEADLINE)
        raw.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 2323\r\n")
        with client_context(certificate).wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"behind\n")
            # The end of its stream, as a balancer passes a client's on: a FIN under
            # the TLS layer (SSLSocket.shutdown would drop the TLS layer itself).
            with socket.socket(fileno=os.dup(sock.fileno())) as same_connection:
                same_connection.shutdown(socket.SHUT_WR)
            assert receive_until_closed(sock) == b"dniheb\n"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert not [line for line in process.log if " ERROR " in line or "WARNING asyncio" in line]


def test_a_silent_client_loses_its_slot_at_the_handshake_deadline(
        reverserd, certificate: Certificate) -> None:
    """Under a cap of 1, a client that never starts its handshake would lock everyone
    out; the 10 s deadline frees the slot, and the next client is served."""
    process, port = start_tls(reverserd, ssl_description(certificate.key, certificate.cert),
                              "--max-connections", "1")
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as silent:
        started = time.monotonic()
        process.wait_for_log("reached the cap of 1 connections")
        with tls_connect(port, client_context(certificate), timeout=DEADLINE) as sock:
            sock.sendall(b"next\nquit\n")
            assert receive_until_closed(sock) == b"txen\n"
            waited = time.monotonic() - started
        silent.settimeout(DEADLINE)
        assert silent.recv(100) == b""
    assert 9 <= waited < DEADLINE, waited
    process.wait_for_log(r"DEBUG .*closing connection from 127\.0\.0\.1:\d+: TLS handshake "
                         r"failed")


def test_an_over_long_line_over_tls_closes_the_connection_as_over_tcp(
        reverserd, certificate: Certificate) -> None:
    _, port = start_tls(reverserd, ssl_description(certificate.key, certificate.cert),
                        "--max-line-length", "100")
    with tls_connect(port, client_context(certificate)) as sock:
        sock.sendall(b"short\n" + b"x" * 200 + b"\nnever answered\n")
        assert receive_until_closed(sock) == b"trohs\n"
