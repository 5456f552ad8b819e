"""Jobs over HTTP: `POST /jobs`, `GET /jobs/{id}`, `GET /jobs/{id}/events`, `GET /jobs/{id}/chapters/{n}`.

The same path as `tts-pipeline submit`: the job is registered in the `tts_jobs` bucket, one
`ChapterSubmit` per chapter goes to `tts.chapters.submit` (de-duplication id `chapter:<job>:<n>`),
and ingest, the synth workers and the assembler do the rest. Every check happens before anything
is registered or published, so a refused request leaves no trace.
"""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pipeline.contracts.errors import StorePermanent, StoreRetryable
from pipeline.contracts.messages import ChapterSubmit
from pipeline.contracts.subjects import TOKEN_RE
from pipeline.jobs import api as jobs_api
from pipeline.text.cast import Cast
from pipeline.text.speakers import speakers_in

from http_gateway.errors import BadInput, Conflict, NotFound, TooLarge, Unavailable
from http_gateway.formats import MEDIA_TYPES, mp3_supported
from http_gateway.job_events import EventStreamResponse, JobFeed, last_event_id
from http_gateway.middleware import request_id_of
from http_gateway.schemas import JobRequest
from http_gateway.service import Gateway

log = structlog.get_logger("http_gateway.jobs")

router = APIRouter()

KV_TIMEOUT_S = 5.0
_ACCEPTED = {202: {"description": "the chapters are on the bus; follow `events_url` or poll `status_url`"}}


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _urls(job_id: str) -> dict[str, str]:
    return {"status_url": f"/jobs/{job_id}", "events_url": f"/jobs/{job_id}/events"}


def _check_limits(body: JobRequest) -> list[int]:
    """Indices of blank chapters to leave out; 400/413 for what cannot be submitted at all."""
    if not body.chapters:
        raise BadInput("chapters cannot be empty: give at least one {\"title\", \"text\"}")
    if len(body.chapters) > jobs_api.MAX_CHAPTERS:
        raise TooLarge(f"The job has {len(body.chapters)} chapters; the limit is {jobs_api.MAX_CHAPTERS}")
    for i, chapter in enumerate(body.chapters):
        if len(chapter.text) > jobs_api.MAX_CHAPTER_CHARS:
            raise TooLarge(f"Chapter {i} is {len(chapter.text)} characters; the limit per chapter is "
                           f"{jobs_api.MAX_CHAPTER_CHARS}. Split it into several chapters.")
    blank = [i for i, c in enumerate(body.chapters) if not c.text.strip()]
    if len(blank) == len(body.chapters):
        raise BadInput("Every chapter's text is empty: there is nothing to speak")
    return blank


def _check_payloads(submits: list[ChapterSubmit], max_payload: int) -> None:
    # Characters are checked above; multi-byte text can still exceed the server's message cap.
    for s in submits:
        size = len(s.to_bytes())
        if size > max_payload:
            raise TooLarge(f"Chapter {s.chapter} is {size} bytes as a bus message; the limit is {max_payload}. "
                           "Split it into several chapters.")


async def _view(gateway: Gateway, job_id: str) -> jobs_api.JobView:
    kv = gateway.link.require_jobs()
    view = None
    if TOKEN_RE.match(job_id):
        try:
            view = await asyncio.wait_for(jobs_api.read_job(kv, job_id), KV_TIMEOUT_S)
        except Exception as exc:  # nats timeouts, a connection closing under us
            raise Unavailable(f"message bus unavailable: {type(exc).__name__}") from None
    if view is None:
        raise NotFound(f"Unknown job '{job_id}'")
    return view


def _state(view: jobs_api.JobView) -> dict:
    state = view.to_dict()
    for chapter in state["chapters"]:
        if chapter["status"] == "done" and chapter["key"]:
            chapter["url"] = f"/jobs/{view.job.job_id}/chapters/{chapter['chapter']}"
    return {**state, **_urls(view.job.job_id)}


@router.post("/jobs", status_code=202, responses=_ACCEPTED)
async def submit_job(body: JobRequest, request: Request) -> JSONResponse:
    """Submit chapters as one job. Blank chapters are left out and the others numbered 0, 1, ...
    in order (`skipped` lists the request indices left out), as `tts-pipeline submit` does."""
    answer = await submit(_gateway(request), body, request_id_of(request.scope))
    return JSONResponse(answer, status_code=202, headers={"Location": answer["status_url"]})


