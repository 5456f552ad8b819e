"""WAV repair and the checks every model answer passes before it is stored.

The Higgs server's known defects (reference/higgs-vllm-api.md §3): `/v1/audio/speech` in `wav`
returns several WAV files glued together whose first header claims ~0.68 s; `pcm` is headerless;
headers may carry wrong length fields; a runaway generation fills `max_tokens` with silence.
No maintained library repairs such files (soundfile and `wave` trust the header), so the RIFF
walk below is ours; decoding and encoding of well-formed audio goes through soundfile.

Canonical audio (what the store holds, whatever the engine's rate): 24 kHz mono 16-bit, resampled
with scipy's polyphase resampler, leading/trailing silence trimmed to a small pad, loudness
measured as integrated LUFS (ITU-R BS.1770-4, `pipeline.audio.loudness`).
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from pipeline.audio.loudness import integrated_lufs
from pipeline.audio.wavio import decode_wav  # noqa: F401 (re-exported: callers import it from here)
from pipeline.contracts.errors import AudioInvalid

PCM16_MAX = 32767


@dataclass(frozen=True)
class WavFormat:
    sample_rate_hz: int
    channels: int
    bits_per_sample: int

    @property
    def block_align(self) -> int:
        return self.channels * self.bits_per_sample // 8


@dataclass
class RepairedWav:
    pcm: bytes
    fmt: WavFormat
    repairs: list[str] = field(default_factory=list)


def pcm16_to_wav(pcm: bytes, sample_rate_hz: int, channels: int = 1) -> bytes:
    """Wrap raw little-endian int16 PCM in a correct WAV header."""
    usable = len(pcm) - len(pcm) % (2 * channels)
    samples = np.frombuffer(pcm[:usable], dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels)
    return encode_wav(samples, sample_rate_hz)


def encode_wav(samples: np.ndarray, sample_rate_hz: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate_hz, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _parse_one(data: bytes, start: int) -> tuple[WavFormat, int, int, int]:
    """Parse the RIFF file at `start`: (format, data offset, claimed data length, RIFF end)."""
    if data[start : start + 4] != b"RIFF" or data[start + 8 : start + 12] != b"WAVE":
        raise AudioInvalid("not a WAV file (no RIFF/WAVE header)")
    (riff_len,) = struct.unpack_from("<I", data, start + 4)
    pos = start + 12
    fmt: WavFormat | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (chunk_len,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            if chunk_len < 16 or body + 16 > len(data):
                raise AudioInvalid("WAV fmt chunk is truncated")
            audio_format, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if audio_format not in (1, 0xFFFE) or bits != 16:
                raise AudioInvalid(f"unsupported WAV encoding (format {audio_format}, {bits} bits)")
            if channels < 1 or rate < 1000:
                raise AudioInvalid(f"implausible WAV format ({channels} channels, {rate} Hz)")
            fmt = WavFormat(rate, channels, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioInvalid("WAV data chunk before fmt chunk")
            return fmt, body, chunk_len, start + 8 + riff_len
        pos = body + chunk_len + (chunk_len & 1)
    raise AudioInvalid("WAV has no data chunk")


def _looks_like_chunk(data: bytes, pos: int) -> bool:
    head = data[pos : pos + 8]
    if len(head) < 8 or not all(32 <= b < 127 for b in head[:4]):
        return False
    (length,) = struct.unpack_from("<I", head, 4)
    return pos + 8 + length <= len(data)


def repair_wav(data: bytes) -> RepairedWav:
    """Recover all the PCM of a WAV answer, whatever its headers claim.

    Handles: glued files (each with its own header), data length fields that are too short,
    too long, zero or 0xFFFFFFFF (streaming), odd trailing bytes. Raises `AudioInvalid` when the
    bytes are not a 16-bit PCM WAV at all. `repairs` names what was wrong (empty when nothing).
    """
    fmt, offset, claimed, _ = _parse_one(data, 0)
    parts: list[bytes] = []
    repairs: list[str] = []
    pos = offset
    while True:
        remaining = len(data) - pos
        end = pos + claimed
        if claimed > remaining or claimed in (0, 0xFFFFFFFF):
            if claimed != remaining:
                repairs.append("data_length")
            parts.append(data[pos:])
            break
        parts.append(data[pos:end])
        nxt = end + (claimed & 1 if data[end : end + 4] != b"RIFF" else 0)
        if data[nxt : nxt + 4] == b"RIFF":
            next_fmt, pos, claimed, _ = _parse_one(data, nxt)
            if next_fmt != fmt:
                raise AudioInvalid("glued WAV files disagree on format")
            if "glued" not in repairs:
                repairs.append("glued")
            continue
        if nxt >= len(data) or _looks_like_chunk(data, nxt):
            break  # trailing chunks (LIST, ...) are legitimate and dropped
        # The header under-reports: the rest of the file is audio.
        repairs.append("data_length")
        parts.append(data[end:])
        break
    pcm = b"".join(parts)
    extra = len(pcm) % fmt.block_align
    if extra:
        pcm = pcm[: len(pcm) - extra]
        repairs.append("partial_frame")
    return RepairedWav(pcm=pcm, fmt=fmt, repairs=repairs)


def to_mono_int16(repaired: RepairedWav) -> np.ndarray:
    samples = np.frombuffer(repaired.pcm, dtype="<i2")
    if repaired.fmt.channels > 1:
        samples = samples.reshape(-1, repaired.fmt.channels).mean(axis=1).astype("<i2")
    return samples


def expected_duration_s(text: str, words_per_s: float) -> float:
    return max(1, len(text.split())) / words_per_s


@dataclass(frozen=True)
class AudioBounds:
    sample_rate_hz: int
    words_per_s: float = 2.5
    min_ratio: float = 0.3
    max_ratio: float = 3.0
    # Short texts vary most in relative terms: a fixed allowance on top of the ratio band.
    slack_s: float = 1.5
    max_clipped_fraction: float = 0.001
    # Silence kept before and after the speech when trimming.
    trim_pad_s: float = 0.1
    # More silence than this at either end is a runaway generation, not a pause.
    max_edge_silence_s: float = 2.0

    def duration_band_s(self, text: str) -> tuple[float, float]:
        expected = expected_duration_s(text, self.words_per_s)
        return max(0.1, expected * self.min_ratio), expected * self.max_ratio + self.slack_s


def check_audio(samples: np.ndarray, sample_rate_hz: int, text: str, bounds: AudioBounds) -> float:
    """Raise `AudioInvalid` with the reason when the audio cannot be the speech of `text`.

    Returns the duration in seconds.
    """
    if samples.size == 0:
        raise AudioInvalid("empty audio")
    if sample_rate_hz != bounds.sample_rate_hz:
        raise AudioInvalid(f"sample rate {sample_rate_hz} Hz, expected {bounds.sample_rate_hz} Hz")
    duration_s = samples.shape[0] / sample_rate_hz
    low_s, high_s = bounds.duration_band_s(text)
    if duration_s < low_s:
        raise AudioInvalid(f"audio too short: {duration_s:.2f} s for {len(text.split())} words (min {low_s:.2f} s)")
    if duration_s > high_s:
        raise AudioInvalid(f"audio too long: {duration_s:.2f} s for {len(text.split())} words (max {high_s:.2f} s)")
    low, high = int(samples.min()), int(samples.max())
    if high == 0 and low == 0:
        raise AudioInvalid("audio is pure silence")
    # Full scale is rare in good audio; count only when it is reached (a cheap test first).
    clipped = 0.0
    if high >= PCM16_MAX or low <= -PCM16_MAX:
        clipped = np.count_nonzero((samples >= PCM16_MAX) | (samples <= -PCM16_MAX)) / samples.size
    if clipped > bounds.max_clipped_fraction:
        raise AudioInvalid(f"audio clipped: {clipped:.2%} of samples at full scale")
    return duration_s


# ---------------------------------------------------------------- canonical audio

# int16 overflow turns +32768 into -32768: neighbouring samples then differ by ~65,000, which
# band-limited audio never does (that would be a full-scale step at the Nyquist frequency).
WRAP_JUMP = 49152
SILENCE_FRAME_S = 0.01
# A frame is silent below the loudest frame minus this, or below the absolute floor.
SILENCE_BELOW_PEAK_DB = 40.0
SILENCE_FLOOR_DBFS = -60.0
# BS.1770 measures 400 ms blocks: shorter audio has no integrated loudness.
LOUDNESS_MIN_S = 0.4


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """int16 mono samples at `to_hz`: polyphase FIR resampling (anti-aliased), clipped to int16.

    The output has `ceil(len * to_hz / from_hz)` samples, so the duration is kept to within
    one output sample.
    """
    if from_hz == to_hz:
        return np.asarray(samples, dtype=np.int16)
    if samples.size == 0:
        return np.zeros(0, dtype=np.int16)
    g = math.gcd(from_hz, to_hz)
    out = resample_poly(np.asarray(samples, dtype=np.float32), to_hz // g, from_hz // g)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def count_wrapped(samples: np.ndarray) -> int:
    """How many neighbouring sample pairs jump like an int16 overflow (a wrapped sample)."""
    if samples.size < 2:
        return 0
    jumps = np.abs(np.diff(samples.astype(np.int32)))
    return int(np.count_nonzero(jumps > WRAP_JUMP))


def speech_span(samples: np.ndarray, sample_rate_hz: int) -> tuple[int, int] | None:
    """(first, end) sample index of the non-silent part, or None when all of it is silence.

    Silence is judged on 10 ms frames: RMS below the loudest frame minus 40 dB, or below -60 dBFS.
    """
    frame = max(1, int(sample_rate_hz * SILENCE_FRAME_S))
    n_frames = samples.size // frame
    if n_frames == 0:
        return (0, samples.size) if np.any(samples) else None
    body = samples[: n_frames * frame].reshape(n_frames, frame).astype(np.float32)
    rms = np.sqrt(np.einsum("ij,ij->i", body, body) / frame) / 32768.0
    peak = float(rms.max())
    if peak <= 0.0:
        return None
    threshold = max(10 ** (SILENCE_FLOOR_DBFS / 20), peak * 10 ** (-SILENCE_BELOW_PEAK_DB / 20))
    active = np.flatnonzero(rms >= threshold)
    if active.size == 0:
        return None
    end = samples.size if active[-1] == n_frames - 1 else int(active[-1] + 1) * frame
    return int(active[0]) * frame, end


def loudness_lufs(samples: np.ndarray, sample_rate_hz: int) -> float | None:
    """Integrated loudness (ITU-R BS.1770-4, gated) in LUFS; None for silence or < 0.4 s.

    Scaling the samples by g moves the result by 20*log10(g) dB (the gates are relative).
    """
    if samples.size < int(LOUDNESS_MIN_S * sample_rate_hz) + 1:
        return None
    return integrated_lufs(samples, sample_rate_hz)


@dataclass(frozen=True)
class CheckedAudio:
    """An answer that passed every check, in the canonical format and trimmed."""

    samples: np.ndarray  # int16 mono at `sample_rate_hz`
    sample_rate_hz: int
    duration_s: float  # after trimming
    answer_duration_s: float  # as the engine sent it
    loudness_lufs: float | None


def check_answer(samples: np.ndarray, sample_rate_hz: int, text: str, bounds: AudioBounds,
                 measure_loudness: bool = True) -> CheckedAudio:
    """Check a model answer for `text` and turn it into canonical, trimmed audio.

    In order: not empty; no wrapped or clipped samples (on the samples as sent); resampled to
    `bounds.sample_rate_hz`; total duration inside the text's band (`check_audio`); at most
    `max_edge_silence_s` of silence at either end ("too long": a runaway padded with silence);
    the speech itself not shorter than the band ("too short": truncated); then trimmed to
    `trim_pad_s` around the speech and its loudness measured (unless `measure_loudness` is
    false: a caller in a hurry measures it later with `loudness_lufs`).
    Raises `AudioInvalid` with the reason on the first failed check.
    """
    if samples.size == 0:
        raise AudioInvalid("empty audio")
    wrapped = count_wrapped(samples)
    if wrapped:
        raise AudioInvalid(f"audio has {wrapped} wrapped samples (int16 overflow)")
    clipped = np.count_nonzero(np.abs(samples.astype(np.int32)) >= PCM16_MAX) / samples.size
    if clipped > bounds.max_clipped_fraction:
        raise AudioInvalid(f"audio clipped: {clipped:.2%} of samples at full scale")
    rate = bounds.sample_rate_hz
    canonical = resample(samples, sample_rate_hz, rate)
    answer_s = check_audio(canonical, rate, text, bounds)
    span = speech_span(canonical, rate)
    if span is None:
        raise AudioInvalid("audio is pure silence")
    start, end = span
    lead_s, trail_s = start / rate, (canonical.size - end) / rate
    words = len(text.split())
    if trail_s > bounds.max_edge_silence_s or lead_s > bounds.max_edge_silence_s:
        where, silence_s = ("end", trail_s) if trail_s >= lead_s else ("start", lead_s)
        raise AudioInvalid(f"audio too long: {silence_s:.2f} s of silence at the {where} of {answer_s:.2f} s "
                           f"for {words} words (a runaway generation)")
    low_s, _ = bounds.duration_band_s(text)
    speech_s = (end - start) / rate
    if speech_s < low_s:
        raise AudioInvalid(f"audio too short: {speech_s:.2f} s of speech for {words} words (min {low_s:.2f} s)")
    pad = int(round(bounds.trim_pad_s * rate))
    trimmed = canonical[max(0, start - pad): min(canonical.size, end + pad)]
    return CheckedAudio(samples=trimmed, sample_rate_hz=rate, duration_s=trimmed.size / rate,
                        answer_duration_s=answer_s,
                        loudness_lufs=loudness_lufs(trimmed, rate) if measure_loudness else None)
