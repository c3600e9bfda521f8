"""``reverse()``: by user-perceived character, never losing a byte."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reverserd import reverse
from reverserd.reversal import reverse_block


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


def line_by_line(block: bytes) -> bytes:
    """What answering ``block`` one line at a time gives: each line ends as it came."""
    replies = []
    for line in block[:-1].split(b"\n"):
        if line.endswith(b"\r"):
            replies.append(reverse(line[:-1]) + b"\r\n")
        else:
            replies.append(reverse(line) + b"\n")
    return b"".join(replies)


SPECIAL_TEXT = st.sampled_from([
    "\r", "\u0301", "\u094D", "\u0915", "\u200D", "\U0001F468", "\U0001F3FD", "\U0001F1EB",
    "\u1100", "\u1161", "\u11A8", "\uAC00", "\u0600", "\u0903", "\U000E0001", "\x00", "a", "Z",
])
any_line = st.one_of(
    st.binary(max_size=30),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).map(str.encode),
    st.lists(SPECIAL_TEXT, max_size=20).map(lambda chars: "".join(chars).encode()),
    st.text(st.sampled_from("ab z\r~0"), max_size=20).map(str.encode),
).map(lambda line: line.replace(b"\n", b""))
blocks = st.lists(st.tuples(any_line, st.sampled_from([b"\n", b"\r\n"])), min_size=1,
                  max_size=25).map(lambda lines: b"".join(line + end for line, end in lines))


@settings(max_examples=2000, deadline=None)
@given(blocks)
def test_a_block_reversed_at_once_is_every_line_reversed_in_place(block: bytes) -> None:
    answered = reverse_block(block, 10_000)
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        assert answered is None
    else:
        assert answered == (line_by_line(block), block.count(b"\n"))


@pytest.mark.parametrize("text", ["ab\ncd\n", "ab\r\ncd\r\n", "ab\ncd\r\n", "\r\r\n\r\n",
                                  "é\r\nx\nж\r\r\n", "\u0301\r\n\u0301\n"])
def test_every_mix_of_line_ends_takes_the_block_path(text: str) -> None:
    block = text.encode()
    assert reverse_block(block, 100) == (line_by_line(block), block.count(b"\n"))


@pytest.mark.parametrize("line", [b"x" * 11, "é".encode() * 6])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_block_with_a_line_over_the_limit_is_left_to_the_line_by_line_path(
        line: bytes, ending: bytes) -> None:
    assert reverse_block(b"ab\n" + line + ending, 10) is None
    assert reverse_block(b"ab\n" + line[:10] + b"\n", 10) is not None
