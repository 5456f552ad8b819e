"""Throughput, saturation and scaling of the pipeline against the stand-in (issue 7). Prints; asserts nothing.

Everything runs on a throw-away embedded stack (nats-server + SeaweedFS); stand-ins (`tts-pipeline
engine --kind sim` with a capacity model), synth workers, the gateway, ingest and assembler are
child processes configured through `TTS_*`, exactly as started by hand. Loads are sent with
`tts-pipeline bench`'s own code (`pipeline.bench.run.run_bench`).

  a) saturation: one worker against a stand-in with 32 slots and a tokens/s capacity model; a bulk
     job of texts of 4.0-4.8 s of audio through the bus; delivered audio seconds per second
     / the stand-in's `ideal_audio_s_per_s`; next to the direct semaphore client (bench --target
     backend) at the same concurrency (32), same stand-in, same repeat. Worker in-flight 32 (= slots)
     and 40 (slots + 25 %), each also with a bulk lookahead (`--lookahead`, TTS_BULK_LOOKAHEAD).
  b) two stand-ins behind one worker (in-flight 64) vs one (in-flight 32, from a), same repeat).
  c) interactive latency: p50 of gateway /generate (2 at a time) while a 2,000-chunk bulk job of the
     bench's eight varied texts runs, vs on the idle system.
  d) overhead with an instant stand-in: chunks/s through one worker (64 in flight) vs the raw S3 PUT
     rate of the same objects (scripts/bench_synth.py's measure); the worker's CPU per chunk
     (/proc/<pid>/stat) and peak RSS (VmHWM).
  e) cost growth through the jobs path (ChapterSubmit -> ingest -> synth -> assembler -> job.done):
     1, 10, 100 chapters; 1, 2, 4 workers; 1 and 2 stand-ins (faster ones, to keep it short).

Each figure is the median of `--repeat` runs (e: `--repeat-jobs`); ratios are taken inside one
repeat. The 2-core machine is shared: compare ratios, not absolute figures across runs.

    python scripts/bench_scaling.py [--repeat 2] [--sections abcde] [--tokens-per-s 25]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_synth import raw_put_rate, sample_object  # noqa: E402 (scripts/ is on the path)

from pipeline import bus
from pipeline.bench.lab import (  # noqa: E402
    SLOTS, Engine, EngineWatch, Lab, cpu_s, load_avg, wait_engine, wait_gateway, wait_ready,
)
from pipeline.bench.load import TEXTS, BenchOptions  # noqa: E402
from pipeline.bench.run import run_bench, steady_audio_s_per_s  # noqa: E402
from pipeline.cli import logs
from pipeline.contracts.messages import ChapterSubmit  # noqa: E402
from pipeline.contracts.settings import Settings  # noqa: E402
from pipeline.contracts.subjects import Names  # noqa: E402
from pipeline.stack.devstack import DevStack  # noqa: E402
from pipeline.stack.ports import free_port  # noqa: E402

BUCKET = "bench-scaling"
# 10-12 words each: 4.0-4.8 s of audio at the stand-in's 2.5 words/s (100-120 audio tokens), mean 4.5 s.
FOUR_SECOND_TEXTS = (
    "The quiet harbour wakes slowly as the fishing boats return.",
    "A single lamp burned in the window of the old mill.",
    "We walked along the river until the path simply ended there.",
    "Her letters always arrived on Tuesdays, folded into neat small squares.",
    "The market opens early, long before the tourists find their way.",
    "Snow had covered the tracks, so nobody knew which way he went.",
    "The clock in the hall struck eleven and then stopped for good.",
    "Bring the blue folder, the spare keys, and a warm coat tonight.",
)
INTERACTIVE_TEXT = "Your table is ready, please come."  # 6 words: 2.4 s, 60 tokens
BULK_CHUNKS = 2000
SENTENCES_PER_CHAPTER = 2


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def timed_bench(engines: list[Engine], settings: Settings, options: BenchOptions) -> dict:
    """One bench run with the stand-ins watched: delivered and produced audio s/s, batch occupancy."""
    async with EngineWatch(engines) as watch:
        result = await run_bench(settings, options)
    summary = result.summary()
    if summary["failed"]:
        print(f"    warning: {summary['failed']} failed: {summary['errors'][:2]}", flush=True)
    steady = steady_audio_s_per_s(result.samples, SLOTS * len(engines))
    return {
        "delivered": summary["audio_s_per_s"], "produced": watch.audio_s / result.wall_s,
        "steady": steady if steady is not None else float("nan"),
        "ideal": watch.ideal_audio_s_per_s, "occupancy": watch.occupancy(SLOTS * len(engines)),
        "wall_s": result.wall_s, "latency": summary["latency_s"],
    }


# ------------------------------------------------------------------------------ a) and b)


async def saturation(lab: Lab, args) -> None:
    n = args.saturation_waves * SLOTS
    print(f"\na) saturation, b) two stand-ins: stand-ins with {SLOTS} slots, {args.tokens_per_s:g} tokens/s per stream "
          f"at batch 1, batch penalty 0.02; bulk jobs of {n} (one stand-in) and {2 * n} (two) texts of 4.0-4.8 s; "
          f"load {load_avg():.2f}", flush=True)
    one, two = lab.engine(tokens_per_s=args.tokens_per_s), lab.engine(tokens_per_s=args.tokens_per_s)
    s32 = lab.settings([one.url], max_in_flight=SLOTS)
    s40 = lab.settings([one.url], max_in_flight=SLOTS + SLOTS // 4)
    # In-flight 32 and 40 again, each with a bulk lookahead (`--lookahead`: longest text first).
    s32la = lab.settings([one.url], max_in_flight=SLOTS, bulk_lookahead=args.lookahead)
    s40la = lab.settings([one.url], max_in_flight=SLOTS + SLOTS // 4, bulk_lookahead=args.lookahead)
    s64 = lab.settings([one.url, two.url], max_in_flight=2 * SLOTS)
    workers = (lab.workers(s32) + lab.workers(s40) + lab.workers(s32la) + lab.workers(s40la) + lab.workers(s64))
    await asyncio.gather(wait_ready(s32, 1), wait_ready(s40, 1), wait_ready(s32la, 1), wait_ready(s40la, 1),
                         wait_ready(s64, 1))

    def bulk(count: int) -> BenchOptions:
        return BenchOptions(target="bus", requests=count, concurrent=count, texts=FOUR_SECOND_TEXTS, timeout_s=600)

    rows = []
    for rep in range(args.repeat):
        bus32 = await timed_bench([one], s32, bulk(n))
        direct = await timed_bench([one], s32, BenchOptions(target="backend", url=one.url, requests=n,
                                                            concurrent=SLOTS, texts=FOUR_SECOND_TEXTS, timeout_s=600))
        bus40 = await timed_bench([one], s40, bulk(n))
        bus32la = await timed_bench([one], s32la, bulk(n))
        bus40la = await timed_bench([one], s40la, bulk(n))
        bus64 = await timed_bench([one, two], s64, bulk(2 * n))
        ideal = bus32["ideal"]
        row = {
            "ideal": ideal, "bus32": bus32["delivered"], "direct": direct["delivered"], "bus40": bus40["delivered"],
            "two": bus64["delivered"], "bus32_of_ideal": bus32["delivered"] / ideal,
            "direct_of_ideal": direct["delivered"] / ideal, "bus40_of_ideal": bus40["delivered"] / ideal,
            "bus32_vs_direct": bus32["delivered"] / direct["delivered"],
            "bus40_vs_direct": bus40["delivered"] / direct["delivered"],
            "bus32la_of_ideal": bus32la["delivered"] / ideal, "bus40la_of_ideal": bus40la["delivered"] / ideal,
            "bus32la_vs_direct": bus32la["delivered"] / direct["delivered"],
            "bus40la_vs_direct": bus40la["delivered"] / direct["delivered"],
            "two_vs_one": bus64["delivered"] / bus32["delivered"], "two_of_ideal": bus64["delivered"] / bus64["ideal"],
            "occ32": bus32["occupancy"], "occ_direct": direct["occupancy"], "occ40": bus40["occupancy"],
            "occ64": bus64["occupancy"], "produced32_of_ideal": bus32["produced"] / ideal,
            "steady32": bus32["steady"] / ideal, "steady_direct": direct["steady"] / ideal,
            "steady40": bus40["steady"] / ideal,
        }
        rows.append(row)
        print(f"  [{rep + 1}] ideal {ideal:.2f} audio s/s | bus, in-flight 32: {row['bus32']:.2f} "
              f"({row['bus32_of_ideal']:.3f}, batch {row['occ32']:.1%} full) | direct, 32: {row['direct']:.2f} "
              f"({row['direct_of_ideal']:.3f}, {row['occ_direct']:.1%}) | bus, in-flight 40: {row['bus40']:.2f} "
              f"({row['bus40_of_ideal']:.3f}, {row['occ40']:.1%}) | lookahead {args.lookahead} at in-flight 32: "
              f"{row['bus32la_of_ideal']:.3f}, at 40: {row['bus40la_of_ideal']:.3f} | two stand-ins, 64: {row['two']:.2f} "
              f"({row['two_of_ideal']:.3f} of theirs, {row['occ64']:.1%}) | load {load_avg():.2f}", flush=True)
    lab.release(workers)
    m = {k: median([r[k] for r in rows]) for k in rows[0]}
    print(f"  a) medians: ideal {m['ideal']:.2f} audio s/s. Bus, in-flight 32: {m['bus32']:.2f} = "
          f"{m['bus32_of_ideal']:.3f} of ideal (goal >= 0.97), {m['bus32_vs_direct']:.3f}x the direct client "
          f"(goal >= 1). Bus, in-flight 40: {m['bus40_of_ideal']:.3f} of ideal, {m['bus40_vs_direct']:.3f}x direct. "
          f"Direct semaphore client at 32: {m['direct_of_ideal']:.3f} of ideal. With a bulk lookahead of {args.lookahead} "
          f"(TTS_BULK_LOOKAHEAD): in-flight 32 {m['bus32la_of_ideal']:.3f} of ideal, {m['bus32la_vs_direct']:.3f}x direct; "
          f"in-flight 40 {m['bus40la_of_ideal']:.3f}, {m['bus40la_vs_direct']:.3f}x direct.")
    print(f"     Steady state (from the 32nd completion to the last that leaves 32 in flight): bus 32 {m['steady32']:.3f}, "
          f"direct {m['steady_direct']:.3f}, bus 40 {m['steady40']:.3f} of ideal. Batch occupancy (sampled): bus 32 "
          f"{m['occ32']:.1%}, direct {m['occ_direct']:.1%}, bus 40 {m['occ40']:.1%}.")
    print(f"  b) median: two stand-ins behind one worker deliver {m['two_vs_one']:.2f}x one (goal >= 1.9); "
          f"{m['two_of_ideal']:.3f} of their ideal")


# ------------------------------------------------------------------------------ c)


async def interactive(lab: Lab, args) -> None:
    for in_flight in args.interactive_in_flight:
        for reserve in args.interactive_reserve:
            await interactive_at(lab, args, in_flight, reserve)


async def interactive_at(lab: Lab, args, in_flight: int, reserve: float) -> None:
    print(f"\nc) interactive under bulk load: stand-in {SLOTS} slots, {args.tokens_per_s:g} tokens/s; one worker, "
          f"in-flight {in_flight}, interactive reserve {reserve:g}; gateway /generate of a 6-word text (2.4 s), "
          f"{args.interactive} requests 2 at a time; bulk job: {BULK_CHUNKS} chunks of the bench's eight texts "
          f"(0.8-13 s); load {load_avg():.2f}", flush=True)
    engine = lab.engine(tokens_per_s=args.tokens_per_s)
    s = lab.settings([engine.url], max_in_flight=in_flight, interactive_reserve=reserve)
    port = free_port()
    children = lab.workers(s) + [lab.child(["gateway", "--port", str(port)], s)]
    url = f"http://127.0.0.1:{port}"
    await wait_ready(s, 1)
    await wait_gateway(url)
    ask = BenchOptions(target="gateway", url=url, requests=args.interactive, concurrent=2, texts=(INTERACTIVE_TEXT,))
    names = Names(s.namespace)
    rows = []
    for rep in range(args.repeat):
        idle = (await run_bench(s, ask)).summary()["latency_s"]
        bulk = asyncio.create_task(run_bench(s, BenchOptions(target="bus", requests=BULK_CHUNKS, concurrent=BULK_CHUNKS,
                                                             texts=TEXTS, timeout_s=3600)))
        full = await wait_engine(engine, lambda st: st["active"] >= in_flight, 30)
        loaded = (await run_bench(s, ask)).summary()["latency_s"]
        nc = await bus.connect(s, "bench-purge")
        left = (await nc.jetstream().consumer_info(names.synth_stream, names.synth_consumer("bulk"))).num_pending
        await nc.jetstream().purge_stream(names.synth_stream, subject=names.synth("bulk"))  # end the bulk job
        await nc.close()
        bulk.cancel()
        await asyncio.gather(bulk, return_exceptions=True)
        await wait_engine(engine, lambda st: st["active"] == 0 and st["queued"] == 0, 60)
        row = {"idle_p50": idle["p50"], "loaded_p50": loaded["p50"], "ratio": loaded["p50"] / idle["p50"],
               "idle_p95": idle["p95"], "loaded_p95": loaded["p95"]}
        rows.append(row)
        print(f"  [{rep + 1}] idle p50 {idle['p50']:.2f} s (p95 {idle['p95']:.2f}) | under bulk p50 "
              f"{loaded['p50']:.2f} s (p95 {loaded['p95']:.2f}) | ratio {row['ratio']:.2f} | batch full before: "
              f"{full}; bulk chunks still queued after: {left} | load {load_avg():.2f}", flush=True)
    lab.release(children)
    m = {k: median([r[k] for r in rows]) for k in rows[0]}
    bulk_batch = in_flight - math.floor(in_flight * reserve)
    print(f"  c) medians, worker in-flight {in_flight}, reserve {reserve:g}: interactive p50 {m['loaded_p50']:.2f} s "
          f"under the bulk job vs {m['idle_p50']:.2f} s idle = {m['ratio']:.2f}x (goal <= 1.5x); while interactive "
          f"requests arrive the bulk job keeps {bulk_batch} calls, worth {batch_capacity(args.tokens_per_s, bulk_batch):.1f} "
          f"audio s/s (the stand-in's formula; {batch_capacity(args.tokens_per_s, SLOTS):.1f} at {SLOTS}, which it "
          f"gets back {s.interactive_hold_s:g} s after the last interactive request)")


def batch_capacity(tokens_per_s: float, batch: int, penalty: float = 0.02) -> float:
    """Audio s/s of the stand-in's capacity model at `batch` sequences (its ideal at `batch` = slots)."""
    return batch * tokens_per_s / (1 + penalty * (batch - 1)) / 25



