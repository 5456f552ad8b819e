"""The spoken form on real servers: what the model receives, the switches that turn it off, the
shared audio of two spellings, the jobs' plan and manifest, and the gateway's `normalize`."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx

from http_gateway.longform import plan_texts
from pipeline import bus
from pipeline.client import publish_synth
from pipeline.contracts.messages import ChapterSubmit, ChunkDone, SynthRequest
from pipeline.jobs import state as jobs
from pipeline.store import audio_key
from pipeline.text.spoken import spoken
from tests.conftest import sim_stats
from tests.gateway_fixtures import gateway, wait_for_health  # noqa: F401 (fixture)
from tests.test_jobs import JobEvents

WRITTEN = "Dr. Smith paid £8.00 on 2024-03-05, as noted[1]."
SPOKEN = "Doctor Smith paid eight pounds on March fifth, twenty twenty-four, as noted."


def text_key(text: str) -> str:
    """How the stand-in counts calls per text it received (`calls_by_text`)."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


async def speak(h, *requests: SynthRequest) -> dict[str, ChunkDone]:
    async with h.waiter(requests[0].job_id) as waiter:
        for request in requests:
            await publish_synth(h.js, h.names, request, "bulk")
        outcomes = await waiter.wait_for(requests[0].job_id, [r.chunk_id for r in requests], timeout_s=60)
    assert all(isinstance(o, ChunkDone) for o in outcomes.values()), outcomes
    return outcomes


def test_the_example_reads_as_expected():
    assert spoken(WRITTEN) == SPOKEN


async def test_the_model_receives_the_spoken_form_and_the_event_says_so(sims, harness):
    sim = sims()
    h = await harness(backend_urls=[sim.url])
    await h.start_worker()
    done = (await speak(h, SynthRequest(job_id="sp", chunk_id="0", text=WRITTEN)))["0"]
    assert sim_stats(sim)["calls_by_text"] == {text_key(SPOKEN): 1}
    assert done.spoken == SPOKEN
    # A text the rules leave alone: no `spoken` in the event.
    plain = (await speak(h, SynthRequest(job_id="sp2", chunk_id="0", text="Nothing to change here.")))["0"]
    assert plain.spoken is None


async def test_normalize_false_sends_the_text_as_written(sims, harness):
    sim = sims()
    h = await harness(backend_urls=[sim.url])
    await h.start_worker()
    done = (await speak(h, SynthRequest(job_id="raw", chunk_id="0", text=WRITTEN, normalize=False)))["0"]
    assert sim_stats(sim)["calls_by_text"] == {text_key(WRITTEN): 1}
    assert done.spoken is None


async def test_a_worker_with_the_spoken_form_off_sends_the_text_as_written(sims, harness):
    sim = sims()
    h = await harness(backend_urls=[sim.url], spoken_form=False)
    await h.start_worker()
    outcomes = await speak(h, SynthRequest(job_id="off", chunk_id="0", text=WRITTEN),
                           SynthRequest(job_id="off", chunk_id="1", text="It cost $5.", normalize=True))
    # Off by default; a request that asks for the spoken form still gets it.
    assert sim_stats(sim)["calls_by_text"] == {text_key(WRITTEN): 1, text_key("It cost five dollars."): 1}
    assert outcomes["0"].spoken is None and outcomes["1"].spoken == "It cost five dollars."


async def test_two_spellings_that_sound_the_same_share_one_audio(sims, harness):
    sim = sims()
    h = await harness(backend_urls=[sim.url])
    await h.start_worker()
    first = (await speak(h, SynthRequest(job_id="same", chunk_id="a", text=WRITTEN)))["a"]
    second = (await speak(h, SynthRequest(job_id="same", chunk_id="b", text=SPOKEN)))["b"]
    assert first.key == second.key and second.cached and not first.cached
    assert sim_stats(sim)["calls"] == 1
    # As written, the same text is other audio.
    third = (await speak(h, SynthRequest(job_id="same", chunk_id="c", text=WRITTEN, normalize=False)))["c"]
    assert third.key != first.key and sim_stats(sim)["calls"] == 2


async def run_job(h, job_id: str, texts: list[str], normalize: bool | None = None) -> dict:
    async with JobEvents(h, job_id) as watch:
        for i, text in enumerate(texts):
            submit = ChapterSubmit(job_id=job_id, chapter=i, total_chapters=len(texts), title=f"Chapter {i + 1}",
                                   text=text, normalize=normalize)
            await bus.publish_json(h.js, h.names.chapters_submit, submit.to_bytes(), f"chapter:{job_id}:{i}")
        await asyncio.wait_for(watch.done.wait(), 90)
    return json.loads(await h.store.get(f"jobs/{job_id}/manifest.json"))


