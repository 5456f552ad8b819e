"""`tts-pipeline dlq list|show|replay`, run as a user runs it, on dead letters a real worker wrote."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import subprocess
from unittest import mock

import httpx
import pytest
import structlog

from pipeline.cli.main import main
from pipeline.client import publish_synth
from pipeline.cli.dlq import _replayable, original_payload, replay_msg_id
from pipeline.contracts.messages import ChunkDone, DeadLetter, SynthRequest
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names
from tests.fault_fixtures import CLI, logs_to_this_test, settings_env  # noqa: F401 - autouse fixture
from tests.waiting import until

pytestmark = pytest.mark.faults


async def run_dlq(args: list[str], settings: Settings, *, in_process: bool = True) -> subprocess.CompletedProcess:
    """`tts-pipeline dlq ARGS` with `settings` as TTS_* variables: in a child process as a user
    runs it, or (2 s faster: no interpreter start) through `cli.main` in a thread."""
    env = settings_env(settings)
    if not in_process:
        return await asyncio.to_thread(subprocess.run, CLI + ["dlq", *args], env=env, capture_output=True,
                                       text=True, timeout=60, stdin=subprocess.DEVNULL)

    def run() -> subprocess.CompletedProcess:
        out, err = io.StringIO(), io.StringIO()
        saved_logs = structlog.get_config()  # the command binds structlog to `err`: undone below
        try:
            with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["dlq", *args])
        finally:
            structlog.configure(**saved_logs)
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())

    return await asyncio.to_thread(run)


def one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], result.stderr


def test_payload_round_trip_and_replayable_subjects():
    raw = bytes(range(256))
    letter = DeadLetter(source_subject="tts.synth.bulk", reason="invalid", error="x", attempts=1,
                        payload=base64.b64encode(raw).decode(), payload_encoding="base64")
    assert original_payload(letter) == raw
    text = letter.model_copy(update={"payload": "héllo", "payload_encoding": "utf-8"})
    assert original_payload(text) == "héllo".encode()
    names = Names("ns1")
    assert _replayable(names, "tts_ns1.synth.bulk") and _replayable(names, "tts_ns1.chapters.submit")
    assert not _replayable(names, "tts_ns1.events.chunk.done.j") and not _replayable(names, "tts.synth.bulk")
    assert replay_msg_id(names, 7) == "replay:TTS_DLQ_NS1:7"


async def test_dlq_list_show_and_replay_re_drive_failed_work(sims, harness):
    sim = sims(error_rate=1.0, error_status=400)  # every call refused: permanent, dead-lettered at once
    h = await harness(backend_urls=[sim.url])
    requests = [SynthRequest(job_id="redrive", chunk_id=str(i), text=f"Second chance number {i}.") for i in range(3)]
    garbage = os.urandom(2000)
    async with h.waiter("redrive") as waiter:
        await h.start_worker()
        for request in requests:
            await publish_synth(h.js, h.names, request, "bulk")
        await waiter.wait_count(3, timeout_s=60)
    await h.js.publish(h.names.synth("interactive"), garbage)
    foreign = DeadLetter(source_subject=h.names.chunk_done("redrive"), reason="permanent", error="not work",
                         attempts=1, payload="{}")
    async def four_letters() -> bool:
        return (await h.js.stream_info(h.names.dlq_stream)).state.messages == 4

    # The garbage's letter first, then one from a subject that is no work queue.
    await until(four_letters, "the garbage is dead-lettered")
    await h.js.publish(h.names.dlq(h.names.chunk_done("redrive")), foreign.to_bytes())
    # A letter too large for one message keeps only the head of its payload: never replayed.
    cut = DeadLetter(source_subject=h.names.synth("bulk"), reason="max_deliver", error="too big", attempts=5,
                     **DeadLetter.encode_payload(os.urandom(600 * 1024)))
    assert cut.payload_truncated
    await h.js.publish(h.names.dlq(h.names.synth("bulk")), cut.to_bytes())

    listed = await run_dlq(["list"], h.settings, in_process=False)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()[1:]
    assert len(rows) == 6 and sum("permanent" in r for r in rows) == 4 and sum("invalid" in r for r in rows) == 1
    summary = json.loads((await run_dlq(["list", "--json"], h.settings)).stdout)
    assert [s["seq"] for s in summary] == sorted(s["seq"] for s in summary)
    by_chunk = {s["chunk_id"]: s for s in summary if s["job_id"] == "redrive"}
    assert sorted(by_chunk) == ["0", "1", "2"] and all("400" in s["error"] for s in by_chunk.values())
    garbage_seq = next(s["seq"] for s in summary if s["reason"] == "invalid")
    foreign_seq, cut_seq = summary[-2]["seq"], summary[-1]["seq"]
    assert summary[-1]["payload_truncated"] and summary[-1]["payload_bytes"] == 600 * 1024
    assert next(s for s in summary if s["seq"] == garbage_seq)["payload_bytes"] == len(garbage)

    shown = json.loads((await run_dlq(["show", str(by_chunk["1"]["seq"])], h.settings)).stdout)
    assert SynthRequest.from_bytes(shown["payload"].encode()) == requests[1]
    one_line_error(await run_dlq(["show", "99999"], h.settings), "no dead letter 99999")
    one_line_error(await run_dlq(["replay"], h.settings), "--all")
    one_line_error(await run_dlq(["replay", str(foreign_seq)], h.settings), "not a work queue")
    one_line_error(await run_dlq(["replay", str(cut_seq)], h.settings), "keeps only the head")

    httpx.patch(f"{sim.url}/sim/config", json={"error_rate": 0.0}, timeout=5, trust_env=False).raise_for_status()
    async with h.waiter("redrive") as waiter:
        # One letter, kept, replayed twice: the second is a duplicate inside the window.
        seq = str(by_chunk["0"]["seq"])
        assert (await run_dlq(["replay", seq, "--keep"], h.settings)).stdout.strip() == "replayed 1 dead letters"
        again = await run_dlq(["replay", seq], h.settings)
        assert "1 already replayed inside the duplicate window" in again.stdout, again.stdout
        (done,) = await waiter.wait_count(1, timeout_s=60)
        assert isinstance(done, ChunkDone) and done.chunk_id == "0"
        everything = await run_dlq(["replay", "--all"], h.settings)
        expected = "replayed 3 dead letters (2 skipped: not from a work queue, or payload cut)"
        assert everything.stdout.strip() == expected, everything.stdout
        outcomes = await waiter.wait_count(3, timeout_s=60)  # chunks 1 and 2 after 0
    assert sorted(o.chunk_id for o in outcomes if isinstance(o, ChunkDone)) == ["0", "1", "2"]
    async def three_left() -> list | None:
        left = json.loads((await run_dlq(["list", "--json"], h.settings)).stdout)
        return left if len(left) == 3 else None

    left = await until(three_left, "three letters left after the replay")
    # What is left: the foreign and the cut letters, and the garbage under a new number (it failed again).
    assert [s["seq"] for s in left][:2] == [foreign_seq, cut_seq]
    assert left[2]["reason"] == "invalid" and left[2]["seq"] > cut_seq
    reshown = json.loads((await run_dlq(["show", str(left[2]["seq"])], h.settings)).stdout)
    assert base64.b64decode(reshown["payload"]) == garbage
