"""Where the application comes from: the built-in reverser or a Python file."""

from __future__ import annotations

import pathlib
import runpy

from reverserd.config import Config
from reverserd.errors import UserError
from reverserd.internet import TCPServer
from reverserd.protocol import Reverser
from reverserd.service import Application


def reverser_application(config: Config) -> Application:
    """The application ``reverserd`` runs when given no file: one reverser port."""
    application = Application("reverser")
    server = TCPServer(
        config.port,
        Reverser,
        config.interface,
        max_line_length=config.max_line_length,
        shutdown_timeout=config.shutdown_timeout,
    )
    server.name = "reverser"
    server.set_service_parent(application)
    return application


def load_application_file(path: pathlib.Path) -> Application:
    """Run a Python file and return its module-level ``application``.

    As with ``twistd -y``, the file is trusted code: it is executed. Every
    way it can fail becomes one line naming the file.
    """
    if not path.is_file():
        raise UserError(f"cannot load {path}: no such file")
    try:
        namespace = runpy.run_path(str(path), run_name="__reverserd_application__")
    except SyntaxError as error:
        raise UserError(f"{path}:{error.lineno}: syntax error: {error.msg}") from None
    except Exception as error:
        raise UserError(f"cannot load {path}: {type(error).__name__}: {error}") from None
    if "application" not in namespace:
        raise UserError(f"{path} defines no module-level 'application'")
    application = namespace["application"]
    if not isinstance(application, Application):
        raise UserError(
            f"'application' in {path} is a {type(application).__name__}, "
            "not a reverserd.Application"
        )
    return application


def load(config: Config) -> Application:
    """The application ``config`` asks for."""
    if config.application_file is not None:
        return load_application_file(config.application_file)
    return reverser_application(config)
