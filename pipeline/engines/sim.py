"""Sim engine: a stand-in for the Higgs Audio v2 vLLM server (`bosonai/higgs-audio-vllm`).

It speaks the real server's HTTP protocol (see shared/reference/higgs-vllm-api.md):
same paths, request fields, status codes, error bodies and audio quirks, so the
pipeline's engine client can be tested and benchmarked without a GPU. It is not
a mock of our code; nothing here knows about the pipeline.

What callers can rely on:

- Audio is a deterministic function of (text, seed, voice); see `simaudio`.
  Speech requests carry no seed (like the real API), so they use seed 0.
- Capacity: at most `slots` requests hold a slot at once, the rest wait FIFO.
  A slot is held for `latency_s`, then (if `tokens_per_s` > 0) for the
  continuous-batching step simulation in `TokenEngine`.
- Injected errors (`fail_first`, `error_rate`) answer at once, without a slot.
  Faults are drawn per call from an RNG seeded by (seed_for_faults, text,
  attempt number for that text), so a run is reproducible whatever the
  arrival order.
- A client that disconnects aborts its request and frees its slot, as vLLM does.
- Prompt tokens are estimated as 1.3 per word of message text plus 25 per
  second of reference audio, the second read off the base64 length assuming
  24 kHz mono PCM_16 (1 token per 2,560 base64 characters). Speech requests add
  `SPEECH_PRESET_PROMPT_TOKENS` for the preset's system turn and reference clip.
- Stand-in limits: chat `stream: true`, speech `mp3` and chat audio formats
  other than wav/pcm16 answer 400; speech streams only once generation is done.
- Control endpoints under /sim/: GET stats, POST reset, PATCH config.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import random
import time
import uuid
from collections import deque
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from pipeline.engines import simaudio
from pipeline.engines.serving import (
    CLIENT_GONE_STATUS, BackgroundServer, ChatRequest, RequestError, SpeechRequest, check_chat_audio,
    check_model, describe, error_response, estimate_prompt_tokens, models_body, parse, reference_audio,
    response_for, speech_prompt_tokens, target_text, text_of, token_limit,
)

DEFAULT_VOICES = (
    "belinda", "broom_salesman", "chadwick", "en_man",
    "en_woman", "mabel", "vex", "zh_man_sichuan",
)
ENGINE_TICK_S = 0.01


class SimConfig(BaseModel):
    """Every knob of the stand-in; each is also a `--kebab-case` CLI flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slots: int = Field(32, ge=1, description="requests generating at once; more wait FIFO")
    tokens_per_s: float = Field(
        0.0, ge=0, description="per-stream audio tokens/s at batch 1 (25 = real time); 0 = instant"
    )
    batch_penalty: float = Field(
        0.02, ge=0, description="step time grows by this share per extra request"
    )
    latency_s: float = Field(0.0, ge=0, description="fixed extra time per call, holding a slot")
    model_name: str = Field("higgs-audio-v2", description="served model name")
    voices: tuple[str, ...] = Field(DEFAULT_VOICES, min_length=1, description="preset voice names")
    words_per_s: float = Field(2.5, gt=0, description="speaking rate of the generated audio")
    max_model_len: int = Field(8192, ge=1, description="context length in tokens")
    error_rate: float = Field(0.0, ge=0, le=1, description="share of calls answered error_status")
    error_status: int = Field(503, ge=400, le=599, description="status of injected errors")
    fail_first: int = Field(0, ge=0, description="first N calls per distinct text get error_status")
    hang_rate: float = Field(0.0, ge=0, le=1, description="share of calls that sleep hang_s first")
    hang_s: float = Field(3600.0, ge=0, description="how long a hanging call sleeps")
    glued_wav: bool = Field(
        False, description="chat answers carry glued WAVs (first header says 0.68 s)"
    )
    short_header_rate: float = Field(
        0.0, ge=0, le=1, description="share of chat WAVs whose header claims 0.68 s"
    )
    empty_audio_rate: float = Field(0.0, ge=0, le=1, description="share of answers without audio")
    runaway_rate: float = Field(
        0.0, ge=0, le=1, description="share of answers padded with silence up to max_tokens"
    )
    seed_for_faults: int = Field(0, description="seed of the fault draws")

    @property
    def ideal_audio_s_per_s(self) -> float | None:
        """Audio seconds per second at a full batch; None when generation is instant."""
        if self.tokens_per_s <= 0:
            return None
        tokens_per_s = self.slots * self.tokens_per_s / (1 + self.batch_penalty * (self.slots - 1))
        return tokens_per_s / simaudio.AUDIO_TOKENS_PER_S


# --- capacity model ----------------------------------------------------------


class SlotPool:
    """FIFO admission to `capacity()` slots; capacity may change at run time."""

    def __init__(self, capacity) -> None:
        self._capacity = capacity
        self._waiters: deque[asyncio.Future] = deque()
        self.active = 0
        self.peak_active = 0

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        if not self._waiters and self.active < self._capacity():
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            raise

    def release(self) -> None:
        self.active -= 1
        self.wake()

    def wake(self) -> None:
        """Admit waiters while there is room (also after `slots` grows)."""
        while self._waiters and self.active < self._capacity():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def _take(self) -> None:
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)


