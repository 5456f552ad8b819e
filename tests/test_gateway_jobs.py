"""Jobs over HTTP end to end: POST /jobs -> NATS -> ingest -> synth worker -> stand-in -> S3 ->
assembler -> events back through the gateway as Server-Sent Events, state from the KV bucket."""

from __future__ import annotations

import asyncio
import json
import re
import time
from contextlib import aclosing

import httpx

from pipeline import bus
from pipeline.jobs import state as jobs
from pipeline.contracts.messages import ChapterFailed
from tests.gateway_fixtures import gateway, wait_for_health  # noqa: F401 (fixtures)
from tests.waiting import until

CHAPTERS = [
    {"title": "The Lamp Room", "text": "The keeper climbed the stairs at dusk. " * 9
     + "Mr. Hale counted 3.5 miles of coast. \"Is the storm coming?\" asked his daughter."},
    {"title": "Night", "text": "By midnight the wind had found every crack in the old stone walls. " * 7},
]


async def open_client(gw) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False)
    async def ready() -> bool:
        return (await client.get("/ready")).status_code == 200

    await until(ready, "the gateway is ready")
    return client


async def read_events(response: httpx.Response, limit: int = 1000) -> list[tuple[str, dict | None]]:
    """(event, data) pairs until the server ends the stream; comments come as (":", None)."""
    events, kind, data = [], None, None
    async for line in response.aiter_lines():
        if line.startswith(":"):
            events.append((":", None))
        elif line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
        elif line == "" and kind is not None:
            events.append((kind, data))
            kind, data = None, None
        assert len(events) < limit
    return events


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_two_chapter_job_streams_its_events_and_ends_done(sims, harness, gateway):
    sim = sims(slots=64)
    h = await harness(backend_urls=[sim.url], max_in_flight=16, heartbeat_s=0.2)
    await h.start_worker()
    await h.start_ingest()
    await h.start_assembler()
    gw = gateway(h.settings)
    client = await open_client(gw)
    async with aclosing(client):
        await wait_for_health(client, "ok")
        answer = await client.post("/jobs", json={"job_id": "http-book", "chapters": CHAPTERS, "format": "flac",
                                                  "voice": "en_woman", "temperature": 0.7, "seed": 7})
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body == {"job_id": "http-book", "chapters": 2, "skipped": [], "status_url": "/jobs/http-book",
                        "events_url": "/jobs/http-book/events"}
        assert answer.headers["Location"] == "/jobs/http-book"
        async with client.stream("GET", body["events_url"]) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = await asyncio.wait_for(read_events(stream), 60)
        kinds = [kind for kind, _ in events if kind != ":"]
        assert kinds[0] == "job.state" and events[0][1]["job_id"] == "http-book"
        assert kinds[-1] == "job.done"  # and the server ended the stream right after it
        done_chapters = [data["chapter"] for kind, data in events if kind == "chapter.done"]
        assert sorted(done_chapters) == [0, 1]
        assert kinds.index("job.done") > max(i for i, k in enumerate(kinds) if k == "chapter.done")
        assert "chapter.failed" not in kinds
        job_done = events[-1][1]
        assert job_done["manifest_key"] == "jobs/http-book/manifest.json" and job_done["chapters"] == 2

        status = (await client.get("/jobs/http-book")).json()
        assert status["status"] == "done" and status["manifest_key"] == job_done["manifest_key"]
        assert (status["chapters_total"], status["chapters_done"], status["chapters_failed"]) == (2, 2, 0)
        assert status["chunks_done"] == status["chunks_total"] >= 4 and status["chunks_failed"] == 0
        assert await h.store.exists(status["manifest_key"])
        for n, chapter in enumerate(status["chapters"]):
            assert chapter["chapter"] == n and chapter["title"] == CHAPTERS[n]["title"]
            assert chapter["status"] == "done" and chapter["format"] == "flac" and chapter["duration_s"] > 1
            assert chapter["key"].endswith(".flac") and await h.store.exists(chapter["key"])
            download = await client.get(chapter["url"])
            assert download.status_code == 200 and download.headers["content-type"] == "audio/flac"
            assert download.content == await h.store.get(chapter["key"])

        # The job's settings reached every chunk: voice, sampling, the given seed.
        plan = jobs.ChapterPlan.model_validate_json(await h.store.get(jobs.plan_key("http-book", 0)))
        assert plan.voice == "en_woman" and plan.sampling.temperature == 0.7 and plan.sampling.seed == 7

        # A finished job: the state, then the end of the stream.
        async with client.stream("GET", "/jobs/http-book/events") as again:
            replay = await asyncio.wait_for(read_events(again), 60)
        assert [kind for kind, _ in replay] == ["job.state"] and replay[0][1]["status"] == "done"
        # A browser reconnecting after it (`Last-Event-ID`) gets 204, which stops its reconnects.
        assert (await client.get("/jobs/http-book/events", headers={"Last-Event-ID": "1"})).status_code == 204

        scrape = (await client.get("/metrics")).text
        assert metric(scrape, "tts_gateway_jobs_submitted_total") == 1
        assert metric(scrape, "tts_gateway_job_chapters_submitted_total") == 2
        assert metric(scrape, "tts_gateway_event_streams") == 0


