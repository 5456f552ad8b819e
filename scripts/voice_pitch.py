"""Median pitch (F0) of each Piper engine voice: `python scripts/voice_pitch.py [TEXT]`.

Loads the Piper engine (the `local` extra), speaks TEXT with every variant at temperature 0 (no
noise: the figures repeat exactly) and prints each variant's median F0 over voiced frames
(`pipeline/audio/pitch.py`), its ratio to the voice as it is and the audio's length.
"""

from __future__ import annotations

import sys

from pipeline.audio.pitch import median_f0
from pipeline.engines.piper import PiperConfig, PiperEngine
from pipeline.engines.piper_voices import HIGGS_VARIANTS, VARIANTS

TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. "
        "Winston Smith slipped quickly through the glass doors of Victory Mansions.")


def main() -> int:
    text = " ".join(sys.argv[1:]) or TEXT
    engine = PiperEngine(PiperConfig(threads=1))
    try:
        base = None
        print(f"{'voice':<12} {'pitch':>6} {'tempo':>6} {'median F0':>10} {'ratio':>6} {'length':>7}  Higgs names")
        for variant in VARIANTS:
            speech = engine.speak(text, temperature=0.0, variant=variant)
            f0 = median_f0(speech.samples, speech.sample_rate_hz)
            base = base or f0
            name = engine.voices.name_of(variant)
            higgs = ", ".join(h for h, s in HIGGS_VARIANTS.items() if s == variant.suffix)
            print(f"{name:<12} {float(variant.pitch):6.2f} {float(variant.tempo):6.2f} {f0:8.1f} Hz "
                  f"{f0 / base:6.2f} {speech.samples.size / speech.sample_rate_hz:6.2f}s  {higgs}")
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
