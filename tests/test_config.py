"""Option validation: what is accepted, and the message for what is not."""

from __future__ import annotations

import math
import os
import pathlib
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reverserd import cli, config, limits
from reverserd.application import reverser_application
from reverserd.errors import UsageError
from reverserd.listening import TCPServer

#: Every whole-number option: its parser and the range README documents.
WHOLE_NUMBERS = {
    "--port": (config.parse_port, 0, 65535),
    "--max-line-length": (config.parse_max_line_length, 1, 16_777_216),
    "--log-max-bytes": (config.parse_log_max_bytes, 0, 2**40),
    "--log-backups": (config.parse_log_backups, 1, 1000),
    "--max-connections": (config.parse_max_connections, 1, 1_000_000),
    "--max-connections-per-peer": (config.parse_max_connections_per_peer, 0, 1_000_000),
    "--backlog": (config.parse_backlog, 1, 65535),
    "--compact-after": (config.parse_compact_after, 0, 1_000_000),
}
#: Every duration option: its parser, its lowest value, whether that value
#: itself is refused, and whether 0 means "off".
DURATIONS = {
    "--shutdown-timeout": (config.parse_shutdown_timeout, 0.0, False, False),
    "--start-timeout": (config.parse_start_timeout, 0.0, True, False),
    "--stop-timeout": (config.parse_stop_timeout, 0.0, False, False),
    "--idle-timeout": (config.parse_idle_timeout, 1.0, False, True),
    "--write-timeout": (config.parse_write_timeout, 1.0, False, False),
    "--worker-timeout": (config.parse_worker_timeout, 1.0, False, False),
}


@given(st.integers(0, 65535))
def test_every_port_number_is_accepted(port: int) -> None:
    assert config.parse_port(str(port)) == port


@pytest.mark.parametrize("text", ["65536", "70000", "-1", "abc", "", "80.0", " 80", "٣",
                                  "9" * 5000])
def test_bad_ports_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="port number from 0 to 65535"):
        config.parse_port(text)


@pytest.mark.parametrize("option", WHOLE_NUMBERS)
def test_each_whole_number_takes_exactly_its_range(option: str) -> None:
    parse, low, high = WHOLE_NUMBERS[option]
    assert (parse.low, parse.high) == (low, high)
    assert parse(str(low)) == low
    assert parse(str(high)) == high
    assert parse("0" * 30 + str(high)) == high
    for text in (str(high + 1), str(low - 1), "1" * 5000, "1e3", "", "+1"):
        with pytest.raises(ValueError, match=f"from {low} to {high}, got '") as raised:
            parse(text)
        assert len(str(raised.value)) < 200


@given(st.sampled_from(sorted(WHOLE_NUMBERS)), st.text())
def test_a_whole_number_parser_returns_a_value_in_range_or_says_why(option: str,
                                                                  text: str) -> None:
    parse, low, high = WHOLE_NUMBERS[option]
    try:
        value = parse(text)
    except ValueError as error:
        assert "\n" not in str(error) and len(str(error)) < 300
    else:
        assert low <= value <= high


@pytest.mark.parametrize("option", DURATIONS)
def test_each_duration_takes_up_to_a_day(option: str) -> None:
    parse, low, above_low, zero_is_off = DURATIONS[option]
    assert parse("86400") == 86400.0 == limits.MAX_SECONDS
    assert parse("2.5") == 2.5
    refused = ["86400.5", "1e308", "1e309", "nan", "inf", "-inf", "-1", "soon", ""]
    if above_low:
        refused.append(str(low))
    else:
        assert parse(str(low)) == low
    if zero_is_off:
        assert parse("0") == 0.0
        refused.append("0.5")
    for text in refused:
        with pytest.raises(ValueError, match=f"number of seconds, {re.escape(parse.range)}, "
                                             f"got '"):
            parse(text)


