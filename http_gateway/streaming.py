"""Streamed answers: audio sent in order as a request's chunks finish (chunked transfer).

- `pcm`: raw little-endian int16, 24 kHz mono.
- `wav`: one 44-byte header whose RIFF and data sizes are 0xFFFFFFFF ("unknown": read to the end),
  then PCM. libsndfile (soundfile) reads it to the end; Python's `wave` reads every frame but
  reports 2**31-1 of them; a reader that trusts the sizes sees a file longer than what arrived.
- `mp3`: MPEG frames, each chunk encoded on its own; the pieces concatenate to a playable file.
- SSE (`stream_format: "sse"`, OpenAI's): `speech.audio.delta` events with base64 audio of the
  format, then `speech.audio.done` with usage; a failure after the start is an `error` event.

The first chunk is awaited before the answer starts, so a request that fails at once gets its
4xx/5xx with a message. A chunk's bytes leave only after its audio passed the worker's checks. A
chunk that fails for good later ends the stream: SSE with an error event; raw formats are cut
(the connection closes without the final empty chunk, which every HTTP client reports as an
incomplete body), logged and counted (`tts_gateway_streams_cut_total`), never padded with silence.
When the client leaves, the chunks not yet answered are withdrawn from the queue (`chunked.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi.responses import StreamingResponse

from pipeline.contracts.messages import AUDIO_TOKENS_PER_S

from http_gateway.errors import BadInput, GatewayError, StreamCut
from http_gateway.formats import MEDIA_TYPES, check_format
from http_gateway.longform import (
    STREAM_FORMATS, Joiner, mp3_frames, sse_delta, sse_event, wav_header,
)
from http_gateway.service import Ask, Gateway

log = structlog.get_logger("http_gateway.streaming")


def check_stream_format(fmt: str) -> None:
    check_format(fmt)
    if fmt not in STREAM_FORMATS:
        raise BadInput(f"response_format '{fmt}' cannot be streamed; stream one of {', '.join(STREAM_FORMATS)}, "
                       "or ask without stream for the whole file")


async def stream_speech(gateway: Gateway, ask: Ask, request_id: str, fmt: str, sse: bool) -> StreamingResponse:
    """Publish the request's chunks, wait for the first, and answer with a stream of the rest."""
    check_stream_format(fmt)
    request = await gateway.prepare(ask, request_id)
    requests = gateway.chunk_plan(ask, request)
    gateway.metrics.long_requests.labels(mode="stream").inc()
    context = gateway.chunked(requests, request_id)
    speech = await context.__aenter__()
    pieces = speech.pieces()
    try:
        first = await anext(pieces)
    except BaseException as exc:
        await context.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    rate = gateway.settings.sample_rate_hz
    joiner = Joiner(gateway.settings)

    async def encoded(done, wav, lead: bytes = b"") -> bytes:
        pcm = await asyncio.to_thread(joiner.pcm, wav, done.loudness_lufs)
        if fmt == "mp3":
            return lead + await asyncio.to_thread(mp3_frames, pcm, rate)
        return lead + pcm

    async def body() -> AsyncIterator[bytes]:
        outcome: BaseException | None = None
        try:
            audio = await encoded(*first, lead=wav_header(rate) if fmt == "wav" else b"")
            yield sse_delta(audio) if sse else audio
            async for done, wav in pieces:
                audio = await encoded(done, wav)
                yield sse_delta(audio) if sse else audio
            if sse:
                words = sum(len(r.text.split()) for r in requests)  # OpenAI counts text tokens; words are what we know
                audio_tokens = int(round(joiner.samples / rate * AUDIO_TOKENS_PER_S))
                yield sse_event({"type": "speech.audio.done",
                                 "usage": {"input_tokens": words, "output_tokens": audio_tokens,
                                           "total_tokens": words + audio_tokens}})
        except GatewayError as exc:
            outcome = exc
            gateway.metrics.streams_cut.inc()
            log.warning("gateway.stream_cut", request_id=request_id, status=exc.status, error=exc.detail)
            if sse:
                yield sse_event({"type": "error", "error": {"message": exc.detail, "code": exc.status}})
            else:
                raise StreamCut(exc.detail) from exc
        except BaseException as exc:  # the client left (cancelled) or a bug
            outcome = exc
            raise
        finally:
            with contextlib.suppress(BaseException):
                await pieces.aclose()
            await context.__aexit__(type(outcome) if outcome else None, outcome, None)

    media_type = "text/event-stream" if sse else MEDIA_TYPES[fmt]
    # The first chunk's time at the worker (in the queue, then the model call with its checks):
    # what the first byte waited for that was not the gateway's own.
    timings = first[0].timings
    headers = {"X-Chunks": str(len(requests)), "Cache-Control": "no-store",
               "X-First-Chunk-Queued-Time": f"{timings.queued_s:.3f}",
               "X-First-Chunk-Synth-Time": f"{timings.synth_s:.3f}"}
    return StreamingResponse(body(), media_type=media_type, headers=headers)
