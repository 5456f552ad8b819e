"""The voice library over HTTP: upload -> listed -> used by name -> deleted; every bad clip
refused with its reason and nothing stored; 409 while an unfinished job uses a voice; the API key."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from contextlib import aclosing

import numpy as np
import soundfile as sf

from pipeline import bus
from pipeline.audio.checks import decode_wav, resample
from pipeline.engines.sim import audio as simaudio
from pipeline.contracts.messages import ChapterSubmit
from pipeline.jobs import state as jobs
from pipeline.jobs.api import publish_chapters
from pipeline.jobs.cast import heartbeat_voices
from tests.conftest import sim_stats
from tests.gateway_fixtures import gateway, recording_proxy, wait_for_health  # noqa: F401 (fixtures)
from tests.test_gateway_jobs import open_client
from tests.waiting import until

TRANSCRIPT = "this is how alice sounds when she reads a story aloud to the children at night"
SCENE = "Audio is recorded in a quiet library."


def speech(text: str = TRANSCRIPT, seed: int = 5) -> np.ndarray:
    """Speech-like int16 samples at 24 kHz (the stand-in's voice), about 2.5 words a second."""
    return np.array(simaudio.synthesize(text, seed=seed))


def encoded(samples: np.ndarray, rate: int = 24000, fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt, subtype="PCM_16")
    return out.getvalue()


def clip() -> bytes:
    """A good clip: 44.1 kHz stereo FLAC (the library canonicalises it)."""
    mono = resample(speech(), 24000, 44100)
    return encoded(np.stack([mono, mono], axis=1), 44100, "FLAC")


def form(name: str, transcript: str = TRANSCRIPT, **extra: str) -> dict:
    return {"name": name, "transcript": transcript, **extra}


async def stored_voice_keys(h) -> list[str]:
    return sorted(await h.store.list_keys("voices/"))


async def test_upload_list_use_and_delete_a_voice(sims, harness, gateway, recording_proxy):
    sim = sims()
    proxy, proxy_url = recording_proxy(sim.url)
    h = await harness(backend_urls=[proxy_url], heartbeat_s=0.2)
    await h.start_worker()
    client = await open_client(gateway(h.settings))
    async with aclosing(client):
        await wait_for_health(client, "ok")
        answer = await client.post("/v1/audio/voices", data=form("alice", scene_prompt=SCENE),
                                   files={"file": ("alice.flac", clip(), "audio/flac")})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert body["name"] == "alice" and body["source"] == "library" and body["system_prompt"] == SCENE
        assert body["transcript"] == TRANSCRIPT and abs(body["duration_s"] - speech().size / 24000) < 0.01
        assert answer.headers["Location"] == "/v1/audio/voices/alice"
        assert await stored_voice_keys(h) == ["voices/alice.json", "voices/alice.wav"]
        wav = await h.store.get("voices/alice.wav")
        samples, rate = decode_wav(wav)
        assert rate == 24000 and samples.ndim == 1
        assert json.loads(await h.store.get("voices/alice.json"))["source"] == "library"

        listing = (await client.get("/v1/audio/voices")).json()
        assert "alice" in listing["voices"] and "belinda" in listing["voices"]  # the stand-in's own
        details = {d["name"]: d for d in listing["details"]}
        assert [d["name"] for d in listing["details"]] == listing["voices"]
        assert details["alice"] == body
        assert details["belinda"] == {"name": "belinda", "source": "builtin", "duration_s": None}

        spoken = await client.post("/generate", json={"text": "Alice reads the first line.", "voice": "alice"})
        assert spoken.status_code == 200, spoken.text
        assert sim_stats(sim)["calls_by_path"] == {"/v1/chat/completions": 1}
        ((path, payload),) = proxy.posts
        assert path == "/v1/chat/completions" and payload["messages"][0]["content"] == SCENE
        assert payload["messages"][1]["content"] == TRANSCRIPT
        sent = payload["messages"][2]["content"][0]["input_audio"]["data"]
        assert base64.b64decode(sent) == wav  # the stored reference, cloned by the model server

        gone = await client.delete("/v1/audio/voices/alice")
        assert gone.status_code == 204, gone.text
        assert await stored_voice_keys(h) == []
        assert "alice" not in (await client.get("/v1/audio/voices")).json()["voices"]
        unknown = await client.post("/generate", json={"text": "Nobody reads this.", "voice": "alice"})
        assert unknown.status_code == 404 and "alice" in unknown.json()["detail"]
        again = await client.delete("/v1/audio/voices/alice")
        assert again.status_code == 404
        builtin = await client.delete("/v1/audio/voices/belinda")
        assert builtin.status_code == 404 and "built-in" in builtin.json()["detail"]


async def test_every_bad_clip_is_refused_with_its_reason_and_nothing_is_stored(sims, harness, gateway):
    sim = sims()
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker()  # its heartbeat names the stand-in's own voices
    client = await open_client(gateway(h.settings))
    voice = speech()
    loud = np.clip(voice.astype(np.int32) * 12, -32768, 32767).astype(np.int16)
    long = np.concatenate([voice] * (int(31 * 24000 / voice.size) + 1))
    cases = [
        ("not_audio", 422, form("v1"), b"this is a text file, not audio" * 10),
        ("too_short", 422, form("v2", "a short clip"), encoded(voice[:24000])),
        ("too_long", 422, form("v3", " ".join(["word"] * 80)), encoded(long)),
        ("silent", 422, form("v4"), encoded(np.zeros(5 * 24000, dtype=np.int16))),
        ("clipped", 422, form("v5"), encoded(loud)),
        ("transcript_mismatch", 422, form("v6", " ".join(["word"] * 120)), encoded(voice)),
        ("transcript_mismatch", 422, form("v7", "hello"), encoded(voice)),
        ("no_transcript", 422, form("v8", ""), encoded(voice)),
        ("bad_name", 400, form("no spaces please"), encoded(voice)),
        ("builtin", 409, form("en_woman"), encoded(voice)),
        ("builtin", 409, form("belinda"), encoded(voice)),
    ]
    async with aclosing(client):
        await wait_for_health(client, "ok")
        for reason, status, fields, data in cases:
            answer = await client.post("/v1/audio/voices", data=fields, files={"file": ("clip.wav", data, "audio/wav")})
            assert answer.status_code == status, (reason, answer.text)
            assert answer.json()["reason"] == reason and answer.json()["detail"], answer.text
            assert await stored_voice_keys(h) == [], reason
        missing = await client.post("/v1/audio/voices", data=form("v9"))
        assert missing.status_code == 400 and missing.json()["reason"] == "no_file"
        not_a_form = await client.post("/v1/audio/voices", json={"name": "v10"})
        assert not_a_form.status_code == 400
        assert await stored_voice_keys(h) == []

        # A name that exists: 409 and the voice as it was; overwrite=true replaces it.
        first = await client.post("/v1/audio/voices", data=form("bob"), files={"audio": ("b.wav", encoded(voice))})
        assert first.status_code == 201, first.text
        before = await h.store.get("voices/bob.wav")
        other = speech(seed=9)
        taken = await client.post("/v1/audio/voices", data=form("bob"), files={"file": ("b.wav", encoded(other))})
        assert taken.status_code == 409 and taken.json()["reason"] == "exists"
        assert await h.store.get("voices/bob.wav") == before
        replaced = await client.post("/v1/audio/voices", data=form("bob", overwrite="true"),
                                     files={"file": ("b.wav", encoded(other))})
        assert replaced.status_code == 201, replaced.text
        assert await h.store.get("voices/bob.wav") != before
        assert await stored_voice_keys(h) == ["voices/bob.json", "voices/bob.wav"]
    assert sim_stats(sim)["calls_by_path"] == {}  # nothing reached a model server


async def test_a_voice_an_unfinished_job_uses_cannot_be_deleted_or_replaced(harness, gateway):
    h = await harness()
    client = await open_client(gateway(h.settings))
    async with aclosing(client):
        for name in ("carol", "dave", "erin"):
            answer = await client.post("/v1/audio/voices", data=form(name), files={"file": ("c.wav", encoded(speech()))})
            assert answer.status_code == 201, answer.text
        # No ingest runs: the jobs stay registered and unfinished.
        for name in ("carol", "dave"):
            job = await client.post("/jobs", json={"job_id": f"uses-{name}", "voice": name,
                                                   "chapters": [{"title": "One", "text": "Someone reads this."}]})
            assert job.status_code == 202, job.text
        kv = await bus.jobs_kv(h.js, h.names)
        state = await jobs.read(kv, jobs.job_key("uses-carol"), jobs.JobState)
        assert state.voices == ["carol"]

        refused = await client.delete("/v1/audio/voices/carol")
        assert refused.status_code == 409 and "uses-carol" in refused.json()["detail"]
        assert refused.json()["jobs"] == ["uses-carol"]
        replace = await client.post("/v1/audio/voices", data=form("carol", overwrite="true"),
                                    files={"file": ("c.wav", encoded(speech(seed=2)))})
        assert replace.status_code == 409 and replace.json()["jobs"] == ["uses-carol"]
        assert await h.store.exists("voices/carol.json") and await h.store.exists("voices/carol.wav")
        assert (await client.delete("/v1/audio/voices/erin")).status_code == 204  # not used
        assert (await client.delete("/v1/audio/voices/dave")).status_code == 409
        assert (await client.delete("/v1/audio/voices/dave", params={"force": "true"})).status_code == 204

        def finish(s: jobs.JobState | None) -> jobs.JobState:
            return s.model_copy(update={"finished_at": 1.0})

        await jobs.mutate(kv, jobs.job_key("uses-carol"), jobs.JobState, finish)
        assert (await client.delete("/v1/audio/voices/carol")).status_code == 204
        assert await stored_voice_keys(h) == []


async def test_the_voice_routes_need_the_api_key(harness, gateway):
    h = await harness(gateway_api_key="s3cret")
    client = await open_client(gateway(h.settings))
    auth = {"Authorization": "Bearer s3cret"}
    async with aclosing(client):
        files = {"file": ("e.wav", encoded(speech()))}
        assert (await client.post("/v1/audio/voices", data=form("erin"), files=files)).status_code == 401
        assert (await client.get("/v1/audio/voices")).status_code == 401
        assert await stored_voice_keys(h) == []
        stored = await client.post("/v1/audio/voices", data=form("erin"), files=files, headers=auth)
        assert stored.status_code == 201, stored.text
        assert (await client.delete("/v1/audio/voices/erin")).status_code == 401
        assert await h.store.exists("voices/erin.json")
        assert "erin" in (await client.get("/v1/audio/voices", headers=auth)).json()["voices"]
        assert (await client.delete("/v1/audio/voices/erin", headers=auth)).status_code == 204


async def test_a_chapter_published_straight_to_the_bus_protects_its_cast_voices(harness, gateway):
    """No `register_job` (a producer publishing `ChapterSubmit`s itself): ingest records the
    chapter's voices in the job's state, so the library still refuses to delete them."""
    h = await harness()
    await h.start_ingest()  # no worker: the job stays unfinished
    client = await open_client(gateway(h.settings))
    async with aclosing(client):
        answer = await client.post("/v1/audio/voices", data=form("frank"), files={"file": ("c.wav", encoded(speech()))})
        assert answer.status_code == 201, answer.text
        submit = ChapterSubmit(job_id="busbook", chapter=0, total_chapters=1, title="One",
                               text="[voice:frank] Hello there.\n\nAnd the narrator ends it.",
                               cast={"frank": "frank"}, narrator="en_man")
        await publish_chapters(h.js, h.names, [submit])
        kv = await bus.jobs_kv(h.js, h.names)

        async def recorded() -> list[str] | None:
            state = await jobs.read(kv, jobs.job_key("busbook"), jobs.JobState)
            return state.voices if state and state.chapters else None

        assert await until(recorded, "ingest registers busbook") == ["en_man", "frank"]
        refused = await client.delete("/v1/audio/voices/frank")
        assert refused.status_code == 409 and refused.json()["jobs"] == ["busbook"], refused.text


async def test_the_cli_adds_lists_and_deletes_voices_under_the_same_rules(sims, harness, tmp_path, capsys,
                                                                          monkeypatch):
    from tests.test_cli import cli_here

    sim = sims()
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker()  # its heartbeat names the model server's built-in voices
    run = lambda *argv: asyncio.to_thread(cli_here, capsys, monkeypatch, h.settings, *argv)  # noqa: E731
    good, silent = tmp_path / "carol.flac", tmp_path / "silent.wav"
    good.write_bytes(clip())
    silent.write_bytes(encoded(np.zeros(24000 * 5, dtype=np.int16)))
    (tmp_path / "words.txt").write_text(TRANSCRIPT + "\n")

    code, out, err = await run("voices", "add", "carol", str(good), "--transcript-file", str(tmp_path / "words.txt"),
                               "--scene-prompt", SCENE)
    assert code == 0 and "voice carol added" in out, err
    assert await stored_voice_keys(h) == ["voices/carol.json", "voices/carol.wav"]
    stored = json.loads(await h.store.get("voices/carol.json"))
    assert stored["source"] == "library" and stored["transcript"] == TRANSCRIPT and stored["system_prompt"] == SCENE

    await until(lambda: heartbeat_voices(h.js, h.names), "a worker heartbeat with voices")
    code, out, _ = await run("voices", "list", "--json")
    listed = {v["name"]: v["source"] for v in json.loads(out)["voices"]}
    assert code == 0 and listed["carol"] == "library" and listed["en_woman"] == "builtin"

    # Refusals: one line each, non-zero, nothing stored or removed.
    for argv, needle in [
        (("add", "carol", str(good), "--transcript", TRANSCRIPT), "--overwrite"),
        (("add", "quiet", str(silent), "--transcript", "five words in this clip"), "(silent)"),
        (("add", "en_woman", str(good), "--transcript", TRANSCRIPT), "built-in"),
        (("add", "bad/name", str(good), "--transcript", TRANSCRIPT), "bad/name"),
        (("add", "nofile", str(tmp_path / "missing.wav"), "--transcript", TRANSCRIPT), "cannot read the clip"),
        (("add", "nowords", str(good)), "--transcript"),
        (("delete", "nobody"), "No stored voice 'nobody'"),
    ]:
        code, out, err = await run("voices", *argv)
        assert code == 1 and err.count("\n") == 1 and needle in err and "Traceback" not in err, (argv, err)
    assert await stored_voice_keys(h) == ["voices/carol.json", "voices/carol.wav"]

    # A voice an unfinished job uses stays unless forced.
    book = tmp_path / "book.txt"
    book.write_text("Someone reads this with carol's voice.")
    code, _, err = await run("submit", str(book), "--no-wait", "--job-id", "uses-carol", "--voice", "carol")
    assert code == 0, err
    code, _, err = await run("voices", "delete", "carol")
    assert code == 1 and "uses-carol" in err and "--force" in err
    assert await h.store.exists("voices/carol.json")
    code, out, err = await run("voices", "delete", "carol", "--force")
    assert code == 0 and "voice carol deleted" in out, err
    assert await stored_voice_keys(h) == []
