"""The recorded command lines: how they are kept next to the pidfile, and how
``restart`` and ``reload`` replay them under the options given now."""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterator

import pytest

from reverserd import cli, config, descriptions, recorded
from reverserd.directories import DirectoryHandle
from reverserd.errors import UsageError, UserError
from reverserd.pidfile import RunFiles


@pytest.fixture
def directory(tmp_path: pathlib.Path) -> Iterator[DirectoryHandle]:
    handle = DirectoryHandle(tmp_path)
    yield handle
    handle.close()


@pytest.fixture
def files(tmp_path: pathlib.Path) -> RunFiles:
    return RunFiles(tmp_path / "reverserd.pid")


def layer(directory: pathlib.Path, *arguments: str) -> recorded.Layer:
    return recorded.Layer(tuple(arguments), str(directory))


def record(directory: pathlib.Path, *layers: recorded.Layer) -> None:
    """Leave ``layers`` next to ``directory``'s default pidfile, as a start would."""
    handle = DirectoryHandle(directory)
    try:
        recorded.write(RunFiles(directory / config.DEFAULT_PIDFILE), layers, handle)
    finally:
        handle.close()


# Keeping the record


def test_layers_written_are_read_back_in_order(tmp_path: pathlib.Path,
                                               directory: DirectoryHandle,
                                               files: RunFiles) -> None:
    layers = (layer(tmp_path, "start", "--port", "0", "--max-line-length", "100"),
              layer(tmp_path / "elsewhere", "reload", "--log-level", "debug"),
              layer(pathlib.Path("/"), "restart", "--listen", "tcp:0", "--", "é ü \n"))
    recorded.write(files, layers, directory)
    assert files.options == tmp_path / "reverserd.pid.options"
    assert recorded.read(files) == layers
    on_disk = json.loads(files.options.read_text(encoding="utf-8"))
    assert on_disk["layers"][1] == {"arguments": ["reload", "--log-level", "debug"],
                                    "directory": str(tmp_path / "elsewhere")}


def test_a_new_record_replaces_the_old_one_and_leaves_no_temporary_file(
        tmp_path: pathlib.Path, directory: DirectoryHandle, files: RunFiles) -> None:
    recorded.write(files, [layer(tmp_path, "start", "--port", "1")], directory)
    recorded.write(files, [layer(tmp_path, "start", "--port", "2")], directory)
    assert recorded.read(files) == (layer(tmp_path, "start", "--port", "2"),)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["reverserd.pid.options"]


def test_no_record_reads_as_no_layers(files: RunFiles) -> None:
    assert recorded.read(files) == ()


def test_an_empty_record_reads_as_no_layers(directory: DirectoryHandle,
                                            files: RunFiles) -> None:
    recorded.write(files, [], directory)
    assert recorded.read(files) == ()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{\"layers\": [",
        b"\xff\xfe not text",
        b"[]",
        b"{}",
        b"{\"layers\": {}}",
        b"{\"layers\": [\"start --port 0\"]}",
        b"{\"layers\": [{\"arguments\": [\"start\"]}]}",
        b"{\"layers\": [{\"arguments\": \"start\", \"directory\": \"/\"}]}",
        b"{\"layers\": [{\"arguments\": [\"start\", 1], \"directory\": \"/\"}]}",
        b"{\"layers\": [{\"arguments\": [\"start\"], \"directory\": 7}]}",
        b"{\"layers\": [{\"arguments\": [\"start\"], \"directory\": null}]}",
        b"[" * 30_000 + b"]" * 30_000,
    ],
    ids=["empty", "truncated", "not-utf8", "a-list", "no-layers", "layers-not-a-list",
         "layer-not-an-object", "no-directory", "arguments-a-string", "argument-a-number",
         "directory-a-number", "directory-null", "deeply-nested"],
)
def test_a_damaged_record_is_an_error_naming_the_file(files: RunFiles,
                                                      content: bytes) -> None:
    files.options.write_bytes(content)
    with pytest.raises(UserError, match=f"^cannot use {files.options}: ") as refused:
        recorded.read(files)
    reason = str(refused.value).removeprefix(f"cannot use {files.options}: ")
    assert reason.endswith(" (remove it to start afresh)")
    assert not re.search(r"object|indices|subscriptable|^'", reason), reason  # no Python words


