"""Splitting a chapter's text into speakable chunks under a word and character budget.

What callers can rely on, for any input string:

- `normalise(text)` is the canonical text: Unicode NFC, every whitespace run (as `str.isspace`
  sees it: newlines, tabs, no-break spaces...) replaced by one space, ends stripped. Nothing else
  changes: no case, punctuation or character substitutions. It is idempotent.
- `split_text(text)` returns chunks whose text is a contiguous slice of `normalise(text)`
  (`normalised[c.start:c.end] == c.text`), in order, with `index` 0, 1, 2, ... Consecutive chunks
  are separated by exactly one space of the normalised text, or by nothing when a "word" longer
  than the character budget had to be cut (a 500-character URL, text in a script written without
  spaces). So `join_chunks(chunks) == normalise(text)` always, and
  `" ".join(c.text for c in chunks) == normalise(text)` whenever no word exceeds `max_chars`.
- Every chunk is non-empty, has no whitespace at either end, holds at most `max_words` words
  (space-separated pieces) and at most `max_chars` characters. Empty or whitespace-only text
  gives no chunks.

How the cut points are chosen (quality, not contract): sentences end at . ! ? ... unless the
period belongs to an abbreviation (Mr. Dr. St. e.g. U.S.), an initial (J. R. R. Tolkien) or a
numbered reference (No. 5, p. 12), and unless the next word starts in lower case (`"Stop!" she
said.` stays whole); a paragraph break (blank line, form feed) always ends a sentence, and is the
preferred end of a chunk. Short sentences are merged up to `target_words`; a sentence is kept
whole up to `max_words`; a longer one is cut at its strongest boundaries first: ; : and dashes,
then a comma before a conjunction, then any comma or bracket, then before a conjunction or at a
line break, then between any two words, and only then inside a word. Its pieces aim at the
target and are balanced, so an unpunctuated 60-word run becomes 30 + 30, not 40 + 20. Numbers
(3.14, 1,000, $4.50) contain no space, so they are never cut.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# ~16 s and ~20 s of speech at 2.5 words/s; 400 characters is ~65 average English words, so the
# character budget only binds on text with very long words (URLs, chemistry, no-space scripts).
DEFAULT_TARGET_WORDS = 40
DEFAULT_MAX_WORDS = 50
DEFAULT_MAX_CHARS = 400

# Boundary strengths between two consecutive words, strongest (preferred cut) first.
SENTENCE, STRONG, COMMA_CONJ, COMMA, CONJ, WORD, AVOID = range(7)

_TOKEN = re.compile(r"\S+")  # `\s` is exactly `str.isspace`, so this agrees with `str.split()`
_CLOSERS = "\"'”’»›)]}"
_OPENERS = "\"'“‘„«‹([{¿¡"
_EXCLAIM = "!?‽！？"
_DASHES = "—–"
_TRAILING = _CLOSERS + _EXCLAIM + ".,;:…"  # a token of these alone ends the word before it
# Inside an over-long word, a cut just after one of these reads best.
_SOFT_CUT = "-/_.,;:–—&=?"
_ABBREVIATION_DOTS = re.compile(r"(?:[^\W\d_]\.){2,}")  # e.g. i.e. U.S. a.m. U.S.A.
_LIST_NUMBER = re.compile(r"\d{1,3}\.")
_ALNUM = re.compile(r"[^\W_]")
_LINE_BREAK = re.compile("\r\n|[\n\r\u2028\x85]")

# A period after these never ends a sentence: a name or a number follows.
_TITLES = frozenset(
    "mr mrs ms mx dr prof st sr jr rev hon fr capt gen col lt sgt cmdr adm gov sen rep pres "
    "vs cf viz approx ca mt ft messrs mme mlle".split()
)
# A period after these does not end a sentence when a number follows: "No. 5", "p. 12".
_NUMBERED = frozenset("no nos p pp fig figs vol vols ch chap sec art eq op ed par ref".split())
_CONJUNCTIONS = frozenset(
    "and but or nor so yet because although though while whereas which who whom whose where "
    "when unless until since if then however".split()
)
# Cut before these even without a comma, when a long unpunctuated run must be cut somewhere.
_BARE_CONJUNCTIONS = frozenset(
    "and but or nor because although though while whereas unless until".split()
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of the normalised text: `text == normalised[start:end]`, `index` counts from 0."""

    text: str
    start: int
    end: int
    index: int

    @property
    def words(self) -> int:
        return self.text.count(" ") + 1


