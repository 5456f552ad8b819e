"""Submitting a job and reading its state: what `tts-pipeline submit/status` and the gateway's
`/jobs` routes share.

What callers can rely on:

- `build_submits` turns (title, text) chapters into `ChapterSubmit`s numbered 0..n-1, or raises
  `JobInputError` with a one-line `location: message`.
- `register_job` records the job in the `tts_jobs` bucket before its chapters are published, so a
  job is visible (`read_job`) from the moment it is accepted; an existing job with another
  chapter count raises `JobConflict` and changes nothing. Registering the same job again is a no-op.
- `publish_chapters` publishes with the de-duplication id `chapter:<job>:<n>`, like any producer.
- `read_job` returns None for an unknown job; `JobView.to_dict()` is the JSON both the CLI's
  `status --json` consumers and the gateway's `GET /jobs/{id}` see.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from annotated_types import MaxLen
from pydantic import ValidationError

from pipeline import bus
from pipeline.contracts.messages import AudioFormat, ChapterSubmit, Reference, Sampling
from pipeline.contracts.subjects import Names, chapter_msg_id
from pipeline.jobs import state as jobs
from pipeline.text import cast as text_cast


def _max_length(field: str) -> int:
    return next(m.max_length for m in ChapterSubmit.model_fields[field].metadata if isinstance(m, MaxLen))


# The bus contract's limits, read from it so that they cannot drift apart.
MAX_CHAPTER_CHARS = _max_length("text")
MAX_CHAPTERS = 10_000


class JobInputError(ValueError):
    """The chapters cannot be submitted as given (the message says where and why)."""


class JobConflict(Exception):
    """The job id exists with another number of chapters."""

    def __init__(self, job_id: str, existing: int, given: int):
        super().__init__(f"job {job_id!r} exists with {existing} chapters; this submission has {given}. "
                         "Use another job id.")
        self.job_id, self.existing, self.given = job_id, existing, given


class ChapterLike(Protocol):
    title: str
    text: str


def default_job_id(name: str) -> str:
    """A fresh job id from a human name (a book's file stem, a title): slug + 6 random hex."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "job"
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def build_submits(
    chapters: Sequence[ChapterLike], job_id: str, *, voice: str | None = None, fmt: AudioFormat | str = "wav",
    sampling: Sampling | None = None, system_prompt: str | None = None, reference: Reference | None = None,
    cast: dict[str, str] | None = None, narrator: str | None = None, dialogue: bool = False,
    normalize: bool | None = None,
) -> list[ChapterSubmit]:
    """One `ChapterSubmit` per chapter, in order; `JobInputError` for anything the bus would refuse
    (a cast's voices are checked against the known ones by the caller: `pipeline.jobs.cast`)."""
    extra = {k: v for k, v in (("sampling", sampling), ("system_prompt", system_prompt),
                               ("reference", reference), ("cast", cast or None), ("narrator", narrator),
                               ("normalize", normalize))
             if v is not None}
    try:
        return [
            ChapterSubmit(job_id=job_id, chapter=i, total_chapters=len(chapters), title=c.title, text=c.text,
                          voice=voice, format=fmt, dialogue=dialogue, **extra)
            for i, c in enumerate(chapters)
        ]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "chapter"
        raise JobInputError(f"{where}: {first['msg']}") from None


def parse_cast(value: str | None) -> dict[str, str] | None:
    """`--cast`: `alice=en_woman,SPEAKER1=en_man`, or a JSON file of {speaker: voice}."""
    if value and "=" not in value and not value.lstrip().startswith("{"):
        try:
            with open(value, encoding="utf-8") as f:
                value = f.read()
        except OSError as exc:
            raise JobInputError(f"cast: {value} is neither name=voice pairs nor a readable JSON file ({exc})") from None
    try:
        return text_cast.parse_cast(value, ",")
    except text_cast.CastError as exc:
        raise JobInputError(str(exc)) from None


async def register_job(kv, submits: Sequence[ChapterSubmit], title: str = "") -> jobs.JobState:
    """Record the job (every chapter pending, with its title) unless it exists; `JobConflict` when
    it exists with another chapter count. Returns the job's state as stored."""
    first = submits[0]

    def change(state: jobs.JobState | None) -> jobs.JobState | None:
        if state is not None:
            if state.total_chapters != first.total_chapters:
                raise JobConflict(first.job_id, state.total_chapters, first.total_chapters)
            return None
        # The same shape ingest writes, so that its own update of this key changes nothing.
        return jobs.JobState(job_id=first.job_id, total_chapters=first.total_chapters, format=first.format,
                             chapters={str(s.chapter): "pending" for s in submits},
                             titles={str(s.chapter): s.title for s in submits}, title=title,
                             voices=job_voices(submits))

    return await jobs.mutate(kv, jobs.job_key(first.job_id), jobs.JobState, change)


def job_voices(submits: Sequence[ChapterSubmit]) -> list[str]:
    """Every voice name the chapters use: `voice`, `narrator` and the `cast`'s voices."""
    return sorted({v for s in submits for v in (s.voice, s.narrator, *(s.cast or {}).values()) if v})


async def jobs_using_voice(kv, name: str) -> list[str]:
    """Ids of the jobs not finished (running, or failed and still retryable) that use voice `name`."""
    users = []
    for key in await bus.kv_keys(kv):
        if key.endswith(".job"):
            state = await jobs.read(kv, key, jobs.JobState)
            if state is not None and state.finished_at is None and name in state.voices:
                users.append(state.job_id)
    return sorted(users)


async def publish_chapters(js, names: Names, submits: Iterable[ChapterSubmit]) -> int:
    """Publish every chapter to the chapters stream; returns how many the server took as new
    (a re-publish inside the duplicate window is dropped)."""
    accepted = 0
    for s in submits:
        accepted += await bus.publish_json(js, names.chapters_submit, s.to_bytes(), chapter_msg_id(s.job_id, s.chapter))
    return accepted


@dataclass(frozen=True)
class JobView:
    """A job and the chapter states written so far (a chapter appears once ingest has planned it)."""

    job: jobs.JobState
    chapters: list[jobs.ChapterState]

    @property
    def status(self) -> str:
        """`done` once the manifest is written; `cancelled` after a cancel (until a retry);
        `failed` while a chapter is failed; else `running`."""
        if self.job.finished_at is not None:
            return "done"
        if self.job.cancelled_at is not None:
            return "cancelled"
        return "failed" if self.job.chapters_failed else "running"

    @property
    def finished(self) -> bool:
        return self.job.finished_at is not None

    def to_dict(self) -> dict:
        job, states = self.job, {s.chapter: s for s in self.chapters}
        chapters = []
        for n in range(job.total_chapters):
            key = str(n)
            if key not in job.chapters and n not in states:
                continue
            s = states.get(n)
            chapters.append({
                "chapter": n,
                "title": s.title if s else job.titles.get(key, ""),
                "status": s.status if s else job.chapters.get(key, "pending"),
                "chunks_total": s.chunks_total if s else None,
                "chunks_done": len(s.done) if s else 0,
                "chunks_failed": len(s.failed) if s else 0,
                "failures": dict(sorted(s.failed.items(), key=lambda item: int(item[0]))) if s else {},
                "audio_s_done": round(s.audio_s_done, 3) if s else 0.0,
                "duration_s": s.duration_s if s else None,
                "bytes": s.bytes if s else None,
                "key": s.key if s else None,
                "format": s.format if s else job.format,
            })
        return {
            "job_id": job.job_id,
            "title": job.title or next((c["title"] for c in chapters if c["title"]), ""),
            "status": self.status,
            "format": job.format,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "cancelled_at": job.cancelled_at,
            "chapters_total": job.total_chapters,
            "chapters_done": job.chapters_done,
            "chapters_failed": job.chapters_failed,
            "chunks_total": sum(s.chunks_total for s in self.chapters),
            "chunks_done": sum(len(s.done) for s in self.chapters),
            "chunks_failed": sum(len(s.failed) for s in self.chapters),
            "audio_s_done": round(sum(s.audio_s_done for s in self.chapters), 3),
            "manifest_key": job.manifest_key,
            "chapters": chapters,
        }


async def read_job(kv, job_id: str) -> JobView | None:
    """The job's state and its chapters' states, in chapter order; None for an unknown job."""
    job = await jobs.read(kv, jobs.job_key(job_id), jobs.JobState)
    if job is None:
        return None
    states = []
    for chapter in sorted(int(c) for c in job.chapters):
        state = await jobs.read(kv, jobs.chapter_key(job_id, chapter), jobs.ChapterState)
        if state is not None:
            states.append(state)
    return JobView(job, states)
