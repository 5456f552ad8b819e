"""The assembler: follows chunk outcomes, keeps job state, builds chapters and the manifest.

A faststream subscriber (durable pull consumer `assemble` on `tts.events.chunk.*.*`, manual
acks). Each chunk outcome of a job's chapter updates its `ChapterState` by compare-and-set; the
outcome that completes a chapter triggers its assembly, which runs as a task (at most
`assemble_concurrency` at once) while the triggering event stays un-acked, with in-progress acks,
until the chapter is stored. A crash mid-assembly leaves the event un-acked: it comes back and the
assembly runs again (same inputs, same objects). When every chapter is done, the manifest and
`job.done` follow. Events of chunks outside any job (the gateway's) are acked and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Awaitable, TypeVar

import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js import api as js_api
from pydantic import ValidationError

from pipeline import bus
from pipeline.assemble import assemble_chapter, slug
from pipeline.contracts.messages import ChapterDone, ChapterFailed, ChunkDone, ChunkFailed, JobDone, JobProgress
from pipeline.contracts.policy import backoff_s
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import MANIFEST_KEY, SUBTITLES_KEY, TIMING_KEY, Names
from pipeline.jobs import state as jobs
from pipeline.store import Store

log = structlog.get_logger("pipeline.assembler")

READS_AT_ONCE = 32  # KV reads of one job's chapter states in flight together

T = TypeVar("T")


async def gather_limited(awaitables: list[Awaitable[T]], limit: int) -> list[T]:
    """`asyncio.gather` with at most `limit` of them running at once; results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(awaitable: Awaitable[T]) -> T:
        async with gate:
            return await awaitable

    return await asyncio.gather(*(one(a) for a in awaitables))


