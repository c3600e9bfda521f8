"""Listener descriptions: the grammar, each prefix's arguments and their ranges."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reverserd import descriptions, endpoints
from reverserd.descriptions import DescriptionError
from reverserd.endpoints import (
    ProxiedEndpoint,
    SystemdEndpoint,
    TCPEndpoint,
    TLSEndpoint,
    UnixEndpoint,
)

BASE = pathlib.Path("/srv/app")
ARGUMENT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(ARGUMENT, min_size=1, max_size=5))
def test_escaped_arguments_split_back_into_themselves(arguments: list[str]) -> None:
    prefix, *rest = arguments
    text = ":".join(endpoints.escape(argument) for argument in arguments)
    assert descriptions.split(text) == (prefix, rest, {})


@given(ARGUMENT, st.dictionaries(ARGUMENT, ARGUMENT, max_size=4))
def test_keyword_arguments_keep_escaped_equals_signs(prefix: str,
                                                     keywords: dict[str, str]) -> None:
    text = endpoints.escape(prefix) + "".join(
        f":{endpoints.escape(key)}={endpoints.escape(value)}" for key, value in keywords.items())
    assert descriptions.split(text) == (prefix, [], keywords)


def test_escaped_colons_make_an_ipv6_interface() -> None:
    assert descriptions.parse(r"tcp6:2323:interface=\:\:") == TCPEndpoint(2323, "::", None, True)


@pytest.mark.parametrize("text, expected", [
    ("tcp:2323", TCPEndpoint(2323, "127.0.0.1")),
    ("tcp:interface=0.0.0.0:02323", TCPEndpoint(2323, "0.0.0.0")),
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
    endpoint = descriptions.parse(text, BASE)
    assert endpoint == expected
    assert descriptions.parse(endpoint.description, BASE) == endpoint


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
    ("unix:/tmp/a\nb.sock", "without control characters"),
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
        descriptions.parse(text, BASE)
    message = str(caught.value)
    assert "\n" not in message
    assert (f"'{text}'" if text.isprintable() else repr(text)) in message
    assert reason in message


def test_an_overlong_description_is_refused_without_being_parsed() -> None:
    with pytest.raises(DescriptionError, match="over 8192 characters"):
        descriptions.parse("tcp:" + "1" * 10_000)


def test_two_listeners_on_one_address_are_refused_naming_both() -> None:
    same = [descriptions.parse("tcp:5555"),
            descriptions.parse("haproxy:tcp:5555:interface=127.0.0.1")]
    with pytest.raises(DescriptionError, match="'tcp:5555.*' and 'haproxy:tcp:5555.*'"):
        descriptions.check_distinct(same)
    descriptions.check_distinct([descriptions.parse("tcp:0"), descriptions.parse("tcp:0"),
                              descriptions.parse("tcp6:5555"), descriptions.parse("tcp:5555")])
