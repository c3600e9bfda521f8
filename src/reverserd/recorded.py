"""The command lines a daemon was started with, kept for ``restart`` and ``reload``.

A daemon's options are the layers of command lines that made them: the
``start``'s, then the options each ``restart`` or ``reload`` changed, each
layer overriding the one before option by option (a later ``--listen``
replaces the earlier ones). They are kept next to the pidfile, in
``reverserd.pid.options``, and outlive the daemon, so that ``restart`` of a
stopped daemon starts it as it was. Each layer keeps the directory it was
given in, which relative paths in it are taken from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason
from reverserd.pidfile import RunFiles, read_run_file
from reverserd.privileges import Account

OPTIONS_BYTES = 1 << 16  # a few command lines
MAX_LAYERS = 32  # a start and the changes of 31 restarts or reloads
MAX_ARGUMENTS = 512


@dataclasses.dataclass(frozen=True)
class Layer:
    """One command line's arguments, and the directory it was run in."""

    arguments: tuple[str, ...]
    directory: str

    @classmethod
    def of_this_process(cls, arguments: Sequence[str]) -> Layer:
        return cls(tuple(arguments), os.getcwd())

    def to_json(self) -> dict[str, Any]:
        return {"arguments": list(self.arguments), "directory": self.directory}

    @classmethod
    def from_json(cls, fields: Any) -> Layer:
        if not isinstance(fields, dict):
            raise ValueError("not a command line")
        arguments = fields.get("arguments")
        directory = fields.get("directory")
        if not isinstance(arguments, list) or len(arguments) > MAX_ARGUMENTS \
                or not all(isinstance(argument, str) for argument in arguments) \
                or not isinstance(directory, str) or not os.path.isabs(directory):
            raise ValueError("not a command line")
        return cls(tuple(arguments), directory)


def layers_to_json(layers: Sequence[Layer]) -> list[dict[str, Any]]:
    return [layer.to_json() for layer in layers]


def layers_from_json(fields: Any) -> tuple[Layer, ...]:
    if not isinstance(fields, list) or len(fields) > MAX_LAYERS:
        raise ValueError("not a list of command lines")
    return tuple(Layer.from_json(layer) for layer in fields)


def read(files: RunFiles, directory: DirectoryHandle | None = None) -> tuple[Layer, ...]:
    """The layers recorded next to ``files``' pidfile (reached through
    ``directory``, its directory, if given); none when there is no record.

    A damaged record is an error rather than nothing: restarting a daemon
    with options other than its own would be a surprise.
    """
    try:
        content = read_run_file("options file", files.options, files.owners, OPTIONS_BYTES + 1,
                                directory)
    except OSError as error:
        raise UserError(f"cannot read {files.options}: {os_reason(error)}") from None
    if content is None:
        return ()
    try:
        return _layers_of(content)
    except ValueError as error:
        raise UserError(f"cannot use {files.options}: {error} (remove it to start afresh)"
                        ) from None


def _layers_of(content: bytes) -> tuple[Layer, ...]:
    """The layers of a record; ``ValueError`` with a reason a user can read."""
    if len(content) > OPTIONS_BYTES:
        raise ValueError("too large")
    try:
        record = json.loads(content.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg.lower()} at line {error.lineno})") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(record, dict) or "layers" not in record:
        raise ValueError("not a record of options")
    return layers_from_json(record["layers"])


def write(files: RunFiles, layers: Sequence[Layer],
          directory: DirectoryHandle | None = None,
          reader: Account | None = None) -> None:
    """Record ``layers``, replacing any record, through ``directory`` (the
    pidfile's, held open: inside a chroot) or else by the pidfile's path.

    Root lets ``reader``, the account the daemon runs as, read the record
    (by its group): the daemon reads it at every reload. Root still owns
    it, so that root's commands trust it.
    """
    if len(layers) > MAX_LAYERS:
        raise UserError(f"{len(layers) - 1} option changes are recorded since the start; "
                        "stop reverserd and start it with all its options")
    data = json.dumps({"layers": layers_to_json(layers)}).encode("utf-8")
    if len(data) > OPTIONS_BYTES:
        raise UserError(f"the command lines to record in {files.options} are too long")
    try:
        handle = directory or DirectoryHandle(files.pidfile.parent)
        try:
            group = None if reader is None or os.geteuid() != 0 else reader.gid
            handle.write_atomically(files.options.name, data, group)
        finally:
            if directory is None:
                handle.close()
    except OSError as error:
        raise UserError(f"cannot write {files.options}: {os_reason(error)}") from None
