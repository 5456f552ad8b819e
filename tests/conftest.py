"""Fixtures: real servers on free loopback ports, one namespace (streams, subjects, key prefix)
per test so tests never see each other's work. A server that cannot start fails the run."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from pipeline import bus
from pipeline.cli import logs
from pipeline.client import EventWaiter
from pipeline.stack.devstack import DevStack
from pipeline.engines.sim.config import SimConfig
from pipeline.engines.sim.server import SimServer
from pipeline.store import open_store
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names
from pipeline.synth import SynthWorker
from pipeline.backend import HiggsClient

BUCKET = "tts-test"


@pytest.fixture(scope="session", autouse=True)
def quiet_logs() -> None:
    logs.configure("warning")


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[DevStack]:
    with DevStack(tmp_path_factory.mktemp("stack"), bucket=BUCKET) as running:
        yield running


@pytest.fixture
def namespace() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def sims() -> Iterator[Callable[..., SimServer]]:
    """Factory: `sims(latency_s=0.5, slots=64)` starts a stand-in; all are stopped afterwards."""
    started: list[SimServer] = []

    def start(**knobs) -> SimServer:
        server = SimServer(SimConfig(**knobs))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def make_settings(stack: DevStack, namespace: str) -> Callable[..., Settings]:
    def build(**overrides) -> Settings:
        values = dict(
            nats_url=stack.nats.url,
            s3_endpoint_url=stack.s3.endpoint_url,
            s3_access_key=stack.s3.access_key,
            s3_secret_key=stack.s3.secret_key,
            s3_bucket=BUCKET,
            s3_prefix=namespace,
            namespace=namespace,
            retry_base_delay_s=0.05,
            retry_max_delay_s=0.5,
            poll_s=0.05,
            log_level="warning",
        )
        values.update(overrides)
        return Settings(**values)

    return build


class Harness:
    """One test's view of the bus and store, plus in-process synth workers."""

    def __init__(self, settings: Settings, nc, store):
        self.settings = settings
        self.names = Names(settings.namespace)
        self.nc = nc
        self.js = nc.jetstream()
        self.store = store
        self._workers: list[tuple[SynthWorker, asyncio.Task, HiggsClient, object]] = []
        self._brokers: list = []

    async def start_worker(self, **overrides) -> SynthWorker:
        overrides.setdefault("worker_name", f"test-worker-{len(self._workers)}")
        settings = self.settings.model_copy(update=overrides)
        nc = await bus.connect(settings, name="test-worker")
        client = HiggsClient(settings, reference_loader=self.store.get)
        worker = SynthWorker(settings, nc, self.store, client)
        await worker.setup()
        task = asyncio.create_task(worker.run())
        self._workers.append((worker, task, client, nc))
        return worker

    async def start_ingest(self):
        from pipeline import ingest

        box = [ingest.Ingestor(self.settings, self.js, self.store, self.names)]
        broker = ingest.build_broker(self.settings, box)
        await broker.start()
        self._brokers.append((broker, None))
        return broker

    async def start_assembler(self, **overrides):
        from pipeline.jobs import assembler

        settings = self.settings.model_copy(update=overrides)
        box = [assembler.Assembler(settings, self.js, self.store, self.names)]
        broker = assembler.build_broker(settings, box)
        await broker.start()
        self._brokers.append((broker, box[0]))
        return broker, box[0]

    async def stop_brokers(self) -> None:
        for broker, service in self._brokers:
            if service is not None:
                await service.drain(10)
            with contextlib.suppress(Exception):
                await broker.stop()
        self._brokers.clear()

    async def stop_workers(self) -> None:
        for worker, task, client, nc in self._workers:
            worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
            await client.aclose()
            await nc.close()
        self._workers.clear()

    def counts(self) -> tuple[int, int]:
        """(synthesised, answered from the store): chunks this harness's workers finished (acked)."""
        stats = [worker.stats for worker, *_ in self._workers]
        return sum(s.synthesized for s in stats), sum(s.cached for s in stats)

    def waiter(self, job_id: str = "*") -> EventWaiter:
        return EventWaiter(self.nc, self.names, job_id)


@pytest.fixture
async def harness(make_settings) -> AsyncIterator[Callable[..., Harness]]:
    """Factory: `await harness(backend_urls=[sim.url], max_in_flight=8)`."""
    opened: list[Harness] = []

    async def open_one(**overrides) -> Harness:
        settings = make_settings(**overrides)
        nc = await bus.connect(settings, name="test")
        store = await open_store(settings)
        await bus.ensure_streams(nc.jetstream(), settings, Names(settings.namespace))
        h = Harness(settings, nc, store)
        opened.append(h)
        return h

    yield open_one
    for h in opened:
        await h.stop_brokers()
        await h.stop_workers()
        h.store.close()
        await h.nc.close()


def sim_stats(sim: SimServer) -> dict:
    return httpx.get(f"{sim.url}/sim/stats", timeout=10).json()


def growth_ratio(run: Callable[[Any], object], small: Any, large: Any, repeats: int = 3) -> float:
    """How many times longer `run(large)` takes than `run(small)`: medians of `repeats` runs each,
    taken in one go so that a busy machine slows both alike. This checks how work grows, not how
    fast it is (speed is for the benchmark scripts): for inputs ten times apart, linear work
    gives about 10 (up to 30 here: caches) and quadratic work about 100."""

    def median_s(arg: Any) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run(arg)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return median_s(large) / median_s(small)


def leave_mid_body(url: str, path: str) -> None:
    """POST to `path` announcing a 500-byte JSON body, send a few bytes of it and close."""
    where = httpx.URL(url)
    with socket.create_connection((where.host, where.port)) as raw:
        raw.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Content-Length: 500\r\n\r\n{\"mod".encode())
