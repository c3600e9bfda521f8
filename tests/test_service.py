"""The service tree's order and error rules."""

from __future__ import annotations

import asyncio

import pytest

from reverserd import Application, MultiService, Service


class Recorder(Service):
    """A service that writes what happens to it into a shared journal."""

    def __init__(self, name: str, journal: list[str], fail_on: str = "") -> None:
        self.name = name
        self.journal = journal
        self.fail_on = fail_on

    def privileged_start_service(self) -> None:
        self.journal.append(f"privileged {self.name}")
        super().privileged_start_service()

    async def start_service(self) -> None:
        self.journal.append(f"start {self.name}")
        if self.fail_on == "start":
            raise RuntimeError(f"{self.name} cannot start")
        await super().start_service()

    async def stop_service(self) -> None:
        self.journal.append(f"stop {self.name}")
        await super().stop_service()
        if self.fail_on == "stop":
            raise RuntimeError(f"{self.name} cannot stop")


def tree(journal: list[str], *names: str, fail: dict[str, str] | None = None) -> Application:
    application = Application("app")
    for name in names:
        Recorder(name, journal, (fail or {}).get(name, "")).set_service_parent(application)
    return application


def test_children_start_in_order_and_stop_in_reverse() -> None:
    journal: list[str] = []
    application = tree(journal, "a", "b", "c")
    application.privileged_start_service()
    asyncio.run(application.start_service())
    assert application.running and all(child.running for child in application)
    asyncio.run(application.stop_service())
    assert journal == ["privileged a", "privileged b", "privileged c",
                       "start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert not application.running and not any(child.running for child in application)


def test_iteration_and_lookup_follow_insertion() -> None:
    application = tree([], "z", "a", "m")
    assert [child.name for child in application] == ["z", "a", "m"]
    assert application.get_service_named("a").name == "a"
    assert application.get_service_named("m").parent is application
    with pytest.raises(KeyError):
        application.get_service_named("nope")


def test_duplicate_name_raises_and_leaves_the_child_without_parent() -> None:
    application = tree([], "a")
    twin = Recorder("a", [])
    with pytest.raises(ValueError, match="'a' already exists"):
        twin.set_service_parent(application)
    assert twin.parent is None
    assert [child for child in application] == [application.get_service_named("a")]


def test_duplicate_name_after_leaving_another_parent() -> None:
    first, second = tree([], "x"), tree([], "x")
    moving = first.get_service_named("x")
    with pytest.raises(ValueError):
        moving.set_service_parent(second)
    assert moving.parent is None
    assert len(first) == 0


def test_reparenting_moves_the_child() -> None:
    first, second = Application("one"), Application("two")
    child = Recorder("c", [])
    child.set_service_parent(first)
    child.set_service_parent(second)
    assert child.parent is second
    assert list(first) == [] and list(second) == [child]


def test_disown_removes_child_and_frees_its_name() -> None:
    application = tree([], "a")
    child = application.get_service_named("a")
    child.disown_service_parent()
    assert child.parent is None and len(application) == 0
    Recorder("a", []).set_service_parent(application)
    assert application.get_service_named("a") is not child


def test_adding_to_a_running_parent_starts_the_child() -> None:
    journal: list[str] = []

    async def scenario() -> None:
        application = tree(journal, "a")
        await application.start_service()
        late = Recorder("late", journal)
        task = late.set_service_parent(application)
        assert task is not None
        await task
        assert late.running
        removal = late.disown_service_parent()
        assert removal is not None
        await removal
        assert not late.running
        await application.stop_service()

    asyncio.run(scenario())
    assert journal == ["start a", "start late", "stop late", "stop a"]


def test_adding_to_a_stopped_parent_does_not_start() -> None:
    application = tree([], "a")
    assert Recorder("b", []).set_service_parent(application) is None
    assert not application.get_service_named("b").running


def test_every_stop_is_awaited_and_the_first_failure_raised_after() -> None:
    journal: list[str] = []
    application = tree(journal, "a", "b", "c", fail={"c": "stop", "b": "stop"})
    asyncio.run(application.start_service())
    with pytest.raises(RuntimeError, match="c cannot stop"):
        asyncio.run(application.stop_service())
    assert journal[-3:] == ["stop c", "stop b", "stop a"]
    assert not application.get_service_named("a").running


def test_failed_start_stops_the_children_already_started() -> None:
    journal: list[str] = []
    application = tree(journal, "a", "b", "c", fail={"b": "start"})
    with pytest.raises(RuntimeError, match="b cannot start"):
        asyncio.run(application.start_service())
    assert journal == ["start a", "start b", "stop a"]
    assert not application.running


def test_nested_multiservices_keep_depth_first_order() -> None:
    journal: list[str] = []
    application = tree(journal, "a")
    inner = MultiService()
    inner.name = "inner"
    inner.set_service_parent(application)
    Recorder("b", journal).set_service_parent(inner)
    Recorder("c", journal).set_service_parent(application)
    asyncio.run(application.start_service())
    asyncio.run(application.stop_service())
    assert journal == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def test_application_carries_name_and_account() -> None:
    application = Application("svc", uid=1000, gid=100)
    assert (application.name, application.uid, application.gid) == ("svc", 1000, 100)
    assert Application("plain").uid is None
