"""Grapheme segmentation, checked against the regex package's ``\\X``."""

from __future__ import annotations

import sys
import unicodedata

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from reverserd.graphemes import (
    Break,
    Conjunct,
    conjunct_break,
    extended_pictographic,
    grapheme_break,
    graphemes,
)

BREAK_NAMES = {
    Break.OTHER: "Other", Break.CR: "CR", Break.LF: "LF", Break.CONTROL: "Control",
    Break.EXTEND: "Extend", Break.ZWJ: "ZWJ", Break.REGIONAL_INDICATOR: "Regional_Indicator",
    Break.PREPEND: "Prepend", Break.SPACING_MARK: "SpacingMark", Break.L: "L", Break.V: "V",
    Break.T: "T", Break.LV: "LV", Break.LVT: "LVT",
}
CONJUNCT_NAMES = {
    Conjunct.NONE: "None", Conjunct.CONSONANT: "Consonant",
    Conjunct.EXTEND: "Extend", Conjunct.LINKER: "Linker",
}


def same_category_in_both(char: str) -> bool:
    """The oracle may know a newer Unicode than ``unicodedata``: compare only
    characters both versions give the same general category."""
    category = unicodedata.category(char)
    if category in ("Cn", "Cs", "Co"):
        return False
    return regex.match(rf"\p{{gc={category}}}", char) is not None


COMPARABLE = [chr(cp) for cp in range(sys.maxunicode + 1) if same_category_in_both(chr(cp))]


def test_every_character_has_the_oracles_grapheme_cluster_break() -> None:
    patterns = {kind: regex.compile(rf"\p{{Grapheme_Cluster_Break={name}}}")
                for kind, name in BREAK_NAMES.items()}
    wrong = [f"U+{ord(c):04X}: {grapheme_break(c).name}"
             for c in COMPARABLE if not patterns[grapheme_break(c)].match(c)]
    assert wrong == []


def test_every_character_has_the_oracles_conjunct_break_and_pictographic() -> None:
    conjunct = {kind: regex.compile(rf"\p{{Indic_Conjunct_Break={name}}}")
                for kind, name in CONJUNCT_NAMES.items()}
    pictographic = regex.compile(r"\p{Extended_Pictographic}")
    wrong = [f"U+{ord(c):04X}" for c in COMPARABLE
             if not conjunct[conjunct_break(c)].match(c)
             or extended_pictographic(c) != bool(pictographic.match(c))]
    assert wrong == []


@pytest.mark.parametrize(
    ("text", "clusters"),
    [
        ("", []),
        ("abc", ["a", "b", "c"]),
        ("noe\u0308l", ["n", "o", "e\u0308", "l"]),
        ("\r\n", ["\r\n"]),
        ("\U0001F468\u200D\U0001F469\u200D\U0001F467",
         ["\U0001F468\u200D\U0001F469\u200D\U0001F467"]),
        ("\U0001F44D\U0001F3FD!", ["\U0001F44D\U0001F3FD", "!"]),
        ("\U0001F1EB\U0001F1F7\U0001F1E9\U0001F1EA\U0001F1EE",
         ["\U0001F1EB\U0001F1F7", "\U0001F1E9\U0001F1EA", "\U0001F1EE"]),
        ("\u1100\u1161\u11A8\uAC00", ["\u1100\u1161\u11A8", "\uAC00"]),
        ("\u0915\u094D\u0937", ["\u0915\u094D\u0937"]),
        ("a\u094D\u0937", ["a\u094D", "\u0937"]),
        ("\u0600a", ["\u0600a"]),
        ("a\u0903", ["a\u0903"]),
    ],
)
def test_known_segmentations(text: str, clusters: list[str]) -> None:
    assert list(graphemes(text)) == clusters


def orphan_linker(text: str) -> bool:
    """True when an Indic linker follows no consonant.

    GB9c only joins a linker to the next consonant when a consonant came
    before it; the oracle (regex 2026.11) joins them regardless, so such
    text is left out of the comparison and pinned by the known cases above.
    """
    after_consonant = False
    for char in text:
        kind = conjunct_break(char)
        if kind is Conjunct.CONSONANT:
            after_consonant = True
        elif kind is Conjunct.LINKER and not after_consonant:
            return True
        elif kind is Conjunct.NONE:
            after_consonant = False
    return False


TRICKY = [chr(cp) for cp in (
    0x200D, 0x200C, 0x094D, 0x0915, 0x0937, 0x0301, 0x0308, 0x1F3FB, 0x1F1E6, 0x1F1E7,
    0x1F468, 0x2764, 0xFE0F, 0x1100, 0x1161, 0x11A8, 0xAC00, 0xAC01, 0x0600, 0x0903,
    0x0E33, 0x0D, 0x0A, 0x61, 0xE0067,
)]
mixed_text = st.lists(
    st.one_of(st.sampled_from(TRICKY), st.sampled_from(COMPARABLE)), max_size=12
).map("".join)


@settings(max_examples=3000, deadline=None)
@given(mixed_text)
def test_clusters_agree_with_the_oracle(text: str) -> None:
    if orphan_linker(text):
        return
    assert list(graphemes(text)) == regex.findall(r"\X", text)


@settings(max_examples=500, deadline=None)
@given(mixed_text)
def test_clusters_cover_the_text_exactly(text: str) -> None:
    clusters = list(graphemes(text))
    assert "".join(clusters) == text
    assert all(clusters)
