"""The compiled pass over a read of ASCII lines: the same replies as line by line, or none."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reverserd import reversal
from reverserd.protocol import Reverser
from reverserd.reversal import reverse_ascii_block, reverse_block
from tests.test_protocol import exchange, expected_replies
from tests.test_reversal import line_by_line

COMMANDS = {b"quit": "handle_quit", b"go_on": "handle_go_on"}
LIMIT = 40

# Lines near every boundary the pass decides on: command names with and
# without a CR, lone CRs, lengths about the limit and about a word of eight
# bytes, and now and then a byte that is not ASCII.
ascii_line = st.one_of(
    st.text(st.sampled_from("ab z\r~0\t"), max_size=LIMIT + 3).map(str.encode),
    st.sampled_from([b"quit", b"quit\r", b"go_on", b"quitx", b"qui", b"\r", b"", b"\r\r"]),
    st.integers(0, LIMIT + 2).map(lambda length: bytes(range(33, 33 + length))),
)
any_byte_line = st.one_of(ascii_line, st.binary(max_size=20)).map(
    lambda line: line.replace(b"\n", b""))
blocks = st.lists(st.tuples(any_byte_line, st.sampled_from([b"\n", b"\r\n"])), min_size=1,
                  max_size=30).map(lambda lines: b"".join(line + end for line, end in lines))


def is_command_or_over_limit(line: bytes) -> bool:
    content = line.removesuffix(b"\r")
    return content in COMMANDS or len(content) > LIMIT


@settings(max_examples=3000, deadline=None)
@given(blocks)
def test_the_pass_answers_what_line_by_line_answers_or_declines(block: bytes) -> None:
    answered = reverse_ascii_block(block, LIMIT, COMMANDS)
    lines = block[:-1].split(b"\n")
    declines = not block.isascii() or any(map(is_command_or_over_limit, lines))
    if declines:
        assert answered is None
    else:
        assert answered == (line_by_line(block), len(lines))
        assert answered == reverse_block(block, LIMIT)


@pytest.mark.parametrize(("block", "replies"), [
    (b"abc\n", b"cba\n"),
    (b"abc\r\n", b"cba\r\n"),
    (b"a\rb\r\r\n", b"\rb\ra\r\n"),  # one CR ends the line; the others are its text
    (b"\r\n\n", b"\r\n\n"),
    (b"0123456789abcdefX\nquit it\n", b"Xfedcba9876543210\nti tiuq\n"),
])
def test_examples(block: bytes, replies: bytes) -> None:
    assert reverse_ascii_block(block, LIMIT, COMMANDS) == (replies, block.count(b"\n"))


@pytest.mark.parametrize("block", [
    b"ab\nquit\ncd\n", b"ab\nquit\r\n", b"go_on\n", b"caf\xc3\xa9\n", b"ok\n\xff\n",
    b"x" * (LIMIT + 1) + b"\n", b"x" * (LIMIT + 1) + b"\r\n",
])
def test_the_pass_declines_commands_text_and_long_lines(block: bytes) -> None:
    assert reverse_ascii_block(block, LIMIT, COMMANDS) is None


def test_a_line_of_just_the_limit_is_answered_with_or_without_its_cr() -> None:
    for ending in (b"\n", b"\r\n"):
        block = b"y" * LIMIT + ending
        assert reverse_ascii_block(block, LIMIT, COMMANDS) == (block, 1)


def test_the_pass_is_built_and_refuses_what_it_cannot_use() -> None:
    compiled = reversal.reverse_ascii_lines
    assert compiled is not None, (
        "reverserd._lines was not built: 'make test' installs gcc and the Python headers")
    with pytest.raises(ValueError, match="end with an LF"):
        compiled(b"no line end", LIMIT, COMMANDS)
    with pytest.raises(ValueError, match="end with an LF"):
        compiled(b"", LIMIT, COMMANDS)
    with pytest.raises(TypeError, match="must be bytes"):
        compiled(b"abc\n", LIMIT, {"quit": "handle_quit"})  # type: ignore[dict-item]


def test_the_server_answers_ascii_reads_with_the_pass_and_the_same_without_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = reversal.reverse_ascii_lines
    assert compiled is not None
    answered_by_pass = []

    def counted(block: bytes, limit: int, commands: dict[bytes, str]) -> tuple[bytes, int] | None:
        answered = compiled(block, limit, commands)
        answered_by_pass.append(answered is not None)
        return answered

    stream = b"".join(b"line %d\r\n" % number for number in range(300))
    monkeypatch.setattr(reversal, "reverse_ascii_lines", counted)
    with_pass = asyncio.run(exchange(Reverser, stream))
    assert with_pass == expected_replies(stream)
    assert answered_by_pass and all(answered_by_pass)
    answered_by_pass.clear()
    assert asyncio.run(exchange(Reverser, b"a\nquit\nb\n")) == b"a\n"
    assert answered_by_pass == [False]  # the read with a command, answered line by line
    monkeypatch.setattr(reversal, "reverse_ascii_lines", None)
    assert reverse_ascii_block(b"abc\n", LIMIT, COMMANDS) is None
    assert asyncio.run(exchange(Reverser, stream)) == with_pass