@given(st.sampled_from(sorted(DURATIONS)),
       st.one_of(st.text(), st.floats(allow_nan=True, allow_infinity=True).map(repr)))
def test_a_duration_parser_returns_a_finite_value_in_range_or_says_why(option: str,
                                                                     text: str) -> None:
    parse, low, above_low, zero_is_off = DURATIONS[option]
    try:
        seconds = parse(text)
    except ValueError as error:
        assert "\n" not in str(error) and len(str(error)) < 300
    else:
        assert math.isfinite(seconds) and seconds <= limits.MAX_SECONDS
        assert seconds > low if above_low else seconds >= low or (zero_is_off and seconds == 0)


def test_the_ranges_read_as_the_help_shows_them() -> None:
    assert config.parse_start_timeout.range == "above 0, up to 86400"
    assert config.parse_idle_timeout.range == "0 (off) or 1 to 86400"
    assert config.parse_stop_timeout.range == "0 to 86400"
    assert config.parse_backlog.range == "1 to 65535"


def help_text() -> str:
    return " ".join(cli.build_parser().format_help().split())


@pytest.mark.parametrize("option", [*WHOLE_NUMBERS, *DURATIONS])
def test_help_shows_each_numeric_option_s_range_and_default(option: str) -> None:
    parse = {**WHOLE_NUMBERS, **DURATIONS}[option][0]
    default = getattr(config.Config(), option[2:].replace("-", "_"))
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    action = next(action for action in cli.build_parser()._actions
                  if option in action.option_strings)
    assert action.default == default
    assert action.help is not None and action.help.endswith(
        f" ({parse.range}; default: {shown})"), action.help
    assert f" ({parse.range}; default: {shown})" in help_text()


def test_help_groups_the_limits_and_shows_the_workers_range() -> None:
    text = help_text()
    assert "limits (per serving process; with --workers, per worker): --max-connections N" \
        in text
    assert "(1 to 256 or auto; default: 1) --worker-timeout SECONDS" in text
    assert "--port PORT" in text and "--backlog N" in text.split("the daemon:")[0]


def test_the_limit_options_have_the_documented_defaults() -> None:
    defaults = config.Config()
    assert (defaults.max_connections, defaults.max_connections_per_peer, defaults.idle_timeout,
            defaults.write_timeout, defaults.backlog, defaults.worker_timeout,
            defaults.compact_after) == (10_000, 0, 300.0, 30.0, 1024, 30.0, 256)


def test_the_new_options_reach_the_config() -> None:
    _, settings = cli.parse_command([
        "start", "--max-connections", "7", "--max-connections-per-peer", "2",
        "--idle-timeout", "0", "--write-timeout", "5", "--backlog", "9",
        "--worker-timeout", "3.5", "--compact-after", "0"])
    assert (settings.max_connections, settings.max_connections_per_peer,
            settings.idle_timeout, settings.write_timeout, settings.backlog,
            settings.worker_timeout, settings.compact_after) == (7, 2, 0.0, 5.0, 9, 3.5, 0)


def test_the_built_in_reverser_listens_with_the_backlog_asked_for() -> None:
    server = reverser_application(config.Config(backlog=77)).get_service_named("reverser")
    assert isinstance(server, TCPServer) and server.backlog == 77


def test_backlog_is_a_built_in_reverser_option(tmp_path: pathlib.Path, capsys) -> None:
    (tmp_path / "app.py").touch()
    cli.parse_options(["-y", str(tmp_path / "app.py"), "--backlog", "5"])
    assert "ignoring --backlog: the application from" in capsys.readouterr().err


def test_a_start_timeout_of_1e308_is_a_usage_error(capsys) -> None:
    assert cli.main(["start", "--start-timeout", "1e308"]) == 2
    assert capsys.readouterr().err == (
        "reverserd: argument --start-timeout: expected a number of seconds, above 0, up to "
        "86400, got '1e308'\n")


