"""The service tree: what runs, in which order, and how it stops.

Modelled on Twisted's ``twisted.application.service``, with snake_case names
and coroutines where Twisted returns Deferreds:

=============================  =====================================
reverserd                      Twisted
=============================  =====================================
``Service``                    ``Service`` (``IService``)
``Service.name``               ``Service.name``
``Service.parent``             ``Service.parent``
``Service.running``            ``Service.running``
``set_service_parent(p)``      ``setServiceParent(p)``
``disown_service_parent()``    ``disownServiceParent()``
``privileged_start_service()`` ``privilegedStartService()``
``await start_service()``      ``startService()``
``await stop_service()``       ``stopService()`` (a Deferred)
``MultiService``               ``MultiService`` (``IServiceCollection``)
``add_service(s)``             ``addService(s)``
``remove_service(s)``          ``removeService(s)``
``get_service_named(n)``       ``getServiceNamed(n)``
``iter(multi_service)``        ``iter(multiService)``
``Application(name, uid, gid,  ``Application(name, uid, gid)``
process_name)``                 and ``IProcess.processName``
=============================  =====================================

Two of Twisted's known flaws are fixed: a child that cannot be added (its
name is taken) is left without a parent, and ``MultiService.stop_service``
raises the first child failure once every child has stopped instead of
swallowing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self

    from reverserd.persist import StateReader


class Service:
    """One unit of a running program, started and stopped by its parent.

    Subclasses override the three hooks and call ``super()`` so ``running``
    stays true to what the service is doing.
    """

    name: str | None = None
    parent: MultiService | None = None
    running: bool = False

    def set_service_parent(self, parent: MultiService) -> asyncio.Task[None] | None:
        """Attach to ``parent``, leaving any previous parent first.

        Returns the start task when ``parent`` is already running, so a caller
        inside a coroutine can await the child being up.
        """
        if self.parent is not None:
            self.disown_service_parent()
        return parent.add_service(self)

    def disown_service_parent(self) -> asyncio.Task[None] | None:
        """Detach from the parent; returns the stop task if it was running."""
        if self.parent is None:
            return None
        return self.parent.remove_service(self)

    def privileged_start_service(self) -> None:
        """Do what needs root (bind a port below 1024) before privileges drop.

        Called before the event loop exists: it must not need one.
        """

    async def start_service(self) -> None:
        """Begin working; runs inside the event loop after privileges drop."""
        self.running = True

    async def stop_service(self) -> None:
        """Finish work in progress and release what the service holds."""
        self.running = False

    def save_state(self) -> dict[str, Any]:
        """The settings ``restore_state`` needs to rebuild this service.

        Only used for classes marked ``@restorable``; the name, the parent
        and the children are saved by the caller.
        """
        return {}

    @classmethod
    def restore_state(cls, state: StateReader) -> Self:
        """Rebuild a service from ``save_state``'s settings, read through
        ``state`` so that every value is checked before it is used."""
        return cls()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name!r} {state}>"


class MultiService(Service):
    """A service made of children: started in order, stopped in reverse."""

    state_type = "reverserd.MultiService"

    def __init__(self) -> None:
        self._children: list[Service] = []
        self._named: dict[str, Service] = {}

    def __iter__(self) -> Iterator[Service]:
        return iter(list(self._children))

    def __len__(self) -> int:
        return len(self._children)

    def get_service_named(self, name: str) -> Service:
        """The child called ``name``; ``KeyError`` when there is none."""
        return self._named[name]

    def add_service(self, service: Service) -> asyncio.Task[None] | None:
        """Adopt ``service``; a name already taken raises ``ValueError``.

        Adding to a running parent starts the child at once, on the running
        event loop; the task doing so is returned.
        """
        if service.name is not None and service.name in self._named:
            raise ValueError(f"a service named {service.name!r} already exists")
        if service.parent is not None and service.parent is not self:
            service.disown_service_parent()
        service.parent = self
        self._children.append(service)
        if service.name is not None:
            self._named[service.name] = service
        if self.running:
            return asyncio.get_running_loop().create_task(service.start_service())
        return None

    def remove_service(self, service: Service) -> asyncio.Task[None] | None:
        """Release ``service``; a running parent stops it and returns that task."""
        self._children.remove(service)
        if service.name is not None:
            del self._named[service.name]
        service.parent = None
        if self.running:
            return asyncio.get_running_loop().create_task(service.stop_service())
        return None

    def privileged_start_service(self) -> None:
        super().privileged_start_service()
        for child in self._children:
            child.privileged_start_service()

    async def start_service(self) -> None:
        """Start the children in order; if one fails, stop those already up.

        A half-started tree is worse than none: the caller sees the original
        error and nothing is left serving.
        """
        await super().start_service()
        started: list[Service] = []
        try:
            for child in list(self._children):
                await child.start_service()
                started.append(child)
        except BaseException:
            self.running = False
            await _stop_all(reversed(started))
            raise

    async def stop_service(self) -> None:
        """Stop every child, last first; raise the first failure afterwards."""
        await super().stop_service()
        await _stop_all(reversed(list(self._children)))


async def _stop_all(services: Iterator[Service]) -> None:
    first_failure: BaseException | None = None
    for service in services:
        try:
            await service.stop_service()
        except Exception as failure:  # every sibling must still be stopped
            first_failure = first_failure or failure
    if first_failure is not None:
        raise first_failure


class Application(MultiService):
    """The root of a service tree, as run by ``reverserd``.

    ``uid`` and ``gid`` name the account the process should run as once its
    ports are bound (``None``: stay as started; ``--user`` and ``--group``
    override them). ``process_name`` is what ``ps`` and ``pgrep`` show for
    the serving process (``None``: ``reverserd``).
    """

    def __init__(self, name: str, uid: int | None = None, gid: int | None = None,
                 process_name: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.uid = uid
        self.gid = gid
        self.process_name = process_name
