"""The synth worker end to end on real servers: nats-server, SeaweedFS, the stand-in engine."""

from __future__ import annotations

import asyncio
import io
import json
import wave

import pytest

from pipeline import bus
from pipeline.audio.checks import decode_wav, expected_duration_s
from pipeline.client import publish_synth
from pipeline.contracts.messages import AudioReply, ChunkDone, ChunkFailed, DeadLetter, SynthRequest
from pipeline.text.spoken import spoken
from tests.conftest import sim_stats
from tests.waiting import queue_empty, until

WORDS = "the quick brown fox jumps over a lazy dog while seven bright stars shine above".split()


def text_for(i: int) -> str:
    n = 3 + i % 12
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n)) + f" number {i}."


def requests_for(job: str, count: int, start: int = 0) -> list[SynthRequest]:
    return [SynthRequest(job_id=job, chunk_id=str(i), index=i, text=text_for(i)) for i in range(start, start + count)]


async def publish_all(h, reqs, priority="bulk") -> None:
    await asyncio.gather(*(publish_synth(h.js, h.names, r, priority) for r in reqs))


async def test_200_bulk_requests_become_200_valid_wavs(sims, harness):
    sim = sims(slots=64)
    h = await harness(backend_urls=[sim.url], max_in_flight=16)
    reqs = requests_for("job200", 200)
    async with h.waiter("job200") as waiter:
        await h.start_worker()
        await publish_all(h, reqs)
        outcomes = await waiter.wait_count(200, timeout_s=120)
    assert all(isinstance(o, ChunkDone) for o in outcomes), [o for o in outcomes if isinstance(o, ChunkFailed)][:3]
    assert sorted(int(o.chunk_id) for o in outcomes) == list(range(200))
    keys = {o.key for o in outcomes}
    stored = set(await h.store.list_keys("audio/"))
    assert keys <= stored and len(stored) == len(keys)
    by_chunk = {o.chunk_id: o for o in outcomes}
    for req in reqs:
        done = by_chunk[req.chunk_id]
        samples, rate = decode_wav(await h.store.get(done.key))
        assert rate == 24000 == done.sample_rate_hz
        assert samples.shape[0] / rate == pytest.approx(done.duration_s, abs=0.01)
        # The stand-in speaks what it was sent: the spoken form ("number one hundred twelve").
        assert done.duration_s == pytest.approx(expected_duration_s(spoken(req.text), 2.5), rel=0.15, abs=0.6)
    assert sim_stats(sim)["calls"] == 200


@pytest.mark.parametrize("workers,expected_peak", [(1, 8), (2, 16)])
async def test_in_flight_bound_is_exact(sims, harness, workers, expected_peak):
    sim = sims(latency_s=0.4, slots=256)
    h = await harness(backend_urls=[sim.url], max_in_flight=8)
    reqs = requests_for("peak", 50)
    async with h.waiter("peak") as waiter:
        for _ in range(workers):
            await h.start_worker()
        await publish_all(h, reqs)
        outcomes = await waiter.wait_count(50, timeout_s=60)
    stats = sim_stats(sim)
    assert all(isinstance(o, ChunkDone) for o in outcomes)
    assert stats["peak_concurrent"] == expected_peak
    assert stats["calls"] == 50  # shared without duplicates
    if workers == 2:
        assert len({o.worker for o in outcomes}) == 2


async def test_same_request_twice_is_synthesised_once(sims, harness):
    sim = sims(latency_s=0.1)
    h = await harness(backend_urls=[sim.url])
    req = SynthRequest(job_id="dup", chunk_id="0", text="Say this only once please.")
    same_text = SynthRequest(job_id="dup", chunk_id="1", text="Say this only once please.")
    async with h.waiter("dup") as waiter:
        await h.start_worker()
        assert await publish_synth(h.js, h.names, req, "bulk") is True
        # Same identity inside the duplicate window: the server drops it.
        assert await publish_synth(h.js, h.names, req, "bulk") is False
        await waiter.wait_count(1, timeout_s=60)
        # Another work item with the same audio identity: served from the store.
        await publish_synth(h.js, h.names, same_text, "bulk")
        outcomes = await waiter.wait_count(2, timeout_s=60)
        # Every message acked (each ack follows its outcome's event): no third outcome is coming.
        await until(lambda: queue_empty(h), "the work queue is empty")
    assert len(waiter.order) == 2
    first, second = outcomes
    assert first.cached is False and second.cached is True and first.key == second.key
    assert sim_stats(sim)["calls"] == 1


