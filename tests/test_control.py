"""How the operator's verbs word things."""

from __future__ import annotations

import pytest

from reverserd.control import format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (192, "3m12s"), (3600, "1h0m0s"), (7205, "2h0m5s"),
     (86400 + 3 * 3600, "1d3h0m0s"), (400 * 86400, "400d0h0m0s")],
)
def test_uptime_is_compact_and_leaves_out_leading_zero_units(seconds: float,
                                                              text: str) -> None:
    assert format_duration(seconds) == text
