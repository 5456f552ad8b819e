"""`GET /jobs/{id}/events`: one job's chapter and job events as Server-Sent Events.

Each open stream holds one ordered JetStream consumer on the job's events in the events stream
for as long as it is open. It starts right after the stream's last sequence, read before the
job's state, so no event between the two is lost (one may arrive twice: once inside the state,
once as an event). Chunk events share the subject space and are dropped here; job progress
events (which count chunks) stand in for them.

What clients can rely on: every event has an `id:`, the events stream's sequence number of the
bus message (for `job.state`, the last sequence when the state was read). Without a
`Last-Event-ID` header the first event is `job.state` (the `GET /jobs/{id}` body); with one,
the stream resumes after that id: the events published since are replayed, no `job.state`
(what a browser's automatic reconnect needs). Then `job.progress`, `chapter.done`,
`chapter.failed` and `job.done` in the order the assembler published them, each
`event: <kind>` + `data: <the bus message as JSON>`; a `: keepalive` comment every
`gateway_sse_heartbeat_s`; the stream ends after `job.done`, or right after `job.state` when
the job had already finished. A finished job asked with `Last-Event-ID` answers 204, so a
browser stops reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque

import structlog
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from starlette.responses import StreamingResponse

from pipeline.contracts.messages import ChapterDone, ChapterFailed, JobDone, JobProgress
from pipeline.contracts.subjects import Names

from http_gateway.metrics import GatewayMetrics

log = structlog.get_logger("http_gateway.job_events")

EVENT_MODELS = {m.model_fields["kind"].default: m for m in (JobProgress, ChapterDone, ChapterFailed, JobDone)}
FINAL_KIND = "job.done"


def sse(kind: str, data: dict, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def last_event_id(header: str | None) -> int | None:
    """The `Last-Event-ID` a client resumes after (a stream sequence), or None."""
    header = (header or "").strip()
    return int(header) if header.isdigit() else None


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

    async def open(self, js, after: int | None = None) -> "JobFeed":
        """Subscribe to the job's events after stream sequence `after` (None: after the last one
        now). `self.start_seq - 1` is then the id of the state read after this call."""
        if after is None:
            info = await js.stream_info(self.names.events_stream)
            after = info.state.last_seq
        self.start_seq = after + 1
        self._sub = await js.subscribe(
            self.names.job_events(self.job_id), cb=self._on_msg, ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, config=ConsumerConfig(opt_start_seq=self.start_seq))
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
        seq = msg.metadata.sequence.stream if msg.metadata else None
        if isinstance(event, JobProgress) and self._pending and isinstance(self._pending[-1][1], JobProgress):
            self._pending[-1] = (seq, event)
        else:
            self._pending.append((seq, event))
        self._wake.set()

    async def next(self, timeout_s: float):
        """The next (sequence, event), or None when none came within `timeout_s`."""
        if not self._pending:
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)
        return self._pending.popleft() if self._pending else None


async def event_stream(feed: JobFeed, state: dict | None, finished: bool, heartbeat_s: float):
    if state is not None:
        yield sse("job.state", state, feed.start_seq - 1)
    if finished:
        return
    while True:
        item = await feed.next(heartbeat_s)
        if item is None:
            yield b": keepalive\n\n"
            continue
        seq, event = item
        yield sse(event.kind, event.model_dump(mode="json", exclude_none=True), seq)
        if event.kind == FINAL_KIND:
            return


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response that unsubscribes its feed however the stream ends:
    after `job.done`, on client disconnect (Starlette cancels the stream), or on shutdown."""

    media_type = "text/event-stream"

    def __init__(self, feed: JobFeed, state: dict | None, finished: bool, heartbeat_s: float):
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
