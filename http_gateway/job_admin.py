"""Jobs for the studio page and for scripts: `POST /jobs/upload`, `POST /jobs/preview`, `GET /jobs`,
`DELETE /jobs/{id}` (cancel) and `POST /jobs/{id}/retry`.

An upload is read with the same book readers as `tts-pipeline submit` (.txt, .md, .epub) and
then takes the `POST /jobs` path: every check before anything is registered, so a bad book, an
unknown voice or a store that is down leaves no job behind. The list comes from the `tts_jobs`
bucket, so it shows jobs started from the CLI or straight on the bus too, and survives reloads
and gateway restarts.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path

import structlog
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from pipeline.contracts.errors import StorePermanent, StoreRetryable
from pipeline.contracts.messages import Sampling
from pipeline.contracts.subjects import MANIFEST_KEY, TOKEN_RE
from pipeline.jobs import api as jobs_api
from pipeline.jobs import control
from pipeline.text import cast as text_cast
from pipeline.text.books import read_book
from pipeline.text.chapters import BookError

from http_gateway.errors import BadInput, NotFound, Unavailable
from http_gateway.jobs import KV_TIMEOUT_S, _gateway, _state, _urls, _view, submit
from http_gateway.middleware import request_id_of
from http_gateway.schemas import JobChapter, JobRequest
from http_gateway.service import Ask

log = structlog.get_logger("http_gateway.job_admin")

router = APIRouter()

BOOK_SUFFIXES = (".txt", ".md", ".markdown", ".epub")
PREVIEW_WORDS = 75  # about 30 s of speech
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s|$)")


def parse_cast(text: str | None) -> dict[str, str] | None:
    """The form's `cast`: a JSON object or `speaker=voice` lines; None when blank; BadInput otherwise."""
    try:
        return text_cast.parse_cast(text)
    except text_cast.CastError as exc:
        raise BadInput(str(exc)) from None


async def read_upload(file: UploadFile) -> list:
    """The book's chapters, read off the event loop from a temporary copy with the file's suffix."""
    name = Path(file.filename or "book").name
    suffix = Path(name).suffix.lower()
    if suffix not in BOOK_SUFFIXES:
        raise BadInput(f"{name}: unsupported book format {suffix or '(no suffix)'!r}; use .txt, .md or .epub")
    data = await file.read()
    if not data.strip():
        raise BadInput(f"{name}: the file is empty")

    def read() -> list:
        with tempfile.TemporaryDirectory(prefix="tts-upload-") as folder:
            path = Path(folder) / f"book{suffix}"
            path.write_bytes(data)
            return read_book(path)

    try:
        chapters = await asyncio.to_thread(read)
    except BookError as exc:
        raise BadInput(str(exc).replace("book" + suffix, name)) from None
    return chapters


def preview_text(text: str, words: int = PREVIEW_WORDS) -> str:
    """The first ~`words` words, cut after the last sentence end inside them (or at `words`)."""
    parts = text.split()
    head = " ".join(parts[:words])
    if len(parts) <= words:
        return head
    ends = list(_SENTENCE_END.finditer(head))
    return head[:ends[-1].end()] if ends and ends[-1].end() > len(head) // 3 else head


@router.post("/jobs/upload", status_code=202)
async def upload_job(request: Request, file: UploadFile = File(..., description="a .txt, .md or .epub book"),
                     title: str = Form(""), voice: str = Form(""), format: str = Form("wav"),
                     cast: str = Form(""), narrator: str = Form(""), dialogue: bool = Form(False),
                     system_prompt: str = Form(""), temperature: float = Form(1.0)) -> JSONResponse:
    """Upload a book file (multipart) and submit it as a job, like `POST /jobs` with its chapters.
    `cast` is a JSON object or `speaker=voice` lines; `dialogue` speaks quotes in the cast's
    "dialogue" voice."""
    gateway = _gateway(request)
    chapters = await read_upload(file)
    name = Path(file.filename or "book").stem
    try:
        body = JobRequest(chapters=[JobChapter(title=c.title, text=c.text) for c in chapters], voice=voice or None,
                          format=format, title=title or name, system_prompt=system_prompt or None,
                          temperature=temperature, cast=parse_cast(cast), narrator=narrator.strip() or None,
                          dialogue=dialogue)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "form"
        raise BadInput(f"{where}: {first['msg']}") from None
    answer = {**await submit(gateway, body, request_id_of(request.scope)), "title": body.title}
    log.info("gateway.book_uploaded", request_id=request_id_of(request.scope), job=answer["job_id"],
             chapters=answer["chapters"], file=file.filename)
    return JSONResponse(answer, status_code=202, headers={"Location": answer["status_url"]})


