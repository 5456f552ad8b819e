"""Long text through the gateway against the stand-in: issue 15's figures. Prints; asserts nothing.

A throw-away embedded stack, the stand-in (`tts-pipeline engine --kind sim`, 32 slots, a tokens/s
capacity model), synth workers and the gateway, each in its own process. Every repeat uses texts
of its own (nothing comes from the cache).

  a) a 4,000-character text through `/generate` at idle: wall time, next to the stand-in's time
     for the text's longest chunk alone (a direct call) and the old one-shot call of the whole
     text (one model call with max_tokens 2048: truncated).
  b) first audio byte of the same kind of text streamed (`/v1/audio/speech`, `stream: true`, pcm)
     at idle, next to the stand-in's time for the first chunk alone (a direct call); and again
     while a 2,000-chunk bulk job keeps the stand-in's batch full.
  c) a stream cancelled after its first audio: model calls made for it, against the calls in
     flight at the moment of the cancel.

    python scripts/bench_long.py [--repeat 3] [--tokens-per-s 50] [--chars 4000] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from http_gateway.longform import plan_texts  # noqa: E402
from pipeline import bus  # noqa: E402
from pipeline.backend import HiggsClient  # noqa: E402
from pipeline.bench.lab import Lab, load_avg, wait_engine, wait_gateway, wait_ready  # noqa: E402
from pipeline.bench.load import TEXTS, BenchOptions  # noqa: E402
from pipeline.bench.run import run_bench  # noqa: E402
from pipeline.contracts.messages import Sampling, SynthRequest  # noqa: E402
from pipeline.contracts.subjects import Names  # noqa: E402
from pipeline.stack.devstack import DevStack  # noqa: E402
from pipeline.stack.ports import free_port  # noqa: E402

BUCKET = "tts-bench-long"
BULK_CHUNKS = 2000
WORDS = ("the harbour lamp keeper morning tide stone window letter garden river evening bread candle "
         "quiet north road winter summer island station bridge market music doctor captain").split()


def long_text(chars: int, rng: random.Random) -> str:
    """Sentences of 6-22 words, about `chars` characters, unique to this call."""
    sentences, size = [], 0
    while size < chars:
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 22))] + [f"n{rng.randrange(10**9)}"]
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        size += len(sentence) + 1
    return " ".join(sentences)[:chars].rsplit(" ", 1)[0] + "."


async def direct_s(client: HiggsClient, text: str, seed: int) -> tuple[float, float, str | None]:
    """The stand-in's time for `text` as one call (wall, audio seconds, finish_reason)."""
    started = time.perf_counter()
    answer = await client.synthesize(SynthRequest(job_id="direct", chunk_id="x", text=text,
                                                  sampling=Sampling(seed=seed)))
    audio_s = len(answer.wav.pcm) / answer.wav.fmt.block_align / answer.wav.fmt.sample_rate_hz
    return time.perf_counter() - started, audio_s, answer.finish_reason


async def first_byte_s(http: httpx.AsyncClient, text: str) -> tuple[float, float, float]:
    """(seconds to the first audio byte, the first chunk's model call at the worker, seconds to the
    end) of a streamed answer."""
    started = time.perf_counter()
    first = None
    async with http.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text,
                                                             "response_format": "pcm", "stream": True}) as resp:
        resp.raise_for_status()
        synth_s = float(resp.headers["X-First-Chunk-Synth-Time"])
        async for piece in resp.aiter_raw():
            if piece and first is None:
                first = time.perf_counter() - started
    return first, synth_s, time.perf_counter() - started


async def engine_stats(http: httpx.AsyncClient, url: str) -> dict:
    return (await http.get(f"{url}/sim/stats")).json()


async def run(args) -> None:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-long-") as tmp, \
            DevStack(Path(tmp) / "stack", bucket=BUCKET) as stack:
        lab = Lab(Path(tmp), stack)
        try:
            engine = lab.engine(slots=args.slots, tokens_per_s=args.tokens_per_s)
            settings = lab.settings([engine.url], max_in_flight=args.slots)
            port = free_port()
            lab.workers(settings, args.workers)
            lab.child(["gateway", "--port", str(port)], settings)
            url = f"http://127.0.0.1:{port}"
            await wait_ready(settings, args.workers)
            await wait_gateway(url)
            print(f"stand-in: {args.slots} slots, {args.tokens_per_s:g} tokens/s per stream at batch 1; "
                  f"{args.workers} worker(s) at in-flight {args.slots}; texts of {args.chars} characters; "
                  f"load {load_avg():.2f}", flush=True)
            async with HiggsClient(settings) as direct, \
                    httpx.AsyncClient(base_url=url, timeout=600, trust_env=False) as http:
                rows = [await one_round(args, rng, settings, engine, direct, http, rep) for rep in range(args.repeat)]
        finally:
            lab.close()
    m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"a) medians: /generate {m['whole_s']:.1f} s for {m['audio_s']:.1f} s of audio in {m['chunks']:.0f} "
          f"chunks = {m['whole_s'] / m['longest_s']:.2f}x the longest chunk alone ({m['longest_s']:.1f} s; goal "
          f"<= 1.5x); one-shot {m['oneshot_s']:.1f} s for {m['oneshot_audio_s']:.1f} s of audio (truncated)")
    print(f"b) medians: first byte {m['ttfb_s']:.2f} s at idle; the first chunk's model call in its batch "
          f"{m['first_in_batch_s']:.2f} s; first byte minus that call {m['ttfb_over_s'] * 1000:.0f} ms (goal <= +50 ms); "
          f"the first chunk alone (batch 1) {m['first_s']:.2f} s; under the bulk job {m['ttfb_bulk_s']:.2f} s = "
          f"{m['ttfb_bulk_s'] / m['ttfb_s']:.2f}x idle (goal <= 2x)")
    print(f"c) medians: cancelled after the first audio: {m['cancel_calls']:.0f} model calls for "
          f"{m['cancel_chunks']:.0f} chunks, {m['in_flight_at_cancel']:.0f} in flight at the cancel (goal: calls "
          f"<= the first chunk + those in flight)")


