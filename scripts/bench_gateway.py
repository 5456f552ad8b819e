"""Latency the gateway and the bus add over calling the model server directly. Prints; asserts nothing.

A throw-away embedded stack (nats-server, SeaweedFS), the stand-in engine, one synth worker and the
gateway, each in its own process (`tts-pipeline engine|worker synth|gateway`). For each
concurrency, the same number of requests go

  direct:   POST engine /v1/chat/completions with the payload the worker would send, and decode
            the WAV from the answer (what the original proxy did before answering);
  gateway:  POST gateway /generate  (gateway -> NATS -> worker -> engine -> S3 -> event -> gateway
            -> S3 -> client), every text unique so nothing comes from the cache;

and p50/p95 of both, and their difference, are printed. The worker's idle poll (`TTS_POLL_S`)
bounds how long an interactive request can wait on an idle worker, so it is run at each value of
`--poll-s`.

    python scripts/bench_gateway.py [--requests 200] [--concurrency 1 20] [--latency-s 0.2]
                                    [--poll-s 0.2 0.01] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import nats

from pipeline.backend import HiggsClient
from pipeline.bench.lab import cpu_s
from pipeline.contracts.messages import SynthRequest
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names
from pipeline.stack.devstack import DevStack
from pipeline.stack.embedded import EngineProcess
from pipeline.stack.ports import free_port

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
BUCKET = "tts-bench"


def text_for(i: int, salt: str) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(8)) + f" {salt} {i}."


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TTS_NATS_URL": settings.nats_url, "TTS_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "TTS_S3_BUCKET": settings.s3_bucket, "TTS_S3_ACCESS_KEY": settings.s3_access_key,
        "TTS_S3_SECRET_KEY": settings.s3_secret_key, "TTS_BACKEND_URLS": ",".join(settings.backend_urls),
        "TTS_NAMESPACE": settings.namespace, "TTS_S3_PREFIX": settings.s3_prefix, "TTS_LOG_LEVEL": "warning",
        **extra,
    })
    return env


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(concurrency: int, count: int, call) -> list[float]:
    """Run `call(i)` for i < count, `concurrency` at a time; per-call seconds."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def lane() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return latencies


def cpu_snapshot(pids: dict[str, int | None]) -> dict[str, float]:
    return {name: cpu_s(pid) for name, pid in pids.items() if pid}


