"""Fixtures shared by the in-process tests and the end-to-end ones."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import settings

# No deadline per example: speed is measured by make bench, and the unit tests run beside
# the end-to-end ones (make test), on a machine whose load says nothing about the code.
settings.register_profile("reverserd", deadline=None)
settings.load_profile("reverserd")


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
