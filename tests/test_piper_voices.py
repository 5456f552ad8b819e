"""The CPU engine's voices differ measurably: median pitch per variant, the Higgs names' variants,
the stand-in for a reference voice; and the pitch estimate itself on tones of known pitch."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from pipeline.audio.pitch import median_f0
from pipeline.contracts.messages import HIGGS_PRESET_VOICES
from pipeline.engines.piper import PiperConfig
from pipeline.engines.piper_http import PiperServer
from pipeline.engines.piper_voices import HIGGS_VARIANTS, VARIANTS, VoiceSet
from tests.test_piper_engine import chat_body, read_wav

TEXT = "It was a bright cold day in April, and the clocks were striking thirteen."


@pytest.fixture(scope="module")
def client():
    with PiperServer(config=PiperConfig(threads=2)) as server:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=60.0) as c:
            yield c
    server.engine.close()


def spoken(client: httpx.Client, voice: str) -> tuple[np.ndarray, httpx.Response]:
    answer = client.post("/v1/audio/speech", json={"model": "higgs-audio-v2", "input": TEXT, "voice": voice,
                                                   "response_format": "wav", "temperature": 0})
    assert answer.status_code == 200, answer.text
    rate, _, _, samples = read_wav(answer.content)
    assert rate == 24000
    return samples, answer


@pytest.mark.parametrize("f0", [85.0, 130.0, 210.0, 330.0])
def test_median_f0_of_a_harmonic_tone(f0):
    t = np.arange(2 * 24000) / 24000
    tone = sum(a * np.sin(2 * np.pi * k * f0 * t) for k, a in ((1, 0.3), (2, 0.2), (3, 0.1)))
    assert median_f0((tone * 20000).astype(np.int16), 24000) == pytest.approx(f0, rel=0.01)
    assert median_f0(np.zeros(24000, dtype=np.int16), 24000) is None


def test_every_higgs_name_has_a_variant_women_higher():
    voices = VoiceSet("joe")
    assert set(HIGGS_VARIANTS) == set(HIGGS_PRESET_VOICES)
    chosen = {name: voices.name_of(voices.variant(name)) for name in HIGGS_PRESET_VOICES}
    assert chosen == {name: voices.name_of(VoiceSet("joe").variant(name)) for name in HIGGS_PRESET_VOICES}
    assert len(set(chosen.values())) >= 3
    for woman in ("belinda", "en_woman", "mabel"):
        for man in ("chadwick", "en_man", "vex"):
            assert voices.variant(woman).pitch > voices.variant(man).pitch
    assert voices.variant("nobody") == voices.variant("joe") == VARIANTS[0]


def test_the_variants_differ_in_median_pitch(client):
    listed = client.get("/v1/audio/voices").json()
    names = [VoiceSet("joe").name_of(v) for v in VARIANTS]
    assert listed[: len(names)] == names and set(HIGGS_PRESET_VOICES) <= set(listed)
    pitch = {name: median_f0(spoken(client, name)[0], 24000) for name in names}
    base = pitch["joe"]
    assert base is not None and 60 < base < 200
    for variant, name in zip(VARIANTS, names):
        # Each variant's pitch is its factor times the voice's, within 8 % (a faster tempo raises it a little).
        assert pitch[name] / base == pytest.approx(float(variant.pitch), rel=0.08), pitch
    ordered = sorted(pitch.values())
    assert all(high / low > 1.08 for low, high in zip(ordered, ordered[1:])), pitch  # apart by 8 % or more


def test_a_higgs_name_speaks_as_its_variant_without_a_note(client):
    belinda, answer = spoken(client, "belinda")
    high, _ = spoken(client, "joe_high")
    assert "x-engine-note" not in answer.headers
    assert median_f0(belinda, 24000) == pytest.approx(median_f0(high, 24000), rel=0.02)
    assert spoken(client, "nobody")[1].headers["x-engine-note"] == "preset-voice-not-available"


def test_a_reference_voice_is_stood_in_for_by_the_nearest_variant(client):
    for name in ("joe_deep", "joe_higher"):
        _, answer = spoken(client, name)
        reference = base64.b64encode(answer.content).decode()
        chat = client.post("/v1/chat/completions", json=chat_body("Hello there.", reference))
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-engine-note"] == f"reference-voice-not-cloned, stand-in-voice={name}"