async def test_bad_job_requests_get_their_status_and_leave_no_trace(harness, gateway):
    h = await harness()
    gw = gateway(h.settings)
    client = await open_client(gw)
    text = {"title": "One", "text": "Some words to speak."}
    async with aclosing(client):
        for bad in ({"chapters": "no"}, {"title": "no chapters"}, {"chapters": [{"title": "no text"}]},
                    {"chapters": [text], "format": "ogg"}, {"chapters": [text], "job_id": "not a token!"},
                    {"chapters": [text], "temperature": 5}):
            answer = await client.post("/jobs", json=bad)
            assert answer.status_code == 422, (bad, answer.text)

        empty = await client.post("/jobs", json={"chapters": []})
        assert empty.status_code == 400 and "chapters cannot be empty" in empty.json()["detail"]
        blank = await client.post("/jobs", json={"job_id": "blank", "chapters": [{"text": "  "}, {"text": "\n"}]})
        assert blank.status_code == 400 and "empty" in blank.json()["detail"]

        huge = await client.post("/jobs", json={"job_id": "huge", "chapters": [text, {"text": "a" * 900_001}]})
        assert huge.status_code == 413 and "Chapter 1 is 900001 characters" in huge.json()["detail"]
        wide = await client.post("/jobs", json={"job_id": "wide", "chapters": [{"text": "é" * 600_000}]})
        assert wide.status_code == 413 and "as a bus message" in wide.json()["detail"]

        voice = await client.post("/jobs", json={"job_id": "voiced", "chapters": [text], "voice": "nobody"})
        assert voice.status_code == 404 and "Unknown voice 'nobody'" in voice.json()["detail"]
        assert isinstance(voice.json()["voices"], list)

        for job_id in ("blank", "huge", "wide", "voiced"):
            assert (await client.get(f"/jobs/{job_id}")).status_code == 404

        first = await client.post("/jobs", json={"job_id": "twice", "chapters": [text, text]})
        assert first.status_code == 202
        conflict = await client.post("/jobs", json={"job_id": "twice", "chapters": [text, text, text]})
        assert conflict.status_code == 409 and "exists with 2 chapters" in conflict.json()["detail"]
        same = await client.post("/jobs", json={"job_id": "twice", "chapters": [text, text]})
        assert same.status_code == 202

        # Blank chapters among others are left out; the rest are numbered in order.
        gaps = await client.post("/jobs", json={"job_id": "gaps", "chapters": [
            {"title": "A", "text": "First."}, {"title": "B", "text": " "}, {"title": "C", "text": "Third."}]})
        assert gaps.status_code == 202 and gaps.json()["chapters"] == 2 and gaps.json()["skipped"] == [1]
        state = (await client.get("/jobs/gaps")).json()
        assert state["status"] == "running" and state["chapters_total"] == 2
        assert [(c["chapter"], c["title"], c["status"]) for c in state["chapters"]] == [(0, "A", "pending"),
                                                                                         (1, "C", "pending")]
        info = await h.js.stream_info(h.names.chapters_stream)
        assert info.state.messages == 4  # "twice" (2, the repeat de-duplicated) + "gaps" (2)

        for path in ("/jobs/nope", "/jobs/nope/events", "/jobs/nope/chapters/0", "/jobs/a.b",
                     "/jobs/gaps/chapters/0", "/jobs/gaps/chapters/7"):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"] == "application/json"

        spec = (await client.get("/openapi.json")).json()
        assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/jobs/{job_id}/chapters/{chapter}"} <= set(spec["paths"])

        scrape = (await client.get("/metrics")).text
        assert metric(scrape, "tts_gateway_jobs_submitted_total") == 3
        assert metric(scrape, "tts_gateway_event_streams") == 0  # the 404 stream let go of its subscription
        assert 'tts_gateway_requests_total{outcome="conflict",route="/jobs"} 1.0' in scrape


