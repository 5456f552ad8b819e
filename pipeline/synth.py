"""The synth worker: pull a chunk request, get its audio, check it, store it, say so, ack.

`SynthWorker` is the stage: its set-up, run loop, drain and heartbeat are here; its parts are in
`pipeline/synthesis/`: `scheduling` (call slots, interactive before bulk, the lookahead),
`handling` (one message, from validation to ack, idempotent under redelivery) and `finishing`
(checked audio, the ASR gate, the early reply, storing). A voice name that is a synced preset
becomes a reference first (`synthesis.voices.VoiceBook`).

Someone waiting (`reply_to`, set by the gateway): the cache lookup and the model call start
together, and a fresh answer that fits in one NATS message goes to the waiting gateway as an
`AudioReply` right after the checks, before its loudness is measured and before it is stored;
storing, the done event and the ack follow as for any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from pipeline import bus
from pipeline.audio.checks import AudioBounds
from pipeline.backend import HiggsClient
from pipeline.contracts.messages import BackendStatus, WorkerHeartbeat
from pipeline.contracts.policy import DeliveryPolicy
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import PRIORITIES, Names
from pipeline.jobs.control import CancelCheck
from pipeline.store import Store
from pipeline.synthesis.adaptive import AdaptiveLimit
from pipeline.synthesis.finishing import AudioFinishing, _load_gate
from pipeline.synthesis.handling import MessageHandling, _KeyLocks
from pipeline.synthesis.metrics import WorkerMetrics
from pipeline.synthesis.scheduling import Scheduling, _HeldMessage
from pipeline.synthesis.voices import VoiceBook

log = structlog.get_logger("pipeline.synth")


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerStats:
    synthesized: int = 0
    cached: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0  # chunks of cancelled jobs acked without a model call
    in_flight: int = 0
    peak_in_flight: int = 0
    by_priority: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PRIORITIES})


class SynthWorker(Scheduling, MessageHandling, AudioFinishing):
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        store: Store,
        client: HiggsClient,
        names: Names | None = None,
    ):
        self.settings = settings
        self.names = names or Names(settings.namespace)
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.store = store
        self.client = client
        self.name = settings.worker_name or default_worker_name()
        self.stats = WorkerStats()
        self.bounds = AudioBounds(
            sample_rate_hz=settings.sample_rate_hz,
            words_per_s=settings.words_per_s,
            min_ratio=settings.min_duration_ratio,
            max_ratio=settings.max_duration_ratio,
            trim_pad_s=settings.trim_pad_s,
            max_edge_silence_s=settings.max_edge_silence_s,
        )
        self.voices = VoiceBook(store, settings.voice_cache_s)
        self.cancels = CancelCheck(lambda: bus.jobs_kv(self.js, self.names))
        self.gate = None  # the ASR gate, loaded by setup() when settings.verify == "asr"
        self._pullers = {
            p: bus.Puller(nc, self.names.synth_stream, self.names.synth_consumer(p)) for p in PRIORITIES
        }
        self._tasks: set[asyncio.Task] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._keys = _KeyLocks()
        self._rng = random.Random()
        self.policy = DeliveryPolicy.from_settings(settings)
        self.metrics = WorkerMetrics(self)
        self._ready = False
        # Slots held by idle pulls that may still deliver a message, and messages started and
        # not yet answered by the model server, per priority.
        self._reserved = {p: 0 for p in PRIORITIES}
        self._calling = {p: 0 for p in PRIORITIES}
        self._interactive_seen = -math.inf  # monotonic time an interactive request last started
        self.adaptive = (AdaptiveLimit(settings.max_in_flight, settings.adaptive_window_s)
                         if settings.adaptive_in_flight else None)
        self._store_down = asyncio.Event()
        self._store_probe: asyncio.Task | None = None
        self._idle_waits: dict[str, asyncio.Task | None] = {}
        # Bulk messages pulled ahead of a free call slot (`bulk_lookahead`), longest text first.
        self._lookahead: list[_HeldMessage] = []
        # Messages that a pull made before a pause brought in during it: held (kept alive), not
        # started, so no delivery attempt is burnt on work that cannot finish; started on resume.
        self._held_paused: list[tuple[Msg, str]] = []

    # ---------------------------------------------------------------- lifecycle

    async def setup(self) -> None:
        """Streams and consumers exist afterwards (idempotent: every worker may do it, twice)."""
        if self._ready:
            return
        await bus.set_up(self.js, self.settings, self.names, consumers=True)
        if self.settings.verify == "asr" and self.gate is None:
            self.gate = await asyncio.to_thread(_load_gate, self.settings)
        for puller in self._pullers.values():
            await puller.start()
        self._ready = True

    def stop(self) -> None:
        """Ask the worker to stop pulling; `run` then drains and returns."""
        self._stopping.set()
        self._slot_freed.set()

    async def run(self) -> None:
        await self.setup()
        log.info("synth.started", worker=self.name, max_in_flight=self.settings.max_in_flight, backends=self.client.urls,
                 adaptive=self.adaptive is not None)
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        lookahead_keepalive = asyncio.create_task(self._lookahead_keepalive())
        try:
            await self._pull_loop()
        finally:
            lookahead_keepalive.cancel()
            await self._release_lookahead()
            await self._drain()
            heartbeat.cancel()
            if self._store_probe is not None:
                self._store_probe.cancel()
            with contextlib.suppress(Exception):
                await (await bus.workers_kv(self.js, self.names)).delete(self.name)
            for puller in self._pullers.values():
                await puller.stop()
            if self.gate is not None:
                self.gate.close()
            log.info("synth.stopped", worker=self.name, **self._stats_fields())

    def heartbeat(self, backend_health: dict[str, bool], voices: dict[str, list[str]] | None = None) -> WorkerHeartbeat:
        s = self.stats
        return WorkerHeartbeat(
            worker=self.name, max_in_flight=self.call_limit, in_flight=s.in_flight,
            peak_in_flight=s.peak_in_flight, synthesized=s.synthesized, cached=s.cached, failed=s.failed,
            retried=s.retried, backends=[
                BackendStatus(url=b["url"], healthy=backend_health.get(b["url"], False) and b["healthy"],
                              in_flight=b["in_flight"], calls=b["calls"], voices=(voices or {}).get(b["url"], []))
                for b in self.client.snapshot()
            ],
        )

    async def _heartbeat_loop(self) -> None:
        """Publish this worker's state to `tts_workers` (the gateway's /health reads it)."""
        voices: dict[str, list[str]] = {}
        beats = 0
        while True:
            try:
                kv = await bus.workers_kv(self.js, self.names)
                health = await self.client.health()
                if beats % 12 == 0 or not any(voices.values()):  # voice lists rarely change
                    voices = await self.client.voices()
                beats += 1
                await kv.put(self.name, self.heartbeat(health, voices).to_bytes())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("synth.heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.settings.heartbeat_s)

    def _stats_fields(self) -> dict:
        s = self.stats
        return {"synthesized": s.synthesized, "cached": s.cached, "failed": s.failed, "retried": s.retried}

