"""The gateway's one job: turn an HTTP request into a `SynthRequest` on the bus, wait for its
outcome, and answer with the audio: straight from the worker's `AudioReply` for a fresh answer
that fits in one NATS message, else read from the store. It never calls a model server.

Every request is published with interactive priority under this process's job id
(`gw-<instance>`) and a fresh chunk id; `OutcomeRouter` resolves it from one subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass

import structlog
from pydantic import ValidationError

from pipeline.client import publish_synth
from pipeline.contracts.errors import StorePermanent, StoreRetryable
from pipeline.contracts.messages import ChunkDone, ChunkFailed, Sampling, SynthRequest
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import PRIORITY_INTERACTIVE, Names

from http_gateway.chunked import ChunkedSpeech
from http_gateway.errors import BadInput, GenerationFailed, NoAnswer, NotFound, TooLarge, Unavailable
from http_gateway.link import Link
from http_gateway.longform import Joiner, chunk_requests, plan_texts, plan_turns, wav_header
from http_gateway.metrics import GatewayMetrics
from http_gateway.observe import Observer
from http_gateway.outcomes import OutcomeRouter
from http_gateway.references import decode_reference, store_reference
from http_gateway.schemas import DEFAULT_VOICE_ALIASES
from http_gateway.stats import RequestStats
from pipeline.text.cast import Cast, CastError, UnknownVoice
from pipeline.text.speakers import speakers_in

log = structlog.get_logger("http_gateway")

# Decoding and checking a reference of this size or more runs off the event loop.
OFFLOAD_REFERENCE_CHARS = 256 * 1024
# How long `DELETE /requests/{id}` waits for the instance running another gateway's request to answer.
CANCEL_ASK_S = 2.0


@dataclass(frozen=True)
class Spoken:
    wav: bytes
    done: ChunkDone  # the (first) chunk's event
    generation_s: float
    concurrent: int
    chunks: int = 1
    cached: bool | None = None  # every chunk from the store; None: the one chunk's `done.cached`

    @property
    def all_cached(self) -> bool:
        return self.done.cached if self.cached is None else self.cached


@dataclass(frozen=True)
class Ask:
    """What a route wants spoken, before checks."""

    text: str
    sampling: Sampling
    system_prompt: str | None = None
    voice: str | None = None
    reference_b64: str | None = None
    reference_text: str | None = None
    # The speech route maps OpenAI voice names to the default voice instead of a 404.
    openai_voices: bool = False
    # The spoken form: None = the workers' TTS_SPOKEN_FORM, False = as written.
    normalize: bool | None = None
    # Voices by speaker tag or character, and the narrator's (`pipeline.text.cast`).
    cast: dict[str, str] | None = None
    narrator: str | None = None

    def voices(self) -> Cast:
        return Cast.of(self.cast, self.narrator)


class Gateway:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.names = Names(settings.namespace)
        self.instance_id = uuid.uuid4().hex[:12]
        self.job_id = f"gw-{self.instance_id}"
        self.router = OutcomeRouter(self.names, self.job_id, self.instance_id)
        self.link = Link(settings, self.names, self.router, client_name=f"tts-gateway-{self.instance_id}")
        self.observer = Observer(settings, self.names, self.link)
        self.stats = RequestStats()
        self.metrics = GatewayMetrics()
        self.running: dict[str, ChunkedSpeech] = {}  # long requests by request id (for DELETE)
        self._closing: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.link.start()
        log.info("gateway.started", instance=self.instance_id, bus=self.link.bus_up)

    async def close(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.link.close()

    # ------------------------------------------------------------------ checks

    async def prepare(self, ask: Ask, request_id: str) -> SynthRequest:
        """A valid request for the bus, or a `GatewayError` saying what is wrong (400/404/413)."""
        if not ask.text.strip():
            raise BadInput("Text cannot be empty")
        limit = self.settings.gateway_max_text_chars
        if len(ask.text) > limit:
            raise TooLarge(f"Text is {len(ask.text)} characters; the limit per request is {limit}. "
                           "Send longer texts to the jobs API (POST /jobs): it keeps their progress and "
                           "its chapters can be fetched as they finish.")
        speakers = speakers_in(ask.text)
        await self.check_cast(ask.voices(), speakers)
        voice = await self.resolve_voice(ask.voice, ask.openai_voices)
        if ask.narrator and not speakers:  # no tags: the narrator speaks it all
            voice = ask.narrator
        reference = None
        if ask.reference_b64:
            if voice:
                raise BadInput("Give either a voice or reference_audio_base64, not both")
            reference = await self._reference(ask.reference_b64, ask.reference_text)
        try:
            return SynthRequest(
                job_id=self.job_id, chunk_id=uuid.uuid4().hex, text=ask.text, voice=voice, reference=reference,
                system_prompt=ask.system_prompt, sampling=ask.sampling, reply_tag=request_id[:128],
                reply_to=self.router.reply_subject, normalize=ask.normalize,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "request"
            raise BadInput(f"{where}: {first.get('msg')}") from None

    async def resolve_voice(self, voice: str | None, openai_voices: bool = False) -> str | None:
        """`voice` when it is a known preset (None for none); `NotFound` listing the known ones."""
        if not voice:
            return None
        known = await self.observer.voices()
        if voice in known:
            return voice
        if openai_voices and voice in DEFAULT_VOICE_ALIASES:
            return None
        known = await self.observer.voices(refresh=True)  # a preset added a moment ago
        if voice in known:
            return voice
        raise NotFound(f"Unknown voice '{voice}'. Known voices: {', '.join(sorted(known)) or 'none'}",
                       voices=sorted(known))

    async def check_cast(self, cast: Cast, speakers: list[str]) -> None:
        """400 for a speaker the cast gives no voice, 404 for a voice nobody knows (before
        anything is queued)."""
        if cast.empty and not speakers:
            return
        try:
            cast.check(speakers, None)
        except CastError as exc:
            raise BadInput(str(exc)) from None
        for refresh in (False, True):  # a voice added a moment ago: list again before a 404
            known = await self.observer.voices(refresh=refresh)
            try:
                cast.check(speakers, known)
                return
            except UnknownVoice as exc:
                error = exc
        raise NotFound(str(error), voices=sorted(known))

    def chunk_plan(self, ask: Ask, request: SynthRequest) -> list[SynthRequest]:
        """The prepared request as the chunks to speak: `[request]` itself for a text of one
        chunk without speaker tags; else one request per chunk, each with its speaker's voice."""
        key = uuid.uuid4().hex
        turns = plan_turns(request.text, self.settings)
        if turns == []:
            raise BadInput("Text cannot be empty: it holds only speaker tags")
        if turns is None:
            return chunk_requests(request, plan_texts(request.text, self.settings), key)
        return chunk_requests(request, [t for _, t in turns], key, [s for s, _ in turns], ask.voices())

    async def _reference(self, data_b64: str, transcript: str | None):
        max_bytes, max_s = self.settings.gateway_max_reference_bytes, self.settings.gateway_max_reference_s
        if len(data_b64) >= OFFLOAD_REFERENCE_CHARS:
            wav = await asyncio.to_thread(decode_reference, data_b64, max_bytes, max_s)
        else:
            wav = decode_reference(data_b64, max_bytes, max_s)
        store = self.link.require_store()
        try:
            return await store_reference(store, wav, transcript)
        except (StoreRetryable, StorePermanent) as exc:
            raise Unavailable(f"object store unavailable: {exc}") from None

    # ------------------------------------------------------------------ the round trip

    async def speak(self, request: SynthRequest, request_id: str) -> Spoken:
        """Publish, wait for the outcome, read the WAV. Raises 502/503/504 `GatewayError`s."""
        js = self.link.require_bus()
        self.link.require_store()  # the audio lands there: no point synthesising without it
        timeout_s = self.settings.gateway_request_timeout_s
        started = time.perf_counter()
        self.stats.begin()
        self.metrics.in_flight.inc()
        outcome_label, ok, cached = "unavailable", False, False
        try:
            future = self.router.expect(request.chunk_id)
            try:
                try:
                    await asyncio.wait_for(publish_synth(js, self.names, request, PRIORITY_INTERACTIVE), timeout_s)
                except Exception as exc:  # nats timeouts, no responders, closed connection
                    raise Unavailable(f"message bus unavailable: {type(exc).__name__}") from None
                remaining_s = max(0.0, timeout_s - (time.perf_counter() - started))
                try:
                    arrived = await asyncio.wait_for(future, remaining_s)
                except asyncio.TimeoutError:
                    outcome_label = "timeout"
                    raise NoAnswer(f"No answer from the bus within {timeout_s:g} s (request id {request_id})",
                                   request_id=request_id) from None
            finally:
                self.router.forget(request.chunk_id)
            outcome, wav = arrived.outcome, arrived.wav
            if isinstance(outcome, ChunkFailed):
                outcome_label = "failed"
                raise GenerationFailed(f"Generation failed ({outcome.reason}): {outcome.error}")
            wav = await self.audio_of(outcome, wav)
            ok, cached, outcome_label = True, outcome.cached, "done"
            generation_s = time.perf_counter() - started
            return Spoken(wav=wav, done=outcome, generation_s=generation_s, concurrent=self.stats.concurrent_requests)
        finally:
            elapsed_s = time.perf_counter() - started
            self.stats.end(ok, elapsed_s, cached)
            self.metrics.in_flight.dec()
            self.metrics.syntheses.labels(outcome=outcome_label).inc()
            if cached:
                self.metrics.cache_hits.inc()
            log.info("gateway.synth", request_id=request_id, chunk=request.chunk_id, outcome=outcome_label,
                     cached=cached, elapsed_s=round(elapsed_s, 3), chars=len(request.text))

    async def audio_of(self, done: ChunkDone, replied: bytes | None) -> bytes:
        """The WAV of a done chunk: the worker's reply, else (cached, or too large for one NATS
        message) read from the store; `Unavailable` when the store is away."""
        self.metrics.audio_source.labels(source="reply" if replied is not None else "store").inc()
        if replied is not None:
            return replied
        try:
            return await self.link.require_store().get(done.key)
        except (StoreRetryable, StorePermanent) as exc:
            raise Unavailable(f"object store unavailable: {exc}") from None

    async def generate(self, ask: Ask, request_id: str) -> Spoken:
        """The whole answer: one chunk as always, or a long text's chunks joined into one WAV."""
        request = await self.prepare(ask, request_id)
        requests = self.chunk_plan(ask, request)
        if len(requests) == 1 and requests[0] is request:
            return await self.speak(request, request_id)
        started = time.perf_counter()
        self.metrics.long_requests.labels(mode="whole").inc()
        pcm, first_done, chunks = [], None, 0
        async with self.chunked(requests, request_id) as speech:
            joiner = Joiner(self.settings)
            async for done, wav in speech.pieces():
                first_done = first_done or done
                pcm.append(await asyncio.to_thread(joiner.pcm, wav, done.loudness_lufs))
            chunks, cached = len(speech), speech.cached == len(speech)
        data = b"".join(pcm)
        return Spoken(wav=wav_header(self.settings.sample_rate_hz, len(data)) + data, done=first_done,
                      generation_s=time.perf_counter() - started, concurrent=self.stats.concurrent_requests,
                      chunks=chunks, cached=cached)

    @contextlib.asynccontextmanager
    async def chunked(self, requests: list[SynthRequest], request_id: str):
        """A long request's chunks (`chunk_plan`) published and tracked (counted once in the
        stats); on the way out, whatever no outcome answered is withdrawn from the queue."""
        speech = ChunkedSpeech(self, requests, request_id)
        self.stats.begin()
        self.metrics.in_flight.inc()
        self.running[request_id] = speech
        ok, started = False, time.perf_counter()
        listening = None
        try:
            listening = await self._listen_for_cancel(speech)
            await speech.publish()
            yield speech
            ok = True
        finally:
            if self.running.get(request_id) is speech:
                del self.running[request_id]
            self.metrics.in_flight.dec()
            self.stats.end(ok, time.perf_counter() - started, ok and speech.cached == len(speech))
            # Off this task: a stream whose client left is being cancelled, and this must still run.
            closing = asyncio.get_running_loop().create_task(self._finish(speech, listening))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            log.info("gateway.long_request", request_id=request_id, chunks=len(speech), ok=ok,
                     cached=speech.cached, elapsed_s=round(time.perf_counter() - started, 3),
                     chars=sum(len(r.text) for r in requests))

    async def cancel(self, request_id: str) -> int | None:
        """Cancel a running long request: its unanswered chunks (None: no gateway runs it). One of
        another instance (several replicas behind a load balancer) is asked for over core NATS:
        only the instance running it answers."""
        speech = self.running.get(request_id)
        if speech is not None:
            return speech.cancel()
        if not self.link.bus_up:
            return None
        try:
            answer = await self.link.nc.request(self.names.request_cancel(request_id), b"", timeout=CANCEL_ASK_S)
            return int(json.loads(answer.data)["chunks_unanswered"])
        except Exception:  # nobody runs it (no responders: at once), no answer in time, a garbled answer
            return None

    @staticmethod
    async def _finish(speech: ChunkedSpeech, listening) -> None:
        if listening is not None:
            with contextlib.suppress(Exception):
                await listening.unsubscribe()
        await speech.close()

    async def _listen_for_cancel(self, speech: ChunkedSpeech):
        """While `speech` runs, another instance's `DELETE /requests/{id}` reaches it here."""

        async def on_cancel(msg) -> None:
            left = speech.cancel()
            log.info("gateway.request_cancelled_remotely", request_id=speech.request_id, chunks_unanswered=left)
            with contextlib.suppress(Exception):
                await msg.respond(json.dumps({"chunks_unanswered": left, "instance": self.instance_id}).encode())

        try:
            return await self.link.nc.subscribe(self.names.request_cancel(speech.request_id), cb=on_cancel)
        except Exception:  # the bus just went away: the request fails on its own publish
            return None
