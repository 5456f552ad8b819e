"""`tts-pipeline up` and `tts-pipeline demo`: the whole pipeline on one machine, no Docker.

`up` listens on the settings' addresses (defaults: NATS 4222, S3 8333, engine 8000) so every
other command finds it with no configuration. With `TTS_BACKEND_URLS` (or `VLLM_URL`) set, no
local engine is started and the worker uses those servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import structlog

from pipeline import bus
from pipeline.contracts.errors import StartupError
from pipeline.contracts.messages import ChapterDone, ChapterFailed, ChapterSubmit
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import MANIFEST_KEY, Names
from pipeline.stack.devstack import DevStack
from pipeline.stack.ports import DevStackError, free_port
from pipeline.stack.runtime import install_stop_signals, synth_worker

log = structlog.get_logger("pipeline.embedded")

LOOPBACK_HOSTS = {"127.0.0.1", "localhost"}
ENGINE_READY_TIMEOUT_S = 30.0

DEMO_BOOK = [
    ("The Pipeline", "The pipeline turns a lot of text into speech. Every chapter is split into chunks of a few "
     "sentences, and every chunk becomes a request on the bus. Workers pull the requests, call the model server "
     "with a bound on the calls in flight, check the audio, and store it in the bucket."),
    ("Nothing Lost", "When the last chunk of a chapter is done, the assembler joins the chunks in order, at one "
     "loudness, with a short pause between them. Nothing is lost when a worker stops: the bus delivers the "
     "request again, and audio that already exists is never made twice."),
]


def _loopback_port(url: str, what: str) -> int:
    parsed = urlparse(url)
    if parsed.hostname not in LOOPBACK_HOSTS or parsed.port is None:
        raise StartupError(f"`up` runs its servers on 127.0.0.1 only, but {what} is {url}")
    return parsed.port


def _backends_configured() -> bool:
    return bool(os.environ.get("TTS_BACKEND_URLS") or os.environ.get("VLLM_URL"))


def local_engine_kind(settings: Settings) -> str:
    """The engine `up`/`demo` start: Piper (real speech) unless TTS_LOCAL_ENGINE=sim or the
    `local` extra is missing, in which case the stand-in runs and a one-line note says why."""
    if settings.local_engine == "sim":
        return "sim"
    from pipeline.engines.piper import missing

    reason = missing()
    if reason:
        print(f"note: using the stand-in engine (tones, not speech): {reason}")
        return "sim"
    return "piper"


class EngineProcess:
    """A local engine (`kind`: piper or sim) as a child process (its own session: Ctrl-C reaches only us)."""

    def __init__(self, port: int, log_path: Path, latency_s: float, extra_args: tuple[str, ...] = (),
                 kind: str = "sim"):
        self.kind = kind
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.latency_s = latency_s
        self.extra_args = extra_args
        self._proc: subprocess.Popen | None = None

    def start(self) -> "EngineProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "engine", "--kind", self.kind, "--host", "127.0.0.1",
                 "--port", str(self.port), *(("--latency-s", str(self.latency_s)) if self.kind == "sim" else ()),
                 *self.extra_args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + ENGINE_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StartupError(f"engine exited at start (code {self._proc.returncode}); see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise StartupError(f"engine on {self.url} not ready after {ENGINE_READY_TIMEOUT_S:.0f} s; see {self.log_path}")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None or self._proc.poll() is not None else self._proc.pid

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _start_stack(data_dir: Path, settings: Settings, nats_port: int | None, s3_port: int | None) -> DevStack:
    stack = DevStack(data_dir, nats_port=nats_port, s3_port=s3_port, access_key=settings.s3_access_key,
                     secret_key=settings.s3_secret_key, bucket=settings.s3_bucket)
    try:
        return stack.start()
    except DevStackError as exc:
        raise StartupError(str(exc).splitlines()[0]) from None


@contextlib.asynccontextmanager
async def pipeline_services(settings: Settings):
    """A synth worker, the ingest subscriber and the assembler in this process, ready.

    Yields the worker; `worker.stop()` ends the worker, and leaving the block stops the rest.
    """
    from pipeline import ingest
    from pipeline.jobs import assembler

    async with synth_worker(settings, name="embedded") as worker:
        await worker.setup()
        ingest_broker = ingest.build_broker(settings, [ingest.Ingestor(settings, worker.js, worker.store)])
        the_assembler = assembler.Assembler(settings, worker.js, worker.store)
        assemble_broker = assembler.build_broker(settings, [the_assembler])
        await ingest_broker.start()
        await assemble_broker.start()
        try:
            yield worker
        finally:
            await ingest_broker.stop()
            await the_assembler.drain(settings.drain_timeout_s)
            await assemble_broker.stop()


async def run_up(settings: Settings, data_dir: str, engine_latency_s: float, engine_port: int | None = None) -> int:
    nats_port = _loopback_port(settings.nats_url, "TTS_NATS_URL")
    s3_port = _loopback_port(settings.s3_endpoint_url, "TTS_S3_ENDPOINT_URL")
    root = Path(data_dir).absolute()
    stack = await asyncio.to_thread(_start_stack, root, settings, nats_port, s3_port)
    engine = None
    try:
        if not _backends_configured():
            port = engine_port or _loopback_port(settings.backend_urls[0], "TTS_BACKEND_URLS")
            engine = await asyncio.to_thread(EngineProcess(port, root / "logs" / "engine.log", engine_latency_s,
                                                           kind=local_engine_kind(settings)).start)
            settings = settings.model_copy(update={"backend_urls": [engine.url]})
        print("tts-pipeline up: the embedded stack is running (Ctrl-C stops everything)")
        for line in stack.describe():
            print(f"  {line}")
        print(f"  engine  {', '.join(settings.backend_urls)}" + (f"  (local: {engine.kind})" if engine else "  (configured)"))
        print(f"  gateway http://{settings.gateway_host}:{settings.gateway_port}")
        print(f"  studio  http://{settings.gateway_host}:{settings.gateway_port}/  (the web page)")
        print("  workers synth, ingest, assemble, gateway (this process)")
        print(f"  data    {root}")
        sys.stdout.flush()
        async with pipeline_services(settings) as worker:
            from http_gateway.server import uvicorn_server

            gateway = uvicorn_server(settings)
            gateway.capture_signals = contextlib.nullcontext  # our handlers stop everything in order
            serving = asyncio.create_task(gateway.serve())

            def stop() -> None:
                worker.stop()
                gateway.should_exit = True

            install_stop_signals(stop)
            try:
                await worker.run()
            finally:
                gateway.should_exit = True
                await serving
    finally:
        if engine is not None:
            engine.stop()
        await asyncio.to_thread(stack.stop)
    return 0


async def run_demo(settings: Settings, out_dir: str, text_file: str | None) -> int:
    """Start a throw-away stack on free ports, run a two-chapter job, save the chapters, print where."""
    chapters = _demo_chapters(text_file)
    with tempfile.TemporaryDirectory(prefix="tts-demo-") as tmp:
        root = Path(tmp)
        stack = await asyncio.to_thread(_start_stack, root, settings, None, None)
        engine = None
        try:
            if not _backends_configured():
                engine = await asyncio.to_thread(EngineProcess(free_port(), root / "logs" / "engine.log", 0.05,
                                                               kind=local_engine_kind(settings)).start)
            settings = settings.model_copy(update={
                "nats_url": stack.nats.url, "s3_endpoint_url": stack.s3.endpoint_url,
                "backend_urls": [engine.url] if engine else settings.backend_urls,
            })
            return await _demo_job(settings, chapters, Path(out_dir), stack)
        finally:
            if engine is not None:
                engine.stop()
            await asyncio.to_thread(stack.stop)


def _demo_chapters(text_file: str | None) -> list[tuple[str, str]]:
    if text_file is None:
        return DEMO_BOOK
    from pipeline.text.books import read_book
    from pipeline.text.chapters import BookError

    try:
        chapters = [(c.title, c.text) for c in read_book(Path(text_file))]
    except (BookError, OSError) as exc:
        raise StartupError(str(exc)) from None
    if not chapters:
        raise StartupError(f"{text_file} has no text to speak")
    return chapters


async def _demo_job(settings: Settings, chapters: list[tuple[str, str]], out_dir: Path, stack: DevStack) -> int:
    names = Names(settings.namespace)
    job_id = f"demo-{uuid.uuid4().hex[:8]}"
    print(f"demo: job {job_id}, {len(chapters)} chapters, on the embedded stack:")
    for line in stack.describe():
        print(f"  {line}")
    print(f"  engine  {settings.backend_urls[0]}")
    async with pipeline_services(settings) as worker:
        runner = asyncio.create_task(worker.run())
        try:
            finished = asyncio.get_running_loop().create_future()
            chapter_events: list[ChapterDone | ChapterFailed] = []

            async def on_event(msg) -> None:
                if ".chapter.done." in msg.subject:
                    chapter_events.append(ChapterDone.from_bytes(msg.data))
                elif ".chapter.failed." in msg.subject:
                    chapter_events.append(ChapterFailed.from_bytes(msg.data))
                    if not finished.done():
                        finished.set_result(None)
                elif ".job.done." in msg.subject and not finished.done():
                    finished.set_result(None)

            sub = await worker.nc.subscribe(names.job_events(job_id), cb=on_event)
            started = time.perf_counter()
            for i, (title, text) in enumerate(chapters):
                submit = ChapterSubmit(job_id=job_id, chapter=i, total_chapters=len(chapters), title=title, text=text)
                await bus.publish_json(worker.js, names.chapters_submit, submit.to_bytes(), f"chapter:{job_id}:{i}")
            await asyncio.wait_for(finished, 600)
            elapsed_s = time.perf_counter() - started
            await sub.unsubscribe()
            job_dir = out_dir / job_id
            job_dir.mkdir(parents=True, exist_ok=True)
            failures = [e for e in chapter_events if isinstance(e, ChapterFailed)]
            for event in sorted((e for e in chapter_events if isinstance(e, ChapterDone)), key=lambda e: e.chapter):
                path = job_dir / event.key.rsplit("/", 1)[-1]
                path.write_bytes(await worker.store.get(event.key))
                print(f"  chapter {event.chapter}: {event.duration_s:6.2f} s  {event.chunks} chunks  "
                      f"s3://{settings.s3_bucket}/{event.key}  -> {path}")
            for event in failures:
                print(f"  chapter {event.chapter} FAILED ({event.reason}): {event.error[:200]}")
            if not failures:
                manifest_key = MANIFEST_KEY.format(job_id=job_id)
                (job_dir / "manifest.json").write_bytes(await worker.store.get(manifest_key))
            print(f"demo: {'FAILED' if failures else 'done'} in {elapsed_s:.1f} s; files in {job_dir.absolute()}")
            return 1 if failures else 0
        finally:
            worker.stop()
            await runner
