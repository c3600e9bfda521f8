"""Choosing the event loop: uvloop when asked or installed, the standard one otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest

from reverserd.errors import UserError
from reverserd.loops import loop_factory, standard_loop
from reverserd.polling import EpollSelector


def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import uvloop`` fail, as on a machine without the extra."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


def test_auto_and_uvloop_take_uvloop_when_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    for choice in ("auto", "uvloop"):
        name, factory = loop_factory(choice)
        loop = factory()
        try:
            assert name == "uvloop" and isinstance(loop, uvloop.Loop)
        finally:
            loop.close()


def test_asyncio_always_takes_the_standard_loop() -> None:
    name, factory = loop_factory("asyncio")
    loop = factory()
    try:
        assert name == "asyncio" and isinstance(loop, asyncio.BaseEventLoop)
        assert type(loop).__module__.startswith("asyncio.")
    finally:
        loop.close()


def test_auto_without_uvloop_falls_back_to_the_standard_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    without_uvloop(monkeypatch)
    name, factory = loop_factory("auto")
    assert name == "asyncio" and factory is standard_loop


def test_the_standard_loop_polls_through_reverserds_selector(
        monkeypatch: pytest.MonkeyPatch) -> None:
    polls = []
    real_select = EpollSelector.select

    def counted(selector: EpollSelector, timeout: float | None = None) -> object:
        polls.append(timeout)
        return real_select(selector, timeout)

    monkeypatch.setattr(EpollSelector, "select", counted)
    loop = standard_loop()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
    assert polls


def test_uvloop_asked_for_but_missing_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    without_uvloop(monkeypatch)
    with pytest.raises(UserError, match=r"^--loop uvloop: uvloop is not installed "
                                        r"\(pip install 'reverserd\[uvloop\]'\)$"):
        loop_factory("uvloop")
