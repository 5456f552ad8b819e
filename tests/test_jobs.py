"""Audiobook jobs end to end: chapters in, ingest, synth, assembler, chapter files and manifest out."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from pipeline import bus
from pipeline.jobs import state as jobs
from pipeline.contracts.messages import ChapterDone, ChapterFailed, ChapterSubmit, JobDone, Sampling, SynthRequest
from tests.conftest import sim_stats
from tests.waiting import queue_empty, until

SENTENCES = [
    "The lighthouse keeper climbed the stairs at dusk.",
    "Mr. Hale counted 3.5 miles of coast from the lamp room.",
    '"Is the storm coming?" asked his daughter.',
    "He nodded, and the two of them watched the grey water turn black.",
    "By midnight the wind had found every crack in the old stone walls.",
]


def chapter_text(n: int, sentences: int = 12) -> str:
    return " ".join(SENTENCES[(n + i) % len(SENTENCES)] for i in range(sentences))


class JobEvents:
    def __init__(self, h, job_id: str):
        self.h, self.job_id = h, job_id
        self.events: list = []
        self.done = asyncio.Event()

    async def __aenter__(self):
        async def on_msg(msg):
            kind = msg.subject.split(".")[-3:-1]
            if kind == ["chapter", "done"]:
                self.events.append(ChapterDone.from_bytes(msg.data))
            elif kind == ["chapter", "failed"]:
                self.events.append(ChapterFailed.from_bytes(msg.data))
            elif kind == ["job", "done"]:
                self.events.append(JobDone.from_bytes(msg.data))
                self.done.set()

        self.sub = await self.h.nc.subscribe(self.h.names.job_events(self.job_id), cb=on_msg)
        return self

    async def __aexit__(self, *exc):
        await self.sub.unsubscribe()


async def submit_chapters(h, job_id: str, texts: list[str], fmt: str = "wav") -> None:
    for i, text in enumerate(texts):
        submit = ChapterSubmit(job_id=job_id, chapter=i, total_chapters=len(texts), title=f"Chapter {i + 1}",
                               text=text, format=fmt)
        await bus.publish_json(h.js, h.names.chapters_submit, submit.to_bytes(), f"chapter:{job_id}:{i}")


async def test_three_chapters_become_ordered_files_with_manifest_and_subtitles(sims, harness):
    sim = sims(slots=64)
    h = await harness(backend_urls=[sim.url], max_in_flight=16)
    await h.start_worker()
    await h.start_ingest()
    await h.start_assembler()
    texts = [chapter_text(i) for i in range(3)]
    async with JobEvents(h, "book1") as watch:
        await submit_chapters(h, "book1", texts)
        await asyncio.wait_for(watch.done.wait(), 90)
    chapters = sorted((e for e in watch.events if isinstance(e, ChapterDone)), key=lambda e: e.chapter)
    assert [c.chapter for c in chapters] == [0, 1, 2]
    assert [c.key.rsplit("/", 1)[-1] for c in chapters] == ["000-chapter-1.wav", "001-chapter-2.wav", "002-chapter-3.wav"]
    manifest = json.loads(await h.store.get("jobs/book1/manifest.json"))
    assert [c["chapter"] for c in manifest["chapters"]] == [0, 1, 2]
    pause_s = h.settings.pause_s
    for event, entry in zip(chapters, manifest["chapters"]):
        data, rate = sf.read(io.BytesIO(await h.store.get(event.key)), dtype="int16")
        duration_s = data.shape[0] / rate
        chunk_s = []
        for chunk in entry["chunks"]:
            audio, chunk_rate = sf.read(io.BytesIO(await h.store.get(chunk["audio_key"])), dtype="int16")
            chunk_s.append(audio.shape[0] / chunk_rate)
        assert len(chunk_s) >= 2
        assert duration_s == pytest.approx(sum(chunk_s) + pause_s * (len(chunk_s) - 1), abs=0.05)
        assert entry["duration_s"] == pytest.approx(duration_s, abs=0.01)
        # Text spans cover the chapter in order, and cue times increase.
        assert " ".join(c["text"] for c in entry["chunks"]) == " ".join(texts[event.chapter].split())
        starts = [c["start_s"] for c in entry["chunks"]]
        assert starts == sorted(starts) and starts[0] == 0
        vtt = (await h.store.get(entry["subtitles_key"])).decode()
        assert vtt.startswith("WEBVTT") and vtt.count(" --> ") == len(entry["chunks"])
    # Identical chunks (same text, same job seed) are synthesised once.
    distinct = {c["audio_key"] for e in manifest["chapters"] for c in e["chunks"]}
    assert sim_stats(sim)["calls"] == len(distinct)
    # Each chunk's loudness, as the worker measured and stored it, is in its chapter's state: the
    # assembler levelled the chunks with it instead of measuring them again.
    kv = await bus.jobs_kv(h.js, h.names)
    for entry in manifest["chapters"]:
        state = await jobs.read(kv, jobs.chapter_key("book1", entry["chapter"]), jobs.ChapterState)
        assert sorted(state.loudness, key=int) == [str(c["index"]) for c in entry["chunks"]]
        for chunk in entry["chunks"]:
            stored = (await h.store.head(chunk["audio_key"]))["Metadata"]["loudness-lufs"]
            assert state.loudness[str(chunk["index"])] == pytest.approx(float(stored), abs=0.01)


async def test_resubmitting_a_finished_book_synthesises_nothing(sims, harness):
    sim = sims(slots=64)
    h = await harness(backend_urls=[sim.url], max_in_flight=16, dedup_window_s=1)
    await h.start_worker()
    await h.start_ingest()
    await h.start_assembler()
    texts = [chapter_text(i, 6) for i in range(2)]
    async with JobEvents(h, "again") as watch:
        await submit_chapters(h, "again", texts)
        await asyncio.wait_for(watch.done.wait(), 60)
    calls = sim_stats(sim)["calls"]
    await asyncio.sleep(1.2)  # past the duplicate window: the server accepts the same ids again
    await submit_chapters(h, "again", texts)

    async def both_queues_empty() -> bool:  # ingest took the chapters, the worker whatever they made
        chapters = (await h.js.stream_info(h.names.chapters_stream)).state.messages
        return chapters == 0 and await queue_empty(h)

    await until(both_queues_empty, "the resubmitted chapters are handled")
    assert sim_stats(sim)["calls"] == calls


async def test_failed_chunk_fails_its_chapter_and_retry_completes_it(sims, harness):
    from pipeline.cli import jobs as jobs_cli

    sim = sims(error_rate=1.0, error_status=400)
    h = await harness(backend_urls=[sim.url], max_in_flight=8)
    await h.start_worker()
    await h.start_ingest()
    await h.start_assembler()
    async with JobEvents(h, "fixme") as watch:
        await submit_chapters(h, "fixme", [chapter_text(0, 3)])
        await until(lambda: any(isinstance(e, ChapterFailed) for e in watch.events), "the chapter fails")
        failed = [e for e in watch.events if isinstance(e, ChapterFailed)]
        assert failed and failed[0].failed_chunks and "400" in failed[0].error
        kv = await bus.jobs_kv(h.js, h.names)
        job = await jobs.read(kv, jobs.job_key("fixme"), jobs.JobState)
        assert job.chapters == {"0": "failed"}
        # The engine is fixed; retry republishes only the failed chunks.
        import httpx

        httpx.patch(f"{sim.url}/sim/config", json={"error_rate": 0.0}, timeout=5)
        assert await jobs_cli.retry(h.settings, "fixme") == 0
        await asyncio.wait_for(watch.done.wait(), 60)
    job = await jobs.read(kv, jobs.job_key("fixme"), jobs.JobState)
    assert job.chapters == {"0": "done"} and job.manifest_key


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"definitely not json", "invalid"),
        (json.dumps({"job_id": "bad", "chapter": 0, "text": "no total"}).encode(), "invalid"),
        (ChapterSubmit(job_id="bad", chapter=0, total_chapters=1, text="   ").to_bytes(), "empty"),
    ],
)
async def test_bad_chapter_messages_fail_clearly_and_others_go_on(sims, harness, payload, reason):
    sim = sims()
    h = await harness(backend_urls=[sim.url])
    await h.start_worker()
    await h.start_ingest()
    await h.start_assembler()
    failed = []

    async def on_failed(msg):
        failed.append(ChapterFailed.from_bytes(msg.data))

    sub = await h.nc.subscribe(f"{h.names.root}.events.chapter.failed.*", cb=on_failed)
    async with JobEvents(h, "good") as watch:
        await h.js.publish(h.names.chapters_submit, payload)
        await submit_chapters(h, "good", [chapter_text(1, 3)])
        await asyncio.wait_for(watch.done.wait(), 60)
    await until(lambda: failed, "the bad chapter's failed event")
    await sub.unsubscribe()
    assert [f.reason for f in failed] == [reason]
    info = await h.js.stream_info(h.names.dlq_stream)
    assert info.state.messages == 1


async def test_assembly_levels_chunks_with_the_planned_loudness_and_measures_only_the_missing(harness):
    from pipeline.assemble import assemble_chapter, gain_for
    from pipeline.audio.checks import loudness_lufs
    from pipeline.engines.sim.audio import synthesize, wav_bytes

    h = await harness(target_lufs=-26.0, pause_s=0.5, crossfade_s=0.01)
    rate = h.settings.sample_rate_hz
    sources, planned = [], []
    for i in range(2):
        samples = synthesize(f"chunk number {i} of the levelling test, said plainly", seed=i)
        sources.append(samples)
        await h.store.put(f"audio/level-{i}.wav", wav_bytes(samples), "audio/wav")
        # Chunk 0's plan says it is 6 dB quieter than it measures, chunk 1's says nothing.
        level = loudness_lufs(samples, rate) - 6.0 if i == 0 else None
        planned.append(jobs.PlannedChunk(index=i, chunk_id=jobs.chunk_id_for(0, i), start=0, end=1, text="x",
                                         key=f"audio/level-{i}.wav", loudness_lufs=level))
    plan = jobs.ChapterPlan(job_id="level", chapter=0, title="Level", format="wav", sampling=Sampling(),
                            chunks=planned)
    built = await assemble_chapter(h.store, plan, h.settings)
    out, _ = sf.read(io.BytesIO(await h.store.get(built.key)), dtype="float32")
    for chunk, samples, cue in zip(planned, sources, built.cues):
        expected = gain_for(samples, rate, h.settings.target_lufs, h.settings.max_gain_db, chunk.loudness_lufs)
        segment = out[round(cue.start_s * rate): round(cue.end_s * rate)]
        middle = slice(segment.size // 4, 3 * segment.size // 4)  # away from the faded edges
        gain = np.dot(segment[middle], samples[middle] / 32768.0) / np.dot(samples[middle] / 32768.0,
                                                                           samples[middle] / 32768.0)
        assert gain == pytest.approx(expected, rel=1e-3)
    measured = gain_for(sources[0], rate, h.settings.target_lufs, h.settings.max_gain_db)
    trusted = gain_for(sources[0], rate, h.settings.target_lufs, h.settings.max_gain_db, planned[0].loudness_lufs)
    assert trusted > measured * 1.5  # the plan's value was used, not a fresh measurement


def test_the_joining_code_does_not_import_the_loudness_meter():
    code = ("import sys, pipeline.jobs.assembler, pipeline.assemble; "
            "print(sorted({'scipy', 'pyloudnorm', 'pipeline.audio.checks'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


async def test_ingest_publishes_a_chapters_longest_chunks_first(harness):
    h = await harness(chunk_target_words=12, chunk_max_words=16)
    await h.start_ingest()  # no synth worker: the requests stay in the stream, in publishing order
    text = chapter_text(0)
    await submit_chapters(h, "order", [text])
    stream = h.names.synth_stream

    async def published_plan():
        if not await h.store.exists(jobs.plan_key("order", 0)):
            return None
        plan = jobs.ChapterPlan.model_validate_json(await h.store.get(jobs.plan_key("order", 0)))
        info = await h.js.stream_info(stream)
        return (plan, info) if info.state.messages == len(plan.chunks) else None

    plan, info = await until(published_plan, "ingest publishes the chapter")
    published = [SynthRequest.model_validate_json((await h.js.get_msg(stream, seq)).data)
                 for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    lengths = [(len(r.text.split()), len(r.text)) for r in published]  # words, then characters
    assert len({w for w, _ in lengths}) > 2  # the chapter's chunks differ in length
    assert lengths == sorted(lengths, reverse=True)
    assert sorted(r.index for r in published) == list(range(len(plan.chunks)))
