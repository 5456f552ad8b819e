"""The gateway's outcome router on a real NATS server: which message answers a waiting request.

A worker sends a fresh answer to the gateway's reply subject before it stores it and publishes the
done event; the router reads the two subjects in separate subscriptions, so the event may be
handled first. It must still answer from the reply when one comes, and fall back to the store
(an `Arrived` without WAV) only when none does, or at once for a cached answer.
"""

from __future__ import annotations

import asyncio
import time

import nats

from http_gateway.outcomes import REPLY_GRACE_S, OutcomeRouter
from pipeline.contracts.messages import AudioReply, ChunkDone, ChunkTimings
from pipeline.contracts.subjects import Names

WAV = b"RIFF" + bytes(4000)


def done(chunk_id: str, cached: bool = False) -> ChunkDone:
    return ChunkDone(job_id="gw-test", chunk_id=chunk_id, key=f"audio/{chunk_id}.wav", duration_s=0.1,
                     sample_rate_hz=24000, bytes=len(WAV), cached=cached, attempt=1, worker="w",
                     timings=ChunkTimings())


async def test_the_reply_answers_even_when_the_done_event_is_handled_first(stack, namespace):
    names = Names(namespace)
    router = OutcomeRouter(names, "gw-test", "inst1")
    listener = await nats.connect(stack.nats.url)
    sender = await nats.connect(stack.nats.url)
    try:
        await router.start(listener)

        # The event first, the reply 20 ms later: the reply answers. (A long grace here, so that
        # only the reply can answer within the wait; without the grace the event answers first.)
        router.reply_grace_s = 30.0
        waiting = router.expect("c1")
        await sender.publish(names.chunk_done("gw-test"), done("c1").to_bytes())
        await sender.flush()
        await asyncio.sleep(0.02)
        await sender.publish(router.reply_subject, AudioReply.encode(done("c1"), WAV))
        arrived = await asyncio.wait_for(waiting, 10)
        assert arrived.wav == WAV, arrived

        # A cached answer is never sent as a reply: the event answers at once, not after the grace.
        waiting = router.expect("c3")
        await sender.publish(names.chunk_done("gw-test"), done("c3", cached=True).to_bytes())
        arrived = await asyncio.wait_for(waiting, 10)
        assert arrived.wav is None and arrived.outcome.cached

        # A fresh answer whose reply never comes: the event answers after the grace period.
        router.reply_grace_s = REPLY_GRACE_S
        waiting = router.expect("c2")
        started = time.perf_counter()
        await sender.publish(names.chunk_done("gw-test"), done("c2").to_bytes())
        arrived = await asyncio.wait_for(waiting, 10)
        assert arrived.wav is None and arrived.outcome.chunk_id == "c2"
        assert time.perf_counter() - started >= REPLY_GRACE_S * 0.9  # a lower bound: load cannot break it
    finally:
        await router.stop()
        await listener.close()
        await sender.close()
