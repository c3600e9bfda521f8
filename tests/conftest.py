"""Fixtures shared by the in-process tests and the end-to-end ones."""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import settings

from reverserd.loops import standard_loop

# No deadline per example: speed is measured by make bench, and the unit tests run beside
# the end-to-end ones (make test), on a machine whose load says nothing about the code.
settings.register_profile("reverserd", deadline=None)
settings.load_profile("reverserd")


class StandardLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """``asyncio.run`` in a test makes the standard loop as the daemon makes it
    (``--loop asyncio``): on reverserd's selector."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return standard_loop()


@pytest.fixture(autouse=True, scope="session")
def daemons_standard_loop() -> Iterator[None]:
    asyncio.set_event_loop_policy(StandardLoopPolicy())
    yield
    asyncio.set_event_loop_policy(None)


@pytest.fixture
def small_disk(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A 64 KiB tmpfs, to fill up (mounting needs root, as in CI)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                             str(mount_point)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(disk: pathlib.Path) -> pathlib.Path:
    """Take every free block of ``disk``; removing the file returned frees them."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler
