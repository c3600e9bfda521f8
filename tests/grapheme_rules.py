"""UAX #29's extended grapheme cluster rules, one character at a time: the reference model.

Written straight from the rules (GB3 to GB999), with the properties looked
up in the same ``_unicode_tables`` the compiled patterns are built from, so
that the tests can prove the patterns segment exactly as the rules do.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterator

from reverserd import _unicode_tables as tables


class Break(enum.IntEnum):
    """Grapheme_Cluster_Break values; ``OTHER`` is the standard's ``Any``."""

    OTHER = 0
    CR = 1
    LF = 2
    CONTROL = 3
    EXTEND = 4
    ZWJ = 5
    REGIONAL_INDICATOR = 6
    PREPEND = 7
    SPACING_MARK = 8
    L = 9
    V = 10
    T = 11
    LV = 12
    LVT = 13


class Conjunct(enum.IntEnum):
    """Indic_Conjunct_Break values, which decide rule GB9c."""

    NONE = 0
    CONSONANT = 1
    EXTEND = 2
    LINKER = 3


class RangeSet:
    """Membership in a sorted tuple of inclusive ranges, by binary search."""

    def __init__(self, ranges: tuple[tuple[int, int], ...]) -> None:
        ordered = sorted(ranges)
        self._starts = [start for start, _ in ordered]
        self._ends = [end for _, end in ordered]

    def __contains__(self, code_point: int) -> bool:
        index = bisect.bisect_right(self._starts, code_point) - 1
        return index >= 0 and code_point <= self._ends[index]


BREAK_TABLES = [
    (Break.CONTROL, RangeSet(tables.CONTROL)),
    (Break.EXTEND, RangeSet(tables.EXTEND)),
    (Break.SPACING_MARK, RangeSet(tables.SPACINGMARK)),
    (Break.PREPEND, RangeSet(tables.PREPEND)),
    (Break.REGIONAL_INDICATOR, RangeSet(tables.REGIONAL_INDICATOR)),
    (Break.L, RangeSet(tables.L)),
    (Break.V, RangeSet(tables.V)),
    (Break.T, RangeSet(tables.T)),
    (Break.LV, RangeSet(tables.LV)),
    (Break.LVT, RangeSet(tables.LVT)),
]
PICTOGRAPHIC = RangeSet(tables.EXTENDED_PICTOGRAPHIC)
CONJUNCT_TABLES = [
    (Conjunct.CONSONANT, RangeSet(tables.INCB_CONSONANT)),
    (Conjunct.EXTEND, RangeSet(tables.INCB_EXTEND)),
    (Conjunct.LINKER, RangeSet(tables.INCB_LINKER)),
]


def grapheme_break(char: str) -> Break:
    """The Grapheme_Cluster_Break property of one character."""
    if char == "\r":
        return Break.CR
    if char == "\n":
        return Break.LF
    if char == "\u200d":
        return Break.ZWJ
    code_point = ord(char)
    return next((kind for kind, members in BREAK_TABLES if code_point in members), Break.OTHER)


def extended_pictographic(char: str) -> bool:
    return ord(char) in PICTOGRAPHIC


def conjunct_break(char: str) -> Conjunct:
    code_point = ord(char)
    return next((kind for kind, members in CONJUNCT_TABLES if code_point in members),
                Conjunct.NONE)


HANGUL_L_FOLLOWERS = frozenset([Break.L, Break.V, Break.LV, Break.LVT])
ALWAYS_ALONE = frozenset([Break.CONTROL, Break.CR, Break.LF])


def clusters(text: str) -> Iterator[str]:
    """Split ``text`` into extended grapheme clusters, in order.

    Three pieces of state carry what the pairwise rules cannot see: an
    emoji ZWJ sequence in progress (GB11), an Indic conjunct in progress
    (GB9c) and the parity of a run of regional indicators (GB12, GB13).
    """
    if not text:
        return
    start = 0
    previous = grapheme_break(text[0])
    emoji_sequence = 1 if extended_pictographic(text[0]) else 0  # 2: pictograph Extend* ZWJ
    conjunct_sequence = 1 if conjunct_break(text[0]) is Conjunct.CONSONANT else 0  # 2: linker
    regional_run = 1 if previous is Break.REGIONAL_INDICATOR else 0
    for index in range(1, len(text)):
        char = text[index]
        current, pictographic, conjunct = (grapheme_break(char), extended_pictographic(char),
                                           conjunct_break(char))
        if is_boundary(previous, current, pictographic, conjunct, emoji_sequence,
                       conjunct_sequence, regional_run):
            yield text[start:index]
            start = index
        emoji_sequence = next_emoji_state(emoji_sequence, current, pictographic)
        conjunct_sequence = next_conjunct_state(conjunct_sequence, conjunct)
        regional_run = regional_run + 1 if current is Break.REGIONAL_INDICATOR else 0
        previous = current
    yield text[start:]


def is_boundary(previous: Break, current: Break, pictographic: bool, conjunct: Conjunct,
                emoji_sequence: int, conjunct_sequence: int, regional_run: int) -> bool:
    if previous is Break.CR and current is Break.LF:  # GB3
        return False
    if previous in ALWAYS_ALONE or current in ALWAYS_ALONE:  # GB4, GB5
        return True
    if previous is Break.L and current in HANGUL_L_FOLLOWERS:  # GB6
        return False
    if previous in (Break.LV, Break.V) and current in (Break.V, Break.T):  # GB7
        return False
    if previous in (Break.LVT, Break.T) and current is Break.T:  # GB8
        return False
    if current in (Break.EXTEND, Break.ZWJ, Break.SPACING_MARK):  # GB9, GB9a
        return False
    if previous is Break.PREPEND:  # GB9b
        return False
    if conjunct is Conjunct.CONSONANT and conjunct_sequence == 2:  # GB9c
        return False
    if previous is Break.ZWJ and pictographic and emoji_sequence == 2:  # GB11
        return False
    if previous is Break.REGIONAL_INDICATOR and current is Break.REGIONAL_INDICATOR:
        return regional_run % 2 == 0  # GB12, GB13
    return True  # GB999


def next_emoji_state(state: int, current: Break, pictographic: bool) -> int:
    if pictographic:
        return 1
    if state == 1 and current is Break.EXTEND:
        return 1
    if state == 1 and current is Break.ZWJ:
        return 2
    return 0


def next_conjunct_state(state: int, conjunct: Conjunct) -> int:
    if conjunct is Conjunct.CONSONANT:
        return 1
    if state and conjunct is Conjunct.LINKER:
        return 2
    if state and conjunct is Conjunct.EXTEND:
        return state
    return 0
