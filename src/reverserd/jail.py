"""``--chroot``: confining the daemon's view of the filesystem.

The daemon enters its jail after the application is loaded, its ports are
bound and its pidfile is written, and before it gives up root: modules are
imported and files opened from the real filesystem, and nothing inside the
jail needs to be prepared. Run files and the saved state stay reachable by
the descriptors of their directories (``directories``), so the paths the
operator gave keep their meaning.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from reverserd.errors import UserError, os_reason
from reverserd.privileges import CAP_SYS_CHROOT, has_capability


@dataclasses.dataclass(frozen=True)
class Jail:
    """Where to confine the daemon, and its working directory once inside."""

    root: pathlib.Path
    workdir: pathlib.PurePosixPath

    @classmethod
    def plan(cls, root: pathlib.Path, rundir: pathlib.Path | None) -> Jail:
        """Check a chroot can work, before anything starts.

        The run directory, which the daemon will work in, must lie inside the
        jail; without ``--rundir`` it is the jail's root.
        """
        if not root.is_dir():
            raise UserError(f"cannot chroot to {root}: no such directory")
        if not has_capability(CAP_SYS_CHROOT):
            raise UserError(f"cannot chroot to {root}: only root can")
        real_root = root.resolve()
        inside = pathlib.PurePosixPath("/")
        if rundir is not None:
            try:
                inside /= rundir.resolve().relative_to(real_root)
            except ValueError:
                raise UserError(f"run directory {rundir} is outside the chroot "
                                f"{root}") from None
        return cls(real_root, inside)

    @property
    def rundir(self) -> pathlib.Path:
        """The run directory as seen from outside the jail."""
        return self.root.joinpath(*self.workdir.parts[1:])

    def enter(self) -> None:
        try:
            os.chroot(self.root)
            os.chdir(self.workdir)
        except OSError as error:
            raise UserError(f"cannot chroot to {self.root}: {os_reason(error)}") from None
