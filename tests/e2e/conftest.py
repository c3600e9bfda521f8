"""A real ``reverserd`` process per test, always ended by its pid."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.daemons import DaemonDirectory
from tests.e2e.support import REVERSERD, ReverserdProcess


@pytest.fixture
def reverserd(tmp_path: pathlib.Path) -> Iterator[Callable[..., ReverserdProcess]]:
    """Start ``reverserd ARGS`` in ``tmp_path``; every one started is ended at teardown."""
    started: list[ReverserdProcess] = []

    def start(*args: str, env: dict[str, str] | None = None,
              command: list[str] | None = None, own_group: bool = False) -> ReverserdProcess:
        process = ReverserdProcess([*(command or [REVERSERD]), *args], tmp_path,
                                   {**os.environ, **(env or {})}, own_group)
        started.append(process)
        return process

    yield start
    for process in started:
        process.end()


@pytest.fixture
def server(reverserd: Callable[..., ReverserdProcess]) -> ReverserdProcess:
    """The built-in reverser in the foreground on a free port, debug logging on."""
    process = reverserd("--foreground", "--port", "0", "--log-level", "debug")
    process.wait_until_serving()
    return process


@pytest.fixture
def daemons(tmp_path: pathlib.Path) -> Iterator[DaemonDirectory]:
    """``reverserd start/stop/status`` run in ``tmp_path``; leftover daemons are killed."""
    directory = DaemonDirectory(tmp_path)
    yield directory
    directory.end()