async def test_concurrent_duplicates_in_one_worker_share_one_call(sims, harness):
    sim = sims(latency_s=0.3)
    h = await harness(backend_urls=[sim.url], max_in_flight=8)
    reqs = [SynthRequest(job_id="same", chunk_id=str(i), text="Identical words every time.") for i in range(6)]
    async with h.waiter("same") as waiter:
        await h.start_worker()
        await publish_all(h, reqs)
        outcomes = await waiter.wait_count(6, timeout_s=60)
    assert sum(not o.cached for o in outcomes) == 1
    assert sim_stats(sim)["calls"] == 1


async def test_503_twice_then_done_on_third_attempt(sims, harness):
    sim = sims(fail_first=2, error_status=503)
    h = await harness(backend_urls=[sim.url])
    req = SynthRequest(job_id="retry", chunk_id="0", text="Third time lucky for this one.")
    async with h.waiter("retry") as waiter:
        await h.start_worker()
        await publish_synth(h.js, h.names, req, "bulk")
        (outcome,) = await waiter.wait_count(1, timeout_s=60)
    assert isinstance(outcome, ChunkDone) and outcome.attempt == 3
    assert sim_stats(sim)["calls"] == 3


async def test_400_fails_at_once_with_the_backend_message(sims, harness):
    sim = sims(error_rate=1.0, error_status=400)
    h = await harness(backend_urls=[sim.url])
    req = SynthRequest(job_id="bad400", chunk_id="0", text="This will be refused.")
    async with h.waiter("bad400") as waiter:
        await h.start_worker()
        await publish_synth(h.js, h.names, req, "bulk")
        (outcome,) = await waiter.wait_count(1, timeout_s=60)
        await until(lambda: queue_empty(h), "the failed message is acked")  # no redelivery to come
    assert isinstance(outcome, ChunkFailed) and outcome.reason == "permanent"
    assert "400" in outcome.error and outcome.attempt == 1
    assert sim_stats(sim)["calls"] == 1
    letters = await until(lambda: read_dlq(h), "the dead letter is stored")
    assert [(d.job_id, d.reason) for d in letters] == [("bad400", "permanent")]


async def test_retryable_failure_ends_in_dead_letter_after_max_deliver(sims, harness):
    sim = sims(error_rate=1.0, error_status=503)
    h = await harness(backend_urls=[sim.url], max_deliver=3)
    req = SynthRequest(job_id="exhaust", chunk_id="0", text="Never going to work.")
    async with h.waiter("exhaust") as waiter:
        await h.start_worker()
        await publish_synth(h.js, h.names, req, "bulk")
        (outcome,) = await waiter.wait_count(1, timeout_s=60)
    assert isinstance(outcome, ChunkFailed) and outcome.reason == "max_deliver" and outcome.attempt == 3
    assert "503" in outcome.error
    assert sim_stats(sim)["calls"] == 3
    assert [d.attempts for d in await read_dlq(h)] == [3]


async def test_glued_wav_is_stored_with_its_true_length(sims, harness):
    sim = sims(glued_wav=True)
    h = await harness(backend_urls=[sim.url])
    text = "one two three four five six seven eight nine ten eleven twelve"  # ~4.8 s
    req = SynthRequest(job_id="glued", chunk_id="0", text=text)
    async with h.waiter("glued") as waiter:
        await h.start_worker()
        await publish_synth(h.js, h.names, req, "bulk")
        (outcome,) = await waiter.wait_count(1, timeout_s=60)
    assert isinstance(outcome, ChunkDone) and "glued" in outcome.repaired
    data = await h.store.get(outcome.key)
    with wave.open(io.BytesIO(data)) as reader:
        header_s = reader.getnframes() / reader.getframerate()
    assert header_s == pytest.approx(12 / 2.5, rel=0.05)
    assert header_s == pytest.approx(outcome.duration_s, abs=0.01)


async def test_preset_voice_goes_through_the_speech_endpoint(sims, harness):
    sim = sims()
    h = await harness(backend_urls=[sim.url])
    req = SynthRequest(job_id="voice", chunk_id="0", text="A named voice speaks here.", voice="belinda")
    async with h.waiter("voice") as waiter:
        await h.start_worker()
        await publish_synth(h.js, h.names, req, "bulk")
        (outcome,) = await waiter.wait_count(1, timeout_s=60)
    assert isinstance(outcome, ChunkDone)
    assert sim_stats(sim)["calls_by_path"].get("/v1/audio/speech") == 1


