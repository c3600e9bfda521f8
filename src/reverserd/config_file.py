"""``--config FILE``: the command line's options, read from a TOML file.

Keys are the long option names without their dashes (``port``,
``log-level``, ``pidfile``); values have TOML's own types (``port = 2323``,
``syslog = true``, ``umask = "077"`` or ``0o077``). Relative paths are
relative to the file's directory, so the file means the same wherever
``reverserd`` is started. Unknown keys and values of the wrong type are
usage errors naming the key.

A file that cannot be read (missing, unreadable, not a regular file, over
``MAX_BYTES``) is a runtime error, exit 1; a file read whose content is
wrong (not TOML, nested too deeply, a bad key or value) is a usage error,
exit 2. Every value goes through the command line's own validator, so the
file is held to the same ranges and lengths.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

import tomllib

from reverserd.errors import UsageError, UserError
from reverserd.persist import QUOTED_LENGTH, Unreadable, quoted, read_regular_file

MAX_BYTES = 1024 * 1024
MAX_LIST_ITEMS = 64
#: Options whose numbers TOML may give as numbers, not only as strings.
NUMERIC = frozenset({"port", "backlog", "max_line_length", "shutdown_timeout",
                     "start_timeout", "stop_timeout", "log_max_bytes", "log_backups",
                     "max_connections", "max_connections_per_peer", "idle_timeout",
                     "write_timeout", "worker_timeout", "compact_after"})
#: Options that take a number or a word, and what each expects.
NUMBER_OR_WORD = {"user": "a name or a number", "group": "a name or a number",
                  "workers": "'auto' or a number"}


def read(path: pathlib.Path, options: Mapping[str, argparse.Action]) -> dict[str, Any]:
    """The file's settings, keyed by the option's ``dest``, already validated.

    ``options`` maps each key the file may use to the command-line option
    it stands for.
    """
    try:
        table = tomllib.loads(read_regular_file(path, MAX_BYTES).decode("utf-8"))
    except Unreadable as error:
        raise UserError(f"cannot read config file {path}: {error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not valid TOML: {error}") from None
    except (RecursionError, MemoryError):  # tomllib recurses once per level
        raise UsageError(f"{path}: not valid TOML: nested too deeply") from None
    except ValueError:  # int() of the number refused it
        raise UsageError(f"{path}: not valid TOML: a number of more than "
                         f"{sys.get_int_max_str_digits()} digits") from None
    settings: dict[str, Any] = {}
    for key, value in table.items():
        action = options.get(key)
        if action is None:
            raise UsageError(f"{path}: unknown key {quoted(key)}{_suggestion(key, options)}")
        try:
            settings[action.dest] = _convert(action, value, path.parent)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise UsageError(f"{path}: key {key!r}: {error}") from None
    return settings


def _suggestion(key: str, options: Mapping[str, argparse.Action]) -> str:
    close = difflib.get_close_matches(key.replace("_", "-"), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(action: argparse.Action, value: object, base: pathlib.Path) -> Any:
    parse_item = getattr(action, "parse_item", None)
    if parse_item is not None:  # a list option: every item through the same check
        if not isinstance(value, list):
            raise TypeError(f"expected a list of strings, got {_shown(value)}")
        if len(value) > MAX_LIST_ITEMS:
            raise ValueError(f"expected at most {MAX_LIST_ITEMS} items, got {len(value)}")
        if not all(isinstance(item, str) for item in value):
            raise TypeError("expected a list of strings")
        return [parse_item(item, base) for item in value]
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
                         f"got {quoted(value)}")
    convert: Callable[[str], Any] | None = action.type  # type: ignore[assignment]
    converted = value if convert is None else convert(value)
    return base / converted if isinstance(converted, pathlib.Path) else converted


def _expected(action: argparse.Action) -> str:
    if action.dest in NUMERIC:
        return "a number"
    if action.dest in NUMBER_OR_WORD:
        return NUMBER_OR_WORD[action.dest]
    return "a string"


def _shown(value: object) -> str:
    if isinstance(value, str):
        return quoted(value)
    if not isinstance(value, int | float):
        return type(value).__name__
    shown = repr(value)  # up to thousands of digits
    if len(shown) <= QUOTED_LENGTH:
        return shown
    return f"{shown[:QUOTED_LENGTH]}... ({len(shown)} digits)"
