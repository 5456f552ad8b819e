"""The adaptive in-flight limit: against a model of a continuous-batching server, then for real."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from pipeline.synthesis.adaptive import AdaptiveLimit
from pipeline.client import publish_synth
from pipeline.contracts.messages import SynthRequest
from tests.waiting import until


def server(limit: int, slots: int, penalty: float = 0.02) -> tuple[float, float]:
    """(audio s/s, model seconds per audio second) of a server with `slots` slots whose step time
    grows by `penalty` per extra sequence, fed `limit` calls at once (the rest queue)."""
    batch = min(limit, slots)
    step = 1 + penalty * (batch - 1)
    return batch / step, step * max(1.0, limit / slots)


def drive(adaptive: AdaptiveLimit, slots: int, windows: int, noise=lambda i: 1.0) -> None:
    now = 0.0
    adaptive.tick(now)
    for i in range(windows):
        throughput, cost = server(adaptive.limit, slots)
        audio_s = throughput * adaptive.window_s * noise(i)
        adaptive.used(adaptive.limit)
        calls = max(1, round(audio_s / 4))
        for _ in range(calls):
            adaptive.record(audio_s / calls, cost * audio_s / calls)
        now += adaptive.window_s
        adaptive.tick(now)


@pytest.mark.parametrize("slots", [8, 32, 100])
def test_settles_around_the_servers_slots(slots):
    adaptive = AdaptiveLimit(ceiling=256, window_s=5.0)
    assert adaptive.limit == 64  # a quarter of the ceiling to start
    drive(adaptive, slots, windows=80)
    tail = adaptive.history[-20:]
    assert all(0.75 * slots <= limit <= 1.5 * slots for limit in tail), adaptive.history


def test_noise_does_not_walk_it_away():
    adaptive = AdaptiveLimit(ceiling=64, window_s=5.0)
    drive(adaptive, 32, windows=120, noise=lambda i: 1.0 + 0.02 * ((i * 7919) % 5 - 2) / 2)
    assert all(24 <= limit <= 48 for limit in adaptive.history[-40:]), adaptive.history


def test_never_above_the_ceiling_and_idle_windows_change_nothing():
    adaptive = AdaptiveLimit(ceiling=12, window_s=1.0)
    drive(adaptive, 64, windows=40)
    assert max(adaptive.history) == 12 and adaptive.limit == 12
    before = adaptive.limit
    for t in range(100, 110):  # windows in which the limit is never reached: no demand, no signal
        adaptive.record(1.0, 1.0)
        adaptive.tick(float(t))
    assert adaptive.limit == before


async def test_a_worker_finds_the_stand_ins_slots(sims, harness):
    # 8 slots, 1 s of audio per ~0.1 s of generation at batch 1: calls of ~0.5 s.
    sim = sims(slots=8, tokens_per_s=250)
    h = await harness(backend_urls=[sim.url], max_in_flight=48, adaptive_in_flight=True, adaptive_window_s=1.0)
    texts = ["one two three four five six seven eight nine ten eleven twelve thirteen",
             "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima"]
    requests = [SynthRequest(job_id="adapt", chunk_id=str(i), text=f"{texts[i % 2]} {i}") for i in range(900)]
    await asyncio.gather(*(publish_synth(h.js, h.names, r, "bulk") for r in requests))
    worker = await h.start_worker()
    assert worker.call_limit == 12
    # Twenty one-second windows with a decision (about 20 s on a quiet machine; 900 calls last ~60 s).
    history = await until(lambda: len(worker.adaptive.history) >= 20 and list(worker.adaptive.history),
                          "twenty windows of the controller", timeout_s=120)
    assert max(history) > 12  # it climbed from its start ...
    # ... and came back to about the stand-in's slots. Where it settled is the median of its last
    # windows: after a flat stretch it probes a step up by design, and on a busy machine one noisy
    # window can move it a step (with both cores burnt it once ended a window at 20).
    assert 6 <= statistics.median(history[-6:]) <= 16, history
