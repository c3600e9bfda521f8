"""Saved state: an application written to JSON at shutdown, and rebuilt from it.

twistd saves a pickle (``.tap``), and loading a pickle runs whatever code
it names. A reverserd state file is plain JSON: the application's name,
account and process name, and its service tree. Each service saves its own
settings and is rebuilt from them through an explicit pair of methods
(``save_state`` / ``restore_state``), and only classes that opt in with
``@restorable`` can be named: the file chooses among them by name, nothing
is imported or called because the file says so.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import stat
from collections.abc import Callable
from typing import Any, TypeVar

from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason
from reverserd.service import Application, MultiService, Service

FORMAT = "reverserd-state"
VERSION = 1
SUFFIX = "-shutdown.json"
# Bounds on what a state file may hold, so that no file, however made, can
# cost more than a moment and some tens of megabytes to refuse. What is saved
# is held to them too (``check_savable``), so whatever is saved can be restored.
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64  # services within services
MAX_TEXT_LENGTH = 255  # a name, a class's name, an interface
MAX_ID = 2**32 - 2  # the largest uid or gid; 2**32 - 1 means "unchanged" to setuid
QUOTED_LENGTH = 60  # characters of a bad value an error message quotes
FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory",
              stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
              stat.S_IFSOCK: "a socket"}

Restorable = TypeVar("Restorable", bound=type)
Base = TypeVar("Base")
_registry: dict[str, type] = {}


def restorable(cls: Restorable) -> Restorable:
    """Let a class be named in state files (a service, or a TCP handler).

    Its name there is its ``state_type`` class attribute when it defines
    one, else ``module.QualifiedName``.
    """
    name = cls.__dict__.get("state_type") or f"{cls.__module__}.{cls.__qualname__}"
    if _registry.setdefault(name, cls) is not cls:
        raise ValueError(f"another class is already restorable as {name!r}")
    cls.state_type = name  # type: ignore[attr-defined]
    return cls


def state_type(cls: type) -> str | None:
    """The name ``cls`` is saved under; ``None`` when it did not opt in."""
    name = cls.__dict__.get("state_type")
    return name if isinstance(name, str) and _registry.get(name) is cls else None


class Unreadable(Exception):
    """A file refused before or while reading it; the message is the reason."""


def read_regular_file(path: pathlib.Path, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most ``max_bytes``: a state
    file, or a config file.

    Opened without blocking, so a FIFO (which would wait for a writer
    forever) or a device is refused at once; at most ``max_bytes + 1`` bytes
    are read, so a huge file costs no memory. Raises ``Unreadable`` with the
    reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Unreadable("no such file") from None
    except OSError as error:
        raise Unreadable(os_reason(error)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Unreadable(f"it is {FILE_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise Unreadable(os_reason(error)) from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise Unreadable(f"it is larger than {max_bytes} bytes")
    return b"".join(chunks)


def quoted(text: str) -> str:
    """``text`` as an error message quotes it (options, names): shortened, so
    that a megabyte given by mistake still makes a one-line message."""
    if len(text) <= QUOTED_LENGTH:
        return repr(text)
    return f"{text[:QUOTED_LENGTH]!r}... ({len(text)} characters)"


def preview(value: object) -> str:
    """A JSON value as a message shows it: its start, or its kind, cheaply
    whatever its size or depth."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str) and len(value) > QUOTED_LENGTH:
        return f"{json.dumps(value[:QUOTED_LENGTH])}... ({len(value)} characters)"
    return json.dumps(value)[:QUOTED_LENGTH]


class StateError(UserError):
    """A state file that cannot be trusted or understood."""


class WrongApplication(StateError):
    """A state file saved by another application than the one it is given with."""


