"""A crontab-short command line: ``reverserd --config FILE VERB``."""

from __future__ import annotations

import re

from tests.e2e.daemons import DaemonDirectory
from tests.e2e.support import connect, receive_until_closed


def test_a_toml_config_with_a_flag_overriding_it(daemons: DaemonDirectory) -> None:
    etc = daemons.path / "etc"
    etc.mkdir()
    config = etc / "reverserd.toml"
    config.write_text('port = 0\npidfile = "run.pid"\nlogfile = "from-config.log"\n'
                      'log-level = "warning"\nmax-line-length = 4\n')
    started = daemons.run("--config", str(config), "start", "--log-level", "info")
    assert started.returncode == 0, started
    port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)\n", started.stdout).group(1))  # type: ignore[union-attr]
    assert (etc / "run.pid").is_file(), "relative paths are relative to the config file"
    with connect(port) as sock:
        sock.sendall(b"abcd\nabcde\n")
        assert receive_until_closed(sock) == b"dcba\n", "max-line-length comes from the file"
    log = (etc / "from-config.log").read_text()
    assert " INFO reverserd.listening: listening on " in log, "--log-level info overrides it"
    status = daemons.run("--config", str(config), "status")
    assert status.returncode == 0 and status.stdout.startswith("reverserd running: pid "), status
    stopped = daemons.run("--config", str(config), "stop")
    assert stopped.returncode == 0 and stopped.stdout.startswith("reverserd stopped: pid ")
    assert not (etc / "run.pid").exists()


def test_a_config_with_an_unknown_key_starts_nothing(daemons: DaemonDirectory) -> None:
    config = daemons.path / "reverserd.toml"
    config.write_text("port = 0\nlogfile = 'x.log'\npid-file = 'x.pid'\n")
    result = daemons.run("--config", str(config), "start")
    assert result.returncode == 2
    assert result.stderr == (f"reverserd: {config}: unknown key 'pid-file' "
                             "(did you mean 'pidfile'?)\n")
    assert sorted(p.name for p in daemons.path.iterdir()) == ["reverserd.toml"]
