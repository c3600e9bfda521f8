"""``--config FILE``: TOML options under the command line's."""

from __future__ import annotations

import os
import pathlib
import re

import pytest

from reverserd import cli
from reverserd.config import Config
from reverserd.errors import UsageError

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "reverserd.toml"


def parse(tmp_path: pathlib.Path, toml: str, *argv: str) -> tuple[str, Config]:
    path = tmp_path / "etc" / "reverserd.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(toml)
    return cli.parse_command(["--config", str(path), *argv])


def test_the_file_sets_options_and_the_command_line_overrides_them(
        tmp_path: pathlib.Path) -> None:
    verb, config = parse(tmp_path, 'port = 2424\nlog-level = "warning"\n'
                         'pidfile = "run/r.pid"\numask = 0o027\nuser = 65534\n'
                         "log-max-bytes = 0\nsyslog = true\n",
                         "start", "--port", "2525")
    assert verb == "start"
    assert config.port == 2525
    assert config.log_level == "warning"
    assert config.pidfile == tmp_path / "etc" / "run" / "r.pid"
    assert config.umask == 0o027
    assert config.user == "65534"
    assert (config.log_max_bytes, config.syslog) == (0, True)


def test_a_command_line_option_replaces_its_opposite_in_the_file(
        tmp_path: pathlib.Path) -> None:
    _, config = parse(tmp_path, "syslog = true\nsave = true\n", "start", "--logfile", "x.log",
                      "-o")
    assert (config.syslog, config.logfile, config.save) == (False, pathlib.Path("x.log").absolute(),
                                                            False)
    with pytest.raises(UsageError, match="keys 'logfile' and 'syslog' exclude each other"):
        parse(tmp_path, 'syslog = true\nlogfile = "x.log"\n', "start")


@pytest.mark.parametrize(("toml", "message"), [
    ("prot = 1\n", r"unknown key 'prot' \(did you mean 'port'\?\)"),
    ("log_level = 'info'\n", r"unknown key 'log_level' \(did you mean 'log-level'\?\)"),
    ("foreground = true\n", r"unknown key 'foreground'"),
    ('port = "http"\n', r"key 'port': expected a port number from 0 to 65535, got 'http'"),
    ("port = true\n", r"key 'port': expected a number, got True"),
    ("port = 70000\n", r"key 'port': expected a port number from 0 to 65535, got '70000'"),
    ("syslog = 'yes'\n", r"key 'syslog': expected true or false, got 'yes'"),
    ("interface = 127\n", r"key 'interface': expected a string, got 127"),
    ("pidfile = ['a']\n", r"key 'pidfile': expected a string, got list"),
    ("umask = '999'\n", r"key 'umask': expected an octal mask"),
    ("user = 1.5\n", r"key 'user': expected a name or a number, got 1.5"),
    ("port = \n", r"not valid TOML"),
    ("loop = 'trio'\n", r"key 'loop': expected one of auto, asyncio, uvloop, got 'trio'"),
    ("workers = 0\n", r"key 'workers': expected 'auto' or a number from 1 to 256, got '0'"),
    ("workers = 1.5\n", r"key 'workers': expected 'auto' or a number, got 1.5"),
])
def test_bad_keys_and_values_are_usage_errors_naming_the_key(tmp_path: pathlib.Path,
                                                            toml: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        parse(tmp_path, toml, "start")
    assert str(raised.value).startswith(f"{tmp_path / 'etc' / 'reverserd.toml'}: ")
    assert raised.value.exit_status == 2


def test_a_missing_config_file_is_one_line(tmp_path: pathlib.Path, capsys) -> None:
    assert cli.main(["--config", str(tmp_path / "absent.toml"), "start"]) == 1
    assert capsys.readouterr().err == (f"reverserd: cannot read config file "
                                       f"{tmp_path / 'absent.toml'}: no such file\n")


def test_a_bad_key_exits_2_with_one_line(tmp_path: pathlib.Path, capsys) -> None:
    path = tmp_path / "r.toml"
    path.write_text("prot = 1\n")
    assert cli.main(["--config", str(path), "status"]) == 2
    assert capsys.readouterr().err == (f"reverserd: {path}: unknown key 'prot' "
                                       "(did you mean 'port'?)\n")


def example_settings() -> dict[str, str]:
    """Each commented-out ``key = value`` line of the example, uncommented."""
    found = {}
    for line in EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"# ([a-z-]+) = (.*?)(\s+# .*)?", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_the_example_shows_every_option() -> None:
    keys = set(cli.config_file_keys(cli.build_parser()))
    assert set(example_settings()) == keys


def test_the_example_is_valid_and_its_defaults_are_the_real_ones(
        tmp_path: pathlib.Path) -> None:
    settings = example_settings()
    example_only = {"python", "file", "pidfile", "rundir", "user", "group", "chroot",
                    "logfile", "umask", "save"}
    defaults = "\n".join(f"{key} = {value}" for key, value in settings.items()
                         if key not in example_only | {"syslog", "no-save"})
    assert parse(tmp_path, defaults, "start") == parse(tmp_path, "", "start")
    (tmp_path / "app.py").touch()
    everything = "\n".join(f"{key} = {value}" for key, value in settings.items()
                           if key not in ("no-save", "syslog"))
    _, config = parse(tmp_path, everything, "start")
    assert (config.user, config.group, config.umask) == ("nobody", "nogroup", 0o077)


def test_verbs_and_help_stay_on_the_command_line() -> None:
    keys = cli.config_file_keys(cli.build_parser())
    assert not {"config", "help", "version", "foreground", "verb"} & set(keys)



def test_the_readme_twistd_table_names_real_options() -> None:
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    table = readme[readme.index("### Coming from twistd"):readme.index("Left out on purpose")]
    known = {name for action in cli.build_parser()._actions for name in action.option_strings}
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    named = {token for _, ours in rows for token in re.findall(r"`(-[-\w]+)", ours)}
    assert {"-n", "-l", "-y", "-f", "-o", "-u", "-g", "-d", "--pidfile", "--syslog",
            "--prefix", "--chroot", "--umask"} <= named
    assert named <= known, named - known


def test_workers_and_loop_come_from_the_file_too(tmp_path: pathlib.Path) -> None:
    _, config = parse(tmp_path, 'workers = "auto"\nloop = "asyncio"\n', "start")
    assert (config.workers, config.loop) == (len(os.sched_getaffinity(0)), "asyncio")
    _, config = parse(tmp_path, "workers = 3\n", "start", "--workers", "2")
    assert config.workers == 2
