"""Job and chapter state in the `tts_jobs` KV bucket, and the chapter plans in the store.

State changes go through compare-and-set (`mutate`), so any number of ingest and assembler
processes can update the same job without losing an update. Keys:

    <job>.job          JobState      what the job is (chapters, format) and each chapter's status
    <job>.ch.<nnnn>    ChapterState  chunk counts, done/failed chunk indices, the chapter's file

The chapter plan (`jobs/<job>/plan/<nnnn>.json`, `ChapterPlan`) lists every chunk's text span,
id and audio key: the assembler joins from it, `retry` republishes from it, the manifest cites it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable, Literal, TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict, Field

from pipeline.contracts.messages import AudioFormat, ChapterSubmit, Reference, Sampling, SynthRequest
from pipeline.contracts.subjects import PLAN_KEY

ChapterStatus = Literal["pending", "assembling", "done", "failed"]
M = TypeVar("M", bound=BaseModel)


class _State(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class JobState(_State):
    job_id: str
    total_chapters: int
    format: AudioFormat
    created_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    chapters: dict[str, ChapterStatus] = Field(default_factory=dict)  # "3" -> status
    titles: dict[str, str] = Field(default_factory=dict)
    manifest_key: str | None = None
    # The book's title as the submitter named it (the studio's upload form, the file name).
    title: str = ""
    # Set by a cancel (`pipeline/jobs/control.py`): workers skip the job's queued chunks; a retry clears it.
    cancelled_at: float | None = None
    # Voice names the job's chapters use (voice, narrator, cast): a voice in use cannot be deleted.
    voices: list[str] = Field(default_factory=list)

    @property
    def chapters_done(self) -> int:
        return sum(1 for s in self.chapters.values() if s == "done")

    @property
    def chapters_failed(self) -> int:
        return sum(1 for s in self.chapters.values() if s == "failed")

    @property
    def complete(self) -> bool:
        return len(self.chapters) == self.total_chapters and all(s == "done" for s in self.chapters.values())


class ChapterState(_State):
    job_id: str
    chapter: int
    title: str = ""
    format: AudioFormat = "wav"
    chunks_total: int
    done: list[int] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)  # chunk index -> error
    # chunk index -> integrated loudness (LUFS) the synth worker measured, from its ChunkDone
    loudness: dict[str, float] = Field(default_factory=dict)
    audio_s_done: float = 0.0
    status: ChapterStatus = "pending"
    key: str | None = None
    duration_s: float | None = None
    bytes: int | None = None

    @property
    def all_done(self) -> bool:
        return len(self.done) >= self.chunks_total


class PlannedChunk(BaseModel):
    model_config = ConfigDict(frozen=True)
    index: int
    chunk_id: str
    start: int
    end: int
    text: str
    key: str
    # The text as sent to the model (pipeline/text/spoken) when it differs from `text`; `key` is
    # computed on it, exactly as the synth worker computes its own.
    spoken: str | None = None
    # The stored audio's integrated loudness (LUFS), when known: ingest plans before anything is
    # synthesised, so the stored plans have none; the assembler fills it in from the chunk events
    # (`ChapterPlan.with_loudness`) and measures only the chunks still without one.
    loudness_lufs: float | None = None
    # Who speaks it and the voice and seed that speaker resolved to (None: the plan's own voice,
    # reference and seed, as for a text without speakers).
    speaker: str | None = None
    voice: str | None = None
    seed: int | None = None


class ChapterPlan(BaseModel):
    """Everything needed to (re)build a chapter's synth requests and to assemble it."""

    model_config = ConfigDict(frozen=True)
    job_id: str
    chapter: int
    title: str
    format: AudioFormat
    voice: str | None = None
    reference: Reference | None = None
    system_prompt: str | None = None
    sampling: Sampling
    chunks: list[PlannedChunk]
    # The job's cast (speaker -> voice) and narrator voice, as submitted.
    cast: dict[str, str] | None = None
    narrator: str | None = None
    # The spoken form, decided once at plan time (the submitter's choice, else the planner's
    # TTS_SPOKEN_FORM) and carried on every request, so the workers' keys equal the plan's.
    normalize: bool | None = None

    def with_loudness(self, levels: dict[str, float]) -> ChapterPlan:
        """This plan with each chunk's loudness taken from `levels` (chunk index -> LUFS)."""
        chunks = [c.model_copy(update={"loudness_lufs": levels.get(str(c.index), c.loudness_lufs)}) for c in self.chunks]
        return self.model_copy(update={"chunks": chunks})

    def request(self, chunk: PlannedChunk) -> SynthRequest:
        voice, reference, sampling = self.voice, self.reference, self.sampling
        if chunk.voice:
            voice, reference = chunk.voice, None
        if chunk.seed is not None:
            sampling = sampling.model_copy(update={"seed": chunk.seed})
        return SynthRequest(
            job_id=self.job_id, chunk_id=chunk.chunk_id, text=chunk.text, voice=voice,
            reference=reference, system_prompt=self.system_prompt, sampling=sampling,
            chapter=self.chapter, index=chunk.index, speaker=chunk.speaker, normalize=self.normalize,
        )

    def voice_of(self, chunk: PlannedChunk) -> str | None:
        """The voice name a chunk is spoken with ("reference" for a cloned one; None: default)."""
        return chunk.voice or self.voice or ("reference" if self.reference else None)


def job_key(job_id: str) -> str:
    return f"{job_id}.job"


def chapter_key(job_id: str, chapter: int) -> str:
    return f"{job_id}.ch.{chapter:04d}"


def plan_key(job_id: str, chapter: int) -> str:
    return PLAN_KEY.format(job_id=job_id, chapter=chapter)


def chunk_id_for(chapter: int, index: int) -> str:
    return f"c{chapter:04d}-{index:05d}"


def job_seed(job_id: str) -> int:
    """The seed every chunk of a job shares unless the submitter gave one (voice consistency)."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


def job_sampling(submit: ChapterSubmit) -> Sampling:
    if submit.sampling.seed is not None:
        return submit.sampling
    return submit.sampling.model_copy(update={"seed": job_seed(submit.job_id)})


async def read(kv, key: str, model: type[M]) -> M | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if entry is None or entry.value is None:
        return None
    return model.model_validate_json(entry.value)


async def mutate(kv, key: str, model: type[M], change: Callable[[M | None], M | None]) -> M | None:
    """Apply `change` to the current value with compare-and-set, retrying on conflict.

    `change` gets the current state (None when missing) and returns the new state, or None to
    leave it as it is. Returns the state as stored afterwards.
    """
    for _ in range(100):
        try:
            entry = await kv.get(key)
            value = entry.value if entry and entry.value else None
            revision = entry.revision if entry else None
        except KeyNotFoundError:
            value, revision = None, None
        # Parsed for each use (much cheaper than a deep copy): `change` may edit what it gets.
        new = change(model.model_validate_json(value) if value is not None else None)
        if new is None:
            return model.model_validate_json(value) if value is not None else None
        try:
            if revision is None:
                await kv.create(key, new.to_bytes())
            else:
                await kv.update(key, new.to_bytes(), last=revision)
            return new
        except KeyWrongLastSequenceError:
            continue
        except Exception as exc:  # create() on an existing key raises a different error type
            if "wrong last sequence" in str(exc).lower() or "key exists" in str(exc).lower():
                continue
            raise
    raise RuntimeError(f"could not update {key}: too many concurrent writers")