def test_log_levels_are_case_insensitive() -> None:
    assert config.parse_log_level("DEBUG") == "debug"
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        config.parse_log_level("verbose")


@given(st.integers(0, 0o777))
def test_every_umask_is_accepted_in_octal(mask: int) -> None:
    assert config.parse_umask(f"{mask:03o}") == mask
    assert config.parse_umask(f"0o{mask:o}") == mask


@pytest.mark.parametrize("text", ["", "8", "0999", "1000", "-22", "0x1f", "o22", "0o"])
def test_bad_umasks_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="octal mask from 000 to 777"):
        config.parse_umask(text)


def test_workers_are_1_to_256_or_auto_which_is_never_more() -> None:
    assert config.parse_workers("256") == 256
    assert 1 <= config.parse_workers("auto") == min(len(os.sched_getaffinity(0)), 256)
    for text in ("0", "257", "9" * 5000, "two"):
        with pytest.raises(ValueError, match="'auto' or a number from 1 to 256"):
            config.parse_workers(text)


LABEL = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=63).filter(
    lambda label: not label.startswith("-") and not label.endswith("-"))


@given(st.lists(LABEL, min_size=1, max_size=4).map(".".join).filter(lambda n: len(n) <= 253))
def test_every_host_name_is_accepted_and_the_resolver_can_encode_it(name: str) -> None:
    assert config.parse_interface(name) == name
    name.encode("idna")  # what getaddrinfo does first, and where a bad name raised


@given(st.one_of(st.ip_addresses().map(str), st.just("::"), st.just("0.0.0.0"),
                 st.just("fe80::1%lo"), st.just("fe80::1%eth0.100"), st.just("fe80::1%2")))
def test_every_ip_address_is_accepted(address: str) -> None:
    assert config.parse_interface(address) == address


@pytest.mark.parametrize("text", ["a" * 64, f"{'a' * 64}.example.com", "-a", "a-", "a..b",
                                  ".a", "", ".", "a b", "[::1]", "caf\u00e9", "a_b",
                                  ".".join(["a" * 63] * 4), "127.0.0.1:80", "a\x00"])
def test_bad_interfaces_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected an IP address or a host name .*, got '"):
        config.parse_interface(text)


@given(st.one_of(st.text(), st.ip_addresses(v=6).map(str).flatmap(
    lambda address: st.text().map(lambda scope: f"{address}%{scope}"))))
def test_an_interface_is_accepted_or_refused_with_a_value_error(text: str) -> None:
    try:
        accepted = config.parse_interface(text)
    except ValueError as error:
        assert "\n" not in str(error) and len(str(error)) < 300
    else:
        assert accepted == text and "\0" not in text
        text.encode("idna")  # what getaddrinfo does first, and where a bad name raised


@pytest.mark.parametrize("text", ["fe80::1%" + "x" * 64, "::1%", "fe80::1%a b",
                                  "fe80::1%\x00", "1.2.3.4%lo", "::%..", "::1%eth0."])
def test_bad_scopes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected an IP address or a host name"):
        config.parse_interface(text)


def test_host_names_end_at_253_characters_and_may_end_with_a_dot() -> None:
    name = ".".join(["a" * 63] * 3 + ["a" * 61])
    assert len(name) == 253
    assert config.parse_interface(name) == name
    assert config.parse_interface(name + ".") == name + "."
    assert config.parse_interface("localhost") == "localhost"
    with pytest.raises(ValueError):
        config.parse_interface(name + "a")


def test_paths_are_1_to_4096_bytes_without_nul() -> None:
    assert config.parse_path("a" * 4096) == pathlib.Path("a" * 4096)
    assert config.parse_path("run/r.pid") == pathlib.Path("run/r.pid")
    for text in ("", "a" * 4097, "é" * 2049, "a\x00b"):
        with pytest.raises(ValueError, match="expected a path of 1 to 4096 bytes without NUL"):
            config.parse_path(text)


