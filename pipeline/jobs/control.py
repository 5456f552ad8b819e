"""Listing, cancelling and retrying jobs: what `tts-pipeline retry` and the gateway's job routes share.

What callers can rely on:

- `list_jobs` reads every `<job>.job` key of the `tts_jobs` bucket (jobs submitted from the
  gateway, the CLI or straight onto the bus all register there) and returns them newest first.
- `cancel_job` sets `JobState.cancelled_at` (compare-and-set); a finished job is not cancelled.
  Synth workers skip the queued chunks of a cancelled job without a model call (`CancelCheck`).
- `retry_job` republishes the failed chunks from the stored chapter plans, as the CLI's `retry`
  did; for a cancelled job it first clears the cancel and republishes every chunk not yet done.
"""

from __future__ import annotations

import time

from pipeline import bus
from pipeline.contracts.subjects import Names
from pipeline.jobs import state as jobs

CANCEL_CACHE_S = 1.0


class JobNotFound(LookupError):
    """No job with that id in the bucket."""


async def list_jobs(kv) -> list[jobs.JobState]:
    """Every registered job, newest first (by `created_at`, then id)."""
    states = []
    for key in await bus.kv_keys(kv):
        if key.endswith(".job"):
            state = await jobs.read(kv, key, jobs.JobState)
            if state is not None:
                states.append(state)
    states.sort(key=lambda s: (-s.created_at, s.job_id))
    return states


async def cancel_job(kv, job_id: str) -> jobs.JobState:
    """Mark the job cancelled; returns its state. `JobNotFound` for an unknown job."""

    def change(state: jobs.JobState | None) -> jobs.JobState | None:
        if state is None:
            raise JobNotFound(job_id)
        if state.cancelled_at is not None or state.finished_at is not None:
            return None
        state.cancelled_at = time.time()
        return state

    return await jobs.mutate(kv, jobs.job_key(job_id), jobs.JobState, change)


async def retry_job(js, store, kv, names: Names, job_id: str) -> int:
    """Republish a job's failed chunks (and, when it was cancelled, every chunk not yet done,
    after clearing the cancel). Returns how many synth requests were published."""

    def uncancel(state: jobs.JobState | None) -> jobs.JobState | None:
        if state is None:
            raise JobNotFound(job_id)
        if state.cancelled_at is None:
            return None
        state.cancelled_at = None
        return state

    job = await jobs.read(kv, jobs.job_key(job_id), jobs.JobState)
    if job is None:
        raise JobNotFound(job_id)
    was_cancelled = job.cancelled_at is not None
    job = await jobs.mutate(kv, jobs.job_key(job_id), jobs.JobState, uncancel)
    stamp = time.time_ns()
    count = 0
    for chapter in sorted(int(c) for c in job.chapters):
        state = await jobs.read(kv, jobs.chapter_key(job_id, chapter), jobs.ChapterState)
        if state is None or state.status == "done":
            continue
        done = set(state.done)
        wanted = {int(i) for i in state.failed}
        if was_cancelled:
            wanted |= set(range(state.chunks_total)) - done
        if not wanted:
            continue
        plan = jobs.ChapterPlan.model_validate_json(await store.get(jobs.plan_key(job_id, chapter)))
        for chunk in plan.chunks:
            if chunk.index in wanted:
                # A new de-duplication id: the first publish of this chunk is inside the window.
                await bus.publish_json(js, names.synth("bulk"), plan.request(chunk).to_bytes(),
                                       f"retry:{job_id}:{chunk.chunk_id}:{stamp}")
                count += 1
    return count


class CancelCheck:
    """Whether a job is cancelled, for the synth worker: one KV read per job per `CANCEL_CACHE_S`
    while it runs; a cached "cancelled" is confirmed with a fresh read (a retry may have cleared it)."""

    def __init__(self, kv_opener, ttl_s: float = CANCEL_CACHE_S):
        self._open = kv_opener
        self._kv = None
        self.ttl_s = ttl_s
        self._seen: dict[str, tuple[float, bool]] = {}

    async def _read(self, job_id: str) -> bool:
        if self._kv is None:
            self._kv = await self._open()
        state = await jobs.read(self._kv, jobs.job_key(job_id), jobs.JobState)
        cancelled = state is not None and state.cancelled_at is not None
        self._seen[job_id] = (time.monotonic(), cancelled)
        if len(self._seen) > 4096:
            self._seen.pop(next(iter(self._seen)))
        return cancelled

    async def cancelled(self, job_id: str) -> bool:
        seen = self._seen.get(job_id)
        if seen is not None and not seen[1] and time.monotonic() - seen[0] < self.ttl_s:
            return False
        try:
            return await self._read(job_id)
        except Exception:
            self._seen[job_id] = (time.monotonic(), False)  # unreadable: spoken; asked again after ttl_s
            raise
