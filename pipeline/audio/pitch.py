"""Pitch: the median fundamental frequency (F0) of speech, numpy only.

A YIN estimate (de Cheveigné and Kawahara, 2002) on 40 ms frames every 10 ms: the cumulative mean
normalised difference of each frame, its first dip below `YIN_THRESHOLD` between `F0_MAX_HZ` and
`F0_MIN_HZ`, refined to its local minimum. A frame counts as voiced when it has such a dip and its
RMS is within `VOICED_BELOW_PEAK_DB` of the loudest frame; `median_f0` is the median over voiced
frames. Good enough to tell voices apart (tests, `scripts/voice_pitch.py`), not a pitch tracker.
"""

from __future__ import annotations

import numpy as np

F0_MIN_HZ = 60.0
F0_MAX_HZ = 450.0
FRAME_S = 0.04
HOP_S = 0.01
YIN_THRESHOLD = 0.15
VOICED_BELOW_PEAK_DB = 25.0
MIN_VOICED_FRAMES = 5


def frame_f0(samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """F0 in Hz of each voiced frame, in order (unvoiced frames are left out)."""
    x = np.asarray(samples, dtype=np.float64)
    min_lag = max(2, int(sample_rate_hz / F0_MAX_HZ))
    max_lag = int(np.ceil(sample_rate_hz / F0_MIN_HZ))
    window = max(int(FRAME_S * sample_rate_hz), 2 * max_lag)
    hop = max(1, int(HOP_S * sample_rate_hz))
    if x.size < window:
        return np.zeros(0)
    starts = np.arange(0, x.size - window + 1, hop)
    frames = np.stack([x[s: s + window] for s in starts])
    frames -= frames.mean(axis=1, keepdims=True)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    if rms.max() <= 0:
        return np.zeros(0)
    loud = rms >= rms.max() * 10 ** (-VOICED_BELOW_PEAK_DB / 20)
    width = window - max_lag  # the integration window
    n = 1 << int(np.ceil(np.log2(window + width)))
    head = np.fft.rfft(frames[:, :width], n)
    whole = np.fft.rfft(frames, n)
    acf = np.fft.irfft(np.conj(head) * whole, n)[:, : max_lag + 1]
    squares = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    lags = np.arange(max_lag + 1)
    energy_at = squares[:, lags + width] - squares[:, lags]  # sum of x[tau : tau + width]^2
    diff = energy_at[:, :1] + energy_at - 2 * acf
    diff[:, 0] = 0.0
    running = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        cmnd[:, 1:] = np.where(running > 0, diff[:, 1:] * lags[1:] / running, 1.0)
    found = []
    for i in np.flatnonzero(loud):
        below = np.flatnonzero(cmnd[i, min_lag: max_lag] < YIN_THRESHOLD)
        if below.size == 0:
            continue
        tau = min_lag + int(below[0])
        while tau + 1 < max_lag and cmnd[i, tau + 1] < cmnd[i, tau]:
            tau += 1
        found.append(sample_rate_hz / _parabolic(cmnd[i], tau))
    return np.asarray(found)


def _parabolic(curve: np.ndarray, tau: int) -> float:
    """The lag of the minimum of a parabola through curve[tau-1 .. tau+1]."""
    if tau < 1 or tau + 1 >= curve.size:
        return float(tau)
    a, b, c = curve[tau - 1], curve[tau], curve[tau + 1]
    bend = a - 2 * b + c
    return float(tau) if bend <= 0 else tau + 0.5 * (a - c) / bend


def median_f0(samples: np.ndarray, sample_rate_hz: int) -> float | None:
    """Median F0 in Hz over the voiced frames; None when fewer than `MIN_VOICED_FRAMES` are voiced."""
    f0 = frame_f0(samples, sample_rate_hz)
    if f0.size < MIN_VOICED_FRAMES:
        return None
    return float(np.median(f0))
