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
import pathlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason
from reverserd.service import Application, MultiService, Service

FORMAT = "reverserd-state"
VERSION = 1
SUFFIX = "-shutdown.json"

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
                             f"not {json.dumps(value)[:40]}")
        return value

    def text(self, key: str) -> str:
        return self.value(key, lambda v: isinstance(v, str), "a string")  # type: ignore[no-any-return]

    def integer(self, key: str, minimum: int = 0, default: object = ...) -> int:
        return self.value(  # type: ignore[no-any-return]
            key, lambda v: type(v) is int and v >= minimum,
            f"a whole number of at least {minimum}", default)

    def optional_integer(self, key: str, minimum: int = 0) -> int | None:
        return self.value(  # type: ignore[no-any-return]
            key, lambda v: v is None or (type(v) is int and v >= minimum),
            f"null or a whole number of at least {minimum}", None)

    def optional_text(self, key: str) -> str | None:
        return self.value(  # type: ignore[no-any-return]
            key, lambda v: v is None or isinstance(v, str), "null or a string", None)

    def number(self, key: str) -> float:
        return float(self.value(key, lambda v: isinstance(v, int | float)
                                and not isinstance(v, bool) and v >= 0,
                                "a number, 0 or more"))

    def restorable_class(self, key: str, base: type[Base]) -> type[Base]:
        """The registered class the value names, which must derive from ``base``."""
        name = self.text(key)
        found = _registry.get(name)
        if found is None or not issubclass(found, base):
            raise StateError(f"{self.where}: {key!r} names {name!r}, which is not a "
                             f"restorable {base.__name__} (only @restorable classes of "
                             "reverserd or of the file given with -y can be named)")
        return found


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
            "services": [_save_service(child) for child in application],
        },
    }


def _save_service(service: Service) -> dict[str, Any]:
    name = state_type(type(service))
    if name is None:
        raise UserError(f"service {service.name or type(service).__name__!r} cannot be "
                        f"saved: its class {type(service).__qualname__} is not @restorable")
    saved: dict[str, Any] = {"type": name, "name": service.name,
                             "state": service.save_state()}
    if isinstance(service, MultiService):
        saved["services"] = [_save_service(child) for child in service]
    return saved


def check_savable(application: Application) -> None:
    """Fail now, not at shutdown, when part of the tree could not be saved."""
    save(application)


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
        raise WrongApplication(f"it holds application {name!r}, not {expected_name!r}")
    application = Application(name, fields.optional_integer("uid"),
                              fields.optional_integer("gid"),
                              fields.optional_text("process_name"))
    _restore_children(application, fields, fields.where)
    return application


def _restore_children(parent: MultiService, fields: StateReader, where: str) -> None:
    children = fields.value("services", lambda v: isinstance(v, list), "a list", [])
    for index, child in enumerate(children):
        _restore_service(child, f"{where}.services[{index}]").set_service_parent(parent)


def _restore_service(data: object, where: str) -> Service:
    node = StateReader(data, where)
    cls = node.restorable_class("type", Service)
    service: Service = cls.restore_state(StateReader(node.value("state", lambda v: True, "",
                                                                {}), f"{where}.state"))
    service.name = node.optional_text("name")
    if isinstance(service, MultiService):
        _restore_children(service, node, where)
    return service


def load_state_file(path: pathlib.Path, expected_name: str | None = None) -> Application:
    """The application a state file describes; the file is only ever read."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"cannot load state file {path}: no such file") from None
    except OSError as error:
        raise UserError(f"cannot load state file {path}: {os_reason(error)}") from None
    except UnicodeDecodeError:
        raise StateError(f"cannot load state file {path}: it is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise StateError(f"cannot load state file {path}: not valid JSON ({error.msg} at "
                         f"line {error.lineno} column {error.colno}); is it truncated?"
                         ) from None
    except RecursionError:
        raise StateError(f"cannot load state file {path}: nested too deeply") from None
    try:
        return restore(data, expected_name)
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
    data = json.dumps(save(application), indent=2, ensure_ascii=False) + "\n"
    directory.write_atomically(name, data.encode("utf-8"))
    return directory.path / name



restorable(MultiService)
