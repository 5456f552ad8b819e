"""One core-NATS subscription per gateway process for the outcomes its requests wait on.

Every request the process publishes carries `job_id = "gw-<instance>"` and a fresh `chunk_id`;
the router subscribes once to that job's chunk events and resolves the waiting future by
`chunk_id`. A second subscription takes the `AudioReply`s that workers send to this process
(`Names.audio_reply`): a fresh answer that fits in one message arrives there with its WAV before
it is even stored, and the request is answered from it; the done event that follows is dropped.
Events nobody waits for (a request that already timed out, a duplicate event after a
redelivery) are dropped.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from dataclasses import dataclass

from pipeline.messages import AudioReply, ChunkDone, ChunkFailed
from pipeline.subjects import Names

from http_gateway.errors import Unavailable

log = structlog.get_logger("http_gateway.outcomes")

Outcome = ChunkDone | ChunkFailed


@dataclass(frozen=True)
class Arrived:
    """What a waiting request gets: the outcome, and the WAV when it came with an `AudioReply`."""

    outcome: Outcome
    wav: bytes | None = None


class OutcomeRouter:
    def __init__(self, names: Names, job_id: str, instance: str):
        self.names = names
        self.job_id = job_id
        self.subject = names.chunk_events(job_id)
        self.reply_subject = names.audio_reply(instance)
        self._waiting: dict[str, asyncio.Future[Arrived]] = {}
        self._subs: list = []

    async def start(self, nc: NATS) -> None:
        """Subscribe. nats-py re-subscribes by itself after a reconnect."""
        self._subs = [await nc.subscribe(self.subject, cb=self._on_msg),
                      await nc.subscribe(self.reply_subject, cb=self._on_reply)]

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
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

    def expect(self, chunk_id: str) -> asyncio.Future[Arrived]:
        """A future for `chunk_id`'s outcome. Call before publishing: core NATS keeps nothing."""
        future: asyncio.Future[Arrived] = asyncio.get_running_loop().create_future()
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
        self._resolve(Arrived(outcome))

    async def _on_reply(self, msg) -> None:
        try:
            done, wav = AudioReply.decode(msg.data)
        except (ValueError, ValidationError) as exc:
            log.warning("gateway.bad_reply", error=str(exc)[:200])
            return
        self._resolve(Arrived(done, wav))

    def _resolve(self, arrived: Arrived) -> None:
        future = self._waiting.get(arrived.outcome.chunk_id)
        if future is not None and not future.done():
            future.set_result(arrived)
