"""Directory handles: names that keep their meaning, and writes that are all or nothing."""

from __future__ import annotations

import os
import pathlib
import secrets
import stat

import pytest

from reverserd.directories import DirectoryHandle


@pytest.fixture
def directory(tmp_path: pathlib.Path):
    handle = DirectoryHandle(tmp_path)
    yield handle
    handle.close()


def test_an_atomic_write_replaces_the_file_by_rename(directory: DirectoryHandle,
                                                     tmp_path: pathlib.Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    old_inode = target.stat().st_ino
    directory.write_atomically("state.json", b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != old_inode, "a new file was renamed into place"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_atomic_write_leaves_the_old_file_whole(directory: DirectoryHandle,
                                                         tmp_path: pathlib.Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old and complete")
    with pytest.raises(TypeError):
        directory.write_atomically("state.json", "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_names_are_resolved_in_the_directory_held_not_by_path(
        directory: DirectoryHandle, tmp_path: pathlib.Path) -> None:
    moved = tmp_path.with_name(tmp_path.name + "-moved")
    tmp_path.rename(moved)
    try:
        directory.write_atomically("here", b"x")
        assert (moved / "here").read_bytes() == b"x"
        directory.unlink("here")
        directory.unlink("here")
        assert list(moved.iterdir()) == []
    finally:
        moved.rename(tmp_path)


def test_symlinks_are_not_followed(directory: DirectoryHandle, tmp_path: pathlib.Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        directory.open("link", os.O_WRONLY | os.O_CREAT)
    assert not (tmp_path / "elsewhere").exists()
    found = directory.lstat("link")
    assert found is not None and stat.S_ISLNK(found.st_mode)  # the link itself, not its target


def test_an_atomic_write_never_writes_through_a_file_made_in_advance(
        directory: DirectoryHandle, tmp_path: pathlib.Path) -> None:
    """In a shared directory, a file another user made under the temporary
    name would become the new file, theirs; the name is unpredictable, and
    the file made exclusively, instead."""
    planted = tmp_path / ".state.json.tmp"  # the name once used
    planted.write_bytes(b"planted")
    directory.write_atomically("state.json", b"ours")
    assert (tmp_path / "state.json").read_bytes() == b"ours"
    assert planted.read_bytes() == b"planted"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".state.json.tmp", "state.json"]


def test_a_temporary_name_taken_already_is_passed_over(
        directory: DirectoryHandle, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["guessed", "fresh"])
    monkeypatch.setattr(secrets, "token_hex", lambda _: next(tokens))
    taken = tmp_path / ".state.json.guessed.tmp"
    taken.symlink_to(tmp_path / "target")
    directory.write_atomically("state.json", b"ours")
    assert (tmp_path / "state.json").read_bytes() == b"ours"
    assert taken.is_symlink() and not (tmp_path / "target").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".state.json.guessed.tmp",
                                                          "state.json"]
