"""A read's lines answered at once: by the compiled pass, or by the Python block path
where it declines or was not built; the same replies as line by line, or none."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reverserd import reversal
from reverserd.graphemes import joiner_lead_bytes, may_join
from reverserd.protocol import Reverser
from reverserd.reversal import reverse_block, reverse_read
from tests.test_protocol import exchange, expected_replies
from tests.test_reversal import SPECIAL_TEXT, line_by_line

COMMANDS = {b"quit": "handle_quit", b"go_on": "handle_go_on"}
COMMAND_LINES = frozenset([*COMMANDS, *(name + b"\r" for name in COMMANDS)])
LIMIT = 40

# Lines near every boundary the pass decides on: command names with and
# without a CR, lone CRs, lengths about the limit and about a word of eight
# bytes, characters of one to four bytes that stand alone or may join,
# every malformed UTF-8 sequence's neighbourhood, and any bytes at all.
STANDALONE = "".join(character for character in "aZ\u0080\u00e9\u0436\u05d0\u4e2d\uac00\ue000"
                     if not may_join(character.encode()))
ascii_line = st.one_of(
    st.text(st.sampled_from("ab z\r~0\t"), max_size=LIMIT + 3).map(str.encode),
    st.sampled_from([b"quit", b"quit\r", b"go_on", b"quitx", b"qui", b"\r", b"", b"\r\r"]),
    st.integers(0, LIMIT + 2).map(lambda length: bytes(range(33, 33 + length))),
)
text_line = st.one_of(
    st.text(st.sampled_from(STANDALONE + "\r"), max_size=LIMIT // 2).map(str.encode),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=15).map(str.encode),
    st.lists(SPECIAL_TEXT, max_size=10).map(lambda chars: "".join(chars).encode()),
)
MALFORMED = [b"\x80", b"\xc0\xaf", b"\xc1\xbf", b"\xc2", b"\xe0\x80\x80", b"\xe0\x9f\xbf",
             b"\xed\xa0\x80", b"\xed\x9f\xbf", b"\xef\xbf", b"\xf0\x8f\xbf\xbf",
             b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xd0", b"\xe4\xb8"]
broken_line = st.tuples(text_line, st.sampled_from(MALFORMED), text_line).map(b"".join)
any_line = st.one_of(ascii_line, text_line, broken_line, st.binary(max_size=20)).map(
    lambda line: line.replace(b"\n", b""))
blocks = st.lists(st.tuples(any_line, st.sampled_from([b"\n", b"\r\n"])), min_size=1,
                  max_size=30).map(lambda lines: b"".join(line + end for line, end in lines))


def is_command_or_over_limit(line: bytes) -> bool:
    content = line.removesuffix(b"\r")
    return content in COMMANDS or len(content) > LIMIT


def is_plain_text(block: bytes) -> bool:
    """UTF-8 whose every character is a cluster of its own, by the rules ``reverse`` keeps."""
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not may_join(block)


def reverse_plain_block(block: bytes, limit: int,
                        commands: dict[bytes, str]) -> tuple[bytes, int] | None:
    """The compiled pass alone, as the server calls it."""
    compiled = reversal.reverse_lines
    assert compiled is not None, (
        "reverserd._lines was not built: 'make test' installs gcc and the Python headers")
    return compiled(block, limit, commands, joiner_lead_bytes())


@settings(max_examples=2500, deadline=None)
@given(blocks)
def test_the_pass_answers_what_line_by_line_answers_or_declines(block: bytes) -> None:
    answered = reverse_plain_block(block, LIMIT, COMMANDS)
    lines = block[:-1].split(b"\n")
    if not is_plain_text(block) or any(map(is_command_or_over_limit, lines)):
        assert answered is None
    else:
        assert answered == (line_by_line(block), len(lines))
        # the Python block path may leave a line of nearly the limit to the line-by-line one
        assert reverse_block(block, LIMIT) in (answered, None)


@pytest.mark.parametrize("built", [True, False])
@settings(max_examples=1500, deadline=None)
@given(block=blocks)
def test_a_read_is_answered_at_once_exactly_or_left_to_the_line_by_line_path(
        built: bool, block: bytes) -> None:
    """Whichever way answers a read: declined where a line must be answered on its
    own, and otherwise the line-by-line answer, or (for text near the limit, which
    the Python block path measures roughly) a decline."""
    pass_as_built = reversal.reverse_lines
    try:
        if not built:
            reversal.reverse_lines = None
        answered = reverse_read(block, LIMIT, COMMANDS, COMMAND_LINES)
    finally:
        reversal.reverse_lines = pass_as_built
    lines = block[:-1].split(b"\n")
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        assert answered is None
        return
    if any(map(is_command_or_over_limit, lines)):
        assert answered is None
    elif block.isascii() or (built and is_plain_text(block)):
        assert answered == (line_by_line(block), len(lines))
    else:
        assert answered in ((line_by_line(block), len(lines)), None)


@pytest.mark.parametrize(("block", "replies"), [
    (b"abc\n", b"cba\n"),
    (b"abc\r\n", b"cba\r\n"),
    (b"a\rb\r\r\n", b"\rb\ra\r\n"),  # one CR ends the line; the others are its text
    (b"\r\n\n", b"\r\n\n"),
    (b"0123456789abcdefX\nquit it\n", b"Xfedcba9876543210\nti tiuq\n"),
    ("привет, мир\r\n中文字\n".encode(), "рим ,тевирп\r\n字文中\n".encode()),
    ("a\u0080\u4e00\ue000\u9fffz\n".encode(), "z\u9fff\ue000\u4e00\u0080a\n".encode()),
])
def test_examples(block: bytes, replies: bytes) -> None:
    assert reverse_plain_block(block, LIMIT, COMMANDS) == (replies, block.count(b"\n"))


@pytest.mark.parametrize("block", [
    b"ab\nquit\ncd\n", b"ab\nquit\r\n", b"go_on\n", b"ok\n\xff\n", b"x\xd0\n",
    "noe\u0308l\n".encode(), "\U0001F600\n".encode(), "\u0915\u094d\u0937\n".encode(),
    b"x" * (LIMIT + 1) + b"\n", b"x" * (LIMIT + 1) + b"\r\n", "ж".encode() * 21 + b"\n",
])
def test_the_pass_declines_commands_joining_or_broken_text_and_long_lines(block: bytes) -> None:
    assert reverse_plain_block(block, LIMIT, COMMANDS) is None


def test_a_line_of_just_the_limit_is_answered_with_or_without_its_cr() -> None:
    for ending in (b"\n", b"\r\n"):
        block = b"y" * LIMIT + ending
        assert reverse_plain_block(block, LIMIT, COMMANDS) == (block, 1)


def test_every_character_is_reversed_or_declined_as_may_join_says() -> None:
    for code_point in [*range(0x80, 0xD800), *range(0xE000, 0x110000, 61)]:
        character = chr(code_point).encode()
        block = b"<" + character + b">\n"
        expected = None if may_join(block) else (b">" + character + b"<\n", 1)
        assert reverse_plain_block(block, LIMIT, COMMANDS) == expected, hex(code_point)


@settings(max_examples=2000, deadline=None)
@given(blocks)
def test_without_joiners_the_pass_takes_exactly_what_python_decodes(block: bytes) -> None:
    """With no lead byte to decline, every well-formed character of any size is reversed
    by code point, and anything Python's decoder refuses is declined."""
    compiled = reversal.reverse_lines
    assert compiled is not None
    lines = block[:-1].split(b"\n")
    try:
        texts = [line.decode("utf-8") for line in lines]
    except UnicodeDecodeError:
        assert compiled(block, 1000, {}, b"") is None
        return
    replies = [(text[:-1][::-1] + "\r\n" if text.endswith("\r") else text[::-1] + "\n")
               for text in texts]
    assert compiled(block, 1000, {}, b"") == ("".join(replies).encode(), len(lines))


