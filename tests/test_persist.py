"""Saved state: what a state file may say, and what is refused."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reverserd import (
    Application,
    ListeningService,
    MultiService,
    Reverser,
    Service,
    TCPServer,
    listen,
)
from reverserd.directories import DirectoryHandle
from reverserd.endpoints import ProxiedEndpoint, TCPEndpoint, UnixEndpoint
from reverserd.errors import UserError
from reverserd.persist import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    StateError,
    check_savable,
    encode,
    file_name,
    load_state_file,
    restorable,
    restore,
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
        (lambda d: tamper(d, port=70000),
         r"'port' must be (at most|a whole number from 0 to) 65535"),
        (lambda d: tamper(d, port=True), r"'port' must be a whole number"),
        (lambda d: tamper(d, lines_served=-1), r"'lines_served' must be a whole number"),
        (lambda d: d["application"].update(name=["x"]), r"'name' must be a string"),
        (lambda d: d["application"].update(uid="root"), r"'uid' must be null or"),
        (lambda d: d["application"].update(gid=2**32 - 1),
         r"'gid' must be null or a whole number from 0 to 4294967294, not 4294967295"),
        (lambda d: d.update(format="pickle"), r"not a reverserd state file"),
        (lambda d: d.update(version=2), r"format version 2"),
        (lambda d: d["application"].update(services={}), r"'services' must be a list"),
        (lambda d: d["application"]["services"].append(7), r"services\[1\] must be a JSON"),
    ],
    ids=["os.system", "popen-handler", "service-as-handler", "handler-as-service",
         "port-text", "port-range", "port-bool", "negative-count", "name-type", "uid-type",
         "gid-range",
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


def nested_groups(depth: int) -> Application:
    """An application whose services nest ``depth`` deep: groups, then a reverser."""
    application = Application("Deep")
    parent: MultiService = application
    for level in range(depth - 1):
        group = MultiService()
        group.name = f"g{level}"
        group.set_service_parent(parent)
        parent = group
    TCPServer(0, Reverser).set_service_parent(parent)
    return application


def test_a_tree_64_deep_is_saved_and_restored(tmp_path: pathlib.Path) -> None:
    original = nested_groups(MAX_DEPTH)
    check_savable(original)
    restored = load_state_file(write(tmp_path / "s.json", save(original)))
    assert save(restored) == save(original)


def test_a_tree_deeper_than_64_fails_when_checked_not_when_saved_at_stop() -> None:
    with pytest.raises(UserError, match=r"^service 'TCPServer' cannot be saved: "
                                        r"services nested more than 64 deep could not be "
                                        r"restored$"):
        check_savable(nested_groups(MAX_DEPTH + 1))


def test_a_tree_of_thousands_of_levels_fails_with_one_line() -> None:
    with pytest.raises(UserError, match="services nested more than 64 deep"):
        check_savable(nested_groups(5000))


def test_a_file_nesting_services_deeper_than_64_is_refused_naming_where(
        tmp_path: pathlib.Path) -> None:
    data = save(nested_groups(MAX_DEPTH))
    node = data["application"]
    for _ in range(MAX_DEPTH):
        node = node["services"][0]
    node["services"] = [{"type": "reverserd.MultiService", "state": {}}]
    node["type"] = "reverserd.MultiService"
    path = write(tmp_path / "s.json", data)
    where = "application" + ".services[0]" * MAX_DEPTH
    with pytest.raises(StateError, match=re.escape(
            f"cannot load state file {path}: {where}: services nested more than 64 deep")):
        load_state_file(path)


def test_deeply_nested_state_fails_when_checked(tmp_path: pathlib.Path) -> None:
    @restorable
    class Hoarder(Service):
        state_type = "tests.Hoarder"

        def save_state(self) -> dict[str, Any]:
            deep: list[Any] = []
            for _ in range(100_000):
                deep = [deep]
            return {"deep": deep}

    application = Application("hoard")
    Hoarder().set_service_parent(application)
    with pytest.raises(UserError, match="^application 'hoard' cannot be saved: its state "
                                        "is nested too deeply$"):
        check_savable(application)


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("set", {1, 2}, "Object of type set is not JSON serializable"),
    ("nan", math.nan, "Out of range float values are not JSON compliant"),
    ("huge", "x" * (MAX_FILE_BYTES + 1), r"its state takes \d+ bytes, more than a state "
                                         r"file may \(10485760\)"),
])
def test_state_that_could_not_be_saved_or_read_back_fails_when_checked(
        kind: str, value: object, message: str) -> None:
    @restorable
    class Odd(Service):
        state_type = f"tests.Odd.{kind}"

        def save_state(self) -> dict[str, Any]:
            return {"value": value}

    application = Application("odd")
    Odd().set_service_parent(application)
    with pytest.raises(UserError, match=f"^application 'odd' cannot be saved: {message}"):
        check_savable(application)


def test_names_a_state_file_could_not_hold_fail_when_checked() -> None:
    with pytest.raises(UserError, match=r"^application 'a{60}'\.\.\. \(256 characters\) "
                                        r"cannot be saved so that it could be restored: "
                                        r"application: 'name' must be a string "
                                        r"of at most 255 characters, not \"a{60}\"\.\.\. "
                                        r"\(256 characters\)$"):
        check_savable(Application("a" * 256))
    application = reverser_tree()
    application.get_service_named("group").name = "g" * 256
    with pytest.raises(UserError, match=r"services\[0\]: 'name' must be null or a string of "
                                        r"at most 255 characters"):
        check_savable(application)
    check_savable(reverser_tree())


def test_a_state_file_that_is_a_fifo_is_refused_at_once(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "s.json"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=f"^cannot load state file {fifo}: it is a FIFO$"):
        load_state_file(fifo)


def test_a_state_file_that_is_a_directory_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match=f"^cannot load state file {tmp_path}: it is a "
                                        "directory$"):
        load_state_file(tmp_path)


def test_a_state_file_over_10_mb_is_refused_unread(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.json"
    text = json.dumps(save(reverser_tree()))
    path.write_text(text + " " * (MAX_FILE_BYTES - len(text)))
    load_state_file(path)
    with path.open("a") as more:
        more.write(" ")
    with pytest.raises(UserError, match=f"^cannot load state file {path}: it is larger than "
                                        "10485760 bytes$"):
        load_state_file(path)


@pytest.mark.parametrize("where", ["name", "process_name", "service", "interface", "handler"])
def test_a_9_mb_string_is_refused_in_one_short_line(tmp_path: pathlib.Path, where: str) -> None:
    data = save(reverser_tree())
    huge = "x" * (9 * 1024 * 1024)
    if where in ("name", "process_name"):
        data["application"][where] = huge
    elif where == "service":
        data["application"]["services"][0]["name"] = huge
    else:
        tamper(data, **{where: huge})
    path = write(tmp_path / "s.json", data)
    with pytest.raises(StateError, match=f"'{where if where != 'service' else 'name'}' must be "
                                         r".*at most 255 characters, not \"x{60}\"\.\.\. "
                                         r"\(9437184 characters\)$") as raised:
        load_state_file(path)
    assert len(str(raised.value)) < 400


@pytest.mark.parametrize(("text", "message"), [
    ("NaN", "NaN is not a number a state file may hold"),
    ("Infinity", "Infinity is not a number a state file may hold"),
    ("-Infinity", "-Infinity is not a number a state file may hold"),
    ("1e400", "1e400 is not a number a state file may hold"),
    ("9" * 5000, "a number has too many digits"),
])
def test_numbers_json_cannot_hold_are_refused(tmp_path: pathlib.Path, text: str,
                                              message: str) -> None:
    valid = json.dumps(save(reverser_tree()))
    path = tmp_path / "s.json"
    path.write_text(valid.replace('"shutdown_timeout": 2.5', f'"shutdown_timeout": {text}'))
    with pytest.raises(StateError, match=f"^cannot load state file {path}: {message}$"):
        load_state_file(path)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["top", "application", "service", "state", "handler", "services"]),
       st.text(max_size=20), JSON)
def test_whatever_a_state_file_holds_it_is_restored_or_refused_with_one_line(
        tmp_path: pathlib.Path, where: str, key: str, value: object) -> None:
    data = save(reverser_tree())
    target = {"top": data, "application": data["application"],
              "service": data["application"]["services"][0],
              "state": data["application"]["services"][0]["services"][0]["state"],
              "handler": data["application"]["services"][0]["services"][0]["state"],
              "services": data["application"]["services"][0]}[where]
    target[{"handler": "handler", "services": "services"}.get(where, key)] = value
    path = write(tmp_path / "s.json", data)
    try:
        load_state_file(path)
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) < 1000


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_whatever_bytes_a_state_file_holds_it_is_refused_with_one_line(
        tmp_path: pathlib.Path, garbage: bytes) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(garbage)
    try:
        load_state_file(path)
    except UserError as error:
        assert "\n" not in str(error)


def test_listeners_are_saved_as_descriptions_and_port_0_as_the_port_taken() -> None:
    application = Application("listeners")
    tcp = listen("haproxy:tcp:0", Reverser, backlog=64, max_line_length=100)
    tcp.set_service_parent(application)
    listen("unix:/run/r.sock:mode=600", Reverser).set_service_parent(application)
    tcp.privileged_start_service()
    try:
        port = tcp.listening_socket.getsockname()[1]  # type: ignore[union-attr]
        restored = restore(json.loads(encode(application)))
    finally:
        tcp.close_socket()
    first, second = list(restored)
    assert isinstance(first, ListeningService) and isinstance(second, ListeningService)
    assert first.endpoint == ProxiedEndpoint(TCPEndpoint(port, "127.0.0.1"))
    assert (first.backlog, first.max_line_length) == (64, 100)
    assert second.endpoint == UnixEndpoint(pathlib.Path("/run/r.sock"), 0o600)


def test_a_saved_description_that_no_longer_parses_is_refused_naming_it() -> None:
    application = Application("listeners")
    listen("tcp:1", Reverser).set_service_parent(application)
    data = json.loads(encode(application))
    data["application"]["services"][0]["state"]["listen"] = "tcp:99999"
    with pytest.raises(StateError, match="'listen': bad listener 'tcp:99999'"):
        restore(data)
