"""Benchmarks of the jobs path (issue: audiobook and bulk jobs). Prints figures; asserts nothing.

1. Assembly of a 60-minute chapter from 240 chunks of 15 s: seconds and peak memory (VmHWM of a
   fresh process doing only the assembly; goal under 150 MB), for wav, flac and mp3. The plan
   carries each chunk's loudness, as the assembler's plans do (the synth worker measured it);
   `--unknown-loudness` also measures the fallback, where the assembler measures every chunk.
2. A 20-chapter job through the bus (ingest, one synth worker, assembler) against a stand-in with
   32 slots and a capacity model: wall time vs the stand-in's ideal time for the same audio
   (its generation steps at a full batch), from the first submit to `job.done`, once the three
   workers are pulling. Printed with a timeline (ingest, first call, last chunk, the end after
   it), the stand-in's mean batch, the workers' CPU, and with `--direct` a semaphore client
   sending the same chunk texts straight to the stand-in (what the machine allows without the
   pipeline).

    python scripts/bench_jobs.py [--chunks 240] [--chunk-s 15] [--chapters 20] [--repeat 3]
    python scripts/bench_jobs.py --chapters 0 --repeat 1                         # only 1
    python scripts/bench_jobs.py --no-assembly --words-per-chapter 800 --direct  # only 2
    python scripts/bench_jobs.py --no-assembly --words-per-chapter 800 --in-flight 40  # 2, sized for bulk
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Only what an assembler process needs is imported at the top: the child process that measures
# the assembly's memory must not carry the benchmark's own imports.
from pipeline.contracts.settings import Settings
from pipeline.jobs import state as jobs
from pipeline.store import Store

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def stack_settings(stack, **extra) -> Settings:
    ns = uuid.uuid4().hex[:8]
    return Settings(nats_url=stack.nats.url, s3_endpoint_url=stack.s3.endpoint_url, s3_bucket="bench",
                    s3_access_key=stack.s3.access_key, s3_secret_key=stack.s3.secret_key, namespace=ns,
                    s3_prefix=ns, log_level="warning", **extra)


async def prepare_chapter(settings: Settings, chunks: int, chunk_s: float) -> str:
    """Store `chunks` chunk WAVs and a plan; return the plan key.

    Each chunk's loudness is measured here and put in the plan, as the assembler does from the
    synth worker's chunk events; the child strips it with BENCH_KNOWN_LOUDNESS=0.
    """
    from pipeline.audio.checks import loudness_lufs
    from pipeline.engines.sim.audio import synthesize, wav_bytes
    from pipeline.contracts.messages import Sampling
    from pipeline.audio.wavio import decode_wav

    store = Store(settings)
    words = int(chunk_s * 2.5)
    planned = []
    for i in range(chunks):
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))
        key = f"audio/bench-{i:04d}.wav"
        wav = wav_bytes(synthesize(text, seed=i))
        level = loudness_lufs(*decode_wav(wav))
        await store.put(key, wav, "audio/wav")
        planned.append(jobs.PlannedChunk(index=i, chunk_id=jobs.chunk_id_for(0, i), start=0, end=len(text),
                                         text=text, key=key, loudness_lufs=level))
    plan = jobs.ChapterPlan(job_id="benchasm", chapter=0, title="Sixty Minutes", format="wav",
                            sampling=Sampling(), chunks=planned)
    await store.put(jobs.plan_key("benchasm", 0), plan.model_dump_json().encode(), "application/json")
    store.close()
    return jobs.plan_key("benchasm", 0)


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM).

    Not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries that across exec, so a child started
    by a big parent reports the parent's RSS at the fork (the benchmark's 220 MB), not its own.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def assemble_in_child(settings: Settings, fmt: str, known_loudness: bool = True) -> dict:
    """Run one assembly in a fresh interpreter; it prints its own figures as JSON."""
    env = dict(os.environ, BENCH_SETTINGS=settings.model_dump_json(), BENCH_FORMAT=fmt,
               BENCH_KNOWN_LOUDNESS="1" if known_loudness else "0")
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"assembly child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


async def child() -> None:
    from pipeline.assemble import assemble_chapter

    settings = Settings.model_validate_json(os.environ["BENCH_SETTINGS"])
    store = Store(settings)
    plan = jobs.ChapterPlan.model_validate_json(await store.get(jobs.plan_key("benchasm", 0)))
    plan = plan.model_copy(update={"format": os.environ["BENCH_FORMAT"]})
    if os.environ.get("BENCH_KNOWN_LOUDNESS") == "0":
        plan = plan.model_copy(update={"chunks": [c.model_copy(update={"loudness_lufs": None}) for c in plan.chunks]})
    base_rss_mb = peak_rss_mb()
    t0 = time.perf_counter()
    built = await assemble_chapter(store, plan, settings)
    seconds = time.perf_counter() - t0
    peak_mb = peak_rss_mb()
    store.close()
    heavy = sorted(m for m in ("scipy", "pyloudnorm", "pipeline.audio.checks") if m in sys.modules)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "rss_before_mb": base_rss_mb,
                      "duration_s": built.duration_s, "bytes": built.bytes, "heavy_imports": heavy}))


def chapter_text(chapter: int, words: int) -> str:
    return ". ".join(" ".join(WORDS[(chapter * 7 + s * 3 + k) % len(WORDS)] for k in range(10)) + f" {chapter} {s}"
                     for s in range(words // 10)) + "."


def direct_run(settings: Settings, chapters: int, words_per_chapter: int) -> float:
    """Wall seconds of a semaphore client (as many at once as the worker's in-flight) sending the
    job's chunk texts straight to the stand-in, in the job's order: what the machine allows
    without the pipeline."""
    from pipeline.bench.load import BenchOptions
    from pipeline.bench.run import run_bench
    from pipeline.text.split import split_text

    texts = tuple(c.text for n in range(chapters)
                  for c in split_text(chapter_text(n, words_per_chapter), max_words=settings.chunk_max_words,
                                      target_words=settings.chunk_target_words, max_chars=settings.chunk_max_chars))
    options = BenchOptions(requests=len(texts), concurrent=settings.max_in_flight, target="backend",
                           texts=texts, prompts=(None,))
    result = asyncio.run(run_bench(settings, options))
    failed = sum(1 for sample in result.samples if not sample.ok)
    if failed:
        raise RuntimeError(f"direct client: {failed} of {len(texts)} requests failed")
    return result.wall_s


async def wait_ready(js, names, timeout_s: float = 120.0) -> None:
    """Until the ingest, synth and assembler processes each have a pull request waiting on their
    consumer: they have started (imports, connections) and are asking for work."""
    consumers = {names.ingest_consumer: names.chapters_stream, names.synth_consumer("bulk"): names.synth_stream,
                 names.assemble_consumer: names.events_stream}
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while seen != set(consumers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not ready after {timeout_s:.0f} s: only {sorted(seen)} pulling")
        for durable, stream in consumers.items():
            with contextlib.suppress(Exception):  # not created yet
                if (await js.consumer_info(stream, durable)).num_waiting > 0:
                    seen.add(durable)
        await asyncio.sleep(0.05)


async def run_job(settings: Settings, chapters: int, words_per_chapter: int, engine_url: str) -> dict:
    """Run a whole job; its wall time, audio seconds and a timeline (seconds from the first submit).

    The timeline: the stand-in's `active` (calls generating) sampled every 0.1 s, and the times of
    the first and last chunk events and of the last chapter.
    """
    import httpx

    from pipeline import bus
    from pipeline.contracts.messages import ChapterSubmit
    from pipeline.contracts.subjects import Names

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
    times: dict[str, float] = {}
    t0 = [0.0]

    async def on_event(msg) -> None:
        now = time.perf_counter() - t0[0]
        if ".chunk.done." in msg.subject:
            times.setdefault("first_chunk_done", now)
            times["last_chunk_done"] = now
        if ".chapter.done." in msg.subject:
            audio_s[0] += json.loads(msg.data)["duration_s"]
            times["last_chapter_done"] = now
        if ".job.done." in msg.subject:
            times["job_done"] = now
            done.set()

    samples: list[tuple[float, int]] = []

    async def sample_engine(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            with contextlib.suppress(httpx.HTTPError):
                active = (await client.get(f"{engine_url}/sim/stats")).json()["active"]
                samples.append((time.perf_counter() - t0[0], active))
            await asyncio.sleep(0.1)

    async def on_request(msg) -> None:
        now = time.perf_counter() - t0[0]
        times.setdefault("first_request", now)
        times["last_request"] = now

    sub = await nc.subscribe(names.job_events(job_id), cb=on_event)
    requests_sub = await nc.subscribe(names.synth("bulk"), cb=on_request)
    await wait_ready(js, names)  # the workers are up before the clock starts
    cpu_at_start = [cpu_seconds(proc.pid) for proc in procs]
    t0[0] = time.perf_counter()
    async with httpx.AsyncClient(timeout=5) as client:
        sampler = asyncio.create_task(sample_engine(client))
        for c in range(chapters):
            submit = ChapterSubmit(job_id=job_id, chapter=c, total_chapters=chapters, title=f"Chapter {c + 1}",
                                   text=chapter_text(c, words_per_chapter))
            await bus.publish_json(js, names.chapters_submit, submit.to_bytes(), f"chapter:{job_id}:{c}")
        await asyncio.wait_for(done.wait(), 1800)
        wall_s = time.perf_counter() - t0[0]
        await sampler
    await sub.unsubscribe()
    await requests_sub.unsubscribe()
    await nc.close()
    cpu_s = {kind: cpu_seconds(proc.pid) - before
             for kind, proc, before in zip(("synth", "ingest", "assemble"), procs, cpu_at_start)}
    for proc in procs:
        proc.terminate()
        proc.wait(60)
    busy = [t for t, active in samples if active > 0]
    times["first_active"] = busy[0] if busy else float("nan")
    between = [a for t, a in samples if busy and busy[0] <= t <= times["last_chunk_done"]]
    return {"wall_s": wall_s, "audio_s": audio_s[0], "times": times,
            "mean_active": statistics.fmean(between) if between else float("nan"), "cpu_s": cpu_s,
            "samples": samples}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=240)
    parser.add_argument("--chunk-s", type=float, default=15.0)
    parser.add_argument("--chapters", type=int, default=20)
    parser.add_argument("--words-per-chapter", type=int, default=200)
    parser.add_argument("--tokens-per-s", type=float, default=100.0, help="stand-in per-stream rate at batch 1")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=32,
                        help="the synth worker's TTS_MAX_IN_FLIGHT (and the direct client's concurrency); "
                             "the sizing rule's bulk-only value for the 32-slot stand-in is 40")
    parser.add_argument("--formats", default="wav,flac,mp3", help="assembly formats, comma-separated")
    parser.add_argument("--no-assembly", action="store_true", help="skip the assembly figures (1)")
    parser.add_argument("--unknown-loudness", action="store_true",
                        help="also assemble without the chunks' loudness in the plan (the assembler measures it)")
    parser.add_argument("--timeline", metavar="FILE", help="write each job's timeline (events, sampled `active`) as JSON")
    parser.add_argument("--direct", action="store_true",
                        help="also send the job's chunk texts straight to the stand-in (--in-flight at once) for comparison")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child())
        return
    import httpx

    from pipeline.cli import logs
    from pipeline.stack.devstack import DevStack
    from pipeline.stack.ports import free_port
    from pipeline.stack.embedded import EngineProcess

    logs.configure("warning")
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tts-bench-jobs-") as tmp, DevStack(Path(tmp), bucket="bench") as stack:
        settings = stack_settings(stack)
        formats = [] if args.no_assembly or args.chunks <= 0 else [f for f in args.formats.split(",") if f]
        if formats:
            asyncio.run(prepare_chapter(settings, args.chunks, args.chunk_s))
        variants = [(fmt, True) for fmt in formats] + [(fmt, False) for fmt in formats if args.unknown_loudness]
        for fmt, known in variants:
            runs = [assemble_in_child(settings, fmt, known) for _ in range(args.repeat)]
            print(f"assembly, {args.chunks} chunks x {args.chunk_s:.0f} s = {runs[0]['duration_s'] / 60:.1f} min, {fmt}"
                  f"{'' if known else ', loudness measured by the assembler'}: "
                  f"{statistics.median(r['seconds'] for r in runs):.1f} s (median of {len(runs)}), "
                  f"peak RSS {statistics.median(r['peak_rss_mb'] for r in runs):.0f} MB "
                  f"(before assembling: interpreter, imports, warm S3 client: {statistics.median(r['rss_before_mb'] for r in runs):.0f} MB), "
                  f"{runs[0]['bytes'] / 1e6:.0f} MB written; imported: {', '.join(runs[0]['heavy_imports']) or 'no scipy'}",
                  flush=True)
        if args.chapters <= 0:
            return
        engine = EngineProcess(free_port(), Path(tmp) / "engine.log", 0.0,
                               ("--slots", "32", "--tokens-per-s", str(args.tokens_per_s))).start()
        try:
            ratios = []
            for _ in range(args.repeat):
                job_settings = stack_settings(stack, backend_urls=[engine.url], max_in_flight=args.in_flight,
                                              poll_s=0.05)
                httpx.post(f"{engine.url}/sim/reset", timeout=5)
                run = asyncio.run(run_job(job_settings, args.chapters, args.words_per_chapter, engine.url))
                wall_s, t = run["wall_s"], run["times"]
                if args.timeline:
                    Path(args.timeline).write_text(json.dumps({"times": t, "active": run["samples"]}))
                stats = httpx.get(f"{engine.url}/sim/stats", timeout=5).json()
                ideal_s = stats["audio_s_total"] / stats["ideal_audio_s_per_s"]
                ratios.append(ideal_s / wall_s)
                print(f"{args.chapters}-chapter job: {run['audio_s'] / 60:.1f} min of audio ({stats['calls']} chunks) in "
                      f"{wall_s:.1f} s; stand-in ideal at full batch {ideal_s:.1f} s; ratio {ideal_s / wall_s:.2f}\n"
                      f"  timeline (s from the first submit): first request published {t['first_request']:.2f}, "
                      f"last {t['last_request']:.2f}; first call generating {t['first_active']:.2f}, "
                      f"first chunk done {t['first_chunk_done']:.2f}, last chunk done {t['last_chunk_done']:.2f}, "
                      f"last chapter done {t['last_chapter_done']:.2f}, job done {t['job_done']:.2f}; "
                      f"mean calls generating until the last chunk {run['mean_active']:.1f} of 32\n"
                      f"  after the last chunk (last chapter's assembly, manifest, job.done): "
                      f"{t['job_done'] - t['last_chunk_done']:.2f} s; ratio without it "
                      f"{ideal_s / (wall_s - (t['job_done'] - t['last_chunk_done'])):.2f}\n"
                      f"  CPU s during the job: " + ", ".join(f"{k} {v:.1f}" for k, v in run["cpu_s"].items())
                      + f"; load average {os.getloadavg()[0]:.2f}", flush=True)
                if args.direct:
                    httpx.post(f"{engine.url}/sim/reset", timeout=5)
                    direct_s = direct_run(job_settings, args.chapters, args.words_per_chapter)
                    stats = httpx.get(f"{engine.url}/sim/stats", timeout=5).json()
                    direct_ideal_s = stats["audio_s_total"] / stats["ideal_audio_s_per_s"]
                    print(f"  direct client, same chunk texts, {args.in_flight} at once: {direct_s:.1f} s; ideal {direct_ideal_s:.1f} s; "
                          f"ratio {direct_ideal_s / direct_s:.2f}; job / direct {direct_s / wall_s:.2f}", flush=True)
            print(f"median ratio ideal / wall: {statistics.median(ratios):.2f}")
        finally:
            engine.stop()


if __name__ == "__main__":
    main()
