"""pipeline/loudness.py against the standard's own figures and an independent implementation."""

import numpy as np
import pyloudnorm
import pytest

from pipeline.audio.loudness import integrated_lufs, k_weighting_sos

# ITU-R BS.1770-4, tables 1 and 2: the K-weighting stages at 48 kHz.
SPEC_SHELF_48K = [1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241, 0.73248077421585]
SPEC_HIGHPASS_48K = [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621]


def test_filter_coefficients_at_48k_are_the_standards():
    sos = k_weighting_sos(48000)
    assert sos[0] == pytest.approx(SPEC_SHELF_48K, abs=1e-8)
    assert sos[1] == pytest.approx(SPEC_HIGHPASS_48K, abs=1e-8)


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 44100, 48000])
@pytest.mark.parametrize("amplitude_db", [0.0, -20.0])
def test_a_1khz_sine_reads_its_level_minus_3_01(rate, amplitude_db):
    # The standard's calibration: a full-scale 997 Hz sine in one channel reads -3.01 LKFS.
    t = np.arange(5 * rate) / rate
    x = 10 ** (amplitude_db / 20) * np.sin(2 * np.pi * 997 * t)
    assert integrated_lufs(x, rate) == pytest.approx(amplitude_db - 3.01, abs=0.06)


def speechlike(rate: int, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    voiced = np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 720 * t) + 0.1 * rng.standard_normal(t.size)
    syllables = (np.sin(2 * np.pi * 3.0 * t) > -0.2).astype(float)  # gaps between "syllables"
    x = 0.2 * voiced * syllables
    x[: t.size // 4] *= 0.001  # a quiet lead-in the relative gate must drop
    return (x * 32767).astype(np.int16)


@pytest.mark.parametrize("rate", [22050, 24000, 48000])
@pytest.mark.parametrize("seconds", [0.5, 4.0, 20.0])
def test_agrees_with_pyloudnorm(rate, seconds):
    samples = speechlike(rate, seconds, seed=int(seconds * 10))
    ours = integrated_lufs(samples, rate)
    theirs = pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64) / 32768.0)
    # pyloudnorm derives its shelf filter differently away from 48 kHz (a few hundredths of a dB)
    assert ours == pytest.approx(theirs, abs=0.15)


def test_gates_and_short_audio():
    rate = 24000
    assert integrated_lufs(np.zeros(rate * 2, dtype=np.int16), rate) is None  # nothing above -70
    assert integrated_lufs(np.ones(rate // 4, dtype=np.int16) * 1000, rate) is None  # < one block
    loud = speechlike(rate, 6.0, seed=1)
    with_silence = np.concatenate([loud, np.zeros(rate * 6, dtype=np.int16)])
    # Silence is gated out: appending it leaves the reading where it was.
    assert integrated_lufs(with_silence, rate) == pytest.approx(integrated_lufs(loud, rate), abs=0.3)
