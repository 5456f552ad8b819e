"""WAV repair and audio checks: pure logic, no servers."""

import io
import struct
import wave

import numpy as np
import pytest

from pipeline.audio.checks import AudioBounds, check_audio, decode_wav, encode_wav, pcm16_to_wav, repair_wav
from pipeline.contracts.errors import AudioInvalid

RATE = 24000


def tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 220 * t) * amplitude * 32767).astype("<i2")


def glued(samples: np.ndarray, first: int = 16320, rest: int = 24000) -> bytes:
    parts, start = [], 0
    sizes = [first]
    while sum(sizes) < len(samples):
        sizes.append(rest)
    for size in sizes:
        piece = samples[start : start + size]
        start += size
        if len(piece):
            parts.append(encode_wav(piece, RATE))
    return b"".join(parts)


def test_clean_wav_passes_unchanged():
    samples = tone(2.0)
    repaired = repair_wav(encode_wav(samples, RATE))
    assert repaired.repairs == []
    assert repaired.fmt.sample_rate_hz == RATE
    assert np.array_equal(np.frombuffer(repaired.pcm, "<i2"), samples)


def test_glued_wavs_are_joined_to_the_true_length():
    samples = tone(4.3)
    data = glued(samples)
    # What a player trusting the header sees: only the first file's 0.68 s.
    with wave.open(io.BytesIO(data)) as reader:
        assert reader.getnframes() / RATE == pytest.approx(0.68)
    repaired = repair_wav(data)
    assert "glued" in repaired.repairs
    assert np.array_equal(np.frombuffer(repaired.pcm, "<i2"), samples)


@pytest.mark.parametrize("claimed", [0, 0xFFFFFFFF, 16320 * 2, 10**9])
def test_wrong_data_length_recovers_every_sample(claimed):
    samples = tone(3.0)
    data = bytearray(encode_wav(samples, RATE))
    offset = data.index(b"data") + 4
    struct.pack_into("<I", data, offset, claimed)
    struct.pack_into("<I", data, 4, 36 + min(claimed, 0xFFFFFFFF - 36))
    repaired = repair_wav(bytes(data))
    assert "data_length" in repaired.repairs
    assert np.array_equal(np.frombuffer(repaired.pcm, "<i2"), samples)


def test_trailing_list_chunk_is_not_audio():
    samples = tone(1.0)
    data = encode_wav(samples, RATE) + b"LIST" + struct.pack("<I", 4) + b"INFO"
    repaired = repair_wav(data)
    assert np.array_equal(np.frombuffer(repaired.pcm, "<i2"), samples)


def test_odd_trailing_byte_is_dropped():
    samples = tone(1.0)
    data = bytearray(encode_wav(samples, RATE)) + b"\x01"
    repaired = repair_wav(bytes(data))
    assert len(repaired.pcm) % 2 == 0
    assert len(repaired.pcm) // 2 >= samples.size


@pytest.mark.parametrize("data", [b"", b"not a wav at all", b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_garbage_is_rejected(data):
    with pytest.raises(AudioInvalid):
        repair_wav(data)


def test_pcm_wrapping_matches_samples():
    samples = tone(0.5)
    decoded, rate = decode_wav(pcm16_to_wav(samples.tobytes(), RATE))
    assert rate == RATE and np.array_equal(decoded, samples)


BOUNDS = AudioBounds(sample_rate_hz=RATE)
TEN_WORDS = "one two three four five six seven eight nine ten"


def test_plausible_speech_passes():
    assert check_audio(tone(4.0), RATE, TEN_WORDS, BOUNDS) == pytest.approx(4.0)


@pytest.mark.parametrize(
    "samples,rate,reason",
    [
        (np.zeros(0, "<i2"), RATE, "empty"),
        (tone(4.0), 22050, "sample rate"),
        (tone(0.5), RATE, "too short"),
        (tone(40.0), RATE, "too long"),
        (np.zeros(RATE * 4, "<i2"), RATE, "silence"),
        (np.full(RATE * 4, 32767, "<i2"), RATE, "clipped"),
    ],
)
def test_implausible_audio_is_rejected_with_a_reason(samples, rate, reason):
    with pytest.raises(AudioInvalid, match=reason):
        check_audio(samples, rate, TEN_WORDS, BOUNDS)
