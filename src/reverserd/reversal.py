"""Reversing lines the way a reader would expect, one at a time or a whole read at once."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import AnyStr

from reverserd.graphemes import joiner_lead_bytes, may_join, reverse_text

LinesPass = Callable[[bytes, int, dict[bytes, str], bytes], tuple[bytes, int] | None]
reverse_lines: LinesPass | None
try:
    from reverserd._lines import reverse_lines
except ImportError:  # installed without a C compiler or Python's headers
    reverse_lines = None

# Stands for a CRLF line end while a block mixing LF and CRLF lines is
# reversed: a byte no ASCII text holds, a code point no decoded UTF-8 holds.
_BYTE_MARK = b"\xff"
_TEXT_MARK = "\ud800"
_BYTE_LINE_ENDS = re.compile(b"([\n\xff])")
_TEXT_LINE_ENDS = re.compile("([\n\ud800])")


def reverse(line: bytes) -> bytes:
    """Reverse ``line`` by user-perceived character.

    Pure ASCII (nearly all traffic) is reversed bytewise at C speed. Valid
    UTF-8 is reversed by grapheme cluster, so marks stay on their letters
    and emoji sequences stay whole. Anything else has no characters to
    respect and is reversed byte by byte. The result always holds exactly
    the bytes of ``line``.
    """
    if line.isascii():
        return line[::-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return line[::-1]
    return (reverse_text(text) if may_join(line) else text[::-1]).encode("utf-8")


def reverse_read(block: bytes, limit: int, commands: dict[bytes, str],
                 command_lines: frozenset[bytes]) -> tuple[bytes, int] | None:
    """The replies to every line of ``block`` at once, and how many lines; ``None``
    where they must be answered one by one: a line is one of ``commands`` (as
    split at LF, ``command_lines``: with its CR or without), over ``limit``
    bytes, or the block is not UTF-8.

    ASCII and text whose every character is a cluster of its own (Cyrillic,
    CJK, most scripts) take one pass of C, which also looks for command
    lines; an ASCII block it declines holds a command or an over-long line.
    Other text, and every block where that pass was not built at install,
    go to ``reverse_block``, after a search for each command's name (a look
    at each line only where one is found).
    """
    if reverse_lines is not None:
        replies = reverse_lines(block, limit, commands, joiner_lead_bytes())
        if replies is not None or block.isascii():
            return replies
    for name in commands:
        if block.find(name) >= 0 and not command_lines.isdisjoint(block.split(b"\n")):
            return None
    return reverse_block(block, limit)


def reverse_block(block: bytes, limit: int) -> tuple[bytes, int] | None:
    """The replies to every line of ``block`` at once, and how many lines.

    ``block`` ends with an LF. Each reply is what ``reverse`` gives for its
    line, ended as its line was (LF or CRLF). ``None`` when some line is
    longer than ``limit`` bytes or the block is not UTF-8: those are
    answered line by line.
    """
    if block.isascii():
        replies, lines = _reverse_lines(block, _flip_bytes, b"\n", b"\r\n", _BYTE_MARK,
                                        _BYTE_LINE_ENDS)
        if len(block) > limit and max(map(len, lines)) > limit:
            return None
        return replies, len(lines)
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    flip = _flip_clusters if may_join(block) else _flip_code_points
    replies_text, text_lines = _reverse_lines(text, flip, "\n", "\r\n", _TEXT_MARK,
                                              _TEXT_LINE_ENDS)
    # A character is at most 4 bytes; only a block with a line that might be
    # over the limit pays for the exact look (a line of just limit bytes and
    # a CR included, answered line by line).
    if len(block) > limit and max(map(len, text_lines)) * 4 > limit \
            and max(map(len, block.split(b"\n"))) > limit:
        return None
    return replies_text.encode("utf-8"), len(text_lines)


# Each flip reverses all of its first argument but the last ``drop`` items,
# without a copy of them first where it can.
def _flip_bytes(data: bytes, drop: int) -> bytes:
    return data[-drop - 1::-1]


def _flip_code_points(text: str, drop: int) -> str:
    return text[-drop - 1::-1]


def _flip_clusters(text: str, drop: int) -> str:
    return reverse_text(text[:-drop])


def _reverse_lines(block: AnyStr, flip: Callable[[AnyStr, int], AnyStr], lf: AnyStr,
                   crlf: AnyStr, mark: AnyStr,
                   line_ends: re.Pattern[AnyStr]) -> tuple[AnyStr, list[AnyStr]]:
    """Reverse every line of ``block`` with one ``flip`` of the whole block.

    Flipping the block reverses each line and also their order; splitting
    at the line ends and putting the order back leaves each line reversed
    in place. A CRLF flips to LF CR, which splits as one line end when all
    lines end so; in a mix, each CRLF first becomes ``mark``, so that no CR
    is flipped to the wrong side of its LF. Gives the replies and the
    reversed lines, line ends off. LF only, the common case, costs one
    search for a CR on top of the flip, the split and the join.
    """
    cr = crlf[:1]
    if block.find(cr) < 0:
        return _in_order(flip(block, 1).split(lf), lf)
    if block.endswith(crlf):
        lines = flip(block, 2).split(lf + cr)
        if len(lines) == block.count(lf):  # every line ends CRLF
            return _in_order(lines, crlf)
    if block.find(crlf) < 0:  # CRs, none ending a line
        return _in_order(flip(block, 1).split(lf), lf)
    marked = block.replace(crlf, mark)
    pieces = line_ends.split(flip(marked, 1))
    pieces.reverse()
    lines = pieces[::2]
    pieces.append(marked[-1:])
    return block[:0].join(pieces).replace(mark, crlf), lines


def _in_order(flipped_lines: list[AnyStr], ending: AnyStr) -> tuple[AnyStr, list[AnyStr]]:
    """The replies, each ended by ``ending``, from lines flipped in reverse order."""
    flipped_lines.reverse()
    flipped_lines.append(ending[:0])  # so that one join also ends the last reply
    replies = ending.join(flipped_lines)
    flipped_lines.pop()
    return replies, flipped_lines
