"""``--config FILE``: the command line's options, read from a TOML file.

Keys are the long option names without their dashes (``port``,
``log-level``, ``pidfile``); values have TOML's own types (``port = 2323``,
``syslog = true``, ``umask = "077"`` or ``0o077``). Relative paths are
relative to the file's directory, so the file means the same wherever
``reverserd`` is started. Unknown keys and values of the wrong type are
usage errors naming the key.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from reverserd.errors import UsageError, UserError, os_reason

#: Options whose numbers TOML may give as numbers, not only as strings.
NUMERIC = frozenset({"port", "max_line_length", "shutdown_timeout", "start_timeout",
                     "stop_timeout", "log_max_bytes", "log_backups"})
#: Options that take a number or a word, and what each expects.
NUMBER_OR_WORD = {"user": "a name or a number", "group": "a name or a number",
                  "workers": "'auto' or a number"}


def read(path: pathlib.Path, options: Mapping[str, argparse.Action]) -> dict[str, Any]:
    """The file's settings, keyed by the option's ``dest``, already validated.

    ``options`` maps each key the file may use to the command-line option
    it stands for.
    """
    try:
        with path.open("rb") as stream:
            table = tomllib.load(stream)
    except FileNotFoundError:
        raise UserError(f"cannot read config file {path}: no such file") from None
    except OSError as error:
        raise UserError(f"cannot read config file {path}: {os_reason(error)}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not valid TOML: {error}") from None
    settings: dict[str, Any] = {}
    for key, value in table.items():
        action = options.get(key)
        if action is None:
            raise UsageError(f"{path}: unknown key {key!r}{_suggestion(key, options)}")
        try:
            settings[action.dest] = _convert(action, value, path.parent)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise UsageError(f"{path}: key {key!r}: {error}") from None
    return settings


def _suggestion(key: str, options: Mapping[str, argparse.Action]) -> str:
    close = difflib.get_close_matches(key.replace("_", "-"), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(action: argparse.Action, value: object, base: pathlib.Path) -> Any:
    if action.nargs == 0:  # a flag: true gives what the flag sets, false the opposite
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {_shown(value)}")
        return action.const if value else not action.const
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"expected {_expected(action)}, got {_shown(value)}")
    if not isinstance(value, str):
        if action.dest == "umask" and isinstance(value, int):
            value = f"{value:o}"
        elif action.dest in NUMERIC or (action.dest in NUMBER_OR_WORD and isinstance(value, int)):
            value = str(value)
        else:
            raise TypeError(f"expected {_expected(action)}, got {_shown(value)}")
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}, "
                         f"got {value!r}")
    convert: Callable[[str], Any] | None = action.type  # type: ignore[assignment]
    if convert is pathlib.Path:
        return base / value
    return value if convert is None else convert(value)


def _expected(action: argparse.Action) -> str:
    if action.dest in NUMERIC:
        return "a number"
    if action.dest in NUMBER_OR_WORD:
        return NUMBER_OR_WORD[action.dest]
    return "a string"


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str | int | float) else type(value).__name__
