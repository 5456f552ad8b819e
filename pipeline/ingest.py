"""Ingest: chapters in, chunk requests out.

A faststream subscriber on `tts.chapters.>` (durable pull consumer `ingest`, manual acks — the
default policy would terminate a message on the first error). For each `ChapterSubmit`:
split the text, write the chapter plan to the store and the job/chapter state to KV, publish one
`SynthRequest` per chunk with its de-duplication id (longest chunks first: `longest_first`), then
ack. Every step is idempotent, so a redelivered or re-submitted chapter re-publishes nothing new:
chunks whose audio exists come back at once as cached, and a chapter already assembled is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js import api as js_api
from pydantic import ValidationError

from pipeline import bus
from pipeline.client import publish_synth
from pipeline.contracts.messages import ChapterFailed, ChapterSubmit, DeadLetter
from pipeline.contracts.policy import DeliveryPolicy
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import INVALID_JOB, PRIORITY_BULK, TOKEN_RE, Names
from pipeline.jobs import cast as casting
from pipeline.jobs import state as jobs
from pipeline.store import Store, audio_key
from pipeline.synthesis.voices import VoiceBook
from pipeline.text.speakers import split_speakers
from pipeline.text.spoken import as_spoken

log = structlog.get_logger("pipeline.ingest")

PUBLISH_BATCH = 200


class ChapterRejected(Exception):
    """The chapter can never be ingested as sent (invalid, empty): fail it, don't retry."""

    def __init__(self, job_id: str, chapter: int, reason: str, error: str):
        super().__init__(error)
        self.job_id, self.chapter, self.reason, self.error = job_id, chapter, reason, error


