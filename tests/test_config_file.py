"""``--config FILE``: TOML options under the command line's."""

from __future__ import annotations

import os
import pathlib
import re

import pytest

from reverserd import cli, config_file
from reverserd.config import Config
from reverserd.errors import UsageError
from reverserd.persist import Unreadable, read_regular_file

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
    ("start-timeout = 1e308\n", r"key 'start-timeout': expected a number of seconds, above 0, "
     r"up to 86400, got '1e\+308'"),
    ("start-timeout = 0\n", r"key 'start-timeout': expected a number of seconds, above 0"),
    ("stop-timeout = inf\n", r"key 'stop-timeout': expected a number of seconds, 0 to 86400, "
     r"got 'inf'"),
    ("shutdown-timeout = nan\n", r"key 'shutdown-timeout': .* got 'nan'"),
    ("idle-timeout = 0.5\n", r"key 'idle-timeout': expected a number of seconds, 0 \(off\) or "
     r"1 to 86400, got '0.5'"),
    ("write-timeout = 86401\n", r"key 'write-timeout': .*1 to 86400, got '86401'"),
    ("worker-timeout = -1\n", r"key 'worker-timeout': .*1 to 86400, got '-1'"),
    ("max-connections = 0\n", r"key 'max-connections': expected a number from 1 to 1000000"),
    ("max-connections-per-peer = 1000001\n",
     r"key 'max-connections-per-peer': expected a number from 0 to 1000000, got '1000001'"),
    ("backlog = 65536\n", r"key 'backlog': expected a number from 1 to 65535, got '65536'"),
    ("backlog = 10.0\n", r"key 'backlog': expected a number from 1 to 65535, got '10.0'"),
    ("max-line-length = 16777217\n", r"key 'max-line-length': .*from 1 to 16777216"),
    ("log-max-bytes = 1099511627777\n", r"key 'log-max-bytes': .*from 0 to 1099511627776"),
    ("log-backups = 1001\n", r"key 'log-backups': expected a number from 1 to 1000"),
    (f"port = {'9' * 4000}\n", r"key 'port': expected a port number from 0 to 65535, "
     r"got '9{60}'\.\.\. \(4000 characters\)$"),
    (f"port = {'9' * 5000}\n", r"not valid TOML: a number of more than 4300 digits$"),
    (f"interface = '{'a' * 64}.example.com'\n", r"key 'interface': expected an IP address or "
     r"a host name \(labels of 1 to 63 letters, digits or '-', 253 characters in all\)"),
    ("interface = ''\n", r"key 'interface': expected an IP address or a host name"),
    (f"user = '{'u' * 300}'\n", r"key 'user': expected a name of 1 to 255 characters"),
    (f"group = {2**32}\n", r"key 'group': expected an id from 0 to 4294967294"),
    (f"pidfile = '{'p' * 4097}'\n", r"key 'pidfile': expected a path of 1 to 4096 bytes"),
    ('logfile = "a\\u0000b"\n', r"key 'logfile': expected a path of 1 to 4096 bytes without "
     r"NUL, got 'a\\x00b'"),
    ("rundir = ''\n", r"key 'rundir': expected a path of 1 to 4096 bytes"),
    (f"syslog-prefix = '{'p' * 65}'\n", r"key 'syslog-prefix': .*at most 64 characters"),
    (f"syslog-address = '/{'a' * 107}'\n", r"key 'syslog-address': .*1 to 107 bytes"),
    (f"'{'k' * 100000}' = 1\n", r"unknown key 'k{60}'\.\.\. \(100000 characters\)$"),
    (f"interface = {'1' * 4000}\n", r"key 'interface': expected a string, got 1{60}\.\.\. "
     r"\(4000 digits\)$"),
    ("port = " + "[" * 5000 + "]" * 5000 + "\n", r"not valid TOML: nested too deeply$"),
    ("port = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n", r"not valid TOML: nested too deeply$"),
])
def test_bad_keys_and_values_are_usage_errors_naming_the_key(tmp_path: pathlib.Path,
                                                            toml: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        parse(tmp_path, toml, "start")
    assert str(raised.value).startswith(f"{tmp_path / 'etc' / 'reverserd.toml'}: ")
    assert raised.value.exit_status == 2
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 400


def test_the_limits_and_the_backlog_come_from_the_file_too(tmp_path: pathlib.Path) -> None:
    _, config = parse(tmp_path, "max-connections = 50\nmax-connections-per-peer = 3\n"
                      "idle-timeout = 0\nwrite-timeout = 2.5\nbacklog = 64\n"
                      'worker-timeout = "7"\nstart-timeout = 0.5\ncompact-after = 12\n', "start",
                      "--write-timeout", "4")
    assert (config.max_connections, config.max_connections_per_peer, config.idle_timeout,
            config.write_timeout, config.backlog, config.worker_timeout,
            config.start_timeout, config.compact_after) == (50, 3, 0.0, 4.0, 64, 7.0, 0.5, 12)


def test_a_config_file_that_is_a_fifo_is_refused_at_once(tmp_path: pathlib.Path,
                                                          capsys) -> None:
    fifo = tmp_path / "reverserd.toml"
    os.mkfifo(fifo)
    assert cli.main(["--config", str(fifo), "status"]) == 1
    assert capsys.readouterr().err == f"reverserd: cannot read config file {fifo}: it is a FIFO\n"


@pytest.mark.parametrize(("path", "kind"), [("/dev/null", "a character device"),
                                            ("/", "a directory")])
def test_a_config_file_must_be_a_regular_file(path: str, kind: str, capsys) -> None:
    assert cli.main(["--config", path, "status"]) == 1
    assert capsys.readouterr().err == f"reverserd: cannot read config file {path}: it is {kind}\n"


def test_a_config_file_over_1_mb_is_refused_unread(tmp_path: pathlib.Path, capsys) -> None:
    path = tmp_path / "r.toml"
    line = "port = 0\n"
    path.write_text(line + "#" * (config_file.MAX_BYTES - len(line) - 1) + "\n")
    assert path.stat().st_size == config_file.MAX_BYTES == 1024 * 1024
    assert cli.parse_command(["--config", str(path), "start"])[1].port == 0
    with path.open("a") as more:
        more.write("#")
    assert cli.main(["--config", str(path), "status"]) == 1
    assert capsys.readouterr().err == (f"reverserd: cannot read config file {path}: it is "
                                       "larger than 1048576 bytes\n")


def test_read_regular_file_reads_at_most_one_byte_past_the_limit(tmp_path: pathlib.Path,
                                                                 monkeypatch) -> None:
    path = tmp_path / "big"
    with path.open("wb") as big:
        big.truncate(1 << 40)  # a terabyte, sparse
    asked: list[int] = []
    real_read = os.read

    def read(fd: int, size: int) -> bytes:
        asked.append(size)
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", read)
    with pytest.raises(Unreadable, match="larger than 100 bytes"):
        read_regular_file(path, 100)
    assert sum(asked) <= 101

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
                    "logfile", "umask", "save", "log-format"}
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


