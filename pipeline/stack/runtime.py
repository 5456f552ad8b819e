"""Process-level wiring of a worker: connect, check dependencies, run, drain on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from pipeline import bus
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names
from pipeline.store import open_store
from pipeline.synthesis.deadletters import DeadLetterWatcher

log = structlog.get_logger("pipeline.runtime")


def run_service(main):
    """Run a long-lived service's coroutine on uvloop (libuv: a cheaper event loop for the
    many small socket events of NATS, S3 and HTTP) when it is installed, else on asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a core dependency; stay usable without it
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@contextlib.asynccontextmanager
async def synth_worker(settings: Settings, name: str = "synth"):
    """A ready `SynthWorker` with its connections; everything closed on exit."""
    # Imported here: the model client and the audio checks (scipy) are the synth worker's alone;
    # ingest and assembler processes that share this module stay small.
    from pipeline.backend import HiggsClient
    from pipeline.synth import SynthWorker

    nc = await bus.connect(settings, name=f"tts-{name}")
    store = None
    try:
        store = await open_store(settings)
        async with HiggsClient(settings, reference_loader=store.get) as client:
            worker = SynthWorker(settings, nc, store, client)
            watcher = await DeadLetterWatcher(nc, worker.names, worker.name).start()
            try:
                yield worker
            finally:
                await watcher.stop()
    finally:
        if store is not None:
            store.close()
        with contextlib.suppress(Exception):
            await nc.drain()


def install_stop_signals(stop) -> None:
    """SIGTERM/SIGINT call `stop()` once: the worker stops pulling and drains."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)


async def run_synth_worker(settings: Settings) -> None:
    async with synth_worker(settings) as worker:
        if settings.worker_metrics_port:
            worker.metrics.serve(settings.worker_metrics_host, settings.worker_metrics_port)
            log.info("synth.metrics", url=f"http://{settings.worker_metrics_host}:{settings.worker_metrics_port}/metrics")
        install_stop_signals(worker.stop)
        await worker.run()


async def run_broker_service(settings: Settings, name: str, make_service, build_broker) -> None:
    """Run a faststream service (ingest, assembler) until SIGTERM/SIGINT.

    `make_service(settings, js, store, names)` builds the handler object, `build_broker(settings,
    [service])` its broker. On a signal: stop pulling after the service drained (when it has a
    `drain(timeout_s)`: e.g. chapters being built finish and ack first), then close everything.
    """
    names = Names(settings.namespace)
    nc = await bus.connect(settings, name=f"tts-{name}")
    store = None
    try:
        store = await open_store(settings)
        js = nc.jetstream()
        await bus.set_up(js, settings, names)
        service = make_service(settings, js, store, names)
        broker = build_broker(settings, [service])
        stop = asyncio.Event()
        install_stop_signals(stop.set)
        await broker.start()
        log.info(f"{name}.started")
        await stop.wait()
        drain = getattr(service, "drain", None)
        if drain is not None:
            await drain(settings.drain_timeout_s)
        await broker.stop()
    finally:
        if store is not None:
            store.close()
        with contextlib.suppress(Exception):
            await nc.drain()