async def test_interactive_overtakes_queued_bulk(sims, harness):
    sim = sims(latency_s=0.05, slots=256)
    h = await harness(backend_urls=[sim.url], max_in_flight=4)
    bulk = requests_for("bulkjob", 200)
    interactive = [SynthRequest(job_id="fast", chunk_id=str(i), text=text_for(i)) for i in range(5)]
    async with h.waiter() as waiter:
        await publish_all(h, bulk)  # all queued before the worker starts
        await h.start_worker()
        await until(lambda: len(waiter.order) >= 4, "the worker is busy with bulk")
        await publish_all(h, interactive, priority="interactive")
        await waiter.wait_count(205, timeout_s=120)
    order = [o.job_id for o in waiter.order]
    positions = [i for i, job in enumerate(order) if job == "fast"]
    bulk_after = sum(1 for i, job in enumerate(order) if job == "bulkjob" and i > max(positions))
    assert bulk_after > 100, f"interactive finished at positions {positions}"


async def test_bulk_leaves_the_reserve_free_while_interactive_requests_arrive(sims, harness):
    sim = sims(latency_s=0.3, slots=256)
    # A hold long enough that the bulk calls running when the interactive ones arrive (0.3 s each,
    # longer on a busy machine) have ended well before the hold does.
    h = await harness(backend_urls=[sim.url], max_in_flight=8, interactive_reserve=0.25, interactive_hold_s=4.0)
    samples: list[tuple[float, int, int]] = []  # (time, bulk calls, interactive calls)
    async with h.waiter() as waiter:
        await publish_all(h, requests_for("bulk-r", 300))
        worker = await h.start_worker()
        loop = asyncio.get_running_loop()

        async def watch() -> None:
            while True:
                samples.append((loop.time(), worker._calling["bulk"], worker._calling["interactive"]))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        await until(lambda: samples and samples[-1][1] == 8, "bulk takes all 8 slots")
        started = loop.time()
        await publish_all(h, [SynthRequest(job_id="ia", chunk_id=str(i), text=f"Interactive {i}: {text_for(i)}")
                                 for i in range(2)],
                          priority="interactive")
        await waiter.wait_for("ia", ["0", "1"], timeout_s=60)
        # The hold runs from the interactive requests' start (after `started`) for 4 s.
        await until(lambda: loop.time() > started + 4.0 and samples[-1][1] == 8,
                    "bulk takes every slot again after the hold")
        watcher.cancel()
    before = [b for t, b, _ in samples if t < started]
    during = [b for t, b, _ in samples if started + 1.5 < t < started + 4.0]
    assert max(before) == 8  # all slots to bulk with no interactive traffic
    assert during and max(during) <= 6  # 8 - floor(8 * 0.25) once the running bulk calls ended
    assert max(i for _, _, i in samples) >= 1


async def test_bulk_lookahead_starts_the_longest_held_text_first(sims, harness):
    """With one call slot and a lookahead of 6, the worker holds the rest of a burst and starts
    the longest text each time the slot frees; held messages are not redelivered meanwhile (ack
    wait 3 s, kept alive every 1 s, ~7 s of holding), and without a lookahead the order is the stream's."""
    sim = sims(latency_s=1.0, slots=256)
    lengths = [3, 9, 5, 12, 4, 7, 10]
    reqs = [SynthRequest(job_id="la", chunk_id=str(i), text=" ".join(WORDS[:n]) + f" item {i}.")
            for i, n in enumerate(lengths)]
    h = await harness(backend_urls=[sim.url], max_in_flight=1, bulk_lookahead=6, ack_wait_s=3.0)
    async with h.waiter("la") as waiter:
        await publish_all(h, reqs)  # all queued before the worker starts
        worker = await h.start_worker()
        await waiter.wait_count(len(reqs), timeout_s=60)
        assert worker._lookahead == []
    done_order = [int(o.chunk_id) for o in waiter.order]
    assert done_order == sorted(range(len(lengths)), key=lambda i: -lengths[i])
    assert all(o.attempt == 1 for o in waiter.order)  # held, kept alive, never redelivered
    await h.stop_workers()

    quick = sims(latency_s=0.2, slots=256)
    h2 = await harness(backend_urls=[quick.url], max_in_flight=1)
    fifo = [SynthRequest(job_id="fifo", chunk_id=str(i), text=r.text.replace("item", "fifo")) for i, r in enumerate(reqs)]
    async with h2.waiter("fifo") as waiter:
        for r in fifo:  # one at a time: the stream keeps this order
            await publish_synth(h2.js, h2.names, r, "bulk")
        await h2.start_worker()
        await waiter.wait_count(len(fifo), timeout_s=60)
    assert [int(o.chunk_id) for o in waiter.order] == list(range(len(lengths)))


