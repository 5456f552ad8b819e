"""Speech routes: the original `/generate` contract and the OpenAI-compatible speech route."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response

from http_gateway.errors import BadInput, ClientGone, GatewayError, NotFound, TooLarge
from http_gateway.formats import MEDIA_TYPES, check_format, transcode
from http_gateway.middleware import request_id_of
from http_gateway.schemas import GenerateRequest, SpeechRequest
from http_gateway.service import Ask, Gateway, Spoken
from http_gateway.streaming import stream_speech

log = structlog.get_logger("http_gateway.routes")

router = APIRouter()

_WAV_RESPONSE = {200: {"content": {"audio/wav": {}}, "description": "WAV audio, 24 kHz mono 16-bit"}}


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


T = TypeVar("T")


async def _client_left(request: Request) -> None:
    """Returns once the client has closed its connection. The body was read already: the next
    ASGI message can only be the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; if the client closes its connection first, `work` is cancelled and
    `ClientGone` raised. A whole long answer is many model calls: cancelling it withdraws every chunk
    no worker took yet (`Gateway.chunked`), so a client that gave up (its own timeout, a closed tab)
    costs no more GPU time. Chunks already running finish and stay cached."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_client_left(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        log.info("gateway.client_left", request_id=request_id_of(request.scope), path=request.url.path)
        raise ClientGone()
    return task.result()


def _ask(body: GenerateRequest) -> Ask:
    return Ask(text=body.text, sampling=body.sampling(), system_prompt=body.system_prompt, voice=body.voice,
               reference_b64=body.reference_audio_base64, reference_text=body.reference_text,
               cast=body.cast, narrator=body.narrator, normalize=body.normalize)


def _headers(spoken: Spoken) -> dict[str, str]:
    return {
        "X-Generation-Time": f"{spoken.generation_s:.2f}",
        "X-Concurrent-Requests": str(spoken.concurrent),
        "X-Cache": "hit" if spoken.all_cached else "miss",
        "X-Chunks": str(spoken.chunks),
    }


@router.post("/generate", response_class=Response, responses=_WAV_RESPONSE)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """Speak `text`; answers the WAV with `X-Generation-Time`, `X-Concurrent-Requests`, `X-Cache`.
    A long text is split, spoken in parallel and joined; `stream: true` sends it as it is spoken."""
    gateway, request_id = _gateway(request), request_id_of(request.scope)
    if body.stream:
        return await stream_speech(gateway, _ask(body), request_id, "wav", sse=False)
    spoken = await _unless_client_leaves(request, gateway.generate(_ask(body), request_id))
    return Response(spoken.wav, media_type="audio/wav", headers=_headers(spoken))


@router.delete("/requests/{request_id}", status_code=202)
async def cancel(request_id: str, request: Request) -> dict:
    """Cancel a long request (its `X-Request-Id`) running on this or another gateway instance:
    chunks no worker has taken are withdrawn and never reach a model server; those already running
    finish and stay cached."""
    left = await _gateway(request).cancel(request_id)
    if left is None:
        raise NotFound(f"No long request '{request_id}' is running on any gateway")
    return {"request_id": request_id, "cancelled": True, "chunks_unanswered": left}


@router.post("/generate/batch")
async def generate_batch(items: list[GenerateRequest], request: Request) -> dict:
    """Speak every item at once; results in request order, one failure never sinks the others."""
    gateway = _gateway(request)
    limit = gateway.settings.gateway_max_batch
    if len(items) > limit:
        raise TooLarge(f"Batch has {len(items)} items; the limit is {limit}. "
                       "Send larger sets to the jobs API (POST /jobs).")
    request_id = request_id_of(request.scope)

    async def one(index: int, item: GenerateRequest) -> dict:
        try:
            spoken = await gateway.generate(_ask(item), f"{request_id}.{index}")
        except GatewayError as exc:
            return {"index": index, "success": False, "error": exc.detail}
        except Exception as exc:  # a bug must not sink the other items either
            log.exception("gateway.batch_item_error", request_id=request_id, index=index)
            return {"index": index, "success": False, "error": f"internal error ({type(exc).__name__})"}
        return {"index": index, "success": True, "audio_base64": base64.b64encode(spoken.wav).decode(),
                "generation_time": round(spoken.generation_s, 2)}

    results = await _unless_client_leaves(request, asyncio.gather(*(one(i, item) for i, item in enumerate(items))))
    successful = sum(r["success"] for r in results)
    return {"results": results, "total": len(results), "successful": successful, "failed": len(results) - successful}


@router.post("/v1/audio/speech", response_class=Response,
             responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
async def speech(body: SpeechRequest, request: Request) -> Response:
    """OpenAI-compatible speech. OpenAI voice names (alloy, echo, ...) mean the default voice;
    `model`, `speed` and `instructions` are accepted and not used."""
    fmt = body.response_format.lower()
    check_format(fmt)  # before any synthesis
    if body.stream_format not in ("audio", "sse"):
        raise BadInput(f"stream_format '{body.stream_format}' is not supported; use 'audio' or 'sse'")
    ask = Ask(text=body.input, sampling=body.sampling(), voice=body.voice, openai_voices=True,
              cast=body.cast, narrator=body.narrator, normalize=body.normalize)
    if body.stream or body.stream_format == "sse":
        return await stream_speech(_gateway(request), ask, request_id_of(request.scope), fmt,
                                   sse=body.stream_format == "sse")
    spoken = await _unless_client_leaves(request, _gateway(request).generate(ask, request_id_of(request.scope)))
    audio = spoken.wav if fmt == "wav" else await asyncio.to_thread(transcode, spoken.wav, fmt)
    return Response(audio, media_type=MEDIA_TYPES[fmt], headers=_headers(spoken))

