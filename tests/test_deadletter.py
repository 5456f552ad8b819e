"""Messages whose every delivery ended with no outcome (worker killed or hung) become dead letters."""

from __future__ import annotations

import asyncio

from pipeline import bus
from pipeline.client import publish_synth
from pipeline.contracts.messages import ChunkFailed, DeadLetter, SynthRequest
from pipeline.synthesis.deadletters import DeadLetterWatcher
from tests.waiting import queue_empty, until


async def test_max_deliveries_advisory_moves_the_message_to_the_dlq(harness):
    h = await harness(ack_wait_s=0.5, max_deliver=2)
    await bus.ensure_synth_consumers(h.js, h.settings, h.names)
    watcher = await DeadLetterWatcher(h.nc, h.names).start()
    request = SynthRequest(job_id="lost", chunk_id="7", chapter=1, index=7, text="Nobody ever finishes this one.")
    puller = bus.Puller(h.nc, h.names.synth_stream, h.names.synth_consumer("bulk"))
    await puller.start()
    try:
        async with h.waiter("lost") as waiter:
            await publish_synth(h.js, h.names, request, "bulk")
            # A "worker" that takes the message and dies before any outcome, twice.
            for attempt in (1, 2):
                (msg,) = await puller.pull(1, wait_s=5)
                assert bus.delivery_count(msg) == attempt
            # The server announces the exhausted message when it would deliver it again:
            # a live worker asking for more work is what makes it look.
            assert await puller.pull(1, wait_s=2) == []
            (failed,) = await waiter.wait_count(1, timeout_s=60)
    finally:
        await puller.stop()
        await watcher.stop()
    assert isinstance(failed, ChunkFailed) and failed.reason == "max_deliver" and failed.chapter == 1
    info = await h.js.stream_info(h.names.dlq_stream)
    assert info.state.messages == 1
    letter = DeadLetter.from_bytes((await h.js.get_msg(h.names.dlq_stream, info.state.last_seq)).data)
    assert letter.attempts == 2 and letter.chunk_id == "7"
    assert SynthRequest.from_bytes(letter.payload.encode()) == request
    await until(lambda: queue_empty(h), "the letter's message is deleted from the work queue")
    assert watcher.moved == 1
