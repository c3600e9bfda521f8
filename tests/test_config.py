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
