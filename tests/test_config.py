"""Option validation: what is accepted, and the message for what is not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reverserd import config


@given(st.integers(0, 65535))
def test_every_port_number_is_accepted(port: int) -> None:
    assert config.parse_port(str(port)) == port


@pytest.mark.parametrize("text", ["65536", "70000", "-1", "abc", "", "80.0", " 80", "٣"])
def test_bad_ports_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="port number from 0 to 65535"):
        config.parse_port(text)


@pytest.mark.parametrize("text", ["0", "-3", "x", "1.5"])
def test_line_length_must_be_a_positive_whole_number(text: str) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        config.parse_positive_int(text)


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("2.5", 2.5), ("10", 10.0)])
def test_seconds_accepted(text: str, seconds: float) -> None:
    assert config.parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "soon", ""])
def test_seconds_refused(text: str) -> None:
    with pytest.raises(ValueError, match="number of seconds"):
        config.parse_seconds(text)


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


@pytest.mark.parametrize(("text", "count"), [("0", 0), ("1000000", 1_000_000)])
def test_byte_counts_may_be_zero(text: str, count: int) -> None:
    assert config.parse_byte_count(text) == count


@pytest.mark.parametrize("text", ["-1", "1e6", "lots"])
def test_bad_byte_counts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="whole number of bytes"):
        config.parse_byte_count(text)


def test_a_daemon_logs_next_to_its_pidfile_unless_told_otherwise(tmp_path) -> None:
    pidfile = tmp_path / "run" / "x.pid"
    assert config.Config(pidfile=pidfile).daemon_logfile == tmp_path / "run" / "reverserd.log"
    assert config.Config(pidfile=pidfile, logfile=tmp_path / "l").daemon_logfile == \
        tmp_path / "l"
    assert config.Config(pidfile=pidfile, syslog=True).daemon_logfile is None