@dataclass
class _Generation:
    remaining_tokens: int
    done: asyncio.Future


class TokenEngine:
    """One shared loop that advances every active generation by a token per step.

    step_s(batch) = (1 / tokens_per_s) * (1 + batch_penalty * (batch - 1)). The
    loop sleeps in ticks of whole steps (>= ENGINE_TICK_S) to absolute
    deadlines, so time never drifts; newcomers join at the next tick.
    """

    def __init__(self, config) -> None:
        self._config = config
        self._joining: list[_Generation] = []
        self._task: asyncio.Task | None = None

    async def generate(self, n_tokens: int) -> None:
        if n_tokens <= 0 or self._config().tokens_per_s <= 0:
            return
        loop = asyncio.get_running_loop()
        generation = _Generation(n_tokens, loop.create_future())
        self._joining.append(generation)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        await generation.done  # cancelling the caller cancels the future: the loop drops it

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        step_boundary = loop.time()
        active: list[_Generation] = []
        while True:
            active = [g for g in active + self._joining if not g.done.done()]
            self._joining.clear()
            if not active:
                return
            config = self._config()
            if config.tokens_per_s <= 0:
                k_steps = min(g.remaining_tokens for g in active)
            else:
                step_s = (1 + config.batch_penalty * (len(active) - 1)) / config.tokens_per_s
                per_tick = max(1, math.ceil(ENGINE_TICK_S / step_s))
                k_steps = min(per_tick, min(g.remaining_tokens for g in active))
                step_boundary += k_steps * step_s
            await asyncio.sleep(max(0.0, step_boundary - loop.time()))
            for g in active:
                g.remaining_tokens -= k_steps
                if g.remaining_tokens <= 0 and not g.done.done():
                    g.done.set_result(None)


# --- state and statistics ----------------------------------------------------


@dataclass
class _Counters:
    calls: int = 0
    calls_by_path: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    errors: int = 0
    aborted: int = 0
    peak_concurrent: int = 0
    audio_s_total: float = 0.0
    audio_tokens_total: int = 0
    calls_by_text: dict[str, int] = field(default_factory=dict)


class _SimState:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.counters = _Counters()
        self.concurrent = 0
        self.slots = SlotPool(lambda: self.config.slots)
        self.engine = TokenEngine(lambda: self.config)
        self.started_at = int(time.time())
        self.in_flight: set[asyncio.Future] = set()

    def abort_all(self) -> None:
        """Cancel every call in flight (they answer 503), so shutdown needn't wait on hangs."""
        for work in list(self.in_flight):
            work.cancel()

    def reset(self) -> None:
        self.counters = _Counters(peak_concurrent=self.concurrent)
        self.slots.peak_active = self.slots.active

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            **{k: v for k, v in asdict(c).items() if k != "calls_by_text"},
            "concurrent": self.concurrent,
            "active": self.slots.active,
            "peak_active": self.slots.peak_active,
            "queued": self.slots.queued,
            "calls_by_text": dict(c.calls_by_text),
            "ideal_audio_s_per_s": self.config.ideal_audio_s_per_s,
            "config": self.config.model_dump(mode="json"),
        }


