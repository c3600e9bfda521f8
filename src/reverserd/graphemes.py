"""Extended grapheme clusters (Unicode Standard Annex #29), from ``unicodedata``.

A line must be reversed by what a reader sees as one character, or combining
marks land on the wrong letter and emoji fall apart. The standard library has
no segmentation, so the Grapheme_Cluster_Break property is derived here from
``unicodedata.category`` plus the few short lists the standard defines by
hand; Extended_Pictographic and Indic_Conjunct_Break come from the generated
``_unicode_tables`` module.
"""

from __future__ import annotations

import bisect
import enum
import unicodedata
from collections.abc import Iterator

from reverserd import _unicode_tables


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


# Code points the standard lists by hand rather than by general category.
_PREPEND = frozenset(
    [*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E,
     0x110BD, 0x110CD, 0x111C2, 0x111C3, 0x113D1, 0x1193F, 0x11941,
     *range(0x11A84, 0x11A8A), 0x11D46, 0x11F02]
)
_OTHER_GRAPHEME_EXTEND = frozenset(
    [0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC0, 0x0CC2, 0x0CC7,
     0x0CC8, 0x0CCA, 0x0CCB, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57, 0x0DCF, 0x0DDF,
     0x1715, 0x1734, 0x1B35, 0x1B3B, 0x1B3D, 0x1B43, 0x1B44, 0x1BAA, 0x1BF2,
     0x1BF3, 0x200C, 0x302E, 0x302F, 0xA953, 0xA9C0, 0xFF9E, 0xFF9F, 0x111C0,
     0x11235, 0x1133E, 0x1134D, 0x11357, 0x113B8, 0x113C2, 0x113C5, 0x113C7,
     0x113C8, 0x113C9, 0x113CF, 0x114B0, 0x114BD, 0x115AF, 0x116B6, 0x11930,
     0x1193D, 0x11F41, 0x16FF0, 0x16FF1, 0x1D165, 0x1D166, *range(0x1D16D, 0x1D173),
     *range(0x1F3FB, 0x1F400), *range(0xE0020, 0xE0080)]
)
_SPACING_MARK_EXTRA = frozenset([0x0E33, 0x0EB3])
_SPACING_MARK_EXCLUDED = frozenset(
    [0x102B, 0x102C, 0x1038, 0x1062, 0x1063, 0x1064, *range(0x1067, 0x106E),
     0x1083, *range(0x1087, 0x108D), 0x108F, 0x109A, 0x109B, 0x109C, 0x1A61,
     0x1A63, 0x1A64, 0xAA7B, 0xAA7D, 0x11720, 0x11721]
)
_CONTROL_CATEGORIES = frozenset(["Zl", "Zp", "Cc", "Cf"])
_HANGUL_SYLLABLES = range(0xAC00, 0xD7A4)
_HANGUL_L = (range(0x1100, 0x1160), range(0xA960, 0xA97D))
_HANGUL_V = (range(0x1160, 0x11A8), range(0xD7B0, 0xD7C7))
_HANGUL_T = (range(0x11A8, 0x1200), range(0xD7CB, 0xD7FC))
_ZWJ = 0x200D
_ZWNJ = 0x200C


class _RangeSet:
    """Membership in a sorted tuple of inclusive ranges, by binary search."""

    def __init__(self, ranges: tuple[tuple[int, int], ...]) -> None:
        self._starts = [start for start, _ in ranges]
        self._ends = [end for _, end in ranges]

    def __contains__(self, code_point: int) -> bool:
        index = bisect.bisect_right(self._starts, code_point) - 1
        return index >= 0 and code_point <= self._ends[index]


_EXTENDED_PICTOGRAPHIC = _RangeSet(_unicode_tables.EXTENDED_PICTOGRAPHIC)
_INCB_CONSONANT = _RangeSet(_unicode_tables.INCB_CONSONANT)
_INCB_LINKER = _RangeSet(_unicode_tables.INCB_LINKER)


def _hangul_break(code_point: int) -> Break | None:
    if code_point in _HANGUL_SYLLABLES:
        return Break.LV if (code_point - 0xAC00) % 28 == 0 else Break.LVT
    for kind, blocks in ((Break.L, _HANGUL_L), (Break.V, _HANGUL_V), (Break.T, _HANGUL_T)):
        if any(code_point in block for block in blocks):
            return kind
    return None


def grapheme_break(char: str) -> Break:
    """The Grapheme_Cluster_Break property of one character."""
    code_point = ord(char)
    if char == "\r":
        return Break.CR
    if char == "\n":
        return Break.LF
    if code_point == _ZWJ:
        return Break.ZWJ
    if 0x1F1E6 <= code_point <= 0x1F1FF:
        return Break.REGIONAL_INDICATOR
    if code_point in _PREPEND:
        return Break.PREPEND
    hangul = _hangul_break(code_point)
    if hangul is not None:
        return hangul
    category = unicodedata.category(char)
    if category in ("Mn", "Me") or code_point in _OTHER_GRAPHEME_EXTEND:
        return Break.EXTEND
    if category in _CONTROL_CATEGORIES:
        return Break.CONTROL
    if code_point in _SPACING_MARK_EXTRA or (
        category == "Mc" and code_point not in _SPACING_MARK_EXCLUDED
    ):
        return Break.SPACING_MARK
    return Break.OTHER