class StateReader:
    """One service's saved settings, read with the type each must have.

    Every wrong or missing value becomes an error naming where it is.
    """

    def __init__(self, fields: object, where: str) -> None:
        if not isinstance(fields, dict):
            raise StateError(f"{where} must be a JSON object")
        self._fields: dict[str, Any] = fields
        self.where = where

    def value(self, key: str, accepts: Callable[[object], bool], expected: str,
             default: object = ...) -> Any:
        if key not in self._fields:
            if default is ...:
                raise StateError(f"{self.where} has no {key!r}")
            return default
        value = self._fields[key]
        if not accepts(value):
            raise StateError(f"{self.where}: {key!r} must be {expected}, "
                             f"not {preview(value)}")
        return value

    def text(self, key: str, max_length: int = MAX_TEXT_LENGTH) -> str:
        return self.value(  # type: ignore[no-any-return]
            key, lambda v: isinstance(v, str) and len(v) <= max_length,
            f"a string of at most {max_length} characters")

    def integer(self, key: str, minimum: int = 0, default: object = ...,
                maximum: int | None = None) -> int:
        return self.value(  # type: ignore[no-any-return]
            key, lambda v: type(v) is int and v >= minimum
            and (maximum is None or v <= maximum),
            f"a whole number {_bounds(minimum, maximum)}", default)

    def optional_integer(self, key: str, minimum: int = 0,
                         maximum: int | None = None) -> int | None:
        return self.value(  # type: ignore[no-any-return]
            key, lambda v: v is None or (type(v) is int and v >= minimum
                                         and (maximum is None or v <= maximum)),
            f"null or a whole number {_bounds(minimum, maximum)}", None)

    def optional_text(self, key: str, max_length: int = MAX_TEXT_LENGTH) -> str | None:
        return self.value(  # type: ignore[no-any-return]
            key, lambda v: v is None or (isinstance(v, str) and len(v) <= max_length),
            f"null or a string of at most {max_length} characters", None)

    def number(self, key: str, maximum: float = math.inf) -> float:
        """A number from 0 to ``maximum`` (the file cannot hold NaN or infinity)."""
        return float(self.value(key, lambda v: isinstance(v, int | float)
                                and not isinstance(v, bool) and 0 <= v <= maximum,
                                f"a number {_bounds(0, maximum)}"))

    def restorable_class(self, key: str, base: type[Base]) -> type[Base]:
        """The registered class the value names, which must derive from ``base``."""
        name = self.text(key)
        found = _registry.get(name)
        if found is None or not issubclass(found, base):
            raise StateError(f"{self.where}: {key!r} names {quoted(name)}, which is not a "
                             f"restorable {base.__name__} (only @restorable classes of "
                             "reverserd or of the file given with -y can be named)")
        return found


def _bounds(minimum: float, maximum: float | None) -> str:
    if maximum is None or maximum == math.inf:
        return f"of at least {minimum}"
    return f"from {minimum} to {maximum}"


def save(application: Application) -> dict[str, Any]:
    """The whole application as JSON-ready data."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "application": {
            "name": application.name,
            "uid": application.uid,
            "gid": application.gid,
            "process_name": application.process_name,
            "services": [_save_service(child, 1) for child in application],
        },
    }


def _save_service(service: Service, depth: int) -> dict[str, Any]:
    label = quoted(service.name or type(service).__name__)
    name = state_type(type(service))
    if name is None:
        raise UserError(f"service {label} cannot be saved: its class "
                        f"{type(service).__qualname__} is not @restorable")
    if depth > MAX_DEPTH:
        raise UserError(f"service {label} cannot be saved: services nested more than "
                        f"{MAX_DEPTH} deep could not be restored")
    saved: dict[str, Any] = {"type": name, "name": service.name,
                             "state": service.save_state()}
    if isinstance(service, MultiService):
        saved["services"] = [_save_service(child, depth + 1) for child in service]
    return saved


def _unsavable(application: Application, reason: str) -> UserError:
    name = "" if application.name is None else f" {quoted(application.name)}"
    return UserError(f"application{name} cannot be saved{reason}")


def encode(application: Application) -> str:
    """The state file's text for ``application``."""
    try:
        return json.dumps(save(application), indent=2, ensure_ascii=False,
                          allow_nan=False) + "\n"
    except RecursionError:
        raise _unsavable(application, ": its state is nested too deeply") from None
    except (TypeError, ValueError) as error:  # a value JSON cannot hold
        raise _unsavable(application, f": {error}") from None