async def measure(settings: Settings, engine_url: str, gateway_url: str, concurrency: int, count: int,
                  pids: dict[str, int | None]) -> dict:
    payloads = HiggsClient(settings)  # only to build the exact chat payload the worker sends
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client:
        salt = uuid.uuid4().hex[:6]
        serial = itertools.count()  # every text unique: nothing may come from the cache

        async def direct(i: int) -> None:
            request = SynthRequest(job_id="bench", chunk_id=str(i), text=text_for(next(serial), salt))
            r = await client.post(f"{engine_url}/v1/chat/completions", json=payloads.chat_payload(request, None))
            r.raise_for_status()
            # A direct client wants the WAV: it decodes the answer, as the original proxy did.
            base64.b64decode(r.json()["choices"][0]["message"]["audio"]["data"])

        async def via_gateway(i: int) -> None:
            r = await client.post(f"{gateway_url}/generate", json={"text": text_for(next(serial), salt)})
            r.raise_for_status()
            assert r.headers["X-Cache"] == "miss"

        warm = max(4, concurrency)
        await timed(concurrency, warm, direct)
        await timed(concurrency, warm, via_gateway)
        # Interleave the two so drifts of a shared 2-core machine hit both alike; count the CPU
        # every process spends during the gateway rounds.
        spent: dict[str, float] = {}
        gateway_wall = 0.0

        async def gateway_round(n: int) -> list[float]:
            nonlocal gateway_wall
            before, t0 = cpu_snapshot(pids), time.perf_counter()
            latencies = await timed(concurrency, n, via_gateway)
            gateway_wall += time.perf_counter() - t0
            after = cpu_snapshot(pids)
            for name in after:
                spent[name] = spent.get(name, 0.0) + after[name] - before.get(name, after[name])
            return latencies

        # Each chunk event carries the worker's own timings: where a gateway request's time went.
        timings: list[dict] = []
        nc = await nats.connect(settings.nats_url)

        async def on_event(msg) -> None:
            timings.append(json.loads(msg.data).get("timings", {}))

        await nc.subscribe(Names(settings.namespace).chunk_done("*"), cb=on_event)
        d1 = await timed(concurrency, count // 2, direct)
        g1 = await gateway_round(count // 2)
        d2 = await timed(concurrency, count - count // 2, direct)
        g2 = await gateway_round(count - count // 2)
    await payloads.aclose()
    await nc.drain()
    d, g = d1 + d2, g1 + g2
    return {
        "cpu_ms_per_request": {name: s * 1e3 / count for name, s in spent.items()},
        "gateway_rate": count / gateway_wall,
        "direct_p50": percentile(d, 0.5), "direct_p95": percentile(d, 0.95),
        "gateway_p50": percentile(g, 0.5), "gateway_p95": percentile(g, 0.95),
        "direct_mean": statistics.fmean(d), "gateway_mean": statistics.fmean(g),
        "worker_p50_ms": {k: percentile([t.get(k, 0.0) for t in timings], 0.5) * 1e3
                          for k in ("queued_s", "synth_s", "store_s", "total_s")} if timings else {},
    }


def audio_sources(gateway_url: str) -> dict[str, float]:
    """Requests answered from a worker's AudioReply vs read from the store, from /metrics."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=5.0, trust_env=False).text
    found = re.findall(r'^tts_gateway_audio_source_total\{source="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    return {source: float(count) for source, count in found}


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1.0, trust_env=False).json().get("status") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway at {url} not healthy after {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per path and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--latency-s", type=float, default=0.2, help="stand-in engine latency per call")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="synth worker processes (values to run)")
    parser.add_argument("--poll-s", type=float, nargs="+", default=[0.2, 0.01],
                        help="worker idle poll values to run (the default setting is 0.2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tts-bench-gw-") as tmp, DevStack(Path(tmp), bucket=BUCKET) as stack:
        engine = EngineProcess(free_port(), Path(tmp) / "engine.log", args.latency_s, ("--slots", "256")).start()
        try:
            base = Settings(nats_url=stack.nats.url, s3_endpoint_url=stack.s3.endpoint_url, s3_bucket=BUCKET,
                            s3_access_key=stack.s3.access_key, s3_secret_key=stack.s3.secret_key,
                            backend_urls=[engine.url], max_in_flight=64)
            print(f"stand-in latency {args.latency_s:.3f} s, {args.requests} requests per row, "
                  f"texts of 10 words (~4 s of audio)")
            print(f"{'wk':>2} {'poll_s':>6} {'conc':>4} | {'direct p50':>10} {'p95':>7} | {'gateway p50':>11} {'p95':>7} | "
                  f"{'added p50':>9} {'p95':>7} {'p50 %':>6}")
            for workers, poll_s in itertools.product(args.workers, args.poll_s):
                ns = uuid.uuid4().hex[:8]
                settings = base.model_copy(update={"namespace": ns, "s3_prefix": ns})
                port = free_port()
                env = env_for(settings, TTS_POLL_S=str(poll_s), TTS_MAX_IN_FLIGHT="64", TTS_HEARTBEAT_S="0.5")
                procs = [
                    subprocess.Popen([sys.executable, "-m", "pipeline.cli", "gateway", "--port", str(port)], env=env,
                                     stdin=subprocess.DEVNULL),
                ] + [
                    subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", "synth"],
                                     env={**env, "TTS_WORKER_NAME": f"bench-w{n}"}, stdin=subprocess.DEVNULL)
                    for n in range(workers)
                ]
                try:
                    gateway_url = f"http://127.0.0.1:{port}"
                    wait_ready(gateway_url)
                    pids = {"gateway": procs[0].pid, **{f"worker{n + 1}": proc.pid for n, proc in enumerate(procs[1:])},
                            "nats": stack.nats.pid, "weed": stack.s3.pid, "engine": engine.pid}
                    for concurrency in args.concurrency:
                        m = asyncio.run(measure(settings, engine.url, gateway_url, concurrency, args.requests, pids))
                        added50 = m["gateway_p50"] - m["direct_p50"]
                        added95 = m["gateway_p95"] - m["direct_p95"]
                        print(f"{workers:>2} {poll_s:>6.2f} {concurrency:>4} | {m['direct_p50'] * 1e3:>8.1f}ms {m['direct_p95'] * 1e3:>5.1f}ms"
                              f" | {m['gateway_p50'] * 1e3:>9.1f}ms {m['gateway_p95'] * 1e3:>5.1f}ms"
                              f" | {added50 * 1e3:>7.1f}ms {added95 * 1e3:>5.1f}ms {added50 / m['direct_p50']:>6.1%}",
                              flush=True)
                        cpu = m["cpu_ms_per_request"]
                        total = sum(cpu.values())
                        print(f"{'':>14} CPU per /generate: " + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items())
                              + f"; total {total:.1f} ms x {m['gateway_rate']:.1f} req/s = "
                              f"{total * m['gateway_rate'] / 1e3:.2f} of {os.cpu_count()} cores", flush=True)
                        sources = audio_sources(gateway_url)
                        print(f"{'':>14} audio source so far (gateway metrics): " + ", ".join(
                            f"{k} {v:.0f}" for k, v in sorted(sources.items())), flush=True)
                        w = m["worker_p50_ms"]
                        if w:
                            print(f"{'':>14} worker p50 (its chunk events): bus -> worker {w['queued_s']:.1f} ms, "
                                  f"in the worker {w['total_s']:.1f} ms, of which the upload after the reply "
                                  f"{w['store_s']:.1f} ms", flush=True)
                finally:
                    for proc in procs:
                        proc.terminate()
                    for proc in procs:
                        try:
                            proc.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
        finally:
            engine.stop()


if __name__ == "__main__":
    main()
