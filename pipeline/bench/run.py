"""`tts-pipeline bench`: the original benchmark's load and summary, against any of three targets.

    tts-pipeline bench [-n 10] [-c 5] [--url URL] [--target gateway|backend|bus] [--json]
                       [--texts FILE] [--gpu-log FILE]

The load is the original's: `--requests` requests, at most `--concurrent` at a time (a semaphore),
cycling eight texts of varying length under four scene prompts (none, happy, sad, dramatic), at
temperature 0.5. The targets receive the same load:

- `backend`: chat completions straight to one model server (the original approach);
- `gateway`: `POST /generate` to the gateway (the original proxy's API, on :8888 by default);
- `bus`: `SynthRequest`s published to the bus with the `TTS_*` settings, each waited for on its
  chunk event (what the gateway does inside, without HTTP).

Every request is fresh synthesis by default: through the bus each carries its own `take`; through
the gateway (whose API has no take field) each temperature is nudged by less than 1e-4, which
changes the cache key and nothing audible. `--allow-cache` sends the original bodies unchanged.

The summary is the original's (successful/failed, total time, req/s = all requests / wall time,
latency avg/min/max/p50/p95 over successful requests, the target's own stats) plus seconds of audio
delivered per second of wall time and audio tokens per second (25 tokens = 1 s of audio, the Higgs
codec's frame rate). A target that is not healthy aborts the run before any load with a one-line
`StartupError`, as the original aborted when `vllm_healthy` was false.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.contracts.messages import AUDIO_TOKENS_PER_S
from pipeline.bench.load import BenchOptions, Sample
from pipeline.contracts.errors import StartupError
from pipeline.contracts.settings import Settings

TARGETS = ("gateway", "backend", "bus")
ERRORS_SHOWN = 5


@dataclass
class BenchResult:
    target: str
    url: str
    requests: int
    concurrent: int
    started_s: float  # epoch seconds
    wall_s: float
    samples: list[Sample]
    server_stats: dict | None = None
    gpu: dict | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Everything the printed summary shows, as plain JSON-able values."""
        ok = [s for s in self.samples if s.ok]
        failed = [s for s in self.samples if not s.ok]
        audio_s = sum(s.audio_s for s in ok)
        wall_s = max(self.wall_s, 1e-9)
        return {
            "target": self.target, "url": self.url, "requests": self.requests, "concurrent": self.concurrent,
            "successful": len(ok), "failed": len(failed),
            "success_rate": len(ok) / len(self.samples) if self.samples else 0.0,
            "total_time_s": round(self.wall_s, 4),
            "requests_per_s": round(len(self.samples) / wall_s, 4),
            "latency_s": describe([s.latency_s for s in ok]),
            "server_time_s": describe([s.server_s for s in ok if s.server_s is not None]),
            "audio_s": round(audio_s, 3),
            "audio_s_per_s": round(audio_s / wall_s, 4),
            "audio_tokens_per_s": round(audio_s * AUDIO_TOKENS_PER_S / wall_s, 2),
            "cache_hits": sum(s.cached for s in ok),
            "errors": [f"#{s.index}: {s.error}" for s in failed[:ERRORS_SHOWN]],
            "started_at_s": round(self.started_s, 3),
            "server_stats": self.server_stats,
            "gpu": self.gpu,
            "notes": self.notes,
        }


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `values` not empty."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def describe(values: list[float]) -> dict | None:
    """avg/min/max/p50/p95 (and stdev) in seconds, or None when there are no values."""
    if not values:
        return None
    return {
        "avg": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
        "p50": round(percentile(values, 0.5), 4), "p95": round(percentile(values, 0.95), 4),
        "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def steady_audio_s_per_s(samples: list[Sample], edge: int) -> float | None:
    """Audio seconds per second from the `edge`-th completion to the last one that still leaves
    `edge` requests in flight.

    With `edge` = the model servers' batch slots this is the rate while the batch could be full:
    the first batch's start and the last batch's drain (which no scheduler can fill: nothing is
    left to send) are left out. The estimate is the audio of the completions after the window's
    first one, over the time between the two. None when the run is too short.
    """
    done = sorted((s for s in samples if s.ok), key=lambda s: s.done_s)
    first, last = edge - 1, len(done) - edge - 1
    if first < 0 or last <= first or done[last].done_s <= done[first].done_s:
        return None
    audio_s = sum(s.audio_s for s in done[first + 1: last + 1])
    return audio_s / (done[last].done_s - done[first].done_s)


def read_texts(path: str) -> tuple[str, ...]:
    """One text per line, blank lines skipped; `StartupError` when unreadable or empty."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise StartupError(f"cannot read texts from {path}: {exc.strerror or exc}") from None
    texts = tuple(line.strip() for line in lines if line.strip())
    if not texts:
        raise StartupError(f"no texts in {path} (one text per line)")
    return texts


async def drive(requests: int, concurrent: int, call: Callable[[int], Awaitable[Sample]]) -> tuple[list[Sample], float, float]:
    """Run `call(i)` for every i < `requests`, at most `concurrent` at once (a semaphore, as the
    original did). Returns (samples in index order, start in epoch seconds, wall seconds)."""
    gate = asyncio.Semaphore(max(1, concurrent))

    async def one(index: int) -> Sample:
        async with gate:
            sample = await call(index)
        sample.done_s = time.perf_counter() - t0
        return sample

    started_s = time.time()
    t0 = time.perf_counter()
    samples = await asyncio.gather(*(one(i) for i in range(requests)))
    return list(samples), started_s, time.perf_counter() - t0


async def run_bench(settings: Settings, options: BenchOptions) -> BenchResult:
    """Check the target's health (StartupError when it is not healthy), run the load, collect the
    target's stats and, with `gpu_log`, the GPU monitor's summary over the run's window."""
    from pipeline.bench import targets as bench_targets

    if options.target not in TARGETS:
        raise StartupError(f"unknown target {options.target!r}; choose one of {', '.join(TARGETS)}")
    if options.requests < 1 or options.concurrent < 1:
        raise StartupError("--requests and --concurrent must be at least 1")
    target = bench_targets.open_target(settings, options)
    await target.open()
    try:
        samples, started_s, wall_s = await drive(options.requests, options.concurrent, target.call)
        server_stats = await target.stats()
    finally:
        await target.close()
    result = BenchResult(options.target, target.url, options.requests, options.concurrent, started_s, wall_s,
                         samples, server_stats, notes=list(target.notes))
    if options.gpu_log:
        result.gpu = gpu_summary(options.gpu_log, started_s, started_s + wall_s)
    return result


def gpu_summary(path: str, start_s: float, end_s: float) -> dict:
    from pipeline.bench.gpu import summarise_gpu_log

    if not Path(path).is_file():
        return {"path": path, "missing": True}
    return summarise_gpu_log(path, start_s, end_s)


def _seconds(stats: dict | None, name: str) -> str:
    if stats is None:
        return f"  {name}: n/a"
    return (f"  {name}: avg {stats['avg']:.3f}  min {stats['min']:.3f}  max {stats['max']:.3f}  "
            f"p50 {stats['p50']:.3f}  p95 {stats['p95']:.3f}")


def format_summary(summary: dict) -> str:
    """The printed report: the original's lines, then audio throughput, stats, GPU."""
    total = summary["successful"] + summary["failed"]
    lines = [
        f"Benchmark: {summary['requests']} requests, {summary['concurrent']} concurrent -> "
        f"{summary['target']} {summary['url']}",
        *(f"  note: {note}" for note in summary["notes"]),
        "",
        f"  Successful: {summary['successful']}/{total} ({summary['success_rate']:.1%})",
        f"  Failed:     {summary['failed']}",
        f"  Total time: {summary['total_time_s']:.2f} s",
        f"  Requests/s: {summary['requests_per_s']:.2f}",
        _seconds(summary["latency_s"], "Latency (s)"),
    ]
    if summary["server_time_s"]:
        lines.append(_seconds(summary["server_time_s"], "Server generation time (s)"))
    lines.append(f"  Audio: {summary['audio_s']:.1f} s = {summary['audio_s_per_s']:.2f} s of audio per second, "
                 f"{summary['audio_tokens_per_s']:.1f} audio tokens/s" +
                 (f" ({summary['cache_hits']} from the cache)" if summary["cache_hits"] else ""))
    if summary["errors"]:
        lines.append(f"  First errors ({min(len(summary['errors']), ERRORS_SHOWN)} of {summary['failed']}):")
        lines += [f"    {error[:200]}" for error in summary["errors"]]
    if summary["server_stats"] is not None:
        lines.append("Server stats:")
        lines += [f"  {key}: {json.dumps(value)}" for key, value in summary["server_stats"].items()]
    gpu = summary["gpu"]
    if gpu is not None:
        if gpu.get("missing"):
            lines.append(f"GPU log {gpu['path']}: not found (start infra/vllm/monitor_gpu.sh to write it)")
        else:
            from pipeline.bench.gpu import format_gpu_summary

            lines += format_gpu_summary(gpu)
    return "\n".join(lines)


def main(settings: Settings, options: BenchOptions, as_json: bool) -> int:
    """The CLI's entry: run, print the summary (or JSON); 0 when every request succeeded, else 2."""
    result = asyncio.run(run_bench(settings, options))
    summary = result.summary()
    print(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    return 0 if summary["failed"] == 0 else 2

