"""The gateway's view of the fleet (http_gateway/observe.py) on a real NATS server and worker."""

from __future__ import annotations

import time
from types import SimpleNamespace

from http_gateway.observe import Observer
from pipeline import bus
from pipeline.bus import WORKER_TTL_S
from tests.waiting import until


async def test_one_failed_heartbeat_read_keeps_the_last_view_until_the_ttl(sims, harness, monkeypatch):
    sim = sims()
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker()
    link = SimpleNamespace(bus_up=True, kv=await bus.workers_kv(h.js, h.names))
    observer = Observer(h.settings, h.names, link)

    async def healthy_view():
        view = await observer.backends()
        return view if view.healthy else None

    view = await until(healthy_view, "the worker's heartbeat reports a healthy model server")
    assert view.workers_alive == 1 and view.urls == [sim.url]

    async def slow_bus():
        raise TimeoutError("the bus took too long")

    monkeypatch.setattr(observer, "_read_beats", slow_bus)
    observer._beats_at = float("-inf")  # past the short cache: the next call reads (and fails)
    view = await observer.backends()
    assert view.healthy and view.workers_alive == 1  # a slow read is not a fleet gone
    # Once the last good read is older than a heartbeat may live in the bucket, nothing is known.
    observer._beats_read_at = time.monotonic() - WORKER_TTL_S - 1
    observer._beats_at = float("-inf")
    view = await observer.backends()
    assert not view.healthy and view.workers_alive == 0