def test_a_record_over_its_size_limit_is_refused_even_when_well_formed(
        tmp_path: pathlib.Path, files: RunFiles) -> None:
    well_formed = json.dumps({"layers": [layer(tmp_path, "start").to_json()]}).encode()
    files.options.write_bytes(well_formed + b" " * (recorded.OPTIONS_BYTES - len(well_formed)))
    assert recorded.read(files) == (layer(tmp_path, "start"),), "exactly the limit is fine"
    files.options.write_bytes(well_formed + b" " * (recorded.OPTIONS_BYTES + 1))
    with pytest.raises(UserError, match=f"^cannot use {files.options}: too large"):
        recorded.read(files)


def test_a_record_with_too_many_layers_or_arguments_is_refused(tmp_path: pathlib.Path,
                                                               files: RunFiles) -> None:
    many_layers = [layer(tmp_path, "start").to_json()] * (recorded.MAX_LAYERS + 1)
    files.options.write_text(json.dumps({"layers": many_layers}))
    with pytest.raises(UserError, match=f"^cannot use {files.options}: "):
        recorded.read(files)
    many_arguments = ["-v"] * (recorded.MAX_ARGUMENTS + 1)
    files.options.write_text(json.dumps(
        {"layers": [{"arguments": many_arguments, "directory": str(tmp_path)}]}))
    with pytest.raises(UserError, match=f"^cannot use {files.options}: "):
        recorded.read(files)


@pytest.mark.parametrize("relative", ["", ".", "srv/reverserd", "./run"])
def test_a_layer_with_a_relative_directory_is_refused(directory: DirectoryHandle,
                                                      files: RunFiles, relative: str) -> None:
    """Its relative paths would change meaning with the directory restart runs in."""
    recorded.write(files, [recorded.Layer(("start", "-l", "x.log"), relative)], directory)
    with pytest.raises(UserError, match=f"^cannot use {files.options}: "):
        recorded.read(files)


def test_a_symlinked_record_is_refused(tmp_path: pathlib.Path, directory: DirectoryHandle,
                                       files: RunFiles) -> None:
    """Someone able to plant a link could otherwise choose the options of the next start."""
    elsewhere = RunFiles(tmp_path / "other.pid")
    recorded.write(elsewhere, [layer(tmp_path, "start", "--port", "99")], directory)
    files.options.symlink_to(elsewhere.options)
    with pytest.raises(UserError, match=f"{files.options}: it is a symbolic link"):
        recorded.read(files)


def test_an_unreadable_record_is_an_error_naming_the_file(files: RunFiles) -> None:
    files.options.mkdir()
    with pytest.raises(UserError, match=str(files.options)):
        recorded.read(files)


def test_more_layers_than_the_limit_are_not_written(tmp_path: pathlib.Path,
                                                    directory: DirectoryHandle,
                                                    files: RunFiles) -> None:
    most = [layer(tmp_path, "start", "--port", str(n)) for n in range(recorded.MAX_LAYERS)]
    recorded.write(files, most, directory)
    assert recorded.read(files) == tuple(most)
    with pytest.raises(UserError, match=f"{recorded.MAX_LAYERS} option changes are recorded"):
        recorded.write(files, [*most, layer(tmp_path, "reload", "--port", "7")], directory)
    assert recorded.read(files) == tuple(most), "the record is left as it was"


def test_command_lines_too_long_to_record_are_not_written(tmp_path: pathlib.Path,
                                                          directory: DirectoryHandle,
                                                          files: RunFiles) -> None:
    recorded.write(files, [layer(tmp_path, "start")], directory)
    huge = layer(tmp_path, "start", "--logfile", "x" * recorded.OPTIONS_BYTES)
    with pytest.raises(UserError, match=f"{files.options} are too long"):
        recorded.write(files, [huge], directory)
    assert recorded.read(files) == (layer(tmp_path, "start"),)


# Replaying it


