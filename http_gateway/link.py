"""The gateway's connections: NATS (with the outcome subscription) and the object store.

The gateway starts even when NATS or S3 is not there yet: it keeps trying in the background and
answers 503 (and `/ready` 503) until both answer. Once connected, nats-py reconnects by itself;
while it is away, `require_bus` says 503 at once instead of letting publishes queue up.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from pipeline import bus
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names
from pipeline.store import Store, open_store

from http_gateway.errors import Unavailable
from http_gateway.outcomes import OutcomeRouter

log = structlog.get_logger("http_gateway.link")

RETRY_S = 1.0
STARTUP_WAIT_S = 3.0
READY_PROBE_TIMEOUT_S = 2.0


class Link:
    def __init__(self, settings: Settings, names: Names, router: OutcomeRouter, client_name: str):
        self.settings = settings
        self.names = names
        self.router = router
        self.client_name = client_name
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.kv = None
        self.jobs_kv = None
        self.store: Store | None = None
        self._bus_ready = False
        self._task: asyncio.Task | None = None
        self._last_error = ""

    async def start(self) -> None:
        """Connect in the background; wait up to `STARTUP_WAIT_S` so that a healthy stack is
        ready when serving starts, but never block start-up on a server that is not there."""
        self._task = asyncio.create_task(self._connect_loop())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), STARTUP_WAIT_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.router.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.store is not None:
            self.store.close()

    async def _connect_loop(self) -> None:
        while not await self._attempt():
            await asyncio.sleep(RETRY_S)
        log.info("gateway.connected", s3=self.settings.s3_endpoint_url)

    async def _attempt(self) -> bool:
        try:
            if self.nc is None:
                self.nc = await bus.connect(self.settings, name=self.client_name)
                self.js = self.nc.jetstream()
            if not self._bus_ready:
                await bus.ensure_streams(self.js, self.settings, self.names)
                self.kv = await bus.workers_kv(self.js, self.names)
                self.jobs_kv = await bus.jobs_kv(self.js, self.names)
                await self.router.start(self.nc)
                self._bus_ready = True
            if self.store is None:
                self.store = await open_store(self.settings)
            return True
        except Exception as exc:  # StartupError, NATS timeouts: all mean "not yet"
            error = f"{type(exc).__name__}: {exc}".strip()
            if error != self._last_error:
                log.warning("gateway.not_connected", error=error[:300])
                self._last_error = error
            return False

    @property
    def bus_up(self) -> bool:
        return self._bus_ready and self.nc is not None and self.nc.is_connected

    def require_bus(self) -> JetStreamContext:
        if not self.bus_up:
            raise Unavailable("message bus unavailable")
        return self.js

    def require_jobs(self):
        """The `tts_jobs` KV bucket, or 503 while the bus is away."""
        self.require_bus()
        return self.jobs_kv

    def require_store(self) -> Store:
        if self.store is None:
            raise Unavailable("object store unavailable")
        return self.store

    async def readiness(self) -> dict[str, bool]:
        """Whether the bus is connected and the store answers right now."""
        store_ok = False
        if self.store is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.ensure_bucket(), READY_PROBE_TIMEOUT_S)
                store_ok = True
        return {"bus": self.bus_up, "store": store_ok}