class Ingestor:
    def __init__(self, settings: Settings, js, store: Store, names: Names | None = None):
        self.settings = settings
        self.js = js
        self.store = store
        self.names = names or Names(settings.namespace)
        self.voices = VoiceBook(store, settings.voice_cache_s)

    def plan(self, submit: ChapterSubmit) -> jobs.ChapterPlan:
        """The chapter's chunks (one speaker each: `pipeline.text.speakers`) with their keys."""
        chunks = split_speakers(submit.text, submit.dialogue, max_words=self.settings.chunk_max_words,
                                target_words=self.settings.chunk_target_words, max_chars=self.settings.chunk_max_chars)
        if not chunks:
            raise ChapterRejected(submit.job_id, submit.chapter, "empty", "chapter text is empty")
        sampling = jobs.job_sampling(submit)
        plan = jobs.ChapterPlan(
            job_id=submit.job_id, chapter=submit.chapter, title=submit.title, format=submit.format,
            voice=submit.voice, reference=submit.reference, system_prompt=submit.system_prompt,
            sampling=sampling, chunks=[], cast=submit.cast, narrator=submit.narrator,
            normalize=self.settings.spoken_form if submit.normalize is None else submit.normalize,
        )
        planned = []
        for chunk in chunks:
            chunk_id = jobs.chunk_id_for(submit.chapter, chunk.index)
            try:
                voicing = casting.chunk_voicing(submit, sampling.seed, chunk)
            except casting.CastError as exc:
                raise ChapterRejected(submit.job_id, submit.chapter, "invalid", str(exc)) from None
            draft = jobs.PlannedChunk(index=chunk.index, chunk_id=chunk_id, start=chunk.start, end=chunk.end,
                                      text=chunk.text, key="", **voicing)
            sent = as_spoken(plan.request(draft), self.settings.spoken_form)
            key = audio_key(sent.audio_digest(self.settings.model))
            spoken = sent.text if sent.text != chunk.text else None
            planned.append(draft.model_copy(update={"key": key, "spoken": spoken}))
        return plan.model_copy(update={"chunks": planned})

    async def ingest(self, submit: ChapterSubmit) -> int:
        """Plan, record and publish one chapter. Returns the number of chunk requests published."""
        await self.check_cast(submit)
        plan = await self.keyed(self.plan(submit))
        kv = await bus.jobs_kv(self.js, self.names)

        def job_change(state: jobs.JobState | None) -> jobs.JobState | None:
            if state is None:
                state = jobs.JobState(job_id=submit.job_id, total_chapters=submit.total_chapters, format=submit.format)
            elif state.total_chapters != submit.total_chapters:
                raise ChapterRejected(submit.job_id, submit.chapter, "invalid",
                                      f"job has {state.total_chapters} chapters, this chapter says {submit.total_chapters}")
            key = str(submit.chapter)
            # The voices it uses, also for chapters published straight to the bus (no
            # `register_job`): a voice in use cannot be deleted from the library.
            used = {v for v in (submit.voice, submit.narrator, *(submit.cast or {}).values()) if v}
            if key in state.chapters and state.titles.get(key) == submit.title and used <= set(state.voices):
                return None
            state.voices = sorted(set(state.voices) | used)
            state.chapters.setdefault(key, "pending")
            state.titles[key] = submit.title
            return state

        await jobs.mutate(kv, jobs.job_key(submit.job_id), jobs.JobState, job_change)

        def chapter_change(state: jobs.ChapterState | None) -> jobs.ChapterState | None:
            if state is not None and state.chunks_total == len(plan.chunks):
                return None
            # New, or re-submitted with other text: start its counts afresh.
            return jobs.ChapterState(job_id=submit.job_id, chapter=submit.chapter, title=submit.title,
                                     format=submit.format, chunks_total=len(plan.chunks))

        # The plan and the chapter's state are written together; both exist before any request is
        # published (a cached chunk's event may complete the chapter at once).
        _, state = await asyncio.gather(
            self.store.put(jobs.plan_key(submit.job_id, submit.chapter), plan.model_dump_json().encode(),
                           "application/json"),
            jobs.mutate(kv, jobs.chapter_key(submit.job_id, submit.chapter), jobs.ChapterState, chapter_change),
        )
        if state is not None and state.status == "done" and state.key and await self.store.exists(state.key):
            log.info("ingest.already_done", job=submit.job_id, chapter=submit.chapter)
            return 0
        requests = [plan.request(c) for c in longest_first(plan.chunks)]
        for i in range(0, len(requests), PUBLISH_BATCH):
            await asyncio.gather(*(publish_synth(self.js, self.names, r, PRIORITY_BULK)
                                   for r in requests[i : i + PUBLISH_BATCH]))
        log.info("ingest.chapter", job=submit.job_id, chapter=submit.chapter, chunks=len(requests),
                 chars=len(submit.text))
        return len(requests)

    async def keyed(self, plan: jobs.ChapterPlan) -> jobs.ChapterPlan:
        """`plan` with the audio keys the worker will compute: a chunk whose voice is a synced preset
        (or library voice) is keyed by the preset's reference, as the worker resolves it."""
        chunks = []
        for chunk in plan.chunks:
            request = plan.request(chunk)
            if request.voice:
                resolved = await self.voices.resolve(request)
                if resolved is not request:
                    sent = as_spoken(resolved, self.settings.spoken_form)
                    chunk = chunk.model_copy(update={"key": audio_key(sent.audio_digest(self.settings.model))})
            chunks.append(chunk)
        return plan.model_copy(update={"chunks": chunks})

    async def check_cast(self, submit: ChapterSubmit) -> None:
        """`ChapterRejected` ("unknown_voice") when the chapter's cast names a voice nobody has."""
        if submit.cast is None and submit.narrator is None and not submit.dialogue and not submit.text.count("["):
            return
        known = await casting.known_voices(self.js, self.store, self.names)
        try:
            casting.check_submit(submit, known)
        except casting.CastError as exc:
            reason = "unknown_voice" if isinstance(exc, casting.UnknownVoice) else "invalid"
            raise ChapterRejected(submit.job_id, submit.chapter, reason, str(exc)) from None

    async def reject(self, msg_subject: str, data: bytes, seq: int | None, attempts: int, exc: ChapterRejected) -> None:
        """Failed event + dead letter for a chapter that cannot be ingested."""
        failed = ChapterFailed(job_id=exc.job_id, chapter=exc.chapter, reason=exc.reason, error=exc.error)
        letter = DeadLetter(source_subject=msg_subject, stream_seq=seq, reason=exc.reason, error=exc.error,
                            attempts=attempts, job_id=exc.job_id, **DeadLetter.encode_payload(data))
        await bus.publish_json(self.js, self.names.dlq(msg_subject), letter.to_bytes(),
                               f"dlq:{self.names.chapters_stream}:{seq}" if seq else None)
        await bus.publish_json(self.js, self.names.chapter_failed(exc.job_id), failed.to_bytes())
        log.warning("ingest.rejected", job=exc.job_id, chapter=exc.chapter, reason=exc.reason, error=exc.error[:300])


