"""Benchmark of real speech on a CPU (issue: local engine). Prints figures; asserts nothing.

1. The Piper engine alone (`tts-pipeline engine --kind piper` as a child process, its pool sized
   to the cores): seconds of audio per second with 1, 2 and 4 calls in flight, chat endpoint.
2. The same sentences through the whole pipeline (nats-server + SeaweedFS + a synth worker with
   `max_in_flight` = the same concurrency, in this process, against the same engine): the ratio
   of the engine-alone wall time to the pipeline's wall time for the same work (goal >= 0.9).
3. The ASR gate's cost: seconds of compute per second of audio, one chunk at a time as the gate
   does it (faster-whisper tiny.en, int8, every core), and the pipeline ratio with the gate on.

Each concurrency runs engine-alone and pipeline back to back, `--repeat` times; medians printed.
The machine is shared: compare ratios measured in one run, not absolute figures across runs.

    python scripts/bench_local.py [--concurrency 1 2 4] [--sentences 18] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.audio.checks import decode_wav, repair_wav, to_mono_int16  # noqa: E402
from pipeline.cli import logs
from pipeline.client import EventWaiter, publish_synth  # noqa: E402
from pipeline.contracts.messages import ChunkDone, SynthRequest  # noqa: E402
from pipeline.contracts.settings import Settings  # noqa: E402
from pipeline.contracts.subjects import Names  # noqa: E402
from pipeline.stack.devstack import DevStack  # noqa: E402
from pipeline.stack.embedded import EngineProcess  # noqa: E402
from pipeline.stack.ports import free_port  # noqa: E402
from pipeline.stack.runtime import synth_worker  # noqa: E402
from tests.test_local_pipeline import PARAGRAPHS  # noqa: E402

BUCKET = "bench-local"


def sentences(count: int) -> list[str]:
    flat = [s for paragraph in PARAGRAPHS for s in paragraph]
    return [flat[i % len(flat)] for i in range(count)]


async def engine_alone(url: str, texts: list[str], concurrency: int) -> tuple[float, float]:
    """(wall seconds, audio seconds) for `texts` with `concurrency` chat calls in flight."""
    gate = asyncio.Semaphore(concurrency)
    audio_s = 0.0

    async def one(client: httpx.AsyncClient, text: str) -> None:
        nonlocal audio_s
        async with gate:
            body = {"model": "higgs-audio-v2", "messages": [{"role": "user", "content": text}], "max_tokens": 2048}
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            wav = repair_wav(base64.b64decode(response.json()["choices"][0]["message"]["audio"]["data"]))
            audio_s += to_mono_int16(wav).size / wav.fmt.sample_rate_hz

    async with httpx.AsyncClient(base_url=url, timeout=300, trust_env=False) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, t) for t in texts))
        return time.perf_counter() - started, audio_s


async def pipeline(settings: Settings, texts: list[str], concurrency: int) -> tuple[float, float, list[ChunkDone]]:
    """(wall seconds, stored audio seconds, events) for `texts` through bus, worker, engine, S3."""
    settings = settings.model_copy(update={"max_in_flight": concurrency, "namespace": uuid.uuid4().hex[:8]})
    names = Names(settings.namespace)
    job = f"bench-{uuid.uuid4().hex[:6]}"
    take = uuid.uuid4().hex[:8]  # never served from the store's cache
    reqs = [SynthRequest(job_id=job, chunk_id=str(i), text=t, take=take) for i, t in enumerate(texts)]
    async with synth_worker(settings, name="bench") as worker:
        await worker.setup()
        runner = asyncio.create_task(worker.run())
        try:
            async with EventWaiter(worker.nc, names, job) as waiter:
                started = time.perf_counter()
                for req in reqs:
                    await publish_synth(worker.js, names, req, "bulk")
                outcomes = await waiter.wait_count(len(reqs), timeout_s=900)
                elapsed_s = time.perf_counter() - started
        finally:
            worker.stop()
            await runner
    done = [o for o in outcomes if isinstance(o, ChunkDone)]
    if len(done) != len(reqs):
        print(f"  warning: {len(reqs) - len(done)} chunks failed: {[o.error for o in outcomes if not isinstance(o, ChunkDone)][:2]}")
    return elapsed_s, sum(o.duration_s for o in done), done


async def asr_cost(settings: Settings, events: list[ChunkDone]) -> tuple[float, float]:
    """(compute s per audio s, audio s) of transcribing stored chunks one at a time."""
    from pipeline.audio.asr import Transcriber
    from pipeline.store import open_store

    transcriber = Transcriber().load()
    store = await open_store(settings.model_copy(update={"s3_prefix": ""}))
    try:
        spent_s = audio_s = 0.0
        for event in events:
            samples, rate = decode_wav(await store.get(event.key))
            t0 = time.perf_counter()
            transcriber.transcribe_blocking(samples, rate)
            spent_s += time.perf_counter() - t0
            audio_s += samples.size / rate
    finally:
        store.close()
        transcriber.close()
    return spent_s / audio_s, audio_s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sentences", type=int, default=18)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    logs.configure("warning")
    texts = sentences(args.sentences)
    print(f"machine: {len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}; {len(texts)} sentences ({sum(len(t.split()) for t in texts)} words) per run")
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        root = Path(tmp)
        engine = EngineProcess(free_port(), root / "engine.log", 0.0, kind="piper").start()
        try:
            with DevStack(root / "stack", bucket=BUCKET) as stack:
                settings = Settings(
                    nats_url=stack.nats.url, s3_endpoint_url=stack.s3.endpoint_url, s3_bucket=BUCKET,
                    s3_access_key=stack.s3.access_key, s3_secret_key=stack.s3.secret_key,
                    backend_urls=[engine.url], poll_s=0.05, log_level="warning",
                )
                await engine_alone(engine.url, texts[:2], 2)  # warm up
                print(f"\n{'in flight':>9} {'engine audio s/s':>17} {'pipeline audio s/s':>19} {'ratio (same work)':>18}")
                last_events: list[ChunkDone] = []
                for concurrency in args.concurrency:
                    rates, ratios, stored = [], [], []
                    for _ in range(args.repeat):
                        alone_s, alone_audio_s = await engine_alone(engine.url, texts, concurrency)
                        piped_s, piped_audio_s, last_events = await pipeline(settings, texts, concurrency)
                        rates.append(alone_audio_s / alone_s)
                        stored.append(piped_audio_s / piped_s)
                        ratios.append(alone_s / piped_s)
                    print(f"{concurrency:>9} {statistics.median(rates):>17.1f} {statistics.median(stored):>19.1f} "
                          f"{statistics.median(ratios):>18.2f}   (ratios {', '.join(f'{r:.2f}' for r in ratios)}; "
                          f"load {os.getloadavg()[0]:.1f})")
                cost, audio_s = await asr_cost(settings, last_events)
                print(f"\nASR gate cost: {cost:.3f} s of compute per s of audio ({1 / cost:.0f}x real time), "
                      f"{len(last_events)} chunks, {audio_s:.0f} s of audio, one at a time")
                concurrency = max(args.concurrency)
                alone_s, _ = await engine_alone(engine.url, texts, concurrency)
                gated_s, _, events = await pipeline(settings.model_copy(update={"verify": "asr"}), texts, concurrency)
                wers = [e.wer for e in events if e.wer is not None]
                print(f"pipeline with TTS_VERIFY=asr at {concurrency} in flight: ratio {alone_s / gated_s:.2f} "
                      f"to the engine alone; median chunk WER {statistics.median(wers):.3f}, "
                      f"max {max(wers):.3f}, takes {sum(e.takes or 1 for e in events)} for {len(events)} chunks")
        finally:
            engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
