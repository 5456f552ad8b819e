"""Capitals: shouted words read as words, acronyms spelled letter by letter."""

from __future__ import annotations

import bisect
import re

# Said as words, never spelled.
WORD_ACRONYMS = frozenset(
    "NASA NATO UNESCO UNICEF NAFTA OPEC FIFA UEFA COVID AIDS SCUBA LASER RADAR SONAR ASAP PIN GIF "
    "JPEG NASDAQ OK".split()
)
# Spelled even inside quotes ("Call the FBI!").
SPELLED = frozenset(
    "FBI CIA NSA USA UK EU UN BBC CNN NHS TV DNA RNA CEO CFO MP DJ PC PDF URL USB GPS ID IQ "
    "ATM UFO VIP FAQ HIV IBM MIT NYC LA DC AI".split()
)
_ROMAN = re.compile(r"[IVX]+")  # Henry VIII, World War II: left for the model
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
_CAPS = re.compile(r"(?<!\w)([A-Z]{2,})(s|['’]s)?\b")
_RUN = re.compile(r"\b[A-Z]{2,}\b(?:[\s,;:!?.'’-]+\b[A-Z]{2,}\b)+")  # two or more shouted words


def _spell(letters: str) -> str:
    return " ".join(letters)


def _as_word(word: str, first: bool) -> str:
    return word.capitalize() if first else word.lower()


def _is_first(text: str, start: int) -> bool:
    before = text[max(0, start - 20):start].rstrip(" \"“'‘")
    return not before or before.endswith((".", "!", "?"))


def _one(text: str, match: re.Match, quoted: bool, shouted: set[int]) -> str:
    letters, suffix = match.group(1), match.group(2) or ""
    if _ROMAN.fullmatch(letters) or letters in WORD_ACRONYMS:
        return match.group(0)
    if letters in SPELLED or (not quoted and match.start() not in shouted and len(letters) <= 4):
        return _spell(letters) + suffix
    return _as_word(letters, _is_first(text, match.start())) + suffix


def caps(text: str) -> str:
    quoted_spans = [m.span() for m in _QUOTED.finditer(text)]
    starts = [a for a, _ in quoted_spans]
    shouted = {m.start() for run in _RUN.finditer(text) for m in _CAPS.finditer(text, run.start(), run.end())}

    def say(match: re.Match) -> str:
        i = bisect.bisect_left(starts, match.start()) - 1  # the quote opened last before it
        quoted = i >= 0 and match.start() < quoted_spans[i][1]
        return _one(text, match, quoted, shouted)

    return _CAPS.sub(say, text)
