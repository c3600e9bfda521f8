"""Every code point's grapheme properties as one byte, in a two-stage table for ``_clusters``.

The compiled segmenter looks a character up in two steps (its block of 256,
then its place there); blocks that are alike are stored once, so the table
is small. It is built here, from the same ``_unicode_tables`` as the
patterns, so the two segmenters can never disagree about a property.
"""

from __future__ import annotations

import array

from reverserd import _unicode_tables as tables
from reverserd import graphemes
from reverserd.graphemes import Ranges

CODE_POINTS = 0x110000
BLOCK_SIZE = 256
# Break values, numbered as in _clusters.c (and the tests' rules).
CONTROL, EXTEND, ZWJ, REGIONAL_INDICATOR, PREPEND, SPACING_MARK = 3, 4, 5, 6, 7, 8
L, V, T, LV, LVT = 9, 10, 11, 12, 13
PICTOGRAPHIC = 0x10
CONSONANT, CONJUNCT_EXTEND, LINKER = 1 << 5, 2 << 5, 3 << 5


def _set(properties: bytearray, ranges: Ranges, value: int) -> None:
    for start, end in ranges:
        properties[start:end + 1] = bytes([value]) * (end + 1 - start)


def _add(properties: bytearray, ranges: Ranges, bits: int) -> None:
    with_bits = bytes(byte | bits for byte in range(256))
    for start, end in ranges:
        properties[start:end + 1] = properties[start:end + 1].translate(with_bits)


def properties() -> bytearray:
    """One byte per code point: break value, pictographic bit, conjunct value."""
    found = bytearray(CODE_POINTS)
    # Where a code point has two values, the earlier table wins, as in UAX #29's data.
    # Control is the patterns' (surrogates, CR and LF included: see graphemes).
    for value, ranges in reversed([
            (CONTROL, graphemes.CONTROL), (ZWJ, graphemes.ZWJ), (EXTEND, tables.EXTEND),
            (SPACING_MARK, tables.SPACINGMARK), (PREPEND, tables.PREPEND),
            (REGIONAL_INDICATOR, tables.REGIONAL_INDICATOR), (L, tables.L), (V, tables.V),
            (T, tables.T), (LV, tables.LV), (LVT, tables.LVT)]):
        _set(found, ranges, value)
    _add(found, tables.EXTENDED_PICTOGRAPHIC, PICTOGRAPHIC)
    # Indic_Conjunct_Break has one value per code point.
    _add(found, tables.INCB_CONSONANT, CONSONANT)
    _add(found, tables.INCB_EXTEND, CONJUNCT_EXTEND)
    _add(found, tables.INCB_LINKER, LINKER)
    return found


def two_stage(table: bytearray) -> tuple[bytes, bytes]:
    """The block index (one native unsigned short per block) and the distinct blocks."""
    numbers: dict[bytes, int] = {}
    index = array.array("H")
    for start in range(0, len(table), BLOCK_SIZE):
        block = bytes(table[start:start + BLOCK_SIZE])
        index.append(numbers.setdefault(block, len(numbers)))
    return index.tobytes(), b"".join(numbers)