class Assembler:
    def __init__(self, settings: Settings, js, store: Store, names: Names | None = None):
        self.settings = settings
        self.js = js
        self.store = store
        self.names = names or Names(settings.namespace)
        self._slots = asyncio.Semaphore(settings.assemble_concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._last_progress: dict[str, float] = {}
        self._kv = None

    async def kv(self):
        if self._kv is None:
            self._kv = await bus.jobs_kv(self.js, self.names)
        return self._kv

    # ------------------------------------------------------------------ chunk outcomes

    async def on_outcome(self, outcome: ChunkDone | ChunkFailed, msg: NatsMessage) -> None:
        """Record one chunk outcome; ack now, or hand the message to a chapter assembly."""
        if outcome.chapter is None or outcome.index is None:
            await msg.ack()
            return
        kv = await self.kv()
        key = jobs.chapter_key(outcome.job_id, outcome.chapter)
        index = outcome.index

        def change(state: jobs.ChapterState | None) -> jobs.ChapterState | None:
            if state is None:
                return None
            if isinstance(outcome, ChunkDone):
                if index in state.done:
                    return None
                state.done.append(index)
                state.done.sort()
                state.failed.pop(str(index), None)
                if outcome.loudness_lufs is not None:
                    state.loudness[str(index)] = outcome.loudness_lufs
                state.audio_s_done += outcome.duration_s
                if state.status == "failed" and not state.failed:
                    state.status = "pending"
            else:
                if index in state.done or state.failed.get(str(index)) == outcome.error:
                    return None
                state.failed[str(index)] = f"{outcome.reason}: {outcome.error}"
                state.status = "failed"
            return state

        state = await jobs.mutate(kv, key, jobs.ChapterState, change)
        if state is None:  # not a chunk of a known job
            await msg.ack()
            return
        if isinstance(outcome, ChunkFailed):
            await self._chapter_failed(state)
            await self._progress(outcome.job_id, force=True)
            await msg.ack()
            return
        if state.all_done and state.status != "done":
            await self._slots.acquire()
            task = asyncio.create_task(self._assemble(state, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        await self._progress(outcome.job_id)
        await msg.ack()

    async def _chapter_failed(self, state: jobs.ChapterState) -> None:
        kv = await self.kv()
        failed_ids = [jobs.chunk_id_for(state.chapter, int(i)) for i in sorted(state.failed, key=int)]
        event = ChapterFailed(job_id=state.job_id, chapter=state.chapter, reason="chunks_failed",
                              error="; ".join(f"{jobs.chunk_id_for(state.chapter, int(i))}: {e}"
                                              for i, e in sorted(state.failed.items(), key=lambda kv_: int(kv_[0])))[:4000],
                              failed_chunks=failed_ids)
        await bus.publish_json(self.js, self.names.chapter_failed(state.job_id), event.to_bytes())

        def mark(job: jobs.JobState | None) -> jobs.JobState | None:
            if job is None or job.chapters.get(str(state.chapter)) == "failed":
                return None
            job.chapters[str(state.chapter)] = "failed"
            return job

        await jobs.mutate(kv, jobs.job_key(state.job_id), jobs.JobState, mark)
        log.warning("assembler.chapter_failed", job=state.job_id, chapter=state.chapter, failed=len(failed_ids))

    # ------------------------------------------------------------------ chapters

    async def _assemble(self, state: jobs.ChapterState, msg: NatsMessage) -> None:
        try:
            await self._assemble_chapter(state, msg)
        except Exception as exc:
            attempt = bus.delivery_count(msg.raw_message)
            delay_s = backoff_s(attempt, self.settings.retry_base_delay_s, self.settings.retry_max_delay_s)
            log.warning("assembler.retry", job=state.job_id, chapter=state.chapter, attempt=attempt,
                        error=f"{type(exc).__name__}: {exc}"[:300])
            with contextlib.suppress(Exception):
                await msg.nack(delay=delay_s)
        else:
            with contextlib.suppress(Exception):
                await msg.ack()
        finally:
            self._slots.release()

    async def _assemble_chapter(self, state: jobs.ChapterState, msg: NatsMessage) -> None:
        kv = await self.kv()
        started = time.perf_counter()
        plan = jobs.ChapterPlan.model_validate_json(await self.store.get(jobs.plan_key(state.job_id, state.chapter)))
        plan = plan.with_loudness(state.loudness)
        last_beat = [time.monotonic()]

        async def keepalive() -> None:
            if time.monotonic() - last_beat[0] > self.settings.ack_wait_s / 3:
                last_beat[0] = time.monotonic()
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        built = await assemble_chapter(self.store, plan, self.settings, keepalive)

        def done(current: jobs.ChapterState | None) -> jobs.ChapterState | None:
            if current is None:
                return None
            current.status, current.key, current.duration_s, current.bytes = "done", built.key, built.duration_s, built.bytes
            return current

        await jobs.mutate(kv, jobs.chapter_key(state.job_id, state.chapter), jobs.ChapterState, done)
        event = ChapterDone(job_id=plan.job_id, chapter=plan.chapter, title=plan.title, key=built.key,
                            format=plan.format, duration_s=built.duration_s, chunks=len(plan.chunks), bytes=built.bytes)
        await bus.publish_json(self.js, self.names.chapter_done(plan.job_id), event.to_bytes(),
                               f"chapter.done:{plan.job_id}:{plan.chapter}")
        log.info("assembler.chapter_done", job=plan.job_id, chapter=plan.chapter, chunks=len(plan.chunks),
                 duration_s=built.duration_s, seconds=round(time.perf_counter() - started, 2))

        def mark(job: jobs.JobState | None) -> jobs.JobState | None:
            if job is None:
                return None
            job.chapters[str(plan.chapter)] = "done"
            return job

        job = await jobs.mutate(kv, jobs.job_key(plan.job_id), jobs.JobState, mark)
        await self._progress(plan.job_id, force=True)
        if job is not None and job.complete:
            await self._finish_job(job)

    # ------------------------------------------------------------------ the job

    async def _chapter_states(self, job: jobs.JobState) -> list[jobs.ChapterState]:
        """The job's chapter states in chapter order, read a few at a time."""
        kv = await self.kv()
        states = await gather_limited([jobs.read(kv, jobs.chapter_key(job.job_id, chapter), jobs.ChapterState)
                                       for chapter in sorted(int(c) for c in job.chapters)], READS_AT_ONCE)
        return [state for state in states if state is not None]

    async def _plan_and_timing(self, job_id: str, chapter: int) -> tuple[jobs.ChapterPlan, list[dict]]:
        plan, timing = await asyncio.gather(self.store.get(jobs.plan_key(job_id, chapter)),
                                            self.store.get(TIMING_KEY.format(job_id=job_id, chapter=chapter)))
        return jobs.ChapterPlan.model_validate_json(plan), json.loads(timing)

    async def _finish_job(self, job: jobs.JobState) -> None:
        states = await self._chapter_states(job)
        chapters = []
        details = await gather_limited([self._plan_and_timing(job.job_id, state.chapter) for state in states],
                                       max(1, self.settings.s3_max_threads // 2))
        for state, (plan, timing) in zip(states, details):
            chapters.append({
                "chapter": state.chapter, "title": state.title, "key": state.key, "format": state.format,
                "duration_s": state.duration_s, "bytes": state.bytes,
                "subtitles_key": SUBTITLES_KEY.format(job_id=job.job_id, index=state.chapter, slug=slug(state.title)),
                # `text` as written (the subtitles' form), `spoken` as sent to the model.
                "chunks": [{**cue, "spoken": chunk.spoken or chunk.text, "audio_key": chunk.key, "voice": plan.voice_of(chunk)}
                           for cue, chunk in zip(timing, plan.chunks)],
            })
        finished_at = time.time()
        manifest = {
            "job_id": job.job_id, "format": job.format, "created_at": job.created_at, "finished_at": finished_at,
            "duration_s": round(sum(c["duration_s"] or 0 for c in chapters), 4),
            "pause_s": self.settings.pause_s, "chapters": chapters,
        }
        if details and (details[0][0].cast or details[0][0].narrator):
            manifest["cast"], manifest["narrator"] = details[0][0].cast or {}, details[0][0].narrator
        manifest_key = MANIFEST_KEY.format(job_id=job.job_id)
        await self.store.put(manifest_key, json.dumps(manifest, indent=1).encode(), "application/json")
        kv = await self.kv()

        def finish(current: jobs.JobState | None) -> jobs.JobState | None:
            if current is None:
                return None
            current.finished_at, current.manifest_key = finished_at, manifest_key
            return current

        await jobs.mutate(kv, jobs.job_key(job.job_id), jobs.JobState, finish)
        event = JobDone(job_id=job.job_id, manifest_key=manifest_key, chapters=len(chapters), chapters_failed=0,
                        duration_s=manifest["duration_s"])
        await bus.publish_json(self.js, self.names.job_done(job.job_id), event.to_bytes(), f"job.done:{job.job_id}")
        log.info("assembler.job_done", job=job.job_id, chapters=len(chapters), duration_s=manifest["duration_s"])

    async def _progress(self, job_id: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress.get(job_id, 0.0) < self.settings.progress_interval_s:
            return
        self._last_progress[job_id] = now
        kv = await self.kv()
        job = await jobs.read(kv, jobs.job_key(job_id), jobs.JobState)
        if job is None:
            return
        states = await self._chapter_states(job)
        event = JobProgress(
            job_id=job_id, chapters_total=job.total_chapters, chapters_done=job.chapters_done,
            chapters_failed=job.chapters_failed, chunks_total=sum(s.chunks_total for s in states),
            chunks_done=sum(len(s.done) for s in states), chunks_failed=sum(len(s.failed) for s in states),
            audio_s_done=round(sum(s.audio_s_done for s in states), 3),
        )
        await bus.publish_json(self.js, self.names.job_progress(job_id), event.to_bytes())

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)


def parse_outcome(subject: str, data: bytes) -> ChunkDone | ChunkFailed:
    return ChunkDone.from_bytes(data) if ".chunk.done." in subject else ChunkFailed.from_bytes(data)


def build_broker(settings: Settings, box: list) -> NatsBroker:
    names = Names(settings.namespace)
    broker = bus.faststream_broker(settings)

    @broker.subscriber(
        names.chunk_events_all,
        stream=JStream(names.events_stream, declare=False),
        durable=names.assemble_consumer,
        pull_sub=PullSub(batch_size=1, timeout=settings.poll_s * 5),
        ack_policy=AckPolicy.MANUAL,
        config=js_api.ConsumerConfig(ack_wait=settings.ack_wait_s, max_deliver=-1,
                                     deliver_policy=js_api.DeliverPolicy.ALL),
    )
    async def on_chunk_event(msg: NatsMessage) -> None:
        assembler: Assembler = box[0]
        try:
            outcome = parse_outcome(msg.raw_message.subject, msg.body)
        except ValidationError as exc:
            log.warning("assembler.bad_event", subject=msg.raw_message.subject, error=str(exc)[:300])
            await msg.ack()  # events are ours; a bad one is logged, not retried forever
            return
        try:
            await assembler.on_outcome(outcome, msg)
        except Exception as exc:
            attempt = bus.delivery_count(msg.raw_message)
            log.warning("assembler.event_retry", job=outcome.job_id, attempt=attempt, error=f"{type(exc).__name__}: {exc}"[:300])
            await msg.nack(delay=backoff_s(attempt, settings.retry_base_delay_s, settings.retry_max_delay_s))

    return broker
