"""A job's cast at submit and ingest: which voices exist, and each chunk's speaker, voice and seed.

Known voices are what the gateway offers (`GET /v1/audio/voices`): the store's `voices/<name>.json`
(synced presets and the voice library) plus the presets the live workers' model servers report
in their heartbeats. With no worker heartbeat readable, the model servers' built-ins cannot be
listed: `known_voices` then answers None and only the cast's shape is checked (a speaker without
a voice); the worker fails a chunk whose voice the model server refuses.
"""

from __future__ import annotations

import asyncio

from pipeline import bus, voicelib
from pipeline.contracts.messages import ChapterSubmit
from pipeline.contracts.subjects import Names
from pipeline.text.cast import Cast, CastError, UnknownVoice, speaker_seed
from pipeline.text.speakers import SpeakerChunk, speakers_in

__all__ = ["Cast", "CastError", "UnknownVoice", "check_submits", "known_voices", "chunk_voicing"]


async def heartbeat_voices(js, names: Names) -> set[str] | None:
    """Voices the live workers' model servers report; None when no heartbeat can be read."""
    try:
        beats = await bus.read_heartbeats(await bus.workers_kv(js, names))
    except Exception:  # the bus away, a listing that failed
        return None
    return {v for beat in beats for b in beat.backends for v in b.voices} if beats else None


async def known_voices(js, store, names: Names, attempts: int = 3, gap_s: float = 0.3) -> set[str] | None:
    """Every voice a cast may name, or None when the model servers' own cannot be known now
    (`attempts` reads of the heartbeats, `gap_s` apart: one slow read on a busy bus is not "no
    worker", which would let an unknown voice through to the workers)."""
    built_in = await heartbeat_voices(js, names)
    for _ in range(attempts - 1):
        if built_in is not None:
            break
        await asyncio.sleep(gap_s)
        built_in = await heartbeat_voices(js, names)
    if built_in is None:
        return None
    return built_in | await voicelib.stored_names(store)


def check_submits(submits: list[ChapterSubmit], known: set[str] | None) -> None:
    """`CastError` when a chapter's speakers cannot all be voiced (see `pipeline.text.cast`).
    With `known` None, voice names are not checked, only that every speaker has one."""
    for submit in submits:
        check_submit(submit, known)


def check_submit(submit: ChapterSubmit, known: set[str] | None) -> list[str]:
    cast = Cast.of(submit.cast, submit.narrator)
    return cast.check(speakers_in(submit.text, submit.dialogue), known)


def chunk_voicing(submit: ChapterSubmit, seed: int, chunk: SpeakerChunk) -> dict:
    """The `PlannedChunk` fields of a chunk's speaker: speaker, voice and seed (None = the plan's)."""
    if chunk.speaker is None:
        return {"speaker": None, "voice": submit.narrator, "seed": None}
    cast = Cast.of(submit.cast, submit.narrator)
    return {"speaker": chunk.speaker, "voice": cast.voice_for(chunk.speaker),
            "seed": speaker_seed(seed, chunk.speaker)}
