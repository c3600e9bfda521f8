"""Giving up root: the account to become, the directories it needs, the switch.

The order matters and is twistd's: ports are bound as root, then the
supplementary groups are set to the account's own, then the gid, then the
uid. Once the uid is dropped nothing can bring root back, so the groups and
the gid have to be right before it.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pathlib
import pwd

from reverserd.errors import UserError, os_reason

CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_CHROOT = 18


@dataclasses.dataclass(frozen=True)
class Account:
    """Who the daemon runs as once its ports are bound."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    login: str | None
    label: str

    def is_current(self) -> bool:
        return (self.uid, self.gid) == (os.geteuid(), os.getegid())


def _user(text: str) -> pwd.struct_passwd | int:
    """A passwd entry by name or number; a bare uid with no entry as an int."""
    try:
        return pwd.getpwnam(text)
    except KeyError:
        pass
    if not (text.isascii() and text.isdigit()):  # int() would read "０" (full width) as 0
        raise UserError(f"unknown user {text!r}")
    try:
        return pwd.getpwuid(int(text))
    except KeyError:
        return int(text)


def _group_id(text: str) -> int:
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        pass
    if not (text.isascii() and text.isdigit()):
        raise UserError(f"unknown group {text!r}")
    return int(text)


def resolve(user: str | int | None, group: str | int | None) -> Account | None:
    """The account ``--user``/``--group`` (or the application's uid/gid) name.

    A user alone brings its own primary group, and the groups it belongs to
    (as ``login`` would give it); a group alone keeps the current uid but
    drops every other group. ``None`` when neither is asked for.
    """
    if user is None and group is None:
        return None
    gid = None if group is None else _group_id(str(group))
    if user is None:
        assert gid is not None
        return Account(os.geteuid(), gid, (gid,), None, f"group {group}")
    entry = _user(str(user))
    if isinstance(entry, int):
        if gid is None:
            raise UserError(f"uid {entry} has no passwd entry; give its group with --group")
        return Account(entry, gid, (gid,), None, f"uid {entry}")
    if gid is None:
        gid = entry.pw_gid
    groups = tuple(dict.fromkeys([gid, *os.getgrouplist(entry.pw_name, gid)]))
    return Account(entry.pw_uid, gid, groups, entry.pw_name, f"user {entry.pw_name}")


def has_capability(number: int) -> bool:
    """Whether this process holds a capability (``CapEff`` in /proc), which is
    what decides if it may switch users or chroot; plain root if /proc is
    not there."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> number & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def may_switch_users() -> bool:
    return has_capability(CAP_SETUID) and has_capability(CAP_SETGID)


def check_may_become(account: Account) -> None:
    """Refuse, before anything starts, an account this process cannot become.

    Asking for the account one already is needs no privilege and changes
    nothing.
    """
    if not account.is_current() and not may_switch_users():
        raise UserError(f"cannot switch to {account.label}: only root can")


def writable_by(path: pathlib.Path, account: Account) -> bool:
    """Whether ``account`` may create and remove files in directory ``path``,
    judged from its owner, group and mode bits (ACLs are not consulted)."""
    if account.uid == 0:
        return True
    found = path.stat()
    if found.st_uid == account.uid:
        bits = found.st_mode >> 6
    elif found.st_gid in account.groups:
        bits = found.st_mode >> 3
    else:
        bits = found.st_mode
    return bits & 0o3 == 0o3


def account_of_process(uid: int | None, account: Account | None) -> Account | None:
    """Who a running daemon is: ``account`` if the options name one, else the
    owner of its process (``uid``) when that is someone other than us."""
    if account is not None or uid is None or uid == os.geteuid():
        return account
    try:
        return resolve(uid, None)
    except UserError:  # a uid without a passwd entry: its groups are unknown
        return None


def ensure_pidfile_directory(path: pathlib.Path, account: Account | None) -> None:
    """``ensure_directory`` for the pidfile's, even for the current user: the
    run files are replaced by renaming, which needs the directory writable."""
    if account is None and path.is_dir() and not os.access(path, os.W_OK | os.X_OK,
                                                           effective_ids=True):
        raise UserError(f"directory {path} is not writable by the user running reverserd; "
                        "the daemon needs it for its pidfile and lock file")
    ensure_directory(path, account, "its pidfile and lock file")


def ensure_directory(path: pathlib.Path, account: Account | None, purpose: str) -> None:
    """Make sure the daemon, as ``account``, can use ``path`` for ``purpose``.

    A missing directory is created owned by the account (its parent must
    exist); an existing one it cannot write is refused, by name.
    """
    if account is None:
        return
    if not path.exists():
        try:
            path.mkdir()
            os.chown(path, account.uid, account.gid)
        except OSError as error:
            raise UserError(f"cannot create directory {path} for {purpose}: "
                            f"{os_reason(error)}") from None
        return
    if not path.is_dir():
        raise UserError(f"cannot use {path} for {purpose}: not a directory")
    if not writable_by(path, account):
        raise UserError(f"directory {path} is not writable by {account.label}, which "
                        f"the daemon runs as; it needs it for {purpose}")


def become(account: Account) -> None:
    """Switch to ``account`` for good: groups, then gid, then uid."""
    if not may_switch_users():
        return  # check_may_become allowed this: it is the current account
    try:
        if account.login is not None:
            os.initgroups(account.login, account.gid)
        else:
            os.setgroups(list(account.groups))
        os.setgid(account.gid)
        os.setuid(account.uid)
    except OSError as error:
        raise UserError(f"cannot switch to {account.label}: {os_reason(error)}") from None
    if account.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise UserError(f"switched to {account.label}, yet root could be regained")
