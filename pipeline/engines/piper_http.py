"""The Piper engine's HTTP face and command line: the Higgs vLLM image's protocol routes
(`GET /health`, `/v1/models`, `/v1/audio/voices`, `POST /v1/chat/completions` with or without
`"stream": true`, `POST /v1/audio/speech`) over a `PiperEngine` (`pipeline/engines/piper.py`, where
what callers can rely on is written down), `PiperServer` for tests and benchmarks, and `serve` for
`tts-pipeline engine --kind piper`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import threading
import time
import uuid
from contextlib import suppress
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from pipeline.audio.checks import encode_wav, resample
from pipeline.engines.piper import (
    NOTE_HEADER, NOTE_NO_PRESET, NOTE_NOT_CLONED, NOTE_STAND_IN, PROTOCOL_RATE_HZ, PiperConfig, PiperEngine, missing,
)
from pipeline.engines.piper_voices import Variant
from pipeline.engines.serving import (
    CLIENT_GONE_STATUS, BackgroundServer, ChatRequest, RequestError, SpeechRequest, StreamEnd, chat_stream_response,
    check_chat_audio, check_model, estimate_prompt_tokens, include_usage, models_body, parse, reference_audio,
    response_for, speech_prompt_tokens, target_text, token_limit,
)


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
