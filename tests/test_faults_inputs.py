"""Fault suite, inputs: the same requests published again and again; garbage on every subject
the workers consume. Duplicates cost no synthesis; garbage becomes dead letters that name the
validation error, and the workers go on serving."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from pipeline.jobs.state import chunk_id_for
from pipeline.contracts.messages import ChapterSubmit, SynthRequest
from tests.fault_fixtures import (  # noqa: F401 - fixtures
    PRODUCTION_RETRY, logs_to_this_test, make_requests, observers, report, sim_stats, worker_procs,
)
from tests.waiting import until

pytestmark = pytest.mark.faults


async def test_duplicate_publishes_of_100_requests_are_100_syntheses(sims, make_settings, observers, worker_procs):
    total, copies = 100, 3
    sim = sims(latency_s=0.2, slots=512)
    settings = make_settings(backend_urls=[sim.url], max_in_flight=32, heartbeat_s=0.5, **PRODUCTION_RETRY)
    observer = await observers(settings)
    requests = make_requests("dup", total)
    worker_procs.start("synth", settings, "dedup")
    # Every request three times at once, and once more on the other priority (same stream).
    results = await asyncio.gather(*(observer.publish(requests) for _ in range(copies)))
    accepted = sum(a for a, _ in results)
    dropped = sum(d for _, d in results)
    again = await observer.publish(requests, priority="interactive")
    await observer.wait_outcomes("dup", total, timeout_s=60, procs=worker_procs)
    # The same audio asked for by another job (new ids, past de-duplication): served from the store.
    resent = [r.model_copy(update={"job_id": "dupagain"}) for r in requests]
    assert await observer.publish(resent) == (total, 0)
    await observer.wait_outcomes("dupagain", total, timeout_s=60, procs=worker_procs)

    done, failed = await observer.outcomes("dup")
    done_again, failed_again = await observer.outcomes("dupagain")
    stats = sim_stats(sim)
    stored = await observer.stored_audio()
    report("6-duplicates", requests=total, publishes=total * (copies + 1) + total, accepted=accepted,
           dropped_as_duplicate=dropped + again[1], done=len(done),
           served_from_store=sum(d.cached for d in done_again.values()),
           syntheses=stats["calls"], stored=len(stored), dead_lettered=len(await observer.dead_letters()))
    assert (accepted, dropped, again) == (total, total * (copies - 1), (0, total))
    assert len(done) == len(done_again) == total and failed == failed_again == {}
    assert stats["calls"] == total and set(stats["calls_by_text"].values()) == {1}
    assert all(d.cached for d in done_again.values()) and {d.key for d in done_again.values()} == stored
    assert len(stored) == total and set(observer.expected_keys(requests).values()) == stored


def garbage(kind: str, chapter: bool) -> bytes:
    """One bad message of each kind; `chapter` picks the shape meant for tts.chapters.submit."""
    if kind == "invalid_json":
        return b'{"job_id": "garbage", "text": "cut off here'
    if kind == "not_an_object":
        return b'["job_id", "garbage"]'
    if kind == "wrong_schema":
        fields = {"job_id": "garbage", "title": "no text"} if chapter else {"job_id": "garbage", "chunk_id": "1"}
        return json.dumps({**fields, "colour": "blue"}).encode()
    if kind == "wrong_types":
        if chapter:
            return json.dumps({"job_id": "garbage", "chapter": "one", "total_chapters": -1, "text": 5}).encode()
        return json.dumps({"job_id": "garbage", "chunk_id": ["2"], "text": {"a": 1}, "sampling": "hot"}).encode()
    if kind == "path_ids":
        fields = {"chapter": 0, "total_chapters": 1} if chapter else {"chunk_id": "../../x"}
        return json.dumps({"job_id": "../../etc/passwd", "text": "Hello there.", **fields}).encode()
    if kind == "random_900kb":
        return os.urandom(900 * 1024)
    raise ValueError(kind)


SMALL_KINDS = ["invalid_json", "not_an_object", "wrong_schema", "wrong_types", "path_ids"]


async def _garbage_case(settings, observer, worker_procs, kinds: list[str], case: str, timeout_s: float) -> dict:
    """Garbage of each kind on each consumed subject, then valid work on each; what was counted."""
    names = observer.names
    subjects = [names.synth("interactive"), names.synth("bulk"), names.chapters_submit]
    sent = {}
    for subject in subjects:
        for kind in kinds:
            payload = garbage(kind, chapter=subject == names.chapters_submit)
            await observer.js.publish(subject, payload)
            sent[(subject, kind)] = payload
    # Valid work after the garbage, on every subject.
    valid = [SynthRequest(job_id="valid", chunk_id=p, text=f"A valid {p} request after the garbage.")
             for p in ("interactive", "bulk")]
    for request in valid:
        await observer.publish([request], priority=request.chunk_id)
    chapter = ChapterSubmit(job_id="validbook", chapter=0, total_chapters=1, title="After",
                            text="A valid chapter after the garbage. It has two sentences.")
    await observer.js.publish(names.chapters_submit, chapter.to_bytes())

    await observer.wait_outcomes("valid", 2, timeout_s=60, procs=worker_procs)
    await observer.wait_outcomes("validbook", 1, timeout_s=60, procs=worker_procs)

    async def every_letter() -> list | None:
        letters = await observer.dead_letters()
        return letters if len(letters) >= len(sent) else None

    async def chapters_empty() -> bool:
        return (await observer.js.stream_info(names.chapters_stream)).state.messages == 0

    letters = await until(every_letter, f"{len(sent)} dead letters", timeout_s, every_s=0.2)
    done, failed = await observer.outcomes("valid")
    book_done, _ = await observer.outcomes("validbook")
    # The queues empty as the last acks arrive (each follows its outcome's event).
    await until(chapters_empty, "the chapter queue is empty", timeout_s, every_s=0.2)
    chapters_left = 0
    counts = report(case, bad_inputs=len(sent), kinds=kinds, subjects=len(subjects), dead_lettered=len(letters),
                    valid_done=len(done) + len(book_done), synth_queue_left=await observer.wait_queue_empty(),
                    chapter_queue_left=chapters_left)

    by_payload = {}
    for letter in letters:
        raw = base64.b64decode(letter.payload) if letter.payload_encoding == "base64" else letter.payload.encode()
        by_payload[(letter.source_subject, raw)] = letter
    for (subject, kind), payload in sent.items():
        letter = by_payload.get((subject, payload))
        if letter is None:  # a letter too large for one message keeps the payload's head only
            letter = next((lt for (subj, raw), lt in by_payload.items() if subj == subject and lt.payload_truncated
                           and lt.payload_bytes == len(payload) and payload.startswith(raw)), None)
        assert letter is not None, f"{kind} on {subject}: no dead letter\n{worker_procs.logs()}"
        assert letter.reason == "invalid" and letter.attempts == 1, (kind, letter.reason)
        prefix = "invalid synth request: " if ".synth." in subject else "invalid chapter message: "
        assert letter.error.startswith(prefix), letter.error
    assert len(letters) == len(sent)
    # The workers kept serving: valid work on every subject after the garbage completed.
    assert sorted(done) == ["bulk", "interactive"] and failed == {}
    assert sorted(book_done) == [chunk_id_for(0, 0)]
    assert counts["synth_queue_left"] == 0 and chapters_left == 0
    return counts


async def test_garbage_on_every_consumed_subject_is_dead_lettered_and_workers_keep_serving(
        sims, make_settings, observers, worker_procs):
    sim = sims(latency_s=0.05)
    settings = make_settings(backend_urls=[sim.url], heartbeat_s=0.5, ack_wait_s=3.0, **PRODUCTION_RETRY)
    observer = await observers(settings)
    worker_procs.start("synth", settings, "garbage-synth")
    worker_procs.start("ingest", settings, "garbage-ingest")
    await observer.wait_heartbeat("garbage-synth", procs=worker_procs)
    await _garbage_case(settings, observer, worker_procs, SMALL_KINDS, "7-garbage", timeout_s=60)
    assert sim_stats(sim)["calls"] == 3  # the valid work only
    assert all(code == 0 for code in worker_procs.stop_all()), worker_procs.logs()


async def test_900_kb_of_random_bytes_on_every_consumed_subject_is_dead_lettered(
        sims, make_settings, observers, worker_procs):
    sim = sims(latency_s=0.05)
    settings = make_settings(backend_urls=[sim.url], heartbeat_s=0.5, ack_wait_s=2.0, **PRODUCTION_RETRY)
    observer = await observers(settings)
    worker_procs.start("synth", settings, "noise-synth")
    worker_procs.start("ingest", settings, "noise-ingest")
    await observer.wait_heartbeat("noise-synth", procs=worker_procs)
    await _garbage_case(settings, observer, worker_procs, ["random_900kb"], "7b-garbage-900kb", timeout_s=60)
