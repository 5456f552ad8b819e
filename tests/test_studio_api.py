"""The studio's HTTP routes without a browser: the upload's fields reach the `ChapterSubmit`s,
`GET /jobs` pages newest first (CLI jobs included), cancel/retry answers, the parsing helpers."""

from __future__ import annotations

import json

import httpx
import pytest

from http_gateway.errors import BadInput
from http_gateway.job_admin import parse_cast, preview_text
from http_gateway.studio import BUCKET_S, AudioMeter
from pipeline import bus
from pipeline.contracts.messages import ChapterSubmit
from pipeline.jobs import api as jobs_api
from tests.gateway_fixtures import gateway, wait_for_health  # noqa: F401 (fixtures)
from tests.waiting import until

BOOK = b"# One\n\nThe first chapter.\n\n# Two\n\nThe second chapter."


def test_cast_is_a_json_object_or_lines():
    assert parse_cast("") is None and parse_cast("  \n") is None
    assert parse_cast('{"alice": "en_woman", "bob": "en_man"}') == {"alice": "en_woman", "bob": "en_man"}
    assert parse_cast("alice = en_woman\n\nbob=en_man\n") == {"alice": "en_woman", "bob": "en_man"}
    for bad in ("alice", "{not json", '["a"]', "=en_man"):
        with pytest.raises(BadInput):
            parse_cast(bad)


def test_preview_is_the_first_words_cut_at_a_sentence_end():
    text = " ".join(f"Sentence {i} has five words." for i in range(40))
    head = preview_text(text, words=22)
    assert head.endswith("words.") and len(head.split()) <= 22 and text.startswith(head)
    assert preview_text("Short text.", words=75) == "Short text."
    assert len(preview_text("word " * 200, words=75).split()) == 75  # no sentence end: cut at the words


def test_audio_meter_buckets_the_last_ten_minutes():
    meter = AudioMeter()
    meter.add(5.0, now=1000.0)
    meter.add(5.0, now=1001.0)
    meter.add(2.0, now=1011.0)
    series = meter.series(now=1015.0)
    assert len(series) == 60 and series[-1] == {"t": 1010.0, "audio_s_per_s": 2.0 / BUCKET_S}
    assert series[-2]["audio_s_per_s"] == 10.0 / BUCKET_S and sum(p["audio_s_per_s"] for p in series[:-2]) == 0


async def test_upload_passes_cast_and_lists_jobs_newest_first(sims, harness, gateway):  # noqa: F811
    sim = sims()
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker()  # its heartbeat names the voices; no ingest: the chapters stay on the bus
    gw = gateway(h.settings)
    async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False) as client:
        async def ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        await until(ready, "the gateway is ready")
        await wait_for_health(client, "ok")
        # A job registered the way the CLI does it (straight into the bucket, chapters on the bus).
        jobs_kv = await bus.jobs_kv(h.js, h.names)
        cli = jobs_api.build_submits([type("C", (), {"title": "CLI", "text": "From the command line."})()], "cli-job")
        await jobs_api.register_job(jobs_kv, cli)

        form = {"title": "Two Parts", "format": "flac", "cast": "alice=en_woman\nbob=en_man",
                "narrator": "en_man", "dialogue": "true"}
        answer = await client.post("/jobs/upload", data=form, files={"file": ("two.md", BOOK, "text/markdown")})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        assert job_id.startswith("Two-Parts-") and answer.json()["chapters"] == 2
        info = await h.js.stream_info(h.names.chapters_stream)
        submits = [ChapterSubmit.from_bytes((await h.js.get_msg(h.names.chapters_stream, seq)).data)
                   for seq in range(info.state.first_seq, info.state.last_seq + 1)]
        mine = [s for s in submits if s.job_id == job_id]
        assert [s.title for s in mine] == ["One", "Two"]
        assert all(s.cast == {"alice": "en_woman", "bob": "en_man"} and s.narrator == "en_man" and s.dialogue
                   and s.format == "flac" for s in mine)

        listed = (await client.get("/jobs")).json()
        assert [j["job_id"] for j in listed["jobs"]] == [job_id, "cli-job"] and listed["total"] == 2
        assert listed["jobs"][0]["title"] == "Two Parts" and listed["jobs"][1]["title"] == "CLI"
        assert listed["jobs"][0]["chapters_total"] == 2 and listed["jobs"][0]["status"] == "running"
        page = (await client.get("/jobs", params={"limit": 1, "offset": 1})).json()
        assert [j["job_id"] for j in page["jobs"]] == ["cli-job"] and page["next_offset"] is None
        assert (await client.get("/jobs", params={"limit": 1})).json()["next_offset"] == 1

        cancelled = await client.delete(f"/jobs/{job_id}")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "cancelled"
        # No chapter is planned yet (no ingest here): nothing to republish, but the cancel is cleared.
        retried = await client.post(f"/jobs/{job_id}/retry")
        assert retried.status_code == 202 and retried.json()["republished"] == 0
        assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "running"

        for method, path in (("DELETE", "/jobs/nope"), ("POST", "/jobs/nope/retry"), ("GET", "/jobs/nope/manifest"),
                             ("GET", f"/jobs/{job_id}/manifest"), ("GET", f"/jobs/{job_id}/chapters/0/subtitles")):
            answer = await client.request(method, path)
            assert answer.status_code == 404 and answer.json()["detail"], (path, answer.text)
        bad = await client.post("/jobs/upload", files={"file": ("book.pdf", b"%PDF-1.4", "application/pdf")})
        assert bad.status_code == 400 and "unsupported book format" in bad.json()["detail"]
        unknown = await client.post("/jobs/upload", data={"voice": "nobody"}, files={"file": ("b.md", BOOK, "text/markdown")})
        assert unknown.status_code == 404 and "nobody" in json.dumps(unknown.json())
        wrong = await client.post("/jobs/upload", data={"format": "ogg"}, files={"file": ("b.md", BOOK, "text/markdown")})
        assert wrong.status_code == 400 and wrong.json()["detail"].startswith("format:")
        assert (await client.get("/jobs")).json()["total"] == 2
