"""One core-NATS subscription per gateway process for the outcomes its requests wait on.

Every request the process publishes carries `job_id = "gw-<instance>"` and a fresh `chunk_id`;
the router subscribes once to that job's chunk events and resolves the waiting future by
`chunk_id`. A second subscription takes the `AudioReply`s that workers send to this process
(`Names.audio_reply`): a fresh answer that fits in one message arrives there with its WAV before
it is even stored, and the request is answered from it; the done event that follows is dropped.
Events nobody waits for (a request that already timed out, a duplicate event after a
redelivery) are dropped.

The worker sends the reply before it stores the audio and publishes the done event, but nats-py
hands each subscription's messages to a task of its own, so with a fast store the event can be
handled first. A fresh answer that fits in one message therefore gives its reply
`REPLY_GRACE_S` to arrive before the request falls back to reading the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from pipeline.contracts.messages import AudioReply, ChunkDone, ChunkFailed
from pipeline.contracts.subjects import Names

from http_gateway.errors import Unavailable

log = structlog.get_logger("http_gateway.outcomes")

# How long a done event for a fresh answer waits for the worker's AudioReply (sent before it).
REPLY_GRACE_S = 0.1

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
        self._max_payload = 0
        self.reply_grace_s = REPLY_GRACE_S

    async def start(self, nc: NATS) -> None:
        """Subscribe. nats-py re-subscribes by itself after a reconnect."""
        self._max_payload = nc.max_payload
        self._subs = [await nc.subscribe(self.subject, cb=self._on_msg),
                      await nc.subscribe(self.reply_subject, cb=self._on_reply)]
        await nc.flush()  # the server has both subscriptions: nothing published from now on is missed

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
        if isinstance(outcome, ChunkDone) and self._reply_expected(outcome):
            asyncio.get_running_loop().call_later(self.reply_grace_s, self._resolve, Arrived(outcome))
            return
        self._resolve(Arrived(outcome))

    def _reply_expected(self, done: ChunkDone) -> bool:
        """Whether the worker sent this answer as an `AudioReply` too (fresh, fits one message),
        for a request still waiting."""
        future = self._waiting.get(done.chunk_id)
        if future is None or future.done() or done.cached:
            return False
        return AudioReply.size(done, done.bytes) <= self._max_payload

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
