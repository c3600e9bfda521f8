"""reverserd's epoll selector answers as the standard library's does.

Every step is done on both, ``selectors.EpollSelector`` and
``polling.EpollSelector``, with the same descriptors; their answers (a key,
an error's type, what is ready) must be the same.
"""

from __future__ import annotations

import os
import selectors
import socket
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reverserd.polling import EpollSelector

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
Step = Callable[[selectors.BaseSelector], Any]


class Descriptor(int):
    """A descriptor number that is not exactly an ``int``."""


def outcome(selector: selectors.BaseSelector, step: Step) -> object:
    """What a step gives: a key as a plain tuple, a list of ready keys by
    descriptor, or the type of the error it raised."""
    try:
        result = step(selector)
    except Exception as error:
        return type(error)
    if isinstance(result, selectors.SelectorKey):
        return tuple(result)
    if isinstance(result, list):
        return sorted((key.fd, events) for key, events in result)
    return result


@pytest.fixture
def pair() -> Iterator[tuple[selectors.BaseSelector, selectors.BaseSelector]]:
    standard, ours = selectors.EpollSelector(), EpollSelector()
    yield standard, ours
    standard.close()
    ours.close()


@pytest.fixture
def watched(pair: tuple[selectors.BaseSelector, selectors.BaseSelector]
            ) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of sockets, the first registered for reading with both selectors."""
    left, right = socket.socketpair()
    with left, right:
        for selector in pair:
            selector.register(left, READ)
        yield left, right


def same(pair: tuple[selectors.BaseSelector, selectors.BaseSelector], step: Step) -> object:
    standard, ours = pair
    expected, got = outcome(standard, step), outcome(ours, step)
    assert got == expected
    return got


def test_registering_modifying_and_unregistering_answer_alike(
        pair: tuple[selectors.BaseSelector, selectors.BaseSelector]) -> None:
    left, right = socket.socketpair()
    with left, right, tempfile.TemporaryFile() as regular:
        fd = right.fileno()
        assert same(pair, lambda s: s.register(left, READ, "data")) == (
            left, left.fileno(), READ, "data")
        same(pair, lambda s: s.register(fd, READ | WRITE))
        for bad in (lambda s: s.register(left, READ),  # twice
                    lambda s: s.register(99999, 0),  # no events
                    lambda s: s.register(99999, 4),  # an unknown event
                    lambda s: s.register(-1, READ),
                    lambda s: s.register("not a file", READ),
                    lambda s: s.register(regular, READ),  # epoll refuses regular files
                    lambda s: s.unregister(99999),
                    lambda s: s.modify(99999, READ),
                    lambda s: s.get_key(99999),
                    lambda s: s.get_key(-5)):
            assert isinstance(same(pair, bad), type)
        same(pair, lambda s: s.get_key(regular))  # the failed registration left nothing
        same(pair, lambda s: s.get_key(left))
        same(pair, lambda s: s.get_key(left.fileno()))
        same(pair, lambda s: s.get_key(Descriptor(left.fileno())))  # an int of another type
        same(pair, lambda s: s.modify(left, READ, "other data"))
        same(pair, lambda s: s.modify(left, READ, "other data"))  # nothing changes
        same(pair, lambda s: s.modify(fd, WRITE, "written"))
        same(pair, lambda s: s.modify(left, READ | WRITE))
        same(pair, lambda s: len(s.get_map()))
        same(pair, lambda s: tuple(sorted(s.get_map())))
        same(pair, lambda s: tuple(s.get_map()[left]))
        same(pair, lambda s: tuple(s.get_map()[fd]))
        same(pair, lambda s: s.get_map()[12345])
        same(pair, lambda s: s.unregister(fd))
        same(pair, lambda s: s.unregister(fd))
        same(pair, lambda s: len(s.get_map()))


def test_a_closed_socket_is_still_unregistered_by_its_object(
        pair: tuple[selectors.BaseSelector, selectors.BaseSelector]) -> None:
    for selector in pair:
        left, right = socket.socketpair()
        with right:
            selector.register(left, READ)
            fd = left.fileno()
            left.close()  # fileno() is -1 now
            assert outcome(selector, lambda s, left=left: s.unregister(left))[:2] == (left, fd)
            assert outcome(selector, lambda s, left=left: s.get_key(left)) is ValueError


def test_what_is_ready_is_reported_alike(
        pair: tuple[selectors.BaseSelector, selectors.BaseSelector],
        watched: tuple[socket.socket, socket.socket]) -> None:
    left, right = watched
    for selector in pair:
        selector.register(right.fileno(), READ | WRITE)
    assert same(pair, lambda s: s.select(0)) == [(right.fileno(), WRITE)]
    right.send(b"x")
    assert same(pair, lambda s: s.select(0)) == [(left.fileno(), READ), (right.fileno(), WRITE)]
    assert same(pair, lambda s: s.select(None)) == same(pair, lambda s: s.select(0.5))
    left.shutdown(socket.SHUT_RDWR)  # a hang-up wakes every direction asked for
    assert same(pair, lambda s: s.select(-1)) == [(left.fileno(), READ),
                                                 (right.fileno(), READ | WRITE)]
    for selector in pair:
        selector.unregister(left)
        selector.unregister(right)
    assert same(pair, lambda s: s.select(0.001)) == []


def test_a_closed_selector_refuses_to_be_asked(
        pair: tuple[selectors.BaseSelector, selectors.BaseSelector],
        watched: tuple[socket.socket, socket.socket]) -> None:
    left, right = watched
    for selector in pair:
        selector.close()
    assert same(pair, lambda s: s.get_key(left)) is RuntimeError
    assert same(pair, lambda s: s.select(0)) is ValueError
    assert same(pair, lambda s: s.register(right, READ)) is ValueError


def test_its_descriptor_is_its_epoll() -> None:
    with EpollSelector() as selector:
        assert os.readlink(f"/proc/self/fd/{selector.fileno()}") == "anon_inode:[eventpoll]"


@given(st.lists(st.tuples(st.sampled_from(["register", "modify", "unregister", "get_key"]),
                          st.integers(0, 3), st.integers(0, 4), st.sampled_from([None, "a"])),
                max_size=30))
def test_any_sequence_of_steps_answers_alike(steps: list[tuple[str, int, int, Any]]) -> None:
    sockets = [socket.socketpair() for _ in range(2)]
    ends = [end for pair in sockets for end in pair]
    standard, ours = selectors.EpollSelector(), EpollSelector()
    try:
        for name, which, events, data in steps:
            def step(selector: selectors.BaseSelector, name: str = name, which: int = which,
                     events: int = events, data: Any = data) -> object:
                target: Any = ends[which] if which % 2 else ends[which].fileno()
                if name in ("register", "modify"):
                    return getattr(selector, name)(target, events, data)
                return getattr(selector, name)(target)
            assert outcome(ours, step) == outcome(standard, step)
            assert sorted(ours.get_map()) == sorted(standard.get_map())
        assert outcome(ours, lambda s: s.select(0)) == outcome(standard, lambda s: s.select(0))
    finally:
        standard.close()
        ours.close()
        for end in ends:
            end.close()
