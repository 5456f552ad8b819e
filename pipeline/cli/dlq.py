"""`tts-pipeline dlq list|show SEQ|replay SEQ...|replay --all`: inspect and re-drive dead letters.

A dead letter (`DeadLetter` in `TTS_DLQ`) keeps the original payload and the subject it came
from. Replaying publishes that payload, unchanged, to that subject with the de-duplication id
`replay:<dlq stream>:<seq>` (new to the server, unlike the original id, which would be dropped
inside the duplicate window; the same for two replays of one letter, so a replay repeated within
the window publishes once), then deletes the letter from `TTS_DLQ` unless `--keep`. A replayed
request that fails again comes back as a new letter with a new sequence number.

Only subjects of this pipeline's work queues (synth and chapters) are replayed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from pipeline import bus
from pipeline.contracts.errors import PipelineError
from pipeline.contracts.messages import DeadLetter
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names

ERROR_COLUMN_CHARS = 70


@dataclass(frozen=True)
class StoredLetter:
    """A dead letter with its place in `TTS_DLQ`."""

    seq: int
    time: datetime | None
    letter: DeadLetter

    def summary(self) -> dict:
        """Everything but the payload (which may be ~1 MB), plus the payload's size."""
        fields = self.letter.model_dump(exclude={"payload"})
        size = self.letter.payload_bytes
        return {"seq": self.seq, "time": self.time.isoformat() if self.time else None,
                **fields, "payload_bytes": size if size is not None else len(original_payload(self.letter))}


def original_payload(letter: DeadLetter) -> bytes:
    """The bytes of the message as it was published."""
    if letter.payload_encoding == "base64":
        return base64.b64decode(letter.payload)
    return letter.payload.encode()


def replay_msg_id(names: Names, seq: int) -> str:
    return f"replay:{names.dlq_stream}:{seq}"


async def _has_stream(js: JetStreamContext, stream: str) -> bool:
    try:
        await js.stream_info(stream)
    except NotFoundError:
        return False
    return True


async def read_letters(js: JetStreamContext, names: Names, limit: int | None = None) -> list[StoredLetter]:
    """Dead letters in sequence order (the oldest first), at most `limit`; [] without a DLQ."""
    if not await _has_stream(js, names.dlq_stream):
        return []
    found: list[StoredLetter] = []
    seq = 1
    while limit is None or len(found) < limit:
        try:
            msg = await js.get_msg(names.dlq_stream, seq=seq, subject=names.dlq_all, next=True)
        except NotFoundError:
            break
        found.append(StoredLetter(msg.seq, msg.time, DeadLetter.from_bytes(msg.data)))
        seq = msg.seq + 1
    return found


async def get_letter(js: JetStreamContext, names: Names, seq: int) -> StoredLetter:
    """Letter `seq`; `PipelineError` when there is none."""
    try:
        msg = await js.get_msg(names.dlq_stream, seq=seq)
    except NotFoundError:
        raise PipelineError(f"no dead letter {seq} in {names.dlq_stream}") from None
    return StoredLetter(msg.seq, msg.time, DeadLetter.from_bytes(msg.data))


def _replayable(names: Names, subject: str) -> bool:
    return any(subject.startswith(prefix.removesuffix(">")) for prefix in (names.synth_all, names.chapters_all))


async def replay(js: JetStreamContext, names: Names, stored: StoredLetter, keep: bool = False) -> bool:
    """Publish the letter's payload to its source subject; delete the letter unless `keep`.

    Returns False when the server dropped the publish as a duplicate (replayed moments ago).
    `PipelineError` for a letter whose source is not one of this pipeline's work queues.
    """
    subject = stored.letter.source_subject
    if not _replayable(names, subject):
        raise PipelineError(f"dead letter {stored.seq} came from {subject!r}, not a work queue of this pipeline")
    if stored.letter.payload_truncated:
        raise PipelineError(f"dead letter {stored.seq} keeps only the head of a {stored.letter.payload_bytes}-byte "
                            "payload (too large for one message): publish the original again instead")
    fresh = await bus.publish_json(js, subject, original_payload(stored.letter), replay_msg_id(names, stored.seq))
    if not keep:
        try:
            await js.delete_msg(names.dlq_stream, stored.seq)
        except NotFoundError:
            pass
    return fresh


# ------------------------------------------------------------------------------ commands


def _line(stored: StoredLetter) -> str:
    d = stored.letter
    when = stored.time.strftime("%Y-%m-%d %H:%M:%S") if stored.time else "-"
    item = f"{d.job_id or '-'}/{d.chunk_id or '-'}"
    error = " ".join(d.error.split())
    if len(error) > ERROR_COLUMN_CHARS:
        error = error[: ERROR_COLUMN_CHARS - 3] + "..."
    return f"{stored.seq:>6}  {when}  {d.reason:<12} {d.attempts:>3}  {d.source_subject:<28} {item:<24} {error}"


async def _with_js(settings: Settings, work):
    nc = await bus.connect(settings, name="tts-dlq")
    try:
        return await work(nc.jetstream(), Names(settings.namespace))
    finally:
        await nc.drain()


async def list_letters(settings: Settings, as_json: bool = False, limit: int | None = None) -> int:
    async def work(js, names):
        letters = await read_letters(js, names, limit)
        if as_json:
            print(json.dumps([s.summary() for s in letters], indent=1))
            return 0
        if not letters:
            print(f"no dead letters in {names.dlq_stream}")
            return 0
        print(f"{'SEQ':>6}  {'TIME (UTC)':<19}  {'REASON':<12} {'TRY':>3}  {'SUBJECT':<28} {'JOB/CHUNK':<24} ERROR")
        for stored in letters:
            print(_line(stored))
        return 0

    return await _with_js(settings, work)


async def show_letter(settings: Settings, seq: int) -> int:
    async def work(js, names):
        stored = await get_letter(js, names, seq)
        body = stored.summary()
        body["payload"] = stored.letter.payload
        print(json.dumps(body, indent=1))
        return 0

    return await _with_js(settings, work)


async def replay_letters(settings: Settings, seqs: list[int], replay_all: bool, keep: bool = False) -> int:
    if not seqs and not replay_all:
        raise PipelineError("name the dead letters to replay (SEQ ...) or pass --all")

    async def work(js, names):
        chosen = await read_letters(js, names) if replay_all else [await get_letter(js, names, s) for s in seqs]
        published = skipped = 0
        for stored in chosen:
            if replay_all and (not _replayable(names, stored.letter.source_subject)
                               or stored.letter.payload_truncated):
                skipped += 1  # named one by one it is an error; in --all it is left where it is
                continue
            published += await replay(js, names, stored, keep)
        replayed = len(chosen) - skipped
        notes = []
        if replayed - published:
            notes.append(f"{replayed - published} already replayed inside the duplicate window")
        if skipped:
            notes.append(f"{skipped} skipped: not from a work queue, or payload cut")
        print(f"replayed {replayed} dead letters" + (f" ({'; '.join(notes)})" if notes else ""))
        return 0

    return await _with_js(settings, work)
