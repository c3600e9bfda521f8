"""``reverse()``: by user-perceived character, never losing a byte."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reverserd import reverse


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"hello", b"olleh"),
        (b"", b""),
        ("noe\u0308l".encode(), "le\u0308on".encode()),
        ("a\U0001F468\u200D\U0001F469\u200D\U0001F467b".encode(),
         "b\U0001F468\u200D\U0001F469\u200D\U0001F467a".encode()),
        ("\U0001F1EB\U0001F1F7\U0001F1E9\U0001F1EA".encode(),
         "\U0001F1E9\U0001F1EA\U0001F1EB\U0001F1F7".encode()),
        ("\U0001F44B\U0001F3FFx".encode(), "x\U0001F44B\U0001F3FF".encode()),
        ("caf\u00e9".encode(), "\u00e9fac".encode()),
        (b"ab\xff\xfecd", b"dc\xfe\xffba"),
        (b"\xc3", b"\xc3"),
    ],
)
def test_examples(line: bytes, expected: bytes) -> None:
    assert reverse(line) == expected


@given(st.binary(max_size=200))
def test_output_holds_exactly_the_input_bytes(line: bytes) -> None:
    assert Counter(reverse(line)) == Counter(line)
    assert len(reverse(line)) == len(line)


@given(st.text(max_size=100).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_output_holds_exactly_the_input_bytes_for_text(line: bytes) -> None:
    assert Counter(reverse(line)) == Counter(line)


@given(st.binary(max_size=200).filter(bytes.isascii))
def test_reversing_ascii_twice_is_the_identity(line: bytes) -> None:
    assert reverse(reverse(line)) == line


LETTERS = st.sampled_from(list("aeiouxyzAEIOU\u00e9\u0436\u03b1\u05d0\u4e2d"))
MARKS = st.lists(st.sampled_from(["\u0301", "\u0308", "\u0323", "\u20dd"]), max_size=3)
EMOJI = st.sampled_from([
    "\U0001F468\u200D\U0001F469\u200D\U0001F467",
    "\U0001F3F3\uFE0F\u200D\U0001F308",
    "\U0001F44D\U0001F3FD",
    "\u2764\uFE0F",
    "\U0001F9D1\U0001F3FB\u200D\U0001F680",
])
FLAGS = st.sampled_from(["\U0001F1EB\U0001F1F7", "\U0001F1EF\U0001F1F5", "\U0001F1FA\U0001F1E6"])
whole_clusters = st.one_of(st.builds(lambda base, marks: base + "".join(marks), LETTERS, MARKS),
                           EMOJI, FLAGS)


@given(st.lists(whole_clusters, max_size=30))
def test_reversing_whole_clusters_twice_is_the_identity(clusters: list[str]) -> None:
    line = "".join(clusters).encode("utf-8")
    assert reverse(reverse(line)) == line


@given(st.lists(whole_clusters, min_size=1, max_size=30))
def test_reversal_reverses_the_order_of_whole_clusters(clusters: list[str]) -> None:
    line = "".join(clusters).encode("utf-8")
    assert reverse(line) == "".join(reversed(clusters)).encode("utf-8")
