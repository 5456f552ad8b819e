"""`tts-pipeline submit | jobs | status | fetch | cancel | retry`: bulk jobs from the command line.

These only publish to the bus and read the KV bucket and the store (never the model server).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

from pipeline import bus
from pipeline.contracts.errors import StartupError
from pipeline.contracts.messages import ChapterSubmit
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import MANIFEST_KEY, Names
from pipeline.jobs import api as jobs_api
from pipeline.jobs import cast as casting

POLL_S = 0.5


@asynccontextmanager
async def connection(settings: Settings, name: str):
    from pipeline.store import open_store

    nc = await bus.connect(settings, name=name)
    try:
        store = await open_store(settings)
    except BaseException:
        await nc.close()
        raise
    try:
        js = nc.jetstream()
        await bus.set_up(js, settings, Names(settings.namespace))
        yield js, store, await bus.jobs_kv(js, Names(settings.namespace))
    finally:
        store.close()
        await nc.drain()


def default_job_id(path: Path) -> str:
    return jobs_api.default_job_id(path.stem)


def build_submits(chapters, job_id: str, voice: str | None, fmt: str, cast: str | None = None,
                  narrator: str | None = None, dialogue: bool = False,
                  normalize: bool | None = None) -> list[ChapterSubmit]:
    try:
        return jobs_api.build_submits(chapters, job_id, voice=voice, fmt=fmt, cast=jobs_api.parse_cast(cast),
                                      narrator=narrator, dialogue=dialogue, normalize=normalize)
    except jobs_api.JobInputError as exc:
        raise StartupError(f"cannot submit: {exc}") from None


async def submit(settings: Settings, file: str, voice: str | None, fmt: str, job_id: str | None, wait: bool,
                 cast: str | None = None, narrator: str | None = None, dialogue: bool = False,
                 normalize: bool | None = None) -> int:
    from pipeline.text.books import read_book
    from pipeline.text.chapters import BookError

    path = Path(file)
    try:
        chapters = read_book(path)
    except (BookError, OSError) as exc:
        raise StartupError(str(exc)) from None
    if not chapters:
        raise StartupError(f"{file} has no text to speak")
    job_id = job_id or default_job_id(path)
    submits = build_submits(chapters, job_id, voice, fmt, cast, narrator, dialogue, normalize)
    names = Names(settings.namespace)
    async with connection(settings, "tts-submit") as (js, store, kv):
        if cast or narrator or dialogue or any("[" in s.text for s in submits):
            known = await casting.known_voices(js, store, names)
            try:
                casting.check_submits(submits, known)
            except casting.CastError as exc:
                raise StartupError(f"cannot submit: {exc}") from None
        try:
            await jobs_api.register_job(kv, submits)
        except jobs_api.JobConflict as exc:
            raise StartupError(str(exc)) from None
        await jobs_api.publish_chapters(js, names, submits)
        print(f"job {job_id}: {len(submits)} chapters submitted", flush=True)
        if not wait:
            return 0
        return await follow(kv, job_id, len(submits))


async def follow(kv, job_id: str, chapters_total: int) -> int:
    """Live progress bars (overall and per chapter) until the job is done or settled with failures."""
    from tqdm import tqdm

    overall = tqdm(total=0, desc="total", unit="chunk", position=0, file=sys.stderr, dynamic_ncols=True)
    bars: dict[int, tqdm] = {}
    try:
        while True:
            view = await jobs_api.read_job(kv, job_id)
            job, states = (view.job, view.chapters) if view is not None else (None, [])
            for state in states:
                bar = bars.get(state.chapter)
                if bar is None:
                    bar = bars[state.chapter] = tqdm(total=state.chunks_total, position=len(bars) + 1, unit="chunk",
                                                     desc=f"{state.chapter:>3} {state.title[:24]}", leave=True,
                                                     file=sys.stderr, dynamic_ncols=True)
                bar.n = len(state.done)
                bar.set_postfix_str(state.status, refresh=False)
                bar.refresh()
            overall.total = sum(s.chunks_total for s in states)
            overall.n = sum(len(s.done) for s in states)
            minutes = sum(s.audio_s_done for s in states) / 60
            overall.set_postfix_str(f"{minutes:.1f} min of audio", refresh=False)
            overall.refresh()
            if job is not None and job.finished_at is not None:
                break
            settled = len(states) == chapters_total and all(s.status in ("done", "failed") for s in states)
            if settled and any(s.status == "failed" for s in states):
                break
            await asyncio.sleep(POLL_S)
    finally:
        for bar in bars.values():
            bar.close()
        overall.close()
    failed = [s for s in states if s.status == "failed"]
    if failed:
        for s in failed:
            print(f"chapter {s.chapter} failed: {len(s.failed)} chunks; {next(iter(s.failed.values()))}", file=sys.stderr)
        print(f"job {job_id}: {len(failed)} chapters failed; fix the cause, then `tts-pipeline retry {job_id}`",
              file=sys.stderr)
        return 1
    print(f"job {job_id} done: {sum(s.duration_s or 0 for s in states) / 60:.1f} min in {len(states)} chapters; "
          f"`tts-pipeline fetch {job_id} --out DIR`")
    return 0


async def status(settings: Settings, job_id: str, as_json: bool) -> int:
    async with connection(settings, "tts-status") as (js, store, kv):
        view = await jobs_api.read_job(kv, job_id)
        if view is None:
            raise StartupError(f"no job {job_id!r}")
    job, states = view.job, view.chapters
    if as_json:
        print(json.dumps({"job": job.model_dump(), "chapters": [s.model_dump() for s in states]}, indent=1))
        return 0
    print(f"job {job_id}: {view.status}, {job.chapters_done}/{job.total_chapters} chapters, format {job.format}")
    for s in states:
        print(f"  {s.chapter:>4}  {s.status:<10} {len(s.done):>5}/{s.chunks_total:<5} chunks  "
              f"{s.audio_s_done / 60:6.1f} min  {s.title[:40]}")
        for index, error in sorted(s.failed.items(), key=lambda item: int(item[0]))[:3]:
            print(f"        chunk {index}: {error[:160]}")
    return 0


async def fetch(settings: Settings, job_id: str, out: str) -> int:
    async with connection(settings, "tts-fetch") as (js, store, kv):
        manifest_key = MANIFEST_KEY.format(job_id=job_id)
        if not await store.exists(manifest_key):
            raise StartupError(f"job {job_id!r} has no manifest yet (see `tts-pipeline status {job_id}`)")
        manifest_bytes = await store.get(manifest_key)
        manifest = json.loads(manifest_bytes)
        target = Path(out)
        target.mkdir(parents=True, exist_ok=True)
        (target / "manifest.json").write_bytes(manifest_bytes)
        for chapter in manifest["chapters"]:
            for key in (chapter["key"], chapter["subtitles_key"]):
                path = target / key.rsplit("/", 1)[-1]
                path.write_bytes(await store.get(key))
                print(path)
    return 0


async def retry(settings: Settings, job_id: str) -> int:
    """Republish the failed chunks of a job (after the cause is fixed); a cancelled job resumes."""
    from pipeline.jobs import control

    async with connection(settings, "tts-retry") as (js, store, kv):
        try:
            count = await control.retry_job(js, store, kv, Names(settings.namespace), job_id)
        except control.JobNotFound:
            raise StartupError(f"no job {job_id!r}") from None
    print(f"job {job_id}: {count} failed chunks republished")
    return 0


async def list_all(settings: Settings, as_json: bool, limit: int) -> int:
    """Every job in the bucket (submitted here, from the gateway or straight onto the bus), newest first."""
    from pipeline.jobs import control

    if limit < 1:
        raise StartupError(f"--limit must be at least 1, not {limit}")
    async with connection(settings, "tts-jobs") as (js, store, kv):
        states = await control.list_jobs(kv)
        views = [view for s in states[:limit] if (view := await jobs_api.read_job(kv, s.job_id)) is not None]
    if as_json:
        print(json.dumps({"jobs": [v.to_dict() for v in views], "total": len(states)}, indent=1))
        return 0
    if not states:
        print("no jobs")
        return 0
    print(f"{'job':<32} {'status':<10} {'chapters':>9} {'chunks':>13} {'audio':>9}  created")
    for view in views:
        job, chapters = view.job, view.chapters
        chunks = f"{sum(len(s.done) for s in chapters)}/{sum(s.chunks_total for s in chapters)}"
        minutes = sum(s.audio_s_done for s in chapters) / 60
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at))
        print(f"{job.job_id:<32} {view.status:<10} {job.chapters_done:>4}/{job.total_chapters:<4} {chunks:>13} "
              f"{minutes:>5.1f} min  {created}")
    if len(states) > len(views):
        print(f"... {len(states) - len(views)} older jobs (--limit)")
    return 0


async def cancel(settings: Settings, job_id: str) -> int:
    """Cancel a job: its queued chunks are skipped without a model call; `retry` resumes it."""
    from pipeline.jobs import control

    async with connection(settings, "tts-cancel") as (js, store, kv):
        try:
            state = await control.cancel_job(kv, job_id)
        except control.JobNotFound:
            raise StartupError(f"no job {job_id!r}") from None
    if state.finished_at is not None:
        print(f"job {job_id} is finished: nothing to cancel")
    else:
        print(f"job {job_id} cancelled: its queued chunks are skipped; `tts-pipeline retry {job_id}` resumes it")
    return 0