def check_savable(application: Application) -> None:
    """Fail now, not at shutdown, when the tree could not be saved, or saved
    so that it could not be restored: it is saved, encoded and decoded."""
    text = encode(application)
    size = len(text.encode("utf-8"))
    if size > MAX_FILE_BYTES:
        raise _unsavable(application, f": its state takes {size} bytes, more than a state "
                         f"file may ({MAX_FILE_BYTES})")
    try:
        restore(_decode(text))
    except StateError as error:
        raise _unsavable(application, f" so that it could be restored: {error}") from None


def restore(data: object, expected_name: str | None = None) -> Application:
    """Rebuild an application from ``save``'s data, trusting none of it.

    With ``expected_name``, the file must hold the application of that name.
    """
    top = StateReader(data, "the file")
    if top.optional_text("format") != FORMAT:
        raise StateError("it is not a reverserd state file")
    version = top.integer("version", minimum=1)
    if version != VERSION:
        raise StateError(f"it has format version {version}; this reverserd reads "
                         f"version {VERSION}")
    fields = StateReader(top.value("application", lambda v: isinstance(v, dict), "an object"),
                         "application")
    name = fields.text("name")
    if expected_name is not None and name != expected_name:
        raise WrongApplication(f"it holds application {quoted(name)}, not {quoted(expected_name)}")
    application = Application(name, fields.optional_integer("uid", maximum=MAX_ID),
                              fields.optional_integer("gid", maximum=MAX_ID),
                              fields.optional_text("process_name"))
    _restore_children(application, fields, fields.where, 1)
    return application


def _restore_children(parent: MultiService, fields: StateReader, where: str,
                      depth: int) -> None:
    children = fields.value("services", lambda v: isinstance(v, list), "a list", [])
    if children and depth > MAX_DEPTH:
        raise StateError(f"{where}: services nested more than {MAX_DEPTH} deep")
    for index, child in enumerate(children):
        _restore_service(child, f"{where}.services[{index}]", depth).set_service_parent(parent)


def _restore_service(data: object, where: str, depth: int) -> Service:
    node = StateReader(data, where)
    cls = node.restorable_class("type", Service)
    service: Service = cls.restore_state(StateReader(node.value("state", lambda v: True, "",
                                                                {}), f"{where}.state"))
    service.name = node.optional_text("name")
    if isinstance(service, MultiService):
        _restore_children(service, node, where, depth + 1)
    return service


def _refuse_constant(name: str) -> float:
    raise StateError(f"{name} is not a number a state file may hold")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise StateError(f"{text} is not a number a state file may hold")
    return number


def _decode(text: str) -> object:
    """JSON, without the NaN and infinities Python's decoder lets through."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except json.JSONDecodeError as error:
        raise StateError(f"not valid JSON ({error.msg} at line {error.lineno} column "
                         f"{error.colno}); is it truncated?") from None
    except (RecursionError, MemoryError):
        raise StateError("nested too deeply") from None
    except ValueError:  # int() refused a number of thousands of digits
        raise StateError("a number has too many digits") from None


def load_state_file(path: pathlib.Path, expected_name: str | None = None) -> Application:
    """The application a state file describes; the file is only ever read."""
    try:
        text = read_regular_file(path, MAX_FILE_BYTES).decode("utf-8")
    except Unreadable as error:
        raise UserError(f"cannot load state file {path}: {error}") from None
    except UnicodeDecodeError:
        raise StateError(f"cannot load state file {path}: it is not UTF-8 text") from None
    try:
        return restore(_decode(text), expected_name)
    except StateError as error:
        raise type(error)(f"cannot load state file {path}: {error}") from None
    except (TypeError, ValueError) as error:
        raise StateError(f"cannot load state file {path}: {error}") from None


def file_name(application: Application) -> str:
    """``<Name>-shutdown.json``, with anything unsafe in a file name replaced."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", application.name or "application").lstrip(".")
    return f"{safe or 'application'}{SUFFIX}"


def write_state_file(application: Application, directory: DirectoryHandle) -> pathlib.Path:
    """Save into ``directory`` atomically; returns the path as the operator knows it."""
    name = file_name(application)
    directory.write_atomically(name, encode(application).encode("utf-8"))
    return directory.path / name



restorable(MultiService)
