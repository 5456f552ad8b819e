"""The gateway's HTTP contract end to end: gateway -> NATS -> synth worker -> stand-in -> S3 -> gateway.

The original README's examples are sent as written; the `openai` SDK writes files through
`/v1/audio/speech`; what reaches the model server is read off the wire by a recording proxy.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from contextlib import aclosing

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from pipeline.audio.checks import decode_wav, encode_wav
from pipeline.contracts.messages import DEFAULT_REFERENCE_TEXT, DEFAULT_SCENE_PROMPT
from pipeline.store import sha256_hex
from pipeline.contracts.subjects import REFERENCE_KEY
from tests.conftest import sim_stats
from tests.gateway_fixtures import gateway, recording_proxy, wait_for_health  # noqa: F401 (fixtures)
from tests.waiting import queue_empty, until

# The original README, verbatim.
README_GENERATE_BODY = '{"text": "Hello, this is a test of the high throughput system."}'
README_BATCH_BODY = """[
  {"text": "First sentence."},
  {"text": "Second sentence."},
  {"text": "Third sentence."}
]"""
JSON = {"Content-Type": "application/json"}


async def start(harness, gateway, sim_url: str, **gateway_settings):
    h = await harness(backend_urls=[sim_url], heartbeat_s=0.2)
    await h.start_worker()
    gw = gateway(h.settings.model_copy(update=gateway_settings))
    client = httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False)
    await wait_for_health(client, "ok")
    return h, gw, client


async def settled_stats(client: httpx.AsyncClient) -> dict:
    """/stats once the queues are empty: answers reach the client before the worker has stored
    them and acked their messages, so the queues empty a moment after the last answer."""
    async def settled() -> dict | None:
        stats = (await client.get("/stats")).json()
        return stats if stats["queue_depth"] == {"interactive": 0, "bulk": 0} else None

    return await until(settled, "the gateway's queues are empty")


def wav_seconds(data: bytes) -> float:
    samples, rate = decode_wav(data)
    assert rate == 24000
    return samples.shape[0] / rate


def tone_wav(seconds: float, rate_hz: int = 24000) -> bytes:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return encode_wav((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16), rate_hz)


async def test_readme_examples_as_written(sims, harness, gateway):
    sim = sims()
    h, gw, client = await start(harness, gateway, sim.url)
    async with aclosing(client):
        # curl http://localhost:8888/health
        health = (await client.get("/health")).json()
        assert health["status"] == "ok" and health["vllm_healthy"] is True
        assert health["vllm_backend"] == sim.url and health["model"] == "higgs-audio-v2"
        assert set(health["stats"]) == {"total_requests", "successful_requests", "failed_requests",
                                        "concurrent_requests", "peak_concurrent"}

        # curl -X POST http://localhost:8888/generate -H "Content-Type: application/json" -d '{...}'
        first = await client.post("/generate", content=README_GENERATE_BODY, headers=JSON)
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "audio/wav"
        assert re.fullmatch(r"\d+\.\d\d", first.headers["X-Generation-Time"])
        assert first.headers["X-Concurrent-Requests"] == "1"
        assert first.headers["X-Cache"] == "miss"
        assert re.fullmatch(r"[0-9a-f]{32}", first.headers["X-Request-Id"])
        assert wav_seconds(first.content) == pytest.approx(10 / 2.5, rel=0.15)

        # The answer came from the worker's reply, sent before storing: once it is stored (acked),
        # the same request is a cache hit.
        await until(lambda: queue_empty(h), "the first answer is stored")
        again = await client.post("/generate", content=README_GENERATE_BODY,
                                  headers={**JSON, "X-Request-Id": "client-id-1"})
        assert again.status_code == 200 and again.headers["X-Cache"] == "hit"
        assert again.headers["X-Request-Id"] == "client-id-1"
        assert again.content == first.content

        batch = await client.post("/generate/batch", content=README_BATCH_BODY, headers=JSON)
        assert batch.status_code == 200, batch.text
        body = batch.json()
        assert (body["total"], body["successful"], body["failed"]) == (3, 3, 0)
        assert [r["index"] for r in body["results"]] == [0, 1, 2]
        for result in body["results"]:
            assert result["success"] is True and isinstance(result["generation_time"], float)
            assert wav_seconds(base64.b64decode(result["audio_base64"])) > 0.3

        stats = await settled_stats(client)
    assert stats["total_requests"] == stats["successful_requests"] == 5
    assert stats["failed_requests"] == 0 and stats["concurrent_requests"] == 0
    assert stats["peak_concurrent"] >= 3 and stats["cache_hits"] == 1
    assert stats["avg_generation_time"] == pytest.approx(stats["total_generation_time"] / 5, abs=0.01)
    assert stats["queue_depth"] == {"interactive": 0, "bulk": 0} and stats["workers_alive"] == 1
    # The repeat came from the store (X-Cache: hit, same bytes). Its model call starts together with
    # the cache lookup (someone is waiting) and is cancelled when the lookup hits, unless this
    # instant stand-in answered first: one extra call at most.
    # A cancelled call is counted when the stand-in sees its client leave, a moment later.
    model = await until(lambda: (s := sim_stats(sim))["concurrent"] == 0 and s, "the stand-in has no call open")
    assert model["calls"] in (4, 5) and model["completed"] + model["aborted"] == model["calls"]
    assert model["errors"] == 0


async def test_what_reaches_the_model_server(sims, harness, gateway, recording_proxy):
    sim = sims()
    proxy, proxy_url = recording_proxy(sim.url)
    h, gw, client = await start(harness, gateway, proxy_url)
    reference = tone_wav(1.5)
    async with aclosing(client):
        plain = await client.post("/generate", json={
            "text": "Sampling settings must reach the model.", "temperature": 0.7, "top_p": 0.8,
            "top_k": 7, "max_tokens": 512,
        })
        cloned = [await client.post("/generate", json={
            "text": f"A cloned voice, take {i}.", "reference_audio_base64": base64.b64encode(reference).decode(),
        }) for i in range(2)]
        custom = await client.post("/generate", json={"text": "A scene of my own.", "system_prompt": "Stormy night.",
                                                      "reference_audio_base64": base64.b64encode(reference).decode(),
                                                      "reference_text": "What the reference says."})
    assert [r.status_code for r in (plain, *cloned, custom)] == [200] * 4
    chats = [body for path, body in proxy.posts if path == "/v1/chat/completions"]
    assert len(chats) == 4
    first = chats[0]
    assert first["top_k"] == 7 and "extra_body" not in first  # top-level, unlike the original proxy
    assert (first["temperature"], first["top_p"]) == (0.7, 0.8) and first["max_tokens"] <= 512
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["messages"][0]["content"] == DEFAULT_SCENE_PROMPT
    assert "<|scene_desc_start|>" in DEFAULT_SCENE_PROMPT and "quiet room" in DEFAULT_SCENE_PROMPT
    assert (first["top_p"], chats[1]["top_k"], chats[1]["temperature"]) == (0.8, 50, 1.0)  # defaults

    stored_key = REFERENCE_KEY.format(digest=sha256_hex(reference))
    assert await h.store.list_keys("references/") == [stored_key]  # uploaded once for three requests
    messages = chats[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == DEFAULT_REFERENCE_TEXT == "Please speak naturally."
    assert base64.b64decode(messages[2]["content"][0]["input_audio"]["data"]) == reference
    assert messages[3]["content"] == "A cloned voice, take zero."  # the spoken form (docs/spoken.md)
    custom_messages = chats[3]["messages"]
    assert custom_messages[0]["content"] == "Stormy night."
    assert custom_messages[1]["content"] == "What the reference says."


async def test_voices_presets_and_openai_names(sims, harness, gateway):
    sim = sims()
    h, gw, client = await start(harness, gateway, sim.url)
    await h.store.put("voices/narrator.json", json.dumps({"transcript": "Once upon a time."}).encode())
    async with aclosing(client):
        listed = (await client.get("/v1/audio/voices")).json()["voices"]
        assert "belinda" in listed and "narrator" in listed and "alloy" not in listed
        named = await client.post("/generate", json={"text": "A preset voice speaks.", "voice": "belinda"})
        assert named.status_code == 200, named.text
        unknown = await client.post("/generate", json={"text": "Nobody speaks.", "voice": "nobody"})
        assert unknown.status_code == 404
        assert "nobody" in unknown.json()["detail"] and {"belinda", "narrator"} <= set(unknown.json()["voices"])
        # OpenAI names are not presets: a 404 on /generate, the default voice on the OpenAI route.
        alloy = await client.post("/generate", json={"text": "Alloy is not ours.", "voice": "alloy"})
        assert alloy.status_code == 404
        speech = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Alloy maps to default.",
                                                               "voice": "alloy", "response_format": "wav"})
        assert speech.status_code == 200, speech.text
        both = await client.post("/generate", json={"text": "Two voices.", "voice": "belinda",
                                                    "reference_audio_base64": base64.b64encode(tone_wav(1)).decode()})
        assert both.status_code == 400 and "not both" in both.json()["detail"]
    paths = sim_stats(sim)["calls_by_path"]
    assert paths.get("/v1/audio/speech") == 1 and paths.get("/v1/chat/completions") == 1


async def test_openai_sdk_writes_files_and_formats(sims, harness, gateway, tmp_path):
    sim = sims()
    h, gw, client = await start(harness, gateway, sim.url, gateway_api_key="sdk-key")
    sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="sdk-key", max_retries=0)
    text = "The official client writes this file."
    mp3_path, wav_path = tmp_path / "speech.mp3", tmp_path / "speech.wav"
    # The SDK's defaults: voice alloy, response_format mp3.
    answer = await sdk.audio.speech.create(model="tts-1", voice="alloy", input=text)
    answer.write_to_file(mp3_path)
    async with sdk.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="wav", speed=1.0,
    ) as streamed:
        await streamed.stream_to_file(wav_path)
    wav_samples, rate = sf.read(wav_path, dtype="int16")
    mp3_samples, mp3_rate = sf.read(mp3_path, dtype="int16")
    assert rate == mp3_rate == 24000 and len(wav_samples) / rate == pytest.approx(7 / 2.5, rel=0.15)
    assert abs(len(mp3_samples) - len(wav_samples)) < 0.1 * rate  # MP3 pads a frame or two

    auth = {"Authorization": "Bearer sdk-key"}
    await until(lambda: queue_empty(h), "the streamed answer is stored")
    async with aclosing(client):
        for fmt, media_type in (("flac", "audio/flac"), ("pcm", "audio/pcm")):
            r = await client.post("/v1/audio/speech", headers=auth,
                                  json={"model": "x", "input": text, "voice": "alloy", "response_format": fmt})
            assert r.status_code == 200 and r.headers["content-type"] == media_type
            assert r.headers["X-Cache"] == "hit"
            if fmt == "flac":
                assert np.array_equal(sf.read(io.BytesIO(r.content), dtype="int16")[0], wav_samples)
            else:
                assert np.array_equal(np.frombuffer(r.content, dtype="<i2"), wav_samples)
        opus = await client.post("/v1/audio/speech", headers=auth,
                                 json={"model": "x", "input": text, "voice": "alloy", "response_format": "opus"})
        assert opus.status_code == 400 and "wav, flac, mp3, pcm" in opus.json()["detail"]
        # Auth: the token is required everywhere but the probes.
        assert (await client.post("/generate", json={"text": "No token."})).status_code == 401
        wrong = await client.post("/generate", json={"text": "Wrong token."}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        assert (await client.get("/stats")).status_code == 401
        for open_path in ("/health", "/ready", "/metrics"):
            assert (await client.get(open_path)).status_code == 200, open_path
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="wrong", max_retries=0).audio.speech.create(
            model="tts-1", voice="alloy", input=text)


async def test_batch_item_failure_does_not_sink_the_others_and_metrics(sims, harness, gateway):
    sim = sims()
    h, gw, client = await start(harness, gateway, sim.url)
    async with aclosing(client):
        batch = (await client.post("/generate/batch", json=[
            {"text": "This one works."}, {"text": "   "}, {"text": "So does this.", "voice": "nobody"},
            {"text": "And this one."},
        ])).json()
        await settled_stats(client)
        metrics = (await client.get("/metrics")).text
        docs = await client.get("/docs")
    assert (batch["total"], batch["successful"], batch["failed"]) == (4, 2, 2)
    assert [r["success"] for r in batch["results"]] == [True, False, False, True]
    assert batch["results"][1] == {"index": 1, "success": False, "error": "Text cannot be empty"}
    assert "Unknown voice 'nobody'" in batch["results"][2]["error"]
    assert 'tts_gateway_requests_total{outcome="ok",route="/generate/batch"} 1.0' in metrics
    assert 'tts_gateway_syntheses_total{outcome="done"} 2.0' in metrics
    assert 'tts_gateway_audio_source_total{source="reply"} 2.0' in metrics  # fresh and small: straight from the worker
    assert 'tts_gateway_request_duration_seconds_count{route="/generate/batch"} 1.0' in metrics
    assert 'tts_queue_depth{consumer="interactive"} 0.0' in metrics
    assert "tts_workers_alive 1.0" in metrics
    assert f'tts_backend_healthy{{backend="{sim.url}"}} 1.0' in metrics
    assert 'tts_worker_chunks{result="synthesized",worker="test-worker-0"}' in metrics
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
