"""Join a chapter's chunks into one file, in order, at one loudness, with flat memory.

Each chunk is read from the store, its speech brought to `target_lufs` (gain limited to
±`max_gain_db`, peaks kept under full scale), its edges faded over `crossfade_s`, and written
after a `pause_s` of silence to an encoder (wav/flac/mp3 through soundfile) that streams into a
temporary file; the file then goes up as a multipart upload. The next few chunks are read while
one is joined (`PREFETCH`), so at most that many are in memory, whatever the chapter's length.
The chapter's duration is exactly the sum of its chunks plus one pause between each two.

A chunk's loudness comes from its plan entry (the assembler fills in what the synth worker
measured); only a chunk without one is measured here, and only then is the loudness meter
(scipy) imported: the joining itself needs numpy and soundfile alone (`pipeline.audio.wavio`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import tempfile
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from pipeline.audio.wavio import decode_wav
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import CHAPTER_KEY, SUBTITLES_KEY, TIMING_KEY
from pipeline.jobs.state import ChapterPlan, PlannedChunk
from pipeline.store import Store

FORMATS = {  # format -> (soundfile format, subtype, content type)
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
}
PEAK_LIMIT = 0.97  # of full scale, after the loudness gain
PREFETCH = 4  # chunk reads running ahead of the join (~0.7 MB each for 15 s)


@dataclass(frozen=True)
class Cue:
    index: int
    chunk_id: str
    start_s: float
    end_s: float
    text: str
    text_start: int
    text_end: int
    speaker: str | None = None


@dataclass
class AssembledChapter:
    key: str
    subtitles_key: str
    timing_key: str
    duration_s: float
    bytes: int
    cues: list[Cue] = field(default_factory=list)


def slug(title: str, fallback: str = "chapter") -> str:
    text = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40].strip("-")
    return text or fallback


def chapter_key(plan: ChapterPlan) -> str:
    return CHAPTER_KEY.format(job_id=plan.job_id, index=plan.chapter, slug=slug(plan.title), fmt=plan.format)


def measure_lufs(samples: np.ndarray, sample_rate_hz: int) -> float | None:
    """The chunk's integrated loudness, for chunks whose plan entry lacks it.

    Imported here, not at the top: the loudness meter's imports (scipy) are most of an assembler's
    memory, and chunks stored by the synth worker come with their loudness measured.
    """
    from pipeline.audio.checks import loudness_lufs

    return loudness_lufs(samples, sample_rate_hz)


def gain_for(samples: np.ndarray, sample_rate_hz: int, target_lufs: float, max_gain_db: float,
             level: float | None = None) -> float:
    """Linear gain that brings the chunk's speech to `target_lufs`, limited so it never clips.

    `level` is the chunk's loudness when known (LUFS); None measures it.
    """
    if level is None:
        level = measure_lufs(samples, sample_rate_hz)
    gain_db = 0.0 if level is None else max(-max_gain_db, min(max_gain_db, target_lufs - level))
    gain = 10 ** (gain_db / 20)
    peak = float(np.max(np.abs(samples))) / 32768.0 if samples.size else 0.0
    if peak * gain > PEAK_LIMIT:
        gain = PEAK_LIMIT / peak
    return gain


def shape_chunk(samples: np.ndarray, sample_rate_hz: int, settings: Settings,
                level: float | None = None) -> np.ndarray:
    """float32 samples of one chunk: loudness-matched (`level`: its LUFS when known), edges faded."""
    x = samples.astype(np.float32) / 32768.0
    x *= gain_for(samples, sample_rate_hz, settings.target_lufs, settings.max_gain_db, level)
    fade = min(int(settings.crossfade_s * sample_rate_hz), x.size // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    return x


def _fmt_vtt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def webvtt(cues: list[Cue]) -> str:
    """WebVTT cues, one per chunk; a chunk with a speaker is a voice span: `<v Alice>text`."""
    lines = ["WEBVTT", ""]
    for cue in cues:
        text = cue.text if cue.speaker is None else f"<v {_vtt_escape(cue.speaker)}>{_vtt_escape(cue.text)}"
        lines += [str(cue.index + 1), f"{_fmt_vtt_time(cue.start_s)} --> {_fmt_vtt_time(cue.end_s)}", text, ""]
    return "\n".join(lines)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def fetched(store: Store, chunks: list[PlannedChunk], ahead: int = PREFETCH):
    """Yield (chunk, its stored bytes) in order, with up to `ahead` reads running in advance.

    The reads overlap the joining (a chunk's GET is mostly waiting); memory stays bounded by
    `ahead` chunks whatever the chapter's length.
    """
    pending: deque[tuple[PlannedChunk, asyncio.Future]] = deque()
    rest = iter(chunks)
    try:
        for chunk in rest:
            pending.append((chunk, asyncio.ensure_future(store.get(chunk.key))))
            if len(pending) > ahead:
                first, read = pending.popleft()
                yield first, await read
        while pending:
            first, read = pending.popleft()
            yield first, await read
    finally:
        for _, read in pending:
            read.cancel()
        if pending:
            await asyncio.gather(*(read for _, read in pending), return_exceptions=True)


async def assemble_chapter(store: Store, plan: ChapterPlan, settings: Settings, keepalive=None) -> AssembledChapter:
    """Build, upload and describe one chapter. Safe to run twice: same inputs, same objects.

    `keepalive`, when given, is awaited after every chunk (the caller's in-progress ack).
    """
    fmt, subtype, content_type = FORMATS[plan.format]
    rate = settings.sample_rate_hz
    pause = np.zeros(int(round(settings.pause_s * rate)), dtype=np.float32)
    cues: list[Cue] = []
    written = 0

    def join(out: sf.SoundFile, chunk: PlannedChunk, data: bytes, first: bool) -> int:
        """Decode, shape and write one chunk (after a pause unless it is the first): its samples."""
        samples, chunk_rate = decode_wav(data)
        if chunk_rate != rate:
            raise ValueError(f"chunk {chunk.chunk_id} is {chunk_rate} Hz, expected {rate} Hz")
        shaped = shape_chunk(samples, rate, settings, chunk.loudness_lufs)
        if not first:
            out.write(pause)
        out.write(shaped)
        return shaped.size

    with tempfile.NamedTemporaryFile(suffix=f".{plan.format}") as tmp:
        with sf.SoundFile(tmp.name, "w", samplerate=rate, channels=1, format=fmt, subtype=subtype) as out:
            async for chunk, data in fetched(store, plan.chunks):
                if cues:
                    written += pause.size
                size = await asyncio.to_thread(join, out, chunk, data, not cues)
                del data
                cues.append(Cue(chunk.index, chunk.chunk_id, written / rate, (written + size) / rate,
                                chunk.text, chunk.start, chunk.end, chunk.speaker))
                written += size
                if keepalive is not None:
                    await keepalive()
        key = chapter_key(plan)
        subtitles_key = SUBTITLES_KEY.format(job_id=plan.job_id, index=plan.chapter, slug=slug(plan.title))
        timing_key = TIMING_KEY.format(job_id=plan.job_id, chapter=plan.chapter)
        size, _, _ = await asyncio.gather(
            store.upload_file(key, tmp.name, content_type),
            store.put(subtitles_key, webvtt(cues).encode(), "text/vtt"),
            store.put(timing_key, json.dumps([c.__dict__ for c in cues]).encode(), "application/json"),
        )
    return AssembledChapter(key=key, subtitles_key=subtitles_key, timing_key=timing_key,
                            duration_s=round(written / rate, 4), bytes=size, cues=cues)


def expected_duration_s(chunk_durations_s: list[float], pause_s: float) -> float:
    """What `assemble_chapter` produces for chunks of these durations (used by checks and ETA)."""
    if not chunk_durations_s:
        return 0.0
    return math.fsum(chunk_durations_s) + pause_s * (len(chunk_durations_s) - 1)