@pytest.fixture
def here(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """The directory ``restart`` is run in: its ``reverserd.pid`` names the daemon."""
    directory = tmp_path / "here"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


@pytest.mark.parametrize("verb", cli.REPLAYING_VERBS)
def test_the_recorded_options_are_used_and_a_given_one_overrides_its_own(
        here: pathlib.Path, verb: str) -> None:
    started = layer(here, "start", "--port", "0", "--max-line-length", "100")
    record(here, started)
    given, settings = cli.parse_command([verb, "--port", "5000"])
    assert given == verb
    assert (settings.port, settings.max_line_length) == (5000, 100)
    assert settings.layers == (started, layer(here, verb, "--port", "5000")), \
        "the change is recorded on top"
    _, settings = cli.parse_command([verb])
    assert (settings.port, settings.max_line_length) == (0, 100)
    assert settings.layers == (started,), "nothing new to record"


def test_later_layers_override_earlier_ones_option_by_option(here: pathlib.Path) -> None:
    record(here, layer(here, "start", "--port", "0", "--max-line-length", "100",
                       "--log-level", "warning"),
           layer(here, "reload", "--max-line-length", "50"),
           layer(here, "restart", "--log-level", "debug"))
    _, settings = cli.parse_command(["restart", "--idle-timeout", "9"])
    assert (settings.port, settings.max_line_length, settings.log_level,
            settings.idle_timeout) == (0, 50, "debug", 9)


def test_naming_the_pidfile_alone_records_nothing_new(tmp_path: pathlib.Path,
                                                      here: pathlib.Path) -> None:
    started = layer(tmp_path, "start", "--max-line-length", "100")
    record(tmp_path, started)
    _, settings = cli.parse_command(["restart", "--pidfile", str(tmp_path / "reverserd.pid")])
    assert settings.max_line_length == 100
    assert settings.pidfile == tmp_path / "reverserd.pid"
    assert settings.layers == (started,)


def test_a_given_listen_replaces_every_recorded_one(here: pathlib.Path) -> None:
    record(here, layer(here, "start", "--listen", "tcp:1234", "--listen", "tcp:1235",
                       "--max-line-length", "100"))
    _, settings = cli.parse_command(["restart"])
    assert settings.listen == (descriptions.parse("tcp:1234"), descriptions.parse("tcp:1235"))
    _, settings = cli.parse_command(["restart", "--listen", "tcp:4321"])
    assert settings.listen == (descriptions.parse("tcp:4321"),)
    assert settings.max_line_length == 100


def test_a_given_listen_replaces_a_recorded_port_and_the_reverse(
        here: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    record(here, layer(here, "start", "--port", "0", "--interface", "::1"))
    _, settings = cli.parse_command(["reload", "--listen", "tcp:4321"])
    assert settings.listen == (descriptions.parse("tcp:4321"),)
    assert "ignoring" not in capsys.readouterr().err  # the recorded --port is not in the way
    record(here, layer(here, "start", "--listen", "tcp:1234", "--interface", "::1"))
    _, settings = cli.parse_command(["restart", "--port", "5000"])
    assert (settings.listen, settings.port, settings.interface) == ((), 5000, "::1")


def test_a_given_logfile_cancels_a_recorded_syslog(here: pathlib.Path) -> None:
    record(here, layer(here, "start", "--syslog"))
    _, settings = cli.parse_command(["restart", "--logfile", "new.log"])
    assert settings.syslog is False
    assert settings.logfile == here / "new.log"


def test_a_given_syslog_cancels_a_recorded_logfile(here: pathlib.Path) -> None:
    record(here, layer(here, "start", "--logfile", "old.log"))
    _, settings = cli.parse_command(["restart"])
    assert (settings.syslog, settings.logfile) == (False, here / "old.log")
    _, settings = cli.parse_command(["restart", "--syslog"])
    assert (settings.syslog, settings.logfile) == (True, None)


def test_a_recorded_change_of_log_destination_stays_changed(here: pathlib.Path) -> None:
    record(here, layer(here, "start", "--syslog"),
           layer(here, "restart", "-l", "now.log"))
    _, settings = cli.parse_command(["reload"])
    assert (settings.syslog, settings.logfile) == (False, here / "now.log")


def test_recorded_relative_paths_are_taken_from_the_directory_they_were_given_in(
        tmp_path: pathlib.Path, here: pathlib.Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "cfg.toml").write_text("max-line-length = 9\n")
    record(origin, layer(origin, "start", "--logfile", "logs/x.log", "-y", "app.py",
                         "-f", "app-shutdown.json", "--rundir", "run",
                         "--config", "cfg.toml"))
    _, settings = cli.parse_command(["restart", "--pidfile", str(origin / "reverserd.pid")])
    assert settings.logfile == origin / "logs/x.log"
    assert settings.application_file == origin / "app.py"
    assert settings.state_file == origin / "app-shutdown.json"
    assert settings.rundir == origin / "run"
    assert settings.max_line_length == 9, "the config file is found where it was given"
    assert settings.pidfile == origin / "reverserd.pid"


def test_each_layer_keeps_its_own_directory(tmp_path: pathlib.Path, here: pathlib.Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    record(here, layer(first, "start", "--logfile", "a.log", "-y", "app.py"),
           layer(second, "restart", "--logfile", "b.log"))
    _, settings = cli.parse_command(["restart"])
    assert settings.logfile == second / "b.log"
    assert settings.application_file == first / "app.py"


def test_a_given_relative_path_is_taken_from_the_current_directory(
        tmp_path: pathlib.Path, here: pathlib.Path) -> None:
    record(here, layer(tmp_path, "start", "--logfile", "old.log"))
    _, settings = cli.parse_command(["restart", "--logfile", "new.log"])
    assert settings.logfile == here / "new.log"


def test_recorded_relative_listener_paths_are_taken_from_their_directory(
        tmp_path: pathlib.Path, here: pathlib.Path) -> None:
    """A Unix socket or TLS key named relative to where ``start`` ran is the
    same file when ``restart`` runs elsewhere."""
    origin = tmp_path / "origin"
    origin.mkdir()
    record(here, layer(origin, "start", "--listen", "unix:r.sock",
                       "--listen", "ssl:0:privateKey=key.pem"))
    _, settings = cli.parse_command(["restart"])
    assert settings.listen == (descriptions.parse("unix:r.sock", origin),
                               descriptions.parse("ssl:0:privateKey=key.pem", origin))


@pytest.mark.parametrize(
    "arguments",
    [
        ("start", "--json", "--max-line-length", "100"),
        ("start", "--ready-fd", "3", "--max-line-length", "100"),
        ("--foreground", "--max-line-length", "100"),
        ("run", "-n", "--max-line-length", "100"),
        ("status", "--json", "--max-line-length", "100"),
    ],
    ids=["json", "ready-fd", "foreground", "run-n", "status-json"],
)
def test_what_to_do_is_never_replayed(here: pathlib.Path, arguments: tuple[str, ...]) -> None:
    record(here, layer(here, *arguments))
    for verb in cli.REPLAYING_VERBS:
        given, settings = cli.parse_command([verb])
        assert given == verb
        assert settings.max_line_length == 100
        assert (settings.json, settings.ready_fd) == (False, None)


def test_with_no_record_restart_uses_only_what_is_given(here: pathlib.Path) -> None:
    defaults = config.Config()
    _, settings = cli.parse_command(["restart", "--max-line-length", "7"])
    assert (settings.port, settings.max_line_length) == (defaults.port, 7)
    assert settings.layers == (layer(here, "restart", "--max-line-length", "7"),)
    _, settings = cli.parse_command(["restart"])
    assert (settings.port, settings.max_line_length) == (defaults.port,
                                                          defaults.max_line_length)
    assert settings.layers == ()


def test_start_replays_nothing_and_records_itself_afresh(here: pathlib.Path) -> None:
    record(here, layer(here, "start", "--max-line-length", "100"))
    _, settings = cli.parse_command(["start", "--port", "0"])
    assert settings.max_line_length == config.Config().max_line_length
    assert settings.layers == (layer(here, "start", "--port", "0"),)


def test_another_pidfiles_record_is_not_used(tmp_path: pathlib.Path, here: pathlib.Path) -> None:
    record(here, layer(here, "start", "--max-line-length", "100"))
    other = tmp_path / "other"
    other.mkdir()
    _, settings = cli.parse_command(["restart", "--pidfile", str(other / "reverserd.pid")])
    assert settings.max_line_length == config.Config().max_line_length


def test_a_damaged_record_stops_restart_rather_than_forgetting_the_options(
        here: pathlib.Path) -> None:
    (here / "reverserd.pid.options").write_text("{\"layers\": 3}")
    for verb in cli.REPLAYING_VERBS:
        with pytest.raises(UserError, match=f"^cannot use {here / 'reverserd.pid.options'}"):
            cli.parse_command([verb])


def test_a_recorded_command_line_no_longer_valid_is_a_usage_error(here: pathlib.Path) -> None:
    record(here, layer(here, "start", "--no-such-option", "1"))
    with pytest.raises(UsageError, match="^the recorded command line "
                                         "'start --no-such-option 1' is no longer valid: "):
        cli.parse_command(["restart"])


def test_the_record_is_found_through_the_current_directory_at_parse_time(
        tmp_path: pathlib.Path, here: pathlib.Path) -> None:
    """``restart`` with no ``--pidfile`` speaks to ``./reverserd.pid``, so its record."""
    record(here, layer(tmp_path, "start", "--max-line-length", "100"))
    assert os.getcwd() == str(here)
    assert cli.parse_command(["restart"])[1].max_line_length == 100