def normalise(text: str) -> str:
    """The canonical form chunks are compared against (see the module docstring)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def join_chunks(chunks: Sequence[Chunk]) -> str:
    """Rebuild the normalised text from consecutive chunks of one `split_text` call."""
    parts: list[str] = []
    prev_end: int | None = None
    for chunk in chunks:
        if prev_end is not None and chunk.start > prev_end:
            parts.append(" ")
        parts.append(chunk.text)
        prev_end = chunk.end
    return "".join(parts)


def split_text(
    text: str,
    max_words: int = DEFAULT_MAX_WORDS,
    target_words: int = DEFAULT_TARGET_WORDS,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[Chunk]:
    """Cut `text` into chunks within the budget; see the module docstring for the guarantees.

    A target above `max_words` (the default target is 40) is lowered to `max_words`, so setting
    only the maximum works. Raises ValueError for a budget below 1.
    Linear in the text's length: a 200,000-character chapter takes a fraction of a second.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    if min(max_words, target_words, max_chars) < 1:
        raise ValueError(f"bad chunk budget: max_words={max_words} target_words={target_words} "
                         f"max_chars={max_chars} (each must be >= 1)")
    target_words = min(target_words, max_words)
    nfc = unicodedata.normalize("NFC", text)
    matches = list(_TOKEN.finditer(nfc))
    if not matches:
        return []
    tokens = [m.group() for m in matches]
    # The whitespace before each token, from the original text: paragraph breaks guide the cuts
    # even though normalising turns them into single spaces.
    gaps = [nfc[: matches[0].start()]] + [
        nfc[a.end() : b.start()] for a, b in zip(matches, matches[1:])
    ]
    normalised = " ".join(tokens)
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for token in tokens:
        starts.append(pos)
        pos += len(token)
        ends.append(pos)
        pos += 1
    breaks = [0 if gap == " " else _breaks(gap) for gap in gaps]
    paragraph_starts = {starts[i] for i in range(1, len(breaks)) if breaks[i] >= 2}
    splitter = _Splitter(normalised, starts, ends, _strengths(tokens, breaks), paragraph_starts,
                         max_words, target_words, max_chars)
    units = splitter.split_all()
    return [Chunk(normalised[s:e], s, e, i) for i, (s, e, _) in enumerate(units)]


# --- boundaries -------------------------------------------------------------------------------


def _strengths(tokens: list[str], breaks: list[int]) -> list[int]:
    """strength[i] rates the boundary between tokens[i] and tokens[i + 1] (lower = better cut).

    breaks[i] is the kind of whitespace before tokens[i] (see `_breaks`).
    """
    n = len(tokens)
    has_alnum = [_ALNUM.search(token) is not None for token in tokens]
    # For "is the next sentence in lower case?" skip tokens without letters or digits (a lone
    # closing quote, a dash) and look at the first real word.
    next_word = [""] * n
    following = ""
    for i in range(n - 1, -1, -1):
        next_word[i] = following
        if has_alnum[i]:
            following = tokens[i]
    strength = [WORD] * max(n - 1, 0)
    for i in range(n - 1):
        level = _classify(tokens[i], tokens[i + 1], next_word[i], i == 0 or breaks[i] > 0)
        if breaks[i + 1] >= 2:
            level = SENTENCE
        elif breaks[i + 1] == 1:  # a list item or verse line; or just hard-wrapped prose
            level = min(level, CONJ)
        strength[i] = level
    # A token of only closing punctuation (a lone quote, ")", "!") belongs to the word before it:
    # move that word's boundary past it.
    for i in range(1, n):
        if not has_alnum[i] and tokens[i][0] in _TRAILING and breaks[i] == 0:
            if i < n - 1:
                strength[i] = min(strength[i], strength[i - 1])
            strength[i - 1] = AVOID
    return strength


def _breaks(gap: str) -> int:
    """0 for a plain space, 1 for a line break, 2 for a paragraph break."""
    if not gap:
        return 0
    if any(c in gap for c in "\f\v\u2029\x1c\x1d\x1e"):
        return 2
    return min(len(_LINE_BREAK.findall(gap)), 2)


def _classify(token: str, nxt: str, next_word: str, at_line_start: bool) -> int:
    level = WORD
    # Most tokens end in a letter: skip the punctuation checks (a third of the splitting time).
    core = "" if token[-1].isalnum() else token.rstrip(_CLOSERS)
    if core:
        last = core[-1]
        if last in ".…" or last in _EXCLAIM or last == "。":
            level = _sentence_end(core, next_word, at_line_start)
        elif last in ";:" or last in _DASHES or core.endswith("--") or core == "-":
            level = STRONG
        elif last == ",":
            level = COMMA_CONJ if _bare(nxt) in _CONJUNCTIONS else COMMA
        elif core != token:  # ends with a closing bracket or quote: "(see above) then"
            level = COMMA
    if nxt[0] in _DASHES and nxt.strip(_DASHES + "-"):  # "—then": a dash opens a clause
        level = min(level, STRONG)
    elif nxt[0] in "([":
        level = min(level, COMMA)
    elif _bare(nxt) in _BARE_CONJUNCTIONS:
        level = min(level, CONJ)
    return level


