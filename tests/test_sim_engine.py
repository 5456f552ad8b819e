"""The sim engine over real HTTP on loopback: protocol, audio, capacity and faults."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import struct
import threading
import time
import wave
from contextlib import contextmanager

import httpx
import numpy as np
import pytest

from pipeline.engines.sim.config import SimConfig
from pipeline.engines.sim.server import SimServer, add_arguments, config_from_args
from tests.conftest import leave_mid_body
from tests.waiting import until_sync

MODEL = "higgs-audio-v2"
TEN_WORDS = "the quick brown fox jumps over the lazy sleeping dog"  # 4.0 s at 2.5 words/s
TEN_WORDS_LESS_ONE = "quick brown fox jumps over the lazy sleeping dog"


@contextmanager
def sim_client(**knobs):
    with SimServer(SimConfig(**knobs)) as sim:
        with httpx.Client(base_url=sim.url, trust_env=False, timeout=10.0) as client:
            yield sim, client


def chat_body(text: str, **extra) -> dict:
    messages = [
        {"role": "system", "content": "Generate audio following instruction."},
        {"role": "user", "content": [{"type": "text", "text": text}]},
    ]
    return {"model": MODEL, "messages": messages, **extra}


def speech_body(text: str, **extra) -> dict:
    return {"model": MODEL, "input": text, "voice": "belinda", **extra}


def chat(client: httpx.Client, text: str, **extra) -> httpx.Response:
    return client.post("/v1/chat/completions", json=chat_body(text, **extra))


def speech(client: httpx.Client, text: str, **extra) -> httpx.Response:
    return client.post("/v1/audio/speech", json=speech_body(text, **extra))


def wav_of(answer: dict) -> bytes:
    return base64.b64decode(answer["choices"][0]["message"]["audio"]["data"])


def read_wav(data: bytes) -> tuple[int, int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return w.getframerate(), w.getnchannels(), samples


def split_glued(data: bytes) -> list[tuple[int, bytes]]:
    """(claimed data bytes, actual data bytes) for each 44-byte-header WAV in a row."""
    files, pos = [], 0
    while pos < len(data):
        assert data[pos:pos + 4] == b"RIFF" and data[pos + 36:pos + 40] == b"data"
        (size,) = struct.unpack_from("<I", data, pos + 40)
        files.append((size, data[pos + 44:pos + 44 + size]))
        pos += 44 + size
    return files


def test_health_models_voices():
    with sim_client() as (_, client):
        health = client.get("/health")
        assert health.status_code == 200 and health.content == b""
        models = client.get("/v1/models").json()
        assert models["object"] == "list"
        card = models["data"][0]
        assert card["id"] == MODEL and card["owned_by"] == "vllm" and card["max_model_len"] == 8192
        assert card["parent"] is None and card["permission"] == []
        assert "belinda" in client.get("/v1/audio/voices").json()


def test_post_without_json_content_type_is_415():
    with sim_client() as (_, client):
        for path in ("/v1/chat/completions", "/v1/audio/speech"):
            answer = client.post(path, content=b"{}", headers={"content-type": "text/plain"})
            assert answer.status_code == 415
            assert answer.json() == {
                "detail": "Unsupported Media Type: Only 'application/json' is allowed"
            }


def test_unknown_model_is_404_and_bad_body_is_400_in_vllm_shape():
    with sim_client() as (_, client):
        answer = chat(client, "hi", model="nope")
        assert answer.status_code == 404
        assert answer.json() == {
            "object": "error", "message": "The model `nope` does not exist.",
            "type": "NotFoundError", "param": None, "code": 404,
        }
        missing = client.post("/v1/audio/speech", json={"model": MODEL, "voice": "belinda"})
        assert missing.status_code == 400 and missing.json()["type"] == "BadRequestError"
        too_long = chat(client, "hi", max_tokens=9000)
        assert too_long.status_code == 400
        assert too_long.json()["message"].startswith(
            "This model's maximum context length is 8192 tokens. However, you requested 9007 tokens "
            "(7 in the messages, 9000 in the completion)"
        )


def test_chat_returns_wav_whose_length_follows_the_text():
    with sim_client() as (_, client):
        answer = chat(client, TEN_WORDS, seed=1).json()
        choice = answer["choices"][0]
        assert answer["object"] == "chat.completion" and choice["finish_reason"] == "stop"
        assert choice["message"]["audio"]["id"].startswith("audio-")
        rate_hz, channels, samples = read_wav(wav_of(answer))
        assert (rate_hz, channels) == (24_000, 1)
        assert len(samples) / rate_hz == pytest.approx(10 / 2.5, rel=0.03)
        assert answer["usage"]["completion_tokens"] == 100
        peak_dbfs = 20 * np.log10(np.abs(samples.astype(np.int32)).max() / 32768)
        assert -7.0 < peak_dbfs < -5.0
        # Gaps between words: a good share of 10 ms frames is near silence.
        frames = samples[: len(samples) // 240 * 240].reshape(-1, 240) / 32768.0
        frames_rms = np.sqrt((frames**2).mean(axis=1))
        assert 0.05 < np.mean(frames_rms < 1e-3) < 0.5


def test_chat_audio_is_deterministic_per_seed():
    with sim_client() as (_, client):
        def audio(seed: int) -> bytes:
            return wav_of(chat(client, TEN_WORDS, seed=seed).json())

        assert audio(7) == audio(7)
        assert audio(7) != audio(8)


def test_max_tokens_truncates_with_finish_reason_length():
    with sim_client() as (_, client):
        answer = chat(client, TEN_WORDS, max_tokens=50).json()
        assert answer["choices"][0]["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 50
        _, _, samples = read_wav(wav_of(answer))
        assert len(samples) == 2 * 24_000


def test_speech_pcm_is_raw_int16_labelled_mpeg():
    with sim_client() as (_, client):
        answer = speech(client, "one two three four five")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "audio/mpeg"
        assert "content-length" not in answer.headers
        assert len(answer.content) == 2 * 24_000 * 2  # 2.0 s of int16, no header
        assert answer.content[:4] != b"RIFF"


def test_speech_wav_is_glued_files_whose_data_equals_pcm():
    with sim_client() as (_, client):
        pcm = speech(client, TEN_WORDS).content
        glued = speech(client, TEN_WORDS, response_format="wav").content
        with wave.open(io.BytesIO(glued)) as first:
            assert first.getnframes() == 16_320  # a player trusting it stops at 0.68 s
        files = split_glued(glued)
        assert [len(d) // 2 for _, d in files] == [16_320, 24_000, 24_000, 24_000, 7_680]
        assert b"".join(d for _, d in files) == pcm
        # Unknown voices fall back to belinda, like the real server.
        assert speech(client, TEN_WORDS, voice="alloy").content == pcm
        assert speech(client, TEN_WORDS, voice="vex").content != pcm
        assert speech(client, "hi", response_format="mp3").status_code == 400


async def test_slots_and_latency_bound_concurrency():
    with SimServer(SimConfig(slots=4, latency_s=0.3)) as sim:
        async with httpx.AsyncClient(base_url=sim.url, trust_env=False, timeout=10.0) as client:
            started = time.monotonic()
            answers = await asyncio.gather(*(
                client.post("/v1/chat/completions", json=chat_body(f"call number {i}"))
                for i in range(12)
            ))
            elapsed_s = time.monotonic() - started
        stats = sim.stats()
    assert all(a.status_code == 200 for a in answers)
    # Three waves of 0.3 s at least (a lower bound: a busy machine only makes it longer; speed
    # itself is for the benchmarks). That the waves ran four at a time shows in peak_active.
    assert elapsed_s > 0.85
    assert stats["peak_active"] == 4
    assert stats["peak_concurrent"] == 12  # all twelve were inside handlers, eight queued
    assert stats["calls"] == stats["completed"] == 12 and stats["active"] == stats["queued"] == 0


async def test_tokens_per_s_follows_the_batch_step_model():
    with SimServer(SimConfig(slots=8, tokens_per_s=250)) as sim:
        async with httpx.AsyncClient(base_url=sim.url, trust_env=False, timeout=10.0) as client:
            await client.post("/v1/chat/completions", json=chat_body("warm up"))
            started = time.monotonic()
            answers = await asyncio.gather(*(
                client.post("/v1/chat/completions", json=chat_body(f"{i} {TEN_WORDS_LESS_ONE}"))
                for i in range(8)
            ))
            elapsed_s = time.monotonic() - started
        stats = sim.stats()
    assert all(a.json()["usage"]["completion_tokens"] == 100 for a in answers)
    expected_s = 100 / 250 * (1 + 0.02 * 7)
    assert elapsed_s > 0.9 * expected_s  # one batch step of eight, not faster (a load-proof lower bound)
    assert stats["peak_active"] == 8  # ... and in one batch, not one after another
    assert stats["ideal_audio_s_per_s"] == pytest.approx(8 * 250 / (1 + 0.02 * 7) / 25)


def test_fail_first_then_success_for_the_same_text():
    with sim_client(fail_first=2) as (sim, client):
        statuses = [chat(client, "retry me").status_code for _ in range(3)]
        assert statuses == [503, 503, 200]
        assert chat(client, "other").status_code == 503
        stats = sim.stats()
        assert stats["errors"] == 3 and stats["completed"] == 1
        assert sorted(stats["calls_by_text"].values()) == [1, 3]


def test_error_rate_one_fails_every_call_with_error_status():
    with sim_client(error_rate=1.0, error_status=429) as (_, client):
        answers = [speech(client, f"text {i}") for i in range(3)]
        assert [a.status_code for a in answers] == [429] * 3
        assert answers[0].json()["object"] == "error" and answers[0].json()["code"] == 429


def test_empty_audio_fault_answers_without_audio():
    with sim_client(empty_audio_rate=1.0) as (_, client):
        answer = chat(client, TEN_WORDS).json()
        assert answer["choices"][0]["message"]["audio"] is None


def test_runaway_pads_silence_up_to_max_tokens():
    with sim_client(runaway_rate=1.0) as (_, client):
        answer = chat(client, "one two three four five", max_tokens=250).json()
        assert answer["choices"][0]["finish_reason"] == "length"
        _, _, samples = read_wav(wav_of(answer))
        assert len(samples) == 10 * 24_000
        assert not samples[3 * 24_000:].any()  # speech ends at 2 s, then silence


def test_truncate_fault_speaks_until_max_tokens_cuts_it():
    with sim_client(truncate_rate=1.0) as (_, client):
        answer = chat(client, "one two three four five", max_tokens=250).json()
        assert answer["choices"][0]["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 250
        _, _, samples = read_wav(wav_of(answer))
        assert len(samples) == 10 * 24_000
        assert np.abs(samples[-24_000:].astype(np.int32)).max() > 1000  # still speaking at the cut
        pcm = speech(client, "one two three four five", max_tokens=250).content
        assert len(pcm) == 2 * 10 * 24_000


def test_glued_and_short_header_faults_on_chat():
    with sim_client(glued_wav=True) as (_, client):
        data = wav_of(chat(client, TEN_WORDS).json())
        assert len(split_glued(data)) == 5 and split_glued(data)[0][0] == 2 * 16_320
    with sim_client(short_header_rate=1.0) as (_, client):
        data = wav_of(chat(client, TEN_WORDS).json())
        assert struct.unpack_from("<I", data, 40)[0] == 2 * 16_320
        assert len(data) == 44 + 2 * 4 * 24_000  # all the audio is still there


def sse_events(lines) -> list:
    """The `data:` payloads of an SSE stream: parsed JSON, or the string "[DONE]"."""
    events = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def streamed_pcm(events: list) -> bytes:
    return b"".join(base64.b64decode(e["choices"][0]["delta"]["audio"]["data"])
                    for e in events[:-1] if e["choices"] and "audio" in e["choices"][0]["delta"])


def test_streamed_chat_sends_pcm_deltas_that_join_to_the_plain_answer():
    with sim_client() as (sim, client):
        plain = chat(client, TEN_WORDS, seed=7, audio={"format": "pcm16"}).json()
        with client.stream("POST", "/v1/chat/completions", json=chat_body(
                TEN_WORDS, seed=7, stream=True, stream_options={"include_usage": True})) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            events = sse_events(answer.iter_lines())
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert {e["object"] for e in chunks} == {"chat.completion.chunk"} and len({e["id"] for e in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        deltas = [e for e in chunks if e["choices"] and "audio" in e["choices"][0]["delta"]]
        assert len(deltas) == 5  # the real server's schedule: 0.68 s, then 1 s pieces, then the rest
        assert streamed_pcm(events) == base64.b64decode(plain["choices"][0]["message"]["audio"]["data"])
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
        # Cut by max_tokens, as a plain answer is; without include_usage no usage chunk.
        with client.stream("POST", "/v1/chat/completions", json=chat_body(TEN_WORDS, stream=True, max_tokens=50)) as cut:
            events = sse_events(cut.iter_lines())
        assert events[-2]["choices"][0]["finish_reason"] == "length" and "usage" not in events[-2]
        assert len(streamed_pcm(events)) == 2 * 50 * 960
        # Counted once the server has sent the end of the body, which may follow [DONE] by a moment.
        stats = until_sync(lambda: (s := sim.stats())["completed"] == 3 and s, "the three calls are counted")
        assert stats["calls"] == 3 and stats["aborted"] == stats["errors"] == 0
        assert stats["calls_by_path"] == {"/v1/chat/completions": 3}
        assert stats["audio_tokens_total"] == 2 * 100 + 50


def test_a_refused_streamed_call_is_an_error_status_not_a_stream():
    with sim_client(fail_first=1) as (sim, client):
        refused = chat(client, TEN_WORDS, stream=True)
        assert refused.status_code == 503 and refused.json()["object"] == "error"
        until_sync(lambda: sim.stats()["errors"] == 1, "the refused call is counted as an error")


def test_a_client_leaving_mid_stream_is_an_abort_and_frees_the_slot():
    long_text = " ".join([TEN_WORDS] * 5)  # 20 s of audio: 20 s of generation at 25 tokens/s
    with sim_client(tokens_per_s=25, slots=1) as (sim, client):
        with client.stream("POST", "/v1/chat/completions", json=chat_body(long_text, stream=True)) as answer:
            lines = answer.iter_lines()
            while '"audio"' not in next(lines):
                pass
            # The first delta came while the rest is still being generated, in its slot.
            stats = sim.stats()
            assert (stats["active"], stats["completed"], stats["aborted"]) == (1, 0, 0)
        # Leaving the block closes the connection mid-stream.
        stats = until_sync(lambda: (s := sim.stats())["aborted"] and s, "the stand-in sees the client leave")
        assert (stats["calls"], stats["aborted"], stats["completed"], stats["active"]) == (1, 1, 0, 0)
        assert chat(client, "next").status_code == 200  # the slot is free again


def test_disconnected_client_frees_its_slot():
    with sim_client(slots=1, hang_rate=1.0, hang_s=3600) as (sim, client):
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=chat_body("stuck"), timeout=0.3)
        assert client.patch("/sim/config", json={"hang_rate": 0.0}).status_code == 200
        assert chat(client, "next").status_code == 200
        assert sim.stats()["aborted"] == 1


def test_client_leaving_before_its_body_arrives_is_an_abort_not_an_error():
    # A caller that cancels while still sending its body (the worker cancels its model call when
    # the cache answers first) must count as aborted, like one that leaves while the call generates.
    with sim_client() as (sim, _):
        leave_mid_body(sim.url, "/v1/audio/speech")
        stats = until_sync(lambda: (s := sim.stats())["aborted"] + s["errors"] and s, "the call is counted")
        assert (stats["calls"], stats["aborted"], stats["errors"]) == (1, 1, 0)


def test_patch_config_and_reset():
    with sim_client() as (sim, client):
        chat(client, "count me")
        patched = client.patch("/sim/config", json={"slots": 2, "latency_s": 0.05})
        assert patched.status_code == 200 and patched.json()["slots"] == 2
        assert client.patch("/sim/config", json={"no_such_knob": 1}).status_code == 400
        assert client.patch("/sim/config", json={"error_rate": 2}).status_code == 400
        assert sim.stats()["calls"] == 1
        client.post("/sim/reset")
        stats = sim.stats()
        assert stats["calls"] == 0 and stats["calls_by_text"] == {}
        assert stats["config"]["slots"] == 2  # reset keeps the config


def test_stop_leaves_no_thread_even_with_a_hung_call():
    before = set(threading.enumerate())
    sim = SimServer(SimConfig(hang_rate=1.0)).start()
    hung_status: list[int] = []
    hung = threading.Thread(target=_post, args=(f"{sim.url}/v1/chat/completions", hung_status))
    hung.start()
    until_sync(lambda: sim.stats()["concurrent"] == 1, "the hung call reaches the stand-in")
    sim.stop()
    hung.join(60.0)
    assert set(threading.enumerate()) <= before
    assert hung_status == [503]  # the hung call is answered 503, not waited for (it would never end)


def _post(url: str, statuses: list[int]) -> None:
    answer = httpx.post(url, json=chat_body("hang"), timeout=30.0, trust_env=False)
    statuses.append(answer.status_code)


def test_cli_flags_build_a_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--slots", "4", "--latency-s", "0.5", "--glued-wav", "--voices", "a,b", "--port", "9"]
    )
    config = config_from_args(args)
    assert (config.slots, config.latency_s, config.glued_wav) == (4, 0.5, True)
    assert config.voices == ("a", "b") and config.tokens_per_s == 0
    assert (args.host, args.port) == ("127.0.0.1", 9)
