"""The voice library over HTTP: `GET`, `POST /v1/audio/voices`, `DELETE /v1/audio/voices/{name}`.

An upload is checked (`pipeline/voicelib.py` `check_clip`: 3-30 s of audio that is not silent,
not clipped, with a transcript of 0.5-6 words per second) and stored exactly like a synced preset
(`voices/<name>.wav` + `voices/<name>.json`, source "library"); every check runs before anything
is written, and a failed write leaves nothing behind. The name is then usable as `voice` at once.

Rules: a name is a token that is not a model server's built-in voice; an existing stored name is
refused (409) unless the form says `overwrite=true`; a stored voice (uploaded or folder-synced)
that an unfinished job uses cannot be replaced or deleted (409 naming the jobs) unless `force=true`.
The rules live in `pipeline/jobs/library.py`, shared with `tts-pipeline voices add|delete`.
"""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from pipeline import voicelib
from pipeline.contracts.errors import StorePermanent, StoreRetryable
from pipeline.jobs import api as jobs_api
from pipeline.jobs import library

from http_gateway.errors import BadInput, Conflict, GatewayError, NotFound, Unavailable
from http_gateway.service import Gateway

log = structlog.get_logger("http_gateway.voices")

router = APIRouter()

KV_TIMEOUT_S = 5.0
_TRUE = frozenset({"1", "true", "yes", "on"})


class BadClip(GatewayError):
    """An uploaded clip that cannot be a voice; `reason` says which check refused it."""

    status = 422


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _details(voice: voicelib.VoicePreset) -> dict:
    return {"name": voice.name, "source": voice.source, "duration_s": voice.duration_s,
            "transcript": voice.transcript, "system_prompt": voice.system_prompt}


async def _builtin(gateway: Gateway) -> set[str]:
    """Voices the workers' model servers offer themselves."""
    return {v for beat in await gateway.observer.heartbeats() for b in beat.backends for v in b.voices}


async def _stored(gateway: Gateway) -> list[voicelib.VoicePreset]:
    try:
        return await voicelib.list_voices(gateway.link.require_store())
    except (StoreRetryable, StorePermanent) as exc:
        raise Unavailable(f"object store unavailable: {exc}") from None


@router.get("/v1/audio/voices")
async def list_voices(request: Request) -> dict:
    """Voice names usable as `voice` (`voices`), and for each its `details`: `source` ("library"
    for an upload, "preset" for a folder sync, "builtin" for a model server's own), `duration_s`
    (null for a built-in), and a stored voice's `transcript` and `system_prompt`."""
    gateway = _gateway(request)
    names = await gateway.observer.voices(refresh=True)
    stored = {v.name: v for v in await _stored(gateway)} if gateway.link.store is not None else {}
    details = [_details(stored[n]) if n in stored else {"name": n, "source": "builtin", "duration_s": None}
               for n in sorted(names | stored.keys())]
    return {"voices": [d["name"] for d in details], "details": details}


def _field(form, *names: str) -> str:
    for name in names:
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


async def _users(gateway: Gateway, name: str) -> list[str]:
    kv = gateway.link.require_jobs()
    try:
        return await asyncio.wait_for(jobs_api.jobs_using_voice(kv, name), KV_TIMEOUT_S)
    except Exception as exc:  # nats timeouts, a connection closing under us
        raise Unavailable(f"message bus unavailable: {type(exc).__name__}") from None


def _refused(exc: library.VoiceRefused) -> GatewayError:
    if exc.reason == "bad_name":
        return BadInput(str(exc), reason=exc.reason)
    if exc.reason == "not_found":
        return NotFound(str(exc))
    if exc.reason == "in_use":
        return Conflict(f"{exc} (or send force=true)", reason=exc.reason, jobs=exc.jobs)
    if exc.reason == "exists":
        return Conflict(f"{exc}; send overwrite=true to replace it", reason=exc.reason)
    return Conflict(str(exc), reason=exc.reason)


@router.post("/v1/audio/voices", status_code=201)
async def upload_voice(request: Request) -> JSONResponse:
    """Store a named voice from a multipart form: `file` (or `audio`): a 3-30 s clip of one
    speaker; `transcript`: its words; `name`; optional `scene_prompt` (or `system_prompt`);
    optional `overwrite=true` to replace a stored voice of that name. 201 with the record."""
    gateway = _gateway(request)
    try:
        form = await request.form()
    except Exception as exc:
        raise BadInput(f"expected a multipart/form-data body: {exc}") from None
    name, transcript = _field(form, "name"), _field(form, "transcript")
    scene = _field(form, "scene_prompt", "system_prompt") or None
    overwrite = _field(form, "overwrite").lower() in _TRUE
    upload = form.get("file") or form.get("audio")
    if not isinstance(upload, UploadFile):
        raise BadInput("give the clip as the multipart file field 'file' (or 'audio')", reason="no_file")
    if not name:
        raise BadInput("give the voice a 'name'", reason="no_name")
    try:
        voice, replaced = await library.add_voice(
            gateway.link.require_store(), name, await upload.read(), transcript, scene,
            builtin=await _builtin(gateway), users_of=lambda n: _users(gateway, n), overwrite=overwrite,
            force=_field(form, "force").lower() in _TRUE, sample_rate_hz=gateway.settings.sample_rate_hz)
    except voicelib.ClipError as exc:
        raise BadClip(str(exc), reason=exc.reason) from None
    except library.VoiceRefused as exc:
        raise _refused(exc) from None
    except (StoreRetryable, StorePermanent) as exc:
        raise Unavailable(f"object store unavailable: {exc}") from None
    except voicelib.PresetError as exc:  # a malformed record in the way
        raise Conflict(str(exc), reason="exists") from None
    await gateway.observer.voices(refresh=True)
    log.info("gateway.voice_stored", voice=name, duration_s=voice.duration_s, replaced=replaced)
    return JSONResponse(_details(voice), status_code=201, headers={"Location": f"/v1/audio/voices/{name}"})


@router.delete("/v1/audio/voices/{name}", status_code=204, response_class=Response)
async def delete_voice(name: str, request: Request, force: bool = False) -> Response:
    """Remove a stored voice (uploaded or folder-synced; a later `voices sync` brings a preset
    back). 404 for an unknown name or a built-in; 409 while an unfinished job uses it."""
    gateway = _gateway(request)
    try:
        await library.remove_voice(gateway.link.require_store(), name, builtin=await _builtin(gateway),
                                   users_of=lambda n: _users(gateway, n), force=force)
    except library.VoiceRefused as exc:
        raise _refused(exc) from None
    except (StoreRetryable, StorePermanent) as exc:
        raise Unavailable(f"object store unavailable: {exc}") from None
    await gateway.observer.voices(refresh=True)
    log.info("gateway.voice_deleted", voice=name)
    return Response(status_code=204)
