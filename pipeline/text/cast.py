"""A cast: which voice speaks each speaker of a marked-up text, and each speaker's seed.

- A speaker resolves through `cast[speaker]` (`"SPEAKER0"`, `"alice"`, `"dialogue"`).
- A `[voice:name]` tag whose name is not a cast key names the voice itself (Kokoro's form).
- `[SPEAKERn]` and dialogue (`"dialogue"`) have no such fallback: they need a cast entry.
- The narrator (text outside any tag) speaks with `narrator`, else with the request's own voice
  or reference (None here: "the request's default").

`check` runs before anything is queued: it names a speaker without a voice and every voice that
is not known (library voices, presets, the model servers' built-ins).
A speaker's seed is derived from the job's (or request's) seed and the speaker, never from the
chunk: every chunk of a character, in every chapter, samples alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.text.speakers import DIALOGUE


class CastError(ValueError):
    """The text's speakers cannot all be voiced (the message says which and why)."""


class UnknownVoice(CastError):
    """A cast, narrator or `[voice:name]` names a voice that is not known."""


def parse_cast(text: str | None, pair_sep: str = "\n") -> dict[str, str] | None:
    """A cast as a person writes it: a JSON object of {speaker: voice}, or `speaker=voice` pairs
    separated by `pair_sep` (lines on the studio's form, commas on the command line); None when
    blank; `CastError` naming what is wrong."""
    text = (text or "").strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            cast = json.loads(text)
        except ValueError:
            raise CastError('cast: not valid JSON; give {"speaker": "voice"} or speaker=voice pairs') from None
        if not isinstance(cast, dict) or not all(isinstance(v, str) for v in cast.values()):
            raise CastError("cast: give an object of speaker -> voice names")
        return {str(k).strip(): v.strip() for k, v in cast.items()}
    cast = {}
    for pair in text.split(pair_sep):
        if not pair.strip():
            continue
        speaker, sep, voice = pair.partition("=")
        if not sep or not speaker.strip() or not voice.strip():
            raise CastError(f"cast: {pair.strip()!r} is not speaker=voice")
        cast[speaker.strip()] = voice.strip()
    return cast


@dataclass(frozen=True)
class Cast:
    voices: dict[str, str] = field(default_factory=dict)
    narrator: str | None = None

    @classmethod
    def of(cls, cast: dict[str, str] | None, narrator: str | None = None) -> "Cast":
        return cls(dict(cast or {}), narrator or None)

    @property
    def empty(self) -> bool:
        return not self.voices and self.narrator is None

    def voice_for(self, speaker: str | None) -> str | None:
        """The voice name of `speaker`; None: the request's own voice or reference (narrator)."""
        if speaker is None:
            return self.narrator
        if speaker in self.voices:
            return self.voices[speaker]
        if _needs_cast(speaker):
            raise CastError(_missing_message(speaker))
        return speaker

    def check(self, speakers: Iterable[str], known: set[str] | None) -> list[str]:
        """The voice names the speakers (and the narrator and cast) use; `CastError` for a speaker
        without a voice or, when `known` is given, for a voice not in it."""
        used: dict[str, None] = {}
        for speaker in speakers:
            used.setdefault(self.voice_for(speaker) or "", None)
        for voice in [self.narrator, *self.voices.values()]:
            if voice:
                used.setdefault(voice, None)
        names = [v for v in used if v]
        if known is not None:
            unknown = [v for v in names if v not in known]
            if unknown:
                raise UnknownVoice(f"Unknown voice{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                                f"in the cast or text; known voices: {', '.join(sorted(known)) or 'none'}")
        return names


def _needs_cast(speaker: str) -> bool:
    return speaker == DIALOGUE or (speaker.startswith("SPEAKER") and speaker[7:].isdigit())


def _missing_message(speaker: str) -> str:
    if speaker == DIALOGUE:
        return 'dialogue mode needs a dialogue voice: give cast {"dialogue": "<voice>"}'
    return f'the text has [{speaker}] but the cast gives it no voice: add cast {{"{speaker}": "<voice>"}}'


def speaker_seed(seed: int, speaker: str | None) -> int:
    """The seed of `speaker`'s chunks: `seed` itself for the narrator, else one derived from
    `seed` and the speaker's name (stable across chunks, chapters and processes)."""
    if speaker is None:
        return seed
    digest = hashlib.sha256(f"{seed}:{speaker}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
