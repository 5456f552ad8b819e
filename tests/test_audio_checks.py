"""Canonical audio and the checks on every answer: pure logic, no servers."""

import math

import numpy as np
import pytest

from pipeline.audio.checks import (
    AudioBounds, check_answer, count_wrapped, loudness_lufs, resample, speech_span,
)
from pipeline.engines.sim import audio as simaudio
from pipeline.contracts.errors import AudioInvalid

RATE = 24000
BOUNDS = AudioBounds(sample_rate_hz=RATE, trim_pad_s=0.1, max_edge_silence_s=2.0)
TEN_WORDS = "one two three four five six seven eight nine ten"  # 4 s at 2.5 words/s


def tone(seconds: float, rate: int = RATE, hz: float = 220.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.round(np.sin(2 * np.pi * hz * t) * amplitude * 32767).astype(np.int16)


def speech(text: str = TEN_WORDS) -> np.ndarray:
    """The stand-in's speech-like signal (24 kHz): words with gaps, peak at -6 dBFS."""
    return np.array(simaudio.synthesize(text, seed=1))


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), dtype=np.int16)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[np.argmax(spectrum)])


# --- resampling --------------------------------------------------------------------------


@pytest.mark.parametrize("from_hz", [22050, 16000, 44100, 48000, 8000])
@pytest.mark.parametrize("seconds", [1.0, 7.3, 61.0])
def test_resampling_keeps_duration_within_1_ms_per_second(from_hz, seconds):
    samples = tone(seconds, from_hz)
    out = resample(samples, from_hz, RATE)
    assert out.dtype == np.int16
    assert abs(out.size / RATE - samples.size / from_hz) <= 0.001 * seconds


@pytest.mark.parametrize("from_hz", [22050, 44100, 16000])
def test_resampling_keeps_pitch_and_level(from_hz):
    samples = tone(2.0, from_hz, hz=440.0)
    out = resample(samples, from_hz, RATE)
    assert peak_hz(out, RATE) == pytest.approx(440.0, abs=1.0)
    middle = slice(RATE // 4, -RATE // 4)  # away from the filter's edges
    assert np.abs(out[middle]).max() == pytest.approx(np.abs(samples).max(), rel=0.01)


def test_resampling_filters_what_the_new_rate_cannot_hold():
    # 15 kHz is above the 12 kHz Nyquist limit of 24 kHz: a real resampler removes it instead of
    # folding it back to 9 kHz.
    high = tone(1.0, 48000, hz=15000.0, amplitude=0.5)
    out = resample(high, 48000, RATE)
    assert np.sqrt(np.mean(out.astype(float) ** 2)) < 0.01 * np.sqrt(np.mean(high.astype(float) ** 2))


def test_resampling_to_the_same_rate_is_identity():
    samples = tone(1.0)
    assert np.array_equal(resample(samples, RATE, RATE), samples)


# --- loudness ------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.5, 0.1, 1.5, 0.02])
def test_loudness_of_a_scaled_copy_moves_by_the_scale(scale):
    original = speech()
    scaled = np.clip(np.round(original.astype(np.float64) * scale), -32768, 32767).astype(np.int16)
    moved = loudness_lufs(scaled, RATE) - loudness_lufs(original, RATE)
    assert moved == pytest.approx(20 * math.log10(scale), abs=0.05)


def test_loudness_of_speech_is_plausible_and_absent_for_silence_or_a_blip():
    level = loudness_lufs(speech(), RATE)
    assert -40.0 < level < -5.0
    assert loudness_lufs(silence(2.0), RATE) is None
    assert loudness_lufs(tone(0.2), RATE) is None  # BS.1770 needs 400 ms blocks


# --- wrapped and clipped samples ---------------------------------------------------------------


def wrapped(samples: np.ndarray, gain: float) -> np.ndarray:
    """What an int16 conversion without clipping does to a too-loud signal."""
    return (samples.astype(np.float64) * gain).astype(np.int64).astype(np.int16)


def test_wrapped_samples_are_found_and_rejected():
    loud = wrapped(speech(), 2.5)  # peaks at ~1.25x full scale: they wrap around
    assert count_wrapped(loud) > 0
    with pytest.raises(AudioInvalid, match="wrapped"):
        check_answer(loud, RATE, TEN_WORDS, BOUNDS)


def test_loud_clean_audio_has_no_wrapped_samples():
    near_full = wrapped(speech(), 1.9)  # peaks at ~0.95 full scale: nothing wraps
    assert count_wrapped(near_full) == 0
    assert count_wrapped(tone(1.0, hz=5000.0, amplitude=0.99)) == 0


def test_clipped_audio_is_rejected():
    clipped = np.clip(speech().astype(np.int32) * 8, -32767, 32767).astype(np.int16)
    with pytest.raises(AudioInvalid, match="clipped"):
        check_answer(clipped, RATE, TEN_WORDS, BOUNDS)


# --- duration, trimming, runaway, truncation ---------------------------------------------------


def test_speech_is_trimmed_to_the_pad_and_resampled_to_24_khz():
    body = speech()
    padded = np.concatenate([silence(1.5), body, silence(1.0)])
    native = resample(padded, RATE, 22050)  # as Piper would send it
    checked = check_answer(native, 22050, TEN_WORDS, BOUNDS)
    assert checked.sample_rate_hz == RATE
    assert checked.answer_duration_s == pytest.approx(padded.size / RATE, abs=0.001)
    start, end = speech_span(body, RATE)
    expected_s = (end - start) / RATE + 2 * BOUNDS.trim_pad_s
    assert checked.duration_s == pytest.approx(expected_s, abs=0.03)
    assert checked.loudness_lufs == pytest.approx(loudness_lufs(body, RATE), abs=0.5)


def test_audio_that_starts_and_ends_with_speech_keeps_its_length():
    body = tone(4.0)
    checked = check_answer(body, RATE, TEN_WORDS, BOUNDS)
    assert checked.samples.size == body.size


def test_runaway_silence_is_too_long():
    # What a runaway generation looks like: the speech, then silence up to max_tokens.
    runaway = np.concatenate([speech(), silence(8.0)])
    with pytest.raises(AudioInvalid, match="too long: .* silence at the end"):
        check_answer(runaway, RATE, TEN_WORDS, BOUNDS)


def test_ten_times_too_long_is_too_long():
    with pytest.raises(AudioInvalid, match="too long"):
        check_answer(tone(40.0), RATE, TEN_WORDS, BOUNDS)


def test_truncated_speech_is_too_short():
    with pytest.raises(AudioInvalid, match="too short"):
        check_answer(speech()[: RATE // 2], RATE, TEN_WORDS, BOUNDS)
    # Long enough in total, but most of it is silence: the speech itself is too short.
    mostly_silent = np.concatenate([tone(0.4), silence(1.9)])
    with pytest.raises(AudioInvalid, match="too short: 0.4"):
        check_answer(mostly_silent, RATE, TEN_WORDS, BOUNDS)


@pytest.mark.parametrize(
    "samples,reason",
    [(np.zeros(0, np.int16), "empty"), (silence(4.0), "silence")],
)
def test_nothing_to_hear_is_rejected(samples, reason):
    with pytest.raises(AudioInvalid, match=reason):
        check_answer(samples, RATE, TEN_WORDS, BOUNDS)
