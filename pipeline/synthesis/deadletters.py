"""Dead letters for messages that ran out of deliveries without a handler deciding their fate.

Handlers dead-letter what they fail themselves (permanent errors, the last attempt, invalid
input). A message whose deliveries all ended without an ack or a nak — its worker was killed or
hung on every attempt — is left in the work-queue stream by JetStream, which only announces it on
`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`. This watcher turns each such
advisory into a `DeadLetter` (and, for synth requests, a `ChunkFailed` event) and deletes the
message from the work queue. The de-duplication id `dlq:<stream>:<seq>` is the same one handlers
use, so a letter is written once whoever writes it. Every worker process runs one watcher in a
queue group: each advisory is handled by one of them.
"""

from __future__ import annotations

import contextlib
import json

import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from pipeline import bus
from pipeline.contracts.messages import ChunkFailed, DeadLetter, SynthRequest
from pipeline.contracts.subjects import Names

log = structlog.get_logger("pipeline.deadletter")

ADVISORY_MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*"
QUEUE_GROUP = "tts-deadletter"


def dead_letter_id(stream: str, seq: int) -> str:
    return f"dlq:{stream}:{seq}"


class DeadLetterWatcher:
    def __init__(self, nc: NATS, names: Names, worker: str = "deadletter"):
        self.nc = nc
        self.js = nc.jetstream()
        self.names = names
        self.worker = worker
        self._subs: list = []
        self.moved = 0

    async def start(self) -> "DeadLetterWatcher":
        for stream in (self.names.synth_stream, self.names.chapters_stream):
            sub = await self.nc.subscribe(ADVISORY_MAX_DELIVERIES.format(stream=stream), queue=QUEUE_GROUP,
                                          cb=self._on_advisory)
            self._subs.append(sub)
        return self

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def _on_advisory(self, msg) -> None:
        try:
            advisory = json.loads(msg.data)
            stream, seq = advisory["stream"], int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError):
            log.warning("deadletter.bad_advisory", subject=msg.subject)
            return
        try:
            await self.move(stream, seq, deliveries)
        except Exception as exc:  # the message stays in the queue; the next advisory or an operator decides
            log.warning("deadletter.move_failed", stream=stream, seq=seq, error=f"{type(exc).__name__}: {exc}")

    async def move(self, stream: str, seq: int, deliveries: int) -> bool:
        """Dead-letter message `seq` of `stream` and delete it there. False when it is gone already."""
        try:
            original = await self.js.get_msg(stream, seq)
        except NotFoundError:
            return False
        data = original.data or b""
        job_id = chunk_id = None
        request = None
        with contextlib.suppress(ValidationError, ValueError):
            request = SynthRequest.from_bytes(data)
            job_id, chunk_id = request.job_id, request.chunk_id
        reason = "max_deliver"
        error = f"no outcome after {deliveries} deliveries (worker killed or hung on every attempt)"
        letter = DeadLetter(source_subject=original.subject, stream_seq=seq, reason=reason, error=error,
                            attempts=deliveries, job_id=job_id, chunk_id=chunk_id, **DeadLetter.encode_payload(data))
        await bus.publish_json(self.js, self.names.dlq(original.subject), letter.to_bytes(), dead_letter_id(stream, seq))
        if request is not None:
            failed = ChunkFailed(job_id=request.job_id, chunk_id=request.chunk_id, reason=reason, error=error,
                                 attempt=deliveries, worker=self.worker, chapter=request.chapter,
                                 index=request.index, reply_tag=request.reply_tag)
            await bus.publish_json(self.js, self.names.chunk_failed(request.job_id), failed.to_bytes(),
                                   f"failed:{request.job_id}:{request.chunk_id}")
        with contextlib.suppress(NotFoundError):
            await self.js.delete_msg(stream, seq)
        self.moved += 1
        log.warning("deadletter.moved", stream=stream, seq=seq, job=job_id, chunk=chunk_id, deliveries=deliveries)
        return True
