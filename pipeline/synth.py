"""The synth worker: pull a chunk request, get its audio, check it, store it, say so, ack.

Delivery is at-least-once; every effect is idempotent: the audio key is a hash of everything
that determines the audio (an existing object is a finished synthesis), and events carry a
de-duplication id. A message may therefore be handled twice; the outcome happens once.

Audio path: the answer is resampled to the canonical 24 kHz mono 16-bit, checked (wrapped or
clipped samples, duration for the text, runaway silence, truncation), trimmed to a small pad
and its loudness measured (`audio.check_answer`); a failed check is retried by redelivery. With
`TTS_VERIFY=asr` the gate transcribes it and asks for new takes with derived seeds while the
word error rate is too high (up to `verify_max_attempts`), then fails with the transcript.
A voice name that is a synced preset becomes a reference first (`voices.VoiceBook`).

Someone waiting (`reply_to`, set by the gateway): the cache lookup and the model call start
together, and a fresh answer that fits in one NATS message goes to the waiting gateway as an
`AudioReply` right after the checks, before its loudness is measured and before it is stored;
storing, the done event and the ack follow as for any request.

Scheduling: the worker makes at most `max_in_flight` model calls at once (plus up to
`finishing_slots` messages being stored and reported). Each time a slot frees, it asks the
interactive consumer first (a no-wait pull), then the bulk one; when both are empty it waits on
both at once (`poll_s`). While interactive requests are arriving, bulk leaves
`interactive_reserve` of the slots free, so they start at once on a batch that is not full.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from pipeline import bus
from pipeline.synthesis.adaptive import AdaptiveLimit
from pipeline.audio.checks import AudioBounds, CheckedAudio, check_answer, encode_wav, loudness_lufs, to_mono_int16
from pipeline.backend import BackendAnswer, HiggsClient
from pipeline.contracts.errors import Permanent, Retryable, StoreRetryable
from pipeline.contracts.messages import (
    AudioReply, BackendStatus, ChunkDone, ChunkFailed, ChunkTimings, DeadLetter, SynthRequest, WorkerHeartbeat,
)
from pipeline.contracts.policy import DeliveryPolicy, backoff_s
from pipeline.synthesis.metrics import WorkerMetrics
from pipeline.contracts.settings import Settings
from pipeline.store import Store, audio_key
from pipeline.contracts.subjects import INVALID_JOB, PRIORITIES, PRIORITY_BULK, PRIORITY_INTERACTIVE, TOKEN_RE, Names, event_msg_id
from pipeline.synthesis.voices import VoiceBook

log = structlog.get_logger("pipeline.synth")

WAV_HEADER_BYTES = 44
# A bulk message held for the lookahead longer than this starts next, whatever its length.
LOOKAHEAD_MAX_HOLD_S = 30.0
ENGINE_NOTE_HEADER = "x-engine-note"


def retake(request: SynthRequest, take: int) -> SynthRequest:
    """The request for take number `take` (1 = as asked): same text and voice, a seed derived
    from the asked seed (or 0), the text and the take number."""
    if take <= 1:
        return request
    base = request.sampling.seed or 0
    digest = hashlib.sha256(f"{base}:{take}:{request.text}".encode()).digest()
    seed = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    return request.model_copy(update={"sampling": request.sampling.model_copy(update={"seed": seed})})


def _optional_float(meta: dict, name: str) -> float | None:
    with contextlib.suppress(KeyError, ValueError):
        return float(meta[name])
    return None


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerStats:
    synthesized: int = 0
    cached: int = 0
    failed: int = 0
    retried: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    by_priority: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PRIORITIES})


class _CallSlot:
    """A message's claim on one of `max_in_flight` model-call slots, given back (once) as soon as
    the model has answered, so storing and reporting overlap the next call."""

    def __init__(self, worker: "SynthWorker", priority: str):
        self._worker = worker
        self._priority = priority
        self._held = True
        worker._calling[priority] += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._worker._calling[self._priority] -= 1
            self._worker._slot_freed.set()
            if self._priority == PRIORITY_BULK:
                self._worker._start_held()  # refill from the lookahead at once: no NATS round trip


class _HeldMessage:
    """A bulk message in the lookahead: its text length (the call's expected length) and since when."""

    __slots__ = ("msg", "length", "since")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self.since = time.monotonic()
        try:
            text = json.loads(msg.data).get("text")
        except (ValueError, AttributeError):
            text = None
        # Unreadable messages start first: they fail fast and leave the slot to the next one.
        self.length = len(text) if isinstance(text, str) else 1 << 30


class _KeyLocks:
    """One synthesis per audio key inside this process: a duplicate waits, then finds it stored."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str):
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class SynthWorker:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        store: Store,
        client: HiggsClient,
        names: Names | None = None,
    ):
        self.settings = settings
        self.names = names or Names(settings.namespace)
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.store = store
        self.client = client
        self.name = settings.worker_name or default_worker_name()
        self.stats = WorkerStats()
        self.bounds = AudioBounds(
            sample_rate_hz=settings.sample_rate_hz,
            words_per_s=settings.words_per_s,
            min_ratio=settings.min_duration_ratio,
            max_ratio=settings.max_duration_ratio,
            trim_pad_s=settings.trim_pad_s,
            max_edge_silence_s=settings.max_edge_silence_s,
        )
        self.voices = VoiceBook(store, settings.voice_cache_s)
        self.gate = None  # the ASR gate, loaded by setup() when settings.verify == "asr"
        self._pullers = {
            p: bus.Puller(nc, self.names.synth_stream, self.names.synth_consumer(p)) for p in PRIORITIES
        }
        self._tasks: set[asyncio.Task] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._keys = _KeyLocks()
        self._rng = random.Random()
        self.policy = DeliveryPolicy.from_settings(settings)
        self.metrics = WorkerMetrics(self)
        self._ready = False
        # Slots held by idle pulls that may still deliver a message, and messages started and
        # not yet answered by the model server, per priority.
        self._reserved = {p: 0 for p in PRIORITIES}
        self._calling = {p: 0 for p in PRIORITIES}
        self._interactive_seen = -math.inf  # monotonic time an interactive request last started
        self.adaptive = (AdaptiveLimit(settings.max_in_flight, settings.adaptive_window_s)
                         if settings.adaptive_in_flight else None)
        self._store_down = asyncio.Event()
        self._store_probe: asyncio.Task | None = None
        self._idle_waits: dict[str, asyncio.Task | None] = {}
        # Bulk messages pulled ahead of a free call slot (`bulk_lookahead`), longest text first.
        self._lookahead: list[_HeldMessage] = []

    # ---------------------------------------------------------------- lifecycle

    async def setup(self) -> None:
        """Streams and consumers exist afterwards (idempotent: every worker may do it, twice)."""
        if self._ready:
            return
        await bus.ensure_streams(self.js, self.settings, self.names)
        await bus.ensure_synth_consumers(self.js, self.settings, self.names)
        if self.settings.verify == "asr" and self.gate is None:
            self.gate = await asyncio.to_thread(_load_gate, self.settings)
        for puller in self._pullers.values():
            await puller.start()
        self._ready = True

    def stop(self) -> None:
        """Ask the worker to stop pulling; `run` then drains and returns."""
        self._stopping.set()
        self._slot_freed.set()

    async def run(self) -> None:
        await self.setup()
        log.info("synth.started", worker=self.name, max_in_flight=self.settings.max_in_flight, backends=self.client.urls,
                 adaptive=self.adaptive is not None)
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        lookahead_keepalive = asyncio.create_task(self._lookahead_keepalive())
        try:
            await self._pull_loop()
        finally:
            lookahead_keepalive.cancel()
            await self._release_lookahead()
            await self._drain()
            heartbeat.cancel()
            if self._store_probe is not None:
                self._store_probe.cancel()
            with contextlib.suppress(Exception):
                await (await bus.workers_kv(self.js, self.names)).delete(self.name)
            for puller in self._pullers.values():
                await puller.stop()
            if self.gate is not None:
                self.gate.close()
            log.info("synth.stopped", worker=self.name, **self._stats_fields())

    def heartbeat(self, backend_health: dict[str, bool], voices: dict[str, list[str]] | None = None) -> WorkerHeartbeat:
        s = self.stats
        return WorkerHeartbeat(
            worker=self.name, max_in_flight=self.call_limit, in_flight=s.in_flight,
            peak_in_flight=s.peak_in_flight, synthesized=s.synthesized, cached=s.cached, failed=s.failed,
            retried=s.retried, backends=[
                BackendStatus(url=b["url"], healthy=backend_health.get(b["url"], False) and b["healthy"],
                              in_flight=b["in_flight"], calls=b["calls"], voices=(voices or {}).get(b["url"], []))
                for b in self.client.snapshot()
            ],
        )

    async def _heartbeat_loop(self) -> None:
        """Publish this worker's state to `tts_workers` (the gateway's /health reads it)."""
        voices: dict[str, list[str]] = {}
        beats = 0
        while True:
            try:
                kv = await bus.workers_kv(self.js, self.names)
                health = await self.client.health()
                if beats % 12 == 0 or not any(voices.values()):  # voice lists rarely change
                    voices = await self.client.voices()
                beats += 1
                await kv.put(self.name, self.heartbeat(health, voices).to_bytes())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("synth.heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.settings.heartbeat_s)

    def _stats_fields(self) -> dict:
        s = self.stats
        return {"synthesized": s.synthesized, "cached": s.cached, "failed": s.failed, "retried": s.retried}

    @property
    def call_limit(self) -> int:
        """Model calls this worker may have running now: `max_in_flight`, or the adaptive limit."""
        return self.adaptive.limit if self.adaptive is not None else self.settings.max_in_flight

    async def _pull_loop(self) -> None:
        paused = False
        while not self._stopping.is_set():
            blocked = ("all model servers down" if self.client.all_down()
                       else "object store unreachable" if self._store_down.is_set() else None)
            if blocked:
                # Pulling now would only burn delivery attempts on work that cannot finish.
                if not paused:
                    log.warning("synth.paused", reason=blocked, backends=self.client.urls)
                    paused = True
                await asyncio.sleep(min(0.5, self.settings.poll_s))
                continue
            if paused:
                log.info("synth.resumed")
                paused = False
            if self.adaptive is not None:
                self.adaptive.used(sum(self._calling.values()))
                self.adaptive.tick(time.monotonic())
            self._start_held()
            free = self._free()
            if free <= 0:
                self._slot_freed.clear()
                await self._top_up_lookahead()
                await self._slot_freed.wait()
                continue
            try:
                await self._pull_some(free)
            except Exception as exc:  # NATS away: nats-py reconnects; we wait and ask again
                log.warning("synth.pull_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(min(1.0, self.settings.poll_s * 5))

    def _free(self) -> int:
        """Messages this worker may start now. Model calls never exceed the call limit
        (`max_in_flight`); a few more messages may be finishing (checked, stored, reported)
        while the next calls already run. Slots held by waiting pulls are not free."""
        limit = self.call_limit
        return (min(limit - sum(self._calling.values()), limit + self.settings.finishing_slots - len(self._tasks))
                - sum(self._reserved.values()))

    def bulk_room(self) -> int:
        """Bulk calls that may start now: every slot, less the interactive reserve while
        interactive requests are arriving."""
        limit = self.call_limit
        if time.monotonic() - self._interactive_seen < self.settings.interactive_hold_s:
            limit -= math.floor(limit * self.settings.interactive_reserve)
        return limit - self._calling[PRIORITY_BULK] - self._reserved[PRIORITY_BULK]

    async def _pull_some(self, free: int) -> None:
        """Start up to `free` messages: interactive first, then bulk; wait a little when idle."""
        for priority in (PRIORITY_INTERACTIVE, PRIORITY_BULK):
            if priority == PRIORITY_INTERACTIVE:
                want = free
            else:
                want = min(free, self.bulk_room()) + max(0, self.settings.bulk_lookahead - len(self._lookahead))
            msgs = await self._pullers[priority].pull(want) if want > 0 else []
            if msgs:
                for msg in msgs:
                    self._take(msg, priority)
                self._start_held()
                return
        # Idle: wait on both queues at once (one wait per queue, each holding a reserved slot
        # until its pull request is over), so an interactive request starts the moment it
        # arrives; with one free slot, wait on bulk alone (interactive then waits <= `poll_s`);
        # with no room for bulk, on interactive alone.
        if self.bulk_room() <= 0:
            order: tuple[str, ...] = (PRIORITY_INTERACTIVE,)
        else:
            order = (PRIORITY_INTERACTIVE, PRIORITY_BULK) if free >= 2 else (PRIORITY_BULK,)
        for priority in order:
            waiting = self._idle_waits.get(priority)
            if (waiting is None or waiting.done()) and free > 0:
                self._idle_waits[priority] = asyncio.create_task(self._reserved_pull(priority))
                free -= 1
        pending = [t for t in self._idle_waits.values() if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    async def _reserved_pull(self, priority: str) -> None:
        self._reserved[priority] += 1
        try:
            msgs = await self._pullers[priority].pull(1, wait_s=self.settings.poll_s)
        except Exception as exc:  # NATS away or the worker stopping: nothing was taken
            log.debug("synth.idle_pull_failed", error=f"{type(exc).__name__}: {exc}")
            msgs = []
        finally:
            self._reserved[priority] -= 1
        for msg in msgs:
            if self._stopping.is_set():
                with contextlib.suppress(Exception):
                    await msg.nak()
            else:
                self._take(msg, priority)
        self._start_held()
        self._slot_freed.set()

    def _take(self, msg: Msg, priority: str) -> None:
        """Start a pulled message; with a bulk lookahead, hold it instead (the caller then runs
        `_start_held` once the whole pull is held, so the longest of them starts)."""
        if priority == PRIORITY_BULK and self.settings.bulk_lookahead > 0:
            self._lookahead.append(_HeldMessage(msg))
        else:
            self._start(msg, priority)

    def _start_held(self) -> None:
        """Start held bulk messages while bulk may start calls: the longest text first, or one
        held for more than `LOOKAHEAD_MAX_HOLD_S` (no short chunk waits for ever)."""
        if not self._lookahead or self._stopping.is_set() or self._store_down.is_set() or self.client.all_down():
            return  # paused: held messages wait (kept alive) instead of burning delivery attempts
        while self._lookahead and min(self._free(), self.bulk_room()) > 0:
            now = time.monotonic()
            oldest = min(self._lookahead, key=lambda h: h.since)
            chosen = oldest if now - oldest.since > LOOKAHEAD_MAX_HOLD_S else max(
                self._lookahead, key=lambda h: (h.length, -h.since))
            self._lookahead.remove(chosen)
            self._start(chosen.msg, PRIORITY_BULK)

    async def _top_up_lookahead(self) -> None:
        """Every call slot is busy: pull bulk messages into the lookahead (without waiting)."""
        want = self.settings.bulk_lookahead - len(self._lookahead)
        if want <= 0 or self._stopping.is_set():
            return
        try:
            msgs = await self._pullers[PRIORITY_BULK].pull(want)
        except Exception as exc:  # NATS away: the pull loop notices and waits
            log.debug("synth.lookahead_pull_failed", error=f"{type(exc).__name__}: {exc}")
            return
        for msg in msgs:
            self._take(msg, PRIORITY_BULK)
        self._start_held()

    async def _lookahead_keepalive(self) -> None:
        """In-progress acks for held messages, so holding them never outlives the ack deadline."""
        while True:
            await asyncio.sleep(max(0.5, self.settings.ack_wait_s / 3))
            for held in list(self._lookahead):
                with contextlib.suppress(Exception):
                    await held.msg.in_progress()

    async def _release_lookahead(self) -> None:
        """Stopping: held messages go back to the stream for another worker, at once."""
        held, self._lookahead = self._lookahead, []
        for h in held:
            with contextlib.suppress(Exception):
                await h.msg.nak()

    def _start(self, msg: Msg, priority: str) -> None:
        if priority == PRIORITY_INTERACTIVE:
            self._interactive_seen = time.monotonic()
        task = asyncio.create_task(self._handle(msg, priority, _CallSlot(self, priority)))
        self._tasks.add(task)
        self.stats.in_flight = len(self._tasks)
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        self.stats.by_priority[priority] += 1
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self.stats.in_flight = len(self._tasks)
        self._slot_freed.set()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info("synth.draining", in_flight=len(self._tasks), deadline_s=self.settings.drain_timeout_s)
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.drain_timeout_s)
        for task in pending:
            task.cancel()  # the handler naks its message on cancellation
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    # ---------------------------------------------------------------- one message

    async def _keepalive(self, msg: Msg) -> None:
        """In-progress acks so a long call never outlives the ack deadline."""
        interval_s = max(0.5, self.settings.ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _handle(self, msg: Msg, priority: str, slot: _CallSlot) -> None:
        attempt = bus.delivery_count(msg)
        try:
            request = SynthRequest.from_bytes(msg.data)
        except ValidationError as exc:
            slot.release()
            await self._reject_invalid(msg, attempt, exc)
            return
        age_s = bus.message_age_s(msg)
        if self.policy.too_old(age_s):
            slot.release()
            await self._fail(msg, request, attempt, "max_age",
                             Permanent(f"request is {age_s:.0f} s old (limit {self.policy.max_age_s:.0f} s)"))
            return
        keepalive = asyncio.create_task(self._keepalive(msg))
        try:
            await self._process(msg, request, attempt, priority, slot)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Permanent as exc:
            await self._fail(msg, request, attempt, "permanent", exc)
        except Exception as exc:  # Retryable, or a bug: both deserve another delivery
            if isinstance(exc, StoreRetryable):
                self._store_suspect(exc)
            verdict = self.policy.after_failure(attempt, age_s, self._rng)
            if not verdict.retry:
                await self._fail(msg, request, attempt, verdict.reason, exc)
            else:
                delay_s = verdict.delay_s
                self.stats.retried += 1
                log_fn = log.warning if isinstance(exc, Retryable) else log.exception
                log_fn("synth.retry", job=request.job_id, chunk=request.chunk_id, attempt=attempt,
                       delay_s=round(delay_s, 2), error=str(exc)[:300])
                with contextlib.suppress(Exception):
                    await msg.nak(delay=delay_s)
        finally:
            slot.release()
            keepalive.cancel()

    async def _process(self, msg: Msg, request: SynthRequest, attempt: int, priority: str, slot: _CallSlot) -> None:
        started = time.perf_counter()
        queued_s = max(0.0, time.time() - msg.metadata.timestamp.timestamp()) if msg.metadata else 0.0
        request = await self.voices.resolve(request)  # the key then covers the preset's audio
        key = audio_key(request.audio_digest(self.settings.model))
        reply_to = self._reply_subject(request)
        synth_s = store_s = 0.0
        backend_url = engine_note = None
        repairs: list[str] = []
        loudness = wer = None
        takes = None

        def outcome(size: int, cached: bool) -> ChunkDone:
            return ChunkDone(
                job_id=request.job_id, chunk_id=request.chunk_id, key=key, duration_s=round(duration_s, 4),
                sample_rate_hz=sample_rate_hz, bytes=size, cached=cached, attempt=attempt, backend=backend_url,
                worker=self.name, chapter=request.chapter, index=request.index, reply_tag=request.reply_tag,
                repaired=repairs, engine_note=engine_note, wer=wer, takes=takes,
                loudness_lufs=None if loudness is None else round(loudness, 2),
                timings=ChunkTimings(queued_s=round(queued_s, 4), synth_s=round(synth_s, 4),
                                     store_s=round(store_s, 4), total_s=round(time.perf_counter() - started, 4)),
            )

        async with self._keys.hold(key):
            synthesis = None
            if reply_to:
                # Someone is waiting: ask the model at once, in parallel with the cache lookup
                # (a hit cancels the call a few milliseconds after it started).
                synthesis = asyncio.create_task(
                    self._synthesize_checked(request, measure_loudness=False, answered=slot.release))
            try:
                head = await self.store.head(key)
            except BaseException:
                await _cancel(synthesis)
                raise
            cached = head is not None
            if cached:
                await _cancel(synthesis)
                slot.release()
                size = int(head.get("ContentLength", 0))
                meta = head.get("Metadata", {}) or {}
                sample_rate_hz = int(meta.get("sample-rate-hz", self.settings.sample_rate_hz))
                duration_s = float(meta.get("duration-s", (size - WAV_HEADER_BYTES) / 2 / sample_rate_hz))
                loudness, wer = _optional_float(meta, "loudness-lufs"), _optional_float(meta, "wer")
            else:
                t0 = time.perf_counter()
                # A waiting gateway gets the audio first; loudness is measured after that.
                checked, answer, wer, takes = await (synthesis or self._synthesize_checked(request, answered=slot.release))
                slot.release()
                synth_s = time.perf_counter() - t0
                self.metrics.synth_seconds.observe(synth_s)
                if self.adaptive is not None:
                    self.adaptive.record(checked.duration_s, answer.elapsed_s)
                backend_url = answer.url
                repairs = answer.wav.repairs
                engine_note = answer.headers.get(ENGINE_NOTE_HEADER) or None
                sample_rate_hz, duration_s, loudness = checked.sample_rate_hz, checked.duration_s, checked.loudness_lufs
                wav = encode_wav(checked.samples, sample_rate_hz)
                size = len(wav)
                if reply_to:
                    await self._reply(reply_to, outcome(size, False), wav)
                    loudness = loudness_lufs(checked.samples, sample_rate_hz)
                meta = {"duration-s": f"{duration_s:.4f}", "sample-rate-hz": str(sample_rate_hz),
                        "job-id": request.job_id, "chunk-id": request.chunk_id}
                if loudness is not None:
                    meta["loudness-lufs"] = f"{loudness:.2f}"
                if wer is not None:
                    meta["wer"] = f"{wer:.4f}"
                t0 = time.perf_counter()
                await self._put_keeping_the_audio(key, wav, meta)
                store_s = time.perf_counter() - t0
        done = outcome(size, cached)
        await bus.publish_json(self.js, self.names.chunk_done(request.job_id), done.to_bytes(),
                               event_msg_id("done", request.job_id, request.chunk_id))
        await msg.ack()
        if cached:
            self.stats.cached += 1
        else:
            self.stats.synthesized += 1
        log.info("synth.done", job=request.job_id, chunk=request.chunk_id, attempt=attempt, priority=priority,
                 cached=cached, duration_s=done.duration_s, synth_s=done.timings.synth_s, backend=backend_url,
                 repaired=repairs or None, wer=wer, takes=takes, engine_note=engine_note)

    def _reply_subject(self, request: SynthRequest) -> str | None:
        """The request's `reply_to` when it names a gateway of this pipeline (a worker never
        publishes audio onto any other subject, whatever a message asks)."""
        if request.reply_to and request.reply_to.startswith(self.names.reply_prefix):
            return request.reply_to
        return None

    async def _reply(self, subject: str, done: ChunkDone, wav: bytes) -> None:
        """Send the answer to the waiting gateway when it fits in one NATS message; best effort:
        the done event (after the store) is the record, and the gateway falls back to it."""
        if AudioReply.size(done, len(wav)) > self.nc.max_payload:
            return
        try:
            await self.nc.publish(subject, AudioReply.encode(done, wav))
        except Exception as exc:  # NATS away: the event path still answers
            log.debug("synth.reply_failed", error=f"{type(exc).__name__}: {exc}")
            return
        # Let nats-py's flusher task write it before the CPU-bound work that follows (loudness,
        # the upload) holds the event loop: one turn of the loop does it. (A PING/PONG `flush`
        # would also wait for the server's answer: a full round of a busy loop.)
        await asyncio.sleep(0)

    async def _put_keeping_the_audio(self, key: str, wav: bytes, meta: dict[str, str]) -> None:
        """Store fresh audio, retrying in place for up to `store_retry_s` while the store is
        away: the model's work is not thrown away (and redone) for an S3 hiccup."""
        deadline = time.monotonic() + self.settings.store_retry_s
        attempt = 0
        while True:
            try:
                await self.store.put(key, wav, "audio/wav", meta)
                return
            except StoreRetryable as exc:
                attempt += 1
                self._store_suspect(exc)
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(backoff_s(attempt, 0.25, 4.0, self._rng), max(0.0, deadline - time.monotonic())))

    def _store_suspect(self, exc: Exception) -> None:
        """The store failed: pause pulling until a probe of the bucket answers again."""
        if self._store_down.is_set():
            return
        self._store_down.set()
        log.warning("synth.store_unreachable", error=str(exc)[:200])

        async def probe() -> None:
            while not self._stopping.is_set():
                await asyncio.sleep(0.5)
                if await self.store.reachable():
                    log.info("synth.store_back")
                    self._store_down.clear()
                    return

        self._store_probe = asyncio.create_task(probe())

    async def _synthesize_checked(self, request: SynthRequest, measure_loudness: bool = True,
                                  answered: Callable[[], None] | None = None,
                                  ) -> tuple[CheckedAudio, BackendAnswer, float | None, int]:
        """Audio for `request` that passed every check, canonical and trimmed: (audio, answer,
        WER or None, takes). A failed audio check raises `AudioInvalid` (retried by redelivery);
        with the ASR gate, a take whose WER is too high is followed by one with a new seed, and
        `AsrRejected` (permanent) is raised when `verify_max_attempts` takes all failed.
        `answered` is called when the model's answer arrives (with the gate: never, since
        another take may follow), so the call slot is refilled before the answer is decoded."""
        takes = self.settings.verify_max_attempts if self.gate is not None else 1
        verdict = None
        for take in range(1, takes + 1):
            answer = await self.client.synthesize(retake(request, take), answered if takes == 1 else None)
            checked = check_answer(to_mono_int16(answer.wav), answer.wav.fmt.sample_rate_hz, request.text, self.bounds,
                                   measure_loudness)
            if self.gate is None:
                return checked, answer, None, take
            verdict = await self.gate.judge(checked.samples, checked.sample_rate_hz, request.text)
            if verdict.passed:
                return checked, answer, verdict.wer, take
            log.info("synth.asr_retake", job=request.job_id, chunk=request.chunk_id, take=take, wer=verdict.wer)
        raise self.gate.rejection(verdict, takes)

    async def _fail(self, msg: Msg, request: SynthRequest, attempt: int, reason: str, exc: Exception) -> None:
        error = str(exc)[:2000] or type(exc).__name__
        failed = ChunkFailed(
            job_id=request.job_id, chunk_id=request.chunk_id, reason=reason, error=error, attempt=attempt,
            worker=self.name, chapter=request.chapter, index=request.index, reply_tag=request.reply_tag,
        )
        await self._dead_letter(msg, attempt, reason, error, request.job_id, request.chunk_id)
        await bus.publish_json(self.js, self.names.chunk_failed(request.job_id), failed.to_bytes(),
                               event_msg_id("failed", request.job_id, request.chunk_id))
        await msg.term()
        self.stats.failed += 1
        log.warning("synth.failed", job=request.job_id, chunk=request.chunk_id, attempt=attempt, reason=reason,
                    error=error[:300])

    async def _reject_invalid(self, msg: Msg, attempt: int, exc: ValidationError) -> None:
        """A message that is not a SynthRequest: failed event + dead letter + term, nothing else."""
        job_id, chunk_id = _salvage_ids(msg.data)
        error = _validation_summary(exc)
        try:
            await self._dead_letter(msg, attempt, "invalid", error, job_id, chunk_id)
            failed = ChunkFailed(job_id=job_id, chunk_id=chunk_id, reason="invalid", error=error,
                                 attempt=attempt, worker=self.name)
            await bus.publish_json(self.js, self.names.chunk_failed(job_id), failed.to_bytes())
            await msg.term()
        except Exception as publish_exc:  # NATS away: let the message come back later
            log.warning("synth.reject_deferred", error=str(publish_exc))
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.settings.retry_base_delay_s)
            return
        self.stats.failed += 1
        log.warning("synth.invalid", job=job_id, chunk=chunk_id, error=error[:300])

    async def _dead_letter(self, msg: Msg, attempt: int, reason: str, error: str,
                           job_id: str | None, chunk_id: str | None) -> None:
        seq = msg.metadata.sequence.stream if msg.metadata else None
        letter = DeadLetter(source_subject=msg.subject, stream_seq=seq, reason=reason, error=error,
                            attempts=attempt, job_id=job_id, chunk_id=chunk_id, **DeadLetter.encode_payload(msg.data))
        await bus.publish_json(self.js, self.names.dlq(msg.subject), letter.to_bytes(),
                               f"dlq:{self.names.synth_stream}:{seq}" if seq else None)


async def _cancel(task: asyncio.Task | None) -> None:
    if task is not None and not task.done():
        task.cancel()
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _load_gate(settings: Settings):
    """The ASR gate with its model loaded (needs the `verify` extra)."""
    from pipeline.audio.asr import AsrGate, Transcriber

    return AsrGate(Transcriber(settings.verify_model, settings.verify_threads).load(), settings.verify_max_wer)


def _salvage_ids(data: bytes) -> tuple[str, str]:
    """Best-effort ids from a message that failed validation, for routing its failed event."""
    import json

    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return INVALID_JOB, "unknown"
    if not isinstance(raw, dict):
        return INVALID_JOB, "unknown"
    job = raw.get("job_id")
    chunk = raw.get("chunk_id")
    job = job if isinstance(job, str) and TOKEN_RE.match(job) else INVALID_JOB
    chunk = chunk if isinstance(chunk, str) and TOKEN_RE.match(chunk) else "unknown"
    return job, chunk


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "message"
        parts.append(f"{where}: {err.get('msg')}")
    return "invalid synth request: " + "; ".join(parts)
