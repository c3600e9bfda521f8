"""Saved state: what a state file may say, and what is refused."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from reverserd import Application, MultiService, Reverser, Service, TCPServer
from reverserd.directories import DirectoryHandle
from reverserd.errors import UserError
from reverserd.persist import (
    StateError,
    file_name,
    load_state_file,
    restorable,
    save,
    write_state_file,
)


def reverser_tree() -> Application:
    application = Application("Reverser", uid=65534, gid=65534, process_name="rev")
    group = MultiService()
    group.name = "group"
    group.set_service_parent(application)
    server = TCPServer(2323, Reverser, "127.0.0.1", max_line_length=80, shutdown_timeout=2.5)
    server.name = "reverser"
    server.set_service_parent(group)
    return application


def write(path: pathlib.Path, data: Any) -> pathlib.Path:
    path.write_text(json.dumps(data))
    return path


def test_a_saved_tree_is_restored_with_every_setting(tmp_path: pathlib.Path) -> None:
    original = reverser_tree()
    directory = DirectoryHandle(tmp_path)
    try:
        path = write_state_file(original, directory)
    finally:
        directory.close()
    assert path == tmp_path / "Reverser-shutdown.json"
    restored = load_state_file(path)
    assert (restored.name, restored.uid, restored.gid, restored.process_name) == (
        "Reverser", 65534, 65534, "rev")
    group = restored.get_service_named("group")
    assert type(group) is MultiService
    server = group.get_service_named("reverser")
    assert isinstance(server, TCPServer)
    assert (server.port, server.interface, server.handler_class, server.max_line_length,
            server.shutdown_timeout) == (2323, "127.0.0.1", Reverser, 80, 2.5)
    assert save(restored) == save(original)
    assert not [name for name in (p.name for p in tmp_path.iterdir())
                if name != "Reverser-shutdown.json"]


def test_the_line_count_survives_a_restore(tmp_path: pathlib.Path) -> None:
    data = save(reverser_tree())
    data["application"]["services"][0]["services"][0]["state"]["lines_served"] = 41
    restored = load_state_file(write(tmp_path / "s.json", data))
    server = restored.get_service_named("group").get_service_named("reverser")  # type: ignore[attr-defined]
    assert server.lines_served == 41


def tamper(data: dict[str, Any], **state: Any) -> dict[str, Any]:
    data["application"]["services"][0]["services"][0]["state"].update(state)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["application"]["services"][0].update(type="os.system"),
         r"'type' names 'os\.system', which is not a restorable Service"),
        (lambda d: tamper(d, handler="subprocess.Popen"),
         r"'handler' names 'subprocess\.Popen', which is not a restorable LineHandler"),
        (lambda d: tamper(d, handler="reverserd.TCPServer"),
         r"'handler' names 'reverserd\.TCPServer', which is not a restorable LineHandler"),
        (lambda d: d["application"]["services"][0].update(type="reverserd.Reverser"),
         r"'type' names 'reverserd\.Reverser', which is not a restorable Service"),
        (lambda d: tamper(d, port="2323"), r"'port' must be a whole number"),
        (lambda d: tamper(d, port=70000), r"'port' must be at most 65535"),
        (lambda d: tamper(d, port=True), r"'port' must be a whole number"),
        (lambda d: tamper(d, lines_served=-1), r"'lines_served' must be a whole number"),
        (lambda d: d["application"].update(name=["x"]), r"'name' must be a string"),
        (lambda d: d["application"].update(uid="root"), r"'uid' must be null or"),
        (lambda d: d.update(format="pickle"), r"not a reverserd state file"),
        (lambda d: d.update(version=2), r"format version 2"),
        (lambda d: d["application"].update(services={}), r"'services' must be a list"),
        (lambda d: d["application"]["services"].append(7), r"services\[1\] must be a JSON"),
    ],
    ids=["os.system", "popen-handler", "service-as-handler", "handler-as-service",
         "port-text", "port-range", "port-bool", "negative-count", "name-type", "uid-type",
         "format", "version", "services-type", "service-not-object"],
)
def test_a_tampered_file_is_refused_with_its_fault(tmp_path: pathlib.Path, change: Any,
                                                   message: str) -> None:
    data = save(reverser_tree())
    change(data)
    path = write(tmp_path / "s.json", data)
    with pytest.raises(StateError, match=message) as raised:
        load_state_file(path)
    assert str(raised.value).startswith(f"cannot load state file {path}: ")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("text", ['{"format": "reverserd-state", "vers', "", "[" * 100000,
                                  "\udcff"], ids=["truncated", "empty", "deep", "not-utf8"])
def test_a_corrupt_file_is_one_error_and_left_as_it_was(tmp_path: pathlib.Path,
                                                        text: str) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(StateError, match=f"cannot load state file {path}: "):
        load_state_file(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_a_missing_file_is_one_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_state_file(tmp_path / "absent.json")


def test_a_service_that_did_not_opt_in_cannot_be_saved() -> None:
    class Unsaved(Service):
        pass

    application = Application("a")
    Unsaved().set_service_parent(application)
    with pytest.raises(UserError, match="is not @restorable"):
        save(application)


def test_a_handler_that_did_not_opt_in_cannot_be_saved() -> None:
    class Unsaved(Reverser):
        pass

    application = Application("a")
    TCPServer(0, Unsaved).set_service_parent(application)
    with pytest.raises(UserError, match=r"handler .*Unsaved is not @restorable"):
        save(application)


def test_a_restorable_name_cannot_be_taken_twice() -> None:
    @restorable
    class Once(Service):
        state_type = "tests.Once"

    class Again(Service):
        state_type = "tests.Once"

    with pytest.raises(ValueError, match="already restorable as 'tests.Once'"):
        restorable(Again)


@pytest.mark.parametrize(("name", "expected"), [("Reverser", "Reverser-shutdown.json"),
                                                ("../etc/x y", "_etc_x_y-shutdown.json"),
                                                ("", "application-shutdown.json")])
def test_the_file_name_comes_from_the_application_name(name: str, expected: str) -> None:
    assert file_name(Application(name)) == expected