async def one_round(args, rng, settings, engine, direct, http, rep: int) -> dict:
    row: dict[str, float] = {}
    # a) whole text, at idle.
    text = long_text(args.chars, rng)
    texts = plan_texts(text, settings)
    started = time.perf_counter()
    answer = await http.post("/generate", json={"text": text})
    row["whole_s"] = time.perf_counter() - started
    answer.raise_for_status()
    row["chunks"] = int(answer.headers["X-Chunks"])
    row["audio_s"] = (len(answer.content) - 44) / 2 / settings.sample_rate_hz
    longest = max(texts, key=lambda t: len(t.split()))
    row["longest_s"], _, _ = await direct_s(direct, longest, rep)
    row["oneshot_s"], row["oneshot_audio_s"], finish = await direct_s(direct, text, rep)
    print(f"  [{rep + 1}] a) /generate {row['whole_s']:.1f} s, {row['chunks']:.0f} chunks, {row['audio_s']:.1f} s "
          f"of audio | longest chunk alone {row['longest_s']:.1f} s | one-shot {row['oneshot_s']:.1f} s, "
          f"{row['oneshot_audio_s']:.1f} s of audio, finish_reason {finish} | load {load_avg():.2f}", flush=True)
    # b) first byte at idle, against the first chunk alone; then under a bulk job.
    text = long_text(args.chars, rng)
    row["first_s"], _, _ = await direct_s(direct, plan_texts(text, settings)[0], rep + 1000)
    row["ttfb_s"], row["first_in_batch_s"], end_s = await first_byte_s(http, text)
    row["ttfb_over_s"] = row["ttfb_s"] - row["first_in_batch_s"]
    bulk = asyncio.create_task(run_bench(settings, BenchOptions(target="bus", requests=BULK_CHUNKS,
                                                                concurrent=BULK_CHUNKS, texts=TEXTS, timeout_s=3600)))
    full = await wait_engine(engine, lambda st: st["active"] >= args.slots, 60)
    row["ttfb_bulk_s"], _, _ = await first_byte_s(http, long_text(args.chars, rng))
    names = Names(settings.namespace)
    nc = await bus.connect(settings, "bench-purge")
    await nc.jetstream().purge_stream(names.synth_stream, subject=names.synth("bulk"))  # end the bulk job
    await nc.close()
    bulk.cancel()
    await asyncio.gather(bulk, return_exceptions=True)
    await wait_engine(engine, lambda st: st["active"] == 0 and st["queued"] == 0, 300)
    print(f"  [{rep + 1}] b) first byte {row['ttfb_s']:.2f} s (whole stream {end_s:.1f} s) | the first chunk's "
          f"model call in that batch {row['first_in_batch_s']:.2f} s, alone {row['first_s']:.2f} s | under the bulk job {row['ttfb_bulk_s']:.2f} s (batch full before: {full}) | "
          f"load {load_avg():.2f}", flush=True)
    # c) cancel after the first audio byte.
    text = long_text(args.chars, rng)
    before = (await engine_stats(http, engine.url))["calls"]
    async with http.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text,
                                                             "response_format": "pcm", "stream": True}) as resp:
        row["cancel_chunks"] = int(resp.headers["X-Chunks"])
        await anext(resp.aiter_raw())
        row["in_flight_at_cancel"] = (await engine_stats(http, engine.url))["concurrent"]
    await wait_engine(engine, lambda st: st["active"] == 0 and st["queued"] == 0, 300)
    row["cancel_calls"] = (await engine_stats(http, engine.url))["calls"] - before
    print(f"  [{rep + 1}] c) cancelled after the first audio: {row['cancel_calls']:.0f} model calls for "
          f"{row['cancel_chunks']:.0f} chunks ({row['in_flight_at_cancel']:.0f} in flight at the cancel)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--chars", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
