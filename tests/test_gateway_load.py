"""The gateway under concurrency and while the model server comes and goes."""

from __future__ import annotations

import asyncio

import httpx

from pipeline.engines.sim.config import SimConfig
from pipeline.engines.sim.server import SimServer
from tests.conftest import sim_stats
from tests.gateway_fixtures import gateway, wait_for_health  # noqa: F401 (fixture)


async def test_50_concurrent_generate_all_succeed(sims, harness, gateway):
    # 1 s per call: on a loaded 2-core machine the 50 requests may take a few hundred ms to
    # reach the stand-in; a call long enough keeps "together" meaning together.
    sim = sims(latency_s=1.0, slots=64)
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker(max_in_flight=64)
    gw = gateway(h.settings)
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=gw.url, timeout=60, limits=limits, trust_env=False) as client:
        await wait_for_health(client, "ok")
        answers = await asyncio.gather(*(
            client.post("/generate", json={"text": f"Concurrent request number {i} speaks now."})
            for i in range(50)
        ))
        stats = (await client.get("/stats")).json()
    assert [a.status_code for a in answers] == [200] * 50, [a.text for a in answers if a.status_code != 200][:3]
    assert all(a.headers["X-Cache"] == "miss" and a.content[:4] == b"RIFF" for a in answers)
    assert stats["successful_requests"] == 50 and stats["failed_requests"] == 0
    assert stats["peak_concurrent"] >= 40, stats
    assert sim_stats(sim)["peak_concurrent"] >= 40  # and they reached the model server together


async def test_batch_never_fans_out_past_the_workers_bound(sims, harness, gateway):
    sim = sims(latency_s=0.2, slots=64)
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker(max_in_flight=2)
    gw = gateway(h.settings)
    async with httpx.AsyncClient(base_url=gw.url, timeout=60, trust_env=False) as client:
        body = (await client.post("/generate/batch", json=[{"text": f"Batch item {i}."} for i in range(10)])).json()
        stats = (await client.get("/stats")).json()
    assert body["successful"] == 10
    assert stats["peak_concurrent"] == 10  # the gateway waits on all of them ...
    assert sim_stats(sim)["peak_concurrent"] == 2  # ... the worker's bound is what the model server sees


async def test_health_follows_the_engine(sims, harness, gateway):
    sim = sims()
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker()
    gw = gateway(h.settings)
    async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False) as client:
        ok = await wait_for_health(client, "ok")
        assert ok["vllm_healthy"] is True and ok["workers_alive"] == 1
        sim.stop()
        degraded = await wait_for_health(client, "degraded")
        assert degraded["vllm_healthy"] is False and degraded["backends"] == [{"url": sim.url, "healthy": False}]
        back = SimServer(SimConfig(), port=sim.port).start()
        try:
            await wait_for_health(client, "ok")
            r = await client.post("/generate", json={"text": "The engine is back."})
            assert r.status_code == 200
            # No live worker is degraded too: the model server is fine, but nobody can reach it.
            await h.stop_workers()
            gone = await wait_for_health(client, "degraded")
            assert gone["workers_alive"] == 0 and gone["vllm_backend"] == sim.url
        finally:
            back.stop()