def extended_pictographic(char: str) -> bool:
    """The Extended_Pictographic property (emoji and their reserved blocks)."""
    return ord(char) in _EXTENDED_PICTOGRAPHIC


def conjunct_break(char: str) -> Conjunct:
    """The Indic_Conjunct_Break property of one character."""
    code_point = ord(char)
    if code_point in _INCB_LINKER:
        return Conjunct.LINKER
    if code_point in _INCB_CONSONANT:
        return Conjunct.CONSONANT
    if code_point != _ZWNJ and grapheme_break(char) in (Break.EXTEND, Break.ZWJ):
        return Conjunct.EXTEND
    return Conjunct.NONE


_PROPERTIES: dict[str, tuple[Break, bool, Conjunct]] = {}


def _properties(char: str) -> tuple[Break, bool, Conjunct]:
    """All three properties of ``char``, computed once per distinct character."""
    found = _PROPERTIES.get(char)
    if found is None:
        found = (grapheme_break(char), extended_pictographic(char), conjunct_break(char))
        if len(_PROPERTIES) < 16384:  # bounded, whatever clients send
            _PROPERTIES[char] = found
    return found


_HANGUL_L_FOLLOWERS = frozenset([Break.L, Break.V, Break.LV, Break.LVT])
_ALWAYS_ALONE = frozenset([Break.CONTROL, Break.CR, Break.LF])


def graphemes(text: str) -> Iterator[str]:
    """Split ``text`` into extended grapheme clusters, in order.

    Each boundary follows rules GB3 to GB999 of UAX #29. The three pieces of
    state carry what the pairwise rules cannot see: an emoji ZWJ sequence in
    progress (GB11), an Indic conjunct in progress (GB9c) and the parity of a
    run of regional indicators (GB12, GB13).
    """
    if not text:
        return
    start = 0
    previous, pictographic, conjunct = _properties(text[0])
    emoji_sequence = 1 if pictographic else 0  # 1: pictograph + Extend*, 2: then ZWJ
    conjunct_sequence = 1 if conjunct is Conjunct.CONSONANT else 0  # 2: linker seen
    regional_run = 1 if previous is Break.REGIONAL_INDICATOR else 0
    for index in range(1, len(text)):
        current, pictographic, conjunct = _properties(text[index])
        if current is Break.OTHER and not pictographic and conjunct is Conjunct.NONE:
            # The common case: only GB9b (after Prepend) keeps it attached,
            # and it ends every sequence in progress.
            if previous is not Break.PREPEND:
                yield text[start:index]
                start = index
            emoji_sequence = conjunct_sequence = regional_run = 0
            previous = current
            continue
        if _is_boundary(previous, current, pictographic, conjunct,
                        emoji_sequence, conjunct_sequence, regional_run):
            yield text[start:index]
            start = index
        emoji_sequence = _next_emoji_state(emoji_sequence, current, pictographic)
        conjunct_sequence = _next_conjunct_state(conjunct_sequence, conjunct)
        regional_run = regional_run + 1 if current is Break.REGIONAL_INDICATOR else 0
        previous = current
    yield text[start:]


def _is_boundary(
    previous: Break,
    current: Break,
    pictographic: bool,
    conjunct: Conjunct,
    emoji_sequence: int,
    conjunct_sequence: int,
    regional_run: int,
) -> bool:
    if previous is Break.CR and current is Break.LF:
        return False
    if previous in _ALWAYS_ALONE or current in _ALWAYS_ALONE:
        return True
    if previous is Break.L and current in _HANGUL_L_FOLLOWERS:
        return False
    if previous in (Break.LV, Break.V) and current in (Break.V, Break.T):
        return False
    if previous in (Break.LVT, Break.T) and current is Break.T:
        return False
    if current in (Break.EXTEND, Break.ZWJ, Break.SPACING_MARK) or previous is Break.PREPEND:
        return False
    if conjunct is Conjunct.CONSONANT and conjunct_sequence == 2:
        return False
    if previous is Break.ZWJ and pictographic and emoji_sequence == 2:
        return False
    if previous is Break.REGIONAL_INDICATOR and current is Break.REGIONAL_INDICATOR:
        return regional_run % 2 == 0
    return True


def _next_emoji_state(state: int, current: Break, pictographic: bool) -> int:
    if pictographic:
        return 1
    if state == 1 and current is Break.EXTEND:
        return 1
    if state == 1 and current is Break.ZWJ:
        return 2
    return 0


def _next_conjunct_state(state: int, conjunct: Conjunct) -> int:
    if conjunct is Conjunct.CONSONANT:
        return 1
    if state and conjunct is Conjunct.LINKER:
        return 2
    if state and conjunct is Conjunct.EXTEND:
        return state
    return 0
