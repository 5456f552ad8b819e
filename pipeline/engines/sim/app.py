"""The sim engine's HTTP face: the Higgs vLLM server's routes, call counting, the /sim/ controls."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from contextlib import suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from pipeline.engines.serving import (
    CLIENT_GONE_STATUS, ChatRequest, RequestError, SpeechRequest, StreamEnd, chat_stream_response, check_chat_audio, check_model, describe, error_response, estimate_prompt_tokens, include_usage, models_body, parse, reference_audio, response_for, speech_prompt_tokens, target_text, text_of, token_limit,
)
from pipeline.engines.sim import audio as simaudio
from pipeline.engines.sim.config import SimConfig
from pipeline.engines.sim.faults import _generate, _token_limit
from pipeline.engines.sim.state import _SimState, reference_sha256


class _CallCounter:
    """ASGI middleware counting POST /v1/* calls, in flight until the body is sent; a call
    whose body was not sent to its end (a client leaving mid-stream) is aborted."""

    def __init__(self, app, state: _SimState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state, status, finished = self.state, None, False
        counters = state.counters
        counters.calls += 1
        counters.calls_by_path[path] = counters.calls_by_path.get(path, 0) + 1
        state.concurrent += 1
        counters.peak_concurrent = max(counters.peak_concurrent, state.concurrent)

        async def send_and_watch(message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            status = status or 500  # the outer error middleware will answer 500
            raise
        finally:
            state.concurrent -= 1
            counters = state.counters  # a reset may have swapped them meanwhile
            if status in (None, CLIENT_GONE_STATUS) or (status < 400 and not finished):
                counters.aborted += 1
            elif status < 400:
                counters.completed += 1
            else:
                counters.errors += 1


async def _chat_completions(state: _SimState, request: Request) -> Response:
    req: ChatRequest = await parse(request, ChatRequest)
    check_model(state.config.model_name, req.model)
    audio_format = check_chat_audio(req)
    text = target_text(req.messages)
    prompt_tokens = estimate_prompt_tokens(req.messages)
    max_tokens = req.max_completion_tokens or req.max_tokens
    token_limit = _token_limit(state, prompt_tokens, max_tokens)
    # A cloned voice sounds like its reference; without one, like its system prompt.
    system = " ".join(text_of(m.get("content")) for m in req.messages if m.get("role") == "system")
    reference = reference_audio(req.messages)
    voice = hashlib.sha1((system + reference[:65536]).encode()).hexdigest()
    state.record("chat", text, None, reference_sha256(reference), req.seed)

    generation = dict(text=text, seed=req.seed or 0, voice=voice, temperature=req.temperature,
                      token_limit=token_limit)
    if req.stream:
        return await chat_stream_response(req.model or state.config.model_name, prompt_tokens,
                                          include_usage(req), _streamed(state, generation))
    audio = await _generate(state, **generation)
    message: dict[str, Any] = {"role": "assistant", "content": "", "audio": None}
    if audio.samples is not None:
        if audio_format == "pcm16":
            data = audio.samples.astype("<i2").tobytes()
        elif state.config.glued_wav:
            data = simaudio.glued_wav_bytes(audio.samples)
        else:
            claimed = simaudio.FIRST_CHUNK_SAMPLES if audio.short_header else None
            data = simaudio.wav_bytes(audio.samples, claimed_samples=claimed)
        message["audio"] = {
            "id": f"audio-{uuid.uuid4()}", "data": base64.b64encode(data).decode("ascii"),
            "expires_at": 0, "transcript": "",
        }
    return JSONResponse({
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model or state.config.model_name,
        "choices": [{"index": 0, "message": message, "finish_reason": audio.finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": audio.tokens,
            "total_tokens": prompt_tokens + audio.tokens,
        },
    })


async def _streamed(state: _SimState, generation: dict[str, Any]):
    """The audio of one generation as PCM16 pieces while it is generated, then a `StreamEnd`.
    Closing it (the client left) cancels the generation and frees its slot."""
    queue: asyncio.Queue = asyncio.Queue()

    async def piece(samples) -> None:
        queue.put_nowait(samples.astype("<i2").tobytes())

    async def produce() -> None:
        try:
            queue.put_nowait(await _generate(state, on_piece=piece, **generation))
        except BaseException as exc:  # a refusal, or a shutdown cancelling it: the reader raises it
            queue.put_nowait(exc)
            raise

    task = asyncio.ensure_future(produce())
    state.in_flight.add(task)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if not isinstance(item, bytes):
                yield StreamEnd(item.finish_reason, item.tokens)
                return
            yield item
    finally:
        state.in_flight.discard(task)
        task.cancel()
        with suppress(BaseException):
            await task


async def _speech(state: _SimState, request: Request) -> Response:
    req: SpeechRequest = await parse(request, SpeechRequest)
    check_model(state.config.model_name, req.model)
    if req.response_format == "mp3":
        raise RequestError(400, "mp3 not supported by the stand-in")
    voice = req.voice if req.voice in state.config.voices else state.config.voices[0]
    state.record("speech", req.input, req.voice, None, (req.model_extra or {}).get("seed"))
    prompt_tokens = speech_prompt_tokens(req.input)
    token_limit = _token_limit(state, prompt_tokens, req.max_tokens)
    audio = await _generate(
        state, text=req.input, seed=0, voice=voice,
        temperature=req.temperature, token_limit=token_limit,
    )
    chunks = [] if audio.samples is None else simaudio.speech_chunks(audio.samples)
    as_wav = req.response_format == "wav"

    async def body():
        for chunk in chunks:  # every wav chunk is a complete file: the real server's quirk
            yield simaudio.wav_bytes(chunk) if as_wav else chunk.astype("<i2").tobytes()

    # The real server labels every format audio/mpeg and sends no length.
    return StreamingResponse(body(), media_type="audio/mpeg")


def _endpoint(state: _SimState, handler):
    """Wrap a POST handler: map RequestError to vLLM's body; abort when the client leaves."""

    async def endpoint(request: Request) -> Response:
        try:
            await request.body()  # read it now so the disconnect watcher can't steal it
        except ClientDisconnect:  # the caller cancelled before its body arrived: an abort
            return Response(status_code=CLIENT_GONE_STATUS)
        work = asyncio.ensure_future(handler(state, request))
        gone = asyncio.ensure_future(_client_gone(request))
        state.in_flight.add(work)
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            state.in_flight.discard(work)
            client_left = gone.done()
            gone.cancel()
            if not work.done():
                work.cancel()
                with suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            if client_left:
                return Response(status_code=CLIENT_GONE_STATUS)
            return error_response(503, "The sim engine is shutting down.")
        try:
            return work.result()
        except RequestError as exc:
            return response_for(exc)

    return endpoint


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- app ---------------------------------------------------------------------


def create_app(config: SimConfig | None = None) -> FastAPI:
    """The stand-in as an ASGI app; its state lives in the app (no globals)."""
    state = _SimState(config or SimConfig())
    app = FastAPI(title="Higgs Audio v2 vLLM stand-in (sim engine)")
    app.state.sim = state
    app.add_middleware(_CallCounter, state=state)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return models_body(state.config.model_name, state.started_at, state.config.max_model_len)

    @app.get("/v1/audio/voices")
    async def voices() -> list[str]:
        return list(state.config.voices)

    app.add_api_route("/v1/chat/completions", _endpoint(state, _chat_completions), methods=["POST"])
    app.add_api_route("/v1/audio/speech", _endpoint(state, _speech), methods=["POST"])

    @app.get("/sim/stats")
    async def stats() -> dict[str, Any]:
        return state.stats()

    @app.post("/sim/reset")
    async def reset() -> dict[str, Any]:
        state.reset()
        return state.stats()

    @app.patch("/sim/config")
    async def patch_config(request: Request) -> Response:
        try:
            changes = json.loads(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of knob values")
            state.config = SimConfig.model_validate({**state.config.model_dump(), **changes})
        except (ValueError, ValidationError) as exc:
            return error_response(400, describe(exc))
        state.slots.wake()  # more slots may admit waiters now
        return JSONResponse(state.config.model_dump(mode="json"))

    return app
