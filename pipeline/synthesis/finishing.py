"""Finishing a synth message's audio: checked takes from the model (and the ASR gate), the early
reply to a waiting gateway, storing that survives an S3 hiccup.

Audio path: the answer is resampled to the canonical 24 kHz mono 16-bit, checked (wrapped or
clipped samples, duration for the text, runaway silence, truncation), trimmed to a small pad
and its loudness measured (`audio.checks.check_answer`); a failed check is retried by
redelivery. An answer that stopped on its token cap is never used, whatever its audio: it is
`AudioTruncated` (retried; the chunk finally fails as "truncated"). With `TTS_VERIFY=asr` the
gate transcribes it and asks for new takes with derived seeds while the word error rate is too
high (up to `verify_max_attempts`), then fails with the transcript.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

import structlog

from pipeline.audio.checks import AudioBounds, CheckedAudio, check_answer, to_mono_int16
from pipeline.backend import BackendAnswer
from pipeline.contracts.errors import AudioInvalid, AudioTruncated, StoreRetryable
from pipeline.contracts.messages import AudioReply, ChunkDone, SynthRequest
from pipeline.contracts.policy import backoff_s
from pipeline.contracts.settings import Settings

log = structlog.get_logger("pipeline.synth")


def retake(request: SynthRequest, take: int) -> SynthRequest:
    """The request for take number `take` (1 = as asked): same text and voice, a seed derived
    from the asked seed (or 0), the text and the take number."""
    if take <= 1:
        return request
    base = request.sampling.seed or 0
    digest = hashlib.sha256(f"{base}:{take}:{request.text}".encode()).digest()
    seed = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    return request.model_copy(update={"sampling": request.sampling.model_copy(update={"seed": seed})})


def check_whole(answer: BackendAnswer, text: str, bounds: AudioBounds, measure_loudness: bool = True) -> CheckedAudio:
    """`check_answer` on the answer's audio, and never an answer that stopped on its token cap:
    that raises `AudioTruncated`, naming the failed check too when the audio also failed one
    (a runaway padded with silence up to the cap)."""
    try:
        checked = check_answer(to_mono_int16(answer.wav), answer.wav.fmt.sample_rate_hz, text, bounds, measure_loudness)
    except AudioInvalid as exc:
        if answer.truncation:
            raise AudioTruncated(f"{answer.truncation}; {exc}") from None
        raise
    if answer.truncation:
        raise AudioTruncated(answer.truncation)
    return checked


def _load_gate(settings: Settings):
    """The ASR gate with its model loaded (needs the `verify` extra)."""
    from pipeline.audio.asr import AsrGate, Transcriber

    return AsrGate(Transcriber(settings.verify_model, settings.verify_threads).load(), settings.verify_max_wer)


class AudioFinishing:
    """The audio half of `SynthWorker` (a mixin: it uses the worker's client, bounds, gate,
    store and NATS connection, set up in `SynthWorker.__init__`)."""

    def _reply_subject(self, request: SynthRequest) -> str | None:
        """The request's `reply_to` when it names a gateway of this pipeline (a worker never
        publishes audio onto any other subject, whatever a message asks)."""
        if request.reply_to and request.reply_to.startswith(self.names.reply_prefix):
            return request.reply_to
        return None

    async def _reply(self, subject: str, done: ChunkDone, wav: bytes) -> None:
        """Send the answer to the waiting gateway when it fits in one NATS message; best effort:
        the done event (after the store) is the record, and the gateway falls back to it."""
        if AudioReply.size(done, len(wav)) > self.nc.max_payload:
            return
        try:
            await self.nc.publish(subject, AudioReply.encode(done, wav))
        except Exception as exc:  # NATS away: the event path still answers
            log.debug("synth.reply_failed", error=f"{type(exc).__name__}: {exc}")
            return
        # Let nats-py's flusher task write it before the CPU-bound work that follows (loudness,
        # the upload) holds the event loop: one turn of the loop does it. (A PING/PONG `flush`
        # would also wait for the server's answer: a full round of a busy loop.)
        await asyncio.sleep(0)

    async def _put_keeping_the_audio(self, key: str, wav: bytes, meta: dict[str, str]) -> None:
        """Store fresh audio, retrying in place for up to `store_retry_s` while the store is
        away: the model's work is not thrown away (and redone) for an S3 hiccup."""
        deadline = time.monotonic() + self.settings.store_retry_s
        attempt = 0
        while True:
            try:
                await self.store.put(key, wav, "audio/wav", meta)
                return
            except StoreRetryable as exc:
                attempt += 1
                self._store_suspect(exc)
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(backoff_s(attempt, 0.25, 4.0, self._rng), max(0.0, deadline - time.monotonic())))

    def _store_suspect(self, exc: Exception) -> None:
        """The store failed: pause pulling until a probe of the bucket answers again."""
        if self._store_down.is_set():
            return
        self._store_down.set()
        log.warning("synth.store_unreachable", error=str(exc)[:200])

        async def probe() -> None:
            while not self._stopping.is_set():
                await asyncio.sleep(0.5)
                if await self.store.reachable():
                    log.info("synth.store_back")
                    self._store_down.clear()
                    return

        self._store_probe = asyncio.create_task(probe())

    async def _synthesize_checked(self, request: SynthRequest, measure_loudness: bool = True,
                                  answered: Callable[[], None] | None = None,
                                  ) -> tuple[CheckedAudio, BackendAnswer, float | None, int]:
        """Audio for `request` that passed every check, canonical and trimmed: (audio, answer,
        WER or None, takes). A failed audio check raises `AudioInvalid` (retried by redelivery),
        an answer stopped on its token cap `AudioTruncated`;
        with the ASR gate, a take whose WER is too high is followed by one with a new seed, and
        `AsrRejected` (permanent) is raised when `verify_max_attempts` takes all failed.
        `answered` is called when the model's answer arrives (with the gate: never, since
        another take may follow), so the call slot is refilled before the answer is decoded."""
        takes = self.settings.verify_max_attempts if self.gate is not None else 1
        verdict = None
        for take in range(1, takes + 1):
            answer = await self.client.synthesize(retake(request, take), answered if takes == 1 else None)
            checked = check_whole(answer, request.text, self.bounds, measure_loudness)
            if self.gate is None:
                return checked, answer, None, take
            verdict = await self.gate.judge(checked.samples, checked.sample_rate_hz, request.text)
            if verdict.passed:
                return checked, answer, verdict.wer, take
            log.info("synth.asr_retake", job=request.job_id, chunk=request.chunk_id, take=take, wer=verdict.wer)
        raise self.gate.rejection(verdict, takes)

