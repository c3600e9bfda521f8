"""From options to an application ready to serve: shared by start and the foreground.

In the launcher, still as whoever started it (root, for a port below 1024):
load the application, settle the account it will run as, check that this
account can use its directories, bind the ports. Then, in the process that
will serve: write the pidfile, take the process name, enter the chroot,
give up root -- in that order, each step needing what the one before still
had.
"""

from __future__ import annotations

import dataclasses
import pathlib
import socket

from reverserd import application, graphemes, logs, persist, privileges, runner, workers
from reverserd.config import Config
from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError, os_reason
from reverserd.handover import Offer, Succeeding
from reverserd.jail import Jail
from reverserd.listening import kept_fds, listening_services, release_all
from reverserd.loops import LoopFactory
from reverserd.notify import Supervision
from reverserd.pidfile import Claim
from reverserd.policy import Limits
from reverserd.privileges import Account
from reverserd.process_name import DEFAULT as DEFAULT_PROCESS_NAME
from reverserd.process_name import set_process_name
from reverserd.reloading import Reloader, socket_key
from reverserd.service import Application


def account_from_options(config: Config) -> Account | None:
    """The account ``--user``/``--group`` ask for, refused early if out of reach."""
    account = privileges.resolve(config.user, config.group)
    if account is not None:
        privileges.check_may_become(account)
    return account


def run_directory(config: Config) -> pathlib.Path:
    """Where the daemon works and saves its state: ``--rundir``, else the
    chroot's root, else the directory reverserd was started in."""
    return config.rundir or config.chroot or pathlib.Path.cwd()


@dataclasses.dataclass
class Launch:
    """An application loaded and bound, and what its serving process must do."""

    application: Application
    account: Account | None
    jail: Jail | None
    state_directory: DirectoryHandle | None
    loop: tuple[str, LoopFactory]
    limits: Limits
    worker_timeout: float
    supervision: Supervision
    reloader: Reloader
    worker_sockets: list[list[socket.socket]] | None = None
    successor: Succeeding | None = None

    def keep_fds(self) -> list[int]:
        """Descriptors the serving process needs, to keep through a detach."""
        fds = kept_fds(self.application)
        for sockets in self.worker_sockets or ():
            fds.extend(sock.fileno() for sock in sockets)
        if self.state_directory is not None:
            fds.append(self.state_directory.fd)
        if self.successor is not None:
            fds.extend(self.successor.keep_fds())
        return [*fds, *self.supervision.keep_fds()]

    def enter(self, claim: Claim | None) -> None:
        """Become the serving process: pidfile, name, chroot, account.

        A new generation writes no pidfile yet: it replaces its
        predecessor's once it takes over.
        """
        owner = None
        if self.account is not None and not self.account.is_current():
            owner = (self.account.uid, self.account.gid)
        if self.successor is not None:
            self.successor.detached()
        elif claim is not None:
            claim.write_pidfile(owner)
        set_process_name(self.application.process_name or DEFAULT_PROCESS_NAME)
        if self.jail is not None:
            graphemes.import_segmenter()  # the jail hides the package's files
            self.jail.enter()
        if self.account is not None:
            privileges.become(self.account)

    def serve(self, claim: Claim | None,
              on_ready: runner.ReadyCallback | None = None) -> None:
        """Serve here, or through worker processes when there are several."""
        supervisor = None
        if self.worker_sockets is not None:
            supervisor = workers.Supervisor(self.application, self.worker_sockets, claim,
                                            self.loop[1], self.worker_timeout,
                                            self.supervision)
        runner.run(self.application, claim, on_ready, self.state_directory, self.loop,
                   supervisor, self.limits, self.supervision,
                   runner.Generations(self.reloader, self.successor))

    def close(self) -> None:
        if self.state_directory is not None:
            self.state_directory.close()


def plan_jail(config: Config) -> Jail | None:
    """The chroot asked for, checked before any file is created."""
    return None if config.chroot is None else Jail.plan(config.chroot, config.rundir)


def prepare(config: Config, claim: Claim | None, jail: Jail | None,
            loop: tuple[str, LoopFactory], supervision: Supervision,
            reloader: Reloader) -> Launch:
    """Load, check and bind, as the launcher; nothing serves yet.

    A new generation (``config.successor``) binds only the listeners its
    predecessor did not have: the others take over the predecessor's
    sockets, and accept only once the predecessor has let go.
    """
    successor = config.successor
    app = application.load(config)
    account = privileges.resolve(app.uid if config.user is None else config.user,
                                 app.gid if config.group is None else config.group)
    if account is not None:
        privileges.check_may_become(account)
        _hand_over_run_files(claim, account)
    state_directory = None
    if config.saves_state:
        persist.check_savable(app)
        state_directory = _state_directory(jail.rundir if jail else run_directory(config),
                                           account)
    worker_sockets = None
    try:
        if config.workers > 1:
            for server in listening_services(app):
                server.reuse_port = True
        if successor is not None:
            _adopt_sockets(app, successor.offer)
        app.privileged_start_service()
        if config.workers > 1:
            worker_sockets = workers.bind_worker_sockets(
                app, config.workers, None if successor is None else successor.offer)
        if account is not None and not account.is_current():
            for server in listening_services(app):
                server.hand_over(account.uid, account.gid)
    except BaseException:
        if state_directory is not None:
            state_directory.close()
        for server in listening_services(app):
            server.close_socket()
        release_all(app)
        raise
    finally:
        if successor is not None:
            successor.offer.close_unused()
    limits = Limits(config.max_connections, config.max_connections_per_peer,
                    config.idle_timeout, config.write_timeout, config.proxy_from,
                    config.compact_after)
    return Launch(app, account, jail, state_directory, loop, limits, config.worker_timeout,
                  supervision, reloader, worker_sockets, successor)


def _adopt_sockets(app: Application, offer: Offer) -> None:
    """Serve the predecessor's sockets where the listeners match, holding
    every listener back from accepting until the take-over."""
    for server in listening_services(app):
        server.hold_accepting = True
        sock = offer.take_socket(0, socket_key(server))
        if sock is not None:
            server.adopt_socket(sock)


def _hand_over_run_files(claim: Claim | None, account: Account) -> None:
    """Let the account keep its pidfile, lock and log usable once root is gone."""
    log_file = logs.installed_log_file()
    if log_file is not None and log_file.discards:
        log_file = None  # /dev/null: nothing to keep writable, nothing to give away
    if claim is not None:
        privileges.ensure_pidfile_directory(claim.files.pidfile.parent, account)
    if log_file is not None:
        privileges.ensure_directory(log_file.directory.path, account, "its log file")
    if account.is_current():
        return
    if claim is not None:
        claim.hand_over(account.uid, account.gid)
    if log_file is not None:
        log_file.hand_over(account.uid, account.gid)


def _state_directory(path: pathlib.Path, account: Account | None) -> DirectoryHandle:
    privileges.ensure_directory(path, account, "saving the application's state")
    try:
        return DirectoryHandle(path)
    except OSError as error:
        raise UserError(f"cannot save state in {path}: {os_reason(error)}") from None
