"""Benchmarks of the jobs path (issue: audiobook and bulk jobs). Prints figures; asserts nothing.

1. Assembly of a 60-minute chapter from 240 chunks of 15 s: seconds and peak memory (RSS of a
   fresh process doing only the assembly; goal under 150 MB), for wav, flac and mp3.
2. A 20-chapter job through the bus (ingest, one synth worker, assembler) against a stand-in with
   32 slots and a capacity model: wall time vs the stand-in's ideal time for the same audio.

    python scripts/bench_jobs.py [--chunks 240] [--chunk-s 15] [--chapters 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Only what an assembler process needs is imported at the top: the child process that measures
# the assembly's memory must not carry the benchmark's own imports.
from pipeline import jobs
from pipeline.settings import Settings
from pipeline.store import Store

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def stack_settings(stack, **extra) -> Settings:
    ns = uuid.uuid4().hex[:8]
    return Settings(nats_url=stack.nats.url, s3_endpoint_url=stack.s3.endpoint_url, s3_bucket="bench",
                    s3_access_key=stack.s3.access_key, s3_secret_key=stack.s3.secret_key, namespace=ns,
                    s3_prefix=ns, log_level="warning", **extra)


async def prepare_chapter(settings: Settings, chunks: int, chunk_s: float) -> str:
    """Store `chunks` chunk WAVs and a plan; return the plan key."""
    from pipeline.engines.simaudio import synthesize, wav_bytes
    from pipeline.messages import Sampling

    store = Store(settings)
    words = int(chunk_s * 2.5)
    planned = []
    for i in range(chunks):
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))
        key = f"audio/bench-{i:04d}.wav"
        await store.put(key, wav_bytes(synthesize(text, seed=i)), "audio/wav")
        planned.append(jobs.PlannedChunk(index=i, chunk_id=jobs.chunk_id_for(0, i), start=0, end=len(text),
                                         text=text, key=key))
    plan = jobs.ChapterPlan(job_id="benchasm", chapter=0, title="Sixty Minutes", format="wav",
                            sampling=Sampling(), chunks=planned)
    await store.put(jobs.plan_key("benchasm", 0), plan.model_dump_json().encode(), "application/json")
    store.close()
    return jobs.plan_key("benchasm", 0)


def assemble_in_child(settings: Settings, fmt: str) -> dict:
    """Run one assembly in a fresh interpreter; it prints its own figures as JSON."""
    env = dict(os.environ, BENCH_SETTINGS=settings.model_dump_json(), BENCH_FORMAT=fmt)
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def child() -> None:
    from pipeline.assemble import assemble_chapter

    settings = Settings.model_validate_json(os.environ["BENCH_SETTINGS"])
    store = Store(settings)
    plan = jobs.ChapterPlan.model_validate_json(await store.get(jobs.plan_key("benchasm", 0)))
    plan = plan.model_copy(update={"format": os.environ["BENCH_FORMAT"]})
    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    built = await assemble_chapter(store, plan, settings)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    store.close()
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "rss_before_mb": base_rss_mb,
                      "duration_s": built.duration_s, "bytes": built.bytes}))


async def run_job(settings: Settings, chapters: int, words_per_chapter: int) -> tuple[float, float]:
    """Wall time of a whole job, and the audio seconds it produced."""
    from pipeline import bus
    from pipeline.messages import ChapterSubmit
    from pipeline.subjects import Names

    names = Names(settings.namespace)
    env = dict(os.environ)
    env.update({f"TTS_{k.upper()}": (",".join(v) if isinstance(v, list) else str(v))
                for k, v in settings.model_dump().items() if v not in ("", None)})
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", kind], env=env,
                              stdin=subprocess.DEVNULL) for kind in ("synth", "ingest", "assemble")]
    nc = await bus.connect(settings, "bench")
    js = nc.jetstream()
    await bus.ensure_streams(js, settings, names)
    job_id = f"bench-{uuid.uuid4().hex[:6]}"
    done = asyncio.Event()
    audio_s = [0.0]

    async def on_event(msg) -> None:
        if ".chapter.done." in msg.subject:
            audio_s[0] += json.loads(msg.data)["duration_s"]
        if ".job.done." in msg.subject:
            done.set()

    sub = await nc.subscribe(names.job_events(job_id), cb=on_event)
    await asyncio.sleep(2.0)  # the workers are up before the clock starts
    t0 = time.perf_counter()
    for c in range(chapters):
        text = ". ".join(" ".join(WORDS[(c * 7 + s * 3 + k) % len(WORDS)] for k in range(10)) + f" {c} {s}"
                         for s in range(words_per_chapter // 10)) + "."
        submit = ChapterSubmit(job_id=job_id, chapter=c, total_chapters=chapters, title=f"Chapter {c + 1}", text=text)
        await bus.publish_json(js, names.chapters_submit, submit.to_bytes(), f"chapter:{job_id}:{c}")
    await asyncio.wait_for(done.wait(), 1800)
    wall_s = time.perf_counter() - t0
    await sub.unsubscribe()
    await nc.close()
    for proc in procs:
        proc.terminate()
        proc.wait(60)
    return wall_s, audio_s[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=240)
    parser.add_argument("--chunk-s", type=float, default=15.0)
    parser.add_argument("--chapters", type=int, default=20)
    parser.add_argument("--words-per-chapter", type=int, default=200)
    parser.add_argument("--tokens-per-s", type=float, default=100.0, help="stand-in per-stream rate at batch 1")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child())
        return
    import httpx

    from pipeline import logs
    from pipeline.devstack import DevStack, free_port
    from pipeline.embedded import EngineProcess

    logs.configure("warning")
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tts-bench-jobs-") as tmp, DevStack(Path(tmp), bucket="bench") as stack:
        settings = stack_settings(stack)
        asyncio.run(prepare_chapter(settings, args.chunks, args.chunk_s))
        for fmt in ("wav", "flac", "mp3"):
            runs = [assemble_in_child(settings, fmt) for _ in range(args.repeat)]
            print(f"assembly, {args.chunks} chunks x {args.chunk_s:.0f} s = {runs[0]['duration_s'] / 60:.1f} min, {fmt}: "
                  f"{statistics.median(r['seconds'] for r in runs):.1f} s (median of {len(runs)}), "
                  f"peak RSS {statistics.median(r['peak_rss_mb'] for r in runs):.0f} MB "
                  f"(before assembling: interpreter, imports, warm S3 client: {statistics.median(r['rss_before_mb'] for r in runs):.0f} MB), "
                  f"{runs[0]['bytes'] / 1e6:.0f} MB written", flush=True)
        engine = EngineProcess(free_port(), Path(tmp) / "engine.log", 0.0,
                               ("--slots", "32", "--tokens-per-s", str(args.tokens_per_s))).start()
        try:
            ratios = []
            for _ in range(args.repeat):
                job_settings = stack_settings(stack, backend_urls=[engine.url], max_in_flight=32, poll_s=0.05)
                httpx.post(f"{engine.url}/sim/reset", timeout=5)
                wall_s, audio_s = asyncio.run(run_job(job_settings, args.chapters, args.words_per_chapter))
                stats = httpx.get(f"{engine.url}/sim/stats", timeout=5).json()
                ideal_s = stats["audio_s_total"] / stats["ideal_audio_s_per_s"]
                ratios.append(ideal_s / wall_s)
                print(f"{args.chapters}-chapter job: {audio_s / 60:.1f} min of audio ({stats['calls']} chunks) in "
                      f"{wall_s:.1f} s; stand-in ideal at full batch {ideal_s:.1f} s; ratio {ideal_s / wall_s:.2f}",
                      flush=True)
            print(f"median ratio ideal / wall: {statistics.median(ratios):.2f}")
        finally:
            engine.stop()


if __name__ == "__main__":
    main()
