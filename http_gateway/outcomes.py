"""One core-NATS subscription per gateway process for the outcomes its requests wait on.

Every request the process publishes carries `job_id = "gw-<instance>"` and a fresh `chunk_id`;
the router subscribes once to that job's chunk events and resolves the waiting future by
`chunk_id`. Events nobody waits for (a request that already timed out, a duplicate event after a
redelivery) are dropped.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from pipeline.messages import ChunkDone, ChunkFailed
from pipeline.subjects import Names

from http_gateway.errors import Unavailable

log = structlog.get_logger("http_gateway.outcomes")

Outcome = ChunkDone | ChunkFailed


class OutcomeRouter:
    def __init__(self, names: Names, job_id: str):
        self.names = names
        self.job_id = job_id
        self.subject = names.chunk_events(job_id)
        self._waiting: dict[str, asyncio.Future[Outcome]] = {}
        self._sub = None

    async def start(self, nc: NATS) -> None:
        """Subscribe. nats-py re-subscribes by itself after a reconnect."""
        self._sub = await nc.subscribe(self.subject, cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception:  # connection already closed: nothing to undo
                pass
        # Requests still waiting (past uvicorn's graceful shutdown) get a 503, not a cancellation.
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(Unavailable("gateway shutting down"))
        self._waiting.clear()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def expect(self, chunk_id: str) -> asyncio.Future[Outcome]:
        """A future for `chunk_id`'s outcome. Call before publishing: core NATS keeps nothing."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting[chunk_id] = future
        return future

    def forget(self, chunk_id: str) -> None:
        self._waiting.pop(chunk_id, None)

    async def _on_msg(self, msg) -> None:
        try:
            outcome: Outcome = (ChunkDone if ".chunk.done." in msg.subject else ChunkFailed).from_bytes(msg.data)
        except ValidationError as exc:
            log.warning("gateway.bad_event", subject=msg.subject, error=str(exc)[:200])
            return
        future = self._waiting.get(outcome.chunk_id)
        if future is not None and not future.done():
            future.set_result(outcome)
