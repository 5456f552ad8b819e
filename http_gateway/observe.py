"""What the gateway knows about the pipeline without calling a model server.

- Backend health and preset voices: from worker heartbeats in the `tts_workers` KV bucket (a
  worker that stopped deletes its key; one that died disappears with the bucket's TTL).
- Queue depth: JetStream consumer info of the two synth consumers.
- Voice presets: heartbeat voices plus `voices/<name>.json` objects in the store.

Reads are cached briefly so that health probes and scrapes cost the bus almost nothing. A read of
the heartbeats that fails or runs past `BUS_READ_TIMEOUT_S` (a busy bus or a busy gateway) keeps
the last view it read for up to the bucket's TTL, the same age a heartbeat may have in the bucket
itself: one slow read does not turn `/health` "degraded" for a fleet that is fine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from pipeline import bus, voicelib
from pipeline.bus import WORKER_TTL_S
from pipeline.contracts.messages import WorkerHeartbeat
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import PRIORITIES, Names

from http_gateway.link import Link

log = structlog.get_logger("http_gateway.observe")

HEARTBEAT_CACHE_S = 0.1
STORE_VOICES_CACHE_S = 5.0
BUS_READ_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class BackendView:
    urls: list[str]
    healthy: bool
    workers_alive: int
    per_backend: dict[str, bool]


class Observer:
    def __init__(self, settings: Settings, names: Names, link: Link):
        self.settings = settings
        self.names = names
        self.link = link
        self._beats: list[WorkerHeartbeat] = []
        self._beats_at = float("-inf")
        self._beats_read_at = float("-inf")  # the last read that succeeded
        self._store_voices: set[str] = set()
        self._store_voices_at = float("-inf")
        self._lock = asyncio.Lock()

    async def heartbeats(self) -> list[WorkerHeartbeat]:
        """Live workers' latest heartbeats; empty when the bus is away."""
        if not self.link.bus_up:
            return []
        async with self._lock:
            if time.monotonic() - self._beats_at < HEARTBEAT_CACHE_S:
                return self._beats
            try:
                self._beats = await asyncio.wait_for(self._read_beats(), BUS_READ_TIMEOUT_S)
                self._beats_read_at = time.monotonic()
            except Exception as exc:  # a bus hiccup: the last view while it may still be true, else none
                kept = time.monotonic() - self._beats_read_at < WORKER_TTL_S
                log.warning("gateway.heartbeats_unreadable", error=f"{type(exc).__name__}: {exc}"[:200],
                            kept_last_view=kept)
                if not kept:
                    self._beats = []
            self._beats_at = time.monotonic()
            return self._beats

    async def _read_beats(self) -> list[WorkerHeartbeat]:
        return await bus.read_heartbeats(self.link.kv)

    async def backends(self) -> BackendView:
        beats = await self.heartbeats()
        per_backend: dict[str, bool] = {}
        for beat in beats:
            for backend in beat.backends:
                per_backend[backend.url] = per_backend.get(backend.url, False) or backend.healthy
        urls = sorted(per_backend) or list(self.settings.backend_urls)
        return BackendView(urls=urls, healthy=any(per_backend.values()), workers_alive=len(beats),
                           per_backend=per_backend)

    async def queue_depth(self) -> dict[str, int]:
        """Messages waiting or in progress per synth consumer (0 where no worker made it yet)."""
        depth = {p: 0 for p in PRIORITIES}
        if not self.link.bus_up:
            return depth
        for priority in PRIORITIES:
            try:
                info = await asyncio.wait_for(
                    self.link.js.consumer_info(self.names.synth_stream, self.names.synth_consumer(priority)),
                    BUS_READ_TIMEOUT_S,
                )
            except Exception:  # not created yet (no worker started) or the bus hiccuped
                continue
            depth[priority] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return depth

    async def voices(self, refresh: bool = False) -> set[str]:
        """Preset names a request may use: those the workers' model servers report, plus the
        store's `voices/<name>.json`. `refresh` re-lists the store now."""
        known = {v for beat in await self.heartbeats() for b in beat.backends for v in b.voices}
        return known | await self._voices_in_store(refresh)

    async def _voices_in_store(self, refresh: bool) -> set[str]:
        store = self.link.store
        if store is None:
            return self._store_voices
        if refresh or time.monotonic() - self._store_voices_at > STORE_VOICES_CACHE_S:
            try:
                names = await voicelib.stored_names(store)
            except Exception as exc:
                log.warning("gateway.voices_unreadable", error=str(exc)[:200])
                return self._store_voices
            self._store_voices = names
            self._store_voices_at = time.monotonic()
        return self._store_voices