def _sentence_end(core: str, next_word: str, at_line_start: bool) -> int:
    first = next((c for c in next_word if c.isalnum()), "")
    next_is_lower = first.islower()
    if core[-1] != "." or core.endswith("..."):  # ! ? … ... 。
        return STRONG if next_is_lower else SENTENCE
    word = core.lstrip(_OPENERS)
    stem = word[:-1].lower()
    if stem in _TITLES or _ABBREVIATION_DOTS.fullmatch(word):
        return AVOID
    if len(word) == 2 and word[0].isupper():  # an initial: "J. R. R. Tolkien"
        return AVOID
    if first.isdigit() and stem in _NUMBERED:
        return AVOID
    if at_line_start and _LIST_NUMBER.fullmatch(word):  # "1. Buy milk" in a list
        return AVOID
    return WORD if next_is_lower else SENTENCE


def _bare(token: str) -> str:
    return token.strip(_OPENERS + _CLOSERS + ".,;:!?").lower()


def _is_mark(ch: str) -> bool:
    """True for characters that must stay with the one before (accents, joiners, selectors)."""
    return unicodedata.category(ch) in ("Mn", "Mc", "Me") or ch in "\u200d\u200c"


# --- cutting and packing ----------------------------------------------------------------------

# A unit is (start, end, words) in the normalised text.
_Unit = tuple[int, int, int]


class _Splitter:
    def __init__(self, normalised: str, starts: list[int], ends: list[int], strength: list[int],
                 paragraph_starts: set[int], max_words: int, target_words: int,
                 max_chars: int) -> None:
        self.text = normalised
        self.starts = starts
        self.ends = ends
        self.strength = strength
        self.max_words = max_words
        self.target_words = target_words
        self.max_chars = max_chars
        self.paragraph_starts = paragraph_starts

    def split_all(self) -> list[_Unit]:
        units: list[_Unit] = []
        begin = 0
        for i, level in enumerate(self.strength):
            if level == SENTENCE:
                units.extend(self.segment(begin, i + 1, self.max_words))
                begin = i + 1
        units.extend(self.segment(begin, len(self.starts), self.max_words))
        return self.pack(units)

    def segment(self, a: int, b: int, limit_words: int) -> list[_Unit]:
        """Tokens a..b-1 as units of at most `limit_words`, cut at the strongest boundaries.

        A sentence is left whole up to the maximum; once it must be cut, its pieces aim at the
        target, so one over-long sentence does not become a full chunk plus a scrap.
        """
        start, end = self.starts[a], self.ends[b - 1]
        if b - a <= limit_words and end - start <= self.max_chars:
            return [(start, end, b - a)]
        if b - a == 1:
            return self.cut_word(start, end)
        inner = self.strength[a : b - 1]
        level = min(inner)
        units: list[_Unit] = []
        begin = a
        for offset, strength in enumerate(inner):
            if strength == level:
                units.extend(self.segment(begin, a + offset + 1, self.target_words))
                begin = a + offset + 1
        units.extend(self.segment(begin, b, self.target_words))
        return self.pack(units)

    def cut_word(self, start: int, end: int) -> list[_Unit]:
        """One over-long word as balanced pieces of at most max_chars characters."""
        text = self.text
        pieces = math.ceil((end - start) / self.max_chars)
        size = math.ceil((end - start) / pieces)
        units: list[_Unit] = []
        pos = start
        while end - pos > self.max_chars:
            cut = pos + size
            # Prefer a cut just after a hyphen, slash or dot in the last third of the piece.
            for c in range(cut, pos + max(1, size * 2 // 3), -1):
                if text[c - 1] in _SOFT_CUT:
                    cut = c
                    break
            # Never separate an accent or joiner from the character before it, if avoidable.
            c = cut
            while c > pos + 1 and (_is_mark(text[c]) or text[c - 1] in "\u200d"):
                c -= 1
            if c > pos + 1 or not (_is_mark(text[c]) or text[c - 1] in "\u200d"):
                cut = c
            units.append((pos, cut, 1))
            pos = cut
        units.append((pos, end, 1))
        return units

    def pack(self, units: list[_Unit]) -> list[_Unit]:
        """Merge neighbouring units up to the target, balancing the groups.

        A unit joins the current group only while the group stays within the target and the
        character budget, and while that brings the group nearer to the ideal size (the remaining
        words spread evenly over the fewest groups that can hold them), so a run of 60 words
        packs as 30 + 30 rather than 40 + 20.
        """
        if len(units) < 2:
            return units
        packed: list[_Unit] = []
        remaining = sum(u[2] for u in units)
        ideal = self._ideal(remaining)
        cur = units[0]
        for unit in units[1:]:
            glued = unit[0] == cur[1]
            words = cur[2] + unit[2] - glued
            if (
                # a paragraph break is the better place to end a chunk that is half full
                not (unit[0] in self.paragraph_starts and cur[2] >= ideal / 2)
                and words <= self.target_words
                and unit[1] - cur[0] <= self.max_chars
                and cur[2] + unit[2] / 2 <= ideal
            ):
                cur = (cur[0], unit[1], words)
            else:
                packed.append(cur)
                remaining -= cur[2]
                ideal = self._ideal(remaining)
                cur = unit
        packed.append(cur)
        return packed

    def _ideal(self, remaining: int) -> float:
        remaining = max(remaining, 1)
        return remaining / math.ceil(remaining / self.target_words)
