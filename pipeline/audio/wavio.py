"""Reading the WAV files the store holds, with nothing heavier than numpy and soundfile.

The assembler imports only this (not `pipeline.audio.checks`, which pulls in scipy for resampling and
the loudness meter): a process that joins chapters stays small.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a well-formed WAV (what the store holds) into int16 samples and the rate."""
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    return samples, rate
