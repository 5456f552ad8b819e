"""One synth message: validate it, look up the cache, get checked audio, store it, report, ack.

Delivery is at-least-once; every effect is idempotent: the audio key is a hash of everything
that determines the audio (an existing object is a finished synthesis), and events carry a
de-duplication id. A message may therefore be handled twice; the outcome happens once.
Failures: retryable ones are nak'd with a growing delay, permanent ones (and the last attempt)
end as a failed event plus a dead letter, and the message is terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from pipeline import bus
from pipeline.audio.checks import encode_wav, loudness_lufs
from pipeline.contracts.errors import Permanent, Retryable, StoreRetryable
from pipeline.contracts.messages import ChunkDone, ChunkFailed, ChunkTimings, DeadLetter, SynthRequest
from pipeline.contracts.policy import failure_reason
from pipeline.contracts.subjects import INVALID_JOB, TOKEN_RE, event_msg_id
from pipeline.store import audio_key
from pipeline.synthesis.scheduling import _CallSlot
from pipeline.text.spoken import as_spoken

log = structlog.get_logger("pipeline.synth")

WAV_HEADER_BYTES = 44
ENGINE_NOTE_HEADER = "x-engine-note"


def _optional_float(meta: dict, name: str) -> float | None:
    with contextlib.suppress(KeyError, ValueError):
        return float(meta[name])
    return None


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


class MessageHandling:
    """The one-message half of `SynthWorker` (a mixin: it uses the worker's settings, store,
    bus, key locks and delivery policy, set up in `SynthWorker.__init__`)."""

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
        if priority == "bulk" and await self._skip_cancelled(msg, request):
            slot.release()
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

    async def _skip_cancelled(self, msg: Msg, request: SynthRequest) -> bool:
        """A chunk of a cancelled job is acked without a model call and without an event (its
        chapter stays unfinished; a retry republishes it). On a KV error the chunk is spoken."""
        try:
            if not await self.cancels.cancelled(request.job_id):
                return False
        except Exception as exc:
            log.warning("synth.cancel_check_failed", job=request.job_id, error=str(exc)[:200])
            return False
        with contextlib.suppress(Exception):  # not acked: it comes back and is skipped then
            await msg.ack()
        self.stats.cancelled += 1
        log.info("synth.cancelled", job=request.job_id, chunk=request.chunk_id)
        return True

    async def _process(self, msg: Msg, request: SynthRequest, attempt: int, priority: str, slot: _CallSlot) -> None:
        started = time.perf_counter()
        queued_s = max(0.0, time.time() - msg.metadata.timestamp.timestamp()) if msg.metadata else 0.0
        # The voice asked for, for the record (a preset resolves to a reference below).
        voice_used = request.voice or ("reference" if request.reference else None)
        request = await self.voices.resolve(request)  # the key then covers the preset's audio
        # From here on the text is what the model reads: the spoken form (unless the request or
        # TTS_SPOKEN_FORM says otherwise) sets the token cap, the ASR gate's expected text and the
        # key, so two spellings that sound the same share one audio.
        written = request.text
        request = as_spoken(request, self.settings.spoken_form)
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
                speaker=request.speaker, voice=voice_used,
                spoken=request.text if request.text != written else None,
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

    async def _fail(self, msg: Msg, request: SynthRequest, attempt: int, reason: str, exc: Exception) -> None:
        # Name what went wrong when the last error says (a truncated answer: "truncated") rather
        # than only that deliveries ran out.
        reason = failure_reason(reason, exc)
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