@pytest.mark.parametrize(
    "payload",
    [b"this is not json", json.dumps({"job_id": "schema", "chunk_id": "0"}).encode(), b'{"job_id": "schema", "text": 5}'],
)
async def test_bad_input_becomes_failed_event_and_dead_letter(sims, harness, payload):
    sim = sims()
    h = await harness(backend_urls=[sim.url])
    good = SynthRequest(job_id="schema", chunk_id="ok", text="A valid request after the bad one.")
    async with h.waiter() as waiter:
        await h.start_worker()
        await h.js.publish(h.names.synth("bulk"), payload)
        await publish_synth(h.js, h.names, good, "bulk")
        outcomes = await waiter.wait_count(2, timeout_s=60)
    failed = [o for o in outcomes if isinstance(o, ChunkFailed)]
    done = [o for o in outcomes if isinstance(o, ChunkDone)]
    assert len(failed) == 1 and len(done) == 1 and done[0].chunk_id == "ok"
    assert failed[0].reason == "invalid" and "invalid synth request" in failed[0].error
    (letter,) = await read_dlq(h)
    assert letter.reason == "invalid" and letter.payload.encode() == payload
    assert letter.source_subject == h.names.synth("bulk")
    assert sim_stats(sim)["calls"] == 1
    # Nothing left behind in the work queue. The worker acks after publishing the done event, so
    # the ack may reach the server a moment after the event reached this test.
    await until(lambda: queue_empty(h), "the work queue is empty")


async def revision_after(kv, key: str, revision: int) -> bool:
    return (await kv.get(key)).revision > revision


async def read_dlq(h) -> list[DeadLetter]:
    info = await h.js.stream_info(h.names.dlq_stream)
    letters = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await h.js.get_msg(h.names.dlq_stream, seq)
        letters.append(DeadLetter.from_bytes(msg.data))
    return letters


async def test_worker_heartbeat_reports_backend_health(sims, harness):
    from pipeline import bus
    from pipeline.contracts.messages import WorkerHeartbeat

    sim = sims()
    h = await harness(backend_urls=[sim.url, "http://127.0.0.1:9"], heartbeat_s=0.2)
    worker = await h.start_worker(worker_name="hb-worker")
    kv = await bus.workers_kv(h.js, h.names)

    async def beat_with_health() -> WorkerHeartbeat:
        return WorkerHeartbeat.from_bytes((await kv.get("hb-worker")).value)

    beat = await until(beat_with_health, "the worker's heartbeat is written", retry_on=(Exception,))
    health = {b.url: b.healthy for b in beat.backends}
    assert health == {sim.url: True, "http://127.0.0.1:9": False}
    assert beat.max_in_flight == worker.settings.max_in_flight
    assert "belinda" in beat.backends[0].voices
    await h.stop_workers()
    with pytest.raises(Exception):
        await kv.get("hb-worker")  # a stopped worker removes itself


async def test_idle_worker_starts_an_interactive_request_at_once(sims, harness):
    sim = sims()
    # A long idle poll: if interactive requests waited behind it, each would take ~6 s. (Not a
    # speed test: "at once" is anything well under the poll, which even a busy machine keeps.)
    h = await harness(backend_urls=[sim.url], poll_s=6.0)
    async with h.waiter("quick") as waiter:
        worker = await h.start_worker()

        def idle() -> bool:  # waiting on both queues at once
            return sum(t is not None and not t.done() for t in worker._idle_waits.values()) == 2

        for i in range(3):
            await until(idle, "the worker is idle, waiting on both queues")
            req = SynthRequest(job_id="quick", chunk_id=str(i), text=text_for(i))
            started = asyncio.get_running_loop().time()
            await publish_synth(h.js, h.names, req, "interactive")
            await waiter.wait_count(i + 1, timeout_s=60)
            assert asyncio.get_running_loop().time() - started < 3.0


