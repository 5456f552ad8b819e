"""Benchmark of the synth path (foundation issue). Prints figures; asserts nothing.

1. Stand-in at zero latency, N chunks of ~200 KB through ONE worker process: chunks/s, next to the
   raw S3 PUT rate of the same objects from the same number of threads, measured in the same run.
   The ratio is the figure (the 2-core machine is shared and noisy).
2. Stand-in at 1 s per call, max_in_flight=32: completed chunks/s (ideal 32/s).

Every measurement is repeated `--repeat` times; medians are printed.

    python scripts/bench_synth.py [--chunks 1000] [--latency-chunks 320] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

from pipeline import bus
from pipeline.client import EventWaiter, publish_synth
from pipeline.contracts.messages import ChunkDone, SynthRequest
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names
from pipeline.stack.devstack import DevStack
from pipeline.stack.embedded import EngineProcess
from pipeline.stack.ports import free_port
from pipeline.store import Store

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
S3_THREADS = 16


def texts(count: int, words: int, salt: str) -> list[str]:
    # ~10.4 words at 2.5 words/s = 4.17 s = 100k samples = ~200 KB of 16-bit WAV.
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(words)) + f" {salt} {i}." for i in range(count)]


def worker_env(settings: Settings, max_in_flight: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TTS_NATS_URL": settings.nats_url, "TTS_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "TTS_S3_BUCKET": settings.s3_bucket, "TTS_S3_ACCESS_KEY": settings.s3_access_key,
        "TTS_S3_SECRET_KEY": settings.s3_secret_key, "TTS_BACKEND_URLS": ",".join(settings.backend_urls),
        "TTS_NAMESPACE": settings.namespace, "TTS_S3_PREFIX": settings.s3_prefix,
        "TTS_MAX_IN_FLIGHT": str(max_in_flight), "TTS_LOG_LEVEL": "warning", "TTS_POLL_S": "0.05",
    })
    return env


async def run_batch(settings: Settings, count: int, words: int, max_in_flight: int) -> tuple[float, int]:
    """Publish `count` requests first, then start one worker process; time until the last event."""
    names = Names(settings.namespace)
    nc = await bus.connect(settings, "bench")
    js = nc.jetstream()
    await bus.ensure_streams(js, settings, names)
    job = f"bench-{uuid.uuid4().hex[:6]}"
    reqs = [SynthRequest(job_id=job, chunk_id=str(i), text=t) for i, t in enumerate(texts(count, words, job))]
    async with EventWaiter(nc, names, job) as waiter:
        for i in range(0, count, 500):
            await asyncio.gather(*(publish_synth(js, names, r, "bulk") for r in reqs[i : i + 500]))
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", "synth"],
                                env=worker_env(settings, max_in_flight), stdin=subprocess.DEVNULL)
        try:
            # Time from the first event, so the worker's process start-up is not counted.
            await waiter.wait_count(1, timeout_s=120)
            t0 = time.perf_counter()
            outcomes = await waiter.wait_count(count, timeout_s=900)
            elapsed_s = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    await nc.close()
    done = sum(isinstance(o, ChunkDone) for o in outcomes)
    return (count - 1) / elapsed_s, done


def raw_put_rate(settings: Settings, payload: bytes, count: int) -> float:
    client = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key, region_name="us-east-1",
        config=Config(max_pool_connections=S3_THREADS, s3={"addressing_style": "path"}),
    )
    prefix = f"rawput-{uuid.uuid4().hex[:6]}"

    def put(i: int) -> None:
        client.put_object(Bucket=settings.s3_bucket, Key=f"{prefix}/{i}.wav", Body=payload, ContentType="audio/wav")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(S3_THREADS) as pool:
        list(pool.map(put, range(count)))
    return count / (time.perf_counter() - t0)


async def sample_object(settings: Settings) -> bytes:
    store = Store(settings)
    keys = await store.list_keys("audio/")
    data = await store.get(keys[0])
    store.close()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--latency-chunks", type=int, default=320)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--words", type=int, default=9, help="words per text (+2 salt words)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tts-bench-") as tmp, DevStack(Path(tmp), bucket="bench") as stack:
        fast = EngineProcess(free_port(), Path(tmp) / "engine-fast.log", 0.0, ("--slots", "256")).start()
        slow = EngineProcess(free_port(), Path(tmp) / "engine-slow.log", 1.0, ("--slots", "256")).start()
        try:
            base = Settings(nats_url=stack.nats.url, s3_endpoint_url=stack.s3.endpoint_url, s3_bucket="bench",
                            s3_access_key=stack.s3.access_key, s3_secret_key=stack.s3.secret_key)
            pipe_rates, put_rates, ratios, slow_rates = [], [], [], []
            for rep in range(args.repeat):
                ns = uuid.uuid4().hex[:8]
                s = base.model_copy(update={"namespace": ns, "s3_prefix": ns, "backend_urls": [fast.url]})
                rate, done = asyncio.run(run_batch(s, args.chunks, args.words, 32))
                payload = asyncio.run(sample_object(s))
                put = raw_put_rate(s, payload, args.chunks)
                pipe_rates.append(rate)
                put_rates.append(put)
                ratios.append(rate / put)
                print(f"[{rep + 1}] zero latency: {done}/{args.chunks} done, {rate:.1f} chunks/s; "
                      f"raw S3 PUT of the same {len(payload) / 1000:.0f} KB objects ({S3_THREADS} threads): "
                      f"{put:.1f} obj/s; ratio {rate / put:.2f}", flush=True)
                ns = uuid.uuid4().hex[:8]
                s = base.model_copy(update={"namespace": ns, "s3_prefix": ns, "backend_urls": [slow.url]})
                rate, done = asyncio.run(run_batch(s, args.latency_chunks, args.words, 32))
                slow_rates.append(rate)
                print(f"[{rep + 1}] 1 s latency, max_in_flight=32: {done}/{args.latency_chunks} done, "
                      f"{rate:.2f} chunks/s (ideal 32)", flush=True)
            print("\nmedians over", args.repeat, "runs:")
            print(f"  pipeline, zero-latency engine, 1 worker: {statistics.median(pipe_rates):.1f} chunks/s")
            print(f"  raw S3 PUT, same objects:               {statistics.median(put_rates):.1f} obj/s")
            print(f"  ratio pipeline / raw PUT:                {statistics.median(ratios):.2f}")
            print(f"  1 s engine latency, max_in_flight=32:    {statistics.median(slow_rates):.2f} chunks/s "
                  f"({statistics.median(slow_rates) / 32:.1%} of ideal)")
        finally:
            fast.stop()
            slow.stop()


if __name__ == "__main__":
    main()
