"""Limits and bad input: each answered with the right status and a `detail` saying why, never a 500.

One gateway with small limits serves the module (no worker: everything here is refused before the
bus, or waits for an answer that never comes); bus and store outages get gateways of their own.
"""

from __future__ import annotations

import asyncio
import base64
import uuid

import httpx
import numpy as np
import pytest

from http_gateway import create_app
from pipeline.audio.checks import encode_wav
from pipeline.stack.ports import free_port
from pipeline.stack.servers import NatsServer
from pipeline.contracts.settings import Settings
from tests.conftest import BUCKET, leave_mid_body
from tests.gateway_fixtures import ThreadedServer, gateway  # noqa: F401 (fixture)
from tests.waiting import until

MAX_TEXT = 100
MAX_BATCH = 3
MAX_REF_BYTES = 200_000
MAX_REF_S = 2.0
MAX_BODY = 400_000
TIMEOUT_S = 0.5


def stack_settings(stack, **overrides) -> Settings:
    namespace = uuid.uuid4().hex[:10]
    values = dict(
        nats_url=stack.nats.url, s3_endpoint_url=stack.s3.endpoint_url, s3_access_key=stack.s3.access_key,
        s3_secret_key=stack.s3.secret_key, s3_bucket=BUCKET, s3_prefix=namespace, namespace=namespace,
        log_level="warning",
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def limited(stack):
    settings = stack_settings(
        stack, gateway_max_text_chars=MAX_TEXT, gateway_max_batch=MAX_BATCH,
        gateway_max_reference_bytes=MAX_REF_BYTES, gateway_max_reference_s=MAX_REF_S,
        gateway_max_body_bytes=MAX_BODY, gateway_request_timeout_s=TIMEOUT_S,
    )
    server = ThreadedServer(create_app(settings), name="gateway-limits").start()
    yield server.url
    server.stop()


@pytest.fixture
async def client(limited):
    async with httpx.AsyncClient(base_url=limited, timeout=30, trust_env=False) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tone_wav(seconds: float, rate_hz: int) -> bytes:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return encode_wav((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16), rate_hz)


def ref(data_b64: str) -> dict:
    return {"text": "Clone this voice.", "reference_audio_base64": data_b64}


@pytest.mark.parametrize("body,status,says", [
    pytest.param(ref("this is not base64!!"), 400, "not valid base64", id="reference-not-base64"),
    pytest.param(ref(b64(b"plain text, not audio at all")), 400, "not a decodable WAV", id="reference-not-wav"),
    pytest.param(ref(b64(b"RIFF\x10\x00\x00\x00WAVEfmt ")), 400, "not a decodable WAV", id="reference-truncated-wav"),
    pytest.param(ref(b64(tone_wav(0.5, 8000)[:44])), 400, "holds no audio", id="reference-no-samples"),
    pytest.param(ref(b64(tone_wav(4.5, 24000))), 413, f"limit is {MAX_REF_BYTES} bytes", id="reference-too-big"),
    pytest.param(ref(b64(tone_wav(3.0, 8000))), 413, "3.0 s long; the limit is 2 s", id="reference-too-long"),
    pytest.param({"text": "x" * (MAX_TEXT + 1)}, 413, "POST /jobs", id="text-too-long"),
    pytest.param({"text": "Hi.", "voice": "nobody"}, 404, "Unknown voice 'nobody'", id="unknown-voice"),
])
async def test_bad_generate_input(client, body, status, says):
    r = await client.post("/generate", json=body)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


@pytest.mark.parametrize("field,value", [
    ("temperature", 0.09), ("temperature", 1.51), ("top_p", -0.01), ("top_p", 0.0), ("top_p", 1.01),
    ("top_k", 0), ("top_k", 101), ("max_tokens", 255), ("max_tokens", 8193),
])
async def test_out_of_range_sampling_is_422(client, field, value):
    r = await client.post("/generate", json={"text": "Hello.", field: value})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", field]


async def test_blank_text_is_the_original_400(client):
    for text in ("", "   ", "\n\t"):
        r = await client.post("/generate", json={"text": text})
        assert (r.status_code, r.json()) == (400, {"detail": "Text cannot be empty"})


async def test_malformed_and_missing(client):
    r = await client.post("/generate", content=b'{"text": "unterminated', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    assert (await client.post("/generate", json={"temperature": 0.5})).status_code == 422
    assert (await client.post("/generate/batch", json={"text": "not a list"})).status_code == 422
    assert (await client.post("/v1/audio/speech", json={"voice": "alloy"})).status_code == 422
    unknown = await client.get("/no/such/route")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "Not Found"}


async def test_batch_longer_than_the_limit_is_413(client):
    r = await client.post("/generate/batch", json=[{"text": f"Item {i}."} for i in range(MAX_BATCH + 1)])
    assert r.status_code == 413 and f"limit is {MAX_BATCH}" in r.json()["detail"]


async def test_body_limit_applies_before_parsing(client):
    big = b'{"text": "' + b"x" * MAX_BODY + b'"}'
    r = await client.post("/generate", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]

    async def chunked():  # no Content-Length: the received bytes are counted
        for _ in range(5):
            yield b"x" * (MAX_BODY // 4)

    r = await client.post("/generate", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]


async def test_client_leaving_mid_body_is_counted_as_gone_not_as_an_error(limited, client):
    leave_mid_body(limited, "/generate")
    gone = 'tts_gateway_requests_total{outcome="client_gone",route="/generate"} 1.0'

    async def counted() -> str | None:
        metrics = (await client.get("/metrics")).text
        return metrics if gone in metrics else None

    metrics = await until(counted, "the request is counted as client_gone")
    assert 'outcome="error"' not in metrics
    assert (await client.post("/generate", json={"text": ""})).status_code == 400  # still serving


async def test_no_answer_is_504_with_the_request_id(client):
    r = await client.post("/generate", json={"text": "Nobody is listening."}, headers={"X-Request-Id": "req-504"})
    assert r.status_code == 504
    assert r.headers["X-Request-Id"] == "req-504"
    assert r.json()["request_id"] == "req-504" and "req-504" in r.json()["detail"]
    batch = (await client.post("/generate/batch", json=[{"text": "Still nobody."}])).json()
    assert batch["failed"] == 1 and "No answer from the bus" in batch["results"][0]["error"]
    stats = (await client.get("/stats")).json()
    assert stats["failed_requests"] == 2 and stats["concurrent_requests"] == 0


async def test_nothing_answers_500(client):
    """A spread of hostile bodies: every answer is a deliberate 4xx/5xx with JSON."""
    bodies = [b"", b"null", b"[]", b"{}", b"[1, 2]", b'{"text": 5}', b'{"text": ["a"]}', b"\xff\xfe",
              b'{"text": "ok", "top_k": "many"}', b'{"text": "ok", "reference_audio_base64": 7}',
              b'{"text": "ok", "voice": "../../etc"}', b'{"text": "ok", "system_prompt": "' + b"s" * 20_000 + b'"}']
    for path in ("/generate", "/generate/batch", "/v1/audio/speech"):
        for body in bodies:
            r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code != 500 and r.status_code < 600, (path, body[:40], r.status_code, r.text)
            assert "Traceback" not in r.text
            r.json()


async def test_bus_or_store_missing_is_503(stack, gateway):
    # Started side by side: each waits a few seconds for servers that will not answer.
    no_bus, no_store = await asyncio.gather(
        asyncio.to_thread(gateway, stack_settings(stack, nats_url=f"nats://127.0.0.1:{free_port()}")),
        asyncio.to_thread(gateway, stack_settings(stack, s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                                                  s3_timeout_s=1.0)),
    )
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        r = await c.post(f"{no_bus.url}/generate", json={"text": "Is anybody there?"})
        assert (r.status_code, r.json()["detail"]) == (503, "message bus unavailable")
        ready = await c.get(f"{no_bus.url}/ready")
        assert ready.status_code == 503 and ready.json()["bus"] is False
        health = await c.get(f"{no_bus.url}/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert health.json()["vllm_healthy"] is False and health.json()["bus"] is False
        assert (await c.get(f"{no_bus.url}/stats")).status_code == 200
        assert (await c.get(f"{no_bus.url}/metrics")).status_code == 200

        r = await c.post(f"{no_store.url}/generate", json={"text": "Is anybody there?"})
        assert (r.status_code, r.json()["detail"]) == (503, "object store unavailable")
        ready = await c.get(f"{no_store.url}/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "bus": True, "store": False}


async def test_bus_going_away_is_503_and_coming_back_is_ready(stack, gateway, tmp_path):
    nats = NatsServer(tmp_path).start()
    try:
        gw = gateway(stack_settings(stack, nats_url=nats.url))
        async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False) as c:
            assert (await c.get("/ready")).status_code == 200
            nats.stop()
            r = await c.post("/generate", json={"text": "The bus just left."})
            assert (r.status_code, r.json()["detail"]) == (503, "message bus unavailable")
            assert (await c.get("/ready")).status_code == 503
            nats.restart()
            async def ready() -> bool:
                return (await c.get("/ready")).status_code == 200

            await until(ready, "the gateway is ready after NATS came back")
    finally:
        nats.stop()
