"""Waveform and WAV framing for the sim engine (the Higgs Audio v2 stand-in).

What callers can rely on:

- `synthesize` returns 24 kHz mono int16 samples, a pure function of
  (text, seed, voice, words_per_s, temperature); with temperature 0 the seed is
  ignored, as greedy decoding would. Duration is words / words_per_s seconds
  (at least `MIN_DURATION_S`), peak at about -6 dBFS, never clipping.
- The signal is "speech-like" for level and gap checks: a harmonic tone whose
  pitch depends on the voice and a hash of the text, amplitude-modulated at
  about four syllables per second, with silent gaps between words.
- `wav_bytes` writes a canonical 44-byte-header PCM_16 WAV; `speech_chunks`
  and `glued_wav_bytes` reproduce the real server's chunk schedule, where every
  chunk is a complete WAV file of its own.
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import numpy as np

SAMPLE_RATE_HZ = 24_000
AUDIO_TOKENS_PER_S = 25
SAMPLES_PER_TOKEN = SAMPLE_RATE_HZ // AUDIO_TOKENS_PER_S  # 960: one codec frame
# The real server's streaming schedule: 17 frames first, then 25 frames per chunk.
FIRST_CHUNK_SAMPLES = 16_320  # 0.68 s
CHUNK_SAMPLES = 24_000  # 1.0 s
MIN_DURATION_S = 0.5
PEAK_DBFS = -6.0

_SYLLABLES_PER_S = 4.0
_WORD_GAP_S = 0.06
_TABLE_BITS = 12
_CTRL_SAMPLES = 24  # 1 ms at 24 kHz


def duration_for_text_s(text: str, words_per_s: float) -> float:
    """Seconds of audio the stand-in speaks for `text` (before any max_tokens cut)."""
    return max(MIN_DURATION_S, len(text.split()) / words_per_s)


def tokens_for_samples(n_samples: int) -> int:
    """Audio tokens (codec frames) needed to cover `n_samples`; 25 per second."""
    return -(-n_samples // SAMPLES_PER_TOKEN)


def synthesize(
    text: str,
    *,
    seed: int = 0,
    voice: str = "",
    words_per_s: float = 2.5,
    temperature: float = 1.0,
) -> np.ndarray:
    """Speech-like int16 samples at 24 kHz for `text`; deterministic (see module doc).

    The returned array is shared by a small cache: treat it as read-only.
    """
    effective_seed = 0 if temperature == 0 else seed
    return _synthesize_cached(text, effective_seed, voice, float(words_per_s), float(temperature))


@lru_cache(maxsize=64)
def _synthesize_cached(
    text: str, seed: int, voice: str, words_per_s: float, temperature: float
) -> np.ndarray:
    # Benchmarks repeat a handful of texts thousands of times; the cache keeps
    # the stand-in's own CPU out of the numbers.
    words = text.split() or [""]
    n_samples = round(duration_for_text_s(text, words_per_s) * SAMPLE_RATE_HZ)
    digest = hashlib.sha256(f"{voice}\0{seed}\0{text}".encode()).digest()
    rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
    voice_hash = int.from_bytes(hashlib.sha256(voice.encode()).digest()[:4], "little")

    # Envelope and pitch change slowly, so they are computed once per
    # millisecond ("control rate") and only the oscillator runs per sample.
    n_ctrl = -(-n_samples // _CTRL_SAMPLES)
    ctrl_hz = SAMPLE_RATE_HZ / _CTRL_SAMPLES

    # Word spans proportional to word length; the last part of each is silence.
    weights = np.array([len(w) + 3 for w in words], dtype=np.float64)
    edges = np.rint(np.concatenate(([0.0], np.cumsum(weights))) / weights.sum() * n_ctrl)
    edges = edges.astype(np.int64)
    starts, lengths = edges[:-1], np.diff(edges)
    gaps = np.minimum(_WORD_GAP_S * ctrl_hz, 0.3 * lengths)
    voiced = np.maximum(lengths - gaps, 1.0)
    syllables = np.maximum(1.0, np.rint(voiced / ctrl_hz * _SYLLABLES_PER_S))

    word_of = np.repeat(np.arange(len(words)), lengths)
    frac = (np.arange(n_ctrl) - starts[word_of]) / voiced[word_of]  # > 1 in the gap
    in_word = frac < 1.0
    frac = np.minimum(frac, 1.0)
    syllable = np.sin(np.pi * ((frac * syllables[word_of]) % 1.0)) ** 2
    loudness = rng.uniform(0.6, 1.0, size=len(words))[word_of]
    envelope = np.sqrt(np.sin(np.pi * frac)) * (0.35 + 0.65 * syllable) * loudness * in_word

    # Pitch: voice register, nudged by the text, with intonation and declination.
    t_s = np.arange(n_ctrl) / ctrl_hz
    f0_hz = 95.0 + (voice_hash % 1000) / 1000.0 * 130.0
    f0_hz *= 1.0 + 0.1 * (rng.random() - 0.5)
    word_pitch = 1.0 + rng.normal(0.0, 0.05 * temperature, size=len(words))[word_of]
    contour = 1.0 + 0.06 * np.sin(2 * np.pi * 0.5 * t_s + rng.uniform(0, 2 * np.pi))
    declination = 1.0 - 0.1 * t_s / max(t_s[-1], 1e-9)
    f_inst_hz = f0_hz * word_pitch * contour * declination

    # Per sample: a 32-bit phase accumulator (wraps for free) indexing one
    # wavetable of all harmonics, plus a slice of precomputed breath noise.
    step = np.rint(f_inst_hz * (2.0**32 / SAMPLE_RATE_HZ)).astype(np.uint32)
    phase = np.cumsum(np.repeat(step, _CTRL_SAMPLES)[:n_samples], dtype=np.uint32)
    table = _harmonic_table(tuple(rng.uniform(0.7, 1.3, size=5)))
    signal = table[phase >> np.uint32(32 - _TABLE_BITS)]
    signal *= np.repeat(envelope.astype(np.float32), _CTRL_SAMPLES)[:n_samples]
    noise = np.roll(_NOISE, int(rng.integers(len(_NOISE))))
    signal += np.resize(noise, n_samples) * np.repeat(in_word, _CTRL_SAMPLES)[:n_samples]

    peak = float(np.max(np.abs(signal))) or 1.0
    samples = (signal * np.float32(10 ** (PEAK_DBFS / 20) * 32767 / peak)).astype(np.int16)
    samples.setflags(write=False)
    return samples


def _harmonic_table(jitter: tuple[float, ...]) -> np.ndarray:
    phase = np.arange(2**_TABLE_BITS) / 2**_TABLE_BITS * 2 * np.pi
    amplitudes = np.array([1.0, 0.6, 0.35, 0.2, 0.1]) * np.array(jitter)
    table = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(amplitudes))
    return (table / np.max(np.abs(table))).astype(np.float32)


_NOISE = (0.02 * np.random.default_rng(0).standard_normal(SAMPLE_RATE_HZ)).astype(np.float32)


def wav_bytes(
    samples: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ, claimed_samples: int | None = None
) -> bytes:
    """A mono PCM_16 WAV of `samples` with a 44-byte header.

    `claimed_samples` writes a header that lies about the length (the RIFF and
    data sizes), as the broken real-server answers do; the data is still all there.
    """
    data = np.asarray(samples, dtype="<i2").tobytes()
    data_size = len(data) if claimed_samples is None else 2 * claimed_samples
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_size, b"WAVE",
        b"fmt ", 16, 1, 1, sample_rate_hz, 2 * sample_rate_hz, 2, 16,
        b"data", data_size,
    )
    return header + data


def speech_chunks(samples: np.ndarray) -> list[np.ndarray]:
    """Split like the real /v1/audio/speech stream: 0.68 s, then 1.0 s each, then the rest."""
    bounds = [0, *range(FIRST_CHUNK_SAMPLES, len(samples), CHUNK_SAMPLES), len(samples)]
    return [samples[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def glued_wav_bytes(samples: np.ndarray) -> bytes:
    """Several complete WAV files back to back, one per `speech_chunks` chunk.

    A reader that trusts the first header sees only the first 0.68 s.
    """
    return b"".join(wav_bytes(chunk) for chunk in speech_chunks(samples))
