"""The standard event loop's selector: epoll, with the bookkeeping a loop asks for
on every connection done in a few steps instead of a dozen.

``asyncio.SelectorEventLoop`` takes its selector as an argument. The
standard library's ``selectors.EpollSelector`` answers the loop's every
``get_key`` through three layers of Python calls, and a descriptor that is
not registered (each new connection's, and each closing one's writer) as
three exceptions, two of them with a formatted message: about a tenth of
what a new connection costs the server. This selector keeps the same keys
in one dictionary, finds a descriptor's key in one call and raises one
plain ``KeyError`` where the contract asks for one. It is a
``selectors.BaseSelector``, with the same errors as the standard one for
bad descriptors, bad events and double registrations.
"""

from __future__ import annotations

import math
import select
import selectors
from collections.abc import Iterator, Mapping
from typing import Any

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
EPOLL_READ = select.EPOLLIN  # what the loop registers for most: spared a call
FileObject = Any  # an int descriptor, or anything with fileno(): selectors' own typing


def _descriptor(fileobj: FileObject) -> int:
    """``fileobj``'s descriptor, checked as ``selectors`` checks it."""
    if isinstance(fileobj, int):
        fd = int(fileobj)
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _epoll_events(events: int) -> int:
    return (select.EPOLLIN if events & READ else 0) | (select.EPOLLOUT if events & WRITE else 0)


class EpollSelector(selectors.BaseSelector):
    """A ``selectors.BaseSelector`` on ``select.epoll``, cheap on the loop's hot paths."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._closed = False

    def fileno(self) -> int:
        return self._epoll.fileno()

    def _lookup(self, fileobj: FileObject) -> int:
        """The descriptor ``fileobj`` was registered under, even once it is closed
        (its ``fileno()`` then says -1), as the standard selector finds it."""
        try:
            return _descriptor(fileobj)
        except ValueError:
            for key in self._keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def register(self, fileobj: FileObject, events: int,
                 data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(READ | WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = fileobj if type(fileobj) is int and fileobj >= 0 else self._lookup(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        self._epoll.register(fd, EPOLL_READ if events == READ else _epoll_events(events))
        key = self._keys[fd] = selectors.SelectorKey(fileobj, fd, events, data)
        return key

    def unregister(self, fileobj: FileObject) -> selectors.SelectorKey:
        fd = fileobj if type(fileobj) is int and fileobj >= 0 else self._lookup(fileobj)
        key = self._keys.pop(fd, None)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        try:
            self._epoll.unregister(key.fd)
        except OSError:  # closed since it was registered: epoll forgot it already
            pass
        return key

    def modify(self, fileobj: FileObject, events: int,
               data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if type(fileobj) is int and fileobj >= 0 else self._lookup(fileobj)
        key = self._keys.get(fd)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        if events != key.events:
            try:
                self._epoll.modify(key.fd, _epoll_events(events))
            except BaseException:
                del self._keys[key.fd]  # as the standard selector: forgotten, then raised
                raise
        elif data == key.data:
            return key
        key = self._keys[key.fd] = selectors.SelectorKey(key.fileobj, key.fd, events, data)
        return key

    def get_key(self, fileobj: FileObject) -> selectors.SelectorKey:
        if self._closed:
            raise RuntimeError("Selector is closed")
        fd = fileobj if type(fileobj) is int and fileobj >= 0 else self._lookup(fileobj)
        key = self._keys.get(fd)
        if key is None:
            raise KeyError(fileobj)  # the event loop's every new descriptor: no message made
        return key

    def get_map(self) -> Mapping[FileObject, selectors.SelectorKey]:
        return _Keys(self)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:  # epoll's unit is the millisecond: never wake before the time asked
            timeout = math.ceil(timeout * 1e3) * 1e-3
        keys = self._keys
        try:
            polled = self._epoll.poll(timeout, len(keys) or 1)
        except InterruptedError:
            return []
        ready = []
        for fd, happened in polled:
            key = keys.get(fd)
            if key is not None:
                # an error or a hang-up wakes both directions, as in the standard selector
                events = (WRITE if happened & ~select.EPOLLIN else 0) \
                    | (READ if happened & ~select.EPOLLOUT else 0)
                ready.append((key, events & key.events))
        return ready

    def close(self) -> None:
        self._closed = True
        self._keys.clear()
        self._epoll.close()


class _Keys(Mapping[FileObject, selectors.SelectorKey]):
    """``get_map``'s read-only view: looked up by descriptor or file object."""

    def __init__(self, selector: EpollSelector) -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._keys)

    def __getitem__(self, fileobj: FileObject) -> selectors.SelectorKey:
        try:
            return self._selector._keys[self._selector._lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._selector._keys)