async def test_body_limit_and_auth_apply_to_jobs(harness, gateway):
    h = await harness()
    gw = gateway(h.settings.model_copy(update={"gateway_max_body_bytes": 2048, "gateway_api_key": "sesame"}))
    auth = {"Authorization": "Bearer sesame"}
    async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False) as client:
        small = {"job_id": "small", "chapters": [{"text": "Short."}]}
        assert (await client.post("/jobs", json=small)).status_code == 401
        assert (await client.get("/jobs/small")).status_code == 401
        assert (await client.get("/jobs/small/events")).status_code == 401
        big = await client.post("/jobs", json={"chapters": [{"text": "word " * 600}]}, headers=auth)
        assert big.status_code == 413 and "larger than the limit of 2048 bytes" in big.json()["detail"]
        async def accepted() -> httpx.Response | None:
            answer = await client.post("/jobs", json=small, headers=auth)
            return None if answer.status_code == 503 else answer

        answer = await until(accepted, "the job is accepted (not 503)")
        assert answer.status_code == 202, answer.text
        assert (await client.get("/jobs/small", headers=auth)).json()["job_id"] == "small"


async def test_event_stream_sends_heartbeats_and_unsubscribes_on_disconnect(harness, gateway):
    h = await harness()
    gw = gateway(h.settings.model_copy(update={"gateway_sse_heartbeat_s": 0.2}))
    client = await open_client(gw)
    async with aclosing(client):
        assert (await client.post("/jobs", json={"job_id": "idle", "chapters": [{"text": "Nobody ingests me."}]})
                ).status_code == 202
        async with client.stream("GET", "/jobs/idle/events") as stream:
            lines = stream.aiter_lines()
            state_id = int((await anext(lines)).removeprefix("id: "))
            assert await anext(lines) == "event: job.state"
            state = json.loads((await anext(lines))[len("data: "):])
            assert state["status"] == "running" and state["chapters"][0]["status"] == "pending"
            assert await anext(lines) == ""
            assert await asyncio.wait_for(anext(lines), 30) == ": keepalive"
            assert metric((await client.get("/metrics")).text, "tts_gateway_event_streams") == 1
            # An event published on the bus now reaches the open stream.
            kv = await bus.jobs_kv(h.js, h.names)
            assert await jobs.read(kv, jobs.job_key("idle"), jobs.JobState) is not None
            await h.nc.publish(h.names.chapter_failed("idle"), ChapterFailed(
                job_id="idle", chapter=0, reason="test", error="published by the test").to_bytes())
            seen = []
            while not seen or seen[-1] != "event: chapter.failed":
                seen.append(await asyncio.wait_for(anext(lines), 30))
            assert json.loads((await anext(lines))[len("data: "):])["error"] == "published by the test"
            failed_id = int(seen[-2].removeprefix("id: "))
            assert failed_id > state_id
        # A reconnect after the state (`Last-Event-ID`) gets what it missed, without the state again.
        async with client.stream("GET", "/jobs/idle/events", headers={"Last-Event-ID": str(state_id)}) as stream:
            lines = stream.aiter_lines()
            assert [await anext(lines) for _ in range(2)] == [f"id: {failed_id}", "event: chapter.failed"]
        # After the last event it got, nothing is replayed: only keepalives until something happens.
        async with client.stream("GET", "/jobs/idle/events", headers={"Last-Event-ID": str(failed_id)}) as stream:
            assert await asyncio.wait_for(anext(stream.aiter_lines()), 30) == ": keepalive"
        # The client went away: the gateway drops the subscription.
        async def dropped() -> bool:
            return metric((await client.get("/metrics")).text, "tts_gateway_event_streams") == 0

        await until(dropped, "the event stream's subscription is dropped")

