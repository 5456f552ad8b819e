"""Long text through the gateway (http_gateway/longform.py, chunked.py, streaming.py), on real
servers: split, spoken in parallel, joined or streamed in order, cancelled, never padded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import wave
from contextlib import aclosing

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from http_gateway.longform import FIRST_MAX_WORDS, plan_texts
from pipeline.contracts.settings import Settings
from tests.conftest import sim_stats
from tests.gateway_fixtures import gateway, wait_for_health  # noqa: F401 (fixture)
from tests.waiting import queue_empty, until

SENTENCES = [
    "The lighthouse keeper climbed the stairs before dawn, counting each step under his breath.",
    "At the top he wiped the salt from the great lens and checked the wick twice.",
    "Far below, the fishing boats were already leaving the harbour in a long uneven line.",
    "He wrote the weather in the logbook: wind from the west, a light swell, clouds building.",
    "His daughter had asked him once why he never tired of the same view every morning.",
    "He told her that the sea was never the same, and that neither was he.",
    "By seven the fog had lifted and the whole bay shone like hammered silver.",
    "A gull landed on the rail, watched him for a while, and left without a sound.",
    "He went down for breakfast, leaving the lamp to the daylight until evening came again.",
]
LONG_TEXT = " ".join(SENTENCES * 2)  # ~1,500 characters: several chunks
STREAMED_PCM = {"model": "tts-1", "voice": "alloy", "input": LONG_TEXT, "response_format": "pcm", "stream": True}


def pcm_of(wav: bytes) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(wav), dtype="int16")
    assert rate == 24000
    return samples


async def start(harness, gateway, sim, max_in_flight: int = 32, **gateway_settings):
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker(max_in_flight=max_in_flight)
    gw = gateway(h.settings.model_copy(update=gateway_settings))
    client = httpx.AsyncClient(base_url=gw.url, timeout=60, trust_env=False)
    await wait_for_health(client, "ok")
    return h, gw, client


def test_the_plan_keeps_the_first_chunk_short_and_loses_no_word():
    settings = Settings()
    texts = plan_texts(LONG_TEXT, settings)
    assert len(texts) > 3
    assert len(texts[0].split()) <= FIRST_MAX_WORDS
    assert " ".join(texts).split() == LONG_TEXT.split()
    assert all(len(t.split()) <= settings.chunk_max_words for t in texts)
    assert plan_texts("A short sentence.", settings) == ["A short sentence."]  # one chunk: as written


async def test_a_long_text_is_split_spoken_in_parallel_and_joined_whole(sims, harness, gateway):
    sim = sims(latency_s=1.0, slots=64)
    h, gw, client = await start(harness, gateway, sim)
    async with aclosing(client):
        r = await client.post("/generate", json={"text": LONG_TEXT})
        assert r.status_code == 200, r.text
        chunks = int(r.headers["X-Chunks"])
        texts = plan_texts(LONG_TEXT, h.settings)
        assert chunks == len(texts) > 3 and r.headers["X-Cache"] == "miss"
        stats = sim_stats(sim)
        assert stats["calls"] == chunks
        assert stats["peak_concurrent"] >= chunks // 2  # spoken together, not one after another
        # Every chunk's text reached the model (the stand-in counts calls by a hash of the text).
        assert sorted(stats["calls_by_text"]) == sorted(hashlib.sha1(t.encode()).hexdigest()[:12] for t in texts)
        # One WAV with true sizes: the chunks (2.5 words/s each) plus a pause between each two.
        with wave.open(io.BytesIO(r.content)) as w:
            frames = w.getnframes()
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        assert len(r.content) == 44 + 2 * frames
        speech_s = sum(len(t.split()) / 2.5 for t in texts) + h.settings.pause_s * (chunks - 1)
        assert frames / 24000 == pytest.approx(speech_s, rel=0.1)
        # The same text again: every chunk from the store, the same audio, no model call. (The answer
        # above came from the workers' replies, sent before storing: wait until every chunk is
        # stored, i.e. acked, or a busy store's last put races the second request's lookup.)
        await until(lambda: queue_empty(h), "every chunk of the first answer is stored")
        again = await client.post("/generate", json={"text": LONG_TEXT})
        assert again.status_code == 200 and again.headers["X-Cache"] == "hit"
        assert again.content == r.content
        # The workers answered every chunk of the repeat from the store. (For a waiting caller a
        # worker starts the model call together with the cache lookup and cancels it on the hit; on
        # a loaded machine a lookup slower than the stand-in lets that call complete, unused: so
        # this counts what the workers did, not what the model server saw.)
        await until(lambda: sum(h.counts()) >= 2 * chunks, "the repeat's chunks are acked")
        assert h.counts() == (chunks, chunks)


async def test_streams_in_every_format_decode_to_the_whole_answer(sims, harness, gateway):
    sim = sims(latency_s=0.2, slots=64)
    h, gw, client = await start(harness, gateway, sim)
    async with aclosing(client):
        body = {"model": "tts-1", "voice": "alloy", "input": LONG_TEXT}
        whole = await client.post("/v1/audio/speech", json={**body, "response_format": "pcm"})
        assert whole.status_code == 200
        await until(lambda: queue_empty(h), "every chunk of the first answer is stored")
        chunks = len(plan_texts(LONG_TEXT, h.settings))
        assert h.counts() == (chunks, 0)

        async def streamed(fmt: str, **extra) -> tuple[httpx.Response, list[bytes]]:
            pieces = []
            async with client.stream("POST", "/v1/audio/speech",
                                     json={**body, "response_format": fmt, "stream": True, **extra}) as resp:
                async for piece in resp.aiter_raw():
                    pieces.append(piece)
            return resp, pieces

        resp, pieces = await streamed("pcm")
        assert resp.status_code == 200 and resp.headers["content-type"] == "audio/pcm"
        assert b"".join(pieces) == whole.content  # cached chunks, the same joining rules
        resp, pieces = await streamed("wav")
        data = b"".join(pieces)
        assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
        assert data[44:] == whole.content
        assert np.array_equal(sf.read(io.BytesIO(data), dtype="int16")[0], np.frombuffer(whole.content, "<i2"))
        resp, pieces = await streamed("mp3")
        decoded, rate = sf.read(io.BytesIO(b"".join(pieces)), dtype="int16")
        assert rate == 24000 and abs(decoded.size - len(whole.content) // 2) < 0.05 * 24000 * len(pieces)
        # SSE: deltas in order, then done with usage.
        async with client.stream("POST", "/v1/audio/speech",
                                 json={**body, "response_format": "pcm", "stream_format": "sse"}) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[len("data: "):]) async for line in resp.aiter_lines() if line.startswith("data: ")]
        assert [e["type"] for e in events] == ["speech.audio.delta"] * (len(events) - 1) + ["speech.audio.done"]
        assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == whole.content
        usage = events[-1]["usage"]
        assert usage["output_tokens"] == round(len(whole.content) / 2 / 24000 * 25)
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        # Every stream came from the store: the workers synthesised nothing more (four streams so far).
        await until(lambda: sum(h.counts()) >= 5 * chunks, "the streams' chunks are acked")
        assert h.counts() == (chunks, 4 * chunks)

        # The OpenAI SDK's streaming reader, with Kokoro's `stream` field.
        sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        async with sdk.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=LONG_TEXT, response_format="pcm",
                extra_body={"stream": True}) as answer:
            sdk_bytes = b"".join([piece async for piece in answer.iter_bytes()])
        assert sdk_bytes == whole.content
        # /generate streams a WAV too.
        async with client.stream("POST", "/generate", json={"text": LONG_TEXT, "stream": True}) as resp:
            data = b"".join([piece async for piece in resp.aiter_raw()])
        assert resp.status_code == 200 and data[:4] == b"RIFF"


async def test_the_first_audio_leaves_before_the_last_chunk_is_spoken(sims, harness, gateway):
    # One call at a time: the chunks are spoken one after another, so the first bytes must arrive
    # while later chunks are still waiting for the model.
    sim = sims(latency_s=1.0, slots=64)
    h, gw, client = await start(harness, gateway, sim, max_in_flight=1)
    async with aclosing(client):
        async with client.stream("POST", "/v1/audio/speech", json=STREAMED_PCM) as resp:
            chunks = int(resp.headers["X-Chunks"])
            stream = resp.aiter_raw()
            first = await anext(stream)
            assert first and sim_stats(sim)["calls"] < chunks
            rest = b"".join([piece async for piece in stream])
        assert len(first) + len(rest) > len(first)
        assert sim_stats(sim)["calls"] == chunks


async def test_a_client_leaving_mid_stream_stops_the_chunks_not_yet_started(sims, harness, gateway):
    # 2 s per call, one at a time: the gateway has seconds to notice the client left before the
    # worker could take a third chunk, even on a busy machine.
    sim = sims(latency_s=2.0, slots=64)
    h, gw, client = await start(harness, gateway, sim, max_in_flight=1)
    async with aclosing(client):
        async with client.stream("POST", "/v1/audio/speech", json=STREAMED_PCM) as resp:
            chunks = int(resp.headers["X-Chunks"])
            await anext(resp.aiter_raw())  # the first chunk's audio, then the client leaves
        metrics = await until(lambda: withdrawn(client), "the gateway withdraws the unanswered chunks")
        assert metrics >= chunks - 3
        # Nothing left for a worker to take; the model saw the first chunk and at most the one or
        # two a worker held when the client left.
        await until(lambda: queue_empty_now(h), "the work queue is empty")
        await until(lambda: sim_stats(sim)["concurrent"] == 0, "the model server is idle")
        assert sim_stats(sim)["calls"] <= 3 < chunks


@pytest.mark.parametrize("path,body", [("/generate", {"text": LONG_TEXT}),
                                       ("/generate/batch", [{"text": "A short one."}, {"text": LONG_TEXT}])],
                         ids=["generate", "batch"])
async def test_a_client_leaving_a_whole_long_answer_stops_the_chunks_not_yet_started(sims, harness, gateway,
                                                                                    path, body):
    # 2 s per call, one at a time: seconds to notice the client left before a third chunk starts.
    sim = sims(latency_s=2.0, slots=64)
    h, gw, client = await start(harness, gateway, sim, max_in_flight=1)
    chunks = len(plan_texts(LONG_TEXT, h.settings))
    async with aclosing(client):
        leaving = httpx.AsyncClient(base_url=gw.url, timeout=60, trust_env=False)
        answer = asyncio.create_task(leaving.post(path, json=body))
        await until(lambda: sim_stats(sim)["calls"] >= 1, "the first chunk reaches the model")
        answer.cancel()  # the client gives up: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await answer
        await leaving.aclose()
        assert await until(lambda: withdrawn(client), "the gateway withdraws the unanswered chunks") >= chunks - 3
        await until(lambda: queue_empty_now(h), "the work queue is empty")
        await until(lambda: sim_stats(sim)["concurrent"] == 0, "the model server is idle")
        assert sim_stats(sim)["calls"] <= 3 < chunks
        # Counted as a client that left (nginx's 499), not as an error.
        text = await until(lambda: _metrics_with(client, 'outcome="client_gone"'), "the request is counted")
        assert not any(line.startswith("tts_gateway_requests_total") and 'outcome="error"' in line
                       for line in text.splitlines())


async def _metrics_with(client: httpx.AsyncClient, needle: str) -> str | None:
    text = (await client.get("/metrics")).text
    return text if any(line.startswith("tts_gateway_requests_total") and needle in line
                       for line in text.splitlines()) else None


async def withdrawn(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("tts_gateway_chunks_withdrawn_total "):
            return float(line.split()[1])
    return 0.0


async def queue_empty_now(h) -> bool:
    info = await h.js.consumer_info(h.names.synth_stream, h.names.synth_consumer("interactive"))
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_delete_cancels_a_long_request_by_its_id(sims, harness, gateway):
    # 2 s per call, one at a time: the gateway has seconds to notice the client left before the
    # worker could take a third chunk, even on a busy machine.
    sim = sims(latency_s=2.0, slots=64)
    h, gw, client = await start(harness, gateway, sim, max_in_flight=1)
    async with aclosing(client):
        answer = asyncio.create_task(client.post("/generate", json={"text": LONG_TEXT},
                                                 headers={"X-Request-Id": "long-1"}))
        await until(lambda: sim_stats(sim)["calls"] >= 1, "the first chunk reaches the model")
        r = await client.delete("/requests/long-1")
        assert r.status_code == 202 and r.json()["cancelled"] is True
        cancelled = await answer
        assert cancelled.status_code == 409 and "cancelled" in cancelled.json()["detail"]
        assert (await client.delete("/requests/long-1")).status_code == 404  # over: nothing to cancel
        await until(lambda: queue_empty_now(h), "the work queue is empty")
        await until(lambda: sim_stats(sim)["concurrent"] == 0, "the model server is idle")
        assert sim_stats(sim)["calls"] <= 3 < len(plan_texts(LONG_TEXT, h.settings))


async def test_delete_on_another_gateway_instance_reaches_the_one_running_the_request(sims, harness, gateway):
    # Two replicas behind a load balancer: the DELETE lands on the one not running the request.
    sim = sims(latency_s=2.0, slots=64)
    h, gw, client = await start(harness, gateway, sim, max_in_flight=1)
    other = httpx.AsyncClient(base_url=gateway(h.settings).url, timeout=60, trust_env=False)
    async with aclosing(client), aclosing(other):
        await wait_for_health(other, "ok")
        answer = asyncio.create_task(client.post("/generate", json={"text": LONG_TEXT},
                                                 headers={"X-Request-Id": "long-2"}))
        await until(lambda: sim_stats(sim)["calls"] >= 1, "the first chunk reaches the model")
        r = await other.delete("/requests/long-2")
        assert r.status_code == 202 and r.json()["cancelled"] is True, r.text
        assert r.json()["chunks_unanswered"] >= len(plan_texts(LONG_TEXT, h.settings)) - 3
        cancelled = await answer
        assert cancelled.status_code == 409 and "cancelled" in cancelled.json()["detail"]
        # No instance runs it any more, nor an id never seen: 404 from either.
        for c in (client, other):
            for request_id in ("long-2", "never-sent"):
                assert (await c.delete(f"/requests/{request_id}")).status_code == 404
        await until(lambda: queue_empty_now(h), "the work queue is empty")
        await until(lambda: sim_stats(sim)["concurrent"] == 0, "the model server is idle")
        assert sim_stats(sim)["calls"] <= 3 < len(plan_texts(LONG_TEXT, h.settings))


async def test_a_chunk_failing_mid_stream_ends_it_visibly_never_with_silence(sims, harness, gateway):
    sim = sims(latency_s=0.5, slots=64)
    h, gw, client = await start(harness, gateway, sim, max_in_flight=1)
    async with aclosing(client):
        body = {"model": "tts-1", "voice": "alloy", "response_format": "pcm", "stream_format": "sse"}
        async with client.stream("POST", "/v1/audio/speech", json={**body, "input": LONG_TEXT}) as resp:
            lines = resp.aiter_lines()
            first = await anext(lines)
            assert json.loads(first[len("data: "):])["type"] == "speech.audio.delta"
            # From now on the model server refuses every call for good.
            httpx.patch(f"{sim.url}/sim/config", json={"error_rate": 1.0, "error_status": 400}, timeout=10)
            events = [json.loads(line[len("data: "):]) async for line in lines if line.startswith("data: ")]
        assert events[-1]["type"] == "error" and "400" in events[-1]["error"]["message"]
        assert all(e["type"] == "speech.audio.delta" for e in events[:-1])
        # While the first chunk fails, the answer is an ordinary 502 with the reason, before any audio.
        r = await client.post("/v1/audio/speech", json={**body, "stream_format": "audio", "stream": True,
                                                          "input": LONG_TEXT.replace("lighthouse", "tower")})
        assert r.status_code == 502 and "400" in r.json()["detail"]
        # A raw stream that already started is cut: the client sees an incomplete body, not a short file.
        httpx.patch(f"{sim.url}/sim/config", json={"error_rate": 0.0}, timeout=10)
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("POST", "/v1/audio/speech",
                                     json={**body, "stream_format": "audio", "stream": True,
                                           "input": LONG_TEXT.replace("lighthouse", "beacon")}) as resp:
                assert resp.status_code == 200
                pieces = resp.aiter_raw()
                assert await anext(pieces)
                httpx.patch(f"{sim.url}/sim/config", json={"error_rate": 1.0}, timeout=10)
                async for _ in pieces:
                    pass
        assert "tts_gateway_streams_cut_total 2.0" in (await client.get("/metrics")).text


async def test_malformed_long_requests_get_a_4xx_with_a_message(sims, harness, gateway):
    sim = sims()
    h, gw, client = await start(harness, gateway, sim, gateway_max_text_chars=2000)
    async with aclosing(client):
        speech = {"model": "tts-1", "voice": "alloy", "input": LONG_TEXT}
        r = await client.post("/v1/audio/speech", json={**speech, "response_format": "flac", "stream": True})
        assert r.status_code == 400 and "cannot be streamed" in r.json()["detail"]
        r = await client.post("/v1/audio/speech", json={**speech, "stream_format": "json"})
        assert r.status_code == 400 and "stream_format" in r.json()["detail"]
        r = await client.post("/generate", json={"text": "   ", "stream": True})
        assert r.status_code == 400 and "empty" in r.json()["detail"]
        r = await client.post("/generate", json={"text": LONG_TEXT * 2, "stream": True})
        assert r.status_code == 413 and "POST /jobs" in r.json()["detail"]
        assert sim_stats(sim)["calls"] == 0
