"""The Piper engine over real HTTP on loopback: the Higgs protocol subset, audio, pool, CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import wave

import httpx
import numpy as np
import pytest

from pipeline.stack.ports import free_port
from pipeline.engines.piper import PiperConfig
from pipeline.engines.piper_http import PiperServer
from pipeline.engines.sim.config import SimConfig
from pipeline.engines.sim.server import SimServer
from tests.conftest import leave_mid_body
from tests.waiting import until_sync

MODEL = "higgs-audio-v2"
TEN_WORDS = "The quick brown fox jumps over the lazy sleeping dog."


@pytest.fixture(scope="module")
def piper():
    with PiperServer(config=PiperConfig(threads=2)) as server:
        yield server
    server.engine.close()


@pytest.fixture
def client(piper):
    with httpx.Client(base_url=piper.url, trust_env=False, timeout=60.0) as c:
        yield c


def chat_body(text: str, reference_b64: str | None = None, **extra) -> dict:
    messages = [{"role": "system", "content": "Generate audio following instruction."}]
    if reference_b64 is not None:
        messages += [
            {"role": "user", "content": "This is how I sound."},
            {"role": "assistant", "content": [{"type": "input_audio", "input_audio": {"data": reference_b64, "format": "wav"}}]},
        ]
    messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
    return {"model": MODEL, "messages": messages, **extra}


def speech_body(text: str, **extra) -> dict:
    return {"model": MODEL, "input": text, "voice": "joe", **extra}


def read_wav(data: bytes) -> tuple[int, int, int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        frames = w.readframes(w.getnframes())
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), np.frombuffer(frames, "<i2")


def chat_wav(response: httpx.Response) -> bytes:
    return base64.b64decode(response.json()["choices"][0]["message"]["audio"]["data"])


def test_health_models_voices(client):
    assert client.get("/health").status_code == 200
    (model,) = client.get("/v1/models").json()["data"]
    assert model["id"] == MODEL and model["owned_by"] == "vllm" and model["max_model_len"] == 8192
    voices = client.get("/v1/audio/voices").json()
    assert voices[0] == "joe" and "belinda" in voices


def test_error_answers_match_the_stand_in(client):
    """Same statuses and bodies as the stand-in (which copies the real server) for the same requests."""
    bad = [
        ("/v1/audio/speech", {"content": b"hello", "headers": {"content-type": "text/plain"}}),
        ("/v1/audio/speech", {"json": speech_body("hi", model="nope")}),
        ("/v1/chat/completions", {"json": chat_body("hi", model="nope")}),
        ("/v1/audio/speech", {"json": {"model": MODEL, "input": "no voice"}}),
        ("/v1/chat/completions", {"json": chat_body("hi", temperature=-1)}),
        ("/v1/chat/completions", {"json": chat_body("hi", max_tokens=9000)}),
        ("/v1/audio/speech", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ]
    with SimServer(SimConfig()) as sim, httpx.Client(base_url=sim.url, trust_env=False, timeout=10) as reference:
        for path, kwargs in bad:
            ours, theirs = client.post(path, **kwargs), reference.post(path, **kwargs)
            assert ours.status_code == theirs.status_code, (path, ours.text, theirs.text)
            assert ours.json() == theirs.json(), path
    statuses = [client.post(path, **kwargs).status_code for path, kwargs in bad]
    assert statuses == [415, 404, 404, 400, 400, 400, 400]


def test_unsupported_requests_are_400(client):
    assert client.post("/v1/audio/speech", json=speech_body("hi", response_format="mp3")).status_code == 400
    assert client.post("/v1/chat/completions", json=chat_body("   ")).status_code == 400


def test_chat_answers_one_wav_at_pipers_rate_with_the_texts_length(client):
    response = client.post("/v1/chat/completions", json=chat_body(TEN_WORDS))
    assert response.status_code == 200
    assert "x-engine-note" not in response.headers
    body = response.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["audio"]["id"].startswith("audio-")
    rate, channels, width, samples = read_wav(chat_wav(response))
    assert (rate, channels, width) == (22050, 1, 2)
    duration_s = samples.size / rate
    assert 2.0 < duration_s < 6.0  # ten words
    assert body["usage"]["completion_tokens"] == math.ceil(duration_s * 25)
    assert np.abs(samples.astype(np.int32)).max() > 10_000  # speech, not silence


def test_a_reference_voice_is_not_cloned_and_says_so(client):
    reference = base64.b64encode(b"RIFF....WAVE").decode()
    response = client.post("/v1/chat/completions", json=chat_body("Hello there.", reference))
    assert response.status_code == 200
    # Unreadable as audio: the voice as it is stands in.
    assert response.headers["x-engine-note"] == "reference-voice-not-cloned, stand-in-voice=joe"
    assert read_wav(chat_wav(response))[3].size > 0


def test_a_preset_voice_it_does_not_have_says_so(client):
    ours = client.post("/v1/audio/speech", json=speech_body("Hello there."))
    higgs = client.post("/v1/audio/speech", json=speech_body("Hello there.", voice="belinda"))  # a variant
    other = client.post("/v1/audio/speech", json=speech_body("Hello there.", voice="nobody"))
    assert ours.status_code == higgs.status_code == other.status_code == 200
    assert "x-engine-note" not in ours.headers and "x-engine-note" not in higgs.headers
    assert other.headers["x-engine-note"] == "preset-voice-not-available"


def test_max_tokens_truncates_at_25_tokens_a_second(client):
    chat = client.post("/v1/chat/completions", json=chat_body(TEN_WORDS, max_tokens=25))
    assert chat.json()["choices"][0]["finish_reason"] == "length"
    rate, _, _, samples = read_wav(chat_wav(chat))
    assert samples.size == rate  # exactly one second
    speech = client.post("/v1/audio/speech", json=speech_body(TEN_WORDS, max_tokens=50, response_format="pcm"))
    assert len(speech.content) == 2 * 48_000  # two seconds at 24 kHz


def streamed(client: httpx.Client, body: dict) -> list:
    """The `data:` payloads of a streamed chat answer: parsed JSON, then the string "[DONE]"."""
    with client.stream("POST", "/v1/chat/completions", json=body) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        payloads = [line[len("data: "):] for line in answer.iter_lines() if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def test_streamed_chat_sends_24_khz_pcm_deltas_one_per_sentence(client):
    text = "The first sentence is short. The second one follows it. And a third ends the text."
    events = streamed(client, chat_body(text, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {e["object"] for e in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [base64.b64decode(e["choices"][0]["delta"]["audio"]["data"])
              for e in chunks if e["choices"] and "audio" in e["choices"][0]["delta"]]
    assert len(deltas) == 3 and all(deltas)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"] == []
    pcm = np.frombuffer(b"".join(deltas), "<i2")
    # The same audio as the plain answer (temperature 0: no noise), at 24 kHz instead of 22050 Hz.
    rate, _, _, plain = read_wav(chat_wav(client.post("/v1/chat/completions", json=chat_body(text, temperature=0))))
    assert pcm.size / 24000 == pytest.approx(plain.size / rate, abs=0.005)
    assert chunks[-1]["usage"]["completion_tokens"] == math.ceil(plain.size / rate * 25)
    cut = streamed(client, chat_body(text, stream=True, max_tokens=25))
    assert cut[-1] == "[DONE]" and cut[-2]["choices"][0]["finish_reason"] == "length"
    assert sum(len(base64.b64decode(e["choices"][0]["delta"]["audio"]["data"]))
               for e in cut[:-1] if "audio" in e["choices"][0]["delta"]) == pytest.approx(2 * 24000, abs=6)  # 1 s


def test_speech_pcm_and_wav_are_the_same_24_khz_audio(client):
    # temperature 0 turns Piper's noise off: the same text gives the same samples.
    pcm = client.post("/v1/audio/speech", json=speech_body(TEN_WORDS, temperature=0, response_format="pcm"))
    wav = client.post("/v1/audio/speech", json=speech_body(TEN_WORDS, temperature=0, response_format="wav"))
    assert pcm.headers["content-type"] == "audio/pcm" and wav.headers["content-type"] == "audio/wav"
    rate, channels, _, samples = read_wav(wav.content)
    assert (rate, channels) == (24000, 1)
    assert len(wav.content) == 44 + samples.size * 2  # one file whose header tells the truth
    assert np.array_equal(np.frombuffer(pcm.content, "<i2"), samples)
    # With noise (the default temperature) two takes differ.
    takes = [client.post("/v1/audio/speech", json=speech_body(TEN_WORDS)).content for _ in range(2)]
    assert takes[0] != takes[1]


def test_a_caller_leaving_before_its_body_arrives_leaves_no_traceback(piper, client):
    # The worker cancels a call when the cache answers first, sometimes while its body is on the way.
    records: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.ERROR)
    catcher.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(catcher)
    try:
        leave_mid_body(piper.url, "/v1/audio/speech")
        # The server has read the cut-short request (and logged any traceback) by the time it counts
        # a client gone; the next call then shows it still serves.
        until_sync(lambda: piper.engine.clients_gone >= 1, "the server sees the caller leave")
        assert client.post("/v1/audio/speech", json=speech_body("Still here.")).status_code == 200
    finally:
        logger.removeHandler(catcher)
    assert [r.getMessage() for r in records] == []


async def test_concurrent_calls_queue_for_a_pool_of_the_configured_size(piper):
    piper.engine.peak_running = 0
    async with httpx.AsyncClient(base_url=piper.url, trust_env=False, timeout=120) as client:
        responses = await asyncio.gather(*(
            client.post("/v1/audio/speech", json=speech_body(f"Request number {i} is waiting its turn."))
            for i in range(6)
        ))
    assert [r.status_code for r in responses] == [200] * 6
    assert piper.engine.peak_running == 2  # threads=2: the others queued
    assert piper.engine.running == 0


def test_cli_engine_kind_piper_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "engine", "--kind", "piper", "--port", str(port), "--threads", "1",
         "--model-name", "local-voice"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert proc.poll() is None, proc.stdout.read()
            return httpx.get(f"{url}/health", timeout=1).status_code == 200

        until_sync(healthy, "the Piper engine answers /health", every_s=0.1, retry_on=(httpx.HTTPError,))
        assert httpx.get(f"{url}/v1/models", timeout=5).json()["data"][0]["id"] == "local-voice"
        answer = httpx.post(f"{url}/v1/audio/speech", timeout=60,
                            json={"model": "local-voice", "input": "Hi.", "voice": "joe", "response_format": "wav"})
        assert answer.status_code == 200 and read_wav(answer.content)[0] == 24000
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read()
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGTERM).
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output and "ERROR" not in output, output
