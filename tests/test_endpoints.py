"""Endpoints: what binding each kind does, and what it leaves behind."""

from __future__ import annotations

import os
import pathlib
import socket
import ssl
import stat

import pytest

from reverserd.endpoints import SystemdEndpoint, TCPEndpoint, TLSEndpoint, UnixEndpoint
from reverserd.errors import UserError
from tests.e2e.certificates import make_certificate


def test_a_unix_socket_gets_exactly_its_mode_whatever_the_umask(tmp_path: pathlib.Path) -> None:
    endpoint = UnixEndpoint(tmp_path / "s.sock", 0o640)
    umask = os.umask(0o077)
    try:
        sock = endpoint.bind(8, reuse_port=False)
    finally:
        os.umask(umask)
    try:
        assert stat.S_IMODE(os.stat(endpoint.path).st_mode) == 0o640
        assert endpoint.label(sock) == f"unix:{endpoint.path}"
        os.chmod(endpoint.path, 0o666)  # changed while serving: still the same file
    finally:
        endpoint.release()
        sock.close()
    assert not endpoint.path.exists()


def test_a_stale_socket_file_is_replaced_and_a_live_one_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    endpoint = UnixEndpoint(path)
    sock = endpoint.bind(8, reuse_port=False)
    try:
        with pytest.raises(UserError, match="address already in use"):
            UnixEndpoint(path).bind(8, reuse_port=False)
        assert path.exists()
    finally:
        endpoint.release()
        sock.close()


def test_a_path_that_is_not_a_socket_is_left_alone(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(UserError, match="exists and is not a socket"):
        UnixEndpoint(path).bind(8, reuse_port=False)
    assert path.read_text() == "keep me"


def test_release_leaves_a_socket_file_another_server_made(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.sock"
    first = UnixEndpoint(path)
    sock = first.bind(8, reuse_port=False)
    try:
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(str(path))
            first.release()
            assert path.exists()
    finally:
        sock.close()


def test_tcp6_listens_on_ipv6_only() -> None:
    sock = TCPEndpoint(0, "::", None, True).bind(8, reuse_port=False)
    with sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


def test_an_inherited_socket_keeps_the_queue_length_its_supervisor_chose() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(77)
        assert SystemdEndpoint(index=0).queue_length(sock, 1024) == 77


def test_systemd_without_inherited_sockets_says_so() -> None:
    with pytest.raises(UserError, match="no socket was passed to this process"):
        SystemdEndpoint(index=0).bind(8, reuse_port=False)


def test_tls_takes_1_2_or_later_in_the_server_s_cipher_order(tmp_path: pathlib.Path) -> None:
    certificate = make_certificate(tmp_path)
    endpoint = TLSEndpoint(TCPEndpoint(0), certificate.key, certificate.cert)
    with endpoint.bind(8, reuse_port=False):
        context = endpoint.tls_context()
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.options & ssl.OP_NO_COMPRESSION


@pytest.mark.parametrize("key", ["garbage", "another's"])
def test_a_key_tls_cannot_use_is_named_as_given_with_a_reason_in_words(
        tmp_path: pathlib.Path, key: str) -> None:
    mine = make_certificate(tmp_path / "Mine")
    unusable = tmp_path / "Mine" / "Unusable.pem"
    if key == "garbage":
        unusable.write_text("not a key\n")
        reason = "it is not an unencrypted private key in PEM form"
    else:
        unusable.write_bytes(make_certificate(tmp_path / "Theirs").key.read_bytes())
        reason = "the key is not the certificate's"
    endpoint = TLSEndpoint(TCPEndpoint(0), unusable, mine.cert)
    with pytest.raises(UserError) as refused:
        endpoint.bind(8, reuse_port=False)
    assert str(refused.value) == (f"cannot use the key {unusable} with the certificate "
                                  f"{mine.cert}: {reason}")