async def test_worker_stops_pulling_while_every_backend_is_down(sims, harness):
    sim = sims()
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2, backend_eject_s=60, max_deliver=3)
    worker = await h.start_worker()
    sim.stop()  # the only model server goes away
    await until(worker.client.all_down, "the worker sees its only model server down")
    req = SynthRequest(job_id="paused", chunk_id="0", text="Waiting for the model server.")
    async with h.waiter("paused") as waiter:
        await publish_synth(h.js, h.names, req, "bulk")
        # The worker had every chance to take it: three more heartbeats (each probes the server
        # and finds it still down) while the message sat in the queue.
        kv = await bus.workers_kv(h.js, h.names)
        first = (await kv.get(worker.name)).revision
        await until(lambda: revision_after(kv, worker.name, first + 2), "three more heartbeats")
        info = await h.js.consumer_info(h.names.synth_stream, h.names.synth_consumer("bulk"))
        # Not started, so no delivery attempt was burnt while nothing could serve it: still in the
        # queue, or held by the worker's idle pull that began before the pause (kept alive).
        assert info.num_pending + info.num_ack_pending == 1 and info.num_redelivered == 0
        assert waiter.order == []
        assert worker.stats.retried == 0 and not worker._tasks


async def test_requests_older_than_the_age_limit_are_dead_lettered(sims, harness):
    sim = sims()
    h = await harness(backend_urls=[sim.url], max_message_age_s=1.0)
    stale = SynthRequest(job_id="stale", chunk_id="0", text="Nobody waits for this any more.")
    async with h.waiter("stale") as waiter:
        await publish_synth(h.js, h.names, stale, "bulk")
        await asyncio.sleep(1.5)  # queued with no worker for longer than the limit
        await h.start_worker()
        (outcome,) = await waiter.wait_count(1, timeout_s=60)
    assert isinstance(outcome, ChunkFailed) and outcome.reason == "max_age"
    assert sim_stats(sim)["calls"] == 0
    assert [d.reason for d in await read_dlq(h)] == ["max_age"]


async def test_a_waiting_caller_gets_the_audio_on_its_reply_subject_before_it_is_stored(sims, harness):
    sim = sims(latency_s=0.05)
    h = await harness(backend_urls=[sim.url])
    replies: asyncio.Queue = asyncio.Queue()
    subject = h.names.audio_reply("probe")
    foreign: list = []

    async def on_reply(msg) -> None:
        done, wav = AudioReply.decode(msg.data)
        # At this moment the worker has not stored it yet (it stores after replying) or just did.
        await replies.put((done, wav))

    async def on_foreign(msg) -> None:
        foreign.append(msg)

    await h.nc.subscribe(subject, cb=on_reply)
    await h.nc.subscribe(h.names.synth("bulk"), cb=on_foreign)  # what a hostile reply_to might aim at
    short = SynthRequest(job_id="rp", chunk_id="short", text="A short answer for a waiting caller.", reply_to=subject)
    # ~60 s of speech: more than one NATS message (1 MiB) holds, so it only comes through the store.
    long_text = " ".join(WORDS * 10)
    long = SynthRequest(job_id="rp", chunk_id="long", text=long_text, reply_to=subject)
    hostile = SynthRequest(job_id="rp", chunk_id="hostile", text="Aimed at another subject.",
                           reply_to=h.names.synth("bulk"))
    async with h.waiter("rp") as waiter:
        await h.start_worker()
        for request in (short, long, hostile):
            await publish_synth(h.js, h.names, request, "interactive")
        outcomes = await waiter.wait_for("rp", ["short", "long", "hostile"], timeout_s=60)
    assert all(isinstance(o, ChunkDone) and not o.cached for o in outcomes.values())
    done, wav = await asyncio.wait_for(replies.get(), 60)
    assert replies.empty() and done.chunk_id == "short"  # one reply: the long answer did not fit
    assert done.key == outcomes["short"].key and done.timings.store_s == 0.0
    assert wav == await h.store.get(done.key)  # the very bytes that were stored afterwards
    assert outcomes["short"].loudness_lufs is not None  # measured after the reply, still recorded
    assert outcomes["long"].bytes > h.nc.max_payload
    assert foreign == []  # a worker publishes replies only under its pipeline's reply prefix
