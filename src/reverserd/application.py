"""Where the application comes from: the built-in reverser, a Python file
(``-y``) or a state file (``-f``)."""

from __future__ import annotations

import pathlib
import runpy
import sys
from typing import Any

from reverserd.config import Config
from reverserd.errors import UserError
from reverserd.listening import ListeningService, TCPServer
from reverserd.persist import WrongApplication, load_state_file
from reverserd.protocol import Reverser
from reverserd.service import Application

BUILT_IN_NAME = "Reverser"


def reverser_application(config: Config) -> Application:
    """The application ``reverserd`` runs when given no file: the reverser on
    every ``--listen`` endpoint, else on ``--port``."""
    application = Application(BUILT_IN_NAME)
    options: dict[str, Any] = {"max_line_length": config.max_line_length,
                               "shutdown_timeout": config.shutdown_timeout}
    listeners = [ListeningService(endpoint, Reverser, config.backlog, **options)
                 for endpoint in config.listen] or [
        TCPServer(config.port, Reverser, config.interface, config.backlog, **options)]
    for number, listener in enumerate(listeners, 1):
        listener.name = "reverser" if number == 1 else f"reverser-{number}"
        listener.set_service_parent(application)
    return application


def load_application_file(path: pathlib.Path) -> Application:
    """Run a Python file and return its module-level ``application``.

    As with ``twistd -y``, the file is trusted code: it is executed. Its
    directory goes first on ``sys.path``, as for ``python FILE``, so it can
    import the modules beside it. Every way it can fail becomes one line
    naming the file (for a syntax error, the file and line at fault).
    """
    if not path.is_file():
        raise UserError(f"cannot load {path}: no such file")
    sys.path.insert(0, str(path.absolute().parent))
    try:
        namespace = runpy.run_path(str(path), run_name="__reverserd_application__")
    except SyntaxError as error:
        where = error.filename if error.filename else str(path)
        raise UserError(f"{where}:{error.lineno}: syntax error: {error.msg}") from None
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


def _restore_saved(application: Application, state_file: pathlib.Path,
                   application_file: pathlib.Path) -> Application:
    """The application ``application_file`` defines, as ``state_file`` saved it.

    The application file is trusted code and may define restorable classes
    of its own; the state file is only data, so it can name those classes
    only because the operator named the file that defines them.
    """
    try:
        return load_state_file(state_file, expected_name=application.name)
    except WrongApplication as error:
        raise UserError(f"{error} of {application_file}") from None


def load(config: Config) -> Application:
    """The application ``config`` asks for: ``-y`` and ``-f`` together run the
    file's application as the state file saved it."""
    if config.application_file is not None:
        application = load_application_file(config.application_file)
        if config.state_file is None:
            return application
        return _restore_saved(application, config.state_file, config.application_file)
    if config.state_file is not None:
        return load_state_file(config.state_file)
    return reverser_application(config)
