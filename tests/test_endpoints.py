"""Listener descriptions: the grammar, each prefix's checks, and what binding does."""

from __future__ import annotations

import os
import pathlib
import socket
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reverserd import endpoints
from reverserd.endpoints import (
    DescriptionError,
    ProxiedEndpoint,
    SystemdEndpoint,
    TCPEndpoint,
    TLSEndpoint,
    UnixEndpoint,
)
from reverserd.errors import UserError

BASE = pathlib.Path("/srv/app")
ARGUMENT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(ARGUMENT, min_size=1, max_size=5))
def test_escaped_arguments_split_back_into_themselves(arguments: list[str]) -> None:
    prefix, *rest = arguments
    text = ":".join(endpoints.escape(argument) for argument in arguments)
    assert endpoints.split(text) == (prefix, rest, {})


@given(ARGUMENT, st.dictionaries(ARGUMENT, ARGUMENT, max_size=4))
def test_keyword_arguments_keep_escaped_equals_signs(prefix: str,
                                                     keywords: dict[str, str]) -> None:
    text = endpoints.escape(prefix) + "".join(
        f":{endpoints.escape(key)}={endpoints.escape(value)}" for key, value in keywords.items())
    assert endpoints.split(text) == (prefix, [], keywords)


def test_escaped_colons_make_an_ipv6_interface() -> None:
    assert endpoints.parse(r"tcp6:2323:interface=\:\:") == TCPEndpoint(2323, "::", None, True)


@pytest.mark.parametrize("text, expected", [
    ("tcp:2323", TCPEndpoint(2323, "127.0.0.1")),
    ("tcp:port=80:interface=0.0.0.0:backlog=50", TCPEndpoint(80, "0.0.0.0", 50)),
    ("tcp6:0", TCPEndpoint(0, "::1", None, True)),
    ("unix:app.sock", UnixEndpoint(BASE / "app.sock")),
    ("unix:/run/r.sock:mode=0600:backlog=8", UnixEndpoint(pathlib.Path("/run/r.sock"), 0o600, 8)),
    ("ssl:443:privateKey=k.pem", TLSEndpoint(TCPEndpoint(443), BASE / "k.pem")),
    (r"ssl:443:privateKey=/k:certKey=/c:extraCertChain=/x:interface=\:\:",
     TLSEndpoint(TCPEndpoint(443, "::"), pathlib.Path("/k"), pathlib.Path("/c"),
                 pathlib.Path("/x"))),
    ("systemd:index=1", SystemdEndpoint(index=1)),
    ("systemd:domain=INET:name=web", SystemdEndpoint(name="web", domain="INET")),
    ("haproxy:tcp:2325", ProxiedEndpoint(TCPEndpoint(2325))),
    ("haproxy:unix:p.sock:mode=666", ProxiedEndpoint(UnixEndpoint(BASE / "p.sock", 0o666))),
])
def test_each_prefix_parses_and_its_description_makes_it_again(
        text: str, expected: endpoints.Endpoint) -> None:
    endpoint = endpoints.parse(text, BASE)
    assert endpoint == expected
    assert endpoints.parse(endpoint.description, BASE) == endpoint


@pytest.mark.parametrize("text, reason", [
    ("foo:1", "unknown prefix 'foo'"),
    ("tcp:0:colour=red", "unknown key 'colour'"),
    ("tcp:70000", "from 0 to 65535"),
    ("tcp:-1", "from 0 to 65535"),
    ("tcp", "needs port"),
    ("tcp:1:2", "unexpected argument '2'"),
    ("tcp:1:backlog=0", "backlog"),
    ("tcp:1:interface=-bad-", "expected an IP address"),
    ("tcp6:1:interface=127.0.0.1", "IPv6 only"),
    ("unix:/tmp/x:mode=999", "octal mode"),
    ("unix:/tmp/x:mode=rw", "octal mode"),
    ("unix:/" + "d" * 120, "at most 107 bytes"),
    ("ssl:443", "needs privateKey"),
    ("systemd:", "unexpected argument"),
    ("systemd:index=0:name=web", "either index=N or name=NAME"),
    ("systemd:index=x", "index"),
    ("systemd:name=a:domain=IPX", "domain"),
    ("haproxy:haproxy:tcp:1", "given twice"),
    ("tcp:1:port=2", "unexpected argument"),
    ("tcp:1\\", "lone backslash"),
    ("tcp:1:backlog=1:backlog=2", "given twice"),
])
def test_a_bad_description_is_one_line_quoting_it(text: str, reason: str) -> None:
    with pytest.raises(DescriptionError) as caught:
        endpoints.parse(text, BASE)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(text) in message
    assert reason in message


def test_an_overlong_description_is_refused_without_being_parsed() -> None:
    with pytest.raises(DescriptionError, match="over 8192 characters"):
        endpoints.parse("tcp:" + "1" * 10_000)


def test_two_listeners_on_one_address_are_refused_naming_both() -> None:
    same = [endpoints.parse("tcp:5555"), endpoints.parse("haproxy:tcp:5555:interface=127.0.0.1")]
    with pytest.raises(DescriptionError, match="'tcp:5555.*' and 'haproxy:tcp:5555.*'"):
        endpoints.check_distinct(same)
    endpoints.check_distinct([endpoints.parse("tcp:0"), endpoints.parse("tcp:0"),
                              endpoints.parse("tcp6:5555"), endpoints.parse("tcp:5555")])


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
    finally:
        sock.close()
        endpoint.release()
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
        sock.close()
        endpoint.release()


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
    sock.close()
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        first.release()
        assert path.exists()


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