def test_accounts_are_names_up_to_255_characters_or_ids_the_kernel_takes() -> None:
    for text in ("nobody", "65534", "0", "a" * 255, "4294967294"):
        assert config.parse_account(text) == text
    for text in ("4294967295", "9" * 5000):
        with pytest.raises(ValueError, match="expected an id from 0 to 4294967294"):
            config.parse_account(text)
    for text in ("", "a" * 256, "a\x00"):
        with pytest.raises(ValueError, match="expected a name of 1 to 255 characters"):
            config.parse_account(text)


def test_syslog_idents_and_addresses_are_bounded() -> None:
    assert config.parse_syslog_prefix("r" * 64) == "r" * 64
    with pytest.raises(ValueError, match="at most 64 characters"):
        config.parse_syslog_prefix("r" * 65)
    assert config.parse_syslog_address("/" + "s" * 106) == "/" + "s" * 106
    for text in ("/" + "s" * 107, "", "/dev/\x00log"):
        with pytest.raises(ValueError, match="socket path of 1 to 107 bytes"):
            config.parse_syslog_address(text)


@pytest.mark.parametrize(("option", "value"), [
    ("--interface", "a" * 64), ("--pidfile", "p" * 5000), ("--user", "u" * 300),
    ("--syslog-prefix", "p" * 100), ("--syslog-address", "/" + "a" * 200),
    ("--logfile", "l" * 5000), ("--workers", "0"), ("--umask", "1777"),
])
def test_bounded_strings_on_the_command_line_are_one_line_usage_errors(option: str,
                                                                       value: str) -> None:
    with pytest.raises(UsageError, match=f"argument (-./)?{option}") as raised:
        cli.parse_command(["start", option, value])
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 300


def test_quoted_values_are_shortened() -> None:
    assert config.quoted("abc") == "'abc'"
    assert config.quoted("x" * 1000) == f"{'x' * 60!r}... (1000 characters)"


def test_a_daemon_logs_next_to_its_pidfile_unless_told_otherwise(tmp_path) -> None:
    pidfile = tmp_path / "run" / "x.pid"
    assert config.Config(pidfile=pidfile).daemon_logfile == tmp_path / "run" / "reverserd.log"
    assert config.Config(pidfile=pidfile, logfile=tmp_path / "l").daemon_logfile == \
        tmp_path / "l"
    assert config.Config(pidfile=pidfile, syslog=True).daemon_logfile is None


def test_listen_is_repeatable_and_refuses_two_listeners_on_one_address() -> None:
    _, settings = cli.parse_command(["run", "--listen", "tcp:0", "--listen", "unix:/tmp/r.sock"])
    assert [endpoint.description for endpoint in settings.listen] == [
        "tcp:0:interface=127.0.0.1", "unix:/tmp/r.sock:mode=660"]
    application = reverser_application(settings)
    assert [service.name for service in application] == ["reverser", "reverser-2"]
    with pytest.raises(UsageError, match="'tcp:5555:interface=127.0.0.1' and 'tcp:5555:"):
        cli.parse_command(["run", "--listen", "tcp:5555", "--listen", "tcp:5555"])
    with pytest.raises(UsageError, match="at most 64 listeners"):
        cli.parse_command(["run", *["--listen", "tcp:0"] * 65])


@pytest.mark.parametrize("text", ["10.0.0.0/33", "nope", ",".join(["10.0.0.0/8"] * 65)])
def test_bad_proxy_networks_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="--proxy-from"):
        cli.parse_command(["run", "--proxy-from", text])


def test_port_beside_listen_is_ignored_with_a_warning(capsys) -> None:
    _, settings = cli.parse_command(["run", "--listen", "tcp:0", "--port", "5"])
    assert [endpoint.description for endpoint in settings.listen] == ["tcp:0:interface=127.0.0.1"]
    assert capsys.readouterr().err == ("reverserd: ignoring --port: --listen says where to "
                                       "listen\n")
