"""Lines of non-ASCII text for the benchmark, and the replies they must get.

A reply is computed here with the ``regex`` package's ``\\X`` (extended
grapheme clusters, Unicode Standard Annex #29), never by reverserd, so a
server that reverses text wrongly fails the run instead of posting a figure.
A line of the text loads is 64 bytes, as in the ASCII loads, so lines/s
compare across loads: whole clusters, then ASCII letters up to 63 bytes,
then LF. No character or cluster is ever cut. The same seeds give the same
lines in every run.
"""

from __future__ import annotations

import random
import unicodedata

import regex

from bench_load import LINE_LENGTH

ASCII_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
CJK = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学"
# Words whose clusters hold more than one code point, script by script.
DEVANAGARI = ("क्षत्रिय", "ज्ञान", "त्रिशूल", "क्षमा", "हिन्दी", "नमस्ते", "संस्कृत", "विद्या",
              "प्रश्न", "किताब", "पुस्तक", "मैं")
VIETNAMESE = ("Tiếng Việt", "người", "Hà Nội", "phở", "cảm ơn", "Đà Nẵng", "những", "nước")
FRENCH = ("élève", "Noël", "garçon", "où", "naïve", "château", "déjà", "cœur", "être")
EMOJI = ("👨‍👩‍👧", "👨‍👩‍👧‍👦", "👩‍💻", "🧑‍🚀", "🏳️‍🌈", "👍🏽", "👋🏿", "🙌🏻", "🇫🇷", "🇯🇵",
         "🇻🇳", "🇮🇳", "🇰🇷")
COMBINING_MARKS = range(0x0300, 0x0370)


def clusters(text: str) -> list[str]:
    return regex.findall(r"\X", text)


def reply_to(line: bytes) -> bytes:
    """The line's text with its grapheme clusters in reverse order, ended as the line was."""
    end = b"\r\n" if line.endswith(b"\r\n") else b"\n"
    text = line[:-len(end)].decode("utf-8")
    return "".join(reversed(clusters(text))).encode("utf-8") + end


def single_code_point_lines(count: int) -> list[bytes]:
    """Cyrillic, CJK and ASCII words, where every code point is a cluster of its own."""
    rng = random.Random(1)
    lines = []
    for _ in range(count):
        words = [_word(rng, rng.choice((CYRILLIC, CJK)))]
        words += [" " + _word(rng, rng.choice((CYRILLIC, CJK, ASCII_LETTERS)))
                  for _ in range(32)]
        line = _fill(words, rng)
        text = line[:-1].decode()
        assert len(clusters(text)) == len(text), line
        lines.append(line)
    return lines


def multi_code_point_lines(count: int) -> list[bytes]:
    """Devanagari conjuncts and vowel signs, Vietnamese and French in NFD, Hangul
    conjoining jamo, emoji ZWJ sequences, skin tones and flags: clusters of many
    code points, which a reversal by code point would tear apart."""
    rng = random.Random(2)
    scripts = (DEVANAGARI, tuple(unicodedata.normalize("NFD", word) for word in VIETNAMESE),
               tuple(unicodedata.normalize("NFD", word) for word in FRENCH),
               tuple(_hangul_word(rng) for _ in range(64)), EMOJI)
    lines = []
    for number in range(count):
        words = [rng.choice(scripts[number % len(scripts)])]
        words += [" " + rng.choice(rng.choice(scripts)) for _ in range(32)]
        line = _fill(words, rng)
        assert any(len(cluster) > 1 for cluster in clusters(line[:-1].decode())), line
        lines.append(line)
    return lines


def combining_mark_lines(count: int, length: int) -> list[bytes]:
    """``length``-byte lines of letters each carrying 30 combining marks: one
    cluster of 61 bytes per letter, so a segmenter walks thousands of code
    points to find a few clusters."""
    lines = []
    for number in range(count):
        letters = [ASCII_LETTERS[(number + i) % 26] + "".join(
            chr(COMBINING_MARKS[(number + i * 7 + j) % len(COMBINING_MARKS)]) for j in range(30))
            for i in range(length // 61)]
        lines.append(_fill(letters, random.Random(number), length))
    return lines


def _hangul_word(rng: random.Random) -> str:
    """Syllables spelt with conjoining jamo (leading, vowel, optional trailing)."""
    return "".join(chr(rng.randint(0x1100, 0x1112)) + chr(rng.randint(0x1161, 0x1175))
                   + (chr(rng.randint(0x11A8, 0x11C2)) if rng.random() < 0.5 else "")
                   for _ in range(rng.randint(1, 4)))


def _word(rng: random.Random, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 8)))


def _fill(pieces: list[str], rng: random.Random, length: int = LINE_LENGTH) -> bytes:
    """The pieces (words, or clusters), in order, that still fit in ``length - 1``
    bytes when their turn comes (one too long for what is left is skipped, so
    the padding stays short), ASCII letters for the rest, and LF."""
    text = b""
    for piece in pieces:
        encoded = piece.encode()
        if len(text) + len(encoded) <= length - 1:
            text += encoded
    padding = "".join(rng.choice(ASCII_LETTERS) for _ in range(length - 1 - len(text)))
    return text + padding.encode() + b"\n"
