"""Producer side of the bus: publish synth requests and wait for their outcome events.

Used by the CLI, the demo, the gateway and the tests; it only publishes and reads (bus, store).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from pipeline import bus
from pipeline.contracts.errors import StartupError
from pipeline.contracts.messages import ChunkDone, ChunkFailed, SynthRequest
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names, synth_msg_id

Outcome = ChunkDone | ChunkFailed


async def publish_synth(js: JetStreamContext, names: Names, request: SynthRequest, priority: str) -> bool:
    """Publish one request with its de-duplication id; False when the server saw it already."""
    return not (await publish_synth_acked(js, names, request, priority)).duplicate


async def publish_synth_acked(js: JetStreamContext, names: Names, request: SynthRequest, priority: str):
    """`publish_synth`, answering the server's ack (its stream sequence names the message)."""
    return await bus.publish_acked(
        js, names.synth(priority), request.to_bytes(), synth_msg_id(request.job_id, request.chunk_id)
    )


class EventWaiter:
    """Collects chunk outcomes of one job (or all jobs) from the moment it is started.

    Start it before publishing: core NATS delivers only what arrives after subscribing.
    """

    def __init__(self, nc: NATS, names: Names, job_id: str = "*"):
        self.nc = nc
        self.subject = names.chunk_events(job_id)
        self.outcomes: dict[str, Outcome] = {}
        self.order: list[Outcome] = []
        self._changed = asyncio.Event()
        self._sub = None

    async def start(self) -> "EventWaiter":
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_msg)
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def __aenter__(self) -> "EventWaiter":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _on_msg(self, msg) -> None:
        outcome: Outcome
        if ".chunk.done." in msg.subject:
            outcome = ChunkDone.from_bytes(msg.data)
        else:
            outcome = ChunkFailed.from_bytes(msg.data)
        self.order.append(outcome)
        self.outcomes[f"{outcome.job_id}/{outcome.chunk_id}"] = outcome
        self._changed.set()

    async def wait_count(self, count: int, timeout_s: float) -> list[Outcome]:
        """Return once `count` outcomes arrived (events of duplicates count); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while len(self.order) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"{len(self.order)}/{count} outcomes after {timeout_s:.0f} s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return list(self.order)

    async def wait_for(self, job_id: str, chunk_ids: list[str], timeout_s: float) -> dict[str, Outcome]:
        deadline = time.monotonic() + timeout_s
        keys = [f"{job_id}/{c}" for c in chunk_ids]
        while not all(k in self.outcomes for k in keys):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                done = sum(k in self.outcomes for k in keys)
                raise asyncio.TimeoutError(f"{done}/{len(keys)} chunks finished after {timeout_s:.0f} s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return {k.split("/", 1)[1]: self.outcomes[k] for k in keys}


async def say(settings: Settings, text: str, out: str, voice: str | None, priority: str, timeout_s: float) -> int:
    """Speak one text through a running pipeline; write the WAV to `out`."""
    from pipeline.store import open_store

    names = Names(settings.namespace)
    try:
        request = SynthRequest(job_id=f"say-{uuid.uuid4().hex[:12]}", chunk_id="0", text=text, voice=voice)
    except ValueError as exc:
        raise StartupError(f"invalid request: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from None
    nc = await bus.connect(settings, name="tts-say")
    store = await open_store(settings)
    try:
        js = nc.jetstream()
        await bus.set_up(js, settings, names)
        async with EventWaiter(nc, names, request.job_id) as waiter:
            await publish_synth(js, names, request, priority)
            try:
                outcome = (await waiter.wait_for(request.job_id, ["0"], timeout_s))["0"]
            except asyncio.TimeoutError:
                raise StartupError(f"no answer within {timeout_s:.0f} s: is a synth worker running?") from None
        if isinstance(outcome, ChunkFailed):
            raise StartupError(f"synthesis failed ({outcome.reason}): {outcome.error}")
        Path(out).write_bytes(await store.get(outcome.key))
        print(f"{out}: {outcome.duration_s:.2f} s of audio (s3://{store.bucket}/{store.full_key(outcome.key)})")
        return 0
    finally:
        store.close()
        await nc.drain()
