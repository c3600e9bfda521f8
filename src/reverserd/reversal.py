"""Reversing one line the way a reader would expect."""

from __future__ import annotations

from reverserd.graphemes import graphemes


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
    return "".join(reversed(list(graphemes(text)))).encode("utf-8")
