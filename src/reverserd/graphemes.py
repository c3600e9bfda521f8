"""Text reversed by extended grapheme cluster (Unicode Standard Annex #29), at C speed.

A line must be reversed by what a reader sees as one character, or combining
marks land on the wrong letter and emoji fall apart. Two segmenters give the
same answers, both from ``_unicode_tables``:

- ``_clusters``, compiled at install when a C compiler is there: the rules
  walked once over the text, a few nanoseconds a character;
- rules GB3 to GB999 written here as a regular expression over character
  classes, so that a whole read is reversed by the C engine of ``re`` in a
  handful of calls instead of a Python step per character. ``re`` costs a
  few hundred nanoseconds a match, so text dense in clusters of more than
  one character goes several times slower this way.

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
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import NamedTuple

from reverserd import _unicode_tables as tables
from reverserd import cluster_table

Ranges = Iterable[tuple[int, int]]

ASTRAL_START = 0x10000
ASTRAL_BLOCK = 0x400  # astral ranges are looked up within blocks of this size
HULL_BLOCK = 0x1000  # a first check lets through the astral blocks of this size a class meets
ALL_ASTRAL = ((ASTRAL_START, 0x10FFFF),)
FEW_ASTRAL_RANGES = 16  # a class with no more is one set: a few range tests cost little
# Decoded UTF-8 never holds surrogates, so the reversal code may use them as
# markers; every pattern here keeps them clusters of their own.
SURROGATES = ((0xD800, 0xDFFF),)
CR, LF, ZWJ = ((0x0D, 0x0D),), ((0x0A, 0x0A),), ((0x200D, 0x200D),)


def _points(ranges: Ranges) -> set[int]:
    return {code_point for start, end in ranges for code_point in range(start, end + 1)}


def _ranges(code_points: set[int]) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for code_point in sorted(code_points):
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
LOOSE_LINKER = _ranges(_points(LINKER) - _points(POST))
ATTACHED_LINKER = _ranges(_points(LINKER) & _points(POST))
ATTACHED_LINK = _ranges(_points(tables.INCB_EXTEND) | _points(ATTACHED_LINKER))
# A base whose cluster may be more than "the base, then marks".
SPECIAL_BASES = (*CONTROL, *tables.PREPEND, *HANGUL, *tables.REGIONAL_INDICATOR,
                 *tables.EXTENDED_PICTOGRAPHIC, *CONSONANT)


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
    hull = [(first * HULL_BLOCK, (last + 1) * HULL_BLOCK - 1) for first, last in _ranges(blocks)]
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
        f"{_L}(?<={member((*tables.L, *tables.V, *tables.LV, *tables.LVT))}{any_char}){_AFTER_L}",
        f"{_V}(?<={member((*tables.V, *tables.T))}{any_char}){_AFTER_V}",
        f"{_LV}(?<={member((*tables.V, *tables.T))}{any_char}){_AFTER_L}",
        f"{_T}(?<={_T}{any_char}){_AFTER_T}",
        f"{_LVT}(?<={_T}{any_char}){_AFTER_L}",
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


# Characters without which every character is a cluster of its own.
_JOINERS = (*POST, *tables.PREPEND, *tables.L, *tables.V, *tables.T, *LOOSE_LINKER,
            *tables.REGIONAL_INDICATOR)  # a syllable (LV, LVT) joins only these
_CLUSTER_SEPARATOR = "\udfff"


class _Patterns(NamedTuple):
    may_join: re.Pattern[str]
    has_prepend: re.Pattern[str]
    clusters: re.Pattern[str]
    clusters_with_prepends: re.Pattern[str]


@functools.cache
def _compiled() -> _Patterns:
    return _Patterns(
        re.compile(_bmp_or_astral(_JOINERS)),
        re.compile(f"{_bmp_or_astral(tables.PREPEND)}{_after(tables.PREPEND)}"),
        re.compile(_reversed_clusters(prepend=False)),
        re.compile(_reversed_clusters(prepend=True)),
    )


@functools.cache
def _joiner_lead_bytes() -> bytes:
    """The first bytes of the joiners' UTF-8 forms (and of every form above
    U+FFFF): most scripts (CJK and Cyrillic among them) share none, and
    deleting them from a whole read is cheaper than scanning its decoded text."""
    return bytes(sorted({chr(code_point).encode("utf-8", "surrogatepass")[0]
                         for code_point in _points(_bmp(_JOINERS))} | set(range(0xF0, 0xF5))))


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
        _compiled()
        return reverse_text_by_pattern
    compiled.load(*cluster_table.two_stage(cluster_table.properties()))
    reverse: Callable[[str], str] = compiled.reverse
    return reverse


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
    return len(utf8.translate(None, _joiner_lead_bytes())) != len(utf8)


def reverse_text(text: str) -> str:
    """``text`` with its grapheme clusters in reverse order, each kept whole.

    A CR before an LF stays a cluster of its own here (UAX #29 joins them),
    so a block of lines reversed at once still splits at every LF; so does
    a surrogate, which decoded UTF-8 never holds (``reversal`` marks line
    ends with one).
    """
    return _ready()(text)


def reverse_text_by_pattern(text: str) -> str:
    """``reverse_text`` by the ``re`` patterns: what serves when the compiled
    segmenter was not built, with the very same answers."""
    patterns = _compiled()
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