def test_listeners_come_from_the_file_as_a_list_relative_to_it(tmp_path: pathlib.Path) -> None:
    _, config = parse(tmp_path, 'listen = ["tcp:0", "unix:r.sock:mode=600"]\n'
                                'proxy-from = "10.0.0.0/8"', "run")
    assert [endpoint.description for endpoint in config.listen] == [
        "tcp:0:interface=127.0.0.1", f"unix:{tmp_path}/etc/r.sock:mode=600"]
    assert [str(network) for network in config.proxy_from] == ["10.0.0.0/8"]
    _, config = parse(tmp_path, 'listen = ["tcp:0"]', "run", "--listen", "tcp6:0")
    assert [endpoint.description for endpoint in config.listen] == ["tcp6:0:interface=\\:\\:1"]


@pytest.mark.parametrize("toml, message", [
    ('listen = "tcp:0"', "expected a list of strings"),
    ("listen = [1]", "expected a list of strings"),
    ('listen = ["tcp:0:colour=red"]', "unknown key 'colour'"),
    ('listen = ["tcp:5555", "tcp:5555"]', "on the same address"),
])
def test_bad_listeners_in_the_file_are_usage_errors(tmp_path: pathlib.Path, toml: str,
                                                    message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(tmp_path, toml, "run")
