"""`GET /jobs/{id}/events`: one job's chapter and job events as Server-Sent Events.

Each open stream holds one core-NATS subscription on the job's events for as long as it is open.
The subscription is made before the job's state is read, so no event between the two is lost
(one may arrive twice: once inside the state, once as an event). Chunk events share the subject
space and are dropped here; job progress events (which count chunks) stand in for them.

What clients can rely on: the first event is `job.state` (the `GET /jobs/{id}` body); then
`job.progress`, `chapter.done`, `chapter.failed` and `job.done` in the order the assembler
published them, each `event: <kind>` + `data: <the bus message as JSON>`; a `: keepalive`
comment every `gateway_sse_heartbeat_s`; the stream ends after `job.done`, or right after
`job.state` when the job had already finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque

import structlog
from pydantic import ValidationError
from starlette.responses import StreamingResponse

from pipeline.contracts.messages import ChapterDone, ChapterFailed, JobDone, JobProgress
from pipeline.contracts.subjects import Names

from http_gateway.metrics import GatewayMetrics

log = structlog.get_logger("http_gateway.job_events")

EVENT_MODELS = {m.model_fields["kind"].default: m for m in (JobProgress, ChapterDone, ChapterFailed, JobDone)}
FINAL_KIND = "job.done"


def sse(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class JobFeed:
    """The events of one job for one client, in arrival order. Progress events waiting to be
    sent are coalesced (only the latest counts), so a slow client holds at most one of them."""

    def __init__(self, names: Names, job_id: str, metrics: GatewayMetrics):
        self.names = names
        self.job_id = job_id
        self.metrics = metrics
        self._skip = frozenset({names.chunk_done(job_id), names.chunk_failed(job_id)})
        self._pending: deque = deque()
        self._wake = asyncio.Event()
        self._sub = None

    async def open(self, nc) -> "JobFeed":
        self._sub = await nc.subscribe(self.names.job_events(self.job_id), cb=self._on_msg)
        self.metrics.event_streams.inc()
        return self

    async def close(self) -> None:
        """Unsubscribe; safe to call twice."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        self.metrics.event_streams.dec()
        with contextlib.suppress(Exception):  # the connection may be closing already
            await sub.unsubscribe()

    async def _on_msg(self, msg) -> None:
        if msg.subject in self._skip:
            return
        try:
            kind = json.loads(msg.data).get("kind")
            event = EVENT_MODELS[kind].from_bytes(msg.data)
        except (ValueError, KeyError, AttributeError, ValidationError):
            log.warning("gateway.bad_job_event", job=self.job_id, subject=msg.subject)
            return
        if isinstance(event, JobProgress) and self._pending and isinstance(self._pending[-1], JobProgress):
            self._pending[-1] = event
        else:
            self._pending.append(event)
        self._wake.set()

    async def next(self, timeout_s: float):
        """The next event, or None when none came within `timeout_s`."""
        if not self._pending:
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)
        return self._pending.popleft() if self._pending else None


async def event_stream(feed: JobFeed, state: dict, finished: bool, heartbeat_s: float):
    yield sse("job.state", state)
    if finished:
        return
    while True:
        event = await feed.next(heartbeat_s)
        if event is None:
            yield b": keepalive\n\n"
            continue
        yield sse(event.kind, event.model_dump(mode="json", exclude_none=True))
        if event.kind == FINAL_KIND:
            return


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response that unsubscribes its feed however the stream ends:
    after `job.done`, on client disconnect (Starlette cancels the stream), or on shutdown."""

    media_type = "text/event-stream"

    def __init__(self, feed: JobFeed, state: dict, finished: bool, heartbeat_s: float):
        super().__init__(event_stream(feed, state, finished, heartbeat_s), media_type=self.media_type,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.feed = feed

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()
            await self.feed.close()
