"""Text reversed by extended grapheme cluster with ``re`` patterns: what serves
where the compiled segmenter was not built, with the very same answers.

Rules GB3 to GB999 are written here as regular expressions over character
classes, so that a whole read is reversed by the C engine of ``re`` in a
handful of calls instead of a Python step per character. ``re`` costs a few
hundred nanoseconds a match, so text dense in clusters of more than one
character goes several times slower than with the compiled segmenter. This
module is imported only where the patterns serve (or are tested): building
them costs every command that imports it some milliseconds.

Three choices make the patterns fast:

- The text is reversed by code point first, and the pattern finds the
  clusters of the reversed text, each written backwards. Most clusters of
  more than one character then start with a mark (a letter's marks come
  before it), so ``re`` skips everything else with its tight first-character
  scan instead of trying a match at every position.
- Only clusters of more than one character are cut out; the runs between
  them are already in order, and the clusters are turned the right way
  round all at once (joined by a separator, reversed, split).
- ``re`` decides membership of a Basic Multilingual Plane character with one
  bitmap lookup, but walks every range above U+FFFF in turn; so each class is
  split into its BMP bitmap and, behind a single "is it above U+FFFF" test,
  its astral ranges grouped by block.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from reverserd import _unicode_tables as tables
from reverserd.graphemes import (
    ASTRAL_START,
    ATTACHED_LINK,
    ATTACHED_LINKER,
    CONSONANT,
    CONTROL,
    HANGUL,
    JOINERS,
    LINKER,
    LOOSE_LINKER,
    POST,
    ZWJ,
    Ranges,
    ranges_of,
)

ASTRAL_BLOCK = 0x400  # astral ranges are looked up within blocks of this size
HULL_BLOCK = 0x1000  # a first check lets through the astral blocks of this size a class meets
ALL_ASTRAL = ((ASTRAL_START, 0x10FFFF),)
FEW_ASTRAL_RANGES = 16  # a class with no more is one set: a few range tests cost little


def _escape(code_point: int) -> str:
    return re.escape(chr(code_point))


def _set_body(ranges: Ranges) -> str:
    return "".join(_escape(start) if start == end else f"{_escape(start)}-{_escape(end)}"
                   for start, end in sorted(ranges))


def _bmp(ranges: Ranges) -> list[tuple[int, int]]:
    return [(start, min(end, ASTRAL_START - 1)) for start, end in ranges if start < ASTRAL_START]


def _astral(ranges: Ranges) -> list[tuple[int, int]]:
    return [(max(start, ASTRAL_START), end) for start, end in ranges if end >= ASTRAL_START]


def _bmp_class(ranges: Ranges) -> str:
    """The BMP part of ``ranges``: one bitmap lookup per character."""
    return f"[{_set_body(_bmp(ranges))}]"


def _bmp_or_astral(ranges: Ranges) -> str:
    """The BMP part of ``ranges`` and the astral blocks (of HULL_BLOCK) it meets: a cheap
    first check, one bitmap lookup and a few range tests per character."""
    blocks = {block for start, end in _astral(ranges)
              for block in range(start // HULL_BLOCK, end // HULL_BLOCK + 1)}
    hull = [(first * HULL_BLOCK, (last + 1) * HULL_BLOCK - 1) for first, last in ranges_of(blocks)]
    return f"[{_set_body([*_bmp(ranges), *hull])}]"


def _astral_check(ranges: Ranges) -> str:
    """Zero-width: the character just consumed is one of the astral ``ranges``.

    Grouped by block, so a character is compared with the few ranges of its
    own block instead of with all of them.
    """
    blocks: dict[int, list[tuple[int, int]]] = {}
    for start, end in _astral(ranges):
        while start <= end:
            block = start // ASTRAL_BLOCK
            last = min(end, (block + 1) * ASTRAL_BLOCK - 1)
            blocks.setdefault(block, []).append((start, last))
            start = last + 1
    if not blocks:
        return "(?!)"
    checks = [f"[{_escape(block * ASTRAL_BLOCK)}-{_escape((block + 1) * ASTRAL_BLOCK - 1)}]"
              f"(?<=[{_set_body(members)}])" for block, members in blocks.items()]
    return f"(?<={'|'.join(checks)})"


def member(ranges: Ranges) -> str:
    """One character of ``ranges``."""
    if len(_astral(ranges)) <= FEW_ASTRAL_RANGES:
        return f"[{_set_body(ranges)}]"
    astral = f"[{_set_body(ALL_ASTRAL)}]{_astral_check(ranges)}"
    if not _bmp(ranges):
        return f"(?:{astral})"
    return f"(?:{_bmp_class(ranges)}|{astral})"


def kept(item: str, quantifier: str = "*") -> str:
    """``item`` repeated as ``quantifier`` says, and never given back.

    An atomic group, not a possessive quantifier: those of Python before
    3.11.5 (Debian 12's among them) can keep half of a repetition that failed,
    so ``(?:ab)*+`` matched the ``a`` of ``ac`` (CPython gh-106052, gh-100061).
    """
    return f"(?>{item}{quantifier})"


def run_of(ranges: Ranges) -> str:
    """As many characters of ``ranges`` as there are (never fewer), BMP ones at bitmap speed.

    ``re`` allocates a context each time it enters a repeated group, so the
    group that takes characters above U+FFFF is entered only after one.
    """
    bmp = _bmp_class(ranges)
    if not _astral(ranges):
        return kept(bmp)
    astral = f"[{_set_body(ALL_ASTRAL)}]{_astral_check(ranges)}"
    return f"(?>{bmp}*(?:{astral}(?:{bmp}|{astral})*|))"


def _after(ranges: Ranges) -> str:
    """Zero-width: the character just consumed is one of ``ranges``."""
    return f"(?<={member(ranges)})"


# Each piece below reads reversed text: a cluster's last character first.
_RI = member(tables.REGIONAL_INDICATOR)
_L, _V, _T = member(tables.L), member(tables.V), member(tables.T)
_LV, _LVT = member(tables.LV), member(tables.LVT)
# GB9c: consonant, [extend linker]* with a linker, consonant. Backwards from
# the second consonant, the linkers and extenders between are taken as far
# as they are marks: all of them and the first consonant when they are, or
# up to a linker that is no mark (a break comes before it), provided a
# consonant comes before that.
_EXTENDERS = run_of(tables.INCB_EXTEND)
_ATTACHED_LINKS = run_of(ATTACHED_LINK)
_CONSONANT = member(CONSONANT)
# Each alternative starts with a character class, which ``re`` checks
# before it tries the alternative at all: a cheap class first where the
# exact one is dear, then the exact one.
_JOIN = "|".join([
    f"(?:{_bmp_class(ATTACHED_LINKER)}{_bmp_class(CONSONANT)}",  # the usual: a virama
    f"{member(ATTACHED_LINKER)}{_ATTACHED_LINKS}{_CONSONANT}",
    f"{_bmp_or_astral(tables.INCB_EXTEND)}{_after(tables.INCB_EXTEND)}{_EXTENDERS}"
    f"{member(ATTACHED_LINKER)}{_ATTACHED_LINKS}{_CONSONANT})",
])
_LOOSE_END = (f"(?:{member(LOOSE_LINKER)}|{_bmp_or_astral(ATTACHED_LINK)}{_after(ATTACHED_LINK)}"
              f"{_ATTACHED_LINKS}{member(LOOSE_LINKER)})"
              f"(?={run_of((*tables.INCB_EXTEND, *LINKER))}{_CONSONANT})")
_JOINS = f"(?:{_JOIN}(?:{_JOIN})*|)"  # the repeated group is entered after two joins only
_LINK_AHEAD = f"(?={_bmp_or_astral((*tables.INCB_EXTEND, *LINKER))})"  # one cheap look for all
_AFTER_CONSONANT = f"(?:{_LINK_AHEAD}{_JOINS}(?:{_LOOSE_END}|)|)"
_MORE_AFTER_CONSONANT = f"{_LINK_AHEAD}(?:{_JOIN}{_JOINS}(?:{_LOOSE_END}|)|{_LOOSE_END})"
# GB11: pictograph, Extend*, ZWJ, pictograph.
_PICTOGRAPH = member(tables.EXTENDED_PICTOGRAPHIC)
_EMOJI_LINK = f"{member(ZWJ)}(?:{_PICTOGRAPH}|{run_of(tables.EXTEND)}{_PICTOGRAPH})"
_EMOJI_LINKS = f"(?:{_EMOJI_LINK}(?:{_EMOJI_LINK})*|)"
# GB12, GB13: regional indicators pair from the start of their run, which is
# the end of the reversed run: after an odd one out, if any, in pairs.
_AFTER_REGIONAL = f"(?:(?<={_RI}{_RI}){_RI}|(?={kept(f'(?:{_RI}{_RI})')}(?!{_RI}))|{_RI})"
# GB6-GB8, backwards: T* (V+ LV? | LV | LVT) L*, or L+, or T+.
_AFTER_T = f"{_T}*(?:{_V}+(?:{_LV}|){_L}*|{_LV}{_L}*|{_LVT}{_L}*|)"
_AFTER_V = f"{_V}*(?:{_LV}|){_L}*"
_AFTER_L = f"{_L}*"
# Each jamo or syllable, what may come after it in its syllable, and what before it.
_HANGUL_JOINS = (
    (tables.L, (*tables.L, *tables.V, *tables.LV, *tables.LVT), _AFTER_L),
    (tables.V, (*tables.V, *tables.T), _AFTER_V),
    (tables.LV, (*tables.V, *tables.T), _AFTER_L),
    (tables.T, tables.T, _AFTER_T),
    (tables.LVT, tables.T, _AFTER_L),
)


def _base(prepend: bool) -> str:
    """The character a reversed run of marks ends at, with what joins it from before."""
    plain = [*CONTROL, *HANGUL, *tables.REGIONAL_INDICATOR, *tables.EXTENDED_PICTOGRAPHIC,
             *CONSONANT, *([] if prepend else tables.PREPEND)]
    return "|".join([
        f"[^{_set_body([*_bmp(plain), *ALL_ASTRAL])}]",
        f"{_PICTOGRAPH}{_EMOJI_LINKS}",
        f"{_CONSONANT}{_AFTER_CONSONANT}",
        f"{_T}{_AFTER_T}",
        f"{_V}{_AFTER_V}",
        f"{member((*tables.L, *tables.LV, *tables.LVT))}{_AFTER_L}",
        f"{_RI}{_AFTER_REGIONAL}",
        f"[{_set_body(ALL_ASTRAL)}](?<!{member(CONTROL)})",
    ])


def _reversed_clusters(prepend: bool) -> str:
    """Every cluster of more than one character (and some of one), reversed.

    Each starts with a character of one first-character class. Most
    alternatives then look at the next character first, which ``re`` tries
    without saving its state; only marks (the commonest start) and
    consonants are told apart by looking back at the first one. No
    repeated group is entered in the common cases (``re`` allocates a context
    for each), and ``re`` never has to backtrack: every alternative ends in
    a part that cannot fail.
    """
    first = [*POST, *HANGUL, *tables.EXTENDED_PICTOGRAPHIC, *CONSONANT,
             *tables.REGIONAL_INDICATOR]
    any_char = "(?s:.)"
    pattern = f"{_bmp_or_astral(first)}(?:" + "|".join([
        f"{_after(POST)}{run_of(POST)}(?:{_base(prepend)}|)",
        # the usual conjunct, by its virama: no look back at the consonant unless there is one
        f"{_bmp_class(ATTACHED_LINKER)}(?<={member(CONSONANT)}{any_char}){_bmp_class(CONSONANT)}"
        f"{_AFTER_CONSONANT}",
        # Hangul, by the syllable part before (GB6-GB8): each pair joins on its own
        *(f"{member(part)}(?<={member(later)}{any_char}){after}"
          for part, later, after in _HANGUL_JOINS),
        f"{member(ZWJ)}(?<={member(tables.EXTENDED_PICTOGRAPHIC)}{any_char})"
        f"(?:{_PICTOGRAPH}|{run_of(tables.EXTEND)}{_PICTOGRAPH}){_EMOJI_LINKS}",
        # a pair of regional indicators, if the first is not the odd one out of its run
        f"{_RI}(?<={_RI}{any_char})(?:(?<={_RI}{_RI}{_RI})|(?!{_RI})|"
        f"(?={kept(f'(?:{_RI}{_RI})', '+')}(?!{_RI})))",
        f"{_after(CONSONANT)}{_MORE_AFTER_CONSONANT}",
    ]) + ")"
    if prepend:
        prepends = member(tables.PREPEND)
        pattern = f"(?:{pattern}|[^{_set_body(CONTROL)}](?={prepends})){prepends}*"
    return f"({pattern})"


_CLUSTER_SEPARATOR = "\udfff"


class _Patterns(NamedTuple):
    may_join: re.Pattern[str]
    has_prepend: re.Pattern[str]
    clusters: re.Pattern[str]
    clusters_with_prepends: re.Pattern[str]


@functools.cache
def compiled() -> _Patterns:
    return _Patterns(
        re.compile(_bmp_or_astral(JOINERS)),
        re.compile(f"{_bmp_or_astral(tables.PREPEND)}{_after(tables.PREPEND)}"),
        re.compile(_reversed_clusters(prepend=False)),
        re.compile(_reversed_clusters(prepend=True)),
    )


def reverse_text(text: str) -> str:
    """``graphemes.reverse_text`` by the patterns: the very same answers."""
    patterns = compiled()
    if patterns.may_join.search(text) is None:
        return text[::-1]  # every character a cluster of its own
    if patterns.has_prepend.search(text) is None:
        clusters_of = patterns.clusters
    else:
        clusters_of = patterns.clusters_with_prepends
    reversed_text = text[::-1]
    pieces = clusters_of.split(reversed_text)
    if len(pieces) == 1:
        return reversed_text
    clusters = _CLUSTER_SEPARATOR.join(pieces[1::2])[::-1].split(_CLUSTER_SEPARATOR)
    clusters.reverse()
    pieces[1::2] = clusters
    return "".join(pieces)
