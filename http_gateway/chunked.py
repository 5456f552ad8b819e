"""One long request's chunks on the bus: published in index order at interactive priority, their
outcomes read back in index order, and what has not started withdrawn when the request ends early.

Workers pull interactive work in stream order, so the first chunks take the first free call slots
and the rest fill the batch in parallel across workers and model servers. Each chunk's audio is
yielded only once it passed the worker's checks (a done event); a chunk that failed for good ends
the request with `GenerationFailed`, never with silence in its place.

Cancelling (the client left a stream, or `DELETE /requests/{id}`) deletes the chunks' messages
that no outcome has answered yet from the work queue: a message no worker took is never
delivered, so its model call never happens; one a worker already holds finishes (its audio stays
cached) and its late ack is ignored by the server. No worker change and no extra state is needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import structlog

from pipeline.contracts.messages import ChunkDone, ChunkFailed, SynthRequest
from pipeline.client import publish_synth_acked
from pipeline.contracts.subjects import PRIORITY_INTERACTIVE

from http_gateway.errors import GatewayError, GenerationFailed, NoAnswer, Unavailable

log = structlog.get_logger("http_gateway.chunked")


class RequestCancelled(GatewayError):
    """The request was cancelled by `DELETE /requests/{id}` while it ran."""

    status = 409


class ChunkedSpeech:
    def __init__(self, gateway, requests: list[SynthRequest], request_id: str):
        self.gateway = gateway
        self.requests = requests
        self.request_id = request_id
        self._futures: list[asyncio.Future] = []
        self._seqs: dict[int, int] = {}  # chunk index -> stream sequence of its message
        self._answered: set[int] = set()
        self._cancelled = False
        self._closed = False
        self.cached = 0

    def __len__(self) -> int:
        return len(self.requests)

    async def publish(self) -> None:
        """Every chunk on the bus, in index order (`Unavailable` when the bus is away)."""
        gateway = self.gateway
        js = gateway.link.require_bus()
        gateway.link.require_store()  # the audio lands there: no point synthesising without it
        timeout_s = gateway.settings.gateway_request_timeout_s
        for index, request in enumerate(self.requests):
            self._futures.append(gateway.router.expect(request.chunk_id))
            try:
                ack = await asyncio.wait_for(
                    publish_synth_acked(js, gateway.names, request, PRIORITY_INTERACTIVE), timeout_s)
            except Exception as exc:  # nats timeouts, no responders, closed connection
                await self.close()
                raise Unavailable(f"message bus unavailable: {type(exc).__name__}") from None
            self._seqs[index] = ack.seq

    async def pieces(self) -> AsyncIterator[tuple[ChunkDone, bytes]]:
        """(done event, WAV) of every chunk in index order. Each chunk gets the request timeout
        from the moment the one before it arrived (a long text is not one long wait)."""
        gateway = self.gateway
        timeout_s = gateway.settings.gateway_request_timeout_s
        for index, future in enumerate(self._futures):
            started = time.perf_counter()
            try:
                arrived = await asyncio.wait_for(asyncio.shield(future), timeout_s)
            except asyncio.TimeoutError:
                gateway.metrics.syntheses.labels(outcome="timeout").inc()
                raise NoAnswer(f"No answer for chunk {index + 1} of {len(self)} within {timeout_s:g} s "
                               f"(request id {self.request_id})", request_id=self.request_id) from None
            self._answered.add(index)
            outcome, wav = arrived.outcome, arrived.wav
            if isinstance(outcome, ChunkFailed):
                gateway.metrics.syntheses.labels(outcome="failed").inc()
                raise GenerationFailed(f"Generation failed at chunk {index + 1} of {len(self)} "
                                       f"({outcome.reason}): {outcome.error}")
            wav = await gateway.audio_of(outcome, wav)
            gateway.metrics.syntheses.labels(outcome="done").inc()
            self.cached += outcome.cached
            log.debug("gateway.chunk", request_id=self.request_id, index=index, cached=outcome.cached,
                      waited_s=round(time.perf_counter() - started, 3))
            yield outcome, wav

    def cancel(self) -> int:
        """Stop the request (DELETE): waiting pieces end with `RequestCancelled`; returns how many
        chunks were still unanswered."""
        self._cancelled = True
        left = 0
        for index, future in enumerate(self._futures):
            if index not in self._answered and not future.done():
                future.set_exception(RequestCancelled(f"request {self.request_id} was cancelled"))
                left += 1
        return left

    async def close(self) -> None:
        """The request is over (answered, failed, cancelled, or its client left): forget its
        futures and withdraw every message no outcome answered. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for request in self.requests:
            self.gateway.router.forget(request.chunk_id)
        unanswered = [seq for index, seq in self._seqs.items() if index not in self._answered]
        if not unanswered:
            return
        js, stream = self.gateway.link.js, self.gateway.names.synth_stream
        withdrawn = 0
        for seq in unanswered:
            try:
                withdrawn += bool(await js.delete_msg(stream, seq))
            except Exception:  # already taken and acked (gone), or the bus is away: nothing to stop
                pass
        self.gateway.metrics.chunks_withdrawn.inc(withdrawn)
        log.info("gateway.chunks_withdrawn", request_id=self.request_id, withdrawn=withdrawn,
                 unanswered=len(unanswered), cancelled=self._cancelled)