def longest_first(chunks: list[jobs.PlannedChunk]) -> list[jobs.PlannedChunk]:
    """The chunks in the order their requests are published: longest speech first (by words, then
    characters; text order among equals). The model servers then finish a chapter, and a job's
    last chapter, with its short chunks filling the batch rather than one long chunk running alone."""
    return sorted(chunks, key=lambda c: (-len(c.text.split()), -len(c.text), c.index))


def parse_submit(data: bytes) -> ChapterSubmit:
    try:
        return ChapterSubmit.model_validate_json(data)
    except ValidationError as exc:
        job_id, chapter = INVALID_JOB, -1
        with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
            raw = json.loads(data)
            if isinstance(raw.get("job_id"), str) and TOKEN_RE.match(raw["job_id"]):
                job_id = raw["job_id"]
            if isinstance(raw.get("chapter"), int):
                chapter = raw["chapter"]
        errors = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'message'}: {e.get('msg')}"
                           for e in exc.errors()[:5])
        raise ChapterRejected(job_id, chapter, "invalid", f"invalid chapter message: {errors}") from None


def build_broker(settings: Settings, ingestor_box: list) -> NatsBroker:
    """The faststream app: one durable pull subscriber with explicit (manual) acks."""
    names = Names(settings.namespace)
    policy = DeliveryPolicy.from_settings(settings)
    broker = bus.faststream_broker(settings)

    @broker.subscriber(
        names.chapters_all,
        stream=JStream(names.chapters_stream, declare=False),
        durable=names.ingest_consumer,
        pull_sub=PullSub(batch_size=1, timeout=settings.poll_s * 5),
        ack_policy=AckPolicy.MANUAL,
        config=js_api.ConsumerConfig(ack_wait=settings.ack_wait_s, max_deliver=settings.max_deliver),
    )
    async def on_chapter(msg: NatsMessage) -> None:
        ingestor: Ingestor = ingestor_box[0]
        raw = msg.raw_message
        attempt = bus.delivery_count(raw)
        seq = raw.metadata.sequence.stream if raw.metadata else None
        submit = None
        try:
            submit = parse_submit(msg.body)
            if policy.too_old(bus.message_age_s(raw)):
                raise ChapterRejected(submit.job_id, submit.chapter, "max_age",
                                      f"chapter message older than {policy.max_age_s:.0f} s")
            await ingestor.ingest(submit)
        except ChapterRejected as exc:
            await ingestor.reject(raw.subject, msg.body, seq, attempt, exc)
            await msg.reject()  # term: no redelivery
            return
        except Exception as exc:
            verdict = policy.after_failure(attempt, bus.message_age_s(raw))
            if not verdict.retry:
                job_id, chapter = (submit.job_id, submit.chapter) if submit else (INVALID_JOB, -1)
                await ingestor.reject(raw.subject, msg.body, seq, attempt,
                                      ChapterRejected(job_id, chapter, verdict.reason, f"{type(exc).__name__}: {exc}"))
                await msg.reject()
                return
            log.warning("ingest.retry", attempt=attempt, delay_s=round(verdict.delay_s, 2),
                        error=f"{type(exc).__name__}: {exc}"[:300])
            await msg.nack(delay=verdict.delay_s)
            return
        await msg.ack()

    return broker
