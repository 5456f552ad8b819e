"""Speaker markup: text into ordered (speaker, text) segments, and chunks that never mix voices.

Two tag forms are read; tags are never spoken (they are not part of any segment's text):

- `[SPEAKER0]` .. `[SPEAKER9]` (Higgs Audio's own form), only at the start of a line (spaces
  before it allowed): the speaker is `"SPEAKER0"` .. `"SPEAKER9"`.
- `[voice:name]` (Kokoro-FastAPI's form) anywhere; `name` is 1-64 of `A-Za-z0-9_-`: the speaker
  is `name` (a cast key, or a voice name itself).

A tag's speaker lasts until the next tag or the end of its paragraph (a blank line, a form
feed); text outside any tag is the narrator's (speaker None). Anything else in brackets stays
plain text: `[SPEAKER12]`, `[voice:]`, `[note]`, a `[SPEAKER1]` inside a line.

Dialogue mode (`dialogue=True`, for books): inside the narrator's text, quoted speech is the
speaker `"dialogue"`: "...", “...” and ‘...’, each opened at the start of a word and closed
within the same paragraph; the quote marks stay with the speech. An apostrophe (don’t, dogs’)
never opens a quote; an unclosed quote is narration. Explicit tags always win: quotes inside a
tag's text stay the tag's. The heuristic does not attribute quotes to characters ("said Alice"
is not read), and treats straight single quotes ('...') as apostrophes.

`split_speakers` runs `split_text` on each segment, so a chunk never spans two speakers; chunks
come in text order, numbered 0, 1, 2, ...; their `start`/`end` are offsets into `spoken_text`
(the segments' normalised texts joined by one space). Text without markup (and without quotes in
dialogue mode) is one narrator segment: exactly `split_text(text)`, speaker None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.text.split import (
    DEFAULT_MAX_CHARS, DEFAULT_MAX_WORDS, DEFAULT_TARGET_WORDS, normalise, split_text,
)

DIALOGUE = "dialogue"

_SPEAKER_TAG = r"(?m:^[^\S\r\n]*\[(SPEAKER[0-9])\])"
_VOICE_TAG = r"\[voice:([A-Za-z0-9_-]{1,64})\]"
_PARAGRAPH = r"(?:\r\n|[\n\r\u2028\x85])[^\S\r\n\u2028\x85]*(?:\r\n|[\n\r\u2028\x85])|[\f\v\u2029\x1c\x1d\x1e]"
_MARKUP = re.compile(f"{_SPEAKER_TAG}|{_VOICE_TAG}|({_PARAGRAPH})")
_OPENERS_BEFORE = "([{—–-«"  # a quote opens after whitespace, the start, or one of these
_QUOTES = {'"': '"', "“": "”", "‘": "’"}


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of text one speaker speaks (None: the narrator); `text` is a slice of the original
    text (tags removed), with its whitespace, so paragraph breaks still guide the splitter."""

    speaker: str | None
    text: str


@dataclass(frozen=True, slots=True)
class SpeakerChunk:
    """A chunk of one speaker's text: `spoken_text(...)[start:end] == text`."""

    text: str
    start: int
    end: int
    index: int
    speaker: str | None

    @property
    def words(self) -> int:
        return self.text.count(" ") + 1


def has_markup(text: str) -> bool:
    """True when `text` holds a speaker tag (`[SPEAKERn]` at a line start or `[voice:name]`)."""
    return any(m.group(1) or m.group(2) for m in _MARKUP.finditer(text))


def segments(text: str, dialogue: bool = False) -> list[Segment]:
    """The text's speakers in order; empty (whitespace-only) segments are left out."""
    pieces: list[Segment] = []
    speaker: str | None = None
    pos = 0

    def emit(end: int) -> None:
        piece = text[pos:end]
        if not piece.strip():
            return
        if speaker is None and dialogue:
            pieces.extend(_quoted(piece))
        else:
            pieces.append(Segment(speaker, piece))

    for match in _MARKUP.finditer(text):
        if match.group(3) is not None:  # a paragraph ends: back to the narrator
            if speaker is not None:
                emit(match.start())
                pos, speaker = match.start(), None
            continue
        emit(match.start())
        pos = match.end()
        speaker = match.group(1) or match.group(2)
    emit(len(text))
    return pieces


def _quoted(text: str) -> list[Segment]:
    """Narration with its quoted speech as `DIALOGUE` segments (see the module docstring)."""
    out: list[Segment] = []
    pos = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        close = _QUOTES.get(ch)
        if close is None or not _opens(text, i):
            i += 1
            continue
        end = _closing(text, i + 1, close)
        if end is None:
            i += 1
            continue
        if text[pos:i].strip():
            out.append(Segment(None, text[pos:i]))
        out.append(Segment(DIALOGUE, text[i:end + 1]))
        pos = i = end + 1
    if text[pos:].strip():
        out.append(Segment(None, text[pos:]))
    return out


def _opens(text: str, i: int) -> bool:
    before = text[i - 1] if i > 0 else " "
    after = text[i + 1] if i + 1 < len(text) else " "
    return (before.isspace() or before in _OPENERS_BEFORE or before in "“‘\"") and not after.isspace()


def _closing(text: str, start: int, close: str) -> int | None:
    """Index of the quote's closing mark in the same paragraph, or None."""
    stop = re.compile(_PARAGRAPH).search(text, start)
    limit = stop.start() if stop else len(text)
    j = start
    while True:
        j = text.find(close, j, limit)
        if j < 0:
            return None
        after = text[j + 1] if j + 1 < len(text) else " "
        # A closing mark follows the speech directly and is not inside a word ("don’t").
        if not text[j - 1].isspace() and not after.isalnum():
            return j
        j += 1


def spoken_text(parts: list[Segment]) -> str:
    """What the chunks' positions index: each segment normalised, joined by one space."""
    return " ".join(t for t in (normalise(s.text) for s in parts) if t)


def split_speakers(
    text: str,
    dialogue: bool = False,
    max_words: int = DEFAULT_MAX_WORDS,
    target_words: int = DEFAULT_TARGET_WORDS,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[SpeakerChunk]:
    """`split_text` per speaker segment: no chunk holds two speakers; see the module docstring."""
    chunks: list[SpeakerChunk] = []
    base = 0
    for segment in segments(text, dialogue):
        flat = normalise(segment.text)
        if not flat:
            continue
        for chunk in split_text(segment.text, max_words, target_words, max_chars):
            chunks.append(SpeakerChunk(chunk.text, base + chunk.start, base + chunk.end, len(chunks),
                                       segment.speaker))
        base += len(flat) + 1
    return chunks


def speakers_in(text: str, dialogue: bool = False) -> list[str]:
    """The distinct speakers of `text` in order of first appearance (the narrator left out)."""
    seen: dict[str, None] = {}
    for segment in segments(text, dialogue):
        if segment.speaker is not None:
            seen.setdefault(segment.speaker, None)
    return list(seen)
