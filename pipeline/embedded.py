"""`tts-pipeline up` and `tts-pipeline demo`: the whole pipeline on one machine, no Docker.

`up` listens on the settings' addresses (defaults: NATS 4222, S3 8333, engine 8000) so every
other command finds it with no configuration. With `TTS_BACKEND_URLS` (or `VLLM_URL`) set, no
local engine is started and the worker uses those servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
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
from pipeline.client import EventWaiter, publish_synth
from pipeline.devstack import DevStack, DevStackError, free_port
from pipeline.errors import StartupError
from pipeline.messages import ChunkDone, SynthRequest
from pipeline.runtime import install_stop_signals, synth_worker
from pipeline.settings import Settings
from pipeline.subjects import PRIORITY_BULK, Names

log = structlog.get_logger("pipeline.embedded")

LOOPBACK_HOSTS = {"127.0.0.1", "localhost"}
ENGINE_READY_TIMEOUT_S = 30.0

DEMO_TEXT = (
    "The pipeline turns a lot of text into speech. Every sentence becomes a request on the bus. "
    "Workers pull the requests, call the model server with a bound on the calls in flight, "
    "check the audio, and store it in the bucket. When a chunk is done, an event says where it landed. "
    "Nothing is lost when a worker stops: the bus delivers the request again."
)


def _loopback_port(url: str, what: str) -> int:
    parsed = urlparse(url)
    if parsed.hostname not in LOOPBACK_HOSTS or parsed.port is None:
        raise StartupError(f"`up` runs its servers on 127.0.0.1 only, but {what} is {url}")
    return parsed.port


def _backends_configured() -> bool:
    return bool(os.environ.get("TTS_BACKEND_URLS") or os.environ.get("VLLM_URL"))


class EngineProcess:
    """The stand-in engine as a child process (its own session: Ctrl-C reaches only us)."""

    def __init__(self, port: int, log_path: Path, latency_s: float, extra_args: tuple[str, ...] = ()):
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
                [sys.executable, "-m", "pipeline.cli", "engine", "--kind", "sim", "--host", "127.0.0.1",
                 "--port", str(self.port), "--latency-s", str(self.latency_s), *self.extra_args],
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


async def run_up(settings: Settings, data_dir: str, engine_latency_s: float, engine_port: int | None = None) -> int:
    nats_port = _loopback_port(settings.nats_url, "TTS_NATS_URL")
    s3_port = _loopback_port(settings.s3_endpoint_url, "TTS_S3_ENDPOINT_URL")
    root = Path(data_dir).absolute()
    stack = await asyncio.to_thread(_start_stack, root, settings, nats_port, s3_port)
    engine = None
    try:
        if not _backends_configured():
            port = engine_port or _loopback_port(settings.backend_urls[0], "TTS_BACKEND_URLS")
            engine = await asyncio.to_thread(EngineProcess(port, root / "logs" / "engine.log", engine_latency_s).start)
            settings = settings.model_copy(update={"backend_urls": [engine.url]})
        print("tts-pipeline up: the embedded stack is running (Ctrl-C stops everything)")
        for line in stack.describe():
            print(f"  {line}")
        print(f"  engine  {', '.join(settings.backend_urls)}" + ("  (stand-in)" if engine else "  (configured)"))
        print(f"  data    {root}")
        sys.stdout.flush()
        async with synth_worker(settings) as worker:
            install_stop_signals(worker.stop)
            await worker.run()
    finally:
        if engine is not None:
            engine.stop()
        await asyncio.to_thread(stack.stop)
    return 0


def split_sentences(text: str) -> list[str]:
    """Sentences for the demo (the real splitter for long-form input is `pipeline.text`)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


async def run_demo(settings: Settings, out_dir: str, text_file: str | None) -> int:
    """Start a throw-away stack on free ports, speak a text, save the chunks, print where."""
    text = Path(text_file).read_text(encoding="utf-8") if text_file else DEMO_TEXT
    sentences = split_sentences(text)
    if not sentences:
        raise StartupError("the text to speak is empty")
    with tempfile.TemporaryDirectory(prefix="tts-demo-") as tmp:
        root = Path(tmp)
        stack = await asyncio.to_thread(_start_stack, root, settings, None, None)
        engine = None
        try:
            if not _backends_configured():
                engine = await asyncio.to_thread(EngineProcess(free_port(), root / "logs" / "engine.log", 0.05).start)
            settings = settings.model_copy(update={
                "nats_url": stack.nats.url, "s3_endpoint_url": stack.s3.endpoint_url,
                "backend_urls": [engine.url] if engine else settings.backend_urls,
            })
            return await _demo_job(settings, sentences, Path(out_dir), stack)
        finally:
            if engine is not None:
                engine.stop()
            await asyncio.to_thread(stack.stop)


async def _demo_job(settings: Settings, sentences: list[str], out_dir: Path, stack: DevStack) -> int:
    names = Names(settings.namespace)
    job_id = f"demo-{uuid.uuid4().hex[:8]}"
    print(f"demo: {len(sentences)} chunks as job {job_id}")
    for line in stack.describe():
        print(f"  {line}")
    async with synth_worker(settings, name="demo") as worker:
        await worker.setup()
        runner = asyncio.create_task(worker.run())
        try:
            nc = worker.nc
            async with EventWaiter(nc, names, job_id) as waiter:
                started = time.perf_counter()
                for i, sentence in enumerate(sentences):
                    request = SynthRequest(job_id=job_id, chunk_id=f"{i:03d}", index=i, text=sentence)
                    await publish_synth(worker.js, names, request, PRIORITY_BULK)
                chunk_ids = [f"{i:03d}" for i in range(len(sentences))]
                outcomes = await waiter.wait_for(job_id, chunk_ids, timeout_s=300)
                elapsed_s = time.perf_counter() - started
            job_dir = out_dir / job_id
            job_dir.mkdir(parents=True, exist_ok=True)
            failures = 0
            total_s = 0.0
            for chunk_id in chunk_ids:
                outcome = outcomes[chunk_id]
                if not isinstance(outcome, ChunkDone):
                    failures += 1
                    print(f"  {chunk_id}  FAILED ({outcome.reason}): {outcome.error}")
                    continue
                path = job_dir / f"{chunk_id}.wav"
                path.write_bytes(await worker.store.get(outcome.key))
                total_s += outcome.duration_s
                print(f"  {chunk_id}  {outcome.duration_s:5.2f} s  s3://{settings.s3_bucket}/{outcome.key}  -> {path}")
            print(f"demo: {len(sentences) - failures}/{len(sentences)} chunks, {total_s:.1f} s of audio "
                  f"in {elapsed_s:.2f} s; files in {job_dir.absolute()}")
            return 1 if failures else 0
        finally:
            worker.stop()
            await runner