CHAPTER = ("The museum opened on March 3, 2021.[1] Dr. Park paid $4.5 million for the repairs. "
           "It had been closed for 27 years.[2] Visitors climbed 114 steps to the top. ")


async def test_a_jobs_manifest_has_the_written_and_the_spoken_text_and_the_plan_keys_match(sims, harness):
    sim = sims(slots=32)
    h = await harness(backend_urls=[sim.url], chunk_max_words=20, chunk_target_words=12)
    await h.start_worker()
    await h.start_ingest()
    await h.start_assembler()
    manifest = await run_job(h, "spokenbook", [CHAPTER * 2])
    chunks = manifest["chapters"][0]["chunks"]
    assert len(chunks) >= 3
    for chunk in chunks:
        assert chunk["spoken"] == spoken(chunk["text"])
        # The plan's key (computed by ingest on the spoken form) is the audio the worker stored.
        assert await h.store.exists(chunk["audio_key"])
    assert " ".join(c["text"] for c in chunks) == " ".join((CHAPTER * 2).split())
    assert any("[1]" in c["text"] for c in chunks) and not any("[1]" in c["spoken"] for c in chunks)
    assert set(sim_stats(sim)["calls_by_text"]) == {text_key(c["spoken"]) for c in chunks}
    # The subtitles stay in the written form.
    vtt = (await h.store.get(manifest["chapters"][0]["subtitles_key"])).decode()
    assert "Dr. Park paid $4.5 million" in vtt and "Doctor" not in vtt
    plan = jobs.ChapterPlan.model_validate_json(await h.store.get(jobs.plan_key("spokenbook", 0)))
    assert plan.normalize is True
    assert [c.key for c in plan.chunks] == [audio_key(
        plan.request(c).model_copy(update={"text": spoken(c.text)}).audio_digest(h.settings.model)) for c in plan.chunks]


async def test_a_job_submitted_with_normalize_false_is_read_as_written(sims, harness):
    sim = sims(slots=32)
    h = await harness(backend_urls=[sim.url])
    await h.start_worker()
    await h.start_ingest()
    await h.start_assembler()
    manifest = await run_job(h, "rawbook", [CHAPTER], normalize=False)
    chunks = manifest["chapters"][0]["chunks"]
    assert all(c["spoken"] == c["text"] for c in chunks)
    assert set(sim_stats(sim)["calls_by_text"]) == {text_key(c["text"]) for c in chunks}


async def test_the_gateway_passes_normalize_on_every_route_and_chunk(sims, harness, gateway):
    sim = sims(slots=64)
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker()
    gw = gateway(h.settings)
    long_text = " ".join(f"Chapter {i} cost ${i}.50 in {1990 + i}." for i in range(1, 40))  # several chunks
    async with httpx.AsyncClient(base_url=gw.url, timeout=60, trust_env=False) as client:
        await wait_for_health(client, "ok")
        assert (await client.post("/generate", json={"text": "It cost $5."})).status_code == 200
        assert (await client.post("/generate", json={"text": "It cost $6.", "normalize": False})).status_code == 200
        speech = await client.post("/v1/audio/speech", json={"input": "It cost $7.", "normalize": False,
                                                              "response_format": "wav"})
        assert speech.status_code == 200, speech.text
        batch = await client.post("/generate/batch", json=[{"text": "It cost $8.", "normalize": False},
                                                           {"text": "It cost $9."}])
        assert batch.json()["successful"] == 2
        long = await client.post("/generate", json={"text": long_text, "normalize": False})
        assert long.status_code == 200 and int(long.headers["X-Chunks"]) > 1
    heard = sim_stats(sim)["calls_by_text"]
    for text in ("It cost five dollars.", "It cost $6.", "It cost $7.", "It cost $8.", "It cost nine dollars."):
        assert text_key(text) in heard, text
    # Every chunk of the long text went as written.
    chunks = plan_texts(long_text, h.settings)
    assert len(chunks) == int(long.headers["X-Chunks"]) and all(text_key(t) in heard for t in chunks)
    assert sim_stats(sim)["calls"] == 5 + len(chunks)
    assert text_key("It cost $5.") not in heard and text_key("It cost $9.") not in heard
