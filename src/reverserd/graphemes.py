"""Text reversed by extended grapheme cluster (Unicode Standard Annex #29), at C speed.

A line must be reversed by what a reader sees as one character, or combining
marks land on the wrong letter and emoji fall apart. Two segmenters give the
same answers, both from ``_unicode_tables``:

- ``_clusters``, compiled at install when a C compiler and Python's headers
  are there: the rules walked once over the text, a few nanoseconds a
  character;
- ``cluster_patterns``, the rules as ``re`` patterns, several times slower on
  text dense in clusters of more than one character, where the first was
  not built.

Most text needs neither: ``may_join`` tells from a read's bytes that every
character is a cluster of its own.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable, Iterable
from types import ModuleType

from reverserd import _unicode_tables as tables

Ranges = Iterable[tuple[int, int]]

ASTRAL_START = 0x10000
# Decoded UTF-8 never holds surrogates, so the reversal code may use them as
# markers; both segmenters keep them clusters of their own.
SURROGATES = ((0xD800, 0xDFFF),)
CR, LF, ZWJ = ((0x0D, 0x0D),), ((0x0A, 0x0A),), ((0x200D, 0x200D),)


def code_points(ranges: Ranges) -> set[int]:
    return {code_point for start, end in ranges for code_point in range(start, end + 1)}


def ranges_of(points: set[int]) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for code_point in sorted(points):
        if found and found[-1][1] == code_point - 1:
            found[-1] = (found[-1][0], code_point)
        else:
            found.append((code_point, code_point))
    return found


CONTROL = (*tables.CONTROL, *SURROGATES, *CR, *LF)  # always a cluster of its own (GB4, GB5)
POST = (*tables.EXTEND, *ZWJ, *tables.SPACINGMARK)  # joins whatever comes before (GB9, GB9a)
HANGUL = (*tables.L, *tables.V, *tables.T, *tables.LV, *tables.LVT)
CONSONANT, LINKER = tables.INCB_CONSONANT, tables.INCB_LINKER
# A linker that is no mark (GB9c still joins the next consonant to it, but
# a break comes before it).
LOOSE_LINKER = ranges_of(code_points(LINKER) - code_points(POST))
ATTACHED_LINKER = ranges_of(code_points(LINKER) & code_points(POST))
ATTACHED_LINK = ranges_of(code_points(tables.INCB_EXTEND) | code_points(ATTACHED_LINKER))
# Characters without which every character is a cluster of its own.
JOINERS = (*POST, *tables.PREPEND, *tables.L, *tables.V, *tables.T, *LOOSE_LINKER,
           *tables.REGIONAL_INDICATOR)  # a syllable (LV, LVT) joins only these


@functools.cache
def joiner_lead_bytes() -> bytes:
    """The first bytes of the joiners' UTF-8 forms (and of every form above
    U+FFFF): most scripts (CJK and Cyrillic among them) share none, and
    deleting them from a whole read is cheaper than scanning its decoded text."""
    return bytes(sorted({chr(code_point).encode("utf-8", "surrogatepass")[0]
                         for code_point in code_points(JOINERS) if code_point < ASTRAL_START}
                        | set(range(0xF0, 0xF5))))


@functools.cache
def _compiled_segmenter() -> ModuleType | None:
    """The compiled segmenter, or None when it was not built."""
    try:
        from reverserd import _clusters
    except ImportError:  # installed without a C compiler or Python's headers
        return None
    return _clusters


@functools.cache
def _reverser() -> Callable[[str], str]:
    compiled = _compiled_segmenter()
    if compiled is None:
        # Imported only where they serve (see import_segmenter), and built here.
        from reverserd import cluster_patterns
        cluster_patterns.compiled()
        return cluster_patterns.reverse_text
    from reverserd import cluster_table  # needed once, to load it (see import_segmenter)
    compiled.load(*cluster_table.two_stage(cluster_table.properties()))
    reverse: Callable[[str], str] = compiled.reverse
    return reverse


def import_segmenter() -> None:
    """Import what reverses text here, without building it yet (see ``prepare``):
    a daemon enters its chroot before it serves, and cannot import there."""
    importlib.import_module("reverserd.cluster_table" if _compiled_segmenter() is not None
                            else "reverserd.cluster_patterns")


def segmenter() -> str:
    """Which segmenter reverses text here, for the log and ``--version``: the
    compiled one is several times faster on text with many multi-character clusters."""
    if _compiled_segmenter() is None:
        return "pattern segmenter (the compiled one was not built at install)"
    return "compiled segmenter"


_preparing: list[threading.Thread] = []  # at most one, until it is waited for


def prepare() -> None:
    """Load the compiled segmenter's tables now, or compile the patterns in the background.

    The tables take a few milliseconds, and the memory they are built in is
    freed before any client comes. The patterns take a few hundred
    milliseconds that would otherwise hold up the first line of text; in the
    background they delay nothing (text that comes meanwhile waits for them).
    Commands that serve no client never pay either.
    """
    if _compiled_segmenter() is not None:
        _reverser()
        return
    if not _preparing:
        preparing = threading.Thread(target=_reverser, name="reverserd-segmenter", daemon=True)
        _preparing.append(preparing)
        preparing.start()


def _ready() -> Callable[[str], str]:
    while _preparing:
        _preparing.pop().join()
    return _reverser()


def may_join(utf8: bytes) -> bool:
    """False when no character of ``utf8`` can belong to a cluster of more
    than one: its text may then be reversed by code point."""
    return len(utf8.translate(None, joiner_lead_bytes())) != len(utf8)


def reverse_text(text: str) -> str:
    """``text`` with its grapheme clusters in reverse order, each kept whole.

    A CR before an LF stays a cluster of its own here (UAX #29 joins them),
    so a block of lines reversed at once still splits at every LF; so does
    a surrogate, which decoded UTF-8 never holds (``reversal`` marks line
    ends with one).
    """
    return _ready()(text)
