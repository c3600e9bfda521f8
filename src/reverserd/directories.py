"""Directories held open by descriptor, so their names survive a chroot.

A daemon confined with ``--chroot`` can no longer reach the pidfile or the
log by the paths the operator gave. It keeps a descriptor on each such
directory, opened before the chroot, and every later create, rename and
remove goes through it: the paths keep the meaning they had on the command
line, inside the jail or not.
"""

from __future__ import annotations

import errno
import os
import pathlib
import secrets

TEMPORARY_NAME_TRIES = 100
GROUP_READABLE = 0o640


class DirectoryHandle:
    """An open directory; file names given to its methods are relative to it."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def open(self, name: str, flags: int, mode: int = 0o666) -> int:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove ``name``; a file already gone is no error."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def replace(self, source: str, destination: str) -> None:
        os.replace(source, destination, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def lstat(self, name: str) -> os.stat_result | None:
        """The file's own status (a symlink is not followed); ``None`` if absent."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def write_atomically(self, name: str, data: bytes, group: int | None = None) -> None:
        """Write to a temporary file, then rename it: readers, and a crash,
        see the old file or the new one, never half of one. With ``group``
        (a gid), its members may read the file too.

        The temporary file is created exclusively under a name nobody can
        guess: in a shared directory such as /tmp, a file another user made
        in advance under a fixed name would be written through, renamed into
        place and so become theirs.
        """
        fd, temporary = self._create_temporary(name)
        try:
            if group is not None:
                os.fchown(fd, -1, group)
                os.fchmod(fd, GROUP_READABLE)
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            self.replace(temporary, name)
        except BaseException:
            self.unlink(temporary)
            raise

    def _create_temporary(self, name: str) -> tuple[int, str]:
        """A new file of this process's own, and its name."""
        for _ in range(TEMPORARY_NAME_TRIES):
            temporary = f".{name}.{secrets.token_hex(8)}.tmp"
            try:
                fd = self.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            return fd, temporary
        raise FileExistsError(errno.EEXIST, "no unused temporary file name",
                              str(self.path / name))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