@router.post("/jobs/preview", response_class=Response, responses={200: {"content": {"audio/wav": {}}}})
async def preview_job(request: Request, file: UploadFile = File(...), voice: str = Form(""),
                      system_prompt: str = Form(""), cast: str = Form(""), narrator: str = Form("")) -> Response:
    """About the first 30 s (~75 words, cut at a sentence end) of the book's first chapter, spoken
    in the chosen voice as one WAV, before the whole book is submitted."""
    chapters = await read_upload(file)
    text = preview_text(chapters[0].text)
    ask = Ask(text=text, sampling=Sampling(), voice=voice or None, system_prompt=system_prompt or None,
              cast=parse_cast(cast), narrator=narrator.strip() or None)
    spoken = await _gateway(request).generate(ask, request_id_of(request.scope))
    return Response(spoken.wav, media_type="audio/wav", headers={"X-Preview-Text": text[:200].encode("ascii", "replace").decode()})


@router.get("/jobs")
async def list_jobs(request: Request, limit: int = Query(20, ge=1, le=200), offset: int = Query(0, ge=0)) -> dict:
    """Every job in the `tts_jobs` bucket (from the gateway, the CLI or the bus), newest first,
    `limit` from `offset`: the `GET /jobs/{id}` body of each (chapter rows included)."""
    gateway = _gateway(request)
    kv = gateway.link.require_jobs()
    try:
        states = await asyncio.wait_for(control.list_jobs(kv), KV_TIMEOUT_S)
        page = states[offset:offset + limit]
        views = [await asyncio.wait_for(jobs_api.read_job(kv, s.job_id), KV_TIMEOUT_S) for s in page]
    except Exception as exc:
        raise Unavailable(f"message bus unavailable: {type(exc).__name__}") from None
    jobs = [_state(v) for v in views if v is not None]
    more = offset + limit < len(states)
    return {"jobs": jobs, "total": len(states), "offset": offset, "limit": limit,
            "next_offset": offset + limit if more else None}


@router.delete("/jobs/{job_id}", status_code=202)
async def cancel_job(job_id: str, request: Request) -> dict:
    """Cancel: the job's queued chunks are skipped without a model call; status `cancelled`.
    A finished job is left as it is. `POST /jobs/{id}/retry` resumes a cancelled job."""
    gateway = _gateway(request)
    await _view(gateway, job_id)  # 404 for an unknown job
    try:
        await asyncio.wait_for(control.cancel_job(gateway.link.require_jobs(), job_id), KV_TIMEOUT_S)
    except control.JobNotFound:
        raise NotFound(f"Unknown job '{job_id}'") from None
    except Exception as exc:
        raise Unavailable(f"message bus unavailable: {type(exc).__name__}") from None
    log.info("gateway.job_cancelled", request_id=request_id_of(request.scope), job=job_id)
    return _state(await _view(gateway, job_id))


@router.post("/jobs/{job_id}/retry", status_code=202)
async def retry_job(job_id: str, request: Request) -> dict:
    """Republish the job's failed chunks (as `tts-pipeline retry`); a cancelled job resumes with
    every chunk not yet done. `republished` counts the synth requests sent."""
    gateway = _gateway(request)
    if not TOKEN_RE.match(job_id):
        raise NotFound(f"Unknown job '{job_id}'")
    js, kv, store = gateway.link.require_bus(), gateway.link.require_jobs(), gateway.link.require_store()
    try:
        count = await control.retry_job(js, store, kv, gateway.names, job_id)
    except control.JobNotFound:
        raise NotFound(f"Unknown job '{job_id}'") from None
    except Exception as exc:
        raise Unavailable(f"bus or store unavailable: {type(exc).__name__}") from None
    log.info("gateway.job_retried", request_id=request_id_of(request.scope), job=job_id, republished=count)
    return {"job_id": job_id, "republished": count, **_urls(job_id)}


async def _stored(gateway, key: str, what: str) -> bytes:
    store = gateway.link.require_store()
    try:
        if not await store.exists(key):
            raise NotFound(f"{what} is not available yet")
        return await store.get(key)
    except (StoreRetryable, StorePermanent) as exc:
        raise Unavailable(f"object store unavailable: {exc}") from None


@router.get("/jobs/{job_id}/manifest", responses={200: {"content": {"application/json": {}}}})
async def job_manifest(job_id: str, request: Request) -> Response:
    """The finished job's manifest (chapters, files, durations, chunk timings); 404 before."""
    gateway = _gateway(request)
    await _view(gateway, job_id)
    data = await _stored(gateway, MANIFEST_KEY.format(job_id=job_id), f"The manifest of job '{job_id}'")
    return Response(data, media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}-manifest.json"'})


@router.get("/jobs/{job_id}/chapters/{chapter}/subtitles", response_class=Response,
            responses={200: {"content": {"text/vtt": {}}}})
async def chapter_subtitles(job_id: str, chapter: int, request: Request) -> Response:
    """The chapter's WebVTT subtitles (one cue per chunk), written with the manifest; 404 before."""
    gateway = _gateway(request)
    view = await _view(gateway, job_id)
    state = next((s for s in view.chapters if s.chapter == chapter), None)
    if state is None or not state.key:
        raise NotFound(f"Chapter {chapter} of job '{job_id}' is not available")
    key = state.key.rsplit(".", 1)[0] + ".vtt"
    data = await _stored(gateway, key, f"The subtitles of chapter {chapter}")
    return Response(data, media_type="text/vtt",
                    headers={"Content-Disposition": f'attachment; filename="{key.rsplit("/", 1)[-1]}"'})
