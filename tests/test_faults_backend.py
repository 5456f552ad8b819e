"""Fault suite, model server: a stand-in that answers 503 to 20 % of calls and hangs on 5 %.

Every chunk must end as stored audio or as a dead letter with a reason, and the counts must add
up to what was published. Dead letters are then re-driven with `tts-pipeline dlq replay --all`
once the model server is healthy again, and end as audio too.
"""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from pipeline.contracts.messages import SynthRequest
from pipeline.text.spoken import spoken
from tests.fault_fixtures import (  # noqa: F401 - fixtures
    PRODUCTION_RETRY, logs_to_this_test, make_requests, observers, report, sim_stats, worker_procs,
)
from tests.test_faults_dlq import run_dlq

pytestmark = pytest.mark.faults

TOTAL = 200
MAX_DELIVER = 3  # 0.25 ** 3: about 1.6 % of chunks fail every delivery, so both outcomes occur


def text_key(text: str) -> str:
    """How the stand-in keys its per-text call counts (`calls_by_text`): on the text it was sent,
    the spoken form ("item seven")."""
    return hashlib.sha1(spoken(text).encode()).hexdigest()[:12]


async def test_503s_and_hangs_end_as_audio_or_reasoned_dead_letters(sims, make_settings, observers, worker_procs,
                                                                    tmp_path):
    sim = sims(latency_s=0.1, slots=512, error_rate=0.2, error_status=503, hang_rate=0.05, hang_s=30)
    settings = make_settings(backend_urls=[sim.url], max_in_flight=32, backend_timeout_s=2.0, ack_wait_s=6.0,
                             heartbeat_s=0.5, **{**PRODUCTION_RETRY, "max_deliver": MAX_DELIVER})
    observer = await observers(settings)
    requests = make_requests("flaky", TOTAL)
    assert await observer.publish(requests) == (TOTAL, 0)
    started = time.monotonic()
    worker_procs.start("synth", settings, "flaky-worker")
    await observer.wait_outcomes("flaky", TOTAL, timeout_s=120, procs=worker_procs)

    done, failed = await observer.outcomes("flaky")
    letters = await observer.dead_letters()
    stored = await observer.stored_audio()
    expected = observer.expected_keys(requests)
    stats = sim_stats(sim)
    by_text = stats["calls_by_text"]
    counts = report("4-flaky-model-server", published=TOTAL, done=len(done), dead_lettered=len(letters),
                    failed_events=len(failed), stored=len(stored), lost=TOTAL - len(done) - len(failed),
                    stand_in_calls=stats["calls"], injected_503=stats["errors"],
                    injected_hangs=stats["aborted"], max_deliver=MAX_DELIVER,
                    seconds=round(time.monotonic() - started, 1), queue_left=await observer.wait_queue_empty())

    # Every chunk has exactly one outcome; the counts add up.
    assert set(done).isdisjoint(failed)
    assert set(done) | set(failed) == {r.chunk_id for r in requests}
    assert counts["lost"] == 0 and counts["queue_left"] == 0
    assert len(failed) > 0 and len(done) > TOTAL * 0.9  # both outcomes happen at these rates
    assert stats["errors"] > 0 and stats["aborted"] > 0  # both faults were injected
    # Audio exists for exactly the done chunks.
    assert stored == {expected[c] for c in done}
    # One dead letter per failed chunk, with the reason, the attempts and the last error.
    assert sorted(d.chunk_id for d in letters) == sorted(failed)
    by_chunk = {r.chunk_id: r for r in requests}
    for letter in letters:
        assert letter.reason == "max_deliver" and letter.attempts == MAX_DELIVER
        assert "503" in letter.error or "timed out" in letter.error, letter.error
        assert SynthRequest.from_bytes(letter.payload.encode()) == by_chunk[letter.chunk_id]
        assert by_text[text_key(by_chunk[letter.chunk_id].text)] == MAX_DELIVER  # every delivery was tried
    for chunk_id in done:
        assert 1 <= by_text[text_key(by_chunk[chunk_id].text)] <= MAX_DELIVER
    assert stats["calls"] == sum(by_text.values())

    # The model server recovers; the dead letters are re-driven and end as audio.
    httpx.patch(f"{sim.url}/sim/config", json={"error_rate": 0.0, "hang_rate": 0.0}, timeout=5,
                trust_env=False).raise_for_status()
    result = await run_dlq(["replay", "--all"], settings)
    assert result.returncode == 0, result.stderr
    assert f"replayed {len(letters)}" in result.stdout
    await observer.wait_outcomes("flaky", TOTAL + len(failed), timeout_s=60, procs=worker_procs)
    assert await observer.stored_audio() == set(expected.values())
    assert await observer.dead_letters() == []  # replayed letters leave the DLQ
    report("4b-dlq-replay", replayed=len(letters), stored_after=len(set(expected.values())), lost=0)