# ------------------------------------------------------------------------------ d)


class CpuMeter:
    """CPU seconds spent by the processes of a measurement: worker, stand-in, weed, nats, this client."""

    def __init__(self, lab: Lab, worker, engine: Engine):
        self.pids = {"worker": worker.pid, "stand-in": engine.child.pid, "weed": lab.stack.s3.pid,
                     "nats": lab.stack.nats.pid}

    def read(self) -> dict[str, float]:
        return {**{name: cpu_s(pid) for name, pid in self.pids.items()}, "client": time.process_time()}

    @staticmethod
    def spent_ms(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
        return {name: (after[name] - before[name]) * 1e3 / count for name in before}


async def overhead(lab: Lab, args) -> None:
    print(f"\nd) overhead, instant stand-in (256 slots, no delay): {args.chunks} chunks of 4.0-4.8 s (~200 KB WAV) through "
          f"one worker at in-flight 64 vs raw S3 PUT of the same objects (16 threads); load {load_avg():.2f}", flush=True)
    engine = lab.engine(slots=256)
    s = lab.settings([engine.url], max_in_flight=64)
    [worker] = lab.workers(s)
    await wait_ready(s, 1)
    meter = CpuMeter(lab, worker, engine)
    rows = []
    for rep in range(args.repeat):
        before = meter.read()
        result = await run_bench(s, BenchOptions(target="bus", requests=args.chunks, concurrent=args.chunks,
                                                 texts=FOUR_SECOND_TEXTS, timeout_s=600))
        piped = CpuMeter.spent_ms(before, meter.read(), args.chunks)
        rate = result.summary()["successful"] / result.wall_s
        payload = await sample_object(s)
        before = meter.read()
        put = await asyncio.to_thread(raw_put_rate, s, payload, args.chunks)
        raw = CpuMeter.spent_ms(before, meter.read(), args.chunks)
        row = {"rate": rate, "put": put, "ratio": rate / put, "cpu_ms": piped["worker"], "rss_mb": worker.peak_rss_mb(),
               "pipe_total_ms": sum(piped.values()), "raw_total_ms": raw["weed"] + raw["client"]}
        rows.append(row)
        print(f"  [{rep + 1}] pipeline {rate:.1f} chunks/s | raw PUT {put:.1f} obj/s ({len(payload) / 1000:.0f} KB) | "
              f"ratio {row['ratio']:.2f} | worker CPU {piped['worker']:.1f} ms/chunk | peak RSS {row['rss_mb']:.0f} MB "
              f"| load {load_avg():.2f}", flush=True)
        print("      CPU ms per chunk, pipeline: " + ", ".join(f"{k} {v:.1f}" for k, v in piped.items())
              + f" = {row['pipe_total_ms']:.1f}; raw PUT: weed {raw['weed']:.1f}, client {raw['client']:.1f} = "
              f"{row['raw_total_ms']:.1f}", flush=True)
    lab.release([worker])
    m = {k: median([r[k] for r in rows]) for k in rows[0]}
    print(f"  d) medians: {m['rate']:.1f} chunks/s through one worker = {m['ratio']:.2f} of the raw S3 PUT rate "
          f"{m['put']:.1f}/s (goal >= 0.8); worker CPU {m['cpu_ms']:.1f} ms per chunk; peak RSS "
          f"{max(r['rss_mb'] for r in rows):.0f} MB at 64 in flight; CPU per chunk on the machine "
          f"{m['pipe_total_ms']:.1f} ms vs {m['raw_total_ms']:.1f} ms per raw PUT")


# ------------------------------------------------------------------------------ e)


def chapter_text(job_id: str, chapter: int) -> str:
    """`SENTENCES_PER_CHAPTER` sentences of 13-15 words (5.2-6 s), unique within the job: one chunk each."""
    return " ".join(f"{FOUR_SECOND_TEXTS[(chapter + k) % len(FOUR_SECOND_TEXTS)][:-1]} in chapter {chapter + 1}."
                    for k in range(SENTENCES_PER_CHAPTER))


async def run_job(settings: Settings, chapters: int, timeout_s: float = 600) -> tuple[float, int]:
    """Submit a job of `chapters` chapters; (seconds to job.done, chapters failed)."""
    names = Names(settings.namespace)
    job_id = f"grow-{uuid.uuid4().hex[:8]}"
    nc = await bus.connect(settings, "bench-jobs")
    js = nc.jetstream()
    finished = asyncio.get_running_loop().create_future()
    failed = 0

    async def on_event(msg) -> None:
        nonlocal failed
        if ".chapter.failed." in msg.subject:
            failed += 1
        if ".job.done." in msg.subject and not finished.done():
            finished.set_result(None)

    sub = await nc.subscribe(names.job_events(job_id), cb=on_event)
    try:
        started = time.perf_counter()
        for i in range(chapters):
            submit = ChapterSubmit(job_id=job_id, chapter=i, total_chapters=chapters, title=f"Chapter {i + 1}",
                                   text=chapter_text(job_id, i))
            await bus.publish_json(js, names.chapters_submit, submit.to_bytes(), f"chapter:{job_id}:{i}")
        await asyncio.wait_for(finished, timeout_s)
        return time.perf_counter() - started, failed
    finally:
        await sub.unsubscribe()
        await nc.close()


async def growth(lab: Lab, args) -> None:
    configs = [(1, 1, 1), (10, 1, 1), (100, 1, 1), (100, 2, 1), (100, 4, 1), (100, 1, 2), (100, 2, 2), (100, 4, 2)]
    print(f"\ne) cost growth, jobs path: chapters of {SENTENCES_PER_CHAPTER} chunks of 5.2-6 s (TTS_CHUNK_TARGET_WORDS=12, "
          f"MAX=16); stand-ins {SLOTS} slots at {args.jobs_tokens_per_s:g} tokens/s; in-flight per worker = "
          f"ceil(slots of all stand-ins / workers); one ingest and one assembler process; load {load_avg():.2f}",
          flush=True)
    engines = [lab.engine(tokens_per_s=args.jobs_tokens_per_s), lab.engine(tokens_per_s=args.jobs_tokens_per_s)]
    base = lab.settings([engines[0].url])
    helpers = [lab.child(["worker", "ingest"], base, chunk_target_words=12, chunk_max_words=16),
               lab.child(["worker", "assemble"], base)]
    print(f"  {'chapters':>8} {'workers':>7} {'servers':>7} {'in-flight':>9} | {'wall s':>7} {'chunks/s':>8} "
          f"{'audio s/s':>9} {'of ideal':>8} | {'synth CPU':>9} {'ingest+asm':>10} {'CPU s per':>9}")
    print(f"  {'':>8} {'':>7} {'':>7} {'/worker':>9} | {'':>7} {'':>8} {'':>9} {'':>8} | "
          f"{'ms/chunk':>9} {'ms/chapter':>10} {'audio min':>9}")
    for chapters, n_workers, n_servers in configs:
        used = engines[:n_servers]
        in_flight = math.ceil(SLOTS * n_servers / n_workers)
        settings = base.model_copy(update={"backend_urls": [e.url for e in used], "max_in_flight": in_flight})
        workers = lab.workers(settings, n_workers)
        await wait_ready(settings, n_workers)
        walls, rows = [], []
        for _ in range(args.repeat_jobs):
            synth0 = sum(w.cpu_s() for w in workers)
            helper0 = sum(h.cpu_s() for h in helpers)
            async with EngineWatch(used) as watch:
                wall_s, failed = await run_job(settings, chapters)
            synth_cpu = sum(w.cpu_s() for w in workers) - synth0
            helper_cpu = sum(h.cpu_s() for h in helpers) - helper0
            chunks = chapters * SENTENCES_PER_CHAPTER
            walls.append(wall_s)
            rows.append({
                "wall_s": wall_s, "chunks_s": chunks / wall_s, "audio_s_s": watch.audio_s / wall_s,
                "of_ideal": watch.audio_s / wall_s / watch.ideal_audio_s_per_s,
                "synth_ms": synth_cpu * 1e3 / chunks, "helper_ms": helper_cpu * 1e3 / chapters,
                "cpu_per_min": (synth_cpu + helper_cpu) / (watch.audio_s / 60), "failed": failed,
            })
        lab.release(workers)
        m = {k: median([r[k] for r in rows]) for k in rows[0]}
        print(f"  {chapters:>8} {n_workers:>7} {n_servers:>7} {in_flight:>9} | {m['wall_s']:>7.1f} {m['chunks_s']:>8.1f} "
              f"{m['audio_s_s']:>9.1f} {m['of_ideal']:>8.2f} | {m['synth_ms']:>9.1f} {m['helper_ms']:>10.1f} "
              f"{m['cpu_per_min']:>9.2f}" + (f"  ({m['failed']:.0f} chapters failed)" if m["failed"] else "")
              + f"  load {load_avg():.2f}", flush=True)
    lab.release(helpers)


# ------------------------------------------------------------------------------ main


async def run(args) -> None:
    logs.configure("warning")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, load {load_avg():.2f} at start")
    waited = 0.0
    while load_avg() > args.max_load and waited < args.max_wait_s:
        await asyncio.sleep(5)
        waited += 5
    if waited:
        print(f"waited {waited:.0f} s for the load to drop below {args.max_load}; load now {load_avg():.2f}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp, \
            DevStack(Path(tmp) / "stack", bucket=BUCKET) as stack:
        lab = Lab(Path(tmp), stack)
        try:
            if "a" in args.sections or "b" in args.sections:
                await saturation(lab, args)
            if "c" in args.sections:
                await interactive(lab, args)
            if "d" in args.sections:
                await overhead(lab, args)
            if "e" in args.sections:
                await growth(lab, args)
        finally:
            lab.close()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load {load_avg():.2f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2, help="repeats of a) to d) (medians printed)")
    parser.add_argument("--repeat-jobs", type=int, default=1, help="repeats of each e) configuration")
    parser.add_argument("--sections", default="abcde", help="which figures to measure (default: abcde)")
    parser.add_argument("--tokens-per-s", type=float, default=25.0, help="a)-c): stand-in per-stream speed at batch 1")
    parser.add_argument("--jobs-tokens-per-s", type=float, default=50.0, help="e): stand-in per-stream speed")
    parser.add_argument("--lookahead", type=int, default=SLOTS // 4,
                        help="a): TTS_BULK_LOOKAHEAD of the two lookahead rows (default: a quarter of the slots)")
    parser.add_argument("--saturation-waves", type=int, default=3, help="a), b): bulk job = waves x 32 texts")
    parser.add_argument("--interactive", type=int, default=8, help="c): interactive requests per measurement")
    parser.add_argument("--interactive-in-flight", type=int, nargs="+", default=[SLOTS],
                        help="c): worker in-flight values to measure (default: 32, the stand-in's slots)")
    parser.add_argument("--interactive-reserve", type=float, nargs="+", default=[Settings().interactive_reserve],
                        help="c): TTS_INTERACTIVE_RESERVE values to measure (default: the setting's default)")
    parser.add_argument("--chunks", type=int, default=600, help="d): chunks per measurement")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-min load to drop below this")
    parser.add_argument("--max-wait-s", type=float, default=120.0, help="... for at most this long")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