def test_the_pass_is_built_and_refuses_what_it_cannot_use() -> None:
    compiled = reversal.reverse_lines
    assert compiled is not None, (
        "reverserd._lines was not built: 'make test' installs gcc and the Python headers")
    leads = joiner_lead_bytes()
    with pytest.raises(ValueError, match="end with an LF"):
        compiled(b"no line end", LIMIT, COMMANDS, leads)
    with pytest.raises(ValueError, match="end with an LF"):
        compiled(b"", LIMIT, COMMANDS, leads)
    with pytest.raises(TypeError, match="must be bytes"):
        compiled(b"abc\n", LIMIT, {"quit": "handle_quit"}, leads)  # type: ignore[dict-item]
    for wrong in [("abc\n", LIMIT, COMMANDS, leads), (b"abc\n", "40", COMMANDS, leads),
                  (b"abc\n", LIMIT, list(COMMANDS), leads), (b"abc\n", LIMIT, COMMANDS, "")]:
        with pytest.raises(TypeError, match="takes bytes, an int, a dict and bytes"):
            compiled(*wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes bytes, an int, a dict and bytes"):
        compiled(b"abc\n", LIMIT, COMMANDS)  # type: ignore[call-arg]
    with pytest.raises(OverflowError):
        compiled(b"abc\n", 2 ** 70, COMMANDS, leads)


def test_the_server_answers_through_the_pass_and_the_same_without_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = reversal.reverse_lines
    assert compiled is not None
    answered_by_pass = []

    def counted(block: bytes, limit: int, commands: dict[bytes, str],
                leads: bytes) -> tuple[bytes, int] | None:
        answered = compiled(block, limit, commands, leads)
        answered_by_pass.append(answered is not None)
        return answered

    stream = b"".join(b"line %d\r\n" % number + "строка\n".encode() for number in range(300))
    monkeypatch.setattr(reversal, "reverse_lines", counted)
    with_pass = asyncio.run(exchange(Reverser, stream))
    assert with_pass == expected_replies(stream)
    assert answered_by_pass and all(answered_by_pass)
    answered_by_pass.clear()
    assert asyncio.run(exchange(Reverser, b"a\nquit\nb\n")) == b"a\n"
    assert answered_by_pass == [False]  # the read with a command, answered line by line
    monkeypatch.setattr(reversal, "reverse_lines", None)
    assert asyncio.run(exchange(Reverser, stream)) == with_pass
    assert reverse_read(b"ab\ncd\n", LIMIT, COMMANDS, COMMAND_LINES) == (b"ba\ndc\n", 2)
