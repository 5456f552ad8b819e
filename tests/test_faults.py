"""Fault suite, processes and servers: a worker SIGKILLed, nats-server SIGKILLed, S3 away for 10 s.

Every case runs real `tts-pipeline worker synth` processes against real servers, injects the
fault mid-batch, and then counts from what is stored (bucket listing, TTS_EVENTS, TTS_DLQ, the
work queue): nothing missing, nothing dead-lettered, no synthesis repeated beyond what was in
flight when the fault hit. Figures go to docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fault_fixtures import (  # noqa: F401 - fixtures
    PRODUCTION_RETRY, assert_no_loss, logs_to_this_test, make_requests, observers, private_nats, private_s3,
    sim_stats, worker_procs,
)

pytestmark = pytest.mark.faults

# Redelivery of what a dead worker held comes after ack_wait_s; in-progress acks every
# ack_wait_s / 3 keep live work alive. Short here so a case takes seconds, not minutes; the
# retry policy is the production one (PRODUCTION_RETRY).
ACK_WAIT_S = 4.0


async def test_sigkill_worker_mid_batch_loses_nothing(sims, make_settings, observers, worker_procs):
    total = 300
    sim = sims(latency_s=0.5, slots=512)
    settings = make_settings(backend_urls=[sim.url], max_in_flight=32, ack_wait_s=ACK_WAIT_S, heartbeat_s=0.5,
                             **PRODUCTION_RETRY)
    observer = await observers(settings)
    requests = make_requests("kill9", total)
    assert await observer.publish(requests) == (total, 0)
    started = time.monotonic()

    first = worker_procs.start("synth", settings, "victim")
    await observer.wait_outcomes("kill9", 90, timeout_s=60, procs=worker_procs)
    beat = await observer.heartbeat("victim")  # at most heartbeat_s old
    worker_procs.kill(first)
    calls_at_kill = sim_stats(sim)["calls"]
    done_at_kill = await observer.outcome_count("kill9")
    in_flight_at_kill = calls_at_kill - done_at_kill
    assert 0 < done_at_kill < total and first.returncode == -9

    worker_procs.start("synth", settings, "successor")
    await observer.wait_outcomes("kill9", total, timeout_s=90, procs=worker_procs)
    stats = sim_stats(sim)
    await assert_no_loss(observer, "kill9", requests, "1-sigkill-worker", faults_injected=1,
                         stand_in_calls=stats["calls"], in_flight_at_kill=in_flight_at_kill,
                         peak_in_flight=beat.peak_in_flight, done_before_kill=done_at_kill,
                         seconds=round(time.monotonic() - started, 1))
    # Only work that was in flight at the kill (calls made minus outcomes stored) may be
    # synthesised a second time. The worker holds at most max_in_flight messages in model calls
    # plus finishing_slots being checked, stored and reported.
    held = settings.max_in_flight + settings.finishing_slots
    assert beat.peak_in_flight <= held and in_flight_at_kill <= held
    assert total <= stats["calls"] <= total + in_flight_at_kill
    assert sum(1 for n in stats["calls_by_text"].values() if n > 1) <= in_flight_at_kill


async def test_sigkill_nats_server_mid_batch_loses_nothing(sims, make_settings, private_nats, observers,
                                                           worker_procs):
    total = 150
    sim = sims(latency_s=0.3, slots=512)
    settings = make_settings(nats_url=private_nats.url, backend_urls=[sim.url], max_in_flight=16,
                             ack_wait_s=ACK_WAIT_S, heartbeat_s=0.5, **PRODUCTION_RETRY)
    observer = await observers(settings)
    requests = make_requests("natskill", total)
    assert await observer.publish(requests) == (total, 0)
    started = time.monotonic()
    worker_procs.start("synth", settings, "survivor")
    await observer.wait_outcomes("natskill", 40, timeout_s=60, procs=worker_procs)

    private_nats.kill()  # SIGKILL: no flush, no goodbye
    await asyncio.sleep(1.0)
    await asyncio.to_thread(private_nats.restart)  # same port, same store directory

    await observer.wait_outcomes("natskill", total, timeout_s=90, procs=worker_procs)
    stats = sim_stats(sim)
    await assert_no_loss(observer, "natskill", requests, "2-sigkill-nats-server", faults_injected=1,
                         stand_in_calls=stats["calls"], seconds=round(time.monotonic() - started, 1))
    assert total <= stats["calls"] <= total + settings.max_in_flight
    assert all(code == 0 for code in worker_procs.stop_all()), worker_procs.logs()


@pytest.mark.parametrize("max_deliver", [
    pytest.param(PRODUCTION_RETRY["max_deliver"], id="production-policy"),
])
async def test_s3_away_for_10_s_mid_batch_loses_nothing(sims, make_settings, private_s3, observers, worker_procs,
                                                        max_deliver):
    total = 150
    sim = sims(latency_s=0.3, slots=512)
    settings = make_settings(s3_endpoint_url=private_s3.endpoint_url, backend_urls=[sim.url], max_in_flight=16,
                             ack_wait_s=ACK_WAIT_S, heartbeat_s=0.5, **{**PRODUCTION_RETRY, "max_deliver": max_deliver})
    observer = await observers(settings)
    requests = make_requests("s3away", total)
    assert await observer.publish(requests) == (total, 0)
    worker_procs.start("synth", settings, "patient")
    await observer.wait_outcomes("s3away", 40, timeout_s=60, procs=worker_procs)

    await asyncio.to_thread(private_s3.stop)
    stopped = time.monotonic()
    retried = 0
    while time.monotonic() - stopped < 10.0:
        beat = await observer.heartbeat("patient")
        retried = max(retried, beat.retried if beat else 0)
        await asyncio.sleep(0.5)
    await asyncio.to_thread(private_s3.restart)
    outage_s = time.monotonic() - stopped

    await observer.wait_outcomes("s3away", total, timeout_s=120, procs=worker_procs)
    beat = await observer.heartbeat("patient")
    retried = max(retried, beat.retried if beat else 0)
    await assert_no_loss(observer, "s3away", requests, f"3-s3-away-10s-max-deliver-{max_deliver}", faults_injected=1,
                         outage_s=round(outage_s, 1), retried=retried, stand_in_calls=sim_stats(sim)["calls"])
    assert retried > 0  # the outage is visible in the worker's counters