class _CallCounter:
    """ASGI middleware counting POST /v1/* calls, in flight until the body is sent."""

    def __init__(self, app, state: _SimState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state, status = self.state, None
        counters = state.counters
        counters.calls += 1
        counters.calls_by_path[path] = counters.calls_by_path.get(path, 0) + 1
        state.concurrent += 1
        counters.peak_concurrent = max(counters.peak_concurrent, state.concurrent)

        async def send_and_watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            status = status or 500  # the outer error middleware will answer 500
            raise
        finally:
            state.concurrent -= 1
            counters = state.counters  # a reset may have swapped them meanwhile
            if status in (None, CLIENT_GONE_STATUS):
                counters.aborted += 1
            elif status < 400:
                counters.completed += 1
            else:
                counters.errors += 1


# --- requests ----------------------------------------------------------------


@dataclass
class _Audio:
    samples: Any  # int16 ndarray, or None when the empty-audio fault hit
    tokens: int
    finish_reason: str
    short_header: bool


def _token_limit(state: _SimState, prompt_tokens: int, max_tokens: int | None) -> int:
    return token_limit(state.config.max_model_len, prompt_tokens, max_tokens)


async def _generate(
    state: _SimState, *, text: str, seed: int, voice: str, temperature: float, token_limit: int
) -> _Audio:
    """Count the call, inject faults, hold a slot while 'generating', return the audio."""
    config = state.config
    text_key = hashlib.sha1(text.encode()).hexdigest()[:12]
    attempt = state.counters.calls_by_text.get(text_key, 0)
    state.counters.calls_by_text[text_key] = attempt + 1
    rng = random.Random(f"{config.seed_for_faults}:{text_key}:{attempt}")
    # Always draw every fault, in a fixed order, so knobs don't shift each other's draws.
    error, hang, short_header, empty, runaway = (rng.random() < rate for rate in (
        config.error_rate, config.hang_rate, config.short_header_rate,
        config.empty_audio_rate, config.runaway_rate,
    ))
    if attempt < config.fail_first or error:
        raise RequestError(config.error_status, "Injected failure (sim engine)")

    await state.slots.acquire()
    try:
        if config.latency_s > 0:
            await asyncio.sleep(config.latency_s)
        if hang:
            await asyncio.sleep(config.hang_s)
        samples = simaudio.synthesize(
            text, seed=seed, voice=voice, words_per_s=config.words_per_s, temperature=temperature
        )
        tokens, finish_reason = simaudio.tokens_for_samples(len(samples)), "stop"
        if runaway or tokens > token_limit:
            # Runaway: the model never emits <|audio_eos|> and pads until max_tokens.
            n_samples = token_limit * simaudio.SAMPLES_PER_TOKEN
            samples = samples[:n_samples]
            if runaway:
                samples = np.pad(samples, (0, n_samples - len(samples)))
            tokens, finish_reason = token_limit, "length"
        if empty:
            samples, tokens = None, 1
        await state.engine.generate(tokens)
    finally:
        state.slots.release()

    counters = state.counters
    counters.audio_tokens_total += tokens
    if samples is not None:
        counters.audio_s_total += len(samples) / simaudio.SAMPLE_RATE_HZ
    return _Audio(samples, tokens, finish_reason, short_header)


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
    voice = hashlib.sha1((system + reference_audio(req.messages)[:65536]).encode()).hexdigest()

    audio = await _generate(
        state, text=text, seed=req.seed or 0, voice=voice,
        temperature=req.temperature, token_limit=token_limit,
    )
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


async def _speech(state: _SimState, request: Request) -> Response:
    req: SpeechRequest = await parse(request, SpeechRequest)
    check_model(state.config.model_name, req.model)
    if req.response_format == "mp3":
        raise RequestError(400, "mp3 not supported by the stand-in")
    voice = req.voice if req.voice in state.config.voices else state.config.voices[0]
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


# --- running it ----------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    """uvicorn that answers calls in flight with 503 when it shuts down.

    Plain uvicorn would wait on a hung call (hang_s) and then cancel it with a
    traceback; a real server going away drops or fails its calls too.
    """

    def __init__(self, app: FastAPI, **uvicorn_options) -> None:
        super().__init__(uvicorn.Config(
            app, log_level="warning", access_log=False, timeout_graceful_shutdown=1,
            **uvicorn_options,
        ))
        self._sim_state: _SimState = app.state.sim

    async def shutdown(self, sockets=None) -> None:
        self._sim_state.abort_all()
        await super().shutdown(sockets=sockets)


class SimServer(BackgroundServer):
    """The stand-in under uvicorn in a background thread, on 127.0.0.1.

    `start()` returns once /health answers; `url` is then set. `stop()` answers
    calls still generating (hangs included) with 503, then joins the thread.
    """

    def __init__(
        self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.config = config or SimConfig()
        super().__init__(create_app(self.config), host=host, port=port, start_timeout_s=start_timeout_s,
                         name="sim engine")

    def make_server(self) -> uvicorn.Server:
        return _Uvicorn(self.app)

    def stop(self, timeout_s: float = 5.0) -> None:
        super().stop(timeout_s)

    def stats(self) -> dict[str, Any]:
        """GET /sim/stats."""
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            return client.get(f"{self.url}/sim/stats").raise_for_status().json()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every `SimConfig` knob as --kebab-case, plus --host and --port."""
    for name, info in SimConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=info.default, help=info.description)
        elif name == "voices":
            parser.add_argument(flag, type=lambda s: tuple(v for v in s.split(",") if v),
                                default=info.default, help=info.description + " (comma-separated)")
        else:
            parser.add_argument(flag, type=info.annotation, default=info.default,
                                help=f"{info.description} (default: {info.default})")
    parser.add_argument("--host", default="127.0.0.1", help="bind address")
    parser.add_argument("--port", type=int, default=8000, help="bind port")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build a SimConfig from flags added by `add_arguments`; raises ValidationError."""
    return SimConfig(**{n: getattr(args, n) for n in SimConfig.model_fields if hasattr(args, n)})


def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the stand-in in the foreground until SIGINT/SIGTERM; returns after a clean stop."""
    with suppress(KeyboardInterrupt):  # uvicorn re-raises the captured Ctrl-C on the way out
        _Uvicorn(create_app(config), host=host, port=port).run()


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.engines.sim [flags]`: parse flags and serve in the foreground."""
    parser = argparse.ArgumentParser(description="Higgs Audio v2 vLLM stand-in (sim engine)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    serve(config_from_args(args), args.host, args.port)


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so pydantic resolves its types.
    from pipeline.engines import sim

    sim.main()