async def submit(gateway: Gateway, body: JobRequest, request_id: str | None) -> dict:
    """Check, register and publish a job (`POST /jobs`, `POST /jobs/upload`); every check runs
    before anything is registered or published. Returns the 202 answer's body."""
    if body.format == "mp3" and not mp3_supported():
        raise BadInput("format mp3 is not available on this server (libsndfile without MP3); use wav or flac")
    blank = _check_limits(body)
    voice = await gateway.resolve_voice(body.voice)
    job_id = body.job_id or jobs_api.default_job_id(body.title or "job")
    skip = set(blank)
    kept = [c for i, c in enumerate(body.chapters) if i not in skip]
    speakers = list(dict.fromkeys(s for c in kept for s in speakers_in(c.text, body.dialogue)))
    await gateway.check_cast(Cast.of(body.cast, body.narrator), speakers)
    try:
        submits = jobs_api.build_submits(kept, job_id, voice=voice, fmt=body.format, sampling=body.sampling(),
                                         system_prompt=body.system_prompt, cast=body.cast,
                                         narrator=body.narrator, dialogue=body.dialogue,
                                         normalize=body.normalize)
    except jobs_api.JobInputError as exc:
        raise BadInput(str(exc)) from None
    js = gateway.link.require_bus()
    kv = gateway.link.require_jobs()
    _check_payloads(submits, gateway.link.nc.max_payload)
    try:
        await asyncio.wait_for(jobs_api.register_job(kv, submits, title=body.title or ""), KV_TIMEOUT_S)
    except jobs_api.JobConflict as exc:
        raise Conflict(str(exc), job_id=job_id) from None
    except Exception as exc:
        raise Unavailable(f"message bus unavailable: {type(exc).__name__}") from None
    try:
        published = await jobs_api.publish_chapters(js, gateway.names, submits)
    except Exception as exc:  # the job is registered: the same request again publishes what is missing
        raise Unavailable(f"message bus unavailable: {type(exc).__name__}; send the same request again "
                          f"(job_id {job_id})", job_id=job_id) from None
    gateway.metrics.jobs_submitted.inc()
    gateway.metrics.job_chapters_submitted.inc(len(submits))
    log.info("gateway.job_submitted", request_id=request_id, job=job_id, chapters=len(submits),
             published=published, skipped=len(blank), chars=sum(len(s.text) for s in submits))
    return {"job_id": job_id, "chapters": len(submits), "skipped": blank, **_urls(job_id)}


@router.get("/jobs/{job_id}")
async def job_status(job_id: str, request: Request) -> dict:
    """The job's state from the `tts_jobs` bucket: status (`running`, `failed`, `cancelled`, `done`), each
    chapter's chunk counts, failures, duration and file key; `manifest_key` once done."""
    return _state(await _view(_gateway(request), job_id))


@router.get("/jobs/{job_id}/events", response_class=EventStreamResponse, status_code=200,
            responses={200: {"content": {"text/event-stream": {}}},
                       204: {"description": "the job is finished and the client resumes (`Last-Event-ID`)"}})
async def job_events(job_id: str, request: Request) -> Response:
    """Server-Sent Events, each with an `id:`: `job.state` first, then `job.progress`,
    `chapter.done`, `chapter.failed` and `job.done` as they happen; ends after `job.done` (at once
    when the job is already done). With `Last-Event-ID` it resumes after that event without
    `job.state`, and answers 204 for a finished job. With an API key set, a browser's
    EventSource (no headers) may pass it as `?key=`."""
    gateway = _gateway(request)
    if not TOKEN_RE.match(job_id):
        raise NotFound(f"Unknown job '{job_id}'")
    js = gateway.link.require_bus()
    after = last_event_id(request.headers.get("last-event-id"))
    # Subscribe first, then read: an event published in between is not lost.
    try:
        feed = await JobFeed(gateway.names, job_id, gateway.metrics).open(js, after)
    except Exception as exc:
        raise Unavailable(f"message bus unavailable: {type(exc).__name__}") from None
    try:
        view = await _view(gateway, job_id)
    except BaseException:
        await feed.close()
        raise
    if after is not None and view.finished:
        await feed.close()
        return Response(status_code=204)
    state = None if after is not None else _state(view)
    return EventStreamResponse(feed, state, view.finished, gateway.settings.gateway_sse_heartbeat_s)


@router.get("/jobs/{job_id}/chapters/{chapter}", response_class=Response,
            responses={200: {"content": {t: {} for t in ("audio/wav", "audio/flac", "audio/mpeg")}}})
async def job_chapter(job_id: str, chapter: int, request: Request) -> Response:
    """The chapter's audio file once it is assembled (404 before)."""
    gateway = _gateway(request)
    view = await _view(gateway, job_id)
    state = next((s for s in view.chapters if s.chapter == chapter), None)
    if state is None or state.status != "done" or not state.key:
        status = state.status if state else view.job.chapters.get(str(chapter))
        raise NotFound(f"Chapter {chapter} of job '{job_id}' is not available"
                       + (f" (status {status})" if status else " (no such chapter)"))
    try:
        # Whole file in memory: the store has no streaming read yet (a 60-minute WAV is ~170 MB).
        data = await gateway.link.require_store().get(state.key)
    except (StoreRetryable, StorePermanent) as exc:
        raise Unavailable(f"object store unavailable: {exc}") from None
    filename = state.key.rsplit("/", 1)[-1]
    return Response(data, media_type=MEDIA_TYPES[state.format],
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})

